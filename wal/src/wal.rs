//! `Wal`: the handle. It validates and orders requests, then hands them to the
//! writer thread; reads go straight to the segment table.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use tokio::sync::{oneshot, watch};

use crate::error::{io_at, WalError};
use crate::identity::WalId;
use crate::options::WalOptions;
use crate::reader::{self, SegmentTable, TableSegment};
use crate::record::{self, Record, MAX_RECORD_BYTES};
use crate::recovery::{self, Mode, RecoveryReport};
use crate::segment;
use crate::state::{HardState, MAX_VOTE_BYTES};
use crate::ticket::{wait_reply, AppendTicket};
use crate::writer::{Active, AppendReq, Request, Shared, Writer};

const LOCK_FILE: &str = "LOCK";

/// Where the log stands, for the admin API and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub first_index: u64,
    pub last_index: u64,
    pub durable_index: u64,
    pub segments: usize,
    /// Bytes in all segment files (headers included).
    pub total_bytes: u64,
    /// File name of the newest segment; empty when there is none.
    pub current_segment: String,
    /// Durable bytes in the newest segment.
    pub current_offset: u64,
}

/// A write-ahead log. Cheap to clone; all clones share one writer thread.
/// Dropping the last clone closes it.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    order: Mutex<Order>,
    writer: Mutex<Option<JoinHandle<()>>>,
    lock: Mutex<Option<File>>,
}

/// The log as the handles see it, including appends not yet durable. Requests
/// are validated and sent to the writer under this lock, so queue order is log order.
struct Order {
    first: u64,
    next: u64,
    /// An empty log must continue exactly at `next` (false only before the first
    /// append ever, when any starting index is accepted).
    pinned: bool,
    /// `None` once closed.
    tx: Option<Sender<Request>>,
}

impl Order {
    fn is_empty(&self) -> bool {
        self.first >= self.next
    }

    fn sender(&self, shared: &Shared) -> Result<&Sender<Request>, WalError> {
        let tx = self.tx.as_ref().ok_or(WalError::Closed)?;
        shared.check_poisoned()?;
        Ok(tx)
    }
}

impl Wal {
    /// Opens (or creates) the WAL in `opts.dir`, runs recovery (see the crate
    /// docs), and starts the writer thread. Blocking.
    pub fn open(opts: WalOptions) -> Result<(Wal, RecoveryReport), WalError> {
        let dir = opts.dir.clone();
        if let Some(expected) = opts.expected_id {
            // Checked again under the lock; this first look keeps a missing WAL from being
            // replaced even by an empty directory.
            if !recovery::holds_a_wal(&dir)? {
                return Err(WalError::Missing { dir, expected });
            }
        }
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let lock = lock_dir(&dir)?;
        let rec = recovery::recover(&dir, Mode::Repair, opts.expected_id)?;

        let mut table = SegmentTable::default();
        let mut active = None;
        let count = rec.segments.len();
        for (i, s) in rec.segments.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(is_last)
                .open(&s.path)
                .map_err(io_at(&s.path))?;
            let file = Arc::new(file);
            if is_last {
                // A preallocated segment keeps its zeros past `end` (see `recovery`).
                let allocated = file.metadata().map_err(io_at(&s.path))?.len().max(s.end);
                active = Some(Active {
                    file: file.clone(),
                    path: s.path.clone(),
                    len: s.end,
                    allocated,
                    next_index: s.next_index(),
                });
            }
            table.segments.push(TableSegment {
                first_index: s.first_index,
                name: segment::file_name(s.seq, s.first_index),
                path: s.path,
                file,
                offsets: s.offsets,
                end: s.end,
            });
        }

        let shared = Arc::new(Shared::new(
            rec.id,
            rec.dir,
            table,
            rec.state,
            rec.next.saturating_sub(1),
        ));
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(shared.clone(), rx, active, rec.next_seq, opts);
        let handle = thread::Builder::new()
            .name("meridian-wal-writer".into())
            .spawn(move || writer.run())
            .map_err(io_at(&dir))?;

        let report = rec.report;
        tracing::info!(
            dir = %dir.display(),
            wal_id = %rec.id,
            first_index = report.first_index,
            last_index = report.last_index,
            segments = report.segments,
            torn_tail = report.truncated_tail.is_some(),
            "WAL opened"
        );
        let wal = Wal {
            inner: Arc::new(Inner {
                shared,
                order: Mutex::new(Order {
                    first: rec.first,
                    next: rec.next,
                    pinned: rec.pinned,
                    tx: Some(tx),
                }),
                writer: Mutex::new(Some(handle)),
                lock: Mutex::new(Some(lock)),
            }),
        };
        Ok((wal, report))
    }

    /// Enqueues `records` for a durable append and returns at once; the caller's
    /// enqueue order is the log order.
    ///
    /// `records[0].index` must be `last_index() + 1` and the rest contiguous. The
    /// one exception is a WAL that was never written (no append, truncate, purge or
    /// reset ever): its first record may carry any index. After `reset_to(n)` the
    /// next append must start at `n`. A violation fails the ticket with
    /// `IndexGap` and writes nothing. An empty `records` is a barrier: its ticket
    /// resolves to `last_index()` once everything enqueued before it is durable.
    pub fn append(&self, records: Vec<Record>) -> AppendTicket {
        // Encoding (and its checksums) runs on the caller's thread, outside the
        // lock, so concurrent appenders share that work.
        let mut bytes = Vec::with_capacity(
            records
                .iter()
                .map(|r| record::frame_len(r.payload.len()))
                .sum(),
        );
        for (i, r) in records.iter().enumerate() {
            if r.payload.len() > MAX_RECORD_BYTES {
                return AppendTicket::ready(Err(WalError::RecordTooLarge {
                    index: r.index,
                    len: r.payload.len(),
                    max: MAX_RECORD_BYTES,
                }));
            }
            if i > 0 && r.index != records[i - 1].index.wrapping_add(1) {
                return AppendTicket::ready(Err(WalError::IndexGap {
                    expected: records[i - 1].index.wrapping_add(1),
                    got: r.index,
                }));
            }
            record::encode(&mut bytes, r);
        }
        let (done, rx) = oneshot::channel();
        let mut order = self.inner.order.lock().unwrap();
        if let Err(e) = order.sender(&self.inner.shared) {
            return AppendTicket::ready(Err(e));
        }
        let req = match (records.first(), records.last()) {
            (Some(first), Some(last)) => {
                let any_start = order.is_empty() && !order.pinned;
                if !any_start && first.index != order.next {
                    return AppendTicket::ready(Err(WalError::IndexGap {
                        expected: order.next,
                        got: first.index,
                    }));
                }
                AppendReq {
                    first: first.index,
                    last: last.index,
                    records: records.len(),
                    bytes,
                    done,
                }
            }
            _ => AppendReq {
                first: order.next,
                last: order.next.saturating_sub(1),
                records: 0,
                bytes,
                done,
            },
        };
        let (first, last, n) = (req.first, req.last, req.records);
        let sent = order
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Request::Append(req)).is_ok());
        if !sent {
            return AppendTicket::ready(Err(WalError::Closed));
        }
        if n > 0 {
            if order.is_empty() {
                order.first = first;
            }
            order.next = last + 1;
            order.pinned = true;
        }
        AppendTicket::waiting(rx)
    }

    /// This WAL's identity, created with the directory (see `identity`).
    pub fn id(&self) -> WalId {
        self.inner.shared.id
    }

    /// First readable index. When the log is empty this is the index the next
    /// append starts at (`last_index() + 1`, or the `reset_to` / purge point).
    pub fn first_index(&self) -> u64 {
        self.inner.order.lock().unwrap().first
    }

    /// Last enqueued index (durable or not); 0 when nothing was ever written.
    pub fn last_index(&self) -> u64 {
        self.inner.order.lock().unwrap().next.saturating_sub(1)
    }

    /// Last fdatasync'ed index. Moves backwards after `truncate_after`/`reset_to`.
    pub fn durable_index(&self) -> u64 {
        self.inner.shared.durable_index()
    }

    /// Why the WAL stopped taking writes, once a write or fsync failed (it is poisoned:
    /// see the crate docs); `None` while it is usable. For health and metrics.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.check_poisoned().err().map(|e| e.to_string())
    }

    /// Watch of `durable_index()`, updated after every group commit.
    pub fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.inner.shared.subscribe_durable()
    }

    /// Reads durable records with index >= `from`: at most `max_records`, and
    /// no more than `max_bytes` of frames except that the first record is always
    /// returned. Empty when `from` is past the durable end. `Purged` if `from` is
    /// below `first_index()`. Blocking (pread); safe alongside appends.
    pub fn read_from(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, WalError> {
        {
            let order = self.inner.order.lock().unwrap();
            if from < order.first && order.pinned {
                return Err(WalError::Purged {
                    requested: from,
                    first: order.first,
                });
            }
        }
        if max_records == 0 || from > self.durable_index() {
            return Ok(Vec::new());
        }
        reader::read(&self.inner.shared.table, from, max_records, max_bytes)
    }

    /// Removes every record with index > `after` (a Raft conflict or HA
    /// divergence) and returns them, for example to keep in `divergent/`.
    /// Serialized with appends; durable and crash-safe (see the crate docs)
    /// when it returns. A no-op when `after >= last_index()`; `Purged` when
    /// `after + 1 < first_index()`.
    pub fn truncate_after(&self, after: u64) -> Result<Vec<Record>, WalError> {
        let rx = {
            let mut order = self.inner.order.lock().unwrap();
            let tx = order.sender(&self.inner.shared)?;
            if order.is_empty() || after >= order.next - 1 {
                return Ok(Vec::new());
            }
            if after + 1 < order.first {
                return Err(WalError::Purged {
                    requested: after + 1,
                    first: order.first,
                });
            }
            let (done, rx) = oneshot::channel();
            tx.send(Request::Truncate {
                after,
                first: order.first,
                done,
            })
            .map_err(|_| WalError::Closed)?;
            order.next = after + 1;
            order.pinned = true;
            rx
        };
        wait_reply(rx)
    }

    /// Compaction: records with index < `before` are no longer needed.
    /// `first_index()` becomes `before` at once (and survives restarts); segment
    /// files whose records are all below it are deleted. If `before` is past the
    /// end, the log becomes empty and the next append must start at `before`.
    ///
    /// A [`WalError::Transient`] answer (no descriptor to rewrite `wal.state`)
    /// changed nothing, `first_index()` included: call again later.
    pub fn purge_before(&self, before: u64) -> Result<(), WalError> {
        let (rx, old_first) = {
            let mut order = self.inner.order.lock().unwrap();
            let tx = order.sender(&self.inner.shared)?;
            if before <= order.first {
                return Ok(());
            }
            let (done, rx) = oneshot::channel();
            tx.send(Request::Purge { before, done })
                .map_err(|_| WalError::Closed)?;
            let old_first = order.first;
            order.first = before;
            order.next = order.next.max(before);
            order.pinned = true;
            (rx, old_first)
        };
        let result = wait_reply(rx);
        if result.as_ref().is_err_and(WalError::is_transient) {
            // The writer refused it only while `before` was inside the log, so `next`
            // did not move; give `first` back unless a later purge moved it on.
            let mut order = self.inner.order.lock().unwrap();
            if order.first == before {
                order.first = old_first;
            }
        }
        result
    }

    /// Drops every record; the next append must start at `next_index` (after a
    /// snapshot install or a backup restore). Durable when it returns.
    pub fn reset_to(&self, next_index: u64) -> Result<(), WalError> {
        let rx = {
            let mut order = self.inner.order.lock().unwrap();
            let tx = order.sender(&self.inner.shared)?;
            let (done, rx) = oneshot::channel();
            tx.send(Request::Reset {
                next: next_index,
                done,
            })
            .map_err(|_| WalError::Closed)?;
            order.first = next_index;
            order.next = next_index;
            order.pinned = true;
            rx
        };
        wait_reply(rx)
    }

    /// Saves the hard state durably (tmp file, fsync, rename, fsync directory;
    /// crc-protected). It is queued like an append, so it is ordered after every
    /// append enqueued before it.
    pub fn save_hard_state(&self, hs: &HardState) -> Result<(), WalError> {
        if hs.vote.len() > MAX_VOTE_BYTES {
            return Err(WalError::VoteTooLarge {
                len: hs.vote.len(),
                max: MAX_VOTE_BYTES,
            });
        }
        let rx = {
            let order = self.inner.order.lock().unwrap();
            let tx = order.sender(&self.inner.shared)?;
            let (done, rx) = oneshot::channel();
            tx.send(Request::SaveHardState {
                hard: hs.clone(),
                done,
            })
            .map_err(|_| WalError::Closed)?;
            rx
        };
        wait_reply(rx)
    }

    /// The last saved hard state (default if none was ever saved).
    pub fn hard_state(&self) -> HardState {
        self.inner.shared.state.lock().unwrap().get().hard.clone()
    }

    pub fn position(&self) -> Position {
        let (first_index, last_index) = {
            let order = self.inner.order.lock().unwrap();
            (order.first, order.next.saturating_sub(1))
        };
        let durable_index = self.durable_index();
        let table = self.inner.shared.table.read().unwrap();
        let current = table.segments.last();
        Position {
            first_index,
            last_index,
            durable_index,
            segments: table.segments.len(),
            total_bytes: table.segments.iter().map(|s| s.end).sum(),
            current_segment: current.map(|s| s.name.clone()).unwrap_or_default(),
            current_offset: current.map_or(0, |s| s.end),
        }
    }

    /// Stops the writer thread after it has committed everything queued, and
    /// releases the directory lock. Idempotent. Later appends and other writes
    /// fail with `Closed`; reads keep working.
    pub fn close(&self) -> Result<(), WalError> {
        self.inner.close()
    }

    /// Test hook: see `Writer::failpoint`.
    #[cfg(test)]
    pub(crate) fn set_failpoint(&self, name: Option<&'static str>) {
        *self.inner.shared.failpoint.lock().unwrap() = name;
    }
}

impl Inner {
    fn close(&self) -> Result<(), WalError> {
        let Some(tx) = self.order.lock().unwrap().tx.take() else {
            return Ok(());
        };
        self.shared.set_closing();
        let (done, rx) = oneshot::channel();
        let result = match tx.send(Request::Close { done }) {
            Ok(()) => wait_reply(rx),
            Err(_) => Ok(()), // the writer is already gone
        };
        if let Some(handle) = self.writer.lock().unwrap().take() {
            if handle.join().is_err() {
                return Err(WalError::Poisoned {
                    reason: "the WAL writer thread panicked".into(),
                });
            }
        }
        self.lock.lock().unwrap().take();
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "WAL close on drop failed");
        }
    }
}

/// One `Wal` per directory: two writers would interleave frames.
fn lock_dir(dir: &std::path::Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_at(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(WalError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(io_at(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fill, indexes, open, read_all, rec};

    #[test]
    fn a_directory_opens_once_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        assert!(matches!(
            Wal::open(WalOptions::new(dir.path())),
            Err(WalError::Locked { .. })
        ));
        wal.close().unwrap();
        wal.close().unwrap();
        let (_again, _) = Wal::open(WalOptions::new(dir.path())).unwrap();
    }

    #[test]
    fn appends_must_continue_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        // A never-written WAL takes any first index, including 0.
        fill(&wal, 0..=2, 5);
        assert!(matches!(
            wal.append(vec![rec(4, 1)]).wait(),
            Err(WalError::IndexGap {
                expected: 3,
                got: 4
            })
        ));
        assert!(matches!(
            wal.append(vec![rec(2, 1)]).wait(),
            Err(WalError::IndexGap {
                expected: 3,
                got: 2
            })
        ));
        assert!(matches!(
            wal.append(vec![rec(3, 1), rec(5, 1)]).wait(),
            Err(WalError::IndexGap {
                expected: 4,
                got: 5
            })
        ));
        let too_big = Record {
            index: 3,
            epoch: 1,
            payload: vec![0; MAX_RECORD_BYTES + 1],
        };
        assert!(matches!(
            wal.append(vec![too_big]).wait(),
            Err(WalError::RecordTooLarge { index: 3, .. })
        ));
        // Nothing above was written.
        assert_eq!(wal.last_index(), 2);
        assert_eq!(wal.append(vec![rec(3, 1), rec(4, 1)]).wait().unwrap(), 4);
        assert_eq!(indexes(&read_all(&wal)), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn an_empty_append_is_a_barrier() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        assert_eq!(wal.append(Vec::new()).wait().unwrap(), 0);
        let t = wal.append(vec![rec(1, 10)]);
        assert_eq!(wal.append(Vec::new()).wait().unwrap(), 1);
        assert_eq!(wal.durable_index(), 1);
        t.wait().unwrap();
    }

    #[test]
    fn closed_wal_refuses_writes_but_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=3, 10);
        wal.close().unwrap();
        assert!(matches!(
            wal.append(vec![rec(4, 1)]).wait(),
            Err(WalError::Closed)
        ));
        assert!(matches!(wal.truncate_after(1), Err(WalError::Closed)));
        assert!(matches!(
            wal.save_hard_state(&HardState::default()),
            Err(WalError::Closed)
        ));
        assert_eq!(read_all(&wal).len(), 3);
    }

    #[test]
    fn durable_watch_follows_group_commits_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        let watch = wal.subscribe_durable();
        fill(&wal, 1..=10, 10);
        assert_eq!(*watch.borrow(), 10);
        wal.truncate_after(4).unwrap();
        assert_eq!(*watch.borrow(), 4);
        assert_eq!((wal.last_index(), wal.durable_index()), (4, 4));
    }

    #[test]
    fn reads_run_alongside_appends_and_see_only_durable_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        let reader = {
            let wal = wal.clone();
            thread::spawn(move || {
                let mut seen = 0;
                while seen < 300 {
                    let durable = wal.durable_index();
                    let got = wal.read_from(1, usize::MAX, usize::MAX).unwrap();
                    assert!(got.len() as u64 >= durable);
                    assert!(got
                        .iter()
                        .enumerate()
                        .all(|(i, r)| *r == rec(i as u64 + 1, 40)));
                    seen = got.len();
                }
            })
        };
        fill(&wal, 1..=300, 40);
        reader.join().unwrap();
    }

    #[test]
    fn reads_race_safely_with_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=200, 30);
        let reader = {
            let wal = wal.clone();
            thread::spawn(move || {
                for _ in 0..200 {
                    let got = wal.read_from(1, usize::MAX, usize::MAX).unwrap();
                    assert!(got.iter().enumerate().all(|(i, r)| r.index == i as u64 + 1));
                }
            })
        };
        for after in (100..200).rev().step_by(7) {
            wal.truncate_after(after).unwrap();
        }
        reader.join().unwrap();
    }
}
