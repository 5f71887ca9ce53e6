//! `ha_standby`: a primary and a standby with WAL streaming, sync levels, heartbeats,
//! automatic failover, fencing by epoch, manual promote and switchover, and safe rejoin.
//!
//! Module map:
//! - [`messages`]: what the nodes and the witness say to each other (postcard over the
//!   cluster transport).
//! - [`epoch`]: epoch numbers carry their owner, so no two nodes start the same one; the one
//!   rule by which a message may raise a node's epoch.
//! - [`epochs`]: the epoch history that locates divergence; persisted in the WAL hard state.
//! - [`gate`]: the sync levels as a commit gate on the primary's write pipeline.
//! - `driver`: the main loop — the starting role, a heartbeat or fetch round, failover.
//! - `standby_checkpoint`: the standby's checkpoints, beside its fetch rounds.
//! - `handler`: what each cluster message does, and which sender may send it (a table).
//! - `stream`: the replication stream, both ends (serve and follow a fetch, append, apply,
//!   acknowledge, set a divergent tail aside).
//! - `heartbeat`: the primary asserting its epoch, its lease, recording the standby out of
//!   sync; answering fences.
//! - `primary_side`, `standby_side`: the state each role keeps (the core holds one of each;
//!   the rest of [`Core`] is what both roles share: config, epoch, WAL, state, role).
//! - `promotion`: who may become primary and how; starting the write pipeline.
//! - `switchover`, `forward`, `snapshot_transfer`: the planned role swap, writes reaching the
//!   standby, re-seeding a standby from a snapshot (HA's rules around the shared
//!   [`crate::forward`] and [`crate::snapshot_stream`]).
//! - `read_index`: `consistency=linearizable` reads on either node (HA's rounds, shared
//!   through [`crate::read_round`]).
//! - `witness_calls`: the ping and the vote a data node sends the witness.
//! - [`divergent`]: keeping a former primary's divergent tail in `DATA_DIR/divergent/`.
//! - [`witness`]: the tie-breaker process.
//!
//! Streaming is pull-based: the standby asks the primary for records after its last one
//! (`Fetch`), the primary answers when it has some or after a heartbeat interval with none
//! (so the fetch *is* the heartbeat), and the standby reports received / flushed / applied
//! positions in its next fetch and in one-way `Ack`s. Every message carries the sender's
//! epoch; a node that sees a higher epoch persists it and stops taking writes at once.

pub mod divergent;
pub mod epoch;
pub mod epochs;
pub mod gate;
pub mod messages;
mod driver;
mod standby_checkpoint;
mod forward;
mod handler;
mod heartbeat;
mod primary_side;
mod promotion;
mod read_index;
mod snapshot_transfer;
mod standby_side;
mod stream;
mod switchover;
pub mod witness;
mod witness_calls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_wal::{HardState, Wal};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::applied_wait::wait_for_applied;
use crate::command::Command;
use crate::pipeline::Pipeline;
use crate::replicator::{
    AdminError, AdminRequest, Committed, Health, LeaderHint, PeerInfo, ReadError, ReadRequest, ReplicationStatus,
    Replicator, SubmitError,
};
use crate::state_machine::StateMachine;
use crate::transport::Transport;
use divergent::DivergentTail;
use epochs::HaPersisted;
use gate::{SyncGate, SyncMode};

/// The transport name of the other data node (its real node id is learnt at the handshake).
pub const PEER: &str = "peer";
pub const WITNESS: &str = "witness";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfiguredRole {
    Primary,
    Standby,
}

#[derive(Clone, Debug)]
pub struct HaConfig {
    pub node_id: String,
    pub role: ConfiguredRole,
    pub peer_addr: String,
    pub witness_addr: Option<String>,
    pub sync_mode: SyncMode,
    pub heartbeat: Duration,
    pub failover_timeout: Duration,
    pub auto_failover: bool,
    pub batch_records: usize,
    pub sync_timeout: Duration,
    pub forward_writes: bool,
    /// Base URL clients are sent to when this node is primary (421 `Location`).
    pub http_addr: Option<String>,
    pub checkpoint_interval: Duration,
    pub data_dir: PathBuf,
    /// Records the primary keeps for a lagging standby before it must re-seed from a snapshot.
    pub wal_retention: u64,
    /// The limits a client command must respect; forwarded commands are checked against them.
    pub limits: crate::command::Limits,
    /// `HA_SYNC_STRICT`: a sync primary never acknowledges alone.
    pub sync_strict: bool,
    /// `HA_MAX_LAG_ON_FAILOVER`: records an async standby may be behind and still promote
    /// itself (`None`: unlimited).
    pub max_lag_on_failover: Option<u64>,
}

/// How a node became primary: decides whether its standby starts in sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Promotion {
    /// A standby took over: the old primary cannot have this epoch's writes (out of sync).
    Takeover,
    /// The primary of the last epoch, resuming: as it had recorded.
    Resume,
    /// A switchover: the old primary has everything (in sync).
    Handover,
}

pub(crate) enum Role {
    Primary { pipeline: Arc<Pipeline>, gate: Arc<SyncGate> },
    /// A primary handing over; new writes are refused until the standby has promoted, but
    /// the stream goes on so the standby can catch up.
    Switching { gate: Arc<SyncGate> },
    Standby,
}

/// State shared by the primary and standby halves.
pub struct Core {
    pub(crate) cfg: HaConfig,
    /// This node's epoch tag ([`epoch::tag_of`] its node id): the epochs it may start.
    pub(crate) tag: u64,
    /// Set when safety state could not be persisted: the node serves nothing any more.
    pub(crate) halted: Mutex<Option<String>>,
    /// Serializes saves of the epoch state.
    pub(crate) persist_lock: Mutex<()>,
    /// The other data node's id, as it names itself in its messages.
    pub(crate) peer_node_id: Mutex<Option<String>>,
    /// The other data node's HTTP base URL as it last announced it `(node id, url)`: in its
    /// fetches while it is standby, in its answers while it is primary. Kept after it goes
    /// silent, so a page can show it as down. Read-only for replication: only reported.
    pub(crate) peer_http: Mutex<Option<(String, String)>>,
    /// The highest epoch the witness refused a vote for: the next attempt goes above it.
    pub(crate) witness_epoch: AtomicU64,
    pub(crate) wal: Wal,
    pub(crate) sm: Arc<dyn StateMachine>,
    pub(crate) transport: OnceLock<Transport>,
    pub(crate) role: Mutex<Role>,
    /// Serializes epoch changes and role transitions.
    pub(crate) transition: tokio::sync::Mutex<()>,
    pub(crate) persisted: Mutex<HaPersisted>,
    pub(crate) leader: Mutex<Option<LeaderHint>>,
    pub(crate) applied_tx: watch::Sender<u64>,
    /// When the witness last answered (either role asks it: the primary for its lease, the
    /// standby for a vote).
    pub(crate) last_witness_contact: Mutex<Option<Instant>>,
    /// When the lagging side was last level (`replication_lag_seconds`).
    pub(crate) caught_up_at: Mutex<Instant>,
    pub(crate) leader_changes: AtomicU64,
    pub(crate) replication_bytes: AtomicU64,
    /// Divergent tails set aside in `DATA_DIR/divergent/` (health, UI).
    pub(crate) divergent: Mutex<Vec<DivergentTail>>,
    /// The replication state last logged (`primary`, `streaming`, `catching_up`, …).
    pub(crate) state_note: Mutex<String>,
    pub(crate) stopping: AtomicBool,
    /// What only the primary keeps (its standby, its stream): `primary_side.rs`.
    pub(crate) primary: primary_side::PrimarySide,
    /// What only the standby keeps (the primary it follows, held records): `standby_side.rs`.
    pub(crate) standby: standby_side::StandbySide,
}

pub struct HaStandby {
    core: Arc<Core>,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Core {
    pub(crate) fn epoch(&self) -> u64 {
        self.wal.hard_state().epoch
    }

    pub(crate) fn transport(&self) -> &Transport {
        self.transport.get().expect("transport is set before the node starts")
    }

    pub(crate) fn self_hint(&self) -> LeaderHint {
        LeaderHint { node_id: self.cfg.node_id.clone(), http_addr: self.cfg.http_addr.clone() }
    }

    /// Notes the peer's announced HTTP URL (see `peer_http`); this node's own is ignored.
    pub(crate) fn remember_peer_http(&self, node_id: &str, url: Option<&String>) {
        if let Some(url) = url.filter(|_| node_id != self.cfg.node_id && !node_id.is_empty()) {
            *self.peer_http.lock().unwrap() = Some((node_id.to_owned(), url.clone()));
        }
    }

    /// Why this primary's write path stopped (a WAL append or an apply failed: a full disk),
    /// if it did. Such a primary goes silent at once — no heartbeat, no fetch answered — so
    /// that its standby takes over after its failover timeout: it could only refuse writes,
    /// and its in-memory tail holds records it will never make durable, which a standby that
    /// kept fetching would be told to truncate again and again. The node then stops the mode
    /// and starts it again once the disk has room (the node's `resume.rs`).
    pub(crate) fn write_path_failure(&self) -> Option<String> {
        match &*self.role.lock().unwrap() {
            Role::Primary { pipeline, .. } => pipeline.failure(),
            _ => None,
        }
    }

    pub(crate) fn is_primary(&self) -> bool {
        matches!(*self.role.lock().unwrap(), Role::Primary { .. })
    }

    pub(crate) fn note(&self, s: &str) {
        let mut n = self.state_note.lock().unwrap();
        if *n != s {
            info!(state = s, "replication state");
            *n = s.to_owned();
        }
    }

    /// Changes what is persisted of the epoch state and saves it, raising the epoch to at
    /// least `epoch`, before anything acts on it. One read-modify-write under one lock, so
    /// concurrent changes (a history extension, an in-sync flag, an adoption) never lose each
    /// other, and the epoch never goes back whatever a caller read earlier. `change` gets the
    /// state and the current epoch and says whether it changed anything (nothing is saved if
    /// not). A node that cannot persist its epoch state must not act on it, nor go on as if
    /// it had: it halts.
    pub(crate) fn update_persisted(&self, epoch: u64, change: impl FnOnce(&mut HaPersisted, u64) -> bool) -> Result<(), String> {
        if let Some(why) = self.halted.lock().unwrap().clone() {
            return Err(why);
        }
        let _serial = self.persist_lock.lock().unwrap();
        let current = self.epoch();
        let mut p = self.persisted.lock().unwrap().clone();
        let changed = change(&mut p, current);
        let epoch = epoch.max(current);
        if !changed && epoch == current {
            return Ok(());
        }
        match self.wal.save_hard_state(&HardState { epoch, vote: p.encode() }) {
            Ok(()) => {
                *self.persisted.lock().unwrap() = p;
                Ok(())
            }
            Err(e) => Err(self.halt(format!("cannot persist epoch {} in the WAL hard state: {e}", epoch::display(epoch)))),
        }
    }

    /// Stops the node for good: no writes, no reads, health `unhealthy`. For safety state
    /// that could not be persisted — going on would break the epoch invariant.
    pub(crate) fn halt(&self, why: String) -> String {
        let mut h = self.halted.lock().unwrap();
        if h.is_none() {
            tracing::error!("{why}; this node stops serving (restart it once the cause is fixed)");
            *h = Some(why.clone());
            self.stopping.store(true, Ordering::SeqCst);
            if let Role::Primary { gate, .. } | Role::Switching { gate } = &*self.role.lock().unwrap() {
                gate.pause(Some(why.clone()));
            }
        }
        why
    }

    /// The peer names itself in its messages. Two nodes with one name — or whose names share
    /// an epoch tag (1 in 65,535) — could start the same epoch, which breaks the invariant in
    /// [`epoch`]: a configuration error this node refuses to run with.
    pub(crate) fn check_peer_id(&self, peer: &str) {
        if peer.is_empty() || self.halted.lock().unwrap().is_some() {
            return;
        }
        if peer == self.cfg.node_id {
            self.halt(format!("the peer has this node's id {peer:?}: every node needs its own MERIDIAN_CLUSTER_NODE_ID"));
        } else if epoch::tag_of(peer) == self.tag {
            self.halt(format!(
                "node ids {peer:?} and {:?} share an epoch tag, so their epochs could collide: rename one (MERIDIAN_CLUSTER_NODE_ID)",
                self.cfg.node_id
            ));
        } else {
            *self.peer_node_id.lock().unwrap() = Some(peer.to_owned());
        }
    }

    /// The two data nodes should agree on the failover timeout (the standby's decides when it
    /// takes over, this node's sets its lease): a difference is reported, once in the log and
    /// for as long as it lasts in `/health`.
    pub(crate) fn check_peer_failover_timeout(&self, peer_ms: u64) {
        let mine = self.cfg.failover_timeout.as_millis() as u64;
        let mut m = self.primary.peer_timeout_mismatch.lock().unwrap();
        let now = (peer_ms != mine).then_some(peer_ms);
        if now.is_some() && *m != now {
            warn!(this_node_ms = mine, standby_ms = peer_ms, "MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT differs between the data nodes; set the same value on both (and the witness)");
        }
        *m = now;
    }

    /// The one rule for a higher epoch heard from another node (`from` names it, for the
    /// log): checked ([`epoch::check_raise`]), persisted, then this node stops taking
    /// writes. Returns whether this node's epoch is now `claimed`.
    pub(crate) async fn adopt_epoch(self: &Arc<Self>, claimed: u64, leader: Option<LeaderHint>, from: &str) -> bool {
        let mine = self.epoch();
        if claimed <= mine {
            return claimed == mine;
        }
        if let Err(e) = epoch::check_raise(mine, claimed, self.tag) {
            warn!(from, "{e}");
            return false;
        }
        self.step_down(claimed, leader).await;
        self.epoch() == claimed
    }

    /// A higher epoch exists: persist it and stop taking writes at once. Writes waiting for
    /// the standby fail with `fenced`; the node then follows the new primary.
    async fn step_down(self: &Arc<Self>, epoch: u64, leader: Option<LeaderHint>) {
        let _t = self.transition.lock().await;
        if epoch <= self.epoch() {
            return;
        }
        // On failure the node halts (which also stops the gate); refusing writes is all
        // that is left to do below.
        let _ = self.update_persisted(epoch, |p, _| {
            p.owner = false;
            p.in_sync = false;
            p.peer_in_sync = false;
            true
        });
        let old = std::mem::replace(&mut *self.role.lock().unwrap(), Role::Standby);
        *self.leader.lock().unwrap() = leader.clone();
        if let Role::Switching { gate } = &old {
            gate.fence(epoch, leader.clone());
        }
        if let Role::Primary { pipeline, gate } = old {
            warn!(epoch = %epoch::display(epoch), new_primary = ?leader.as_ref().map(|l| &l.node_id), "fenced: a higher epoch exists; this node stops taking writes and follows");
            gate.fence(epoch, leader);
            let _ = tokio::task::spawn_blocking(move || pipeline.stop_blocking()).await;
            self.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        self.note("fenced");
    }
}

/// Why an HA node cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HaStartError {
    /// The epoch state in the WAL hard state does not decode: refuse, as the WAL refuses a
    /// damaged record, rather than start with no epoch history.
    #[error("the HA epoch state in the WAL hard state ({path}) is damaged: {reason}; restore this node from a backup or re-seed it (empty its data directory) and let it rejoin as standby")]
    DamagedEpochState { path: String, reason: String },
}

impl HaStandby {
    /// Builds the HA node. Call [`HaStandby::handler`] to serve the transport, then
    /// [`HaStandby::start`] once the transport is up.
    pub fn new(cfg: HaConfig, wal: Wal, sm: Arc<dyn StateMachine>) -> Result<Arc<HaStandby>, HaStartError> {
        let persisted = HaPersisted::decode(&wal.hard_state().vote).map_err(|reason| HaStartError::DamagedEpochState {
            path: cfg.data_dir.join("wal").display().to_string(),
            reason,
        })?;
        let divergent = divergent::list(&cfg.data_dir.join("divergent"));
        // Snapshot files are only for a catch-up in progress; one cut short by a restart is
        // useless (the standby asks again).
        let _ = std::fs::remove_dir_all(cfg.data_dir.join("snapshots"));
        let snapshots = crate::snapshot_stream::Outgoing::new(cfg.data_dir.join("snapshots"));
        let (applied_tx, _) = watch::channel(sm.applied_index());
        let core = Arc::new(Core {
            tag: epoch::tag_of(&cfg.node_id),
            halted: Mutex::new(None),
            persist_lock: Mutex::new(()),
            peer_node_id: Mutex::new(None),
            peer_http: Mutex::new(None),
            witness_epoch: AtomicU64::new(0),
            cfg,
            wal,
            sm,
            transport: OnceLock::new(),
            role: Mutex::new(Role::Standby),
            transition: tokio::sync::Mutex::new(()),
            persisted: Mutex::new(persisted),
            leader: Mutex::new(None),
            applied_tx,
            last_witness_contact: Mutex::new(None),
            caught_up_at: Mutex::new(Instant::now()),
            leader_changes: AtomicU64::new(0),
            replication_bytes: AtomicU64::new(0),
            divergent: Mutex::new(divergent),
            state_note: Mutex::new("starting".into()),
            stopping: AtomicBool::new(false),
            primary: primary_side::PrimarySide::new(snapshots),
            standby: standby_side::StandbySide::new(),
        });
        Ok(Arc::new(HaStandby { core, driver: Mutex::new(None) }))
    }

    pub fn handler(&self) -> Arc<dyn crate::transport::Handler> {
        Arc::new(handler::HaHandler { core: self.core.clone() })
    }

    /// Decides the starting role (see `driver::decide_role`) and runs the node.
    pub fn start(&self, transport: Transport) {
        transport.add_peer_alias(PEER.into(), self.core.cfg.peer_addr.clone());
        if let Some(w) = &self.core.cfg.witness_addr {
            transport.add_peer_alias(WITNESS.into(), w.clone());
        }
        let _ = self.core.transport.set(transport);
        let core = self.core.clone();
        *self.driver.lock().unwrap() = Some(tokio::spawn(async move { driver::drive(core).await }));
    }
}

#[async_trait]
impl Replicator for HaStandby {
    fn mode(&self) -> &'static str {
        "ha_standby"
    }

    async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError> {
        if let Some(why) = self.core.halted.lock().unwrap().clone() {
            return Err(SubmitError::Unavailable(format!("this node has halted: {why}")));
        }
        let pipeline = match &*self.core.role.lock().unwrap() {
            Role::Primary { pipeline, .. } => Some(pipeline.clone()),
            Role::Switching { .. } => return Err(SubmitError::Unavailable("switchover in progress; retry shortly".into())),
            Role::Standby => None,
        };
        match pipeline {
            Some(p) => p.submit(cmd).await,
            None => forward::forward(&self.core, cmd).await,
        }
    }

    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError> {
        if let Some(why) = self.core.halted.lock().unwrap().clone() {
            return Err(ReadError::Unavailable(format!("this node has halted: {why}")));
        }
        // Reads are served locally on either node by default (`local`); a bookmark makes
        // the read wait until this node has applied the writer's position, and
        // `linearizable` until no newer primary can exist (see `read_index`).
        if req.consistency == Some(crate::replicator::Consistency::Linearizable) {
            read_index::linearizable_fence(&self.core, req.wait).await?;
        }
        if let Some(b) = req.bookmark {
            // A bookmark is a position in one history: (epoch, index), not an index alone.
            // Wait for its epoch, then for its index, then check this node's history has
            // that epoch there — a node serves only state it knows is agreed.
            let deadline = Instant::now() + req.wait;
            while self.core.epoch() < b.epoch {
                if Instant::now() >= deadline {
                    return Err(ReadError::BookmarkTimeout { wanted: b.index, applied: self.core.sm.applied_index(), waited: req.wait });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut rx = self.core.applied_tx.subscribe();
            wait_for_applied(&mut rx, b.index, deadline.saturating_duration_since(Instant::now())).await?;
            let history = self.core.persisted.lock().unwrap().history.clone();
            let covered = history.starts.first().is_some_and(|(_, first)| *first <= b.index);
            let here = history.epoch_at(b.index);
            if covered && here != b.epoch {
                return Err(ReadError::UnknownBookmark(format!(
                    "the bookmark names epoch {} at index {}, but this node's history has epoch {} there: the position is not in the agreed history",
                    epoch::display(b.epoch),
                    b.index,
                    epoch::display(here)
                )));
            }
        }
        Ok(())
    }

    fn status(&self) -> ReplicationStatus {
        self.core.status()
    }

    fn peer_http_addrs(&self) -> Vec<(String, Option<String>)> {
        if let Some((id, url)) = self.core.peer_http.lock().unwrap().clone() {
            return vec![(id, Some(url))];
        }
        // A peer that announces no URL (HTTP bound to 0.0.0.0 without an advertised address).
        self.core.peer_node_id.lock().unwrap().iter().map(|id| (id.clone(), None)).collect()
    }

    fn storage_failure(&self) -> Option<String> {
        self.core.write_path_failure()
    }

    fn divergent_tails(&self) -> Vec<crate::replicator::DivergentTailInfo> {
        let tails = self.core.divergent.lock().unwrap();
        tails.iter().map(|d| crate::replicator::DivergentTailInfo { file: d.file.clone(), after_index: d.after_index, records: d.records }).collect()
    }

    async fn admin(&self, req: AdminRequest) -> Result<serde_json::Value, AdminError> {
        match req {
            AdminRequest::Promote { force } => promotion::manual_promote(&self.core, force).await,
            AdminRequest::Switchover => switchover::switchover(&self.core).await,
            AdminRequest::ClusterStatus => Ok(serde_json::to_value(self.core.status()).unwrap_or_default()),
            AdminRequest::ReplicationLag => Ok(self.core.lag()),
            AdminRequest::ReleaseStandby => heartbeat::release_standby(&self.core).await,
            _ => Err(AdminError::NotSupported { mode: "ha_standby" }),
        }
    }

    async fn shutdown(&self) {
        self.core.stopping.store(true, Ordering::SeqCst);
        if let Some(d) = self.driver.lock().unwrap().take() {
            d.abort();
        }
        // A standby checkpoint runs beside the driver: it ends before the WAL closes.
        standby_checkpoint::wait(&self.core).await;
        let old = std::mem::replace(&mut *self.core.role.lock().unwrap(), Role::Standby);
        let wal = self.core.wal.clone();
        let sm = self.core.sm.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Role::Primary { pipeline, gate } = old {
                gate.pause(Some("shutting down".into()));
                pipeline.stop_blocking();
            }
            let _ = sm.checkpoint();
            let _ = wal.close();
        })
        .await;
        // The transport is the node's: it outlives this mode (see `Replicator::shutdown`).
    }
}

impl Core {
    fn status(&self) -> ReplicationStatus {
        let role_name;
        let mut notes = Vec::new();
        let mut health = Health::Healthy;
        let now = Instant::now();
        let failover = self.cfg.failover_timeout;
        match &*self.role.lock().unwrap() {
            Role::Primary { pipeline, gate } => {
                role_name = "primary";
                notes.extend(gate.degraded());
                if let Some(f) = pipeline.failure() {
                    notes.push(f);
                    health = Health::Unhealthy;
                }
                let standby_ok = self.primary.last_standby_contact.lock().unwrap().is_some_and(|t| now - t < failover);
                if !standby_ok {
                    notes.push("the standby is not connected".into());
                }
                if let Some(ms) = *self.primary.peer_timeout_mismatch.lock().unwrap() {
                    notes.push(format!(
                        "MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT differs: the standby has {ms} ms, this node {} ms",
                        self.cfg.failover_timeout.as_millis()
                    ));
                }
            }
            Role::Switching { .. } => {
                role_name = "primary";
                notes.push("switchover in progress".into());
            }
            Role::Standby => {
                role_name = "standby";
                let since = now - *self.standby.last_primary_contact.lock().unwrap();
                if since > self.cfg.heartbeat * 3 {
                    notes.push(format!("no contact with the primary for {:.1}s", since.as_secs_f64()));
                }
            }
        }
        if let Some(why) = self.halted.lock().unwrap().clone() {
            notes.push(format!("halted: {why}"));
            health = Health::Unhealthy;
        }
        if health == Health::Healthy && !notes.is_empty() {
            health = Health::Degraded;
        }
        let divergent = self.divergent.lock().unwrap().clone();
        for d in &divergent {
            notes.push(format!("divergent tail of {} record(s) after index {} kept in {}", d.records, d.after_index, d.file));
        }
        let is_primary = role_name == "primary";
        let peer_healthy = if is_primary {
            self.primary.last_standby_contact.lock().unwrap().is_some_and(|t| now - t < self.cfg.heartbeat * 3)
        } else {
            now - *self.standby.last_primary_contact.lock().unwrap() < self.cfg.heartbeat * 3
        };
        let mut peers = vec![PeerInfo { id: PEER.into(), address: self.cfg.peer_addr.clone(), healthy: peer_healthy, lag_entries: None }];
        if let Some(w) = &self.cfg.witness_addr {
            let ok = self.last_witness_contact.lock().unwrap().is_some_and(|t| now - t < self.cfg.heartbeat * 3);
            peers.push(PeerInfo { id: WITNESS.into(), address: w.clone(), healthy: ok, lag_entries: None });
        }
        ReplicationStatus {
            mode: "ha_standby",
            node_id: self.cfg.node_id.clone(),
            role: role_name.into(),
            is_leader: is_primary,
            state: self.state_note.lock().unwrap().clone(),
            commit_index: if is_primary { self.wal.durable_index() } else { self.standby.primary_last_index.load(Ordering::Relaxed).max(self.wal.durable_index()) },
            applied_index: self.sm.applied_index(),
            epoch: self.epoch(),
            peers,
            health,
            lag_seconds: self.lag_seconds(),
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            replication_bytes: self.replication_bytes.load(Ordering::Relaxed),
            notes,
        }
    }

    pub(crate) fn lag_seconds(&self) -> f64 {
        let (applied, target) = if self.is_primary() {
            (self.primary.standby_positions.lock().unwrap().applied, self.wal.last_index())
        } else {
            (self.sm.applied_index(), self.standby.primary_last_index.load(Ordering::Relaxed))
        };
        let mut at = self.caught_up_at.lock().unwrap();
        if applied >= target {
            *at = Instant::now();
            0.0
        } else {
            at.elapsed().as_secs_f64()
        }
    }

    /// Bytes of `records` WAL records, estimated from the average record size held locally.
    fn bytes_of(&self, records: u64) -> u64 {
        let pos = self.wal.position();
        let held = pos.last_index.saturating_sub(pos.first_index) + 1;
        pos.total_bytes / held.max(1) * records
    }

    fn lag(&self) -> serde_json::Value {
        let seconds = self.lag_seconds();
        if self.is_primary() {
            let p = *self.primary.standby_positions.lock().unwrap();
            let last = self.wal.last_index();
            serde_json::json!({
                "role": "primary", "last_index": last, "standby": p,
                "standby_in_sync": self.persisted.lock().unwrap().peer_in_sync && self.gate().is_some_and(|g| g.in_sync()),
                "records": last.saturating_sub(p.applied),
                "bytes": self.bytes_of(last.saturating_sub(p.applied)),
                "seconds": seconds,
            })
        } else {
            let target = self.standby.primary_last_index.load(Ordering::Relaxed);
            let applied = self.sm.applied_index();
            serde_json::json!({
                "role": "standby", "primary_last_index": target, "applied_index": applied,
                "in_sync": self.persisted.lock().unwrap().in_sync,
                "records": target.saturating_sub(applied), "bytes": self.bytes_of(target.saturating_sub(applied)), "seconds": seconds,
            })
        }
    }
}

