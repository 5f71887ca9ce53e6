//! [`StateMachineError`]: what a [`StateMachine`](crate::StateMachine) operation fails with.
//!
//! In a file of its own so that [`apply`](crate::apply), which the state machine calls, can
//! return it without importing the state machine; the public path is
//! `state_machine::StateMachineError`.

use crate::snapshot::SnapshotError;

#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("entry {got} applied out of order (applied index is {applied})")]
    OutOfOrder { applied: u64, got: u64 },
    /// Stored bytes fail their checksum: the data on disk was damaged after it was
    /// written. Never served as data; the HTTP layer answers 500 `internal`.
    #[error("stored value of key {key:?} is damaged: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}
