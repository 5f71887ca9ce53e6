//! Becoming primary: who may (`not_eligible`: only an in-sync standby, in the sync levels),
//! how (`try_promote`: prove the log replays, the witness's vote, fence the old primary, a
//! new epoch of this node's), manual and forced promotion, the switchover's promotion on the
//! standby, and starting the write pipeline with its sync gate.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::epochs::HaPersisted;
use super::gate::{OutOfSync, SyncGate, SyncMode};
use super::messages::*;
use super::{Core, Promotion, Role, PEER};
use crate::pipeline::{Pipeline, PipelineConfig, PurgePolicy, Tail};
use crate::replicator::AdminError;
use super::stream::{settle};

impl Core {
    /// How the gate treats a standby that stops confirming (see `gate`).
    fn out_of_sync_policy(&self) -> OutOfSync {
        let witness = self.cfg.witness_addr.is_some();
        match self.cfg.sync_mode {
            SyncMode::Async => OutOfSync::Never,
            _ if self.cfg.sync_strict => OutOfSync::Never,
            _ if witness => OutOfSync::Recorded,
            SyncMode::SemiSync => OutOfSync::Automatic,
            SyncMode::Sync | SyncMode::RemoteApply => OutOfSync::Operator,
        }
    }

    /// Starts taking writes in `epoch` (already persisted). `in_contact`: this node has just
    /// heard from the witness or the standby (a won vote, an aborted switchover), which
    /// grants a first lease. The standby starts in sync as persisted (`peer_in_sync`).
    pub(crate) fn start_pipeline(self: &Arc<Self>, epoch: u64, in_contact: bool) -> (Arc<Pipeline>, Arc<SyncGate>) {
        let seen = *self.primary.last_standby_contact.lock().unwrap();
        let in_sync = self.persisted.lock().unwrap().peer_in_sync;
        let gate = Arc::new(SyncGate::new(
            self.cfg.sync_mode,
            self.cfg.sync_timeout,
            *self.primary.standby_positions.lock().unwrap(),
            seen,
            in_sync,
            self.out_of_sync_policy(),
        ));
        // The standby is told it is in sync only once that is persisted here: a primary that
        // restarts must not acknowledge alone what an in-sync standby lacks.
        let mut rx = gate.subscribe_in_sync();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let now = *rx.borrow_and_update();
                let Some(core) = weak.upgrade() else { return };
                // Only for this primary's own epoch: a later epoch's state is not ours to change.
                let _ = core.update_persisted(epoch, |p, current| {
                    let change = current == epoch && p.peer_in_sync != now;
                    if change {
                        p.peer_in_sync = now;
                    }
                    change
                });
                drop(core);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        if self.cfg.witness_addr.is_some() {
            // With a witness the primary must hold a lease to acknowledge.
            let until = if in_contact { Instant::now() + self.lease() } else { Instant::now() };
            gate.extend_lease(until);
        }
        let weak = Arc::downgrade(self);
        let retention = self.cfg.wal_retention;
        let purge: PurgePolicy = Arc::new(move |checkpoint| {
            // Keep what the standby still needs, up to the retention cap.
            let standby = weak.upgrade().map_or(0, |c| c.primary.standby_positions.lock().unwrap().flushed);
            (checkpoint + 1).min((standby + 1).max((checkpoint + 1).saturating_sub(retention)))
        });
        let tail = Tail::new(self.wal.last_index());
        *self.primary.tail.lock().unwrap() = Some(tail.clone());
        let pcfg = PipelineConfig {
            epoch,
            checkpoint_interval: self.cfg.checkpoint_interval,
            max_batch: 1024,
            gate: Some(gate.clone()),
            purge: Some(purge),
            tail: Some(tail),
        };
        let pipeline = Arc::new(Pipeline::start(pcfg, self.wal.clone(), self.sm.clone()));
        // Mirror the pipeline's applied index into the node-wide watch that reads wait on.
        let mut applied = pipeline.applied();
        let core = self.clone();
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                let v = *applied.borrow();
                core.applied_tx.send_replace(v);
            }
        });
        (pipeline, gate)
    }

    /// Becomes primary of `epoch`, a new epoch this node started ([`super::epoch::next`]):
    /// persist the epoch and where it starts, then take writes. There is no other way to
    /// become primary — resuming after a restart starts a new epoch too — so every position
    /// this node writes carries an (epoch, index) nobody else ever wrote.
    pub(crate) async fn become_primary(self: &Arc<Self>, epoch: u64, how: Promotion) -> Result<(), String> {
        let _t = self.transition.lock().await;
        if super::epoch::owner(epoch) != self.tag || epoch <= self.epoch() {
            return Err(format!("refusing to become primary in epoch {}: not a new epoch of this node's", super::epoch::display(epoch)));
        }
        self.replay_log(u64::MAX).await.map_err(|e| format!("{e}; staying standby"))?;
        // The whole log is now the history (just replayed): nothing is held back any more.
        self.standby.held.lock().unwrap().clear();
        let first = self.wal.last_index() + 1;
        self.update_persisted(epoch, |p: &mut HaPersisted, _| {
            p.history.begin(epoch, first);
            p.owner = true;
            p.in_sync = false;
            p.peer_in_sync = match how {
                Promotion::Takeover => false,
                Promotion::Resume => p.peer_in_sync,
                Promotion::Handover => true,
            };
            true
        })
        .map_err(|e| format!("{e}; staying standby"))?;
        // Whatever this node knew of a standby predates its promotion.
        self.primary.reset();
        let (pipeline, gate) = self.start_pipeline(epoch, true);
        *self.role.lock().unwrap() = Role::Primary { pipeline: pipeline.clone(), gate };
        *self.leader.lock().unwrap() = Some(self.self_hint());
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
        self.note("primary");
        info!(epoch, round = super::epoch::round(epoch), "this node is now the primary");
        // The first record of the epoch marks where it begins in every log that has it.
        tokio::spawn(async move {
            let _ = pipeline.submit(crate::command::Command::Noop).await;
        });
        Ok(())
    }

    /// Applies the records up to `upto` in the log that the state does not have yet. Before a node takes
    /// writes its whole log is the history: a record it logged but never applied (a fenced
    /// primary's last writes, an apply that failed) goes into the state before any new
    /// write, or the first new write would find a hole.
    pub(crate) async fn replay_log(&self, upto: u64) -> Result<u64, String> {
        let (wal, sm) = (self.wal.clone(), self.sm.clone());
        let replayed = tokio::task::spawn_blocking(move || crate::recovery::replay_to(&wal, &*sm, upto).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| format!("cannot bring the state up to the log: {e}"))?;
        if replayed > 0 {
            info!(records = replayed, "applied logged records before taking writes");
            self.applied_tx.send_replace(self.sm.applied_index());
        }
        Ok(replayed)
    }

    /// The gate of the stream this node serves: as primary, and while handing over.
    pub(crate) fn gate(&self) -> Option<Arc<SyncGate>> {
        match &*self.role.lock().unwrap() {
            Role::Primary { gate, .. } | Role::Switching { gate } => Some(gate.clone()),
            Role::Standby => None,
        }
    }
}

/// Promotion: win the witness's vote (when there is one), fence the old primary if it can be
/// reached, then become primary of a new, persisted epoch.
pub(crate) async fn try_promote(core: &Arc<Core>, manual: bool, how: Promotion) -> Result<u64, String> {
    if core.is_primary() {
        return Err("already primary".into());
    }
    // Above every epoch this node knows of, including one the witness refused it for.
    let seen = core.epoch().max(core.witness_epoch.load(Ordering::SeqCst));
    let new_epoch = super::epoch::next(seen, core.tag).map_err(|e| e.to_string())?;
    if !manual {
        // A standby that is not caught up with what the primary acknowledged must not take
        // over in the sync levels: the writes it lacks were promised to be kept.
        if let Some(why) = not_eligible(core) {
            return Err(why);
        }
    }
    // Prove this node can serve before it wins a vote or fences anyone: a standby whose log
    // does not replay would otherwise leave the pair with no primary at all.
    settle(core).await?;
    // Only what is agreed: if this node does not win, it must not show the rest.
    let agreed = core.standby.agreed.load(Ordering::SeqCst);
    core.replay_log(agreed).await.map_err(|e| format!("{e}; this node does not promote"))?;
    // Two standbys (e.g. both nodes restarted): only the one further ahead promotes itself.
    if !manual {
        if let Some((e, last, id, at)) = core.standby.peer_standby.lock().unwrap().clone() {
            let mine = (core.epoch(), core.wal.last_index(), core.cfg.node_id.clone());
            if at.elapsed() < core.cfg.heartbeat * 3 && (e, last, id.clone()) > mine {
                return Err(format!("the peer {id} is also standby and further ahead; it promotes"));
            }
        }
    }
    if core.cfg.witness_addr.is_some() {
        core.witness_vote(new_epoch, core.cfg.heartbeat).await?;
    }
    // Fence the old primary if it is reachable at all (best effort: it may be dead).
    let f = encode(&Fence { epoch: new_epoch, from: core.cfg.node_id.clone() });
    if let Ok(b) = core.transport().request(&PEER.to_string(), FENCE, f, Some(core.cfg.heartbeat)).await {
        if let Ok(r) = decode::<FenceReply>(&b) {
            if r.epoch > new_epoch || (r.epoch == new_epoch && r.primary) {
                return Err(format!("the peer is already primary in epoch {}", r.epoch));
            }
        }
    }
    settle(core).await?;
    core.become_primary(new_epoch, how).await?;
    Ok(new_epoch)
}

/// Why this standby may not promote itself (automatically, or by `/admin/promote` without
/// `force`): in the sync levels only an *in-sync* standby may — one that the primary
/// recorded as having every acknowledged write — never one re-seeding from a snapshot or
/// behind what the primary acknowledged; in `async`, one at most
/// `HA_MAX_LAG_ON_FAILOVER` records behind.
pub(super) fn not_eligible(core: &Arc<Core>) -> Option<String> {
    let (have, acked) = (core.wal.durable_index(), core.standby.primary_commit_index.load(Ordering::Relaxed));
    let primary_last = core.standby.primary_last_index.load(Ordering::Relaxed);
    if core.standby.want_snapshot.load(Ordering::SeqCst) {
        return Some("this standby is re-seeding from a snapshot; its state is not the primary's".into());
    }
    match core.cfg.sync_mode {
        super::SyncMode::Async => {
            let behind = primary_last.saturating_sub(have);
            match core.cfg.max_lag_on_failover {
                Some(max) if behind > max => Some(format!(
                    "this standby is {behind} records behind the primary's last known index {primary_last} (MERIDIAN_CLUSTER_HA_MAX_LAG_ON_FAILOVER={max})"
                )),
                _ => None,
            }
        }
        _ if have < acked => Some(format!("this standby has index {have}, the primary acknowledged up to {acked} ({} records behind)", acked - have)),
        _ if !core.persisted.lock().unwrap().in_sync => Some(format!(
            "this standby is not in sync: the primary did not record it as having every acknowledged write (it has index {have}; the primary's last known index is {primary_last}, {} records ahead); it may lack writes acknowledged without it",
            primary_last.saturating_sub(have)
        )),
        _ => None,
    }
}

/// `POST /admin/promote` on the standby.
pub(crate) async fn manual_promote(core: &Arc<Core>, force: bool) -> Result<serde_json::Value, AdminError> {
    if core.is_primary() {
        return Err(AdminError::Rejected("this node is already the primary".into()));
    }
    if !force {
        if let Some(why) = not_eligible(core) {
            return Err(AdminError::Rejected(format!("promoting could lose acknowledged writes: {why}; wait for it to catch up or pass ?force=true")));
        }
    }
    let epoch = if force {
        // An operator override: skip the witness and the tie-break.
        force_promote(core).await
    } else {
        try_promote(core, true, Promotion::Takeover).await
    }
    .map_err(AdminError::Rejected)?;
    Ok(serde_json::json!({"promoted": true, "epoch": epoch, "last_index": core.wal.last_index()}))
}

pub(super) async fn force_promote(core: &Arc<Core>) -> Result<u64, String> {
    let seen = core.epoch().max(core.witness_epoch.load(Ordering::SeqCst));
    let new_epoch = super::epoch::next(seen, core.tag).map_err(|e| e.to_string())?;
    let f = encode(&Fence { epoch: new_epoch, from: core.cfg.node_id.clone() });
    let _ = core.transport().request(&PEER.to_string(), FENCE, f, Some(core.cfg.heartbeat)).await;
    settle(core).await?;
    core.become_primary(new_epoch, Promotion::Takeover).await?;
    Ok(new_epoch)
}

/// The primary asks this standby to take over during a switchover.
pub(crate) async fn on_promote(core: &Arc<Core>, p: Promote) -> Result<PromoteReply, crate::transport::RemoteError> {
    let reject = |m: String| crate::transport::RemoteError::new("rejected", m);
    if core.is_primary() {
        return Err(reject("already primary".into()));
    }
    if p.epoch != core.epoch() {
        return Err(reject(format!("epoch mismatch: primary {} vs standby {}", p.epoch, core.epoch())));
    }
    settle(core).await.map_err(reject)?;
    if core.wal.durable_index() < p.last_index || core.sm.applied_index() < p.last_index {
        return Err(reject(format!("not caught up: have {}, need {}", core.wal.durable_index(), p.last_index)));
    }
    let new_epoch = super::epoch::next(p.epoch, core.tag).map_err(|e| reject(e.to_string()))?;
    if core.cfg.witness_addr.is_some() {
        // Like any promotion: the witness's vote (granted at once for a recorded handover).
        core.witness_vote(new_epoch, core.cfg.heartbeat * 2).await.map_err(reject)?;
    }
    core.become_primary(new_epoch, Promotion::Handover).await.map_err(reject)?;
    Ok(PromoteReply { epoch: core.epoch(), leader: core.self_hint() })
}
