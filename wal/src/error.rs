//! `WalError`: one enum for the whole crate, one variant per thing a caller can act on.

use std::io;
use std::path::{Path, PathBuf};

use crate::identity::WalId;

/// Everything that can go wrong in the WAL.
///
/// The variants are split by what the caller does next: retry with other
/// arguments (`IndexGap`, `Purged`, `RecordTooLarge`, `VoteTooLarge`), retry the
/// same call later (`Transient`), stop and page an operator (`Corrupt`, `Missing`,
/// `Foreign`), or restart the process (`Io`, `Poisoned`).
#[derive(thiserror::Error, Debug)]
pub enum WalError {
    /// A system call on `path` failed.
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Opening a file failed for want of descriptors or memory (EMFILE, ENFILE,
    /// ENOMEM, EAGAIN, EINTR) even after a short backoff. Nothing was changed and the
    /// WAL is not poisoned: the same call may be retried (see `retry`).
    #[error("WAL could not open {path}: {source}; nothing was changed, retry once descriptors are free")]
    Transient {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// [`WalOptions::expected_id`](crate::WalOptions::expected_id) was set but `dir`
    /// holds no WAL at all (no state file, no segment): it was deleted or never copied.
    /// Nothing was created.
    #[error("no WAL in {dir}: the data that uses it was written with WAL {expected}, which is missing")]
    Missing { dir: PathBuf, expected: WalId },

    /// `dir` holds another WAL than [`WalOptions::expected_id`](crate::WalOptions::expected_id)
    /// (`found` is `None` for a WAL from before identities existed). Nothing was changed.
    #[error("the WAL in {dir} is {}, not WAL {expected} that the data using it was written with", found.map_or("a WAL without an identity".to_string(), |f| format!("WAL {f}")))]
    Foreign {
        dir: PathBuf,
        expected: WalId,
        found: Option<WalId>,
    },

    /// Bytes on disk that the WAL did not write, or wrote and then lost. The node
    /// must not start: committed data may be missing.
    #[error("WAL corruption in {file} at byte offset {offset}: {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    /// An append did not continue the log: `expected` is the index the first
    /// record had to carry (or the next one inside the batch). Nothing was written.
    #[error("WAL index gap: expected index {expected}, got {got}")]
    IndexGap { expected: u64, got: u64 },

    /// The requested index is below `first_index()`: compaction removed it.
    /// A follower that needs it must be sent a snapshot instead.
    #[error("WAL index {requested} is purged; the first readable index is {first}")]
    Purged { requested: u64, first: u64 },

    /// One record's payload exceeds [`MAX_RECORD_BYTES`](crate::MAX_RECORD_BYTES). Nothing was written.
    #[error("WAL record {index} is {len} bytes; the limit is {max}")]
    RecordTooLarge { index: u64, len: usize, max: usize },

    /// `HardState::vote` exceeds [`MAX_VOTE_BYTES`](crate::MAX_VOTE_BYTES).
    #[error("WAL hard state vote is {len} bytes; the limit is {max}")]
    VoteTooLarge { len: usize, max: usize },

    /// Another `Wal` (in this or another process) holds the directory.
    #[error("WAL directory {dir} is already open")]
    Locked { dir: PathBuf },

    /// `close()` was called (or every handle was dropped).
    #[error("WAL is closed")]
    Closed,

    /// An earlier write or fsync failed. After a failed fsync the page cache can no
    /// longer be trusted (the "fsyncgate" lesson), so the WAL refuses all further
    /// writes; reopening re-reads what actually reached the disk.
    #[error("WAL stopped after an earlier failure ({reason}); reopen it")]
    Poisoned { reason: String },
}

impl WalError {
    /// True when the error means data on disk is damaged (refuse to start,
    /// report the file and offset), as opposed to an operational failure.
    pub fn is_corruption(&self) -> bool {
        matches!(self, WalError::Corrupt { .. })
    }

    /// True when the same call may simply be retried later (see [`WalError::Transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, WalError::Transient { .. })
    }

    pub(crate) fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> WalError {
        WalError::Corrupt {
            file: file.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// A copy for the second and later waiters of a failed batch: `io::Error` is
    /// not `Clone`, so keep its kind and message.
    pub(crate) fn duplicate(&self) -> WalError {
        match self {
            WalError::Io { path, source } => WalError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            WalError::Transient { path, source } => WalError::Transient {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            WalError::Missing { dir, expected } => WalError::Missing {
                dir: dir.clone(),
                expected: *expected,
            },
            WalError::Foreign {
                dir,
                expected,
                found,
            } => WalError::Foreign {
                dir: dir.clone(),
                expected: *expected,
                found: *found,
            },
            WalError::Corrupt {
                file,
                offset,
                reason,
            } => WalError::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            WalError::IndexGap { expected, got } => WalError::IndexGap {
                expected: *expected,
                got: *got,
            },
            WalError::Purged { requested, first } => WalError::Purged {
                requested: *requested,
                first: *first,
            },
            WalError::RecordTooLarge { index, len, max } => WalError::RecordTooLarge {
                index: *index,
                len: *len,
                max: *max,
            },
            WalError::VoteTooLarge { len, max } => WalError::VoteTooLarge {
                len: *len,
                max: *max,
            },
            WalError::Locked { dir } => WalError::Locked { dir: dir.clone() },
            WalError::Closed => WalError::Closed,
            WalError::Poisoned { reason } => WalError::Poisoned {
                reason: reason.clone(),
            },
        }
    }
}

/// `map_err` helper that names the file an I/O error happened on.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_display_names_file_and_offset() {
        let e = WalError::corrupt(Path::new("/d/x.wal"), 4096, "checksum mismatch");
        assert_eq!(
            e.to_string(),
            "WAL corruption in /d/x.wal at byte offset 4096: checksum mismatch"
        );
        assert!(e.is_corruption());
        assert!(!WalError::Closed.is_corruption());
    }
}
