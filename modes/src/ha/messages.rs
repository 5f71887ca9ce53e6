//! What HA nodes (and the witness) say to each other over the cluster transport.
//!
//! Every message carries the sender's epoch: a receiver that sees a higher epoch than its own
//! persists it and stops taking writes before it does anything else (the fencing rule).
//! Payloads are postcard-encoded; a payload that does not decode is answered with an error
//! and never acted on.

use serde::{Deserialize, Serialize};

use crate::replicator::LeaderHint;
use crate::transport::Family;

/// A write forwarded by the standby to the primary, and the answer: the shared
/// [`crate::forward`] messages.
pub use crate::forward::{ForwardReply, ForwardRequest as Forward};
/// Standby → primary: a chunk of the snapshot announced in `NeedSnapshot`, and the answer:
/// the shared [`crate::snapshot_stream`] messages.
pub use crate::snapshot_stream::{Chunk as SnapshotChunk, ChunkRequest as SnapshotChunkReq};

/// Transport message types (u16 on the wire), all in the HA family (`0x01xx`).
pub const FETCH: u16 = Family::Ha.msg(0x01);
pub const ACK: u16 = Family::Ha.msg(0x02);
pub const SNAPSHOT_CHUNK: u16 = Family::Ha.msg(0x03);
pub const FENCE: u16 = Family::Ha.msg(0x04);
pub const FORWARD: u16 = Family::Ha.msg(0x05);
pub const PROMOTE: u16 = Family::Ha.msg(0x06);
pub const SWITCHOVER: u16 = Family::Ha.msg(0x07);
pub const READ_INDEX: u16 = Family::Ha.msg(0x08);
pub const WITNESS_PING: u16 = Family::Ha.msg(0x10);
pub const WITNESS_VOTE: u16 = Family::Ha.msg(0x11);

/// Standby → primary: "send me records from `from`"; also reports the standby's positions.
/// The primary answers as soon as it has records, or after `wait_ms` with none (which is the
/// heartbeat).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fetch {
    pub epoch: u64,
    pub node_id: String,
    pub from: u64,
    /// Epoch of the standby's record at `from - 1` (0 if none), to detect divergence.
    pub prev_epoch: u64,
    pub positions: Positions,
    pub wait_ms: u64,
    pub max_records: u32,
    pub http_addr: Option<String>,
    /// The standby's state includes records it had to discard: re-seed it from a snapshot.
    pub want_snapshot: bool,
    /// The primary's durable index as the standby last heard it: the primary answers early
    /// once it is higher and the standby holds records above it (waiting to apply them).
    pub agreed: u64,
    /// The standby's epoch history (`(epoch, first index)`, at most the last 64): where its
    /// log parts from the primary's is found in one exchange.
    pub history: Vec<(u64, u64)>,
    /// The standby's `HA_FAILOVER_TIMEOUT`: the primary reports a difference (health note).
    pub failover_timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub received: u64,
    pub flushed: u64,
    pub applied: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireRecord {
    pub index: u64,
    pub epoch: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FetchReply {
    /// Records starting at the requested index (possibly none: a heartbeat).
    /// `commit_index` is the highest index the primary has acknowledged to clients;
    /// `ack_received`: the primary waits for receipt (semi_sync), so ack it before the fsync.
    /// `ack_applied`: the primary waits for the apply (remote_apply), so ack it when done.
    /// Otherwise the positions ride on the next fetch: fewer messages per batch.
    /// `in_sync`: the primary has recorded this standby in sync (see `gate`).
    /// `durable_index`: the primary's WAL is durable up to here. Records are shipped before
    /// they are durable on the primary (the fsyncs overlap); the standby applies — and so
    /// shows — only records up to this index, which are agreed: a record the primary then
    /// fails to make durable was never committed.
    Records { epoch: u64, records: Vec<WireRecord>, commit_index: u64, last_index: u64, leader: LeaderHint, ack_received: bool, ack_applied: bool, in_sync: bool, durable_index: u64 },
    /// The standby's log diverged after `after`: keep the tail aside, truncate, fetch again.
    Diverged { epoch: u64, after: u64, leader: LeaderHint },
    /// The records needed were purged (or the standby must roll back state): install a
    /// snapshot first. `snapshot_id` names the prepared snapshot of `size` bytes; `image`:
    /// it is the primary's store image, not a logical snapshot (`snapshot_stream`).
    /// `history`: the primary's epoch history up to the snapshot, which the standby takes
    /// as its own with the snapshot.
    NeedSnapshot { epoch: u64, snapshot_id: u64, size: u64, image: bool, leader: LeaderHint, history: Vec<(u64, u64)> },
    /// The receiver is not a primary (anymore); `epoch` is its epoch. Two standbys use
    /// `last_index` and `node_id` to agree which of them may promote.
    NotPrimary { epoch: u64, leader: Option<LeaderHint>, last_index: u64, node_id: String },
}

/// Standby → primary, one-way: positions after a flush or an apply (for sync levels).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ack {
    pub epoch: u64,
    pub node_id: String,
    pub positions: Positions,
}

/// "Epoch `epoch` exists; stop taking writes." Answered with the receiver's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fence {
    pub epoch: u64,
    pub from: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FenceReply {
    pub epoch: u64,
    /// The receiver is primary (in `epoch`) after handling the fence.
    pub primary: bool,
    pub leader: Option<LeaderHint>,
    /// The receiver's last logged index: a restarting primary compares it with its own.
    pub last_index: u64,
}

/// Primary → standby during a switchover: "you are caught up to `last_index`; promote".
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Promote {
    pub epoch: u64,
    pub last_index: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromoteReply {
    pub epoch: u64,
    pub leader: LeaderHint,
}

/// Standby → primary, for a `consistency=linearizable` read on the standby: "how far must I
/// have applied to serve a linearizable read?"
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadIndex {
    pub epoch: u64,
    pub node_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadIndexReply {
    pub epoch: u64,
    /// The receiver was the primary of `epoch` when it answered.
    pub primary: bool,
    /// The receiver's last logged index then: every acknowledged write, and everything
    /// either node may have applied, is at or below it.
    pub index: u64,
    pub leader: Option<LeaderHint>,
}

/// Primary → witness: "I am primary in `epoch`" (renews the primary's lease there), and
/// whether its standby is in sync — the witness votes only for an in-sync standby.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitnessPing {
    pub epoch: u64,
    pub node_id: String,
    pub standby_in_sync: bool,
    /// The sender's `HA_FAILOVER_TIMEOUT`: the lease and the vote windows are safe only when
    /// the data nodes and the witness use the same one, so the witness refuses another.
    pub failover_timeout_ms: u64,
    /// A switchover: the primary has stopped taking writes and hands over to this node, which
    /// the witness may then vote for at once.
    pub handover_to: Option<String>,
}

/// Standby → witness: "may I become primary in `epoch`?"
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitnessVote {
    pub epoch: u64,
    pub node_id: String,
    /// As in [`WitnessPing`].
    pub failover_timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitnessReply {
    /// The highest epoch the witness has granted or seen.
    pub epoch: u64,
    pub granted: bool,
    pub reason: String,
}

pub fn encode<T: Serialize>(v: &T) -> bytes::Bytes {
    crate::wire::encode(v)
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, String> {
    crate::wire::decode("HA", b)
}
