//! `MERIDIAN_CLUSTER_MODE=multi_region` with real processes: regions of Raft groups on
//! loopback, joined by in-test proxies that delay or cut the link between regions.
//!
//! | test | setting and faults | what must hold |
//! |---|---|---|
//! | `writes_in_the_primary_region_reach_the_other_over_a_delayed_link` | 2 regions × 3 nodes, primary `us`, 50 ms added each way between regions | a write in `eu` relayed to `us`; 300 writes and 30 deletes in `us` all appear in `eu` (lag p50/p99 printed); all six digests equal |
//! | `a_cut_between_active_active_regions_heals_to_one_state` | 2 regions × 1 node, active_active, writers in both on shared and own keys, the link cut for 30 s; snapshots every 500 entries so the logs are purged past the marks meanwhile | the full-state resend runs; digests equal after healing; every acknowledged write on an own key present in both; on shared keys every acknowledged write present or overwritten by a version stamped after it was sent |
//! | `promotion_while_the_primary_is_cut_off_demotes_it_on_heal` | 2 regions × 1 node, primary `us`, `FORWARD_WRITES=false`; the link cut, writes in `us` (unaware), `eu` promoted, writes in `eu`; healed | `us` refuses writes (403 naming `eu`) once it hears; digests equal; every acknowledged write present or overwritten by a later stamp; `eu` reports the versions `us` wrote after the promotion |
//! | `semi_sync_writes_survive_the_loss_of_the_whole_primary_region` | 2 regions × 1 node, `semi_sync`, 100 ms added each way; kill -9 of `us` right after its last acknowledged write | after promoting `eu`, every write `us` acknowledged is in `eu` |
//! | `a_killed_region_leader_is_replaced_and_shipping_resumes` | 2 regions × 3 nodes, primary `us`, kill -9 of `us`'s leader under writes | the new leader resumes from `eu`'s mark: every acknowledged write in `eu`, digests equal, `eu`'s mark for `us` never moves back |

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::raft::{call, call_json};
use common::region::{RegionOpts, Regions};

/// Six processes at a time on two cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const T: Duration = Duration::from_secs(5);

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn writes_in_the_primary_region_reach_the_other_over_a_delayed_link() {
    let _g = serial();
    let rg = Regions::start(RegionOpts { names: vec!["us", "eu"], nodes_per_region: 3, primary: Some("us"), extra: vec![] });
    rg.set_links(Some(Duration::from_millis(50)));

    // The other region relays writes to the primary region.
    let (code, body) = call("PUT", &format!("{}/v1/kv/relayed", rg.base(1, 0)), Some(b"x".to_vec()), T).unwrap();
    assert_eq!(code, 200, "a write in eu answered {code} {}", String::from_utf8_lossy(&body));
    assert_eq!(rg.get_local(0, 0, "relayed").map(|r| r.0), Some(200), "the relayed write is not in us");
    // Conditional writes are available in the primary region.
    let (code, _) = call("PUT", &format!("{}/v1/kv/cas?if_revision=0", rg.base(0, 1)), Some(b"1".to_vec()), T).unwrap();
    assert_eq!(code, 200);

    // Warm-up: the link is up and eu's followers know their leader.
    let t = Instant::now();
    while rg.get_local(1, 2, "cas").map(|r| r.0) != Some(200) {
        assert!(t.elapsed() < Duration::from_secs(30), "the first write never reached eu");
        std::thread::sleep(Duration::from_millis(10));
    }
    // 300 writes spread over us's nodes (followers forward to the leader), while a reader on
    // an eu follower notes when each appears there.
    const N: usize = 300;
    let acked: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; N]));
    let reader = {
        let (acked, eu) = (acked.clone(), rg.base(1, 2));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut lags = Vec::new();
            for i in 0..N {
                loop {
                    assert!(Instant::now() < deadline, "key {i} never appeared in eu");
                    if let Ok((200, _)) = call("GET", &format!("{eu}/v1/kv/k{i:04}?consistency=local"), None, T) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                let seen = Instant::now();
                // The write's acknowledgement may come back after the key is already in eu.
                let ack = loop {
                    if let Some(a) = acked.lock().unwrap()[i] {
                        break a;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                lags.push(seen.saturating_duration_since(ack));
            }
            lags
        })
    };
    let started = Instant::now();
    for i in 0..N {
        let node = rg.base(0, i % 3);
        let (code, b) = call("PUT", &format!("{node}/v1/kv/k{i:04}"), Some(format!("v{i}").into_bytes()), T).unwrap();
        assert_eq!(code, 200, "write {i}: {}", String::from_utf8_lossy(&b));
        acked.lock().unwrap()[i] = Some(Instant::now());
        // About 100 writes a second.
        let due = started + Duration::from_millis(10 * (i as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    for i in (0..N).step_by(10) {
        let (code, _) = call("DELETE", &format!("{}/v1/kv/k{i:04}", rg.base(0, 0)), None, T).unwrap();
        assert_eq!(code, 200);
    }
    let mut lags = reader.join().unwrap();
    lags.sort();
    eprintln!(
        "cross-region lag (50 ms each way added), {} writes at ~100/s: p50 {:?}, p99 {:?}, max {:?}",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().unwrap()
    );

    let (digest, keys) = rg.wait_converged(Duration::from_secs(60));
    assert_eq!(keys as usize, N + 2, "300 live keys, 30 tombstones, 'cas' and 'relayed' ({digest})");
    for i in 0..N {
        let got = rg.get_local(1, 0, &format!("k{i:04}")).unwrap();
        if i % 10 == 0 {
            assert_eq!(got.0, 404, "k{i:04} was deleted in us");
        } else {
            assert_eq!(got, (200, format!("v{i}").into_bytes()), "k{i:04} in eu");
        }
    }
    // The status names the link and has nothing left to ship.
    let leader = rg.wait_leader(0, T);
    let (_, st) = call_json("GET", &format!("{}/admin/region/status", rg.base(0, leader)), None, T).unwrap();
    let remote = &st["remotes"][0];
    assert_eq!(remote["region"], "eu", "{st}");
    assert_eq!(remote["lag_entries"], 0, "{st}");
    assert!(remote["shipped_versions"].as_u64().unwrap() >= N as u64, "{st}");
    // The cluster page's data carries the region leader's view of its link.
    let (_, view) = call_json("GET", &format!("{}/ui/cluster.json", rg.base(0, (leader + 1) % 3)), None, T).unwrap();
    let shipping: Vec<&serde_json::Value> = view["nodes"].as_array().unwrap().iter().filter(|n| n["region"]["is_region_leader"] == true).collect();
    assert_eq!(shipping.len(), 1, "{view}");
    assert_eq!(shipping[0]["region"]["remotes"][0]["region"], "eu", "{view}");
    let (_, metrics) = call("GET", &format!("{}/metrics", rg.base(0, leader)), None, T).unwrap();
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    for m in ["meridian_region_lag_entries{region=\"eu\"} 0", "meridian_region_lag_seconds{region=\"eu\"}", "meridian_region_shipped_bytes_total{region=\"eu\"}"] {
        assert!(metrics.contains(m), "{m} missing from the leader's /metrics");
    }
}

struct Acked {
    key: String,
    value: String,
    sent_ms: u64,
}

#[test]
fn a_cut_between_active_active_regions_heals_to_one_state() {
    let _g = serial();
    // Snapshots every 500 entries, 100 kept behind: during the cut each region's log is
    // purged past the other's mark, so healing takes the full-state resend.
    let snapshots = vec![
        ("MERIDIAN_CLUSTER_RAFT_SNAPSHOT_THRESHOLD".to_string(), "500".to_string()),
        ("MERIDIAN_CLUSTER_RAFT_TRAILING_LOGS".to_string(), "100".to_string()),
    ];
    let rg = Regions::start(RegionOpts { names: vec!["us", "eu"], nodes_per_region: 1, primary: None, extra: snapshots });
    // Conditional writes are refused in active_active.
    let (code, body) = call("PUT", &format!("{}/v1/kv/c?if_revision=0", rg.base(0, 0)), Some(b"1".to_vec()), T).unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .flat_map(|r| (0..2).map(move |w| (r, w)))
        .map(|(r, w)| {
            let (base, stop, region) = (rg.base(r, 0), stop.clone(), rg.names[r]);
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut n = 0u64;
                let deadline = Instant::now() + Duration::from_secs(90);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    let key = if n.is_multiple_of(3) { format!("own-{region}-{w}-{n}") } else { format!("shared-{}", (n * 7 + w) % 16) };
                    let value = format!("{region}-{w}-{n}");
                    let sent_ms = wall_ms();
                    if let Ok((200, _)) = call("PUT", &format!("{base}/v1/kv/{key}"), Some(value.clone().into_bytes()), T) {
                        acked.push(Acked { key, value, sent_ms });
                    }
                    std::thread::sleep(Duration::from_millis(15));
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    rg.set_links(None);
    eprintln!("link between us and eu cut for 30 s");
    std::thread::sleep(Duration::from_secs(30));
    rg.set_links(Some(Duration::ZERO));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Acked> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let (digest, keys) = rg.wait_converged(Duration::from_secs(60));
    eprintln!("converged: {keys} keys, digest {digest}; {} acknowledged writes", acked.len());
    assert!(acked.len() > 1000, "only {} writes were acknowledged", acked.len());

    // The final state, with stamps, from each region.
    let b64 = base64::engine::general_purpose::STANDARD;
    let state = |r: usize| -> HashMap<String, (String, u64)> {
        let (code, l) = call_json("GET", &format!("{}/v1/kv?prefix=&limit=10000", rg.base(r, 0)), None, T).unwrap();
        assert_eq!(code, 200);
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| {
                let v = String::from_utf8(b64.decode(it["value_b64"].as_str().unwrap()).unwrap()).unwrap();
                (it["key"].as_str().unwrap().to_owned(), (v, it["stamp"]["hlc"].as_u64().expect("a stamped version")))
            })
            .collect()
    };
    let (us, eu) = (state(0), state(1));
    assert_eq!(us.len(), eu.len());
    let mut overwritten = 0;
    for w in &acked {
        for (name, st) in [("us", &us), ("eu", &eu)] {
            let Some((value, hlc)) = st.get(&w.key) else { panic!("{name}: acknowledged {}={} is missing", w.key, w.value) };
            if *value == w.value {
                continue;
            }
            assert!(!w.key.starts_with("own-"), "{name}: acknowledged {}={} holds {value}", w.key, w.value);
            // Overwritten: only by a version stamped after this write was sent.
            assert!(hlc >> 16 >= w.sent_ms, "{name}: {}={} (sent at {} ms) was replaced by {value} stamped at {} ms", w.key, w.value, w.sent_ms, hlc >> 16);
            overwritten += 1;
        }
    }
    eprintln!("{overwritten} acknowledged shared-key writes overwritten by later ones (both regions counted)");
    for r in 0..2 {
        assert!(rg.nodes[r][0].log_shows("resending every version", T), "{}: healing did not take the full-state resend (the log was not purged?)", rg.names[r]);
    }
}

/// Tombstones are collected once every region has them, never before, and a collected key
/// stays deleted (issue 13: "collected only once every region has acknowledged past them").
/// The deletes happen while us cannot reach eu, though eu still reaches us: us keeps hearing
/// eu's clock move past its deletes, and must still keep its own tombstones until eu has them.
#[test]
fn tombstones_are_collected_once_every_region_has_them() {
    let _g = serial();
    let gc = vec![("MERIDIAN_CLUSTER_TOMBSTONE_GC_INTERVAL".to_string(), "1s".to_string())];
    let rg = Regions::start(RegionOpts { names: vec!["us", "eu"], nodes_per_region: 1, primary: None, extra: gc });
    let digest = |r: usize| call_json("GET", &format!("{}/admin/digest", rg.base(r, 0)), None, T).unwrap().1;
    let status = |r: usize| call_json("GET", &format!("{}/admin/region/status", rg.base(r, 0)), None, T).unwrap().1;
    for i in 0..100 {
        let (code, _) = call("PUT", &format!("{}/v1/kv/gc-{i}", rg.base(0, 0)), Some(b"v".to_vec()), T).unwrap();
        assert_eq!(code, 200);
    }
    rg.wait_converged(Duration::from_secs(30));

    // One way cut (the proxies us dials to reach eu); us deletes everything; both keep writing.
    for p in &rg.proxies[1] {
        p.cut();
    }
    for i in 0..100 {
        let (code, _) = call("DELETE", &format!("{}/v1/kv/gc-{i}", rg.base(0, 0)), None, T).unwrap();
        assert_eq!(code, 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tickers: Vec<_> = (0..2)
        .map(|r| {
            let (base, stop, name) = (rg.base(r, 0), stop.clone(), rg.names[r]);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    let _ = call("PUT", &format!("{base}/v1/kv/tick-{name}"), Some(n.to_string().into_bytes()), T);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4)); // four collection passes
    let (d, st) = (digest(0), status(0));
    assert!(st["tombstones"]["next_horizon"].as_u64().unwrap() > 0, "eu's clock did not reach us: {st:#}");
    assert_eq!(d["tombstones"], 100, "us collected tombstones eu never received: {d}\n{st:#}");

    // Healed: each region's tombstones reach the other, and the clocks move past them.
    rg.set_links(Some(Duration::ZERO));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, b) = (digest(0), digest(1));
        if a["tombstones"] == 0 && b["tombstones"] == 0 {
            eprintln!("every tombstone collected: us {a}, eu {b}");
            break;
        }
        assert!(Instant::now() < deadline, "tombstones not collected within 60 s: us {a}, eu {b}\nus: {:#}\neu: {:#}", status(0), status(1));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tickers {
        t.join().unwrap();
    }
    let (code, body) = call_json("GET", &format!("{}/admin/conflicts", rg.base(0, 0)), None, T).unwrap();
    assert_eq!(code, 400, "conflicts are kept only with CLUSTER_CONFLICT_STRATEGY=manual: {body}");
    for r in 0..2 {
        let st = status(r);
        assert!(st["tombstones"]["collected"].as_u64().unwrap() >= 100, "{}: {st:#}", rg.names[r]);
        assert!(st["tombstones"]["horizon"].as_u64().unwrap() > 0, "{}: {st:#}", rg.names[r]);
        for i in 0..100 {
            let (code, _) = rg.get_local(r, 0, &format!("gc-{i}")).unwrap();
            assert_eq!(code, 404, "{}: gc-{i} came back after its tombstone was collected", rg.names[r]);
        }
    }
    // A collected key can be written again, and the write reaches the other region.
    let (code, _) = call("PUT", &format!("{}/v1/kv/gc-7", rg.base(1, 0)), Some(b"again".to_vec()), T).unwrap();
    assert_eq!(code, 200);
    let (_, keys) = rg.wait_converged(Duration::from_secs(30));
    assert_eq!(rg.get_local(0, 0, "gc-7").unwrap(), (200, b"again".to_vec()));
    eprintln!("converged again at {keys} keys");

    // Idle afterwards: the last deletes are the newest stamps anywhere, and no write follows
    // them. The collectors' clock ticks still carry both regions' clocks past them.
    for i in 0..10 {
        let (code, _) = call("DELETE", &format!("{}/v1/kv/gc-{i}b", rg.base(1, 0)), None, T).unwrap();
        assert_eq!(code, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (digest(0), digest(1));
        if a["tombstones"] == 0 && b["tombstones"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "an idle pair kept its last tombstones for 30 s: us {a}, eu {b}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The pass that removed the last tombstones still ends with its tick, and the other
    // region's tick arrives after it, so the index may move once more after the digests read
    // 0 (CI saw 352 -> 353); then it must stand still for a whole window.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut idle = digest(0)["applied_index"].as_u64().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3));
        let now = digest(0)["applied_index"].as_u64().unwrap();
        if now == idle {
            break;
        }
        assert!(Instant::now() < deadline, "with no tombstone left the collectors kept ticking: applied index {idle} -> {now} in 3 s");
        idle = now;
    }
}

/// `CLUSTER_CONFLICT_STRATEGY=manual` (issue 13): the same key written in both regions while
/// they are cut apart is one conflict, listed with both versions in both regions after the
/// heal; an operator keeps one side, and the conflict is gone everywhere.
#[test]
fn manual_conflicts_are_listed_in_both_regions_and_settled_by_an_operator() {
    let _g = serial();
    let manual = vec![("MERIDIAN_CLUSTER_CONFLICT_STRATEGY".to_string(), "manual".to_string())];
    let rg = Regions::start(RegionOpts { names: vec!["us", "eu"], nodes_per_region: 1, primary: None, extra: manual });
    let put = |r: usize, key: &str, value: &str| {
        let (code, body) = call("PUT", &format!("{}/v1/kv/{key}", rg.base(r, 0)), Some(value.as_bytes().to_vec()), T).unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    };
    let conflicts = |r: usize| {
        let (code, c) = call_json("GET", &format!("{}/admin/conflicts", rg.base(r, 0)), None, T).unwrap();
        assert_eq!(code, 200, "{c}");
        c["conflicts"].as_array().unwrap().clone()
    };
    put(0, "k", "base");
    put(0, "seq", "first");
    rg.wait_converged(Duration::from_secs(30));
    put(1, "seq", "second"); // written in eu having seen us's version: no conflict
    rg.wait_converged(Duration::from_secs(30));

    rg.set_links(None);
    put(0, "k", "from-us");
    put(1, "k", "from-eu");
    put(0, "solo", "only-us");
    // Heal eu -> us first: us merges eu's later version over its own before it ships
    // anything, so eu can only learn of the version it beat from the conflict itself.
    for p in &rg.proxies[0] {
        p.heal();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while rg.get_local(0, 0, "k").unwrap() != (200, b"from-eu".to_vec()) {
        assert!(Instant::now() < deadline, "eu's version never reached us");
        std::thread::sleep(Duration::from_millis(50));
    }
    rg.set_links(Some(Duration::ZERO));
    rg.wait_converged(Duration::from_secs(30));
    // The digests leave the conflict records out: wait for eu to hear of the version it beat.
    let wait = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (us, eu) = (conflicts(0), conflicts(1));
            if us.len() == want && eu.len() == want {
                return (us, eu);
            }
            assert!(Instant::now() < deadline, "want {want} conflict(s) in each region: us {us:?}, eu {eu:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (us, eu) = wait(1);
    // Nothing is traded back and forth while the conflict is open.
    let shipped = |r: usize| call_json("GET", &format!("{}/admin/region/status", rg.base(r, 0)), None, T).unwrap().1["remotes"][0]["shipped_versions"].as_u64().unwrap();
    let before = (shipped(0), shipped(1));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!((shipped(0), shipped(1)), before, "the regions keep shipping versions to each other");
    eprintln!("conflicts in us: {us:?}");
    assert_eq!(us.len(), 1, "one conflict, on k: {us:?}");
    assert_eq!(us[0]["key"], "k");
    assert_eq!(eu.len(), 1, "{eu:?}");
    assert_eq!(eu[0]["id"], us[0]["id"], "the same id in both regions");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut sides: Vec<(String, String)> = us[0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["region"].as_str().unwrap().to_owned(), String::from_utf8(b64.decode(v["value_b64"].as_str().unwrap()).unwrap()).unwrap()))
        .collect();
    sides.sort();
    assert_eq!(sides, vec![("eu".to_string(), "from-eu".to_string()), ("us".to_string(), "from-us".to_string())]);
    let id = us[0]["id"].as_str().unwrap().to_owned();
    // Reads flag the key while the conflict is open.
    let head = |r: usize, key: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(rg.base(r, 0).trim_start_matches("http://").trim_end_matches('/')).unwrap();
        write!(s, "GET /v1/kv/{key}?consistency=local HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.to_ascii_lowercase()
    };
    for r in 0..2 {
        assert!(head(r, "k").contains(&format!("x-conflict: {id}")), "{}: {}", rg.names[r], head(r, "k"));
        assert!(!head(r, "seq").contains("x-conflict"), "{}", rg.names[r]);
    }

    // Bad resolutions are refused and change nothing.
    let resolve = |r: usize, id: &str, body: &str| call_json("POST", &format!("{}/admin/conflicts/{id}/resolve", rg.base(r, 0)), Some(body.as_bytes().to_vec()), T).unwrap();
    assert_eq!(resolve(0, &id, "{}").0, 400);
    assert_eq!(resolve(0, &id, r#"{"value":"x","delete":true}"#).0, 400);
    assert_eq!(resolve(0, &id, r#"{"keep":"ap"}"#).0, 400);
    assert_eq!(resolve(0, "6e6f6e65", r#"{"delete":true}"#).0, 404, "no conflict on key \"none\"");
    assert_eq!(conflicts(0).len(), 1);

    // Keep eu's side, from us.
    let (code, r) = resolve(0, &id, r#"{"keep":"eu"}"#);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["settled_here"], true, "{r}");
    let (_, keys) = rg.wait_converged(Duration::from_secs(30));
    wait(0);
    for r in 0..2 {
        assert!(!head(r, "k").contains("x-conflict"), "{}", rg.names[r]);
        assert_eq!(rg.get_local(r, 0, "k").unwrap(), (200, b"from-eu".to_vec()), "{}", rg.names[r]);
    }
    eprintln!("conflict {id} settled in both regions; {keys} keys");
}

#[test]
fn a_killed_region_leader_is_replaced_and_shipping_resumes() {
    let _g = serial();
    let mut rg = Regions::start(RegionOpts { names: vec!["us", "eu"], nodes_per_region: 3, primary: Some("us"), extra: vec![] });
    rg.set_links(Some(Duration::from_millis(20)));
    // eu's mark for us, sampled all along: it may only grow.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (eu, stop) = (rg.base(1, 0), stop.clone());
        std::thread::spawn(move || {
            let mut marks = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok((200, st)) = call_json("GET", &format!("{eu}/admin/region/status"), None, T) {
                    marks.push(st["received"]["us"].as_u64().unwrap());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            marks
        })
    };
    let t0 = Instant::now();
    let us: Vec<String> = (0..3).map(|i| rg.base(0, i)).collect();
    let writers = common::writers::start_writers(us, 8, "kill", t0);
    std::thread::sleep(Duration::from_secs(3));
    let leader = rg.wait_leader(0, T);
    rg.nodes[0][leader].kill9();
    eprintln!("killed us's leader {}", rg.names[0].to_owned() + &(leader + 1).to_string());
    std::thread::sleep(Duration::from_secs(5));
    let next = rg.wait_leader(0, Duration::from_secs(20));
    assert_ne!(next, leader);
    rg.nodes[0][leader].restart();
    std::thread::sleep(Duration::from_secs(2));
    writers.stop();
    let writes = writers.finish();
    let acked: Vec<_> = writes.iter().filter(|w| w.ok).collect();
    assert!(acked.len() > 200, "only {} writes acknowledged", acked.len());
    let (digest, keys) = rg.wait_converged(Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let marks = sampler.join().unwrap();
    eprintln!("converged at {keys} keys ({digest}); {} acknowledged writes; eu's mark for us sampled {} times, last {:?}", acked.len(), marks.len(), marks.last());
    assert!(marks.windows(2).all(|w| w[0] <= w[1]), "eu's mark for us moved back: {marks:?}");
    for r in 0..2 {
        let lost = common::raft::missing_on(&rg.base(r, 1), &writes, "local");
        assert!(lost.is_empty(), "{} acknowledged writes missing in {}, e.g. {:?}", lost.len(), rg.names[r], lost.first().map(|w| &w.key));
    }
}

#[test]
fn promotion_while_the_primary_is_cut_off_demotes_it_on_heal() {
    let _g = serial();
    // Without relaying, so that a region that does not take writes says so (403).
    let rg = Regions::start(RegionOpts { names: vec!["us", "eu"], nodes_per_region: 1, primary: Some("us"), extra: vec![("MERIDIAN_FORWARD_WRITES".into(), "false".into())] });
    let (us, eu) = (rg.base(0, 0), rg.base(1, 0));
    let put = |base: &str, key: &str, value: &str| -> (u16, u64) {
        let sent = wall_ms();
        let (code, _) = call("PUT", &format!("{base}/v1/kv/{key}"), Some(value.as_bytes().to_vec()), T).unwrap();
        (code, sent)
    };
    let mut acked: Vec<Acked> = Vec::new();
    for i in 0..20 {
        let (code, sent_ms) = put(&us, &format!("before-{i}"), "us");
        assert_eq!(code, 200);
        acked.push(Acked { key: format!("before-{i}"), value: "us".into(), sent_ms });
    }
    rg.wait_converged(Duration::from_secs(30));

    rg.set_links(None);
    // us does not know it is cut off: it goes on taking writes.
    for i in 0..10 {
        let (code, sent_ms) = put(&us, &format!("cut-us-{i}"), "us");
        assert_eq!(code, 200);
        acked.push(Acked { key: format!("cut-us-{i}"), value: "us".into(), sent_ms });
    }
    let (code, st) = call_json("POST", &format!("{eu}/admin/region/promote"), None, T).unwrap();
    assert_eq!(code, 200, "{st}");
    assert_eq!((st["primary_region"].as_str(), st["region_epoch"].as_u64()), (Some("eu"), Some(1)), "{st}");
    let (code, _) = put(&eu, "shared", "eu-after-promotion");
    assert_eq!(code, 200, "the promoted region takes writes");
    std::thread::sleep(Duration::from_millis(50));
    // Written in us after eu's promotion, without us knowing.
    let mut late = 0;
    for i in 0..10 {
        let (code, sent_ms) = put(&us, &format!("late-us-{i}"), "us");
        assert_eq!(code, 200);
        acked.push(Acked { key: format!("late-us-{i}"), value: "us".into(), sent_ms });
        late += 1;
    }
    let (code, sent_ms) = put(&us, "shared", "us-late");
    assert_eq!(code, 200);
    acked.push(Acked { key: "shared".into(), value: "us-late".into(), sent_ms });
    late += 1;

    rg.set_links(Some(Duration::ZERO));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = call("PUT", &format!("{us}/v1/kv/probe"), Some(b"x".to_vec()), T).unwrap();
        if code == 403 {
            let body = String::from_utf8_lossy(&body).to_string();
            assert!(body.contains("eu") && body.contains("epoch 1"), "{body}");
            break;
        }
        assert_eq!(code, 200);
        acked.push(Acked { key: "probe".into(), value: "x".into(), sent_ms: 0 });
        assert!(Instant::now() < deadline, "us still takes writes 30 s after the link healed");
        std::thread::sleep(Duration::from_millis(100));
    }
    rg.wait_converged(Duration::from_secs(30));
    for w in &acked {
        for base in [&us, &eu] {
            let (code, v) = rg.get_local(if base == &us { 0 } else { 1 }, 0, &w.key).unwrap();
            assert_eq!(code, 200, "{} missing at {base}", w.key);
            if v != w.value.as_bytes() {
                let (_, list) = call_json("GET", &format!("{base}/v1/kv?prefix={}&limit=1", w.key), None, T).unwrap();
                let hlc = list["items"][0]["stamp"]["hlc"].as_u64().unwrap();
                assert!(hlc >> 16 >= w.sent_ms, "{}={} replaced by an older version", w.key, w.value);
            }
        }
    }
    let (_, st) = call_json("GET", &format!("{eu}/admin/region/status"), None, T).unwrap();
    assert!(st["demoted_writes_merged"].as_u64().unwrap() >= late, "eu reported {} of the {late} versions us wrote after the promotion: {st}", st["demoted_writes_merged"]);
    assert!(rg.nodes[1][0].log_shows("no longer primary", T), "eu did not log the late versions");
    let (_, st) = call_json("GET", &format!("{us}/admin/region/status"), None, T).unwrap();
    assert_eq!((st["primary_region"].as_str(), st["takes_writes"].as_bool()), (Some("eu"), Some(false)), "{st}");
}

#[test]
fn semi_sync_writes_survive_the_loss_of_the_whole_primary_region() {
    let _g = serial();
    let mut rg = Regions::start(RegionOpts {
        names: vec!["us", "eu"],
        nodes_per_region: 1,
        primary: Some("us"),
        extra: vec![("MERIDIAN_CLUSTER_CROSS_REGION_MODE".into(), "semi_sync".into())],
    });
    rg.set_links(Some(Duration::from_millis(100)));
    let us = rg.base(0, 0);
    let mut latencies = Vec::new();
    for i in 0..30 {
        let t = Instant::now();
        let (code, b) = call("PUT", &format!("{us}/v1/kv/k{i}"), Some(format!("v{i}").into_bytes()), Duration::from_secs(15)).unwrap();
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&b));
        latencies.push(t.elapsed());
    }
    // Right after the last acknowledgement, the whole primary region is gone.
    rg.nodes[0][0].kill9();
    latencies.sort();
    eprintln!("semi_sync write latency with 100 ms each way: p50 {:?}, max {:?}", percentile(&latencies, 0.5), latencies.last().unwrap());
    assert!(percentile(&latencies, 0.5) >= Duration::from_millis(200), "semi_sync acknowledged before a round trip to the other region");
    let (code, st) = call_json("POST", &format!("{}/admin/region/promote", rg.base(1, 0)), None, T).unwrap();
    assert_eq!(code, 200, "{st}");
    for i in 0..30 {
        assert_eq!(rg.get_local(1, 0, &format!("k{i}")).unwrap(), (200, format!("v{i}").into_bytes()), "k{i} acknowledged in us, missing in eu");
    }
    let (code, _) = call("PUT", &format!("{}/v1/kv/after", rg.base(1, 0)), Some(b"1".to_vec()), Duration::from_secs(20)).unwrap();
    assert_eq!(code, 504, "semi_sync in eu with no other region reachable cannot confirm");
}

/// `meridian bench` against `url` with 64 clients for `secs`: (ops/s, p50 ms, p99 ms).
fn bench_put(url: &str, secs: u64) -> (f64, f64, f64) {
    let out = std::process::Command::new(common::BIN)
        .args(["bench", "--url", url, "--clients", "64", "--duration", &format!("{secs}s")])
        .output()
        .expect("run meridian bench");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().rev().find(|l| l.trim_start().starts_with("64 ")).unwrap_or_else(|| panic!("no result line in:\n{text}"));
    let f: Vec<f64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (f[1], f[2], f[3])
}

/// Issue 13, "what must be shown" 7. Run on an idle machine with a release build:
/// `cargo test --release --test multi_region -- --ignored --nocapture region_benchmark`.
/// Prints primary-region PUT throughput (64 clients) for one Raft group, `async` and
/// `semi_sync` (50 ms added each way between regions), and the cross-region lag of writes
/// sent at 1,000/s with the same delay. Figures, no assertions on them.
///
/// The one group and the two regions run side by side, and the load alternates between
/// them in slices of `REGION_BENCH_SECS` (order A B, B A, A B, ...; `REGION_BENCH_SLICES`
/// pairs): this host's speed drifts by a third within a minute (its steal time moves between
/// a few percent and most of a core), and slices a few seconds apart see the same host. The
/// ratio is of the two setups' total writes; the median of the pairs' ratios is printed too.
#[test]
#[ignore = "a benchmark: run with --release on an idle machine"]
fn region_benchmark() {
    let _g = serial();
    // REGION_BENCH_SECS: seconds per slice (default 8); REGION_BENCH_SLICES: pairs (default 4).
    let secs: u64 = std::env::var("REGION_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let pairs: usize = std::env::var("REGION_BENCH_SLICES").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    assert!(pairs >= 1, "REGION_BENCH_SLICES: at least one pair of slices");
    // REGION_BENCH_QUOTA=1 (root, cgroup v1 `cpu`/`cpuacct` mounted): each region gets a CPU
    // budget of its own, as it would get machines of its own, and so does the load.
    // REGION_BENCH_BUDGETS=primary,remote,load in cores (default 0.5,0.4,0.3): the single group
    // and `us` (each its own budget, loaded in turn), `eu`, this process with the load
    // generator. A budget stands in for a machine only if the host always has it to give: their
    // sum must stay below what the host delivers after steal time, or the region measured gets
    // less than its budget exactly when `eu` is busy, which is only under `async` (with
    // 0.8,0.6,0.6 and ~0.8 core stolen, `us` got 0.56-0.61 core against the single group's
    // 0.68-0.74). Each slice prints the share of scheduler periods in which the measured budget
    // ran out: near 100% means the region had its whole budget and used it.
    let budgets = std::env::var("REGION_BENCH_QUOTA").is_ok_and(|v| v == "1").then(|| {
        let spec = std::env::var("REGION_BENCH_BUDGETS").unwrap_or_else(|_| "0.5,0.4,0.3".into());
        let cores: Vec<f64> = spec.split(',').map(|c| c.trim().parse().expect("REGION_BENCH_BUDGETS: three numbers of cores, e.g. 0.5,0.4,0.3")).collect();
        assert_eq!(cores.len(), 3, "REGION_BENCH_BUDGETS: primary,remote,load");
        eprintln!("budgets: the single group {0} core, us {0}, eu {1}, load generator {2}", cores[0], cores[1], cores[2]);
        (CpuBudget::new("anchor", cores[0]), CpuBudget::new("primary", cores[0]), CpuBudget::new("remote", cores[1]), CpuBudget::new("load", cores[2]))
    });
    // Which budget: 0 the single group, 1 `us`, 2 `eu`.
    let budget = |pid: i32, which: usize| {
        if let Some((anchor, primary, remote, _)) = &budgets {
            [anchor, primary, remote][which].add(pid);
        }
    };
    // REGION_BENCH_PIN=1: each region gets a core of its own, as it would get machines of its
    // own: the single group and `us` on CPU 0, `eu` on CPU 1 (the load generator unpinned).
    let pin_to = std::env::var("REGION_BENCH_PIN").is_ok_and(|v| v == "1");
    let pin = |pid: i32, cpu: usize| {
        if pin_to {
            let ok = std::process::Command::new("taskset").args(["-a", "-pc", &cpu.to_string(), &pid.to_string()]).stdout(std::process::Stdio::null()).status();
            assert!(ok.is_ok_and(|s| s.success()), "taskset failed for pid {pid}");
        }
    };
    if pin_to {
        eprintln!("pinned: the single group and us on CPU 0, eu on CPU 1");
    }
    let regions = |mode: &str| {
        let rg = Regions::start(RegionOpts {
            names: vec!["us", "eu"],
            nodes_per_region: 3,
            primary: Some("us"),
            extra: vec![("MERIDIAN_CLUSTER_CROSS_REGION_MODE".into(), mode.into())],
        });
        rg.set_links(Some(Duration::from_millis(50)));
        for (r, region) in rg.nodes.iter().enumerate() {
            for n in region {
                pin(n.pid(), r);
            }
        }
        let leader = rg.wait_leader(0, T);
        (rg, leader)
    };
    let budget_regions = |rg: &Regions| {
        for (r, region) in rg.nodes.iter().enumerate() {
            for n in region {
                budget(n.pid(), r + 1);
            }
        }
    };
    // One slice of load on `url`, measured against budget `which` (0 or 1).
    let slice = |url: &str, which: usize| {
        let b = budgets.as_ref().map(|(a, p, _, _)| [a, p][which]);
        let before = b.map(|b| (b.usage(), b.throttled()));
        let load_before = budgets.as_ref().map(|(.., l)| l.throttled());
        let steal0 = steal_seconds();
        let r = bench_put(url, secs);
        let stolen = (steal_seconds() - steal0) / secs as f64;
        let cpu = b.zip(before).map(|(b, (u0, (n0, t0)))| {
            let (n1, t1) = b.throttled();
            ((b.usage() - u0).as_secs_f64() * 1e6 / (r.0 * secs as f64), (t1 - t0) as f64 / (n1 - n0).max(1) as f64)
        });
        // The load budget (the load generator, and the proxies between the regions) must
        // not be what limits: printed so a run where it ran out can be told apart.
        let load = budgets.as_ref().zip(load_before).map(|((.., l), (n0, t0))| {
            let (n1, t1) = l.throttled();
            (t1 - t0) as f64 / (n1 - n0).max(1) as f64
        });
        Slice { ops: r.0, p50: r.1, p99: r.2, cpu, stolen, load }
    };

    let single = common::raft::RaftCluster::start(3, common::raft::RaftOpts::default());
    for n in &single.nodes {
        pin(n.pid(), 0);
        budget(n.pid(), 0);
    }
    let (single_leader, _) = single.wait_stable_leader(Duration::from_secs(20));
    let (rg, leader) = regions("async");
    // The lag is measured before the budgets: at 1,000 writes/s a 0.5-core budget is about
    // 70% used, and a budget that runs out holds every message of its region until the next
    // 100 ms period — the figure would then be of that queue, not of shipping (with budgets it
    // was 258-305 ms p99, without 92-170 ms). Nor may this process (the proxies between the
    // regions, the lag writers and poller) be budgeted while the regions are not: it starves.
    let lag = {
        let mut lag = measure_lag(&rg, leader, 1000, 10);
        lag.sort();
        lag
    };
    budget_regions(&rg);
    if let Some((.., load)) = &budgets {
        load.add(std::process::id() as i32);
    }
    // A warm-up, not measured, for each: a node's first MiB of WAL has it zero-fill its next
    // 64 MiB segment ahead of time (`wal/src/spare.rs`), which should not land in one setup's
    // first slice and not in the other's (`us` has had the lag writes).
    bench_put(&single.base(single_leader), 3);
    bench_put(&rg.base(0, leader), 3);
    let (mut one, mut asy) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        for which in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            let s = if which == 0 { slice(&single.base(single_leader), 0) } else { slice(&rg.base(0, leader), 1) };
            eprintln!("slice {:2} {:9} {}", i + 1, ["one group", "async"][which], s.line());
            [&mut one, &mut asy][which].push(s);
        }
    }
    // How long eu takes to hold everything the load wrote: the shipping rate.
    let behind = |st: &serde_json::Value| st["remotes"][0]["lag_entries"].as_u64().unwrap_or(u64::MAX);
    let (_, st) = call_json("GET", &format!("{}/admin/region/status", rg.base(0, leader)), None, T).unwrap();
    let (start, t) = (behind(&st), Instant::now());
    loop {
        let (_, st) = call_json("GET", &format!("{}/admin/region/status", rg.base(0, leader)), None, T).unwrap();
        if behind(&st) == 0 || t.elapsed() > Duration::from_secs(120) {
            eprintln!("after the last async slice eu was {start} entries behind; caught up in {:.1} s", t.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(rg);
    drop(single);
    let (rg, leader) = regions("semi_sync");
    budget_regions(&rg);
    let semi = slice(&rg.base(0, leader), 1);
    drop(rg);

    let total = |v: &[Slice]| v.iter().map(|s| s.ops).sum::<f64>();
    let anchor = total(&one) / one.len() as f64;
    let mut ratios: Vec<f64> = one.iter().zip(&asy).map(|(o, a)| a.ops / o.ops).collect();
    ratios.sort_by(f64::total_cmp);
    let mid = |v: &[Slice], f: fn(&Slice) -> f64| median(v.iter().map(f).collect());
    eprintln!(
        "\n| setup | PUT/s (64 clients) | p50 ms | p99 ms | vs one group | primary region CPU µs/write | budget ran out |\n|---|---|---|---|---|---|---|"
    );
    let cpu = |v: &[Slice]| match v.iter().map(|s| s.cpu).collect::<Option<Vec<_>>>() {
        Some(c) if !c.is_empty() => {
            let (w, t): (Vec<f64>, Vec<f64>) = c.into_iter().unzip();
            (format!("{:.0}", median(w)), format!("{:.0}%", median(t) * 100.0))
        }
        _ => ("-".into(), "-".into()),
    };
    for (name, v) in [("one Raft group (3 nodes)", &one[..]), ("2 regions x 3, async", &asy[..]), ("2 regions x 3, semi_sync", std::slice::from_ref(&semi))] {
        let (w, t) = cpu(v);
        eprintln!("| {name} | {:.0} | {:.2} | {:.2} | {:.2}x | {w} | {t} |", total(v) / v.len() as f64, mid(v, |s| s.p50), mid(v, |s| s.p99), total(v) / v.len() as f64 / anchor);
    }
    eprintln!(
        "\nasync against one group: {:.2}x of the totals; pairs {} (median {:.2}x); medians of slices, not of rows, for p50/p99/CPU; steal {:.0}% of a core on average",
        total(&asy) / total(&one),
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" "),
        median(ratios.clone()),
        one.iter().chain(&asy).map(|s| s.stolen).sum::<f64>() * 100.0 / (one.len() + asy.len()) as f64
    );
    eprintln!(
        "cross-region lag, {} writes at 1000/s, 50 ms added each way (RTT 100 ms): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lag.len(),
        percentile(&lag, 0.5).as_secs_f64() * 1e3,
        percentile(&lag, 0.99).as_secs_f64() * 1e3,
        lag.last().unwrap().as_secs_f64() * 1e3
    );
}

/// One slice of `region_benchmark`: PUT/s, p50 and p99 ms, the measured budget's (CPU µs per
/// write, share of periods it ran out in), and the host's steal time (cores) meanwhile.
struct Slice {
    ops: f64,
    p50: f64,
    p99: f64,
    cpu: Option<(f64, f64)>,
    stolen: f64,
    /// Share of periods the load budget ran out in.
    load: Option<f64>,
}

impl Slice {
    fn line(&self) -> String {
        let cpu = self.cpu.map_or(String::new(), |(w, t)| format!("  CPU {w:.0} µs/write  budget ran out in {:.0}% of periods", t * 100.0));
        let load = self.load.map_or(String::new(), |t| format!("  load budget ran out in {:.0}%", t * 100.0));
        format!("PUT/s {:7.0}  p50 {:6.2} ms  p99 {:6.2} ms{cpu}{load}  steal {:.0}% of a core", self.ops, self.p50, self.p99, self.stolen * 100.0)
    }
}

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU time the host took from this machine so far (all CPUs), from `/proc/stat`.
fn steal_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat.lines().next().and_then(|l| l.split_whitespace().nth(8)).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ, 100 on Linux
}

/// A CPU budget (cgroup v1 `cpu` quota, with `cpuacct` for the time used) for the region
/// benchmark's REGION_BENCH_QUOTA=1: stands in for a machine of its own on a shared host.
struct CpuBudget {
    dirs: [std::path::PathBuf; 2],
}

impl CpuBudget {
    fn new(name: &str, cores: f64) -> Self {
        let dirs = ["cpu", "cpuacct"].map(|h| std::path::PathBuf::from(format!("/sys/fs/cgroup/{h}/meridian-bench-{name}")));
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("REGION_BENCH_QUOTA needs root and cgroup v1 cpu/cpuacct: {}: {e}", d.display()));
        }
        std::fs::write(dirs[0].join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(dirs[0].join("cpu.cfs_quota_us"), format!("{}", (cores * 100_000.0) as u64)).unwrap();
        CpuBudget { dirs }
    }

    /// Moves a process (all its threads; its later threads and children follow) in.
    fn add(&self, pid: i32) {
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), pid.to_string()).unwrap_or_else(|e| panic!("cannot move {pid} into {}: {e}", d.display()));
        }
    }

    fn usage(&self) -> Duration {
        Duration::from_nanos(std::fs::read_to_string(self.dirs[1].join("cpuacct.usage")).unwrap().trim().parse().unwrap())
    }

    /// (periods, periods in which the budget ran out).
    fn throttled(&self) -> (u64, u64) {
        let stat = std::fs::read_to_string(self.dirs[0].join("cpu.stat")).unwrap();
        let field = |k: &str| stat.lines().find_map(|l| l.strip_prefix(k)?.trim().parse().ok()).unwrap_or(0);
        (field("nr_periods "), field("nr_throttled "))
    }
}

impl Drop for CpuBudget {
    /// Processes still inside (this test process, for the load budget) go back to the root.
    fn drop(&mut self) {
        for d in &self.dirs {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = std::fs::write(d.parent().unwrap().join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Writes `rate` keys a second for `secs` to the primary region's leader (open loop: each
/// PUT its own task) while one poller reads, from an eu follower, how far eu has merged us
/// (`received.us` in `/admin/region/status`: us's log position, which moves in the same eu
/// entry as the versions it covers). A write's lag is from its acknowledgement to the first
/// poll that finds eu past its revision. (Polling every key instead, with a few readers,
/// measured the readers: on a busy host they fell behind and their backlog became the tail.)
/// A write that was not acknowledged (an error or a timeout: this host can stall for
/// seconds) is counted and left out; one acknowledged that never arrives fails the benchmark.
fn measure_lag(rg: &Regions, leader: usize, rate: u64, secs: u64) -> Vec<Duration> {
    let us = rg.base(0, leader);
    let eu = rg.base(1, 2);
    let n = (rate * secs) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
        // The highest acknowledged revision, once every write has been answered.
        let target = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        // (poll time, eu's mark for us), in time order.
        let poller = {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let mut marks: Vec<(Instant, u64)> = Vec::new();
                let mut stop_at = None;
                loop {
                    let mark = match client.get(format!("{eu}/admin/region/status")).send().await {
                        Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|v| v["received"]["us"].as_u64()),
                        Err(_) => None,
                    };
                    if let Some(m) = mark {
                        marks.push((Instant::now(), m));
                    }
                    let target = target.load(Ordering::SeqCst);
                    if marks.last().is_some_and(|(_, m)| *m >= target) {
                        return marks; // every acknowledged write is in eu
                    }
                    // Once every write was answered: 60 s more at most.
                    if target < u64::MAX && *stop_at.get_or_insert(Instant::now() + Duration::from_secs(60)) < Instant::now() {
                        return marks;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let t0 = Instant::now();
        let mut writers = Vec::new();
        for i in 0..n {
            let due = t0 + Duration::from_micros(i as u64 * 1_000_000 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (client, us) = (client.clone(), us.clone());
            writers.push(tokio::spawn(async move {
                let r = client.put(format!("{us}/v1/kv/lag{i:06}")).body("x").timeout(Duration::from_secs(20)).send().await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let at = Instant::now();
                        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
                        Ok((at, body["revision"].as_u64().ok_or("no revision in the answer")?))
                    }
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }));
        }
        let mut acked = Vec::new();
        let mut failed = Vec::new();
        for w in writers {
            match w.await.unwrap() {
                Ok(a) => acked.push(a),
                Err(e) => failed.push(e),
            }
        }
        target.store(acked.iter().map(|(_, r)| *r).max().unwrap_or(0), Ordering::SeqCst);
        let marks = poller.await.unwrap();
        if !failed.is_empty() {
            eprintln!("{} of {n} lag writes were not acknowledged (left out), e.g. {}", failed.len(), failed[0]);
        }
        eprintln!("{} polls of eu's mark while measuring lag", marks.len());
        acked
            .iter()
            .map(|(at, revision)| {
                let seen = marks.iter().find(|(_, m)| m >= revision).unwrap_or_else(|| panic!("the write at us revision {revision} was acknowledged and never reached eu")).0;
                seen.saturating_duration_since(*at)
            })
            .collect()
    })
}

