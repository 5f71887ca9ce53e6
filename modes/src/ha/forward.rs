//! Writes that reach the standby: forwarded to the primary over the cluster transport (or
//! `421` without forwarding), and checked on the primary like an HTTP write. The messages and
//! their codes are the shared [`crate::forward`]; the epoch and role rules are HA's, here.

use std::sync::Arc;
use std::time::Duration;

use super::messages::FORWARD;
use super::{Core, Role, PEER};
use crate::command::Command;
use crate::forward::{self as shared, ForwardReply, ForwardRequest};
use crate::replicator::{Committed, SubmitError};

pub(super) async fn on_forward(core: &Arc<Core>, f: ForwardRequest) -> ForwardReply {
    core.adopt_epoch(f.epoch, None, PEER).await;
    if let Err(refused) = shared::check(&f, &core.cfg.limits) {
        return refused;
    }
    let pipeline = match &*core.role.lock().unwrap() {
        Role::Primary { pipeline, .. } => Some(pipeline.clone()),
        _ => None,
    };
    let Some(pipeline) = pipeline else {
        return ForwardReply::from_result(Err(SubmitError::NotLeader { leader: core.leader.lock().unwrap().clone() }));
    };
    ForwardReply::from_result(pipeline.submit(f.command).await)
}

/// A write on the standby goes to the primary over the transport (or `421` without forwarding).
pub(crate) async fn forward(core: &Arc<Core>, command: Command) -> Result<Committed, SubmitError> {
    let leader = core.leader.lock().unwrap().clone();
    if !core.cfg.forward_writes {
        return Err(SubmitError::NotLeader { leader });
    }
    let req = ForwardRequest { epoch: core.epoch(), command };
    shared::forward(core.transport(), &PEER.to_string(), FORWARD, &req, Duration::from_secs(30)).await.map_err(|e| match e {
        // This node's epoch now, not when it asked: the fence that stopped the primary may
        // have reached this node while the write was away.
        SubmitError::Fenced { leader, .. } => SubmitError::Fenced { epoch: core.epoch(), leader },
        e => e,
    })
}
