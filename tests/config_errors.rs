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
