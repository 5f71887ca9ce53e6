//! Group commit: concurrent appends share fdatasyncs, in the order they were enqueued.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use meridian_wal::{SyncInfo, Wal};

const THREADS: usize = 16;
const APPENDS_PER_THREAD: usize = 10;

/// Counts syncs; holds the first sync until every thread has enqueued once, so
/// at least one batch is guaranteed to carry many appends whatever the disk speed.
#[derive(Default)]
struct SyncProbe {
    syncs: AtomicUsize,
    records: AtomicUsize,
    enqueued: Mutex<usize>,
    all_enqueued: Condvar,
}

impl SyncProbe {
    fn on_sync(&self, info: SyncInfo) {
        if self.syncs.fetch_add(1, Ordering::SeqCst) == 0 {
            let enqueued = self.enqueued.lock().unwrap();
            let (_guard, timeout) = self
                .all_enqueued
                .wait_timeout_while(enqueued, Duration::from_secs(10), |n| *n < THREADS)
                .unwrap();
            assert!(!timeout.timed_out(), "threads never enqueued");
        }
        self.records.fetch_add(info.records, Ordering::SeqCst);
    }

    fn note_enqueued(&self) {
        *self.enqueued.lock().unwrap() += 1;
        self.all_enqueued.notify_all();
    }
}

#[test]
fn concurrent_appends_share_fsyncs_and_all_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(SyncProbe::default());
    let mut o = opts(dir.path(), 4096);
    let p = probe.clone();
    o.on_sync = Some(Arc::new(move |info| p.on_sync(info)));
    let (wal, _) = Wal::open(o).unwrap();

    // Turn-based enqueue: thread k takes turns k, k+16, k+32, ... so the log
    // order is fixed, while each thread waits for its ticket outside the lock.
    let turn = Arc::new((Mutex::new(0usize), Condvar::new()));
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|k| {
            let (wal, turn, probe) = (wal.clone(), turn.clone(), probe.clone());
            thread::spawn(move || {
                for j in 0..APPENDS_PER_THREAD {
                    let my_turn = j * THREADS + k;
                    let ticket = {
                        let (lock, cv) = &*turn;
                        let mut t = cv
                            .wait_while(lock.lock().unwrap(), |t| *t != my_turn)
                            .unwrap();
                        let index = my_turn as u64 + 1;
                        let ticket = wal.append(vec![rec(index, 100 + k * 10)]);
                        *t += 1;
                        cv.notify_all();
                        ticket
                    };
                    if j == 0 {
                        probe.note_enqueued();
                    }
                    assert_eq!(ticket.wait().unwrap(), my_turn as u64 + 1);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let appends = THREADS * APPENDS_PER_THREAD;
    assert_eq!(wal.durable_index(), appends as u64);
    assert!(
        wal.position().segments > 1,
        "small segments should have rotated"
    );
    // on_sync runs after a batch's tickets resolve: close (joining the writer) before counting.
    wal.close().unwrap();
    let syncs = probe.syncs.load(Ordering::SeqCst);
    println!(
        "{appends} appends from {THREADS} threads: {syncs} fdatasyncs in {:?}",
        started.elapsed()
    );
    assert!(
        syncs < appends,
        "{syncs} fsyncs for {appends} appends: no group commit"
    );
    assert_eq!(probe.records.load(Ordering::SeqCst), appends);

    let (_wal, got) = reopen(dir.path(), 4096).unwrap();
    let expected: Vec<_> = (0..appends)
        .map(|t| rec(t as u64 + 1, 100 + (t % THREADS) * 10))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn linger_gathers_appends_into_fewer_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let syncs = Arc::new(AtomicUsize::new(0));
    let mut o = opts(dir.path(), 1 << 20);
    o.max_batch_wait = Duration::from_millis(50);
    let s = syncs.clone();
    o.on_sync = Some(Arc::new(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
    }));
    let (wal, _) = Wal::open(o).unwrap();
    // Enqueued back to back, well inside one linger window.
    let tickets: Vec<_> = (1..=20).map(|i| wal.append(vec![rec(i, 10)])).collect();
    for t in tickets {
        t.wait().unwrap();
    }
    wal.close().unwrap();
    assert!(syncs.load(Ordering::SeqCst) < 20);
}

#[test]
fn max_batch_bytes_splits_a_backlog_into_several_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let mut o = opts(dir.path(), 1 << 20);
    o.max_batch_bytes = 1024;
    o.max_batch_wait = Duration::from_millis(50);
    let s = sizes.clone();
    o.on_sync = Some(Arc::new(move |info: SyncInfo| {
        s.lock().unwrap().push(info.bytes)
    }));
    let (wal, _) = Wal::open(o).unwrap();
    let tickets: Vec<_> = (1..=20).map(|i| wal.append(vec![rec(i, 200)])).collect();
    for t in tickets {
        t.wait().unwrap();
    }
    wal.close().unwrap();
    let sizes = sizes.lock().unwrap();
    // 20 frames of 232 bytes: at most 4 fit in 1024 bytes.
    assert!(sizes.len() >= 5, "{sizes:?}");
    assert!(sizes.iter().all(|&b| b <= 1024), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_tickets_are_send_futures() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(opts(dir.path(), 4096)).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=50u64 {
        // Enqueued here, in order; awaited on whichever worker runs the task.
        let ticket = wal.append(vec![rec(i, 64)]);
        tasks.spawn(async move { (i, ticket.await) });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done.unwrap();
        assert_eq!(r.unwrap(), i);
    }
    let mut durable = wal.subscribe_durable();
    assert_eq!(*durable.borrow_and_update(), 50);
    let wal2 = wal.clone();
    tokio::task::spawn_blocking(move || wal2.close())
        .await
        .unwrap()
        .unwrap();
}
