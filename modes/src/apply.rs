//! The one definition of what a command does to key-value state.
//!
//! Every [`StateMachine`](crate::StateMachine) implementation (redb in the `meridian`
//! package, the in-memory one here) exposes its write transaction as [`KvAccess`] and calls
//! [`apply_command`], so all replicas and all storage engines agree on the result.

use crate::command::{Command, CompareTarget, KeyValue, Op, OpResult, Outcome, CommandResult};
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
    let outcome = match cmd {
        Command::Noop => Outcome::Noop,
        Command::Put { key, value, if_revision } => {
            let current = kv.get(key)?;
            if let Some(failed) = check_revision(current.as_ref(), *if_revision) {
                failed
            } else {
                put(kv, current, key, value, index)?;
                Outcome::Written
            }
        }
        Command::Delete { key, if_revision } => {
            let current = kv.get(key)?;
            if let Some(failed) = check_revision(current.as_ref(), *if_revision) {
                failed
            } else {
                Outcome::Deleted { existed: kv.delete(key)? }
            }
        }
        Command::Txn(txn) => {
            let mut succeeded = true;
            for c in &txn.compare {
                let current = kv.get(&c.key)?;
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
                        let current = kv.get(key)?;
                        put(kv, current, key, value, index)?;
                        OpResult::Put { key: key.clone() }
                    }
                    Op::Delete { key } => OpResult::Delete { key: key.clone(), deleted: kv.delete(key)? },
                    Op::Get { key } => OpResult::Get { key: key.clone(), kv: kv.get(key)? },
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

fn put<K: KvAccess + ?Sized>(
    kv: &mut K,
    current: Option<KeyValue>,
    key: &str,
    value: &[u8],
    index: u64,
) -> Result<(), StateMachineError> {
    let create_revision = current.map_or(index, |c| c.create_revision);
    kv.put(KeyValue { key: key.to_owned(), value: value.to_vec(), create_revision, mod_revision: index })
}
