//! The sync levels, as a [`CommitGate`] on the primary's write pipeline.
//!
//! | level | a write is acknowledged once … | standby gone |
//! |---|---|---|
//! | `async` | it is fsynced locally | nothing changes |
//! | `semi_sync` | the standby has *received* it | after `HA_SYNC_TIMEOUT` the primary falls back to async, visibly (health `degraded`, metric, log), until the standby has caught up again |
//! | `sync` | the standby has *fsynced* it | writes block (health `degraded` after the timeout); nothing is acknowledged that the standby does not have |
//! | `remote_apply` | the standby has *applied* it (a read there sees it) | as `sync` |
//!
//! Waiting ends with an error when the primary is fenced or its lease is lost, so a deposed
//! primary never acknowledges a write.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::messages::Positions;
use crate::pipeline::CommitGate;
use crate::replicator::{LeaderHint, SubmitError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    Async,
    SemiSync,
    Sync,
    RemoteApply,
}

#[derive(Default)]
struct State {
    positions: Positions,
    /// Set when the primary is deposed: (new epoch, where the new primary is).
    fenced: Option<(u64, Option<LeaderHint>)>,
    /// semi_sync fell back to async (until the standby catches up).
    fallback: bool,
    /// A write has been waiting for the standby longer than the sync timeout.
    blocked_since: Option<Instant>,
    /// Why writes are refused for now (shutting down), if they are.
    paused: Option<String>,
    /// With a witness: acknowledgements are allowed only until this instant.
    lease: Option<Instant>,
    /// When the standby last reported positions (`None`: not since this gate started).
    standby_seen: Option<Instant>,
    /// Highest index a write has waited for: a fallen-back standby is caught up past it.
    highest_asked: u64,
}

pub struct SyncGate {
    mode: SyncMode,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

impl SyncGate {
    /// `standby_seen`: when the standby was last heard, if ever.
    pub fn new(mode: SyncMode, timeout: Duration, positions: Positions, standby_seen: Option<Instant>) -> SyncGate {
        SyncGate { mode, timeout, state: Mutex::new(State { positions, standby_seen, ..State::default() }), changed: Condvar::new() }
    }

    pub fn mode(&self) -> SyncMode {
        self.mode
    }

    /// The standby reported new positions.
    pub fn update(&self, p: Positions) {
        let mut s = self.state.lock().unwrap();
        s.positions.received = s.positions.received.max(p.received);
        s.positions.flushed = s.positions.flushed.max(p.flushed);
        s.positions.applied = s.positions.applied.max(p.applied);
        s.standby_seen = Some(Instant::now());
        if s.fallback && s.positions.received >= s.highest_asked {
            info!("semi_sync: the standby caught up; acknowledgements wait for it again");
            s.fallback = false;
        }
        self.changed.notify_all();
    }

    /// The standby rebuilt its log (snapshot, truncation): take its positions as they are.
    pub fn reset(&self, p: Positions) {
        let mut s = self.state.lock().unwrap();
        s.positions = p;
        self.changed.notify_all();
    }

    pub fn positions(&self) -> Positions {
        self.state.lock().unwrap().positions
    }

    pub fn fence(&self, epoch: u64, leader: Option<LeaderHint>) {
        let mut s = self.state.lock().unwrap();
        s.fenced = Some((epoch, leader));
        self.changed.notify_all();
    }

    /// Refuse (`Some(reason)`) or resume (`None`) acknowledging writes.
    pub fn pause(&self, reason: Option<String>) {
        let mut s = self.state.lock().unwrap();
        if s.paused.is_some() != reason.is_some() {
            match &reason {
                Some(r) => warn!("primary stops acknowledging writes: {r}"),
                None => info!("primary resumes acknowledging writes"),
            }
        }
        s.paused = reason;
        self.changed.notify_all();
    }

    /// Renews the lease (only used with a witness).
    pub fn extend_lease(&self, until: Instant) {
        let mut s = self.state.lock().unwrap();
        let was_expired = s.lease.is_some_and(|l| Instant::now() > l);
        if s.lease.is_none_or(|l| until > l) {
            s.lease = Some(until);
        }
        if was_expired && Instant::now() <= until {
            info!("lease renewed: the primary acknowledges writes again");
        }
        self.changed.notify_all();
    }

    fn lease_expired(s: &State) -> bool {
        s.lease.is_some_and(|l| Instant::now() > l)
    }

    /// Reasons the primary is degraded right now (for health and status).
    pub fn degraded(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        let mut out = Vec::new();
        if s.fallback {
            out.push("semi_sync fell back to async: the standby did not confirm within the sync timeout".into());
        }
        if let Some(t) = s.blocked_since {
            if t.elapsed() >= self.timeout {
                out.push(format!("{:?} writes are blocked waiting for the standby for {:.1}s", self.mode, t.elapsed().as_secs_f64()));
            }
        }
        if let Some(p) = &s.paused {
            out.push(p.clone());
        }
        if Self::lease_expired(&s) {
            out.push("lease expired: the primary has reached neither the standby nor the witness; writes are refused".into());
        }
        out
    }

    fn reached(&self, s: &State, index: u64) -> bool {
        match self.mode {
            SyncMode::Async => true,
            SyncMode::SemiSync => s.positions.received >= index,
            SyncMode::Sync => s.positions.flushed >= index,
            SyncMode::RemoteApply => s.positions.applied >= index,
        }
    }
}

impl CommitGate for SyncGate {
    fn wait_committed(&self, index: u64) -> Result<(), SubmitError> {
        let start = Instant::now();
        let mut s = self.state.lock().unwrap();
        s.highest_asked = s.highest_asked.max(index);
        loop {
            if let Some((epoch, leader)) = &s.fenced {
                return Err(SubmitError::Fenced { epoch: *epoch, leader: leader.clone() });
            }
            if let Some(p) = &s.paused {
                return Err(SubmitError::Unavailable(p.clone()));
            }
            if Self::lease_expired(&s) {
                return Err(SubmitError::Unavailable(
                    "lease expired: the primary has reached neither the standby nor the witness, so it cannot know it is still primary".into(),
                ));
            }
            if self.reached(&s, index) {
                s.blocked_since = None;
                return Ok(());
            }
            if s.fallback {
                return Ok(()); // semi_sync degraded to async until the standby catches up
            }
            // The timeout also counts from when the standby was last heard: one that has been
            // silent that long (e.g. the old primary, right after a failover) is not waited for.
            if self.mode == SyncMode::SemiSync {
                let silent = s.standby_seen.map_or(Duration::MAX, |t| t.elapsed());
                if silent >= self.timeout {
                    warn!(index, "semi_sync: the standby has not been heard for {:?} or more; falling back to async", self.timeout);
                    s.fallback = true;
                    return Ok(());
                }
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                match self.mode {
                    SyncMode::SemiSync => {
                        warn!(index, "semi_sync: no confirmation from the standby within {:?}; falling back to async", self.timeout);
                        s.fallback = true;
                        return Ok(());
                    }
                    _ => {
                        if s.blocked_since.is_none() {
                            warn!(index, "{:?}: the standby has not confirmed for {:?}; writes stay blocked until it does (never acknowledged without it)", self.mode, self.timeout);
                        }
                        s.blocked_since.get_or_insert(start);
                    }
                }
            }
            let mut slice = if waited < self.timeout { self.timeout - waited } else { Duration::from_millis(200) };
            if let Some(l) = s.lease {
                slice = slice.min(l.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
            }
            s = self.changed.wait_timeout(s, slice).unwrap().0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pos(r: u64, f: u64, a: u64) -> Positions {
        Positions { received: r, flushed: f, applied: a }
    }

    #[test]
    fn each_level_waits_for_its_own_position() {
        for (mode, p) in [(SyncMode::SemiSync, pos(5, 0, 0)), (SyncMode::Sync, pos(5, 5, 0)), (SyncMode::RemoteApply, pos(5, 5, 5))] {
            let g = Arc::new(SyncGate::new(mode, Duration::from_secs(5), Positions::default(), Some(Instant::now())));
            let g2 = g.clone();
            let t = std::thread::spawn(move || g2.wait_committed(5));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!t.is_finished(), "{mode:?} acknowledged before the standby confirmed");
            g.update(pos(5, 0, 0)); // received only
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(t.is_finished(), mode == SyncMode::SemiSync, "{mode:?}");
            g.update(p);
            assert!(t.join().unwrap().is_ok());
        }
    }

    #[test]
    fn semi_sync_falls_back_after_the_timeout_but_sync_never_does() {
        let g = SyncGate::new(SyncMode::SemiSync, Duration::from_millis(100), Positions::default(), Some(Instant::now()));
        assert!(g.wait_committed(1).is_ok());
        assert!(!g.degraded().is_empty());
        assert!(g.wait_committed(2).is_ok(), "fallback continues without waiting");
        g.update(pos(2, 2, 2));
        assert!(g.wait_committed(2).is_ok());
        assert!(g.degraded().is_empty(), "caught up: no longer degraded");

        let g = Arc::new(SyncGate::new(SyncMode::Sync, Duration::from_millis(50), Positions::default(), None));
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait_committed(1));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!t.is_finished(), "sync acknowledged a write the standby does not have");
        assert!(!g.degraded().is_empty());
        g.fence(7, None);
        assert!(matches!(t.join().unwrap(), Err(SubmitError::Fenced { epoch: 7, .. })));
    }

    #[test]
    fn semi_sync_does_not_wait_for_a_standby_that_was_never_heard() {
        let g = SyncGate::new(SyncMode::SemiSync, Duration::from_secs(30), Positions::default(), None);
        let t = Instant::now();
        assert!(g.wait_committed(1).is_ok());
        assert!(t.elapsed() < Duration::from_secs(1), "waited for a silent standby");
        assert!(!g.degraded().is_empty(), "the fallback must be visible");
        // Sync never falls back, heard or not (checked in the test above).
    }

    #[test]
    fn an_expired_lease_refuses_acknowledgements() {
        let g = SyncGate::new(SyncMode::Async, Duration::from_secs(1), Positions::default(), None);
        g.extend_lease(Instant::now() + Duration::from_millis(100));
        assert!(g.wait_committed(1).is_ok());
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(g.wait_committed(2), Err(SubmitError::Unavailable(_))));
        g.extend_lease(Instant::now() + Duration::from_secs(1));
        assert!(g.wait_committed(3).is_ok());
    }
}
