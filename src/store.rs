//! The state machine on redb: `key → (create_revision, mod_revision, value)` plus the last
//! applied index, implementing [`meridian_modes::StateMachine`].
//!
//! Apply batches commit with `Durability::None` (no fsync) because the WAL already made them
//! durable; [`RedbStore::checkpoint`] commits with `Durability::Immediate` now and then, and
//! only then does the applied index it records become the point WAL replay restarts from.
//! After a crash redb reopens at its last durable commit and the WAL replays the rest.
//!
//! A checkpoint does not stop applies: while its fsync holds redb's single writer, applies go
//! to an in-memory overlay that readers see over redb, written to redb when the checkpoint
//! returns ([`overlay`]). Lock order: `checkpointing` → `write` → `overlay`.
//!
//! Tables: `kv` (`&str → value record`, below), `meta` (`&str → u64`: `applied_index`,
//! `applied_epoch`, `value_format`, `wal_id_hi`/`wal_id_lo`, `revision_ceiling`) and
//! `meta_bytes` (`&str → &[u8]`: `replication_meta`, the opaque
//! [`LogEntry::meta`] current at the applied index, written in the transaction that applies
//! or installs it; a separate table because a redb table has one value type). Reads use
//! redb read transactions (MVCC), so a backup or snapshot sees one consistent state while
//! writes go on.
//!
//! A snapshot install (`replace_all`) never rewrites the live file in one giant transaction:
//! it builds the new state in `state.redb.installing` in bounded transactions and renames it
//! over the state file (directory synced), so a crash leaves either the old state or the
//! new one, and memory stays bounded whatever the state's size.
//!
//! A value record (format 2) carries its own checksum, because redb does not check page
//! checksums on reads: bytes damaged on disk would otherwise be served as data.
//!
//! ```text
//! offset size field
//!      0    1 format        2
//!      1    4 crc           CRC-32/ISO-HDLC (crc32fast) over: format byte, key bytes, bytes [5..)
//!      5    8 create_revision   u64 LE
//!     13    8 mod_revision      u64 LE
//!     21    n value
//! ```
//!
//! A multi-region version (one with a [`Stamp`]) is a format-3 record: the same header with
//! `format = 3`, then `flags u8` (bit 0: tombstone, bit 1: has a parent), `hlc u64 LE`,
//! `region_len u8`, `region`, with bit 1 the parent stamp the same way (`hlc`, `region_len`,
//! `region`), and the value; the checksum covers all of it. Unstamped values stay format 2, so the other
//! modes write exactly what they did. The store's `value_format` is 3 from this build on
//! (raised at open, no record rewritten), so an older build refuses the file by name instead
//! of meeting a record it cannot read.
//!
//! Covering the key means a record found under the wrong key fails too. A mismatch is
//! [`StateMachineError::Corrupt`] (logged, noted for `/health`, a 500 to the client), never
//! data. Format 1 (the same without the first five bytes) is what stores from before checksums
//! hold; opening such a store adds checksums to every value once, in one transaction (it
//! cannot tell damage that happened before that).
//!
//! Two more facts protect against losing the WAL (see [`crate::storage`]): the identity of
//! the WAL the state was built from (`wal_id_*`, bound when a node opens the pair), and a
//! revision ceiling: a durable upper bound on every index this node has applied, raised to
//! [`REVISION_RESERVE`] above the applied index by every checkpoint, and by the apply
//! transaction that would go past it when no checkpoint came in time. A WAL lost
//! before a checkpoint takes the newest writes with it; `meridian wal reset` continues above
//! the ceiling, so no revision or bookmark is ever handed out twice.

mod image;
mod overlay;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use meridian_modes::apply::{apply_command, KvAccess};
use meridian_modes::batch_kv::BatchKv;
use meridian_modes::snapshot::SnapshotMeta;
use meridian_modes::state_machine::{should_apply, AppliedState, ImageCopy, LogEntry, ScanEvent, StateMachineError};
use meridian_modes::command::Stamp;
use meridian_modes::{CommandResult, KeyValue, StateMachine};
use meridian_wal::WalId;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition};
use tracing::{error, info};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_BYTES: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_bytes");
const APPLIED: &str = "applied_index";
const EPOCH: &str = "applied_epoch";
const FORMAT: &str = "value_format";
const WAL_ID_HI: &str = "wal_id_hi";
const WAL_ID_LO: &str = "wal_id_lo";
const CEILING: &str = "revision_ceiling";
const REPLICATION_META: &str = "replication_meta";

/// The value record layout this build writes (see the module docs).
const VALUE_FORMAT: u8 = 3;
/// The record format of unstamped values (see the module docs).
const PLAIN_FORMAT: u8 = 2;
const TOMBSTONE_FLAG: u8 = 1;
const PARENT_FLAG: u8 = 2;
const RECORD_HEADER: usize = 21;
/// Indexes reserved per durable raise of the revision ceiling: an apply commits durably only
/// when it gets this far past the last checkpoint, and at most this many revisions are skipped
/// after a `meridian wal reset`.
pub const REVISION_RESERVE: u64 = 100_000;
/// Bytes of keys and records per transaction while a snapshot is written into a fresh file.
const INSTALL_BATCH_BYTES: usize = if cfg!(test) { 4096 } else { 64 << 20 };

/// Where a snapshot is built before it replaces the state file `path`.
fn installing_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".installing");
    path.with_file_name(name)
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), StateMachineError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateMachineError::Storage(format!("syncing directory {}: {e}", dir.display())))
}

pub struct RedbStore {
    /// Swapped whole when a snapshot is installed (`replace_all`); readers take a clone.
    db: RwLock<Arc<Database>>,
    path: PathBuf,
    applied: AtomicU64,
    durable: AtomicU64,
    ceiling: AtomicU64,
    /// Serializes applies, the start and end of a checkpoint, and replace, so `applied`,
    /// `durable` and `diverted` are read and set consistently.
    write: Mutex<()>,
    /// One checkpoint at a time; scans and replace take it to see no overlay.
    checkpointing: Mutex<()>,
    /// Applies made while a checkpoint runs (`overlay.rs`); empty otherwise, except after a
    /// failed drain (then the next apply writes it to redb with its own batch).
    overlay: RwLock<overlay::Overlay>,
    /// Set (under `write`) while a checkpoint runs: applies go to the overlay.
    diverted: AtomicBool,
    /// The latest damaged record found, for `/health`.
    damage: Mutex<Option<String>>,
    /// A failed apply or checkpoint write, until `reopen_storage` (see `storage_failure`).
    failed: Mutex<Option<String>>,
}

fn storage<E: std::fmt::Display>(e: E) -> StateMachineError {
    StateMachineError::Storage(e.to_string())
}

fn checksum(key: &str, format: u8, rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[format]);
    h.update(key.as_bytes());
    h.update(rest);
    h.finalize()
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    let stamp_len = kv.stamp.as_ref().map_or(0, |st| 10 + st.region.len());
    let mut v = Vec::with_capacity(RECORD_HEADER + stamp_len + kv.value.len());
    let format = if kv.stamp.is_some() { VALUE_FORMAT } else { PLAIN_FORMAT };
    v.push(format);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&kv.create_revision.to_le_bytes());
    v.extend_from_slice(&kv.mod_revision.to_le_bytes());
    if let Some(st) = &kv.stamp {
        // Region names are checked to be at most 64 bytes by the configuration.
        v.push(if kv.tombstone { TOMBSTONE_FLAG } else { 0 } | if kv.parent.is_some() { PARENT_FLAG } else { 0 });
        for st in std::iter::once(st).chain(kv.parent.as_ref()) {
            v.extend_from_slice(&st.hlc.to_le_bytes());
            v.push(st.region.len().min(255) as u8);
            v.extend_from_slice(&st.region.as_bytes()[..st.region.len().min(255)]);
        }
    }
    v.extend_from_slice(&kv.value);
    let crc = checksum(&kv.key, format, &v[5..]);
    v[1..5].copy_from_slice(&crc.to_le_bytes());
    v
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue, StateMachineError> {
    let corrupt = |reason: String| StateMachineError::Corrupt { key: key.to_owned(), reason };
    if raw.len() < RECORD_HEADER {
        return Err(corrupt(format!("the record is {} bytes, shorter than its {RECORD_HEADER}-byte header", raw.len())));
    }
    if raw[0] != VALUE_FORMAT && raw[0] != PLAIN_FORMAT {
        return Err(corrupt(format!("unknown record format {}", raw[0])));
    }
    let stored = u32::from_le_bytes(raw[1..5].try_into().unwrap());
    let computed = checksum(key, raw[0], &raw[5..]);
    if stored != computed {
        return Err(corrupt(format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")));
    }
    let mut kv = KeyValue::plain(
        key,
        Vec::new(),
        u64::from_le_bytes(raw[5..13].try_into().unwrap()),
        u64::from_le_bytes(raw[13..21].try_into().unwrap()),
    );
    let mut rest = &raw[RECORD_HEADER..];
    if raw[0] == VALUE_FORMAT {
        let Some((&flags, after)) = rest.split_first() else { return Err(corrupt("the stamp is cut short".into())) };
        if flags & !(TOMBSTONE_FLAG | PARENT_FLAG) != 0 {
            return Err(corrupt(format!("unknown version flags {flags:#04x}")));
        }
        kv.tombstone = flags & TOMBSTONE_FLAG != 0;
        rest = after;
        let mut stamp = || -> Result<Stamp, StateMachineError> {
            if rest.len() < 9 || rest.len() < 9 + rest[8] as usize {
                return Err(corrupt("the stamp is cut short".into()));
            }
            let region_len = rest[8] as usize;
            let region = std::str::from_utf8(&rest[9..9 + region_len]).map_err(|_| corrupt("the stamp's region is not UTF-8".into()))?;
            let st = Stamp { hlc: u64::from_le_bytes(rest[..8].try_into().unwrap()), region: region.to_owned() };
            rest = &rest[9 + region_len..];
            Ok(st)
        };
        kv.stamp = Some(stamp()?);
        if flags & PARENT_FLAG != 0 {
            kv.parent = Some(stamp()?);
        }
    }
    kv.value = rest.to_vec();
    Ok(kv)
}

/// A format-1 record (no format byte, no checksum), from a store written before checksums.
fn decode_format_1(key: &str, raw: &[u8]) -> Result<KeyValue, StateMachineError> {
    if raw.len() < 16 {
        return Err(StateMachineError::Corrupt { key: key.to_owned(), reason: format!("format-1 record of {} bytes is shorter than its header", raw.len()) });
    }
    Ok(KeyValue::plain(key, raw[16..].to_vec(), u64::from_le_bytes(raw[0..8].try_into().unwrap()), u64::from_le_bytes(raw[8..16].try_into().unwrap())))
}

struct TableKv<'a, 't>(&'a mut Table<'t, &'static str, &'static [u8]>, &'a RedbStore);

impl KvAccess for TableKv<'_, '_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        match self.0.get(key).map_err(storage)? {
            Some(g) => Ok(Some(self.1.checked(decode(key, g.value()))?)),
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

/// Apply access while a checkpoint runs: writes go to `staged` (merged into the overlay only
/// if the whole batch applies), reads see staged, then the overlay, then redb.
struct OverlayKv<'a> {
    staged: BTreeMap<String, Option<Vec<u8>>>,
    overlay: &'a BTreeMap<String, Option<Vec<u8>>>,
    base: &'a redb::ReadOnlyTable<&'static str, &'static [u8]>,
    store: &'a RedbStore,
}

impl KvAccess for OverlayKv<'_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        let raw = match self.staged.get(key).or_else(|| self.overlay.get(key)) {
            Some(v) => v.clone(),
            None => self.base.get(key).map_err(storage)?.map(|g| g.value().to_vec()),
        };
        raw.map(|r| self.store.checked(decode(key, &r))).transpose()
    }
    fn put(&mut self, kv: KeyValue) -> Result<(), StateMachineError> {
        let raw = encode(&kv);
        self.staged.insert(kv.key, Some(raw));
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<bool, StateMachineError> {
        let existed = self.get(key)?.is_some();
        self.staged.insert(key.to_owned(), None);
        Ok(existed)
    }
}

/// What [`apply_entries`] did: each new entry's result, the last index applied, and the epoch
/// and replication meta of the last new entries that carried them (`None`: none was new).
struct Applied<'e> {
    results: Vec<CommandResult>,
    applied: u64,
    epoch: Option<u64>,
    meta: Option<&'e [u8]>,
}

/// The apply loop of both paths (into the overlay while a checkpoint runs, or into a redb
/// write transaction): entries at or below `applied` are skipped (replay is idempotent), a gap
/// is an error ([`should_apply`]), and reserved keys are read and written once per batch
/// ([`BatchKv`]).
fn apply_entries<'e, K: KvAccess + ?Sized>(access: &mut K, entries: &'e [LogEntry], applied: u64) -> Result<Applied<'e>, StateMachineError> {
    let mut done = Applied { results: Vec::with_capacity(entries.len()), applied, epoch: None, meta: None };
    let mut batch = BatchKv::new(access);
    for e in entries {
        if !should_apply(done.applied, e.index)? {
            continue;
        }
        done.results.push(apply_command(&mut batch, e.index, &e.command)?);
        done.applied = e.index;
        done.epoch = Some(e.epoch);
        done.meta = e.meta.as_deref().or(done.meta);
    }
    batch.finish()?;
    Ok(done)
}

/// Writes the overlay's records and applied state into `txn`.
fn write_overlay(txn: &redb::WriteTransaction, ov: &overlay::Overlay) -> Result<(), StateMachineError> {
    let mut kv = txn.open_table(KV).map_err(storage)?;
    for (k, v) in &ov.kv {
        match v {
            Some(raw) => kv.insert(k.as_str(), raw.as_slice()).map(drop),
            None => kv.remove(k.as_str()).map(drop),
        }
        .map_err(storage)?;
    }
    if let Some((index, epoch)) = ov.applied {
        let mut meta = txn.open_table(META).map_err(storage)?;
        meta.insert(APPLIED, index).map_err(storage)?;
        meta.insert(EPOCH, epoch).map_err(storage)?;
    }
    if let Some(m) = &ov.meta {
        txn.open_table(META_BYTES).map_err(storage)?.insert(REPLICATION_META, m.as_slice()).map_err(storage)?;
    }
    Ok(())
}

/// A write transaction for a durable commit, which records redb's allocator state ("quick
/// repair": the commit goes in two phases, two fsyncs). A file left by a crash, or copied
/// while open as a store image is, then opens by loading that state instead of walking every
/// page to rebuild it — 5–6 s for a 4 GiB state on this project's VM, paid on every start-up
/// after kill -9 and in every image re-seed. Durable commits are the checkpoints (off the
/// write path) and rare bookkeeping; the apply path's `Durability::None` commits record nothing.
fn begin_durable(db: &Database) -> Result<redb::WriteTransaction, StateMachineError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_quick_repair(true);
    Ok(txn)
}

impl RedbStore {
    /// Opens or creates the store at `path`; redb repairs itself after an unclean shutdown.
    /// A store from before value checksums gets them here, once.
    pub fn open(path: &Path) -> Result<RedbStore, StateMachineError> {
        // A snapshot install that did not reach its rename: never anybody's state.
        let stray = installing_path(path);
        if stray.exists() {
            info!(file = %stray.display(), "removing the remains of an interrupted snapshot install");
            std::fs::remove_file(&stray).map_err(|e| StateMachineError::Storage(format!("removing {}: {e}", stray.display())))?;
        }
        let db = Database::create(path).map_err(|e| StateMachineError::Storage(format!("opening {}: {e}", path.display())))?;
        let txn = begin_durable(&db)?;
        let (applied, ceiling) = {
            let mut kv = txn.open_table(KV).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            let read = |meta: &Table<&str, u64>, k| meta.get(k).map_err(storage).map(|g| g.map(|g| g.value()));
            match read(&meta, FORMAT)? {
                Some(f) if f == VALUE_FORMAT as u64 => {}
                // Format-2 records are read as they are; only the marker moves on.
                Some(f) if f == PLAIN_FORMAT as u64 => {
                    meta.insert(FORMAT, VALUE_FORMAT as u64).map_err(storage)?;
                }
                Some(f) => {
                    return Err(StateMachineError::Storage(format!(
                        "{} holds values in format {f}, which this build does not know (it writes format {VALUE_FORMAT}); run a newer meridian",
                        path.display()
                    )))
                }
                None => {
                    let old: Vec<(String, Vec<u8>)> = kv
                        .iter()
                        .map_err(storage)?
                        .map(|item| item.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
                        .collect::<Result<_, _>>()
                        .map_err(storage)?;
                    for (key, raw) in &old {
                        kv.insert(key.as_str(), encode(&decode_format_1(key, raw)?).as_slice()).map_err(storage)?;
                    }
                    meta.insert(FORMAT, VALUE_FORMAT as u64).map_err(storage)?;
                    if !old.is_empty() {
                        info!(path = %path.display(), values = old.len(), "state store: added checksums to every value (value format 1 → 2)");
                    }
                }
            }
            let applied = read(&meta, APPLIED)?.unwrap_or(0);
            (applied, read(&meta, CEILING)?.unwrap_or(0).max(applied))
        };
        txn.commit().map_err(storage)?;
        Ok(RedbStore {
            db: RwLock::new(Arc::new(db)),
            path: path.to_path_buf(),
            applied: AtomicU64::new(applied),
            durable: AtomicU64::new(applied),
            ceiling: AtomicU64::new(ceiling),
            write: Mutex::new(()),
            checkpointing: Mutex::new(()),
            overlay: RwLock::new(overlay::Overlay::default()),
            diverted: AtomicBool::new(false),
            damage: Mutex::new(None),
            failed: Mutex::new(None),
        })
    }

    /// The WAL this state was built from, once a node has opened the two together.
    pub fn wal_binding(&self) -> Result<Option<WalId>, StateMachineError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let part = |k| meta.get(k).map_err(storage).map(|g| g.map_or(0, |g| g.value()) as u128);
        Ok(WalId::from_u128(part(WAL_ID_HI)? << 64 | part(WAL_ID_LO)?))
    }

    /// Records, durably, that this state is built from WAL `id`. A no-op when it already is.
    pub fn bind_wal(&self, id: WalId) -> Result<(), StateMachineError> {
        if self.wal_binding()? == Some(id) {
            return Ok(());
        }
        let _w = self.write.lock().unwrap();
        let txn = begin_durable(&self.db())?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(WAL_ID_HI, (id.as_u128() >> 64) as u64).map_err(storage)?;
            meta.insert(WAL_ID_LO, id.as_u128() as u64).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// `meridian wal reset`: the state goes on with WAL `id` whose first index is `applied + 1`.
    /// The applied index jumps to `applied` (over indexes lost with the old WAL), durably, in
    /// the same transaction as the new binding.
    pub fn continue_with_new_wal(&self, id: WalId, applied: u64) -> Result<(), StateMachineError> {
        let _w = self.write.lock().unwrap();
        let applied = applied.max(self.applied.load(Ordering::Acquire));
        let txn = begin_durable(&self.db())?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(APPLIED, applied).map_err(storage)?;
            meta.insert(CEILING, self.ceiling.load(Ordering::Acquire).max(applied)).map_err(storage)?;
            meta.insert(WAL_ID_HI, (id.as_u128() >> 64) as u64).map_err(storage)?;
            meta.insert(WAL_ID_LO, id.as_u128() as u64).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        self.applied.store(applied, Ordering::Release);
        self.durable.store(applied, Ordering::Release);
        self.ceiling.fetch_max(applied, Ordering::AcqRel);
        Ok(())
    }

    /// The database now. A caller that keeps a transaction open keeps this `Arc` alive as
    /// long (declared before the transaction): a snapshot install may swap the database
    /// meanwhile, and redb closes a database whose last handle is dropped under an open
    /// transaction (`DatabaseClosed`).
    fn db(&self) -> Arc<Database> {
        self.db.read().unwrap().clone()
    }

    /// Writes a snapshot's state into a new redb file at `fresh_path`, in transactions of at
    /// most [`INSTALL_BATCH_BYTES`] (memory stays bounded whatever the state's size), the
    /// last one durable and carrying the metadata. The facts that belong to this node, not
    /// to the snapshot (the WAL binding, the revision ceiling), are carried over from `old`.
    fn build_fresh(
        &self,
        old: &Database,
        fresh_path: &Path,
        applied_index: u64,
        epoch: u64,
        replication_meta: Option<Vec<u8>>,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<Database, StateMachineError> {
        let _ = std::fs::remove_file(fresh_path);
        let db = Database::create(fresh_path).map_err(|e| StateMachineError::Storage(format!("creating {}: {e}", fresh_path.display())))?;
        let (wal_hi, wal_lo) = {
            let txn = old.begin_read().map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            let get = |k| meta.get(k).map_err(storage).map(|g| g.map(|g| g.value()));
            (get(WAL_ID_HI)?, get(WAL_ID_LO)?)
        };
        let mut done = false;
        while !done {
            let mut txn = db.begin_write().map_err(storage)?;
            let mut batch = 0usize;
            {
                let mut kv = txn.open_table(KV).map_err(storage)?;
                while batch < INSTALL_BATCH_BYTES {
                    let Some(e) = entries()? else {
                        done = true;
                        break;
                    };
                    let record = encode(&e);
                    batch += e.key.len() + record.len();
                    kv.insert(e.key.as_str(), record.as_slice()).map_err(storage)?;
                }
                if done {
                    let mut meta = txn.open_table(META).map_err(storage)?;
                    meta.insert(FORMAT, VALUE_FORMAT as u64).map_err(storage)?;
                    meta.insert(APPLIED, applied_index).map_err(storage)?;
                    meta.insert(EPOCH, epoch).map_err(storage)?;
                    meta.insert(CEILING, self.ceiling.load(Ordering::Acquire).max(applied_index)).map_err(storage)?;
                    if let (Some(hi), Some(lo)) = (wal_hi, wal_lo) {
                        meta.insert(WAL_ID_HI, hi).map_err(storage)?;
                        meta.insert(WAL_ID_LO, lo).map_err(storage)?;
                    }
                    let mut bytes = txn.open_table(META_BYTES).map_err(storage)?;
                    if let Some(m) = &replication_meta {
                        bytes.insert(REPLICATION_META, m.as_slice()).map_err(storage)?;
                    }
                }
            }
            // Intermediate batches need no fsync: until the rename, the file is nobody's
            // state. The last commit persists them all.
            txn.set_durability(if done { Durability::Immediate } else { Durability::None }).map_err(storage)?;
            txn.set_quick_repair(done);
            txn.commit().map_err(storage)?;
        }
        Ok(db)
    }

    /// Makes the durable state file at `fresh_path` (open as `fresh`, at `applied_index`, with
    /// revision ceiling `ceiling` stored) the store's state. The caller holds `checkpointing` and `write`.
    fn swap_in(&self, fresh_path: &Path, fresh: Database, applied_index: u64, ceiling: u64) -> Result<(), StateMachineError> {
        // The swap: one rename, made durable by syncing the directory. A crash before it
        // leaves the old state and a stray `.installing` file (removed at open); after it,
        // the new state. The open `fresh` handle follows its file to the new name.
        std::fs::rename(fresh_path, &self.path)
            .map_err(|e| StateMachineError::Storage(format!("moving {} over {}: {e}", fresh_path.display(), self.path.display())))?;
        sync_dir(&self.path)?;
        self.overlay.write().unwrap().clear();
        *self.db.write().unwrap() = Arc::new(fresh);
        self.applied.store(applied_index, Ordering::Release);
        self.durable.store(applied_index, Ordering::Release);
        self.ceiling.fetch_max(ceiling.max(applied_index), Ordering::AcqRel);
        Ok(())
    }

    /// No index above this was ever applied here (see the module docs).
    pub fn revision_ceiling(&self) -> u64 {
        self.ceiling.load(Ordering::Acquire)
    }

    /// Applies `entries` into the overlay (a checkpoint runs; the caller holds `write`). The
    /// batch is staged first and merged only if all of it applies, as a redb transaction would.
    fn apply_to_overlay(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let base = txn.open_table(KV).map_err(storage)?;
        let mut ov = self.overlay.write().unwrap();
        let mut access = OverlayKv { staged: BTreeMap::new(), overlay: &ov.kv, base: &base, store: self };
        let done = apply_entries(&mut access, entries, self.applied.load(Ordering::Acquire))?;
        let staged = access.staged;
        ov.kv.extend(staged);
        if let Some(epoch) = done.epoch {
            ov.applied = Some((done.applied, epoch));
        }
        if let Some(m) = done.meta {
            ov.meta = Some(m.to_vec());
        }
        self.applied.store(done.applied, Ordering::Release);
        Ok(done.results)
    }

    /// Writes the overlay to redb (no fsync) and clears it; applies go to redb again. The
    /// caller holds `write`. On failure the overlay stays for the next apply to write.
    fn drain(&self) -> Result<(), StateMachineError> {
        self.diverted.store(false, Ordering::Release);
        let mut ov = self.overlay.write().unwrap();
        if ov.is_empty() {
            return Ok(());
        }
        let mut txn = self.db().begin_write().map_err(storage)?;
        txn.set_durability(Durability::None).map_err(storage)?;
        write_overlay(&txn, &ov)?;
        txn.commit().map_err(storage)?;
        ov.clear();
        Ok(())
    }

    /// The applied state as `txn` sees it; a store from before `meta_bytes` has no metadata.
    /// Stored entries (tombstones and reserved keys included) after `start_after`.
    fn list_stored(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        // One consistent state: the read transaction is opened under the overlay's lock.
        let db = self.db();
        let (txn, over) = {
            let ov = self.overlay.read().unwrap();
            (db.begin_read().map_err(storage)?, ov.range(prefix, start_after))
        };
        let table = txn.open_table(KV).map_err(storage)?;
        let iter = match start_after {
            Some(s) if s >= prefix => table.range::<&str>((std::ops::Bound::Excluded(s), std::ops::Bound::Unbounded)),
            _ => table.range::<&str>(prefix..),
        }
        .map_err(storage)?
        .map(|item| item.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
        .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)));
        overlay::merge(iter, over, limit).map_err(storage)?.into_iter().map(|(k, raw)| self.checked(decode(&k, &raw))).collect()
    }

    fn applied_state_in(txn: &redb::ReadTransaction) -> Result<AppliedState, StateMachineError> {
        let meta = txn.open_table(META).map_err(storage)?;
        let index = meta.get(APPLIED).map_err(storage)?.map_or(0, |g| g.value());
        let epoch = meta.get(EPOCH).map_err(storage)?.map_or(0, |g| g.value());
        let meta = match txn.open_table(META_BYTES) {
            Ok(t) => t.get(REPLICATION_META).map_err(storage)?.map(|g| g.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage(e)),
        };
        Ok(AppliedState { index, epoch, meta })
    }

    pub fn key_count(&self) -> Result<u64, StateMachineError> {
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        txn.open_table(KV).map_err(storage)?.len().map_err(storage)
    }

    /// Applies a batch (the trait's `apply`, with failures noted by the caller).
    fn apply_batch(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError> {
        let last = entries.last().map_or(0, |e| e.index);
        let _w = loop {
            let w = self.write.lock().unwrap();
            if !self.diverted.load(Ordering::Acquire) {
                break w;
            }
            if last <= self.ceiling.load(Ordering::Acquire) {
                return self.apply_to_overlay(entries);
            }
            // Raising the revision ceiling takes a durable commit: wait for the checkpoint.
            drop(w);
            drop(self.checkpointing.lock().unwrap());
        };
        let applied = self.applied.load(Ordering::Acquire);
        let mut txn = self.db().begin_write().map_err(storage)?;
        // Past the ceiling, this commit raises it and is made durable before anyone is answered.
        let raise = (last > self.ceiling.load(Ordering::Acquire)).then(|| last + REVISION_RESERVE);
        match raise {
            None => txn.set_durability(Durability::None).map_err(storage)?,
            Some(_) => txn.set_quick_repair(true),
        }
        // An overlay left by a failed drain goes in first (under `write` nobody else changes it).
        let leftover = !self.overlay.read().unwrap().is_empty();
        let mut leftover = leftover.then(|| self.overlay.write().unwrap());
        if let Some(ov) = &leftover {
            write_overlay(&txn, ov)?;
        }
        let done = {
            let mut kv = txn.open_table(KV).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            let done = apply_entries(&mut TableKv(&mut kv, self), entries, applied)?;
            if let Some(m) = done.meta {
                txn.open_table(META_BYTES).map_err(storage)?.insert(REPLICATION_META, m).map_err(storage)?;
            }
            meta.insert(APPLIED, done.applied).map_err(storage)?;
            if let Some(ep) = done.epoch {
                meta.insert(EPOCH, ep).map_err(storage)?;
            }
            if let Some(c) = raise {
                meta.insert(CEILING, c).map_err(storage)?;
            }
            done
        };
        txn.commit().map_err(storage)?;
        if let Some(ov) = &mut leftover {
            ov.clear();
        }
        self.applied.store(done.applied, Ordering::Release);
        if let Some(c) = raise {
            self.ceiling.store(c, Ordering::Release);
            self.durable.store(done.applied, Ordering::Release);
        }
        Ok(done.results)
    }

    /// Drains the overlay and commits durably (the trait's `checkpoint`).
    fn checkpoint_now(&self) -> Result<u64, StateMachineError> {
        let _c = self.checkpointing.lock().unwrap();
        let applied = {
            let _w = self.write.lock().unwrap();
            // redb must hold everything up to `applied` before it is recorded as durable.
            self.drain()?;
            let applied = self.applied.load(Ordering::Acquire);
            if applied == self.durable.load(Ordering::Acquire) {
                return Ok(applied);
            }
            self.diverted.store(true, Ordering::Release);
            applied
        };
        // An Immediate commit persists every earlier Durability::None commit with it. It runs
        // without `write`: applies meanwhile go to the overlay. It also raises the revision
        // ceiling ahead of `applied`, so the apply path itself commits durably (holding up every
        // writer behind it, and carrying every page since the last durable commit) only when it
        // gets a whole reserve past the last checkpoint. Raising it early keeps it an upper bound.
        let ceiling = self.ceiling.load(Ordering::Acquire).max(applied + REVISION_RESERVE);
        let committed = (|| {
            let txn = begin_durable(&self.db())?;
            {
                let mut meta = txn.open_table(META).map_err(storage)?;
                meta.insert(APPLIED, applied).map_err(storage)?;
                meta.insert(CEILING, ceiling).map_err(storage)?;
            }
            txn.commit().map_err(storage)
        })();
        let drained = {
            let _w = self.write.lock().unwrap();
            self.drain()
        };
        committed?;
        self.durable.store(applied, Ordering::Release);
        self.ceiling.fetch_max(ceiling, Ordering::AcqRel);
        drained?;
        Ok(applied)
    }

    /// Passes `r` through; a storage error is remembered until `reopen_storage` (redb
    /// refuses every later commit after a failed one, so only reopening clears it).
    fn noting_failure<T>(&self, r: Result<T, StateMachineError>) -> Result<T, StateMachineError> {
        if let Err(StateMachineError::Storage(why)) = &r {
            let mut failed = self.failed.lock().unwrap();
            if failed.is_none() {
                error!(error = %why, "state store: a write failed; the store takes no write until it is opened again");
                *failed = Some(format!("state.redb: {why}"));
            }
        }
        r
    }

    /// Passes `r` through; damage is logged and remembered for `/health` on the way.
    fn checked<T>(&self, r: Result<T, StateMachineError>) -> Result<T, StateMachineError> {
        if let Err(StateMachineError::Corrupt { key, reason }) = &r {
            error!(key = %key, %reason, "state store: a stored value is damaged; it is not served");
            *self.damage.lock().unwrap() =
                Some(format!("state.redb: the stored value of key {key:?} is damaged ({reason}); it is not served: restore from a backup or rewrite the key"));
        }
        r
    }
}

impl StateMachine for RedbStore {
    fn apply(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError> {
        self.noting_failure(self.apply_batch(entries))
    }

    fn checkpoint(&self) -> Result<u64, StateMachineError> {
        self.noting_failure(self.checkpoint_now())
    }

    fn storage_failure(&self) -> Option<String> {
        self.failed.lock().unwrap().clone()
    }
    fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    fn applied_state(&self) -> Result<AppliedState, StateMachineError> {
        let ov = self.overlay.read().unwrap();
        let mut s = Self::applied_state_in(&self.db().begin_read().map_err(storage)?)?;
        if let Some((index, epoch)) = ov.applied {
            (s.index, s.epoch) = (index, epoch);
        }
        if let Some(m) = &ov.meta {
            s.meta = Some(m.clone());
        }
        Ok(s)
    }

    fn durable_index(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Due once half the revision reserve is used since the last raise: the checkpoint raises
    /// the ceiling off the write path before an apply has to (see `checkpoint_now`). Not after
    /// a storage failure, which only reopening clears (a checkpoint would fail again).
    fn checkpoint_due(&self) -> bool {
        let applied = self.applied.load(Ordering::Acquire);
        applied > self.durable.load(Ordering::Acquire)
            && applied + REVISION_RESERVE / 2 > self.ceiling.load(Ordering::Acquire)
            && self.failed.lock().unwrap().is_none()
    }

    fn get_version(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        if let Some(v) = self.overlay.read().unwrap().kv.get(key) {
            return v.as_deref().map(|raw| self.checked(decode(key, raw))).transpose();
        }
        let db = self.db();
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(KV).map_err(storage)?;
        match table.get(key).map_err(storage)? {
            Some(g) => Ok(Some(self.checked(decode(key, g.value()))?)),
            None => Ok(None),
        }
    }

    /// The overlay first, then one read transaction for the keys it does not hold (a key
    /// not in the overlay when it is looked at can only be as new or newer in redb later).
    fn get_versions(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, StateMachineError> {
        let mut out = vec![None; keys.len()];
        let mut rest = Vec::new();
        {
            let overlay = self.overlay.read().unwrap();
            for (i, key) in keys.iter().enumerate() {
                match overlay.kv.get(key.as_str()) {
                    Some(v) => out[i] = v.as_deref().map(|raw| self.checked(decode(key, raw))).transpose()?,
                    None => rest.push(i),
                }
            }
        }
        if !rest.is_empty() {
            let db = self.db();
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(KV).map_err(storage)?;
            for i in rest {
                if let Some(g) = table.get(keys[i].as_str()).map_err(storage)? {
                    out[i] = Some(self.checked(decode(&keys[i], g.value()))?);
                }
            }
        }
        Ok(out)
    }

    fn list_versions(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        self.list_stored(prefix, start_after, limit)
    }

    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        // Tombstones and reserved keys are stored among the rest: page past them until the
        // page is full or the prefix ends. Each page is one consistent view; only a list that
        // meets tombstones needs more than one.
        let mut out = Vec::new();
        let mut after = start_after.map(str::to_owned);
        while out.len() < limit {
            let want = limit - out.len();
            let page = self.list_stored(prefix, after.as_deref(), want)?;
            let full = page.len() == want;
            after = page.last().map(|kv| kv.key.clone());
            out.extend(page.into_iter().filter(KeyValue::is_visible));
            if !full {
                break;
            }
        }
        Ok(out)
    }

    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
        // A whole-state view from redb alone: taken between checkpoints, with no overlay.
        let db;
        let txn = {
            let _c = self.checkpointing.lock().unwrap();
            let _w = self.write.lock().unwrap();
            self.drain()?;
            db = self.db();
            db.begin_read().map_err(storage)?
        };
        let AppliedState { index, epoch, meta } = Self::applied_state_in(&txn)?;
        visit(ScanEvent::View { applied_index: index, epoch, meta })?;
        let table = txn.open_table(KV).map_err(storage)?;
        for item in table.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            visit(ScanEvent::Entry(self.checked(decode(k.value(), v.value()))?))?;
        }
        Ok(())
    }

    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        replication_meta: Option<Vec<u8>>,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError> {
        // No apply or checkpoint meanwhile: they would land in the state being replaced.
        // Readers go on reading the old state until the swap.
        let _c = self.checkpointing.lock().unwrap();
        let _w = self.write.lock().unwrap();
        let fresh_path = installing_path(&self.path);
        let old = self.db();
        let fresh = match self.build_fresh(&old, &fresh_path, applied_index, epoch, replication_meta, entries) {
            Ok(db) => db,
            Err(e) => {
                let _ = std::fs::remove_file(&fresh_path);
                return Err(e);
            }
        };
        self.swap_in(&fresh_path, fresh, applied_index, 0)
    }

    fn begin_image(&self) -> Result<Option<Box<dyn ImageCopy + '_>>, StateMachineError> {
        let frozen = self.noting_failure(self.begin_image_now())?;
        Ok(Some(Box::new(frozen)))
    }

    fn install_image(&self, input: &mut dyn std::io::Read, size: u64) -> Result<SnapshotMeta, StateMachineError> {
        self.install_image_now(input, size)
    }

    /// redb latches an I/O error: after a failed commit every later one fails too
    /// (`PreviousIo`), even with room again. So the database is closed and opened again
    /// (redb repairs it if it must), whether or not it latched one: the store is then what a
    /// restart would find. Applies and checkpoints wait meanwhile, readers too (the swap
    /// holds the handle's lock). What the old handle held beyond its last durable commit
    /// (non-durable commits, the overlay) is gone with it: the applied index goes back to the
    /// file's, and the caller replays the WAL from there, as a restart would.
    fn reopen_storage(&self) -> Result<(), StateMachineError> {
        let _c = self.checkpointing.lock().unwrap();
        let _w = self.write.lock().unwrap();
        let probe = || -> Result<(), StateMachineError> {
            let txn = begin_durable(&self.db())?;
            txn.commit().map_err(storage)
        };
        let mut handle = self.db.write().unwrap();
        let placeholder = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(storage)?;
        let mut old = std::mem::replace(&mut *handle, Arc::new(placeholder));
        // Readers that took the handle before the lock finish in moments; redb refuses a
        // second open of the file while they hold it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    break;
                }
                Err(still) if std::time::Instant::now() < deadline => {
                    old = still;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(still) => {
                    *handle = still;
                    return Err(StateMachineError::Storage("the state store is still in use; not reopened".into()));
                }
            }
        }
        // The old handle is gone: until the file is open again nothing may read (the
        // placeholder is empty), so the lock is held until it is, and a store that cannot be
        // opened again stops the node rather than serve an empty state (a restart recovers
        // it from the file and the WAL, as after a crash).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Database::create(&self.path) {
                Ok(db) => {
                    let on_file = Self::applied_state_in(&db.begin_read().map_err(storage)?)?.index;
                    self.overlay.write().unwrap().clear();
                    self.applied.store(on_file, Ordering::Release);
                    self.durable.store(on_file, Ordering::Release);
                    *handle = Arc::new(db);
                    drop(handle);
                    info!(path = %self.path.display(), applied = on_file, "state store reopened after a storage error; the WAL is replayed from its last durable state");
                    let probed = probe();
                    if probed.is_ok() {
                        *self.failed.lock().unwrap() = None;
                    }
                    return probed;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "reopening the state store; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "the state store cannot be opened again after a storage error; stopping (a restart recovers it)");
                    std::process::exit(1);
                }
            }
        }
    }

    fn damage(&self) -> Option<String> {
        self.damage.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_modes::command::{Command, Outcome};
    use meridian_modes::state_machine::{digest, install_snapshot, write_snapshot};

    /// The apply path's cost with and without [`BatchKv`], on a real redb table: batches of
    /// 64 stamped puts (as `multi_region` applies them) and of 64 plain puts (`raft`), over
    /// 50,000 keys, 256-byte values. Prints entries/s; asserts only that both reach the same
    /// state. `cargo test --release -p meridian --lib -- --ignored --nocapture apply_rate`
    #[test]
    #[ignore = "a benchmark: run with --release"]
    fn apply_rate() {
        use meridian_modes::command::Stamp;
        let entries: usize = 256_000;
        let command = |i: usize, stamped: bool| {
            let put = Command::Put { key: format!("key{:012}", (i * 7919) % 50_000), value: vec![b'v'; 256], if_revision: None };
            if stamped {
                Command::Stamped { stamp: Stamp { hlc: 1_000_000 + i as u64, region: "us".into() }, command: Box::new(put) }
            } else {
                put
            }
        };
        for stamped in [true, false] {
            let mut digests = Vec::new();
            for cached in [false, true, false, true] {
                let dir = tempfile::tempdir().unwrap();
                let db = Database::create(dir.path().join("a.redb")).unwrap();
                let t = std::time::Instant::now();
                let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
                for batch in 0..entries / 64 {
                    let mut txn = db.begin_write().unwrap();
                    txn.set_durability(Durability::None).unwrap();
                    {
                        let mut table = txn.open_table(KV).unwrap();
                        let mut kv = TableKv(&mut table, &store);
                        let range = batch * 64..(batch + 1) * 64;
                        if cached {
                            let mut batch_kv = BatchKv::new(&mut kv);
                            for i in range {
                                apply_command(&mut batch_kv, i as u64 + 1, &command(i, stamped)).unwrap();
                            }
                            batch_kv.finish().unwrap();
                        } else {
                            for i in range {
                                apply_command(&mut kv, i as u64 + 1, &command(i, stamped)).unwrap();
                            }
                        }
                    }
                    txn.commit().unwrap();
                }
                let rate = entries as f64 / t.elapsed().as_secs_f64();
                eprintln!("{} puts, {}: {rate:.0} entries/s", if stamped { "stamped" } else { "plain" }, if cached { "BatchKv" } else { "direct" });
                let txn = db.begin_read().unwrap();
                let table = txn.open_table(KV).unwrap();
                let all: Vec<(String, Vec<u8>)> = table.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_owned(), v.value().to_vec())).collect();
                digests.push(all);
            }
            assert!(digests.windows(2).all(|w| w[0] == w[1]), "the cached and direct applies left different tables");
        }
    }

    fn put(index: u64, key: &str, value: &str) -> LogEntry {
        LogEntry { index, epoch: 1, command: Command::Put { key: key.into(), value: value.into(), if_revision: None }, meta: None }
    }

    #[test]
    fn apply_assigns_revisions_and_checks_preconditions() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        s.apply(&[put(1, "a", "x"), put(2, "a", "y")]).unwrap();
        let kv = s.get("a").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.value.as_slice()), (1, 2, &b"y"[..]));
        let r = s
            .apply(&[LogEntry { index: 3, epoch: 1, command: Command::Put { key: "a".into(), value: vec![], if_revision: Some(1) }, meta: None }])
            .unwrap();
        assert_eq!(r[0].outcome, Outcome::PreconditionFailed { current_revision: 2 });
        assert!(s.apply(&[put(5, "b", "z")]).is_err(), "a gap in indexes must be refused");
        assert_eq!(s.applied_index(), 3);
    }

    #[test]
    fn get_versions_reads_what_get_version_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        s.apply(&[put(1, "a", "1"), put(2, "b", "2"), put(3, "c", "3")]).unwrap();
        s.checkpoint().unwrap();
        s.apply(&[put(4, "a", "4"), LogEntry { index: 5, epoch: 1, command: Command::Delete { key: "b".into(), if_revision: None }, meta: None }]).unwrap();
        let keys: Vec<String> = ["c", "missing", "a", "b", "a"].iter().map(|k| k.to_string()).collect();
        let one_by_one: Vec<Option<KeyValue>> = keys.iter().map(|k| s.get_version(k).unwrap()).collect();
        assert_eq!(s.get_versions(&keys).unwrap(), one_by_one);
        assert_eq!(one_by_one.iter().map(|v| v.as_ref().map(|v| v.value.clone())).collect::<Vec<_>>(), [Some(b"3".to_vec()), None, Some(b"4".to_vec()), None, Some(b"4".to_vec())]);
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
    fn applied_meta_survives_a_checkpoint_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let with_meta = |index: u64, epoch: u64, m: &[u8]| LogEntry { epoch, meta: Some(m.to_vec()), ..put(index, "k", "v") };
        {
            let s = RedbStore::open(&path).unwrap();
            assert_eq!(s.applied_state().unwrap(), AppliedState::default());
            s.apply(&[with_meta(1, 1, b"m1"), put(2, "a", "x")]).unwrap();
            s.apply(&[with_meta(3, 2, b"m3"), with_meta(4, 2, b"m4"), put(5, "b", "y")]).unwrap();
            assert_eq!(s.applied_state().unwrap(), AppliedState { index: 5, epoch: 1, meta: Some(b"m4".to_vec()) });
            assert_eq!(s.checkpoint().unwrap(), 5);
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.applied_state().unwrap(), AppliedState { index: 5, epoch: 1, meta: Some(b"m4".to_vec()) });
        let (buf, meta) = write_snapshot(&s, Vec::new()).unwrap();
        assert_eq!(meta.meta, Some(b"m4".to_vec()));

        // An installed snapshot's meta replaces the stored one, durably.
        let other = dir.path().join("o.redb");
        {
            let o = RedbStore::open(&other).unwrap();
            o.apply(&[with_meta(1, 1, b"mine")]).unwrap();
            install_snapshot(&o, &buf[..]).unwrap();
        }
        assert_eq!(RedbStore::open(&other).unwrap().applied_state().unwrap(), s.applied_state().unwrap());
    }

    #[test]
    fn replace_all_stores_or_clears_the_meta_durably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let kv = KeyValue::plain("a", b"1".to_vec(), 3, 3);
        {
            let s = RedbStore::open(&path).unwrap();
            let mut one = Some(kv.clone());
            s.replace_all(7, 2, Some(b"cfg".to_vec()), &mut || Ok(one.take())).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.applied_state().unwrap(), AppliedState { index: 7, epoch: 2, meta: Some(b"cfg".to_vec()) });
        assert_eq!(s.get("a").unwrap(), Some(kv));
        s.replace_all(8, 2, None, &mut || Ok(None)).unwrap();
        drop(s);
        assert_eq!(RedbStore::open(&path).unwrap().applied_state().unwrap(), AppliedState { index: 8, epoch: 2, meta: None });
    }

    #[test]
    fn stamped_versions_and_tombstones_are_stored_but_reads_and_lists_hide_tombstones() {
        use meridian_modes::command::{Command, Stamp};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = RedbStore::open(&path).unwrap();
        let st = |hlc: u64| Stamp { hlc, region: "eu".into() };
        let stamped = |index: u64, command: Command, hlc: u64| LogEntry { index, epoch: 1, command: Command::Stamped { stamp: st(hlc), command: Box::new(command) }, meta: None };
        s.apply(&[
            stamped(1, Command::Put { key: "a".into(), value: b"1".to_vec(), if_revision: None }, 10),
            stamped(2, Command::Put { key: "b".into(), value: b"2".to_vec(), if_revision: None }, 11),
            stamped(3, Command::Put { key: "c".into(), value: b"3".to_vec(), if_revision: None }, 12),
            stamped(4, Command::Delete { key: "b".into(), if_revision: None }, 13),
            // An older version from another region loses: "c" keeps its value.
            LogEntry {
                index: 5,
                epoch: 1,
                command: Command::RegionBatch {
                    origin: "us".into(),
                    through: 1,
                    clock: 5,
                    writes: vec![KeyValue { stamp: Some(Stamp { hlc: 5, region: "us".into() }), ..KeyValue::plain("c", b"old".to_vec(), 0, 0) }],
                    primary: None,
                    keep_conflicts: false,
                },
                meta: None,
            },
        ])
        .unwrap();
        s.checkpoint().unwrap();
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.get("b").unwrap(), None);
        let tomb = s.get_version("b").unwrap().unwrap();
        assert!(tomb.tombstone && tomb.stamp == Some(st(13)));
        assert_eq!(tomb.parent, Some(st(11)), "a version keeps the stamp of the one it replaced");
        assert_eq!(s.get("c").unwrap().unwrap().value, b"3");
        assert_eq!(s.get("a").unwrap().unwrap().stamp, Some(st(10)));
        let keys: Vec<String> = s.list("", None, 1).unwrap().into_iter().chain(s.list("", Some("a"), 1).unwrap()).map(|kv| kv.key).collect();
        assert_eq!(keys, ["a", "c"], "the page after 'a' skips the tombstone of 'b'");
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
        assert!(!installing_path(&dir.path().join("b.redb")).exists(), "a failed install left its file behind");
    }

    #[test]
    fn an_install_is_built_in_a_fresh_file_in_batches_and_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let a = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        // ~100 KiB of values: 25 transactions of INSTALL_BATCH_BYTES (4 KiB in tests).
        a.apply(&(1..=400).map(|i| put(i, &format!("k{i:04}"), &"v".repeat(250))).collect::<Vec<_>>()).unwrap();
        let (buf, _) = write_snapshot(&a, Vec::new()).unwrap();
        let path = dir.path().join("b.redb");
        let b = RedbStore::open(&path).unwrap();
        let id = WalId::from_u128(0xfeed).unwrap();
        b.bind_wal(id).unwrap();
        b.apply(&[put(1, "stale", "x")]).unwrap();
        b.checkpoint().unwrap();
        // A reader holding the old state keeps it through the swap.
        let old_db = b.db();
        let old_view = old_db.begin_read().unwrap();
        install_snapshot(&b, &buf[..]).unwrap();
        assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
        assert!(old_view.open_table(KV).unwrap().get("stale").unwrap().is_some());
        drop((old_view, old_db));
        // Applies go on on the new state.
        b.apply(&[put(401, "after", "y")]).unwrap();
        b.checkpoint().unwrap();
        let want = digest(&b).unwrap();
        drop(b);
        assert!(!installing_path(&path).exists());
        // What was renamed into place is what a restart finds, the node's WAL binding with it.
        let b = RedbStore::open(&path).unwrap();
        assert_eq!(digest(&b).unwrap(), want);
        assert_eq!(b.wal_binding().unwrap(), Some(id));
        assert_eq!(b.applied_index(), 401);
    }

    #[test]
    fn the_remains_of_an_interrupted_install_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.apply(&[put(1, "k", "v")]).unwrap();
            s.checkpoint().unwrap();
        }
        std::fs::write(installing_path(&path), b"half a snapshot").unwrap();
        let s = RedbStore::open(&path).unwrap();
        assert!(!installing_path(&path).exists());
        assert_eq!(s.get("k").unwrap().unwrap().value, b"v");
    }

    #[test]
    fn a_damaged_value_is_corrupt_not_data_and_shows_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        s.apply(&[put(1, "k", "hello")]).unwrap();
        let good = encode(&s.get("k").unwrap().unwrap());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert!(matches!(decode("k", &bad), Err(StateMachineError::Corrupt { .. })), "byte {i}");
        }
        // The checksum covers the key: a record under another key does not decode.
        assert!(matches!(decode("other", &good), Err(StateMachineError::Corrupt { .. })));
        assert!(s.damage().is_none());
        let _ = s.checked(decode("k", &good[..10]));
        assert!(s.damage().unwrap().contains("\"k\""));
    }

    #[test]
    fn a_store_from_before_checksums_gets_them_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            // Format 1, as the previous build wrote it: no format marker, no checksum.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut kv = txn.open_table(KV).unwrap();
                let mut old = Vec::new();
                old.extend_from_slice(&3u64.to_le_bytes());
                old.extend_from_slice(&4u64.to_le_bytes());
                old.extend_from_slice(b"v1");
                kv.insert("a", old.as_slice()).unwrap();
                txn.open_table(META).unwrap().insert(APPLIED, 4).unwrap();
            }
            txn.commit().unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        let kv = s.get("a").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.value.as_slice(), s.applied_index()), (3, 4, &b"v1"[..], 4));
        drop(s);
        assert_eq!(RedbStore::open(&path).unwrap().get("a").unwrap().unwrap().value, b"v1");
    }

    #[test]
    fn the_revision_ceiling_is_durable_before_an_index_above_it_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            assert_eq!(s.revision_ceiling(), 0);
            s.apply(&[put(1, "a", "1")]).unwrap();
            assert_eq!(s.revision_ceiling(), 1 + REVISION_RESERVE);
            s.apply(&[put(2, "b", "2")]).unwrap(); // below the ceiling: not made durable
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.revision_ceiling(), 1 + REVISION_RESERVE);
        let id = WalId::from_u128(7).unwrap();
        assert_eq!(s.wal_binding().unwrap(), None);
        s.bind_wal(id).unwrap();
        s.continue_with_new_wal(id, s.revision_ceiling()).unwrap();
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!((s.wal_binding().unwrap(), s.applied_index()), (Some(id), 1 + REVISION_RESERVE));
    }

    /// A durable commit on the apply path holds up every writer behind it, and it carries
    /// every page written since the last durable commit (with checkpoints seconds apart, seconds
    /// of pages). Each checkpoint raises the ceiling ahead of the applied index, so applies that
    /// keep up with checkpoints never commit durably themselves.
    #[test]
    fn a_checkpoint_raises_the_revision_ceiling_ahead_of_the_applied_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.apply(&[put(1, "a", "1")]).unwrap();
            let entries: Vec<LogEntry> = (2..=10).map(|i| put(i, &format!("k{i}"), "v")).collect();
            s.apply(&entries).unwrap();
            assert_eq!(s.checkpoint().unwrap(), 10);
            assert_eq!(s.revision_ceiling(), 10 + REVISION_RESERVE, "the checkpoint did not raise the ceiling");
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.revision_ceiling(), 10 + REVISION_RESERVE, "the raised ceiling is not durable");
    }

    /// A state file copied while the store is open — what a crash leaves, and what a store
    /// image is — opens without redb's full repair (a walk over every page of the file that
    /// rebuilds the allocator: seconds per GiB) when its last durable commit was a checkpoint,
    /// later non-durable applies or not: every durable commit records the allocator state.
    #[test]
    fn a_state_file_copied_while_open_opens_without_a_full_repair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = RedbStore::open(&path).unwrap();
        let entries: Vec<LogEntry> = (1..=2000).map(|i| put(i, &format!("k{i}"), "some value")).collect();
        s.apply(&entries).unwrap();
        assert_eq!(s.checkpoint().unwrap(), 2000);
        s.apply(&[put(2001, "later", "not durable")]).unwrap();
        let copy = dir.path().join("copy.redb");
        std::fs::copy(&path, &copy).unwrap();
        let repaired = Arc::new(AtomicBool::new(false));
        let flag = repaired.clone();
        let db = Database::builder()
            .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst))
            .create(&copy)
            .unwrap();
        assert!(!repaired.load(Ordering::SeqCst), "opening the copy took redb's full repair");
        let state = RedbStore::applied_state_in(&db.begin_read().unwrap()).unwrap();
        assert_eq!(state.index, 2000, "the copy holds the last checkpoint");
    }

    /// With a long checkpoint interval (or a fast writer) applies would reach the ceiling before
    /// the next timed checkpoint and raise it on the apply path; the store asks for a checkpoint
    /// once half the reserve is used, so the checkpoint loops raise it off the write path.
    #[test]
    fn the_store_asks_for_a_checkpoint_once_half_the_reserve_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        assert!(!s.checkpoint_due(), "an empty store has nothing to make durable");
        s.apply(&[put(1, "a", "1")]).unwrap();
        assert_eq!(s.checkpoint().unwrap(), 1);
        let half = 1 + REVISION_RESERVE / 2;
        for chunk in (2..=half).collect::<Vec<u64>>().chunks(5_000) {
            s.apply(&chunk.iter().map(|&i| put(i, &format!("k{}", i % 100), "v")).collect::<Vec<_>>()).unwrap();
        }
        assert!(!s.checkpoint_due(), "due before half the reserve was used");
        s.apply(&[put(half + 1, "b", "2")]).unwrap();
        assert!(s.checkpoint_due(), "half the reserve used and no checkpoint asked for");
        assert_eq!(s.revision_ceiling(), 1 + REVISION_RESERVE, "the apply path raised the ceiling");
        s.checkpoint().unwrap();
        assert!(!s.checkpoint_due(), "still due after a checkpoint");
        assert_eq!(s.revision_ceiling(), half + 1 + REVISION_RESERVE);
    }

    fn del(index: u64, key: &str) -> LogEntry {
        LogEntry { index, epoch: 1, command: Command::Delete { key: key.into(), if_revision: None }, meta: None }
    }

    fn all(s: &RedbStore) -> Vec<KeyValue> {
        s.list("", None, usize::MAX).unwrap()
    }

    /// What a checkpoint does while its fsync runs, step by step: applies go to the overlay,
    /// are seen at once by every read, a failing batch leaves nothing, and the end of the
    /// checkpoint writes them to redb.
    #[test]
    fn applies_during_a_checkpoint_are_seen_at_once_and_drained_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = RedbStore::open(&path).unwrap();
        s.apply(&[put(1, "a", "1"), put(2, "b", "1"), put(3, "d", "1")]).unwrap();
        s.diverted.store(true, Ordering::Release); // as `checkpoint` sets it before its commit
        let r = s.apply(&[put(4, "a", "2"), del(5, "b"), put(6, "c", "1")]).unwrap();
        assert_eq!(r.len(), 3);
        assert!(!s.overlay.read().unwrap().is_empty(), "the batch did not go to the overlay");
        let kv = s.get("a").unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.value.as_slice()), (1, 4, &b"2"[..]));
        assert_eq!(s.get("b").unwrap(), None, "a key deleted in the overlay is still served");
        let keys: Vec<String> = all(&s).into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, ["a", "c", "d"]);
        assert_eq!(s.list("", Some("a"), 1).unwrap()[0].key, "c", "paging across the overlay");
        assert_eq!(s.applied_state().unwrap().index, 6);
        // A conditional write sees the overlay's revision; a batch with a gap changes nothing.
        let r = s
            .apply(&[LogEntry { index: 7, epoch: 1, command: Command::Put { key: "a".into(), value: b"3".to_vec(), if_revision: Some(4) }, meta: None }])
            .unwrap();
        assert_eq!(r[0].outcome, Outcome::Written);
        assert!(s.apply(&[put(8, "e", "1"), put(10, "f", "1")]).is_err());
        assert_eq!((s.get("e").unwrap(), s.applied_index()), (None, 7), "a failed batch left part of itself");
        // redb itself has none of it yet.
        assert!(s.db().begin_read().unwrap().open_table(KV).unwrap().get("c").unwrap().is_none());
        let before = all(&s);
        assert_eq!(s.checkpoint().unwrap(), 7);
        assert!(s.overlay.read().unwrap().is_empty() && !s.diverted.load(Ordering::Acquire));
        assert_eq!(all(&s), before);
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!((all(&s), s.applied_index()), (before, 7), "the checkpoint did not persist the drained overlay");
    }

    /// Applies, reads and checkpoints from three threads: the store ends exactly where one
    /// that never checkpointed does, every read sees a key's revisions only go up, and a
    /// reopen after the last checkpoint has everything.
    #[test]
    fn concurrent_checkpoints_lose_and_reorder_nothing() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let s = Arc::new(RedbStore::open(&path).unwrap());
        let reference = RedbStore::open(&dir.path().join("ref.redb")).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let checkpoints = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !done.load(Ordering::Acquire) {
                    s.checkpoint().unwrap();
                    n += 1;
                }
                n
            })
        };
        let reader = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::HashMap::<String, u64>::new();
                while !done.load(Ordering::Acquire) {
                    for kv in s.list("k", None, usize::MAX).unwrap() {
                        let last = seen.entry(kv.key.clone()).or_default();
                        assert!(kv.mod_revision >= *last, "{} went back from revision {last} to {}", kv.key, kv.mod_revision);
                        *last = kv.mod_revision;
                    }
                }
            })
        };
        let mut index = 0;
        for round in 0..1500u64 {
            let batch: Vec<LogEntry> = (0..4)
                .map(|i| {
                    index += 1;
                    let key = format!("k{}", (round * 7 + i * 13) % 50);
                    if (round + i) % 9 == 0 { del(index, &key) } else { put(index, &key, &format!("{round}-{i}")) }
                })
                .collect();
            assert_eq!(s.apply(&batch).unwrap(), reference.apply(&batch).unwrap());
        }
        done.store(true, Ordering::Release);
        let n = checkpoints.join().unwrap();
        reader.join().unwrap();
        assert!(n > 10, "only {n} checkpoints ran alongside the applies");
        assert_eq!(all(&s), all(&reference));
        assert_eq!(s.checkpoint().unwrap(), index);
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!((all(&s), s.applied_index()), (all(&reference), index));
    }

    /// Writes `a`'s image to `file`; returns what it holds.
    fn write_image(a: &RedbStore, file: &Path) -> SnapshotMeta {
        let mut image = a.begin_image().unwrap().expect("the redb store makes images");
        let mut seen = 0;
        image.copy_to(file, &mut |n| seen = n).unwrap();
        assert_eq!((seen, std::fs::metadata(file).unwrap().len()), (image.size(), image.size()));
        image.meta().clone()
    }

    /// Writes `a`'s image to a file and installs it into `b`; returns what the install reported.
    fn image_into(dir: &Path, a: &RedbStore, b: &RedbStore) -> Result<SnapshotMeta, StateMachineError> {
        let file = dir.join("image");
        write_image(a, &file);
        let bytes = std::fs::read(&file).unwrap();
        b.install_image(&mut &bytes[..], bytes.len() as u64)
    }

    #[test]
    fn an_image_installs_the_same_state_and_keeps_the_receivers_own_facts() {
        let dir = tempfile::tempdir().unwrap();
        let a = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        a.bind_wal(WalId::from_u128(0xa).unwrap()).unwrap();
        a.apply(&(1..=300).map(|i| put(i, &format!("k{i:04}"), &"v".repeat(200))).collect::<Vec<_>>()).unwrap();
        a.apply(&[del(301, "k0007")]).unwrap();
        let bpath = dir.path().join("b.redb");
        let b = RedbStore::open(&bpath).unwrap();
        let bid = WalId::from_u128(0xb).unwrap();
        b.bind_wal(bid).unwrap();
        b.apply(&(1..=3).map(|i| put(i, "stale", "x")).collect::<Vec<_>>()).unwrap();
        let b_ceiling = b.revision_ceiling();
        let meta = image_into(dir.path(), &a, &b).unwrap();
        assert_eq!((meta.applied_index, meta.keys), (301, 299));
        assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
        assert!(b.get("stale").unwrap().is_none());
        assert_eq!((b.applied_index(), b.durable_index()), (301, 301));
        // The WAL binding is the receiver's; the ceiling bounds both nodes' indexes.
        assert_eq!(b.wal_binding().unwrap(), Some(bid));
        assert!(b.revision_ceiling() >= b_ceiling.max(a.revision_ceiling()));
        // Applies go on, and all of it is there after a restart.
        b.apply(&[put(302, "after", "y")]).unwrap();
        b.checkpoint().unwrap();
        let want = digest(&b).unwrap();
        drop(b);
        let b = RedbStore::open(&bpath).unwrap();
        assert_eq!((digest(&b).unwrap(), b.applied_index(), b.wal_binding().unwrap()), (want, 302, Some(bid)));
        assert!(!installing_path(&bpath).exists());
        // A receiver not yet bound to a WAL does not take the sender's binding.
        let c = RedbStore::open(&dir.path().join("c.redb")).unwrap();
        image_into(dir.path(), &a, &c).unwrap();
        assert_eq!(c.wal_binding().unwrap(), None);
    }

    #[test]
    fn a_short_long_or_damaged_image_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        a.apply(&(1..=200).map(|i| put(i, &format!("k{i:04}"), &"v".repeat(200))).collect::<Vec<_>>()).unwrap();
        let file = dir.path().join("image");
        write_image(&a, &file);
        let bytes = std::fs::read(&file).unwrap();
        let bpath = dir.path().join("b.redb");
        let b = RedbStore::open(&bpath).unwrap();
        b.apply(&[put(1, "mine", "x")]).unwrap();
        let before = digest(&b).unwrap();
        let n = bytes.len() as u64;
        let short = b.install_image(&mut &bytes[..bytes.len() - 1], n).unwrap_err();
        assert!(short.to_string().contains("ended at byte"), "{short}");
        let long = b.install_image(&mut &[&bytes[..], b"x"].concat()[..], n).unwrap_err();
        assert!(long.to_string().contains("longer than"), "{long}");
        // Not a store file at all.
        assert!(b.install_image(&mut &vec![7u8; bytes.len()][..], n).is_err());
        assert_eq!(digest(&b).unwrap(), before);
        assert_eq!(b.applied_index(), 1);
        assert!(!installing_path(&bpath).exists(), "a failed install left its file behind");
    }

    #[test]
    fn applies_while_an_image_is_taken_are_kept_and_the_image_is_the_state_at_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(RedbStore::open(&dir.path().join("a.redb")).unwrap());
        let entry = |i: u64| if i.is_multiple_of(5) { del(i, &format!("k{:03}", i % 97)) } else { put(i, &format!("k{:03}", i % 97), &format!("v{i}")) };
        a.apply(&(1..=2000).map(entry).collect::<Vec<_>>()).unwrap();
        let writer = {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 2001..=6000u64 {
                    a.apply(&[entry(i)]).unwrap();
                }
            })
        };
        let file = dir.path().join("image");
        let mut metas = Vec::new();
        for round in 0..6 {
            // Copied, or read in place from the store's own file while it is held still.
            let bytes = if round % 2 == 0 {
                metas.push(write_image(&a, &file));
                std::fs::read(&file).unwrap()
            } else {
                let image = a.begin_image().unwrap().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
                let bytes = std::fs::read(image.live_path().unwrap()).unwrap();
                metas.push(image.meta().clone());
                bytes
            };
            let b = RedbStore::open(&dir.path().join(format!("b{}.redb", metas.len()))).unwrap();
            let meta = b.install_image(&mut &bytes[..], bytes.len() as u64).unwrap();
            // The image is exactly the state at its applied index: a replay to there agrees.
            let r = RedbStore::open(&dir.path().join(format!("r{}.redb", metas.len()))).unwrap();
            r.apply(&(1..=meta.applied_index).map(entry).collect::<Vec<_>>()).unwrap();
            assert_eq!(digest(&b).unwrap(), digest(&r).unwrap(), "image at {}", meta.applied_index);
        }
        writer.join().unwrap();
        // Nothing applied meanwhile was lost, before or after a restart.
        a.checkpoint().unwrap();
        let r = RedbStore::open(&dir.path().join("all.redb")).unwrap();
        r.apply(&(1..=6000).map(entry).collect::<Vec<_>>()).unwrap();
        assert_eq!(digest(&*a).unwrap(), digest(&r).unwrap());
        assert!(metas.windows(2).all(|w| w[0].applied_index <= w[1].applied_index));
    }
}
