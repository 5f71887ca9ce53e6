//! Garbage on the cluster port closes that connection, quickly, and nothing else.

mod transport_support;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use meridian_modes::transport::frame::{Frame, FrameError, FrameKind, HEADER_BYTES, LENGTH_BYTES};
use meridian_modes::transport::handshake::{Hello, MAGIC, PROTOCOL_VERSION};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport_support::*;

/// Sends `bytes` (then half-closes if `eof`) and returns how long the server took to close
/// the connection, with whatever it sent before. Panics if it is still open after 5 s.
async fn server_closes_after(addr: &str, bytes: &[u8], eof: bool) -> (Duration, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    // The server may close while we are still writing; that is a pass, not an error.
    let _ = s.write_all(bytes).await;
    if eof {
        let _ = s.shutdown().await;
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Err(_) => panic!("connection still open 5 s after {} bytes of garbage", bytes.len()),
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

fn frame_bytes(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    f.encode(&mut b);
    b.to_vec()
}

/// The first frame the server sent, if any.
fn first_frame(bytes: &[u8]) -> Option<Frame> {
    Frame::parse(&mut BytesMut::from(bytes), 1 << 20).ok().flatten()
}

fn bad_frame_count(n: &Node) -> f64 {
    n.metric("meridian_transport_handshake_failures_total{reason=\"bad_frame\"}")
}

#[tokio::test]
async fn garbage_closes_only_that_connection_and_the_node_keeps_serving() {
    let mut cfg = config("node1", 0);
    // The truncated-frame case below relies on EOF, not on this; it only bounds stragglers.
    cfg.connect_timeout = Duration::from_secs(3);
    let server = start(cfg).await;
    let good = start_plain("node2").await;
    good.t.add_peer("node1".into(), server.addr());
    echo_ok(&good, "node1", "start").await;
    let addr = server.addr();

    // Random bytes (seeded, so a failure can be replayed).
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let noise: Vec<u8> = (0..2048).map(|_| rng.random()).collect();
    let (took, _) = server_closes_after(&addr, &noise, false).await;
    assert!(took < Duration::from_secs(2), "random bytes: closed after {took:?}");
    echo_ok(&good, "node1", "after-noise").await;

    // A 4 GiB length prefix: refused from the four bytes alone.
    let (took, _) = server_closes_after(&addr, &[0xFF, 0xFF, 0xFF, 0xFF], false).await;
    assert!(took < Duration::from_secs(2), "4 GiB length: closed after {took:?}");
    echo_ok(&good, "node1", "after-huge-length").await;

    // A truncated frame, then EOF.
    let hello = frame_bytes(&Hello::new(CLUSTER, "node9").to_frame());
    let (took, _) = server_closes_after(&addr, &hello[..hello.len() - 3], true).await;
    assert!(took < Duration::from_secs(2), "truncated frame: closed after {took:?}");
    echo_ok(&good, "node1", "after-truncated").await;

    // A well-formed frame of an unknown kind.
    let mut unknown = BytesMut::new();
    unknown.put_u32(HEADER_BYTES as u32 + 3);
    unknown.put_u8(0x7F);
    unknown.put_u16(1);
    unknown.put_u64(1);
    unknown.put_slice(b"abc");
    let (took, _) = server_closes_after(&addr, &unknown, false).await;
    assert!(took < Duration::from_secs(2), "unknown kind: closed after {took:?}");
    echo_ok(&good, "node1", "after-unknown-kind").await;

    // A frame shorter than the header.
    let (took, _) = server_closes_after(&addr, &[0, 0, 0, 2, 4, 0], false).await;
    assert!(took < Duration::from_secs(2), "short frame: closed after {took:?}");

    // A request before any handshake.
    let req = frame_bytes(&Frame::new(FrameKind::Request, ECHO, 1, Bytes::from_static(b"sneaky")));
    let (_, reply) = server_closes_after(&addr, &req, false).await;
    let f = first_frame(&reply).expect("a reject frame before the close");
    assert_eq!(f.kind, FrameKind::HandshakeReject);
    assert!(server.handler.messages.lock().unwrap().is_empty());
    echo_ok(&good, "node1", "after-early-request").await;

    // A handshake with a bad magic.
    let mut p = BytesMut::from(&b"HTTP"[..]);
    p.put_u16(PROTOCOL_VERSION);
    let (_, reply) =
        server_closes_after(&addr, &frame_bytes(&Frame::new(FrameKind::Handshake, 0, 0, p.freeze())), false).await;
    assert_eq!(first_frame(&reply).map(|f| f.kind), Some(FrameKind::HandshakeReject));

    // Every refusal above happened before a handshake, so each counts as a bad frame.
    for _ in 0..100 {
        if bad_frame_count(&server) >= 7.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bad_frame_count(&server), 7.0);
    echo_ok(&good, "node1", "end").await;
}

#[tokio::test]
async fn wrong_cluster_and_wrong_version_are_refused_with_their_reason() {
    let server = start_plain("node1").await;
    let addr = server.addr();

    let wrong_cluster = frame_bytes(&Hello::new("another-cluster", "node2").to_frame());
    let (took, reply) = server_closes_after(&addr, &wrong_cluster, false).await;
    assert!(took < Duration::from_secs(2));
    let f = first_frame(&reply).expect("a reject frame");
    assert_eq!(f.kind, FrameKind::HandshakeReject);
    assert!(String::from_utf8_lossy(&f.payload[1..]).contains("another-cluster"));

    let mut future = Hello::new(CLUSTER, "node2");
    future.version = PROTOCOL_VERSION + 1;
    let (_, reply) = server_closes_after(&addr, &frame_bytes(&future.to_frame()), false).await;
    assert_eq!(first_frame(&reply).map(|f| f.kind), Some(FrameKind::HandshakeReject));

    for _ in 0..100 {
        if server.metric("meridian_transport_handshake_failures_total{reason=\"bad_version\"}") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.metric("meridian_transport_handshake_failures_total{reason=\"wrong_cluster\"}"), 1.0);
    assert_eq!(server.metric("meridian_transport_handshake_failures_total{reason=\"bad_version\"}"), 1.0);

    // A transport of another cluster learns why it was refused.
    let mut cfg = config("node2", 0);
    cfg.cluster_id = "another-cluster".into();
    let stranger = start(cfg).await;
    stranger.t.add_peer("node1".into(), addr.clone());
    let r = stranger.t.request(&"node1".to_string(), ECHO, Bytes::new(), None).await;
    assert!(
        matches!(
            &r,
            Err(meridian_modes::transport::TransportError::Handshake {
                source: meridian_modes::transport::HandshakeError::Rejected {
                    reason: meridian_modes::transport::RejectReason::WrongCluster,
                    ..
                },
                ..
            })
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_connect_timeout() {
    let mut cfg = config("node1", 0);
    cfg.connect_timeout = Duration::from_millis(500);
    let server = start(cfg).await;
    // Half a length prefix, then nothing.
    let (took, _) = server_closes_after(&server.addr(), &[0, 0], false).await;
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(server.metric("meridian_transport_handshake_failures_total{reason=\"timeout\"}"), 1.0);
}

#[tokio::test]
async fn garbage_after_a_good_handshake_closes_the_connection() {
    let server = start_plain("node1").await;
    let good = start_plain("node2").await;
    good.t.add_peer("node1".into(), server.addr());

    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(&frame_bytes(&Hello::new(CLUSTER, "node3").to_frame())).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let ack = first_frame(&buf[..n]).expect("an ack");
    assert_eq!(ack.kind, FrameKind::HandshakeAck);
    assert_eq!(&ack.payload[..4], &MAGIC);

    // A valid request is served...
    s.write_all(&frame_bytes(&Frame::new(FrameKind::Request, ECHO, 42, Bytes::from_static(b"hi")))).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let reply = first_frame(&buf[..n]).expect("a response");
    assert_eq!((reply.kind, reply.request_id), (FrameKind::Response, 42));
    assert_eq!(&reply.payload[..], &TestHandler::reply_for("node1", "node3", ECHO, b"hi")[..]);

    // ...then a frame a client must never send (a Pong) and the connection is closed.
    s.write_all(&frame_bytes(&Frame::new(FrameKind::Pong, 0, 0, Bytes::new()))).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed within 5 s");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");

    // A length over the limit after the handshake: same.
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(&frame_bytes(&Hello::new(CLUSTER, "node3").to_frame())).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    s.write_all(&(65u32 << 20).to_be_bytes()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed within 5 s");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");

    echo_ok(&good, "node1", "still-serving").await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes, fed in arbitrary pieces: the decoder never panics, each frame it
    /// returns is consistent with the bytes it consumed, and it never buffers past the limit.
    #[test]
    fn frame_decoder_survives_arbitrary_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..512),
        cut in 0usize..512,
        max in 11usize..300,
    ) {
        let cut = cut.min(data.len());
        let mut buf = BytesMut::from(&data[..cut]);
        let mut fed = cut;
        for _ in 0..600 {
            let before = buf.len();
            match Frame::parse(&mut buf, max) {
                Ok(Some(f)) => {
                    prop_assert_eq!(before - buf.len(), LENGTH_BYTES + HEADER_BYTES + f.payload.len());
                    prop_assert!(HEADER_BYTES + f.payload.len() <= max);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before);
                    if fed == data.len() { break; }
                    buf.extend_from_slice(&data[fed..]);
                    fed = data.len();
                }
                Err(FrameError::TooLarge { length, .. }) => { prop_assert!(length > max as u64); break; }
                Err(_) => break,
            }
        }
    }

    /// Whatever is encoded decodes to the same frame, however the bytes are split.
    #[test]
    fn frames_round_trip(kind in 1u8..=9, msg_type: u16, id: u64, payload in proptest::collection::vec(any::<u8>(), 0..200), split in 0usize..300) {
        let f = Frame::new(FrameKind::from_u8(kind).unwrap(), msg_type, id, Bytes::from(payload));
        let mut all = BytesMut::new();
        f.encode(&mut all);
        let split = split.min(all.len());
        let mut buf = BytesMut::from(&all[..split]);
        let first = Frame::parse(&mut buf, 1024).unwrap();
        if split < all.len() {
            prop_assert_eq!(first, None);
            buf.extend_from_slice(&all[split..]);
            prop_assert_eq!(Frame::parse(&mut buf, 1024).unwrap(), Some(f));
        } else {
            prop_assert_eq!(first, Some(f));
        }
    }
}
