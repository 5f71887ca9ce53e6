//! The state file `wal.state`: the hard state plus the few facts about the log's
//! shape that cannot be read back from the segments themselves.
//!
//! ```text
//! offset size field
//!      0    8 magic              "MERIDSTA"
//!      8    2 version            1
//!     10    2 flags              bit 0: floor is set, bit 1: a truncate is pending
//!     12    4 vote_len           bytes of vote (<= MAX_VOTE_BYTES)
//!     16    8 floor              purge / reset point (see PersistedState::floor)
//!     24    8 live_from_seq      segments with a lower seq were dropped by reset_to
//!     32    8 pending_truncate   truncate_after(x) in progress: x
//!     40    8 epoch              HardState::epoch
//!     48    n vote               HardState::vote
//!   48+n    4 crc                CRC-32/ISO-HDLC over bytes [0, 48+n)
//! ```
//!
//! The file is replaced, never edited: write `wal.state.tmp`, fsync, rename over
//! `wal.state`, fsync the directory. A reader therefore sees the old or the new
//! version whole, which is what makes truncate, purge and reset crash-safe: each
//! writes its intent here first (the commit point) and recovery finishes the job.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_at, WalError};
use crate::segment::sync_dir;

pub(crate) const STATE_FILE: &str = "wal.state";
pub(crate) const STATE_TMP: &str = "wal.state.tmp";
/// Largest `HardState::vote` accepted.
pub const MAX_VOTE_BYTES: usize = 64 * 1024;

const MAGIC: &[u8; 8] = b"MERIDSTA";
const VERSION: u16 = 1;
const FIXED: usize = 48;
const FLAG_FLOOR: u16 = 1;
const FLAG_TRUNCATE: u16 = 2;

/// Small durable header kept beside the log: the latest epoch (HA) or term (Raft)
/// and opaque vote bytes. Saved with [`Wal::save_hard_state`](crate::Wal::save_hard_state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub epoch: u64,
    pub vote: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PersistedState {
    pub hard: HardState,
    /// Set by purge_before, truncate_after and reset_to. Records below it are
    /// dead, and an empty log must continue exactly here. `None` means the log
    /// was never shaped, so an empty log may start at any index.
    pub floor: Option<u64>,
    pub live_from_seq: u64,
    pub pending_truncate: Option<u64>,
}

impl PersistedState {
    fn encode(&self) -> Vec<u8> {
        let vote = &self.hard.vote;
        let mut flags = 0;
        if self.floor.is_some() {
            flags |= FLAG_FLOOR;
        }
        if self.pending_truncate.is_some() {
            flags |= FLAG_TRUNCATE;
        }
        let mut b = Vec::with_capacity(FIXED + vote.len() + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&(vote.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.floor.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.live_from_seq.to_le_bytes());
        b.extend_from_slice(&self.pending_truncate.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.hard.epoch.to_le_bytes());
        b.extend_from_slice(vote);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<PersistedState, String> {
        if b.len() < FIXED + 4 || &b[0..8] != MAGIC {
            return Err("not a WAL state file (bad magic or too short)".into());
        }
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let vote_len = u32_at(12) as usize;
        if vote_len > MAX_VOTE_BYTES || b.len() != FIXED + vote_len + 4 {
            return Err(format!(
                "state file length {} does not match vote length {vote_len}",
                b.len()
            ));
        }
        let end = FIXED + vote_len;
        let (stored, computed) = (u32_at(end), crc32fast::hash(&b[..end]));
        if stored != computed {
            return Err(format!(
                "state file checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        if u16_at(8) != VERSION {
            return Err(format!("unsupported state file version {}", u16_at(8)));
        }
        let flags = u16_at(10);
        Ok(PersistedState {
            hard: HardState {
                epoch: u64_at(40),
                vote: b[FIXED..end].to_vec(),
            },
            floor: (flags & FLAG_FLOOR != 0).then(|| u64_at(16)),
            live_from_seq: u64_at(24),
            pending_truncate: (flags & FLAG_TRUNCATE != 0).then(|| u64_at(32)),
        })
    }
}

/// Reads `dir/wal.state`; a missing file is a fresh WAL.
pub(crate) fn load(dir: &Path) -> Result<PersistedState, WalError> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => PersistedState::decode(&bytes).map_err(|r| WalError::corrupt(&path, 0, r)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PersistedState::default()),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// The state file and its last durable contents. Lives behind a mutex so that
/// `save_hard_state` (caller thread) and the writer thread never interleave.
pub(crate) struct StateStore {
    dir: PathBuf,
    current: PersistedState,
}

impl StateStore {
    pub(crate) fn new(dir: &Path, current: PersistedState) -> StateStore {
        StateStore {
            dir: dir.to_path_buf(),
            current,
        }
    }

    pub(crate) fn get(&self) -> &PersistedState {
        &self.current
    }

    /// Applies `change` and makes it durable before returning. On error the
    /// in-memory copy keeps the old value (the file may hold either).
    pub(crate) fn update(
        &mut self,
        change: impl FnOnce(&mut PersistedState),
    ) -> Result<(), WalError> {
        let mut next = self.current.clone();
        change(&mut next);
        let tmp = self.dir.join(STATE_TMP);
        let path = self.dir.join(STATE_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        f.write_all(&next.encode()).map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        sync_dir(&self.dir)?;
        self.current = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PersistedState {
        PersistedState {
            hard: HardState {
                epoch: 9,
                vote: b"node-2".to_vec(),
            },
            floor: Some(17),
            live_from_seq: 4,
            pending_truncate: Some(0),
        }
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), PersistedState::default());
        let mut store = StateStore::new(dir.path(), PersistedState::default());
        store.update(|s| *s = sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), sample());
        assert!(!dir.path().join(STATE_TMP).exists());
    }

    #[test]
    fn damaged_state_file_is_corruption() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(PersistedState::decode(&bad).is_err(), "byte {i}");
        }
        assert!(PersistedState::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
