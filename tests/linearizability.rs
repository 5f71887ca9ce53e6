//! Linearizability of `ha_standby` in `sync` mode under faults, checked on recorded client
//! histories (`common::linearizability`), plus the checker's own tests.
//!
//! Clients write unique values and read with `consistency=linearizable` on both nodes
//! (writes on the standby are forwarded) while (1, `sync`) the primary is paused with SIGSTOP
//! past the failover timeout and woken, then the new primary is killed with kill -9 and
//! restarted, then a switchover hands the role back; (2, `semi_sync` with a witness) the primary is partitioned from both while it
//! keeps serving clients, then healed.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ha::{wait_converged, wait_role, HaOpts, HaPair};
use common::linearizability::{check, Event, Op};

/// The cluster tests measure timeouts; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn ev(key: &str, op: Op, call: u64, ret: Option<u64>) -> Event {
    Event { key: key.into(), op, call: Duration::from_millis(call), ret: ret.map(Duration::from_millis) }
}
fn w(v: &str) -> Op {
    Op::Write(v.into())
}
fn r(v: Option<&str>) -> Op {
    Op::Read(v.map(str::to_owned))
}

#[test]
fn the_checker_accepts_sequential_and_overlapping_histories() {
    let h = vec![ev("k", r(None), 0, Some(1)), ev("k", w("a"), 2, Some(3)), ev("k", r(Some("a")), 4, Some(5))];
    assert_eq!(check(&h), Ok(1));
    // A read overlapping a write may see either value.
    let h = vec![ev("k", w("a"), 0, Some(1)), ev("k", w("b"), 2, Some(10)), ev("k", r(Some("b")), 3, Some(4)), ev("k", r(Some("a")), 3, Some(5))];
    assert!(check(&h).is_ok(), "{:?}", check(&h));
    // Keys are independent.
    let h = vec![ev("x", w("1"), 0, Some(1)), ev("y", r(None), 2, Some(3)), ev("x", r(Some("1")), 2, Some(3))];
    assert_eq!(check(&h), Ok(2));
}

#[test]
fn the_checker_rejects_stale_reads_and_reads_that_go_back() {
    // A read after a completed write returns the older value.
    let h = vec![ev("k", w("a"), 0, Some(1)), ev("k", w("b"), 2, Some(3)), ev("k", r(Some("a")), 4, Some(5))];
    assert!(check(&h).unwrap_err().contains("not linearizable"));
    // Real-time order: the write completed before the read started.
    let h = vec![ev("k", w("a"), 0, Some(1)), ev("k", r(None), 2, Some(3))];
    assert!(check(&h).is_err());
    // Two sequential reads that see the new value and then the old one.
    let h = vec![ev("k", w("a"), 0, Some(1)), ev("k", w("b"), 2, Some(20)), ev("k", r(Some("b")), 3, Some(4)), ev("k", r(Some("a")), 5, Some(6))];
    assert!(check(&h).is_err());
    // A value nobody wrote.
    let h = vec![ev("k", r(Some("ghost")), 0, Some(1))];
    assert!(check(&h).is_err());
}

#[test]
fn the_checker_treats_unanswered_writes_as_maybe_applied() {
    // Unanswered and never observed: may never have happened.
    let h = vec![ev("k", w("a"), 0, None), ev("k", r(None), 5, Some(6))];
    assert!(check(&h).is_ok());
    // Unanswered but observed: it happened, at some point after its invocation...
    let h = vec![ev("k", w("a"), 0, None), ev("k", r(Some("a")), 5, Some(6))];
    assert!(check(&h).is_ok());
    // ...so a later read cannot go back to before it.
    let h = vec![ev("k", w("a"), 0, None), ev("k", r(Some("a")), 5, Some(6)), ev("k", r(None), 7, Some(8))];
    assert!(check(&h).is_err());
    // And it cannot have taken effect before it was sent.
    let h = vec![ev("k", r(Some("a")), 0, Some(1)), ev("k", w("a"), 2, None)];
    assert!(check(&h).is_err());
}

/// Clients doing random reads and writes on a few keys, alternating between the nodes,
/// recording every operation until stopped.
struct Clients {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Event>>,
}

fn start_clients(bases: Vec<String>, clients: usize, keys: usize, t0: Instant) -> Clients {
    use std::sync::atomic::Ordering;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let (http, st, bases) = (http.clone(), st.clone(), bases.clone());
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    for i in 0u64..50_000 {
                        if st.load(Ordering::SeqCst) {
                            break;
                        }
                        // Independent choices of key, node and operation from one hash.
                        let h = splitmix64((c as u64) << 32 | i);
                        let key = format!("lin/{}", (h >> 8) % keys as u64);
                        let base = &bases[((h >> 24) % bases.len() as u64) as usize];
                        let call = t0.elapsed();
                        if h & 1 == 0 {
                            let value = format!("c{c}-{i}");
                            let r = http.put(format!("{base}/v1/kv/{key}")).body(value.clone()).send().await;
                            let ok = r.map(|r| r.status().as_u16() == 200).unwrap_or(false);
                            out.push(Event { key, op: Op::Write(value), call, ret: ok.then(|| t0.elapsed()) });
                            if !ok {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        } else {
                            let r = http.get(format!("{base}/v1/kv/{key}?consistency=linearizable")).send().await;
                            let seen = match r {
                                Ok(r) if r.status().as_u16() == 200 => Some(Some(r.text().await.unwrap_or_default())),
                                Ok(r) if r.status().as_u16() == 404 => Some(None),
                                _ => None,
                            };
                            match seen {
                                Some(v) => out.push(Event { key, op: Op::Read(v), call, ret: Some(t0.elapsed()) }),
                                None => tokio::time::sleep(Duration::from_millis(20)).await,
                            }
                        }
                    }
                    out
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        })
    });
    Clients { stop, handle }
}

/// SplitMix64's finalizer: a well-mixed 64-bit hash of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Clients {
    fn finish(self) -> Vec<Event> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

#[test]
fn sync_ha_histories_stay_linearizable_through_sigstop_kill_9_and_switchover() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = HaPair::start(HaOpts { sync_mode: "sync", ..HaOpts::default() });
    let t0 = Instant::now();
    let clients = start_clients(vec![pair.a.url(""), pair.b.url("")], 6, 4, t0);
    std::thread::sleep(Duration::from_millis(1500));

    // The primary freezes past the failover timeout; the standby takes over; the old
    // primary wakes believing it is still primary.
    common::unsafe_kill(pair.a.pid(), 19); // SIGSTOP
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(300));
    common::unsafe_kill(pair.a.pid(), 18); // SIGCONT
    wait_role(&pair.a, "standby", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));

    // The new primary dies; the old one takes over again; the dead one comes back.
    pair.b.kill9();
    wait_role(&pair.a, "primary", Duration::from_secs(15));
    pair.b.set_env("MERIDIAN_CLUSTER_HA_ROLE", "standby");
    pair.b.restart();
    wait_role(&pair.b, "standby", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));

    // A planned switchover back to B under the same traffic.
    let (s, body) = common::http("POST", &pair.a.url("/admin/switchover"), None);
    assert_eq!(s, 200, "switchover failed: {}", String::from_utf8_lossy(&body));
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1000));

    let history = clients.finish();
    wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    check_history(&history);
}

#[test]
fn semi_sync_ha_with_a_witness_stays_linearizable_when_the_primary_is_partitioned() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = HaPair::start(HaOpts { sync_mode: "semi_sync", witness: true, ..HaOpts::default() });
    let t0 = Instant::now();
    let clients = start_clients(vec![pair.a.url(""), pair.b.url("")], 6, 4, t0);
    std::thread::sleep(Duration::from_millis(1500));

    // The primary is cut from the standby and the witness but keeps serving its clients:
    // the standby wins the witness's vote and acknowledges writes (alone, after the
    // semi_sync fallback) while the old primary still holds the old state.
    pair.a_to_b.cut();
    pair.b_to_a.cut();
    pair.a_to_w.as_ref().unwrap().cut();
    wait_role(&pair.b, "primary", Duration::from_secs(15));
    // Long enough for the new primary to acknowledge alone (semi_sync falls back after 1 s)
    // while clients still read from the old one.
    std::thread::sleep(Duration::from_millis(4000));
    pair.a_to_b.heal();
    pair.b_to_a.heal();
    pair.a_to_w.as_ref().unwrap().heal();
    wait_role(&pair.a, "standby", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));

    let history = clients.finish();
    wait_converged(&pair.a, &pair.b, Duration::from_secs(30));
    check_history(&history);
}

fn check_history(history: &[Event]) {
    let writes = history.iter().filter(|e| matches!(e.op, Op::Write(_))).count();
    let acked = history.iter().filter(|e| matches!(e.op, Op::Write(_)) && e.ret.is_some()).count();
    let reads = history.iter().filter(|e| matches!(e.op, Op::Read(_))).count();
    eprintln!("history: {writes} writes ({acked} acknowledged), {reads} answered reads");
    assert!(reads > 100 && acked > 100, "too little traffic to mean anything: {reads} reads, {acked} acknowledged writes");
    let t = Instant::now();
    let keys = check(history).unwrap_or_else(|e| panic!("the history is not linearizable: {e}"));
    eprintln!("linearizable: {keys} keys checked in {:.2}s", t.elapsed().as_secs_f64());
}
