//! Transport settings. The node's configuration layer fills these from `MERIDIAN_CLUSTER_*`
//! variables; [`TransportConfig::new`] gives the defaults for everything but identity.

use std::net::SocketAddr;
use std::time::Duration;

use super::admission::Admission;
use super::secret::ClusterSecret;
use super::tls::TlsSettings;
use super::NodeId;

/// Largest frame (header plus payload) either side accepts, unless configured otherwise.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Peers with another cluster id are refused at the handshake.
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Port 0 picks a free port; [`Transport::local_addr`](super::Transport::local_addr) tells which.
    pub bind_addr: SocketAddr,
    /// `None`: plaintext, and peers are identified only by what they claim in the handshake.
    pub tls: Option<TlsSettings>,
    /// Who may connect to this node, and the name (`from`) their traffic carries. Default
    /// [`Admission::Any`]; a node sets the peers its mode talks to.
    pub admission: Admission,
    /// A shared secret both ends prove in the handshake (`MERIDIAN_CLUSTER_SECRET`); every
    /// node of the cluster must have the same one, or none.
    pub secret: Option<ClusterSecret>,
    /// Limit for frames in both directions. Every node of a cluster should use the same value:
    /// a receiver closes the connection on a frame over its own limit.
    pub max_frame_bytes: usize,
    /// Bound on one connect attempt: name resolution, TCP, TLS and the cluster handshake.
    /// The server gives an incoming connection the same time to complete its handshake.
    pub connect_timeout: Duration,
    /// Deadline of a request when the caller gives none, and of `send` waiting for a
    /// connection or queue space.
    pub request_timeout: Duration,
    /// A ping is sent this often on every outgoing connection. A connection on which nothing
    /// has been received for three intervals is considered dead and closed (on both sides,
    /// so all nodes should use the same value).
    pub keepalive_interval: Duration,
    /// First wait after a failed connect; doubles per consecutive failure up to `backoff_max`,
    /// with jitter (each wait is drawn from the upper half of the doubled interval).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl TransportConfig {
    pub fn new(cluster_id: impl Into<String>, node_id: impl Into<NodeId>, bind_addr: SocketAddr) -> TransportConfig {
        TransportConfig {
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
            bind_addr,
            tls: None,
            admission: Admission::Any,
            secret: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }

    /// Checks what the transport cannot work with; returns the reason for the first problem.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let id_ok = |s: &str| !s.is_empty() && s.len() <= 255;
        if !id_ok(&self.cluster_id) {
            return Err("cluster_id must be 1-255 bytes".into());
        }
        if !id_ok(&self.node_id) {
            return Err("node_id must be 1-255 bytes".into());
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > u32::MAX as usize {
            return Err(format!("max_frame_bytes must be between 1 KiB and 4 GiB, got {}", self.max_frame_bytes));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("backoff_initial", self.backoff_initial),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return Err("backoff_max must be at least backoff_initial".into());
        }
        Ok(())
    }

    /// Silence after which a connection is declared dead.
    pub(crate) fn idle_timeout(&self) -> Duration {
        self.keepalive_interval * 3
    }
}
