//! openraft's type configuration for Meridian, and the two mappings between Meridian's
//! names and openraft's: log positions and node ids.
//!
//! # Log positions: openraft index `i` is Meridian position `i + 1`
//!
//! openraft's log starts at index 0 (the membership entry `initialize` writes), while every
//! Meridian seam treats position 0 as "nothing": `StateMachine::applied_index() == 0` is an
//! empty store, `should_apply` starts at 1, bookmarks and `revision`s start at 1. The adapter
//! is the one place that translates: a WAL record, a state-machine entry, a bookmark and a
//! revision carry `raft_index + 1`; openraft only ever sees its own indexes. Terms are stored
//! unchanged as the record's epoch.
//!
//! # Node ids: a name is hashed once, and the name travels with it
//!
//! Operators name nodes (`MERIDIAN_CLUSTER_NODE_ID=n1`); openraft wants a `u64`. [`raft_id`]
//! is a hash of the cluster id and the name, so every node computes the same id for a name
//! without asking anyone, and [`MeridianNode`] (openraft's `Node`, stored in the membership)
//! keeps the name and addresses next to it.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{Command, CommandResult};

/// openraft's application data: one client command. A newtype because openraft wants
/// `Display` on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftCommand(pub Command);

impl fmt::Display for RaftCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe(&self.0, f)
    }
}

fn describe(c: &Command, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match c {
        Command::Put { key, .. } => write!(f, "put {key:?}"),
        Command::Delete { key, .. } => write!(f, "delete {key:?}"),
        Command::Txn(t) => write!(f, "txn of {} ops", t.success.len() + t.failure.len()),
        Command::Noop => write!(f, "noop"),
        Command::Stamped { command, .. } => {
            write!(f, "stamped ")?;
            describe(command, f)
        }
        Command::RegionBatch { origin, through, writes, .. } => write!(f, "{} versions from region {origin} through {through}", writes.len()),
        Command::SetPrimary(p) => write!(f, "primary region {} (epoch {})", p.region, p.epoch),
        Command::CollectTombstones { horizon, tombstones } => write!(f, "collect {} tombstones below {horizon}", tombstones.len()),
    }
}

/// A member as the membership config stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeridianNode {
    /// The operator's name for it (`MERIDIAN_CLUSTER_NODE_ID`).
    pub name: String,
    /// Its cluster port, `host:port`.
    pub addr: String,
    /// Its HTTP base URL, for `421` answers, once known.
    pub http: Option<String>,
}

impl fmt::Display for MeridianNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// Meridian's openraft types. Leader ids are the "standard" kind (one leader per term), so
    /// a log id is (term, index) — exactly the (epoch, index) every WAL record carries.
    pub TypeConfig:
        D = RaftCommand,
        R = CommandResult,
        NodeId = u64,
        Node = MeridianNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        Entry = openraft::Entry<openraft::vote::leader_id_std::CommittedLeaderId<u64>, openraft::EntryPayload<RaftCommand, u64, MeridianNode>>,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Membership = openraft::Membership<u64, MeridianNode>;

/// The Meridian position of openraft index `i`.
pub fn position(index: u64) -> u64 {
    index + 1
}

/// The openraft index of Meridian position `p` (`None` for 0, "nothing").
pub fn raft_index(position: u64) -> Option<u64> {
    position.checked_sub(1)
}

/// A log id from a WAL record's (epoch, position).
pub fn log_id(term: u64, position: u64) -> Option<LogId> {
    raft_index(position).map(|i| LogId::new_term_index(term, i))
}

pub fn term_of(id: &LogId) -> u64 {
    id.leader_id.term
}

/// The openraft id of node `name` in cluster `cluster_id`: the first 8 bytes of
/// SHA-256(cluster_id NUL name), never 0.
pub fn raft_id(cluster_id: &str, name: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(cluster_id.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes")).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_indexes_are_one_apart() {
        assert_eq!(position(0), 1);
        assert_eq!(raft_index(1), Some(0));
        assert_eq!(raft_index(0), None);
        assert_eq!(log_id(3, 1).unwrap().index, 0);
        assert_eq!(term_of(&log_id(3, 1).unwrap()), 3);
    }

    #[test]
    fn node_ids_are_stable_and_differ_by_cluster() {
        assert_eq!(raft_id("c", "n1"), raft_id("c", "n1"));
        assert_ne!(raft_id("c", "n1"), raft_id("c", "n2"));
        assert_ne!(raft_id("c", "n1"), raft_id("d", "n1"));
    }
}
