//! Raft membership under load (issue 10, requirement 4), with real processes: three voters
//! (n1 bootstraps) and 8 writers throughout, then
//! 1. a fourth voter `n4` is added through a *follower's* `POST /admin/cluster/add`
//!    (relayed to the leader; learner first, promoted once caught up);
//! 2. a read replica `r1` (`CLUSTER_RAFT_ROLE=replica`) joins itself as a learner and
//!    serves reads, never votes;
//! 3. leadership is transferred to a named node (`/admin/raft/transfer-leadership`);
//! 4. a voter is removed (`/admin/cluster/remove`) and stopped; adding its name back is refused
//!    (a removed Raft id is never reused).
//!
//! Afterwards every acknowledged write is on every remaining node and the digests agree.
//! Also: bad membership requests get a clear 4xx, and a stranger with the wrong secret
//! cannot join.
//!
//! `force_new_cluster_brings_a_lone_survivor_back` (requirement 6): two of three voters
//! destroyed; the survivor, restarted with `CLUSTER_RAFT_FORCE_NEW_CLUSTER=true`, takes
//! writes again with every acknowledged write; a new member with an empty data directory
//! joins it; a later restart with the variable still set changes nothing.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::raft::{call_json, missing_on, wait_serving, RaftCluster, RaftOpts, SECRET};
use common::writers::start_writers;
use common::{free_port, Node};

const SECOND: Duration = Duration::from_secs(1);

/// Starts one more node that is not in the bootstrap membership.
fn extra_node(c: &RaftCluster, id: &str, replica: bool, secret: &str) -> (Node, u16) {
    let cluster_port = free_port();
    let http_port = free_port();
    let mut peers: Vec<String> = (0..c.len()).map(|j| format!("{}:127.0.0.1:{}", c.ids[j], c.cluster_ports[j])).collect();
    if !replica {
        peers.push(format!("{id}:127.0.0.1:{cluster_port}"));
    }
    let data_dir = c.dir.path().join(id);
    let mut env: Vec<(String, String)> = vec![
        ("MERIDIAN_CLUSTER_MODE".into(), "raft".into()),
        ("MERIDIAN_CLUSTER_NODE_ID".into(), id.into()),
        ("MERIDIAN_CLUSTER_BIND_ADDR".into(), format!("127.0.0.1:{cluster_port}")),
        ("MERIDIAN_CLUSTER_RAFT_PEERS".into(), peers.join(",")),
        ("MERIDIAN_CLUSTER_SECRET".into(), secret.into()),
        ("MERIDIAN_CLUSTER_HTTP_ADVERTISE_ADDR".into(), format!("http://127.0.0.1:{http_port}")),
        ("MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT".into(), "1s".into()),
        ("MERIDIAN_CLUSTER_RAFT_HEARTBEAT_TIMEOUT".into(), "100ms".into()),
    ];
    if replica {
        env.push(("MERIDIAN_CLUSTER_RAFT_ROLE".into(), "replica".into()));
    }
    let mut node = Node { child: None, port: http_port, log: data_dir.with_extension("log"), data_dir: Some(data_dir), cwd: None, env, file_size_limit_blocks: None };
    node.spawn();
    wait_serving(&mut node, 30 * SECOND).unwrap();
    (node, cluster_port)
}

fn status_of(base: &str) -> Value {
    call_json("GET", &format!("{base}/admin/cluster/status"), None, 10 * SECOND).map(|(_, v)| v).unwrap_or(Value::Null)
}

fn member<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["members"].as_array()?.iter().find(|m| m["id"] == id)
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn membership_changes_under_load_keep_every_acknowledged_write() {
    let c = RaftCluster::start(3, RaftOpts::default());
    let (leader, _) = c.wait_stable_leader(30 * SECOND);
    let follower = c.others(leader)[0];
    let t0 = Instant::now();
    let writers = start_writers(c.bases(), 8, "m", t0);
    std::thread::sleep(SECOND);

    // 1. A fourth voter, added through a follower.
    let (n4, n4_cluster) = extra_node(&c, "n4", false, SECRET);
    let (code, v) = call_json(
        "POST",
        &format!("{}/admin/cluster/add", c.base(follower)),
        Some(serde_json::to_vec(&json!({"node_id": "n4", "address": format!("127.0.0.1:{n4_cluster}"), "voter": true})).unwrap()),
        120 * SECOND,
    )
    .unwrap();
    assert_eq!(code, 200, "add n4: {v}");
    assert_eq!(v["role"], "voter", "{v}");
    let n4_base = format!("http://127.0.0.1:{}", n4.port);
    wait_until("n4 listed as a voter on the leader", 20 * SECOND, || {
        member(&status_of(&c.base(leader)), "n4").is_some_and(|m| m["role"] == "voter")
    });

    // 2. A read replica joins by itself and serves reads.
    let (r1, _) = extra_node(&c, "r1", true, SECRET);
    let r1_base = format!("http://127.0.0.1:{}", r1.port);
    wait_until("r1 listed as a learner", 60 * SECOND, || member(&status_of(&c.base(leader)), "r1").is_some_and(|m| m["role"] == "learner"));
    wait_until("the replica follows a leader (health 200)", 30 * SECOND, || {
        call_json("GET", &format!("{r1_base}/health"), None, 5 * SECOND).is_ok_and(|(code, _)| code == 200)
    });
    let (_, v) = call_json("GET", &format!("{r1_base}/health"), None, 5 * SECOND).unwrap();
    assert_eq!(v["replication"]["role"], "learner", "{v}");

    // Bad requests are refused clearly.
    let (code, v) = call_json("POST", &format!("{}/admin/cluster/remove", c.base(leader)), Some(br#"{"node_id":"nobody"}"#.to_vec()), 10 * SECOND).unwrap();
    assert!((400..500).contains(&code), "removing an unknown member answered {code}: {v}");
    assert!(v.to_string().contains("not a member"), "{v}");
    let (code, v) = call_json("POST", &format!("{}/admin/cluster/add", c.base(leader)), Some(br#"{"node_id":"x","address":"nohostport","voter":true}"#.to_vec()), 10 * SECOND).unwrap();
    assert!((400..500).contains(&code), "a member without host:port answered {code}: {v}");

    // A node with the wrong secret cannot join.
    let (stranger, _) = extra_node(&c, "x9", true, "some-other-secret-0123456789abcdef");
    std::thread::sleep(3 * SECOND);
    assert!(member(&status_of(&c.base(leader)), "x9").is_none(), "a node with the wrong secret joined: {}", status_of(&c.base(leader)));
    drop(stranger);

    // 3. Leadership to a named node.
    let target = c.others(leader).into_iter().find(|i| *i != follower).unwrap();
    let (code, v) = call_json(
        "POST",
        &format!("{}/admin/raft/transfer-leadership", c.base(leader)),
        Some(serde_json::to_vec(&json!({"target": c.ids[target]})).unwrap()),
        10 * SECOND,
    )
    .unwrap();
    assert_eq!(code, 200, "transfer: {v}");
    wait_until("leadership moved to the target", 20 * SECOND, || c.status(target).is_some_and(|s| s.is_leader));

    // 4. Remove a voter (the old leader), then stop it.
    let (code, v) = call_json(
        "POST",
        &format!("{}/admin/cluster/remove", c.base(target)),
        Some(serde_json::to_vec(&json!({"node_id": c.ids[leader]})).unwrap()),
        60 * SECOND,
    )
    .unwrap();
    assert_eq!(code, 200, "remove: {v}");
    wait_until("the removed voter gone from the membership", 20 * SECOND, || member(&status_of(&c.base(target)), &c.ids[leader]).is_none());
    // Its name (and so its Raft id) is never given to another node: adding it back, here at
    // a different address, is refused (asked through a follower: the leader decides).
    let (code, v) = call_json(
        "POST",
        &format!("{}/admin/cluster/add", n4_base),
        Some(serde_json::to_vec(&json!({"node_id": c.ids[leader], "address": "127.0.0.1:1", "voter": false})).unwrap()),
        30 * SECOND,
    )
    .unwrap();
    assert!((400..500).contains(&code), "re-adding the removed {} answered {code}: {v}", c.ids[leader]);
    assert!(v.to_string().contains("was removed from this cluster"), "{v}");
    assert!(member(&status_of(&c.base(target)), &c.ids[leader]).is_none(), "the removed name is back: {}", status_of(&c.base(target)));
    std::thread::sleep(2 * SECOND);
    let writes = writers.finish();

    let remaining: Vec<String> = c.others(leader).into_iter().map(|i| c.base(i)).chain([n4_base.clone(), r1_base.clone()]).collect();
    let acked = writes.iter().filter(|w| w.ok).count();
    let after_changes = writes.iter().filter(|w| w.ok && w.sent > t0.elapsed().saturating_sub(3 * SECOND)).count();
    println!("membership: {} writes, {acked} acknowledged; {after_changes} acknowledged in the last 3 s", writes.len());
    assert!(acked > 100, "too few acknowledged writes ({acked}) to mean anything");
    // Writes that went to the removed node after its removal may fail; acknowledged ones count.
    let mut digests = Vec::new();
    for base in &remaining {
        wait_until(&format!("{base} caught up"), 30 * SECOND, || {
            call_json("GET", &format!("{base}/admin/digest"), None, 5 * SECOND)
                .is_ok_and(|(_, d)| d["applied_index"] == call_json("GET", &format!("{}/admin/digest", c.base(target)), None, 5 * SECOND).map(|(_, d)| d["applied_index"].clone()).unwrap_or(Value::Null))
        });
        let missing = missing_on(base, &writes, "local");
        assert!(missing.is_empty(), "{} acknowledged writes missing on {base}, e.g. {:?}", missing.len(), missing.first().map(|w| &w.key));
        digests.push(call_json("GET", &format!("{base}/admin/digest"), None, 5 * SECOND).unwrap().1);
    }
    for d in &digests[1..] {
        assert_eq!((&d["keys"], &d["sha256"]), (&digests[0]["keys"], &digests[0]["sha256"]), "digests differ: {digests:?}");
    }
    // The replica never voted or led.
    let s = status_of(&c.base(target));
    assert_eq!(member(&s, "r1").map(|m| m["role"].clone()), Some(json!("learner")), "{s}");
    drop((n4, r1));
}

#[test]
fn force_new_cluster_brings_a_lone_survivor_back() {
    let mut c = RaftCluster::start(3, RaftOpts::default());
    let (leader, _) = c.wait_stable_leader(30 * SECOND);
    let t0 = Instant::now();
    let writers = start_writers(c.bases(), 4, "dr", t0);
    std::thread::sleep(3 * SECOND);
    // Two of three destroyed, the leader among them.
    let survivor = c.others(leader)[0];
    for i in c.others(survivor) {
        c.kill9(i);
    }
    std::thread::sleep(SECOND);
    let writes = writers.finish();
    let acked: Vec<_> = writes.iter().filter(|w| w.ok).cloned().collect();
    assert!(acked.len() > 50, "too few acknowledged writes ({})", acked.len());
    // Alone, the survivor cannot commit anything.
    let r = c.put(survivor, "alone", "x", 3 * SECOND);
    assert!(!matches!(r, Ok((200, _))), "a lone member of three acknowledged a write: {r:?}");

    c.kill9(survivor);
    c.nodes[survivor].set_env("MERIDIAN_CLUSTER_RAFT_FORCE_NEW_CLUSTER", "true");
    c.restart(survivor);
    let base = c.base(survivor);
    wait_until("the survivor leads a cluster of one", 20 * SECOND, || c.status(survivor).is_some_and(|s| s.is_leader));
    let missing = missing_on(&base, &writes, "linearizable");
    assert!(missing.is_empty(), "{} of {} acknowledged writes lost by the forced cluster, e.g. {:?}", missing.len(), acked.len(), missing.first().map(|w| &w.key));
    let (code, v) = c.put(survivor, "after", "forced", 10 * SECOND).unwrap();
    assert_eq!(code, 200, "write after forcing a new cluster: {v}");
    assert!(c.nodes[survivor].log_text().contains("FORCED A NEW CLUSTER"), "the forcing is not logged");
    let s = status_of(&base);
    assert_eq!(s["members"].as_array().map(|m| m.len()), Some(1), "{s}");

    // A new member with an empty data directory joins.
    let (n5, n5_cluster) = extra_node_with_peers(&c, "n5", &[(c.ids[survivor].clone(), c.cluster_ports[survivor])]);
    let (code, v) = call_json(
        "POST",
        &format!("{base}/admin/cluster/add"),
        Some(serde_json::to_vec(&json!({"node_id": "n5", "address": format!("127.0.0.1:{n5_cluster}"), "voter": true})).unwrap()),
        120 * SECOND,
    )
    .unwrap();
    assert_eq!(code, 200, "add n5: {v}");
    let n5_base = format!("http://127.0.0.1:{}", n5.port);
    let missing = missing_on(&n5_base, &writes, "linearizable");
    assert!(missing.is_empty(), "{} acknowledged writes missing on the new member", missing.len());

    // Restarted with the variable still set: nothing is forced again; n5 stays a member.
    c.kill9(survivor);
    c.restart(survivor);
    wait_until("a leader again after the restart", 20 * SECOND, || {
        c.status(survivor).is_some_and(|s| s.code == 200) && member(&status_of(&base), "n5").is_some()
    });
    assert!(c.nodes[survivor].log_text().contains("already forced a new cluster"), "the second start did not notice the marker");
    let s = status_of(&base);
    assert_eq!(s["members"].as_array().map(|m| m.len()), Some(2), "forcing again dropped the new member: {s}");
    println!("force_new_cluster: {} acknowledged writes kept; new member joined", acked.len());
    drop(n5);
}

/// Starts a voter-to-be whose peer list is `peers` plus itself.
fn extra_node_with_peers(c: &RaftCluster, id: &str, peers: &[(String, u16)]) -> (Node, u16) {
    let cluster_port = free_port();
    let http_port = free_port();
    let mut list: Vec<String> = peers.iter().map(|(n, p)| format!("{n}:127.0.0.1:{p}")).collect();
    list.push(format!("{id}:127.0.0.1:{cluster_port}"));
    let data_dir = c.dir.path().join(id);
    let env: Vec<(String, String)> = vec![
        ("MERIDIAN_CLUSTER_MODE".into(), "raft".into()),
        ("MERIDIAN_CLUSTER_NODE_ID".into(), id.into()),
        ("MERIDIAN_CLUSTER_BIND_ADDR".into(), format!("127.0.0.1:{cluster_port}")),
        ("MERIDIAN_CLUSTER_RAFT_PEERS".into(), list.join(",")),
        ("MERIDIAN_CLUSTER_SECRET".into(), SECRET.into()),
        ("MERIDIAN_CLUSTER_HTTP_ADVERTISE_ADDR".into(), format!("http://127.0.0.1:{http_port}")),
    ];
    let mut node = Node { child: None, port: http_port, log: data_dir.with_extension("log"), data_dir: Some(data_dir), cwd: None, env, file_size_limit_blocks: None };
    node.spawn();
    wait_serving(&mut node, 30 * SECOND).unwrap();
    (node, cluster_port)
}
