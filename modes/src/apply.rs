//! The one definition of what a command does to key-value state.
//!
//! Every [`StateMachine`](crate::StateMachine) implementation (redb in the `meridian`
//! package, the in-memory one here) exposes its write transaction as [`KvAccess`] and calls
//! [`apply_command`], so all replicas and all storage engines agree on the result.
//!
//! ## multi_region: stamps, received clocks, collecting tombstones
//!
//! Three invariants make deleted keys collectable without letting them come back; each is
//! enforced here, in the one place every replica goes through.
//!
//! 1. **A region's own stamps strictly increase along its log.** The leader stamps a write as
//!    it proposes it, but two proposals can reach the log in the other order, and a new
//!    leader's clock may trail the old one's. So applying a [`Command::Stamped`] raises its
//!    stamp above the last one this region applied (`own_stamp`, the reserved key
//!    [`clock_key`]), and to at least the collection horizon (3); every replica computes the
//!    same stamp from the same log.
//! 2. **A received clock only claims what has arrived.** A region batch carries `clock`, the
//!    highest raw stamp of the origin's writes up to `through`. By 1, every version the origin
//!    stamps later is stamped above it; batches of one origin are merged in order; so once a
//!    batch is merged, every version of that origin stamped at or below `clock` has arrived
//!    here (or was superseded at the origin before it was shipped). Stored per origin
//!    ([`received_clock_key`]), raised in the same entry as the versions.
//! 3. **Below the horizon, absence is final.** A tombstone is removed only by a
//!    [`Command::CollectTombstones`], only if its stamp is below that command's horizon, and
//!    the horizon is stored ([`horizon_key`]). The region's collector chooses the horizon no
//!    higher than every remote's received clock, and collects this region's own tombstones
//!    only once every remote region has acknowledged them (`region::collect`). A shipped
//!    version below the horizon for a key with no version here is a late copy of something
//!    that has already arrived and lost (by 2), so `merge` drops it instead of resurrecting
//!    a collected key.

use crate::command::{primary_key, Command, CommandResult, CompareTarget, KeyValue, Op, OpResult, Outcome, PrimaryRecord, Stamp, RESERVED_PREFIX};
use crate::conflicts;
use crate::state_machine_error::StateMachineError;

/// Key-value access inside one write transaction.
pub trait KvAccess {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StateMachineError>;
    fn put(&mut self, kv: KeyValue) -> Result<(), StateMachineError>;
    /// Returns whether the key existed.
    fn delete(&mut self, key: &str) -> Result<bool, StateMachineError>;
}

/// Applies `cmd`, carried by the entry at `index`, to `kv`.
pub fn apply_command<K: KvAccess + ?Sized>(
    kv: &mut K,
    index: u64,
    cmd: &Command,
) -> Result<CommandResult, StateMachineError> {
    apply_in(kv, index, cmd, None)
}

/// The key's version as clients see it: a tombstone is absent.
fn live<K: KvAccess + ?Sized>(kv: &mut K, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
    Ok(kv.get(key)?.filter(|v| !v.tombstone))
}

/// `stamp` is set for a [`Command::Stamped`] (multi_region): every version written carries
/// it, and only if it beats the version already there (see [`wins`]).
fn apply_in<K: KvAccess + ?Sized>(
    kv: &mut K,
    index: u64,
    cmd: &Command,
    stamp: Option<&Stamp>,
) -> Result<CommandResult, StateMachineError> {
    let outcome = match cmd {
        Command::Noop => Outcome::Noop,
        Command::Stamped { stamp, command } => {
            let stamp = own_stamp(kv, index, stamp)?;
            return apply_in(kv, index, command, Some(&stamp));
        }
        Command::RegionBatch { origin, through, clock, writes, primary, keep_conflicts } => {
            if let Some(p) = primary {
                set_primary(kv, index, p)?;
            }
            merge(kv, index, origin, *through, *clock, writes, *keep_conflicts)?
        }
        Command::CollectTombstones { horizon, tombstones } => collect(kv, index, *horizon, tombstones)?,
        Command::SetPrimary(p) => {
            set_primary(kv, index, p)?;
            Outcome::Noop
        }
        Command::Put { key, value, if_revision } => {
            let current = live(kv, key)?;
            if let Some(failed) = check_revision(current.as_ref(), *if_revision) {
                failed
            } else {
                put(kv, key, value, index, stamp)?;
                Outcome::Written
            }
        }
        Command::Delete { key, if_revision } => {
            let current = live(kv, key)?;
            if let Some(failed) = check_revision(current.as_ref(), *if_revision) {
                failed
            } else {
                Outcome::Deleted { existed: delete(kv, key, index, stamp)? }
            }
        }
        Command::Txn(txn) => {
            let mut succeeded = true;
            for c in &txn.compare {
                let current = live(kv, &c.key)?;
                let ok = match &c.target {
                    CompareTarget::Revision(r) => current.as_ref().map_or(0, |kv| kv.mod_revision) == *r,
                    CompareTarget::Value(v) => current.as_ref().is_some_and(|kv| &kv.value == v),
                    CompareTarget::Exists(e) => current.is_some() == *e,
                };
                if !ok {
                    succeeded = false;
                    break;
                }
            }
            let ops = if succeeded { &txn.success } else { &txn.failure };
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(match op {
                    Op::Put { key, value } => {
                        put(kv, key, value, index, stamp)?;
                        OpResult::Put { key: key.clone() }
                    }
                    Op::Delete { key } => OpResult::Delete { key: key.clone(), deleted: delete(kv, key, index, stamp)? },
                    Op::Get { key } => OpResult::Get { key: key.clone(), kv: live(kv, key)? },
                });
            }
            Outcome::Txn { succeeded, results }
        }
    };
    Ok(CommandResult { revision: index, outcome })
}

fn check_revision(current: Option<&KeyValue>, if_revision: Option<u64>) -> Option<Outcome> {
    let want = if_revision?;
    let have = current.map_or(0, |kv| kv.mod_revision);
    (have != want).then_some(Outcome::PreconditionFailed { current_revision: have })
}

/// Last write wins: a stamped version replaces what is stored only if its stamp is higher.
/// An unstamped stored version (written before the node was multi-region) always loses.
/// Every region decides the same for the same two versions, in whatever order they arrive.
pub fn wins(new: &Stamp, stored: Option<&KeyValue>) -> bool {
    match stored.and_then(|s| s.stamp.as_ref()) {
        Some(old) => new > old,
        None => true,
    }
}

/// Stamped, the version's parent is the stamp of the version it replaces here.
fn put<K: KvAccess + ?Sized>(kv: &mut K, key: &str, value: &[u8], index: u64, stamp: Option<&Stamp>) -> Result<(), StateMachineError> {
    let stored = kv.get(key)?;
    if let Some(s) = stamp {
        if !wins(s, stored.as_ref()) {
            return Ok(()); // a later version is already here: this one is superseded at once
        }
    }
    let parent = stored.as_ref().and_then(|c| c.stamp.clone());
    let create_revision = stored.filter(|c| !c.tombstone).map_or(index, |c| c.create_revision);
    if stamp.is_some() {
        settle(kv, key, parent.as_ref())?;
    }
    kv.put(KeyValue { key: key.to_owned(), value: value.to_vec(), create_revision, mod_revision: index, stamp: stamp.cloned(), tombstone: false, parent })
}

/// Removes `key`; stamped, leaves a tombstone instead. Returns whether a live version existed.
fn delete<K: KvAccess + ?Sized>(kv: &mut K, key: &str, index: u64, stamp: Option<&Stamp>) -> Result<bool, StateMachineError> {
    let Some(s) = stamp else { return kv.delete(key) };
    let stored = kv.get(key)?;
    let existed = stored.as_ref().is_some_and(|c| !c.tombstone);
    if wins(s, stored.as_ref()) {
        let parent = stored.and_then(|c| c.stamp);
        settle(kv, key, parent.as_ref())?;
        kv.put(KeyValue { key: key.to_owned(), value: Vec::new(), create_revision: index, mod_revision: index, stamp: Some(s.clone()), tombstone: true, parent })?;
    }
    Ok(existed)
}

/// Removes the conflict on `key`, if any, when a version with parent `parent` replaces it
/// having seen every side (see [`crate::conflicts`]).
fn settle<K: KvAccess + ?Sized>(kv: &mut K, key: &str, parent: Option<&Stamp>) -> Result<(), StateMachineError> {
    let record = conflicts::record_key(key);
    if let Some(held) = kv.get(&record)? {
        if conflicts::decode(&held.value).is_none_or(|versions| conflicts::settles(parent, &versions)) {
            kv.delete(&record)?;
        }
    }
    Ok(())
}

/// Keeps `a` and `b` in the conflict on their key (created if there is none).
fn record_conflict<K: KvAccess + ?Sized>(kv: &mut K, index: u64, a: &KeyValue, b: &KeyValue) -> Result<(), StateMachineError> {
    let record = conflicts::record_key(&a.key);
    let held = kv.get(&record)?.and_then(|r| conflicts::decode(&r.value)).unwrap_or_default();
    let versions = conflicts::with(held, &[a, b]);
    kv.put(KeyValue::plain(record, conflicts::encode(&versions), index, index))
}

/// The primary record held, if any.
pub fn primary_record<K: KvAccess + ?Sized>(kv: &mut K) -> Result<Option<PrimaryRecord>, StateMachineError> {
    Ok(kv.get(&primary_key())?.and_then(|v| PrimaryRecord::decode(&v.value)))
}

/// Stores `p` if it supersedes the record held: a maximum, like every other merge here.
fn set_primary<K: KvAccess + ?Sized>(kv: &mut K, index: u64, p: &PrimaryRecord) -> Result<(), StateMachineError> {
    if p.supersedes(primary_record(kv)?.as_ref()) {
        kv.put(KeyValue::plain(primary_key(), p.encode(), index, index))?;
    }
    Ok(())
}

/// The reserved key holding region `origin`'s high-water mark.
pub fn high_water_key(origin: &str) -> String {
    format!("{RESERVED_PREFIX}hwm/{origin}")
}

/// The reserved key holding the last stamp this region gave one of its own writes (invariant 1).
pub fn clock_key() -> String {
    format!("{RESERVED_PREFIX}region/clock")
}

/// The reserved key holding the highest `clock` merged from `origin` (invariant 2).
pub fn received_clock_key(origin: &str) -> String {
    format!("{RESERVED_PREFIX}rclk/{origin}")
}

/// The reserved key holding this region's collection horizon (invariant 3).
pub fn horizon_key() -> String {
    format!("{RESERVED_PREFIX}region/horizon")
}

/// The number a reserved key holds (0 when absent or not 8 bytes).
pub fn number(v: Option<KeyValue>) -> u64 {
    v.and_then(|v| v.value.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// A reserved key's number (0 when absent).
pub fn reserved_u64<K: KvAccess + ?Sized>(kv: &mut K, key: &str) -> Result<u64, StateMachineError> {
    Ok(number(kv.get(key)?))
}

/// Raises a reserved key's number to `to` (never lowers it).
fn raise_u64<K: KvAccess + ?Sized>(kv: &mut K, index: u64, key: String, to: u64) -> Result<u64, StateMachineError> {
    let held = reserved_u64(kv, &key)?;
    if to > held {
        kv.put(KeyValue::plain(key, to.to_le_bytes().to_vec(), index, index))?;
        return Ok(to);
    }
    Ok(held)
}

/// The stamp a [`Command::Stamped`] is applied with: the leader's, raised above the last one
/// this region applied (invariant 1) and to at least the collection horizon, so that a write
/// made here after a tombstone was collected beats that tombstone as it would have had it
/// been kept (invariant 3).
fn own_stamp<K: KvAccess + ?Sized>(kv: &mut K, index: u64, proposed: &Stamp) -> Result<Stamp, StateMachineError> {
    let last = reserved_u64(kv, &clock_key())?;
    let hlc = proposed.hlc.max(last + 1).max(reserved_u64(kv, &horizon_key())?);
    kv.put(KeyValue::plain(clock_key(), hlc.to_le_bytes().to_vec(), index, index))?;
    Ok(Stamp { hlc, region: proposed.region.clone() })
}

/// The high-water mark stored for `origin` (0 = nothing received yet).
pub fn high_water<K: KvAccess + ?Sized>(kv: &mut K, origin: &str) -> Result<u64, StateMachineError> {
    reserved_u64(kv, &high_water_key(origin))
}

/// Applies a [`Command::RegionBatch`]: each shipped version by last-write-wins, then the
/// origin's high-water mark raised (never lowered) to `through` and its received clock to
/// `clock`. Applying the same batch twice, or an older one after a newer, changes nothing:
/// every step is a maximum. A version for an absent key stamped below the collection horizon
/// is dropped (invariant 3). With `keep_conflicts` (`CLUSTER_CONFLICT_STRATEGY=manual`), a
/// shipped version concurrent with the one held is recorded as a conflict beside the
/// last-write-wins outcome ([`crate::conflicts`]).
fn merge<K: KvAccess + ?Sized>(
    kv: &mut K,
    index: u64,
    origin: &str,
    through: u64,
    clock: u64,
    writes: &[KeyValue],
    keep_conflicts: bool,
) -> Result<Outcome, StateMachineError> {
    let horizon = reserved_u64(kv, &horizon_key())?;
    let (mut won, mut conflicts) = (0, 0);
    for w in writes {
        let Some(stamp) = &w.stamp else { continue }; // validated on the way in; never unstamped
        let stored = kv.get(&w.key)?;
        if stored.is_none() && stamp.hlc < horizon {
            continue; // arrived before and lost to a tombstone since collected
        }
        if keep_conflicts {
            if let Some(held) = stored.as_ref().filter(|held| conflicts::concurrent(held, w)) {
                record_conflict(kv, index, held, w)?;
                conflicts += 1;
            }
        }
        if !wins(stamp, stored.as_ref()) {
            continue;
        }
        let create_revision = match (&stored, w.tombstone) {
            (Some(c), false) if !c.tombstone => c.create_revision,
            _ => index,
        };
        settle(kv, &w.key, w.parent.as_ref())?;
        let value = if w.tombstone { Vec::new() } else { w.value.clone() };
        kv.put(KeyValue { key: w.key.clone(), value, create_revision, mod_revision: index, stamp: Some(stamp.clone()), tombstone: w.tombstone, parent: w.parent.clone() })?;
        won += 1;
    }
    let high = raise_u64(kv, index, high_water_key(origin), through)?;
    raise_u64(kv, index, received_clock_key(origin), clock)?;
    Ok(Outcome::RegionMerged { high_water: high, won, conflicts })
}

/// Applies a [`Command::CollectTombstones`]: a named tombstone goes only if it is still the
/// key's version (a newer version may have arrived since the collector looked) and is below
/// the horizon, which is raised first (invariant 3).
fn collect<K: KvAccess + ?Sized>(kv: &mut K, index: u64, horizon: u64, tombstones: &[(String, Stamp)]) -> Result<Outcome, StateMachineError> {
    let horizon = raise_u64(kv, index, horizon_key(), horizon)?;
    let mut removed = 0;
    for (key, stamp) in tombstones {
        let Some(v) = kv.get(key)? else { continue };
        if v.tombstone && v.stamp.as_ref() == Some(stamp) && stamp.hlc < horizon {
            kv.delete(key)?;
            removed += 1;
        }
    }
    Ok(Outcome::Collected { removed })
}
