//! Re-seeding a standby from a snapshot: the primary offers one as a file, the standby
//! installs it as the chunks arrive ([`crate::snapshot_stream::receive_into`]), so neither
//! side holds a whole state in memory and the transfer overlaps the install. What is HA's is
//! here: the primary's announcement (`NeedSnapshot`), the WAL reset and the epoch history that
//! come with the install, and the primary's contact kept fresh while the chunks arrive.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::messages::*;
use super::{Core, PEER};
use crate::snapshot_stream::{receive_into, ChannelReader, Prepared};
use crate::state_machine::install_snapshot_sized;
use crate::transport::RemoteError;

/// The snapshot to offer the standby, (id, size, whether it is a store image): the one on offer while the WAL still holds
/// every record after it (the standby streams on from there), else a new one — one build at
/// a time, shared by every fetch that arrives meanwhile.
pub(super) async fn prepare_snapshot(core: &Arc<Core>) -> Result<(u64, u64, bool), String> {
    let wal = core.wal.clone();
    let usable = move |id: u64| id + 1 >= wal.first_index();
    let Prepared { id, size, meta, image } = core.primary.snapshots.prepare(core.sm.clone(), usable).await.map_err(|e| e.to_string())?;
    let file = core.primary.snapshots.path().map(|p| p.display().to_string()).unwrap_or_default();
    let kind = if image { "store image" } else { "logical" };
    info!(index = meta.applied_index, keys = meta.keys, bytes = size, %file, kind, "prepared a snapshot to re-seed the standby");
    Ok((id, size, image))
}

pub(super) async fn serve_chunk(core: &Arc<Core>, req: SnapshotChunkReq) -> Result<SnapshotChunk, RemoteError> {
    core.primary.snapshots.serve(&req).await
}

/// Streams the primary's snapshot `id` straight into an install running beside the transfer
/// (the chunks are installed as they arrive; nothing changes unless the whole stream arrives
/// and verifies). The caller has settled the background applies first and acknowledges the
/// new positions after.
pub(super) async fn fetch_and_install_snapshot(core: &Arc<Core>, id: u64, size: u64, image: bool, history: Vec<(u64, u64)>) -> Result<(), String> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (sm, wal) = (core.sm.clone(), core.wal.clone());
    let install = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let meta = if image {
            sm.install_image(&mut ChannelReader::new(rx), size)
        } else {
            install_snapshot_sized(&*sm, ChannelReader::new(rx), Some(size))
        };
        let meta = meta.map_err(|e| e.to_string())?;
        wal.reset_to(meta.applied_index + 1).map_err(|e| e.to_string())?;
        Ok(meta)
    });
    // Each chunk is the primary's contact: a long transfer is not its silence.
    let got = receive_into(core.transport(), &PEER.to_string(), SNAPSHOT_CHUNK, id, tx, |_| {
        *core.standby.last_primary_contact.lock().unwrap() = Instant::now();
    })
    .await;
    let installed = install.await.map_err(|e| format!("the install task failed: {e}"))?;
    // A transfer cut short ends the install's stream, so the install fails too: the
    // transfer's error is the cause.
    let meta = match (got, installed) {
        (Err(e), Err(_)) => return Err(format!("receiving the snapshot: {e}")),
        (_, Err(e)) => return Err(e),
        (Ok(got), Ok(meta)) => {
            if got != size {
                warn!(expected = size, got, "the snapshot's size differs from what the primary announced");
            }
            meta
        }
        // The whole snapshot arrived and verified; only the end of the exchange failed.
        (Err(e), Ok(meta)) => {
            warn!("the snapshot installed, but its transfer ended with an error: {e}");
            meta
        }
    };
    // The state is now the primary's, so the history is too (whatever this node's own was).
    core.update_persisted(meta.epoch, |p, _| {
        p.history = super::epochs::EpochHistory { starts: history }.up_to(meta.applied_index);
        if p.history.starts.is_empty() {
            p.history.begin(meta.epoch, meta.applied_index);
        }
        true
    })?;
    core.standby.want_snapshot.store(false, Ordering::SeqCst);
    // The installed state is the primary's applied (so durable, agreed) state.
    core.standby.held.lock().unwrap().clear();
    core.standby.agreed.fetch_max(meta.applied_index, Ordering::SeqCst);
    core.applied_tx.send_replace(meta.applied_index);
    // The primary was heard from just before the install; the install's own duration (seconds
    // for a large state) is not the primary's silence and must not trigger a failover.
    *core.standby.last_primary_contact.lock().unwrap() = Instant::now();
    info!(index = meta.applied_index, keys = meta.keys, "installed a snapshot from the primary");
    Ok(())
}
