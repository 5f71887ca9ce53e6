//! The state machine on redb: `key → (create_revision, mod_revision, value)` plus the last
//! applied index, implementing [`meridian_modes::StateMachine`].
//!
//! Apply batches commit with `Durability::None` (no fsync) because the WAL already made them
//! durable; [`RedbStore::checkpoint`] commits with `Durability::Immediate` now and then, and
//! only then does the applied index it records become the point WAL replay restarts from.
//! After a crash redb reopens at its last durable commit and the WAL replays the rest.
//!
//! Tables: `kv` (`&str → [create u64 LE | mod u64 LE | value]`) and `meta` (`&str → u64`:
//! `applied_index`, `applied_epoch`). Reads use redb read transactions (MVCC), so a backup or
//! snapshot sees one consistent state while writes go on.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use meridian_modes::apply::{apply_command, KvAccess};
use meridian_modes::state_machine::{should_apply, LogEntry, ScanEvent, StateMachineError};
use meridian_modes::{CommandResult, KeyValue, StateMachine};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const APPLIED: &str = "applied_index";
const EPOCH: &str = "applied_epoch";

pub struct RedbStore {
    db: Database,
    applied: AtomicU64,
    durable: AtomicU64,
    /// Serializes apply, checkpoint and replace so `durable` is read and set consistently.
    write: Mutex<()>,
}

fn storage<E: std::fmt::Display>(e: E) -> StateMachineError {
    StateMachineError::Storage(e.to_string())
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + kv.value.len());
    v.extend_from_slice(&kv.create_revision.to_le_bytes());
    v.extend_from_slice(&kv.mod_revision.to_le_bytes());
    v.extend_from_slice(&kv.value);
    v
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue, StateMachineError> {
    if raw.len() < 16 {
        return Err(StateMachineError::Storage(format!("stored value for {key:?} is {} bytes, shorter than its header", raw.len())));
    }
    Ok(KeyValue {
        key: key.to_owned(),
        create_revision: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        mod_revision: u64::from_le_bytes(raw[8..16].try_into().unwrap()),
        value: raw[16..].to_vec(),
    })
}

struct TableKv<'a, 't>(&'a mut Table<'t, &'static str, &'static [u8]>);

impl KvAccess for TableKv<'_, '_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        match self.0.get(key).map_err(storage)? {
            Some(g) => Ok(Some(decode(key, g.value())?)),
            None => Ok(None),
        }
    }
    fn put(&mut self, kv: KeyValue) -> Result<(), StateMachineError> {
        self.0.insert(kv.key.as_str(), encode(&kv).as_slice()).map_err(storage)?;
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<bool, StateMachineError> {
        Ok(self.0.remove(key).map_err(storage)?.is_some())
    }
}

impl RedbStore {
    /// Opens or creates the store at `path`; redb repairs itself after an unclean shutdown.
    pub fn open(path: &Path) -> Result<RedbStore, StateMachineError> {
        let db = Database::create(path).map_err(|e| StateMachineError::Storage(format!("opening {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(storage)?;
        let applied = {
            txn.open_table(KV).map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            let applied = meta.get(APPLIED).map_err(storage)?.map_or(0, |g| g.value());
            applied
        };
        txn.commit().map_err(storage)?;
        Ok(RedbStore { db, applied: AtomicU64::new(applied), durable: AtomicU64::new(applied), write: Mutex::new(()) })
    }
}

impl StateMachine for RedbStore {
    fn apply(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError> {
        let _w = self.write.lock().unwrap();
        let mut applied = self.applied.load(Ordering::Acquire);
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::None).map_err(storage)?;
        let mut results = Vec::with_capacity(entries.len());
        {
            let mut kv = txn.open_table(KV).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            let mut last_epoch = None;
            for e in entries {
                if !should_apply(applied, e.index)? {
                    continue;
                }
                results.push(apply_command(&mut TableKv(&mut kv), e.index, &e.command)?);
                applied = e.index;
                last_epoch = Some(e.epoch);
            }
            meta.insert(APPLIED, applied).map_err(storage)?;
            if let Some(ep) = last_epoch {
                meta.insert(EPOCH, ep).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        self.applied.store(applied, Ordering::Release);
        Ok(results)
    }

    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn durable_index(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    fn checkpoint(&self) -> Result<u64, StateMachineError> {
        let _w = self.write.lock().unwrap();
        let applied = self.applied.load(Ordering::Acquire);
        if applied == self.durable.load(Ordering::Acquire) {
            return Ok(applied);
        }
        // An Immediate commit persists every earlier Durability::None commit with it.
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(META).map_err(storage)?.insert(APPLIED, applied).map_err(storage)?;
        txn.commit().map_err(storage)?;
        self.durable.store(applied, Ordering::Release);
        Ok(applied)
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV).map_err(storage)?;
        match table.get(key).map_err(storage)? {
            Some(g) => Ok(Some(decode(key, g.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV).map_err(storage)?;
        let mut out = Vec::new();
        let iter = match start_after {
            Some(s) if s >= prefix => table.range::<&str>((std::ops::Bound::Excluded(s), std::ops::Bound::Unbounded)),
            _ => table.range::<&str>(prefix..),
        }
        .map_err(storage)?;
        for item in iter {
            let (k, v) = item.map_err(storage)?;
            let key = k.value();
            if !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push(decode(key, v.value())?);
        }
        Ok(out)
    }

    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let applied_index = meta.get(APPLIED).map_err(storage)?.map_or(0, |g| g.value());
        let epoch = meta.get(EPOCH).map_err(storage)?.map_or(0, |g| g.value());
        visit(ScanEvent::View { applied_index, epoch })?;
        let table = txn.open_table(KV).map_err(storage)?;
        for item in table.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            visit(ScanEvent::Entry(decode(k.value(), v.value())?))?;
        }
        Ok(())
    }

    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError> {
        let _w = self.write.lock().unwrap();
        // One Immediate transaction: a failure part-way (a damaged stream) aborts it whole.
        let txn = self.db.begin_write().map_err(storage)?;
        txn.delete_table(KV).map_err(storage)?;
        {
            let mut kv = txn.open_table(KV).map_err(storage)?;
            while let Some(e) = entries()? {
                kv.insert(e.key.as_str(), encode(&e).as_slice()).map_err(storage)?;
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(APPLIED, applied_index).map_err(storage)?;
            meta.insert(EPOCH, epoch).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        self.applied.store(applied_index, Ordering::Release);
        self.durable.store(applied_index, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_modes::command::{Command, Outcome};
    use meridian_modes::state_machine::{digest, install_snapshot, write_snapshot};

    fn put(index: u64, key: &str, value: &str) -> LogEntry {
        LogEntry { index, epoch: 1, command: Command::Put { key: key.into(), value: value.into(), if_revision: None } }
    }

    #[test]
    fn apply_assigns_revisions_and_checks_preconditions() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        s.apply(&[put(1, "a", "x"), put(2, "a", "y")]).unwrap();
        let kv = s.get("a").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.value.as_slice()), (1, 2, &b"y"[..]));
        let r = s
            .apply(&[LogEntry { index: 3, epoch: 1, command: Command::Put { key: "a".into(), value: vec![], if_revision: Some(1) } }])
            .unwrap();
        assert_eq!(r[0].outcome, Outcome::PreconditionFailed { current_revision: 2 });
        assert!(s.apply(&[put(5, "b", "z")]).is_err(), "a gap in indexes must be refused");
        assert_eq!(s.applied_index(), 3);
    }

    #[test]
    fn only_checkpointed_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.apply(&[put(1, "a", "1")]).unwrap();
            assert_eq!(s.checkpoint().unwrap(), 1);
            s.apply(&[put(2, "b", "2")]).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        // The second apply was never made durable by a checkpoint; the WAL would replay it.
        assert!(s.applied_index() >= 1);
        assert_eq!(s.get("a").unwrap().unwrap().value, b"1");
    }

    #[test]
    fn list_pages_within_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let entries: Vec<_> = ["a/1", "a/2", "a/3", "b/1", "a"].iter().enumerate().map(|(i, k)| put(i as u64 + 1, k, "v")).collect();
        s.apply(&entries).unwrap();
        let keys = |v: Vec<KeyValue>| v.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        assert_eq!(keys(s.list("a/", None, 2).unwrap()), ["a/1", "a/2"]);
        assert_eq!(keys(s.list("a/", Some("a/2"), 10).unwrap()), ["a/3"]);
        assert_eq!(keys(s.list("", None, 10).unwrap()), ["a", "a/1", "a/2", "a/3", "b/1"]);
    }

    #[test]
    fn snapshot_installs_into_a_fresh_store_with_the_same_digest() {
        let dir = tempfile::tempdir().unwrap();
        let a = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        a.apply(&(1..=50).map(|i| put(i, &format!("k{i:03}"), &"v".repeat(i as usize))).collect::<Vec<_>>()).unwrap();
        let (buf, meta) = write_snapshot(&a, Vec::new()).unwrap();
        assert_eq!((meta.applied_index, meta.keys), (50, 50));
        let b = RedbStore::open(&dir.path().join("b.redb")).unwrap();
        b.apply(&[put(1, "stale", "x")]).unwrap();
        install_snapshot(&b, &buf[..]).unwrap();
        assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
        assert!(b.get("stale").unwrap().is_none());
        // A damaged stream changes nothing.
        let mut bad = buf.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(install_snapshot(&b, &bad[..]).is_err());
        assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
    }
}
