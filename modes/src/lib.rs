//! # meridian-modes — replication modes and the cluster transport
//!
//! Module map:
//! - [`command`]: the commands a client can submit (put, delete, txn) and their results;
//!   the bytes stored in each WAL record payload.
//! - [`state_machine`]: the [`StateMachine`] trait — apply committed entries, take and install
//!   snapshots. Defined here where it is consumed, implemented on redb in the `meridian`
//!   package; [`state_machine::MemStateMachine`] serves this crate's tests.
//! - [`replicator`]: the [`Replicator`] trait the HTTP layer talks to, its errors and status types.
//! - [`bookmark`]: the opaque causal-consistency token handed to clients.
//! - [`standalone`]: one node, durable: WAL group commit then apply.
//! - [`transport`]: framed, optionally mutually-authenticated TLS connections between nodes.
//!
//! Dependencies point one way: this crate knows the WAL, never HTTP.

pub mod apply;
pub mod bookmark;
pub mod command;
pub mod recovery;
pub mod replicator;
pub mod snapshot;
pub mod standalone;
pub mod state_machine;
pub mod transport;

pub use bookmark::Bookmark;
pub use command::{Command, CommandResult, KeyValue};
pub use replicator::Replicator;
pub use state_machine::StateMachine;
