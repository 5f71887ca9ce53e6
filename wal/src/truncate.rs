//! The three ways the log shrinks, each crash-safe by the same recipe: first
//! write the intent to the state file (the commit point; recovery finishes
//! whatever follows), then change the in-memory table, then the files.
//!
//! | operation | intent in `wal.state` | files | a crash part-way leaves |
//! |---|---|---|---|
//! | `truncate_after(t)` | `pending_truncate = t` | unlink segments starting after `t` (newest first), cut the one holding `t` | recovery drops records > `t` |
//! | `purge_before(b)` | `floor = b` | unlink segments whose records are all `< b` (oldest first) | recovery hides records < `b`, removes dead segments |
//! | `reset_to(n)` | `floor = n`, `live_from_seq` = next seq | unlink every segment | recovery ignores segments older than `live_from_seq` |
//!
//! A truncation always ends the active segment: the next append starts a new
//! file, so a cut file is never written again and the intent can be cleared as
//! soon as the cut is durable.

use std::fs;
use std::path::PathBuf;

use crate::error::{io_at, WalError};
use crate::reader;
use crate::record::Record;
use crate::segment;
use crate::writer::Writer;

impl Writer {
    /// Removes every record with index > `after`; returns them. The handle has
    /// checked that `first - 1 <= after < last`.
    pub(crate) fn truncate_after(
        &mut self,
        after: u64,
        first: u64,
    ) -> Result<Vec<Record>, WalError> {
        // Everything queued before this request is durable, so the table holds the whole tail.
        let removed = reader::read(&self.shared.table, after + 1, usize::MAX, usize::MAX)?;

        self.shared.state.lock().unwrap().update(|s| {
            s.pending_truncate = Some(after);
            // Pins the next index if the log becomes empty.
            s.floor = Some(s.floor.map_or(first, |f| f.max(first)));
        })?;
        self.failpoint("truncate:intent-saved")?;

        // Readers must stop planning reads of the tail before it changes under them.
        let (doomed, cut) = {
            let mut table = self.shared.table.write().unwrap();
            table.generation += 1;
            let keep = table
                .segments
                .iter()
                .take_while(|s| s.first_index <= after)
                .count();
            let doomed: Vec<PathBuf> = table.segments.drain(keep..).rev().map(|s| s.path).collect();
            let cut = table.segments.last_mut().and_then(|seg| {
                let keep_records = (after + 1 - seg.first_index) as usize;
                let at = *seg.offsets.get(keep_records)?;
                seg.offsets.truncate(keep_records);
                seg.end = at;
                Some((seg.path.clone(), at))
            });
            (doomed, cut)
        };
        self.active = None;
        self.publish_durable(after);

        for path in &doomed {
            fs::remove_file(path).map_err(io_at(path))?;
        }
        self.failpoint("truncate:segments-removed")?;
        if let Some((path, at)) = &cut {
            segment::cut(path, *at)?;
        }
        self.shared.dir.sync()?;
        self.failpoint("truncate:tail-cut")?;

        // Cleared before any later append can write past `after` again.
        let newest = {
            let table = self.shared.table.read().unwrap();
            table.segments.last().map(|s| {
                let (seq, _) = segment::parse_name(&s.name).expect("own segment name");
                (seq, s.first_index)
            })
        };
        self.shared.state.lock().unwrap().update(|s| {
            s.pending_truncate = None;
            s.newest = newest;
        })?;
        tracing::info!(after, removed = removed.len(), "WAL: truncated the log");
        Ok(removed)
    }

    /// Forgets records below `before`. The handle has checked `before > first`.
    pub(crate) fn purge_before(&mut self, before: u64) -> Result<(), WalError> {
        // Emptying the log removes the newest segment too: say so in the same write,
        // or recovery would take the purged segment for a deleted one.
        let empties = self
            .shared
            .table
            .read()
            .unwrap()
            .segments
            .iter()
            .all(|s| s.next_index() <= before && !s.offsets.is_empty());
        self.shared.state.lock().unwrap().update(|s| {
            s.floor = Some(s.floor.map_or(before, |f| f.max(before)));
            if empties {
                s.newest = None;
            }
        })?;
        self.failpoint("purge:floor-saved")?;

        let doomed: Vec<PathBuf> = {
            let mut table = self.shared.table.write().unwrap();
            table.generation += 1;
            let dead = table
                .segments
                .iter()
                .take_while(|s| s.next_index() <= before && !s.offsets.is_empty())
                .count();
            if dead == table.segments.len() {
                self.active = None; // the log is now empty: the next append starts a new file
            }
            table.segments.drain(..dead).map(|s| s.path).collect()
        };
        for path in &doomed {
            fs::remove_file(path).map_err(io_at(path))?;
        }
        if !doomed.is_empty() {
            self.shared.dir.sync()?;
        }
        tracing::debug!(before, segments = doomed.len(), "WAL: purged");
        Ok(())
    }

    /// Drops the whole log; the next append starts at `next`.
    pub(crate) fn reset_to(&mut self, next: u64) -> Result<(), WalError> {
        let live_from_seq = self.next_seq;
        self.shared.state.lock().unwrap().update(|s| {
            s.floor = Some(next);
            s.live_from_seq = live_from_seq;
            s.pending_truncate = None;
            s.newest = None;
        })?;
        self.failpoint("reset:state-saved")?;

        let doomed: Vec<PathBuf> = {
            let mut table = self.shared.table.write().unwrap();
            table.generation += 1;
            table.segments.drain(..).map(|s| s.path).collect()
        };
        self.active = None;
        self.publish_durable(next.saturating_sub(1));
        for path in &doomed {
            fs::remove_file(path).map_err(io_at(path))?;
        }
        self.shared.dir.sync()?;
        tracing::info!(next, segments = doomed.len(), "WAL: reset");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::{fill, indexes, open, read_all};
    use crate::{verify, WalError};

    /// A crash at each step of truncate_after: reopening yields the truncated
    /// log, never the old one with holes.
    #[test]
    fn truncate_is_all_or_nothing_across_a_crash_at_any_step() {
        for step in [
            "truncate:intent-saved",
            "truncate:segments-removed",
            "truncate:tail-cut",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let wal = open(dir.path());
            fill(&wal, 1..=40, 60);
            assert!(wal.position().segments > 3);
            wal.set_failpoint(Some(step));
            let err = wal.truncate_after(13).unwrap_err();
            assert!(err.to_string().contains(step), "{err}");
            // The handle is poisoned: nothing more reaches the disk.
            assert!(matches!(
                wal.append(vec![crate::test_util::rec(14, 1)]).wait(),
                Err(WalError::Poisoned { .. })
            ));
            drop(wal);

            assert_eq!(verify(dir.path()).unwrap().last_index, 13, "{step}");
            let wal = open(dir.path());
            assert_eq!(
                indexes(&read_all(&wal)),
                (1..=13).collect::<Vec<_>>(),
                "{step}"
            );
            // The intent was cleared: new records past 13 survive the next reopen.
            fill(&wal, 14..=20, 60);
            wal.close().unwrap();
            let wal = open(dir.path());
            assert_eq!(
                indexes(&read_all(&wal)),
                (1..=20).collect::<Vec<_>>(),
                "{step}"
            );
        }
    }

    #[test]
    fn purge_is_finished_by_recovery_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=40, 60);
        let segments = wal.position().segments;
        wal.set_failpoint(Some("purge:floor-saved"));
        assert!(wal.purge_before(25).is_err());
        drop(wal);
        let wal = open(dir.path());
        assert_eq!(wal.first_index(), 25);
        assert!(wal.position().segments < segments);
        assert_eq!(indexes(&read_all(&wal)), (25..=40).collect::<Vec<_>>());
    }

    #[test]
    fn reset_is_finished_by_recovery_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        fill(&wal, 1..=20, 60);
        wal.set_failpoint(Some("reset:state-saved"));
        assert!(wal.reset_to(100).is_err());
        drop(wal);
        let wal = open(dir.path());
        assert_eq!(
            (wal.first_index(), wal.last_index(), wal.position().segments),
            (100, 99, 0)
        );
        assert!(matches!(
            wal.append(vec![crate::test_util::rec(21, 1)]).wait(),
            Err(WalError::IndexGap {
                expected: 100,
                got: 21
            })
        ));
        fill(&wal, 100..=101, 1);
    }
}
