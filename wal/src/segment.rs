//! Segment files: naming, the 64-byte header, creation and directory listing.
//!
//! ```text
//! file name: {seq:016x}-{first_index:016x}.wal   (lower-case hex)
//!
//! header, 64 bytes, little-endian:
//! offset size field
//!      0    8 magic          "MERIDWAL"
//!      8    2 version        1
//!     10    2 flags          bit 0 PREALLOCATED: the file was zero-filled to
//!                            its full size before its first record (see
//!                            `spare`), so zeros after the last record are
//!                            unused space; other bits 0
//!     12    4 header_len     64
//!     16    8 seq            same as the file name
//!     24    8 first_index    index of the first record in the file (same as the name)
//!     32    8 created_ms     unix milliseconds, informational
//!     40   16 wal_id         the WAL's identity (see `identity`); 0 in segments
//!                            written before WALs had one
//!     56    4 reserved       0
//!     60    4 header_crc     CRC-32/ISO-HDLC over bytes [0, 60)
//! ```
//!
//! A segment appears under its final name only complete: the header is written
//! to `<name>.tmp`, fsynced, renamed, and the directory fsynced. So a damaged
//! header is never a torn write; it is always corruption.
//!
//! The writer syncs the directory through a descriptor opened once ([`Dir`]), so
//! that rotating a segment or rewriting `wal.state` opens one file, not two, when
//! descriptors are scarce.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{io_at, WalError};
use crate::identity::WalId;
use crate::retry;
use crate::spare::SpareFile;

pub(crate) const SEGMENT_HEADER_BYTES: u64 = 64;
const MAGIC: &[u8; 8] = b"MERIDWAL";
const FORMAT_VERSION: u16 = 1;
/// Header flag: zeros after the last record are unused space, not a torn tail.
const FLAG_PREALLOCATED: u16 = 1;
pub(crate) const TMP_SUFFIX: &str = ".tmp";

pub(crate) fn file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// `(seq, first_index)` if `name` is a segment file name.
pub(crate) fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, first) = stem.split_once('-')?;
    let hex16 = |s: &str| {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
    };
    Some((hex16(seq)?, hex16(first)?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub seq: u64,
    pub first_index: u64,
    pub wal_id: Option<WalId>,
    /// Made from a zero-filled spare (flag bit 0).
    pub preallocated: bool,
}

impl SegmentHeader {
    fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES as usize] {
        let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
        let created_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        h[0..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.preallocated { FLAG_PREALLOCATED } else { 0 };
        h[10..12].copy_from_slice(&flags.to_le_bytes());
        h[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.first_index.to_le_bytes());
        h[32..40].copy_from_slice(&created_ms.to_le_bytes());
        h[40..56].copy_from_slice(&self.wal_id.map_or(0, WalId::as_u128).to_le_bytes());
        let crc = crc32fast::hash(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks a header; the error is the reason for `WalError::Corrupt`.
    pub(crate) fn decode(buf: &[u8]) -> Result<SegmentHeader, String> {
        let Some(h) = buf.get(..SEGMENT_HEADER_BYTES as usize) else {
            return Err(format!(
                "segment header is incomplete ({} of {SEGMENT_HEADER_BYTES} bytes)",
                buf.len()
            ));
        };
        let u16_at = |o: usize| u16::from_le_bytes(h[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        if &h[0..8] != MAGIC {
            return Err("bad segment magic (not a Meridian WAL segment)".into());
        }
        let (stored, computed) = (u32_at(60), crc32fast::hash(&h[..60]));
        if stored != computed {
            return Err(format!(
                "segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        if u16_at(8) != FORMAT_VERSION || u32_at(12) != SEGMENT_HEADER_BYTES as u32 {
            return Err(format!(
                "unsupported segment format version {} (header length {})",
                u16_at(8),
                u32_at(12)
            ));
        }
        Ok(SegmentHeader {
            seq: u64_at(16),
            first_index: u64_at(24),
            wal_id: WalId::from_le_bytes(&h[40..56]),
            preallocated: u16_at(10) & FLAG_PREALLOCATED != 0,
        })
    }
}

/// A segment file found in the directory, before its contents are read.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFile {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
}

/// Segment files in `dir`, ordered by sequence number. Other files are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        if let Some((seq, first_index)) = name.to_str().and_then(parse_name) {
            out.push(SegmentFile {
                seq,
                first_index,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.seq);
    if let Some(w) = out.windows(2).find(|w| w[0].seq == w[1].seq) {
        return Err(WalError::corrupt(
            &w[1].path,
            0,
            format!("two segments share sequence number {:#x}", w[1].seq),
        ));
    }
    Ok(out)
}

/// Creates segment `seq` starting at `first_index`, durably (file and directory),
/// and returns it opened for reading and writing. A shortage of descriptors is
/// [`WalError::Transient`] and leaves at most a `.tmp` file; calling again is safe.
pub(crate) fn create(
    dir: &Dir,
    seq: u64,
    first_index: u64,
    wal_id: WalId,
) -> Result<(File, PathBuf), WalError> {
    let path = dir.path.join(file_name(seq, first_index));
    let tmp = dir
        .path
        .join(format!("{}{TMP_SUFFIX}", file_name(seq, first_index)));
    let mut file = retry::open(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
        &tmp,
    )?;
    let header = SegmentHeader {
        seq,
        first_index,
        wal_id: Some(wal_id),
        preallocated: false,
    }
    .encode();
    file.write_all(&header).map_err(io_at(&tmp))?;
    file.sync_all().map_err(io_at(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_at(&path))?;
    dir.sync()?;
    Ok((file, path))
}

/// [`create`], in a zero-filled spare (see `spare`): the header, flagged
/// `PREALLOCATED`, overwrites the spare's first bytes and is synced before the
/// spare is renamed, so the file appears under its segment name complete, as
/// with `create`. The size does not change: `fdatasync` suffices.
pub(crate) fn create_in_spare(
    dir: &Dir,
    spare: SpareFile,
    seq: u64,
    first_index: u64,
    wal_id: WalId,
) -> Result<(File, PathBuf), WalError> {
    let path = dir.path.join(file_name(seq, first_index));
    let header = SegmentHeader {
        seq,
        first_index,
        wal_id: Some(wal_id),
        preallocated: true,
    }
    .encode();
    spare
        .file
        .write_all_at(&header, 0)
        .map_err(io_at(&spare.path))?;
    spare.file.sync_data().map_err(io_at(&spare.path))?;
    fs::rename(&spare.path, &path).map_err(io_at(&path))?;
    dir.sync()?;
    Ok((spare.file, path))
}

/// The WAL directory and a descriptor on it, held for the WAL's lifetime so that
/// making renames and unlinks durable never needs a new descriptor.
#[derive(Debug)]
pub(crate) struct Dir {
    pub path: PathBuf,
    handle: File,
}

impl Dir {
    pub(crate) fn open(path: &Path) -> Result<Dir, WalError> {
        Ok(Dir {
            path: path.to_path_buf(),
            handle: File::open(path).map_err(io_at(path))?,
        })
    }

    /// Makes creations, renames and unlinks in the directory durable.
    pub(crate) fn sync(&self) -> Result<(), WalError> {
        self.handle.sync_all().map_err(io_at(&self.path))
    }
}

/// Cuts `path` to `len` bytes, durably.
pub(crate) fn cut(path: &Path, len: u64) -> Result<(), WalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_at(path))?;
    f.set_len(len).map_err(io_at(path))?;
    // set_len changes the size, which is metadata: sync_all, not sync_data.
    f.sync_all().map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        let n = file_name(0x1f, 0xabc);
        assert_eq!(n, "000000000000001f-0000000000000abc.wal");
        assert_eq!(parse_name(&n), Some((0x1f, 0xabc)));
        for bad in [
            "000000000000001f-0000000000000abc.wal.broken",
            "000000000000001F-0000000000000abc.wal",
            "1f-abc.wal",
            "wal.state",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn created_segment_has_a_valid_header_and_no_tmp_left() {
        let dir = tempfile::tempdir().unwrap();
        let id = WalId::generate();
        let (_f, path) = create(&Dir::open(dir.path()).unwrap(), 3, 100, id).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, SEGMENT_HEADER_BYTES);
        assert_eq!(
            SegmentHeader::decode(&bytes).unwrap(),
            SegmentHeader {
                seq: 3,
                first_index: 100,
                wal_id: Some(id),
                preallocated: false,
            }
        );
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].seq, listed[0].first_index), (3, 100));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_header_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (_f, path) = create(&Dir::open(dir.path()).unwrap(), 1, 1, WalId::generate()).unwrap();
        let good = fs::read(&path).unwrap();
        for byte in [0, 9, 20, 40, 61] {
            let mut bad = good.clone();
            bad[byte] ^= 0x10;
            assert!(SegmentHeader::decode(&bad).is_err(), "byte {byte}");
        }
        assert!(SegmentHeader::decode(&good[..10]).is_err());
    }
}
