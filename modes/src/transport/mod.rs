//! # Cluster transport — framed, optionally mutually-authenticated connections between nodes
//!
//! Every mode talks to other nodes through one [`Transport`]: Raft RPCs and forwarded
//! writes as [`Transport::request`] (one reply per request, many in flight on one
//! connection), WAL streaming and fencing notices as [`Transport::send`] (one-way, in order
//! per connection). Incoming traffic goes to the mode's [`Handler`] — on a node that speaks
//! several protocols, a [`Families`] that passes each message to the handler of its family.
//!
//! Module map (one concept per file):
//! - [`frame`]: the wire format — a 4-byte big-endian length, an 11-byte header (kind,
//!   message type, request id) and the payload. The only place that turns bytes into frames.
//! - `connection`: buffered frame reading and writing over a TCP or TLS stream, the
//!   byte-bounded send queue, the per-connection close signal.
//! - [`handshake`]: the first exchange on every connection (magic, protocol version,
//!   cluster id, node id, and the cluster secret's challenge and proof) and the check that a
//!   TLS peer's certificate names the node it claims.
//! - [`admission`]: who may connect ([`Admission`]: the configured peers, by certificate,
//!   secret or source address) and the name (`from`) an admitted connection's traffic carries.
//! - `address`: the host part of a peer address (`host:port`, `[v6]:port`), the TLS server
//!   name and what admission matches.
//! - [`secret`]: the cluster secret's HMAC proofs.
//! - `pending`, `refusals`: the caps on handshakes pending per source and in all, and the
//!   rate-limited log of refused connections.
//! - [`tls`]: loading PEM files into rustls server and client configurations (ring provider).
//! - [`certs`]: development certificates (a CA and one certificate per node) made with rcgen.
//! - `link`: the client side of one established connection — request correlation,
//!   keep-alive pings, round-trip times.
//! - `peer`: one remote node — lazy connect, reconnect with capped exponential backoff and
//!   jitter, fail-fast while backing off.
//! - `peer_stats`: one peer's counters (round-trip time, failures, last error), written by
//!   the peer and its link, read for [`PeerStatus`].
//! - `server`: the accept loop (checks made before any handshake) and the serving side of a
//!   connection (a task per request).
//! - `endpoint`: [`Transport`], the handle the rest of the node holds.
//! - `shared`: what every task of one transport reads (settings, TLS, metrics, handler,
//!   admission gate, refusal log); never changes after start.
//! - [`families`]: message types as family (high byte) and message (low byte), and
//!   [`Families`], the handler that routes each message to its family's handler.
//! - [`switch`]: [`Switch`], the handler the port keeps while the mode behind it stops and
//!   starts again (after a storage error).
//! - [`config`], [`error`], `metrics`, `handler`, `shutdown`: settings, error enums,
//!   Prometheus metrics, the [`Handler`] trait, and the stop signal shared by all tasks.
//!
//! Connections are one-directional in purpose: a node sends its requests and one-way
//! messages over the connection it opened to a peer, and serves the peer's traffic on the
//! connection the peer opened to it. So two nodes talking both ways hold two connections.

mod address;
pub mod admission;
pub mod certs;
pub mod config;
mod connection;
mod endpoint;
pub mod error;
pub mod families;
pub mod frame;
mod handler;
pub mod handshake;
mod link;
mod metrics;
mod peer;
mod peer_stats;
mod pending;
mod refusals;
pub mod secret;
mod server;
mod shared;
mod shutdown;
pub mod switch;
pub mod tls;

/// A node's name in the cluster, e.g. `node1`. With TLS it must also be a DNS name in the
/// node's certificate. What a [`Handler`] receives as `from` is the admitted peer's label
/// (see [`Admission`]), which is the node id only under [`Admission::Any`].
pub type NodeId = String;

pub use admission::{Admission, AllowedPeer, NotAdmitted};
pub use config::TransportConfig;
pub use endpoint::{PeerStatus, Transport};
pub use error::{RemoteError, TransportError};
pub use families::{Families, Family};
pub use handler::Handler;
pub use handshake::{HandshakeError, RejectReason};
pub use secret::ClusterSecret;
pub use switch::Switch;
pub use tls::{TlsConfigError, TlsPaths, TlsSettings, TlsVersion};
