//! [`Handler`]: what a mode plugs into the transport to receive traffic.

use async_trait::async_trait;
use bytes::Bytes;

use super::{NodeId, RemoteError};

/// Receives everything peers send to this node. `from` is the peer's node id as
/// established by the handshake (and, with client verification, by its certificate).
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
