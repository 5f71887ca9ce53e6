//! Start-up recovery shared by every mode: replay the WAL into the state machine.
//!
//! The state machine may commit with relaxed durability, so after a crash its durable applied
//! index can trail the WAL. Replaying `(durable_index, wal.last_index()]` brings it back to
//! everything the WAL made durable — which includes every write that was acknowledged.
//!
//! Replay trusts that `wal` is the WAL the state was built from. The caller makes sure of it
//! before: the state remembers that WAL's identity and opens it with
//! `WalOptions::expected_id`, so a deleted or swapped WAL never reaches this function as an
//! empty log (`meridian`'s `storage` module). What is left to check here is the indexes.

use meridian_wal::Wal;
use tracing::info;

use crate::payload::{LogPayload, PayloadError};
use crate::state_machine::{LogEntry, StateMachine};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("the WAL starts at index {first} but the state needs index {needed}: the entries between were purged; restore from a backup")]
    Gap { first: u64, needed: u64 },
    #[error("the WAL ends at index {wal_last} but the state has applied {applied}: records {}..={applied} are missing from the WAL's end", .wal_last + 1)]
    WalBehindState { wal_last: u64, applied: u64 },
    #[error("WAL record {index} does not decode: {source}")]
    BadPayload { index: u64, source: PayloadError },
    #[error(transparent)]
    Wal(#[from] meridian_wal::WalError),
    #[error(transparent)]
    State(#[from] crate::state_machine::StateMachineError),
}

/// Replays the WAL into `sm`; returns how many entries were applied.
pub fn replay(wal: &Wal, sm: &dyn StateMachine) -> Result<u64, RecoveryError> {
    replay_to(wal, sm, u64::MAX)
}

/// Replays the WAL into `sm` up to index `upto` only (an HA standby applies only what its
/// primary has made durable); returns how many entries were applied.
pub fn replay_to(wal: &Wal, sm: &dyn StateMachine, upto: u64) -> Result<u64, RecoveryError> {
    let applied = sm.applied_index();
    let (first, last) = (wal.first_index(), wal.last_index());
    if last < applied {
        if first > last {
            // An empty WAL under a restored or snapshot-installed state: continue after it.
            wal.reset_to(applied + 1)?;
            return Ok(0);
        }
        return Err(RecoveryError::WalBehindState { wal_last: last, applied });
    }
    if first > applied + 1 {
        return Err(RecoveryError::Gap { first, needed: applied + 1 });
    }
    if upto <= applied {
        return Ok(0);
    }
    let last = last.min(upto);
    let mut next = applied + 1;
    let mut replayed = 0;
    while next <= last {
        let records = wal.read_from(next, 4096, 16 << 20)?;
        if records.is_empty() {
            break;
        }
        let mut entries = Vec::with_capacity(records.len());
        for r in records.into_iter().take_while(|r| r.index <= last) {
            let payload = LogPayload::decode(&r.payload).map_err(|source| RecoveryError::BadPayload { index: r.index, source })?;
            entries.push(LogEntry::from_payload(r.index, r.epoch, payload));
        }
        next = entries.last().map_or(next, |e| e.index + 1);
        replayed += entries.len() as u64;
        sm.apply(&entries)?;
    }
    if replayed > 0 {
        info!(from = applied + 1, to = next - 1, "replayed WAL into the state machine");
        sm.checkpoint()?;
    }
    Ok(replayed)
}
