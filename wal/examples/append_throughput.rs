//! Prints append throughput and the group-commit ratio on this machine's disk.
//!
//! `cargo run --release -p meridian-wal --example append_throughput [threads] [appends_per_thread] [payload_bytes]`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use meridian_wal::{Record, Wal, WalOptions};

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("numeric argument"))
    };
    let (threads, per_thread, payload) = (arg(1, 16), arg(2, 500), arg(3, 256));
    let dir = std::env::temp_dir().join(format!("meridian-wal-bench-{}", std::process::id()));
    let syncs = Arc::new(AtomicUsize::new(0));
    let mut opts = WalOptions::new(&dir);
    let s = syncs.clone();
    opts.on_sync = Some(Arc::new(move |_| {
        s.fetch_add(1, Ordering::Relaxed);
    }));
    let (wal, _) = Wal::open(opts).expect("open WAL");

    // Each thread appends one record at a time and waits for it, like a client
    // waiting for its write to be acknowledged. The lock only orders the enqueue.
    let next = Arc::new(Mutex::new(1u64));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (wal, next) = (wal.clone(), next.clone());
            thread::spawn(move || {
                for _ in 0..per_thread {
                    let ticket = {
                        let mut n = next.lock().unwrap();
                        let t = wal.append(vec![Record {
                            index: *n,
                            epoch: 1,
                            payload: vec![7; payload],
                        }]);
                        *n += 1;
                        t
                    };
                    ticket.wait().expect("append");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = started.elapsed();
    // on_sync runs after the tickets resolve: close (joining the writer) before counting.
    wal.close().unwrap();
    let appends = threads * per_thread;
    let syncs = syncs.load(Ordering::Relaxed);
    println!(
        "{appends} appends of {payload} B from {threads} threads in {elapsed:?}: {:.0} appends/s, {syncs} fdatasyncs ({:.1} appends per fsync)",
        appends as f64 / elapsed.as_secs_f64(),
        appends as f64 / syncs.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
