//! A bad setting stops the node before it does anything, with exit code 2 and a message
//! naming the variable.

mod common;

use common::run_to_exit;

fn refused(env: &[(&str, &str)], variable: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut full = vec![("MERIDIAN_DATA_DIR", data.to_str().unwrap()), ("MERIDIAN_HTTP_ADDR", "127.0.0.1:0")];
    full.extend_from_slice(env);
    let (code, _, err) = run_to_exit(&[], &full, dir.path());
    assert_eq!(code, 2, "{env:?} should exit 2; stderr: {err}");
    assert!(err.contains(variable), "{env:?}: message does not name {variable}: {err}");
    assert!(!data.join("wal").exists(), "{env:?}: the node touched its data dir before refusing");
}

#[test]
fn bogus_cluster_mode_exits_2() {
    refused(&[("MERIDIAN_CLUSTER_MODE", "bogus")], "MERIDIAN_CLUSTER_MODE");
}

#[test]
fn nonsense_http_addr_exits_2() {
    refused(&[("MERIDIAN_HTTP_ADDR", "nonsense")], "MERIDIAN_HTTP_ADDR");
}

#[test]
fn unparseable_duration_exits_2() {
    refused(&[("MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT", "fast")], "MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT");
}

#[test]
fn misspelt_variable_exits_2_and_suggests_the_right_one() {
    refused(&[("MERIDIAN_CLUSTER_MDOE", "raft")], "MERIDIAN_CLUSTER_MDOE");
    let dir = tempfile::tempdir().unwrap();
    let (_, _, err) = run_to_exit(&[], &[("MERIDIAN_DATA_DRI", "/tmp/x")], dir.path());
    assert!(err.contains("MERIDIAN_DATA_DIR"), "no suggestion: {err}");
}

#[test]
fn other_bad_values_exit_2() {
    refused(&[("MERIDIAN_MAX_VALUE_BYTES", "lots")], "MERIDIAN_MAX_VALUE_BYTES");
    refused(&[("MERIDIAN_LOG_LEVEL", "[[[")], "MERIDIAN_LOG_LEVEL");
    refused(&[("MERIDIAN_CLUSTER_MODE", "ha_standby")], "MERIDIAN_CLUSTER_HA_ROLE");
    refused(&[("MERIDIAN_CLUSTER_TLS_ENABLED", "true")], "MERIDIAN_CLUSTER_TLS_CERT_FILE");
}

#[test]
fn an_address_in_use_exits_2() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_to_exit(&[], &[("MERIDIAN_DATA_DIR", dir.path().join("d").to_str().unwrap()), ("MERIDIAN_HTTP_ADDR", &addr)], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("MERIDIAN_HTTP_ADDR"), "{err}");
}

/// A bad TLS setting stops the node at start, before it touches its data, naming the variable.
#[test]
fn bad_tls_settings_exit_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (code, out, err) = run_to_exit(&["certs", "generate", "--out", certs.to_str().unwrap(), "--nodes", "node1,node2"], &[], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let p = |f: &str| certs.join(f).to_str().unwrap().to_owned();
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").unwrap();
    let garbage = dir.path().join("garbage.pem").to_str().unwrap().to_owned();
    let (cert, key, ca, other_key) = (p("node1.pem"), p("node1-key.pem"), p("ca.pem"), p("node2-key.pem"));
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("MERIDIAN_CLUSTER_TLS_CERT_FILE", "/no/such/cert.pem"), ("MERIDIAN_CLUSTER_TLS_KEY_FILE", &key), ("MERIDIAN_CLUSTER_TLS_CA_FILE", &ca)], "MERIDIAN_CLUSTER_TLS_CERT_FILE"),
        (vec![("MERIDIAN_CLUSTER_TLS_CERT_FILE", &cert), ("MERIDIAN_CLUSTER_TLS_KEY_FILE", &other_key), ("MERIDIAN_CLUSTER_TLS_CA_FILE", &ca)], "MERIDIAN_CLUSTER_TLS_KEY_FILE"),
        (vec![("MERIDIAN_CLUSTER_TLS_CERT_FILE", &cert), ("MERIDIAN_CLUSTER_TLS_KEY_FILE", &key), ("MERIDIAN_CLUSTER_TLS_CA_FILE", &garbage)], "MERIDIAN_CLUSTER_TLS_CA_FILE"),
    ];
    for (env, variable) in cases {
        let mut env = env;
        env.push(("MERIDIAN_CLUSTER_TLS_ENABLED", "true"));
        env.push(("MERIDIAN_CLUSTER_NODE_ID", "node1"));
        refused(&env, variable);
    }
}

#[test]
fn bad_multi_region_settings_exit_2_naming_the_variable() {
    let base = [
        ("MERIDIAN_CLUSTER_MODE", "multi_region"),
        ("MERIDIAN_CLUSTER_NODE_ID", "us1"),
        ("MERIDIAN_CLUSTER_RAFT_PEERS", "us1:127.0.0.1:1"),
        ("MERIDIAN_CLUSTER_SECRET", "multi-region-config-test-secret-0123456789"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> { base.iter().copied().chain(extra.iter().copied()).collect() };
    refused(&with(&[]), "MERIDIAN_CLUSTER_REGION_ID");
    refused(&with(&[("MERIDIAN_CLUSTER_REGION_ID", "us east")]), "MERIDIAN_CLUSTER_REGION_ID");
    refused(&with(&[("MERIDIAN_CLUSTER_REGION_ID", "us")]), "MERIDIAN_CLUSTER_REMOTE_REGIONS");
    refused(&with(&[("MERIDIAN_CLUSTER_REGION_ID", "us"), ("MERIDIAN_CLUSTER_REMOTE_REGIONS", "us:127.0.0.1:2")]), "MERIDIAN_CLUSTER_REMOTE_REGIONS");
    refused(&with(&[("MERIDIAN_CLUSTER_REGION_ID", "us"), ("MERIDIAN_CLUSTER_REMOTE_REGIONS", "eu:127.0.0.1:2")]), "MERIDIAN_CLUSTER_PRIMARY_REGION");
    refused(
        &with(&[("MERIDIAN_CLUSTER_REGION_ID", "us"), ("MERIDIAN_CLUSTER_REMOTE_REGIONS", "eu:127.0.0.1:2"), ("MERIDIAN_CLUSTER_PRIMARY_REGION", "ap")]),
        "MERIDIAN_CLUSTER_PRIMARY_REGION",
    );
    refused(
        &with(&[
            ("MERIDIAN_CLUSTER_REGION_ID", "us"),
            ("MERIDIAN_CLUSTER_REMOTE_REGIONS", "eu:127.0.0.1:2"),
            ("MERIDIAN_CLUSTER_REGION_WRITES", "active_active"),
            ("MERIDIAN_CLUSTER_CONFLICT_STRATEGY", "first_write_wins"),
        ]),
        "MERIDIAN_CLUSTER_CONFLICT_STRATEGY",
    );
}
