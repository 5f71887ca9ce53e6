//! Transient shortages are not storage failures.
//!
//! Opening or creating a file can fail because the process or the system is out of
//! descriptors (EMFILE, ENFILE), or the kernel is briefly short of memory (ENOMEM, EAGAIN),
//! or a signal interrupted the call (EINTR). None of these says anything about the disk, so
//! none of them may poison the WAL. [`open`] retries them with a short bounded backoff and
//! then answers [`WalError::Transient`], which callers may retry; the writer thread waits
//! them out where giving up would leave a hole in the log (see `writer`). Real I/O errors
//! (EIO, ENOSPC, EROFS, ...) are returned at once as [`WalError::Io`], as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::error::WalError;

/// Pauses between attempts: 1, 2, 4, ... 128 ms, about a quarter of a second in all.
const BACKOFF_START: Duration = Duration::from_millis(1);
const ATTEMPTS: u32 = 9;

/// True for errors that say "not now" rather than "this storage is broken".
pub(crate) fn is_transient(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
        || e.kind() == io::ErrorKind::WouldBlock
        || e.kind() == io::ErrorKind::OutOfMemory
        || matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR)
        )
}

/// `opts.open(path)`, retrying transient failures with a bounded backoff.
pub(crate) fn open(opts: &OpenOptions, path: &Path) -> Result<File, WalError> {
    let mut pause = BACKOFF_START;
    for attempt in 1.. {
        match opts.open(path) {
            Ok(f) => return Ok(f),
            Err(e) if is_transient(&e) && attempt < ATTEMPTS => {
                thread::sleep(pause);
                pause *= 2;
            }
            Err(e) if is_transient(&e) => {
                return Err(WalError::Transient {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
            Err(e) => {
                return Err(WalError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    unreachable!("the loop returns by its last attempt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_and_memory_shortages_are_transient_and_disk_errors_are_not() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM, libc::EAGAIN, libc::EINTR] {
            assert!(is_transient(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        for errno in [libc::EIO, libc::ENOSPC, libc::EROFS, libc::EACCES, libc::ENOENT] {
            assert!(!is_transient(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
    }
}
