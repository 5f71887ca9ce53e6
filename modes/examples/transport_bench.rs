//! Cluster transport benchmark over loopback: request round trips (one caller, then many)
//! and one-way streaming throughput, in plaintext and with mutual TLS.
//!
//! ```text
//! cargo run --release -p meridian-modes --example transport_bench [seconds-per-case] [callers]
//! ```
//! Defaults: 3 s per case, 32 concurrent callers. Both nodes run in this process, so the
//! figures include both ends' CPU on the same machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use meridian_modes::transport::{
    certs, Handler, NodeId, RemoteError, TlsPaths, TlsSettings, TlsVersion, Transport, TransportConfig,
};
use prometheus_client::registry::Registry;

const REQUEST_BYTES: usize = 128;
const STREAM_MESSAGE_BYTES: usize = 64 << 10;

/// Echoes requests; counts one-way bytes.
#[derive(Default)]
struct Bench {
    received: AtomicU64,
}

#[async_trait]
impl Handler for Bench {
    async fn on_request(&self, _from: &NodeId, _t: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
        Ok(payload)
    }
    async fn on_message(&self, _from: &NodeId, _t: u16, payload: Bytes) {
        self.received.fetch_add(payload.len() as u64, Ordering::Relaxed);
    }
}

struct Row {
    mode: &'static str,
    case: String,
    ops_per_sec: f64,
    p50: Option<Duration>,
    p99: Option<Duration>,
    mb_per_sec: Option<f64>,
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let callers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let each = Duration::from_secs_f64(secs);

    let dir = tempfile::tempdir().expect("temp dir");
    certs::generate(dir.path(), &["node1".to_string(), "node2".to_string()]).expect("dev certificates");
    let tls = |node: &str| {
        TlsSettings::load(&TlsPaths {
            cert_file: Some(dir.path().join(format!("{node}.pem"))),
            key_file: Some(dir.path().join(format!("{node}-key.pem"))),
            ca_file: Some(dir.path().join("ca.pem")),
            verify_client: true,
            min_version: TlsVersion::V1_3,
        })
        .expect("TLS settings")
    };

    let mut rows = Vec::new();
    for (mode, tls_pair) in [("plaintext", None), ("mTLS 1.3", Some((tls("node1"), tls("node2"))))] {
        let (server_tls, client_tls) = match tls_pair {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let server_handler = Arc::new(Bench::default());
        let mut cfg = TransportConfig::new("bench", "node1", "127.0.0.1:0".parse().unwrap());
        cfg.tls = server_tls;
        let server =
            Transport::start(cfg, server_handler.clone(), &mut Registry::default()).await.expect("server starts");
        let mut cfg = TransportConfig::new("bench", "node2", "127.0.0.1:0".parse().unwrap());
        cfg.tls = client_tls;
        let client =
            Transport::start(cfg, Arc::new(Bench::default()), &mut Registry::default()).await.expect("client starts");
        client.add_peer("node1".into(), server.local_addr().to_string());
        // Connect and warm up outside the measured window.
        for _ in 0..1000 {
            client.request(&"node1".to_string(), 1, Bytes::from(vec![0u8; REQUEST_BYTES]), None).await.unwrap();
        }

        rows.push(requests(mode, &client, 1, each).await);
        rows.push(requests(mode, &client, callers, each).await);
        rows.push(stream(mode, &client, &server_handler, each).await);

        client.shutdown().await;
        server.shutdown().await;
    }

    println!(
        "\nloopback, {} s per case, requests of {REQUEST_BYTES} B echoed, stream of {} KiB one-way messages\n",
        secs,
        STREAM_MESSAGE_BYTES >> 10
    );
    println!("| mode | case | ops/s | p50 | p99 | MB/s |");
    println!("|---|---|---:|---:|---:|---:|");
    let us = |d: Option<Duration>| d.map(|d| format!("{:.0} µs", d.as_secs_f64() * 1e6)).unwrap_or_else(|| "–".into());
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} |",
            r.mode,
            r.case,
            r.ops_per_sec,
            us(r.p50),
            us(r.p99),
            r.mb_per_sec.map(|m| format!("{m:.0}")).unwrap_or_else(|| "–".into())
        );
    }
}

/// `callers` tasks each send requests back to back for `each`; every round trip is timed.
async fn requests(mode: &'static str, client: &Transport, callers: usize, each: Duration) -> Row {
    let started = Instant::now();
    let until = started + each;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let t = client.clone();
            tokio::spawn(async move {
                let peer = "node1".to_string();
                let payload = Bytes::from(vec![7u8; REQUEST_BYTES]);
                let mut lat = Vec::with_capacity(1 << 16);
                while Instant::now() < until {
                    let t0 = Instant::now();
                    let r = t.request(&peer, 1, payload.clone(), None).await.expect("request");
                    lat.push(t0.elapsed());
                    assert_eq!(r.len(), REQUEST_BYTES);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied();
    Row {
        mode,
        case: format!("request, {callers} caller{}", if callers == 1 { "" } else { "s" }),
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        mb_per_sec: None,
    }
}

/// One task streams one-way messages for `each`; throughput is what the receiver's handler
/// got, measured until the last message arrived.
async fn stream(mode: &'static str, client: &Transport, server: &Bench, each: Duration) -> Row {
    let before = server.received.load(Ordering::Relaxed);
    let payload = Bytes::from(vec![3u8; STREAM_MESSAGE_BYTES]);
    let peer = "node1".to_string();
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < each {
        client.send(&peer, 2, payload.clone()).await.expect("send");
        sent += 1;
    }
    let want = before + sent * STREAM_MESSAGE_BYTES as u64;
    let drain_until = Instant::now() + Duration::from_secs(30);
    while server.received.load(Ordering::Relaxed) < want && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let got = server.received.load(Ordering::Relaxed) - before;
    assert_eq!(got, sent * STREAM_MESSAGE_BYTES as u64, "every streamed byte arrived");
    Row {
        mode,
        case: format!("one-way stream, {} KiB messages", STREAM_MESSAGE_BYTES >> 10),
        ops_per_sec: sent as f64 / elapsed.as_secs_f64(),
        p50: None,
        p99: None,
        mb_per_sec: Some(got as f64 / elapsed.as_secs_f64() / 1e6),
    }
}
