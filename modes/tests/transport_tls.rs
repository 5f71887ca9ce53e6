//! Mutual TLS: who gets in, who is refused and why, and that good peers are never disturbed.

mod transport_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meridian_modes::transport::certs::{self, GenerateOptions, Validity};
use meridian_modes::transport::frame::{Frame, FrameKind};
use meridian_modes::transport::handshake::Hello;
use meridian_modes::transport::{HandshakeError, RejectReason, TlsSettings, TlsVersion, TransportError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport_support::*;

struct Pki {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    /// The cluster CA: node1..node3 valid, node5 expired.
    main: std::path::PathBuf,
    /// Another CA: node4.
    other: std::path::PathBuf,
}

fn pki() -> Pki {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let nodes: Vec<String> = ["node1", "node2", "node3"].map(String::from).to_vec();
    certs::generate(d1.path(), &nodes).unwrap();
    let expired = GenerateOptions { validity: Validity::Expired, ..Default::default() };
    let written = certs::generate_with(d1.path(), &["node5".to_string()], &expired).unwrap();
    assert_eq!(written.len(), 2, "the existing CA is reused, only node5's files are written");
    certs::generate(d2.path(), &["node4".to_string()]).unwrap();
    Pki { main: d1.path().to_owned(), other: d2.path().to_owned(), _dirs: (d1, d2) }
}

async fn tls_node(node: &str, settings: TlsSettings) -> Node {
    let mut cfg = config(node, 0);
    cfg.tls = Some(settings);
    start(cfg).await
}

fn tls_failures(n: &Node, reason: &str) -> f64 {
    n.metric(&format!("meridian_transport_handshake_failures_total{{reason=\"{reason}\"}}"))
}

/// Waits (bounded) for a server-side counter to reach `want`: the server records a refusal
/// in its own task, possibly just after the client saw the connection close.
async fn wait_metric(n: &Node, reason: &str, want: f64) {
    for _ in 0..100 {
        if tls_failures(n, reason) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tls_failures(n, reason), want, "handshake failures with reason {reason}");
}

/// What a hand-made client got from the server.
#[derive(Debug, PartialEq)]
enum Outcome {
    TlsFailed,
    Accepted,
    Rejected(u8),
    Closed,
}

fn raw_client_config(
    ca: &Path,
    client_cert: Option<(&Path, &str)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client_cert {
        None => builder.with_no_client_auth(),
        Some((dir, node)) => {
            let chain =
                CertificateDer::pem_file_iter(dir.join(format!("{node}.pem"))).unwrap().map(|c| c.unwrap()).collect();
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{node}-key.pem"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(cfg)
}

/// Connects with `cfg` (or plaintext when `None`), sends a valid handshake as `node2`, and
/// reports what came back. Every step is bounded in time.
async fn raw_attempt(addr: &str, cfg: Option<Arc<rustls::ClientConfig>>) -> Outcome {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut hello = BytesMut::new();
    Hello::new(CLUSTER, "node2").to_frame().encode(&mut hello);
    let within = Duration::from_secs(5);
    let reply = match cfg {
        None => exchange(tcp, &hello, within).await,
        Some(cfg) => {
            let name = ServerName::try_from("127.0.0.1").unwrap();
            match tokio::time::timeout(within, tokio_rustls::TlsConnector::from(cfg).connect(name, tcp)).await {
                Ok(Ok(tls)) => exchange(tls, &hello, within).await,
                Ok(Err(_)) => return Outcome::TlsFailed,
                Err(_) => panic!("TLS connect hung"),
            }
        }
    };
    match reply {
        Err(e) if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => Outcome::TlsFailed,
        Err(_) => Outcome::Closed,
        Ok(bytes) => {
            let mut buf = BytesMut::from(&bytes[..]);
            match Frame::parse(&mut buf, 1 << 20) {
                Ok(Some(f)) if f.kind == FrameKind::HandshakeAck => Outcome::Accepted,
                Ok(Some(f)) if f.kind == FrameKind::HandshakeReject => Outcome::Rejected(f.payload[0]),
                _ => Outcome::Closed,
            }
        }
    }
}

/// Writes `out`, then reads until the peer closes (or 5 s pass).
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    out: &[u8],
    within: Duration,
) -> std::io::Result<Vec<u8>> {
    let _ = s.write_all(out).await;
    let _ = s.flush().await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Ok(got), // still open: an accepted connection stays up
            Ok(Ok(0)) => return Ok(got),
            Ok(Ok(n)) => {
                got.extend_from_slice(&chunk[..n]);
                let mut b = BytesMut::from(&got[..]);
                if matches!(Frame::parse(&mut b, 1 << 20), Ok(Some(_))) {
                    return Ok(got);
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[tokio::test]
async fn mutual_tls_refuses_each_bad_client_for_its_reason_while_a_good_peer_keeps_working() {
    let pki = pki();
    let server = tls_node("node1", tls(&pki.main, "node1")).await;
    let good = tls_node("node2", tls(&pki.main, "node2")).await;
    good.t.add_peer("node1".into(), server.addr());
    echo_ok(&good, "node1", "start").await;
    let node1 = "node1".to_string();
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    // No client certificate at all.
    let out = raw_attempt(&server.addr(), Some(raw_client_config(&pki.main, None, tls13))).await;
    assert_eq!(out, Outcome::TlsFailed);
    wait_metric(&server, "tls", 1.0).await;
    echo_ok(&good, "node1", "after-no-cert").await;

    // A certificate from another CA (the client itself trusts the cluster CA).
    let paths = tls_paths(&pki.other, "node4", &pki.main, true, TlsVersion::V1_3);
    let stranger = tls_node("node4", TlsSettings::load(&paths).unwrap()).await;
    stranger.t.add_peer("node1".into(), server.addr());
    let r = stranger.t.request(&node1, ECHO, Bytes::new(), None).await;
    assert!(matches!(r, Err(TransportError::Tls { .. })), "{r:?}");
    wait_metric(&server, "tls", 2.0).await;
    echo_ok(&good, "node1", "after-other-ca").await;

    // An expired certificate from the cluster CA.
    let expired = tls_node("node5", tls(&pki.main, "node5")).await;
    expired.t.add_peer("node1".into(), server.addr());
    let r = expired.t.request(&node1, ECHO, Bytes::new(), None).await;
    assert!(matches!(r, Err(TransportError::Tls { .. })), "{r:?}");
    wait_metric(&server, "tls", 3.0).await;
    echo_ok(&good, "node1", "after-expired").await;

    // A valid certificate for node3 used to claim node2's identity.
    let impostor = tls_node("node2", tls(&pki.main, "node3")).await;
    impostor.t.add_peer("node1".into(), server.addr());
    let r = impostor.t.request(&node1, ECHO, Bytes::new(), None).await;
    match r {
        Err(TransportError::Handshake {
            source: HandshakeError::Rejected { reason: RejectReason::IdentityMismatch, .. },
            ..
        }) => {}
        other => panic!("expected an identity refusal, got {other:?}"),
    }
    wait_metric(&server, "identity_mismatch", 1.0).await;
    assert_eq!(impostor.metric("meridian_transport_handshake_failures_total{reason=\"identity_mismatch\"}"), 1.0);
    echo_ok(&good, "node1", "after-impostor").await;

    // Plaintext on the TLS port.
    let out = raw_attempt(&server.addr(), None).await;
    assert_ne!(out, Outcome::Accepted);
    wait_metric(&server, "tls", 4.0).await;
    echo_ok(&good, "node1", "after-plaintext").await;

    // A TLS 1.2-only client, with a good certificate, against min_version 1.3.
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let out = raw_attempt(&server.addr(), Some(raw_client_config(&pki.main, Some((&pki.main, "node2")), tls12))).await;
    assert_eq!(out, Outcome::TlsFailed);
    wait_metric(&server, "tls", 5.0).await;
    echo_ok(&good, "node1", "after-tls12").await;

    // The same hand-made client with TLS 1.3 is let in: the refusals above were for cause.
    let out = raw_attempt(&server.addr(), Some(raw_client_config(&pki.main, Some((&pki.main, "node2")), tls13))).await;
    assert_eq!(out, Outcome::Accepted);
    assert_eq!(tls_failures(&server, "tls"), 5.0);
    assert_eq!(tls_failures(&server, "identity_mismatch"), 1.0);

    // Failed peers are counted per peer on the client side.
    assert_eq!(stranger.metric("meridian_transport_connection_failures_total{peer=\"node1\"}"), 1.0);
    let status = stranger.t.peer_status();
    assert!(!status[0].connected && status[0].consecutive_failures == 1 && status[0].last_error.is_some());
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_the_node_it_dialled() {
    let pki = pki();
    let server = tls_node("node1", tls(&pki.main, "node1")).await;
    let client = tls_node("node2", tls(&pki.main, "node2")).await;

    // node1's address registered as node3: the server acknowledges as node1.
    client.t.add_peer("node3".into(), server.addr());
    match client.t.request(&"node3".to_string(), ECHO, Bytes::new(), None).await {
        Err(TransportError::Handshake { source: HandshakeError::WrongNode { expected, actual }, .. }) => {
            assert_eq!((expected.as_str(), actual.as_str()), ("node3", "node1"))
        }
        other => panic!("expected WrongNode, got {other:?}"),
    }

    // A server that claims to be node3 while holding node1's certificate.
    let poser = tls_node("node3", tls(&pki.main, "node1")).await;
    client.t.remove_peer(&"node3".to_string());
    client.t.add_peer("node3".into(), poser.addr());
    match client.t.request(&"node3".to_string(), ECHO, Bytes::new(), None).await {
        Err(TransportError::Handshake { source: HandshakeError::CertificateMismatch { node }, .. }) => {
            assert_eq!(node, "node3")
        }
        other => panic!("expected CertificateMismatch, got {other:?}"),
    }
    assert_eq!(client.metric("meridian_transport_handshake_failures_total{reason=\"identity_mismatch\"}"), 2.0);

    // And the genuine node1 is fine.
    client.t.add_peer("node1".into(), server.addr());
    echo_ok(&client, "node1", "genuine").await;
}

#[tokio::test]
async fn without_client_verification_clients_need_no_certificate_but_still_verify_the_server() {
    let pki = pki();
    let open = TlsSettings::load(&tls_paths(&pki.main, "node1", &pki.main, false, TlsVersion::V1_2)).unwrap();
    let server = tls_node("node1", open).await;
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

    let out = raw_attempt(&server.addr(), Some(raw_client_config(&pki.main, None, tls13))).await;
    assert_eq!(out, Outcome::Accepted);
    // min_version 1.2 lets a TLS 1.2 client in.
    let out = raw_attempt(&server.addr(), Some(raw_client_config(&pki.main, None, tls12))).await;
    assert_eq!(out, Outcome::Accepted);
    // A client trusting another CA refuses this server.
    let out = raw_attempt(&server.addr(), Some(raw_client_config(&pki.other, None, tls13))).await;
    assert_eq!(out, Outcome::TlsFailed);

    let client = tls_node("node2", tls(&pki.main, "node2")).await;
    client.t.add_peer("node1".into(), server.addr());
    echo_ok(&client, "node1", "no-client-auth").await;
}

#[tokio::test]
async fn tls_streams_large_one_way_messages_intact() {
    let pki = pki();
    let server = tls_node("node1", tls(&pki.main, "node1")).await;
    let client = tls_node("node2", tls(&pki.main, "node2")).await;
    client.t.add_peer("node1".into(), server.addr());
    let node1 = "node1".to_string();
    for i in 0..8u8 {
        client.t.send(&node1, 5, Bytes::from(vec![i; 3 << 20])).await.unwrap();
    }
    let got = server.handler.wait_messages(8, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 8);
    for (i, (from, _, p)) in got.iter().enumerate() {
        assert_eq!(from, "node2");
        assert!(p.len() == 3 << 20 && p.iter().all(|b| *b == i as u8), "message {i} damaged");
    }
}
