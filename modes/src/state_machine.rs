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
use crate::payload::LogPayload;
use crate::snapshot::{SnapshotError, SnapshotMeta, SnapshotReader, SnapshotWriter};

pub use crate::state_machine_error::StateMachineError;

/// A committed entry handed to [`StateMachine::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub epoch: u64,
    pub command: Command,
    /// Replication metadata that becomes current when this entry is applied, stored in the
    /// same transaction (Raft: the membership config of a Membership entry). The state
    /// machine keeps it opaque; `None` leaves the stored metadata as it was.
    pub meta: Option<Vec<u8>>,
}

impl LogEntry {
    /// The entry a logged payload stands for, the same on the writing node, on replay and on a
    /// replica: a command applies as itself; a membership change applies as a no-op whose
    /// bytes become the current metadata, so replaying the log restores them too.
    pub fn from_payload(index: u64, epoch: u64, payload: LogPayload) -> LogEntry {
        let (command, meta) = match payload {
            LogPayload::Normal(c) => (c, None),
            LogPayload::Blank => (Command::Noop, None),
            LogPayload::Membership(m) => (Command::Noop, Some(m)),
        };
        LogEntry { index, epoch, command, meta }
    }
}

/// The last applied entry's position and the metadata current there, from one read view, so
/// a mode never pairs an index with metadata from another point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedState {
    pub index: u64,
    pub epoch: u64,
    /// The latest metadata stored, by an entry's [`LogEntry::meta`] or by
    /// [`StateMachine::replace_all`]; `None` if there never was any.
    pub meta: Option<Vec<u8>>,
}

/// What [`StateMachine::scan`] reports, in order.
pub enum ScanEvent {
    /// The view's applied index, the epoch of the last applied entry and the metadata current
    /// there (see [`AppliedState`]); comes first, once.
    View { applied_index: u64, epoch: u64, meta: Option<Vec<u8>> },
    Entry(KeyValue),
}

/// How often the checkpoint loops ask [`StateMachine::checkpoint_due`] between timed checkpoints.
pub const CHECKPOINT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The checkpoint loops' one rule: every `interval`, and sooner when the store asks.
pub fn checkpoint_wanted(since_last: std::time::Duration, interval: std::time::Duration, sm: &dyn StateMachine) -> bool {
    since_last >= interval || sm.checkpoint_due()
}

/// Applied state plus the reads the API serves from it.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies committed entries, in index order, as one atomic batch; one result per entry.
    /// Entries at or below the applied index are skipped (replay after a crash is idempotent)
    /// and get no result.
    fn apply(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError>;
    /// Highest applied index visible to readers.
    fn applied_index(&self) -> u64;
    /// Index, epoch and metadata of the applied state, read from one consistent view.
    fn applied_state(&self) -> Result<AppliedState, StateMachineError>;
    /// Highest applied index that survives a crash; WAL replay starts after it.
    fn durable_index(&self) -> u64;
    /// Makes everything applied durable; returns the new durable index.
    fn checkpoint(&self) -> Result<u64, StateMachineError>;
    /// Whether the store wants a checkpoint before the next interval is up: the loops that
    /// checkpoint on a timer ask this often, so a store whose cost grows with what it applied
    /// since the last checkpoint (not with time) gets one by volume too.
    fn checkpoint_due(&self) -> bool {
        false
    }
    /// The key as clients see it: a tombstone or a reserved key is absent.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        Ok(self.get_version(key)?.filter(KeyValue::is_visible))
    }
    /// The stored version of `key`, tombstones and reserved keys included (multi-region
    /// shipping and high-water marks read these).
    fn get_version(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError>;
    /// [`get_version`](Self::get_version) of each key, in order. A store whose reads each
    /// open a transaction serves them from one (the region shipper reads a batch's keys
    /// together); each version is as new as `get_version` at the call's start would give, or
    /// newer.
    fn get_versions(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, StateMachineError> {
        keys.iter().map(|k| self.get_version(k)).collect()
    }
    /// Visible keys ([`KeyValue::is_visible`]) starting with `prefix`, strictly after
    /// `start_after`, in key order, at most `limit`.
    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError>;
    /// Stored keys starting with `prefix` (tombstones and reserved keys included), strictly
    /// after `start_after`, in key order, at most `limit`: how the store's own records under
    /// a reserved prefix are listed (multi-region conflicts). This default scans everything.
    fn list_versions(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        let mut out = Vec::new();
        self.scan(&mut |ev| {
            if let ScanEvent::Entry(kv) = ev {
                if out.len() < limit && kv.key.starts_with(prefix) && start_after.is_none_or(|s| kv.key.as_str() > s) {
                    out.push(kv);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }
    /// Visits one consistent view: first [`ScanEvent::View`], then every stored key in key
    /// order, tombstones and reserved keys included.
    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError>;
    /// After a storage I/O error (a full disk): makes the store usable again, reopening what
    /// latched the error, and leaves it as a restart would find it — what was applied but not
    /// yet durable may be dropped (the applied index goes back), and the caller replays the
    /// WAL from there. Called once the disk has room again; an error means not yet. The
    /// default has nothing to reopen.
    fn reopen_storage(&self) -> Result<(), StateMachineError> {
        Ok(())
    }
    /// A write to the store failed with a storage error that stays until the store is opened
    /// again ([`StateMachine::reopen_storage`]): redb refuses every later commit after one
    /// failed (`PreviousIo`), room or not. The node treats it as it treats a failed WAL
    /// (`resume.rs` in the `meridian` package). The default never fails this way.
    fn storage_failure(&self) -> Option<String> {
        None
    }
    /// The latest damage found in stored data, for `/health` (see [`StateMachineError::Corrupt`]).
    fn damage(&self) -> Option<String> {
        None
    }
    /// Replaces the whole state with `entries` at (`applied_index`, `epoch`) with metadata
    /// `meta` (replacing whatever was stored), durably.
    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        meta: Option<Vec<u8>>,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError>;
    /// Begins a store *image*: a copy of the store's own file at a durable applied point,
    /// which a node of the same build installs as it is ([`StateMachine::install_image`]), so
    /// a re-seed moves at disk speed instead of inserting every key again. The file stays as
    /// it is until the returned [`ImageCopy`] is dropped (applies go on meanwhile). `None`:
    /// this store makes no images (the caller sends a logical snapshot instead).
    fn begin_image(&self) -> Result<Option<Box<dyn ImageCopy + '_>>, StateMachineError> {
        Ok(None)
    }
    /// Replaces the whole state with an image of `size` bytes read from `input` (what
    /// [`StateMachine::write_image`] wrote on another node), durably and all or nothing. The
    /// facts that are this node's own (its WAL binding, its revision ceiling) stay its own.
    fn install_image(&self, input: &mut dyn Read, size: u64) -> Result<SnapshotMeta, StateMachineError> {
        let _ = (input, size);
        Err(StateMachineError::Storage("this store cannot install a store image".into()))
    }
}

/// A store image being taken ([`StateMachine::begin_image`]): what it holds and how large it
/// is are known at once, so it can be offered while it is copied.
pub trait ImageCopy {
    fn meta(&self) -> &SnapshotMeta;
    fn size(&self) -> u64;
    /// Copies the image to `dest` from its start, calling `progress` with the bytes written
    /// so far after each step (a reader may read below that mark while the copy goes on).
    fn copy_to(&mut self, dest: &std::path::Path, progress: &mut dyn FnMut(u64)) -> Result<(), StateMachineError>;
    /// The store's own file, which readers may read as the image itself while this lives (it
    /// does not change until dropped), with no copy at all; `None`: only a copy serves.
    fn live_path(&self) -> Option<&std::path::Path> {
        None
    }
    /// The store needs its writes back soon (what piled up while it was held still nears its
    /// bound): a live image should be copied and let go.
    fn should_release(&self) -> bool {
        false
    }
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
            ScanEvent::View { applied_index, epoch, meta } => {
                let o = out.take().expect("scan announces its view once");
                writer = Some(SnapshotWriter::new(o, applied_index, epoch, meta).map_err(SnapshotError::from)?);
            }
            ScanEvent::Entry(kv) => writer.as_mut().expect("view comes first").write(&kv).map_err(SnapshotError::from)?,
        }
        Ok(())
    })?;
    let writer = writer.expect("scan announced no view");
    Ok(writer.finish().map_err(SnapshotError::from)?)
}

/// Replaces the state of `sm` with the snapshot read from `input`. Nothing changes unless the
/// whole stream verifies (the implementation's `replace_all` is all or nothing).
pub fn install_snapshot<R: Read>(sm: &dyn StateMachine, input: R) -> Result<SnapshotMeta, StateMachineError> {
    install_snapshot_sized(sm, input, None)
}

/// [`install_snapshot`] of a stream of `total` bytes when known (a file): progress lines
/// (bytes, rate, time left) every few seconds, and one when done.
pub fn install_snapshot_sized<R: Read>(sm: &dyn StateMachine, input: R, total: Option<u64>) -> Result<SnapshotMeta, StateMachineError> {
    let input = crate::progress::Counting { inner: input, progress: crate::progress::Progress::new("snapshot install", total) };
    let mut reader = SnapshotReader::new(input)?;
    // The metadata is trusted only because the whole stream must verify before the
    // transaction that stores it commits.
    let (applied, epoch, meta) = (reader.applied_index, reader.epoch, reader.replication_meta.clone());
    sm.replace_all(applied, epoch, meta, &mut || Ok(reader.next_entry()?))?;
    reader.inner().progress.finish();
    Ok(reader.meta())
}

/// A hash of the applied state, to prove that replicas converged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateDigest {
    pub applied_index: u64,
    pub keys: u64,
    /// Hex SHA-256 over (key, value) pairs in key order, and for multi-region versions their
    /// stamp and tombstone flag. Reserved keys (per-region high-water marks) are left out.
    pub sha256: String,
    /// multi_region: tombstones among `keys`. Each region collects its tombstones on its own
    /// schedule, so two converged regions' `sha256` can differ by tombstones one has
    /// collected; `live_sha256` (over what clients can read) cannot.
    #[serde(default)]
    pub tombstones: u64,
    /// Hex SHA-256 over the live (key, value, stamp) entries only.
    #[serde(default)]
    pub live_sha256: String,
}

pub fn digest(sm: &dyn StateMachine) -> Result<StateDigest, StateMachineError> {
    let mut h = Sha256::new();
    let mut live = Sha256::new();
    let (mut keys, mut tombstones) = (0u64, 0u64);
    let mut applied_index = 0;
    sm.scan(&mut |ev| {
        let kv = match ev {
            ScanEvent::View { applied_index: a, .. } => {
                applied_index = a;
                return Ok(());
            }
            ScanEvent::Entry(kv) => kv,
        };
        if crate::command::is_reserved(&kv.key) {
            return Ok(());
        }
        let mut entry = Vec::with_capacity(kv.key.len() + kv.value.len() + 48);
        entry.extend_from_slice(&(kv.key.len() as u64).to_le_bytes());
        entry.extend_from_slice(kv.key.as_bytes());
        entry.extend_from_slice(&(kv.value.len() as u64).to_le_bytes());
        entry.extend_from_slice(&kv.value);
        // Unstamped keys hash as they always did, so digests from before multi-region hold.
        if let Some(st) = &kv.stamp {
            entry.extend_from_slice(&[0xFF, kv.tombstone as u8]);
            entry.extend_from_slice(&st.hlc.to_le_bytes());
            entry.extend_from_slice(&(st.region.len() as u64).to_le_bytes());
            entry.extend_from_slice(st.region.as_bytes());
        }
        h.update(&entry);
        if kv.tombstone {
            tombstones += 1;
        } else {
            live.update(&entry);
        }
        keys += 1;
        Ok(())
    })?;
    Ok(StateDigest { applied_index, keys, sha256: hex::encode(h.finalize()), tombstones, live_sha256: hex::encode(live.finalize()) })
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
    meta: Option<Vec<u8>>,
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
            if e.meta.is_some() {
                g.meta = e.meta.clone();
            }
        }
        self.applied.store(g.applied, Ordering::Release);
        Ok(out)
    }
    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
    fn applied_state(&self) -> Result<AppliedState, StateMachineError> {
        let g = self.inner.lock().unwrap();
        Ok(AppliedState { index: g.applied, epoch: g.epoch, meta: g.meta.clone() })
    }
    fn durable_index(&self) -> u64 {
        self.applied_index()
    }
    fn checkpoint(&self) -> Result<u64, StateMachineError> {
        Ok(self.applied_index())
    }
    fn get_version(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
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
            .filter(|(_, v)| v.is_visible())
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect())
    }
    fn list_versions(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        let g = self.inner.lock().unwrap();
        Ok(g.kv.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|s| k.as_str() > s))
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect())
    }
    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
        let g = self.inner.lock().unwrap();
        visit(ScanEvent::View { applied_index: g.applied, epoch: g.epoch, meta: g.meta.clone() })?;
        for kv in g.kv.values() {
            visit(ScanEvent::Entry(kv.clone()))?;
        }
        Ok(())
    }
    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        meta: Option<Vec<u8>>,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError> {
        let mut kv = BTreeMap::new();
        while let Some(e) = entries()? {
            kv.insert(e.key.clone(), e);
        }
        let mut g = self.inner.lock().unwrap();
        *g = MemInner { kv, applied: applied_index, epoch, meta };
        self.applied.store(applied_index, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
/// The [`StateMachine`] methods a test wrapper passes to its `inner` unchanged; the
/// wrapper writes only the ones it changes (`(apply)`: `apply` passes through too;
/// `(reads)`: neither `apply` nor the checkpoint methods).
macro_rules! delegate_to_inner {
    (apply) => {
        fn apply(&self, e: &[$crate::state_machine::LogEntry]) -> Result<Vec<$crate::command::CommandResult>, $crate::state_machine::StateMachineError> {
            self.inner.apply(e)
        }
        $crate::state_machine::delegate_to_inner!();
    };
    () => {
        fn checkpoint(&self) -> Result<u64, $crate::state_machine::StateMachineError> {
            self.inner.checkpoint()
        }
        fn checkpoint_due(&self) -> bool {
            self.inner.checkpoint_due()
        }
        $crate::state_machine::delegate_to_inner!(reads);
    };
    (reads) => {
        fn applied_index(&self) -> u64 {
            self.inner.applied_index()
        }
        fn applied_state(&self) -> Result<$crate::state_machine::AppliedState, $crate::state_machine::StateMachineError> {
            self.inner.applied_state()
        }
        fn durable_index(&self) -> u64 {
            self.inner.durable_index()
        }
        fn get_version(&self, key: &str) -> Result<Option<$crate::command::KeyValue>, $crate::state_machine::StateMachineError> {
            self.inner.get_version(key)
        }
        fn get_versions(&self, keys: &[String]) -> Result<Vec<Option<$crate::command::KeyValue>>, $crate::state_machine::StateMachineError> {
            self.inner.get_versions(keys)
        }
        fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<$crate::command::KeyValue>, $crate::state_machine::StateMachineError> {
            self.inner.list(prefix, start_after, limit)
        }
        fn replace_all(
            &self,
            applied_index: u64,
            epoch: u64,
            meta: Option<Vec<u8>>,
            entries: &mut dyn FnMut() -> Result<Option<$crate::command::KeyValue>, $crate::state_machine::StateMachineError>,
        ) -> Result<(), $crate::state_machine::StateMachineError> {
            self.inner.replace_all(applied_index, epoch, meta, entries)
        }
    };
}
#[cfg(test)]
pub(crate) use delegate_to_inner;

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, epoch: u64, meta: Option<&[u8]>) -> LogEntry {
        LogEntry { index, epoch, command: Command::Put { key: format!("k{index}"), value: vec![1], if_revision: None }, meta: meta.map(<[u8]>::to_vec) }
    }

    #[test]
    fn a_membership_payload_applies_as_a_noop_carrying_its_meta() {
        let e = LogEntry::from_payload(4, 2, LogPayload::Membership(vec![9]));
        assert_eq!((e.command, e.meta), (Command::Noop, Some(vec![9])));
        let e = LogEntry::from_payload(4, 2, LogPayload::Blank);
        assert_eq!((e.command, e.meta), (Command::Noop, None));
        let c = Command::Delete { key: "k".into(), if_revision: None };
        let e = LogEntry::from_payload(4, 2, LogPayload::Normal(c.clone()));
        assert_eq!((e.index, e.epoch, e.command, e.meta), (4, 2, c, None));
    }

    #[test]
    fn applied_state_keeps_the_latest_meta_until_another_replaces_it() {
        let sm = MemStateMachine::default();
        assert_eq!(sm.applied_state().unwrap(), AppliedState::default());
        sm.apply(&[put(1, 1, Some(b"m1")), put(2, 1, None)]).unwrap();
        assert_eq!(sm.applied_state().unwrap(), AppliedState { index: 2, epoch: 1, meta: Some(b"m1".to_vec()) });
        sm.apply(&[put(3, 2, Some(b"m3")), put(4, 2, None)]).unwrap();
        assert_eq!(sm.applied_state().unwrap(), AppliedState { index: 4, epoch: 2, meta: Some(b"m3".to_vec()) });
        // Replay of an applied entry is skipped, its meta with it.
        sm.apply(&[put(3, 2, Some(b"stale"))]).unwrap();
        assert_eq!(sm.applied_state().unwrap().meta, Some(b"m3".to_vec()));
        sm.replace_all(9, 3, None, &mut || Ok(None)).unwrap();
        assert_eq!(sm.applied_state().unwrap(), AppliedState { index: 9, epoch: 3, meta: None });
    }

    #[test]
    fn a_snapshot_carries_meta_but_the_digest_ignores_it() {
        let (a, b) = (MemStateMachine::default(), MemStateMachine::default());
        a.apply(&[put(1, 1, None), put(2, 1, Some(b"cfg"))]).unwrap();
        b.apply(&[put(1, 1, None), put(2, 1, None)]).unwrap();
        assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
        let (buf, meta) = write_snapshot(&a, Vec::new()).unwrap();
        assert_eq!(meta.meta, Some(b"cfg".to_vec()));
        let c = MemStateMachine::default();
        assert_eq!(install_snapshot(&c, &buf[..]).unwrap(), meta);
        assert_eq!(c.applied_state().unwrap(), a.applied_state().unwrap());
        assert_eq!(digest(&c).unwrap(), digest(&a).unwrap());
    }

    /// A stream cut or damaged late — after most entries have reached the store — installs
    /// nothing; the whole stream installs whole.
    #[test]
    fn a_snapshot_installs_whole_or_not_at_all() {
        let a = MemStateMachine::default();
        let n = 3089;
        a.apply(&(1..=n).map(|i| put(i, 1, None)).collect::<Vec<_>>()).unwrap();
        let buf = write_snapshot(&a, Vec::new()).unwrap().0;
        let c = MemStateMachine::default();
        c.apply(&[put(1, 1, Some(b"before"))]).unwrap();
        let before = digest(&c).unwrap();
        for cut in [buf.len() * 3 / 4, buf.len() - 5] {
            assert!(install_snapshot(&c, &buf[..cut]).is_err(), "a stream cut at {cut} of {} installed", buf.len());
            assert_eq!(digest(&c).unwrap(), before, "a stream cut at {cut} changed the state");
        }
        let mut flipped = buf.clone();
        let at = buf.len() * 3 / 4;
        flipped[at] ^= 0x20;
        assert!(install_snapshot(&c, &flipped[..]).is_err(), "a damaged stream installed");
        assert_eq!(digest(&c).unwrap(), before);
        let meta = install_snapshot(&c, &buf[..]).unwrap();
        assert_eq!(meta.keys, n);
        assert_eq!(digest(&c).unwrap(), digest(&a).unwrap());
    }
}
