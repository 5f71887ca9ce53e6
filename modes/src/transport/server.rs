//! The serving side: the accept loop and one task per incoming connection.
//!
//! At accept, before any handshake: in the plain set-up a connection from an address that is
//! not a configured peer's is refused (see `admission`), and the pending-handshake caps apply
//! (see `pending`); refusals are logged at a bounded rate (see `refusals`). An admitted
//! connection gets `connect_timeout` to finish TLS and the cluster handshake, whose
//! admission decides the name (`from`) its traffic carries. After that its reader spawns a task per request (bounded per connection, so a flood
//! pushes back on the socket instead of growing memory), passes one-way messages to a
//! per-connection task that delivers them in order, and answers pings itself. Anything that
//! is not a valid frame of the expected kind closes that connection, with a warning naming
//! the peer and the reason; other connections are untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::admission::NotAdmitted;
use super::connection::{self, BoxStream, CloseReason, CloseSignal, Outbox, StreamReader, StreamWriter};
use super::frame::{self, Frame, FrameKind};
use super::handshake::{self, Admitted, Refusal, RejectReason, HANDSHAKE_MAX_BYTES};
use super::pending::{PendingHandshakes, Slot};
use super::refusals::WINDOW;
use super::shared::Shared;
use super::shutdown::Shutdown;
use super::{NodeId, RemoteError};

/// Requests handled at once per connection; the reader waits for a slot beyond that.
const MAX_REQUESTS_IN_FLIGHT: usize = 1024;
/// One-way messages buffered per connection ahead of the handler.
const ONE_WAY_QUEUE: usize = 256;
/// Refused strangers being told why at once; beyond that they are just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused stranger's connection is drained before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(200);

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: Shutdown) {
    let pending = PendingHandshakes::new();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    tokio::spawn(summarise_refusals(shared.clone(), shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, remote)) => admit(tcp, remote, &shared, &pending, &refusing, &shutdown),
            Err(e) => {
                // E.g. out of file descriptors: pause rather than spin, keep serving.
                tracing::warn!(error = %e, "accepting a cluster connection failed");
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    // Dropping the listener here frees the port before `shutdown()` returns.
}

/// The checks made before any handshake: in the plain set-up, the source must be a
/// configured peer's address (looked up again, at most every few seconds, when it is not:
/// a peer's name may have moved); then the pending-handshake caps.
fn admit(
    tcp: TcpStream,
    remote: SocketAddr,
    shared: &Arc<Shared>,
    pending: &Arc<PendingHandshakes>,
    refusing: &Arc<Semaphore>,
    shutdown: &Shutdown,
) {
    let gate = &shared.gate;
    let known = gate.is_peer_address(remote.ip());
    if !gate.by_address() || known {
        return start_handshake(tcp, remote, known, shared, pending, shutdown);
    }
    if !gate.claim_refresh() {
        return refuse_stranger(tcp, remote, shared, refusing);
    }
    let (shared, pending, refusing, shutdown) = (shared.clone(), pending.clone(), refusing.clone(), shutdown.clone());
    tokio::spawn(async move {
        shared.gate.resolve().await;
        if shared.gate.is_peer_address(remote.ip()) {
            start_handshake(tcp, remote, true, &shared, &pending, &shutdown);
        } else {
            refuse_stranger(tcp, remote, &shared, &refusing);
        }
    });
}

fn start_handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    peer_address: bool,
    shared: &Arc<Shared>,
    pending: &Arc<PendingHandshakes>,
    shutdown: &Shutdown,
) {
    match pending.try_acquire(remote.ip(), peer_address) {
        Ok(slot) => {
            tokio::spawn(serve(tcp, remote, shared.clone(), shutdown.clone(), slot));
        }
        Err(full) => refused(shared, remote, Refusal::new(RejectReason::Busy, full.describe())),
    }
}

/// Tells a connection from a non-peer address why it is refused, then closes it. Draining
/// what the client already sent (briefly) lets the close be a FIN rather than a reset that
/// could destroy the reject frame before the client reads it.
fn refuse_stranger(tcp: TcpStream, remote: SocketAddr, shared: &Arc<Shared>, refusing: &Arc<Semaphore>) {
    let message = NotAdmitted::NotAPeerAddress(remote.ip().to_canonical()).to_string();
    refused(shared, remote, Refusal::new(RejectReason::NotAPeer, message.clone()));
    let Ok(permit) = refusing.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let mut tcp = tcp;
        let mut reject = BytesMut::new();
        handshake::reject_frame(RejectReason::NotAPeer, &message).encode(&mut reject);
        if tcp.try_write(&reject).is_ok() {
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tcp).await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        drop(permit);
    });
}

async fn summarise_refusals(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut every = tokio::time::interval(WINDOW);
    every.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = every.tick() => shared.refusals.summarise(),
        }
    }
}

async fn serve(tcp: TcpStream, remote: SocketAddr, shared: Arc<Shared>, shutdown: Shutdown, slot: Slot) {
    let _ = tcp.set_nodelay(true);
    let cfg = &shared.cfg;
    let opened = tokio::select! {
        biased;
        _ = shutdown.wait() => return,
        r = tokio::time::timeout(cfg.connect_timeout, open(tcp, remote, &shared)) => r,
    };
    drop(slot);
    let (admitted, reader, writer) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(refusal)) => return refused(&shared, remote, refusal),
        Err(_) => {
            let msg = format!("handshake not completed within {:?}", cfg.connect_timeout);
            return refused(&shared, remote, Refusal::new(RejectReason::Timeout, msg));
        }
    };
    let peer = &admitted.label;
    tracing::debug!(%peer, claimed_node = %admitted.claimed, %remote, "cluster peer connected");
    match run_connection(peer, reader, writer, &shared, &shutdown).await {
        Some(reason) => tracing::warn!(%peer, %remote, %reason, "closing cluster connection"),
        None => tracing::debug!(%peer, %remote, "cluster connection closed"),
    }
}

fn refused(shared: &Shared, remote: SocketAddr, r: Refusal) {
    shared.metrics.handshake_failed(r.reason);
    shared.refusals.record(remote, r.reason, r.claimed.as_deref(), &r.message);
}

/// TLS (if configured), the cluster handshake and admission. Returns the admitted peer.
async fn open(
    tcp: TcpStream,
    remote: SocketAddr,
    shared: &Shared,
) -> Result<(Admitted, StreamReader, StreamWriter), Refusal> {
    let (stream, client_cert): (BoxStream, Option<CertificateDer<'static>>) = match &shared.tls {
        None => (Box::new(tcp), None),
        Some(tls) => {
            let tls_stream = TlsAcceptor::from(tls.server.clone()).accept(tcp).await.map_err(|e| {
                Refusal::new(RejectReason::Tls, connection::tls_cause(&e).unwrap_or_else(|| e.to_string()))
            })?;
            // Only a verified certificate may vouch for an identity.
            let cert = if tls.verify_client {
                tls_stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned())
            } else {
                None
            };
            if tls.verify_client && cert.is_none() {
                return Err(Refusal::new(RejectReason::Tls, "no client certificate"));
            }
            (Box::new(tls_stream), cert)
        }
    };
    let (mut reader, mut writer) = connection::split(stream, HANDSHAKE_MAX_BYTES);
    let admitted =
        handshake::accept(&mut reader, &mut writer, &shared.cfg, &shared.gate, remote.ip(), client_cert.as_ref())
            .await
            .map_err(|mut r| {
                if r.looks_like_tls && shared.tls.is_none() {
                    r.message.push_str(" (this looks like a TLS client on a plaintext cluster port)");
                }
                r
            })?;
    Ok((admitted, reader, writer))
}

/// Serves an established connection until it closes. Returns the reason when it was closed
/// because of an error (bad frame, silent peer, I/O), `None` for a normal end.
async fn run_connection(
    node: &NodeId,
    mut reader: StreamReader,
    mut writer: StreamWriter,
    shared: &Arc<Shared>,
    shutdown: &Shutdown,
) -> Option<String> {
    let cfg = &shared.cfg;
    reader.set_limit(cfg.max_frame_bytes);
    let bytes = shared.metrics.bytes(node);
    reader.count_into(bytes.received);
    writer.count_into(bytes.sent);

    let close = CloseSignal::new();
    let (outbox, rx) = Outbox::new();
    tokio::spawn({
        let close = close.clone();
        let alive = shutdown.clone();
        async move {
            connection::run_writer(writer, rx, close, None).await;
            drop(alive);
        }
    });
    let (one_way_tx, one_way_rx) = mpsc::channel(ONE_WAY_QUEUE);
    tokio::spawn(deliver_in_order(node.clone(), one_way_rx, shared.clone(), shutdown.clone()));
    let slots = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    let idle = cfg.idle_timeout();

    let lost = loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.wait() => {
                close.close(CloseReason::Shutdown);
                break None;
            }
            _ = close.closed() => break None,
            r = reader.read_frame(idle) => r,
        };
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        };
        match frame.kind {
            FrameKind::Request => {
                let slot = tokio::select! {
                    _ = close.closed() => break None,
                    s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
                };
                let (handler, from, out, max) =
                    (shared.handler.clone(), node.clone(), outbox.clone(), cfg.max_frame_bytes);
                tokio::spawn(async move {
                    let reply = handle_request(handler, from, frame, max).await;
                    // Fails only when the connection is gone; the caller learns that on its side.
                    let _ = out.send(reply).await;
                    drop(slot);
                });
            }
            FrameKind::OneWay => {
                tokio::select! {
                    _ = close.closed() => break None,
                    r = one_way_tx.send(frame) => if r.is_err() { break None },
                }
            }
            FrameKind::Ping => {
                outbox.try_send_control(Frame::new(FrameKind::Pong, 0, frame.request_id, Bytes::new()));
            }
            other => break Some(format!("unexpected {other:?} frame from a client")),
        }
    };
    let why = match &lost {
        Some(why) => CloseReason::Lost(why.clone()),
        None => CloseReason::Lost("connection ended".into()),
    };
    close.close(why);
    lost
}

/// Runs the handler in its own task so a panic becomes an error reply, not a caller left
/// waiting for its deadline.
async fn handle_request(handler: Arc<dyn super::Handler>, from: NodeId, req: Frame, max_frame_bytes: usize) -> Frame {
    let (id, msg_type) = (req.request_id, req.msg_type);
    let task = tokio::spawn(async move { handler.on_request(&from, msg_type, req.payload).await });
    let error = |e: RemoteError| Frame::new(FrameKind::ErrorResponse, msg_type, id, e.encode());
    match task.await {
        Ok(Ok(payload)) => match frame::check_size(payload.len(), max_frame_bytes) {
            Ok(()) => Frame::new(FrameKind::Response, msg_type, id, payload),
            Err(e) => error(RemoteError::new("frame_too_large", format!("reply not sent: {e}"))),
        },
        Ok(Err(e)) => error(e),
        Err(join) => {
            tracing::error!(msg_type, error = %join, "request handler panicked");
            error(RemoteError::new("internal", "the request handler failed"))
        }
    }
}

/// Delivers one connection's one-way messages to the handler, one at a time, in order.
/// Messages already received when the connection ends are still delivered; only shutdown
/// cuts the queue short.
async fn deliver_in_order(from: NodeId, mut rx: mpsc::Receiver<Frame>, shared: Arc<Shared>, alive: Shutdown) {
    loop {
        let frame = tokio::select! {
            biased;
            _ = alive.wait() => break,
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
        };
        shared.handler.on_message(&from, frame.msg_type, frame.payload).await;
    }
}
