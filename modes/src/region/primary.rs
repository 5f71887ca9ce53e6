//! The primary record this node's applied state holds, read from the store at most once per
//! applied position.
//!
//! Every client write asks it (does this region take writes?), and so does the shipper on
//! every turn; read from the store each time it cost a storage read transaction per write
//! (about 2 % of the region leader's CPU under load: the record is not among the recent
//! writes the store keeps in memory). The record changes only by applying a log entry, so a
//! reading made at applied position `a` holds until the applied position moves.
//!
//! Why a reading is never older than the position it is filed under: the applied position
//! is read first, the record after, and the store makes an entry's writes readable no later
//! than it reports the entry applied — so the record read reflects position `a` or later.

use std::sync::{Arc, Mutex};

use crate::command::{primary_key, PrimaryRecord};
use crate::state_machine::StateMachine;

pub struct PrimaryView {
    sm: Arc<dyn StateMachine>,
    /// (applied position, the record as of that position or later).
    reading: Mutex<Option<(u64, Option<PrimaryRecord>)>>,
}

impl PrimaryView {
    pub fn new(sm: Arc<dyn StateMachine>) -> Arc<PrimaryView> {
        Arc::new(PrimaryView { sm, reading: Mutex::new(None) })
    }

    /// The primary record as of this node's applied position.
    pub fn get(&self) -> Option<PrimaryRecord> {
        let applied = self.sm.applied_index();
        if let Some((at, record)) = &*self.reading.lock().unwrap() {
            if *at == applied {
                return record.clone();
            }
        }
        let record = read(&*self.sm);
        let mut reading = self.reading.lock().unwrap();
        // A concurrent caller may have filed a later position meanwhile: keep the later one.
        if reading.as_ref().is_none_or(|(at, _)| *at <= applied) {
            *reading = Some((applied, record.clone()));
        }
        record
    }
}

/// The primary record the store holds now.
pub fn read(sm: &dyn StateMachine) -> Option<PrimaryRecord> {
    sm.get_version(&primary_key()).ok().flatten().and_then(|kv| PrimaryRecord::decode(&kv.value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::payload::LogPayload;
    use crate::state_machine::{LogEntry, MemStateMachine};

    fn set(sm: &MemStateMachine, index: u64, region: &str, epoch: u64) {
        let cmd = Command::SetPrimary(PrimaryRecord { epoch, region: region.into(), hlc: epoch });
        sm.apply(&[LogEntry::from_payload(index, 1, LogPayload::Normal(cmd))]).unwrap();
    }

    #[test]
    fn a_new_record_is_seen_as_soon_as_its_entry_is_applied() {
        let sm = Arc::new(MemStateMachine::default());
        let view = PrimaryView::new(sm.clone());
        assert_eq!(view.get(), None);
        set(&sm, 1, "us", 1);
        assert_eq!(view.get().map(|p| p.region), Some("us".into()));
        assert_eq!(view.get().map(|p| p.region), Some("us".into()), "the same position: the filed reading");
        set(&sm, 2, "eu", 2);
        assert_eq!(view.get().map(|p| (p.region, p.epoch)), Some(("eu".into(), 2)));
    }
}
