//! Forwarding: one write relayed to the node that can take it (an HA standby to its primary,
//! a Raft follower to its leader), shared by the modes.
//!
//! The sending mode decides *whether* and *to whom* to forward (with
//! `MERIDIAN_FORWARD_WRITES=false` it answers [`SubmitError::NotLeader`] itself) and under
//! which message type of its family; this module owns what travels and how an answer turns
//! back into the [`Committed`] or [`SubmitError`] the HTTP layer would have seen on the
//! receiving node:
//!
//! ```text
//! sender:   forward(transport, leader, MY_FORWARD, &ForwardRequest { epoch, command }, timeout)
//! receiver: check(&req, &limits)?  →  mode's own epoch/role rules  →  submit(req.command)
//!           →  ForwardReply::from_result(result)
//! ```
//!
//! The reply carries the error as a `code` (the HTTP layer's codes: `not_leader`, `fenced`,
//! `timeout`, `read_only`, `unavailable`, and `bad_request` / `too_large` from [`check`]),
//! so the caller's client gets the answer it would have had from the leader. Messages are
//! [`crate::wire`]-encoded.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bookmark::Bookmark;
use crate::command::{Command, CommandResult, Limits};
use crate::replicator::{Committed, LeaderHint, SubmitError};
use crate::transport::{NodeId, Transport};
use crate::wire::{decode, encode};

/// A write sent to the node that can take it. `epoch` is the sender's epoch (HA) or term
/// (Raft): the receiver adopts a higher one before anything else.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub epoch: u64,
    pub command: Command,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Committed { result: CommandResult, bookmark_epoch: u64, bookmark_index: u64 },
    Failed { code: String, message: String, leader: Option<LeaderHint> },
}

impl ForwardReply {
    pub fn from_result(r: Result<Committed, SubmitError>) -> ForwardReply {
        let e = match r {
            Ok(c) => {
                return ForwardReply::Committed { result: c.result, bookmark_epoch: c.bookmark.epoch, bookmark_index: c.bookmark.index }
            }
            Err(e) => e,
        };
        let (code, leader) = match &e {
            SubmitError::NotLeader { leader } => ("not_leader", leader.clone()),
            SubmitError::Fenced { leader, .. } => ("fenced", leader.clone()),
            SubmitError::Timeout(_) => ("timeout", None),
            SubmitError::ReadOnly(_) => ("read_only", None),
            SubmitError::Unavailable(_) => ("unavailable", None),
            SubmitError::Refused(_) => ("bad_request", None),
        };
        ForwardReply::Failed { code: code.into(), message: e.to_string(), leader }
    }

    /// `fenced_epoch`: the epoch to report if the remote said `fenced`.
    ///
    /// Codes this build does not know (and `bad_request` / `too_large`, which have no
    /// [`SubmitError`]) become [`SubmitError::Unavailable`] carrying the remote's message.
    pub fn into_result(self, fenced_epoch: u64) -> Result<Committed, SubmitError> {
        match self {
            ForwardReply::Committed { result, bookmark_epoch, bookmark_index } => {
                Ok(Committed { result, bookmark: Bookmark { epoch: bookmark_epoch, index: bookmark_index } })
            }
            ForwardReply::Failed { code, message, leader } => Err(match code.as_str() {
                "not_leader" => SubmitError::NotLeader { leader },
                "fenced" => SubmitError::Fenced { epoch: fenced_epoch, leader },
                "timeout" => SubmitError::Timeout(message),
                "read_only" => SubmitError::ReadOnly(message),
                "bad_request" => SubmitError::Refused(message),
                _ => SubmitError::Unavailable(message),
            }),
        }
    }
}

/// Sends `req` as `msg_type` to `to` and relays the answer; transport failures →
/// [`SubmitError::Unavailable`] naming the peer.
///
/// A `not_leader` answer without a hint names `to` itself: it is the node this one believes
/// can take writes, so the client is sent there rather than nowhere. `fenced` reports
/// `req.epoch`, the sender's epoch when it asked.
pub async fn forward(transport: &Transport, to: &NodeId, msg_type: u16, req: &ForwardRequest, timeout: Duration) -> Result<Committed, SubmitError> {
    let b = transport
        .request(to, msg_type, encode(req), Some(timeout))
        .await
        .map_err(|e| SubmitError::Unavailable(format!("cannot reach {to} to forward the write: {e}")))?;
    let reply: ForwardReply = decode("forward", &b).map_err(SubmitError::Unavailable)?;
    reply.into_result(req.epoch).map_err(|e| match e {
        SubmitError::NotLeader { leader: None } => SubmitError::NotLeader { leader: Some(LeaderHint { node_id: to.clone(), http_addr: None }) },
        e => e,
    })
}

/// Server side: validate the command against `limits` (the cluster port is not a way around
/// HTTP limits) before `submit`.
pub fn check(req: &ForwardRequest, limits: &Limits) -> Result<(), ForwardReply> {
    req.command
        .validate(limits)
        .map_err(|e| ForwardReply::Failed { code: e.code().into(), message: e.to_string(), leader: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(n: &str) -> Option<LeaderHint> {
        Some(LeaderHint { node_id: n.into(), http_addr: Some(format!("http://{n}:7474")) })
    }

    /// Through the wire encoding, as the receiver's answer reaches the sender.
    fn relay(r: Result<Committed, SubmitError>, fenced_epoch: u64) -> Result<Committed, SubmitError> {
        let b = encode(&ForwardReply::from_result(r));
        decode::<ForwardReply>("forward", &b).unwrap().into_result(fenced_epoch)
    }

    #[test]
    fn a_committed_write_comes_back_with_its_result_and_bookmark() {
        let result = CommandResult { revision: 7, outcome: crate::command::Outcome::Deleted { existed: true } };
        let back = relay(Ok(Committed { result: result.clone(), bookmark: Bookmark { epoch: 3, index: 41 } }), 0).unwrap();
        assert_eq!(back.bookmark, Bookmark { epoch: 3, index: 41 });
        assert_eq!(back.result, result);
    }

    #[test]
    fn each_refusal_comes_back_as_the_same_error() {
        assert!(matches!(relay(Err(SubmitError::NotLeader { leader: hint("n2") }), 0), Err(SubmitError::NotLeader { leader }) if leader == hint("n2")));
        assert!(matches!(
            relay(Err(SubmitError::Fenced { epoch: 9, leader: hint("n3") }), 5),
            Err(SubmitError::Fenced { epoch: 5, leader }) if leader == hint("n3")
        ));
        assert!(matches!(relay(Err(SubmitError::Timeout("slow".into())), 0), Err(SubmitError::Timeout(m)) if m.contains("slow")));
        assert!(matches!(relay(Err(SubmitError::ReadOnly("ro".into())), 0), Err(SubmitError::ReadOnly(m)) if m.contains("ro")));
        assert!(matches!(relay(Err(SubmitError::Unavailable("down".into())), 0), Err(SubmitError::Unavailable(m)) if m.contains("down")));
    }

    #[test]
    fn a_command_beyond_the_limits_is_refused_before_submit() {
        let limits = Limits { max_key_bytes: 8, max_value_bytes: 4, max_txn_ops: 2 };
        let put = |key: &str, n: usize| ForwardRequest { epoch: 1, command: Command::Put { key: key.into(), value: vec![0; n], if_revision: None } };
        assert!(check(&put("k", 4), &limits).is_ok());
        for (req, code) in [(put("k", 5), "too_large"), (put("", 1), "bad_request")] {
            match check(&req, &limits) {
                Err(ForwardReply::Failed { code: c, leader: None, .. }) => assert_eq!(c, code),
                _ => panic!("{code}: not refused"),
            }
        }
        // The refusal reaches the sender's client as an error, not as a commit.
        let reply = check(&put("k", 5), &limits).unwrap_err();
        assert!(matches!(reply.into_result(1), Err(SubmitError::Unavailable(_))));
    }
}
