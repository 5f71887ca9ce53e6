//! Property tests: crash at any byte of the last segment, or flip any bit, and
//! reopen. The WAL must recover exactly the records that were wholly written
//! before the cut, or refuse with `Corrupt` pointing at the damaged record;
//! never a garbage record and never a silent loss.

mod common;

use std::fs;

use common::*;
use meridian_wal::{verify, WalError};
use proptest::prelude::*;
use proptest::sample::Index;

/// Small segments so a few KiB of records span several files.
const SEGMENT_BYTES: u64 = 4096;

fn batches() -> impl Strategy<Value = Vec<Vec<usize>>> {
    prop::collection::vec(prop::collection::vec(0usize..4096, 1..4), 1..10)
}

/// Where to cut the last segment, relative to its records.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Exactly at a record boundary (or the end of the header).
    Boundary,
    /// 1..=31 bytes into a record header.
    InHeader,
    /// Inside a payload or its padding.
    InPayload,
}

fn cut_kind() -> impl Strategy<Value = Cut> {
    prop_oneof![
        Just(Cut::Boundary),
        Just(Cut::InHeader),
        Just(Cut::InPayload)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_cut_last_segment_recovers_exactly_the_records_before_the_cut(
        batches in batches(),
        kind in cut_kind(),
        which in any::<Index>(),
        depth in any::<Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = meridian_wal::Wal::open(opts(dir.path(), SEGMENT_BYTES)).unwrap();
        let written = write_batches(&wal, 1, &batches);
        wal.close().unwrap();

        let frames = layout(dir.path());
        let last_file = frames.last().unwrap().file.clone();
        let tail: Vec<&Frame> = frames.iter().filter(|f| f.file == last_file).collect();
        let file_len = fs::metadata(&last_file).unwrap().len();
        let cut = match kind {
            Cut::Boundary => {
                let mut at: Vec<u64> = tail.iter().map(|f| f.offset).collect();
                at.push(file_len);
                at[which.index(at.len())]
            }
            Cut::InHeader => tail[which.index(tail.len())].offset + 1 + depth.index(31) as u64,
            Cut::InPayload => {
                let with_payload: Vec<&&Frame> = tail.iter().filter(|f| f.len > 0).collect();
                match with_payload.is_empty() {
                    true => tail[which.index(tail.len())].offset + 1 + depth.index(31) as u64,
                    false => {
                        let f = with_payload[which.index(with_payload.len())];
                        f.offset + 32 + depth.index((f.frame_len() - 32) as usize) as u64
                    }
                }
            }
        };
        // Everything wholly before the cut, and nothing else.
        let survivors = frames.iter().filter(|f| f.file != last_file || f.end() <= cut).count();
        let expected = &written[..survivors];
        cut_file(&last_file, cut);

        // verify() sees the same outcome and changes nothing.
        let report = verify(dir.path()).unwrap();
        prop_assert_eq!(report.last_index, survivors as u64);
        prop_assert_eq!(report.truncated_tail.is_some(), tail.iter().all(|f| f.offset != cut) && cut != file_len);
        prop_assert_eq!(fs::metadata(&last_file).unwrap().len(), cut);

        let (wal, got) = reopen(dir.path(), SEGMENT_BYTES).unwrap();
        prop_assert_eq!(&got[..], expected);

        // The log continues after the repaired tail, and survives another reopen.
        let more = write_batches(&wal, survivors as u64 + 1, &[vec![10, 0, 3000]]);
        wal.close().unwrap();
        let (_wal, got) = reopen(dir.path(), SEGMENT_BYTES).unwrap();
        prop_assert_eq!(got.len(), survivors + more.len());
        prop_assert_eq!(&got[..survivors], expected);
        prop_assert_eq!(&got[survivors..], &more[..]);
    }

    #[test]
    fn a_flipped_bit_is_cut_at_the_tail_or_reported_where_it_is(
        batches in batches(),
        which in any::<Index>(),
        bit in any::<Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = meridian_wal::Wal::open(opts(dir.path(), SEGMENT_BYTES)).unwrap();
        let written = write_batches(&wal, 1, &batches);
        wal.close().unwrap();

        let frames = layout(dir.path());
        let victim = which.index(frames.len());
        let f = frames[victim].clone();
        let bit = bit.index((f.frame_len() * 8) as usize) as u64;
        flip_bit(&f.file, f.offset + bit / 8, (bit % 8) as u8);

        let is_tail = victim + 1 == frames.len();
        let opened = reopen(dir.path(), SEGMENT_BYTES);
        if is_tail {
            // The last record of the last segment: indistinguishable from a torn write.
            let (wal, got) = opened.unwrap();
            prop_assert_eq!(&got[..], &written[..victim]);
            let more = write_batches(&wal, victim as u64 + 1, &[vec![5]]);
            wal.close().unwrap();
            let (_wal, got) = reopen(dir.path(), SEGMENT_BYTES).unwrap();
            prop_assert_eq!(&got[victim..], &more[..]);
        } else {
            // Anything else may have been acknowledged: refuse, and say where.
            for err in [opened.err().unwrap(), verify(dir.path()).unwrap_err()] {
                match err {
                    WalError::Corrupt { file, offset, .. } => {
                        prop_assert_eq!(&file, &f.file);
                        prop_assert_eq!(offset, f.offset);
                    }
                    other => prop_assert!(false, "expected Corrupt, got {other:?}"),
                }
            }
        }
    }
}
