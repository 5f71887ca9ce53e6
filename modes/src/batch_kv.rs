//! [`BatchKv`]: the key-value access one apply batch goes through, with the reads a batch
//! repeats served from memory.
//!
//! Why: in `multi_region` every stamped write reads the region clock and the collection
//! horizon and writes the clock again (`apply::own_stamp`), and a put reads its key twice
//! (the precondition, then the version it replaces). Each of those was a B-tree lookup and
//! a checksum check in redb, per entry, on every node of the region. Here reserved keys are
//! read once per batch and written back once at its end, and the key read last is not read
//! again until something writes it.
//!
//! Exactness: a batch is applied in one storage transaction (or staged set) that commits
//! whole or not at all, and every access during it goes through this wrapper, so serving a
//! cached value or deferring a reserved write to [`BatchKv::finish`] gives the transaction
//! exactly the state the uncached accesses would have: a reserved key's last write wins
//! either way, and nothing outside the batch reads the transaction before it commits.

use std::collections::HashMap;

use crate::apply::KvAccess;
use crate::command::{is_reserved, KeyValue};
use crate::state_machine::StateMachineError;

pub struct BatchKv<'k, K: KvAccess + ?Sized> {
    inner: &'k mut K,
    /// Reserved keys read or written in this batch: (the value now, written since read).
    reserved: HashMap<String, (Option<KeyValue>, bool)>,
    /// The ordinary key read last, and what it held; dropped by any write to that key.
    last: Option<(String, Option<KeyValue>)>,
}

impl<'k, K: KvAccess + ?Sized> BatchKv<'k, K> {
    pub fn new(inner: &'k mut K) -> Self {
        BatchKv { inner, reserved: HashMap::new(), last: None }
    }

    /// Writes the reserved keys this batch changed. Call once, after the batch's last entry
    /// and before its transaction commits; a batch that failed is dropped without it.
    pub fn finish(self) -> Result<(), StateMachineError> {
        for (key, (value, written)) in self.reserved {
            if !written {
                continue;
            }
            match value {
                Some(kv) => self.inner.put(kv)?,
                None => {
                    self.inner.delete(&key)?;
                }
            }
        }
        Ok(())
    }

    fn forget(&mut self, key: &str) {
        if self.last.as_ref().is_some_and(|(k, _)| k == key) {
            self.last = None;
        }
    }
}

impl<K: KvAccess + ?Sized> KvAccess for BatchKv<'_, K> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        if is_reserved(key) {
            if let Some((v, _)) = self.reserved.get(key) {
                return Ok(v.clone());
            }
            let v = self.inner.get(key)?;
            self.reserved.insert(key.to_owned(), (v.clone(), false));
            return Ok(v);
        }
        if let Some((k, v)) = &self.last {
            if k == key {
                return Ok(v.clone());
            }
        }
        let v = self.inner.get(key)?;
        self.last = Some((key.to_owned(), v.clone()));
        Ok(v)
    }

    fn put(&mut self, kv: KeyValue) -> Result<(), StateMachineError> {
        if is_reserved(&kv.key) {
            self.reserved.insert(kv.key.clone(), (Some(kv), true));
            return Ok(());
        }
        self.forget(&kv.key);
        self.inner.put(kv)
    }

    fn delete(&mut self, key: &str) -> Result<bool, StateMachineError> {
        if is_reserved(key) {
            let existed = self.get(key)?.is_some();
            self.reserved.insert(key.to_owned(), (None, true));
            return Ok(existed);
        }
        self.forget(key);
        self.inner.delete(key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::apply::{apply_command, clock_key};
    use crate::command::{Command, Stamp};

    /// Counts the reads that reach the store underneath.
    struct Counting {
        kv: BTreeMap<String, KeyValue>,
        reads: usize,
    }

    impl KvAccess for Counting {
        fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
            self.reads += 1;
            KvAccess::get(&mut self.kv, key)
        }
        fn put(&mut self, kv: KeyValue) -> Result<(), StateMachineError> {
            KvAccess::put(&mut self.kv, kv)
        }
        fn delete(&mut self, key: &str) -> Result<bool, StateMachineError> {
            KvAccess::delete(&mut self.kv, key)
        }
    }

    fn stamped(key: &str, value: &str, hlc: u64) -> Command {
        let put = Command::Put { key: key.into(), value: value.as_bytes().to_vec(), if_revision: None };
        Command::Stamped { stamp: Stamp { hlc, region: "us".into() }, command: Box::new(put) }
    }

    fn batch() -> Vec<Command> {
        let mut cmds: Vec<Command> = (0..50).map(|i| stamped(&format!("k{}", i % 7), &format!("v{i}"), 1000 - i)).collect();
        cmds.push(Command::Delete { key: "k3".into(), if_revision: None });
        cmds.push(Command::Put { key: "k3".into(), value: b"again".to_vec(), if_revision: Some(0) });
        cmds
    }

    /// The same batch applied through the cache and without it leaves the same state and
    /// gives the same results, with fewer reads reaching the store.
    #[test]
    fn a_batch_through_the_cache_ends_where_it_ends_without_it() {
        let (mut plain, mut cached) = (Counting { kv: BTreeMap::new(), reads: 0 }, Counting { kv: BTreeMap::new(), reads: 0 });
        let mut expected = Vec::new();
        for (i, c) in batch().iter().enumerate() {
            expected.push(apply_command(&mut plain, i as u64 + 1, c).unwrap());
        }
        let mut got = Vec::new();
        let mut access = BatchKv::new(&mut cached);
        for (i, c) in batch().iter().enumerate() {
            got.push(apply_command(&mut access, i as u64 + 1, c).unwrap());
        }
        access.finish().unwrap();
        assert_eq!(format!("{got:?}"), format!("{expected:?}"));
        assert_eq!(cached.kv, plain.kv);
        assert!(plain.kv.contains_key(&clock_key()), "the batch stamped writes: the clock is stored");
        assert!(cached.reads * 2 < plain.reads, "the cache saved no reads: {} against {}", cached.reads, plain.reads);
    }

    /// A batch dropped without `finish` (it failed) writes no reserved key.
    #[test]
    fn a_batch_dropped_unfinished_writes_no_reserved_key() {
        let mut store = Counting { kv: BTreeMap::new(), reads: 0 };
        let mut access = BatchKv::new(&mut store);
        apply_command(&mut access, 1, &stamped("a", "1", 5)).unwrap();
        drop(access);
        assert!(!store.kv.contains_key(&clock_key()));
    }
}
