//! Reading records back: the in-memory table of segments and `pread`s on them.
//!
//! The writer thread publishes a record in the table only after it is
//! fdatasync'ed, so readers never see data that a crash could take back.
//! Readers copy a small read plan out of the table under a read lock and do the
//! I/O without it, so a slow read never stalls group commit. Purge and reset may
//! unlink a file a reader still holds open; on Linux the open file stays readable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::error::{io_at, WalError};
use crate::record::{self, Record};

/// One segment as readers see it.
pub(crate) struct TableSegment {
    pub first_index: u64,
    pub name: String,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// File offset of each durable record; record `first_index + i` is at `offsets[i]`.
    pub offsets: Vec<u64>,
    /// End of durable data.
    pub end: u64,
}

impl TableSegment {
    pub(crate) fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    /// Byte range of record `first_index + i`.
    fn frame(&self, i: usize) -> (u64, u64) {
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.end);
        (self.offsets[i], end)
    }
}

/// Durable segments in log order.
#[derive(Default)]
pub(crate) struct SegmentTable {
    pub segments: Vec<TableSegment>,
    /// Bumped whenever records are removed (truncate, purge, reset), so a reader
    /// that raced with one can tell a vanished record from a damaged one.
    pub generation: u64,
}

/// A run of consecutive records in one file.
struct Plan {
    file: Arc<File>,
    path: PathBuf,
    start: u64,
    end: u64,
    first_index: u64,
    count: usize,
}

/// Reads up to `max_records` durable records starting at `from`, stopping before
/// the one that would take the total over `max_bytes` (but always returning at
/// least one if `from` exists). Returns `Purged` if `from` is older than the
/// oldest segment.
pub(crate) fn read(
    table: &RwLock<SegmentTable>,
    from: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Vec<Record>, WalError> {
    // A failed read while records were being removed is a lost race, not damage: try again
    // for as long as removals keep happening under it (each retry needs a new one; the
    // bound only guards against a livelock). Three tries were not enough when truncations
    // come back to back: `reads_race_safely_with_truncation` failed about 1 run in 15.
    let mut attempts = 0;
    loop {
        let (plans, generation) = plan(table, from, max_records, max_bytes)?;
        match execute(&plans) {
            Ok(records) => return Ok(records),
            Err(e) if attempts < 1000 && table.read().unwrap().generation != generation => {
                tracing::debug!(error = %e, "WAL read raced with a truncation; retrying");
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn plan(
    table: &RwLock<SegmentTable>,
    from: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<(Vec<Plan>, u64), WalError> {
    let table = table.read().unwrap();
    let segs = &table.segments;
    if let Some(oldest) = segs.first() {
        if from < oldest.first_index {
            return Err(WalError::Purged {
                requested: from,
                first: oldest.first_index,
            });
        }
    }
    let mut si = segs
        .partition_point(|s| s.first_index <= from)
        .saturating_sub(1);
    let (mut index, mut records, mut bytes) = (from, 0usize, 0u64);
    let mut plans = Vec::new();
    'segments: while si < segs.len() && records < max_records {
        let seg = &segs[si];
        si += 1;
        if index < seg.first_index || index >= seg.next_index() {
            continue;
        }
        let first = (index - seg.first_index) as usize;
        let mut i = first;
        while i < seg.offsets.len() && records < max_records {
            let (start, end) = seg.frame(i);
            if records > 0 && bytes + (end - start) > max_bytes as u64 {
                break;
            }
            bytes += end - start;
            records += 1;
            i += 1;
        }
        if i > first {
            plans.push(Plan {
                file: seg.file.clone(),
                path: seg.path.clone(),
                start: seg.offsets[first],
                end: seg.frame(i - 1).1,
                first_index: index,
                count: i - first,
            });
            index += (i - first) as u64;
        }
        if i < seg.offsets.len() {
            break 'segments; // stopped by a budget, not by the end of the segment
        }
    }
    Ok((plans, table.generation))
}

fn execute(plans: &[Plan]) -> Result<Vec<Record>, WalError> {
    let mut out = Vec::with_capacity(plans.iter().map(|p| p.count).sum());
    for p in plans {
        let mut buf = vec![0u8; (p.end - p.start) as usize];
        p.file
            .read_exact_at(&mut buf, p.start)
            .map_err(io_at(&p.path))?;
        let mut off = 0;
        for n in 0..p.count as u64 {
            let at = p.start + off as u64;
            let frame = record::decode(&buf[off..])
                .map_err(|e| WalError::corrupt(&p.path, at, e.to_string()))?;
            if frame.index != p.first_index + n {
                return Err(WalError::corrupt(
                    &p.path,
                    at,
                    format!(
                        "expected record {}, found {}",
                        p.first_index + n,
                        frame.index
                    ),
                ));
            }
            out.push(frame.to_record());
            off += frame.len;
        }
    }
    Ok(out)
}
