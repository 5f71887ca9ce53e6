//! What this node does with each cluster message, and which sender may send it.
//!
//! The transport admits only the configured peer (by certificate, cluster secret or source
//! address; `transport::admission`), so `from` is always the other data node. Each message
//! is then acted on only in the role that may receive it; in any other role it is answered
//! with this node's state and changes nothing but a checked epoch (`Core::adopt_epoch`):
//!
//! | message | sent by | acted on when this node is | otherwise |
//! |---|---|---|---|
//! | `FETCH` | the standby | primary (or handing over) whose write path works | `NotPrimary` with this node's epoch; `unavailable` from a primary whose write path failed |
//! | `ACK` | the standby | primary, same epoch | ignored |
//! | `SNAPSHOT_CHUNK` | the standby | holding the prepared snapshot | `snapshot_expired` |
//! | `FENCE` | either node | any role: a higher epoch fences, an equal one is the primary's contact | — |
//! | `FORWARD` | the standby | primary, command within the HTTP limits | `not_leader` / `bad_request` / `too_large` |
//! | `READ_INDEX` | the standby | primary | `primary: false` |
//! | `PROMOTE` | the primary (switchover) | standby of the same epoch, caught up | `rejected` |
//! | `SWITCHOVER` | either node | primary (a standby passes it on) | `rejected` |
//! | `WITNESS_*` | — (to the witness only) | never on a data node | `unknown_message` |

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::messages::*;
use super::Core;
use crate::transport::{Handler, NodeId, RemoteError};
use super::stream::{serve_fetch, on_ack};
use super::snapshot_transfer::{serve_chunk};
use super::heartbeat::{on_fence};
use super::switchover::{switchover};
use super::forward::{on_forward};

pub(crate) struct HaHandler {
    pub core: Arc<Core>,
}

pub(super) fn bad(e: String) -> RemoteError {
    RemoteError::new("bad_request", e)
}

#[async_trait]
impl Handler for HaHandler {
    async fn on_request(&self, _from: &NodeId, msg_type: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
        let core = &self.core;
        match msg_type {
            FETCH => match core.write_path_failure() {
                // Silent to its standby: see `Core::write_path_failure`.
                Some(why) => Err(RemoteError::new("unavailable", format!("the primary's write path failed: {why}"))),
                None => Ok(encode(&serve_fetch(core, decode(&payload).map_err(bad)?).await)),
            },
            SNAPSHOT_CHUNK => serve_chunk(core, decode(&payload).map_err(bad)?).await.map(|c| encode(&c)),
            FENCE => Ok(encode(&on_fence(core, decode(&payload).map_err(bad)?).await)),
            FORWARD => Ok(encode(&on_forward(core, decode(&payload).map_err(bad)?).await)),
            READ_INDEX => Ok(encode(&super::read_index::on_read_index(core, decode(&payload).map_err(bad)?).await)),
            PROMOTE => super::promotion::on_promote(core, decode(&payload).map_err(bad)?).await.map(|r| encode(&r)),
            SWITCHOVER => switchover(core)
                .await
                .map(|v| Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
                .map_err(|e| RemoteError::new("rejected", e.to_string())),
            other => Err(RemoteError::new("unknown_message", format!("HA node does not handle message type {other:#x}"))),
        }
    }

    async fn on_message(&self, _from: &NodeId, msg_type: u16, payload: Bytes) {
        if msg_type == ACK {
            if let Ok(a) = decode::<Ack>(&payload) {
                on_ack(&self.core, a);
            }
        }
    }
}
