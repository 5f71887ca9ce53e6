//! The `multi_region` mode: a Raft group per region, and asynchronous last-write-wins
//! replication between regions.
//!
//! Module map:
//! - [`hlc`]: the hybrid logical clock whose readings stamp every write.
//! - [`observe`]: the state machine wrapper that moves the clock past every applied stamp.
//! - [`messages`]: the Region message family (a batch of versions and its answer).
//! - [`shipper`]: one [`shipper::Link`] per remote region: reads committed entries, ships the
//!   versions this region wrote, resumes from the remote's high-water mark.
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

pub mod hlc;
pub mod messages;
pub mod observe;
pub mod shipper;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use meridian_wal::Wal;

use crate::command::{Command, Outcome, Stamp};
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
}

impl RegionConfig {
    fn remote_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.remotes.iter().map(|(r, _)| r.clone()).collect();
        v.dedup();
        v.sort();
        v.dedup();
        v
    }
}

/// The proposal hook for this region's [`RaftNode`]: every client command the leader
/// proposes is stamped here, on the leader, with its clock.
pub fn stamper(region: String, hlc: Arc<Hlc>) -> crate::raft::ProposeHook {
    crate::raft::ProposeHook::new(move |cmd| match cmd {
        c @ (Command::Put { .. } | Command::Delete { .. } | Command::Txn(_)) => {
            Command::Stamped { stamp: Stamp { hlc: hlc.now(), region: region.clone() }, command: Box::new(c) }
        }
        other => other,
    })
}

pub struct MultiRegion {
    cfg: RegionConfig,
    raft: Arc<RaftNode>,
    sm: Arc<dyn StateMachine>,
    hlc: Arc<Hlc>,
    links: Vec<Arc<Link>>,
    stopped: Arc<AtomicBool>,
}

impl MultiRegion {
    /// Starts a shipping link per remote region and serves the Region family through
    /// `handler` (registered with `transport` before the node started).
    pub fn start(
        cfg: RegionConfig,
        raft: Arc<RaftNode>,
        sm: Arc<dyn StateMachine>,
        wal: Wal,
        transport: Transport,
        hlc: Arc<Hlc>,
        handler: &RegionHandler,
    ) -> Arc<MultiRegion> {
        let stopped = Arc::new(AtomicBool::new(false));
        let links: Vec<Arc<Link>> = cfg
            .remote_names()
            .iter()
            .map(|r| {
                let addrs: Vec<String> = cfg.remotes.iter().filter(|(n, _)| n == r).map(|(_, a)| a.clone()).collect();
                Link::new(&transport, &cfg.region, r, &addrs)
            })
            .collect();
        for link in &links {
            let (raft, stop) = (raft.clone(), stopped.clone());
            tokio::spawn(link.clone().run(transport.clone(), wal.clone(), sm.clone(), move || raft.is_leader(), move || stop.load(Ordering::Relaxed)));
        }
        let node = Arc::new(MultiRegion { cfg, raft, sm, hlc, links, stopped });
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
        let cmd = Command::RegionBatch { origin: req.origin, through: req.through, writes: req.writes };
        if let Err(e) = cmd.validate(&self.raft.limits()) {
            return refused(e.code(), e.to_string());
        }
        match self.raft.submit(cmd).await {
            Ok(Committed { result, .. }) => match result.outcome {
                Outcome::RegionMerged { high_water, .. } => ShipReply::Merged { high_water },
                other => refused("internal", format!("a region batch applied as {other:?}")),
            },
            Err(e) => refused("unavailable", e.to_string()),
        }
    }

    fn region_status(&self) -> serde_json::Value {
        let applied = self.sm.applied_index();
        let raft = self.raft.status();
        serde_json::json!({
            "region": self.cfg.region,
            "primary_region": self.cfg.primary_region,
            "writes": match self.cfg.writes { RegionWrites::Primary => "primary", RegionWrites::ActiveActive => "active_active" },
            "takes_writes": self.takes_writes().is_ok(),
            "node_id": raft.node_id,
            "is_region_leader": raft.is_leader,
            "applied_index": applied,
            "hlc": self.hlc.last(),
            "remotes": self.links.iter().map(|l| l.status(applied)).collect::<Vec<_>>(),
        })
    }

    fn takes_writes(&self) -> Result<(), SubmitError> {
        match (&self.cfg.writes, &self.cfg.primary_region) {
            (RegionWrites::Primary, Some(p)) if *p != self.cfg.region => Err(SubmitError::ReadOnly(format!(
                "region {} does not take writes: the primary region is {p} (MERIDIAN_CLUSTER_PRIMARY_REGION); write there",
                self.cfg.region
            ))),
            _ => Ok(()),
        }
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
        self.takes_writes()?;
        if self.cfg.writes == RegionWrites::ActiveActive && conditional(&cmd) {
            return Err(SubmitError::Refused(
                "if_revision and /v1/txn are not available with MERIDIAN_CLUSTER_REGION_WRITES=active_active: two regions could both pass the same compare; use CLUSTER_REGION_WRITES=primary for conditional writes".into(),
            ));
        }
        self.raft.submit(cmd).await
    }

    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError> {
        self.raft.read_fence(req).await
    }

    fn status(&self) -> ReplicationStatus {
        let mut s = self.raft.status();
        s.mode = "multi_region";
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

    fn storage_failure(&self) -> Option<String> {
        self.raft.storage_failure()
    }

    async fn admin(&self, req: AdminRequest) -> Result<serde_json::Value, AdminError> {
        match req {
            AdminRequest::RegionStatus => Ok(self.region_status()),
            AdminRequest::RegionPromote => Err(AdminError::Rejected(
                "region promotion is not available in this build yet (see the README's status table); change MERIDIAN_CLUSTER_PRIMARY_REGION on every node and restart them".into(),
            )),
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
            other => Err(RemoteError::new("unknown_message", format!("region message type {other:#06x} is not one this build knows"))),
        }
    }

    async fn on_message(&self, from: &NodeId, msg_type: u16, _payload: Bytes) {
        tracing::debug!(%from, msg_type, "one-way region message dropped: the region family has none");
    }
}
