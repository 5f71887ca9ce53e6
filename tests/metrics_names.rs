//! The metric names operators are promised exist on a live node: the seed guide's six under
//! the `meridian_` prefix, and every `meridian_*` name the shipped alert rules
//! (`deploy/prometheus/alerts.yml`) and Grafana dashboard (`deploy/grafana/`) query — a
//! renamed metric would otherwise leave an alert silently never firing.

mod common;

use std::collections::BTreeSet;

use common::{http, Node};

/// Every series name a scrape can hold: sample names, and `# TYPE` families with the
/// suffixes their samples take.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            names.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// `meridian_*` identifiers in a file.
fn referenced(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("meridian_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // Skip words that merely contain the prefix (e.g. an identifier ending in "meridian_").
        if i == 0 || !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_guides_metrics_and_everything_the_alerts_and_dashboard_query_are_exposed() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(&dir.path().join("d"), &[]);
    assert_eq!(http("PUT", &n.url("/v1/kv/k"), Some(b"v".to_vec())).0, 200);
    let (s, body) = http("GET", &n.url("/metrics"), None);
    assert_eq!(s, 200);
    let names = exposed(&String::from_utf8(body).unwrap());

    for guide in [
        "meridian_replication_lag_seconds",
        "meridian_cluster_leader_changes_total",
        "meridian_raft_term",
        "meridian_wal_position",
        "meridian_peer_healthy",
        "meridian_replication_bytes_total",
    ] {
        assert!(names.contains(guide), "the seed guide's {guide} is not exposed");
    }
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/meridian-cluster.json"] {
        let wanted = referenced(file);
        assert!(wanted.len() >= 8, "{file} names only {wanted:?}");
        let missing: Vec<_> = wanted.difference(&names).collect();
        assert!(missing.is_empty(), "{file} queries metrics no node exposes: {missing:?}");
    }
}
