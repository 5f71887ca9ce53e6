//! The primary record this node's applied state holds, read from the store only when it may
//! have changed.
//!
//! Every client write asks it (does this region take writes?), and so does the shipper on
//! every turn and every batch this region merges; read from the store each time it cost a
//! storage read transaction per write (about 2 % of the region leader's CPU under load: the
//! record is not among the recent writes the store keeps in memory). Filing a reading under
//! the applied position did not help under load, where that position moves with every write.
//!
//! The record changes only by applying an entry that carries one ([`may_change`]) or by
//! installing a snapshot, and every apply and install on this node goes through the
//! multi-region wrapper ([`super::observe`]), which wraps those in [`PrimaryView::changing`].
//! That keeps a generation, seqlock style: odd while such a change is under way, bumped to the
//! next even number once it is done. A reading is filed only under an even generation that
//! did not move while the store was read, so a filed reading is never older than the last
//! change that completed, and [`PrimaryView::get`] serves it only while no other has
//! started. (A restart after a storage failure starts the mode again, with a new view.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::command::{primary_key, Command, PrimaryRecord};
use crate::state_machine::StateMachine;

pub struct PrimaryView {
    sm: Arc<dyn StateMachine>,
    /// Even: no change of the record under way; odd: one is (see the module comment).
    generation: AtomicU64,
    /// (generation, the record as of it).
    reading: Mutex<Option<(u64, Option<PrimaryRecord>)>>,
}

impl PrimaryView {
    pub fn new(sm: Arc<dyn StateMachine>) -> Arc<PrimaryView> {
        Arc::new(PrimaryView { sm, generation: AtomicU64::new(0), reading: Mutex::new(None) })
    }

    /// The primary record as of this node's applied state.
    pub fn get(&self) -> Option<PrimaryRecord> {
        let before = self.generation.load(Ordering::SeqCst);
        if before.is_multiple_of(2) {
            if let Some((at, record)) = &*self.reading.lock().unwrap() {
                if *at == before {
                    return record.clone();
                }
            }
        }
        let record = read(&*self.sm);
        if before.is_multiple_of(2) && self.generation.load(Ordering::SeqCst) == before {
            *self.reading.lock().unwrap() = Some((before, record.clone()));
        }
        record
    }

    /// Runs `f`, an apply or install that may change the record, as a change: no reading
    /// made before it ends is served after it. A panic in `f` leaves the generation odd:
    /// every later `get` reads the store.
    pub fn changing<T>(&self, f: impl FnOnce() -> T) -> T {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let out = f();
        self.generation.fetch_add(1, Ordering::SeqCst);
        out
    }
}

/// Whether applying `c` may change the primary record.
pub fn may_change(c: &Command) -> bool {
    matches!(c, Command::SetPrimary(_) | Command::RegionBatch { primary: Some(_), .. })
}

/// The primary record the store holds now.
pub fn read(sm: &dyn StateMachine) -> Option<PrimaryRecord> {
    sm.get_version(&primary_key()).ok().flatten().and_then(|kv| PrimaryRecord::decode(&kv.value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::LogPayload;
    use crate::state_machine::{LogEntry, MemStateMachine};

    fn set(sm: &MemStateMachine, index: u64, region: &str, epoch: u64) {
        let cmd = Command::SetPrimary(PrimaryRecord { epoch, region: region.into(), hlc: epoch });
        assert!(may_change(&cmd));
        sm.apply(&[LogEntry::from_payload(index, 1, LogPayload::Normal(cmd))]).unwrap();
    }

    #[test]
    fn a_new_record_is_seen_as_soon_as_its_entry_is_applied() {
        let sm = Arc::new(MemStateMachine::default());
        let view = PrimaryView::new(sm.clone());
        assert_eq!(view.get(), None);
        view.changing(|| set(&sm, 1, "us", 1));
        assert_eq!(view.get().map(|p| p.region), Some("us".into()));
        assert_eq!(view.get().map(|p| p.region), Some("us".into()), "no change since: the filed reading");
        view.changing(|| set(&sm, 2, "eu", 2));
        assert_eq!(view.get().map(|p| (p.region, p.epoch)), Some(("eu".into(), 2)));
    }

    #[test]
    fn a_reading_made_during_a_change_is_not_served_after_it() {
        let sm = Arc::new(MemStateMachine::default());
        let view = PrimaryView::new(sm.clone());
        view.changing(|| set(&sm, 1, "us", 1));
        assert_eq!(view.get().map(|p| p.region), Some("us".into()));
        view.changing(|| {
            assert_eq!(view.get().map(|p| p.region), Some("us".into()), "read before the apply, while the change is under way");
            set(&sm, 2, "eu", 2);
            assert_eq!(view.get().map(|p| p.region), Some("eu".into()), "under way: the store, not the filed reading");
        });
        assert_eq!(view.get().map(|p| p.region), Some("eu".into()));
    }
}
