//! The seed guide's settings as it writes them (NornicDB's clustering guide, `NORNICDB_`
//! replaced by `MERIDIAN_`): its HA compose environment starts a working pair, and the
//! settings the guide documents but Meridian used to refuse or ignore now work.

mod common;

use std::path::Path;
use std::time::Duration;

use common::ha::{health, wait_role, wait_streaming};
use common::{free_port, http, run_to_exit, Node};

/// A node whose environment is exactly `env` (plus its loopback HTTP address): no
/// `MERIDIAN_DATA_DIR`, so the guide's `CLUSTER_DATA_DIR` is what names the data directory.
fn start(dir: &Path, name: &str, env: Vec<(&str, String)>) -> Node {
    let mut node = Node {
        child: None,
        port: free_port(),
        data_dir: None,
        cwd: Some(dir.to_path_buf()),
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        log: dir.join(format!("{name}.log")),
        file_size_limit_blocks: None,
    };
    node.spawn();
    node.wait_ready();
    node
}

/// The guide's `docker-compose.ha.yml` environment for one service, values as written,
/// except the addresses (loopback ports instead of `0.0.0.0:7688` and `standby:7688`) and
/// the data directory (a temporary one, named with the guide's `CLUSTER_DATA_DIR`).
fn guide_ha_env(node_id: &str, role: &str, bind: u16, peer: u16, data: &Path) -> Vec<(&'static str, String)> {
    vec![
        // Cluster Configuration
        ("MERIDIAN_CLUSTER_MODE", "ha_standby".into()),
        ("MERIDIAN_CLUSTER_NODE_ID", node_id.into()),
        ("MERIDIAN_CLUSTER_BIND_ADDR", format!("127.0.0.1:{bind}")),
        // HA Standby Configuration
        ("MERIDIAN_CLUSTER_HA_ROLE", role.into()),
        ("MERIDIAN_CLUSTER_HA_PEER_ADDR", format!("127.0.0.1:{peer}")),
        ("MERIDIAN_CLUSTER_HA_SYNC_MODE", "semi_sync".into()),
        ("MERIDIAN_CLUSTER_HA_HEARTBEAT_MS", "1000".into()),
        ("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT", "30s".into()),
        ("MERIDIAN_CLUSTER_HA_AUTO_FAILOVER", "true".into()),
        // From the guide's configuration reference and troubleshooting section.
        ("MERIDIAN_CLUSTER_DATA_DIR", data.display().to_string()),
        ("MERIDIAN_CLUSTER_DEBUG", "true".into()),
    ]
}

#[test]
fn the_guides_ha_compose_environment_starts_a_working_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, cs) = (free_port(), free_port());
    let primary = start(dir.path(), "primary", guide_ha_env("primary-1", "primary", cp, cs, &dir.path().join("primary-data")));
    let mut standby_node = start(dir.path(), "standby", guide_ha_env("standby-1", "standby", cs, cp, &dir.path().join("standby-data")));
    wait_role(&primary, "primary", Duration::from_secs(20));
    wait_streaming(&standby_node, Duration::from_secs(20));

    // The data went where CLUSTER_DATA_DIR says, and CLUSTER_DEBUG turned on replication debug logs.
    assert!(dir.path().join("primary-data/wal").is_dir() && dir.path().join("standby-data/state.redb").is_file());
    assert!(!dir.path().join("data").exists(), "a node used the default ./data instead of CLUSTER_DATA_DIR");
    assert!(standby_node.log_shows("DEBUG", Duration::from_secs(5)), "CLUSTER_DEBUG=true logged no debug line");
    assert!(!standby_node.log_text().contains("ERROR"), "{}", standby_node.log_text());

    // A working pair: a write on the primary (semi_sync: the standby received it) reads back
    // on the standby; the node ids are the guide's.
    let (s, body) = http("PUT", &primary.url("/v1/kv/from-the-guide"), Some(b"hello".to_vec()));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let mut seen = None;
    for _ in 0..100 {
        let (s, body) = http("GET", &standby_node.url("/v1/kv/from-the-guide"), None);
        if s == 200 {
            seen = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen.as_deref(), Some(&b"hello"[..]), "the standby never served the primary's write");
    assert_eq!(health(&primary)["replication"]["node_id"], "primary-1");
    assert_eq!(health(&standby_node)["replication"]["node_id"], "standby-1");

    // The guide's manual failover: `curl -X POST http://standby/admin/promote`, after the
    // primary is gone.
    drop(primary);
    let (s, body) = http("POST", &standby_node.url("/admin/promote"), None);
    assert_eq!(s, 200, "promote: {}", String::from_utf8_lossy(&body));
    wait_role(&standby_node, "primary", Duration::from_secs(10));
    let (s, _) = http("PUT", &standby_node.url("/v1/kv/after-promote"), Some(b"x".to_vec()));
    assert_eq!(s, 200);
    assert_eq!(standby_node.terminate(), 0);
}

#[test]
fn an_unset_node_id_is_generated_once_and_kept_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Node::start(&data, &[]);
    let id = health(&node)["replication"]["node_id"].as_str().unwrap().to_owned();
    let stored = std::fs::read_to_string(data.join("node_id")).unwrap();
    assert_eq!(stored.trim(), id);
    assert!(id.starts_with("node-") && id.len() > 8, "{id}");
    assert_eq!(node.terminate(), 0);
    node.restart();
    assert_eq!(health(&node)["replication"]["node_id"], id.as_str(), "the id changed across a restart");
    assert_eq!(node.terminate(), 0);

    // A configured id wins and leaves the stored one alone.
    node.set_env("MERIDIAN_CLUSTER_NODE_ID", "n7");
    node.restart();
    assert_eq!(health(&node)["replication"]["node_id"], "n7");
    assert_eq!(std::fs::read_to_string(data.join("node_id")).unwrap().trim(), id);
    assert_eq!(node.terminate(), 0);

    // A damaged file stops the node, naming it, rather than giving it a new identity.
    std::fs::write(data.join("node_id"), "bad id!\n").unwrap();
    node.env.retain(|(k, _)| k != "MERIDIAN_CLUSTER_NODE_ID");
    node.spawn();
    let mut code = None;
    for _ in 0..200 {
        if let Some(s) = node.child.as_mut().unwrap().try_wait().unwrap() {
            code = s.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    node.child = None;
    assert_eq!(code, Some(1), "a damaged node_id file did not stop the node");
    assert!(node.log_text().contains("node_id"), "{}", node.log_text());
}

#[test]
fn guide_values_that_cannot_work_exit_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d").display().to_string();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("MERIDIAN_CLUSTER_RAFT_SNAPSHOT_INTERVAL", "300s0")], "MERIDIAN_CLUSTER_RAFT_SNAPSHOT_INTERVAL"),
        (&[("MERIDIAN_CLUSTER_DATA_DIR", "/tmp/elsewhere"), ("MERIDIAN_DATA_DIR", &data)], "MERIDIAN_CLUSTER_DATA_DIR"),
        (&[("MERIDIAN_CLUSTER_DEBUG", "yes please")], "MERIDIAN_CLUSTER_DEBUG"),
    ];
    for (env, var) in cases {
        let (code, _, err) = run_to_exit(&[], env, dir.path());
        assert_eq!(code, 2, "{env:?}: {err}");
        assert!(err.contains(var), "{env:?}: {err}");
    }
    // And the guide's bare seconds start a node.
    let mut node = Node::start(&dir.path().join("ok"), &[("MERIDIAN_CLUSTER_RAFT_SNAPSHOT_INTERVAL", "300"), ("MERIDIAN_CHECKPOINT_INTERVAL", "1")]);
    assert_eq!(node.terminate(), 0);
}

/// The guide's `docker-compose.raft.yml` environment: each node lists only the *other* voters
/// in `RAFT_PEERS` and gives its own address in `ADVERTISE_ADDR`; node 1 bootstraps and
/// carries the snapshot settings in the guide's bare-seconds form.
#[test]
fn the_guides_raft_compose_environment_elects_a_leader_and_status_lists_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let cluster: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let others: Vec<String> = (0..3).filter(|j| *j != i).map(|j| format!("node-{}:127.0.0.1:{}", j + 1, cluster[j])).collect();
        let mut env = vec![
            ("MERIDIAN_CLUSTER_MODE".to_owned(), "raft".to_owned()),
            ("MERIDIAN_CLUSTER_NODE_ID".into(), format!("node-{}", i + 1)),
            ("MERIDIAN_CLUSTER_BIND_ADDR".into(), format!("127.0.0.1:{}", cluster[i])),
            ("MERIDIAN_CLUSTER_ADVERTISE_ADDR".into(), format!("127.0.0.1:{}", cluster[i])),
            ("MERIDIAN_CLUSTER_RAFT_CLUSTER_ID".into(), "my-cluster".into()),
            ("MERIDIAN_CLUSTER_RAFT_BOOTSTRAP".into(), (i == 0).to_string()),
            ("MERIDIAN_CLUSTER_RAFT_PEERS".into(), others.join(",")),
            ("MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT".into(), "1s".into()),
            ("MERIDIAN_CLUSTER_RAFT_HEARTBEAT_TIMEOUT".into(), "100ms".into()),
        ];
        if i == 0 {
            env.push(("MERIDIAN_CLUSTER_RAFT_SNAPSHOT_INTERVAL".into(), "300".into()));
            env.push(("MERIDIAN_CLUSTER_RAFT_SNAPSHOT_THRESHOLD".into(), "10000".into()));
        }
        let data = dir.path().join(format!("node{}-data", i + 1));
        let mut n = Node { child: None, port: free_port(), log: data.with_extension("log"), data_dir: Some(data), cwd: None, env, file_size_limit_blocks: None };
        n.spawn();
        nodes.push(n);
    }
    // /health is 503 until a leader is known, so the nodes are started first and waited for after.
    for n in &mut nodes {
        n.wait_ready();
    }
    let (s, body) = http("PUT", &nodes[1].url("/v1/kv/from-the-guide"), Some(b"raft".to_vec()));
    assert_eq!(s, 200, "a write through a follower: {}", String::from_utf8_lossy(&body));

    // Members publish their HTTP address to the membership after they join: poll for it.
    // (A voter that first looked before the bootstrap's membership reached it used to give
    // up and stay listed without an address; `membership::announce` now looks again.)
    let start = std::time::Instant::now();
    let v = loop {
        let (code, out, err) = run_to_exit(&["status", "-o", "json", "--url", &nodes[2].url("")], &[], dir.path());
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let members = v["nodes"].as_array().cloned().unwrap_or_default();
        if members.len() == 3 && members.iter().all(|m| m["reachable"] == true) {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "status never reached every member: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let members = v["nodes"].as_array().unwrap();
    let mut ids: Vec<&str> = members.iter().map(|m| m["node_id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["node-1", "node-2", "node-3"], "{v}");
    assert!(members.iter().all(|m| m["membership"] == "voter"), "{v}");
    assert!(members.iter().any(|m| m["node_id"] == "node-3" && m["reachable"] == true), "the asked node: {v}");
    assert!(members.iter().filter(|m| m["is_leader"] == true).count() <= 1, "two leaders: {v}");
    let leader = members.iter().find(|m| m["node_id"] == v["leader"]).unwrap_or_else(|| panic!("no leader named: {v}"));
    if leader["reachable"] == true {
        assert_eq!((leader["is_leader"].as_bool(), &members[0]["node_id"]), (Some(true), &v["leader"]), "the leader is listed first: {v}");
    }
    let (_, table, _) = run_to_exit(&["status", "--url", &nodes[0].url("")], &[], dir.path());
    eprintln!("{table}");
    // The guide's metric in raft mode too: the members' cluster traffic.
    let metrics = String::from_utf8(http("GET", &nodes[0].url("/metrics"), None).1).unwrap();
    let bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("meridian_replication_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no meridian_replication_bytes_total:\n{metrics}"));
    assert!(bytes > 0, "a raft member reports no replication bytes after a write");
    for n in &mut nodes {
        assert_eq!(n.terminate(), 0);
    }
}
