//! The node's Prometheus registry (prometheus-client: one registry per node, no global
//! recorder, so several nodes can live in one test process).
//!
//! Latency histograms are recorded as things happen; replication figures are read from the
//! mode's [`ReplicationStatus`] and the WAL on every scrape by [`StatusCollector`], so they can
//! never drift from what `/health` reports.

use std::sync::{Arc, RwLock};

use meridian_modes::Replicator;
use meridian_wal::Wal;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Every label has a bounded set of values: `method` from [`method_label`], `route` the
/// matched route template (or `unmatched`), never the raw path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// The `method` label: a known method's name, or `other`. Any token is a valid HTTP method,
/// so taking the request's own would let each made-up one add a histogram (2,000 requests
/// with 4 KB methods grew `/metrics` from 107 KB to 189 MB).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

pub struct Metrics {
    registry: RwLock<Registry>,
    pub http_latency: Family<HttpLabels, Histogram>,
    pub wal_fsync: Histogram,
    pub wal_group_commit: Histogram,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("meridian");
        let http_latency = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18)) // 50 µs … 6.5 s
        });
        let wal_fsync = Histogram::new(exponential_buckets(0.000_02, 2.0, 18)); // 20 µs … 2.6 s
        let wal_group_commit = Histogram::new(exponential_buckets(1.0, 2.0, 14)); // 1 … 8192 records
        registry.register("http_request_duration_seconds", "HTTP request latency", http_latency.clone());
        registry.register("wal_fsync_duration_seconds", "WAL fdatasync latency", wal_fsync.clone());
        registry.register("wal_group_commit_records", "records made durable by one WAL fsync", wal_group_commit.clone());
        Arc::new(Metrics { registry: RwLock::new(registry), http_latency, wal_fsync, wal_group_commit })
    }

    /// Adds the scrape-time replication figures once the mode is running.
    pub fn watch(&self, replicator: Arc<dyn Replicator>, wal: Wal) {
        self.registry.write().unwrap().register_collector(Box::new(StatusCollector { replicator, wal }));
    }

    /// Lends the registry out while a component registers its metrics across an await
    /// (only during start-up, before anything scrapes).
    pub fn take_registry(&self) -> Registry {
        std::mem::take(&mut *self.registry.write().unwrap())
    }

    pub fn put_registry(&self, r: Registry) {
        *self.registry.write().unwrap() = r;
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.read().unwrap()).expect("encoding to a String cannot fail");
        out
    }
}

struct StatusCollector {
    replicator: Arc<dyn Replicator>,
    wal: Wal,
}

impl std::fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: impl Into<f64>) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v.into()).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.replicator.status();
        let pos = self.wal.position();
        {
            let mut fam = enc.encode_descriptor("replication_mode", "the node's replication mode (1 for the active one)", None, MetricType::Gauge)?;
            ConstGauge::new(1i64).encode(fam.encode_family(&ModeLabel { mode: s.mode.to_string() })?)?;
        }
        gauge(&mut enc, "is_leader", "1 when this node takes writes (leader or primary)", u8::from(s.is_leader))?;
        gauge(
            &mut enc,
            "replication_degraded",
            "1 when replication is degraded (e.g. semi_sync fell back to async, sync writes blocked, standby gone); /health says why",
            u8::from(s.health != meridian_modes::replicator::Health::Healthy),
        )?;
        gauge(&mut enc, "commit_index", "highest committed log index", s.commit_index as f64)?;
        gauge(&mut enc, "applied_index", "highest index applied to the state machine", s.applied_index as f64)?;
        gauge(&mut enc, "replication_lag_seconds", "how far this node's applied state trails the leader", s.lag_seconds)?;
        gauge(&mut enc, "raft_term", "current Raft term (HA epoch in ha_standby)", s.epoch as f64)?;
        gauge(&mut enc, "wal_position", "last index written to the WAL", pos.last_index as f64)?;
        gauge(&mut enc, "wal_durable_index", "last index fsynced in the WAL", pos.durable_index as f64)?;
        gauge(&mut enc, "wal_first_index", "first index still held in the WAL", pos.first_index as f64)?;
        gauge(&mut enc, "wal_bytes", "bytes held in WAL segments", pos.total_bytes as f64)?;
        counter(&mut enc, "cluster_leader_changes", "leader or primary changes seen by this node", s.leader_changes)?;
        counter(&mut enc, "replication_bytes", "bytes of WAL shipped to or received from peers", s.replication_bytes)?;
        {
            let mut fam = enc.encode_descriptor("peer_healthy", "1 when the peer answers heartbeats", None, MetricType::Gauge)?;
            for p in &s.peers {
                ConstGauge::new(i64::from(p.healthy)).encode(fam.encode_family(&PeerLabel { peer: p.id.clone() })?)?;
            }
        }
        {
            let mut fam = enc.encode_descriptor(
                "peer_replication_lag_entries",
                "log entries the peer has not acknowledged yet (reported by a Raft leader)",
                None,
                MetricType::Gauge,
            )?;
            for p in s.peers.iter().filter(|p| p.lag_entries.is_some()) {
                let lag = i64::try_from(p.lag_entries.unwrap_or(0)).unwrap_or(i64::MAX);
                ConstGauge::new(lag).encode(fam.encode_family(&PeerLabel { peer: p.id.clone() })?)?;
            }
        }
        Ok(())
    }
}
