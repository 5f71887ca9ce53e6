//! Store images: the redb file itself, at a durable point, as the fast way to re-seed a node
//! of the same build (`bench/scale.sh`: a logical snapshot installs at ~100 MiB/s, bound by
//! redb's single-threaded B-tree inserts; a file moves at disk speed).
//!
//! Taking one ([`Frozen`]): the image is the file as it stands right after a durable commit,
//! with no write to redb until the image is let go — exactly what a crash at that moment would
//! leave, which redb recovers by design. Invariant: while a `Frozen` lives, nothing writes the
//! state file (it holds `checkpointing`, and applies go to the overlay, as during a
//! checkpoint), so the file may be read in place as the image. The commit raises the revision
//! ceiling first, so applies do not wait for it, and the ceiling bounds the overlay to
//! [`REVISION_RESERVE`] entries; past half of that the image asks to be let go
//! (`should_release`), and the sender copies it (`copy_to`: `copy_file_range` in steps, in
//! the kernel, mostly from the page cache; not synced, it is transient) before letting go.
//!
//! Installing one: the bytes go to `state.redb.installing`, written back as they arrive and
//! synced at the end; redb opens it as after a crash — at once, since the commit the image was
//! taken at recorded the allocator state (`begin_durable`), where a full repair would walk every
//! page (8.5 s for 4 GiB); its format must be
//! this build's; the facts that are the receiving node's own, not the state's (the WAL
//! binding, the revision ceiling), are written over the sender's in a durable commit; then
//! the file is renamed over the state file, as a logical install is ([`RedbStore::swap_in`]).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use meridian_modes::progress::Progress;
use meridian_modes::snapshot::{SnapshotError, SnapshotMeta};
use meridian_modes::state_machine::{ImageCopy, StateMachineError};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::*;

/// Bytes written between two requests to the kernel to start writing back: the disk works
/// while the transfer goes on, and the final sync has little left to do.
const WRITEBACK_EVERY: u64 = 32 << 20;

impl RedbStore {
    /// [`meridian_modes::StateMachine::begin_image`] (see the module docs).
    pub(super) fn begin_image_now(&self) -> Result<Frozen<'_>, StateMachineError> {
        let checkpointing = self.checkpointing.lock().unwrap();
        let applied = {
            let _w = self.write.lock().unwrap();
            self.drain()?;
            self.diverted.store(true, Ordering::Release);
            self.applied.load(Ordering::Acquire)
        };
        // From here on, dropping `frozen` ends the freeze, whatever fails below.
        let mut frozen = Frozen { store: self, _checkpointing: checkpointing, meta: SnapshotMeta { applied_index: applied, epoch: 0, keys: 0, meta: None }, size: 0, started: std::time::Instant::now() };
        let ceiling = self.ceiling.load(Ordering::Acquire).max(applied + REVISION_RESERVE);
        let db = self.db();
        let txn = super::begin_durable(&db)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(APPLIED, applied).map_err(storage)?;
            meta.insert(CEILING, ceiling).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        self.ceiling.fetch_max(ceiling, Ordering::AcqRel);
        self.durable.store(applied, Ordering::Release);
        let read = db.begin_read().map_err(storage)?;
        let state = Self::applied_state_in(&read)?;
        let keys = read.open_table(KV).map_err(storage)?.len().map_err(storage)?;
        frozen.meta = SnapshotMeta { applied_index: state.index, epoch: state.epoch, keys, meta: state.meta };
        frozen.size = std::fs::metadata(&self.path).map_err(|e| StateMachineError::Storage(format!("reading the size of {}: {e}", self.path.display())))?.len();
        Ok(frozen)
    }

    /// [`meridian_modes::StateMachine::install_image`] (see the module docs).
    pub(super) fn install_image_now(&self, input: &mut dyn Read, size: u64) -> Result<SnapshotMeta, StateMachineError> {
        let _c = self.checkpointing.lock().unwrap();
        let _w = self.write.lock().unwrap();
        let fresh_path = installing_path(&self.path);
        let built = self.receive_image(input, size, &fresh_path).and_then(|()| self.adopt_image(&fresh_path));
        let (fresh, meta, ceiling) = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&fresh_path);
                return Err(e);
            }
        };
        self.swap_in(&fresh_path, fresh, meta.applied_index, ceiling)?;
        Ok(meta)
    }

    /// Writes the image's `size` bytes from `input` to `path`, durably.
    fn receive_image(&self, input: &mut dyn Read, size: u64, path: &Path) -> Result<(), StateMachineError> {
        let io = |what: &str, e: std::io::Error| StateMachineError::Storage(format!("{what} {}: {e}", path.display()));
        let _ = std::fs::remove_file(path);
        let mut file = std::fs::File::create(path).map_err(|e| io("creating", e))?;
        let mut progress = Progress::new("store image install", Some(size));
        let mut buf = vec![0u8; 1 << 20];
        let (mut done, mut flushed) = (0u64, 0u64);
        loop {
            let n = input.read(&mut buf).map_err(|e| StateMachineError::Snapshot(SnapshotError::Io(e)))?;
            if n == 0 {
                break;
            }
            if done + n as u64 > size {
                return Err(SnapshotError::Damaged(format!("the store image is longer than the {size} bytes announced")).into());
            }
            file.write_all(&buf[..n]).map_err(|e| io("writing", e))?;
            done += n as u64;
            progress.add(n as u64);
            if done - flushed >= WRITEBACK_EVERY {
                start_writeback(&file, flushed, done - flushed);
                flushed = done;
            }
        }
        if done != size {
            return Err(SnapshotError::Damaged(format!("the store image ended at byte {done} of {size}")).into());
        }
        file.sync_all().map_err(|e| io("syncing", e))?;
        progress.finish();
        Ok(())
    }

    /// Opens the received image, checks it is a state file of this build, and makes this
    /// node's own facts its own. Returns the database, what it holds and its revision ceiling.
    fn adopt_image(&self, path: &Path) -> Result<(Database, SnapshotMeta, u64), StateMachineError> {
        let started = std::time::Instant::now();
        let db = Database::create(path).map_err(|e| StateMachineError::Storage(format!("opening the received store image {}: {e}", path.display())))?;
        let (wal_hi, wal_lo) = {
            let old = self.db();
            let txn = old.begin_read().map_err(storage)?;
            let meta = txn.open_table(META).map_err(storage)?;
            let get = |k| meta.get(k).map_err(storage).map(|g| g.map(|g| g.value()));
            (get(WAL_ID_HI)?, get(WAL_ID_LO)?)
        };
        let (state, keys) = {
            let txn = db.begin_read().map_err(storage)?;
            let format = txn.open_table(META).map_err(storage)?.get(FORMAT).map_err(storage)?.map(|g| g.value());
            if format != Some(VALUE_FORMAT as u64) {
                return Err(SnapshotError::Damaged(format!("the store image holds value format {format:?}; this build writes {VALUE_FORMAT}")).into());
            }
            (Self::applied_state_in(&txn)?, txn.open_table(KV).map_err(storage)?.len().map_err(storage)?)
        };
        let txn = super::begin_durable(&db)?;
        let ceiling = {
            let mut meta = txn.open_table(META).map_err(storage)?;
            let theirs = meta.get(CEILING).map_err(storage)?.map(|g| g.value()).unwrap_or(0);
            let ceiling = theirs.max(self.ceiling.load(Ordering::Acquire)).max(state.index);
            meta.insert(CEILING, ceiling).map_err(storage)?;
            match (wal_hi, wal_lo) {
                (Some(hi), Some(lo)) => {
                    meta.insert(WAL_ID_HI, hi).map_err(storage)?;
                    meta.insert(WAL_ID_LO, lo).map_err(storage)?;
                }
                // The sender's binding names the sender's WAL, never this node's.
                _ => {
                    meta.remove(WAL_ID_HI).map_err(storage)?;
                    meta.remove(WAL_ID_LO).map_err(storage)?;
                }
            }
            ceiling
        };
        txn.commit().map_err(storage)?;
        info!(seconds = format!("{:.2}", started.elapsed().as_secs_f64()), "opened the received store image");
        Ok((db, SnapshotMeta { applied_index: state.index, epoch: state.epoch, keys, meta: state.meta }, ceiling))
    }
}

/// The state file held still for an image: no write reaches redb while this lives (applies
/// go to the overlay), and dropping it writes the overlay back.
pub(super) struct Frozen<'a> {
    store: &'a RedbStore,
    _checkpointing: std::sync::MutexGuard<'a, ()>,
    meta: SnapshotMeta,
    size: u64,
    started: std::time::Instant,
}

/// Bytes per copy step: how far ahead of a reader the copy's progress moves.
const COPY_STEP: u64 = 16 << 20;

impl ImageCopy for Frozen<'_> {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// `copy_file_range` in steps (std's `io::copy` between files): in the kernel, mostly
    /// from the page cache. Not synced: the image is transient, rebuilt after a crash. Its
    /// failure (no room for the image) is the image's error, not a storage failure of the store.
    fn copy_to(&mut self, dest: &Path, progress: &mut dyn FnMut(u64)) -> Result<(), StateMachineError> {
        let path = &self.store.path;
        let failed = |what: &str, e: std::io::Error| StateMachineError::Snapshot(SnapshotError::Io(std::io::Error::new(e.kind(), format!("{what}: {e}"))));
        let mut src = std::fs::File::open(path).map_err(|e| failed(&format!("opening {}", path.display()), e))?;
        let mut out = std::fs::File::create(dest).map_err(|e| failed(&format!("creating {}", dest.display()), e))?;
        let mut done = 0u64;
        while done < self.size {
            let step = COPY_STEP.min(self.size - done);
            let n = std::io::copy(&mut (&mut src).take(step), &mut out).map_err(|e| failed(&format!("copying {} to {}", path.display(), dest.display()), e))?;
            if n == 0 {
                return Err(failed("copying", std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{} ended at byte {done} of {}", path.display(), self.size))));
            }
            done += n;
            progress(done);
        }
        info!(index = self.meta.applied_index, bytes = self.size, seconds = format!("{:.2}", self.started.elapsed().as_secs_f64()), "copied a store image");
        Ok(())
    }

    fn live_path(&self) -> Option<&Path> {
        Some(&self.store.path)
    }

    /// Half the revision reserve applied since the freeze: the other half is the room left
    /// for applies while the image is copied, before they wait for the ceiling.
    fn should_release(&self) -> bool {
        self.store.applied.load(Ordering::Acquire) >= self.meta.applied_index + REVISION_RESERVE / 2
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _w = self.store.write.lock().unwrap();
        // A failed drain leaves the overlay for the next apply to write (see `drain`).
        if let Err(e) = self.store.drain() {
            tracing::warn!(error = %e, "writing back the applies made while a store image was taken failed; the next apply retries");
        }
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to disk, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); durability comes from the final sync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; failure only loses the head start.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}
