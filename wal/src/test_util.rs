//! Helpers shared by the unit tests.

use std::path::Path;

use crate::{Record, Wal, WalOptions};

pub(crate) fn rec(index: u64, len: usize) -> Record {
    Record {
        index,
        epoch: index / 10 + 1,
        payload: (0..len).map(|i| (index as usize * 7 + i) as u8).collect(),
    }
}

/// Opens a WAL with small segments so a few records span several files.
pub(crate) fn open(dir: &Path) -> Wal {
    let mut opts = WalOptions::new(dir);
    opts.segment_bytes = 512;
    // Segment layouts in these tests must not depend on when a spare is ready.
    opts.preallocate = false;
    Wal::open(opts).unwrap().0
}

/// Appends `indexes`, one record per append, each waited for: one group commit
/// per record, so segments rotate as often as the size allows.
pub(crate) fn fill(wal: &Wal, indexes: std::ops::RangeInclusive<u64>, len: usize) {
    for i in indexes {
        wal.append(vec![rec(i, len)]).wait().unwrap();
    }
}

pub(crate) fn read_all(wal: &Wal) -> Vec<Record> {
    wal.read_from(wal.first_index(), usize::MAX, usize::MAX)
        .unwrap()
}

pub(crate) fn indexes(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.index).collect()
}
