//! openraft's network on the cluster transport: one client per peer, each RPC a request of
//! the Raft family ([`super::rpc`]). The transport connects lazily and reconnects with
//! backoff; a failure here is `Unreachable`, and openraft backs off and retries.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse, VoteRequest,
    VoteResponse,
};
use openraft::{RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::rpc::{self, SnapshotChunk};
use super::sm_store::SnapshotFile;
use super::types::{MeridianNode, TypeConfig, Vote};
use crate::transport::Transport;

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// Creates [`PeerClient`]s; registers each member's address with the transport.
#[derive(Clone)]
pub struct Network {
    pub transport: Transport,
    /// This node's own view of the members' addresses (`CLUSTER_RAFT_PEERS`). It wins over
    /// the address in the membership, which is how the member that added a node saw it
    /// (behind NAT, a proxy or another network the two can differ).
    pub configured: HashMap<String, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, _target: u64, node: &MeridianNode) -> PeerClient {
        let addr = self.configured.get(&node.name).unwrap_or(&node.addr);
        self.transport.add_peer(node.name.clone(), addr.clone());
        PeerClient { transport: self.transport.clone(), peer: node.name.clone() }
    }
}

pub struct PeerClient {
    transport: Transport,
    peer: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Text(String);

impl PeerClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(&self, msg: u16, req: &Req, ttl: Duration) -> Result<Resp, RPCError<TypeConfig>> {
        let reply = self
            .transport
            .request(&self.peer, msg, rpc::encode(req), Some(ttl))
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Text(format!("{}: {e}", self.peer)))))?;
        let r: Result<Resp, String> = rpc::decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&Text(e))))?;
        r.map_err(|e| RPCError::Network(NetworkError::new(&Text(format!("{} answered: {e}", self.peer)))))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(rpc::APPEND, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(rpc::VOTE, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(rpc::PRE_VOTE, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = async {
            let Snapshot { meta, snapshot: SnapshotFile { mut file, .. } } = snapshot;
            let mut offset = 0u64;
            loop {
                // Read one chunk off the async workers; memory stays at one chunk.
                let (f, data) = tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::with_capacity(rpc::CHUNK_BYTES);
                    let r = (&mut file).take(rpc::CHUNK_BYTES as u64).read_to_end(&mut buf).map(|_| buf);
                    (file, r)
                })
                .await
                .map_err(|e| StreamingError::Unreachable(Unreachable::new(&Text(e.to_string()))))?;
                file = f;
                let data = data.map_err(|e| StreamingError::Unreachable(Unreachable::new(&Text(format!("reading the snapshot: {e}")))))?;
                let done = data.len() < rpc::CHUNK_BYTES;
                let len = data.len() as u64;
                let chunk = SnapshotChunk { vote, meta: meta.clone(), offset, data, done };
                // A chunk has its own generous deadline: a large snapshot must never time
                // out as a whole and start over in a loop.
                let reply: Option<SnapshotResponse<TypeConfig>> =
                    self.call(rpc::SNAPSHOT_CHUNK, &chunk, Duration::from_secs(60)).await.map_err(|e| match e {
                        RPCError::Network(n) => StreamingError::Network(n),
                        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                        other => StreamingError::Unreachable(Unreachable::new(&Text(other.to_string()))),
                    })?;
                offset += len;
                if done {
                    return reply.ok_or_else(|| StreamingError::Network(NetworkError::new(&Text("no answer to the last snapshot chunk".into()))));
                }
            }
        };
        tokio::select! {
            r = send => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(rpc::TRANSFER_LEADER, &req, option.hard_ttl()).await
    }
}

