//! The Docker deployments, each on a Docker network of its own with the `FROM scratch` image:
//!
//! - `docker-compose.ha.yml`: a primary, a standby and a witness over mutual TLS; 8 writers;
//!   the primary's container is killed (SIGKILL); the standby must take over with every
//!   acknowledged write, and the old primary, started again, must rejoin as standby and
//!   converge.
//! - `docker-compose.raft.yml`: three Raft voters and a read replica over mutual TLS; 8
//!   writers on the voters; the leader's container is killed (a new leader, writes go on) and
//!   started again; one voter is cut from the network (`docker network disconnect`: the
//!   majority keeps acknowledging) and reconnected; the voters' digests must agree and every
//!   acknowledged write be readable on every voter (and on the replica, once replicas join).
//!
//! - `docker-compose.multiregion.yml`: two regions (us, eu) of three voters each over mutual
//!   TLS, each on its own network plus a shared `wan`; writes in the primary region reach the
//!   other; the primary region is cut from `wan`, the other region promoted and written to,
//!   the link restored: the old primary stops taking writes itself (it relays them to the new
//!   primary) and all six digests agree, with
//!   every acknowledged write (or a later version of its key) on every node.
//!
//! Needs a Docker engine with docker-compose and the image: run `docker/build-image.sh`,
//! then `cargo test --test docker_compose -- --ignored`. Ignored by default because
//! `cargo test --workspace` must also pass where there is no Docker engine; `.ci/run` runs
//! them with `--ignored` when it finds an engine (one image build for both). Run with
//! `--ignored` and no engine (or no image), a test prints why and passes, unless
//! `MERIDIAN_DOCKER_TESTS_REQUIRED=1` (as `.ci/run` sets) makes that a failure. The tests run
//! one at a time (`SERIAL`): each is a whole cluster on the host's cores.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::ha::{health, role, wait_converged, wait_role, wait_streaming};
use common::raft::{call_json, get_value, missing_on};
use common::writers::{get_at, missing_at, start_writers, Write};
use common::{free_port, http, Target};

static SERIAL: Mutex<()> = Mutex::new(());

/// A line on the test's real stderr, shown even when libtest captures the output.
fn note(msg: impl AsRef<str>) {
    let _ = writeln!(std::io::stderr(), "{}", msg.as_ref());
}

fn image() -> String {
    std::env::var("MERIDIAN_IMAGE").unwrap_or_else(|_| "meridian:dev".into())
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(out) => (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))),
        Err(e) => (false, format!("cannot run {program}: {e}")),
    }
}

/// `Some(guard)` when a Docker engine, docker-compose and the image are here; otherwise prints
/// why and answers `None` (the test then passes without running), or fails when
/// `MERIDIAN_DOCKER_TESTS_REQUIRED=1`.
fn docker_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    let image = image();
    let missing = if !run("docker", &["info", "--format", "{{.ServerVersion}}"]).0 {
        Some("no Docker engine (`docker info` failed)".to_string())
    } else if !run("docker-compose", &["version"]).0 {
        Some("no docker-compose".to_string())
    } else if !run("docker", &["image", "inspect", &image]).0 {
        Some(format!("no image {image}: run docker/build-image.sh first"))
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(std::env::var("MERIDIAN_DOCKER_TESTS_REQUIRED").as_deref() != Ok("1"), "{test}: {why} (MERIDIAN_DOCKER_TESTS_REQUIRED=1)");
        note(format!("SKIPPED {test}: {why}"));
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// One `docker-compose` project; `down -v` on drop removes its containers, network and volumes.
struct Project {
    file: &'static str,
    name: String,
    env: Vec<(&'static str, String)>,
}

impl Project {
    fn compose(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("docker-compose")
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
            .args(["-p", &self.name, "-f", self.file])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("cannot run docker-compose");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn service(&self, name: &'static str, port: u16) -> Service<'_> {
        Service { project: self, name, port }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let (ok, text) = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
        if !ok {
            eprintln!("docker-compose down failed: {text}");
        }
    }
}

/// A node container, reached on its loopback-published HTTP port.
struct Service<'a> {
    project: &'a Project,
    name: &'static str,
    port: u16,
}

impl Target for Service<'_> {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
    fn log_text(&self) -> String {
        self.project.compose(&["logs", "--no-color", self.name]).1
    }
}

#[test]
#[ignore = "needs a Docker engine and the meridian:dev image: docker/build-image.sh, then --ignored"]
fn the_ha_compose_file_fails_over_with_every_acknowledged_write_and_rejoins() {
    let Some(_serial) = docker_or_skip("the HA compose test") else { return };
    let (pa, pb) = (free_port(), free_port());
    let project = Project {
        file: "docker-compose.ha.yml",
        name: format!("meridian-test-{}", std::process::id()),
        env: vec![("MERIDIAN_A_PORT", pa.to_string()), ("MERIDIAN_B_PORT", pb.to_string())],
    };
    let (ok, text) = project.compose(&["up", "-d"]);
    assert!(ok, "docker-compose up failed:\n{text}");
    let (a, b) = (project.service("node-a", pa), project.service("node-b", pb));
    wait_role(&a, "primary", Duration::from_secs(60));
    wait_streaming(&b, Duration::from_secs(60));
    assert!(a.log_text().contains("tls=true"), "the cluster transport did not start with TLS:\n{}", a.log_text());
    assert_eq!(health(&a)["replication"]["mode"], "ha_standby", "{}", health(&a));

    // Writes go to the primary; the standby forwards too, so send some through it.
    let t0 = Instant::now();
    let writers = start_writers(vec![a.url(""), b.url("")], 8, "docker", t0);
    std::thread::sleep(Duration::from_secs(3));
    let (ok, text) = project.compose(&["kill", "-s", "SIGKILL", "node-a"]);
    assert!(ok, "cannot kill node-a: {text}");
    let took = wait_role(&b, "primary", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let writes = writers.finish();
    let acked = writes.iter().filter(|w| w.ok).count();
    note(format!("docker: {acked} writes acknowledged; node-b promoted {:.2}s after the kill (failover timeout 5 s)", took.as_secs_f64()));
    assert!(acked > 100, "only {acked} writes acknowledged");
    let lost = missing_at(&b.url(""), &writes);
    assert!(lost.is_empty(), "{} acknowledged writes are not on the new primary, e.g. {:?}", lost.len(), lost.first().map(|w| &w.key));

    // The new primary takes writes once its old peer is back as standby (sync mode).
    let (ok, text) = project.compose(&["start", "node-a"]);
    assert!(ok, "cannot start node-a again: {text}");
    wait_role(&a, "standby", Duration::from_secs(60));
    assert_eq!(role(&b), "primary");
    let (s, body) = http("PUT", &b.url("/v1/kv/after-failover"), Some(b"1".to_vec()));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let d = wait_converged(&a, &b, Duration::from_secs(60));
    note(format!("docker: node-a rejoined as standby; converged: {d}"));
    for n in [&a, &b] {
        let lost = missing_at(&n.url(""), &writes);
        assert!(lost.is_empty(), "{} acknowledged writes missing on {}", lost.len(), n.name);
        assert_eq!(get_at(&n.url(""), "after-failover").as_deref(), Some("1"));
    }
}

// ---------------------------------------------------------------------------------------
// Raft: docker-compose.raft.yml
// ---------------------------------------------------------------------------------------

const VOTERS: [&str; 3] = ["n1", "n2", "n3"];
const REPLICA: &str = "r1";

impl Project {
    fn container(&self, service: &str) -> String {
        let (ok, text) = self.compose(&["ps", "-q", service]);
        let id = text.lines().map(str::trim).find(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_hexdigit())).unwrap_or_default().to_owned();
        assert!(ok && !id.is_empty(), "no container for {service}: {text}");
        id
    }

    /// Every service's log, for failure messages.
    fn all_logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "200"]).1
    }
}

/// `docker <args>`, which must succeed.
fn docker(args: &[&str]) -> String {
    let (ok, text) = run("docker", args);
    assert!(ok, "docker {} failed: {text}", args.join(" "));
    text
}

/// A node's `/health`: (status, `replication`), `None` when it does not answer within 2 s.
fn raft_status(s: &Service) -> Option<(u16, Value)> {
    let (code, v) = call_json("GET", &s.url("/health"), None, Duration::from_secs(2)).ok()?;
    Some((code, v["replication"].clone()))
}

/// `Some((leader, term))` when every node of `among` answers `/health` with 200, exactly one
/// of them leads, and all report its term.
fn agreed_leader(nodes: &[Service], among: &[usize]) -> Option<(usize, u64)> {
    let st: Vec<(usize, u16, Value)> = among.iter().map(|&i| raft_status(&nodes[i]).map(|(c, r)| (i, c, r))).collect::<Option<_>>()?;
    let leaders: Vec<&(usize, u16, Value)> = st.iter().filter(|(_, _, r)| r["is_leader"] == true).collect();
    let [(leader, _, lr)] = leaders.as_slice() else { return None };
    let term = lr["epoch"].as_u64()?;
    st.iter().all(|(_, c, r)| *c == 200 && r["epoch"].as_u64() == Some(term)).then_some((*leader, term))
}

fn describe(nodes: &[Service]) -> String {
    nodes.iter().map(|n| format!("{}: {:?}", n.name, raft_status(n))).collect::<Vec<_>>().join("\n")
}

/// Waits until `among` agree on one leader with a term of at least `min_term`, twice in a row
/// 200 ms apart; the leader, its term and how long it took.
fn wait_agreed(project: &Project, nodes: &[Service], among: &[usize], min_term: u64, within: Duration) -> (usize, u64, Duration) {
    let t = Instant::now();
    let mut previous = None;
    loop {
        let now = agreed_leader(nodes, among).filter(|(_, term)| *term >= min_term);
        if let Some((l, term)) = now.filter(|_| now == previous) {
            return (l, term, t.elapsed());
        }
        previous = now;
        assert!(
            t.elapsed() < within,
            "{:?} did not agree on one leader (term >= {min_term}) within {within:?}:\n{}\n{}",
            among.iter().map(|&i| nodes[i].name).collect::<Vec<_>>(),
            describe(nodes),
            project.all_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn digest(s: &Service) -> Option<Value> {
    match call_json("GET", &s.url("/admin/digest"), None, Duration::from_secs(10)) {
        Ok((200, v)) => Some(v),
        _ => None,
    }
}

/// Waits until `nodes` report the same `applied_index`, `keys` and `sha256`.
fn wait_digests_equal(project: &Project, nodes: &[&Service], within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let ds: Vec<Option<Value>> = nodes.iter().map(|n| digest(n)).collect();
        if let Some(first) = ds[0].clone() {
            let same = |d: &Option<Value>| d.as_ref().is_some_and(|d| d["applied_index"] == first["applied_index"] && d["keys"] == first["keys"] && d["sha256"] == first["sha256"]);
            if ds.iter().all(same) {
                return first;
            }
        }
        assert!(t.elapsed() < within, "the digests of {:?} never agreed within {within:?}: {ds:?}\n{}", nodes.iter().map(|n| n.name).collect::<Vec<_>>(), project.all_logs());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Acknowledged writes sent at or after `from` (since the writers' start).
fn acked_since(writes: &[Write], from: Duration) -> usize {
    writes.iter().filter(|w| w.ok && w.sent >= from).count()
}

#[test]
#[ignore = "needs a Docker engine and the meridian:dev image: docker/build-image.sh, then --ignored"]
fn the_raft_compose_file_survives_a_killed_leader_and_a_disconnected_voter() {
    let Some(_serial) = docker_or_skip("the Raft compose test") else { return };
    let begin = Instant::now();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let project = Project {
        file: "docker-compose.raft.yml",
        name: format!("meridian-raft-test-{}", std::process::id()),
        env: vec![
            ("MERIDIAN_N1_PORT", ports[0].to_string()),
            ("MERIDIAN_N2_PORT", ports[1].to_string()),
            ("MERIDIAN_N3_PORT", ports[2].to_string()),
            ("MERIDIAN_R1_PORT", ports[3].to_string()),
        ],
    };
    let (ok, text) = project.compose(&["up", "-d"]);
    assert!(ok, "docker-compose up failed:\n{text}");
    let nodes: Vec<Service> = VOTERS.iter().zip(&ports).map(|(n, p)| project.service(n, *p)).collect();
    let replica = project.service(REPLICA, ports[3]);
    let all = [0, 1, 2];

    // 1. A leader, agreed by all three voters.
    let (leader, term, took) = wait_agreed(&project, &nodes, &all, 1, Duration::from_secs(90));
    note(format!("raft docker: {} leads in term {term}, agreed {:.1}s after `up` returned", nodes[leader].name, took.as_secs_f64()));
    for n in &nodes {
        assert!(n.log_text().contains("tls=true"), "{}: the cluster transport did not start with TLS:\n{}", n.name, n.log_text());
    }
    assert_eq!(raft_status(&nodes[leader]).unwrap().1["mode"], "raft");

    // 2. Writes, through every voter (followers forward to the leader).
    let t0 = Instant::now();
    let bases: Vec<String> = nodes.iter().map(|n| n.url("")).collect();
    let writers = start_writers(bases, 8, "raft-docker", t0);
    std::thread::sleep(Duration::from_secs(3));

    // 3. `docker kill` the leader: the other two elect a new one and writes go on.
    let victim = leader;
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    let victim_id = project.container(nodes[victim].name);
    let killed_at = t0.elapsed();
    docker(&["kill", "--signal", "KILL", &victim_id]);
    let (leader, term2, took) = wait_agreed(&project, &nodes, &others, term + 1, Duration::from_secs(30));
    let elected_at = t0.elapsed();
    assert_ne!(leader, victim);
    std::thread::sleep(Duration::from_secs(3));
    let (ok, text) = run("docker", &["inspect", "-f", "{{.State.Running}}", &victim_id]);
    let victim_running = ok && text.trim() == "true";
    note(format!(
        "raft docker: killed {} (the leader) at {:.1}s; {} leads in term {term2} {:.2}s later{}",
        nodes[victim].name,
        killed_at.as_secs_f64(),
        nodes[leader].name,
        took.as_secs_f64(),
        if victim_running { " (docker had already restarted the killed container)" } else { "" }
    ));

    // 4. Start it again: it rejoins as a follower in the current term.
    let (ok, text) = project.compose(&["start", nodes[victim].name]);
    assert!(ok, "cannot start {} again: {text}", nodes[victim].name);
    let (leader, term3, took) = wait_agreed(&project, &nodes, &all, term2, Duration::from_secs(60));
    note(format!("raft docker: {} back; all three agree on {} (term {term3}) {:.1}s after its start", nodes[victim].name, nodes[leader].name, took.as_secs_f64()));

    // 5. Cut one follower off the compose network; the majority keeps acknowledging.
    let cut = *all.iter().find(|&&i| i != leader).unwrap();
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != cut).collect();
    let cut_id = project.container(nodes[cut].name);
    let networks = docker(&["inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", &cut_id]);
    let network = networks.split_whitespace().next().expect("the container is on no network").to_owned();
    docker(&["network", "disconnect", &network, &cut_id]);
    // After the disconnect returned: a write sent to it before may still be acknowledged.
    let cut_at = t0.elapsed();
    std::thread::sleep(Duration::from_secs(8));
    let (leader_during, term_during, _) = wait_agreed(&project, &nodes, &majority, term3, Duration::from_secs(30));
    let reconnect_at = t0.elapsed();
    docker(&["network", "connect", "--alias", nodes[cut].name, &network, &cut_id]);
    note(format!(
        "raft docker: {} disconnected from {network} for {:.1}s; {} led the majority in term {term_during}",
        nodes[cut].name,
        (reconnect_at - cut_at).as_secs_f64(),
        nodes[leader_during].name
    ));
    let (leader, term4, took) = wait_agreed(&project, &nodes, &all, term_during, Duration::from_secs(60));
    note(format!("raft docker: {} reconnected; all three agree on {} (term {term4}) after {:.1}s", nodes[cut].name, nodes[leader].name, took.as_secs_f64()));
    std::thread::sleep(Duration::from_secs(2));
    let writes = writers.finish();

    // Acknowledged writes in each phase.
    let acked = writes.iter().filter(|w| w.ok).count();
    let before_kill = writes.iter().filter(|w| w.ok && w.sent < killed_at).count();
    let after_election = acked_since(&writes, elected_at);
    let during_cut: Vec<&Write> = writes.iter().filter(|w| w.ok && w.sent >= cut_at && w.sent < reconnect_at).collect();
    let failed = writes.iter().filter(|w| !w.ok).count();
    note(format!(
        "raft docker: {acked} writes acknowledged ({before_kill} before the kill, {after_election} after the new leader, {} while {} was cut off), {failed} not acknowledged",
        during_cut.len(),
        nodes[cut].name
    ));
    assert!(before_kill > 50, "only {before_kill} writes acknowledged before the kill");
    assert!(after_election > 50, "writes did not continue after the new leader: {after_election}");
    assert!(during_cut.len() > 50, "writes did not continue on the majority: {}", during_cut.len());
    assert!(during_cut.iter().all(|w| w.node != cut), "a write sent to the cut-off {} was acknowledged", nodes[cut].name);

    // 6. One write after everything, then every voter agrees and holds every acknowledged write.
    let (s, body) = http("PUT", &nodes[leader].url("/v1/kv/after-faults"), Some(b"1".to_vec()));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let voters: Vec<&Service> = nodes.iter().collect();
    let d = wait_digests_equal(&project, &voters, Duration::from_secs(60));
    note(format!("raft docker: the voters' digests agree: {d}"));
    for n in &nodes {
        let lost = missing_on(&n.url(""), &writes, "local");
        assert!(lost.is_empty(), "{} acknowledged writes missing on {}, e.g. {:?}", lost.len(), n.name, lost.first().map(|w| &w.key));
        assert_eq!(get_value(&n.url(""), "after-faults", "linearizable").unwrap().as_deref(), Some("1"), "{}", n.name);
    }

    // 7. The read replica (CLUSTER_RAFT_ROLE=replica) joined by itself as a learner: it
    // holds every acknowledged write and never voted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match raft_status(&replica) {
            Some((200, r)) if r["role"] == "learner" => break,
            other => assert!(Instant::now() < deadline, "the read replica {REPLICA} never followed the cluster as a learner: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut with_replica = voters.clone();
    with_replica.push(&replica);
    wait_digests_equal(&project, &with_replica, Duration::from_secs(60));
    let lost = missing_on(&replica.url(""), &writes, "local");
    assert!(lost.is_empty(), "{} acknowledged writes missing on the replica {REPLICA}", lost.len());
    assert_eq!(get_at(&replica.url(""), "after-faults").as_deref(), Some("1"));
    note(format!("raft docker: the replica {REPLICA} holds every acknowledged write"));
    note(format!("raft docker: done in {:.0}s", begin.elapsed().as_secs_f64()));
}

// ---------------------------------------------------------------------------------------
// Multi-region: docker-compose.multiregion.yml

const REGION_NODES: [&str; 6] = ["us1", "us2", "us3", "eu1", "eu2", "eu3"];

fn region_digest(s: &Service) -> Option<(String, u64)> {
    digest(s).map(|d| (d["sha256"].as_str().unwrap_or_default().to_owned(), d["keys"].as_u64().unwrap_or(0)))
}

#[test]
#[ignore = "needs a Docker engine and the meridian:dev image: docker/build-image.sh, then --ignored"]
fn the_multiregion_compose_file_promotes_the_other_region_across_a_cut_and_converges() {
    let Some(_serial) = docker_or_skip("the multi-region compose test") else { return };
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let vars = ["MERIDIAN_US1_PORT", "MERIDIAN_US2_PORT", "MERIDIAN_US3_PORT", "MERIDIAN_EU1_PORT", "MERIDIAN_EU2_PORT", "MERIDIAN_EU3_PORT"];
    let project = Project {
        file: "docker-compose.multiregion.yml",
        name: format!("meridian-region-test-{}", std::process::id()),
        env: vars.iter().zip(&ports).map(|(v, p)| (*v, p.to_string())).collect(),
    };
    let (ok, text) = project.compose(&["up", "-d"]);
    assert!(ok, "docker-compose up failed:\n{text}");
    let nodes: Vec<Service> = REGION_NODES.iter().zip(&ports).map(|(n, p)| project.service(n, *p)).collect();
    let t = Instant::now();
    // Both regions have a leader and us1 takes writes (us is primary).
    let leader_of = |range: std::ops::Range<usize>| range.into_iter().find(|&i| raft_status(&nodes[i]).is_some_and(|(c, r)| c == 200 && r["is_leader"] == true));
    while leader_of(0..3).is_none() || leader_of(3..6).is_none() {
        assert!(t.elapsed() < Duration::from_secs(90), "no leader in each region after 90 s:\n{}", project.all_logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    for n in &nodes {
        assert!(n.log_text().contains("tls=true"), "{}: the cluster transport did not start with TLS", n.name);
    }
    let t0 = Instant::now();
    let writers = start_writers(nodes[..3].iter().map(|n| n.url("")).collect(), 4, "region-docker", t0);
    std::thread::sleep(Duration::from_secs(3));
    writers.stop();
    let before = writers.finish();
    assert!(before.iter().filter(|w| w.ok).count() > 50, "too few writes acknowledged in us");
    // eu relays writes to the primary region.
    let (code, body) = http("PUT", &nodes[3].url("/v1/kv/relayed"), Some(b"x".to_vec()));
    assert_eq!(code, 200, "a write in eu was not relayed to us: {}", String::from_utf8_lossy(&body));

    // Cut us from the wan, promote eu, write there.
    let wan = format!("{}_wan", project.name);
    for n in &nodes[..3] {
        docker(&["network", "disconnect", &wan, &project.container(n.name)]);
    }
    note("multi-region docker: us cut from the wan");
    let (code, v) = call_json("POST", &nodes[4].url("/admin/region/promote"), None, Duration::from_secs(10)).unwrap();
    assert_eq!(code, 200, "promote: {v}");
    let writers = start_writers(nodes[3..].iter().map(|n| n.url("")).collect(), 4, "region-docker-eu", t0);
    std::thread::sleep(Duration::from_secs(3));
    writers.stop();
    let during = writers.finish();
    assert!(during.iter().filter(|w| w.ok).count() > 50, "too few writes acknowledged in eu after its promotion");

    // Reconnect: us learns of the promotion, stops taking writes, and everything converges.
    for n in &nodes[..3] {
        docker(&["network", "connect", "--alias", n.name, &wan, &project.container(n.name)]);
    }
    let t = Instant::now();
    loop {
        let st = call_json("GET", &nodes[0].url("/admin/region/status"), None, Duration::from_secs(5)).map(|r| r.1).unwrap_or(Value::Null);
        if st["primary_region"] == "eu" && st["takes_writes"] == false {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "us still takes writes 60 s after reconnecting: {st}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // us now relays writes to eu.
    let (code, _) = http("PUT", &nodes[0].url("/v1/kv/after-heal"), Some(b"x".to_vec()));
    assert_eq!(code, 200);
    let t = Instant::now();
    loop {
        let ds: Vec<Option<(String, u64)>> = nodes.iter().map(region_digest).collect();
        if ds[0].is_some() && ds.iter().all(|d| *d == ds[0]) {
            note(format!("multi-region docker: six digests agree ({:?}) {:.1}s after reconnecting", ds[0], t.elapsed().as_secs_f64()));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "digests never agreed: {ds:?}\n{}", project.all_logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    // Keys are unique per writer: every acknowledged write is on every node.
    for n in &nodes {
        let lost = missing_on(&n.url(""), &before, "local").len() + missing_on(&n.url(""), &during, "local").len();
        assert_eq!(lost, 0, "{}: {lost} acknowledged writes missing", n.name);
    }
}
