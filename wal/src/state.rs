//! The state file `wal.state`: the WAL's identity, the hard state, and the few
//! facts about the log's shape that cannot be read back from the segments
//! themselves.
//!
//! ```text
//! offset size field
//!      0    8 magic              "MERIDSTA"
//!      8    2 version            2 (1: the same without wal_id and newest segment)
//!     10    2 flags              bit 0: floor is set, bit 1: a truncate is pending,
//!                                bit 2: newest segment is set
//!     12    4 vote_len           bytes of vote (<= MAX_VOTE_BYTES)
//!     16    8 floor              purge / reset point (see PersistedState::floor)
//!     24    8 live_from_seq      segments with a lower seq were dropped by reset_to
//!     32    8 pending_truncate   truncate_after(x) in progress: x
//!     40    8 epoch              HardState::epoch
//!     48   16 wal_id             the WAL's identity (see `identity`)
//!     64    8 newest_seq         newest segment created and not removed by a
//!     72    8 newest_first       truncate or reset: its seq and first index
//!     80    n vote               HardState::vote
//!   80+n    4 crc                CRC-32/ISO-HDLC over bytes [0, 80+n)
//! ```
//!
//! The file is written when the WAL directory is created (before any segment), so
//! a directory with segments but no `wal.state` has lost it. It is replaced, never
//! edited: write `wal.state.tmp`, fsync, rename over `wal.state`, fsync the
//! directory. A reader therefore sees the old or the new version whole, which is
//! what makes truncate, purge and reset crash-safe: each writes its intent here
//! first (the commit point) and recovery finishes the job.
//!
//! The newest segment is recorded after the segment file is durable, so at any
//! moment a segment with at least that seq exists unless a purge emptied the log
//! past it. Recovery checks exactly that: it is how a deleted last segment (the
//! only one, often) is told from a log that was never longer.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use crate::error::{io_at, WalError};
use crate::identity::WalId;
use crate::retry;
use crate::segment::Dir;

pub(crate) const STATE_FILE: &str = "wal.state";
pub(crate) const STATE_TMP: &str = "wal.state.tmp";
/// Largest `HardState::vote` accepted.
pub const MAX_VOTE_BYTES: usize = 64 * 1024;

const MAGIC: &[u8; 8] = b"MERIDSTA";
const VERSION: u16 = 2;
const FIXED: usize = 80;
const FIXED_V1: usize = 48;
const FLAG_FLOOR: u16 = 1;
const FLAG_TRUNCATE: u16 = 2;
const FLAG_NEWEST: u16 = 4;

/// Small durable header kept beside the log: the latest epoch (HA) or term (Raft)
/// and opaque vote bytes. Saved with [`Wal::save_hard_state`](crate::Wal::save_hard_state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub epoch: u64,
    pub vote: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PersistedState {
    /// `None` only in a version-1 file, before recovery assigns one.
    pub id: Option<WalId>,
    pub hard: HardState,
    /// Set by purge_before, truncate_after and reset_to. Records below it are
    /// dead, and an empty log must continue exactly here. `None` means the log
    /// was never shaped, so an empty log may start at any index.
    pub floor: Option<u64>,
    pub live_from_seq: u64,
    pub pending_truncate: Option<u64>,
    /// `(seq, first_index)` of the newest segment created (see the module docs).
    pub newest: Option<(u64, u64)>,
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
        if self.newest.is_some() {
            flags |= FLAG_NEWEST;
        }
        let (newest_seq, newest_first) = self.newest.unwrap_or((0, 0));
        let mut b = Vec::with_capacity(FIXED + vote.len() + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&(vote.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.floor.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.live_from_seq.to_le_bytes());
        b.extend_from_slice(&self.pending_truncate.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.hard.epoch.to_le_bytes());
        b.extend_from_slice(&self.id.map_or(0, WalId::as_u128).to_le_bytes());
        b.extend_from_slice(&newest_seq.to_le_bytes());
        b.extend_from_slice(&newest_first.to_le_bytes());
        b.extend_from_slice(vote);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<PersistedState, String> {
        if b.len() < FIXED_V1 + 4 || &b[0..8] != MAGIC {
            return Err("not a WAL state file (bad magic or too short)".into());
        }
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let version = u16_at(8);
        let fixed = if version == 1 { FIXED_V1 } else { FIXED };
        let vote_len = u32_at(12) as usize;
        if vote_len > MAX_VOTE_BYTES || b.len() != fixed + vote_len + 4 {
            return Err(format!(
                "state file length {} does not match vote length {vote_len}",
                b.len()
            ));
        }
        let end = fixed + vote_len;
        let (stored, computed) = (u32_at(end), crc32fast::hash(&b[..end]));
        if stored != computed {
            return Err(format!(
                "state file checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        if version != 1 && version != VERSION {
            return Err(format!("unsupported state file version {version}"));
        }
        let flags = u16_at(10);
        let v2 = version == VERSION;
        Ok(PersistedState {
            id: if v2 {
                WalId::from_le_bytes(&b[48..64])
            } else {
                None
            },
            hard: HardState {
                epoch: u64_at(40),
                vote: b[fixed..end].to_vec(),
            },
            floor: (flags & FLAG_FLOOR != 0).then(|| u64_at(16)),
            live_from_seq: u64_at(24),
            pending_truncate: (flags & FLAG_TRUNCATE != 0).then(|| u64_at(32)),
            newest: (v2 && flags & FLAG_NEWEST != 0).then(|| (u64_at(64), u64_at(72))),
        })
    }
}

/// Reads `dir/wal.state`; `None` when there is none.
pub(crate) fn load(dir: &Path) -> Result<Option<PersistedState>, WalError> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => PersistedState::decode(&bytes)
            .map(Some)
            .map_err(|r| WalError::corrupt(&path, 0, r)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// What `wal.state` holds that a tool may want without opening the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateFile {
    /// `None` in a state file from before identities.
    pub wal_id: Option<WalId>,
    pub hard: HardState,
}

/// Reads `dir/wal.state` offline, changing nothing (`meridian wal reset` keeps the epoch and
/// vote of a WAL it sets aside); `None` when there is no state file.
pub fn read_state_file(dir: &Path) -> Result<Option<StateFile>, WalError> {
    Ok(load(dir)?.map(|p| StateFile {
        wal_id: p.id,
        hard: p.hard,
    }))
}

/// The state file and its last durable contents. Lives behind a mutex so that
/// `save_hard_state` (caller thread) and the writer thread never interleave.
pub(crate) struct StateStore {
    dir: Arc<Dir>,
    current: PersistedState,
}

impl StateStore {
    pub(crate) fn new(dir: Arc<Dir>, current: PersistedState) -> StateStore {
        StateStore { dir, current }
    }

    pub(crate) fn get(&self) -> &PersistedState {
        &self.current
    }

    /// Applies `change` and makes it durable before returning. On error the
    /// in-memory copy keeps the old value (the file may hold either), except that a
    /// [`WalError::Transient`] failure to open the temporary file changed nothing.
    pub(crate) fn update(
        &mut self,
        change: impl FnOnce(&mut PersistedState),
    ) -> Result<(), WalError> {
        let mut next = self.current.clone();
        change(&mut next);
        let tmp = self.dir.path.join(STATE_TMP);
        let path = self.dir.path.join(STATE_FILE);
        let mut f = retry::open(
            OpenOptions::new().write(true).create(true).truncate(true),
            &tmp,
        )?;
        f.write_all(&next.encode()).map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        self.dir.sync()?;
        self.current = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PersistedState {
        PersistedState {
            id: Some(WalId::generate()),
            hard: HardState {
                epoch: 9,
                vote: b"node-2".to_vec(),
            },
            floor: Some(17),
            live_from_seq: 4,
            pending_truncate: Some(0),
            newest: Some((5, 120)),
        }
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mut store = StateStore::new(
            Arc::new(Dir::open(dir.path()).unwrap()),
            PersistedState::default(),
        );
        let s = sample();
        store.update(|p| *p = s.clone()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s));
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

    #[test]
    fn a_version_1_file_still_reads_without_an_identity() {
        // Version 1 as it was written before identities: 48 fixed bytes, vote, crc.
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&FLAG_FLOOR.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        for v in [17u64, 4, 0, 9] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(b"n2");
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let s = PersistedState::decode(&b).unwrap();
        assert_eq!((s.id, s.floor, s.live_from_seq, s.hard.epoch), (None, Some(17), 4, 9));
        assert_eq!((s.hard.vote.as_slice(), s.newest), (&b"n2"[..], None));
    }
}
