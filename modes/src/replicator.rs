//! The [`Replicator`] trait: the one interface between the HTTP layer and a replication mode.
//!
//! The HTTP layer validates a request, then either submits a [`Command`] (writes) or asks for a
//! read fence (reads) and serves the read from the local [`StateMachine`](crate::StateMachine).
//! Everything mode-specific hides behind this trait:
//! - *where a write goes*: the mode commits it, forwards it to the node that can (over the
//!   cluster transport), or answers [`SubmitError::NotLeader`] when forwarding is off;
//! - *when a read may be served locally*: [`Replicator::read_fence`] waits for a bookmark,
//!   or for the leader's read index in linearizable modes;
//! - *what the node reports*: [`ReplicationStatus`] feeds `/health`, `/metrics` and admin.
//!
//! Admin operations that only some modes support (promote, membership, …) go through
//! [`Replicator::admin`], whose default answers [`AdminError::NotSupported`].

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::bookmark::Bookmark;
use crate::command::{Command, CommandResult};

/// A committed, applied write.
#[derive(Clone, Debug)]
pub struct Committed {
    pub result: CommandResult,
    pub bookmark: Bookmark,
}

/// Where the node that can take writes is, for `421` answers and forwarding.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LeaderHint {
    pub node_id: String,
    /// Base HTTP URL, e.g. `http://10.0.0.2:7474`.
    pub http_addr: Option<String>,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("this node is not the leader")]
    NotLeader { leader: Option<LeaderHint> },
    #[error("this node does not take writes: {0}")]
    ReadOnly(String),
    #[error("this node was fenced by epoch {epoch}; it no longer takes writes")]
    Fenced { epoch: u64, leader: Option<LeaderHint> },
    #[error("the write was not confirmed in time: {0}")]
    Timeout(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The mode cannot take this kind of write as configured (`bad_request`).
    #[error("{0}")]
    Refused(String),
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadError {
    #[error("bookmark position {wanted} not applied within {waited:?} (applied: {applied})")]
    BookmarkTimeout { wanted: u64, applied: u64, waited: Duration },
    #[error("this node is not the leader")]
    NotLeader { leader: Option<LeaderHint> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The bookmark names a position this node's history does not hold (a write from a
    /// history that was set aside, or a made-up token).
    #[error("{0}")]
    UnknownBookmark(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("not supported in {mode} mode")]
    NotSupported { mode: &'static str },
    #[error("{0}")]
    Rejected(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// What the request names does not exist here (404).
    #[error("{0}")]
    NotFound(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Through the leader's read index (raft, multi_region).
    Linearizable,
    /// This node's applied state, at once (after any bookmark).
    Local,
}

#[derive(Clone, Debug)]
pub struct ReadRequest {
    /// `None` = the mode's default.
    pub consistency: Option<Consistency>,
    pub bookmark: Option<Bookmark>,
    pub wait: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    pub id: String,
    pub address: String,
    pub healthy: bool,
    /// Entries this node holds that the peer has not acknowledged, where this node tracks it
    /// (a Raft leader).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_entries: Option<u64>,
}

/// One link to another region (multi_region).
#[derive(Clone, Debug, Serialize)]
pub struct RegionLink {
    pub region: String,
    /// True on the node shipping to it (its region's leader).
    pub shipping: bool,
    pub lag_entries: u64,
    pub lag_seconds: f64,
    pub shipped_bytes: u64,
}

/// A point-in-time view of the node's replication state.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicationStatus {
    pub mode: &'static str,
    pub node_id: String,
    pub role: String,
    pub is_leader: bool,
    pub state: String,
    pub commit_index: u64,
    pub applied_index: u64,
    /// HA epoch or Raft term.
    pub epoch: u64,
    pub peers: Vec<PeerInfo>,
    #[serde(skip)]
    pub health: Health,
    #[serde(skip)]
    pub lag_seconds: f64,
    #[serde(skip)]
    pub leader_changes: u64,
    #[serde(skip)]
    pub replication_bytes: u64,
    /// Human-readable reasons behind a degraded or unhealthy status.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A log tail a former primary set aside on rejoin (`DATA_DIR/divergent/`): records it held
/// that the new primary's history does not.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DivergentTailInfo {
    pub file: String,
    pub after_index: u64,
    pub records: usize,
}

/// Admin operations that not every mode supports.
#[derive(Clone, Debug)]
pub enum AdminRequest {
    Promote { force: bool },
    Switchover,
    ClusterStatus,
    ReplicationLag,
    /// HA without a witness: the primary records its standby out of sync and goes on alone.
    ReleaseStandby,
    AddNode { node_id: String, address: String, voter: bool },
    RemoveNode { node_id: String },
    StepDown,
    TransferLeadership { target: String },
    RaftState,
    RaftSnapshot,
    RegionPromote,
    RegionStatus,
    /// multi_region with `CLUSTER_CONFLICT_STRATEGY=manual`: the conflicts this region holds.
    Conflicts,
    /// Settles the conflict `id` (see [`crate::conflicts`]) by writing `resolution`.
    ResolveConflict { id: String, resolution: Resolution },
}

/// How `POST /admin/conflicts/{id}/resolve` settles a conflict: a new version of the key,
/// written by a region that has seen every side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Write this value.
    Value(Vec<u8>),
    /// Delete the key.
    Delete,
    /// Write again what the version from this region held (a value, or a delete).
    Keep(String),
}

#[async_trait]
pub trait Replicator: Send + Sync + 'static {
    fn mode(&self) -> &'static str;
    /// Commits `cmd` as this mode defines it and returns once it is applied locally.
    async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError>;
    /// Returns once a read under `req` may be served from the local state machine.
    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError>;
    fn status(&self) -> ReplicationStatus;
    /// The other data nodes this node has heard of, as `(node id, HTTP base URL if the node
    /// announced one)`, so one node can show the whole cluster (the cluster page,
    /// `meridian status`). Raft lists its members with their URLs in `ClusterStatus` instead.
    fn peer_http_addrs(&self) -> Vec<(String, Option<String>)> {
        Vec::new()
    }
    /// Why this node's write path stopped on a storage error (a WAL append or a state-store
    /// apply failed: disk full, I/O error), if it did; it takes no writes until the disk has
    /// room again (standalone reopens its storage in place; the cluster modes are stopped
    /// and started again by the node, see its `resume.rs`).
    fn storage_failure(&self) -> Option<String> {
        None
    }
    /// The WAL this mode writes now, where it may replace the one it started with
    /// (standalone, after a storage error); `None`: the node's own.
    fn wal(&self) -> Option<meridian_wal::Wal> {
        None
    }
    /// multi_region: this node's links to the other regions (shipping only on the region
    /// leader), for metrics.
    fn region_links(&self) -> Vec<RegionLink> {
        Vec::new()
    }
    /// Divergent tails kept in this node's data directory (ha_standby), for operators to
    /// inspect; also listed as notes in `/health`.
    fn divergent_tails(&self) -> Vec<DivergentTailInfo> {
        Vec::new()
    }
    async fn admin(&self, req: AdminRequest) -> Result<serde_json::Value, AdminError> {
        let _ = req;
        Err(AdminError::NotSupported { mode: self.mode() })
    }
    /// Stops taking writes, finishes in-flight ones, and makes the state durable. The
    /// cluster transport belongs to the node, which shuts it down after this: a node whose
    /// mode stops on a storage error keeps its port and starts the mode again on it.
    async fn shutdown(&self);
}
