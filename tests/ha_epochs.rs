//! Hot standby, epochs: every writer of a log position owns a unique (epoch, index). These
//! tests break the pair in the ways that once let two writers share an epoch — a primary
//! resuming alone after a crash, two nodes both configured primary — and check that no
//! acknowledged write is lost and the two nodes converge.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ha::{health, wait_converged, wait_role, HaOpts, HaPair};
use common::{http, Node};

/// HA tests measure timeouts; run them one at a time so they do not starve each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn epoch(n: &Node) -> u64 {
    health(n)["replication"]["epoch"].as_u64().unwrap_or(0)
}

fn cut_wal_tail(n: &Node, bytes: u64) {
    let wal = n.data_dir.as_ref().unwrap().join("wal");
    let mut segments: Vec<_> =
        std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "wal")).collect();
    segments.sort();
    let last = segments.last().expect("a WAL segment");
    let len = common::wal_data_end(last);
    assert!(len > bytes + 1024, "the segment is too short to cut: {len} bytes");
    std::fs::OpenOptions::new().write(true).open(last).unwrap().set_len(len - bytes).unwrap();
}

/// The reproduction from issue 8: a `sync` primary loses its unsynced tail in a power cut
/// (records it had already streamed to the standby), restarts alone and takes a write. If it
/// resumed in its old epoch, its new record at index N and the standby's old record at N
/// would carry the same (epoch, index), the standby would keep its own, and the write
/// acknowledged by the primary would never reach it. Resuming in a new epoch makes the
/// standby see the fork and take the primary's record.
#[test]
fn a_primary_resuming_alone_after_a_power_cut_starts_a_new_epoch_and_its_writes_reach_the_standby() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts {
        sync_mode: "sync",
        failover: "60s",
        extra: vec![("MERIDIAN_CHECKPOINT_INTERVAL", "1h".into())],
        ..HaOpts::default()
    });
    for i in 0..50 {
        let (s, _) = http("PUT", &pair.a.url(&format!("/v1/kv/k{i}")), Some(format!("v{i}").into_bytes()));
        assert_eq!(s, 200);
    }
    let (s, _) = http("PUT", &pair.a.url("/v1/kv/big"), Some(vec![b'x'; 64 << 10]));
    assert_eq!(s, 200);
    let epoch_before = epoch(&pair.a);
    pair.b.kill9();
    pair.a.kill9();
    // A power cut: what the primary had streamed but not yet made durable is gone from it.
    cut_wal_tail(&pair.a, 2000);
    pair.a.restart();
    wait_role(&pair.a, "primary", Duration::from_secs(30));
    assert!(epoch(&pair.a) > epoch_before, "the primary resumed in its old epoch {epoch_before}");

    // The write waits for the standby (sync); start it in the background, then the standby.
    let url = pair.a.url("/v1/kv/W");
    let put = std::thread::spawn(move || http("PUT", &url, Some(b"after-restart".to_vec())));
    std::thread::sleep(Duration::from_millis(500));
    pair.b.restart();
    let (status, body) = put.join().unwrap();
    eprintln!("PUT W after the power cut: {status} {}", String::from_utf8_lossy(&body));
    let d = wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    eprintln!("converged: {d}");
    if status == 200 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s, v) = http("GET", &pair.b.url("/v1/kv/W"), None);
            if s == 200 {
                assert_eq!(v, b"after-restart");
                break;
            }
            assert!(Instant::now() < deadline, "W was acknowledged but the standby answers {s}\nlog a:\n{}\nlog b:\n{}", pair.a.log_text(), pair.b.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for i in 0..50 {
        let (s, v) = http("GET", &pair.b.url(&format!("/v1/kv/k{i}")), None);
        assert_eq!((s, v), (200, format!("v{i}").into_bytes()), "acknowledged k{i} missing on the standby");
    }
    // The cut reaches into the 64 KiB record, which was acknowledged — a loss of fsynced
    // data that no real crash causes (the test's stand-in for losing the unsynced tail).
    // The standby held that record under the old epoch: it is set aside, not silently kept
    // or dropped.
    let divergent = pair.b.data_dir.as_ref().unwrap().join("divergent");
    assert!(std::fs::read_dir(&divergent).map(|d| d.count() > 0).unwrap_or(false), "the standby's forked record was not kept in {}", divergent.display());
}

/// Two nodes both configured `HA_ROLE=primary`, started apart from each other, both take
/// writes (async). They used to be primary in the same epoch 1 — and when they met, an
/// equal-epoch primary renewed the other's lease and nobody stepped down. Their epochs
/// now differ by construction, the lower one steps down when they meet, keeps its
/// divergent write aside, and follows.
#[test]
fn two_nodes_both_configured_primary_never_share_an_epoch_and_one_steps_down() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts {
        sync_mode: "async",
        failover: "3s",
        partitioned: true,
        extra: vec![("MERIDIAN_CLUSTER_HA_ROLE", "primary".into())],
        ..HaOpts::default()
    });
    wait_role(&pair.a, "primary", Duration::from_secs(30));
    wait_role(&pair.b, "primary", Duration::from_secs(30));
    let (ea, eb) = (epoch(&pair.a), epoch(&pair.b));
    eprintln!("both primary, apart: epochs {ea} and {eb}");
    assert_ne!(ea, eb, "two primaries in one epoch");
    assert_eq!(http("PUT", &pair.a.url("/v1/kv/from-a"), Some(b"a".to_vec())).0, 200);
    assert_eq!(http("PUT", &pair.b.url("/v1/kv/from-b"), Some(b"b".to_vec())).0, 200);

    pair.heal();
    let (winner, loser) = if ea > eb { (&pair.a, &pair.b) } else { (&pair.b, &pair.a) };
    wait_role(loser, "standby", Duration::from_secs(15));
    assert_eq!(common::ha::role(winner), "primary");
    let d = wait_converged(winner, loser, Duration::from_secs(30));
    eprintln!("one primary after healing; converged: {d}");
    let kept = if ea > eb { "from-a" } else { "from-b" };
    assert_eq!(http("GET", &loser.url(&format!("/v1/kv/{kept}")), None).0, 200, "the winner's write is not on the loser");
    let divergent = loser.data_dir.as_ref().unwrap().join("divergent");
    assert!(std::fs::read_dir(&divergent).map(|d| d.count() > 0).unwrap_or(false), "the loser's own write was not kept in {}", divergent.display());
}

/// A former primary's divergent tail is written to `divergent/` *before* its WAL is cut: if
/// writing it fails (here `divergent` is a file, not a directory), the records stay in the
/// WAL and are set aside on a later attempt — never lost from both places.
#[test]
fn a_divergent_tail_that_cannot_be_written_stays_in_the_wal_until_it_can() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "async", failover: "2s", ..HaOpts::default() });
    pair.partition();
    for i in 0..20 {
        assert_eq!(http("PUT", &pair.a.url(&format!("/v1/kv/lonely-{i}")), Some(b"x".to_vec())).0, 200);
    }
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    let blocker = pair.a.data_dir.as_ref().unwrap().join("divergent");
    std::fs::write(&blocker, b"not a directory").unwrap();
    pair.heal();
    assert!(pair.a.log_shows("cannot set the divergent tail aside", Duration::from_secs(15)), "the failure was not hit:\n{}", pair.a.log_text());
    std::fs::remove_file(&blocker).unwrap();
    wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    let mut text = String::new();
    for e in std::fs::read_dir(&blocker).expect("a divergent directory") {
        text.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    for i in 0..20 {
        assert!(text.contains(&format!("lonely-{i}\"")), "write lonely-{i}, acknowledged by the old primary, is in neither its WAL nor divergent/:\n{text}");
    }
}

/// A bookmark is a position in one history, (epoch, index): a node waits for its epoch and
/// index, and refuses one its history does not hold — it used to compare the index only, so
/// `mb1.5.1` (epoch 5, which no node ever had) was served.
#[test]
fn a_bookmark_from_another_history_is_refused_and_a_real_one_is_served() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "sync", ..HaOpts::default() });
    let (s, body) = http("PUT", &pair.a.url("/v1/kv/bm"), Some(b"1".to_vec()));
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let bookmark = v["bookmark"].as_str().unwrap().to_owned();
    let (s, got) = http("GET", &pair.b.url(&format!("/v1/kv/bm?bookmark={bookmark}")), None);
    assert_eq!((s, got), (200, b"1".to_vec()), "a real bookmark was not served on the standby");
    for n in [&pair.a, &pair.b] {
        let (s, body) = http("GET", &n.url("/v1/kv/bm?bookmark=mb1.5.1&wait_ms=500"), None);
        assert_eq!(s, 400, "a bookmark of an epoch that never existed was served: {}", String::from_utf8_lossy(&body));
    }
}

/// A node serves only state it knows is agreed. The primary streams records before they are
/// durable on it (so the two fsyncs overlap); if its own WAL write then fails (here: its WAL
/// file reaches the process's file size limit), those records were never committed — the
/// standby must not apply and show them. It applies only up to the primary's durable index,
/// which every fetch answer carries. Writers overwrite a few keys, so the WAL (not the state
/// file) is the file that fills up.
#[test]
fn a_standby_never_shows_records_the_primary_failed_to_make_durable() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts {
        sync_mode: "async",
        failover: "60s",
        extra: vec![("MERIDIAN_WAL_SEGMENT_BYTES", (1u64 << 30).to_string())],
        ..HaOpts::default()
    });
    pair.a.kill9();
    pair.a.file_size_limit_blocks = Some(16384); // 8 MiB per file
    pair.a.restart();
    wait_role(&pair.a, "primary", Duration::from_secs(30));
    common::ha::wait_streaming(&pair.b, Duration::from_secs(30));
    // (key, value, HTTP status) of every write; values are unique.
    let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (url, results) = (pair.a.url(""), results.clone());
            std::thread::spawn(move || {
                for seq in 0..5000 {
                    let value = format!("{t}-{seq}-{}", "x".repeat(4096));
                    let (s, _) = http("PUT", &format!("{url}/v1/kv/k{t}"), Some(value.clone().into_bytes()));
                    results.lock().unwrap().push((format!("k{t}"), value, s));
                    if s != 200 {
                        break;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let results = results.lock().unwrap().clone();
    assert!(pair.a.log_text().contains("WAL append failed"), "the primary's WAL did not fail:\n{}", pair.a.log_text());
    let refused: std::collections::HashSet<_> = results.iter().filter(|r| r.2 != 200).map(|r| r.1.clone()).collect();
    assert!(!refused.is_empty(), "no write was refused by the full primary");
    std::thread::sleep(Duration::from_millis(1000)); // the standby's background applies
    let mut shown = vec![];
    for t in 0..4 {
        let (s, v) = http("GET", &pair.b.url(&format!("/v1/kv/k{t}")), None);
        let v = String::from_utf8_lossy(&v).to_string();
        if s == 200 && refused.contains(&v) {
            shown.push(v[..v.find('-').map_or(0, |i| i + 6).min(v.len())].to_owned());
        }
    }
    eprintln!("{} writes refused by the primary; the standby shows {} of them", refused.len(), shown.len());
    assert!(shown.is_empty(), "the standby shows write(s) the primary never made durable: {shown:?}");
    // Nor after a restart: start-up must not replay them from the standby's own WAL (cut
    // from the primary, so that nothing it learns from it can hide them again).
    pair.b.kill9();
    pair.b_to_a.cut();
    pair.b.restart();
    let mut shown = vec![];
    for t in 0..4 {
        let (s, v) = http("GET", &pair.b.url(&format!("/v1/kv/k{t}")), None);
        if s == 200 && refused.contains(&String::from_utf8_lossy(&v).to_string()) {
            shown.push(format!("k{t}"));
        }
    }
    assert!(shown.is_empty(), "after a restart the standby shows write(s) the primary never made durable: {shown:?}\nlog:\n{}", pair.b.log_text());
}

/// A fresh pair whose witness comes up a little after the data nodes (containers start in any
/// order: the HA compose test met this): the configured primary's first attempt to start
/// finds the witness unreachable. It must keep trying and become primary once the witness
/// answers — a fresh cluster must not stay without a primary because of the order its
/// processes started in.
#[test]
fn a_configured_primary_starts_once_a_late_witness_answers() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "sync", witness: true, witness_late: true, failover: "3s", ..HaOpts::default() });
    // Longer than the node's start-up probes, shorter than the failover timeout.
    std::thread::sleep(Duration::from_millis(2500));
    assert_ne!(common::ha::role(&pair.a), "primary", "node-a became primary without the witness");
    pair.a_to_w.as_ref().unwrap().heal();
    pair.b_to_w.as_ref().unwrap().heal();
    wait_role(&pair.a, "primary", Duration::from_secs(20));
    common::ha::wait_streaming(&pair.b, Duration::from_secs(20));
    let (status, body) = http("PUT", &pair.a.url("/v1/kv/late-witness"), Some(b"ok".to_vec()));
    assert_eq!(status, 200);
    let bookmark = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["bookmark"].as_str().unwrap().to_owned();
    let (status, body) = http("GET", &pair.b.url(&format!("/v1/kv/late-witness?bookmark={bookmark}")), None);
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "the write did not reach the standby");
}
