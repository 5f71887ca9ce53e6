//! The writer thread: the only code that writes segment files. It turns a queue
//! of appends into group commits (one write and one fdatasync for many appends),
//! rotates segments, and runs truncate / purge / reset / hard-state saves in
//! queue order, so every change to the log is serialized with the appends
//! around it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::error::{io_at, WalError};
use crate::options::{SyncInfo, WalOptions};
use crate::reader::{SegmentTable, TableSegment};
use crate::record::{self, Record};
use crate::segment::{self, SEGMENT_HEADER_BYTES};
use crate::state::{HardState, StateStore};

/// fdatasyncs slower than this are logged: the disk is in trouble (etcd warns at 1 s too).
const SLOW_SYNC: Duration = Duration::from_secs(1);

/// What the writer thread shares with the `Wal` handles.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub table: RwLock<SegmentTable>,
    pub state: Mutex<StateStore>,
    durable: watch::Sender<u64>,
    poisoned: OnceLock<String>,
    #[cfg(test)]
    pub failpoint: Mutex<Option<&'static str>>,
}

impl Shared {
    pub(crate) fn new(
        dir: PathBuf,
        table: SegmentTable,
        state: StateStore,
        durable: u64,
    ) -> Shared {
        Shared {
            dir,
            table: RwLock::new(table),
            state: Mutex::new(state),
            durable: watch::Sender::new(durable),
            poisoned: OnceLock::new(),
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
    pub len: u64,
    pub next_index: u64,
}

pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    rx: Receiver<Request>,
    /// A request taken off the queue that did not fit the batch being built.
    held: Option<Request>,
    pub(crate) active: Option<Active>,
    pub(crate) next_seq: u64,
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
        Writer {
            shared,
            rx,
            held: None,
            active,
            next_seq,
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
                    let r = self.guarded(|w| w.purge_before(before));
                    let _ = done.send(r);
                }
                Request::Reset { next, done } => {
                    let r = self.guarded(|w| w.reset_to(next));
                    let _ = done.send(r);
                }
                Request::SaveHardState { hard, done } => {
                    let r =
                        self.guarded(|w| w.shared.state.lock().unwrap().update(|s| s.hard = hard));
                    let _ = done.send(r);
                }
                Request::Close { done } => {
                    // Every append queued before Close was committed by the loop above.
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
        self.shared.check_poisoned()?;
        op(self).inspect_err(|e| self.shared.poison(e))
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

        self.ensure_segment(first)?;
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
        active.next_index = last + 1;
        self.shared.publish_durable(last);
        Ok(Some(SyncInfo {
            duration,
            records,
            bytes: buf.len(),
        }))
    }

    /// Opens a new segment when there is none, the current one is full, or
    /// (after recovery or a truncation) it does not end where this batch starts.
    fn ensure_segment(&mut self, first_index: u64) -> Result<(), WalError> {
        let reuse = self
            .active
            .as_ref()
            .is_some_and(|a| a.len < self.opts.segment_bytes && a.next_index == first_index);
        if reuse {
            return Ok(());
        }
        let seq = self.next_seq;
        let (file, path) = segment::create(&self.shared.dir, seq, first_index)?;
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
            next_index: first_index,
        });
        Ok(())
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
                path: self.shared.dir.clone(),
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
