//! The write queue's bound: bytes of writes this node has taken in and not yet answered
//! (`MERIDIAN_WRITE_QUEUE_BYTES`).
//!
//! Every write (`PUT`, `DELETE`, `/v1/txn`) holds a share of the budget from the moment its
//! handler has validated it until its answer: while it waits for the WAL's fsync, for
//! replication, or for the leader it was forwarded to. A write that does not fit is answered
//! at once with `503 unavailable` and `Retry-After: 1` — never queued without bound, never
//! half-done (it has not reached the log). This is the one admission point of the write path;
//! the queues behind it (the WAL writer's channel, the apply pipeline, the replication
//! stream) only ever hold what passed here, so the budget bounds them too. What the budget
//! does not cover is bounded elsewhere: request bodies being received (connections ×
//! `MAX_VALUE_BYTES`, `HTTP_MAX_CONNECTIONS`, the body timeout).
//!
//! A write costs its request bytes plus [`OVERHEAD`] (so empty writes count too), capped at
//! the whole budget: the largest value always fits when nothing else is in flight.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::error::ApiError;

/// What a write costs beyond its bytes: the command, its ticket and answer.
pub const OVERHEAD: usize = 256;

pub struct WriteBudget {
    permits: Arc<Semaphore>,
    total: u32,
    /// `meridian_write_queue_bytes`.
    gauge: Gauge,
}

/// A write's share of the budget, given back (and the gauge lowered) when it is dropped.
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    cost: i64,
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec_by(self.cost);
    }
}

impl WriteBudget {
    /// `bytes` is clamped to what a semaphore holds (4 GiB).
    pub fn new(bytes: u64, gauge: Gauge) -> WriteBudget {
        let total = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        WriteBudget { permits: Arc::new(Semaphore::new(total as usize)), total, gauge }
    }

    /// Takes `bytes` (plus overhead) of the budget for as long as the returned permit lives,
    /// or refuses with 503 + `Retry-After` when that much is not free now.
    pub fn admit(&self, bytes: usize) -> Result<InFlight, ApiError> {
        let cost = u32::try_from(bytes.saturating_add(OVERHEAD)).unwrap_or(u32::MAX).min(self.total);
        match self.permits.clone().try_acquire_many_owned(cost) {
            Ok(p) => {
                self.gauge.inc_by(i64::from(cost));
                Ok(InFlight { _permit: p, cost: i64::from(cost), gauge: self.gauge.clone() })
            }
            Err(TryAcquireError::NoPermits) | Err(TryAcquireError::Closed) => Err(ApiError::unavailable(format!(
                "{} bytes of writes are already in flight on this node (MERIDIAN_WRITE_QUEUE_BYTES={}); retry shortly",
                self.in_flight(),
                self.total
            ))),
        }
    }

    /// Bytes held by writes in flight now.
    pub fn in_flight(&self) -> u64 {
        u64::from(self.total) - self.permits.available_permits() as u64
    }

    pub fn total(&self) -> u64 {
        u64::from(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_over_the_budget_are_refused_until_others_finish() {
        let gauge = Gauge::default();
        let b = WriteBudget::new(1500, gauge.clone());
        let a = b.admit(400).unwrap();
        let c = b.admit(100).unwrap();
        assert_eq!(b.in_flight(), 400 + 100 + 2 * OVERHEAD as u64);
        assert_eq!(gauge.get(), 400 + 100 + 2 * OVERHEAD as i64);
        let e = b.admit(300).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("MERIDIAN_WRITE_QUEUE_BYTES"), "{}", e.message);
        drop(a);
        let d = b.admit(300).unwrap();
        drop((c, d));
        assert_eq!(b.in_flight(), 0);
        assert_eq!(gauge.get(), 0);
        // The largest write fits alone.
        let big = b.admit(10_000).unwrap();
        assert!(b.admit(0).is_err());
        drop(big);
    }
}
