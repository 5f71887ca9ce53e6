//! Recovery: read every segment, decide where the log ends, and tell a torn
//! tail (a crash mid-write: truncate it) from corruption (refuse to start).
//!
//! The rules, in the order they are applied:
//!
//! 1. Finish what the state file says was in progress: segments older than
//!    `live_from_seq` were dropped by `reset_to`; with a pending
//!    `truncate_after(t)`, segments starting after `t` are dropped and the scan
//!    stops after record `t`.
//! 2. Every remaining segment must have a valid header, continue the index of
//!    the one before it, and hold valid, contiguous records to its end.
//! 3. The only exception is the end of the **last** segment: a bad frame there
//!    is a torn tail when no valid frame (index >= the expected one) starts at any
//!    later 8-byte boundary of the file. Otherwise it is corruption. A zero-filled
//!    tail is the same as a torn one with nothing to keep.
//!    Except: in a segment flagged `PREALLOCATED` (made from a zero-filled spare,
//!    see `spare`), zeros from the end of the last record to the end of the file
//!    are its unused space: the segment ends there, cleanly, last or not. Nothing
//!    is cut, so the writer goes on overwriting zeros. A record lost from the end
//!    of an earlier segment still shows as an index gap at the next one.
//! 4. Records below the purge point (`floor`) are dead; whole dead segments are
//!    the leftovers of an interrupted purge and are removed.
//!
//! Before those, the directory's identity (see `identity` and `state`):
//!
//! 0. A directory with neither `wal.state` nor a segment is a new WAL: it gets a
//!    fresh [`WalId`] (unless the caller expected an existing one:
//!    [`WalError::Missing`]). Segments without `wal.state` mean the state file
//!    was lost, with the hard state in it: corruption. A segment written by
//!    another WAL is corruption; a whole directory of another WAL than the
//!    caller expected is [`WalError::Foreign`]. The newest segment `wal.state`
//!    recorded must still exist (or a later one), unless a reset or an
//!    interrupted truncate removed it: otherwise the end of the log was deleted,
//!    which no torn write can do, and the WAL refuses to open rather than come up
//!    shorter (or empty) as if nothing had happened.
//!
//! [`Mode::ReadOnly`] (used by [`verify`]) computes the same answer without
//! touching a file, so `verify` reports exactly what `Wal::open` would do.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::error::{io_at, WalError};
use crate::identity::WalId;
use crate::record::{self, RECORD_HEADER_BYTES};
use crate::spare;
use crate::segment::{self, Dir, SegmentFile, SegmentHeader, SEGMENT_HEADER_BYTES, TMP_SUFFIX};
use crate::state::{self, PersistedState, StateStore, STATE_FILE, STATE_TMP};

/// What opening (or verifying) the WAL found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// First readable index; `last_index + 1` when the log is empty.
    pub first_index: u64,
    /// Last durable index; 0 when nothing was ever written.
    pub last_index: u64,
    /// Segment files that hold the log after recovery.
    pub segments: usize,
    /// Set when the end of the last segment was torn and cut off.
    pub truncated_tail: Option<TailTruncation>,
    /// The WAL's identity. `None` only from [`verify`] of a directory that has no
    /// WAL yet or one from before identities (opening assigns one).
    pub wal_id: Option<WalId>,
    /// True when this open found no WAL (no `wal.state`, no segment) and created it.
    pub created: bool,
}

/// A torn tail that recovery cut (or, for [`verify`], would cut).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailTruncation {
    pub file: PathBuf,
    /// Where the valid data ends; the file is cut to this length.
    pub offset: u64,
    pub bytes_dropped: u64,
    pub reason: String,
    /// Copy of the dropped bytes (`<segment>.broken`) up to the last non-zero one, unless
    /// they were all zero. In a preallocated segment `bytes_dropped` counts its unused
    /// zeros too, which the copy leaves out.
    /// Always `None` from [`verify`].
    pub broken_copy: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `Wal::open`: cut torn tails, finish interrupted operations, delete dead files.
    Repair,
    /// `verify`: change nothing.
    ReadOnly,
}

/// A segment that holds part of the live log.
#[derive(Debug)]
pub(crate) struct LiveSegment {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
    /// File offset of each record; record `first_index + i` is at `offsets[i]`.
    pub offsets: Vec<u64>,
    /// End of valid data (the file length after recovery).
    pub end: u64,
}

impl LiveSegment {
    pub(crate) fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }
}

pub(crate) struct Recovered {
    pub id: WalId,
    pub dir: Arc<Dir>,
    pub state: StateStore,
    pub segments: Vec<LiveSegment>,
    pub first: u64,
    pub next: u64,
    /// The next append must start exactly at `next` even if the log is empty.
    pub pinned: bool,
    pub next_seq: u64,
    pub report: RecoveryReport,
}

/// Offline, read-only check of a WAL directory (`meridian wal verify`).
///
/// Returns what [`Wal::open`](crate::Wal::open) would recover, including a torn
/// tail it would cut, or the `Corrupt` error that would stop it. Modifies nothing.
pub fn verify(dir: &Path) -> Result<RecoveryReport, WalError> {
    recover(dir, Mode::ReadOnly, None).map(|r| r.report)
}

/// Whether `dir` holds a WAL at all (a state file or a segment), without changing anything.
pub(crate) fn holds_a_wal(dir: &Path) -> Result<bool, WalError> {
    if !dir.exists() {
        return Ok(false);
    }
    Ok(dir.join(STATE_FILE).exists() || !segment::list(dir)?.is_empty())
}

/// How the scan of one segment ended.
enum Stop {
    /// Clean end of file.
    End,
    /// Reached the end of an interrupted `truncate_after`; the rest is to be cut.
    Intended,
    /// Torn tail at the offset where the scan stopped.
    Torn { reason: String, zero: bool },
}

struct Scan {
    offsets: Vec<u64>,
    /// Offset where valid data ends.
    end: u64,
    next_index: u64,
    stop: Stop,
}

/// `expected`: the identity the caller's data was written with, if it knows one.
pub(crate) fn recover(
    dir: &Path,
    mode: Mode,
    expected: Option<WalId>,
) -> Result<Recovered, WalError> {
    let repair = mode == Mode::Repair;
    let loaded = state::load(dir)?;
    let all = segment::list(dir)?;
    let created = loaded.is_none() && all.is_empty();
    if let Some(expected) = expected {
        if created {
            return Err(WalError::Missing {
                dir: dir.to_path_buf(),
                expected,
            });
        }
        if let Some(found) = loaded.as_ref().and_then(|p| p.id) {
            if found != expected {
                return Err(WalError::Foreign {
                    dir: dir.to_path_buf(),
                    expected,
                    found: Some(found),
                });
            }
        }
    }
    let persisted = loaded.clone().unwrap_or_default();
    check_newest_segment(dir, &persisted, &all)?;
    let next_seq = all
        .last()
        .map_or(1, |s| s.seq + 1)
        .max(persisted.live_from_seq)
        .max(1);

    // Rule 1: files whose removal the state file already committed to.
    let mut doomed: Vec<PathBuf> = Vec::new();
    let (reset_dead, mut files): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|s| s.seq < persisted.live_from_seq);
    doomed.extend(reset_dead.into_iter().map(|s| s.path));
    if let Some(t) = persisted.pending_truncate {
        while files.last().is_some_and(|s| s.first_index > t) {
            doomed.push(files.pop().unwrap().path); // newest first: a crash leaves a prefix
        }
    }

    // Rules 2 and 3.
    let mut segments = Vec::with_capacity(files.len());
    let mut expect: Option<u64> = None;
    let mut tail: Option<(usize, u64, String, bool)> = None; // (segment, offset, reason, zero)
    let mut intended_cut: Option<(usize, u64)> = None;
    for (i, f) in files.iter().enumerate() {
        let is_last = i + 1 == files.len();
        let bytes = fs::read(&f.path).map_err(io_at(&f.path))?;
        let header = SegmentHeader::decode(&bytes).map_err(|r| WalError::corrupt(&f.path, 0, r))?;
        if let Some(id) = header.wal_id {
            check_segment_identity(dir, &f.path, id, loaded.as_ref(), expected)?;
        }
        if header.seq != f.seq || header.first_index != f.first_index {
            return Err(WalError::corrupt(
                &f.path,
                0,
                format!(
                    "header says seq {:#x} first index {} but the file name says seq {:#x} first index {}",
                    header.seq, header.first_index, f.seq, f.first_index
                ),
            ));
        }
        if let Some(e) = expect {
            if f.first_index != e {
                return Err(WalError::corrupt(
                    &f.path,
                    0,
                    format!(
                        "index gap between segments: expected this segment to start at {e}, it starts at {}",
                        f.first_index
                    ),
                ));
            }
        }
        let scan = scan_segment(
            &f.path,
            &bytes,
            f.first_index,
            is_last,
            header.preallocated,
            persisted.pending_truncate,
        )?;
        match scan.stop {
            Stop::End => {}
            Stop::Intended => intended_cut = Some((i, scan.end)),
            Stop::Torn { reason, zero } => tail = Some((i, scan.end, reason, zero)),
        }
        expect = Some(scan.next_index);
        segments.push(LiveSegment {
            seq: f.seq,
            first_index: f.first_index,
            path: f.path.clone(),
            offsets: scan.offsets,
            end: scan.end,
        });
    }

    // Rule 4 and the log's bounds.
    let records: u64 = segments.iter().map(|s| s.offsets.len() as u64).sum();
    let (first, next, pinned) = if records == 0 {
        match persisted.floor {
            Some(f) => (f, f, true),
            None => (1, 1, false),
        }
    } else {
        let (a, z) = (segments[0].first_index, expect.unwrap() - 1);
        match persisted.floor {
            Some(f) if a > f => {
                return Err(WalError::corrupt(
                    &segments[0].path,
                    SEGMENT_HEADER_BYTES,
                    format!("records {f}..{a} are missing: the purge point is {f} but the oldest record is {a}"),
                ))
            }
            Some(f) => (f, (z + 1).max(f), true),
            None => (a, z + 1, true),
        }
    };
    // Whole segments below the purge point, oldest first (a crash leaves a suffix).
    let purged = segments
        .iter()
        .take_while(|s| s.next_index() <= first && !s.offsets.is_empty())
        .count();
    // A trailing segment with no record (crash right after it was created, or a
    // torn first record) holds nothing; dropping it lets the next append choose.
    let trailing_empty =
        segments.len() > purged && segments.last().is_some_and(|s| s.offsets.is_empty());

    let mut truncated_tail = tail.as_ref().map(|(i, offset, reason, _)| {
        let file = segments[*i].path.clone();
        let len = fs::metadata(&file).map(|m| m.len()).unwrap_or(*offset);
        TailTruncation {
            file,
            offset: *offset,
            bytes_dropped: len.saturating_sub(*offset),
            reason: reason.clone(),
            broken_copy: None,
        }
    });

    // A directory from before identities (or a new one) gets its identity now.
    let id = persisted.id;
    if let (Some(expected), None) = (expected, id) {
        return Err(WalError::Foreign {
            dir: dir.to_path_buf(),
            expected,
            found: None,
        });
    }
    let dir_handle = Arc::new(Dir::open(dir)?);
    let mut store = StateStore::new(dir_handle.clone(), persisted);
    if repair {
        remove_tmp_files(dir)?;
        if let (Some(t), Some((_, _, _, zero))) = (truncated_tail.as_mut(), tail.as_ref()) {
            if !zero {
                t.broken_copy = Some(save_broken_copy(&t.file, t.offset)?);
            }
            segment::cut(&t.file, t.offset)?;
            tracing::warn!(
                file = %t.file.display(),
                offset = t.offset,
                bytes_dropped = t.bytes_dropped,
                reason = %t.reason,
                broken_copy = ?t.broken_copy,
                "WAL: truncated a torn tail in the last segment"
            );
        }
        if let Some((i, offset)) = intended_cut {
            segment::cut(&segments[i].path, offset)?;
            tracing::info!(file = %segments[i].path.display(), offset, "WAL: finished an interrupted truncate_after");
        }
        doomed.extend(segments.drain(..purged).map(|s| s.path));
        if trailing_empty {
            doomed.push(segments.pop().unwrap().path);
        }
        for path in &doomed {
            fs::remove_file(path).map_err(io_at(path))?;
        }
        if !doomed.is_empty() {
            dir_handle.sync()?;
            tracing::info!(files = doomed.len(), "WAL: removed dead segments");
        }
        let newest = segments.last().map(|s| (s.seq, s.first_index));
        let stale = store.get().pending_truncate.is_some() || store.get().newest != newest;
        if id.is_none() || stale {
            let id = id.unwrap_or_else(WalId::generate);
            store.update(|s| {
                s.id = Some(id);
                s.pending_truncate = None;
                s.newest = newest;
            })?;
            if created {
                tracing::info!(dir = %dir.display(), wal_id = %id, "WAL: created a new WAL");
            } else if loaded.as_ref().is_none_or(|p| p.id.is_none()) {
                tracing::info!(dir = %dir.display(), wal_id = %id, "WAL: gave a WAL from before identities its identity");
            }
        }
    } else {
        segments.drain(..purged);
        if trailing_empty {
            segments.pop();
        }
    }

    let report = RecoveryReport {
        first_index: first,
        last_index: next.saturating_sub(1),
        segments: segments.len(),
        truncated_tail,
        wal_id: store.get().id,
        created,
    };
    Ok(Recovered {
        // Only a read-only verify of an unidentified WAL lacks one, and it uses the report only.
        id: store.get().id.unwrap_or_else(WalId::generate),
        dir: dir_handle,
        state: store,
        segments,
        first,
        next,
        pinned,
        next_seq,
        report,
    })
}

/// Rule 0, for the end of the log: see the module docs.
fn check_newest_segment(
    dir: &Path,
    persisted: &PersistedState,
    all: &[SegmentFile],
) -> Result<(), WalError> {
    let Some((seq, first)) = persisted.newest else {
        return Ok(());
    };
    let present = all.iter().any(|s| s.seq >= seq);
    let removed_by_reset = seq < persisted.live_from_seq;
    let being_truncated = persisted.pending_truncate.is_some_and(|t| first > t);
    if present || removed_by_reset || being_truncated {
        return Ok(());
    }
    Err(WalError::corrupt(
        &dir.join(segment::file_name(seq, first)),
        0,
        format!(
            "this segment is missing: the WAL created it (records from index {first} on) and never removed it, \
             so records from index {first} on are lost"
        ),
    ))
}

/// Rule 0, for one segment header's identity.
fn check_segment_identity(
    dir: &Path,
    path: &Path,
    id: WalId,
    loaded: Option<&PersistedState>,
    expected: Option<WalId>,
) -> Result<(), WalError> {
    match loaded {
        None => Err(WalError::corrupt(
            &dir.join(STATE_FILE),
            0,
            format!(
                "wal.state is missing, but {} was written by WAL {id}: the hard state (epoch, vote) and purge point it held are lost",
                path.display()
            ),
        )),
        Some(p) if p.id != Some(id) => match (expected, p.id) {
            // The whole directory belongs elsewhere: say that, not "this one file".
            (Some(expected), None) => Err(WalError::Foreign {
                dir: dir.to_path_buf(),
                expected,
                found: Some(id),
            }),
            _ => Err(WalError::corrupt(
                path,
                0,
                format!(
                    "segment written by WAL {id}, but this directory's WAL is {}",
                    p.id.map_or("one without an identity".into(), |i| i.to_string())
                ),
            )),
        },
        Some(_) => Ok(()),
    }
}

fn scan_segment(
    path: &Path,
    bytes: &[u8],
    first_index: u64,
    is_last: bool,
    preallocated: bool,
    stop_after: Option<u64>,
) -> Result<Scan, WalError> {
    let mut off = SEGMENT_HEADER_BYTES as usize;
    let mut next = first_index;
    let mut offsets = Vec::new();
    let done = |offsets, off: usize, next, stop| {
        Ok(Scan {
            offsets,
            end: off as u64,
            next_index: next,
            stop,
        })
    };
    loop {
        if off == bytes.len() {
            return done(offsets, off, next, Stop::End);
        }
        if stop_after.is_some_and(|t| next > t) {
            return done(offsets, off, next, Stop::Intended);
        }
        match record::decode(&bytes[off..]) {
            Ok(frame) if frame.index == next => {
                offsets.push(off as u64);
                off += frame.len;
                next += 1;
            }
            Ok(frame) => {
                return Err(WalError::corrupt(
                    path,
                    off as u64,
                    format!(
                        "index gap: expected record {next}, found record {}",
                        frame.index
                    ),
                ))
            }
            // Rule 3's exception: the unused space of a preallocated segment.
            Err(_) if preallocated && bytes[off..].iter().all(|b| *b == 0) => {
                return done(offsets, off, next, Stop::End)
            }
            Err(e) if !is_last => {
                return Err(WalError::corrupt(
                    path,
                    off as u64,
                    format!(
                        "{e} (expected record {next}; not the last segment, so not a torn tail)"
                    ),
                ))
            }
            Err(e) => {
                if let Some(valid) = find_valid_frame(bytes, off, next) {
                    return Err(WalError::corrupt(
                        path,
                        off as u64,
                        format!("{e} (expected record {next}); a valid record follows at offset {valid}, so this is not a torn tail"),
                    ));
                }
                let zero = bytes[off..].iter().all(|b| *b == 0);
                let reason = if zero {
                    "zero-filled tail".to_string()
                } else {
                    e.to_string()
                };
                return done(offsets, off, next, Stop::Torn { reason, zero });
            }
        }
    }
}

/// First 8-byte boundary after `bad` where a valid frame with index `>= min_index`
/// starts. Frames are 8-aligned in the file, so no other position can hold one.
fn find_valid_frame(bytes: &[u8], bad: usize, min_index: u64) -> Option<u64> {
    (bad + 8..)
        .step_by(8)
        .take_while(|o| o + RECORD_HEADER_BYTES <= bytes.len())
        .find(|&o| {
            record::plausible_start(&bytes[o..], min_index) && record::decode(&bytes[o..]).is_ok()
        })
        .map(|o| o as u64)
}

/// Keeps the bytes about to be cut, for a post-mortem: `<segment>.broken`
/// (or `.broken.N` if an earlier copy exists). Durable before the cut.
fn save_broken_copy(path: &Path, from: u64) -> Result<PathBuf, WalError> {
    let bytes = fs::read(path).map_err(io_at(path))?;
    let base = path.as_os_str().to_owned();
    for n in 0.. {
        let mut name = base.clone();
        name.push(if n == 0 {
            ".broken".to_string()
        } else {
            format!(".broken.{n}")
        });
        let copy = PathBuf::from(name);
        let mut f = match OpenOptions::new().write(true).create_new(true).open(&copy) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_at(&copy)(e)),
        };
        // Zeros after the last non-zero byte are left out: in a preallocated
        // segment they are megabytes of unused space, not part of the torn write.
        let kept = bytes[from as usize..]
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |p| p + 1);
        f.write_all(&bytes[from as usize..from as usize + kept])
            .map_err(io_at(&copy))?;
        f.sync_all().map_err(io_at(&copy))?;
        return Ok(copy);
    }
    unreachable!("an unbounded range always yields a free name")
}

/// Half-created segments and state files, and spares (zeros) of an earlier run:
/// never visible under a final name, so nothing in them was ever acknowledged.
fn remove_tmp_files(dir: &Path) -> Result<(), WalError> {
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_tmp_segment = name
            .strip_suffix(TMP_SUFFIX)
            .is_some_and(|n| segment::parse_name(n).is_some());
        if is_tmp_segment || name == STATE_TMP || spare::is_spare_name(name) {
            fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fill, indexes, open, read_all};

    /// Segment files in seq order.
    fn segments(dir: &Path) -> Vec<PathBuf> {
        segment::list(dir)
            .unwrap()
            .into_iter()
            .map(|s| s.path)
            .collect()
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    /// Offsets of the records in a segment, from the reader's own scan.
    fn record_offsets(path: &Path) -> Vec<u64> {
        let bytes = fs::read(path).unwrap();
        let first = segment::parse_name(path.file_name().unwrap().to_str().unwrap())
            .unwrap()
            .1;
        scan_segment(path, &bytes, first, true, false, None)
            .unwrap()
            .offsets
    }

    #[test]
    fn torn_tail_is_truncated_on_open_and_kept_as_broken() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=20, 50);
        wal.close().unwrap();
        let last = segments(dir.path()).pop().unwrap();
        let len = fs::metadata(&last).unwrap().len();
        // Half of a frame for record 21: a crash in the middle of a write.
        let mut frame = Vec::new();
        record::encode(&mut frame, &crate::test_util::rec(21, 50));
        append_bytes(&last, &frame[..40]);

        let (wal, report) = crate::Wal::open(crate::WalOptions::new(dir.path())).unwrap();
        let tail = report.truncated_tail.expect("torn tail reported");
        assert_eq!(
            (tail.file.as_path(), tail.offset, tail.bytes_dropped),
            (last.as_path(), len, 40)
        );
        assert_eq!(fs::metadata(&last).unwrap().len(), len);
        assert_eq!(fs::read(tail.broken_copy.unwrap()).unwrap(), &frame[..40]);
        assert_eq!(indexes(&read_all(&wal)), (1..=20).collect::<Vec<_>>());
    }

    #[test]
    fn zero_filled_tail_is_end_of_data() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=5, 10);
        wal.close().unwrap();
        let last = segments(dir.path()).pop().unwrap();
        append_bytes(&last, &[0; 4096]);
        let (wal, report) = crate::Wal::open(crate::WalOptions::new(dir.path())).unwrap();
        let tail = report.truncated_tail.unwrap();
        assert_eq!(
            (tail.reason.as_str(), tail.broken_copy),
            ("zero-filled tail", None)
        );
        assert_eq!(wal.last_index(), 5);
    }

    #[test]
    fn damage_in_a_sealed_segment_is_corruption_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=30, 100);
        wal.close().unwrap();
        let first = segments(dir.path()).remove(0);
        let at = record_offsets(&first)[1];
        let mut bytes = fs::read(&first).unwrap();
        bytes[at as usize + 40] ^= 0x04;
        fs::write(&first, bytes).unwrap();

        for err in [
            verify(dir.path()).unwrap_err(),
            crate::Wal::open(crate::WalOptions::new(dir.path()))
                .err()
                .unwrap(),
        ] {
            match err {
                WalError::Corrupt { file, offset, .. } => {
                    assert_eq!((file, offset), (first.clone(), at))
                }
                other => panic!("expected corruption, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_record_followed_by_a_valid_one_is_corruption_even_in_the_last_segment() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=3, 10);
        wal.close().unwrap();
        let only = segments(dir.path()).pop().unwrap();
        let at = record_offsets(&only)[1];
        let mut bytes = fs::read(&only).unwrap();
        bytes[at as usize + 17] ^= 0x80; // the index field of record 2
        fs::write(&only, bytes).unwrap();
        let err = verify(dir.path()).unwrap_err();
        assert!(err.is_corruption());
        assert!(
            err.to_string().contains(&format!("at byte offset {at}")),
            "{err}"
        );
        assert!(err.to_string().contains("valid record follows"), "{err}");
    }

    #[test]
    fn a_missing_middle_segment_is_an_index_gap() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=30, 100);
        wal.close().unwrap();
        let segs = segments(dir.path());
        assert!(segs.len() >= 3);
        fs::remove_file(&segs[1]).unwrap();
        let err = verify(dir.path()).unwrap_err();
        match err {
            WalError::Corrupt {
                file,
                offset: 0,
                reason,
            } => {
                assert_eq!(file, segs[2]);
                assert!(reason.contains("index gap"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verify_reports_a_torn_tail_without_touching_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=4, 10);
        wal.close().unwrap();
        let last = segments(dir.path()).pop().unwrap();
        append_bytes(&last, &[0xab; 20]);
        let snapshot = || {
            let mut files: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| (fs::read(&p).unwrap(), p))
                .collect();
            files.sort();
            files
        };
        let before = snapshot();
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.last_index, 4);
        let tail = report.truncated_tail.unwrap();
        assert_eq!((tail.bytes_dropped, tail.broken_copy), (20, None));
        assert_eq!(snapshot(), before);
    }

    #[test]
    fn a_segment_with_no_record_is_dropped_and_the_next_append_may_start_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        // Crash right after a never-written WAL created its first segment.
        let id = open(dir.path()).id();
        segment::create(&Dir::open(dir.path()).unwrap(), 1, 500, id).unwrap();
        let (wal, report) = crate::Wal::open(crate::WalOptions::new(dir.path())).unwrap();
        assert_eq!(
            (report.first_index, report.last_index, report.segments),
            (1, 0, 0)
        );
        fill(&wal, 7..=8, 3);
        wal.close().unwrap();
        assert_eq!(verify(dir.path()).unwrap().last_index, 8);
    }

    #[test]
    fn leftover_tmp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=2, 1);
        wal.close().unwrap();
        let tmp = dir
            .path()
            .join(format!("{}{TMP_SUFFIX}", segment::file_name(9, 3)));
        fs::write(&tmp, b"half a header").unwrap();
        let (wal, _) = crate::Wal::open(crate::WalOptions::new(dir.path())).unwrap();
        assert!(!tmp.exists());
        assert_eq!(wal.last_index(), 2);
    }

    fn open_expecting(dir: &Path, id: WalId) -> Result<crate::Wal, WalError> {
        let mut opts = crate::WalOptions::new(dir);
        opts.segment_bytes = 512;
        opts.expected_id = Some(id);
        crate::Wal::open(opts).map(|(w, _)| w)
    }

    #[test]
    fn a_new_wal_gets_an_identity_that_survives_reopen_and_marks_its_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, report) = crate::Wal::open(crate::WalOptions::new(dir.path())).unwrap();
        assert!(report.created);
        let id = wal.id();
        assert_eq!(report.wal_id, Some(id));
        fill(&wal, 1..=3, 10);
        wal.close().unwrap();
        let seg = segments(dir.path()).remove(0);
        let header = SegmentHeader::decode(&fs::read(&seg).unwrap()).unwrap();
        assert_eq!(header.wal_id, Some(id));
        let wal = open_expecting(dir.path(), id).unwrap();
        assert_eq!((wal.id(), wal.last_index()), (id, 3));
        assert_eq!(verify(dir.path()).unwrap().wal_id, Some(id));
    }

    #[test]
    fn an_expected_wal_that_is_missing_or_foreign_is_refused_and_nothing_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let expected = WalId::generate();
        match open_expecting(dir.path(), expected) {
            Err(WalError::Missing { expected: e, .. }) => assert_eq!(e, expected),
            other => panic!("{:?}", other.map(|w| w.id())),
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing may be created");
        let gone = dir.path().join("gone");
        assert!(matches!(open_expecting(&gone, expected), Err(WalError::Missing { .. })));
        assert!(!gone.exists());
        let other = open(dir.path());
        let found = other.id();
        other.close().unwrap();
        match open_expecting(dir.path(), expected) {
            Err(WalError::Foreign { found: f, .. }) => assert_eq!(f, Some(found)),
            other => panic!("{:?}", other.map(|w| w.id())),
        }
    }

    #[test]
    fn a_deleted_last_segment_is_corruption_not_an_empty_log() {
        for keep_older in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let wal = open(dir.path());
            fill(&wal, 1..=if keep_older { 30 } else { 3 }, 100);
            wal.close().unwrap();
            let last = segments(dir.path()).pop().unwrap();
            fs::remove_file(&last).unwrap();
            for err in [
                verify(dir.path()).unwrap_err(),
                crate::Wal::open(crate::WalOptions::new(dir.path())).err().unwrap(),
            ] {
                match err {
                    WalError::Corrupt { file, reason, .. } => {
                        assert_eq!(file, last);
                        assert!(reason.contains("missing"), "{reason}");
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_lost_state_file_beside_segments_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=3, 10);
        wal.close().unwrap();
        fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        let err = crate::Wal::open(crate::WalOptions::new(dir.path())).err().unwrap();
        assert!(err.is_corruption() && err.to_string().contains("wal.state is missing"), "{err}");
    }

    #[test]
    fn a_segment_from_another_wal_is_corruption() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for d in [a.path(), b.path()] {
            let wal = open(d);
            fill(&wal, 1..=30, 100);
            wal.close().unwrap();
        }
        let stranger = segments(b.path()).pop().unwrap();
        let ours = segments(a.path()).pop().unwrap();
        fs::copy(&stranger, &ours).unwrap();
        let err = verify(a.path()).unwrap_err();
        assert!(err.to_string().contains("segment written by WAL"), "{err}");
    }

    #[test]
    fn purge_truncate_and_reset_to_empty_are_not_mistaken_for_a_deleted_segment() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=30, 100);
        wal.purge_before(31).unwrap();
        assert_eq!(wal.position().segments, 0);
        wal.close().unwrap();
        let wal = open(dir.path());
        fill(&wal, 31..=40, 100);
        wal.truncate_after(30).unwrap();
        wal.close().unwrap();
        let wal = open(dir.path());
        assert_eq!(wal.last_index(), 30);
        fill(&wal, 31..=35, 100);
        wal.reset_to(100).unwrap();
        wal.close().unwrap();
        let wal = open(dir.path());
        assert_eq!((wal.first_index(), wal.last_index()), (100, 99));
    }

    #[test]
    fn a_wal_from_before_identities_is_given_one_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=3, 10);
        wal.close().unwrap();
        // Rewrite the segment header with a zero id and drop wal.state: the old layout.
        let seg = segments(dir.path()).remove(0);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[40..56].fill(0);
        let crc = crc32fast::hash(&bytes[..60]);
        bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        fs::write(&seg, bytes).unwrap();
        fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(verify(dir.path()).unwrap().wal_id, None);
        let (wal, report) = crate::Wal::open(crate::WalOptions::new(dir.path())).unwrap();
        assert!(!report.created);
        assert_eq!((report.wal_id, wal.last_index()), (Some(wal.id()), 3));
    }
}
