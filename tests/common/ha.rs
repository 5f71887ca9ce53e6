//! An HA pair (and optional witness) of real processes wired through cuttable proxies:
//! A reaches B through `a_to_b`, B reaches A through `b_to_a`, each reaches the witness
//! through its own proxy.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::proxy::Proxy;
use super::{free_port, http, http_json, Node, Target};

pub struct HaOpts {
    pub sync_mode: &'static str,
    pub witness: bool,
    pub heartbeat_ms: u64,
    pub failover: &'static str,
    pub extra: Vec<(&'static str, String)>,
    /// Mutual TLS on the cluster port, with certificates from `meridian certs generate`.
    pub tls: bool,
    /// Start with A and B cut from each other (and do not wait for a primary and a standby).
    pub partitioned: bool,
    /// With `witness`: start with both links to the witness cut, as when the witness starts
    /// after the data nodes (and do not wait for a primary and a standby).
    pub witness_late: bool,
    /// Node A's data directory (default: `a` in the pair's directory): a test that fills
    /// A's disk puts it on a small filesystem. Its log goes beside it.
    pub a_data: Option<std::path::PathBuf>,
    /// Node B's data directory, likewise.
    pub b_data: Option<std::path::PathBuf>,
    /// `ulimit -f` for node B, in 512-byte blocks (see `Node::start_env_limited`).
    pub b_file_size_limit_blocks: Option<u64>,
}

impl Default for HaOpts {
    fn default() -> Self {
        HaOpts { sync_mode: "sync", witness: false, heartbeat_ms: 200, failover: "1500ms", extra: vec![], tls: false, partitioned: false, witness_late: false, a_data: None, b_data: None, b_file_size_limit_blocks: None }
    }
}

pub struct HaPair {
    pub dir: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
    pub w: Option<Node>,
    pub a_to_b: Proxy,
    pub b_to_a: Proxy,
    pub a_to_w: Option<Proxy>,
    pub b_to_w: Option<Proxy>,
}

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// The environment for mutual TLS on the cluster port with `id`'s certificate in `certs`.
pub fn tls_env(certs: &std::path::Path, id: &str) -> Vec<(String, String)> {
    let f = |name: String| certs.join(name).display().to_string();
    vec![
        ("MERIDIAN_CLUSTER_TLS_ENABLED".into(), "true".into()),
        ("MERIDIAN_CLUSTER_TLS_CERT_FILE".into(), f(format!("{id}.pem"))),
        ("MERIDIAN_CLUSTER_TLS_KEY_FILE".into(), f(format!("{id}-key.pem"))),
        ("MERIDIAN_CLUSTER_TLS_CA_FILE".into(), f("ca.pem".into())),
        ("MERIDIAN_CLUSTER_TLS_VERIFY_CLIENT".into(), "true".into()),
        ("MERIDIAN_CLUSTER_TLS_MIN_VERSION".into(), "1.3".into()),
    ]
}

fn node_env(id: &str, role: &str, cluster_port: u16, peer: &str, witness: Option<&str>, o: &HaOpts) -> Vec<(String, String)> {
    let mut env = vec![
        ("MERIDIAN_CLUSTER_MODE".into(), "ha_standby".into()),
        ("MERIDIAN_CLUSTER_NODE_ID".into(), id.into()),
        ("MERIDIAN_CLUSTER_BIND_ADDR".into(), format!("127.0.0.1:{cluster_port}")),
        ("MERIDIAN_CLUSTER_HA_ROLE".into(), role.into()),
        ("MERIDIAN_CLUSTER_HA_PEER_ADDR".into(), peer.into()),
        ("MERIDIAN_CLUSTER_HA_SYNC_MODE".into(), o.sync_mode.into()),
        ("MERIDIAN_CLUSTER_HA_HEARTBEAT_MS".into(), o.heartbeat_ms.to_string()),
        ("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT".into(), o.failover.into()),
        ("MERIDIAN_CLUSTER_HA_SYNC_TIMEOUT".into(), "1s".into()),
    ];
    if let Some(w) = witness {
        env.push(("MERIDIAN_CLUSTER_HA_WITNESS_ADDR".into(), w.into()));
    }
    for (k, v) in &o.extra {
        env.push((k.to_string(), v.clone()));
    }
    env
}

impl HaPair {
    pub fn start(o: HaOpts) -> HaPair {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        if o.tls {
            let (code, out, err) = super::run_to_exit(
                &["certs", "generate", "--out", certs.to_str().unwrap(), "--nodes", "node-a,node-b,witness"],
                &[],
                dir.path(),
            );
            assert_eq!(code, 0, "{out}{err}");
        }
        let tls = |id: &str| if o.tls { tls_env(&certs, id) } else { vec![] };
        let (ca, cb, cw) = (free_port(), free_port(), free_port());
        let a_to_b = Proxy::start(addr(cb));
        let b_to_a = Proxy::start(addr(ca));
        if o.partitioned {
            a_to_b.cut();
            b_to_a.cut();
        }
        let (mut w, mut a_to_w, mut b_to_w) = (None, None, None);
        if o.witness {
            let mut env = tls("witness");
            env.extend([
                ("MERIDIAN_CLUSTER_MODE".to_string(), "witness".to_string()),
                ("MERIDIAN_CLUSTER_NODE_ID".to_string(), "witness".to_string()),
                ("MERIDIAN_CLUSTER_BIND_ADDR".to_string(), format!("127.0.0.1:{cw}")),
                ("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT".to_string(), o.failover.to_string()),
                // The data nodes it admits (they reach it through proxies, from 127.0.0.1).
                ("MERIDIAN_CLUSTER_HA_PEER_ADDR".to_string(), format!("127.0.0.1:{ca},127.0.0.1:{cb}")),
            ]);
            for (k, v) in &o.extra {
                if *k == "MERIDIAN_CLUSTER_SECRET" {
                    env.push((k.to_string(), v.clone()));
                }
            }
            w = Some(Node::start_env(&dir.path().join("w"), env));
            a_to_w = Some(Proxy::start(addr(cw)));
            b_to_w = Some(Proxy::start(addr(cw)));
            if o.witness_late {
                a_to_w.as_ref().unwrap().cut();
                b_to_w.as_ref().unwrap().cut();
            }
        }
        let mut a_env = node_env("node-a", "primary", ca, &a_to_b.addr(), a_to_w.as_ref().map(|p| p.addr()).as_deref(), &o);
        let mut b_env = node_env("node-b", "standby", cb, &b_to_a.addr(), b_to_w.as_ref().map(|p| p.addr()).as_deref(), &o);
        a_env.extend(tls("node-a"));
        b_env.extend(tls("node-b"));
        let a = Node::start_env(&o.a_data.clone().unwrap_or_else(|| dir.path().join("a")), a_env);
        let b = Node::start_env_limited(&o.b_data.clone().unwrap_or_else(|| dir.path().join("b")), b_env, o.b_file_size_limit_blocks);
        let pair = HaPair { dir, a, b, w, a_to_b, b_to_a, a_to_w, b_to_w };
        if o.partitioned || o.witness_late {
            return pair;
        }
        wait_role(&pair.a, "primary", Duration::from_secs(20));
        wait_streaming(&pair.b, Duration::from_secs(20));
        pair
    }

    /// Cuts A from B (both directions).
    pub fn partition(&self) {
        self.a_to_b.cut();
        self.b_to_a.cut();
    }

    pub fn heal(&self) {
        self.a_to_b.heal();
        self.b_to_a.heal();
    }
}

pub fn health(n: &impl Target) -> serde_json::Value {
    let (_, body) = http("GET", &n.url("/health"), None);
    serde_json::from_slice(&body).unwrap_or_default()
}

pub fn role(n: &impl Target) -> String {
    health(n)["replication"]["role"].as_str().unwrap_or("").to_owned()
}

pub fn wait_role(n: &impl Target, want: &str, within: Duration) -> Duration {
    wait_role_with(n, want, within, String::new)
}

/// [`wait_role`], whose failure also shows `other`'s log: a failover that does not happen is
/// usually explained by what the old primary did last.
pub fn wait_role_showing(n: &impl Target, other: &impl Target, want: &str, within: Duration) -> Duration {
    wait_role_with(n, want, within, || format!("\nthe other node's log:\n{}", other.log_text()))
}

fn wait_role_with(n: &impl Target, want: &str, within: Duration, more: impl Fn() -> String) -> Duration {
    let start = Instant::now();
    loop {
        if role(n) == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "node never became {want}: {}\nlog:\n{}{}", health(n), n.log_text(), more());
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_streaming(n: &impl Target, within: Duration) {
    let start = Instant::now();
    loop {
        let h = health(n);
        if h["replication"]["state"] == "streaming" {
            return;
        }
        assert!(start.elapsed() < within, "standby never streamed: {h}\nlog:\n{}", n.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until both nodes report the same digest.
pub fn wait_converged(x: &impl Target, y: &impl Target, within: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (dx, dy) = (http_json("GET", &x.url("/admin/digest")), http_json("GET", &y.url("/admin/digest")));
        if dx["sha256"] == dy["sha256"] && dx["keys"] == dy["keys"] {
            return dx;
        }
        assert!(start.elapsed() < within, "digests never converged: {dx} vs {dy}\nlog x:\n{}\nlog y:\n{}", x.log_text(), y.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}
