//! The disk fills up under load. Simulated per process with a file size limit (`ulimit -f`):
//! past it, the WAL's or redb's writes fail with EFBIG exactly where they would fail with
//! ENOSPC on a full disk. The node must refuse further writes with a clear `unavailable`
//! error, keep running and serving reads, and after a restart with room again hold every
//! write it acknowledged and take new ones.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;

use common::{http, Node};

fn limited_node(dir: &std::path::Path, env: &[(&str, &str)]) -> Node {
    let mut node = Node {
        child: None,
        port: common::free_port(),
        data_dir: Some(dir.join("data")),
        cwd: None,
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        log: dir.join("node.log"),
        file_size_limit_blocks: Some(LIMIT_BLOCKS),
    };
    node.spawn();
    node.wait_ready();
    node
}

/// `meridian_storage_failed` from the node's metrics (the disk-error alert's input).
fn storage_failed(node: &Node) -> Option<f64> {
    let metrics = String::from_utf8(http("GET", &node.url("/metrics"), None).1).unwrap();
    metrics.lines().find_map(|l| l.strip_prefix("meridian_storage_failed ")).and_then(|v| v.trim().parse().ok())
}

const WRITERS: usize = 8;
/// Per writer; 8 × 1500 × 4 KiB = 48 MiB, far past the limit, so the loop is bounded.
const MAX_WRITES: usize = 1500;
/// 4 MiB per file, in 512-byte blocks.
const LIMIT_BLOCKS: u64 = 8192;

#[test]
fn a_full_disk_stops_writes_cleanly_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = limited_node(dir.path(), &[]);

    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let refusals: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (acked, refusals, base) = (acked.clone(), refusals.clone(), node.url("/v1/kv"));
            thread::spawn(move || {
                for n in 0..MAX_WRITES {
                    let key = format!("w{w}/{n:05}");
                    let value = format!("{key}:").into_bytes().into_iter().cycle().take(4096).collect::<Vec<u8>>();
                    let (status, body) = http("PUT", &format!("{base}/{key}"), Some(value.clone()));
                    if status == 200 {
                        acked.lock().unwrap().insert(key, value);
                    } else {
                        refusals.lock().unwrap().push((status, String::from_utf8_lossy(&body).into_owned()));
                        return;
                    }
                }
            })
        })
        .collect();
    for t in writers {
        t.join().expect("a writer panicked: the node stopped answering");
    }
    let acked = Arc::try_unwrap(acked).unwrap().into_inner().unwrap();
    let refusals = refusals.lock().unwrap().clone();

    assert_eq!(refusals.len(), WRITERS, "every writer must hit the full disk (limit {LIMIT_BLOCKS} blocks); acked {}", acked.len());
    assert!(!acked.is_empty(), "nothing was acknowledged before the disk filled");
    for (status, body) in &refusals {
        assert_eq!(*status, 503, "a write on a full disk must answer 503, got {status}: {body}");
        let v: serde_json::Value = serde_json::from_str(body).expect("the refusal is a JSON error");
        assert_eq!(v["error"]["code"], "unavailable", "{body}");
    }
    assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the node exited on a full disk:\n{}", node.log_text());

    // Still running: health says why it takes no writes, and reads go on.
    let (status, body) = http("GET", &node.url("/health"), None);
    let health = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "health must report the failure: {health}");
    assert!(health.contains("failed"), "{health}");
    // And /metrics carries it for the disk-error alert (deploy/prometheus/alerts.yml).
    assert_eq!(storage_failed(&node), Some(1.0), "no storage failure in the metrics");
    let (status, _) = http("PUT", &node.url("/v1/kv/after-full"), Some(b"x".to_vec()));
    assert_eq!(status, 503, "a write after the failure must be refused too");
    for (key, value) in acked.iter().take(50) {
        let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
        assert_eq!((status, &body), (200, value), "read of {key} on the full node");
    }
    let log = node.log_text();
    assert!(log.contains("File too large"), "the log must name the I/O error:\n{log}");
    assert_eq!(log.matches("stops taking writes").count(), 1, "say it once, not per refused batch:\n{log}");

    // Room again: every acknowledged write is there, and writes are taken.
    node.kill9();
    node.file_size_limit_blocks = None;
    node.restart();
    for (key, value) in &acked {
        let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
        assert_eq!(status, 200, "acknowledged {key} lost after the disk filled");
        assert_eq!(&body, value, "acknowledged {key} has another value");
    }
    let (status, body) = http("PUT", &node.url("/v1/kv/after-restart"), Some(b"y".to_vec()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(storage_failed(&node), Some(0.0), "a storage failure is still reported after the restart");
    println!("acknowledged {} writes before the disk filled; all present after the restart", acked.len());
}

/// The same with the WAL as the file that fills: writers overwrite a few keys, so redb's file
/// stays small while the WAL segment grows past the limit. After
/// the failure and a restart each key holds its last acknowledged value or a later one that
/// was sent (a refused write may still have reached the disk: a refusal is not a promise
/// that nothing was written), never an older one.
#[test]
fn a_full_disk_under_the_wal_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // No checkpoint during the test, so the WAL is never purged and its segment grows past
    // the limit; redb reuses the pages the overwrites free and stays small.
    let mut node = limited_node(dir.path(), &[("MERIDIAN_CHECKPOINT_INTERVAL", "30s")]);
    const KEYS: usize = 4;
    // Per key: every value sent, in order, and how many of them were acknowledged.
    type Sent = HashMap<String, (Vec<Vec<u8>>, usize)>;
    let sent: Arc<Mutex<Sent>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (sent, base) = (sent.clone(), node.url("/v1/kv"));
            // The refusal that stopped this writer: (status, body), or None if none came.
            thread::spawn(move || -> Option<(u16, String)> {
                for n in 0..MAX_WRITES {
                    let key = format!("w{w}/k{}", n % KEYS);
                    let value = format!("{key}:{n}:").into_bytes().into_iter().cycle().take(4096).collect::<Vec<u8>>();
                    sent.lock().unwrap().entry(key.clone()).or_default().0.push(value.clone());
                    let (status, body) = http("PUT", &format!("{base}/{key}"), Some(value));
                    if status != 200 {
                        return Some((status, String::from_utf8_lossy(&body).into_owned()));
                    }
                    let mut s = sent.lock().unwrap();
                    let e = s.get_mut(&key).unwrap();
                    e.1 = e.0.len();
                }
                None
            })
        })
        .collect();
    let outcomes: Vec<Option<(u16, String)>> = writers.into_iter().map(|t| t.join().expect("a writer panicked")).collect();
    for o in &outcomes {
        let ok = matches!(o, Some((503, body)) if body.contains("\"unavailable\""));
        assert!(ok, "each writer must end on a 503 unavailable (the full disk), not {o:?} or no error");
    }
    let log = node.log_text();
    assert!(log.contains("WAL append failed") && log.contains("File too large"), "the WAL should be what filled:\n{log}");
    assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the node exited on a full disk:\n{log}");

    node.kill9();
    node.file_size_limit_blocks = None;
    node.restart();
    let sent = sent.lock().unwrap();
    let mut acked_total = 0;
    for (key, (values, acked)) in sent.iter() {
        acked_total += acked;
        let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
        if *acked == 0 {
            continue;
        }
        assert_eq!(status, 200, "{key} had {acked} acknowledged writes and is gone");
        let pos = values.iter().position(|v| *v == body).unwrap_or_else(|| panic!("{key} holds a value never sent"));
        assert!(pos + 1 >= *acked, "{key} went back to write #{} though #{} was acknowledged", pos + 1, acked);
    }
    let (status, _) = http("PUT", &node.url("/v1/kv/after-restart"), Some(b"y".to_vec()));
    assert_eq!(status, 200);
    println!("WAL filled after {acked_total} acknowledged overwrites; every key at or past its last acknowledged value");
}

/// `WRITERS` writers put 4 KiB values under `prefix` at `base` (`…/v1/kv`) until each is
/// refused (at most 4 × `MAX_WRITES` each); acknowledged writes go to `acked`. Returns the
/// refusals.
fn write_until_refused(base: &str, prefix: &str, acked: &Arc<Mutex<HashMap<String, Vec<u8>>>>) -> Vec<(u16, String)> {
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (acked, base, prefix) = (acked.clone(), base.to_owned(), prefix.to_owned());
            thread::spawn(move || -> Option<(u16, String)> {
                for n in 0..4 * MAX_WRITES {
                    let key = format!("{prefix}{w}/{n:05}");
                    let value = format!("{key}:").into_bytes().into_iter().cycle().take(4096).collect::<Vec<u8>>();
                    let (status, body) = http("PUT", &format!("{base}/{key}"), Some(value.clone()));
                    if status != 200 {
                        return Some((status, String::from_utf8_lossy(&body).into_owned()));
                    }
                    acked.lock().unwrap().insert(key, value);
                }
                None
            })
        })
        .collect();
    writers.into_iter().filter_map(|t| t.join().expect("a writer panicked")).collect()
}

/// A tmpfs of `bytes` mounted on a fresh directory (needs root, as in CI and on the dev
/// machine); unmounted on drop. `None` where mounting is not permitted.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
    /// [`Tmpfs::mount`], or `None` after saying why the test skips.
    fn mount_or_skip(bytes: u64) -> Option<Tmpfs> {
        let fs = Tmpfs::mount(bytes);
        if fs.is_none() {
            eprintln!("skipped: mounting a tmpfs needs root (CI and the dev machine run as root)");
        }
        fs
    }
    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
    /// Moves a stopped node's data directory onto this tmpfs.
    fn take_data_of(&self, node: &mut Node) {
        let old = node.data_dir.clone().unwrap();
        let ok = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", old.display())).arg(self.path()).status().unwrap().success();
        assert!(ok, "copying {} onto the tmpfs", old.display());
        node.data_dir = Some(self.path().to_path_buf());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A real full disk (a small tmpfs, partly taken by a ballast file), then room again once
/// the ballast is deleted: writes are refused with 503 while it is full and taken again
/// without a restart once there is room; nothing acknowledged is lost, before or after a
/// later kill -9.
#[test]
fn a_full_disk_with_room_again_takes_writes_without_a_restart() {
    let Some(fs) = Tmpfs::mount_or_skip(48 << 20) else { return };
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![7u8; 16 << 20]).unwrap();
    let mut node = Node {
        child: None,
        port: common::free_port(),
        data_dir: Some(fs.path().join("data")),
        cwd: None,
        env: vec![("MERIDIAN_WAL_SEGMENT_BYTES".into(), (4u64 << 20).to_string())],
        // The log outside the tmpfs: it must not be what fills it.
        log: tempfile::tempdir().unwrap().keep().join("node.log"),
        file_size_limit_blocks: None,
    };
    node.spawn();
    node.wait_ready();

    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let refusals = write_until_refused(&node.url("/v1/kv"), "a", &acked);
    assert_eq!(refusals.len(), WRITERS, "every writer must meet the full disk");
    for (status, body) in &refusals {
        assert_eq!(*status, 503, "{body}");
    }
    let before = acked.lock().unwrap().len();
    assert!(before > 0);
    let (status, body) = http("GET", &node.url("/health"), None);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (status, _) = http("PUT", &node.url("/v1/kv/still-full"), Some(b"x".to_vec()));
    assert_eq!(status, 503, "still full: the node must not take writes yet");

    // Room again.
    std::fs::remove_file(&ballast).unwrap();
    let t = std::time::Instant::now();
    loop {
        let (status, body) = http("PUT", &node.url("/v1/kv/room-again"), Some(b"y".to_vec()));
        if status == 200 {
            break;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "no write taken 30 s after space came back: {status} {}\n{}", String::from_utf8_lossy(&body), node.log_text());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let resumed_after = t.elapsed();
    let (status, body) = http("GET", &node.url("/health"), None);
    assert_eq!(status, 200, "health after resuming: {}", String::from_utf8_lossy(&body));
    assert_eq!(storage_failed(&node), Some(0.0), "the storage failure is still reported after resuming");
    assert!(node.log_text().contains("taking writes again"), "the log must say the node resumed:\n{}", node.log_text());
    for (key, value) in acked.lock().unwrap().iter() {
        let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
        assert_eq!((status, &body), (200, value), "acknowledged {key} after resuming");
    }
    // It fills again, and resumes again? Once is the claim; write a little more, then kill -9.
    let more: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    for n in 0..200 {
        let key = format!("b/{n}");
        let (status, body) = http("PUT", &node.url(&format!("/v1/kv/{key}")), Some(key.clone().into_bytes()));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        more.lock().unwrap().insert(key.clone(), key.into_bytes());
    }
    node.kill9();
    node.restart();
    for (key, value) in acked.lock().unwrap().iter().chain(more.lock().unwrap().iter()) {
        let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
        assert_eq!((status, &body), (200, value), "acknowledged {key} after kill -9");
    }
    println!("{before} writes acknowledged before the disk filled; writes taken again {resumed_after:?} after room came back; all present after kill -9");
    node.kill9();
}

/// Every acknowledged write in `acked` reads back from `node` with its value.
/// `writers` threads PUT up to `per_writer` 4 KiB values each (keys `w{writer}/{n}`) to
/// `base` until `stop` says so; what is acknowledged goes into `acked`.
fn write_4k_until(base: &str, writers: usize, per_writer: usize, acked: &Arc<Mutex<HashMap<String, Vec<u8>>>>, stop: impl Fn() -> bool + Clone + Send + 'static) {
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (acked, base, stop) = (acked.clone(), base.to_owned(), stop.clone());
            thread::spawn(move || {
                for n in 0..per_writer {
                    if stop() {
                        return;
                    }
                    let key = format!("w{w}/{n:05}");
                    let value = format!("{key}:").into_bytes().into_iter().cycle().take(4096).collect::<Vec<u8>>();
                    if http("PUT", &format!("{base}/{key}"), Some(value.clone())).0 == 200 {
                        acked.lock().unwrap().insert(key, value);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn assert_all_present(node: &Node, acked: &HashMap<String, Vec<u8>>, when: &str) {
    for (key, value) in acked {
        let (status, body) = http("GET", &node.url(&format!("/v1/kv/{key}")), None);
        assert_eq!((status, &body), (200, value), "acknowledged {key} {when}");
    }
}

/// The HA primary's disk fills (its data directory is a small tmpfs): it must leave the pair
/// so that the standby takes over, rather than go on heartbeating with a write path that
/// refuses everything; once its disk has room again it must come back without a restart,
/// as the standby of the new primary, and catch up. No acknowledged write is lost, on
/// either side.
#[test]
fn a_full_disk_on_the_ha_primary_hands_over_and_the_node_rejoins_once_there_is_room() {
    let Some(fs) = Tmpfs::mount_or_skip(48 << 20) else { return };
    // The data directory is the tmpfs itself, so the node's log (beside it) is not on it.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![7u8; 16 << 20]).unwrap();
    let pair = common::ha::HaPair::start(common::ha::HaOpts {
        a_data: Some(fs.path().to_path_buf()),
        extra: vec![("MERIDIAN_WAL_SEGMENT_BYTES", (4u64 << 20).to_string())],
        ..Default::default()
    });
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let refusals = write_until_refused(&pair.a.url("/v1/kv"), "a", &acked);
    assert_eq!(refusals.len(), WRITERS, "every writer must meet the full disk");
    for (status, body) in &refusals {
        assert_eq!(*status, 503, "{body}");
    }
    let before = acked.lock().unwrap().len();
    assert!(before > 0);

    // A cannot take writes: B must take over.
    let took = common::ha::wait_role_showing(&pair.b, &pair.a, "primary", std::time::Duration::from_secs(20));
    let more: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    for n in 0..200 {
        let key = format!("b/{n}");
        let (status, body) = http("PUT", &pair.b.url(&format!("/v1/kv/{key}")), Some(key.clone().into_bytes()));
        assert_eq!(status, 200, "the new primary refused a write: {}", String::from_utf8_lossy(&body));
        more.lock().unwrap().insert(key.clone(), key.into_bytes());
    }
    let (status, body) = http("GET", &pair.a.url("/health"), None);
    assert_eq!(status, 503, "A's health while its disk is full: {}", String::from_utf8_lossy(&body));

    // Room again: A rejoins as B's standby without a restart and catches up.
    std::fs::remove_file(&ballast).unwrap();
    let t = std::time::Instant::now();
    common::ha::wait_streaming(&pair.a, std::time::Duration::from_secs(40));
    let rejoined = t.elapsed();
    assert_eq!(common::ha::role(&pair.a), "standby");
    common::ha::wait_converged(&pair.a, &pair.b, std::time::Duration::from_secs(30));
    assert!(pair.a.log_text().contains("room again"), "A's log must say it came back:\n{}", pair.a.log_text());
    let (status, body) = http("GET", &pair.a.url("/health"), None);
    assert_eq!(status, 200, "A's health after rejoining: {}", String::from_utf8_lossy(&body));
    let all: HashMap<String, Vec<u8>> = acked.lock().unwrap().clone().into_iter().chain(more.lock().unwrap().clone()).collect();
    assert_all_present(&pair.b, &all, "on the new primary");
    assert_all_present(&pair.a, &all, "on the node whose disk filled, after it rejoined");
    println!("{before} writes acknowledged before A's disk filled; B primary {took:?} later; A streaming {rejoined:?} after room came back");
}

/// A Raft leader's disk fills (its data directory moved onto a small tmpfs): openraft stops
/// its core on the storage error, so the node must leave the group (the others elect a
/// leader and go on taking writes) and, once its disk has room, start its mode again without
/// a restart, rejoin as a follower and catch up. Every acknowledged write is on the new
/// leader and, after convergence, on the node whose disk filled.
#[test]
fn a_full_disk_on_the_raft_leader_moves_leadership_and_the_node_rejoins_once_there_is_room() {
    use common::raft::{RaftCluster, RaftOpts};
    use std::time::Duration;
    let Some(fs) = Tmpfs::mount_or_skip(64 << 20) else { return };
    let mut c = RaftCluster::start(3, RaftOpts { extra: vec![("MERIDIAN_WAL_SEGMENT_BYTES".into(), (4u64 << 20).to_string())], ..Default::default() });
    let (leader, _) = c.wait_stable_leader(Duration::from_secs(30));
    // Move a follower onto the tmpfs (kill -9, copy, restart there), then hand it leadership.
    let f = c.others(leader)[0];
    c.kill9(f);
    fs.take_data_of(&mut c.nodes[f]);
    c.restart(f);
    c.wait_converged(Duration::from_secs(30));
    let (status, body) = http("POST", &c.nodes[leader].url("/admin/raft/transfer-leadership"), Some(format!(r#"{{"target":"{}"}}"#, c.ids[f]).into_bytes()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (_, term) = c.wait_leader(&[f], 0, Duration::from_secs(20));
    let ballast = fs.path().join("ballast");
    let free = free_bytes(fs.path());
    std::fs::write(&ballast, vec![7u8; free.saturating_sub(24 << 20) as usize]).unwrap();

    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let refusals = write_until_refused(&c.nodes[f].url("/v1/kv"), "a", &acked);
    assert_eq!(refusals.len(), WRITERS, "every writer must meet the full disk");
    let before = acked.lock().unwrap().len();
    assert!(before > 0);

    // The group goes on without it.
    let others = c.others(f);
    let (mut new_leader, _) = c.wait_leader(&others, term + 1, Duration::from_secs(20));
    let mut more = HashMap::new();
    for n in 0..200 {
        let key = format!("b/{n}");
        // The two left may hold another election meanwhile: a write follows the leader.
        let t = std::time::Instant::now();
        loop {
            let (status, body) = http("PUT", &c.nodes[new_leader].url(&format!("/v1/kv/{key}")), Some(key.clone().into_bytes()));
            if status == 200 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "the group left took no write for 20 s: {status} {}", String::from_utf8_lossy(&body));
            new_leader = c.wait_leader(&others, term + 1, Duration::from_secs(20)).0;
        }
        more.insert(key.clone(), key.into_bytes());
    }
    let (status, body) = http("GET", &c.nodes[f].url("/health"), None);
    assert_eq!(status, 503, "health of the node with the full disk: {}", String::from_utf8_lossy(&body));

    // Room again: it rejoins without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let t = std::time::Instant::now();
    loop {
        let (status, _) = http("GET", &c.nodes[f].url("/health"), None);
        if status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(40), "{} did not come back 40 s after room came back:\n{}", c.ids[f], c.nodes[f].log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let rejoined = t.elapsed();
    c.wait_converged(Duration::from_secs(60));
    assert!(c.nodes[f].log_text().contains("room again"), "its log must say it came back:\n{}", c.nodes[f].log_text());
    let all: HashMap<String, Vec<u8>> = acked.lock().unwrap().clone().into_iter().chain(more).collect();
    assert_all_present(&c.nodes[new_leader], &all, "on the new leader");
    for (key, value) in &all {
        let got = c.get(f, key, "local").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.as_deref().map(str::as_bytes), Some(value.as_slice()), "acknowledged {key} on the node whose disk filled, after it rejoined");
    }
    println!("{before} writes acknowledged by the leader before its disk filled; {} leads after; the old leader healthy {rejoined:?} after room came back", c.ids[new_leader]);
    drop(c);
}

/// Free bytes of the filesystem holding `path` (`df`, so no extra crate).
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df prints the free bytes")
}

/// multi_region, two one-node regions: the primary region's only node fills its disk, so its
/// region is down (its Raft group has no one else). Once the disk has room the node starts
/// its mode again without a restart: its region takes writes again, ships what it had not
/// shipped, and both regions converge with every acknowledged write.
#[test]
fn a_full_disk_in_a_region_stops_it_and_it_ships_everything_once_there_is_room() {
    use common::region::{RegionOpts, Regions};
    use std::time::Duration;
    let Some(fs) = Tmpfs::mount_or_skip(64 << 20) else { return };
    let mut rg = Regions::start(RegionOpts {
        names: vec!["us", "eu"],
        nodes_per_region: 1,
        primary: Some("us"),
        extra: vec![("MERIDIAN_WAL_SEGMENT_BYTES".into(), (4u64 << 20).to_string())],
    });
    // Move us1 onto the tmpfs (kill -9, copy, restart there).
    rg.nodes[0][0].kill9();
    fs.take_data_of(&mut rg.nodes[0][0]);
    rg.nodes[0][0].spawn();
    common::raft::wait_serving(&mut rg.nodes[0][0], Duration::from_secs(30)).unwrap();
    rg.wait_leader(0, Duration::from_secs(30));
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![7u8; free_bytes(fs.path()).saturating_sub(24 << 20) as usize]).unwrap();

    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let refusals = write_until_refused(&rg.nodes[0][0].url("/v1/kv"), "a", &acked);
    assert_eq!(refusals.len(), WRITERS, "every writer must meet the full disk");
    let before = acked.lock().unwrap().len();
    assert!(before > 0);
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = http("GET", &rg.nodes[0][0].url("/health"), None);
    assert_eq!(status, 503, "health of the node with the full disk: {}", String::from_utf8_lossy(&body));

    std::fs::remove_file(&ballast).unwrap();
    let t = std::time::Instant::now();
    loop {
        let (status, _) = http("PUT", &rg.nodes[0][0].url("/v1/kv/room-again"), Some(b"y".to_vec()));
        if status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(40), "us1 took no write 40 s after room came back:\n{}", rg.nodes[0][0].log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let resumed = t.elapsed();
    acked.lock().unwrap().insert("room-again".into(), b"y".to_vec());
    rg.wait_converged(Duration::from_secs(60));
    assert!(rg.nodes[0][0].log_text().contains("room again"), "its log must say it came back:\n{}", rg.nodes[0][0].log_text());
    for (key, value) in acked.lock().unwrap().iter() {
        for r in 0..2 {
            let got = rg.get_local(r, 0, key);
            assert_eq!(got.as_ref().map(|(s, b)| (*s, b)), Some((200, value)), "acknowledged {key} in region {}", rg.names[r]);
        }
    }
    println!("{before} writes acknowledged in us before its disk filled; writes taken again {resumed:?} after room came back; both regions hold them all");
}

/// The HA standby's disk fills: it leaves the pair, the `sync` primary records it out of sync
/// at the witness after the sync timeout and goes on acknowledging alone (without a witness
/// it would wait for the operator's `/admin/standby/release`: nothing else can keep the
/// standby from promoting itself later with writes it lacks); once the standby's disk has
/// room it starts its mode again without a restart, catches up, and holds every acknowledged
/// write.
#[test]
fn a_full_disk_on_the_ha_standby_leaves_the_primary_writable_and_the_standby_catches_up() {
    let Some(fs) = Tmpfs::mount_or_skip(48 << 20) else { return };
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![7u8; 16 << 20]).unwrap();
    let pair = common::ha::HaPair::start(common::ha::HaOpts {
        b_data: Some(fs.path().to_path_buf()),
        witness: true,
        extra: vec![("MERIDIAN_WAL_SEGMENT_BYTES", (4u64 << 20).to_string())],
        ..Default::default()
    });
    // Writers on the primary until the standby's disk fills (its /health answers 503); what
    // the standby then holds fits its disk once the ballast is gone.
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let t = std::time::Instant::now();
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (full, health) = (full.clone(), pair.b.url("/health"));
        thread::spawn(move || {
            while !full.load(std::sync::atomic::Ordering::SeqCst) && t.elapsed() < std::time::Duration::from_secs(120) {
                if http("GET", &health, None).0 == 503 {
                    full.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let stop = full.clone();
    write_4k_until(&pair.a.url("/v1/kv"), WRITERS, MAX_WRITES, &acked, move || stop.load(std::sync::atomic::Ordering::SeqCst));
    watcher.join().unwrap();
    assert!(full.load(std::sync::atomic::Ordering::SeqCst), "the standby's disk never filled:\n{}", pair.b.log_text());
    // The primary takes writes with its standby gone.
    let (status, body) = http("PUT", &pair.a.url("/v1/kv/after-standby-filled"), Some(b"x".to_vec()));
    assert_eq!(status, 200, "the primary refused a write with its standby's disk full: {}", String::from_utf8_lossy(&body));
    acked.lock().unwrap().insert("after-standby-filled".into(), b"x".to_vec());
    assert_eq!(common::ha::role(&pair.a), "primary");

    std::fs::remove_file(&ballast).unwrap();
    let room = std::time::Instant::now();
    common::ha::wait_streaming(&pair.b, std::time::Duration::from_secs(60));
    let rejoined = room.elapsed();
    common::ha::wait_converged(&pair.a, &pair.b, std::time::Duration::from_secs(60));
    assert!(pair.b.log_text().contains("room again"), "the standby's log must say it came back:\n{}", pair.b.log_text());
    let all = acked.lock().unwrap().clone();
    assert_all_present(&pair.a, &all, "on the primary");
    assert_all_present(&pair.b, &all, "on the standby whose disk filled, after it rejoined");
    println!("{} writes acknowledged in {:?} until the standby's disk filled; the standby streamed again {rejoined:?} after room came back", all.len(), t.elapsed());
}

/// The HA standby's state store fails a write while its WAL does not (here: state.redb grows
/// past a file size limit the 4 MiB WAL segments stay under, as redb's growth can fail on a
/// nearly full disk while the WAL's small appends still fit). The standby's apply runs in the
/// background, and redb refuses every commit after a failed one until it is opened again, so
/// before the store reported its failure such a standby went on streaming and never applied
/// another record, even once writes could succeed again. Now it leaves the pair like a standby
/// whose WAL failed, reopens its store once the probe passes, and catches up: every write the
/// primary acknowledged ends up applied on it.
#[test]
fn a_failed_state_store_write_on_the_ha_standby_is_reopened_and_the_standby_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let pair = common::ha::HaPair::start(common::ha::HaOpts {
        sync_mode: "async",
        b_data: Some(dir.path().join("b")),
        // 12 MiB per file: the WAL's 4 MiB segments and the 8 MiB room probe fit, redb does not.
        b_file_size_limit_blocks: Some(24 * 1024),
        extra: vec![("MERIDIAN_WAL_SEGMENT_BYTES", (4u64 << 20).to_string())],
        ..Default::default()
    });
    let store_failed = |node: &Node| node.log_text().contains("File too large");
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let t = std::time::Instant::now();
    let log = pair.b.log.clone();
    write_4k_until(&pair.a.url("/v1/kv"), 4, 2500, &acked, move || std::fs::read_to_string(&log).unwrap_or_default().contains("File too large"));
    assert!(store_failed(&pair.b), "the standby's store never failed a write (40 MiB written):\n{}", pair.b.log_text());
    let written = acked.lock().unwrap().len();
    // The node sees its store's failure and leaves the pair (503) — the fix under test; until
    // then its reads fail too (redb's PreviousIo), so the digests can only be compared after.
    let seen = std::time::Instant::now();
    while http("GET", &pair.b.url("/health"), None).0 != 503 {
        assert!(seen.elapsed() < std::time::Duration::from_secs(30), "the standby never reported its store's failure:\n{}", pair.b.log_text());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Lift the limit: writes can succeed again.
    let lifted = std::process::Command::new("prlimit").args(["--pid", &pair.b.pid().to_string(), "--fsize=unlimited"]).status();
    assert!(lifted.is_ok_and(|s| s.success()), "prlimit failed; the standby's log:\n{}", pair.b.log_text());
    let room = std::time::Instant::now();
    common::ha::wait_streaming(&pair.b, std::time::Duration::from_secs(90));
    common::ha::wait_converged(&pair.a, &pair.b, std::time::Duration::from_secs(90));
    let caught_up = room.elapsed();
    let all = acked.lock().unwrap().clone();
    assert_all_present(&pair.a, &all, "on the primary");
    assert_all_present(&pair.b, &all, "on the standby whose store failed, after it caught up");
    println!("{written} writes acknowledged in {:?} until the standby's store failed; converged {caught_up:?} after the limit was lifted", t.elapsed());
}
