//! Admission: only configured peers get past the handshake — by source address in the plain
//! set-up, by certificate host under mTLS, by the cluster secret — and the handler sees the
//! admitted peer's label; one source cannot hold every pending-handshake slot.

mod transport_support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meridian_modes::transport::certs::{self, GenerateOptions};
use meridian_modes::transport::frame::{Frame, FrameKind};
use meridian_modes::transport::handshake::{proof_frame, Challenge, Hello};
use meridian_modes::transport::secret::{Side, Transcript};
use meridian_modes::transport::{
    Admission, AllowedPeer, ClusterSecret, HandshakeError, RejectReason, TlsPaths, TlsSettings, TlsVersion,
    TransportConfig, TransportError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use transport_support::*;

const SECRET: &[u8] = b"a-test-cluster-secret-0123456789";

fn peers(list: &[(&str, &str)]) -> Admission {
    Admission::Peers(list.iter().map(|(label, addr)| AllowedPeer::new(*label, *addr)).collect())
}

fn on(ip: &str, mut cfg: TransportConfig) -> TransportConfig {
    cfg.bind_addr = format!("{ip}:0").parse().unwrap();
    cfg
}

async fn connect_from(from: &str, to: &str) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0)).unwrap();
    s.connect(to.parse().unwrap()).await.unwrap()
}

async fn send(s: &mut TcpStream, f: &Frame) {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    s.write_all(&b).await.unwrap();
}

async fn recv(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(f) = Frame::parse(buf, 1 << 20).unwrap() {
            return Some(f);
        }
        match tokio::time::timeout(Duration::from_secs(3), s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

fn reject_code(f: &Frame) -> (FrameKind, u8, String) {
    (f.kind, f.payload[0], String::from_utf8_lossy(&f.payload[1..]).into_owned())
}

fn refused_as(r: &Result<Bytes, TransportError>, want: RejectReason) -> bool {
    matches!(r, Err(TransportError::Handshake { source: HandshakeError::Rejected { reason, .. }, .. }) if *reason == want)
}

#[tokio::test]
async fn plain_peers_are_admitted_by_address_and_named_by_their_label() {
    let mut cfg = config("node1", 0);
    cfg.admission = peers(&[("peer", "127.0.0.1:7688")]);
    let server = start(cfg).await;
    let client = start_plain("node2").await;
    client.t.add_peer("node1".into(), server.addr());
    let reply = client.t.request(&"node1".into(), ECHO, Bytes::from_static(b"hi"), None).await.unwrap();
    assert_eq!(&reply[..], &TestHandler::reply_for("node1", "peer", ECHO, b"hi")[..], "from is the label, not the claimed id");
    client.t.send(&"node1".into(), ECHO, Bytes::from_static(b"one-way")).await.unwrap();
    assert_eq!(server.handler.wait_messages(1, Duration::from_secs(5)).await[0].0, "peer");

    // Another address is refused before any handshake, and told why.
    let mut s = connect_from("127.0.0.2", &server.addr()).await;
    send(&mut s, &Hello::new(CLUSTER, "node2").to_frame()).await;
    let f = recv(&mut s, &mut BytesMut::new()).await.expect("a reject frame");
    let (kind, code, message) = reject_code(&f);
    assert_eq!((kind, code), (FrameKind::HandshakeReject, 8), "{message}");
    assert!(message.contains("127.0.0.2"), "{message}");
    assert_eq!(server.metric("meridian_transport_handshake_failures_total{reason=\"not_a_peer\"}"), 1.0);
    assert!(server.handler.messages.lock().unwrap().len() == 1);
}

#[tokio::test]
async fn the_cluster_secret_is_proven_both_ways_and_a_wrong_or_missing_one_is_refused() {
    let secret = ClusterSecret::new(SECRET).unwrap();
    let mut cfg = config("node1", 0);
    cfg.secret = Some(secret.clone());
    let server = start(cfg).await;

    let mut good = config("node2", 0);
    good.secret = Some(secret.clone());
    let good = start(good).await;
    good.t.add_peer("node1".into(), server.addr());
    echo_ok(&good, "node1", "with-the-secret").await;

    let mut wrong = config("node3", 0);
    wrong.secret = Some(ClusterSecret::new(b"another-secret-of-enough-length").unwrap());
    let wrong = start(wrong).await;
    wrong.t.add_peer("node1".into(), server.addr());
    let r = wrong.t.request(&"node1".into(), ECHO, Bytes::new(), None).await;
    assert!(matches!(&r, Err(TransportError::Handshake { source: HandshakeError::Secret(_), .. })), "{r:?}");

    let none = start_plain("node4").await;
    none.t.add_peer("node1".into(), server.addr());
    let r = none.t.request(&"node1".into(), ECHO, Bytes::new(), None).await;
    assert!(refused_as(&r, RejectReason::NotAPeer), "{r:?}");

    // A server without the secret is refused by a client that has one.
    let plain_server = start_plain("node5").await;
    good.t.add_peer("node5".into(), plain_server.addr());
    assert!(good.t.request(&"node5".into(), ECHO, Bytes::new(), None).await.is_err());

    // By hand: the challenge does not carry the secret; a made-up proof and the server's own
    // proof sent back (a reflection) are both refused; the right proof is admitted.
    for attempt in ["made-up", "reflected", "right"] {
        let mut s = TcpStream::connect(server.addr()).await.unwrap();
        let mut buf = BytesMut::new();
        let hello = Hello { secret: true, ..Hello::new(CLUSTER, "node6") };
        send(&mut s, &hello.to_frame()).await;
        let f = recv(&mut s, &mut buf).await.expect("a challenge");
        assert_eq!(f.kind, FrameKind::HandshakeChallenge);
        assert!(!f.payload.windows(SECRET.len()).any(|w| w == SECRET));
        let c = Challenge::decode(f.payload).unwrap();
        let t = Transcript { cluster_id: CLUSTER, client_nonce: &hello.nonce, server_nonce: &c.nonce };
        assert!(secret.verify(Side::Server, &t, "node1", &c.proof));
        let proof = match attempt {
            "made-up" => [7u8; 32],
            "reflected" => c.proof,
            _ => secret.prove(Side::Client, &t, "node6"),
        };
        send(&mut s, &proof_frame(&proof)).await;
        let f = recv(&mut s, &mut buf).await.expect("an answer");
        if attempt == "right" {
            assert_eq!(f.kind, FrameKind::HandshakeAck);
        } else {
            let (kind, code, message) = reject_code(&f);
            assert_eq!((kind, code), (FrameKind::HandshakeReject, 8), "{attempt}: {message}");
            assert!(message.contains("wrong cluster secret"), "{message}");
        }
    }
}

fn load(dir: &Path, node: &str) -> TlsSettings {
    let paths = TlsPaths {
        cert_file: Some(dir.join(format!("{node}.pem"))),
        key_file: Some(dir.join(format!("{node}-key.pem"))),
        ca_file: Some(dir.join("ca.pem")),
        verify_client: true,
        min_version: TlsVersion::V1_3,
    };
    TlsSettings::load(&paths).unwrap()
}

#[tokio::test]
async fn mtls_admits_only_a_certificate_naming_a_configured_peer_host() {
    let dir = tempfile::tempdir().unwrap();
    for (node, ip) in [("node-a", "127.0.0.2"), ("node-b", "127.0.0.3"), ("c", "127.0.0.4")] {
        let opts = GenerateOptions { sans: Some(vec![ip.into()]), ..Default::default() };
        certs::generate_with(dir.path(), &[node.to_string()], &opts).unwrap();
    }
    let mut cfg = on("127.0.0.2", config("node-a", 0));
    cfg.tls = Some(load(dir.path(), "node-a"));
    cfg.admission = peers(&[("peer", "127.0.0.3:7688")]);
    let a = start(cfg).await;

    let mut cfg = on("127.0.0.3", config("node-b", 0));
    cfg.tls = Some(load(dir.path(), "node-b"));
    let b = start(cfg).await;
    b.t.add_peer_alias("peer".into(), a.addr());
    let reply = b.t.request(&"peer".into(), ECHO, Bytes::from_static(b"x"), None).await.unwrap();
    assert_eq!(&reply[..], &TestHandler::reply_for("node-a", "peer", ECHO, b"x")[..]);

    // Same CA, valid certificate, right cluster: but it names 127.0.0.4, nobody's peer.
    let mut cfg = on("127.0.0.4", config("c", 0));
    cfg.tls = Some(load(dir.path(), "c"));
    let c = start(cfg).await;
    c.t.add_peer_alias("peer".into(), a.addr());
    let r = c.t.request(&"peer".into(), ECHO, Bytes::new(), None).await;
    assert!(refused_as(&r, RejectReason::NotAPeer), "{r:?}");
    assert_eq!(a.metric("meridian_transport_handshake_failures_total{reason=\"not_a_peer\"}"), 1.0);
}

#[tokio::test]
async fn admitting_any_member_needs_a_credential() {
    let mut cfg = config("w", 0);
    cfg.admission = Admission::Members { label: "data".into() };
    let mut registry = prometheus_client::registry::Registry::default();
    let r = meridian_modes::transport::Transport::start(cfg.clone(), TestHandler::new("w"), &mut registry).await;
    assert!(matches!(r, Err(TransportError::InvalidConfig(_))), "{:?}", r.err());

    cfg.secret = Some(ClusterSecret::new(SECRET).unwrap());
    let w = start(cfg).await;
    let mut client = config("node-a", 0);
    client.secret = Some(ClusterSecret::new(SECRET).unwrap());
    let client = start(client).await;
    client.t.add_peer("w".into(), w.addr());
    let reply = client.t.request(&"w".into(), ECHO, Bytes::new(), None).await.unwrap();
    assert_eq!(&reply[..], &TestHandler::reply_for("w", "data", ECHO, b"")[..]);
}

#[tokio::test]
async fn one_source_cannot_hold_every_pending_handshake() {
    let server = start(config("node1", 0)).await;
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(connect_from("127.0.0.2", &server.addr()).await);
    }
    // Those over the per-source cap are closed at once; the first ones wait for a handshake
    // (up to the 2 s connect timeout, longer than this look).
    let mut looks = tokio::task::JoinSet::new();
    for mut s in silent {
        looks.spawn(async move {
            let mut b = [0u8; 64];
            matches!(tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await, Ok(Ok(0)))
        });
    }
    let closed = looks.join_all().await.into_iter().filter(|c| *c).count();
    assert_eq!(closed, 32, "of 40 silent connections from one address");
    assert_eq!(server.metric("meridian_transport_handshake_failures_total{reason=\"busy\"}"), 32.0);
    let client = start_plain("node2").await;
    client.t.add_peer("node1".into(), server.addr());
    echo_ok(&client, "node1", "while-flooded").await;
}

/// As in docker-compose.ha.yml: default development certificates, peers configured by
/// host name (`node-b:7688`, which need not resolve here), matched by the DNS SAN.
#[tokio::test]
async fn mtls_matches_a_peer_host_name_as_in_the_compose_file() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &["node-a", "node-b", "witness"].map(String::from)).unwrap();
    let mut cfg = config("witness", 0);
    cfg.tls = Some(load(dir.path(), "witness"));
    cfg.admission = peers(&[("peer", "node-a:7688"), ("peer", "node-b:7688")]);
    let w = start(cfg).await;
    for node in ["node-a", "node-b"] {
        let mut cfg = config(node, 0);
        cfg.tls = Some(load(dir.path(), node));
        let n = start(cfg).await;
        n.t.add_peer_alias("w".into(), w.addr());
        let r = n.t.request(&"w".into(), ECHO, Bytes::new(), None).await;
        let reply = r.unwrap_or_else(|e| panic!("{node} refused: {e}"));
        assert_eq!(&reply[..], &TestHandler::reply_for("witness", "peer", ECHO, b"")[..]);
    }
    // A data node admits only its partner, not the witness's certificate.
    let mut cfg = config("node-a", 0);
    cfg.tls = Some(load(dir.path(), "node-a"));
    cfg.admission = peers(&[("peer", "node-b:7688")]);
    let a = start(cfg).await;
    let mut cfg = config("witness", 0);
    cfg.tls = Some(load(dir.path(), "witness"));
    let stranger = start(cfg).await;
    stranger.t.add_peer_alias("a".into(), a.addr());
    let r = stranger.t.request(&"a".into(), ECHO, Bytes::new(), None).await;
    assert!(refused_as(&r, RejectReason::NotAPeer), "{r:?}");
}
