//! Running out of file descriptors (EMFILE) is not a storage failure. The process lowers its
//! own `RLIMIT_NOFILE` and holds every descriptor it may open, so the WAL meets EMFILE where
//! it opens files: `wal.state.tmp` (purge) and `<segment>.wal.tmp` (rotation). The WAL must
//! not poison itself: a purge answers a retryable error, an append that needs a new segment
//! waits, and both work once descriptors are free.
//!
//! One test in this file on purpose: the descriptor limit is per process, and the test
//! harness runs the tests of one file in one process.

mod common;

use std::fs::File;
use std::time::Duration;

use common::{opts, read_all, write_batches};
use meridian_wal::{Record, Wal};

/// Lowers the soft descriptor limit, then opens `/dev/null` until EMFILE. Dropping the
/// returned files frees the descriptors.
fn exhaust_descriptors() -> Vec<File> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = lim.rlim_cur.min(256);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let mut hog = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return hog,
            Err(e) => panic!("unexpected error while exhausting descriptors: {e}"),
        }
    }
}

#[test]
fn out_of_descriptors_a_purge_is_retryable_and_an_append_waits_until_they_are_back() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(opts(dir.path(), 4096)).unwrap();
    write_batches(&wal, 1, &[vec![1000], vec![1000], vec![1000]]);

    let hog = exhaust_descriptors();

    // A purge must rewrite wal.state through a new file: it fails, and says it may be retried.
    let err = wal.purge_before(3).expect_err("a purge cannot open wal.state.tmp without a descriptor");
    assert!(err.to_string().contains("Too many open files"), "{err}");
    assert!(err.to_string().contains("retry"), "the error must say the purge can be retried: {err}");
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(wal.first_index(), 1, "a purge that failed must not hide records");

    // The WAL is not poisoned: an append that fits the current segment goes through
    // (and fills it past its 4 KiB, so the next append needs a new segment).
    let small = Record { index: 4, epoch: 1, payload: vec![4; 1000] };
    wal.append(vec![small]).wait().expect("an append that needs no new file must still succeed");

    // This one needs a new segment file: it waits for a descriptor instead of failing.
    let big: Vec<Record> = (5..=8).map(|i| Record { index: i, epoch: 1, payload: vec![i as u8; 1500] }).collect();
    let waiter = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.append(big).wait())
    };
    std::thread::sleep(Duration::from_millis(800));
    assert!(!waiter.is_finished(), "the append finished while no descriptor was free: {:?}", waiter.join().unwrap());

    drop(hog);
    assert_eq!(waiter.join().unwrap().expect("the append resumes once descriptors are free"), 8);
    wal.purge_before(3).expect("the purge works again");
    write_batches(&wal, 9, &[vec![2000], vec![2000]]);
    wal.close().unwrap();

    let (wal, _) = Wal::open(opts(dir.path(), 4096)).unwrap();
    let got: Vec<u64> = read_all(&wal).iter().map(|r| r.index).collect();
    assert_eq!(got, (3..=10).collect::<Vec<_>>());
}
