//! The primary's heartbeat: asserting its epoch to the standby (`FENCE`) and the witness
//! (`WITNESS_PING`) every interval, the lease that comes of it, recording the standby out of
//! sync (at the witness, or by the operator's release), and answering fences.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::gate::{SyncGate, SyncMode};
use super::messages::*;
use super::{Core, PEER, WITNESS};
use crate::replicator::AdminError;

impl Core {
    /// The primary stops acknowledging writes when it has heard from neither the standby nor
    /// the witness for this long; the witness grants a failover only after a full failover
    /// timeout of silence, so the two windows never overlap.
    pub(crate) fn lease(&self) -> Duration {
        self.cfg.failover_timeout / 2
    }

    /// Whether this primary's standby is recorded in sync: persisted here and the gate
    /// agreeing. Always true in `async`, where there is nothing to be in sync with.
    pub(crate) fn standby_in_sync(&self) -> bool {
        self.gate().is_some_and(|g| self.standby_in_sync_at(&g)) || self.cfg.sync_mode == SyncMode::Async
    }

    /// [`Core::standby_in_sync`] as recorded by `gate`, the gate of this node's time as
    /// primary that a caller holds (a long poll that began then).
    pub(crate) fn standby_in_sync_at(&self, gate: &SyncGate) -> bool {
        if self.cfg.sync_mode == SyncMode::Async {
            return true;
        }
        self.persisted.lock().unwrap().peer_in_sync && gate.in_sync() && !gate.wants_solo()
    }

    /// Records the standby out of sync, then lets the gate acknowledge alone. With a witness
    /// the record is at the witness (which then refuses the standby's vote) — if it cannot
    /// be made there, nothing is acknowledged alone.
    async fn record_out_of_sync(self: &Arc<Self>, why: &str) -> Result<(), String> {
        let Some(gate) = self.gate() else { return Err("not the primary".into()) };
        let epoch = self.epoch();
        if self.cfg.witness_addr.is_some() {
            let r = self
                .ping_witness(&self.witness_ping(epoch, false, None), self.cfg.heartbeat)
                .await
                .map_err(|e| format!("the witness cannot be reached to record the standby out of sync: {e}"))?;
            if !r.granted || r.epoch != epoch {
                return Err(format!("the witness did not record the standby out of sync: {}", r.reason));
            }
        }
        self.update_persisted(epoch, |p, _| {
            p.peer_in_sync = false;
            true
        })?;
        gate.go_solo(why);
        Ok(())
    }
}

/// What the standby and the witness answered when this primary asserted `epoch`.
pub(crate) struct Assertion {
    pub sent: Instant,
    pub peer: Option<FenceReply>,
    pub witness: Option<WitnessReply>,
}

pub(crate) async fn assert_epoch(core: &Arc<Core>, epoch: u64) -> Assertion {
    let t = core.transport();
    let hb = core.cfg.heartbeat;
    let sent = Instant::now();
    let fence = encode(&Fence { epoch, from: core.cfg.node_id.clone() });
    let peer_id = PEER.to_string();
    let peer = t.request(&peer_id, FENCE, fence, Some(hb));
    let witness = async {
        match &core.cfg.witness_addr {
            Some(_) => Some(core.ping_witness(&core.witness_ping(epoch, core.standby_in_sync(), None), hb).await),
            None => None,
        }
    };
    let (peer, witness) = tokio::join!(peer, witness);
    Assertion {
        sent,
        peer: peer.ok().and_then(|b| decode::<FenceReply>(&b).ok()),
        witness: witness.and_then(|r| r.ok()),
    }
}

/// One heartbeat round as primary: assert the epoch to the peer, renew the lease with the
/// witness, and stop acknowledging if neither could be reached for the lease period.
pub(crate) async fn tick(core: &Arc<Core>) {
    let epoch = core.epoch();
    let a = assert_epoch(core, epoch).await;
    let mut lease_from: Option<Instant> = None;
    if let Some(r) = a.peer {
        if r.epoch > epoch {
            core.adopt_epoch(r.epoch, r.leader, PEER).await;
            return;
        }
        *core.primary.last_standby_contact.lock().unwrap() = Some(a.sent);
        if r.epoch == epoch && !r.primary {
            lease_from = lease_from.max(Some(a.sent));
        }
    }
    if let Some(r) = a.witness {
        if r.epoch > epoch {
            warn!(witness_epoch = r.epoch, "the witness knows a higher epoch: {}", r.reason);
            core.adopt_epoch(r.epoch, None, WITNESS).await;
            return;
        }
        if r.granted {
            *core.last_witness_contact.lock().unwrap() = Some(a.sent);
            lease_from = lease_from.max(Some(a.sent));
        } else {
            // E.g. a different failover timeout: say why, but not every heartbeat.
            static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
            let mut last = LAST.lock().unwrap();
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                warn!("the witness refused this primary's ping: {}", r.reason);
                *last = Some(Instant::now());
            }
        }
    }
    // Writes have waited the sync timeout for the standby: record it out of sync (at the
    // witness) before acknowledging alone.
    if let Some(gate) = core.gate().filter(|g| g.wants_solo()) {
        match core.record_out_of_sync("it did not confirm within the sync timeout; recorded at the witness").await {
            Ok(()) => {}
            Err(e) => {
                let _ = gate;
                warn!("writes stay blocked: {e}");
            }
        }
    }
    // The lease runs from when this round's confirmed exchange was *sent*: the standby or
    // the witness confirmed no newer primary existed at some moment after that. A fetch that
    // merely arrived (it may have been sent long ago, before the standby gave up on this
    // node) proves nothing and never extends the lease.
    if core.cfg.witness_addr.is_some() {
        if let (Some(gate), Some(from)) = (core.gate(), lease_from) {
            gate.extend_lease(from + core.lease());
        }
    }
}

pub(super) async fn on_fence(core: &Arc<Core>, f: Fence) -> FenceReply {
    core.check_peer_id(&f.from);
    let mine = core.epoch();
    if f.epoch > mine {
        core.adopt_epoch(f.epoch, None, &f.from).await;
    } else if f.epoch == mine && !core.is_primary() {
        // The primary of our epoch is alive and says so: that is contact.
        *core.standby.last_primary_contact.lock().unwrap() = Instant::now();
    }
    FenceReply { epoch: core.epoch(), primary: core.is_primary(), leader: core.leader.lock().unwrap().clone(), last_index: core.wal.last_index() }
}

/// `POST /admin/standby/release` on the primary: the operator lets it go on alone.
pub(crate) async fn release_standby(core: &Arc<Core>) -> Result<serde_json::Value, AdminError> {
    if !core.is_primary() {
        return Err(AdminError::Rejected("run this on the primary".into()));
    }
    core.record_out_of_sync("released by the operator").await.map_err(AdminError::Unavailable)?;
    warn!("the operator released the standby: this primary acknowledges alone until the standby has caught up; the standby may not promote itself meanwhile");
    Ok(serde_json::json!({"released": true, "epoch": core.epoch()}))
}
