//! The client side of one established connection to a peer.
//!
//! [`Link::connect`] dials (name resolution, TCP, TLS, cluster handshake) and starts two
//! tasks: the writer drains the link's outbox and pings every keep-alive interval; the
//! reader matches each `Response`/`ErrorResponse` to its caller through the map
//! request id → oneshot, and turns `Pong`s into round-trip times. When the link closes, every
//! caller still waiting is failed at once rather than left to its deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

use super::address::host_of;
use super::connection::{self, BoxStream, CloseReason, CloseSignal, Keepalive, Outbox, StreamReader};
use super::frame::{self, Frame, FrameKind};
use super::handshake::{self, InitiateError, HANDSHAKE_MAX_BYTES};
use super::peer_stats::PeerStats;
use super::shared::Shared;
use super::shutdown::Shutdown;
use super::{NodeId, RemoteError, TransportError};

type Reply = Result<Bytes, TransportError>;

pub(crate) struct Link {
    peer: NodeId,
    outbox: Outbox,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    close: CloseSignal,
    max_frame_bytes: usize,
}

struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set when the link closes; no caller may start waiting after that.
    closed: bool,
}

/// Removes a caller's entry when its request future is dropped (deadline, cancellation),
/// so abandoned requests do not accumulate in the map.
struct PendingGuard<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.link.lock_pending().waiting.remove(&self.id);
    }
}

impl Link {
    /// Dials `addr` and completes both handshakes. The caller bounds the time taken.
    /// `pinned`: the server must be the node named `peer` (else `peer` is a local alias).
    pub async fn connect(
        shared: &Arc<Shared>,
        peer: &NodeId,
        pinned: bool,
        addr: &str,
        stats: Arc<PeerStats>,
        shutdown: Shutdown,
    ) -> Result<Arc<Link>, TransportError> {
        let cfg = &shared.cfg;
        let unreachable = |reason: String| TransportError::Unreachable { peer: peer.clone(), reason };

        let tcp = dial(addr).await.map_err(unreachable)?;
        let (stream, server_cert): (BoxStream, Option<CertificateDer<'static>>) = match &shared.tls {
            None => (Box::new(tcp), None),
            Some(tls) => {
                let host = host_of(addr);
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| unreachable(format!("{host:?} is not a valid TLS server name: {e}")))?;
                let tls_stream = TlsConnector::from(tls.client.clone()).connect(name, tcp).await.map_err(|e| {
                    shared.metrics.handshake_failed(handshake::RejectReason::Tls);
                    TransportError::Tls {
                        peer: peer.clone(),
                        reason: connection::tls_cause(&e).unwrap_or_else(|| e.to_string()),
                    }
                })?;
                let cert =
                    tls_stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                (Box::new(tls_stream), cert)
            }
        };

        let (mut reader, mut writer) = connection::split(stream, HANDSHAKE_MAX_BYTES);
        let started = Instant::now();
        if let Err(e) = handshake::initiate(&mut reader, &mut writer, cfg, pinned.then_some(peer), server_cert.as_ref()).await {
            let err = match e {
                InitiateError::Tls(reason) => {
                    shared.metrics.handshake_failed(handshake::RejectReason::Tls);
                    TransportError::Tls { peer: peer.clone(), reason }
                }
                InitiateError::Handshake(source) => {
                    shared.metrics.handshake_failed(source.reason());
                    TransportError::Handshake { peer: peer.clone(), source }
                }
            };
            return Err(err);
        }
        // The cluster handshake is one round trip: a first RTT sample.
        let rtt = started.elapsed();
        stats.record_rtt(rtt);
        shared.metrics.rtt(peer, rtt.as_secs_f64());

        reader.set_limit(cfg.max_frame_bytes);
        let bytes = shared.metrics.bytes(peer);
        reader.count_into(bytes.received);
        writer.count_into(bytes.sent);

        let (outbox, rx) = Outbox::new();
        let link = Arc::new(Link {
            peer: peer.clone(),
            outbox,
            pending: Mutex::new(Pending { waiting: HashMap::new(), closed: false }),
            next_id: AtomicU64::new(1),
            close: CloseSignal::new(),
            max_frame_bytes: cfg.max_frame_bytes,
        });
        let keepalive = Keepalive { every: cfg.keepalive_interval, epoch: Instant::now() };
        let epoch = keepalive.epoch;
        let guard = shutdown.clone();
        tokio::spawn({
            let close = link.close.clone();
            async move {
                connection::run_writer(writer, rx, close, Some(keepalive)).await;
                drop(guard);
            }
        });
        tokio::spawn(read_loop(link.clone(), reader, shared.clone(), stats, epoch, shutdown));
        Ok(link)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn request(&self, msg_type: u16, payload: Bytes) -> Result<Bytes, TransportError> {
        self.check_size(payload.len())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.lock_pending();
            if p.closed {
                return Err(self.closed_error());
            }
            p.waiting.insert(id, tx);
        }
        let _guard = PendingGuard { link: self, id };
        self.outbox
            .send(Frame::new(FrameKind::Request, msg_type, id, payload))
            .await
            .map_err(|_| self.closed_error())?;
        rx.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    pub async fn send(&self, msg_type: u16, payload: Bytes) -> Result<(), TransportError> {
        self.check_size(payload.len())?;
        if self.close.is_closed() {
            return Err(self.closed_error());
        }
        self.outbox.send(Frame::new(FrameKind::OneWay, msg_type, 0, payload)).await.map_err(|_| self.closed_error())
    }

    fn check_size(&self, len: usize) -> Result<(), TransportError> {
        frame::check_size(len, self.max_frame_bytes).map_err(|_| TransportError::FrameTooLarge {
            size: (frame::HEADER_BYTES + len) as u64,
            max: self.max_frame_bytes,
        })
    }

    pub fn close(&self, why: CloseReason) {
        self.close.close(why);
    }

    pub async fn closed(&self) {
        self.close.closed().await
    }

    pub fn is_closed(&self) -> bool {
        self.close.is_closed()
    }

    /// What a caller is told when the link is (or just went) down.
    fn closed_error(&self) -> TransportError {
        match self.close.reason() {
            Some(CloseReason::Shutdown) => TransportError::Closed,
            Some(CloseReason::PeerRemoved) => {
                TransportError::Unreachable { peer: self.peer.clone(), reason: "peer removed".into() }
            }
            Some(CloseReason::Lost(why)) => {
                TransportError::Unreachable { peer: self.peer.clone(), reason: format!("connection lost: {why}") }
            }
            None => TransportError::Unreachable { peer: self.peer.clone(), reason: "connection closed".into() },
        }
    }

    fn complete(&self, id: u64, reply: Reply) {
        let waiter = self.lock_pending().waiting.remove(&id);
        match waiter {
            // The caller may have given up in the meantime; that is fine.
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => {
                tracing::debug!(peer = %self.peer, request_id = id, "reply for a request nobody waits for (deadline passed)")
            }
        }
    }

    fn fail_all(&self) {
        let waiting = {
            let mut p = self.lock_pending();
            p.closed = true;
            std::mem::take(&mut p.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(self.closed_error()));
        }
    }
}

async fn read_loop(
    link: Arc<Link>,
    mut reader: StreamReader,
    shared: Arc<Shared>,
    stats: Arc<PeerStats>,
    epoch: Instant,
    _alive: Shutdown,
) {
    let idle = shared.cfg.idle_timeout();
    let lost = loop {
        let next = tokio::select! {
            biased;
            _ = link.close.closed() => break None,
            r = reader.read_frame(idle) => r,
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => break Some("the peer closed the connection".to_owned()),
            Err(e) => break Some(e.to_string()),
        };
        match frame.kind {
            FrameKind::Response => link.complete(frame.request_id, Ok(frame.payload)),
            FrameKind::ErrorResponse => {
                link.complete(frame.request_id, Err(TransportError::Remote(RemoteError::decode(&frame.payload))))
            }
            FrameKind::Pong => {
                let now = epoch.elapsed().as_nanos() as u64;
                if let Some(nanos) = now.checked_sub(frame.request_id) {
                    let rtt = Duration::from_nanos(nanos);
                    stats.record_rtt(rtt);
                    shared.metrics.rtt(&link.peer, rtt.as_secs_f64());
                }
            }
            other => break Some(format!("unexpected {other:?} frame from the server")),
        }
    };
    if let Some(why) = lost {
        tracing::warn!(peer = %link.peer, reason = %why, "cluster connection lost");
        link.close(CloseReason::Lost(why));
    }
    link.fail_all();
}

/// Resolves `addr` now (peers may move between attempts) and connects to the first address
/// that answers.
async fn dial(addr: &str) -> Result<TcpStream, String> {
    let addrs: Vec<_> =
        tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve {addr}: {e}"))?.collect();
    let mut last = format!("{addr} resolved to no address");
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                // Requests are small and latency-bound; the writer batches by itself.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("connect to {a}: {e}"),
        }
    }
    Err(last)
}
