//! One remote node: its address, its connection state, and the task that (re)connects.
//!
//! The connection is made lazily, when a caller first needs it. After a failed attempt the
//! peer backs off — `backoff_initial` doubled per consecutive failure up to `backoff_max`,
//! each wait drawn from the upper half of that interval so restarted nodes do not reconnect
//! in lockstep — and callers arriving during the backoff fail at once with `Unreachable`
//! instead of queueing behind a dead node. The first caller after the backoff triggers the
//! next attempt. Callers never hold a lock while waiting: they watch the state.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::connection::{CloseReason, CloseSignal};
use super::link::Link;
use super::peer_stats::PeerStats;
use super::shared::Shared;
use super::shutdown::Shutdown;
use super::{NodeId, TransportError};

#[derive(Clone)]
enum LinkState {
    Idle,
    Connecting,
    Connected(Arc<Link>),
    Backoff { until: Instant, failures: u32, error: Arc<TransportError> },
    Stopped(CloseReason),
}

pub(crate) struct Peer {
    pub id: NodeId,
    /// The node at `addr` must be `id`; false when `id` is only a local name for an address.
    pub pinned: bool,
    pub addr: String,
    state: watch::Sender<LinkState>,
    demand: Notify,
    stop: CloseSignal,
    pub stats: Arc<PeerStats>,
}

impl Peer {
    pub fn new(id: NodeId, addr: String, pinned: bool) -> Arc<Peer> {
        Arc::new(Peer {
            id,
            pinned,
            addr,
            state: watch::channel(LinkState::Idle).0,
            demand: Notify::new(),
            stop: CloseSignal::new(),
            stats: Arc::new(PeerStats::default()),
        })
    }

    pub fn is_connected(&self) -> bool {
        matches!(&*self.state.borrow(), LinkState::Connected(l) if !l.is_closed())
    }

    /// Stops the peer's task; its connection closes and its callers fail.
    pub fn stop(&self) {
        self.stop.close(CloseReason::PeerRemoved);
    }

    /// The live connection, connecting first if needed. Fails fast while backing off.
    /// The caller bounds the wait (its request deadline).
    pub async fn link(&self) -> Result<Arc<Link>, TransportError> {
        let mut rx = self.state.subscribe();
        let mut waited = false;
        // Each round waits for a state change: Idle → Connecting → Connected/Backoff takes three.
        for _ in 0..8 {
            let state = rx.borrow_and_update().clone();
            match state {
                LinkState::Connected(link) if !link.is_closed() => return Ok(link),
                LinkState::Backoff { error, .. } if waited => return Err(error_for_waiter(&error, &self.id)),
                LinkState::Backoff { until, failures, error } if Instant::now() < until => {
                    return Err(TransportError::Unreachable {
                        peer: self.id.clone(),
                        reason: format!(
                            "not retrying for another {:?} after {failures} failed attempt(s); last: {}",
                            until - Instant::now(),
                            describe(&error)
                        ),
                    });
                }
                LinkState::Stopped(CloseReason::Shutdown) => return Err(TransportError::Closed),
                LinkState::Stopped(_) => {
                    return Err(TransportError::Unreachable { peer: self.id.clone(), reason: "peer removed".into() })
                }
                // Idle, Connecting, a link about to be replaced, or a backoff about to end.
                _ => self.demand.notify_one(),
            }
            if rx.changed().await.is_err() {
                return Err(TransportError::Closed);
            }
            waited = true;
        }
        Err(TransportError::Unreachable { peer: self.id.clone(), reason: "connection state kept changing".into() })
    }

    fn set(&self, s: LinkState) {
        self.state.send_replace(s);
    }
}

/// The caller that waited for an attempt gets that attempt's own error (TLS, handshake,
/// unreachable). `TransportError` is not `Clone` (it can hold an `io::Error`), hence the copy.
fn error_for_waiter(e: &TransportError, peer: &NodeId) -> TransportError {
    match e {
        TransportError::Tls { peer, reason } => TransportError::Tls { peer: peer.clone(), reason: reason.clone() },
        TransportError::Handshake { peer, source } => {
            TransportError::Handshake { peer: peer.clone(), source: source.clone() }
        }
        TransportError::Closed => TransportError::Closed,
        other => TransportError::Unreachable { peer: peer.clone(), reason: describe(other) },
    }
}

/// An attempt's error without the "peer X is unreachable" wrapper, for nesting in messages.
fn describe(e: &TransportError) -> String {
    match e {
        TransportError::Unreachable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The wait before the next attempt after `failures` consecutive failures.
pub(crate) fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let cap = exp.min(max);
    let low = cap / 2;
    low + rand::rng().random_range(Duration::ZERO..=cap - low)
}

/// The peer's connection manager; runs until the peer is removed or the transport stops.
pub(crate) async fn run(peer: Arc<Peer>, shared: Arc<Shared>, shutdown: Shutdown) {
    let cfg = &shared.cfg;
    let stopping = || async {
        tokio::select! {
            _ = shutdown.wait() => CloseReason::Shutdown,
            _ = peer.stop.closed() => CloseReason::PeerRemoved,
        }
    };
    let mut failures = 0u32;
    let why = loop {
        tokio::select! {
            biased;
            why = stopping() => break why,
            _ = peer.demand.notified() => {}
        }
        peer.set(LinkState::Connecting);
        let attempt = tokio::select! {
            biased;
            why = stopping() => break why,
            r = tokio::time::timeout(
                cfg.connect_timeout,
                Link::connect(&shared, &peer.id, peer.pinned, &peer.addr, peer.stats.clone(), shutdown.clone()),
            ) => r.unwrap_or_else(|_| Err(TransportError::Unreachable {
                peer: peer.id.clone(),
                reason: format!("connect to {} timed out after {:?}", peer.addr, cfg.connect_timeout),
            })),
        };
        match attempt {
            Ok(link) => {
                if failures > 0 {
                    tracing::info!(peer = %peer.id, addr = %peer.addr, after_failures = failures, "cluster peer reachable again");
                } else {
                    tracing::debug!(peer = %peer.id, addr = %peer.addr, "connected to cluster peer");
                }
                failures = 0;
                peer.stats.consecutive_failures.store(0, Ordering::Relaxed);
                peer.stats.set_last_error(None);
                shared.metrics.set_connected(&peer.id, true);
                peer.set(LinkState::Connected(link.clone()));
                let stopped = tokio::select! {
                    biased;
                    why = stopping() => Some(why),
                    _ = link.closed() => None,
                };
                shared.metrics.set_connected(&peer.id, false);
                if let Some(why) = stopped {
                    link.close(why.clone());
                    break why;
                }
                peer.set(LinkState::Idle);
            }
            Err(e) => {
                failures += 1;
                peer.stats.consecutive_failures.store(failures, Ordering::Relaxed);
                peer.stats.set_last_error(Some(describe(&e)));
                shared.metrics.connection_failed(&peer.id);
                let wait = backoff(cfg.backoff_initial, cfg.backoff_max, failures);
                // First failures are worth a warning; a long outage should not flood the log.
                if failures <= 3 || failures.is_power_of_two() {
                    tracing::warn!(peer = %peer.id, addr = %peer.addr, attempt = failures, retry_in = ?wait, error = %describe(&e), "cannot connect to cluster peer");
                }
                peer.set(LinkState::Backoff { until: Instant::now() + wait, failures, error: Arc::new(e) });
                tokio::select! {
                    biased;
                    why = stopping() => break why,
                    _ = tokio::time::sleep(wait) => {}
                }
                peer.set(LinkState::Idle);
            }
        }
    };
    peer.set(LinkState::Stopped(why));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            let b1 = backoff(i, m, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100), "{b1:?}");
            let b3 = backoff(i, m, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400), "{b3:?}");
            let b30 = backoff(i, m, 30);
            assert!(b30 >= Duration::from_secs(1) && b30 <= m, "{b30:?}");
        }
    }
}
