//! Writes that reach the standby: forwarded to the primary over the cluster transport (or
//! `421` without forwarding), and checked on the primary like an HTTP write.

use std::sync::Arc;
use std::time::Duration;


use super::messages::*;
use super::{Core, Role, PEER};
use crate::bookmark::Bookmark;
use crate::command::Command;
use crate::replicator::{Committed, LeaderHint, SubmitError};

pub(super) async fn on_forward(core: &Arc<Core>, f: Forward) -> ForwardReply {
    core.adopt_epoch(f.epoch, None, PEER).await;
    // A forwarded write passes the same checks as one that came in over HTTP here: the
    // cluster port is not a way around the limits.
    if let Err(e) = f.command.validate(&core.cfg.limits) {
        return ForwardReply::Failed { code: e.code().into(), message: e.to_string(), leader: None };
    }
    let pipeline = match &*core.role.lock().unwrap() {
        Role::Primary { pipeline, .. } => Some(pipeline.clone()),
        _ => None,
    };
    let Some(pipeline) = pipeline else {
        return ForwardReply::Failed {
            code: "not_leader".into(),
            message: "this node is not the primary".into(),
            leader: core.leader.lock().unwrap().clone(),
        };
    };
    match pipeline.submit(f.command).await {
        Ok(c) => ForwardReply::Committed { result: c.result, bookmark_epoch: c.bookmark.epoch, bookmark_index: c.bookmark.index },
        Err(e) => {
            let (code, leader) = match &e {
                SubmitError::NotLeader { leader } => ("not_leader", leader.clone()),
                SubmitError::Fenced { leader, .. } => ("fenced", leader.clone()),
                SubmitError::Timeout(_) => ("timeout", None),
                SubmitError::ReadOnly(_) => ("read_only", None),
                SubmitError::Unavailable(_) => ("unavailable", None),
            };
            ForwardReply::Failed { code: code.into(), message: e.to_string(), leader }
        }
    }
}

/// A write on the standby goes to the primary over the transport (or `421` without forwarding).
pub(crate) async fn forward(core: &Arc<Core>, command: Command) -> Result<Committed, SubmitError> {
    let leader = core.leader.lock().unwrap().clone();
    if !core.cfg.forward_writes {
        return Err(SubmitError::NotLeader { leader });
    }
    let req = encode(&Forward { epoch: core.epoch(), command });
    let b = core
        .transport()
        .request(&PEER.to_string(), FORWARD, req, Some(Duration::from_secs(30)))
        .await
        .map_err(|e| SubmitError::Unavailable(format!("cannot reach the primary to forward the write: {e}")))?;
    match decode::<ForwardReply>(&b).map_err(SubmitError::Unavailable)? {
        ForwardReply::Committed { result, bookmark_epoch, bookmark_index } => {
            Ok(Committed { result, bookmark: Bookmark { epoch: bookmark_epoch, index: bookmark_index } })
        }
        ForwardReply::Failed { code, message, leader } => Err(match code.as_str() {
            "not_leader" => SubmitError::NotLeader { leader: leader.or_else(|| Some(LeaderHint { node_id: PEER.into(), http_addr: None })) },
            "fenced" => SubmitError::Fenced { epoch: core.epoch(), leader },
            "timeout" => SubmitError::Timeout(message),
            "read_only" => SubmitError::ReadOnly(message),
            _ => SubmitError::Unavailable(message),
        }),
    }
}
