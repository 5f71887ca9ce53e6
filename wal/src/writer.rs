//! The writer thread: the only code that writes segment files. It turns a queue
//! of appends into group commits (one write and one fdatasync for many appends),
//! rotates segments, and runs truncate / purge / reset / hard-state saves in
//! queue order, so every change to the log is serialized with the appends
//! around it.
//!
//! Failures poison the WAL (see [`WalError::Poisoned`]), except a shortage of
//! descriptors or memory ([`WalError::Transient`]): an append that needs a new
//! segment waits it out, because failing that batch would leave its indexes
//! unwritten while later batches, already numbered after it, follow; and a
//! caller that retried with other records at those indexes would contradict
//! records a replication stream may already have shipped. A purge or hard-state
//! save that meets it changed nothing and answers `Transient` (see `run`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::error::{io_at, WalError};
use crate::identity::WalId;
use crate::options::{SyncInfo, WalOptions};
use crate::reader::{SegmentTable, TableSegment};
use crate::record::{self, Record};
use crate::segment::{self, Dir, SEGMENT_HEADER_BYTES};
use crate::spare::Spare;
use crate::state::{HardState, StateStore};

/// fdatasyncs slower than this are logged: the disk is in trouble (etcd warns at 1 s too).
const SLOW_SYNC: Duration = Duration::from_secs(1);
/// While descriptors are short: pause between attempts, and how often to say so again.
const SHORTAGE_PAUSE: Duration = Duration::from_millis(50);
const SHORTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the writer thread shares with the `Wal` handles.
pub(crate) struct Shared {
    pub id: WalId,
    pub dir: Arc<Dir>,
    pub table: RwLock<SegmentTable>,
    pub state: Mutex<StateStore>,
    durable: watch::Sender<u64>,
    poisoned: OnceLock<String>,
    /// Set by `close`: the writer stops waiting out shortages.
    closing: AtomicBool,
    #[cfg(test)]
    pub failpoint: Mutex<Option<&'static str>>,
}

impl Shared {
    pub(crate) fn new(
        id: WalId,
        dir: Arc<Dir>,
        table: SegmentTable,
        state: StateStore,
        durable: u64,
    ) -> Shared {
        Shared {
            id,
            dir,
            table: RwLock::new(table),
            state: Mutex::new(state),
            durable: watch::Sender::new(durable),
            poisoned: OnceLock::new(),
            closing: AtomicBool::new(false),
            #[cfg(test)]
            failpoint: Mutex::new(None),
        }
    }

    pub(crate) fn durable_index(&self) -> u64 {
        *self.durable.borrow()
    }

    pub(crate) fn subscribe_durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    fn publish_durable(&self, index: u64) {
        self.durable.send_replace(index);
    }

    /// `Err(Poisoned)` once any write has failed.
    pub(crate) fn check_poisoned(&self) -> Result<(), WalError> {
        match self.poisoned.get() {
            Some(reason) => Err(WalError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    fn poison(&self, cause: &WalError) {
        if self.poisoned.set(cause.to_string()).is_ok() {
            tracing::error!(error = %cause, "WAL write failed; refusing further writes until reopened");
        }
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, WalError>>;

/// Encoded records of one `Wal::append` call. `records == 0` is a barrier: it
/// resolves once everything enqueued before it is durable.
pub(crate) struct AppendReq {
    pub first: u64,
    pub last: u64,
    pub records: usize,
    pub bytes: Vec<u8>,
    pub done: Reply<u64>,
}

pub(crate) enum Request {
    Append(AppendReq),
    /// `first` is the first index at enqueue time (the new floor if the log empties).
    Truncate {
        after: u64,
        first: u64,
        done: Reply<Vec<Record>>,
    },
    Purge {
        before: u64,
        done: Reply<()>,
    },
    Reset {
        next: u64,
        done: Reply<()>,
    },
    SaveHardState {
        hard: HardState,
        done: Reply<()>,
    },
    Close {
        done: Reply<()>,
    },
}

/// The segment being appended to.
pub(crate) struct Active {
    pub file: Arc<File>,
    pub path: PathBuf,
    /// Where the next record goes: the end of the last one.
    pub len: u64,
    /// The file's size: more than `len` while a preallocated segment has unused
    /// (zero) space, which appends overwrite without growing the file.
    pub allocated: u64,
    pub next_index: u64,
}

pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    rx: Receiver<Request>,
    /// A request taken off the queue that did not fit the batch being built.
    held: Option<Request>,
    pub(crate) active: Option<Active>,
    pub(crate) next_seq: u64,
    /// The next segment's file, zero-filled ahead of time (see `spare`).
    spare: Spare,
    opts: WalOptions,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Request>,
        active: Option<Active>,
        next_seq: u64,
        opts: WalOptions,
    ) -> Writer {
        let spare = Spare::new(&shared.dir.path, opts.segment_bytes, opts.preallocate);
        Writer {
            shared,
            rx,
            held: None,
            active,
            next_seq,
            spare,
            opts,
        }
    }

    pub(crate) fn run(mut self) {
        while let Some(req) = self.held.take().or_else(|| self.rx.recv().ok()) {
            match req {
                Request::Append(first) => {
                    let batch = self.gather(first);
                    self.commit(batch);
                }
                Request::Truncate { after, first, done } => {
                    let r = self.guarded(|w| w.truncate_after(after, first));
                    let _ = done.send(r);
                }
                Request::Purge { before, done } => {
                    // A purge that could not write its new floor changed nothing on disk;
                    // the handles' first index moved ahead, which only hides records
                    // already covered by a checkpoint, so it need not poison — unless the
                    // purge went past the end and so moved the next index too.
                    let within = self
                        .shared
                        .table
                        .read()
                        .unwrap()
                        .segments
                        .last()
                        .is_some_and(|s| s.next_index() >= before);
                    let r = self.guarded_unless(within, |w| w.purge_before(before));
                    let _ = done.send(r);
                }
                Request::Reset { next, done } => {
                    let r = self.guarded(|w| w.reset_to(next));
                    let _ = done.send(r);
                }
                Request::SaveHardState { hard, done } => {
                    let r = self.guarded_unless(true, |w| {
                        w.shared.state.lock().unwrap().update(|s| s.hard = hard)
                    });
                    let _ = done.send(r);
                }
                Request::Close { done } => {
                    // Every append queued before Close was committed by the loop above.
                    // The spare thread ends before the answer: a WAL opened again in
                    // this directory never runs beside it.
                    self.spare.shutdown();
                    self.active = None;
                    let _ = done.send(Ok(()));
                    return;
                }
            }
        }
    }

    /// Runs a log-changing operation. The handles already advanced their view of
    /// the log when they enqueued it, so a failure leaves memory ahead of disk:
    /// poison, and let reopening read back the truth.
    fn guarded<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, WalError>,
    ) -> Result<T, WalError> {
        self.guarded_unless(false, op)
    }

    /// `guarded`, except that with `transient_is_safe` a [`WalError::Transient`]
    /// failure is returned without poisoning: the operation has said it changed
    /// nothing, and the caller may retry it.
    fn guarded_unless<T>(
        &mut self,
        transient_is_safe: bool,
        op: impl FnOnce(&mut Self) -> Result<T, WalError>,
    ) -> Result<T, WalError> {
        self.shared.check_poisoned()?;
        op(self).inspect_err(|e| {
            if e.is_transient() && transient_is_safe {
                tracing::warn!(error = %e, "WAL: a purge or hard-state save must be retried");
            } else {
                self.shared.poison(e)
            }
        })
    }

    /// Runs `op` again and again while it fails for want of descriptors or memory,
    /// so that a shortage pauses appends instead of failing them (see the module
    /// docs). Gives up only when the WAL is being closed.
    fn wait_out_shortage<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut Self) -> Result<T, WalError>,
    ) -> Result<T, WalError> {
        let mut since: Option<(Instant, Instant)> = None; // (first failure, last log line)
        loop {
            match op(self) {
                Err(e) if e.is_transient() && !self.shared.closing.load(Ordering::Acquire) => {
                    let now = Instant::now();
                    match &mut since {
                        None => {
                            tracing::warn!(error = %e, "WAL cannot {what}: appends wait until it can (not a storage failure)");
                            since = Some((now, now));
                        }
                        Some((first, logged)) if now - *logged >= SHORTAGE_LOG_EVERY => {
                            tracing::warn!(error = %e, waited = ?(now - *first), "WAL still cannot {what}: appends are waiting");
                            *logged = now;
                        }
                        Some(_) => {}
                    }
                    thread::sleep(SHORTAGE_PAUSE);
                }
                r => {
                    if let (Some((first, _)), Ok(_)) = (since, &r) {
                        tracing::info!(waited = ?first.elapsed(), "WAL can {what} again: appends resume");
                    }
                    return r;
                }
            }
        }
    }

    /// Takes more queued appends to share one fsync with `first`.
    fn gather(&mut self, first: AppendReq) -> Vec<AppendReq> {
        let mut bytes = first.bytes.len();
        let mut batch = vec![first];
        let linger_until = (!self.opts.max_batch_wait.is_zero())
            .then(|| Instant::now() + self.opts.max_batch_wait);
        while bytes < self.opts.max_batch_bytes {
            let next = match self.rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let Some(until) = linger_until else { break };
                    match self
                        .rx
                        .recv_timeout(until.saturating_duration_since(Instant::now()))
                    {
                        Ok(r) => r,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match next {
                Request::Append(a) if bytes + a.bytes.len() <= self.opts.max_batch_bytes => {
                    bytes += a.bytes.len();
                    batch.push(a);
                }
                other => {
                    self.held = Some(other);
                    break;
                }
            }
        }
        batch
    }

    fn commit(&mut self, batch: Vec<AppendReq>) {
        match self
            .shared
            .check_poisoned()
            .and_then(|()| self.write_batch(&batch))
        {
            Ok(info) => {
                for a in batch {
                    let _ = a.done.send(Ok(a.last));
                }
                if let (Some(info), Some(on_sync)) = (info, &self.opts.on_sync) {
                    on_sync(info);
                }
            }
            Err(e) => {
                if !matches!(e, WalError::Poisoned { .. }) {
                    self.shared.poison(&e);
                }
                for a in batch {
                    let _ = a.done.send(Err(e.duplicate()));
                }
            }
        }
    }

    /// One write and one fdatasync for the whole batch; then publish it.
    fn write_batch(&mut self, batch: &[AppendReq]) -> Result<Option<SyncInfo>, WalError> {
        let mut parts = batch.iter().filter(|a| a.records > 0).peekable();
        let Some(first) = parts.peek().map(|a| a.first) else {
            return Ok(None); // only barriers: what they wait for is already durable
        };
        let parts: Vec<&AppendReq> = parts.collect();
        let last = parts[parts.len() - 1].last;
        let records = parts.iter().map(|a| a.records).sum();
        let joined;
        let buf: &[u8] = if parts.len() == 1 {
            &parts[0].bytes
        } else {
            joined = parts
                .iter()
                .flat_map(|a| a.bytes.iter().copied())
                .collect::<Vec<u8>>();
            &joined
        };

        let created = self.wait_out_shortage("open a new segment", |w| {
            w.ensure_segment(first, buf.len() as u64)
        })?;
        if let Some(newest) = created {
            self.wait_out_shortage("record its new segment in wal.state", |w| {
                w.shared
                    .state
                    .lock()
                    .unwrap()
                    .update(|s| s.newest = Some(newest))
            })?;
        }
        let active = self
            .active
            .as_mut()
            .expect("ensure_segment sets an active segment");
        active
            .file
            .write_all_at(buf, active.len)
            .map_err(io_at(&active.path))?;
        let started = Instant::now();
        active.file.sync_data().map_err(io_at(&active.path))?;
        let duration = started.elapsed();
        if duration > SLOW_SYNC {
            tracing::warn!(
                ?duration,
                bytes = buf.len(),
                records,
                "WAL fdatasync was slow"
            );
        }

        // Table before durable index: a reader that sees the index finds the records.
        {
            let mut table = self.shared.table.write().unwrap();
            let seg = table
                .segments
                .last_mut()
                .expect("the active segment is in the table");
            let mut off = 0;
            while off < buf.len() {
                seg.offsets.push(active.len + off as u64);
                let len = record::raw_header(&buf[off..]).expect("own frame").len;
                off += record::frame_len(len as usize);
            }
            seg.end = active.len + buf.len() as u64;
        }
        active.len += buf.len() as u64;
        active.allocated = active.allocated.max(active.len);
        active.next_index = last + 1;
        self.shared.publish_durable(last);
        if active.len >= spare_wanted_at(active, self.opts.segment_bytes) {
            self.spare.request();
        }
        Ok(Some(SyncInfo {
            duration,
            records,
            bytes: buf.len(),
        }))
    }

    /// Opens a new segment when there is none, the current one is full, or
    /// (after recovery or a truncation) it does not end where this batch starts;
    /// and also when this batch of `bytes` would grow the current file while a
    /// zero-filled spare is ready, so appends go on overwriting zeros (see
    /// `spare`). Returns the new segment's `(seq, first_index)` if it made one.
    fn ensure_segment(
        &mut self,
        first_index: u64,
        bytes: u64,
    ) -> Result<Option<(u64, u64)>, WalError> {
        let reuse = self.active.as_ref().is_some_and(|a| {
            a.len < self.opts.segment_bytes
                && a.next_index == first_index
                && (a.len + bytes <= a.allocated || !self.spare.is_ready())
        });
        if reuse {
            return Ok(None);
        }
        let seq = self.next_seq;
        let (file, path) = match self.spare.take() {
            Some(spare) => {
                segment::create_in_spare(&self.shared.dir, spare, seq, first_index, self.shared.id)?
            }
            None => segment::create(&self.shared.dir, seq, first_index, self.shared.id)?,
        };
        let allocated = file.metadata().map_err(io_at(&path))?.len();
        self.next_seq += 1;
        let file = Arc::new(file);
        tracing::debug!(path = %path.display(), "WAL: new segment");
        self.shared
            .table
            .write()
            .unwrap()
            .segments
            .push(TableSegment {
                first_index,
                name: segment::file_name(seq, first_index),
                path: path.clone(),
                file: file.clone(),
                offsets: Vec::new(),
                end: SEGMENT_HEADER_BYTES,
            });
        self.active = Some(Active {
            file,
            path,
            len: SEGMENT_HEADER_BYTES,
            allocated,
            next_index: first_index,
        });
        Ok(Some((seq, first_index)))
    }

    pub(crate) fn publish_durable(&self, index: u64) {
        self.shared.publish_durable(index);
    }

    /// Test hook: make the named step of a multi-step operation fail as if the
    /// process had died there.
    #[cfg(test)]
    pub(crate) fn failpoint(&self, name: &'static str) -> Result<(), WalError> {
        if *self.shared.failpoint.lock().unwrap() == Some(name) {
            return Err(WalError::Io {
                path: self.shared.dir.path.clone(),
                source: std::io::Error::other(format!("failpoint {name}")),
            });
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn failpoint(&self, _name: &'static str) -> Result<(), WalError> {
        Ok(())
    }
}

/// How far the active segment gets before the writer asks for a spare. A segment
/// that grows as it is written asks early (after 1 MiB, or half a small
/// segment), so a busy WAL soon moves to zero-filled files, while a WAL that
/// never writes that much (most tests, idle nodes) never makes one. A
/// preallocated segment asks at half its size: the spare is ready long before
/// it is needed, and the disk holds it for no longer than it must.
fn spare_wanted_at(active: &Active, segment_bytes: u64) -> u64 {
    if active.allocated > active.len {
        segment_bytes / 2
    } else {
        (segment_bytes / 2).min(SEGMENT_HEADER_BYTES + (1 << 20))
    }
}
