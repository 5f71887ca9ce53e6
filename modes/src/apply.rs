//! The one definition of what a command does to key-value state.
//!
//! Every [`StateMachine`](crate::StateMachine) implementation (redb in the `meridian`
//! package, the in-memory one here) exposes its write transaction as [`KvAccess`] and calls
//! [`apply_command`], so all replicas and all storage engines agree on the result.

use crate::command::{primary_key, Command, CommandResult, CompareTarget, KeyValue, Op, OpResult, Outcome, PrimaryRecord, Stamp, RESERVED_PREFIX};
use crate::state_machine::StateMachineError;

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
        Command::Stamped { stamp, command } => return apply_in(kv, index, command, Some(stamp)),
        Command::RegionBatch { origin, through, writes, primary } => {
            if let Some(p) = primary {
                set_primary(kv, index, p)?;
            }
            merge(kv, index, origin, *through, writes)?
        }
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

fn put<K: KvAccess + ?Sized>(kv: &mut K, key: &str, value: &[u8], index: u64, stamp: Option<&Stamp>) -> Result<(), StateMachineError> {
    let stored = kv.get(key)?;
    if let Some(s) = stamp {
        if !wins(s, stored.as_ref()) {
            return Ok(()); // a later version is already here: this one is superseded at once
        }
    }
    let create_revision = stored.filter(|c| !c.tombstone).map_or(index, |c| c.create_revision);
    kv.put(KeyValue { key: key.to_owned(), value: value.to_vec(), create_revision, mod_revision: index, stamp: stamp.cloned(), tombstone: false })
}

/// Removes `key`; stamped, leaves a tombstone instead. Returns whether a live version existed.
fn delete<K: KvAccess + ?Sized>(kv: &mut K, key: &str, index: u64, stamp: Option<&Stamp>) -> Result<bool, StateMachineError> {
    let Some(s) = stamp else { return kv.delete(key) };
    let stored = kv.get(key)?;
    let existed = stored.as_ref().is_some_and(|c| !c.tombstone);
    if wins(s, stored.as_ref()) {
        kv.put(KeyValue { key: key.to_owned(), value: Vec::new(), create_revision: index, mod_revision: index, stamp: Some(s.clone()), tombstone: true })?;
    }
    Ok(existed)
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

/// The high-water mark stored for `origin` (0 = nothing received yet).
pub fn high_water<K: KvAccess + ?Sized>(kv: &mut K, origin: &str) -> Result<u64, StateMachineError> {
    Ok(kv.get(&high_water_key(origin))?.and_then(|v| v.value.try_into().ok()).map_or(0, u64::from_le_bytes))
}

/// Applies a [`Command::RegionBatch`]: each shipped version by last-write-wins, then the
/// origin's high-water mark raised (never lowered) to `through`. Applying the same batch
/// twice, or an older one after a newer, changes nothing: every step is a maximum.
fn merge<K: KvAccess + ?Sized>(kv: &mut K, index: u64, origin: &str, through: u64, writes: &[KeyValue]) -> Result<Outcome, StateMachineError> {
    let mut won = 0;
    for w in writes {
        let Some(stamp) = &w.stamp else { continue }; // validated on the way in; never unstamped
        let stored = kv.get(&w.key)?;
        if !wins(stamp, stored.as_ref()) {
            continue;
        }
        let create_revision = match (&stored, w.tombstone) {
            (Some(c), false) if !c.tombstone => c.create_revision,
            _ => index,
        };
        let value = if w.tombstone { Vec::new() } else { w.value.clone() };
        kv.put(KeyValue { key: w.key.clone(), value, create_revision, mod_revision: index, stamp: Some(stamp.clone()), tombstone: w.tombstone })?;
        won += 1;
    }
    let mut high = high_water(kv, origin)?;
    if through > high {
        high = through;
        kv.put(KeyValue::plain(high_water_key(origin), high.to_le_bytes().to_vec(), index, index))?;
    }
    Ok(Outcome::RegionMerged { high_water: high, won })
}
