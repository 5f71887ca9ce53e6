//! Shared by the `transport_*` tests: a recording handler, node start-up on 127.0.0.1:0,
//! and reading a metric back from a node's registry.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use meridian_modes::transport::{
    Handler, NodeId, RemoteError, TlsPaths, TlsSettings, TlsVersion, Transport, TransportConfig,
};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

pub const CLUSTER: &str = "test-cluster";

/// Message types understood by [`TestHandler`].
pub const ECHO: u16 = 1;
/// Payload: 8-byte BE delay in milliseconds, then anything; replies after the delay.
pub const DELAYED_ECHO: u16 = 2;
pub const FAIL: u16 = 3;
pub const PANIC: u16 = 4;

/// Replies `<this node>|<from>|<msg_type>|<payload>` so a caller can check the reply is for
/// its own request, from the node it asked, which saw the caller's identity.
pub struct TestHandler {
    pub node: NodeId,
    pub messages: Mutex<Vec<(NodeId, u16, Bytes)>>,
    pub message_arrived: Notify,
}

impl TestHandler {
    pub fn new(node: &str) -> Arc<TestHandler> {
        Arc::new(TestHandler { node: node.into(), messages: Mutex::new(Vec::new()), message_arrived: Notify::new() })
    }

    pub fn reply_for(node: &str, from: &str, msg_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = format!("{node}|{from}|{msg_type}|").into_bytes();
        v.extend_from_slice(payload);
        v
    }

    /// Waits (bounded) until at least `n` one-way messages arrived; returns them.
    pub async fn wait_messages(&self, n: usize, within: Duration) -> Vec<(NodeId, u16, Bytes)> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let notified = self.message_arrived.notified();
            {
                let m = self.messages.lock().unwrap();
                if m.len() >= n {
                    return m.clone();
                }
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.messages.lock().unwrap().clone();
            }
        }
    }
}

#[async_trait]
impl Handler for TestHandler {
    async fn on_request(&self, from: &NodeId, msg_type: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
        match msg_type {
            DELAYED_ECHO => {
                let ms = u64::from_be_bytes(payload[..8].try_into().unwrap());
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            FAIL => return Err(RemoteError::new("not_leader", String::from_utf8_lossy(&payload))),
            PANIC => panic!("test handler asked to panic"),
            _ => {}
        }
        Ok(Bytes::from(Self::reply_for(&self.node, from, msg_type, &payload)))
    }

    async fn on_message(&self, from: &NodeId, msg_type: u16, payload: Bytes) {
        self.messages.lock().unwrap().push((from.clone(), msg_type, payload));
        self.message_arrived.notify_waiters();
    }
}

pub struct Node {
    pub t: Transport,
    pub handler: Arc<TestHandler>,
    pub registry: Registry,
}

impl Node {
    pub fn addr(&self) -> String {
        self.t.local_addr().to_string()
    }

    /// A metric's value from this node's registry; 0 when the series does not exist yet.
    /// `series` is the exposition name with labels, e.g.
    /// `meridian_transport_handshake_failures_total{reason="tls"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.registry, series)
    }
}

pub fn metric(registry: &Registry, series: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Timeouts short enough for tests that wait on them, long enough for a loaded 2-core box.
pub fn config(node: &str, port: u16) -> TransportConfig {
    let mut cfg = TransportConfig::new(CLUSTER, node, format!("127.0.0.1:{port}").parse().unwrap());
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.keepalive_interval = Duration::from_millis(500);
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(400);
    cfg
}

pub async fn start(cfg: TransportConfig) -> Node {
    let handler = TestHandler::new(&cfg.node_id);
    let mut registry = Registry::default();
    let t = Transport::start(cfg, handler.clone(), &mut registry).await.expect("transport starts");
    Node { t, handler, registry }
}

pub async fn start_plain(node: &str) -> Node {
    start(config(node, 0)).await
}

/// TLS settings from the files `certs::generate` writes.
pub fn tls_paths(dir: &Path, cert_node: &str, ca_dir: &Path, verify_client: bool, min: TlsVersion) -> TlsPaths {
    TlsPaths {
        cert_file: Some(dir.join(format!("{cert_node}.pem"))),
        key_file: Some(dir.join(format!("{cert_node}-key.pem"))),
        ca_file: Some(ca_dir.join("ca.pem")),
        verify_client,
        min_version: min,
    }
}

pub fn tls(dir: &Path, cert_node: &str) -> TlsSettings {
    TlsSettings::load(&tls_paths(dir, cert_node, dir, true, TlsVersion::V1_3)).expect("test certificates load")
}

pub fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// `ECHO` round trip that checks the reply is the one for this request.
pub async fn echo_ok(from: &Node, to: &str, tag: &str) {
    let got = from
        .t
        .request(&to.to_string(), ECHO, Bytes::from(tag.to_owned()), Some(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("request {tag} from {} to {to} failed: {e}", from.t.node_id()));
    assert_eq!(&got[..], &TestHandler::reply_for(to, from.t.node_id(), ECHO, tag.as_bytes())[..]);
}
