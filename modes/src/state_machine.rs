//! The state machine seam: what a replication mode needs from storage.
//!
//! A mode decides *when* an entry is committed; the state machine applies committed entries
//! in index order and serves reads. The `meridian` package implements it on redb
//! (`src/store/`); [`MemStateMachine`] serves this crate's tests. Snapshots and digests are
//! built here on top of [`StateMachine::scan`], so every implementation produces the same
//! bytes for the same state.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use crate::apply::{apply_command, KvAccess};
use crate::command::{Command, CommandResult, KeyValue};
use crate::snapshot::{SnapshotError, SnapshotMeta, SnapshotReader, SnapshotWriter};

/// A committed entry handed to [`StateMachine::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub epoch: u64,
    pub command: Command,
}

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

/// What [`StateMachine::scan`] reports, in order.
pub enum ScanEvent {
    /// The view's applied index and the epoch of the last applied entry; comes first, once.
    View { applied_index: u64, epoch: u64 },
    Entry(KeyValue),
}

/// Applied state plus the reads the API serves from it.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies committed entries, in index order, as one atomic batch; one result per entry.
    /// Entries at or below the applied index are skipped (replay after a crash is idempotent)
    /// and get no result.
    fn apply(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError>;
    /// Highest applied index visible to readers.
    fn applied_index(&self) -> u64;
    /// Highest applied index that survives a crash; WAL replay starts after it.
    fn durable_index(&self) -> u64;
    /// Makes everything applied durable; returns the new durable index.
    fn checkpoint(&self) -> Result<u64, StateMachineError>;
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError>;
    /// Keys starting with `prefix`, strictly after `start_after`, in key order, at most `limit`.
    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError>;
    /// Visits one consistent view: first [`ScanEvent::View`], then every key in key order.
    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError>;
    /// The latest damage found in stored data, for `/health` (see [`StateMachineError::Corrupt`]).
    fn damage(&self) -> Option<String> {
        None
    }
    /// Replaces the whole state with `entries` at (`applied_index`, `epoch`), durably.
    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError>;
}

/// The ordering rule every implementation of [`StateMachine::apply`] follows: `Ok(false)`
/// skips an entry already applied (replay is idempotent), `Ok(true)` applies the next one,
/// and anything that would leave a hole is an error.
pub fn should_apply(applied: u64, index: u64) -> Result<bool, StateMachineError> {
    if index <= applied {
        Ok(false)
    } else if index == applied + 1 {
        Ok(true)
    } else {
        Err(StateMachineError::OutOfOrder { applied, got: index })
    }
}

/// Writes a consistent snapshot of `sm` to `out`.
pub fn write_snapshot<W: Write>(sm: &dyn StateMachine, out: W) -> Result<(W, SnapshotMeta), StateMachineError> {
    let mut out = Some(out);
    let mut writer: Option<SnapshotWriter<W>> = None;
    sm.scan(&mut |ev| {
        match ev {
            ScanEvent::View { applied_index, epoch } => {
                let o = out.take().expect("scan announces its view once");
                writer = Some(SnapshotWriter::new(o, applied_index, epoch).map_err(SnapshotError::from)?);
            }
            ScanEvent::Entry(kv) => writer.as_mut().expect("view comes first").write(&kv).map_err(SnapshotError::from)?,
        }
        Ok(())
    })?;
    let writer = writer.expect("scan announced no view");
    Ok(writer.finish().map_err(SnapshotError::from)?)
}

/// Replaces the state of `sm` with the snapshot read from `input`. Nothing changes unless the
/// whole stream verifies (the implementation's `replace_all` is one transaction).
pub fn install_snapshot<R: Read>(sm: &dyn StateMachine, input: R) -> Result<SnapshotMeta, StateMachineError> {
    let mut reader = SnapshotReader::new(input)?;
    let (applied, epoch) = (reader.applied_index, reader.epoch);
    sm.replace_all(applied, epoch, &mut || Ok(reader.next_entry()?))?;
    Ok(reader.meta())
}

/// A hash of the applied state, to prove that replicas converged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateDigest {
    pub applied_index: u64,
    pub keys: u64,
    /// Hex SHA-256 over (key, value) pairs in key order.
    pub sha256: String,
}

pub fn digest(sm: &dyn StateMachine) -> Result<StateDigest, StateMachineError> {
    let mut h = Sha256::new();
    let mut keys = 0u64;
    let mut applied_index = 0;
    sm.scan(&mut |ev| {
        let kv = match ev {
            ScanEvent::View { applied_index: a, .. } => {
                applied_index = a;
                return Ok(());
            }
            ScanEvent::Entry(kv) => kv,
        };
        h.update((kv.key.len() as u64).to_le_bytes());
        h.update(kv.key.as_bytes());
        h.update((kv.value.len() as u64).to_le_bytes());
        h.update(&kv.value);
        keys += 1;
        Ok(())
    })?;
    Ok(StateDigest { applied_index, keys, sha256: hex::encode(h.finalize()) })
}

/// An in-memory state machine for tests of the modes (durable index == applied index).
#[derive(Default)]
pub struct MemStateMachine {
    inner: Mutex<MemInner>,
    applied: AtomicU64,
}

#[derive(Default)]
struct MemInner {
    kv: BTreeMap<String, KeyValue>,
    applied: u64,
    epoch: u64,
}

impl KvAccess for BTreeMap<String, KeyValue> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        Ok(BTreeMap::get(self, key).cloned())
    }
    fn put(&mut self, kv: KeyValue) -> Result<(), StateMachineError> {
        self.insert(kv.key.clone(), kv);
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<bool, StateMachineError> {
        Ok(self.remove(key).is_some())
    }
}

impl StateMachine for MemStateMachine {
    fn apply(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError> {
        let mut g = self.inner.lock().unwrap();
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if !should_apply(g.applied, e.index)? {
                continue;
            }
            out.push(apply_command(&mut g.kv, e.index, &e.command)?);
            g.applied = e.index;
            g.epoch = e.epoch;
        }
        self.applied.store(g.applied, Ordering::Release);
        Ok(out)
    }
    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
    fn durable_index(&self) -> u64 {
        self.applied_index()
    }
    fn checkpoint(&self) -> Result<u64, StateMachineError> {
        Ok(self.applied_index())
    }
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        Ok(self.inner.lock().unwrap().kv.get(key).cloned())
    }
    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        let g = self.inner.lock().unwrap();
        let from = match start_after {
            Some(s) if s >= prefix => std::ops::Bound::Excluded(s.to_owned()),
            _ => std::ops::Bound::Included(prefix.to_owned()),
        };
        Ok(g.kv
            .range((from, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect())
    }
    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
        let g = self.inner.lock().unwrap();
        visit(ScanEvent::View { applied_index: g.applied, epoch: g.epoch })?;
        for kv in g.kv.values() {
            visit(ScanEvent::Entry(kv.clone()))?;
        }
        Ok(())
    }
    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError> {
        let mut kv = BTreeMap::new();
        while let Some(e) = entries()? {
            kv.insert(e.key.clone(), e);
        }
        let mut g = self.inner.lock().unwrap();
        *g = MemInner { kv, applied: applied_index, epoch };
        self.applied.store(applied_index, Ordering::Release);
        Ok(())
    }
}
