//! What can go wrong when sending to a peer, and the application error a peer sends back.
//!
//! Delivery, as a caller should read it:
//! - `UnknownPeer`, `FrameTooLarge`, `Closed`, `Tls`, `Handshake`, and `Unreachable` while
//!   the peer is backing off: the message was not sent.
//! - `Unreachable` because the connection dropped while a request was in flight, and
//!   `Timeout`: the peer may or may not have handled it.
//! - `Remote`: the peer handled the request and its handler answered with an error.

use bytes::{BufMut, Bytes, BytesMut};

use super::handshake::HandshakeError;
use super::NodeId;

/// An application error carried back to the caller of [`Transport::request`](super::Transport::request).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// Machine-readable, e.g. `not_leader`, `fenced`.
    pub code: String,
    pub message: String,
}

impl RemoteError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> RemoteError {
        RemoteError { code: code.into(), message: message.into() }
    }

    /// Wire form (payload of an `ErrorResponse`): u16 BE code length, code, message.
    pub(crate) fn encode(&self) -> Bytes {
        let code = truncate_utf8(&self.code, u16::MAX as usize);
        let mut b = BytesMut::with_capacity(2 + code.len() + self.message.len());
        b.put_u16(code.len() as u16);
        b.put_slice(code.as_bytes());
        b.put_slice(self.message.as_bytes());
        b.freeze()
    }

    /// Lenient on purpose: a garbled error body still reaches the caller as an error.
    pub(crate) fn decode(b: &[u8]) -> RemoteError {
        if b.len() >= 2 {
            let n = u16::from_be_bytes([b[0], b[1]]) as usize;
            if b.len() >= 2 + n {
                return RemoteError {
                    code: String::from_utf8_lossy(&b[2..2 + n]).into_owned(),
                    message: String::from_utf8_lossy(&b[2 + n..]).into_owned(),
                };
            }
        }
        RemoteError::new("malformed_error", String::from_utf8_lossy(b).into_owned())
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection to the peer: connect failed, the peer is in backoff after failures,
    /// or the connection dropped (`reason` says which).
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    /// No reply within the deadline; the request may still be handled by the peer.
    #[error("no reply from {peer} within the deadline")]
    Timeout { peer: NodeId },
    /// The peer's handler answered with an error.
    #[error("peer error {0}")]
    Remote(RemoteError),
    #[error("unknown peer {0}: add it with add_peer first")]
    UnknownPeer(NodeId),
    /// The payload would exceed `max_frame_bytes`; nothing was sent.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: u64, max: usize },
    /// The transport was shut down (or the request was cut short by the shutdown).
    #[error("the transport is shut down")]
    Closed,
    /// Binding the cluster port.
    #[error("cluster port: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake with the peer failed (certificate not trusted, expired, wrong name,
    /// protocol version refused, …).
    #[error("TLS with {peer} failed: {reason}")]
    Tls { peer: NodeId, reason: String },
    /// The cluster handshake with the peer failed (refused, wrong node, malformed).
    #[error("handshake with {peer} failed: {source}")]
    Handshake { peer: NodeId, source: HandshakeError },
    /// A setting in [`TransportConfig`](super::TransportConfig) is unusable.
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(String),
}

impl TransportError {
    /// A short, stable name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Unreachable { .. } => "unreachable",
            TransportError::Timeout { .. } => "timeout",
            TransportError::Remote(_) => "remote",
            TransportError::UnknownPeer(_) => "unknown_peer",
            TransportError::FrameTooLarge { .. } => "frame_too_large",
            TransportError::Closed => "closed",
            TransportError::Io(_) => "io",
            TransportError::Tls { .. } => "tls",
            TransportError::Handshake { .. } => "handshake",
            TransportError::InvalidConfig(_) => "invalid_config",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_error_round_trips_and_garbage_still_decodes() {
        let e = RemoteError::new("not_leader", "leader is node2 — ask there");
        assert_eq!(RemoteError::decode(&e.encode()), e);
        assert_eq!(RemoteError::decode(&[0xFF]).code, "malformed_error");
        assert_eq!(RemoteError::decode(&[0, 9, b'x']).code, "malformed_error");
    }
}
