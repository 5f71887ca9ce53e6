//! Hot standby under faults, with real processes: kill -9, SIGSTOP, restart with a stale role,
//! partitions through in-test proxies, switchover under load, remote_apply reads.
//! Every acknowledged write is checked after the fault.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ha::{health, role, wait_converged, wait_role, wait_streaming, HaOpts, HaPair};
use common::writers::{get_at, missing_at, start_writers, start_writers_sized, Write};
use common::{http, Node};

/// HA tests measure timeouts; run them one at a time so they do not starve each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn get(n: &Node, key: &str) -> Option<String> {
    get_at(&n.url(""), key)
}

fn missing(n: &Node, writes: &[Write]) -> Vec<Write> {
    missing_at(&n.url(""), writes)
}

#[test]
fn sync_failover_after_kill_9_keeps_every_acknowledged_write_and_the_old_primary_rejoins() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", ..HaOpts::default() });
    let t0 = Instant::now();
    let writers = start_writers(vec![pair.a.url("")], 16, "sync", t0);
    std::thread::sleep(Duration::from_millis(1500));
    pair.a.kill9();
    let killed = t0.elapsed();
    let writes = writers.finish();
    let acked = writes.iter().filter(|w| w.ok).count();
    assert!(acked > 100, "only {acked} writes acknowledged before the kill");

    let took = wait_role(&pair.b, "primary", Duration::from_secs(15));
    eprintln!("sync: {acked} acknowledged writes; standby promoted {:.2}s after kill -9", took.as_secs_f64());
    let lost = missing(&pair.b, &writes);
    assert!(lost.is_empty(), "sync mode lost {} acknowledged writes, e.g. {:?}", lost.len(), lost.first().map(|w| &w.key));
    assert!(writes.iter().all(|w| !w.ok || w.answered <= killed + Duration::from_millis(50)), "a write was acknowledged after its primary died");

    // The old primary comes back with HA_ROLE=primary still set: it must follow, not lead.
    pair.a.restart();
    wait_role(&pair.a, "standby", Duration::from_secs(10));
    assert!(pair.a.log_text().contains("disagrees"), "the role disagreement is not logged");
    let (s, _) = http("PUT", &pair.a.url("/v1/kv/after-rejoin"), Some(b"x".to_vec()));
    assert_eq!(s, 200, "a write to the rejoined node is forwarded to the new primary");
    assert_eq!(role(&pair.a), "standby", "the old primary took a write as primary");
    let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(20));
    eprintln!("rejoined and converged: {d}");
    assert_eq!(get(&pair.b, "after-rejoin").as_deref(), Some("x"));
    assert!(health(&pair.a)["replication"]["epoch"].as_u64().unwrap() >= 2);
}

/// A primary frozen by SIGSTOP (a long GC pause, a stuck VM) is replaced; when it wakes it
/// must learn of the new epoch before acknowledging anything the new primary lacks, and
/// follow it. Writers keep hammering the old primary throughout.
#[test]
fn a_primary_paused_by_sigstop_wakes_fenced_and_loses_nothing_acknowledged() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "sync", ..HaOpts::default() });
    let t0 = Instant::now();
    let writers = start_writers(vec![pair.a.url("")], 16, "paused", t0);
    std::thread::sleep(Duration::from_millis(1000));
    common::unsafe_kill(pair.a.pid(), 19); // SIGSTOP
    let took = wait_role(&pair.b, "primary", Duration::from_secs(15));
    let epoch_b = health(&pair.b)["replication"]["epoch"].as_u64().unwrap();
    common::unsafe_kill(pair.a.pid(), 18); // SIGCONT: the old primary wakes up believing it leads
    wait_role(&pair.a, "standby", Duration::from_secs(10));
    // Let the writers go on through the rejoined node (forwarded to the new primary).
    std::thread::sleep(Duration::from_millis(1500));
    let writes = writers.finish();
    let acked = writes.iter().filter(|w| w.ok).count();
    let fenced = writes.iter().filter(|w| w.status == 503).count();
    eprintln!("sigstop: promoted {:.2}s after the pause; {acked} writes acknowledged, {fenced} refused with 503", took.as_secs_f64());
    assert!(acked > 100, "only {acked} writes acknowledged");

    let lost = missing(&pair.b, &writes);
    assert!(lost.is_empty(), "{} acknowledged writes are not on the new primary, e.g. {:?}", lost.len(), lost.first().map(|w| &w.key));
    let h = health(&pair.a);
    assert!(h["replication"]["epoch"].as_u64().unwrap() >= epoch_b, "the woken node did not adopt the new epoch: {h}");
    let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(20));
    eprintln!("converged: {d}");
    let lost = missing(&pair.a, &writes);
    assert!(lost.is_empty(), "{} acknowledged writes missing on the rejoined node", lost.len());
    // Records it logged as primary but never applied (fenced before their commit) are
    // applied once the new primary confirms them; this run exercised that: see the log.
    eprintln!("logged-but-unapplied records replayed: {}", pair.a.log_text().contains("logged but not applied"));
}

/// A sync primary whose standby flushed records it never heard about (the standby's acks are
/// lost one way) is fenced with those records logged but not applied; they are committed in
/// the new primary's log. Whether the old primary then follows (`promote_it == false`) or,
/// the new primary dying, is promoted again itself, it must apply them before anything
/// else: either path used to stall on "applied out of order".
///
/// Whether a run leaves such records depends on timing (the fetch carrying B's flushed
/// position may slip through before the mute; then A has applied everything B has and its
/// unconfirmed tail simply diverges). Each run checks every acknowledged write and
/// convergence; `retried` repeats the scenario until one run took the path under test.
/// Returns whether this run did.
fn fenced_primary_with_logged_unapplied_records(promote_it: bool) -> bool {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", ..HaOpts::default() });
    let t0 = Instant::now();
    let writers = start_writers(vec![pair.a.url("")], 8, "unapplied", t0);
    std::thread::sleep(Duration::from_millis(800));
    // B gets the batch it asked for last, but its next fetch (carrying the flushed
    // position) never reaches A; A's heartbeats to B are cut too, so B fails over.
    pair.b_to_a.mute_requests();
    pair.a_to_b.cut();
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    if promote_it {
        // B will be killed and A forced in: a write forwarded by A to B once A steps down
        // could be acknowledged by B alone (A is out of sync) and not yet streamed to A when
        // B dies — a loss `force` accepts, not the one under test. So nothing new is sent
        // once A can reach B (A, cut off, cannot forward before that).
        writers.stop();
    }
    // A reaches B again, learns the new epoch and steps down with those records unapplied.
    pair.a_to_b.heal();
    wait_role(&pair.a, "standby", Duration::from_secs(15));
    let writes = writers.finish();
    pair.b_to_a.heal();
    let acked = writes.iter().filter(|w| w.ok).count();
    assert!(acked > 50, "only {acked} writes acknowledged");

    let exercised = if promote_it {
        // B dies before sending A anything new. A is not recorded in sync with B (B may have
        // acknowledged writes A lacks), so it does not promote itself; the operator forces it
        // and A takes over with its unapplied records.
        pair.b.kill9();
        assert!(pair.a.log_shows("this standby is not in sync", Duration::from_secs(15)), "an out-of-sync standby tried to take over:\n{}", pair.a.log_text());
        assert_eq!(role(&pair.a), "standby", "an out-of-sync standby promoted itself");
        let (s, body) = http("POST", &pair.a.url("/admin/promote"), None);
        assert_ne!(s, 200, "promote without force accepted an out-of-sync standby: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("not in sync"), "{}", String::from_utf8_lossy(&body));
        let (s, body) = http("POST", &pair.a.url("/admin/promote?force=true"), None);
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
        wait_role(&pair.a, "primary", Duration::from_secs(15));
        pair.b.set_env("MERIDIAN_CLUSTER_HA_ROLE", "standby");
        pair.b.restart();
        let (s, body) = http("PUT", &pair.a.url("/v1/kv/after"), Some(b"1".to_vec()));
        assert_eq!(s, 200, "the re-promoted node cannot take writes: {}\n{}", String::from_utf8_lossy(&body), pair.a.log_text());
        pair.a.log_shows("applied logged records before taking writes", Duration::from_secs(10))
    } else {
        // A follows B; the next batch from B finds A's state behind its log. A confirms
        // that batch once it is flushed and applies it in the background, so the log line
        // may come after the PUT's answer.
        let (s, body) = http("PUT", &pair.b.url("/v1/kv/after"), Some(b"1".to_vec()));
        assert_eq!(s, 200, "the new primary cannot commit with the old one as standby: {}\n{}", String::from_utf8_lossy(&body), pair.a.log_text());
        pair.a.log_shows("logged but not applied", Duration::from_secs(10))
    };
    let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    eprintln!("unapplied records (promote_it={promote_it}): {acked} acknowledged; converged: {d}");
    for n in [&pair.a, &pair.b] {
        let lost = missing(n, &writes);
        assert!(lost.is_empty(), "{} acknowledged writes missing, e.g. {:?}", lost.len(), lost.first().map(|w| &w.key));
        assert_eq!(get(n, "after").as_deref(), Some("1"));
    }
    exercised
}

/// Runs the scenario up to three times until one run left unapplied records (all runs are
/// checked for loss); fails when none did, so the path under test is never silently skipped.
fn retried(promote_it: bool) {
    for attempt in 1..=3 {
        if fenced_primary_with_logged_unapplied_records(promote_it) {
            return;
        }
        eprintln!("attempt {attempt}: the timing left no unapplied records on the old primary (nothing lost); running the scenario again");
    }
    panic!("three runs in a row left no logged-but-unapplied records: the scenario no longer exercises that path");
}

#[test]
fn a_fenced_primary_applies_its_logged_records_when_it_follows() {
    retried(false);
}

#[test]
fn a_fenced_primary_applies_its_logged_records_when_promoted_again() {
    retried(true);
}

#[test]
fn async_failover_reports_loss_and_keeps_the_divergent_tail() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "async", ..HaOpts::default() });
    let t0 = Instant::now();
    let w1 = start_writers(vec![pair.a.url("")], 16, "before", t0);
    std::thread::sleep(Duration::from_millis(800));
    // Cut the stream: in async mode the primary keeps acknowledging what the standby lacks.
    pair.partition();
    std::thread::sleep(Duration::from_millis(500));
    pair.a.kill9();
    let writes = w1.finish();
    let took = wait_role(&pair.b, "primary", Duration::from_secs(15));
    let lost = missing(&pair.b, &writes);
    let acked = writes.iter().filter(|w| w.ok).count();
    eprintln!("async: {acked} acknowledged, {} lost on failover (promotion {:.2}s after the kill)", lost.len(), took.as_secs_f64());
    assert!(!lost.is_empty(), "the partition should have left acknowledged writes only on the old primary");

    // The new primary takes writes on its own (async needs no standby).
    let (s, _) = http("PUT", &pair.b.url("/v1/kv/new-primary"), Some(b"y".to_vec()));
    assert_eq!(s, 200);

    pair.heal();
    pair.a.restart();
    wait_role(&pair.a, "standby", Duration::from_secs(10));
    wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    // Nothing silently discarded: every lost write is in the old primary's divergent tail.
    let tail = divergent_text(&pair.a);
    for w in &lost {
        assert!(tail.contains(&format!("\"{}\"", w.key)), "lost write {} is not in divergent/", w.key);
    }
    let notes = health(&pair.a)["replication"]["notes"].to_string();
    assert!(notes.contains("divergent"), "/health does not report the divergent tail: {notes}");
    assert_eq!(get(&pair.a, "new-primary").as_deref(), Some("y"));
}

#[test]
fn remote_apply_writes_are_readable_on_the_standby_at_once() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "remote_apply", ..HaOpts::default() });
    for i in 0..200 {
        let key = format!("ra/{i}");
        let (s, _) = http("PUT", &pair.a.url(&format!("/v1/kv/{key}")), Some(i.to_string().into_bytes()));
        assert_eq!(s, 200);
        assert_eq!(get(&pair.b, &key).as_deref(), Some(i.to_string().as_str()), "write {i} acknowledged but not readable on the standby");
    }
}

#[test]
fn writes_to_the_standby_are_forwarded_and_bookmarks_give_read_your_writes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "async", ..HaOpts::default() });
    let (s, body) = http("PUT", &pair.b.url("/v1/kv/fwd"), Some(b"via-standby".to_vec()));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let bm: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let bm = bm["bookmark"].as_str().unwrap();
    let (s, v) = http("GET", &pair.b.url(&format!("/v1/kv/fwd?bookmark={bm}")), None);
    assert_eq!((s, v.as_slice()), (200, &b"via-standby"[..]));
    assert_eq!(get(&pair.a, "fwd").as_deref(), Some("via-standby"));
    let lag = common::http_json("GET", &pair.a.url("/admin/replication/lag"));
    assert!(lag["records"].is_u64() && lag["seconds"].is_number(), "{lag}");
    let m = String::from_utf8(http("GET", &pair.a.url("/metrics"), None).1).unwrap();
    assert!(m.contains("meridian_peer_healthy{peer=\"peer\"} 1"), "{m}");
    assert!(m.contains("meridian_replication_mode{mode=\"ha_standby\"} 1"));
}

#[test]
fn semi_sync_fallback_is_visible_in_health_metrics_and_log() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "semi_sync", ..HaOpts::default() });
    pair.b.kill9();
    // The standby is gone: after the sync timeout (1 s here) the primary acknowledges alone.
    let (s, _) = http("PUT", &pair.a.url("/v1/kv/alone"), Some(b"1".to_vec()));
    assert_eq!(s, 200, "semi_sync must fall back, not block");
    let h = health(&pair.a);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["replication"]["notes"].to_string().contains("fell back to async"), "{h}");
    let m = String::from_utf8(http("GET", &pair.a.url("/metrics"), None).1).unwrap();
    assert!(m.contains("meridian_replication_degraded 1"), "{m}");
    assert!(pair.a.log_text().contains("falling back to async"));
    // The standby returns and catches up: semi_sync holds again and the primary is healthy.
    pair.b.restart();
    wait_streaming(&pair.b, Duration::from_secs(20));
    let (s, _) = http("PUT", &pair.a.url("/v1/kv/together"), Some(b"2".to_vec()));
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&pair.a)["status"] != "healthy" {
        assert!(Instant::now() < deadline, "never healthy again: {}", health(&pair.a));
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_converged(&pair.a, &pair.b, Duration::from_secs(10));
}

#[test]
fn forwarding_off_answers_421_with_the_primary() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "async", extra: vec![("MERIDIAN_FORWARD_WRITES", "false".into())], ..HaOpts::default() });
    let (s, body) = http("PUT", &pair.b.url("/v1/kv/x"), Some(b"1".to_vec()));
    assert_eq!(s, 421);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["error"]["code"], "not_leader");
    assert_eq!(e["error"]["leader"], pair.a.url(""));
}

#[test]
fn switchover_under_load_loses_nothing_in_every_sync_mode() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for mode in ["async", "semi_sync", "sync", "remote_apply"] {
        let pair = HaPair::start(HaOpts { sync_mode: mode, ..HaOpts::default() });
        let t0 = Instant::now();
        // Writers go to both nodes; the standby forwards.
        let writers = start_writers(vec![pair.a.url(""), pair.b.url("")], 8, mode, t0);
        std::thread::sleep(Duration::from_millis(700));
        let (s, body) = http("POST", &pair.a.url("/admin/switchover"), None);
        assert_eq!(s, 200, "{mode}: switchover failed: {}", String::from_utf8_lossy(&body));
        let switched = t0.elapsed();
        std::thread::sleep(Duration::from_millis(700));
        let writes = writers.finish();
        let mut statuses: HashMap<(usize, u16), usize> = HashMap::new();
        for w in writes.iter().filter(|w| w.sent > switched) {
            *statuses.entry((w.node, w.status)).or_default() += 1;
        }
        eprintln!("{mode}: switchover answered at {switched:?}; (node, status) counts after it: {statuses:?}");
        assert_eq!(role(&pair.b), "primary", "{mode}");
        assert_eq!(role(&pair.a), "standby", "{mode}");
        let acked = writes.iter().filter(|w| w.ok).count();
        let after = writes.iter().filter(|w| w.ok && w.sent > switched).count();
        wait_converged(&pair.a, &pair.b, Duration::from_secs(20));
        let lost = missing(&pair.b, &writes);
        eprintln!("{mode}: switchover with {acked} acknowledged writes ({after} after it), {} lost", lost.len());
        assert!(lost.is_empty(), "{mode}: switchover lost {:?}", lost.first().map(|w| &w.key));
        assert!(after > 0, "{mode}: no write succeeded after the switchover");
        drop(pair);
    }
}

#[test]
fn a_lagging_standby_catches_up_from_the_wal_and_from_a_snapshot() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let writes_per_phase: usize = std::env::var("MERIDIAN_TEST_CATCHUP_WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    // Bulk writes are txns of 100 puts: one log record each. Retention is set in records so
    // that the first outage fits in the primary's WAL and the second outlives it.
    let records_per_phase = writes_per_phase / 100;
    let mut pair = HaPair::start(HaOpts {
        sync_mode: "async",
        extra: vec![
            ("MERIDIAN_CLUSTER_HA_WAL_RETENTION", (records_per_phase + records_per_phase / 2).to_string()),
            ("MERIDIAN_WAL_SEGMENT_BYTES", "1048576".into()),
            ("MERIDIAN_CHECKPOINT_INTERVAL", "200ms".into()),
        ],
        ..HaOpts::default()
    });
    let bulk = |n: &Node, prefix: &str, count: usize| {
        // Bulk load through txns of 100 puts: one log entry each, so a phase stays quick.
        use base64::Engine;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let c = reqwest::Client::new();
            let mut tasks = Vec::new();
            for t in 0..8 {
                let (c, url, prefix) = (c.clone(), n.url("/v1/txn"), prefix.to_owned());
                tasks.push(tokio::spawn(async move {
                    for batch in (t * 100..count).step_by(800) {
                        let ops: Vec<_> = (batch..(batch + 100).min(count))
                            .map(|i| serde_json::json!({"op":"put","key": format!("{prefix}/{i:07}"),"value_b64": base64::engine::general_purpose::STANDARD.encode(format!("{i}"))}))
                            .collect();
                        let r = c.post(&url).json(&serde_json::json!({"success": ops})).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
    };
    for (phase, prefix) in ["wal", "snapshot"].iter().enumerate() {
        pair.b.kill9();
        let t = Instant::now();
        bulk(&pair.a, prefix, writes_per_phase);
        if phase == 1 {
            // More than the retention: the oldest records the standby needs are gone.
            bulk(&pair.a, "extra", writes_per_phase);
        }
        eprintln!("{prefix}: wrote while the standby was down in {:.1}s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        pair.b.restart();
        wait_streaming(&pair.b, Duration::from_secs(120));
        let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(120));
        eprintln!("{prefix}: standby caught up in {:.1}s: {d}", t.elapsed().as_secs_f64());
        if phase == 1 {
            assert!(pair.b.log_text().contains("installed a snapshot"), "the second catch-up did not use a snapshot");
            // The standby installs the chunks as they arrive: it writes no copy of the snapshot.
            let incoming = pair.b.data_dir.as_ref().unwrap().join("snapshots/incoming.snap");
            assert!(!incoming.exists(), "{} was written", incoming.display());
            let outgoing = std::fs::read_dir(pair.a.data_dir.as_ref().unwrap().join("snapshots")).unwrap().count();
            // A store image read in place leaves no file; a copied one stays until replaced.
            assert!(outgoing <= 1, "the primary keeps at most its newest snapshot file: {outgoing}");
            // The re-seed moved the primary's store file itself (src/store/image.rs), and the
            // standby, restarted after it, opens that file with its own WAL and loses nothing.
            assert!(pair.b.log_text().contains("store image install finished"), "the snapshot was not a store image");
            pair.b.kill9();
            pair.b.restart();
            wait_streaming(&pair.b, Duration::from_secs(120));
            let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(120));
            eprintln!("{prefix}: standby restarted after the install: {d}");
        } else {
            assert!(!pair.b.log_text().contains("installed a snapshot"), "the first catch-up should come from the WAL");
        }
    }
}

#[test]
fn a_partitioned_primary_with_a_witness_never_overlaps_the_new_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts {
        sync_mode: "async",
        witness: true,
        extra: vec![("MERIDIAN_FORWARD_WRITES", "false".into())],
        ..HaOpts::default()
    });
    let t0 = Instant::now();
    // Writers offer every write to both nodes; only a primary may accept.
    let writers = start_writers(vec![pair.a.url(""), pair.b.url("")], 8, "split", t0);
    std::thread::sleep(Duration::from_millis(800));
    // Isolate A from both the standby and the witness.
    let cut_at = t0.elapsed();
    pair.partition();
    pair.a_to_w.as_ref().unwrap().cut();
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    pair.heal();
    pair.a_to_w.as_ref().unwrap().heal();
    std::thread::sleep(Duration::from_millis(1500));
    let writes = writers.finish();

    let accepted = |node: usize| writes.iter().filter(move |w| w.ok && w.node == node && w.sent >= cut_at);
    let last_a = accepted(0).map(|w| w.answered).max();
    let first_b = accepted(1).map(|w| w.sent).min().expect("the new primary accepted writes");
    eprintln!("partition at {cut_at:?}: old primary's last accept answered at {last_a:?}, new primary's first accept sent at {first_b:?}");
    if let Some(last_a) = last_a {
        assert!(last_a < first_b, "two primaries accepted writes at once: A until {last_a:?}, B from {first_b:?}");
    }
    // After healing: one primary, both converge. In async mode the old primary may have
    // acknowledged writes the standby never received before its lease ran out: each of
    // them must be in its divergent tail, none silently gone.
    wait_role(&pair.a, "standby", Duration::from_secs(10));
    assert_eq!(role(&pair.b), "primary");
    wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    let lost = missing(&pair.b, &writes);
    let tail = divergent_text(&pair.a);
    for w in &lost {
        assert!(tail.contains(&format!("\"{}\"", w.key)), "acknowledged write {} is neither on the new primary nor in divergent/", w.key);
    }
    eprintln!("{} acknowledged writes were only on the isolated primary; all kept in divergent/", lost.len());
}

/// The standby's disk fills up (a per-process file size limit, as in `disk_full.rs`) under
/// sync writes: the standby reports `failed`, the primary blocks writes and says so (never
/// acknowledging what the standby could not store), and once the standby is restarted with
/// room it catches up and every acknowledged write is on both nodes.
#[test]
fn a_full_disk_on_the_standby_blocks_sync_writes_and_loses_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", ..HaOpts::default() });
    pair.b.kill9();
    pair.b.file_size_limit_blocks = Some(8192); // 4 MiB per file
    pair.b.restart();
    wait_streaming(&pair.b, Duration::from_secs(20));
    let t0 = Instant::now();
    let writers = start_writers_sized(vec![pair.a.url("")], 8, "full", t0, 4096);
    let start = Instant::now();
    while health(&pair.b)["replication"]["state"] != "failed" {
        assert!(start.elapsed() < Duration::from_secs(60), "the standby never hit its full disk: {}", health(&pair.b));
        assert!(pair.b.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the standby exited:\n{}", pair.b.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed_at = t0.elapsed();
    let start = Instant::now();
    while health(&pair.a)["status"] != "degraded" {
        assert!(start.elapsed() < Duration::from_secs(20), "the primary never reported blocked writes: {}", health(&pair.a));
        std::thread::sleep(Duration::from_millis(50));
    }
    let h = health(&pair.a).to_string();
    assert!(h.contains("blocked"), "{h}");
    std::thread::sleep(Duration::from_millis(500));
    let writes = writers.finish();
    let acked = writes.iter().filter(|w| w.ok).count();
    eprintln!("standby full after {:.1}s; {acked} writes acknowledged", failed_at.as_secs_f64());
    assert!(acked > 100, "only {acked} writes acknowledged");
    let log = pair.b.log_text();
    let line = log.lines().find(|l| l.contains("File too large"));
    assert!(line.is_some(), "the standby's log must name the error:\n{log}");
    eprintln!("standby: {}", line.unwrap());

    // Room again: the standby restarts, catches up, and the blocked writes go through.
    pair.b.kill9();
    pair.b.file_size_limit_blocks = None;
    pair.b.restart();
    let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(60));
    eprintln!("converged after the standby restarted with room: {d}");
    for n in [&pair.a, &pair.b] {
        let lost = missing(n, &writes);
        assert!(lost.is_empty(), "{} acknowledged writes missing on {}, e.g. {:?}", lost.len(), n.url(""), lost.first().map(|w| &w.key));
    }
    let (s, _) = http("PUT", &pair.a.url("/v1/kv/after-room"), Some(b"z".to_vec()));
    assert_eq!(s, 200, "the primary takes sync writes again");
}

fn divergent_text(n: &Node) -> String {
    let dir = n.data_dir.clone().unwrap().join("divergent");
    let mut tail = String::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd {
            tail.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
    }
    tail
}

#[test]
fn a_pair_with_a_witness_replicates_and_fails_over_over_mutual_tls() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", witness: true, tls: true, ..HaOpts::default() });
    for i in 0..50 {
        let (s, _) = http("PUT", &pair.a.url(&format!("/v1/kv/tls/{i}")), Some(b"secret".to_vec()));
        assert_eq!(s, 200);
    }
    wait_converged(&pair.a, &pair.b, Duration::from_secs(10));
    assert!(pair.a.log_text().contains("tls=true"), "the transport did not start with TLS");
    pair.a.kill9();
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    assert!(missing(&pair.b, &(0..50).map(|i| Write { key: format!("tls/{i}"), value: "secret".into(), ok: true, ..Write::default() }).collect::<Vec<_>>()).is_empty());
}

fn get_with(n: &Node, key: &str, consistency: &str) -> (u16, String) {
    let (s, b) = http("GET", &n.url(&format!("/v1/kv/{key}?consistency={consistency}")), None);
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// An isolated primary still believes it is the primary for a while, so a `local` read there
/// can miss writes the new primary acknowledged; `linearizable` must never do that: it is
/// refused until the node can confirm it is the primary, and served correctly after it
/// rejoins as standby.
#[test]
fn linearizable_reads_never_serve_a_deposed_primarys_stale_state() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "semi_sync", witness: true, ..HaOpts::default() });
    let (s, _) = http("PUT", &pair.a.url("/v1/kv/k"), Some(b"v1".to_vec()));
    assert_eq!(s, 200);
    assert_eq!(get_with(&pair.a, "k", "linearizable"), (200, "v1".into()), "on the primary");
    assert_eq!(get_with(&pair.b, "k", "linearizable"), (200, "v1".into()), "on the standby");

    // Isolate A from the standby and the witness; B takes over and acknowledges v2.
    pair.a_to_b.cut();
    pair.b_to_a.cut();
    pair.a_to_w.as_ref().unwrap().cut();
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    let (s, body) = http("PUT", &pair.b.url("/v1/kv/k"), Some(b"v2".to_vec()));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));

    assert_eq!(get_with(&pair.a, "k", "local"), (200, "v1".into()), "the isolated node should still hold the old value");
    let (s, body) = get_with(&pair.a, "k", "linearizable");
    assert_eq!(s, 503, "a linearizable read on the isolated old primary must be refused: {body}");
    assert!(body.contains("cannot confirm"), "{body}");
    assert_eq!(get_with(&pair.b, "k", "linearizable"), (200, "v2".into()), "on the new primary");

    // Healed, A learns the new epoch, follows, and serves the new value linearizably.
    pair.a_to_b.heal();
    pair.b_to_a.heal();
    pair.a_to_w.as_ref().unwrap().heal();
    wait_role(&pair.a, "standby", Duration::from_secs(15));
    let start = Instant::now();
    loop {
        let r = get_with(&pair.a, "k", "linearizable");
        if r.0 == 200 {
            assert_eq!(r.1, "v2", "a linearizable read on the rejoined standby returned a stale value");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no linearizable read on the rejoined node: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A primary streams records before they are durable on it, so a crash can leave it with a
/// shorter log than its standby. Simulated here by cutting the end off its last WAL segment
/// after a kill -9 (a torn tail, as a crash leaves it). Restarted before the failover
/// timeout, it must not resume as primary over the standby's longer log — the standby
/// would then have to set aside records it holds (and has shown) — but let the standby
/// take over with them, and follow it.
#[test]
fn a_primary_restarted_with_a_shorter_log_than_its_standby_lets_the_standby_take_over() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", failover: "5s", ..HaOpts::default() });
    let t0 = Instant::now();
    let writers = start_writers(vec![pair.a.url("")], 8, "torn", t0);
    std::thread::sleep(Duration::from_millis(1000));
    pair.a.kill9();
    let writes = writers.finish();
    let acked = writes.iter().filter(|w| w.ok).count();
    assert!(acked > 100, "only {acked} writes acknowledged");

    let wal = pair.a.data_dir.as_ref().unwrap().join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "wal")).collect();
    segments.sort();
    let last = segments.last().expect("a WAL segment");
    let len = common::wal_data_end(last);
    assert!(len > 4096, "the segment is too short to cut: {len} bytes");
    std::fs::OpenOptions::new().write(true).open(last).unwrap().set_len(len - 2000).unwrap();
    pair.a.restart();

    wait_role(&pair.b, "primary", Duration::from_secs(30));
    wait_role(&pair.a, "standby", Duration::from_secs(15));
    assert!(pair.a.log_text().contains("holds records this node lost"), "the restarted node did not notice its shorter log:\n{}", pair.a.log_text());
    let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    eprintln!("torn tail: {acked} acknowledged; the standby took over; converged: {d}");
    for n in [&pair.a, &pair.b] {
        let lost = missing(n, &writes);
        assert!(lost.is_empty(), "{} acknowledged writes missing on {}, e.g. {:?}", lost.len(), n.url(""), lost.first().map(|w| &w.key));
    }
    assert!(divergent_text(&pair.b).is_empty(), "the standby set records aside: {}", divergent_text(&pair.b));
}
