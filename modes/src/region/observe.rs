//! The state machine as the multi-region mode sees it: every applied stamp moves this node's
//! hybrid logical clock forward, so a write stamped here after a version was applied here is
//! stamped above it (see [`super::hlc`]). While this node ships, what each applied entry
//! touched is recorded in the [`Feed`]. An apply or install that may change the primary
//! record runs as a change of the [`PrimaryView`], so the view's filed reading is never served
//! past it. Everything else passes straight through.

use std::sync::Arc;

use super::feed::Feed;
use super::hlc::Hlc;
use super::primary::{may_change, PrimaryView};
use crate::command::{Command, CommandResult, KeyValue};
use crate::state_machine::{AppliedState, LogEntry, ScanEvent, StateMachine, StateMachineError};

pub struct Observed {
    inner: Arc<dyn StateMachine>,
    hlc: Arc<Hlc>,
    feed: Arc<Feed>,
    primary: Arc<PrimaryView>,
}

impl Observed {
    pub fn new(inner: Arc<dyn StateMachine>, hlc: Arc<Hlc>, feed: Arc<Feed>, primary: Arc<PrimaryView>) -> Observed {
        Observed { inner, hlc, feed, primary }
    }
}

fn highest_stamp(c: &Command) -> u64 {
    match c {
        Command::Stamped { stamp, .. } => stamp.hlc,
        Command::SetPrimary(p) => p.hlc,
        // The batch's clock too: the origin's writes up to it have all arrived, so a write
        // here should be stamped after them.
        Command::RegionBatch { writes, clock, .. } => writes.iter().filter_map(|w| w.stamp.as_ref()).map(|s| s.hlc).max().unwrap_or(0).max(*clock),
        Command::CollectTombstones { horizon, .. } => *horizon,
        _ => 0,
    }
}

impl StateMachine for Observed {
    fn apply(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError> {
        let out = if entries.iter().any(|e| may_change(&e.command)) {
            self.primary.changing(|| self.inner.apply(entries))?
        } else {
            self.inner.apply(entries)?
        };
        if let Some(h) = entries.iter().map(|e| highest_stamp(&e.command)).max() {
            self.hlc.observe(h);
        }
        self.feed.record(entries);
        Ok(out)
    }
    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }
    fn applied_state(&self) -> Result<AppliedState, StateMachineError> {
        self.inner.applied_state()
    }
    fn durable_index(&self) -> u64 {
        self.inner.durable_index()
    }
    fn checkpoint(&self) -> Result<u64, StateMachineError> {
        self.inner.checkpoint()
    }
    fn checkpoint_due(&self) -> bool {
        self.inner.checkpoint_due()
    }
    fn get_version(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        self.inner.get_version(key)
    }
    fn get_versions(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, StateMachineError> {
        self.inner.get_versions(keys)
    }
    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        self.inner.list(prefix, start_after, limit)
    }
    fn list_versions(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        self.inner.list_versions(prefix, start_after, limit)
    }
    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
        self.inner.scan(visit)
    }
    fn damage(&self) -> Option<String> {
        self.inner.damage()
    }
    fn storage_failure(&self) -> Option<String> {
        self.inner.storage_failure()
    }
    fn reopen_storage(&self) -> Result<(), StateMachineError> {
        self.primary.changing(|| self.inner.reopen_storage())
    }
    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        meta: Option<Vec<u8>>,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError> {
        let hlc = self.hlc.clone();
        self.feed.clear();
        self.primary.changing(|| {
            self.inner.replace_all(applied_index, epoch, meta, &mut || {
                let e = entries()?;
                if let Some(st) = e.as_ref().and_then(|kv| kv.stamp.as_ref()) {
                    hlc.observe(st.hlc);
                }
                Ok(e)
            })
        })
    }
}
