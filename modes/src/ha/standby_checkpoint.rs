//! The standby's checkpoints: redb made durable and the WAL purged below it (keeping
//! `wal_retention` records for a promotion), as a task beside the fetch rounds. The driver
//! starts them; a truncation, a re-seed and shutdown wait for the one in flight.

use std::sync::Arc;

use super::Core;

/// Starts a standby checkpoint beside the fetches unless one is still running (then false).
/// It used to run between two fetches, and a `sync` commit waited out its redb fsync.
///
/// Invariant: the WAL purge that ends a checkpoint never overlaps a truncation or a re-seed
/// (`wal.reset_to`), so a purge point computed from one log is never applied to another.
/// Both of those call [`wait`] first, and they run inside a fetch round, when the driver
/// starts no checkpoint.
pub(super) fn start(core: &Arc<Core>) -> bool {
    let mut slot = core.standby.checkpoint.lock().unwrap();
    if slot.as_ref().is_some_and(|h| !h.is_finished()) {
        return false;
    }
    let c = core.clone();
    *slot = Some(tokio::spawn(async move { run(&c).await }));
    true
}

/// Waits for the standby checkpoint in flight, if any (see [`start`]).
pub(super) async fn wait(core: &Arc<Core>) {
    let running = core.standby.checkpoint.lock().unwrap().take();
    if let Some(h) = running {
        let _ = h.await;
    }
}

async fn run(core: &Arc<Core>) {
    let (sm, wal, retention) = (core.sm.clone(), core.wal.clone(), core.cfg.wal_retention);
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(durable) = sm.checkpoint() {
            // A standby keeps some WAL too: if it is promoted, the old primary may need it.
            let _ = wal.purge_before((durable + 1).saturating_sub(retention).max(wal.first_index()));
        }
    })
    .await;
}
