//! The cluster port serves only the configured peers (issue 9, reproductions 1 and 5): a
//! stranger that speaks the protocol — from another address in the plain set-up, with a wrong
//! cluster secret, or with a same-CA certificate for another host under mTLS — cannot fence,
//! forward or otherwise reach the HA handlers, and a flood of silent connections from a
//! stranger does not lock the real standby out or flood the log.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use common::ha::{tls_env, wait_role, wait_streaming, HaOpts, HaPair};
use common::{free_port, http, http_json, Node};
use meridian_modes::command::Command;
use meridian_modes::ha::messages::{encode, Fence, Forward, FENCE, FORWARD};
use meridian_modes::transport::certs::{self, GenerateOptions};
use meridian_modes::transport::frame::{Frame, FrameKind};
use meridian_modes::transport::handshake::Hello;
use meridian_modes::transport::{
    ClusterSecret, Handler, NodeId, RemoteError, TlsPaths, TlsSettings, TlsVersion, Transport, TransportConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CLUSTER: &str = "meridian";
const SECRET: &str = "correct-horse-battery-staple-42";
const STRANGER_KEY: &str = "planted-by-a-stranger";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn cluster_addr(n: &Node) -> SocketAddr {
    let v = &n.env.iter().find(|(k, _)| k == "MERIDIAN_CLUSTER_BIND_ADDR").expect("cluster node").1;
    v.parse().unwrap()
}

fn epoch(n: &Node) -> u64 {
    http_json("GET", &n.url("/admin/cluster/status"))["epoch"].as_u64().expect("status has an epoch")
}

fn fence_payload() -> Bytes {
    encode(&Fence { epoch: u64::MAX, from: "stranger".into() })
}

fn forward_payload() -> Bytes {
    encode(&Forward { epoch: 0, command: Command::Put { key: STRANGER_KEY.into(), value: vec![b'x'; 16], if_revision: None } })
}

/// The pair took no harm: same epoch, same roles, still writable (in sync mode, so the
/// standby took the write too), and nothing the stranger forwarded was written.
fn assert_pair_unharmed(a: &Node, b: &Node, epoch_before: u64, what: &str) {
    std::thread::sleep(Duration::from_millis(500));
    let (ea, eb) = (epoch(a), epoch(b));
    assert_eq!(ea, epoch_before, "{what}: the primary's epoch moved from {epoch_before} to {ea}");
    assert_eq!(eb, epoch_before, "{what}: the standby's epoch moved from {epoch_before} to {eb}");
    let (status, _) = http("GET", &a.url(&format!("/v1/kv/{STRANGER_KEY}?consistency=local")), None);
    assert_eq!(status, 404, "{what}: the stranger's forwarded write was committed");
    assert_eq!(common::ha::role(a), "primary", "{what}: the primary lost its role");
    let (status, body) = http("PUT", &a.url(&format!("/v1/kv/after-{}", what.replace(' ', "-"))), Some(b"v".to_vec()));
    assert_eq!(status, 200, "{what}: the pair is not writable: {}", String::from_utf8_lossy(&body));
}

/// A TCP connection from `from` (another loopback address than the pair's).
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// The next frame, or `None` when the connection closes, fails or stays silent for 3 s.
async fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok(Some(f)) = Frame::parse(buf, 1 << 20) {
            return Some(f);
        }
        match tokio::time::timeout_at(deadline, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

async fn write_frame(s: &mut TcpStream, f: &Frame) -> std::io::Result<()> {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    s.write_all(&b).await
}

/// What a raw stranger got: the handshake's answer, then the answers to FENCE and FORWARD
/// (sent even when the handshake was refused).
#[derive(Debug)]
struct Attempt {
    handshake: String,
    admitted: bool,
    /// What the node answered to the FENCE and FORWARD sent after the handshake; only
    /// printed (with `{:?}`), to show what a stranger got.
    #[allow(dead_code)]
    fence: String,
    #[allow(dead_code)]
    forward: String,
}

fn describe(f: Option<Frame>) -> String {
    match f {
        None => "connection closed".into(),
        Some(f) if f.kind == FrameKind::HandshakeReject => {
            format!("HandshakeReject code {}: {}", f.payload[0], String::from_utf8_lossy(&f.payload[1..]))
        }
        Some(f) => format!("{:?} {}", f.kind, String::from_utf8_lossy(&f.payload)),
    }
}

/// A stranger speaking the protocol by hand: a handshake with the right cluster id (and no
/// secret), then FENCE with epoch 2^64-1 and a FORWARD.
async fn raw_stranger(from: IpAddr, to: SocketAddr) -> Attempt {
    let Ok(mut s) = connect_from(from, to).await else {
        return Attempt { handshake: "connect refused".into(), admitted: false, fence: String::new(), forward: String::new() };
    };
    let mut buf = BytesMut::new();
    let _ = write_frame(&mut s, &Hello::new(CLUSTER, "stranger").to_frame()).await;
    let reply = read_frame(&mut s, &mut buf).await;
    let admitted = reply.as_ref().is_some_and(|f| f.kind == FrameKind::HandshakeAck);
    let handshake = describe(reply);
    let mut answers = Vec::new();
    for (id, msg_type, payload) in [(1, FENCE, fence_payload()), (2, FORWARD, forward_payload())] {
        answers.push(match write_frame(&mut s, &Frame::new(FrameKind::Request, msg_type, id, payload)).await {
            Ok(()) => describe(read_frame(&mut s, &mut buf).await),
            Err(e) => format!("send failed: {e}"),
        });
    }
    let forward = answers.pop().unwrap();
    let fence = answers.pop().unwrap();
    Attempt { handshake, admitted, fence, forward }
}

struct Silent;

#[async_trait]
impl Handler for Silent {
    async fn on_request(&self, _: &NodeId, _: u16, _: Bytes) -> Result<Bytes, RemoteError> {
        Err(RemoteError::new("unknown_message", "stranger"))
    }
    async fn on_message(&self, _: &NodeId, _: u16, _: Bytes) {}
}

/// A stranger using the transport library itself (TLS and the secret as configured), sending
/// FENCE and FORWARD to `to`. Returns each outcome.
async fn library_stranger(cfg: TransportConfig, to: SocketAddr) -> (Result<Bytes, String>, Result<Bytes, String>) {
    let mut registry = prometheus_client::registry::Registry::default();
    let t = Transport::start(cfg, Arc::new(Silent), &mut registry).await.unwrap();
    let target: NodeId = "target".into();
    t.add_peer_alias(target.clone(), to.to_string());
    let wait = Some(Duration::from_secs(3));
    let fence = t.request(&target, FENCE, fence_payload(), wait).await.map_err(|e| e.to_string());
    // The peer backs off after a refused handshake; let the next attempt happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forward = t.request(&target, FORWARD, forward_payload(), wait).await.map_err(|e| e.to_string());
    t.shutdown().await;
    (fence, forward)
}

fn stranger_config(node: &str) -> TransportConfig {
    let mut cfg = TransportConfig::new(CLUSTER, node, "127.0.0.1:0".parse().unwrap());
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    cfg
}

fn ha_opts(extra: Vec<(&'static str, String)>) -> HaOpts {
    HaOpts { sync_mode: "sync", heartbeat_ms: 500, failover: "5s", extra, ..HaOpts::default() }
}

#[test]
fn stranger_from_another_address_cannot_fence_or_forward_in_the_plain_setup() {
    let pair = HaPair::start(ha_opts(vec![]));
    let before = epoch(&pair.a);
    let stranger_ip: IpAddr = "127.0.0.2".parse().unwrap();
    let got = rt().block_on(raw_stranger(stranger_ip, cluster_addr(&pair.a)));
    println!("stranger from {stranger_ip}: {got:?}");
    assert_pair_unharmed(&pair.a, &pair.b, before, "plain stranger");
    assert!(!got.admitted, "the stranger's handshake was acknowledged: {got:?}");
    assert!(got.handshake.contains("HandshakeReject"), "the stranger was not told why: {got:?}");
    assert!(pair.a.log_text().contains("not_a_peer"), "no refusal logged:\n{}", pair.a.log_text());
}

#[test]
fn stranger_without_the_cluster_secret_is_refused() {
    let pair = HaPair::start(ha_opts(vec![("MERIDIAN_CLUSTER_SECRET", SECRET.into())]));
    let before = epoch(&pair.a);
    // From the pair's own address: with a secret, the address proves nothing.
    let no_secret = rt().block_on(raw_stranger("127.0.0.1".parse().unwrap(), cluster_addr(&pair.a)));
    println!("stranger without a secret: {no_secret:?}");
    let mut cfg = stranger_config("stranger");
    cfg.secret = Some(ClusterSecret::new(b"not-the-cluster-secret-at-all").unwrap());
    let (fence, forward) = rt().block_on(library_stranger(cfg, cluster_addr(&pair.a)));
    println!("stranger with a wrong secret: FENCE {fence:?}, FORWARD {forward:?}");
    assert_pair_unharmed(&pair.a, &pair.b, before, "secret stranger");
    assert!(!no_secret.admitted, "a client without the secret was admitted: {no_secret:?}");
    assert!(fence.is_err() && forward.is_err(), "a client with a wrong secret got answers: {fence:?} {forward:?}");
}

/// Certificates whose SANs tell the nodes apart: each names its node and its own loopback
/// address, all from one CA; `c` is a node of the same CA that is nobody's peer.
fn distinct_certs(dir: &Path) {
    for (node, ip) in [("node-a", "127.0.0.2"), ("node-b", "127.0.0.3"), ("c", "127.0.0.4")] {
        certs::generate_with(dir, &[node.to_string()], &GenerateOptions { sans: Some(vec![ip.into()]), ..Default::default() })
            .unwrap();
    }
}

fn direct_node(dir: &Path, id: &str, role: &str, bind: SocketAddr, peer: SocketAddr, certs: &Path) -> Node {
    let mut env: Vec<(String, String)> = [
        ("MERIDIAN_CLUSTER_MODE", "ha_standby".to_string()),
        ("MERIDIAN_CLUSTER_NODE_ID", id.into()),
        ("MERIDIAN_CLUSTER_BIND_ADDR", bind.to_string()),
        ("MERIDIAN_CLUSTER_HA_ROLE", role.into()),
        ("MERIDIAN_CLUSTER_HA_PEER_ADDR", peer.to_string()),
        ("MERIDIAN_CLUSTER_HA_SYNC_MODE", "sync".into()),
        ("MERIDIAN_CLUSTER_HA_HEARTBEAT_MS", "500".into()),
        ("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT", "5s".into()),
        ("MERIDIAN_CLUSTER_HA_SYNC_TIMEOUT", "1s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(tls_env(certs, id));
    Node::start_env(&dir.join(id), env)
}

#[test]
fn same_ca_certificate_for_another_host_is_refused_under_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    distinct_certs(&certs_dir);
    let a_addr: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let b_addr: SocketAddr = format!("127.0.0.3:{}", free_port()).parse().unwrap();
    let a = direct_node(dir.path(), "node-a", "primary", a_addr, b_addr, &certs_dir);
    let b = direct_node(dir.path(), "node-b", "standby", b_addr, a_addr, &certs_dir);
    wait_role(&a, "primary", Duration::from_secs(20));
    wait_streaming(&b, Duration::from_secs(20));
    let before = epoch(&a);

    let mut cfg = stranger_config("c");
    let paths = TlsPaths {
        cert_file: Some(certs_dir.join("c.pem")),
        key_file: Some(certs_dir.join("c-key.pem")),
        ca_file: Some(certs_dir.join("ca.pem")),
        verify_client: true,
        min_version: TlsVersion::V1_3,
    };
    cfg.tls = Some(TlsSettings::load(&paths).unwrap());
    let (fence, forward) = rt().block_on(library_stranger(cfg, a_addr));
    println!("same-CA stranger `c` (SANs c, 127.0.0.4): FENCE {fence:?}, FORWARD {forward:?}");
    // The real peers still work: the sync write in here needs the standby's flush.
    assert_pair_unharmed(&a, &b, before, "mtls stranger");
    assert!(fence.is_err() && forward.is_err(), "the stranger's certificate was admitted: {fence:?} {forward:?}");
    // Refused for what its certificate names, not for anything else (an older node refused
    // this stranger only because its handshake version differed).
    for r in [&fence, &forward] {
        let e = r.as_ref().unwrap_err();
        assert!(e.contains("not_a_peer") && e.contains("certificate"), "refused, but not for its certificate: {e}");
    }
}

/// Refusal lines in a node's log: the transport's refusal warnings and summaries.
fn refusal_lines(n: &Node) -> usize {
    n.log_text().lines().filter(|l| l.contains("refus")).count()
}

#[test]
fn handshake_flood_from_a_stranger_does_not_lock_the_standby_out() {
    let mut pair = HaPair::start(ha_opts(vec![]));
    let target = cluster_addr(&pair.a);
    let lines_before = refusal_lines(&pair.a);
    let flooding = Arc::new(AtomicBool::new(true));
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flood = {
        let (flooding, opened) = (flooding.clone(), opened.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let stranger: IpAddr = "127.0.0.2".parse().unwrap();
                let until = tokio::time::Instant::now() + Duration::from_secs(10);
                let mut tasks = Vec::new();
                for _ in 0..500 {
                    let opened = opened.clone();
                    tasks.push(tokio::spawn(async move {
                        // Each of the 500 holds a silent connection, renewed once a second.
                        while tokio::time::Instant::now() < until {
                            let started = tokio::time::Instant::now();
                            if let Ok(mut s) = connect_from(stranger, target).await {
                                opened.fetch_add(1, Ordering::Relaxed);
                                let mut sink = [0u8; 256];
                                let _ = tokio::time::timeout_at(until, async {
                                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                                })
                                .await;
                            }
                            tokio::time::sleep_until((started + Duration::from_secs(1)).min(until)).await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
            flooding.store(false, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    pair.b.kill9();
    pair.b.restart();
    wait_streaming(&pair.b, Duration::from_secs(8));
    let streaming_after = restarted.elapsed();
    let still_flooding = flooding.load(Ordering::SeqCst);
    let (status, body) = http("PUT", &pair.a.url("/v1/kv/during-the-flood"), Some(b"v".to_vec()));
    flood.join().unwrap();
    let lines = refusal_lines(&pair.a) - lines_before;
    println!(
        "flood: {} connections opened; standby streaming {streaming_after:?} after its restart (flood still on: {still_flooding}); sync write {status}; {lines} refusal log lines on the primary",
        opened.load(Ordering::Relaxed)
    );
    assert!(still_flooding, "the standby only streamed again after the flood ended");
    assert_eq!(status, 200, "sync write during the flood: {}", String::from_utf8_lossy(&body));
    assert!(lines < 100, "{lines} refusal log lines in 10 s");
}
