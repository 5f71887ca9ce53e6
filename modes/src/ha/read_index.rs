//! Linearizable reads (`consistency=linearizable`) in `ha_standby`.
//!
//! A local read can be stale, or ahead of another node's, in two ways:
//! - this node believes it is the primary, but the standby has already been promoted (a
//!   partition, a SIGSTOP) and acknowledged writes this node has not seen;
//! - the primary ships records to the standby before they commit (the stream overlaps the
//!   two fsyncs), so the standby may show a write the primary does not show yet. A read on
//!   the standby that saw it, followed by a read on the primary that does not, would run
//!   time backwards. (Found by `tests/linearizability.rs`.)
//!
//! So a linearizable read takes a *read index* after it arrived — the primary's last
//! logged index, which bounds everything either node may have applied — establishes that
//! no newer primary exists, waits until this node has applied up to the read index, and
//! then serves the local state:
//! - On the primary: assert the epoch to the standby and the witness at once (the
//!   heartbeat's exchange, `heartbeat::assert_epoch`). The standby answering "standby of this epoch", or the
//!   witness answering "granted in this epoch", proves nobody was promoted before that
//!   answer — the standby needs the witness's vote (or this node's silence for a whole
//!   failover timeout, which the exchange itself resets) to promote. A higher epoch in
//!   either answer fences this node; no answer means 503.
//! - On the standby: ask the primary for its read index (`READ_INDEX`). Sound because the
//!   asking node is the only other node that could be primary, and it checks that it did
//!   not become one while it asked.
//! - Waiting for the read index means a read on the primary waits for the writes in flight
//!   when it arrived (one write's latency under write load); if they cannot commit (a
//!   `sync` primary without its standby) the read answers 504 after `wait_ms`.
//! - Raft's ReadIndex is the model (Ongaro's thesis, §6.4); no clock is trusted.
//! - Concurrent reads share rounds, and wait for the read index, through the mode-independent
//!   [`crate::read_round`]: a read waits for the first round that *started* after it arrived.

use std::sync::Arc;

use super::messages::*;
use super::heartbeat::assert_epoch;
use super::{Core, Role, PEER};
use crate::read_round::read_at;
use crate::replicator::ReadError;

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
    let (c, applied) = (core.clone(), core.applied_tx.subscribe());
    match now {
        Now::Primary => read_at(&core.primary.confirm_rounds, move || confirm_primary(c.clone()), applied, wait).await,
        Now::Switching => Err(ReadError::Unavailable("switchover in progress; retry shortly".into())),
        Now::Standby => read_at(&core.standby.index_rounds, move || read_index_from_primary(c.clone()), applied, wait).await,
    }
}

/// The primary's last logged index: no node can have applied a record beyond it.
fn logged_index(core: &Core) -> u64 {
    let tail = core.primary.tail.lock().unwrap().as_ref().map_or(0, |t| *t.subscribe().borrow());
    core.wal.last_index().max(tail).max(core.sm.applied_index())
}

/// The read index, once this node is confirmed as the primary.
async fn confirm_primary(core: Arc<Core>) -> Result<u64, ReadError> {
    let core = &core;
    let epoch = core.epoch();
    let index = logged_index(core);
    let a = assert_epoch(core, epoch).await;
    let higher = [a.peer.as_ref().map(|r| r.epoch), a.witness.as_ref().map(|r| r.epoch)].into_iter().flatten().max();
    if let Some(h) = higher.filter(|h| *h > epoch) {
        let leader = a.peer.as_ref().and_then(|r| r.leader.clone());
        core.adopt_epoch(h, leader.clone(), "peer or witness").await;
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
    Ok(index)
}

async fn read_index_from_primary(core: Arc<Core>) -> Result<u64, ReadError> {
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
        core.adopt_epoch(req.epoch, None, &req.node_id).await;
    }
    let index = logged_index(core);
    let primary = core.is_primary();
    ReadIndexReply { epoch: core.epoch(), primary, index, leader: core.leader.lock().unwrap().clone() }
}
