//! `WalOptions` (how to open a WAL) and `SyncInfo` (what each group commit cost).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::WalId;

/// How to open a WAL. Start from [`WalOptions::new`] and change fields.
#[derive(Clone)]
pub struct WalOptions {
    /// WAL directory; created if missing. One `Wal` per directory (locked).
    pub dir: PathBuf,
    /// Start a new segment before a group commit once the current one has reached
    /// this size. A segment can exceed it by one batch. Default 64 MiB.
    pub segment_bytes: u64,
    /// Most bytes one group commit writes before its fdatasync. A single append
    /// larger than this is written alone. Default 8 MiB.
    pub max_batch_bytes: usize,
    /// Group commit linger. Zero (the default): sync as soon as the queue is
    /// drained. Otherwise, when the drained batch is still below
    /// `max_batch_bytes`, wait up to this long for more appends to join it.
    /// Trades latency for fewer fsyncs when many writers append at once.
    pub max_batch_wait: Duration,
    /// Called on the writer thread after every group-commit fdatasync, once the
    /// batch's tickets are resolved (for metrics: keep it cheap and non-blocking).
    pub on_sync: Option<Arc<dyn Fn(SyncInfo) + Send + Sync>>,
    /// The identity of the WAL the caller's data was built from, if it knows one.
    /// Then opening refuses, creating and changing nothing, when `dir` holds no WAL
    /// ([`WalError::Missing`](crate::WalError::Missing)) or another one
    /// ([`WalError::Foreign`](crate::WalError::Foreign)). `None` (the default): any
    /// WAL, or a new one if there is none.
    pub expected_id: Option<WalId>,
    /// Zero-fill the next segment ahead of time on a thread of its own, so appends
    /// overwrite instead of growing the file and each fdatasync writes no
    /// metadata (see the `spare` module). Default `true`. Only once the active
    /// segment is past 1 MiB (or half of a smaller segment), and only while the
    /// disk has room for two more segments.
    pub preallocate: bool,
}

impl WalOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalOptions {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            max_batch_bytes: 8 << 20,
            max_batch_wait: Duration::ZERO,
            on_sync: None,
            expected_id: None,
            preallocate: true,
        }
    }
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("dir", &self.dir)
            .field("segment_bytes", &self.segment_bytes)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_batch_wait", &self.max_batch_wait)
            .field("on_sync", &self.on_sync.as_ref().map(|_| "Fn(SyncInfo)"))
            .field("expected_id", &self.expected_id)
            .field("preallocate", &self.preallocate)
            .finish()
    }
}

/// One group commit, as reported to [`WalOptions::on_sync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncInfo {
    /// Time spent in fdatasync alone.
    pub duration: Duration,
    /// Records made durable by this sync.
    pub records: usize,
    /// Bytes written before this sync (frames, padding included).
    pub bytes: usize,
}
