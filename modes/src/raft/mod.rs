//! `raft`: a 3–7 voter cluster (plus read replicas) on openraft.
//!
//! | file | one concept |
//! |---|---|
//! | [`types`] | openraft's type config; openraft index ↔ Meridian position, node name ↔ id |
//! | [`log_store`] | openraft's log storage on `meridian-wal` (vote, append after fsync, truncate, purge) |
//! | [`sm_store`] | openraft's state machine on the redb [`StateMachine`], snapshot files |
//! | [`network`] | openraft's network on the cluster transport (client side) |
//! | [`rpc`] | the Raft message family: types and encoding |
//! | [`handler`] | the receiving side: who may send what |
//! | [`force_new_cluster`] | disaster recovery: a survivor becomes a one-member cluster with all it holds |
//! | [`membership`] | joins (learner first), removals (a removed name is never reused), replicas joining themselves, published addresses |
//! | [`lag`] | replication lag in seconds: the age of the oldest entry a node lacks |
//! | this file | [`RaftNode`]: the [`Replicator`] — start-up and bootstrap, writes (proposed here or forwarded to the leader), reads, status, admin |
//!
//! # Invariants and where they are enforced
//! - **One writer per (term, index).** openraft elects at most one leader per term (votes are
//!   persisted before they are answered: `log_store::save_vote`); a record's epoch is its term.
//! - **Acknowledged = committed by a majority and applied here.** `submit` answers only with
//!   openraft's `client_write` response, which comes after the entry is committed and applied.
//! - **A node serves only agreed state.** Only committed entries reach the state machine;
//!   start-up does not replay the WAL into it (openraft does, up to what is committed).
//! - **Linearizable reads** wait for a read index confirmed by a quorum (on a follower: the
//!   leader's, over [`rpc::READ_INDEX`]) to be applied locally.
//! - **A Raft id names one node for the cluster's life.** Removed ids are kept in the
//!   replicated state (`sm_store::RaftMeta`); `membership::join` refuses them.
//! - **Damaged safety state stops the node:** a hard state (vote) that does not decode refuses
//!   start; a storage error inside openraft stops the Raft core (and `/health` says so).

pub mod force_new_cluster;
pub mod handler;
pub mod log_store;
pub mod lag;
pub mod membership;
pub mod network;
pub mod rpc;
pub mod sm_store;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meridian_wal::Wal;
use openraft::error::{ClientWriteError, RaftError};
use openraft::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState};

use crate::bookmark::Bookmark;
use crate::command::{Command, Limits};
use crate::forward::ForwardRequest;
use crate::replicator::*;
use crate::state_machine::{checkpoint_wanted, StateMachine, CHECKPOINT_POLL};
use crate::transport::Transport;
use handler::RaftHandler;
use log_store::LogStore;
use network::Network;
use rpc::ReadIndexReply;
use sm_store::SmStore;
use types::{position, raft_id, MeridianNode, RaftCommand, TypeConfig};

/// openraft driving Meridian's storage.
pub type Raft = openraft::Raft<TypeConfig, SmStore>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftRole {
    Voter,
    /// A non-voting learner: serves reads, never votes or leads.
    Replica,
}

#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub cluster_id: String,
    pub node_name: String,
    /// Every voter as `(name, cluster address)`, this node included.
    pub peers: Vec<(String, String)>,
    /// This node's cluster address as others should dial it.
    pub advertise: String,
    pub bootstrap: bool,
    /// `CLUSTER_RAFT_FORCE_NEW_CLUSTER`: see [`force_new_cluster`].
    pub force_new_cluster: bool,
    pub role: RaftRole,
    pub election_timeout: Duration,
    pub heartbeat: Duration,
    pub max_append_entries: u64,
    /// Entries since the last snapshot that trigger a new one.
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot (for followers that are a little behind).
    pub trailing_logs: u64,
    pub snapshot_interval: Duration,
    pub checkpoint_interval: Duration,
    pub forward_writes: bool,
    /// This node's HTTP base URL, for `421` answers elsewhere.
    pub http_addr: Option<String>,
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// Rewrites each command this node proposes as leader (multi_region stamps it); `None`
    /// proposes commands as they come.
    pub propose_hook: Option<ProposeHook>,
}

/// What the leader does around each proposal, on the leader (so forwarded writes are
/// handled by the node that orders them): `rewrite` turns the command into the one proposed,
/// and says whether `confirm` must also succeed, after the commit, before the write is
/// acknowledged (multi_region `semi_sync`: a remote region has it).
#[derive(Clone)]
pub struct ProposeHook {
    rewrite: Arc<dyn Fn(Command) -> (Command, bool) + Send + Sync>,
    confirm: Option<Arc<ConfirmFn>>,
}

/// Waits for something about the committed position it is given.
pub type ConfirmFn = dyn Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SubmitError>> + Send>> + Send + Sync;

impl ProposeHook {
    pub fn new(rewrite: impl Fn(Command) -> (Command, bool) + Send + Sync + 'static) -> ProposeHook {
        ProposeHook { rewrite: Arc::new(rewrite), confirm: None }
    }

    pub fn with_confirm(mut self, confirm: Arc<ConfirmFn>) -> ProposeHook {
        self.confirm = Some(confirm);
        self
    }
}

impl std::fmt::Debug for ProposeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProposeHook")
    }
}

impl RaftConfig {
    fn openraft_config(&self) -> Result<openraft::Config, String> {
        // What RAFT_ELECTION_TIMEOUT = T means: a follower that has heard nothing from a leader
        // for T campaigns, at a random moment in [T, 1.15 T) — never sooner than T (etcd's
        // lower bound; etcd draws from [T, 2T)).
        //
        // openraft (0.10, `Tick` + `UTime::is_expired`) campaigns once the silence exceeds its
        // leader lease (hard-wired to `election_timeout_max`) plus a timeout drawn from
        // [min, max). So the silence before a campaign is max + [min, max) = [max + min, 2 max):
        // max + min = T and max - min = 0.15 T give [T, 1.15 T). The lease (0.575 T) is also
        // how long a follower refuses to pre-vote for anyone else, which is what keeps a
        // rejoining node from deposing a healthy leader; it must outlast a heartbeat, which
        // `config::validate` ensures with the seed guide's rule (heartbeat < T/2). With a
        // heartbeat above 0.425 T, min is raised past it and the window narrows to
        // [hb + 0.575 T, 1.15 T), still never sooner than T.
        //
        // Measured (bench/raft.sh, T = 1 s, heartbeat 100 ms): [T/2, T) draws — silence
        // 1.5–2 T — gave a 1.60 s gap from leader kill to first write against etcd's 1.13 s;
        // the first version's [T, 2T) draws (silence 2–3 T) gave 3.4 s. The window of 0.15 T
        // (150 ms, seven ticks of 21 ms at the default heartbeat) is only there to keep two
        // followers from campaigning at once; the Raft paper's measurements need far less.
        let t = self.election_timeout.as_millis() as u64;
        let hb = self.heartbeat.as_millis() as u64;
        let max = (t * 23 / 40).max(hb + 2);
        let min = t.saturating_sub(max).max(hb + 1).min(max - 1);
        let c = openraft::Config {
            cluster_name: self.cluster_id.clone(),
            election_timeout_min: min,
            election_timeout_max: max,
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            max_payload_entries: self.max_append_entries.max(1),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_threshold.max(1)),
            max_in_snapshot_log_to_keep: self.trailing_logs,
            install_snapshot_timeout: 60_000,
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        c.validate().map_err(|e| e.to_string())
    }
}

pub struct RaftNode {
    pub(crate) cfg: RaftConfig,
    pub(crate) raft: Raft,
    transport: Transport,
    sm: Arc<dyn StateMachine>,
    wal: Wal,
    leader_changes: AtomicU64,
    lag: lag::LagClock,
    stopped: AtomicBool,
    /// Membership changes, one at a time.
    changes: tokio::sync::Mutex<()>,
}

fn unavailable(e: impl std::fmt::Display) -> SubmitError {
    SubmitError::Unavailable(e.to_string())
}

impl RaftNode {
    /// Opens openraft on this node's WAL and state, starts serving the Raft family on
    /// `transport` (through `handler`, registered with the transport before this call), and
    /// bootstraps the cluster once if configured to.
    pub async fn start(
        cfg: RaftConfig,
        wal: Wal,
        sm: Arc<dyn StateMachine>,
        store: SmStore,
        handler: Arc<RaftHandler>,
        transport: Transport,
    ) -> Result<Arc<RaftNode>, String> {
        let id = raft_id(&cfg.cluster_id, &cfg.node_name);
        let rcfg = Arc::new(cfg.openraft_config()?);
        if cfg.force_new_cluster {
            let me = (id, MeridianNode { name: cfg.node_name.clone(), addr: cfg.advertise.clone(), http: cfg.http_addr.clone() });
            let (dir, w, s) = (cfg.data_dir.clone(), wal.clone(), sm.clone());
            tokio::task::spawn_blocking(move || force_new_cluster::force(&dir, &w, &*s, me))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("CLUSTER_RAFT_FORCE_NEW_CLUSTER failed: {e}"))?;
        }
        let log = LogStore::new(wal.clone()).map_err(|e| e.to_string())?;
        for (name, addr) in &cfg.peers {
            if *name != cfg.node_name {
                transport.add_peer(name.clone(), addr.clone());
            }
        }
        let network = Network { transport: transport.clone(), configured: cfg.peers.iter().cloned().collect() };
        let raft = openraft::Raft::new(id, rcfg, network, log, store).await.map_err(|e| format!("openraft did not start: {e}"))?;
        let node = Arc::new(RaftNode {
            cfg,
            raft,
            transport,
            sm,
            wal,
            leader_changes: AtomicU64::new(0),
            lag: lag::LagClock::default(),
            stopped: AtomicBool::new(false),
            changes: tokio::sync::Mutex::new(()),
        });
        let _ = handler.node.set(Arc::downgrade(&node));
        node.bootstrap().await?;
        node.clone().watch_leader();
        node.clone().checkpoints();
        node.clone().snapshots_on_a_timer();
        node.clone().announce();
        Ok(node)
    }

    /// `RAFT_BOOTSTRAP=true`: initialize the membership from `RAFT_PEERS`, once. A node that
    /// holds any Raft state (a vote, a log, applied entries) is initialized already, and a
    /// restart never initializes again.
    async fn bootstrap(&self) -> Result<(), String> {
        let initialized = self.raft.is_initialized().await.map_err(|e| e.to_string())?;
        if !self.cfg.bootstrap || initialized {
            if self.cfg.bootstrap {
                tracing::info!("Raft state found; not bootstrapping again");
            } else if !initialized {
                tracing::info!("waiting to be contacted by the cluster's leader");
            }
            return Ok(());
        }
        if self.cfg.role == RaftRole::Replica {
            return Err("CLUSTER_RAFT_BOOTSTRAP: a read replica cannot bootstrap a cluster".into());
        }
        let members: BTreeMap<u64, MeridianNode> = self
            .cfg
            .peers
            .iter()
            .map(|(name, addr)| {
                let http = (*name == self.cfg.node_name).then(|| self.cfg.http_addr.clone()).flatten();
                (raft_id(&self.cfg.cluster_id, name), MeridianNode { name: name.clone(), addr: addr.clone(), http })
            })
            .collect();
        tracing::info!(members = ?self.cfg.peers, "bootstrapping the Raft cluster");
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(format!("cannot bootstrap the cluster: {e}")),
        }
    }

    fn watch_leader(self: Arc<Self>) {
        let mut rx = self.raft.metrics();
        tokio::spawn(async move {
            let mut last = rx.borrow_watched().current_leader;
            while rx.changed().await.is_ok() {
                // Borrowed, not cloned: this runs on every metrics change (each append).
                let now = {
                    let m = rx.borrow_watched();
                    self.lag_seconds(&m);
                    m.current_leader
                };
                if now != last {
                    if now.is_some() {
                        self.leader_changes.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!(leader = ?now.and_then(|id| self.name_of(id)), "Raft leader changed");
                    last = now;
                }
            }
        });
    }

    /// Feeds the lag clock with `m` and returns this node's replication lag in seconds
    /// (`lag.rs`): on the leader the largest over members, elsewhere its own.
    fn lag_seconds(&self, m: &openraft::RaftMetrics<TypeConfig>) -> f64 {
        let leader = m.state == ServerState::Leader;
        let pos = |l: &Option<types::LogId>| l.as_ref().map_or(0, |l| position(l.index));
        let reference = if leader { m.last_log_index.map_or(0, position) } else { pos(&m.cluster_committed) };
        self.lag.observe(leader, reference);
        if leader {
            let held: Vec<u64> = m.replication.iter().flat_map(|r| r.values()).map(pos).collect();
            let seconds = held.iter().map(|&h| self.lag.age_after(h)).fold(0.0, f64::max);
            self.lag.forget_up_to(held.iter().copied().min().unwrap_or(0));
            seconds
        } else {
            let applied = pos(&m.last_applied);
            self.lag.forget_up_to(applied);
            self.lag.age_after(applied)
        }
    }

    /// Runs `tick` on this node every `every` (never when zero) until the node stops or is
    /// dropped; the task holds only a weak reference.
    fn every<F, Fut>(self: Arc<Self>, every: Duration, tick: F)
    where
        F: Fn(Arc<RaftNode>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        if every.is_zero() {
            return;
        }
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(node) = weak.upgrade() else { return };
                if node.stopped.load(Ordering::Relaxed) {
                    return;
                }
                tick(node).await;
            }
        });
    }

    /// Makes applied state durable now and then, so a restart re-applies little.
    /// Every interval, and sooner when the store asks (it counts what was applied).
    fn checkpoints(self: Arc<Self>) {
        let interval = self.cfg.checkpoint_interval;
        let last = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        self.every(interval.min(CHECKPOINT_POLL), move |node| {
            let last = last.clone();
            async move {
                if !checkpoint_wanted(last.lock().unwrap().elapsed(), interval, &*node.sm) {
                    return;
                }
                *last.lock().unwrap() = std::time::Instant::now();
                let sm = node.sm.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || sm.checkpoint()).await {
                    tracing::warn!(error = %e, "checkpoint failed; will retry");
                }
            }
        });
    }

    /// `RAFT_SNAPSHOT_INTERVAL`: a snapshot at least this often when anything was applied
    /// since the last one (besides `RAFT_SNAPSHOT_THRESHOLD`, openraft's entry count), so a
    /// quiet cluster's log is compacted too.
    fn snapshots_on_a_timer(self: Arc<Self>) {
        let interval = self.cfg.snapshot_interval;
        self.every(interval, |node| async move {
            let (applied, snapshot) = {
                let m = node.raft.metrics().borrow_watched().clone();
                (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
            };
            if applied.is_some() && applied > snapshot {
                tracing::debug!(?applied, ?snapshot, "RAFT_SNAPSHOT_INTERVAL: snapshot");
                if let Err(e) = node.raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "cannot trigger the periodic snapshot");
                }
            }
        });
    }

    fn name_of(&self, id: u64) -> Option<String> {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let name = m.membership().nodes().find(|(i, _)| **i == id).map(|(_, n)| n.name.clone());
        name
    }

    fn leader_node(&self) -> Option<MeridianNode> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().nodes().find(|(i, _)| **i == id).map(|(_, n)| n.clone());
        node
    }

    /// Whether `name` may speak Raft to this node: a member of the current membership (voter
    /// or learner) or a configured voter (before the membership reaches this node).
    pub(crate) fn is_member(&self, name: &str) -> bool {
        let id = raft_id(&self.cfg.cluster_id, name);
        self.cfg.peers.iter().any(|(n, _)| n == name)
            || self.raft.metrics().borrow_watched().membership_config.membership().nodes().any(|(i, _)| *i == id)
    }

    fn hint(&self) -> Option<LeaderHint> {
        self.leader_node().map(|n| LeaderHint { node_id: n.name, http_addr: n.http })
    }

    /// Waits (a few election timeouts at most) until some node is known to lead.
    async fn known_leader(&self) -> Option<MeridianNode> {
        let deadline = tokio::time::Instant::now() + self.cfg.election_timeout * 4;
        loop {
            if let Some(n) = self.leader_node() {
                return Some(n);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes on this node: the answer comes once the entry is committed and applied.
    /// True while this node is its group's leader.
    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    /// What a command submitted here may contain.
    pub fn limits(&self) -> Limits {
        self.cfg.limits
    }

    pub(crate) async fn propose(&self, cmd: Command) -> Result<Committed, SubmitError> {
        let (cmd, confirm) = match &self.cfg.propose_hook {
            Some(h) => {
                let (c, wants) = (h.rewrite)(cmd);
                (c, h.confirm.clone().filter(|_| wants))
            }
            None => (cmd, None),
        };
        match self.raft.client_write(RaftCommand(cmd)).await {
            Ok(r) => {
                let committed = Committed { result: r.data, bookmark: Bookmark { epoch: r.log_id.leader_id.term, index: position(r.log_id.index) } };
                if let Some(confirm) = confirm {
                    confirm(committed.bookmark.index).await?;
                }
                Ok(committed)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(SubmitError::NotLeader { leader: self.hint() }),
            Err(e) => Err(unavailable(format!("the write was not committed: {e}"))),
        }
    }

    /// A leader's answer to a follower's READ_INDEX: confirm leadership with a quorum, then
    /// hand out the position to wait for.
    pub(crate) async fn serve_read_index(&self) -> ReadIndexReply {
        if !self.raft.is_leader() {
            return ReadIndexReply::NotLeader { leader: self.leader_node().map(|n| n.name) };
        }
        match tokio::time::timeout(self.cfg.election_timeout * 2, self.raft.get_read_linearizer(ReadPolicy::ReadIndex)).await {
            Ok(Ok(l)) => ReadIndexReply::Ready { position: position(l.read_log_id().index()), term: l.read_log_id().log_id().leader_id.term },
            Ok(Err(e)) => ReadIndexReply::Failed(e.to_string()),
            Err(_) => ReadIndexReply::Failed("the leader could not confirm its leadership with a quorum in time".into()),
        }
    }

    async fn wait_applied(&self, position: u64, wait: Duration) -> Result<(), ReadError> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.sm.applied_index() < position {
            if tokio::time::Instant::now() >= deadline {
                return Err(ReadError::BookmarkTimeout { wanted: position, applied: self.sm.applied_index(), waited: wait });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn read_index(&self) -> Result<u64, ReadError> {
        if self.raft.is_leader() {
            return match self.serve_read_index().await {
                ReadIndexReply::Ready { position, .. } => Ok(position),
                ReadIndexReply::NotLeader { .. } => Err(ReadError::NotLeader { leader: self.hint() }),
                ReadIndexReply::Failed(e) => Err(ReadError::Unavailable(e)),
            };
        }
        let leader = self.known_leader().await.ok_or_else(|| ReadError::Unavailable("no Raft leader is known".into()))?;
        let b = self
            .transport
            .request(&leader.name, rpc::READ_INDEX, rpc::encode(&rpc::ReadIndexRequest {}), Some(self.cfg.election_timeout * 3))
            .await
            .map_err(|e| ReadError::Unavailable(format!("cannot reach the leader {} for a read index: {e}", leader.name)))?;
        match rpc::decode::<ReadIndexReply>(&b).map_err(ReadError::Unavailable)? {
            ReadIndexReply::Ready { position, .. } => Ok(position),
            ReadIndexReply::NotLeader { .. } => Err(ReadError::Unavailable("the leader changed; retry".into())),
            ReadIndexReply::Failed(e) => Err(ReadError::Unavailable(e)),
        }
    }

    fn members(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let last = m.last_log_index;
        let repl = m.replication.clone().unwrap_or_default();
        let members: Vec<serde_json::Value> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| {
                let matched = if *id == m.id { m.last_log_index } else { repl.get(id).cloned().flatten().map(|l| l.index) };
                serde_json::json!({
                    "id": n.name,
                    "address": n.addr,
                    "http": n.http,
                    "role": if voters.contains(id) { "voter" } else { "learner" },
                    "leader": m.current_leader == Some(*id),
                    "match_index": matched.map(position),
                    "lag": match (last, matched) { (Some(l), Some(x)) if m.current_leader == Some(m.id) => Some(l.saturating_sub(x)), (Some(l), None) if m.current_leader == Some(m.id) => Some(l + 1), _ => None },
                })
            })
            .collect();
        serde_json::json!({
            "cluster_id": self.cfg.cluster_id,
            "node_id": self.cfg.node_name,
            "leader": m.current_leader.and_then(|id| self.name_of(id)),
            "term": m.current_term,
            "state": format!("{:?}", m.state),
            "commit_index": m.cluster_committed.map(|l| position(l.index)).unwrap_or(0),
            "applied_index": m.last_applied.map(|l| position(l.index)).unwrap_or(0),
            "members": members,
        })
    }
}

#[async_trait]
impl Replicator for RaftNode {
    fn mode(&self) -> &'static str {
        "raft"
    }

    async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(unavailable("the node is shutting down"));
        }
        if self.raft.is_leader() {
            match self.propose(cmd.clone()).await {
                Err(SubmitError::NotLeader { .. }) => {} // lost leadership meanwhile: forward below
                other => return other,
            }
        }
        let Some(leader) = self.known_leader().await else {
            return Err(unavailable("no Raft leader is known (an election is under way or a majority is unreachable)"));
        };
        if leader.name == self.cfg.node_name {
            return self.propose(cmd).await;
        }
        if !self.cfg.forward_writes {
            return Err(SubmitError::NotLeader { leader: Some(LeaderHint { node_id: leader.name, http_addr: leader.http }) });
        }
        let term = self.raft.metrics().borrow_watched().current_term;
        let req = ForwardRequest { epoch: term, command: cmd };
        crate::forward::forward(&self.transport, &leader.name, rpc::FORWARD, &req, Duration::from_secs(30)).await
    }

    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError> {
        if let Some(b) = &req.bookmark {
            self.wait_applied(b.index, req.wait).await?;
        }
        match req.consistency.unwrap_or(Consistency::Linearizable) {
            Consistency::Local => Ok(()),
            Consistency::Linearizable => {
                let p = self.read_index().await?;
                self.wait_applied(p, req.wait.max(Duration::from_secs(5))).await
            }
        }
    }

    /// openraft stops its core for good on a storage error (a log append, a vote save or an
    /// apply failed) — or on a panic: either way this node takes no part in the group until
    /// its mode is started again (the node's `resume.rs`).
    fn storage_failure(&self) -> Option<String> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        self.raft.metrics().borrow_watched().running_state.as_ref().err().map(|e| format!("the Raft core stopped: {e}"))
    }

    fn status(&self) -> ReplicationStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let failed = m.running_state.as_ref().err().map(|e| format!("the Raft core stopped: {e}"));
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let mut notes: Vec<String> = failed.iter().cloned().collect();
        let health = if failed.is_some() {
            Health::Unhealthy
        } else if m.current_leader.is_none() {
            notes.push("no Raft leader is known".into());
            Health::Unhealthy
        } else {
            Health::Healthy
        };
        let peers = self
            .transport
            .peer_status()
            .into_iter()
            .map(|p| {
                // On the leader: how far each member's acknowledged log is behind.
                let matched = m.replication.as_ref().map(|r| r.get(&raft_id(&self.cfg.cluster_id, &p.id)).cloned().flatten().map(|l| l.index));
                let lag_entries = match (m.last_log_index, matched) {
                    (Some(last), Some(Some(x))) => Some(last.saturating_sub(x)),
                    (Some(last), Some(None)) => Some(last + 1),
                    _ => None,
                };
                PeerInfo { id: p.id.clone(), address: p.addr.clone(), healthy: p.connected, lag_entries }
            })
            .collect();
        ReplicationStatus {
            mode: "raft",
            node_id: self.cfg.node_name.clone(),
            role: role.into(),
            is_leader: m.state == ServerState::Leader,
            state: if failed.is_some() { "failed".into() } else { "running".into() },
            commit_index: m.cluster_committed.map(|l| position(l.index)).unwrap_or(0),
            applied_index: self.sm.applied_index(),
            epoch: m.current_term,
            peers,
            health,
            lag_seconds: self.lag_seconds(&m),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            replication_bytes: 0,
            notes,
        }
    }

    async fn admin(&self, req: AdminRequest) -> Result<serde_json::Value, AdminError> {
        match req {
            AdminRequest::ClusterStatus | AdminRequest::RaftState => Ok(self.members()),
            AdminRequest::AddNode { node_id, address, voter } => {
                let node = MeridianNode { name: node_id, addr: address, http: None };
                self.join(membership::JoinRequest { node, voter }).await.map_err(AdminError::Rejected)
            }
            AdminRequest::RemoveNode { node_id } => self.remove(membership::RemoveRequest { name: node_id }).await.map_err(AdminError::Rejected),
            AdminRequest::RaftSnapshot => {
                self.raft.trigger().snapshot().await.map_err(|e| AdminError::Unavailable(e.to_string()))?;
                Ok(serde_json::json!({"snapshot": "triggered"}))
            }
            AdminRequest::TransferLeadership { target } => {
                if !self.raft.is_leader() {
                    return Err(AdminError::Rejected(format!("this node is not the leader; ask {:?}", self.leader_node().map(|n| n.name))));
                }
                let id = raft_id(&self.cfg.cluster_id, &target);
                let voters: BTreeSet<u64> = self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
                if !voters.contains(&id) {
                    return Err(AdminError::Rejected(format!("{target} is not a voter of this cluster")));
                }
                self.raft.trigger().transfer_leader(id).await.map_err(|e| AdminError::Unavailable(e.to_string()))?;
                Ok(serde_json::json!({"transferring_to": target}))
            }
            AdminRequest::StepDown => {
                if !self.raft.is_leader() {
                    return Err(AdminError::Rejected("this node is not the leader".into()));
                }
                let me = raft_id(&self.cfg.cluster_id, &self.cfg.node_name);
                let m = self.raft.metrics().borrow_watched().clone();
                let target = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|id| *id != me)
                    .max_by_key(|id| m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index));
                let Some(target) = target else { return Err(AdminError::Rejected("no other voter to hand leadership to".into())) };
                self.raft.trigger().transfer_leader(target).await.map_err(|e| AdminError::Unavailable(e.to_string()))?;
                Ok(serde_json::json!({"transferring_to": self.name_of(target)}))
            }
            _ => Err(AdminError::NotSupported { mode: "raft" }),
        }
    }

    async fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.raft.shutdown().await;
        // The transport is the node's: it outlives this mode (see `Replicator::shutdown`).
        let (sm, wal) = (self.sm.clone(), self.wal.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = sm.checkpoint() {
                tracing::warn!(error = %e, "final checkpoint failed; the WAL still holds every entry");
            }
            let _ = wal.close();
        })
        .await;
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn config(election_ms: u64, heartbeat_ms: u64) -> RaftConfig {
        RaftConfig {
            cluster_id: "c".into(),
            node_name: "n1".into(),
            peers: vec![],
            advertise: "127.0.0.1:1".into(),
            bootstrap: false,
            force_new_cluster: false,
            role: RaftRole::Voter,
            election_timeout: Duration::from_millis(election_ms),
            heartbeat: Duration::from_millis(heartbeat_ms),
            max_append_entries: 64,
            snapshot_threshold: 100_000,
            trailing_logs: 10_240,
            snapshot_interval: Duration::from_secs(300),
            checkpoint_interval: Duration::from_millis(250),
            forward_writes: true,
            http_addr: None,
            data_dir: PathBuf::from("."),
            limits: Limits::default(),
            propose_hook: None,
        }
    }

    /// openraft campaigns after a silence of lease (= election_timeout_max) plus a draw from
    /// [min, max): that silence must lie in [T, 1.15 T] with a window to draw from, and the
    /// lease and the draw must both outlast a heartbeat, for every ratio the configuration
    /// accepts (heartbeat < T/2).
    #[test]
    fn a_follower_campaigns_after_a_silence_of_t_to_1_15_t() {
        for (t, hb) in [(1000, 100), (1000, 200), (1000, 499), (2000, 500), (5000, 100), (500, 100), (150, 30), (10_000, 2000)] {
            let c = config(t, hb).openraft_config().unwrap();
            let (min, max) = (c.election_timeout_min, c.election_timeout_max);
            let (earliest, latest) = (max + min, 2 * max);
            assert!(earliest >= t && latest <= t + t * 3 / 20 + 1, "T={t} hb={hb}: silence [{earliest}, {latest})");
            assert!(min > hb && max > min, "T={t} hb={hb}: min {min}, lease {max}");
        }
    }
}
