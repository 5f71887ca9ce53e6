//! What this node does with each Raft-family message, and who may send it.
//!
//! The transport admits only configured members (certificate, cluster secret or source
//! address; `transport::admission`) and names each by its node name: that is `from`. The
//! rule enforced here on top: **a vote or an append is accepted only from the node its vote
//! names** — a member cannot campaign or lead in another member's name. Forwarded writes are
//! checked against the HTTP limits before they are proposed.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};

use super::rpc::{self, decode, encode, SnapshotChunk};
use super::sm_store::{SmStore, SnapshotFile};
use super::types::{raft_id, TypeConfig, Vote};
use super::RaftNode;
use crate::forward::{ForwardReply, ForwardRequest};
use crate::transport::{Handler, NodeId, RemoteError};

/// Terms at or above this are refused (see [`RaftHandler::check_sender`]).
pub const MAX_TERM: u64 = 1 << 63;

/// A snapshot being received from one leader.
struct Receiving {
    path: std::path::PathBuf,
    file: std::fs::File,
    written: u64,
}

pub struct RaftHandler {
    pub(super) node: OnceLock<Weak<RaftNode>>,
    cluster_id: String,
    store: SmStore,
    receiving: Mutex<HashMap<String, Receiving>>,
}

fn bad(e: String) -> RemoteError {
    RemoteError::new("bad_request", e)
}

fn reply<T: serde::Serialize>(r: Result<T, String>) -> Bytes {
    encode(&r)
}

impl RaftHandler {
    pub fn new(cluster_id: String, store: SmStore) -> Arc<RaftHandler> {
        Arc::new(RaftHandler { node: OnceLock::new(), cluster_id, store, receiving: Mutex::new(HashMap::new()) })
    }

    fn node(&self) -> Result<Arc<RaftNode>, RemoteError> {
        self.node.get().and_then(Weak::upgrade).ok_or_else(|| RemoteError::new("unavailable", "the Raft node is starting or stopping"))
    }

    /// The vote must be the sender's own, and its term one elections can reach.
    ///
    /// Invariant enforced here: no message moves this node's term to [`MAX_TERM`] or beyond.
    /// Terms grow by one per election; openraft computes `term + 1` when it campaigns, so a
    /// member that sent a term near `u64::MAX` (a bug, damage or an attack) would otherwise
    /// make every node that adopted it overflow. 2^63 is 292 million years of one election
    /// per millisecond.
    fn check_sender(&self, from: &NodeId, vote: &Vote) -> Result<(), RemoteError> {
        let claimed = vote.leader_id.voted_for;
        if claimed != raft_id(&self.cluster_id, from) {
            return Err(RemoteError::new("wrong_sender", format!("{from} sent a Raft message in another node's name (id {claimed})")));
        }
        if vote.leader_id.term >= MAX_TERM {
            return Err(RemoteError::new("bad_term", format!("{from} sent term {}, beyond any term elections reach (2^63)", vote.leader_id.term)));
        }
        Ok(())
    }

    fn receive_chunk(&self, from: &NodeId, c: &SnapshotChunk) -> Result<Option<SnapshotFile>, String> {
        let mut map = self.receiving.lock().unwrap();
        if c.offset == 0 {
            if let Some(old) = map.remove(from) {
                let _ = std::fs::remove_file(old.path);
            }
            let path = self.store.temp_path("receiving");
            let file = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            map.insert(from.clone(), Receiving { path, file, written: 0 });
        }
        let r = map.get_mut(from).ok_or("snapshot chunk without a start; send from offset 0")?;
        if r.written != c.offset {
            return Err(format!("snapshot chunk at offset {} but {} bytes received; start again", c.offset, r.written));
        }
        r.file.write_all(&c.data).map_err(|e| format!("writing the snapshot: {e}"))?;
        r.written += c.data.len() as u64;
        if !c.done {
            return Ok(None);
        }
        let r = map.remove(from).expect("present");
        r.file.sync_all().map_err(|e| format!("syncing the snapshot: {e}"))?;
        let file = std::fs::File::open(&r.path).map_err(|e| format!("reopening the snapshot: {e}"))?;
        Ok(Some(SnapshotFile { path: r.path, file }))
    }
}

#[async_trait]
impl Handler for RaftHandler {
    async fn on_request(&self, from: &NodeId, msg_type: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
        let node = self.node()?;
        let raft = &node.raft;
        // Anyone the transport admitted may ask to join; everything else needs a member.
        if msg_type != rpc::JOIN && !node.is_member(from) {
            return Err(RemoteError::new("not_a_member", format!("{from} is not a member of this Raft cluster")));
        }
        match msg_type {
            rpc::APPEND => {
                let req: AppendEntriesRequest<TypeConfig> = decode(&payload).map_err(bad)?;
                self.check_sender(from, &req.vote)?;
                // A leader ships entries of its own term or earlier ones, never later.
                let term = req.vote.leader_id.term;
                let ids = req.entries.iter().map(|e| &e.log_id).chain(req.prev_log_id.iter()).chain(req.leader_commit.iter());
                if let Some(id) = ids.into_iter().find(|id| id.leader_id.term > term) {
                    return Err(RemoteError::new("bad_term", format!("{from} sent log id {id} above its own term {term}")));
                }
                Ok(reply(raft.append_entries(req).await.map_err(|e| e.to_string())))
            }
            rpc::VOTE | rpc::PRE_VOTE => {
                let req: VoteRequest<TypeConfig> = decode(&payload).map_err(bad)?;
                self.check_sender(from, &req.vote)?;
                let r = if msg_type == rpc::VOTE { raft.vote(req).await } else { raft.pre_vote(req).await };
                Ok(reply(r.map_err(|e| e.to_string())))
            }
            rpc::SNAPSHOT_CHUNK => {
                let chunk: SnapshotChunk = decode(&payload).map_err(bad)?;
                self.check_sender(from, &chunk.vote)?;
                let file = {
                    let this = &*self;
                    tokio::task::block_in_place(|| this.receive_chunk(from, &chunk))
                };
                match file {
                    Err(e) => Ok(reply::<Option<()>>(Err(e))),
                    Ok(None) => Ok(reply(Ok::<_, String>(None::<openraft::raft::SnapshotResponse<TypeConfig>>))),
                    Ok(Some(file)) => {
                        let snap = openraft::alias::SnapshotOf::<TypeConfig, SnapshotFile> { meta: chunk.meta, snapshot: file };
                        let r = raft.install_full_snapshot(chunk.vote, snap).await;
                        Ok(reply(r.map(Some).map_err(|e| e.to_string())))
                    }
                }
            }
            rpc::TRANSFER_LEADER => {
                let req: TransferLeaderRequest<TypeConfig> = decode(&payload).map_err(bad)?;
                self.check_sender(from, req.from_leader())?;
                Ok(reply(raft.handle_transfer_leader(req).await.map_err(|e| e.to_string())))
            }
            rpc::FORWARD => {
                let req: ForwardRequest = decode(&payload).map_err(bad)?;
                if let Err(refusal) = crate::forward::check(&req, &node.cfg.limits) {
                    return Ok(encode(&refusal));
                }
                Ok(encode(&ForwardReply::from_result(node.propose(req.command).await)))
            }
            rpc::READ_INDEX => Ok(encode(&node.serve_read_index().await)),
            rpc::JOIN => {
                let req: super::membership::JoinRequest = decode(&payload).map_err(bad)?;
                // A node joins under the name it was admitted as, never another's; members
                // relay joins that reached them.
                if req.node.name != *from && !node.is_member(from) {
                    return Err(RemoteError::new("wrong_sender", format!("{from} asked to join as {:?}", req.node.name)));
                }
                Ok(encode(&super::membership::to_wire(node.join(req).await)))
            }
            rpc::REMOVE => {
                let req: super::membership::RemoveRequest = decode(&payload).map_err(bad)?;
                Ok(encode(&super::membership::to_wire(node.remove(req).await)))
            }
            other => Err(RemoteError::new("unknown_message", format!("Raft node does not handle message type {other:#x}"))),
        }
    }

    async fn on_message(&self, _from: &NodeId, msg_type: u16, _payload: Bytes) {
        tracing::debug!(msg_type, "one-way message in the Raft family ignored");
    }
}

