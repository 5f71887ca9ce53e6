//! The sync levels, as a [`CommitGate`] on the primary's write pipeline.
//!
//! | level | a write is acknowledged once … | the standby is out of sync (gone too long, or right after a failover) |
//! |---|---|---|
//! | `async` | it is fsynced locally | nothing changes |
//! | `semi_sync` | the standby has *received* it | the primary acknowledges alone, visibly (health `degraded`, log) |
//! | `sync` | the standby has *fsynced* it | as `semi_sync`; without a witness only after `POST /admin/standby/release`; never with `HA_SYNC_STRICT` |
//! | `remote_apply` | the standby has *applied* it (a read there sees it) | as `sync` |
//!
//! **In sync** (Patroni's `synchronous_mode`, done with the same care): the standby is in
//! sync when every write this primary acknowledged is on it (received / fsynced / applied, by
//! level); from then on every acknowledgement waits for it. Only an in-sync standby may
//! promote itself, so the primary may acknowledge *alone* only while its standby is recorded
//! out of sync where the standby's promotion is decided:
//! - **Into sync** ([`SyncGate::update`]): the gate flips as soon as the standby has every
//!   position it let through — under one lock with the releases, so no write slips between —
//!   and the primary then persists the fact and tells the standby (which persists it too).
//! - **Out of sync** ([`SyncGate::go_solo`]): the primary first records it (at the witness,
//!   which then refuses the standby's vote; or by the operator's `/admin/standby/release`),
//!   and only then does the gate let writes through alone. Waiting writes ask for it
//!   ([`SyncGate::wants_solo`]) once they have waited `HA_SYNC_TIMEOUT`.
//! - Right after a failover the old primary is out of sync (it cannot have the new
//!   primary's writes), so a new primary starts alone; a primary resuming after a restart
//!   starts as it had recorded.
//! - `semi_sync` without a witness falls back alone by itself after the timeout (as
//!   PostgreSQL does): a failover then may lose what was acknowledged alone — as `async`.
//!
//! Waiting ends with an error when the primary is fenced (final) or its lease is lost (not
//! yet: the pipeline waits for the lease to return), so a deposed primary never
//! acknowledges a write.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use super::messages::Positions;
use crate::pipeline::{CommitGate, GateRefusal};
use crate::replicator::{LeaderHint, SubmitError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    Async,
    SemiSync,
    Sync,
    RemoteApply,
}

/// How the gate treats a standby that stops confirming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutOfSync {
    /// Falls back alone by itself after the timeout (`semi_sync` without a witness).
    Automatic,
    /// Asks the primary to record it first ([`SyncGate::wants_solo`]): with a witness.
    Recorded,
    /// Only by the operator (`/admin/standby/release`): `sync` without a witness.
    Operator,
    /// Never alone (`HA_SYNC_STRICT`).
    Never,
}

#[derive(Default)]
struct State {
    positions: Positions,
    /// Set when the primary is deposed: (new epoch, where the new primary is).
    fenced: Option<(u64, Option<LeaderHint>)>,
    /// The standby is in sync: acknowledgements wait for it.
    in_sync: bool,
    /// Writes have waited the sync timeout for an in-sync standby: the primary should record
    /// it out of sync and go on alone.
    wants_solo: bool,
    /// A write has been waiting for the standby longer than the sync timeout.
    blocked_since: Option<Instant>,
    /// Why writes are refused for now (shutting down), if they are.
    paused: Option<String>,
    /// With a witness: acknowledgements are allowed only until this instant.
    lease: Option<Instant>,
    /// When the standby last reported positions (`None`: not since this gate started).
    standby_seen: Option<Instant>,
    /// Highest index let through: the standby is in sync once it has it.
    released: u64,
    /// Out of sync, but the standby is close: writes wait for it again (not yet recorded
    /// anywhere, so the gate may drop back to alone by itself) until it has `released`.
    joining: bool,
}

/// A returning standby this close to what was let through (in records) is waited for again:
/// under steady load it could otherwise never have *everything* let through at one instant.
const JOIN_WITHIN: u64 = 1000;

pub struct SyncGate {
    mode: SyncMode,
    timeout: Duration,
    out_of_sync: OutOfSync,
    state: Mutex<State>,
    changed: Condvar,
    in_sync_tx: watch::Sender<bool>,
}

impl SyncGate {
    /// `standby_seen`: when the standby was last heard, if ever. `in_sync`: whether the
    /// standby starts recorded in sync (see the module notes).
    pub fn new(mode: SyncMode, timeout: Duration, positions: Positions, standby_seen: Option<Instant>, in_sync: bool, out_of_sync: OutOfSync) -> SyncGate {
        let in_sync = in_sync || mode == SyncMode::Async || out_of_sync == OutOfSync::Never;
        SyncGate {
            mode,
            timeout,
            out_of_sync,
            state: Mutex::new(State { positions, standby_seen, in_sync, ..State::default() }),
            changed: Condvar::new(),
            in_sync_tx: watch::channel(in_sync).0,
        }
    }

    pub fn mode(&self) -> SyncMode {
        self.mode
    }

    /// Follows the in-sync state (the primary persists it and tells the standby).
    pub fn subscribe_in_sync(&self) -> watch::Receiver<bool> {
        self.in_sync_tx.subscribe()
    }

    pub fn in_sync(&self) -> bool {
        self.state.lock().unwrap().in_sync
    }

    /// The standby reported new positions. Once it has everything let through, it is in sync.
    pub fn update(&self, p: Positions) {
        let mut s = self.state.lock().unwrap();
        s.positions.received = s.positions.received.max(p.received);
        s.positions.flushed = s.positions.flushed.max(p.flushed);
        s.positions.applied = s.positions.applied.max(p.applied);
        s.standby_seen = Some(Instant::now());
        if !s.in_sync && !s.joining && self.position(&s) + JOIN_WITHIN >= s.released {
            s.joining = true;
        }
        if !s.in_sync && self.reached(&s, s.released) {
            match self.mode {
                SyncMode::SemiSync => info!("semi_sync: the standby caught up; acknowledgements wait for it again"),
                _ => info!(index = s.released, "{:?}: the standby has every acknowledged write; it is in sync and acknowledgements wait for it again", self.mode),
            }
            s.in_sync = true;
            s.joining = false;
            s.wants_solo = false;
            self.in_sync_tx.send_replace(true);
        }
        self.changed.notify_all();
    }

    /// Writes are waiting for an in-sync standby past the sync timeout: record it out of
    /// sync, then call [`SyncGate::go_solo`].
    pub fn wants_solo(&self) -> bool {
        self.state.lock().unwrap().wants_solo
    }

    /// The standby is recorded out of sync: acknowledge alone until it has caught up.
    pub fn go_solo(&self, why: &str) {
        let mut s = self.state.lock().unwrap();
        if s.in_sync && self.mode != SyncMode::Async {
            warn!("{:?}: the standby is out of sync ({why}); this primary acknowledges alone until it has caught up", self.mode);
            s.in_sync = false;
            s.joining = false;
            self.in_sync_tx.send_replace(false);
        }
        s.wants_solo = false;
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
        if !s.in_sync {
            out.push(match self.mode {
                SyncMode::SemiSync => "semi_sync fell back to async: the standby is out of sync; this primary acknowledges alone".into(),
                _ => format!("{:?}: the standby is out of sync; this primary acknowledges alone until it has caught up", self.mode),
            });
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
        self.mode == SyncMode::Async || self.position(s) >= index
    }

    /// The standby's position this level waits for.
    fn position(&self, s: &State) -> u64 {
        match self.mode {
            SyncMode::Async | SyncMode::Sync => s.positions.flushed,
            SyncMode::SemiSync => s.positions.received,
            SyncMode::RemoteApply => s.positions.applied,
        }
    }
}

impl SyncGate {
    /// Lets entries up to `index` through if they need no waiting: out of sync, alone; in
    /// sync, once the standby has them. Either way under the lock `update` takes, so the
    /// in-sync flip sees every release.
    fn release_now(&self, s: &mut State, index: u64) -> bool {
        if (!s.in_sync && !s.joining) || self.reached(s, index) {
            s.released = s.released.max(index);
            s.blocked_since = None;
            return true;
        }
        false
    }

    fn refusal_in(s: &State) -> Option<GateRefusal> {
        if let Some((epoch, leader)) = &s.fenced {
            return Some(GateRefusal::Final(SubmitError::Fenced { epoch: *epoch, leader: leader.clone() }));
        }
        if let Some(p) = &s.paused {
            return Some(GateRefusal::Final(SubmitError::Unavailable(p.clone())));
        }
        if Self::lease_expired(s) {
            return Some(GateRefusal::NotYet(SubmitError::Unavailable(
                "lease expired: the primary has reached neither the standby nor the witness, so it cannot know it is still primary; retry shortly".into(),
            )));
        }
        None
    }
}

impl CommitGate for SyncGate {
    fn refusal(&self) -> Option<SubmitError> {
        Self::refusal_in(&self.state.lock().unwrap()).map(|r| match r {
            GateRefusal::Final(e) | GateRefusal::NotYet(e) => e,
        })
    }

    fn committed_now(&self, index: u64) -> bool {
        let mut s = self.state.lock().unwrap();
        Self::refusal_in(&s).is_none() && self.release_now(&mut s, index)
    }

    fn wait_committed(&self, index: u64) -> Result<(), GateRefusal> {
        let start = Instant::now();
        let mut s = self.state.lock().unwrap();
        loop {
            if let Some(r) = Self::refusal_in(&s) {
                return Err(r);
            }
            if self.release_now(&mut s, index) {
                return Ok(());
            }
            // A semi_sync standby never heard since this gate started (the old primary, right
            // after a failover) is not waited for.
            let silent = s.standby_seen.map_or(Duration::MAX, |t| t.elapsed());
            let waited = start.elapsed();
            if !s.in_sync && (waited >= self.timeout || silent >= self.timeout) {
                // A joining standby that stopped confirming: alone again (never recorded in
                // sync, so nothing needs recording).
                s.joining = false;
                continue;
            }
            if waited >= self.timeout || (self.out_of_sync == OutOfSync::Automatic && silent >= self.timeout) {
                match self.out_of_sync {
                    OutOfSync::Automatic => {
                        warn!(index, "semi_sync: no confirmation from the standby within {:?}; falling back to async", self.timeout);
                        s.in_sync = false;
                        self.in_sync_tx.send_replace(false);
                        continue;
                    }
                    OutOfSync::Recorded => s.wants_solo = true,
                    OutOfSync::Operator | OutOfSync::Never => {}
                }
                if s.blocked_since.is_none() {
                    warn!(index, "{:?}: the standby has not confirmed for {:?}; writes stay blocked until it does, or until it is recorded out of sync (never acknowledged alone before that)", self.mode, self.timeout);
                }
                s.blocked_since.get_or_insert(start);
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
            let g = Arc::new(SyncGate::new(mode, Duration::from_secs(5), Positions::default(), Some(Instant::now()), true, OutOfSync::Operator));
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
        let g = SyncGate::new(SyncMode::SemiSync, Duration::from_millis(100), Positions::default(), Some(Instant::now()), true, OutOfSync::Automatic);
        assert!(g.wait_committed(1).is_ok());
        assert!(!g.degraded().is_empty());
        assert!(g.wait_committed(2).is_ok(), "fallback continues without waiting");
        g.update(pos(2, 2, 2));
        assert!(g.wait_committed(2).is_ok());
        assert!(g.degraded().is_empty(), "caught up: no longer degraded");

        let g = Arc::new(SyncGate::new(SyncMode::Sync, Duration::from_millis(50), Positions::default(), None, true, OutOfSync::Operator));
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait_committed(1));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!t.is_finished(), "sync acknowledged a write the standby does not have");
        assert!(!g.degraded().is_empty());
        g.fence(7, None);
        assert!(matches!(t.join().unwrap(), Err(GateRefusal::Final(SubmitError::Fenced { epoch: 7, .. }))));
    }

    /// `committed_now` answers what `wait_committed` would do at once, and never waits.
    #[test]
    fn committed_now_is_wait_committed_without_the_wait() {
        let g = SyncGate::new(SyncMode::Sync, Duration::from_secs(30), Positions::default(), Some(Instant::now()), true, OutOfSync::Operator);
        assert!(!g.committed_now(3), "in sync, the standby has nothing yet");
        g.update(pos(3, 2, 0));
        assert!(g.committed_now(2) && !g.committed_now(3), "sync goes by the flushed position");
        g.update(pos(3, 3, 0));
        assert!(g.committed_now(3));
        g.fence(9, None);
        assert!(!g.committed_now(3), "a fenced primary commits nothing");
        let alone = SyncGate::new(SyncMode::Sync, Duration::from_secs(30), Positions::default(), None, false, OutOfSync::Operator);
        assert!(alone.committed_now(100), "out of sync, the primary acknowledges alone");
    }

    #[test]
    fn semi_sync_does_not_wait_for_a_standby_that_was_never_heard() {
        let g = SyncGate::new(SyncMode::SemiSync, Duration::from_secs(30), Positions::default(), None, true, OutOfSync::Automatic);
        let t = Instant::now();
        assert!(g.wait_committed(1).is_ok());
        assert!(t.elapsed() < Duration::from_secs(1), "waited for a silent standby");
        assert!(!g.degraded().is_empty(), "the fallback must be visible");
        // Sync never falls back, heard or not (checked in the test above).
    }

    /// The in-sync rule: alone only while out of sync; back in sync exactly when the standby
    /// has everything let through; out of sync only when recorded (or by the operator).
    #[test]
    fn sync_acknowledges_alone_only_while_the_standby_is_out_of_sync() {
        let g = Arc::new(SyncGate::new(SyncMode::Sync, Duration::from_millis(100), Positions::default(), None, false, OutOfSync::Recorded));
        assert!(g.wait_committed(5).is_ok(), "a new primary (standby out of sync) acknowledges alone");
        assert!(!g.degraded().is_empty(), "acknowledging alone must be visible");
        let mut rx = g.subscribe_in_sync();
        g.update(pos(5, 4, 4));
        assert!(!g.in_sync(), "in sync without write 5");
        g.update(pos(5, 5, 5));
        assert!(g.in_sync() && *rx.borrow_and_update());
        // In sync: a write waits, asks to go alone after the timeout, and goes alone only
        // once that has been recorded.
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait_committed(6));
        std::thread::sleep(Duration::from_millis(250));
        assert!(!t.is_finished(), "acknowledged alone before the standby was recorded out of sync");
        assert!(g.wants_solo());
        g.go_solo("recorded at the witness");
        assert!(t.join().unwrap().is_ok());
        assert!(!g.in_sync() && !*rx.borrow_and_update());
        // Strict: never alone, even when starting out of sync.
        let g = Arc::new(SyncGate::new(SyncMode::Sync, Duration::from_millis(50), Positions::default(), None, false, OutOfSync::Never));
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait_committed(1));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!t.is_finished() && !g.wants_solo(), "strict sync acknowledged alone");
        g.update(pos(1, 1, 1));
        assert!(t.join().unwrap().is_ok());
    }

    #[test]
    fn an_expired_lease_refuses_acknowledgements() {
        let g = SyncGate::new(SyncMode::Async, Duration::from_secs(1), Positions::default(), None, true, OutOfSync::Never);
        g.extend_lease(Instant::now() + Duration::from_millis(100));
        assert!(g.wait_committed(1).is_ok());
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(g.wait_committed(2), Err(GateRefusal::NotYet(SubmitError::Unavailable(_)))));
        assert!(g.refusal().is_some(), "a new write is not refused at once while the lease is out");
        g.extend_lease(Instant::now() + Duration::from_secs(1));
        assert!(g.wait_committed(3).is_ok());
    }
}
