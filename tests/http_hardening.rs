//! The HTTP port under attack and overload (issue 9): a connection cap, head, body and idle
//! timeouts, early refusal of an oversized declared body, a bounded metrics label set, strict
//! query decoding; and the start-up checks that came with it (a data dir that is a file, a
//! zero checkpoint interval, a huge HA heartbeat, an expired own certificate).
//!
//! The overload test (`overload_*`) drives thousands of writers and slow-head connections
//! against one node and then kills it: a small run by default, the full one with
//! `cargo test --test http_hardening -- --ignored`.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{run_to_exit, Node};

fn start(extra: &[(&str, &str)]) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("data"), extra);
    (dir, node)
}

fn connect(node: &Node) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Reads until the server closes the connection (or 15 s pass); returns what it sent and how
/// long that took.
fn read_until_closed(s: &mut TcpStream) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open for {:?} ({e}); it sent: {:?}", t.elapsed(), String::from_utf8_lossy(&out)),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends one byte every 200 ms from another thread until told to stop or the socket fails.
fn trickle(mut s: TcpStream, byte: &'static [u8]) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            if s.write_all(byte).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    stop
}

#[test]
fn connections_over_the_cap_are_refused_and_the_node_keeps_serving() {
    let (_d, node) = start(&[("MERIDIAN_HTTP_MAX_CONNECTIONS", "20")]);
    let held: Vec<TcpStream> = (0..20).map(|_| connect(&node)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // The 21st connection is answered 503 and closed at once instead of being served.
    let mut extra = connect(&node);
    let _ = write!(extra, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, took) = read_until_closed(&mut extra);
    assert_eq!(status_of(&answer), Some(503), "over the cap: {answer:?}");
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");
    // A slot frees when a held connection closes.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::http_get_status(&node.url("/health")).ok() != Some(200) {
        assert!(Instant::now() < deadline, "the node did not serve again after the held connections closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(node.log_text().contains("MERIDIAN_HTTP_MAX_CONNECTIONS"), "the refusal is not logged: {}", node.log_text());
}

#[test]
fn slow_request_head_is_cut_after_the_header_timeout() {
    let (_d, node) = start(&[("MERIDIAN_HTTP_HEADER_TIMEOUT", "1s"), ("MERIDIAN_HTTP_IDLE_TIMEOUT", "30s")]);
    let mut s = connect(&node);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    let stop = trickle(s.try_clone().unwrap(), b"a");
    let (answer, took) = read_until_closed(&mut s);
    stop.store(true, Ordering::Relaxed);
    assert!(took < Duration::from_secs(4), "a head trickled for {took:?}");
    assert_eq!(status_of(&answer), Some(408), "{answer:?}");
}

#[test]
fn idle_connection_is_closed_after_the_idle_timeout() {
    let (_d, node) = start(&[("MERIDIAN_HTTP_IDLE_TIMEOUT", "1s")]);
    // Never sends a byte.
    let (_, took) = read_until_closed(&mut connect(&node));
    assert!(took < Duration::from_secs(4), "a silent connection stayed open {took:?}");
    // Kept alive after one answer, then silent.
    let mut s = connect(&node);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, took) = read_until_closed(&mut s);
    assert_eq!(status_of(&answer), Some(200), "{answer:?}");
    assert!(took < Duration::from_secs(4), "an idle keep-alive connection stayed open {took:?}");
}

#[test]
fn never_ending_chunked_body_is_cut_with_408() {
    let (_d, node) = start(&[("MERIDIAN_HTTP_BODY_TIMEOUT", "1s")]);
    let mut s = connect(&node);
    s.write_all(b"PUT /v1/kv/endless HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let stop = trickle(s.try_clone().unwrap(), b"1\r\nx\r\n");
    let (answer, took) = read_until_closed(&mut s);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(status_of(&answer), Some(408), "{answer:?}");
    assert!(answer.contains("\"timeout\""), "{answer:?}");
    assert!(took < Duration::from_secs(4), "the body trickled for {took:?}");
    assert_eq!(common::http("GET", &node.url("/v1/kv/endless"), None).0, 404, "a cut body must not be written");
}

#[test]
fn half_sent_body_is_cut_with_408() {
    let (_d, node) = start(&[("MERIDIAN_HTTP_BODY_TIMEOUT", "1s")]);
    let mut s = connect(&node);
    s.write_all(b"PUT /v1/kv/half HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").unwrap();
    s.write_all(&[b'v'; 100]).unwrap();
    let (answer, took) = read_until_closed(&mut s);
    assert_eq!(status_of(&answer), Some(408), "{answer:?}");
    assert!(took < Duration::from_secs(4), "a half-sent body was held {took:?}");
    assert_eq!(common::http("GET", &node.url("/v1/kv/half"), None).0, 404);
}

#[test]
fn declared_length_over_the_limit_is_refused_before_the_body() {
    let (_d, node) = start(&[("MERIDIAN_MAX_VALUE_BYTES", "1024")]);
    for head in [
        "PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
        "POST /v1/txn HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500000000\r\n\r\n",
    ] {
        let mut s = connect(&node);
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        // No body byte is sent: the answer must come from the header alone.
        let (answer, _) = read_until_closed(&mut s);
        assert_eq!(status_of(&answer), Some(413), "{head:?}: {answer:?}");
        assert!(answer.contains("\"too_large\""), "{answer:?}");
    }
}

#[test]
fn made_up_methods_do_not_grow_the_metrics() {
    let (_d, node) = start(&[]);
    let before = common::http("GET", &node.url("/metrics"), None).1.len();
    for i in 0..200 {
        let method = format!("M{i:03}{}", "X".repeat(4000));
        let mut s = connect(&node);
        let _ = write!(s, "{method} /v1/kv/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let _ = read_until_closed(&mut s);
        let mut s = connect(&node);
        let _ = write!(s, "GET /no/such/path/{i}/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "p".repeat(2000));
        let _ = read_until_closed(&mut s);
    }
    let metrics = String::from_utf8(common::http("GET", &node.url("/metrics"), None).1).unwrap();
    assert!(!metrics.contains("XXXX") && !metrics.contains("pppp"), "a request's own text became a label");
    assert!(metrics.len() < before + 20_000, "metrics grew from {before} to {} bytes", metrics.len());
    assert!(metrics.contains("method=\"other\""), "unknown methods are not counted as other");
}

#[test]
fn invalid_utf8_in_the_query_is_a_bad_request() {
    let (_d, node) = start(&[]);
    common::http("PUT", &node.url("/v1/kv/a"), Some(b"1".to_vec()));
    for path in ["/v1/kv?start_after=%ff", "/v1/kv?prefix=%c3%28", "/v1/kv/a?bookmark=%fe", "/v1/kv?%ff=1"] {
        let (status, body) = common::http("GET", &node.url(path), None);
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("bad_request"), "{path}");
    }
    // Valid percent-encoded UTF-8 is still fine.
    assert_eq!(common::http("GET", &node.url("/v1/kv?prefix=%C3%A9"), None).0, 200);
}

fn refused_at_start(env: &[(&str, &str)], variable: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut full = vec![("MERIDIAN_HTTP_ADDR", "127.0.0.1:0")];
    let data = dir.path().join("data");
    if !env.iter().any(|(k, _)| *k == "MERIDIAN_DATA_DIR") {
        full.push(("MERIDIAN_DATA_DIR", data.to_str().unwrap()));
    }
    full.extend_from_slice(env);
    let (code, _, err) = run_to_exit(&[], &full, dir.path());
    assert_eq!(code, 2, "{env:?} should exit 2; stderr: {err}");
    assert!(err.contains(variable), "{env:?}: the message does not name {variable}: {err}");
    err
}

#[test]
fn data_dir_that_is_a_file_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = refused_at_start(&[("MERIDIAN_DATA_DIR", file.to_str().unwrap())], "MERIDIAN_DATA_DIR");
    assert!(err.contains("not a directory"), "{err}");
    let below = file.join("data");
    refused_at_start(&[("MERIDIAN_DATA_DIR", below.to_str().unwrap())], "MERIDIAN_DATA_DIR");
}

#[test]
fn zero_checkpoint_interval_exits_2() {
    refused_at_start(&[("MERIDIAN_CHECKPOINT_INTERVAL", "0s")], "MERIDIAN_CHECKPOINT_INTERVAL");
}

#[test]
fn zero_or_absurd_http_limits_exit_2() {
    refused_at_start(&[("MERIDIAN_HTTP_MAX_CONNECTIONS", "0")], "MERIDIAN_HTTP_MAX_CONNECTIONS");
    refused_at_start(&[("MERIDIAN_HTTP_HEADER_TIMEOUT", "0s")], "MERIDIAN_HTTP_HEADER_TIMEOUT");
    refused_at_start(&[("MERIDIAN_HTTP_BODY_TIMEOUT", "0s")], "MERIDIAN_HTTP_BODY_TIMEOUT");
    refused_at_start(&[("MERIDIAN_HTTP_IDLE_TIMEOUT", "0s")], "MERIDIAN_HTTP_IDLE_TIMEOUT");
}

#[test]
fn huge_ha_heartbeat_exits_2_naming_the_variable() {
    let ha = |hb: &'static str, failover: &'static str| {
        vec![
            ("MERIDIAN_CLUSTER_MODE", "ha_standby"),
            ("MERIDIAN_CLUSTER_HA_ROLE", "standby"),
            ("MERIDIAN_CLUSTER_HA_PEER_ADDR", "127.0.0.1:9"),
            ("MERIDIAN_CLUSTER_BIND_ADDR", "127.0.0.1:0"),
            ("MERIDIAN_CLUSTER_HA_HEARTBEAT_MS", hb),
            ("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT", failover),
        ]
    };
    // A standby that hears nothing for an hour would still call its primary healthy.
    refused_at_start(&ha("3600000", "100h"), "MERIDIAN_CLUSTER_HA_HEARTBEAT_MS");
    refused_at_start(&ha("18446744073709551615", "30s"), "MERIDIAN_CLUSTER_HA_HEARTBEAT_MS");
    // Outside ha_standby the value is unused, but a typo still should not pass.
    refused_at_start(&[("MERIDIAN_CLUSTER_HA_HEARTBEAT_MS", "18446744073709551615")], "MERIDIAN_CLUSTER_HA_HEARTBEAT_MS");
}

#[test]
fn expired_own_certificate_is_logged_at_start() {
    use meridian_modes::transport::certs::{generate_with, GenerateOptions, Validity};
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    generate_with(&certs, &["node1".into()], &GenerateOptions { validity: Validity::Expired, ..Default::default() }).unwrap();
    let p = |f: &str| certs.join(f).to_str().unwrap().to_owned();
    let (cert, key, ca) = (p("node1.pem"), p("node1-key.pem"), p("ca.pem"));
    let bind = format!("127.0.0.1:{}", common::free_port());
    let node = Node::start(
        &dir.path().join("data"),
        &[
            ("MERIDIAN_CLUSTER_TLS_ENABLED", "true"),
            ("MERIDIAN_CLUSTER_TLS_CERT_FILE", &cert),
            ("MERIDIAN_CLUSTER_TLS_KEY_FILE", &key),
            ("MERIDIAN_CLUSTER_TLS_CA_FILE", &ca),
            ("MERIDIAN_CLUSTER_BIND_ADDR", &bind),
        ],
    );
    let log = node.log_text();
    let line = log.lines().find(|l| l.contains("expired")).unwrap_or_else(|| panic!("no expiry warning in the log:\n{log}"));
    assert!(line.contains("WARN") && line.contains("node1.pem"), "{line}");
}

// ---- overload ----

/// The value a writer puts for its `seq`-th write: recognisable byte for byte afterwards.
fn value_for(conn: usize, seq: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{conn}:{seq}:").into_bytes();
    let fill = (conn as u64).wrapping_mul(31).wrapping_add(seq) as u8;
    v.resize(len, fill);
    v
}

fn parse_value(v: &[u8]) -> Option<(usize, u64)> {
    let head = String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned();
    let mut parts = head.splitn(3, ':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[derive(Default)]
struct Tally {
    answers: Mutex<HashMap<u16, u64>>,
    /// Connections the server closed (or reset) without an answer.
    dropped: AtomicU64,
    /// Per writer: the last acknowledged sequence number.
    acked: Mutex<HashMap<usize, u64>>,
}

impl Tally {
    fn answer(&self, status: u16) {
        *self.answers.lock().unwrap().entry(status).or_default() += 1;
    }
}

/// One HTTP/1.1 exchange on a kept-alive connection: the status and whether the server will
/// close the connection.
async fn exchange(s: &mut tokio::net::TcpStream, head: &str, body: &[u8]) -> std::io::Result<(u16, bool)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let close = head.contains("connection: close");
    let mut have = buf.len() - head_end;
    while have < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok((status, close))
}

/// Writes `c<conn>` over and over on kept-alive connections until `stop`, recording answers
/// and acknowledgements. Reconnects (after a pause) when the server closes the connection.
async fn writer(port: u16, conn: usize, value_len: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tally.dropped.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let head = format!("PUT /v1/kv/c{conn} HTTP/1.1\r\nHost: x\r\nContent-Length: {value_len}\r\n\r\n");
            match tokio::time::timeout(Duration::from_secs(30), exchange(&mut s, &head, &value_for(conn, seq, value_len))).await {
                Ok(Ok((status, close))) => {
                    tally.answer(status);
                    if status == 200 {
                        tally.acked.lock().unwrap().insert(conn, seq);
                    }
                    if close {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        break;
                    }
                }
                _ => {
                    tally.dropped.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
}

/// Opens a connection, sends part of a head one byte a second, and starts again when cut.
async fn slow_head(port: u16, stop: Arc<AtomicBool>, cuts: Arc<AtomicU64>) {
    use tokio::io::AsyncWriteExt;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.is_err() {
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if s.write_all(b"a").await.is_err() {
                cuts.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)?.parse().ok()).unwrap_or(1024)
}

/// Writers and slow heads against one node for `secs`, a plain GET timed during it, then
/// kill -9 under load and a check of every acknowledged write after restart.
fn overload(writers: usize, slow: usize, secs: u64, value_len: usize, max_rss_mib: u64) {
    // This process holds one descriptor per connection; the node as many plus its storage.
    let needed = (writers + slow) as u64 + 256;
    assert!(open_files_limit() >= needed, "this test needs `ulimit -n` of at least {needed} (it is {})", open_files_limit());
    let dir = tempfile::tempdir().unwrap();
    let max_value = value_len.to_string();
    let mut node = Node::start(&dir.path().join("data"), &[("MERIDIAN_MAX_VALUE_BYTES", &max_value), ("MERIDIAN_LOG_LEVEL", "warn")]);
    let port = node.port;
    common::http("PUT", &node.url("/v1/kv/probe"), Some(b"here".to_vec()));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut tasks = Vec::new();
    for conn in 0..writers {
        tasks.push(rt.spawn(writer(port, conn, value_len, tally.clone(), stop.clone())));
    }
    for _ in 0..slow {
        tasks.push(rt.spawn(slow_head(port, stop.clone(), cuts.clone())));
    }
    let started = Instant::now();
    // A plain GET halfway through, on its own connection.
    std::thread::sleep(Duration::from_secs(secs / 2));
    let t = Instant::now();
    let probe = common::http_get_status(&node.url("/v1/kv/probe"));
    let probe_latency = t.elapsed();
    std::thread::sleep(Duration::from_secs(secs - secs / 2));
    // kill -9 while the writers are still going: every write acknowledged so far must survive.
    let hwm = vm_hwm_kib(node.pid());
    let acked: HashMap<usize, u64> = tally.acked.lock().unwrap().clone();
    let dropped = tally.dropped.load(Ordering::Relaxed);
    node.kill9();
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    rt.shutdown_timeout(Duration::from_secs(5));
    let answers = tally.answers.lock().unwrap().clone();
    let total: u64 = answers.values().sum();
    println!(
        "overload: {writers} writers x {value_len} B + {slow} slow heads for {:.1}s: answers {answers:?} ({:.0}/s), \
         connections closed without an answer before the kill {dropped}, slow heads cut {}, peak RSS (VmHWM) {} MiB, \
         GET during load {:?} in {probe_latency:?}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        cuts.load(Ordering::Relaxed),
        hwm / 1024,
        probe,
    );
    assert!(answers.keys().all(|s| [200, 503, 408].contains(s)), "unexpected answers: {answers:?}");
    assert!(hwm / 1024 < max_rss_mib, "peak RSS {} MiB is over the stated {max_rss_mib} MiB", hwm / 1024);
    assert!(answers.get(&200).copied().unwrap_or(0) > 0, "no write was acknowledged: {answers:?}");
    assert_eq!(probe.ok(), Some(200), "the plain GET during the load did not answer");

    node.restart();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let lost: Vec<String> = rt.block_on(async {
        let c = reqwest::Client::new();
        let mut lost = Vec::new();
        for (conn, seq) in &acked {
            let r = c.get(node.url(&format!("/v1/kv/c{conn}"))).send().await.unwrap();
            let status = r.status();
            let v = r.bytes().await.unwrap();
            match (status.as_u16(), parse_value(&v)) {
                (200, Some((c, s))) if c == *conn && s >= *seq && v[..] == value_for(c, s, value_len)[..] => {}
                _ => lost.push(format!("c{conn}: acked seq {seq}, found {status} {:?}", parse_value(&v))),
            }
        }
        lost
    });
    println!("overload: {} writers had acknowledged writes; {} lost", acked.len(), lost.len());
    assert!(lost.is_empty(), "acknowledged writes lost after kill -9: {:?}", &lost[..lost.len().min(10)]);
}

#[test]
fn overload_small_keeps_answers_bounded_and_acknowledged_writes_durable() {
    // Measured 181 MiB.
    overload(200, 50, 5, 64 << 10, 768);
}

/// The figure: 2,000 writers of 64 KiB values for 60 s plus 500 slow heads. The
/// stated bound: redb's page cache (1 GiB by default, most of the measured 1,266 MiB) plus
/// what the connections hold (each at most one value in flight).
#[test]
#[ignore = "about 90 s and 2,500 connections; run with --ignored"]
fn overload_full_2000_writers_and_500_slow_heads_for_60s() {
    overload(2000, 500, 60, 64 << 10, 2048);
}
