//! One node's view of the whole cluster, for the cluster page (`/ui`) and `meridian status`.
//!
//! Each node describes itself in a [`NodeView`] (`GET /ui/node.json`); the node asked for
//! the cluster (`GET /ui/cluster.json`) adds the views of every other node it knows an HTTP
//! address for — in `ha_standby` the peer's announced URL, in `raft` each member's published
//! URL from the membership — fetched at once with a short timeout. A node that does not answer
//! is listed as unreachable, with the last thing known about it. Both documents hold only
//! what `/health` and `/metrics` already publish, so they need no token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian_modes::replicator::{AdminRequest, DivergentTailInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admin::{health_word, node_status};
use super::AppState;

/// How long the serving node waits for a peer's view: the page polls every second.
const PEER_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerView {
    pub id: String,
    pub address: String,
    pub healthy: bool,
}

/// What one node says about itself (or, when `reachable` is false, what is known of it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeView {
    pub node_id: String,
    /// Base HTTP URL, when the node publishes one.
    pub url: Option<String>,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub mode: String,
    pub role: String,
    pub is_leader: bool,
    /// healthy, degraded or unhealthy.
    pub health: String,
    pub state: String,
    /// HA epoch or Raft term.
    pub epoch: u64,
    /// The epoch as people read it: `round.owner tag` in ha_standby (see `ha::epoch`), the
    /// term in raft.
    pub epoch_label: String,
    pub commit_index: u64,
    pub applied_index: u64,
    pub wal_last_index: u64,
    pub wal_durable_index: u64,
    pub lag_seconds: f64,
    /// Records behind (a standby: behind its primary; a primary: its standby behind it).
    pub lag_records: Option<u64>,
    /// ha_standby: the configured sync level.
    pub sync_mode: Option<String>,
    /// ha_standby: whether the standby is recorded in sync (a primary: its standby).
    pub in_sync: Option<bool>,
    pub peers: Vec<PeerView>,
    /// ha_standby with a witness: whether the witness answers.
    pub witness_healthy: Option<bool>,
    pub notes: Vec<String>,
    pub divergent_tails: Vec<DivergentTailInfo>,
    /// raft: voter or learner, from the membership.
    pub membership: Option<String>,
    pub leader_changes: u64,
    /// multi_region: this node's `/admin/region/status` (the region leader's has the links'
    /// lag; the page shows that one).
    pub region: Option<Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterView {
    /// The node that assembled this view.
    pub served_by: String,
    pub mode: String,
    /// raft: the leader's name as this node knows it.
    pub leader: Option<String>,
    pub generated_at_ms: u64,
    pub nodes: Vec<NodeView>,
}

/// What this node reports about itself.
pub async fn local_view(st: &AppState) -> NodeView {
    let s = node_status(st);
    let pos = st.current_wal().position();
    let lag = st.replicator.admin(AdminRequest::ReplicationLag).await.ok();
    let lag_records = lag.as_ref().and_then(|l| l["records"].as_u64());
    let in_sync = lag.as_ref().and_then(|l| l.get("standby_in_sync").or_else(|| l.get("in_sync"))).and_then(Value::as_bool);
    let witness_healthy = s.peers.iter().find(|p| p.id == meridian_modes::ha::WITNESS).map(|p| p.healthy);
    NodeView {
        node_id: s.node_id.clone(),
        url: st.view.http_url.clone(),
        reachable: true,
        error: None,
        mode: s.mode.to_owned(),
        role: s.role.clone(),
        is_leader: s.is_leader,
        health: health_word(s.health).to_owned(),
        state: s.state.clone(),
        epoch: s.epoch,
        epoch_label: if s.mode == "ha_standby" { meridian_modes::ha::epoch::display(s.epoch) } else { s.epoch.to_string() },
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        wal_last_index: pos.last_index,
        wal_durable_index: pos.durable_index,
        lag_seconds: s.lag_seconds,
        lag_records,
        sync_mode: st.view.sync_mode.clone(),
        in_sync,
        peers: s.peers.iter().map(|p| PeerView { id: p.id.clone(), address: p.address.clone(), healthy: p.healthy }).collect(),
        witness_healthy,
        notes: s.notes.clone(),
        divergent_tails: st.replicator.divergent_tails(),
        membership: None,
        leader_changes: s.leader_changes,
        region: if s.mode == "multi_region" { st.replicator.admin(AdminRequest::RegionStatus).await.ok() } else { None },
    }
}

/// A node this one knows of, and how to reach it.
struct Known {
    node_id: String,
    url: Option<String>,
    membership: Option<String>,
}

/// The other nodes: the HA peer's announced URL, or the Raft members (with their role).
async fn known_nodes(st: &AppState, me: &mut NodeView) -> (Vec<Known>, Option<String>) {
    if matches!(st.replicator.mode(), "raft" | "multi_region") {
        let Ok(status) = st.replicator.admin(AdminRequest::ClusterStatus).await else { return (vec![], None) };
        let leader = status["leader"].as_str().map(String::from);
        let mut out = Vec::new();
        for m in status["members"].as_array().into_iter().flatten() {
            let id = m["id"].as_str().unwrap_or_default().to_owned();
            let membership = m["role"].as_str().map(String::from);
            if id == me.node_id {
                me.membership = membership;
                continue;
            }
            out.push(Known { node_id: id, url: m["http"].as_str().map(String::from), membership });
        }
        return (out, leader);
    }
    let peers = st.replicator.peer_http_addrs().into_iter().map(|(id, url)| Known { node_id: id, url, membership: None }).collect();
    (peers, None)
}

async fn fetch_view(http: &reqwest::Client, k: Known) -> NodeView {
    let unreachable = |error: String| NodeView {
        node_id: k.node_id.clone(),
        url: k.url.clone(),
        reachable: false,
        error: Some(error),
        health: "unknown".into(),
        role: "unknown".into(),
        membership: k.membership.clone(),
        ..NodeView::default()
    };
    let Some(url) = &k.url else { return unreachable("the node publishes no HTTP address (MERIDIAN_CLUSTER_HTTP_ADVERTISE_ADDR)".into()) };
    let answer = http.get(format!("{}/ui/node.json", url.trim_end_matches('/'))).timeout(PEER_TIMEOUT).send().await;
    match answer {
        Ok(r) if r.status().is_success() => match r.json::<NodeView>().await {
            Ok(mut v) => {
                v.membership = v.membership.or(k.membership);
                v.url = v.url.or(Some(url.clone()));
                v
            }
            Err(e) => unreachable(format!("bad answer from {url}: {e}")),
        },
        Ok(r) => unreachable(format!("{url} answered {}", r.status())),
        Err(e) => unreachable(format!("cannot reach {url}: {}", if e.is_timeout() { "timed out".to_owned() } else { crate::client::with_causes(&e) })),
    }
}

/// This node and every node it knows of, in a stable order (leader or primary first).
pub async fn cluster_view(st: &AppState) -> ClusterView {
    let mut me = local_view(st).await;
    let (known, leader) = known_nodes(st, &mut me).await;
    let others = futures_util::future::join_all(known.into_iter().map(|k| fetch_view(&st.view.http, k))).await;
    let mut nodes = vec![me];
    nodes.extend(others);
    nodes.sort_by(|a, b| b.is_leader.cmp(&a.is_leader).then_with(|| a.node_id.cmp(&b.node_id)));
    ClusterView {
        served_by: st.replicator.status().node_id,
        mode: st.replicator.mode().to_owned(),
        leader,
        generated_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        nodes,
    }
}

/// The settings the view reports that the mode does not know, and the client for peers.
pub struct ViewConfig {
    /// This node's own base URL (`CLUSTER_HTTP_ADVERTISE_ADDR`, else the HTTP address when it
    /// names a host).
    pub http_url: Option<String>,
    pub sync_mode: Option<String>,
    pub http: reqwest::Client,
}

impl ViewConfig {
    pub fn new(http_url: Option<String>, sync_mode: Option<String>) -> ViewConfig {
        // No idle pool: a peer that died must not leave a dead connection to retry.
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("HTTP client builds");
        ViewConfig { http_url, sync_mode, http }
    }
}
