//! Hot standby, availability without loss: a primary that lost its lease takes writes again
//! once it has it back; a `sync` pair stays writable after a failover; an out-of-sync standby
//! never promotes itself. Every acknowledged write is checked after the fault.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ha::{health, role, wait_converged, wait_role, HaOpts, HaPair};
use common::writers::{missing_at, start_writers};
use common::{http, Node};

/// HA tests measure timeouts; run them one at a time so they do not starve each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn put(n: &Node, key: &str) -> u16 {
    http("PUT", &n.url(&format!("/v1/kv/{key}")), Some(b"v".to_vec())).0
}

/// Waits until a PUT on `n` answers 200; returns how long that took.
fn wait_writable(n: &Node, within: Duration) -> Duration {
    let start = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        if put(n, &format!("probe-{i}")) == 200 {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{} never took a write again: {}\nlog:\n{}", n.url(""), health(n), n.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A primary cut from both the standby and the witness for longer than its lease (half the
/// failover timeout) but shorter than the failover timeout refuses writes while the lease is
/// out — and must take them again once the lease is back. A refused write used to stop the
/// write pipeline for good while the node stayed primary, so nobody ever failed over either.
#[test]
fn a_primary_whose_lease_lapsed_takes_writes_again_once_it_is_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "async", witness: true, failover: "6s", ..HaOpts::default() });
    assert_eq!(put(&pair.a, "before"), 200);
    pair.partition();
    pair.a_to_w.as_ref().unwrap().cut();
    std::thread::sleep(Duration::from_millis(3500)); // lease: 3 s
    let during = put(&pair.a, "during");
    eprintln!("PUT during the lapsed lease: {during}");
    assert_ne!(during, 200, "a primary without a lease acknowledged a write");
    pair.a_to_w.as_ref().unwrap().heal();
    pair.heal();
    let took = wait_writable(&pair.a, Duration::from_secs(10));
    eprintln!("writable again {:.2}s after the heal", took.as_secs_f64());
    assert_eq!(role(&pair.a), "primary");
    wait_converged(&pair.a, &pair.b, Duration::from_secs(20));
}

/// `sync`, no witness: kill -9 the primary under 16 writers. The standby promotes after the
/// failover timeout and, its peer being out of sync (it cannot have the new primary's
/// writes), takes writes alone at once — visibly degraded — instead of blocking until the
/// old primary returns. The old primary then rejoins, catches up, is marked in sync, and
/// `sync` resumes. Every write acknowledged by either node is on both at the end.
#[test]
fn sync_stays_writable_after_a_failover_and_resumes_sync_when_the_old_primary_has_caught_up() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", failover: "2s", ..HaOpts::default() });
    wait_in_sync(&pair.a, Duration::from_secs(10));
    let t0 = Instant::now();
    let writers = start_writers(vec![pair.a.url(""), pair.b.url("")], 16, "failover", t0);
    std::thread::sleep(Duration::from_millis(1500));
    pair.a.kill9();
    let killed = Instant::now();
    wait_role(&pair.b, "primary", Duration::from_secs(10));
    let writable = wait_writable(&pair.b, Duration::from_secs(10));
    let after_kill = killed.elapsed();
    eprintln!("new primary writable {:.2}s after the kill (failover timeout 2 s)", after_kill.as_secs_f64());
    let h = health(&pair.b);
    assert_eq!(h["status"], "degraded", "acknowledging alone must be visible: {h}");
    std::thread::sleep(Duration::from_millis(1000));
    let _ = writable;

    rejoin_in_sync_and_check_every_write(&mut pair, writers);
    // In sync again: a write now waits for the standby — cut it and a write blocks.
    pair.partition();
    let url = pair.b.url("/v1/kv/in-sync-again");
    let put = std::thread::spawn(move || http("PUT", &url, Some(b"x".to_vec())));
    std::thread::sleep(Duration::from_millis(700));
    assert!(!put.is_finished(), "sync acknowledged without the in-sync standby");
    pair.heal();
    assert_eq!(put.join().unwrap().0, 200);
    assert!(killed.elapsed() < Duration::from_secs(120));
}

/// The old primary A (killed) restarts and rejoins B; under the writers' steady load it
/// catches up and B marks it in sync. Then every write acknowledged by either node must be
/// on both.
fn rejoin_in_sync_and_check_every_write(pair: &mut HaPair, writers: common::writers::Writers) {
    pair.a.restart();
    wait_role(&pair.a, "standby", Duration::from_secs(15));
    wait_in_sync(&pair.b, Duration::from_secs(30));
    let writes = writers.finish();
    let acked = writes.iter().filter(|w| w.ok).count();
    assert!(acked > 100, "only {acked} writes acknowledged");
    let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    eprintln!("{acked} acknowledged; converged: {d}");
    for n in [&pair.a, &pair.b] {
        let lost = missing_at(&n.url(""), &writes);
        assert!(lost.is_empty(), "{} acknowledged writes missing on {}, e.g. {:?}", lost.len(), n.url(""), lost.first().map(|w| &w.key));
    }
}

/// The standby's in-sync flag as its primary reports it in `/admin/replication/lag`.
fn wait_in_sync(primary: &Node, within: Duration) {
    let start = Instant::now();
    loop {
        let (_, body) = http("GET", &primary.url("/admin/replication/lag"), None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if v["standby_in_sync"] == true {
            return;
        }
        assert!(start.elapsed() < within, "the standby was never marked in sync: {v}\nlog:\n{}", primary.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A switchover whose HTTP request is dropped half-way (the client gave up) must still end —
/// done or aborted — and never leave the primary stuck `Switching` with nobody taking writes.
#[test]
fn a_switchover_whose_request_is_dropped_still_ends_with_one_primary() {
    use std::io::Write;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "async", failover: "30s", ..HaOpts::default() });
    // The standby cannot fetch, so the switchover waits for it to catch up.
    pair.b_to_a.cut();
    for i in 0..10 {
        assert_eq!(put(&pair.a, &format!("pre-{i}")), 200);
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", pair.a.port)).unwrap();
    s.write_all(b"POST /admin/switchover HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(health(&pair.a)["replication"]["state"], "switching", "the switchover did not start");
    drop(s); // the client gives up
    std::thread::sleep(Duration::from_millis(500));
    pair.b_to_a.heal();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (ra, rb) = (role(&pair.a), role(&pair.b));
        let sa = health(&pair.a)["replication"]["state"].as_str().unwrap_or("").to_owned();
        if sa != "switching" && ((ra == "primary") ^ (rb == "primary")) {
            eprintln!("after the dropped request: a={ra} ({sa}), b={rb}");
            break;
        }
        assert!(Instant::now() < deadline, "stuck: a={ra} ({sa}), b={rb}\nlog a:\n{}", pair.a.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let primary = if role(&pair.a) == "primary" { &pair.a } else { &pair.b };
    assert!(wait_writable(primary, Duration::from_secs(10)) < Duration::from_secs(10));
}

/// `sync` + witness: kill -9 the primary under 16 writers; the standby (in sync) wins the
/// witness's vote, takes writes alone, and sync resumes once the old primary has rejoined and
/// caught up. Every write acknowledged by either node is on both at the end.
#[test]
fn sync_with_a_witness_fails_over_under_load_and_loses_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", witness: true, failover: "2s", ..HaOpts::default() });
    wait_in_sync(&pair.a, Duration::from_secs(10));
    let t0 = Instant::now();
    let writers = start_writers(vec![pair.a.url(""), pair.b.url("")], 16, "witness-failover", t0);
    std::thread::sleep(Duration::from_millis(1500));
    pair.a.kill9();
    let killed = Instant::now();
    wait_role(&pair.b, "primary", Duration::from_secs(10));
    wait_writable(&pair.b, Duration::from_secs(10));
    eprintln!("with a witness: new primary writable {:.2}s after the kill (failover timeout 2 s)", killed.elapsed().as_secs_f64());
    rejoin_in_sync_and_check_every_write(&mut pair, writers);
}

/// The witness dies first, then the primary: the standby cannot win a vote, so it does not
/// promote itself (it cannot tell a dead primary from a partition without the witness) — no
/// write is taken by anyone until the operator forces it. Forced, it takes writes alone at
/// once (the old primary cannot have them); nothing acknowledged before is lost.
#[test]
fn with_the_witness_dead_first_the_standby_waits_for_the_operator_and_loses_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", witness: true, failover: "2s", ..HaOpts::default() });
    wait_in_sync(&pair.a, Duration::from_secs(10));
    let t0 = Instant::now();
    let writers = start_writers(vec![pair.a.url("")], 8, "no-witness", t0);
    std::thread::sleep(Duration::from_millis(500));
    pair.w.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_millis(1000));
    pair.a.kill9();
    let writes = writers.finish();
    let acked = writes.iter().filter(|w| w.ok).count();
    assert!(pair.b.log_shows("the witness cannot be reached", Duration::from_secs(10)), "the standby did not try the witness:\n{}", pair.b.log_text());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(role(&pair.b), "standby", "the standby promoted itself without the witness's vote");
    let (s, body) = http("POST", &pair.b.url("/admin/promote?force=true"), None);
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let took = wait_writable(&pair.b, Duration::from_secs(10));
    eprintln!("witness dead first: {acked} acknowledged before; forced primary writable after {:.2}s", took.as_secs_f64());
    let lost = missing_at(&pair.b.url(""), &writes);
    assert!(lost.is_empty(), "{} acknowledged writes missing, e.g. {:?}", lost.len(), lost.first().map(|w| &w.key));
}

/// A switchover with a witness goes through the witness like any other promotion: the
/// primary records the handover there, the standby asks for (and gets) the vote at once.
/// It used to promote without asking, leaving the witness to learn of the new primary from
/// its first ping.
#[test]
fn a_switchover_with_a_witness_goes_through_its_vote() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "sync", witness: true, failover: "3s", ..HaOpts::default() });
    wait_in_sync(&pair.a, Duration::from_secs(10));
    assert_eq!(put(&pair.a, "before-switch"), 200);
    let (s, body) = http("POST", &pair.a.url("/admin/switchover"), None);
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    wait_role(&pair.b, "primary", Duration::from_secs(10));
    wait_role(&pair.a, "standby", Duration::from_secs(10));
    let w = pair.w.as_ref().unwrap();
    assert!(w.log_shows("witness granted promotion", Duration::from_secs(5)) && w.log_text().lines().any(|l| l.contains("witness granted promotion") && l.contains("node-b")),
        "the switchover did not ask the witness:\n{}", w.log_text());
    assert_eq!(put(&pair.b, "after-switch"), 200);
    wait_converged(&pair.a, &pair.b, Duration::from_secs(20));
}

/// `sync` without a witness: a lost standby blocks writes (nothing is acknowledged alone
/// until the standby is recorded out of sync) until the operator releases it with
/// `POST /admin/standby/release`; then the primary goes on alone, visibly, and takes the
/// standby back in sync once it has returned and caught up.
#[test]
fn sync_without_a_witness_goes_on_alone_only_when_the_operator_releases_the_standby() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", failover: "30s", ..HaOpts::default() });
    wait_in_sync(&pair.a, Duration::from_secs(10));
    pair.b.kill9();
    let url = pair.a.url("/v1/kv/while-released");
    let put = std::thread::spawn(move || http("PUT", &url, Some(b"x".to_vec())));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!put.is_finished(), "sync acknowledged without the standby before it was released");
    let (s, body) = http("POST", &pair.a.url("/admin/standby/release"), None);
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(put.join().unwrap().0, 200, "the waiting write did not go through after the release");
    let h = health(&pair.a);
    assert_eq!(h["status"], "degraded", "acknowledging alone must be visible: {h}");
    assert!(pair.a.log_text().contains("released the standby"), "the release is not logged");
    pair.b.restart();
    wait_in_sync(&pair.a, Duration::from_secs(20));
    let (s, v) = http("GET", &pair.b.url("/v1/kv/while-released"), None);
    assert_eq!((s, v), (200, b"x".to_vec()), "the write acknowledged alone did not reach the returning standby");
}

/// The two data nodes must use the same failover timeout; a difference is not silent: the
/// primary's `/health` names the setting and both values.
#[test]
fn different_failover_timeouts_on_the_pair_are_reported() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "async", failover: "30s", ..HaOpts::default() });
    assert!(!health(&pair.a).to_string().contains("FAILOVER_TIMEOUT"));
    pair.b.kill9();
    pair.b.set_env("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT", "20s");
    pair.b.restart();
    let start = Instant::now();
    loop {
        let h = health(&pair.a);
        if h.to_string().contains("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT differs") {
            assert_eq!(h["status"], "degraded", "{h}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the difference was not reported: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
