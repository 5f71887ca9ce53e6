//! [`PeerStats`]: one peer's connection counters (round-trip time, failures, last error).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Counters read by `peer_status`, written by the peer task and its link.
#[derive(Default)]
pub(crate) struct PeerStats {
    rtt_nanos: AtomicU64,
    pub(super) consecutive_failures: AtomicU32,
    last_error: Mutex<Option<String>>,
}

impl PeerStats {
    pub fn record_rtt(&self, rtt: Duration) {
        // 0 means "no sample"; a real sample is never that small.
        self.rtt_nanos.store((rtt.as_nanos() as u64).max(1), Ordering::Relaxed);
    }

    pub fn last_rtt(&self) -> Option<Duration> {
        match self.rtt_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}
