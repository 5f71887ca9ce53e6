//! openraft's own storage test suite (`openraft::testing::log::Suite`: vote persistence,
//! append/truncate/purge without holes, last-log and purged log ids, membership in log and
//! state machine, initial state after restart, snapshots) run case by case against
//! Meridian's Raft log storage on the real WAL and its state-machine adapter.
//!
//! The suite applies entries to state machines with holes before them (e.g. a membership at
//! index 3 on an empty machine), which Meridian's state machines refuse by design
//! (`state_machine::should_apply`: an entry that is not the next one is damage; openraft
//! itself only ever applies contiguously). [`GapFilling`] lets the suite do that by applying
//! no-ops for the hole first; everything else is the production code.

use std::sync::Arc;

use meridian_modes::raft::log_store::LogStore;
use meridian_modes::raft::sm_store::SmStore;
use meridian_modes::raft::types::TypeConfig;
use meridian_modes::command::{Command, CommandResult, KeyValue};
use meridian_modes::state_machine::{AppliedState, LogEntry, MemStateMachine, ScanEvent, StateMachine, StateMachineError};
use meridian_wal::{Wal, WalOptions};
use openraft::testing::log::Suite;

type S = Suite<TypeConfig, LogStore, SmStore, Builder, tempfile::TempDir>;

struct Builder;

impl openraft::testing::log::StoreBuilder<TypeConfig, LogStore, SmStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, SmStore), openraft::StorageError<TypeConfig>> {
        let (dir, log, sm) = build();
        Ok((dir, log, sm))
    }
}

fn build() -> (tempfile::TempDir, LogStore, SmStore) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions::new(dir.path().join("wal"))).unwrap();
    let log = LogStore::new(wal).unwrap();
    let sm = SmStore::new(Arc::new(GapFilling(MemStateMachine::default())), dir.path()).unwrap();
    (dir, log, sm)
}

/// A [`MemStateMachine`] that applies no-ops for any hole before an entry (see the module doc).
struct GapFilling(MemStateMachine);

impl StateMachine for GapFilling {
    fn apply(&self, entries: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError> {
        let mut all = Vec::new();
        let mut next = self.0.applied_index() + 1;
        for e in entries {
            while next < e.index {
                all.push(LogEntry { index: next, epoch: e.epoch, command: Command::Noop, meta: None });
                next += 1;
            }
            next = next.max(e.index + 1);
            all.push(e.clone());
        }
        let filled = all.len() - entries.len();
        let mut results = self.0.apply(&all)?;
        Ok(results.split_off(filled.min(results.len())))
    }
    fn applied_index(&self) -> u64 {
        self.0.applied_index()
    }
    fn durable_index(&self) -> u64 {
        self.0.durable_index()
    }
    fn checkpoint(&self) -> Result<u64, StateMachineError> {
        self.0.checkpoint()
    }
    fn get_version(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        self.0.get_version(key)
    }
    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        self.0.list(prefix, start_after, limit)
    }
    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
        self.0.scan(visit)
    }
    fn applied_state(&self) -> Result<AppliedState, StateMachineError> {
        self.0.applied_state()
    }
    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        meta: Option<Vec<u8>>,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError> {
        self.0.replace_all(applied_index, epoch, meta, entries)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    macro_rules! case {
        ($name:ident) => {
            (stringify!($name), Box::pin(async {
                let (_dir, log, sm) = build();
                S::$name(log, sm).await.map_err(|e| e.to_string())
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>)
        };
    }
    let cases = vec![
        case!(last_membership_in_log_initial),
        case!(last_membership_in_log),
        case!(last_membership_in_log_multi_step),
        case!(get_membership_initial),
        case!(get_membership_from_log_and_empty_sm),
        case!(get_membership_from_empty_log_and_sm),
        case!(get_membership_from_log_le_sm_last_applied),
        case!(get_membership_from_log_gt_sm_last_applied_1),
        case!(get_membership_from_log_gt_sm_last_applied_2),
        case!(get_initial_state_without_init),
        case!(get_initial_state_membership_from_empty_log_and_sm),
        case!(get_initial_state_membership_from_sm_inlog_is_smaller),
        case!(get_initial_state_membership_from_log_insm_is_smaller),
        case!(get_initial_state_with_state),
        case!(get_initial_state_last_log_gt_sm),
        case!(get_initial_state_last_log_lt_sm),
        case!(get_initial_state_inverted_log_order),
        case!(get_initial_state_conflict_at_same_index),
        case!(get_initial_state_log_ids),
        case!(get_initial_state_re_apply_committed),
        case!(save_vote),
        case!(get_log_entries),
        case!(limited_get_log_entries),
        case!(leader_bounded_stream),
        case!(entries_stream),
        case!(try_get_log_entry),
        case!(log_reader_reads_new_entries),
        case!(initial_logs),
        case!(get_log_state),
        case!(get_log_id),
        case!(last_id_in_log),
        case!(last_applied_state),
        case!(purge_logs_upto_0),
        case!(purge_logs_upto_5),
        case!(purge_logs_upto_20),
        case!(delete_logs_after_11),
        case!(delete_logs_after_5),
        case!(delete_logs_after_0),
        case!(delete_logs_after_none),
        case!(append_to_log),
        case!(snapshot_meta),
        case!(snapshot_meta_optional),
        case!(apply_single),
        case!(apply_multiple),
    ];
    let mut cases = cases;
    cases.push(("transfer_snapshot", Box::pin(async { S::transfer_snapshot(&Builder).await.map_err(|e| e.to_string()) })));
    let mut failed = Vec::new();
    let total = cases.len();
    for (name, case) in cases {
        // The suite asserts (panics) as well as returning errors: each case in its own task.
        let r = match tokio::spawn(case).await {
            Ok(r) => r,
            Err(e) => Err(format!("panicked: {e}")),
        };
        if let Err(e) = r {
            failed.push(format!("{name}: {e}"));
        }
    }
    println!("{} of {total} openraft storage cases pass", total - failed.len());
    assert!(failed.is_empty(), "{} cases failed:\n{}", failed.len(), failed.join("\n"));
}
