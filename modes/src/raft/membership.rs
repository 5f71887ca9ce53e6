//! Changing who is in the cluster: joins (learner first, then voter), removals, and each
//! member's published addresses. Only the leader changes the membership; a request that
//! reaches another node is relayed to the leader ([`super::rpc::JOIN`], [`super::rpc::REMOVE`]).
//!
//! - **Serialized.** One change at a time per leader (`RaftNode::changes`): openraft's joint
//!   consensus is safe only if changes do not interleave.
//! - **Learner first.** A new node is added as a learner and the call returns once it has
//!   caught up (openraft's blocking `add_learner`); only then, if it is to vote, is it promoted —
//!   so a new voter never weakens the quorum while it is still empty.
//! - **Read replicas** (`CLUSTER_RAFT_ROLE=replica`) join themselves as learners at start
//!   and never vote or lead.
//! - **Addresses.** Every member publishes its own HTTP address into the membership (once,
//!   when it differs), so any node can answer `421` with the leader's `Location`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use super::rpc;
use super::types::{raft_id, MeridianNode};
use super::{RaftNode, RaftRole};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node: MeridianNode,
    pub voter: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub name: String,
}

/// The answer to a change: `Ok(description)` or the reason it was refused.
pub type ChangeReply = Result<serde_json::Value, String>;

/// On the wire a description travels as JSON text (postcard cannot carry a
/// `serde_json::Value`).
pub type WireReply = Result<String, String>;

pub fn to_wire(r: ChangeReply) -> WireReply {
    r.map(|v| v.to_string())
}

impl RaftNode {
    fn current(&self) -> (BTreeSet<u64>, BTreeMap<u64, MeridianNode>) {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let voters = m.membership().voter_ids().collect();
        let nodes = m.membership().nodes().map(|(i, n)| (*i, n.clone())).collect();
        (voters, nodes)
    }

    /// Adds (or updates) a member; on a non-leader, relays to the leader.
    pub async fn join(&self, req: JoinRequest) -> ChangeReply {
        if req.node.name.is_empty() || req.node.addr.rsplit_once(':').is_none() {
            return Err(format!("a member needs a name and a cluster address host:port (got {:?} at {:?})", req.node.name, req.node.addr));
        }
        if !self.raft.is_leader() {
            return self.relay(rpc::JOIN, &req).await;
        }
        let _one_at_a_time = self.changes.lock().await;
        let id = raft_id(&self.cfg.cluster_id, &req.node.name);
        let (voters, nodes) = self.current();
        let err = |e: openraft::error::RaftError<_, _>| e.to_string();
        match nodes.get(&id) {
            Some(existing) if existing != &req.node => {
                // Same member, new addresses.
                self.raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, req.node.clone())])), false).await.map_err(err)?;
            }
            Some(_) => {}
            None => {
                if self.was_removed(id).await? {
                    return Err(format!(
                        "{} was removed from this cluster earlier; a removed member's name (and its Raft id) is never given to another node — start the new node with another CLUSTER_NODE_ID",
                        req.node.name
                    ));
                }
                tracing::info!(node = %req.node, "adding a learner; waiting for it to catch up");
                self.raft.add_learner(id, req.node.clone(), true).await.map_err(err)?;
            }
        }
        if req.voter && !voters.contains(&id) {
            tracing::info!(node = %req.node, "promoting the learner to voter");
            self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await.map_err(err)?;
        }
        let (voters, _) = self.current();
        Ok(serde_json::json!({"node_id": req.node.name, "role": if voters.contains(&id) { "voter" } else { "learner" }}))
    }

    /// Whether `id` belongs to a member removed earlier (the replicated `RaftMeta::removed`),
    /// read once this leader has applied the newest membership change.
    async fn was_removed(&self, id: u64) -> Result<bool, String> {
        let m = self.raft.metrics().borrow_watched().membership_config.clone();
        let at = m.log_id().as_ref().map_or(0, |l| super::types::position(l.index));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.sm.applied_index() < at {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("this leader has not yet applied the last membership change (position {at}); try again"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = self.sm.applied_state().map_err(|e| e.to_string())?;
        Ok(super::sm_store::meta_of(s.meta.as_deref()).map_err(|e| e.to_string())?.removed.contains(&id))
    }

    /// Removes a member (voter or learner); on a non-leader, relays to the leader.
    pub async fn remove(&self, req: RemoveRequest) -> ChangeReply {
        if !self.raft.is_leader() {
            return self.relay(rpc::REMOVE, &req).await;
        }
        let _one_at_a_time = self.changes.lock().await;
        let id = raft_id(&self.cfg.cluster_id, &req.name);
        let (voters, nodes) = self.current();
        if !nodes.contains_key(&id) {
            return Err(format!("{} is not a member of this cluster", req.name));
        }
        if voters.contains(&id) && voters.len() == 1 {
            return Err(format!("{} is the last voter; a cluster cannot remove its last voter", req.name));
        }
        let change = if voters.contains(&id) { ChangeMembers::RemoveVoters(BTreeSet::from([id])) } else { ChangeMembers::RemoveNodes(BTreeSet::from([id])) };
        self.raft.change_membership(change, false).await.map_err(|e| e.to_string())?;
        // A removed voter is first kept as a learner by openraft only with `retain`; we did
        // not retain it, but make sure no learner entry is left behind either.
        let (_, nodes) = self.current();
        if nodes.contains_key(&id) {
            self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await.map_err(|e| e.to_string())?;
        }
        tracing::info!(node = %req.name, "member removed");
        Ok(serde_json::json!({"removed": req.name}))
    }

    /// Sends a change to the leader; a node that knows no leader yet (a replica that is not
    /// a member) asks the configured voters, which relay it on.
    async fn relay<T: Serialize>(&self, msg: u16, req: &T) -> ChangeReply {
        let targets: Vec<String> = match self.leader_node() {
            Some(l) => vec![l.name],
            None => self.cfg.peers.iter().map(|(n, _)| n.clone()).filter(|n| *n != self.cfg.node_name).collect(),
        };
        let mut last = "no Raft leader is known and no voter is configured (CLUSTER_RAFT_PEERS)".to_string();
        for t in targets {
            match self.transport.request(&t, msg, rpc::encode(req), Some(Duration::from_secs(120))).await {
                Ok(b) => return rpc::decode::<WireReply>(&b)?.and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string())),
                Err(e) => last = format!("cannot reach {t}: {e}"),
            }
        }
        Err(last)
    }

    fn my_node(&self) -> MeridianNode {
        let addr = self.cfg.advertise.clone();
        MeridianNode { name: self.cfg.node_name.clone(), addr, http: self.cfg.http_addr.clone() }
    }

    /// At start: a read replica joins itself as a learner; any member makes sure the
    /// membership carries its current addresses. Retries until done or the node stops.
    pub(super) fn announce(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            loop {
                tokio::time::sleep(wait).await;
                let Some(node) = weak.upgrade() else { return };
                if node.stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let me = node.my_node();
                let id = raft_id(&node.cfg.cluster_id, &me.name);
                let (_, nodes) = node.current();
                let listed = nodes.get(&id);
                let needed = match (node.cfg.role, listed) {
                    (RaftRole::Replica, None) => true,
                    (_, Some(n)) => n != &me,
                    (RaftRole::Voter, None) => {
                        // A voter is added by the bootstrap or the operator; until this node
                        // has heard of that membership, check again (it publishes its HTTP
                        // address once listed: a first look before the bootstrap's
                        // membership arrived used to give up for good).
                        wait = (wait * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                if !needed {
                    return;
                }
                match node.join(JoinRequest { node: me.clone(), voter: false }).await {
                    Ok(v) => {
                        tracing::info!(result = %v, "membership updated with this node's addresses");
                        return;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "cannot join or update the membership yet; retrying");
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
}
