//! Regions of real `meridian` processes (`MERIDIAN_CLUSTER_MODE=multi_region`) for
//! `tests/multi_region.rs`: each region a Raft group of its own, the regions joined through
//! in-test proxies (one per remote node, shared by the region that dials it), so the link
//! between regions can be delayed or cut while each region keeps working.
//!
//! Node ids are unique across regions (`us1`, `eu1`, ...): the transport names peers by id.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;

use super::proxy::Proxy;
use super::raft::{call, call_json, wait_serving, SECRET};
use super::{free_port, Node};

pub struct RegionOpts {
    pub names: Vec<&'static str>,
    pub nodes_per_region: usize,
    /// `Some(r)`: CLUSTER_REGION_WRITES=primary with r primary; `None`: active_active.
    pub primary: Option<&'static str>,
    /// Further `MERIDIAN_*` settings for every node.
    pub extra: Vec<(String, String)>,
}

pub struct Regions {
    /// `nodes[r][i]`: node i of region r.
    pub nodes: Vec<Vec<Node>>,
    pub names: Vec<&'static str>,
    /// `proxies[r]`: the proxies other regions dial to reach region r's nodes.
    pub proxies: Vec<Vec<Proxy>>,
    pub dir: tempfile::TempDir,
}

impl Regions {
    pub fn start(o: RegionOpts) -> Regions {
        // A port taken by a parallel test between `free_port` and the node's bind: start
        // every region again on fresh ports (every node's settings name the others' ports).
        for attempt in 1..=4 {
            match Self::try_start(&o) {
                Ok(regions) => return regions,
                Err(e) if attempt < 4 && e.contains("in use") => eprintln!("regions: a port was taken ({e:.200}); starting again"),
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    fn try_start(o: &RegionOpts) -> Result<Regions, String> {
        let dir = tempfile::tempdir().unwrap();
        let n = o.nodes_per_region;
        let cluster: Vec<Vec<u16>> = o.names.iter().map(|_| (0..n).map(|_| free_port()).collect()).collect();
        let http: Vec<Vec<u16>> = o.names.iter().map(|_| (0..n).map(|_| free_port()).collect()).collect();
        let proxies: Vec<Vec<Proxy>> =
            cluster.iter().map(|ports| ports.iter().map(|p| Proxy::start(format!("127.0.0.1:{p}").parse().unwrap())).collect()).collect();
        let mut nodes = Vec::new();
        for (r, name) in o.names.iter().enumerate() {
            let ids: Vec<String> = (1..=n).map(|i| format!("{name}{i}")).collect();
            let peers: Vec<String> = (0..n).map(|i| format!("{}:127.0.0.1:{}", ids[i], cluster[r][i])).collect();
            let remotes: Vec<String> = o
                .names
                .iter()
                .enumerate()
                .filter(|(q, _)| *q != r)
                .flat_map(|(q, other)| proxies[q].iter().map(move |p| format!("{other}:{}", p.addr())))
                .collect();
            let mut region_nodes = Vec::new();
            for i in 0..n {
                let mut env: Vec<(String, String)> = vec![
                    ("MERIDIAN_CLUSTER_MODE".into(), "multi_region".into()),
                    ("MERIDIAN_CLUSTER_NODE_ID".into(), ids[i].clone()),
                    ("MERIDIAN_CLUSTER_BIND_ADDR".into(), format!("127.0.0.1:{}", cluster[r][i])),
                    ("MERIDIAN_CLUSTER_RAFT_PEERS".into(), peers.join(",")),
                    ("MERIDIAN_CLUSTER_RAFT_BOOTSTRAP".into(), (i == 0).to_string()),
                    ("MERIDIAN_CLUSTER_SECRET".into(), SECRET.into()),
                    ("MERIDIAN_CLUSTER_HTTP_ADVERTISE_ADDR".into(), format!("http://127.0.0.1:{}", http[r][i])),
                    ("MERIDIAN_CLUSTER_REGION_ID".into(), name.to_string()),
                    ("MERIDIAN_CLUSTER_REMOTE_REGIONS".into(), remotes.join(",")),
                    // Off unless a test turns it on: regions collect tombstones at different
                    // moments, and the tests compare whole digests, tombstones included.
                    ("MERIDIAN_CLUSTER_TOMBSTONE_GC_INTERVAL".into(), "0".into()),
                ];
                match o.primary {
                    Some(p) => env.push(("MERIDIAN_CLUSTER_PRIMARY_REGION".into(), p.into())),
                    None => env.push(("MERIDIAN_CLUSTER_REGION_WRITES".into(), "active_active".into())),
                }
                env.extend(o.extra.iter().cloned());
                let data_dir = dir.path().join(&ids[i]);
                let mut node = Node { child: None, port: http[r][i], log: data_dir.with_extension("log"), data_dir: Some(data_dir), cwd: None, env, file_size_limit_blocks: None };
                node.spawn();
                region_nodes.push(node);
            }
            nodes.push(region_nodes);
        }
        // On an error the nodes started so far are stopped as `nodes` drops.
        for region in &mut nodes {
            for node in region.iter_mut() {
                wait_serving(node, Duration::from_secs(30))?;
            }
        }
        let regions = Regions { nodes, names: o.names.clone(), proxies, dir };
        for r in 0..regions.names.len() {
            regions.wait_leader(r, Duration::from_secs(30));
        }
        Ok(regions)
    }

    pub fn base(&self, r: usize, i: usize) -> String {
        self.nodes[r][i].url("")
    }

    /// The index of region r's leader, waiting up to `within` for one.
    pub fn wait_leader(&self, r: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for (i, node) in self.nodes[r].iter().enumerate() {
                if node.child.is_none() {
                    continue;
                }
                if let Ok((200, h)) = call_json("GET", &node.url("/health"), None, Duration::from_secs(1)) {
                    if h["replication"]["is_leader"] == true {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "region {} has no leader after {within:?}", self.names[r]);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Delays (or with `None` cuts, with `Some(0)` heals) every link between regions.
    pub fn set_links(&self, delay: Option<Duration>) {
        for p in self.proxies.iter().flatten() {
            match delay {
                None => p.cut(),
                Some(d) => {
                    p.heal();
                    p.set_delay(d);
                }
            }
        }
    }

    pub fn digest(&self, r: usize, i: usize) -> Option<(String, u64)> {
        let (code, d) = call_json("GET", &self.nodes[r][i].url("/admin/digest"), None, Duration::from_secs(10)).ok()?;
        (code == 200).then(|| (d["sha256"].as_str().unwrap_or_default().to_owned(), d["keys"].as_u64().unwrap_or(0)))
    }

    /// Waits until every running node of every region has the same digest; returns it.
    pub fn wait_converged(&self, within: Duration) -> (String, u64) {
        let deadline = Instant::now() + within;
        loop {
            let last = (0..self.names.len())
                .flat_map(|r| (0..self.nodes[r].len()).filter(move |&i| self.nodes[r][i].child.is_some()).map(move |i| (r, i)))
                .map(|(r, i)| (format!("{}{}", self.names[r], i + 1), self.digest(r, i)))
                .collect::<Vec<_>>();
            let first = last[0].1.clone();
            if let Some(agreed) = first.clone().filter(|_| last.iter().all(|(_, d)| *d == first)) {
                return agreed;
            }
            if Instant::now() > deadline {
                let status: Vec<Value> =
                    (0..self.names.len()).map(|r| call_json("GET", &self.nodes[r][0].url("/admin/region/status"), None, Duration::from_secs(2)).map(|x| x.1).unwrap_or(Value::Null)).collect();
                panic!("regions did not converge within {within:?}: {last:?}\nregion status: {status:#?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET of `key` on node (r, i), `local` consistency: (status, value, X-Stamp header).
    pub fn get_local(&self, r: usize, i: usize, key: &str) -> Option<(u16, Vec<u8>)> {
        call("GET", &self.nodes[r][i].url(&format!("/v1/kv/{key}?consistency=local")), None, Duration::from_secs(5)).ok()
    }
}
