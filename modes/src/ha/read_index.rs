//! Linearizable reads (`consistency=linearizable`) in `ha_standby`.
//!
//! A local read can be stale in one case: this node believes it is the primary, but the
//! standby has already been promoted (a partition, a SIGSTOP) and acknowledged writes this
//! node has not seen. So a linearizable read first establishes, *after* the read arrived,
//! that no newer primary exists, then serves the local state, which on a primary holds
//! every acknowledged write (the pipeline applies before it acknowledges).
//!
//! - On the primary: assert the epoch to the standby and the witness at once (the same
//!   exchange as the heartbeat). The standby answering "standby of this epoch", or the
//!   witness answering "granted in this epoch", proves nobody was promoted before that
//!   answer — the standby needs the witness's vote (or this node's silence for a whole
//!   failover timeout, which the exchange itself resets) to promote. A higher epoch in
//!   either answer fences this node; no answer means 503.
//! - On the standby: ask the primary for its applied index (`READ_INDEX`), wait until this
//!   node has applied as far, then serve locally. Sound because the asking node is the
//!   only other node that could be primary, and it checks that it did not become one
//!   while it asked.
//! - Raft's ReadIndex is the model (Ongaro's thesis, §6.4); no clock is trusted.

use std::sync::Arc;
use std::time::Instant;

use super::messages::*;
use super::{Core, Role, PEER, WITNESS};
use crate::bookmark::wait_for_applied;
use crate::replicator::ReadError;

/// What the standby and the witness answered when this primary asserted `epoch`.
pub(crate) struct Assertion {
    pub sent: Instant,
    pub peer: Option<FenceReply>,
    pub witness: Option<WitnessReply>,
}

/// Asserts `epoch` to the standby (`FENCE`) and renews the lease with the witness, in
/// parallel, each bounded by one heartbeat interval.
pub(crate) async fn assert_epoch(core: &Arc<Core>, epoch: u64) -> Assertion {
    let t = core.transport();
    let hb = core.cfg.heartbeat;
    let sent = Instant::now();
    let fence = encode(&Fence { epoch, from: core.cfg.node_id.clone() });
    let (peer_id, witness_id) = (PEER.to_string(), WITNESS.to_string());
    let peer = t.request(&peer_id, FENCE, fence, Some(hb));
    let witness = async {
        match &core.cfg.witness_addr {
            Some(_) => {
                let ping = encode(&WitnessPing { epoch, node_id: core.cfg.node_id.clone() });
                Some(t.request(&witness_id, WITNESS_PING, ping, Some(hb)).await)
            }
            None => None,
        }
    };
    let (peer, witness) = tokio::join!(peer, witness);
    Assertion {
        sent,
        peer: peer.ok().and_then(|b| decode::<FenceReply>(&b).ok()),
        witness: witness.and_then(|r| r.ok()).and_then(|b| decode::<WitnessReply>(&b).ok()),
    }
}

/// Waits until a read served from this node's state now would be linearizable.
pub(crate) async fn linearizable_fence(core: &Arc<Core>, wait: std::time::Duration) -> Result<(), ReadError> {
    enum Now {
        Primary,
        Switching,
        Standby,
    }
    let now = match &*core.role.lock().unwrap() {
        Role::Primary { .. } => Now::Primary,
        Role::Switching { .. } => Now::Switching,
        Role::Standby => Now::Standby,
    };
    match now {
        Now::Primary => confirm_primary(core).await,
        Now::Switching => Err(ReadError::Unavailable("switchover in progress; retry shortly".into())),
        Now::Standby => {
            let index = read_index_from_primary(core).await?;
            let mut rx = core.applied_tx.subscribe();
            wait_for_applied(&mut rx, index, wait).await
        }
    }
}

async fn confirm_primary(core: &Arc<Core>) -> Result<(), ReadError> {
    let epoch = core.epoch();
    let a = assert_epoch(core, epoch).await;
    let higher = [a.peer.as_ref().map(|r| r.epoch), a.witness.as_ref().map(|r| r.epoch)].into_iter().flatten().max();
    if let Some(h) = higher.filter(|h| *h > epoch) {
        let leader = a.peer.as_ref().and_then(|r| r.leader.clone());
        core.step_down(h, leader.clone()).await;
        return Err(ReadError::NotLeader { leader });
    }
    let by_peer = a.peer.as_ref().is_some_and(|r| r.epoch == epoch && !r.primary);
    let by_witness = a.witness.as_ref().is_some_and(|r| r.epoch == epoch && r.granted);
    if !(by_peer || by_witness) {
        return Err(ReadError::Unavailable(
            "cannot confirm that this node is still the primary: neither the standby nor the witness answered".into(),
        ));
    }
    if core.epoch() != epoch || !core.is_primary() {
        return Err(ReadError::NotLeader { leader: core.leader.lock().unwrap().clone() });
    }
    Ok(())
}

async fn read_index_from_primary(core: &Arc<Core>) -> Result<u64, ReadError> {
    let epoch = core.epoch();
    let req = encode(&ReadIndex { epoch, node_id: core.cfg.node_id.clone() });
    let b = core
        .transport()
        .request(&PEER.to_string(), READ_INDEX, req, Some(core.cfg.heartbeat))
        .await
        .map_err(|e| ReadError::Unavailable(format!("cannot reach the primary for a linearizable read: {e}")))?;
    let r: ReadIndexReply = decode(&b).map_err(ReadError::Unavailable)?;
    if !r.primary {
        return Err(ReadError::Unavailable("the peer is not the primary (a failover may be in progress); retry shortly".into()));
    }
    // This node is the only other candidate: if it was promoted while it asked, the answer
    // may come from a deposed primary.
    if core.is_primary() || core.epoch() > r.epoch {
        return Err(ReadError::Unavailable("this node's role changed during the read; retry".into()));
    }
    Ok(r.index)
}

/// The primary's side of [`READ_INDEX`].
pub(crate) async fn on_read_index(core: &Arc<Core>, req: ReadIndex) -> ReadIndexReply {
    if req.epoch > core.epoch() {
        core.step_down(req.epoch, None).await;
    }
    // Read the index before the role: a primary's applied index only holds committed writes.
    let index = core.sm.applied_index();
    let primary = core.is_primary();
    ReadIndexReply { epoch: core.epoch(), primary, index, leader: core.leader.lock().unwrap().clone() }
}
