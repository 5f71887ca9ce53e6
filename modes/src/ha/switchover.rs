//! A planned role swap with zero loss (`POST /admin/switchover`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use super::messages::*;
use super::{Core, Role, PEER};
use crate::replicator::AdminError;

/// A planned role swap with zero loss: stop taking writes, let queued ones commit, wait for
/// the standby to have everything, have it promote, then follow it.
///
/// Bounded (30 s for the standby to catch up, 10 s for its promotion) and safe to cancel:
/// it runs in its own task, so a dropped HTTP request cannot leave the node `Switching`.
/// The transition lock is held only to change roles, so a FENCE arriving meanwhile is
/// handled at once; the switchover then ends without restoring this node as primary.
pub(crate) async fn switchover(core: &Arc<Core>) -> Result<serde_json::Value, AdminError> {
    let c = core.clone();
    tokio::spawn(async move { switchover_task(&c).await })
        .await
        .map_err(|e| AdminError::Unavailable(format!("the switchover failed: {e}")))?
}

pub(super) async fn switchover_task(core: &Arc<Core>) -> Result<serde_json::Value, AdminError> {
    if !core.is_primary() {
        // Run it on the primary.
        let t = core.transport();
        let b = t
            .request(&PEER.to_string(), SWITCHOVER, Bytes::new(), Some(Duration::from_secs(60)))
            .await
            .map_err(|e| AdminError::Unavailable(format!("cannot reach the primary: {e}")))?;
        return serde_json::from_slice(&b).map_err(|e| AdminError::Unavailable(e.to_string()));
    }
    let (pipeline, gate, epoch) = {
        let _t = core.transition.lock().await;
        let old = std::mem::replace(&mut *core.role.lock().unwrap(), Role::Standby);
        let Role::Primary { pipeline, gate } = old else {
            *core.role.lock().unwrap() = old;
            return Err(AdminError::Rejected("not the primary".into()));
        };
        if let Some(e) = crate::pipeline::CommitGate::refusal(&*gate) {
            *core.role.lock().unwrap() = Role::Primary { pipeline, gate };
            return Err(AdminError::Unavailable(format!("no switchover now: {e}")));
        }
        *core.role.lock().unwrap() = Role::Switching { gate: gate.clone() };
        core.note("switching");
        (pipeline, gate, core.epoch())
    };
    let _ = tokio::task::spawn_blocking(move || pipeline.stop_blocking()).await;
    let last = core.wal.last_index();
    let deadline = Instant::now() + Duration::from_secs(30);
    while core.primary.standby_positions.lock().unwrap().flushed < last {
        if Instant::now() > deadline {
            return restore_after_switchover(core, epoch, format!("the standby did not catch up to index {last} within 30s")).await;
        }
        if !matches!(*core.role.lock().unwrap(), Role::Switching { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // With a witness the promotion goes through it like any other: tell it this primary hands
    // over (it has stopped taking writes), so it votes for the standby at once.
    if core.cfg.witness_addr.is_some() {
        let Some(to) = core.peer_node_id.lock().unwrap().clone() else {
            return restore_after_switchover(core, epoch, "the standby has not named itself yet".into()).await;
        };
        let r = core.ping_witness(&core.witness_ping(epoch, true, Some(to)), core.cfg.heartbeat * 2).await;
        match r {
            Ok(r) if r.granted && r.epoch == epoch => {}
            Ok(r) => return restore_after_switchover(core, epoch, format!("the witness did not record the handover: {}", r.reason)).await,
            Err(e) => return restore_after_switchover(core, epoch, format!("the witness cannot be reached for the handover: {e}")).await,
        }
    }
    let req = encode(&Promote { epoch, last_index: last });
    let reply = core.transport().request(&PEER.to_string(), PROMOTE, req, Some(Duration::from_secs(10))).await;
    let reply = match reply.map_err(|e| e.to_string()).and_then(|b| decode::<PromoteReply>(&b)) {
        Ok(r) if r.epoch > epoch => r,
        Ok(r) => return restore_after_switchover(core, epoch, format!("the standby answered epoch {}", r.epoch)).await,
        Err(e) => return restore_after_switchover(core, epoch, format!("the standby did not promote: {e}")).await,
    };
    if let Err(e) = super::epoch::check_raise(epoch, reply.epoch, core.tag) {
        return restore_after_switchover(core, epoch, format!("the standby answered an epoch this node cannot adopt: {e}")).await;
    }
    drop(gate);
    let _t = core.transition.lock().await;
    if core.epoch() >= reply.epoch {
        // Already adopted (the new primary's fence arrived first).
        return Ok(serde_json::json!({"switched": true, "epoch": reply.epoch, "new_primary": reply.leader, "last_index": last}));
    }
    // Follow the new primary: persist its epoch, never take another write in ours. This node
    // has every write of the old epoch, and the new primary waits for it: in sync.
    *core.role.lock().unwrap() = Role::Standby;
    let persisted = core.update_persisted(reply.epoch, |p, _| {
        p.owner = false;
        p.in_sync = true;
        p.peer_in_sync = false;
        true
    });
    if let Err(e) = persisted {
        return Err(AdminError::Unavailable(e));
    }
    *core.leader.lock().unwrap() = Some(reply.leader.clone());
    *core.standby.last_primary_contact.lock().unwrap() = Instant::now();
    core.leader_changes.fetch_add(1, Ordering::Relaxed);
    core.note("standby");
    info!(new_epoch = reply.epoch, new_primary = %reply.leader.node_id, last_index = last, "switchover complete; following the new primary");
    Ok(serde_json::json!({"switched": true, "epoch": reply.epoch, "new_primary": reply.leader, "last_index": last}))
}

/// A switchover that did not happen: take writes again in `epoch` — unless a higher epoch
/// appeared meanwhile (a FENCE), in which case this node stays the standby it became.
pub(super) async fn restore_after_switchover(core: &Arc<Core>, epoch: u64, why: String) -> Result<serde_json::Value, AdminError> {
    let _t = core.transition.lock().await;
    if core.epoch() != epoch || !matches!(*core.role.lock().unwrap(), Role::Switching { .. }) {
        warn!("switchover aborted: {why}; a newer epoch appeared meanwhile, so this node follows it");
        return Err(AdminError::Unavailable(format!("{why}; this node was fenced meanwhile and follows the new primary")));
    }
    warn!("switchover aborted: {why}; staying primary");
    // No lease from a restore: the next heartbeat round must earn it.
    let (pipeline, gate) = core.start_pipeline(epoch, false);
    *core.role.lock().unwrap() = Role::Primary { pipeline, gate };
    core.note("primary");
    Err(AdminError::Unavailable(why))
}
