//! Re-seeding a standby from a snapshot: the primary writes it to a file from one read
//! transaction and serves it in chunks; the standby streams it to a file and installs it from
//! there. Neither side holds a whole state in memory.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::messages::*;
use super::{Core, PEER};
use crate::state_machine::{install_snapshot, write_snapshot};
use crate::transport::RemoteError;

pub(super) const CHUNK_BYTES: u32 = 4 << 20;

/// Snapshots for re-seeding a standby live in files under `DATA_DIR/snapshots/`, written
/// from one read transaction and served in chunks, so neither side holds a whole state in
/// memory. Only the newest is kept.
pub(crate) fn snapshot_dir(core: &Core) -> PathBuf {
    core.cfg.data_dir.join("snapshots")
}

pub(super) async fn prepare_snapshot(core: &Arc<Core>) -> Result<(u64, u64), String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (sm, dir) = (core.sm.clone(), snapshot_dir(core));
    let (path, meta, size) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let io = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", dir.display());
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create the snapshot directory", e))?;
        let tmp = dir.join(format!("outgoing.{}.tmp", NEXT.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&tmp).map_err(|e| io("cannot create a snapshot file", e))?;
        let (w, meta) = write_snapshot(&*sm, std::io::BufWriter::new(file)).map_err(|e| e.to_string())?;
        w.into_inner().map_err(|e| io("cannot write the snapshot", e.into_error()))?;
        let path = dir.join(format!("outgoing-{}.snap", meta.applied_index));
        std::fs::rename(&tmp, &path).map_err(|e| io("cannot rename the snapshot", e))?;
        let size = std::fs::metadata(&path).map_err(|e| io("cannot stat the snapshot", e))?.len();
        Ok((path, meta, size))
    })
    .await
    .map_err(|e| e.to_string())??;
    info!(index = meta.applied_index, keys = meta.keys, bytes = size, file = %path.display(), "prepared a snapshot to re-seed the standby");
    let old = core.snapshot_cache.lock().unwrap().replace((meta.applied_index, path.clone(), size));
    if let Some((_, old_path, _)) = old.filter(|(_, p, _)| *p != path) {
        let _ = std::fs::remove_file(old_path);
    }
    Ok((meta.applied_index, size))
}

pub(super) fn serve_chunk(core: &Arc<Core>, req: SnapshotChunkReq) -> Result<SnapshotChunk, RemoteError> {
    let cache = core.snapshot_cache.lock().unwrap().clone();
    let expired = || RemoteError::new("snapshot_expired", "that snapshot is no longer held; fetch again");
    let Some((_, path, size)) = cache.filter(|(id, _, _)| *id == req.snapshot_id) else {
        return Err(expired());
    };
    let offset = req.offset.min(size);
    let want = u64::from(req.max_bytes.min(CHUNK_BYTES)).min(size - offset);
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut data = Vec::with_capacity(want as usize);
        f.take(want).read_to_end(&mut data)?;
        Ok(data)
    };
    // A newer snapshot may have replaced this one (its file is gone): the standby starts over.
    let data = read().map_err(|_| expired())?;
    let done = offset + data.len() as u64 >= size;
    Ok(SnapshotChunk { data, done })
}

/// Streams the primary's snapshot `id` into a file and installs it. The caller has settled
/// the background applies first and acknowledges the new positions after.
pub(super) async fn fetch_and_install_snapshot(core: &Arc<Core>, id: u64, size: u64, history: Vec<(u64, u64)>) -> Result<(), String> {
    // Streamed to a file, then installed from it: the state is never whole in memory.
    let dir = snapshot_dir(core);
    let path = dir.join("incoming.snap");
    let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    tokio::fs::create_dir_all(&dir).await.map_err(|e| io("cannot create the directory of", e))?;
    let mut file = tokio::fs::File::create(&path).await.map_err(|e| io("cannot create", e))?;
    let mut offset = 0u64;
    loop {
        let req = encode(&SnapshotChunkReq { snapshot_id: id, offset, max_bytes: 4 << 20 });
        let b = core
            .transport()
            .request(&PEER.to_string(), SNAPSHOT_CHUNK, req, Some(Duration::from_secs(30)))
            .await
            .map_err(|e| e.to_string())?;
        let chunk: SnapshotChunk = decode(&b)?;
        file.write_all(&chunk.data).await.map_err(|e| io("cannot write", e))?;
        offset += chunk.data.len() as u64;
        *core.last_primary_contact.lock().unwrap() = Instant::now();
        if chunk.done {
            break;
        }
        if chunk.data.is_empty() {
            return Err("empty snapshot chunk".into());
        }
    }
    file.flush().await.map_err(|e| io("cannot write", e))?;
    drop(file);
    if offset != size {
        warn!(expected = size, got = offset, "the snapshot's size differs from what the primary announced");
    }
    let (sm, wal) = (core.sm.clone(), core.wal.clone());
    let meta = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let f = std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta = install_snapshot(&*sm, std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
        wal.reset_to(meta.applied_index + 1).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&path);
        Ok(meta)
    })
    .await
    .map_err(|e| e.to_string())??;
    // The state is now the primary's, so the history is too (whatever this node's own was).
    core.update_persisted(meta.epoch, |p, _| {
        p.history = super::epochs::EpochHistory { starts: history }.up_to(meta.applied_index);
        if p.history.starts.is_empty() {
            p.history.begin(meta.epoch, meta.applied_index);
        }
        true
    })?;
    core.want_snapshot.store(false, Ordering::SeqCst);
    // The installed state is the primary's applied (so durable, agreed) state.
    core.held.lock().unwrap().clear();
    core.agreed.fetch_max(meta.applied_index, Ordering::SeqCst);
    core.applied_tx.send_replace(meta.applied_index);
    // The primary was heard from just before the install; the install's own duration (seconds
    // for a large state) is not the primary's silence and must not trigger a failover.
    *core.last_primary_contact.lock().unwrap() = Instant::now();
    info!(index = meta.applied_index, keys = meta.keys, "installed a snapshot from the primary");
    Ok(())
}
