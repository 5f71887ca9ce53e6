//! Snapshot streaming: a state-machine snapshot sent from one node to another as a file, in
//! chunks, so neither side ever holds a whole state in memory. Used to re-seed an HA
//! standby; a Raft leader can send its snapshot to a lagging follower the same way.
//!
//! The receiver pulls. The sender writes a snapshot file from one consistent view and offers
//! it under an id; the receiver, told the id by the mode's own protocol (HA's `NeedSnapshot`
//! fetch reply; in Raft e.g. an "install snapshot" request), asks for chunks until the
//! last one and hands them, as they arrive, to an install running beside the transfer
//! ([`receive_into`]):
//!
//! ```text
//! sender:   let p = outgoing.prepare(sm, |id| usable(id)).await?;   // tell the receiver p.id, p.size
//!           handler for MY_CHUNK: outgoing.serve(&decode(payload)?)   // each ChunkRequest
//! receiver: let (tx, rx) = tokio::sync::mpsc::channel(4);
//!           spawn_blocking(|| install_snapshot(sm, ChannelReader::new(rx)));   // + the log reset
//!           receive_into(transport, sender, MY_CHUNK, id, tx, |_| {}).await?;
//! ```
//!
//! What is sent is the state machine's *store image* when it makes one
//! ([`StateMachine::write_image`]: the redb file itself, installed as it is, at disk speed),
//! else its logical snapshot ([`write_snapshot`]); [`Prepared::image`] says which, and the
//! receiver installs accordingly ([`StateMachine::install_image`] or `install_snapshot`).
//! Both nodes run the same build (cluster messages require it), so a receiver can install
//! what its sender's store makes. Each chunk carries a CRC-32 of its bytes, checked on
//! arrival: an image has no checksum of its own over the whole file.
//!
//! A sender offers one snapshot at a time and writes at most one at a time: preparing a new
//! one deletes the old file, and a receiver still fetching the old id is answered
//! `snapshot_expired` and starts over. Chunks
//! are at most [`CHUNK_BYTES`], well under the transport's frame limit. Messages are
//! [`crate::wire`]-encoded; the mode picks the message type in its family.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::snapshot::SnapshotMeta;
use crate::state_machine::{write_snapshot, StateMachine, StateMachineError};
use crate::transport::{NodeId, RemoteError, Transport, TransportError};
use crate::wire::{decode, encode};

/// The most a chunk holds, whatever the receiver asks for.
pub const CHUNK_BYTES: u32 = 4 << 20;

/// How long the receiver waits for one chunk.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Receiver → sender: "bytes of snapshot `snapshot_id` from `offset`".
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChunkRequest {
    pub snapshot_id: u64,
    pub offset: u64,
    pub max_bytes: u32,
}

/// `done`: this chunk ends the file. `crc`: CRC-32 (crc32fast) of `data`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Chunk {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub done: bool,
    pub crc: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A file under the snapshot directory could not be created, written, read or renamed.
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The state machine could not produce the snapshot.
    #[error("cannot write the snapshot: {0}")]
    Snapshot(#[from] StateMachineError),
    /// A chunk could not be fetched (the sender's `snapshot_expired` arrives as `Remote`): the
    /// receiver should ask the mode for a snapshot again.
    #[error("cannot fetch a snapshot chunk: {0}")]
    Transport(#[from] TransportError),
    /// The sender answered with something that is not a chunk, or an empty chunk before the end.
    #[error("bad snapshot chunk: {0}")]
    Malformed(String),
    /// The blocking task writing the file panicked or was cancelled.
    #[error("snapshot task failed: {0}")]
    Task(String),
}

/// A snapshot prepared for sending.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// What the receiver asks for in [`ChunkRequest::snapshot_id`]: the snapshot's applied index.
    pub id: u64,
    pub size: u64,
    pub meta: SnapshotMeta,
    /// A store image ([`StateMachine::write_image`]), not a logical snapshot.
    pub image: bool,
}

/// The snapshot this node offers to peers: at most one file, in `dir`, as
/// `outgoing-<applied index>.snap`.
///
/// Invariant: at most one snapshot is being written at a time, whoever asks. Callers that
/// want one while it is written wait for that one; a caller whose need the offered snapshot
/// still meets gets it without a new build. (A standby retrying its fetch every second while
/// a 3 GB snapshot took 90 s to write once started a build per retry: 74 files, 65 GB, a full
/// disk — `bench/scale.sh`.)
///
/// A store image is offered at once. While the store holds its file still, that file itself
/// is served (no copy: on one disk a copy would double the writes); the store is let go when
/// the reader has read it all, when it goes quiet for [`LIVE_IDLE`], or when the store needs
/// its writes back ([`ImageCopy::should_release`]) — then the image is first copied (from the
/// page cache) and the copy is offered on. A store without a live file is copied at once and
/// served below the bytes copied so far. A logical snapshot is offered once written.
pub struct Outgoing {
    dir: PathBuf,
    /// The snapshot on offer.
    held: Arc<Mutex<Option<Offer>>>,
    /// The build under way, if any: its outcome, once known, for everyone waiting on it.
    building: Arc<Mutex<Option<BuildOutcome>>>,
}

/// The outcome of a build, once known (`None` while it runs).
type BuildOutcome = watch::Receiver<Option<Result<Prepared, String>>>;

/// A snapshot on offer: the file it is read from (`None` once withdrawn: readers are told to
/// start over), how much of it is written (the sender side is dropped, closing the channel, if
/// the write fails), and how far readers have read. `path` is the outgoing file, deleted when
/// the offer is replaced; `source` is `path`, or the store's own file while a live image is held.
#[derive(Clone)]
struct Offer {
    prepared: Prepared,
    path: PathBuf,
    source: Arc<std::sync::RwLock<Option<PathBuf>>>,
    written: watch::Receiver<u64>,
    served: Arc<std::sync::atomic::AtomicU64>,
}

/// A live image is let go when no chunk of it was asked for in this long.
pub const LIVE_IDLE: Duration = if cfg!(test) { Duration::from_millis(500) } else { Duration::from_secs(10) };

/// Writes a snapshot of `sm` into `dir` and offers it (see [`Outgoing`]): `offer` publishes
/// it (with the file it is read from first), `written` moves as its bytes are written,
/// `served` is how far readers have read. Returns with the store let go. What a failed write
/// left is removed.
fn build(
    dir: &Path,
    sm: &dyn StateMachine,
    offer: &mut dyn FnMut(&Prepared, &Path, &Path),
    source: &std::sync::RwLock<Option<PathBuf>>,
    written: &watch::Sender<u64>,
    served: &std::sync::atomic::AtomicU64,
) -> Result<(), StreamError> {
    use std::sync::atomic::Ordering::Acquire;
    std::fs::create_dir_all(dir).map_err(io("cannot create the snapshot directory", dir))?;
    if let Some(mut image) = sm.begin_image()? {
        let meta = image.meta().clone();
        let path = dir.join(format!("outgoing-{}.snap", meta.applied_index));
        let _ = std::fs::remove_file(&path);
        let size = image.size();
        let p = Prepared { id: meta.applied_index, size, meta, image: true };
        let copy = |image: &mut dyn crate::state_machine::ImageCopy| {
            image.copy_to(&path, &mut |n| {
                written.send_replace(n);
            })
            .map_err(|e| {
                let _ = std::fs::remove_file(&path);
                StreamError::from(e)
            })
        };
        let Some(live) = image.live_path().map(Path::to_path_buf) else {
            offer(&p, &path, &path);
            return copy(&mut *image);
        };
        written.send_replace(size);
        offer(&p, &path, &live);
        let (mut last, mut last_change) = (0, std::time::Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = served.load(Acquire);
            if now >= size {
                // Read to the end: nobody needs it any more. Withdrawn before the store moves.
                *source.write().unwrap() = None;
                return Ok(());
            }
            if now != last {
                (last, last_change) = (now, std::time::Instant::now());
            }
            if last_change.elapsed() >= LIVE_IDLE {
                *source.write().unwrap() = None;
                return Ok(());
            }
            if image.should_release() {
                // Copied while still held, then read from the copy; the store moves after.
                let copied = copy(&mut *image);
                *source.write().unwrap() = copied.as_ref().ok().map(|_| path.clone());
                return copied;
            }
        }
    }
    let tmp = dir.join("outgoing.tmp");
    let logical = (|| {
        let file = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
        let (w, meta) = write_snapshot(sm, std::io::BufWriter::new(file))?;
        w.into_inner().map_err(|e| io("cannot write", &tmp)(e.into_error()))?;
        Ok::<_, StreamError>(meta)
    })();
    let meta = match logical {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let path = dir.join(format!("outgoing-{}.snap", meta.applied_index));
    std::fs::rename(&tmp, &path).map_err(io("cannot rename", &tmp))?;
    let size = std::fs::metadata(&path).map_err(io("cannot stat", &path))?.len();
    written.send_replace(size);
    offer(&Prepared { id: meta.applied_index, size, meta, image: false }, &path, &path);
    Ok(())
}

impl Outgoing {
    /// Offers nothing yet; removes what an interrupted build left in `dir`.
    pub fn new(dir: PathBuf) -> Outgoing {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("outgoing") && (name.ends_with(".tmp") || name.ends_with(".snap")) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Outgoing { dir, held: Arc::new(Mutex::new(None)), building: Arc::new(Mutex::new(None)) }
    }

    /// The snapshot to offer: the one on offer if `reusable(its id)` says it still serves,
    /// else a new one of `sm` from one read view — the build under way if there is one, or a
    /// new build that replaces the offered snapshot (whose file is deleted) once it is offered.
    pub async fn prepare(&self, sm: Arc<dyn StateMachine>, reusable: impl Fn(u64) -> bool) -> Result<Prepared, StreamError> {
        let mut done = {
            if let Some(o) = self.held.lock().unwrap().clone().filter(|o| reusable(o.prepared.id)) {
                return Ok(o.prepared);
            }
            let mut building = self.building.lock().unwrap();
            match &*building {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *building = Some(rx.clone());
                    let (dir, held, slot) = (self.dir.clone(), self.held.clone(), self.building.clone());
                    // Ends this build's turn (and not a later build's).
                    let ours = rx.clone();
                    let end_turn = move || {
                        let mut slot = slot.lock().unwrap();
                        if slot.as_ref().is_some_and(|r| r.same_channel(&ours)) {
                            *slot = None;
                        }
                    };
                    // A task of its own: a caller that gives up waiting does not stop the build
                    // (nor let a second one start beside it).
                    tokio::task::spawn_blocking(move || {
                        let (written_tx, written_rx) = watch::channel(0u64);
                        let source = Arc::new(std::sync::RwLock::new(None));
                        let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
                        let mut mine = None;
                        let r = build(
                            &dir,
                            &*sm,
                            &mut |p, path, from| {
                                *source.write().unwrap() = Some(from.to_path_buf());
                                let new = Offer { prepared: p.clone(), path: path.to_path_buf(), source: source.clone(), written: written_rx.clone(), served: served.clone() };
                                let old = held.lock().unwrap().replace(new);
                                if let Some(old) = old.filter(|o| o.path != path) {
                                    let _ = std::fs::remove_file(old.path);
                                }
                                mine = Some(path.to_path_buf());
                                // A logical snapshot is complete when offered: a caller told of
                                // it and asking again must find the build over. An image's turn
                                // lasts until the store is let go.
                                if !p.image {
                                    end_turn();
                                }
                                tx.send_replace(Some(Ok(p.clone())));
                            },
                            &source,
                            &written_tx,
                            &served,
                        );
                        // A withdrawn offer is no longer held: the next `prepare` builds anew.
                        if source.read().unwrap().is_none() {
                            let mut held = held.lock().unwrap();
                            if held.as_ref().is_some_and(|o| Arc::ptr_eq(&o.source, &source)) {
                                *held = None;
                            }
                        }
                        if let Err(e) = r {
                            // Withdraw an offer whose file could not be written (its readers
                            // are told to start over), and tell whoever still waits.
                            let mut held = held.lock().unwrap();
                            if held.as_ref().is_some_and(|o| Some(&o.path) == mine.as_ref()) {
                                *held = None;
                            }
                            drop(held);
                            end_turn();
                            tx.send_replace(Some(Err(e.to_string())));
                        }
                        end_turn();
                    });
                    rx
                }
            }
        };
        let outcome = done.wait_for(Option::is_some).await.map_err(|e| StreamError::Task(e.to_string()))?.clone();
        outcome.expect("waited for Some").map_err(StreamError::Task)
    }

    /// The file of the snapshot on offer, if any.
    pub fn path(&self) -> Option<PathBuf> {
        self.held.lock().unwrap().as_ref().map(|o| o.path.clone())
    }

    /// Answers one [`ChunkRequest`] once its bytes are written (at most [`CHUNK_TIMEOUT`]
    /// later); `snapshot_expired` if `snapshot_id` is not the snapshot on offer (any more) or
    /// its write failed. Blocking file I/O of at most [`CHUNK_BYTES`].
    pub async fn serve(&self, req: &ChunkRequest) -> Result<Chunk, RemoteError> {
        let held = self.held.lock().unwrap().clone();
        let expired = || RemoteError::new("snapshot_expired", "that snapshot is no longer held; fetch again");
        let Some(Offer { prepared: Prepared { size, .. }, source, mut written, served, .. }) = held.filter(|o| o.prepared.id == req.snapshot_id) else {
            return Err(expired());
        };
        let offset = req.offset.min(size);
        let want = u64::from(req.max_bytes.min(CHUNK_BYTES)).min(size - offset);
        let ready = tokio::time::timeout(CHUNK_TIMEOUT / 2, written.wait_for(|w| *w >= offset + want)).await;
        match ready {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(expired()),
            Err(_) => return Err(RemoteError::new("unavailable", "the snapshot is still being written; ask again")),
        }
        // The source cannot change under a read (a live image's store waits for it).
        let read = || -> std::io::Result<Vec<u8>> {
            let source = source.read().unwrap();
            let path = source.as_ref().ok_or_else(|| std::io::Error::other("withdrawn"))?;
            let mut f = std::fs::File::open(path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut data = Vec::with_capacity(want as usize);
            f.take(want).read_to_end(&mut data)?;
            Ok(data)
        };
        // A newer snapshot may have replaced this one (its file is gone), or it was withdrawn:
        // the receiver starts over.
        let data = read().map_err(|_| expired())?;
        served.fetch_max(offset + data.len() as u64, std::sync::atomic::Ordering::AcqRel);
        let done = offset + data.len() as u64 >= size;
        Ok(Chunk { crc: crc32fast::hash(&data), data, done })
    }
}

/// One chunk of snapshot `snapshot_id` from `offset`. A chunk that is empty before the end is
/// malformed (a sender that sent it would be asked for the same bytes forever).
async fn next_chunk(transport: &Transport, from: &NodeId, msg_type: u16, snapshot_id: u64, offset: u64) -> Result<Chunk, StreamError> {
    let req = encode(&ChunkRequest { snapshot_id, offset, max_bytes: CHUNK_BYTES });
    let b = transport.request(from, msg_type, req, Some(CHUNK_TIMEOUT)).await?;
    let chunk: Chunk = decode("snapshot chunk", &b).map_err(StreamError::Malformed)?;
    if chunk.data.is_empty() && !chunk.done {
        return Err(StreamError::Malformed(format!("empty chunk at offset {offset} before the end")));
    }
    if crc32fast::hash(&chunk.data) != chunk.crc {
        return Err(StreamError::Malformed(format!("the chunk at offset {offset} fails its checksum")));
    }
    Ok(chunk)
}

/// Pulls snapshot `snapshot_id` into `sink` as it arrives, for an install reading it at the
/// same time through a [`ChannelReader`]: transfer and install overlap, and the receiver holds
/// at most the channel's chunks, never a copy of the snapshot. `on_chunk` is called with the bytes received so far after each chunk.
/// Returns the total size; dropping `sink` (on return or error) ends the reader's stream, so
/// an install of a stream cut short fails and installs nothing.
pub async fn receive_into(
    transport: &Transport,
    from: &NodeId,
    msg_type: u16,
    snapshot_id: u64,
    sink: tokio::sync::mpsc::Sender<Vec<u8>>,
    mut on_chunk: impl FnMut(u64) + Send,
) -> Result<u64, StreamError> {
    let mut offset = 0u64;
    loop {
        let chunk = next_chunk(transport, from, msg_type, snapshot_id, offset).await?;
        offset += chunk.data.len() as u64;
        on_chunk(offset);
        if sink.send(chunk.data).await.is_err() {
            return Err(StreamError::Malformed(format!("the install stopped reading at offset {offset}")));
        }
        if chunk.done {
            return Ok(offset);
        }
    }
}

/// A blocking [`Read`] over the chunks [`receive_into`] sends: the end of the stream once the
/// sender is dropped. Read it from a blocking thread.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader { rx, chunk: Vec::new(), pos: 0 }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(c) => (self.chunk, self.pos) = (c, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `map_err` for file operations on `path`.
fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StreamError + 'a {
    move |source| StreamError::Io { what, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::state_machine::{install_snapshot, LogEntry, MemStateMachine};

    fn state(keys: u64) -> Arc<dyn StateMachine> {
        let sm = MemStateMachine::default();
        let entries: Vec<LogEntry> = (1..=keys)
            .map(|i| LogEntry { index: i, epoch: 1, command: Command::Put { key: format!("k{i}"), value: vec![i as u8; 100], if_revision: None }, meta: None })
            .collect();
        sm.apply(&entries).unwrap();
        Arc::new(sm)
    }

    /// Reads the whole snapshot through `serve` in chunks of `max` bytes.
    async fn pull(out: &Outgoing, id: u64, max: u32) -> Result<Vec<u8>, RemoteError> {
        let mut all = Vec::new();
        loop {
            let c = out.serve(&ChunkRequest { snapshot_id: id, offset: all.len() as u64, max_bytes: max }).await?;
            assert!(c.data.len() <= max as usize);
            all.extend_from_slice(&c.data);
            if c.done {
                return Ok(all);
            }
        }
    }

    #[tokio::test]
    async fn a_snapshot_served_in_chunks_installs_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let out = Outgoing::new(dir.path().join("snapshots"));
        let p = out.prepare(state(50), |_| false).await.unwrap();
        assert_eq!((p.id, p.meta.keys), (50, 50));
        let bytes = pull(&out, p.id, 333).await.unwrap();
        assert_eq!(bytes.len() as u64, p.size);
        let copy = MemStateMachine::default();
        let meta = install_snapshot(&copy, &bytes[..]).unwrap();
        assert_eq!(meta, p.meta);
        assert_eq!(copy.get("k50").unwrap().unwrap().value, vec![50u8; 100]);
    }

    #[tokio::test]
    async fn a_newer_snapshot_replaces_the_offered_one_and_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = Outgoing::new(dir.path().to_path_buf());
        let old = out.prepare(state(3), |_| false).await.unwrap();
        let old_path = out.path().unwrap();
        let new = out.prepare(state(7), |_| false).await.unwrap();
        assert!(!old_path.exists(), "the replaced snapshot's file was kept");
        let e = pull(&out, old.id, 1024).await.unwrap_err();
        assert_eq!(e.code, "snapshot_expired");
        assert_eq!(pull(&out, new.id, 1024).await.unwrap().len() as u64, new.size);
        // Only the offered snapshot is on disk: no temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Counts whole-state scans (snapshot builds) and makes each take a while.
    struct SlowScans {
        inner: Arc<dyn StateMachine>,
        scans: std::sync::atomic::AtomicUsize,
    }

    impl StateMachine for SlowScans {
        crate::state_machine::delegate_to_inner!(apply);
        fn scan(&self, visit: &mut dyn FnMut(crate::state_machine::ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
            self.scans.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            self.inner.scan(visit)
        }
    }

    /// A store that makes images: `bytes`, copied in 64 KiB steps; the copy writes the first
    /// half, then waits for `gate` and writes the rest, or fails if the gate says so.
    /// With `live`, the image is also readable in place from that file until released.
    struct Imaging {
        inner: Arc<dyn StateMachine>,
        bytes: Vec<u8>,
        gate: Mutex<Option<std::sync::mpsc::Receiver<bool>>>,
        live: Option<PathBuf>,
        release: std::sync::atomic::AtomicBool,
        held: std::sync::atomic::AtomicUsize,
        begun: std::sync::atomic::AtomicUsize,
    }

    impl Imaging {
        fn new(bytes: Vec<u8>, gate: Option<std::sync::mpsc::Receiver<bool>>, live: Option<PathBuf>) -> Imaging {
            if let Some(l) = &live {
                std::fs::write(l, &bytes).unwrap();
            }
            Imaging { inner: state(5), bytes, gate: Mutex::new(gate), live, release: Default::default(), held: Default::default(), begun: Default::default() }
        }
    }

    impl Drop for ImagingCopy<'_> {
        fn drop(&mut self) {
            self.0.held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    struct ImagingCopy<'a>(&'a Imaging, crate::snapshot::SnapshotMeta);

    impl crate::state_machine::ImageCopy for ImagingCopy<'_> {
        fn meta(&self) -> &crate::snapshot::SnapshotMeta {
            &self.1
        }
        fn size(&self) -> u64 {
            self.0.bytes.len() as u64
        }
        fn copy_to(&mut self, dest: &Path, progress: &mut dyn FnMut(u64)) -> Result<(), StateMachineError> {
            use std::io::Write;
            let mut f = std::fs::File::create(dest).unwrap();
            let half = self.0.bytes.len() / 2;
            for (i, step) in self.0.bytes.chunks(64 << 10).enumerate() {
                if i * (64 << 10) >= half {
                    let go = self.0.gate.lock().unwrap().take().map(|g| g.recv().unwrap());
                    if go == Some(false) {
                        return Err(StateMachineError::Storage("no room for the image".into()));
                    }
                }
                f.write_all(step).unwrap();
                progress(((i + 1) * (64 << 10)).min(self.0.bytes.len()) as u64);
            }
            Ok(())
        }
        fn live_path(&self) -> Option<&Path> {
            self.0.live.as_deref()
        }
        fn should_release(&self) -> bool {
            self.0.release.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl StateMachine for Imaging {
        crate::state_machine::delegate_to_inner!(apply);
        fn scan(&self, visit: &mut dyn FnMut(crate::state_machine::ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
            self.inner.scan(visit)
        }
        fn begin_image(&self) -> Result<Option<Box<dyn crate::state_machine::ImageCopy + '_>>, StateMachineError> {
            let meta = crate::snapshot::SnapshotMeta { applied_index: self.applied_index(), epoch: 1, keys: 0, meta: None };
            self.begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(Box::new(ImagingCopy(self, meta))))
        }
    }

    /// An image is offered as soon as its copy begins: a reader gets the bytes already
    /// copied and waits for the rest; a copy that fails withdraws the offer and its file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_image_is_served_while_it_is_copied_and_withdrawn_if_the_copy_fails() {
        for completes in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let out = Arc::new(Outgoing::new(dir.path().to_path_buf()));
            let (gate, wait) = std::sync::mpsc::channel();
            let bytes: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
            let sm = Arc::new(Imaging::new(bytes.clone(), Some(wait), None));
            let p = out.prepare(sm, |_| false).await.unwrap();
            assert!(p.image);
            assert_eq!(p.size, bytes.len() as u64);
            let o = out.clone();
            let reader = tokio::spawn(async move { pull(&o, p.id, 100_000).await });
            // The first half is served while the copy is held at the gate.
            let mut copied = out.held.lock().unwrap().as_ref().unwrap().written.clone();
            copied.wait_for(|w| *w >= bytes.len() as u64 / 2 - (64 << 10)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!reader.is_finished(), "the reader finished before the copy did");
            gate.send(completes).unwrap();
            let got = reader.await.unwrap();
            if completes {
                assert!(got.unwrap() == bytes, "the image served differs from the image");
                assert!(out.path().unwrap().exists());
            } else {
                assert_eq!(got.unwrap_err().code, "snapshot_expired");
                assert!(out.path().is_none(), "a failed image is still offered");
                assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a failed image left its file");
            }
        }
    }

    /// A live image is served from the store's own file with no copy, and the store is let go
    /// once it is read to the end (or nobody reads it for LIVE_IDLE): the offer is withdrawn and
    /// the next fetch gets a new image. A store that needs its writes back gets its image copied
    /// first, and the rest is served from the copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_image_is_served_in_place_and_let_go_when_read_idle_or_needed() {
        use std::sync::atomic::Ordering::SeqCst;
        let bytes: Vec<u8> = (0..700_001u32).map(|i| (i * 13 % 253) as u8).collect();
        let wait_released = |sm: Arc<Imaging>| async move {
            for _ in 0..500 {
                if sm.held.load(SeqCst) == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the store was never let go");
        };
        // Read to the end.
        let dir = tempfile::tempdir().unwrap();
        let out = Outgoing::new(dir.path().join("out"));
        let sm = Arc::new(Imaging::new(bytes.clone(), None, Some(dir.path().join("live.redb"))));
        let p = out.prepare(sm.clone(), |_| true).await.unwrap();
        assert!(pull(&out, p.id, 100_000).await.unwrap() == bytes, "the live image served differs");
        wait_released(sm.clone()).await;
        assert!(out.path().is_none(), "a live image read to the end is still offered");
        assert_eq!(std::fs::read_dir(dir.path().join("out")).unwrap().count(), 0, "a live image was copied");
        assert_eq!(pull(&out, p.id, 100_000).await.unwrap_err().code, "snapshot_expired");
        out.prepare(sm.clone(), |_| true).await.unwrap();
        assert_eq!(sm.begun.load(SeqCst), 2, "a withdrawn image was offered again");
        // Nobody reads (the second image above): let go after LIVE_IDLE.
        wait_released(sm.clone()).await;
        assert!(out.path().is_none());
        // Needed back half-way: copied, and the rest served from the copy.
        let out = Outgoing::new(dir.path().join("out2"));
        let p = out.prepare(sm.clone(), |_| false).await.unwrap();
        let first = out.serve(&ChunkRequest { snapshot_id: p.id, offset: 0, max_bytes: 300_000 }).await.unwrap();
        sm.release.store(true, SeqCst);
        wait_released(sm.clone()).await;
        // The store's file moves on after it is let go: the copy must be what is served.
        std::fs::write(sm.live.as_ref().unwrap(), b"moved on").unwrap();
        let mut all = first.data;
        for _ in 0..10 {
            let c = out.serve(&ChunkRequest { snapshot_id: p.id, offset: all.len() as u64, max_bytes: 300_000 }).await.unwrap();
            all.extend_from_slice(&c.data);
            if c.done || c.data.is_empty() {
                break;
            }
        }
        assert!(all == bytes, "the image served after its copy differs");
        assert!(out.path().unwrap().exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_build_at_a_time_and_a_usable_snapshot_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let out = Arc::new(Outgoing::new(dir.path().to_path_buf()));
        let sm = Arc::new(SlowScans { inner: state(10), scans: Default::default() });
        // Eight fetches at once, some giving up early (as a standby's timed-out fetch does).
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (out, sm) = (out.clone(), sm.clone());
            tasks.push(tokio::spawn(async move {
                let f = out.prepare(sm, |_| false);
                if i % 2 == 0 {
                    let _ = tokio::time::timeout(Duration::from_millis(50), f).await;
                    None
                } else {
                    Some(f.await.unwrap())
                }
            }));
        }
        let mut got = Vec::new();
        for t in tasks {
            got.extend(t.await.unwrap());
        }
        assert_eq!(sm.scans.load(std::sync::atomic::Ordering::SeqCst), 1, "concurrent prepares built more than one snapshot");
        assert!(got.iter().all(|p| p.id == 10 && p.size == got[0].size));
        // Still usable: offered again without a build.
        let again = out.prepare(sm.clone(), |id| id >= 10).await.unwrap();
        assert_eq!((again.id, sm.scans.load(std::sync::atomic::Ordering::SeqCst)), (10, 1));
        // Not usable: a new build.
        out.prepare(sm.clone(), |_| false).await.unwrap();
        assert_eq!(sm.scans.load(std::sync::atomic::Ordering::SeqCst), 2);
        // One file on disk, no temporaries.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn what_an_interrupted_build_left_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("outgoing.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("outgoing.17.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("outgoing-5.snap"), b"old").unwrap();
        std::fs::write(dir.path().join("incoming.snap"), b"not ours").unwrap();
        let _out = Outgoing::new(dir.path().to_path_buf());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(left, vec!["incoming.snap".to_string()]);
    }

    /// The sender's side of the chunk message, as a mode's handler would serve it.
    struct Serve(Outgoing);

    #[async_trait::async_trait]
    impl crate::transport::Handler for Serve {
        async fn on_request(&self, _from: &NodeId, _msg_type: u16, payload: bytes::Bytes) -> Result<bytes::Bytes, RemoteError> {
            let req: ChunkRequest = decode("snapshot chunk", &payload).map_err(|e| RemoteError::new("bad_request", e))?;
            self.0.serve(&req).await.map(|c| encode(&c))
        }
        async fn on_message(&self, _from: &NodeId, _msg_type: u16, _payload: bytes::Bytes) {}
    }

    #[tokio::test]
    async fn a_snapshot_received_over_the_transport_is_the_one_offered() {
        use crate::transport::{Families, Family, TransportConfig};
        let chunk_msg = Family::Raft.msg(0x09);
        let dir = tempfile::tempdir().unwrap();
        let out = Outgoing::new(dir.path().join("out"));
        let p = out.prepare(state(20), |_| false).await.unwrap();
        let cfg = |n: &str| TransportConfig::new("c", n, "127.0.0.1:0".parse().unwrap());
        let mut reg = prometheus_client::registry::Registry::default();
        let sender = Transport::start(cfg("a"), Arc::new(Families::new().with(Family::Raft, Arc::new(Serve(out)))), &mut reg).await.unwrap();
        let mut reg = prometheus_client::registry::Registry::default();
        let receiver = Transport::start(cfg("b"), Arc::new(Families::new()), &mut reg).await.unwrap();
        receiver.add_peer("a".into(), sender.local_addr().to_string());

        let mut seen = 0;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let copy = Arc::new(MemStateMachine::default());
        let c = copy.clone();
        let install = tokio::task::spawn_blocking(move || install_snapshot(&*c, ChannelReader::new(rx)));
        let got = receive_into(&receiver, &"a".to_string(), chunk_msg, p.id, tx, |n| seen = n).await.unwrap();
        assert_eq!((got, seen), (p.size, p.size));
        let meta = install.await.unwrap().unwrap();
        assert_eq!(meta, p.meta);

        // An id the sender does not offer: the receiver learns it must start over.
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let e = receive_into(&receiver, &"a".to_string(), chunk_msg, p.id + 1, tx, |_| {}).await.unwrap_err();
        assert!(matches!(&e, StreamError::Transport(TransportError::Remote(r)) if r.code == "snapshot_expired"), "{e}");
        receiver.shutdown().await;
        sender.shutdown().await;
    }

    /// Serves chunks with one bit of their data flipped in transit, as a damaged link would.
    struct Flip(Outgoing);

    #[async_trait::async_trait]
    impl crate::transport::Handler for Flip {
        async fn on_request(&self, _from: &NodeId, _msg_type: u16, payload: bytes::Bytes) -> Result<bytes::Bytes, RemoteError> {
            let req: ChunkRequest = decode("snapshot chunk", &payload).map_err(|e| RemoteError::new("bad_request", e))?;
            let mut c = self.0.serve(&req).await?;
            let mid = c.data.len() / 2;
            c.data[mid] ^= 0x10;
            Ok(encode(&c))
        }
        async fn on_message(&self, _from: &NodeId, _msg_type: u16, _payload: bytes::Bytes) {}
    }

    /// A store image has no checksum of its own over the whole file: a chunk damaged in
    /// transit must be caught by the chunk's own CRC, before any byte of it is handed on.
    #[tokio::test]
    async fn a_chunk_damaged_in_transit_is_refused() {
        use crate::transport::{Families, Family, TransportConfig};
        let chunk_msg = Family::Raft.msg(0x09);
        let dir = tempfile::tempdir().unwrap();
        let out = Outgoing::new(dir.path().join("out"));
        let p = out.prepare(state(20), |_| false).await.unwrap();
        let cfg = |n: &str| TransportConfig::new("c", n, "127.0.0.1:0".parse().unwrap());
        let mut reg = prometheus_client::registry::Registry::default();
        let sender = Transport::start(cfg("a"), Arc::new(Families::new().with(Family::Raft, Arc::new(Flip(out)))), &mut reg).await.unwrap();
        let mut reg = prometheus_client::registry::Registry::default();
        let receiver = Transport::start(cfg("b"), Arc::new(Families::new()), &mut reg).await.unwrap();
        receiver.add_peer("a".into(), sender.local_addr().to_string());
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let e = receive_into(&receiver, &"a".to_string(), chunk_msg, p.id, tx, |_| {}).await.unwrap_err();
        assert!(e.to_string().contains("fails its checksum"), "{e}");
        assert!(rx.recv().await.is_none(), "a damaged chunk was handed to the install");
        receiver.shutdown().await;
        sender.shutdown().await;
    }

    /// Serves the first `n` chunk requests, then fails like a cut link.
    struct CutAfter(Outgoing, std::sync::atomic::AtomicUsize, usize);

    #[async_trait::async_trait]
    impl crate::transport::Handler for CutAfter {
        async fn on_request(&self, _from: &NodeId, _msg_type: u16, payload: bytes::Bytes) -> Result<bytes::Bytes, RemoteError> {
            if self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= self.2 {
                return Err(RemoteError::new("unavailable", "the link was cut"));
            }
            let req: ChunkRequest = decode("snapshot chunk", &payload).map_err(|e| RemoteError::new("bad_request", e))?;
            self.0.serve(&req).await.map(|c| encode(&c))
        }
        async fn on_message(&self, _from: &NodeId, _msg_type: u16, _payload: bytes::Bytes) {}
    }

    /// The receiver installs chunks as they arrive (`receive_into` + `ChannelReader`): a
    /// snapshot of several chunks installs whole; one whose transfer is cut after its first
    /// chunk has reached the install fails and leaves the old state exactly as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_installed_as_it_arrives_installs_whole_or_not_at_all() {
        use crate::transport::{Families, Family, TransportConfig};
        let chunk_msg = Family::Raft.msg(0x09);
        let dir = tempfile::tempdir().unwrap();
        let source = state(100_000);
        let cfg = |n: &str| TransportConfig::new("c", n, "127.0.0.1:0".parse().unwrap());
        for cut in [None, Some(1)] {
            let out = Outgoing::new(dir.path().join(format!("out-{cut:?}")));
            let p = out.prepare(source.clone(), |_| false).await.unwrap();
            assert!(p.size > u64::from(CHUNK_BYTES) * 2, "the snapshot must take several chunks: {} bytes", p.size);
            let handler: Arc<dyn crate::transport::Handler> = match cut {
                None => Arc::new(Serve(out)),
                Some(n) => Arc::new(CutAfter(out, Default::default(), n)),
            };
            let mut reg = prometheus_client::registry::Registry::default();
            let sender = Transport::start(cfg("a"), Arc::new(Families::new().with(Family::Raft, handler)), &mut reg).await.unwrap();
            let mut reg = prometheus_client::registry::Registry::default();
            let receiver = Transport::start(cfg("b"), Arc::new(Families::new()), &mut reg).await.unwrap();
            receiver.add_peer("a".into(), sender.local_addr().to_string());

            let target = Arc::new(MemStateMachine::default());
            target.apply(&[LogEntry { index: 1, epoch: 1, command: Command::Put { key: "old".into(), value: b"v".to_vec(), if_revision: None }, meta: None }]).unwrap();
            let before = crate::state_machine::digest(&*target).unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let t = target.clone();
            let install = tokio::task::spawn_blocking(move || install_snapshot(&*t, ChannelReader::new(rx)));
            let got = receive_into(&receiver, &"a".to_string(), chunk_msg, p.id, tx, |_| {}).await;
            let installed = install.await.unwrap();
            match cut {
                None => {
                    assert_eq!(got.unwrap(), p.size);
                    assert_eq!(installed.unwrap(), p.meta);
                    assert_eq!(crate::state_machine::digest(&*target).unwrap(), crate::state_machine::digest(&*source).unwrap());
                }
                Some(_) => {
                    assert!(got.is_err(), "the cut transfer reported success");
                    assert!(installed.is_err(), "a snapshot cut after its first chunk installed");
                    assert_eq!(crate::state_machine::digest(&*target).unwrap(), before, "a cut transfer changed the state");
                }
            }
            receiver.shutdown().await;
            sender.shutdown().await;
        }
    }
}
