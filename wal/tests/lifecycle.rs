//! The WAL's operations end to end, each checked again after a reopen.

mod common;

use std::fs;

use common::*;
use meridian_wal::{dump, verify, HardState, Wal, WalError, MAX_VOTE_BYTES};

const SEG: u64 = 1024;

fn fresh() -> (tempfile::TempDir, Wal) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, report) = Wal::open(opts(dir.path(), SEG)).unwrap();
    assert_eq!(
        (report.first_index, report.last_index, report.segments),
        (1, 0, 0)
    );
    (dir, wal)
}

fn singles(n: usize, len: usize) -> Vec<Vec<usize>> {
    vec![vec![len]; n]
}

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_fresh_wal_reports_an_empty_log() {
    let (_dir, wal) = fresh();
    assert_eq!(
        (wal.first_index(), wal.last_index(), wal.durable_index()),
        (1, 0, 0)
    );
    assert!(wal.read_from(1, 10, 1 << 20).unwrap().is_empty());
    assert!(wal.read_from(0, 10, 1 << 20).unwrap().is_empty());
    let p = wal.position();
    assert_eq!(
        (p.segments, p.total_bytes, p.current_segment.as_str()),
        (0, 0, "")
    );
}

#[test]
fn read_from_crosses_segments_and_honours_limits() {
    let (dir, wal) = fresh();
    let written = write_batches(&wal, 1, &singles(40, 100));
    assert!(wal.position().segments >= 4);
    assert_eq!(read_all(&wal), written);
    // Every start and count, across every boundary.
    for from in 1..=40u64 {
        let got = wal.read_from(from, 7, usize::MAX).unwrap();
        let end = (from as usize + 6).min(40);
        assert_eq!(got, &written[from as usize - 1..end], "from {from}");
    }
    // Byte budget: 100-byte payloads are 136-byte frames; 300 bytes holds 2.
    assert_eq!(wal.read_from(5, 100, 300).unwrap().len(), 2);
    // At least one record even when it alone exceeds the budget.
    assert_eq!(wal.read_from(5, 100, 1).unwrap(), &written[4..5]);
    assert!(wal.read_from(41, 10, 1 << 20).unwrap().is_empty());
    assert!(wal.read_from(5, 0, 1 << 20).unwrap().is_empty());
    wal.close().unwrap();
    let (_wal, got) = reopen(dir.path(), SEG).unwrap();
    assert_eq!(got, written);
}

#[test]
fn index_gaps_are_rejected_and_nothing_is_written() {
    let (dir, wal) = fresh();
    write_batches(&wal, 10, &singles(3, 8)); // a fresh log may start anywhere
    assert_eq!(wal.first_index(), 10);
    for bad in [
        vec![rec(14, 1)],
        vec![rec(12, 1)],
        vec![rec(13, 1), rec(15, 1)],
    ] {
        assert!(matches!(
            wal.append(bad).wait(),
            Err(WalError::IndexGap { .. })
        ));
    }
    assert!(matches!(
        wal.append(vec![rec(20, 1)]).wait(),
        Err(WalError::IndexGap {
            expected: 13,
            got: 20
        })
    ));
    wal.close().unwrap();
    let (wal, got) = reopen(dir.path(), SEG).unwrap();
    assert_eq!(
        got.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    assert!(matches!(
        wal.append(vec![rec(1, 1)]).wait(),
        Err(WalError::IndexGap { expected: 13, .. })
    ));
}

#[test]
fn truncate_after_returns_the_removed_tail_and_survives_reopen() {
    let (dir, wal) = fresh();
    let written = write_batches(&wal, 1, &singles(30, 100));
    let segments_before = segment_files(dir.path()).len();
    let removed = wal.truncate_after(12).unwrap();
    assert_eq!(removed, &written[12..]);
    assert_eq!((wal.last_index(), wal.durable_index()), (12, 12));
    assert!(segment_files(dir.path()).len() < segments_before);
    assert!(wal.truncate_after(12).unwrap().is_empty()); // nothing past the end
    assert!(wal.truncate_after(50).unwrap().is_empty());
    // The log continues at 13 with new content (a new leader's entries).
    let mut newer = rec(13, 50);
    newer.epoch = 99;
    wal.append(vec![newer.clone()]).wait().unwrap();
    wal.close().unwrap();

    let (_wal, got) = reopen(dir.path(), SEG).unwrap();
    assert_eq!(&got[..12], &written[..12]);
    assert_eq!(got[12], newer);
    assert_eq!(got.len(), 13);
}

#[test]
fn truncate_to_empty_pins_the_next_index() {
    let (dir, wal) = fresh();
    write_batches(&wal, 5, &singles(5, 10));
    assert_eq!(wal.truncate_after(4).unwrap().len(), 5);
    assert_eq!((wal.first_index(), wal.last_index()), (5, 4));
    // Nothing lies past 3 in an empty log: a no-op that keeps the pinned next index.
    assert!(wal.truncate_after(3).unwrap().is_empty());
    assert_eq!(wal.last_index(), 4);
    wal.close().unwrap();
    let (wal, got) = reopen(dir.path(), SEG).unwrap();
    assert!(got.is_empty());
    assert_eq!((wal.first_index(), wal.last_index()), (5, 4));
    assert!(matches!(
        wal.append(vec![rec(1, 1)]).wait(),
        Err(WalError::IndexGap {
            expected: 5,
            got: 1
        })
    ));
    write_batches(&wal, 5, &singles(2, 10));
}

#[test]
fn purge_before_deletes_whole_segments_and_first_index_survives_reopen() {
    let (dir, wal) = fresh();
    let written = write_batches(&wal, 1, &singles(40, 100));
    let before = segment_files(dir.path());
    wal.purge_before(25).unwrap();
    assert_eq!(wal.first_index(), 25);
    let after = segment_files(dir.path());
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    // The oldest remaining segment still holds record 25: only whole segments go.
    let oldest_first = u64::from_str_radix(&after[0][17..33], 16).unwrap();
    assert!(oldest_first <= 25 && oldest_first > 1, "{after:?}");
    assert!(matches!(
        wal.read_from(24, 10, 1 << 20),
        Err(WalError::Purged {
            requested: 24,
            first: 25
        })
    ));
    assert_eq!(read_all(&wal), &written[24..]);
    wal.purge_before(3).unwrap(); // behind the purge point: nothing to do
    assert_eq!(wal.first_index(), 25);
    wal.close().unwrap();

    let (wal, got) = reopen(dir.path(), SEG).unwrap();
    assert_eq!(wal.first_index(), 25);
    assert_eq!(got, &written[24..]);
    assert!(matches!(
        wal.read_from(1, 10, 1 << 20),
        Err(WalError::Purged { .. })
    ));
}

#[test]
fn purge_past_the_end_empties_the_log_and_pins_the_next_index() {
    let (dir, wal) = fresh();
    write_batches(&wal, 1, &singles(10, 100));
    wal.purge_before(101).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (101, 100));
    assert!(segment_files(dir.path()).is_empty());
    wal.close().unwrap();
    let (wal, got) = reopen(dir.path(), SEG).unwrap();
    assert!(got.is_empty());
    assert_eq!(wal.first_index(), 101);
    let more = write_batches(&wal, 101, &singles(3, 10));
    wal.close().unwrap();
    assert_eq!(reopen(dir.path(), SEG).unwrap().1, more);
}

#[test]
fn reset_to_drops_everything_and_the_next_append_starts_there() {
    let (dir, wal) = fresh();
    write_batches(&wal, 1, &singles(20, 100));
    wal.save_hard_state(&HardState {
        epoch: 4,
        vote: b"v".to_vec(),
    })
    .unwrap();
    wal.reset_to(1000).unwrap();
    assert_eq!(
        (wal.first_index(), wal.last_index(), wal.durable_index()),
        (1000, 999, 999)
    );
    assert!(segment_files(dir.path()).is_empty());
    assert!(matches!(
        wal.append(vec![rec(21, 1)]).wait(),
        Err(WalError::IndexGap { expected: 1000, .. })
    ));
    let more = write_batches(&wal, 1000, &singles(3, 10));
    wal.close().unwrap();
    let (wal, got) = reopen(dir.path(), SEG).unwrap();
    assert_eq!(got, more);
    assert_eq!(wal.hard_state().epoch, 4, "reset keeps the hard state");
}

#[test]
fn hard_state_round_trips_across_reopen() {
    let (dir, wal) = fresh();
    assert_eq!(wal.hard_state(), HardState::default());
    let hs = HardState {
        epoch: 7,
        vote: b"term=7;voted_for=2".to_vec(),
    };
    wal.save_hard_state(&hs).unwrap();
    assert_eq!(wal.hard_state(), hs);
    let too_big = HardState {
        epoch: 8,
        vote: vec![0; MAX_VOTE_BYTES + 1],
    };
    assert!(matches!(
        wal.save_hard_state(&too_big),
        Err(WalError::VoteTooLarge { .. })
    ));
    write_batches(&wal, 1, &singles(3, 10));
    wal.close().unwrap();
    let (wal, _) = reopen(dir.path(), SEG).unwrap();
    assert_eq!(wal.hard_state(), hs);

    // A damaged state file is corruption, not a silent reset of the vote.
    wal.close().unwrap();
    let state = dir.path().join("wal.state");
    flip_bit(&state, 20, 3);
    let err = Wal::open(opts(dir.path(), SEG)).err().unwrap();
    assert!(err.is_corruption(), "{err}");
}

#[test]
fn position_describes_the_current_segment() {
    let (dir, wal) = fresh();
    write_batches(&wal, 1, &singles(12, 100));
    let p = wal.position();
    let on_disk = segment_files(dir.path());
    assert_eq!(p.segments, on_disk.len());
    assert_eq!(&p.current_segment, on_disk.last().unwrap());
    assert_eq!(
        p.current_offset,
        fs::metadata(dir.path().join(&p.current_segment))
            .unwrap()
            .len()
    );
    let total: u64 = on_disk
        .iter()
        .map(|n| fs::metadata(dir.path().join(n)).unwrap().len())
        .sum();
    assert_eq!(
        (p.total_bytes, p.first_index, p.last_index, p.durable_index),
        (total, 1, 12, 12)
    );
}

#[test]
fn dump_prints_one_line_per_record_and_marks_bad_ones() {
    let (dir, wal) = fresh();
    write_batches(&wal, 1, &singles(12, 100));
    wal.close().unwrap();
    let frames = layout(dir.path()); // parses every line, asserting crc=ok
    assert_eq!(
        frames.iter().map(|f| f.index).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    assert!(frames.iter().all(|f| f.len == 100));
    let first = &frames[0];
    assert_eq!(first.offset, 64);

    flip_bit(&first.file, first.offset + 40, 0);
    let mut out = Vec::new();
    dump(dir.path(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 12);
    let line = text.lines().next().unwrap();
    assert!(
        line.contains("offset=64 index=1 epoch=1 len=100 crc=bad (checksum mismatch"),
        "{line}"
    );
}

#[test]
fn a_damaged_segment_header_is_corruption_at_offset_zero() {
    let (dir, wal) = fresh();
    write_batches(&wal, 1, &singles(12, 100));
    wal.close().unwrap();
    let victim = dir.path().join(&segment_files(dir.path())[1]);
    flip_bit(&victim, 30, 1);
    match verify(dir.path()).unwrap_err() {
        WalError::Corrupt { file, offset, .. } => assert_eq!((file, offset), (victim, 0)),
        other => panic!("{other:?}"),
    }
}
