//! The Region message family: what one region's leader sends another.

use serde::{Deserialize, Serialize};

use crate::command::{KeyValue, PrimaryRecord};
use crate::transport::Family;

/// A batch of versions from `origin` (request: [`ShipRequest`], reply: [`ShipReply`]). An
/// empty batch with `through = 0` only asks for the receiver's high-water mark of `origin`.
pub const SHIP: u16 = Family::Region.msg(0x01);

/// A client write relayed to the primary region (request: [`crate::forward::ForwardRequest`],
/// reply: [`crate::forward::ForwardReply`]).
pub const FORWARD: u16 = Family::Region.msg(0x02);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShipRequest {
    /// The sending region (`CLUSTER_REGION_ID`); must be one the receiver lists.
    pub origin: String,
    /// Ordered batches (0: none, e.g. a probe or a full resend): the position the previous
    /// batch went up to. The receiver merges it only once its mark for the origin has
    /// reached `after`, so a mark never passes a batch that was lost on the way.
    pub after: u64,
    /// The origin's log position every version up to which is in this batch or an earlier
    /// one; 0 for a batch that must not move the mark (part of a full-state resend).
    pub through: u64,
    /// The highest stamp the origin gave its own writes up to `through` (0: says nothing).
    /// The origin stamps everything after `through` higher, so once this batch is merged every
    /// version of the origin stamped at or below `clock` is here: the receiver may collect
    /// tombstones below it (invariant 2 in [`crate::apply`]).
    pub clock: u64,
    /// Versions written in the origin, each with its stamp.
    pub writes: Vec<KeyValue>,
    /// The origin's primary record, so a promotion reaches every region with the data.
    pub primary: Option<PrimaryRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShipReply {
    /// Committed through the receiver's Raft log: its mark for the origin is now `high_water`.
    Merged { high_water: u64, primary: Option<PrimaryRecord> },
    /// Not taken, and why (unknown origin, no leader in the receiving region, ...).
    Refused { code: String, message: String },
}
