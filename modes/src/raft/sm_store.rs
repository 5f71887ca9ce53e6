//! openraft's state machine on Meridian's [`StateMachine`] (redb), and its snapshots.
//!
//! - **Apply.** Committed entries become [`LogEntry`]s at their Meridian positions; a
//!   membership entry carries the new [`StoredMembership`] as the entry's `meta`, so the store
//!   records data, last applied log id and membership in one transaction.
//! - **Applied state after a crash** is what redb made durable; openraft re-applies the rest
//!   from the log. That is safe because the log is never purged past a snapshot, and a
//!   snapshot is handed to openraft only after a checkpoint that covers its read view (so its
//!   position is durable in redb too).
//! - **Snapshots** are Meridian snapshot files (`snapshot.rs`: one consistent read view, the
//!   applied position, term and membership in the header, a checksum at the end) kept in
//!   `<data>/raft/snapshots/`. Building streams to a temporary file, then renames; only the
//!   newest survives, and a build never replaces a newer snapshot (an install may have
//!   published one meanwhile). Installing verifies the whole file and replaces the state in
//!   one transaction ([`StateMachine::replace_all`]).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};

use super::types::{log_id, position, SnapshotMeta, StoredMembership, TypeConfig};
use crate::snapshot::SnapshotReader;
use crate::state_machine::{install_snapshot_sized, write_snapshot, LogEntry, StateMachine};

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// A snapshot file and where it lives (openraft's `SnapshotData`).
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
}

#[derive(Clone)]
pub struct SmStore {
    sm: Arc<dyn StateMachine>,
    dir: Arc<PathBuf>,
    seq: Arc<AtomicU64>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("state machine task failed: {e}")))?
}

/// What the state machine keeps about the cluster next to the data (its `meta`, JSON; also in
/// every snapshot's header): the membership, and the id of every member ever removed.
///
/// Invariant (enforced in [`SmStore::apply`], checked by `RaftNode::join`): a Raft id names
/// one incarnation of one node for the life of the cluster. A removed member may still be
/// running with its old vote and log; were its name added again, two processes could speak
/// (and vote) as one id. `removed` is part of the replicated state, so every member and every
/// snapshot agree on it. Older states (membership only) read as "nothing removed".
///
/// (Not `#[serde(flatten)]` over the membership: flattening buffers the map and then cannot
/// read the membership's integer node-id keys back.)
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RaftMeta {
    pub membership: StoredMembership,
    #[serde(default)]
    pub removed: BTreeSet<u64>,
}

/// The cluster metadata stored with the state (`meta`), or the empty one. A bare membership
/// (the format before `removed` existed) reads as nothing removed.
pub fn meta_of(meta: Option<&[u8]>) -> io::Result<RaftMeta> {
    let Some(b) = meta else { return Ok(RaftMeta::default()) };
    serde_json::from_slice::<RaftMeta>(b)
        .or_else(|e| serde_json::from_slice::<StoredMembership>(b).map(|membership| RaftMeta { membership, removed: BTreeSet::new() }).map_err(|_| e))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("the stored Raft membership does not decode: {e}")))
}

/// The membership stored with the state (`meta`), or the empty one.
pub fn membership_of(meta: Option<&[u8]>) -> io::Result<StoredMembership> {
    meta_of(meta).map(|m| m.membership)
}

impl SmStore {
    pub fn new(sm: Arc<dyn StateMachine>, data_dir: &Path) -> io::Result<SmStore> {
        let dir = data_dir.join("raft").join("snapshots");
        std::fs::create_dir_all(&dir)?;
        // Half-written files from a crash are not snapshots.
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(SmStore { sm, dir: Arc::new(dir), seq: Arc::new(AtomicU64::new(0)) })
    }

    pub fn state_machine(&self) -> &Arc<dyn StateMachine> {
        &self.sm
    }

    /// A fresh temporary path in the snapshot directory (for building and receiving).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}-{}-{}.tmp", std::process::id(), self.seq.fetch_add(1, Ordering::Relaxed)))
    }

    fn final_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let (term, index) = meta.last_log_id.map_or((0, 0), |l| (l.leader_id.term, position(l.index)));
        self.dir.join(format!("snapshot-{index:020}-{term:020}.snap"))
    }

    /// The newest snapshot file, if any.
    fn newest(&self) -> io::Result<Option<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&*self.dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .collect();
        files.sort();
        Ok(files.pop())
    }

    /// Publishes `tmp` as the snapshot for `meta` unless a newer one exists; removes older ones.
    fn publish(&self, tmp: &Path, meta: &SnapshotMeta) -> io::Result<PathBuf> {
        let target = self.final_path(meta);
        if let Some(newest) = self.newest()? {
            if newest > target {
                let _ = std::fs::remove_file(tmp);
                return Ok(newest);
            }
        }
        std::fs::rename(tmp, &target)?;
        File::open(&*self.dir)?.sync_all()?;
        for e in std::fs::read_dir(&*self.dir)?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "snap") && p != target {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(target)
    }

    /// Reads the openraft meta from a snapshot file's header.
    fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
        let r = SnapshotReader::new(BufReader::new(File::open(path)?)).map_err(other)?;
        Ok(SnapshotMeta {
            last_log_id: log_id(r.epoch, r.applied_index),
            last_membership: membership_of(r.replication_meta.as_deref())?,
        })
    }

    fn build(&self) -> io::Result<(PathBuf, SnapshotMeta)> {
        let tmp = self.temp_path("building");
        let out = BufWriter::new(File::create(&tmp)?);
        let (out, m) = write_snapshot(&*self.sm, out).map_err(other)?;
        let file = out.into_inner().map_err(|e| other(e.error()))?;
        file.sync_all()?;
        // Durable before openraft hears of it: the log may be purged up to this snapshot, and
        // after a crash redb must not come back below it. The checkpoint comes *after* the
        // read view — applies go on while a snapshot is built, so a checkpoint taken before
        // it could leave the view's position above what redb made durable.
        let durable = self.sm.checkpoint().map_err(other)?;
        if durable < m.applied_index {
            let _ = std::fs::remove_file(&tmp);
            return Err(other(format!("snapshot at {} but the state is durable only up to {durable}", m.applied_index)));
        }
        let meta = SnapshotMeta { last_log_id: log_id(m.epoch, m.applied_index), last_membership: membership_of(m.meta.as_deref())? };
        let path = self.publish(&tmp, &meta)?;
        let meta = if path == self.final_path(&meta) { meta } else { Self::read_meta(&path)? };
        tracing::info!(index = m.applied_index, term = m.epoch, keys = m.keys, "Raft snapshot built");
        Ok((path, meta))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let this = self.clone();
        blocking(move || {
            let (path, meta) = this.build()?;
            let file = File::open(&path)?;
            Ok(Snapshot { meta, snapshot: SnapshotFile { path, file } })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SmStore;

    async fn applied_state(&mut self) -> io::Result<(Option<super::types::LogId>, StoredMembership)> {
        let s = self.sm.applied_state().map_err(other)?;
        Ok((log_id(s.epoch, s.index), membership_of(s.meta.as_deref())?))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let items: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let mut batch = Vec::with_capacity(items.len());
        let mut responders = Vec::with_capacity(items.len());
        // The metadata as of the entry before, loaded at the first membership entry.
        let mut prev: Option<(u64, RaftMeta)> = None;
        for (entry, responder) in items {
            let (command, meta) = match entry.payload {
                EntryPayload::Blank => (crate::command::Command::Noop, None),
                EntryPayload::Normal(c) => (c.0, None),
                EntryPayload::Membership(m) => {
                    if prev.is_none() {
                        let sm = self.sm.clone();
                        let s = blocking(move || sm.applied_state().map_err(other)).await?;
                        prev = Some((s.index, meta_of(s.meta.as_deref())?));
                    }
                    let (applied, before) = prev.as_mut().expect("loaded above");
                    let mut next = RaftMeta { membership: StoredMembership::new(Some(entry.log_id), m), removed: before.removed.clone() };
                    // An entry already applied (replay after a restart) is skipped by the
                    // store; comparing it with the newer stored state would be wrong.
                    if position(entry.log_id.index) > *applied {
                        let kept: BTreeSet<u64> = next.membership.membership().nodes().map(|(id, _)| *id).collect();
                        next.removed.extend(before.membership.membership().nodes().map(|(id, _)| *id).filter(|id| !kept.contains(id)));
                        *before = next.clone();
                    }
                    (crate::command::Command::Noop, Some(serde_json::to_vec(&next).map_err(other)?))
                }
            };
            batch.push(LogEntry { index: position(entry.log_id.index), epoch: entry.log_id.leader_id.term, command, meta });
            responders.push(responder);
        }
        let sm = self.sm.clone();
        let results = blocking(move || sm.apply(&batch).map_err(other)).await?;
        // Entries already applied (replay after a restart) get no result; they are the
        // first ones, so results line up with the last responders.
        let skipped = responders.len().saturating_sub(results.len());
        for (responder, result) in responders.into_iter().skip(skipped).zip(results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> io::Result<()> {
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || {
            let SnapshotFile { path, file } = snapshot;
            // The file must be what openraft was told it is — checked before anything changes.
            let header = Self::read_meta(&path)?;
            if header.last_log_id != meta.last_log_id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot file holds {:?}, its metadata says {:?}", header.last_log_id, meta.last_log_id),
                ));
            }
            let total = file.metadata().ok().map(|m| m.len());
            let m = install_snapshot_sized(&*this.sm, BufReader::new(file), total).map_err(other)?;
            this.publish(&path, &meta)?;
            tracing::info!(index = m.applied_index, term = m.epoch, keys = m.keys, "Raft snapshot installed");
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let this = self.clone();
        blocking(move || {
            let Some(path) = this.newest()? else { return Ok(None) };
            let meta = Self::read_meta(&path)?;
            let file = File::open(&path)?;
            Ok(Some(Snapshot { meta, snapshot: SnapshotFile { path, file } }))
        })
        .await
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{log_id, MeridianNode, Membership};
    use std::collections::BTreeMap;

    fn node(n: &str) -> MeridianNode {
        MeridianNode { name: n.into(), addr: format!("{n}:7688"), http: None }
    }

    #[test]
    fn meta_round_trips_and_reads_the_older_bare_membership() {
        let m = Membership::from(BTreeMap::from([(7u64, node("a")), (9u64, node("b"))]));
        let stored = StoredMembership::new(log_id(1, 2), m);
        let meta = RaftMeta { membership: stored.clone(), removed: BTreeSet::from([3]) };
        let back = meta_of(Some(&serde_json::to_vec(&meta).unwrap())).unwrap();
        assert_eq!((back.membership, back.removed), (stored.clone(), BTreeSet::from([3])));
        let old = meta_of(Some(&serde_json::to_vec(&stored).unwrap())).unwrap();
        assert_eq!((old.membership, old.removed), (stored, BTreeSet::new()));
        assert!(meta_of(Some(b"{\"x\":1}")).is_err(), "garbage must not read as an empty membership");
    }
}
