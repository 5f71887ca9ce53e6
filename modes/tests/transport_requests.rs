//! Requests, replies and one-way messages between two plaintext nodes on loopback.

mod transport_support;

use std::time::Duration;

use bytes::Bytes;
use meridian_modes::transport::{RemoteError, TransportError};
use rand::Rng;
use transport_support::*;

#[tokio::test]
async fn concurrent_requests_on_one_connection_each_get_their_own_reply() {
    let a = start_plain("node1").await;
    let b = start_plain("node2").await;
    a.t.add_peer("node2".into(), b.addr());

    let mut rng = rand::rng();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let t = a.t.clone();
        // Random delays make replies come back in a different order from the requests.
        let delay_ms: u64 = rng.random_range(0..40);
        tasks.push(tokio::spawn(async move {
            let mut payload = delay_ms.to_be_bytes().to_vec();
            payload.extend_from_slice(format!("request-{i}").as_bytes());
            let reply = t.request(&"node2".to_string(), DELAYED_ECHO, Bytes::from(payload.clone()), None).await;
            (i, payload, reply)
        }));
    }
    for task in tasks {
        let (i, payload, reply) = tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
        let reply = reply.unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(&reply[..], &TestHandler::reply_for("node2", "node1", DELAYED_ECHO, &payload)[..], "request {i}");
    }
    // All of it went over one connection, made lazily on first use.
    let status = a.t.peer_status();
    assert_eq!(status.len(), 1);
    assert!(status[0].connected && status[0].last_rtt.is_some() && status[0].consecutive_failures == 0, "{status:?}");
    assert!(a.metric("meridian_transport_bytes_sent_total{peer=\"node2\"}") > 200.0 * 20.0);
    assert!(b.metric("meridian_transport_bytes_received_total{peer=\"node1\"}") > 200.0 * 20.0);
}

#[tokio::test]
async fn a_slow_request_does_not_hold_up_others_on_the_same_connection() {
    let a = start_plain("node1").await;
    let b = start_plain("node2").await;
    a.t.add_peer("node2".into(), b.addr());
    echo_ok(&a, "node2", "warm-up").await;

    let slow = {
        let t = a.t.clone();
        let mut p = 3_000u64.to_be_bytes().to_vec();
        p.extend_from_slice(b"slow");
        tokio::spawn(async move { t.request(&"node2".to_string(), DELAYED_ECHO, Bytes::from(p), None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    for i in 0..20 {
        echo_ok(&a, "node2", &format!("fast-{i}")).await;
    }
    assert!(started.elapsed() < Duration::from_millis(2_500), "fast requests waited for the slow one");
    assert!(!slow.is_finished());
    slow.await.unwrap().unwrap();
}

#[tokio::test]
async fn handler_errors_and_panics_come_back_to_the_caller() {
    let a = start_plain("node1").await;
    let b = start_plain("node2").await;
    a.t.add_peer("node2".into(), b.addr());
    let node2 = "node2".to_string();

    match a.t.request(&node2, FAIL, Bytes::from_static(b"leader is node3"), None).await {
        Err(TransportError::Remote(e)) => assert_eq!(e, RemoteError::new("not_leader", "leader is node3")),
        other => panic!("expected a remote error, got {other:?}"),
    }
    match a.t.request(&node2, PANIC, Bytes::new(), Some(Duration::from_secs(3))).await {
        Err(TransportError::Remote(e)) => assert_eq!(e.code, "internal"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    // The connection survives both.
    echo_ok(&a, "node2", "after-errors").await;
}

#[tokio::test]
async fn one_way_messages_arrive_in_order_with_the_senders_identity() {
    let a = start_plain("node1").await;
    let b = start_plain("node2").await;
    a.t.add_peer("node2".into(), b.addr());
    let node2 = "node2".to_string();
    for i in 0..500u32 {
        a.t.send(&node2, 7, Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
    }
    let got = b.handler.wait_messages(500, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 500);
    for (i, (from, msg_type, payload)) in got.iter().enumerate() {
        assert_eq!((from.as_str(), *msg_type), ("node1", 7));
        assert_eq!(&payload[..], &(i as u32).to_be_bytes()[..], "message {i} out of order");
    }
}

#[tokio::test]
async fn oversized_payloads_and_unknown_peers_fail_without_sending() {
    let mut cfg = config("node1", 0);
    cfg.max_frame_bytes = 64 * 1024;
    let a = start(cfg).await;
    let b = start_plain("node2").await;
    a.t.add_peer("node2".into(), b.addr());
    let node2 = "node2".to_string();

    let big = Bytes::from(vec![0u8; 64 * 1024]);
    assert!(matches!(
        a.t.request(&node2, ECHO, big.clone(), None).await,
        Err(TransportError::FrameTooLarge { max: 65536, .. })
    ));
    assert!(matches!(a.t.send(&node2, ECHO, big).await, Err(TransportError::FrameTooLarge { .. })));
    assert!(matches!(
        a.t.request(&"nobody".to_string(), ECHO, Bytes::new(), None).await,
        Err(TransportError::UnknownPeer(p)) if p == "nobody"
    ));
    // Just under the limit still goes through.
    let fits = Bytes::from(vec![7u8; 64 * 1024 - 11]);
    a.t.send(&node2, 9, fits).await.unwrap();
    let got = b.handler.wait_messages(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].2.len(), 64 * 1024 - 11);
}

#[tokio::test]
async fn a_reply_over_the_frame_limit_becomes_an_error_reply() {
    let a = start_plain("node1").await;
    let mut cfg = config("node2", 0);
    cfg.max_frame_bytes = 4096;
    let b = start(cfg).await;
    a.t.add_peer("node2".into(), b.addr());
    // The echo reply adds a prefix, so a payload near node2's limit makes a reply over it.
    match a.t.request(&"node2".to_string(), ECHO, Bytes::from(vec![1u8; 4096 - 11]), None).await {
        Err(TransportError::Remote(e)) => assert_eq!(e.code, "frame_too_large"),
        other => panic!("expected frame_too_large, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_fails_waiting_callers_with_closed_and_frees_the_port() {
    let a = start_plain("node1").await;
    let b = start_plain("node2").await;
    a.t.add_peer("node2".into(), b.addr());
    echo_ok(&a, "node2", "first").await;

    let waiting = {
        let t = a.t.clone();
        let mut p = 10_000u64.to_be_bytes().to_vec();
        p.extend_from_slice(b"long");
        tokio::spawn(async move { t.request(&"node2".to_string(), DELAYED_ECHO, Bytes::from(p), None).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    a.t.shutdown().await;
    let r = tokio::time::timeout(Duration::from_secs(2), waiting).await.unwrap().unwrap();
    assert!(matches!(r, Err(TransportError::Closed)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(a.t.request(&"node2".to_string(), ECHO, Bytes::new(), None).await, Err(TransportError::Closed)));
    // node1's port can be bound again at once.
    let again = start(config("node1", a.t.local_addr().port())).await;
    assert_eq!(again.t.local_addr(), a.t.local_addr());
}

#[tokio::test]
async fn removing_a_peer_closes_its_connection() {
    let a = start_plain("node1").await;
    let b = start_plain("node2").await;
    a.t.add_peer("node2".into(), b.addr());
    echo_ok(&a, "node2", "before").await;
    a.t.remove_peer(&"node2".to_string());
    assert!(a.t.peer_status().is_empty());
    assert!(matches!(
        a.t.request(&"node2".to_string(), ECHO, Bytes::new(), None).await,
        Err(TransportError::UnknownPeer(_))
    ));
    // Added again (it could be at a new address), it reconnects.
    a.t.add_peer("node2".into(), b.addr());
    echo_ok(&a, "node2", "after").await;
}

#[tokio::test]
async fn a_saturated_stream_does_not_starve_keepalive_pings() {
    // Short keep-alive: the connection is declared dead after 300 ms without a pong.
    let mut cfg = config("node1", 0);
    cfg.keepalive_interval = Duration::from_millis(100);
    let a = start(cfg).await;
    let mut cfg = config("node2", 0);
    cfg.keepalive_interval = Duration::from_millis(100);
    let b = start(cfg).await;
    a.t.add_peer("node2".into(), b.addr());
    let node2 = "node2".to_string();

    // Keep the send queue full for several idle timeouts.
    let started = std::time::Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < Duration::from_millis(1500) {
        let mut p = vec![0u8; 64 << 10];
        p[..4].copy_from_slice(&sent.to_be_bytes());
        a.t.send(&node2, 8, Bytes::from(p)).await.unwrap();
        sent += 1;
    }
    let got = b.handler.wait_messages(sent as usize, Duration::from_secs(20)).await;
    assert_eq!(got.len(), sent as usize, "messages lost: the connection was dropped mid-stream");
    for (i, (_, _, p)) in got.iter().enumerate() {
        assert_eq!(&p[..4], &(i as u32).to_be_bytes()[..]);
    }
    assert_eq!(a.metric("meridian_transport_connection_failures_total{peer=\"node2\"}"), 0.0);
    assert!(a.metric("meridian_transport_rtt_seconds_count{peer=\"node2\"}") >= 2.0, "pongs arrived during the stream");
}
