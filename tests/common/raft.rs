//! A Raft cluster (`MERIDIAN_CLUSTER_MODE=raft`) of real `meridian` processes for
//! `tests/raft.rs`: start N voters, find the leader through `/health`, break nodes (kill -9,
//! SIGTERM, SIGSTOP/SIGCONT, restart) and links (per-link proxies), wait for the digests to
//! agree. Every wait has a deadline; every process is stopped when the cluster is dropped
//! (`Node`'s `Drop`), paused ones included (SIGKILL works on a stopped process).
//!
//! Links: with `RaftOpts::proxied`, node i reaches node j through its own proxy
//! `links[i][j]` — node i's `MERIDIAN_CLUSTER_RAFT_PEERS` names that proxy for j (a node dials
//! its peers at the addresses of its own peer list; its own entry is its real cluster port).
//! Cutting `links[i][j]` and `links[j][i]` for every j isolates node i on the cluster port
//! while clients still reach it over HTTP.
#![allow(dead_code)]

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proxy::Proxy;
use super::writers::Write;
use super::{free_port, listens_on, unsafe_kill, Node};

/// The shared cluster-port secret (`MERIDIAN_CLUSTER_SECRET`, at least 16 bytes; 32+ here).
pub const SECRET: &str = "raft-test-secret-4f1c9a7d2e8b6035c1d7a9e4b2f8063d";

pub struct RaftOpts {
    /// Put a cuttable proxy on every directed link (needed for partitions).
    pub proxied: bool,
    /// `MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT`.
    pub election_timeout: Duration,
    /// `MERIDIAN_CLUSTER_RAFT_HEARTBEAT_TIMEOUT`.
    pub heartbeat: Duration,
    /// Further `MERIDIAN_*` settings for every node.
    pub extra: Vec<(String, String)>,
}

impl Default for RaftOpts {
    fn default() -> Self {
        RaftOpts { proxied: false, election_timeout: Duration::from_secs(1), heartbeat: Duration::from_millis(100), extra: vec![] }
    }
}

/// What a node's `/health` said.
#[derive(Clone, Debug)]
pub struct Status {
    pub code: u16,
    pub role: String,
    pub is_leader: bool,
    /// `replication.epoch`: the Raft term.
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub raw: Value,
}

/// Fields drop in declaration order: the processes and proxies go before the directory.
pub struct RaftCluster {
    /// `nodes[i]` is voter `ids[i]` (`n1`, `n2`, ...); `nodes[0]` bootstraps.
    pub nodes: Vec<Node>,
    /// `links[i][j]`: the proxy node i dials to reach node j (`None` on the diagonal, or
    /// everywhere when not proxied).
    pub links: Vec<Vec<Option<Proxy>>>,
    pub ids: Vec<String>,
    pub cluster_ports: Vec<u16>,
    /// Nodes stopped with SIGSTOP (not asked anything until resumed).
    pub paused: Vec<bool>,
    pub election_timeout: Duration,
    pub dir: tempfile::TempDir,
}

fn fmt_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    static CLIENT: RefCell<Option<reqwest::Client>> = const { RefCell::new(None) };
}

/// One HTTP call with a deadline; `Err` when there is no answer (refused, reset, timeout).
/// Never call it from inside an async context.
pub fn call(method: &str, url: &str, body: Option<Vec<u8>>, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    // Idle connections are dropped well before the node's 60 s HTTP idle timeout: this
    // runtime is not polled between calls, so a connection the node closed meanwhile would
    // be reused and fail ("error sending request") after a phase longer than a minute.
    let client = CLIENT.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(20)).build().unwrap())
            .clone()
    });
    RT.with(|rt| {
        rt.block_on(async {
            let mut rb = client.request(method.parse().unwrap(), url).timeout(timeout);
            if let Some(b) = body {
                rb = rb.body(b);
            }
            let r = rb.send().await.map_err(|e| format!("{method} {url}: {e}"))?;
            let status = r.status().as_u16();
            let bytes = r.bytes().await.map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
            Ok((status, bytes.to_vec()))
        })
    })
}

/// `call` with a JSON answer (`Value::Null` when the body is not JSON).
pub fn call_json(method: &str, url: &str, body: Option<Vec<u8>>, timeout: Duration) -> Result<(u16, Value), String> {
    let (s, b) = call(method, url, body, timeout)?;
    Ok((s, serde_json::from_slice(&b).unwrap_or(Value::Null)))
}

/// How many lines of a node's log look like the cluster being initialized (bootstrapped).
///
/// Assumption (the log wording is not part of the contract): the bootstrapping node logs one
/// line containing "initializ" (any case: "initializing the cluster", "initialized the
/// cluster with 3 voters") when it initializes the Raft membership, and lines that say it
/// did *not* initialize ("already initialized", "skipping bootstrap", "not initializing")
/// contain "already", "skip" or "not ". Loose on purpose: it counts, it does not parse.
pub fn init_lines(log: &str) -> usize {
    log.lines()
        .map(str::to_ascii_lowercase)
        .filter(|l| l.contains("initializ") && !l.contains("already") && !l.contains("skip") && !l.contains("not "))
        .count()
}

/// Waits until `node`'s own process listens on its HTTP port (a Raft node serves HTTP, and
/// answers `/health` with 503, before it has a leader; `Node::wait_ready` wants a 200).
pub fn wait_serving(node: &mut Node, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let child = node.child.as_mut().expect("a running node");
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("meridian exited with {status} before serving HTTP; log {}:\n{}", node.log.display(), node.log_text()));
        }
        let pid = child.id();
        match listens_on(pid, node.port) {
            Some(true) => return Ok(()),
            // No /proc: any HTTP answer will do.
            None if call("GET", &node.url("/health"), None, Duration::from_secs(1)).is_ok() => return Ok(()),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(format!("meridian did not serve HTTP within {within:?}; log {}:\n{}", node.log.display(), node.log_text()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl RaftCluster {
    /// Starts `n` voters and waits (30 s) until they agree on one leader.
    pub fn start(n: usize, o: RaftOpts) -> RaftCluster {
        let c = Self::start_no_wait(n, o);
        c.wait_stable_leader(Duration::from_secs(30));
        c
    }

    /// Starts `n` voters and waits only until each serves HTTP.
    pub fn start_no_wait(n: usize, o: RaftOpts) -> RaftCluster {
        assert!(n >= 1);
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        // A port taken by a parallel test between `free_port` and the node's bind: start
        // the whole cluster again on fresh ports (every peer list names every port).
        for attempt in 1..=4 {
            match Self::try_start(dir.path(), attempt, &ids, &o) {
                Ok((nodes, links, cluster_ports)) => {
                    return RaftCluster { nodes, links, ids, cluster_ports, paused: vec![false; n], election_timeout: o.election_timeout, dir };
                }
                Err(e) if attempt < 4 && e.contains("in use") => eprintln!("raft cluster: a port was taken ({e:.200}); starting again"),
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    #[allow(clippy::type_complexity)]
    fn try_start(root: &Path, attempt: usize, ids: &[String], o: &RaftOpts) -> Result<(Vec<Node>, Vec<Vec<Option<Proxy>>>, Vec<u16>), String> {
        let n = ids.len();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let http_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let real = |j: usize| format!("127.0.0.1:{}", cluster_ports[j]);
        let links: Vec<Vec<Option<Proxy>>> = (0..n)
            .map(|i| (0..n).map(|j| (o.proxied && i != j).then(|| Proxy::start(real(j).parse().unwrap()))).collect())
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let peers: Vec<String> = (0..n)
                .map(|j| {
                    let addr = links[i][j].as_ref().map_or_else(|| real(j), |p| p.addr());
                    format!("{}:{addr}", ids[j])
                })
                .collect();
            let mut env: Vec<(String, String)> = vec![
                ("MERIDIAN_CLUSTER_MODE".into(), "raft".into()),
                ("MERIDIAN_CLUSTER_NODE_ID".into(), ids[i].clone()),
                ("MERIDIAN_CLUSTER_BIND_ADDR".into(), real(i)),
                ("MERIDIAN_CLUSTER_RAFT_PEERS".into(), peers.join(",")),
                ("MERIDIAN_CLUSTER_RAFT_BOOTSTRAP".into(), (i == 0).to_string()),
                ("MERIDIAN_CLUSTER_SECRET".into(), SECRET.into()),
                ("MERIDIAN_CLUSTER_HTTP_ADVERTISE_ADDR".into(), format!("http://127.0.0.1:{}", http_ports[i])),
                ("MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT".into(), fmt_duration(o.election_timeout)),
                ("MERIDIAN_CLUSTER_RAFT_HEARTBEAT_TIMEOUT".into(), fmt_duration(o.heartbeat)),
            ];
            for (k, v) in &o.extra {
                env.retain(|(key, _)| key != k);
                env.push((k.clone(), v.clone()));
            }
            let data_dir = root.join(format!("try{attempt}-{}", ids[i]));
            let mut node = Node {
                child: None,
                port: http_ports[i],
                log: data_dir.with_extension("log"),
                data_dir: Some(data_dir),
                cwd: None,
                env,
                file_size_limit_blocks: None,
            };
            node.spawn();
            nodes.push(node);
        }
        for node in &mut nodes {
            wait_serving(node, Duration::from_secs(30))?;
        }
        Ok((nodes, links, cluster_ports))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn base(&self, i: usize) -> String {
        self.nodes[i].url("")
    }

    pub fn bases(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.base(i)).collect()
    }

    /// The other nodes.
    pub fn others(&self, i: usize) -> Vec<usize> {
        (0..self.len()).filter(|&j| j != i).collect()
    }

    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Running and not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.running(i) && !self.paused[i]).collect()
    }

    /// Node `i`'s `/health`, or `None` if it is down, paused or does not answer within 1 s.
    pub fn status(&self, i: usize) -> Option<Status> {
        if !self.running(i) || self.paused[i] {
            return None;
        }
        let (code, raw) = call_json("GET", &self.nodes[i].url("/health"), None, Duration::from_secs(1)).ok()?;
        let r = &raw["replication"];
        Some(Status {
            code,
            role: r["role"].as_str().unwrap_or("").to_owned(),
            is_leader: r["is_leader"].as_bool().unwrap_or(false),
            term: r["epoch"].as_u64().unwrap_or(0),
            commit_index: r["commit_index"].as_u64().unwrap_or(0),
            applied_index: r["applied_index"].as_u64().unwrap_or(0),
            raw,
        })
    }

    /// The live nodes that say they lead, with their terms.
    pub fn leaders(&self) -> Vec<(usize, u64)> {
        self.live().into_iter().filter_map(|i| self.status(i).filter(|s| s.is_leader).map(|s| (i, s.term))).collect()
    }

    /// Every node's `/health` for failure messages.
    pub fn describe(&self) -> String {
        (0..self.len())
            .map(|i| {
                let state = if !self.running(i) {
                    "down".to_string()
                } else if self.paused[i] {
                    "paused".to_string()
                } else {
                    self.status(i).map_or("no answer".to_string(), |s| format!("{} {}", s.code, s.raw))
                };
                format!("{}: {state}", self.ids[i])
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.len()).map(|i| format!("----- log of {} -----\n{}", self.ids[i], self.nodes[i].log_text())).collect::<Vec<_>>().join("\n")
    }

    /// Waits until one of `among` says it leads with a term of at least `min_term` (and answers
    /// `/health` with 200). Other nodes are not consulted: a cut-off old leader may still
    /// believe it leads in an older term.
    pub fn wait_leader(&self, among: &[usize], min_term: u64, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            for &i in among {
                if let Some(s) = self.status(i) {
                    if s.is_leader && s.term >= min_term && s.code == 200 {
                        return (i, s.term);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {:?} with term >= {min_term} within {within:?}:\n{}\n{}",
                among.iter().map(|&i| &self.ids[i]).collect::<Vec<_>>(),
                self.describe(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every live node answers `/health` with 200, exactly one of them leads, and
    /// all report that leader's term, twice in a row 200 ms apart.
    pub fn wait_stable_leader(&self, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        let mut previous = None;
        loop {
            let now = self.agreed_leader();
            if let Some(agreed) = now.filter(|_| now == previous) {
                return agreed;
            }
            previous = now;
            assert!(Instant::now() < deadline, "the live nodes did not agree on one leader within {within:?}:\n{}\n{}", self.describe(), self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `Some((leader, term))` when every live node answers 200, exactly one leads, and every
    /// live node reports the leader's term.
    pub fn agreed_leader(&self) -> Option<(usize, u64)> {
        let live = self.live();
        let statuses: Vec<(usize, Status)> = live.iter().map(|&i| self.status(i).map(|s| (i, s))).collect::<Option<_>>()?;
        let leaders: Vec<&(usize, Status)> = statuses.iter().filter(|(_, s)| s.is_leader).collect();
        let [(leader, ls)] = leaders.as_slice() else { return None };
        statuses.iter().all(|(_, s)| s.code == 200 && s.term == ls.term).then_some((*leader, ls.term))
    }

    /// kill -9.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
        self.paused[i] = false;
    }

    /// SIGTERM and wait for the exit (20 s); the exit code.
    pub fn terminate(&mut self, i: usize) -> i32 {
        if self.paused[i] {
            self.resume(i);
        }
        self.nodes[i].terminate()
    }

    /// SIGSTOP.
    pub fn pause(&mut self, i: usize) {
        unsafe_kill(self.nodes[i].pid(), 19);
        self.paused[i] = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        unsafe_kill(self.nodes[i].pid(), 18);
        self.paused[i] = false;
    }

    /// Starts a stopped node again with its environment and data (it waits only until the
    /// node serves HTTP: a lone node has no leader to make `/health` 200).
    pub fn restart(&mut self, i: usize) {
        assert!(!self.running(i), "{} is still running", self.ids[i]);
        self.nodes[i].spawn();
        if let Err(e) = wait_serving(&mut self.nodes[i], Duration::from_secs(30)) {
            panic!("restarting {}: {e}", self.ids[i]);
        }
    }

    fn link(&self, i: usize, j: usize) -> &Proxy {
        self.links[i][j].as_ref().expect("the cluster was started without proxies (RaftOpts::proxied)")
    }

    /// Cuts node `i` from every other node, both directions, on the cluster port.
    pub fn isolate(&self, i: usize) {
        for j in self.others(i) {
            self.link(i, j).cut();
            self.link(j, i).cut();
        }
    }

    /// Heals every link.
    pub fn heal(&self) {
        for p in self.links.iter().flatten().flatten() {
            p.heal();
        }
    }

    /// Node `i`'s `/admin/digest`, if it answers.
    pub fn digest(&self, i: usize) -> Option<Value> {
        match call_json("GET", &self.nodes[i].url("/admin/digest"), None, Duration::from_secs(10)) {
            Ok((200, v)) => Some(v),
            _ => None,
        }
    }

    /// Waits until every live node reports the same `applied_index`, `keys` and `sha256`.
    pub fn wait_converged(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let ds: Vec<Option<Value>> = self.live().into_iter().map(|i| self.digest(i)).collect();
            if let Some(first) = ds.first().cloned().flatten() {
                let same = |d: &Option<Value>| {
                    d.as_ref().is_some_and(|d| d["applied_index"] == first["applied_index"] && d["keys"] == first["keys"] && d["sha256"] == first["sha256"])
                };
                if ds.iter().all(same) {
                    return first;
                }
            }
            assert!(Instant::now() < deadline, "the digests never agreed within {within:?}: {ds:?}\n{}\n{}", self.describe(), self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// PUT `key` = `value` on node `i`: the status, or `Err` when there was no answer.
    pub fn put(&self, i: usize, key: &str, value: &str, timeout: Duration) -> Result<(u16, Value), String> {
        call_json("PUT", &self.nodes[i].url(&format!("/v1/kv/{key}")), Some(value.as_bytes().to_vec()), timeout)
    }

    /// GET `key` on node `i` with `consistency`: `Ok(Some(value))`, `Ok(None)` on 404, `Err`
    /// on anything else.
    pub fn get(&self, i: usize, key: &str, consistency: &str) -> Result<Option<String>, String> {
        get_value(&self.base(i), key, consistency)
    }
}

/// GET `key` at `base` with `consistency`: `Ok(Some(value))`, `Ok(None)` on 404, `Err` on
/// anything else.
pub fn get_value(base: &str, key: &str, consistency: &str) -> Result<Option<String>, String> {
    match call("GET", &format!("{base}/v1/kv/{key}?consistency={consistency}"), None, Duration::from_secs(5))? {
        (200, b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        (404, _) => Ok(None),
        (s, b) => Err(format!("GET {key} answered {s}: {}", String::from_utf8_lossy(&b))),
    }
}

/// The acknowledged writes that the node at `base` does not hold with their value
/// (`consistency`: `local` after convergence, or `linearizable`).
pub fn missing_on(base: &str, writes: &[Write], consistency: &str) -> Vec<Write> {
    writes
        .iter()
        .filter(|w| w.ok)
        .filter(|w| match get_value(base, &w.key, consistency) {
            Ok(v) => v.as_deref() != Some(w.value.as_str()),
            Err(e) => {
                eprintln!("checking {} at {base}: {e}", w.key);
                true
            }
        })
        .cloned()
        .collect()
}
