//! `meridian bench`: PUT load (or, with `--reads`, GET load at a read consistency) over HTTP
//! with a fixed number of concurrent clients for a fixed duration; prints throughput and
//! p50/p99 latency per client count.
//!
//! Each client is a task with its own keep-alive connection issuing one request at a time,
//! so "64 clients" means 64 requests in flight — the same meaning wrk's connections have.

use std::time::{Duration, Instant};

use crate::client::MeridianClient;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub url: String,
    pub token: Option<String>,
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub key_bytes: usize,
    pub value_bytes: usize,
    /// `Some(consistency)`: GET existing keys with `?consistency=` instead of PUTting.
    pub reads: Option<String>,
}

/// Keys written before a read benchmark, read round-robin.
const READ_KEYS: u64 = 1024;

fn bench_key(c: u64, i: u64, width: usize) -> String {
    format!("{:0width$x}", (c << 40) | i, width = width)
}

#[derive(Clone, Debug)]
pub struct BenchResult {
    pub clients: usize,
    pub ok: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub async fn run_one(opts: &BenchOptions, clients: usize) -> BenchResult {
    let value = vec![b'v'; opts.value_bytes];
    let deadline = Instant::now() + opts.duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        // One client object (and so one connection pool) per task: one connection each.
        let client = MeridianClient::new(&opts.url, opts.token.clone(), Duration::from_secs(10));
        let value = value.clone();
        let key_bytes = opts.key_bytes;
        let reads = opts.reads.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let result = match &reads {
                    // The keys `prepare_reads` wrote, each client starting elsewhere.
                    Some(consistency) => {
                        let key = bench_key(0, (i + c as u64 * 97) % READ_KEYS, key_bytes);
                        client.get(&format!("{}?consistency={consistency}", MeridianClient::key_path(&key))).await
                    }
                    // 16-byte keys by default: client id + counter, zero-padded.
                    None => client.put(&MeridianClient::key_path(&bench_key(c as u64, i, key_bytes)), value.clone()).await,
                };
                i += 1;
                match result {
                    Ok(_) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("bench task");
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    BenchResult {
        clients,
        ok: all.len() as u64,
        errors,
        ops_per_sec: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    }
}

/// Writes the keys a read benchmark reads.
async fn prepare_reads(opts: &BenchOptions) -> Result<(), String> {
    let client = MeridianClient::new(&opts.url, opts.token.clone(), Duration::from_secs(10));
    for i in 0..READ_KEYS {
        let key = bench_key(0, i, opts.key_bytes);
        client.put(&MeridianClient::key_path(&key), vec![b'v'; opts.value_bytes]).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub async fn run(opts: BenchOptions) -> Result<Vec<BenchResult>, String> {
    match &opts.reads {
        Some(consistency) => {
            prepare_reads(&opts).await.map_err(|e| format!("cannot write the keys to read: {e}"))?;
            println!(
                "meridian bench: GET ?consistency={consistency} of {READ_KEYS} {}-byte keys with {}-byte values, {:?} per step, against {}",
                opts.key_bytes, opts.value_bytes, opts.duration, opts.url
            );
        }
        None => println!(
            "meridian bench: PUT {}-byte keys, {}-byte values, {:?} per step, against {}",
            opts.key_bytes, opts.value_bytes, opts.duration, opts.url
        ),
    }
    println!("{:>8} {:>12} {:>10} {:>10} {:>8}", "clients", "ops/s", "p50 ms", "p99 ms", "errors");
    let mut out = Vec::new();
    for &c in &opts.clients {
        let r = run_one(&opts, c).await;
        println!("{:>8} {:>12.0} {:>10.3} {:>10.3} {:>8}", r.clients, r.ops_per_sec, r.p50_ms, r.p99_ms, r.errors);
        out.push(r);
    }
    Ok(out)
}
