//! [`Handler`]: what a mode plugs into the transport to receive traffic.

use async_trait::async_trait;
use bytes::Bytes;

use super::{NodeId, RemoteError};

/// Receives everything peers send to this node. `from` names the sender as admission
/// established it: the label of the configured peer it was admitted as (e.g. `peer`), or the
/// policy's label for [`Admission::Members`](super::Admission::Members), or — only under
/// [`Admission::Any`](super::Admission::Any) — the node id it claimed in the handshake
/// (verified against its certificate with mTLS). A handler can therefore decide which
/// message types each role may send by `from` alone.
///
/// Requests run concurrently, each in its own task, so a slow request does not hold up
/// others on the same connection. One-way messages from one connection are delivered one at
/// a time, in order; while `on_message` runs, further messages from that connection wait,
/// which pushes back on the sender.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// A request from an authenticated peer; the reply goes back to that caller only.
    async fn on_request(&self, from: &NodeId, msg_type: u16, payload: Bytes) -> Result<Bytes, RemoteError>;

    /// A one-way message (e.g. a WAL batch on a stream); no reply.
    async fn on_message(&self, from: &NodeId, msg_type: u16, payload: Bytes);
}
