//! The Raft message family on the cluster port (msg_type 0x02xx): what goes over the wire
//! and how it is encoded. Every message is a request with a reply.
//!
//! | type   | request                            | reply                               |
//! |--------|------------------------------------|-------------------------------------|
//! | 0x0201 | `AppendEntriesRequest`             | `AppendEntriesResponse`             |
//! | 0x0202 | `VoteRequest`                      | `VoteResponse`                      |
//! | 0x0203 | `VoteRequest` (pre-vote)           | `VoteResponse`                      |
//! | 0x0204 | [`SnapshotChunk`]                  | `Option<SnapshotResponse>` (on the last chunk) |
//! | 0x0205 | `TransferLeaderRequest`            | `TransferLeaderResponse`            |
//! | 0x0206 | [`ForwardRequest`](crate::forward) | `ForwardReply`                      |
//! | 0x0207 | [`ReadIndexRequest`]               | [`ReadIndexReply`]                  |
//! | 0x0208 | `membership::JoinRequest`          | `membership::ChangeReply`           |
//! | 0x0209 | `membership::RemoveRequest`        | `membership::ChangeReply`           |
//!
//! Bodies are postcard; a reply is `Result<T, String>` (the remote's error text).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::{SnapshotMeta, Vote};

pub const APPEND: u16 = 0x0201;
pub const VOTE: u16 = 0x0202;
pub const PRE_VOTE: u16 = 0x0203;
pub const SNAPSHOT_CHUNK: u16 = 0x0204;
pub const TRANSFER_LEADER: u16 = 0x0205;
pub const FORWARD: u16 = 0x0206;
pub const READ_INDEX: u16 = 0x0207;
pub const JOIN: u16 = 0x0208;
pub const REMOVE: u16 = 0x0209;

/// Snapshot chunks are at most this big: memory stays bounded on both sides.
pub const CHUNK_BYTES: usize = 4 << 20;

/// One piece of a snapshot file. Chunks of one snapshot go one at a time, in order; the
/// receiver appends each at `offset` (0 starts over) and installs after `done`.
#[derive(Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub done: bool,
}

/// A follower asks the leader for a read index (linearizable reads on followers).
#[derive(Serialize, Deserialize)]
pub struct ReadIndexRequest {}

#[derive(Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// Serve after applying through this Meridian position; `term` is the leader's.
    Ready { position: u64, term: u64 },
    NotLeader { leader: Option<String> },
    Failed(String),
}

pub fn encode<T: Serialize>(v: &T) -> bytes::Bytes {
    bytes::Bytes::from(postcard::to_allocvec(v).expect("Raft messages serialize"))
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed Raft message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::super::types::*;
    use super::*;
    use crate::command::Command;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use std::collections::BTreeMap;

    #[test]
    fn raft_messages_round_trip_through_postcard() {
        let node = MeridianNode { name: "n1".into(), addr: "127.0.0.1:7000".into(), http: None };
        let m = Membership::from(BTreeMap::from([(1u64, node)]));
        let entries = vec![
            openraft::Entry { log_id: log_id(1, 1).unwrap(), payload: openraft::EntryPayload::Membership(m.clone()) },
            openraft::Entry { log_id: log_id(1, 2).unwrap(), payload: openraft::EntryPayload::Blank },
            openraft::Entry {
                log_id: log_id(2, 3).unwrap(),
                payload: openraft::EntryPayload::Normal(RaftCommand(Command::Put { key: "k".into(), value: vec![0, 1, 255], if_revision: None })),
            },
        ];
        let req = AppendEntriesRequest::<TypeConfig> { vote: Vote::new_committed(2, 1), prev_log_id: None, entries, leader_commit: log_id(1, 2) };
        let back: AppendEntriesRequest<TypeConfig> = decode(&encode(&req)).unwrap();
        assert_eq!(back.entries, req.entries);
        assert_eq!(back.vote, req.vote);
        let v = VoteRequest::<TypeConfig>::new(Vote::new(3, 2), log_id(2, 3));
        let back: VoteRequest<TypeConfig> = decode(&encode(&v)).unwrap();
        assert_eq!(back.vote, v.vote);
        let meta = SnapshotMeta { last_log_id: log_id(2, 3), last_membership: StoredMembership::new(log_id(1, 1), m) };
        let c = SnapshotChunk { vote: Vote::new_committed(2, 1), meta: meta.clone(), offset: 7, data: vec![9; 10], done: true };
        let back: SnapshotChunk = decode(&encode(&c)).unwrap();
        assert_eq!((back.meta, back.offset, back.data, back.done), (meta, 7, vec![9; 10], true));
    }
}
