//! Admission: which incoming connections the cluster port serves, and the name their traffic
//! carries to the [`Handler`](super::Handler) (`from`).
//!
//! A mode states who may send to it ([`Admission`] in the transport configuration). How a
//! connecting node proves it is one of them depends on the credentials the transport has:
//!
//! | credentials | the connecting node must | checked |
//! |---|---|---|
//! | mTLS (TLS with `verify_client`) | hold a certificate from the cluster CA that names the host of a configured peer address (DNS SAN = the host, or IP SAN = the host or one of its resolved addresses) or the peer's node id | in the handshake, after TLS |
//! | cluster secret | prove the secret in the handshake (see `secret`) | in the handshake |
//! | both | both of the above | in the handshake |
//! | neither | connect from a resolved address of a configured peer | at accept, before any handshake |
//!
//! A refused connection gets a `HandshakeReject` with [`RejectReason::NotAPeer`]
//! (best effort) and is closed. Peer addresses are resolved at start and again, at most every
//! [`REFRESH_EVERY`], when a connection comes from an address not on the list, because
//! container names can move to another address.
//!
//! [`RejectReason::NotAPeer`]: super::RejectReason::NotAPeer

use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;

use super::address::host_of;
use super::tls::{certificate_names, certificate_names_host, certificate_names_ip};
use super::NodeId;

/// Shortest interval between two resolutions triggered by unknown source addresses.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Bound on resolving one peer's host name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who may open connections to this node's cluster port.
#[derive(Clone, Debug, Default)]
pub enum Admission {
    /// Every node that completes the handshake; `from` is the node id it claims (verified
    /// against its certificate with mTLS). For tests and embedding: a Meridian node never
    /// uses it.
    #[default]
    Any,
    /// Any node that proves cluster membership — a client certificate from the cluster CA or
    /// the cluster secret — with `from` = `label`. The transport refuses to start with this
    /// policy when it has neither credential. (The witness when the data nodes are not listed.)
    Members { label: String },
    /// Only these peers; `from` is the matched peer's label.
    Peers(Vec<AllowedPeer>),
    /// Any node that proves cluster membership (as for [`Admission::Members`]), with `from` =
    /// the node id it claims — named by its certificate under mTLS (checked in the
    /// handshake); with the cluster secret alone, any holder of the secret may claim any
    /// name. For clusters whose members change at run time (Raft); the mode decides what
    /// each name may do.
    Claimed,
}

/// One node allowed to connect, as the mode configured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedPeer {
    /// What the handler receives as `from` for this peer's traffic: its role, e.g. `peer`.
    pub label: String,
    /// `host:port` as configured (the port is not checked: a peer connects from any port).
    pub addr: String,
    /// A node id the peer's certificate may name instead of its host (Raft members).
    pub node_id: Option<NodeId>,
}

impl AllowedPeer {
    pub fn new(label: impl Into<String>, addr: impl Into<String>) -> AllowedPeer {
        AllowedPeer { label: label.into(), addr: addr.into(), node_id: None }
    }

    /// The host part of `addr` (brackets of an IPv6 literal removed).
    pub fn host(&self) -> &str {
        host_of(&self.addr)
    }
}

/// Why a connection was not admitted; the message goes to the client and the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error("no client certificate")]
    NoCertificate,
    #[error("the client certificate names none of the configured peers ({hosts})")]
    CertificateNamesNoPeer { hosts: String },
    #[error("{0} is not an address of a configured peer")]
    NotAPeerAddress(IpAddr),
    #[error("cannot tell which configured peer this is ({addrs}): give each node a certificate naming only its own host")]
    Ambiguous { addrs: String },
}

/// How connecting nodes prove who they are, from the transport's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// TLS with client verification: a verified client certificate on every connection.
    pub certificates: bool,
    pub secret: bool,
}

impl Credentials {
    /// Neither: the source address is the only evidence.
    pub fn address_only(self) -> bool {
        !self.certificates && !self.secret
    }
}

/// The admission policy at run time: the policy, the credentials, and the peers' addresses.
pub(crate) struct Gate {
    policy: Admission,
    creds: Credentials,
    /// Per peer (same order as in `Admission::Peers`), its resolved addresses.
    resolved: RwLock<Vec<Vec<IpAddr>>>,
    last_resolve: Mutex<Option<Instant>>,
}

impl Gate {
    /// Checks the policy against the credentials; the error says what to change.
    pub fn new(policy: Admission, creds: Credentials) -> Result<Gate, String> {
        match &policy {
            Admission::Members { .. } | Admission::Claimed if creds.address_only() => {
                return Err("admitting any cluster member needs client certificates (TLS with verify_client) or a cluster secret".into())
            }
            Admission::Peers(peers) if peers.is_empty() => return Err("the admission list has no peers".into()),
            Admission::Peers(peers) => {
                for p in peers {
                    let port = p.addr.rsplit_once(':').map(|(_, port)| port);
                    if p.host().is_empty() || port.and_then(|port| port.parse::<u16>().ok()).is_none() {
                        return Err(format!("peer address {:?} is not host:port", p.addr));
                    }
                }
            }
            _ => {}
        }
        let n = match &policy {
            Admission::Peers(p) => p.len(),
            _ => 0,
        };
        Ok(Gate { policy, creds, resolved: RwLock::new(vec![Vec::new(); n]), last_resolve: Mutex::new(None) })
    }

    pub fn policy(&self) -> &Admission {
        &self.policy
    }

    fn peers(&self) -> &[AllowedPeer] {
        match &self.policy {
            Admission::Peers(p) => p,
            _ => &[],
        }
    }

    /// Whether connections are refused at accept unless their source is a peer's address.
    pub fn by_address(&self) -> bool {
        self.creds.address_only() && !self.peers().is_empty()
    }

    /// Whether `ip` is a resolved address of a configured peer.
    pub fn is_peer_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.resolved.read().unwrap_or_else(|p| p.into_inner()).iter().any(|ips| ips.contains(&ip))
    }

    /// Resolves every peer's host. A host that does not resolve keeps its previous addresses
    /// (a name missing for a moment should not lock its node out).
    pub async fn resolve(&self) {
        *self.last_resolve.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let mut found = Vec::with_capacity(self.peers().len());
        for p in self.peers() {
            found.push(resolve_host(&p.addr).await);
        }
        let mut resolved = self.resolved.write().unwrap_or_else(|p| p.into_inner());
        for (i, ips) in found.into_iter().enumerate() {
            match ips {
                Ok(ips) => {
                    if resolved[i] != ips {
                        tracing::debug!(peer = %self.peers()[i].addr, ?ips, "cluster peer address resolved");
                    }
                    resolved[i] = ips;
                }
                // Only the plain set-up depends on it; otherwise it is a peer not up yet.
                Err(e) if self.creds.address_only() => {
                    tracing::warn!(peer = %self.peers()[i].addr, error = %e, kept = ?resolved[i], "cannot resolve a configured cluster peer's address")
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peers()[i].addr, error = %e, "cannot resolve a configured cluster peer's address")
                }
            }
        }
    }

    /// True (once per [`REFRESH_EVERY`]) when the caller should resolve again.
    pub fn claim_refresh(&self) -> bool {
        let mut last = self.last_resolve.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if t.elapsed() < REFRESH_EVERY => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }

    /// The name the handler sees for an admitted connection, or why it is refused. Called in
    /// the handshake, after TLS verified `cert` (when there is one) and after the claimed
    /// node id was checked against it; the secret is checked separately.
    pub fn admit(&self, remote: IpAddr, cert: Option<&CertificateDer<'_>>, claimed: &NodeId) -> Result<String, NotAdmitted> {
        let peers = match &self.policy {
            Admission::Any => return Ok(claimed.clone()),
            Admission::Members { label } => return Ok(label.clone()),
            Admission::Claimed => return Ok(claimed.clone()),
            Admission::Peers(p) => p,
        };
        let remote = remote.to_canonical();
        let resolved = self.resolved.read().unwrap_or_else(|p| p.into_inner()).clone();
        let from_address = |i: usize| resolved[i].contains(&remote);
        let mut candidates: Vec<usize> = (0..peers.len()).collect();
        if self.creds.certificates {
            let cert = cert.ok_or(NotAdmitted::NoCertificate)?;
            candidates.retain(|&i| {
                let p = &peers[i];
                certificate_names_host(cert, p.host())
                    || p.node_id.as_deref().is_some_and(|id| certificate_names(cert, id))
                    || resolved[i].iter().any(|ip| certificate_names_ip(cert, *ip))
            });
            if candidates.is_empty() {
                let hosts = peers.iter().map(|p| p.host()).collect::<Vec<_>>().join(", ");
                return Err(NotAdmitted::CertificateNamesNoPeer { hosts });
            }
        } else if self.creds.address_only() {
            candidates.retain(|&i| from_address(i));
            if candidates.is_empty() {
                return Err(NotAdmitted::NotAPeerAddress(remote));
            }
        }
        // Several peers fit (one certificate for several hosts, or only the secret): the
        // claimed id, then the source address, tell them apart.
        let by_id = |i: usize| peers[i].node_id.as_ref() == Some(claimed);
        let narrowers: [&dyn Fn(usize) -> bool; 2] = [&by_id, &from_address];
        for narrow in narrowers {
            if distinct_labels(peers, &candidates) > 1 {
                let narrowed: Vec<usize> = candidates.iter().copied().filter(|&i| narrow(i)).collect();
                if !narrowed.is_empty() {
                    candidates = narrowed;
                }
            }
        }
        if distinct_labels(peers, &candidates) > 1 {
            let addrs = candidates.iter().map(|&i| peers[i].addr.as_str()).collect::<Vec<_>>().join(", ");
            return Err(NotAdmitted::Ambiguous { addrs });
        }
        Ok(peers[candidates[0]].label.clone())
    }

    /// What the operator should know about this policy at start: `Some` is a warning.
    pub fn start_warning(&self) -> Option<String> {
        let addrs = || self.peers().iter().map(|p| p.addr.as_str()).collect::<Vec<_>>().join(", ");
        let fix = "enable mTLS (MERIDIAN_CLUSTER_TLS_ENABLED=true with MERIDIAN_CLUSTER_TLS_VERIFY_CLIENT=true and a certificate per node naming its host) or set the same MERIDIAN_CLUSTER_SECRET on every node";
        match &self.policy {
            Admission::Any => Some(format!(
                "the cluster port admits any node that completes the handshake{}",
                if self.creds.address_only() { "; cluster traffic is NOT authenticated" } else { "" }
            )),
            Admission::Members { label } => Some(format!(
                "the cluster port admits any node holding {} as {label:?}; list the nodes allowed to connect to narrow it",
                if self.creds.certificates { "a certificate from the cluster CA" } else { "the cluster secret" }
            )),
            Admission::Peers(_) if self.creds.address_only() => Some(format!(
                "cluster traffic is NOT authenticated: connections are admitted by source address only (peers: {}). Anyone who can send from those addresses or sits on the network path can act as a peer; {fix}",
                addrs()
            )),
            Admission::Peers(_) => None,
            Admission::Claimed if !self.creds.certificates => Some(
                "the cluster port admits any holder of the cluster secret under the node name it claims; use mTLS (TLS with verify_client) to bind names to certificates".into(),
            ),
            Admission::Claimed => None,
        }
    }
}

fn distinct_labels(peers: &[AllowedPeer], candidates: &[usize]) -> usize {
    let mut labels: Vec<&str> = candidates.iter().map(|&i| peers[i].label.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    labels.len()
}

async fn resolve_host(addr: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host_of(addr).parse::<IpAddr>() {
        return Ok(vec![ip.to_canonical()]);
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Err(_) => Err(format!("no answer within {RESOLVE_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(found)) => {
            let mut ips: Vec<IpAddr> = found.map(|a| a.ip().to_canonical()).collect();
            ips.sort();
            ips.dedup();
            Ok(ips)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(peers: &[(&str, &str)], creds: Credentials) -> Gate {
        Gate::new(Admission::Peers(peers.iter().map(|(l, a)| AllowedPeer::new(*l, *a)).collect()), creds).unwrap()
    }

    const PLAIN: Credentials = Credentials { certificates: false, secret: false };
    const SECRET: Credentials = Credentials { certificates: false, secret: true };

    #[tokio::test]
    async fn plain_admits_only_a_peer_address_and_names_it_by_label() {
        let g = gate(&[("peer", "127.0.0.1:7688")], PLAIN);
        g.resolve().await;
        assert!(g.by_address());
        assert!(g.is_peer_address("127.0.0.1".parse().unwrap()));
        assert!(g.is_peer_address("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!g.is_peer_address("127.0.0.2".parse().unwrap()));
        assert_eq!(g.admit("127.0.0.1".parse().unwrap(), None, &"anything".into()), Ok("peer".into()));
        assert!(g.admit("127.0.0.2".parse().unwrap(), None, &"peer".into()).is_err());
    }

    #[tokio::test]
    async fn secret_alone_uses_the_address_only_to_pick_a_label() {
        let g = gate(&[("a", "127.0.0.2:1"), ("b", "127.0.0.3:1")], SECRET);
        g.resolve().await;
        assert!(!g.by_address());
        assert_eq!(g.admit("127.0.0.3".parse().unwrap(), None, &"x".into()), Ok("b".into()));
        assert!(g.admit("127.0.0.9".parse().unwrap(), None, &"x".into()).is_err(), "ambiguous");
        let same = gate(&[("data-node", "127.0.0.2:1"), ("data-node", "127.0.0.3:1")], SECRET);
        assert_eq!(same.admit("10.0.0.1".parse().unwrap(), None, &"x".into()), Ok("data-node".into()));
    }

    #[test]
    fn policies_that_cannot_work_are_refused() {
        assert!(Gate::new(Admission::Members { label: "m".into() }, PLAIN).is_err());
        assert!(Gate::new(Admission::Members { label: "m".into() }, SECRET).is_ok());
        assert!(Gate::new(Admission::Claimed, PLAIN).is_err(), "names nobody proved must not be trusted");
        let claimed = Gate::new(Admission::Claimed, SECRET).unwrap();
        assert_eq!(claimed.admit("127.0.0.9".parse().unwrap(), None, &"n4".to_string()).unwrap(), "n4");
        assert!(claimed.start_warning().is_some_and(|w| w.contains("any holder of the cluster secret")));
        assert!(Gate::new(Admission::Peers(vec![]), SECRET).is_err());
        assert!(Gate::new(Admission::Peers(vec![AllowedPeer::new("p", "nohost")]), SECRET).is_err());
        assert_eq!(AllowedPeer::new("p", "[::1]:7688").host(), "::1");
    }

    #[test]
    fn refresh_is_claimed_at_most_once_per_interval() {
        let g = gate(&[("peer", "127.0.0.1:7688")], PLAIN);
        assert!(g.claim_refresh());
        assert!(!g.claim_refresh());
    }
}
