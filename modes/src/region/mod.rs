//! The `multi_region` mode: a Raft group per region, and asynchronous last-write-wins
//! replication between regions.
//!
//! Module map:
//! - [`hlc`]: the hybrid logical clock whose readings stamp every write.
//! - [`observe`]: the state machine wrapper that moves the clock past every applied stamp
//!   and, while this node ships, records what each applied entry touched in the [`feed`]; it
//!   also marks the applies that may change the primary record for [`primary`].
//! - [`messages`]: the Region message family (a batch of versions and its answer).
//! - [`primary`]: the primary record as of the applied state, read again only after an apply
//!   or install that may have changed it.
//! - [`shipper`]: one [`shipper::Link`] per remote region: reads committed entries, ships the
//!   versions this region wrote, resumes from the remote's high-water mark.
//! - [`collect`]: the region leader's tombstone collector.
//! - this file: [`MultiRegion`], the [`Replicator`] (write routing, status) and the receiving
//!   side ([`RegionHandler`]).
//!
//! ## The data each region holds, and why regions converge
//!
//! Inside a region everything is the `raft` mode: a write is committed by the region's
//! majority, reads are linearizable through its leader. On top of it, every client write is
//! proposed as [`Command::Stamped`]: the leader stamps it with (hybrid clock, region) as it
//! proposes (the proposal hook given to [`RaftNode`]), and applying it writes that stamp with
//! each version, a delete leaving a tombstone. Versions from another region arrive as a
//! [`Command::RegionBatch`], proposed through the receiving region's own Raft log (so all its
//! nodes apply the same merge at the same position) and merged key by key: the higher
//! (hlc, region) wins ([`crate::apply::wins`]). Merging is a maximum per key, so every region
//! reaches the same state whatever the order batches arrive in, and however often; the
//! property test `modes/tests/lww_convergence.rs` checks exactly that.
//!
//! Invariant: **a region ships only what its majority agreed** (positions at or below the
//! leader's applied index), and **a high-water mark moves only in the receiver's replicated
//! state, in the same entry as the versions it covers** — so neither a leader change on
//! either side nor a crash can make a mark claim versions that are not there.
//!
//! ## What `revision` and conditional writes mean here
//!
//! `revision` is this region's log position, as in `raft`; a version shipped in gets the
//! position of the batch that brought it. Regions' revisions are unrelated numbers.
//! `if_revision` and `/v1/txn` compare against this region's state: with
//! `CLUSTER_REGION_WRITES=primary` only the primary region takes writes, so they mean what
//! they do in `raft`. With `active_active` two regions could each pass a compare the other
//! would fail, so they are refused (400) rather than silently weakened.

pub mod collect;
pub mod feed;
pub mod hlc;
pub mod messages;
pub mod observe;
pub mod primary;
pub mod shipper;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use meridian_wal::Wal;

use crate::command::{Command, Outcome, PrimaryRecord, Stamp};
use crate::raft::RaftNode;
use crate::replicator::{AdminError, AdminRequest, Committed, PeerInfo, ReadError, ReadRequest, ReplicationStatus, Replicator, SubmitError};
use crate::state_machine::StateMachine;
use crate::transport::{Handler, NodeId, RemoteError, Transport};
use crate::wire::{decode, encode};
use hlc::Hlc;
use messages::{ShipReply, ShipRequest, SHIP};
use shipper::Link;

/// Which regions take writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionWrites {
    /// Only the primary region; the others answer `read_only` naming it.
    Primary,
    /// Every region, locally; conditional writes are refused.
    ActiveActive,
}

#[derive(Clone, Debug)]
pub struct RegionConfig {
    /// This region's name (`CLUSTER_REGION_ID`).
    pub region: String,
    /// The other regions as `(name, cluster address)`, an address per listed node.
    pub remotes: Vec<(String, String)>,
    pub primary_region: Option<String>,
    pub writes: RegionWrites,
    /// `MERIDIAN_FORWARD_WRITES`: a region that does not take writes relays them to the
    /// primary region (true) or answers `403 read_only` naming it (false).
    pub forward_writes: bool,
    /// How often the region leader collects tombstones (zero: never).
    pub tombstone_gc_interval: std::time::Duration,
    /// `CLUSTER_CONFLICT_STRATEGY=manual`: concurrent versions are kept as conflicts for an
    /// operator to settle ([`crate::conflicts`]); last-write-wins still decides what the key
    /// holds meanwhile.
    pub keep_conflicts: bool,
}

impl RegionConfig {
    fn remote_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.remotes.iter().map(|(r, _)| r.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The proposal hook for this region's [`RaftNode`]: every client command the leader
/// proposes is stamped here, on the leader, with its clock.
/// With `semi_sync`, a stamped write is acknowledged only once a remote region's mark has
/// passed it (see [`SemiSync`]).
pub fn stamper(region: String, hlc: Arc<Hlc>, semi_sync: Option<Arc<SemiSync>>) -> crate::raft::ProposeHook {
    let hook = crate::raft::ProposeHook::new(move |cmd| match cmd {
        c @ (Command::Put { .. } | Command::Delete { .. } | Command::Txn(_)) => {
            (Command::Stamped { stamp: Stamp { hlc: hlc.now(), region: region.clone() }, command: Box::new(c) }, true)
        }
        other => (other, false),
    });
    match semi_sync {
        Some(s) => hook.with_confirm(Arc::new(move |position| {
            let s = s.clone();
            Box::pin(async move { s.wait(position).await })
        })),
        None => hook,
    }
}

/// `CLUSTER_CROSS_REGION_MODE=semi_sync`: a write committed in this region is acknowledged
/// once at least one remote region has merged it through its own Raft majority (its mark for
/// this region has reached the write's position), or answered 504 after [`SemiSync::TIMEOUT`]
/// — committed here, not confirmed elsewhere, like any timeout an ambiguous outcome.
#[derive(Default)]
pub struct SemiSync {
    marks: OnceLock<Vec<tokio::sync::watch::Receiver<u64>>>,
}

impl SemiSync {
    pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    async fn wait(&self, position: u64) -> Result<(), SubmitError> {
        let Some(marks) = self.marks.get() else { return Err(SubmitError::Unavailable("the region links are starting".into())) };
        let any = futures_util::future::select_ok(marks.iter().cloned().map(|mut rx| {
            Box::pin(async move { rx.wait_for(|m| *m >= position).await.map(|_| ()).map_err(|_| ()) })
        }));
        match tokio::time::timeout(Self::TIMEOUT, any).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(SubmitError::Timeout(format!(
                "committed in this region at position {position}, but no remote region confirmed it within {:?} (CLUSTER_CROSS_REGION_MODE=semi_sync)",
                Self::TIMEOUT
            ))),
        }
    }
}

pub struct MultiRegion {
    cfg: RegionConfig,
    raft: Arc<RaftNode>,
    sm: Arc<dyn StateMachine>,
    hlc: Arc<Hlc>,
    links: Vec<Arc<Link>>,
    primary_view: Arc<primary::PrimaryView>,
    collector: Arc<collect::Collector>,
    transport: Transport,
    stopped: Arc<AtomicBool>,
    /// Versions merged here that their region wrote after it was demoted.
    demoted_writes: AtomicU64,
    /// Per origin: merges one at a time, and the highest mark this node saw merged.
    order: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<u64>>>>,
}

impl MultiRegion {
    /// Starts a shipping link per remote region and serves the Region family through
    /// `handler` (registered with `transport` before the node started).
    #[allow(clippy::too_many_arguments)] // the parts the node built for this mode, each once
    pub fn start(
        cfg: RegionConfig,
        raft: Arc<RaftNode>,
        sm: Arc<dyn StateMachine>,
        wal: Wal,
        transport: Transport,
        hlc: Arc<Hlc>,
        feed: Arc<feed::Feed>,
        primary: Arc<primary::PrimaryView>,
        handler: &RegionHandler,
        semi_sync: Option<Arc<SemiSync>>,
    ) -> Arc<MultiRegion> {
        let stopped = Arc::new(AtomicBool::new(false));
        let links: Vec<Arc<Link>> = cfg
            .remote_names()
            .iter()
            .map(|r| {
                let addrs: Vec<String> = cfg.remotes.iter().filter(|(n, _)| n == r).map(|(_, a)| a.clone()).collect();
                Link::new(&transport, &cfg.region, r, &addrs, primary.clone(), feed.clone())
            })
            .collect();
        for link in &links {
            let stop = stopped.clone();
            tokio::spawn(link.clone().run(transport.clone(), wal.clone(), sm.clone(), raft.clone(), move || stop.load(Ordering::Relaxed)));
        }
        let collector = Arc::new(collect::Collector::new(cfg.region.clone(), hlc.clone(), cfg.remote_names(), links.clone(), sm.clone(), raft.clone()));
        if !cfg.tombstone_gc_interval.is_zero() {
            let stop = stopped.clone();
            tokio::spawn(collector.clone().run(cfg.tombstone_gc_interval, move || stop.load(Ordering::Relaxed)));
        }
        let transport = transport.clone();
        if let Some(s) = semi_sync {
            let _ = s.marks.set(links.iter().map(|l| l.acked()).collect());
        }
        let node = Arc::new(MultiRegion { cfg, raft, sm, hlc, links, primary_view: primary, collector, transport, stopped, demoted_writes: AtomicU64::new(0), order: Default::default() });
        let _ = handler.node.set(Arc::downgrade(&node));
        node
    }

    /// Merges a batch from another region through this region's Raft log.
    async fn receive(&self, req: ShipRequest) -> ShipReply {
        let refused = |code: &str, message: String| ShipReply::Refused { code: code.into(), message };
        if !self.cfg.remotes.iter().any(|(r, _)| *r == req.origin) {
            return refused(
                "unknown_region",
                format!("region {:?} is not in this node's MERIDIAN_CLUSTER_REMOTE_REGIONS (this is region {})", req.origin, self.cfg.region),
            );
        }
        // One batch per origin at a time, in the order the origin sent them: a batch that
        // continues from a position this region has not merged yet waits a moment for the
        // one before it, and is refused (the origin resumes from the mark) if it never comes.
        let order = self.order.lock().unwrap().entry(req.origin.clone()).or_default().clone();
        let mut merged = order.lock().await;
        if req.after > 0 {
            // Long enough for the batch before it to be forwarded to this region's leader and
            // committed, even right after an election.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let held = (*merged).max(self.high_water(&req.origin));
                if req.after <= held {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return refused("out_of_order", format!("batch from {} continues from {} but this region holds up to {held}", req.origin, req.after));
                }
                drop(merged);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                merged = order.lock().await;
            }
        }
        self.report_demoted_writes(&req);
        let cmd = Command::RegionBatch { origin: req.origin, through: req.through, clock: req.clock, writes: req.writes, primary: req.primary, keep_conflicts: self.cfg.keep_conflicts };
        if let Err(e) = cmd.validate(&self.raft.limits()) {
            return refused(e.code(), e.to_string());
        }
        match self.raft.submit(cmd).await {
            Ok(Committed { result, .. }) => match result.outcome {
                Outcome::RegionMerged { high_water, .. } => {
                    *merged = (*merged).max(high_water);
                    ShipReply::Merged { high_water, primary: self.primary_view.get() }
                }
                other => refused("internal", format!("a region batch applied as {other:?}")),
            },
            Err(e) => refused("unavailable", e.to_string()),
        }
    }

    /// This node's applied mark for `origin`.
    fn high_water(&self, origin: &str) -> u64 {
        collect::read_u64(&*self.sm, &crate::apply::high_water_key(origin))
    }

    fn region_status(&self) -> serde_json::Value {
        let applied = self.sm.applied_index();
        let raft = self.raft.status();
        let primary = self.primary();
        serde_json::json!({
            "region": self.cfg.region,
            "primary_region": primary.as_ref().map(|p| &p.region),
            "region_epoch": primary.as_ref().map(|p| p.epoch),
            "demoted_writes_merged": self.demoted_writes.load(Ordering::Relaxed),
            "writes": match self.cfg.writes { RegionWrites::Primary => "primary", RegionWrites::ActiveActive => "active_active" },
            "takes_writes": self.takes_writes().is_ok(),
            "node_id": raft.node_id,
            "is_region_leader": raft.is_leader,
            "applied_index": applied,
            "hlc": self.hlc.last(),
            "remotes": self.links.iter().map(|l| l.status(applied)).collect::<Vec<_>>(),
            // What this region has merged from each other region: that region's log position.
            "received": self.cfg.remote_names().iter().map(|r| (r.clone(), serde_json::json!(self.high_water(r)))).collect::<serde_json::Map<_, _>>(),
            // Tombstones stamped below `horizon` were collected; the next collection may go up
            // to `next_horizon` (see `collect`).
            "tombstones": {
                "horizon": self.collector.horizon(),
                "next_horizon": self.collector.next_horizon(),
                "collected": self.collector.collected.load(Ordering::Relaxed),
            },
        })
    }

    /// Takes the write in this region, or relays it to the primary region when this one
    /// does not take writes and `forward` allows it (a relayed write is never relayed again).
    async fn submit_here_or_forward(&self, cmd: Command, forward: bool) -> Result<Committed, SubmitError> {
        if let Err(e) = self.takes_writes() {
            return match self.primary() {
                Some(p) if forward => self.forward_to(&p.region, cmd).await,
                _ => Err(e),
            };
        }
        if self.cfg.writes == RegionWrites::ActiveActive && conditional(&cmd) {
            return Err(SubmitError::Refused(
                "if_revision and /v1/txn are not available with MERIDIAN_CLUSTER_REGION_WRITES=active_active: two regions could both pass the same compare; use CLUSTER_REGION_WRITES=primary for conditional writes".into(),
            ));
        }
        self.raft.submit(cmd).await
    }

    /// Relays a write to a node of `region` (any listed one that answers; it forwards to its
    /// leader). The answer's bookmark names a position in *that* region's log, which means
    /// nothing here: the client gets this node's applied position instead, so a bookmark read
    /// here never waits for a position this region will not reach — and does not promise to
    /// see the write either (it arrives with the primary region's next batch).
    async fn forward_to(&self, region: &str, cmd: Command) -> Result<Committed, SubmitError> {
        let Some(link) = self.links.iter().find(|l| l.region == region) else {
            return Err(SubmitError::ReadOnly(format!("the primary region {region} is not in MERIDIAN_CLUSTER_REMOTE_REGIONS")));
        };
        let req = crate::forward::ForwardRequest { epoch: 0, command: cmd };
        let mut last = None;
        for peer in link.peers() {
            match crate::forward::forward(&self.transport, peer, messages::FORWARD, &req, std::time::Duration::from_secs(30)).await {
                Err(e @ SubmitError::Unavailable(_)) => last = Some(e),
                Ok(mut c) => {
                    c.bookmark = crate::bookmark::Bookmark { epoch: self.raft.status().epoch, index: self.sm.applied_index() };
                    return Ok(c);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| SubmitError::Unavailable(format!("no node of the primary region {region} answered"))))
    }

    /// The primary record in force: the replicated one, else epoch 0 from the configuration.
    fn primary(&self) -> Option<PrimaryRecord> {
        self.primary_view.get().or_else(|| self.cfg.primary_region.clone().map(|region| PrimaryRecord { epoch: 0, region, hlc: 0 }))
    }

    fn takes_writes(&self) -> Result<(), SubmitError> {
        if self.cfg.writes == RegionWrites::ActiveActive {
            return Ok(());
        }
        match self.primary() {
            Some(p) if p.region != self.cfg.region => Err(SubmitError::ReadOnly(format!(
                "region {} does not take writes: the primary region is {} (region epoch {}); write there",
                self.cfg.region, p.region, p.epoch
            ))),
            _ => Ok(()),
        }
    }

    /// Versions a region wrote after another region was promoted over it (it had not heard
    /// yet: cut off, or async lag). Last-write-wins still decides them like any other; they
    /// are named here so that no such write disappears without a word.
    fn report_demoted_writes(&self, req: &ShipRequest) {
        let Some(p) = self.primary().filter(|p| p.epoch > 0 && p.region != req.origin) else { return };
        let late: Vec<&str> = req
            .writes
            .iter()
            .filter(|w| w.stamp.as_ref().is_some_and(|s| s.region == req.origin && s.hlc > p.hlc))
            .map(|w| w.key.as_str())
            .collect();
        if !late.is_empty() {
            self.demoted_writes.fetch_add(late.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                origin = %req.origin,
                primary = %p.region,
                region_epoch = p.epoch,
                versions = late.len(),
                keys = ?&late[..late.len().min(10)],
                "versions written in a region after it was no longer primary; merged by last-write-wins"
            );
        }
    }

    /// `POST /admin/region/promote`: makes this region the primary, in three steps (the seed
    /// guide's): a leader in this region commits the new record (a higher region epoch), this
    /// region takes writes from then on, and every shipping link carries the record to the
    /// other regions, whose old primary stops taking writes once it has it.
    async fn promote(&self) -> Result<serde_json::Value, AdminError> {
        if self.cfg.writes == RegionWrites::ActiveActive {
            return Err(AdminError::Rejected("every region takes writes with MERIDIAN_CLUSTER_REGION_WRITES=active_active; there is no primary to promote".into()));
        }
        let current = self.primary();
        if current.as_ref().is_some_and(|p| p.region == self.cfg.region) {
            let p = current.unwrap();
            return Ok(serde_json::json!({"primary_region": p.region, "region_epoch": p.epoch, "changed": false}));
        }
        let record = PrimaryRecord { epoch: current.map_or(0, |p| p.epoch) + 1, region: self.cfg.region.clone(), hlc: self.hlc.now() };
        self.raft.submit(Command::SetPrimary(record.clone())).await.map_err(|e| AdminError::Unavailable(format!("the promotion was not committed in this region: {e}")))?;
        tracing::warn!(region = %record.region, region_epoch = record.epoch, "this region is now the primary region");
        Ok(serde_json::json!({"primary_region": record.region, "region_epoch": record.epoch, "changed": true}))
    }
}

impl MultiRegion {
    fn require_manual(&self) -> Result<(), AdminError> {
        if self.cfg.keep_conflicts {
            return Ok(());
        }
        Err(AdminError::Rejected(
            "conflicts are kept only with MERIDIAN_CLUSTER_CONFLICT_STRATEGY=manual; with last_write_wins the higher stamp decides and nothing is kept".into(),
        ))
    }

    /// `GET /admin/conflicts`: the conflicts this node's region holds, each with every
    /// version in it and the version the key holds now.
    fn conflicts(&self) -> Result<serde_json::Value, AdminError> {
        use base64::Engine as _;
        self.require_manual()?;
        const LIMIT: usize = 1000;
        let records = self.sm.list_versions(&crate::conflicts::record_prefix(), None, LIMIT + 1).map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let version = |v: &crate::command::KeyValue| {
            serde_json::json!({
                "region": v.stamp.as_ref().map(|s| &s.region),
                "hlc": v.stamp.as_ref().map(|s| s.hlc),
                "deleted": v.tombstone,
                "value_b64": (!v.tombstone).then(|| b64.encode(&v.value)),
            })
        };
        let list: Vec<serde_json::Value> = records
            .iter()
            .take(LIMIT)
            .filter_map(|r| {
                let key = crate::conflicts::key_of_record(&r.key)?;
                let versions = crate::conflicts::decode(&r.value)?;
                let current = self.sm.get_version(key).ok().flatten();
                Some(serde_json::json!({
                    "id": crate::conflicts::id_of(key),
                    "key": key,
                    "versions": versions.iter().map(version).collect::<Vec<_>>(),
                    "current": current.as_ref().map(version),
                }))
            })
            .collect();
        Ok(serde_json::json!({"region": self.cfg.region, "conflicts": list, "truncated": records.len() > LIMIT}))
    }

    /// `POST /admin/conflicts/{id}/resolve`: writes the resolution as a new version of the key
    /// (relayed to the primary region if this one does not take writes). Applied in a region
    /// that holds the conflict, the new version's parent is the winner of every side, so it
    /// settles the conflict there, and in every region it reaches.
    async fn resolve(&self, id: &str, resolution: crate::replicator::Resolution) -> Result<serde_json::Value, AdminError> {
        use crate::replicator::Resolution;
        self.require_manual()?;
        let missing = || AdminError::NotFound(format!("no conflict {id:?} in region {} (GET /admin/conflicts lists them)", self.cfg.region));
        let key = crate::conflicts::key_of_id(id).ok_or_else(missing)?;
        let record = self.sm.get_version(&crate::conflicts::record_key(&key)).map_err(|e| AdminError::Unavailable(e.to_string()))?.ok_or_else(missing)?;
        let versions = crate::conflicts::decode(&record.value).ok_or_else(|| AdminError::Unavailable(format!("the conflict on {key:?} is stored damaged")))?;
        let delete = |key: String| Command::Delete { key, if_revision: None };
        let cmd = match resolution {
            Resolution::Value(value) => Command::Put { key: key.clone(), value, if_revision: None },
            Resolution::Delete => delete(key.clone()),
            Resolution::Keep(region) => {
                let Some(v) = versions.iter().rev().find(|v| v.stamp.as_ref().is_some_and(|s| s.region == region)) else {
                    let regions: Vec<&str> = versions.iter().filter_map(|v| v.stamp.as_ref().map(|s| s.region.as_str())).collect();
                    return Err(AdminError::Rejected(format!("the conflict on {key:?} has no version from region {region:?}; it has versions from {regions:?}")));
                };
                if v.tombstone {
                    delete(key.clone())
                } else {
                    Command::Put { key: key.clone(), value: v.value.clone(), if_revision: None }
                }
            }
        };
        let committed = self.submit_here_or_forward(cmd, self.cfg.forward_writes).await.map_err(|e| AdminError::Unavailable(format!("the resolution was not written: {e}")))?;
        let settled_here = self.sm.get_version(&crate::conflicts::record_key(&key)).ok().flatten().is_none();
        tracing::info!(%key, settled_here, "conflict resolved by an operator");
        Ok(serde_json::json!({"id": id, "key": key, "revision": committed.result.revision, "settled_here": settled_here}))
    }
}

fn conditional(cmd: &Command) -> bool {
    match cmd {
        Command::Put { if_revision, .. } | Command::Delete { if_revision, .. } => if_revision.is_some(),
        Command::Txn(_) => true,
        _ => false,
    }
}

#[async_trait]
impl Replicator for MultiRegion {
    fn mode(&self) -> &'static str {
        "multi_region"
    }

    async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError> {
        self.submit_here_or_forward(cmd, self.cfg.forward_writes).await
    }

    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError> {
        self.raft.read_fence(req).await
    }

    fn status(&self) -> ReplicationStatus {
        let mut s = self.raft.status();
        s.mode = "multi_region";
        // The transport lists each dialled address of a remote region; one entry per region
        // (below) says more.
        s.peers.retain(|p| !p.id.starts_with("region:"));
        let applied = self.sm.applied_index();
        for l in &self.links {
            let st = l.status(applied);
            s.peers.push(PeerInfo {
                id: format!("region:{}", st.region),
                address: st.address.clone().unwrap_or_default(),
                healthy: st.last_error.is_none(),
                lag_entries: st.shipping.then_some(st.lag_entries),
            });
            if st.shipping {
                if let Some(e) = &st.last_error {
                    s.notes.push(format!("region {} is not receiving this region's writes: {e}", st.region));
                }
            }
        }
        s
    }

    fn region_links(&self) -> Vec<crate::replicator::RegionLink> {
        let applied = self.sm.applied_index();
        self.links
            .iter()
            .map(|l| {
                let s = l.status(applied);
                crate::replicator::RegionLink { region: s.region, shipping: s.shipping, lag_entries: s.lag_entries, lag_seconds: s.lag_seconds, shipped_bytes: s.shipped_bytes }
            })
            .collect()
    }

    fn storage_failure(&self) -> Option<String> {
        self.raft.storage_failure()
    }

    async fn admin(&self, req: AdminRequest) -> Result<serde_json::Value, AdminError> {
        match req {
            AdminRequest::RegionStatus => Ok(self.region_status()),
            AdminRequest::RegionPromote => self.promote().await,
            AdminRequest::Conflicts => self.conflicts(),
            AdminRequest::ResolveConflict { id, resolution } => self.resolve(&id, resolution).await,
            other => self.raft.admin(other).await,
        }
    }

    async fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.raft.shutdown().await;
    }
}

/// The Region family's handler: batches from other regions.
#[derive(Default)]
pub struct RegionHandler {
    node: OnceLock<Weak<MultiRegion>>,
}

impl RegionHandler {
    pub fn new() -> Arc<RegionHandler> {
        Arc::new(RegionHandler::default())
    }
}

#[async_trait]
impl Handler for RegionHandler {
    async fn on_request(&self, _from: &NodeId, msg_type: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
        let node = self.node.get().and_then(Weak::upgrade).ok_or_else(|| RemoteError::new("unavailable", "the region node is starting or stopping"))?;
        match msg_type {
            SHIP => {
                let req: ShipRequest = decode("region", &payload).map_err(|e| RemoteError::new("bad_request", e))?;
                Ok(encode(&node.receive(req).await))
            }
            messages::FORWARD => {
                let req: crate::forward::ForwardRequest = decode("region", &payload).map_err(|e| RemoteError::new("bad_request", e))?;
                if let Err(refused) = crate::forward::check(&req, &node.raft.limits()) {
                    return Ok(encode(&refused));
                }
                Ok(encode(&crate::forward::ForwardReply::from_result(node.submit_here_or_forward(req.command, false).await)))
            }
            other => Err(RemoteError::new("unknown_message", format!("region message type {other:#06x} is not one this build knows"))),
        }
    }

    async fn on_message(&self, from: &NodeId, msg_type: u16, _payload: Bytes) {
        tracing::debug!(%from, msg_type, "one-way region message dropped: the region family has none");
    }
}
