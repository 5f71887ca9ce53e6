//! Peers that restart or die: reconnect after backoff, fail fast, never block other peers.

mod transport_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_modes::transport::TransportError;
use transport_support::*;

/// Retries `ECHO` until it succeeds (bounded); returns how many attempts failed first.
async fn echo_eventually(from: &Node, to: &str, within: Duration) -> usize {
    let until = Instant::now() + within;
    let mut failures = 0;
    loop {
        match from.t.request(&to.to_string(), ECHO, Bytes::from_static(b"ping"), Some(Duration::from_secs(2))).await {
            Ok(r) => {
                assert_eq!(&r[..], &TestHandler::reply_for(to, from.t.node_id(), ECHO, b"ping")[..]);
                return failures;
            }
            Err(e) => {
                assert!(
                    matches!(e, TransportError::Unreachable { .. } | TransportError::Timeout { .. }),
                    "unexpected error while {to} restarts: {e}"
                );
                failures += 1;
                assert!(Instant::now() < until, "{to} not reachable again within {within:?}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn requests_succeed_again_after_the_peer_restarts_on_the_same_port() {
    let a = start_plain("node1").await;
    let b = start_plain("node2").await;
    let port = b.t.local_addr().port();
    a.t.add_peer("node2".into(), b.addr());
    echo_ok(&a, "node2", "before").await;

    b.t.shutdown().await;
    drop(b);
    // While node2 is down, requests fail (not hang) and the failures are counted.
    let r = a.t.request(&"node2".to_string(), ECHO, Bytes::new(), Some(Duration::from_secs(2))).await;
    assert!(matches!(r, Err(TransportError::Unreachable { .. })), "{r:?}");
    let r = a.t.request(&"node2".to_string(), ECHO, Bytes::new(), Some(Duration::from_secs(2))).await;
    assert!(matches!(r, Err(TransportError::Unreachable { .. })), "{r:?}");
    let status = &a.t.peer_status()[0];
    assert!(!status.connected && status.consecutive_failures >= 1, "{status:?}");

    let b2 = start(config("node2", port)).await;
    echo_eventually(&a, "node2", Duration::from_secs(5)).await;
    assert_eq!(a.t.peer_status()[0].consecutive_failures, 0);
    assert!(a.metric("meridian_transport_connection_failures_total{peer=\"node2\"}") >= 1.0);
    assert_eq!(a.metric("meridian_transport_peer_connected{peer=\"node2\"}"), 1.0);
    drop(b2);
}

#[tokio::test]
async fn a_dropped_transport_releases_its_port_and_is_reconnected_to() {
    let a = start_plain("node1").await;
    let b = start_plain("node2").await;
    let port = b.t.local_addr().port();
    a.t.add_peer("node2".into(), b.addr());
    echo_ok(&a, "node2", "before").await;

    // No shutdown(): dropping the last handle stops it too. The port frees asynchronously.
    drop(b);
    let until = Instant::now() + Duration::from_secs(5);
    let b2 = loop {
        let mut registry = prometheus_client::registry::Registry::default();
        let h = TestHandler::new("node2");
        match meridian_modes::transport::Transport::start(config("node2", port), h.clone(), &mut registry).await {
            Ok(t) => break Node { t, handler: h, registry },
            Err(e) => {
                assert!(Instant::now() < until, "port {port} not released: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    echo_eventually(&a, "node2", Duration::from_secs(5)).await;
    drop(b2);
}

#[tokio::test]
async fn a_dead_peer_fails_within_the_deadline_while_a_live_peer_keeps_answering() {
    let a = start_plain("node1").await;
    let live = start_plain("node2").await;
    // A port that refuses connections: bound once, then freed.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // A peer that accepts TCP but never says a word: connects hang in the handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let _silent_task = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_secs(30), silent.accept()).await {
                Ok(Ok((s, _))) => held.push(s),
                _ => break,
            }
        }
    });

    a.t.add_peer("node2".into(), live.addr());
    a.t.add_peer("dead".into(), format!("127.0.0.1:{closed_port}"));
    a.t.add_peer("silent".into(), silent_addr);

    let deadline = Duration::from_millis(800);
    let mut dead_calls = Vec::new();
    for peer in ["dead", "silent"] {
        for i in 0..5 {
            let t = a.t.clone();
            dead_calls.push(tokio::spawn(async move {
                let started = Instant::now();
                let r = t.request(&peer.to_string(), ECHO, Bytes::from(format!("{i}")), Some(deadline)).await;
                (peer, r, started.elapsed())
            }));
        }
    }
    // Meanwhile the live peer answers promptly, again and again.
    let started = Instant::now();
    for i in 0..30 {
        echo_ok(&a, "node2", &format!("live-{i}")).await;
    }
    let live_took = started.elapsed();
    for call in dead_calls {
        let (peer, r, took) = tokio::time::timeout(Duration::from_secs(5), call).await.unwrap().unwrap();
        assert!(
            matches!(r, Err(TransportError::Unreachable { .. }) | Err(TransportError::Timeout { .. })),
            "{peer}: {r:?}"
        );
        assert!(took < deadline + Duration::from_millis(500), "{peer}: failed only after {took:?}");
    }
    assert!(live_took < Duration::from_secs(3), "the live peer was held up: {live_took:?}");

    // A refused port is known to be down: during backoff calls fail at once.
    let started = Instant::now();
    let r = a.t.request(&"dead".to_string(), ECHO, Bytes::new(), Some(Duration::from_secs(5))).await;
    assert!(matches!(r, Err(TransportError::Unreachable { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_peer_that_stops_answering_is_detected_by_keepalive() {
    let a = start_plain("node1").await;
    // A fake server: completes the handshake, then reads and ignores everything (no pongs).
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        use meridian_modes::transport::frame::{Frame, FrameKind};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_secs(10), fake.accept()).await else { return };
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let mut ack = bytes::BytesMut::new();
        let mut p = bytes::BytesMut::new();
        p.extend_from_slice(&meridian_modes::transport::handshake::MAGIC);
        p.extend_from_slice(&meridian_modes::transport::handshake::PROTOCOL_VERSION.to_be_bytes());
        p.extend_from_slice(&(4u16).to_be_bytes());
        p.extend_from_slice(b"mute");
        Frame::new(FrameKind::HandshakeAck, 0, 0, p.freeze()).encode(&mut ack);
        s.write_all(&ack).await.unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
    });
    a.t.add_peer("mute".into(), fake_addr);
    let started = Instant::now();
    let r = a.t.request(&"mute".to_string(), ECHO, Bytes::new(), Some(Duration::from_secs(8))).await;
    // keepalive 500 ms → silence for 1.5 s ends the connection and fails the caller early.
    match r {
        Err(TransportError::Unreachable { reason, .. }) => assert!(reason.contains("nothing received"), "{reason}"),
        other => panic!("expected the connection to be declared dead, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}
