//! The data-directory lock: one process per `DATA_DIR`.
//!
//! Two nodes appending to one WAL would interleave records and corrupt it, so the node takes
//! an exclusive advisory lock (`flock`) on `DATA_DIR/LOCK` for its whole life. The kernel drops
//! the lock when the process dies, even on kill -9, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A setting to change, not a failure of this process: the node exits 2 for it.
    #[error("MERIDIAN_DATA_DIR: {dir} is not a directory ({reason}); point it at a directory, or at a path that does not exist yet")]
    NotADirectory { dir: String, reason: String },
    #[error("data directory {dir} is in use by another Meridian process ({holder}); stop it or choose another MERIDIAN_DATA_DIR")]
    Busy { dir: String, holder: String },
    #[error("cannot lock data directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let io = |source| LockError::Io { dir: dir.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(|e| not_a_directory(dir, e))?;
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = if holder.trim().is_empty() { "unknown pid".into() } else { holder.trim().to_string() };
                return Err(LockError::Busy { dir: dir.display().to_string(), holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Record who holds it, for the message a second process prints.
        file.set_len(0).map_err(io)?;
        write!(file, "pid {}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file })
    }
}

/// `create_dir_all` on a file, or below one, fails with "File exists" or "Not a directory":
/// say which setting is wrong instead.
fn not_a_directory(dir: &Path, e: std::io::Error) -> LockError {
    let blocked = dir.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir());
    match blocked {
        Some(file) if file == dir => LockError::NotADirectory { dir: dir.display().to_string(), reason: "it is a file".into() },
        Some(file) => LockError::NotADirectory { dir: dir.display().to_string(), reason: format!("{} is a file", file.display()) },
        None => LockError::Io { dir: dir.display().to_string(), source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _a = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(e, LockError::Busy { .. }), "{e}");
        drop(_a);
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        for target in [file.clone(), file.join("below")] {
            let e = DirLock::acquire(&target).unwrap_err();
            assert!(matches!(e, LockError::NotADirectory { .. }), "{e}");
            assert!(e.to_string().starts_with("MERIDIAN_DATA_DIR"), "{e}");
        }
    }
}
