//! multi_region with `CLUSTER_CONFLICT_STRATEGY=manual`: which versions conflict, and the
//! record of a conflict kept in the replicated state.
//!
//! Every stamped version carries its *parent*: the stamp of the version it replaced in the
//! region that wrote it. Two versions of a key from different regions **conflict** when
//! neither region had seen the other's version as it wrote its own: each one's parent is
//! below the other's stamp. (A region that had seen a version holds it or something stamped
//! above it, so its next write's parent is at least that high.) The test is symmetric, so every
//! region that receives both versions, in either order, flags the same pair.
//!
//! Last-write-wins still decides what the key holds, so regions converge as they do without
//! `manual`; the conflict is *kept*: both versions, under the reserved key
//! [`record_key`], until a version written by a region that had seen every side of it (its
//! parent at or above each) replaces them. `POST /admin/conflicts/{id}/resolve` writes such a
//! version; so does any later write of the key in a region that has the conflict. A
//! conflict's id is the hex of its key, the same in every region.

use crate::command::{KeyValue, Stamp, RESERVED_PREFIX};

const PREFIX: &str = "conflict/";

/// The reserved-key prefix under which conflicts are stored.
pub fn record_prefix() -> String {
    format!("{RESERVED_PREFIX}{PREFIX}")
}

/// The reserved key holding the conflict on `key`.
pub fn record_key(key: &str) -> String {
    format!("{}{key}", record_prefix())
}

/// The client key a conflict record is about, if `reserved` is one.
pub fn key_of_record(reserved: &str) -> Option<&str> {
    reserved.strip_prefix(RESERVED_PREFIX)?.strip_prefix(PREFIX)
}

/// A conflict's id in the API: the hex of its key.
pub fn id_of(key: &str) -> String {
    hex::encode(key.as_bytes())
}

/// The key a conflict id names, if it is one.
pub fn key_of_id(id: &str) -> Option<String> {
    String::from_utf8(hex::decode(id).ok()?).ok()
}

/// True when `a` and `b` are versions of one key written in different regions, neither
/// region having seen the other's (see the module docs). Two deletes, or two equal values,
/// are not a conflict: either outcome is the same.
pub fn concurrent(a: &KeyValue, b: &KeyValue) -> bool {
    let (Some(sa), Some(sb)) = (&a.stamp, &b.stamp) else { return false };
    if sa.region == sb.region || (a.tombstone && b.tombstone) || (!a.tombstone && !b.tombstone && a.value == b.value) {
        return false;
    }
    a.parent.as_ref() < Some(sb) && b.parent.as_ref() < Some(sa)
}

/// The versions in a conflict, as stored (ordered by stamp, one per stamp).
pub fn decode(value: &[u8]) -> Option<Vec<KeyValue>> {
    postcard::from_bytes(value).ok()
}

pub fn encode(versions: &[KeyValue]) -> Vec<u8> {
    postcard::to_allocvec(versions).expect("plain data encodes")
}

/// `versions` with `more` added (by stamp, without repeats).
pub fn with(mut versions: Vec<KeyValue>, more: &[&KeyValue]) -> Vec<KeyValue> {
    for m in more {
        if !versions.iter().any(|v| v.stamp == m.stamp) {
            versions.push((*m).clone());
        }
    }
    versions.sort_by(|a, b| a.stamp.cmp(&b.stamp));
    versions
}

/// True when a version whose parent is `parent` was written having seen every version in
/// the conflict.
pub fn settles(parent: Option<&Stamp>, versions: &[KeyValue]) -> bool {
    versions.iter().all(|v| parent >= v.stamp.as_ref())
}
