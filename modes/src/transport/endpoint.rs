//! [`Transport`]: the handle a node holds — it serves the cluster port and reaches peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::net::TcpSocket;

use super::admission::{Admission, Credentials, Gate};
use super::metrics::TransportMetrics;
use super::peer::{self, Peer};
use super::refusals::RefusalLog;
use super::shared::Shared;
use super::shutdown::ShutdownController;
use super::{server, Handler, NodeId, TransportConfig, TransportError};

/// How long `shutdown` waits for connection tasks to finish closing their sockets.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One node's cluster endpoint. Cheap to clone; all clones share the same connections.
/// Dropping the last clone stops it as `shutdown` would (without waiting).
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Held only to look up or replace an entry, never across an await.
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    stop: ShutdownController,
}

/// A peer as `/health` and admin endpoints report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub addr: String,
    /// An outgoing connection is established and handshaken.
    pub connected: bool,
    /// Latest handshake or ping round trip.
    pub last_rtt: Option<Duration>,
    /// Failed connect attempts since the last success.
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl Transport {
    /// Binds the cluster port and starts serving. Registers the transport's metrics in
    /// `registry` under `meridian_transport_*`.
    pub async fn start(
        cfg: TransportConfig,
        handler: Arc<dyn Handler>,
        registry: &mut Registry,
    ) -> Result<Transport, TransportError> {
        cfg.validate().map_err(TransportError::InvalidConfig)?;
        let creds = Credentials {
            certificates: cfg.tls.as_ref().is_some_and(|t| t.verify_client),
            secret: cfg.secret.is_some(),
        };
        let gate = Gate::new(cfg.admission.clone(), creds).map_err(TransportError::InvalidConfig)?;
        if matches!(gate.policy(), Admission::Peers(_)) {
            gate.resolve().await;
        }
        let socket = if cfg.bind_addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        // A restarted node must get its port back while old connections sit in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(cfg.bind_addr)?;
        let listener = socket.listen(1024)?;
        let local_addr = listener.local_addr()?;

        let shared = Arc::new(Shared {
            tls: cfg.tls.clone(),
            metrics: TransportMetrics::register(registry),
            handler,
            gate,
            refusals: RefusalLog::default(),
            cfg,
        });
        let stop = ShutdownController::new();
        let handle = stop.handle().expect("a new controller hands out handles");
        tokio::spawn(server::accept_loop(listener, shared.clone(), handle));
        tracing::info!(
            node = %shared.cfg.node_id, cluster = %shared.cfg.cluster_id, addr = %local_addr,
            tls = shared.tls.is_some(), client_certificates = creds.certificates, secret = creds.secret,
            "cluster transport listening"
        );
        if let Some(w) = shared.gate.start_warning() {
            tracing::warn!(node = %shared.cfg.node_id, "{w}");
        }
        Ok(Transport { inner: Arc::new(Inner { shared, local_addr, peers: RwLock::new(HashMap::new()), stop }) })
    }

    /// The bound address (with the real port when `bind_addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.shared.cfg.node_id
    }

    /// Adds a peer, or changes its address (its current connection is closed). Nothing
    /// connects until the first request or send; `addr` (`host:port`) is resolved at each
    /// connect attempt.
    pub fn add_peer(&self, id: NodeId, addr: String) {
        self.insert_peer(id, addr, true)
    }

    /// Adds a peer known only by its address (e.g. the other node of an HA pair): `alias`
    /// names it locally, and whichever node of this cluster answers at `addr` is accepted —
    /// under TLS only if its certificate names the node id it claims.
    pub fn add_peer_alias(&self, alias: NodeId, addr: String) {
        self.insert_peer(alias, addr, false)
    }

    fn insert_peer(&self, id: NodeId, addr: String, pinned: bool) {
        let Some(handle) = self.inner.stop.handle() else {
            tracing::debug!(peer = %id, "add_peer after shutdown ignored");
            return;
        };
        let peer = {
            let mut peers = self.inner.write_peers();
            if let Some(old) = peers.get(&id) {
                if old.addr == addr {
                    return;
                }
                old.stop();
            }
            let peer = Peer::new(id.clone(), addr, pinned);
            peers.insert(id, peer.clone());
            peer
        };
        tokio::spawn(peer::run(peer, self.inner.shared.clone(), handle));
    }

    /// Forgets a peer: its connection closes and its waiting callers fail with `Unreachable`.
    pub fn remove_peer(&self, id: &NodeId) {
        if let Some(peer) = self.inner.write_peers().remove(id) {
            peer.stop();
        }
    }

    /// Sends a request and waits for its reply, for at most `deadline` (default:
    /// `request_timeout`) including any connect. Many requests may be in flight at once.
    pub async fn request(
        &self,
        peer: &NodeId,
        msg_type: u16,
        payload: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Bytes, TransportError> {
        let p = self.peer(peer)?;
        let deadline = deadline.unwrap_or(self.inner.shared.cfg.request_timeout);
        let attempt = async {
            let link = p.link().await?;
            link.request(msg_type, payload).await
        };
        match tokio::time::timeout(deadline, attempt).await {
            Ok(r) => r,
            Err(_) if self.inner.stop.is_signalled() => Err(TransportError::Closed),
            Err(_) => Err(TransportError::Timeout { peer: peer.clone() }),
        }
    }

    /// Queues a one-way message. `Ok` means queued on the peer's live connection, not
    /// delivered: messages still queued when a connection drops are lost, so streams must
    /// be acknowledged at the application level. Messages from one task go out in order;
    /// waits (bounded by `request_timeout`) for a connection and for queue space.
    pub async fn send(&self, peer: &NodeId, msg_type: u16, payload: Bytes) -> Result<(), TransportError> {
        let p = self.peer(peer)?;
        let attempt = async {
            let link = p.link().await?;
            link.send(msg_type, payload).await
        };
        match tokio::time::timeout(self.inner.shared.cfg.request_timeout, attempt).await {
            Ok(r) => r,
            Err(_) if self.inner.stop.is_signalled() => Err(TransportError::Closed),
            Err(_) => Err(TransportError::Timeout { peer: peer.clone() }),
        }
    }

    /// Every known peer, sorted by id.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let peers: Vec<Arc<Peer>> = self.inner.read_peers().values().cloned().collect();
        let mut out: Vec<PeerStatus> = peers
            .iter()
            .map(|p| PeerStatus {
                id: p.id.clone(),
                addr: p.addr.clone(),
                connected: p.is_connected(),
                last_rtt: p.stats.last_rtt(),
                consecutive_failures: p.stats.consecutive_failures(),
                last_error: p.stats.last_error(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Frame bytes sent to and received from every known peer since start (the sum of
    /// `meridian_transport_bytes_*_total` over them). Read-only, for reporting.
    pub fn bytes_exchanged(&self) -> u64 {
        let ids: Vec<NodeId> = self.inner.read_peers().keys().cloned().collect();
        ids.iter()
            .map(|id| {
                let b = self.inner.shared.metrics.bytes(id);
                b.sent.get() + b.received.get()
            })
            .sum()
    }

    /// Stops accepting, closes every connection (waiting callers fail with `Closed`) and
    /// waits — a bounded time — for the connection tasks to finish, so the port is free
    /// when this returns. Later calls fail with `Closed`. Idempotent.
    pub async fn shutdown(&self) {
        if !self.inner.stop.shutdown(SHUTDOWN_GRACE).await {
            tracing::warn!(node = %self.inner.shared.cfg.node_id, "cluster transport tasks still running after {SHUTDOWN_GRACE:?}");
        }
    }

    fn peer(&self, id: &NodeId) -> Result<Arc<Peer>, TransportError> {
        if self.inner.stop.is_signalled() {
            return Err(TransportError::Closed);
        }
        self.inner.read_peers().get(id).cloned().ok_or_else(|| TransportError::UnknownPeer(id.clone()))
    }
}

impl Inner {
    fn read_peers(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Arc<Peer>>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_peers(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Arc<Peer>>> {
        self.peers.write().unwrap_or_else(|p| p.into_inner())
    }
}
