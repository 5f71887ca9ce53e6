//! The node's Prometheus registry (prometheus-client: one registry per node, no global
//! recorder, so several nodes can live in one test process).
//!
//! Latency histograms are recorded as things happen; replication figures are read from the
//! mode's [`ReplicationStatus`] and the WAL on every scrape by [`StatusCollector`], so they can
//! never drift from what `/health` reports.

use std::sync::{Arc, RwLock};

use meridian_modes::transport::Transport;
use meridian_modes::{Replicator, StateMachine};
use meridian_wal::Wal;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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
    /// Bytes of writes in flight (`api::write_budget`).
    pub write_queue_bytes: Gauge,
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
        let write_queue_bytes = Gauge::default();
        registry.register(
            "write_queue_bytes",
            "bytes of writes taken in and not yet answered (bounded by MERIDIAN_WRITE_QUEUE_BYTES)",
            write_queue_bytes.clone(),
        );
        Arc::new(Metrics { registry: RwLock::new(registry), http_latency, wal_fsync, wal_group_commit, write_queue_bytes })
    }

    /// Adds the scrape-time replication figures once the mode is running.
    /// `raft_transport`: in raft mode, `replication_bytes` is its cluster traffic (log
    /// entries, snapshots, heartbeats, votes, forwarded writes), which the Raft core does not
    /// count itself.
    pub fn watch(&self, replicator: Arc<dyn Replicator>, wal: Wal, sm: Arc<dyn StateMachine>, raft_transport: Option<Transport>) {
        self.registry.write().unwrap().register_collector(Box::new(StatusCollector { replicator, wal, sm, raft_transport }));
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

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers
/// that do not ask for OpenMetrics (curl, `promtool check metrics`, older Prometheus).
/// The differences that matter here: a counter family is named with its `_total` suffix,
/// `# EOF` and `# UNIT` lines and exemplars do not exist, and `unknown` is `untyped`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split_once(' '))
        .filter(|(_, kind)| kind.trim() == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line.strip_prefix("# HELP ").map(|r| ("HELP", r)).or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        if let Some((kw, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) { format!("{name}_total") } else { name.to_owned() };
            let tail = if kw == "TYPE" && tail.trim() == "unknown" { "untyped" } else { tail };
            out.push_str(&format!("# {kw} {name} {tail}\n"));
            continue;
        }
        let sample = line.split(" # {").next().unwrap_or(line);
        let name = sample.split(['{', ' ']).next().unwrap_or("");
        if name.strip_suffix("_created").is_some_and(|base| counters.contains(base)) {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

struct StatusCollector {
    replicator: Arc<dyn Replicator>,
    wal: Wal,
    sm: Arc<dyn StateMachine>,
    raft_transport: Option<Transport>,
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
        let s_divergent = self.replicator.divergent_tails().len();
        let wal = self.replicator.wal().unwrap_or_else(|| self.wal.clone());
        let pos = wal.position();
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
        gauge(&mut enc, "replication_lag_seconds", "seconds of replication lag: on a primary or Raft leader its most-behind member's, elsewhere this node's own", s.lag_seconds)?;
        gauge(&mut enc, "raft_term", "current Raft term (HA epoch in ha_standby)", s.epoch as f64)?;
        gauge(&mut enc, "wal_position", "last index written to the WAL", pos.last_index as f64)?;
        gauge(&mut enc, "wal_durable_index", "last index fsynced in the WAL", pos.durable_index as f64)?;
        gauge(&mut enc, "wal_first_index", "first index still held in the WAL", pos.first_index as f64)?;
        gauge(&mut enc, "wal_bytes", "bytes held in WAL segments", pos.total_bytes as f64)?;
        // A former primary that learned of a higher epoch and has not yet followed the new one.
        gauge(&mut enc, "fenced", "1 while this node is fenced (a former primary that stopped taking writes on a higher epoch)", u8::from(s.state == "fenced"))?;
        gauge(&mut enc, "divergent_tails", "divergent WAL tails kept in DATA_DIR/divergent/ (ha_standby rejoin); inspect, then remove them", s_divergent as f64)?;
        let storage_failed = wal.failure().is_some() || self.replicator.storage_failure().is_some();
        gauge(
            &mut enc,
            "storage_failed",
            "1 once a write to the WAL or the state store failed (disk error, disk full): the node takes no writes until restarted",
            u8::from(storage_failed),
        )?;
        gauge(&mut enc, "state_damaged", "1 when the state store found damaged data (checksum failure)", u8::from(self.sm.damage().is_some()))?;
        counter(&mut enc, "cluster_leader_changes", "leader or primary changes seen by this node", s.leader_changes)?;
        let replication_bytes = self.raft_transport.as_ref().map_or(s.replication_bytes, Transport::bytes_exchanged);
        counter(
            &mut enc,
            "replication_bytes",
            "bytes of WAL shipped to or received from peers (raft: all cluster traffic with its members)",
            replication_bytes,
        )?;
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
        // multi_region, on the region leader (the node that ships).
        let links: Vec<_> = self.replicator.region_links().into_iter().filter(|l| l.shipping).collect();
        if !links.is_empty() {
            {
                let mut fam = enc.encode_descriptor("region_lag_entries", "log positions committed in this region that a remote region may still miss", None, MetricType::Gauge)?;
                for l in &links {
                    ConstGauge::new(i64::try_from(l.lag_entries).unwrap_or(i64::MAX)).encode(fam.encode_family(&RegionLabel { region: l.region.clone() })?)?;
                }
            }
            {
                let mut fam = enc.encode_descriptor("region_lag_seconds", "how long a remote region has been behind this one (0 when it has everything)", None, MetricType::Gauge)?;
                for l in &links {
                    ConstGauge::new(l.lag_seconds).encode(fam.encode_family(&RegionLabel { region: l.region.clone() })?)?;
                }
            }
            {
                let mut fam = enc.encode_descriptor("region_shipped_bytes", "key and value bytes shipped to a remote region by this node", None, MetricType::Counter)?;
                for l in &links {
                    ConstCounter::new(l.shipped_bytes).encode(fam.encode_family(&RegionLabel { region: l.region.clone() })?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabel {
    region: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counters_with_total_and_has_no_eof() {
        let om = "# HELP m_changes leader changes.\n# TYPE m_changes counter\nm_changes_total 3\nm_changes_created 1.5\n# HELP m_lag lag.\n# TYPE m_lag gauge\n# UNIT m_lag seconds\nm_lag 0.5\n# TYPE m_x unknown\nm_x 1 # {a=\"b\"} 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP m_changes_total leader changes.\n# TYPE m_changes_total counter\nm_changes_total 3\n# HELP m_lag lag.\n# TYPE m_lag gauge\nm_lag 0.5\n# TYPE m_x untyped\nm_x 1\n"
        );
    }
}
