//! openraft's log storage on `meridian-wal`.
//!
//! - **Positions.** openraft index `i` is WAL record `i + 1` (see [`super::types`]); a record's
//!   epoch is the entry's term, so a record *is* a log id.
//! - **Durability.** `append` queues the records with the WAL's group commit and returns at
//!   once; the `IOFlushed` callback fires only when the WAL reports them fdatasync'ed. Until
//!   then the entries are readable from [`Shared::unflushed`] (openraft reads what it has
//!   just appended before it is durable, e.g. to replicate it).
//! - **Vote, purge point.** Kept together in the WAL's hard state (one crc-protected file,
//!   replaced atomically, queued behind every append enqueued before it — so a vote is never
//!   durable ahead of the entries that preceded it). The purge point is written *before*
//!   segments are deleted, so the purged position always keeps its term; a purge cut short
//!   by a crash is finished when the store opens ([`LogStore::new`]).
//!
//! Blocking WAL calls run on `spawn_blocking`, never on openraft's core task.

use std::collections::BTreeMap;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use meridian_wal::{HardState, Record, Wal, WalError};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::types::{log_id, position, LogId, Membership, RaftCommand, TypeConfig, Vote};
use crate::payload::LogPayload;
use openraft::Entry as RaftEntry;

type Entry = openraft::alias::EntryOf<TypeConfig>;

/// What the WAL's hard state holds in `raft` mode (JSON in `HardState::vote`; its `epoch` is
/// the vote's term, for `meridian wal dump`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RaftHardState {
    pub vote: Option<Vote>,
    /// The last purged log id: the WAL floor with its term.
    pub purged: Option<LogId>,
}

impl RaftHardState {
    /// Reads it from the WAL. A hard state that does not decode stops the node: it holds
    /// the vote, and guessing a vote can elect two leaders in one term.
    pub fn load(wal: &Wal) -> io::Result<RaftHardState> {
        let hs = wal.hard_state();
        if hs.vote.is_empty() {
            return Ok(RaftHardState::default());
        }
        serde_json::from_slice(&hs.vote).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("the Raft hard state in wal.state does not decode ({e}); refusing to start without the saved vote"))
        })
    }

    pub(crate) fn save(&self, wal: &Wal) -> Result<(), WalError> {
        let term = self.vote.as_ref().map_or(0, |v| v.leader_id.term);
        let bytes = serde_json::to_vec(self).expect("hard state serializes");
        wal.save_hard_state(&HardState { epoch: term, vote: bytes })
    }
}

/// Encodes an entry as the WAL record at its position.
pub fn to_record(e: &Entry) -> Record {
    let payload = match &e.payload {
        EntryPayload::Blank => LogPayload::Blank,
        EntryPayload::Normal(c) => LogPayload::Normal(c.0.clone()),
        EntryPayload::Membership(m) => LogPayload::Membership(serde_json::to_vec(&m).expect("membership serializes")),
    };
    Record { index: position(e.log_id.index), epoch: e.log_id.leader_id.term, payload: payload.encode() }
}

/// Decodes a WAL record written by [`to_record`].
pub fn from_record(r: &Record) -> io::Result<Entry> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("WAL record {}: {what}", r.index));
    let id = log_id(r.epoch, r.index).ok_or_else(|| bad("position 0 is not a Raft entry".into()))?;
    let payload = match LogPayload::decode(&r.payload).map_err(|e| bad(e.to_string()))? {
        LogPayload::Blank => EntryPayload::Blank,
        LogPayload::Normal(c) => EntryPayload::Normal(RaftCommand(c)),
        LogPayload::Membership(b) => {
            EntryPayload::Membership(serde_json::from_slice::<Membership>(&b).map_err(|e| bad(format!("membership: {e}")))?)
        }
    };
    Ok(RaftEntry { log_id: id, payload })
}

/// State shared by the storage handle and its readers.
pub struct Shared {
    wal: Wal,
    /// Appended but not yet reported durable by the WAL, by openraft index.
    unflushed: Mutex<BTreeMap<u64, Entry>>,
    hard: Mutex<RaftHardState>,
}

#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    pub fn new(wal: Wal) -> io::Result<LogStore> {
        let hard = RaftHardState::load(&wal)?;
        // A purge saves its point first and deletes the records after; a crash between the
        // two (e.g. a follower killed right after a snapshot install) leaves records at or
        // below the purge point — possibly all of the WAL, ending far below it, which openraft
        // refuses as an inverted log. Finish the purge before anyone reads the log.
        if let Some(p) = hard.purged {
            if wal.first_index() <= position(p.index) {
                tracing::info!(purged = position(p.index), wal_first = wal.first_index(), wal_last = wal.last_index(), "finishing an interrupted log purge");
                wal.purge_before(position(p.index) + 1).map_err(io_err)?;
            }
        }
        Ok(LogStore { shared: Arc::new(Shared { wal, unflushed: Mutex::new(BTreeMap::new()), hard: Mutex::new(hard) }) })
    }

    pub fn wal(&self) -> &Wal {
        &self.shared.wal
    }
}

fn io_err(e: WalError) -> io::Error {
    io::Error::other(e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

impl Shared {
    /// Entries with openraft index in [start, end).
    fn read(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Snapshot the unflushed entries first: anything removed from the map after this was
        // durable before its removal, so the WAL read below returns it.
        let pending: Vec<Entry> = self.unflushed.lock().unwrap().range(start..end).map(|(_, e)| e.clone()).collect();
        // Nothing exists below the WAL's first record (purged, or never written).
        let start = start.max(self.wal.first_index().saturating_sub(1));
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - start).min(4096) as usize);
        let mut next = start;
        while next < end {
            let want = (end - next).min(4096) as usize;
            let records = match self.wal.read_from(position(next), want, 32 << 20) {
                Ok(r) => r,
                Err(e) => return Err(io_err(e)),
            };
            if records.is_empty() {
                break;
            }
            for r in &records {
                out.push(from_record(r)?);
            }
            next += records.len() as u64;
        }
        out.extend(pending.into_iter().filter(|e| e.log_id.index >= next));
        // No holes: keep a contiguous run from the first entry (a range may start below the
        // log's first entry; nothing exists there).
        let mut expect = out.first().map_or(start, |e| e.log_id.index);
        let keep = out.iter().take_while(|e| {
            let ok = e.log_id.index == expect;
            expect += 1;
            ok
        });
        Ok(keep.cloned().collect())
    }

    fn last_log_id(&self) -> io::Result<Option<LogId>> {
        if let Some((_, e)) = self.unflushed.lock().unwrap().last_key_value() {
            return Ok(Some(e.log_id));
        }
        let last = self.wal.last_index();
        let purged = self.hard.lock().unwrap().purged;
        if last == 0 || last < self.wal.first_index() {
            return Ok(purged);
        }
        let rec = self.wal.read_from(last, 1, usize::MAX).map_err(io_err)?;
        match rec.first() {
            Some(r) => Ok(log_id(r.epoch, r.index)),
            None => Ok(purged),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(&mut self, range: RB) -> io::Result<Vec<Entry>> {
        use std::ops::Bound::*;
        let start = match range.start_bound() {
            Included(s) => *s,
            Excluded(s) => s + 1,
            Unbounded => 0,
        };
        let end = match range.end_bound() {
            Included(e) => e + 1,
            Excluded(e) => *e,
            Unbounded => u64::MAX,
        };
        let shared = self.shared.clone();
        blocking(move || shared.read(start, end)).await
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.shared.hard.lock().unwrap().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let shared = self.shared.clone();
        let last = blocking(move || shared.last_log_id()).await?;
        let purged = self.shared.hard.lock().unwrap().purged;
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let shared = self.shared.clone();
        let vote = *vote;
        blocking(move || {
            let mut next = shared.hard.lock().unwrap().clone();
            next.vote = Some(vote);
            next.save(&shared.wal).map_err(io_err)?;
            *shared.hard.lock().unwrap() = next;
            Ok(())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let records: Vec<Record> = entries.iter().map(to_record).collect();
        let written: Vec<LogId> = entries.iter().map(|e| e.log_id).collect();
        {
            let mut pending = self.shared.unflushed.lock().unwrap();
            for e in entries {
                pending.insert(e.log_id.index, e);
            }
        }
        // Enqueue order is log order; the ticket resolves after the fdatasync.
        let ticket = self.shared.wal.append(records);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let result = ticket.await;
            if result.is_ok() {
                // Forget only what this append wrote: after a truncation a later append may
                // have put other entries at the same indexes, not yet durable.
                let mut pending = shared.unflushed.lock().unwrap();
                for id in written {
                    if pending.get(&id.index).is_some_and(|e| e.log_id == id) {
                        pending.remove(&id.index);
                    }
                }
            }
            callback.io_completed(result.map(|_| ()).map_err(io_err));
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
        let keep_upto = last.map_or(0, |l| position(l.index));
        self.shared.unflushed.lock().unwrap().retain(|i, _| position(*i) <= keep_upto);
        let shared = self.shared.clone();
        blocking(move || {
            let removed = shared.wal.truncate_after(keep_upto).map_err(io_err)?;
            if !removed.is_empty() {
                tracing::info!(after = keep_upto, removed = removed.len(), "Raft log truncated after a conflict");
            }
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, upto: LogId) -> io::Result<()> {
        let shared = self.shared.clone();
        blocking(move || {
            let mut next = shared.hard.lock().unwrap().clone();
            if next.purged.is_some_and(|p| p.index >= upto.index) {
                return Ok(());
            }
            next.purged = Some(upto);
            // The floor with its term first, then the segments.
            next.save(&shared.wal).map_err(io_err)?;
            *shared.hard.lock().unwrap() = next;
            shared.wal.purge_before(position(upto.index) + 1).map_err(io_err)
        })
        .await
    }
}
