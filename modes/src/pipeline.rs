//! The write pipeline shared by every mode that sequences its own log (standalone, the HA
//! primary): sequence → WAL append (group commit) → commit gate → apply → answer.
//!
//! Two threads, so that fsync and apply overlap:
//! - the *sequencer* drains every queued write, gives each the next index and enqueues the
//!   batch in the WAL (whose writer merges concurrent batches into one fsync);
//! - the *applier* waits for each batch to be durable, then for the mode's [`CommitGate`]
//!   (e.g. the standby's acknowledgement in `sync` mode), applies the batch to the state
//!   machine in one transaction — with the batches behind it that are durable and committed
//!   by then, so one group commit costs one state-machine commit — and answers the writers;
//! - the *checkpointer* makes the applied state durable every `checkpoint_interval`, so the
//!   WAL below it can be purged. It has its own thread because the fsync takes milliseconds
//!   to tens of milliseconds, and the state machine goes on applying meanwhile (the redb
//!   store's overlay): on the applier thread it made the writes behind it wait (issue 11: p99
//!   22.8 ms with checkpoints against 4.8 ms without).
//!
//! If the WAL or the state machine fails (disk full, I/O error), the pipeline stops taking
//! writes — every later write answers `unavailable` — because a log with a hole in it must not
//! be appended to. Reads go on.

use std::collections::VecDeque;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meridian_wal::{AppendTicket, Record, Wal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::bookmark::Bookmark;
use crate::command::Command;
use crate::payload::LogPayload;
use crate::replicator::{Committed, SubmitError};
use crate::state_machine::{checkpoint_wanted, LogEntry, StateMachine, CHECKPOINT_POLL};

/// Decides when a durable entry is committed and may be acknowledged.
pub trait CommitGate: Send + Sync + 'static {
    /// Blocks until entries up to `index` are committed, or says why they are not.
    fn wait_committed(&self, index: u64) -> Result<(), GateRefusal>;

    /// Whether [`wait_committed`](Self::wait_committed) would let entries up to `index`
    /// through at once (and then it counts as having done so); `false` when it would wait or
    /// refuse. Lets the applier add durable batches to the one it applies without waiting.
    fn committed_now(&self, _index: u64) -> bool {
        false
    }

    /// Why a new write would be refused right now, so it is refused before it is logged
    /// (e.g. a primary whose lease is out answers at once instead of queueing).
    fn refusal(&self) -> Option<SubmitError> {
        None
    }
}

/// Why a gate did not let a batch through.
#[derive(Debug)]
pub enum GateRefusal {
    /// These entries will never be committed by this pipeline (fenced, shutting down): the
    /// writers get the error and the pipeline stops taking writes.
    Final(SubmitError),
    /// Not committed *yet* (the primary's lease is out): the writers get the error — their
    /// writes may still commit later, as any unanswered write may — and the pipeline keeps
    /// asking the gate before it applies anything after these entries, so it resumes by
    /// itself once the gate opens instead of staying stopped while the node stays primary.
    NotYet(SubmitError),
}

/// Where the WAL may be purged once the state machine is durable up to `checkpoint`.
pub type PurgePolicy = Arc<dyn Fn(u64) -> u64 + Send + Sync>;

/// The records most recently handed to the WAL, kept in memory so a replication stream can
/// ship them at once — in parallel with the local fsync instead of after it. Safe because a
/// write is acknowledged only once it is durable locally *and* the commit gate is satisfied;
/// a record shipped and then lost locally (crash before the fsync) was never acknowledged.
pub struct Tail {
    inner: Mutex<TailInner>,
    last: watch::Sender<u64>,
}

struct TailInner {
    records: VecDeque<Record>,
    bytes: usize,
}

/// Bounds of the in-memory tail; older records are read from the WAL.
const TAIL_MAX_RECORDS: usize = 100_000;
const TAIL_MAX_BYTES: usize = 64 << 20;

impl Tail {
    pub fn new(last_index: u64) -> Arc<Tail> {
        Arc::new(Tail { inner: Mutex::new(TailInner { records: VecDeque::new(), bytes: 0 }), last: watch::channel(last_index).0 })
    }

    fn push(&self, records: &[Record]) {
        let mut t = self.inner.lock().unwrap();
        for r in records {
            t.bytes += r.payload.len();
            t.records.push_back(r.clone());
        }
        while t.records.len() > TAIL_MAX_RECORDS || t.bytes > TAIL_MAX_BYTES {
            match t.records.pop_front() {
                Some(r) => t.bytes -= r.payload.len(),
                None => break,
            }
        }
        if let Some(last) = records.last() {
            self.last.send_replace(last.index);
        }
    }

    /// The last index handed to the WAL (durable or not).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// Records from `from` on, if the tail still holds `from` (else read the WAL).
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Option<Vec<Record>> {
        let t = self.inner.lock().unwrap();
        let first = t.records.front()?.index;
        if from < first {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in t.records.iter().skip((from - first) as usize) {
            if out.len() >= max_records || (bytes + r.payload.len() > max_bytes && !out.is_empty()) {
                break;
            }
            bytes += r.payload.len();
            out.push(r.clone());
        }
        Some(out)
    }
}

#[derive(Clone)]
pub struct PipelineConfig {
    pub epoch: u64,
    pub checkpoint_interval: Duration,
    pub max_batch: usize,
    pub gate: Option<Arc<dyn CommitGate>>,
    /// Default: purge everything the checkpoint covers.
    pub purge: Option<PurgePolicy>,
    /// Publish sequenced records for streaming (the HA primary).
    pub tail: Option<Arc<Tail>>,
}

type Reply = oneshot::Sender<Result<Committed, SubmitError>>;

struct Pending {
    cmd: Command,
    reply: Reply,
}

struct Batch {
    ticket: AppendTicket,
    entries: Vec<LogEntry>,
    replies: Vec<Reply>,
}

/// Bounds one apply transaction (a long run of durable batches is applied in pieces).
const MERGE_MAX_ENTRIES: usize = 4096;

pub struct Pipeline {
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    gate: Option<Arc<dyn CommitGate>>,
    applied: watch::Receiver<u64>,
    failed: Arc<Mutex<Option<String>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pipeline {
    /// Starts sequencing after the WAL's last index. The WAL must already be replayed into
    /// `sm` (see [`crate::recovery::replay`]).
    pub fn start(cfg: PipelineConfig, wal: Wal, sm: Arc<dyn StateMachine>) -> Pipeline {
        let (tx, rx) = mpsc::channel::<Pending>(cfg.max_batch * 4);
        // Bounded so that a slow disk or standby pushes back instead of queueing forever.
        let (batch_tx, batch_rx) = std_mpsc::sync_channel::<Batch>(64);
        let (applied_tx, applied_rx) = watch::channel(sm.applied_index());
        let failed = Arc::new(Mutex::new(None));
        let gate = cfg.gate.clone();

        let sequencer = {
            let (wal, failed, epoch, max, tail) = (wal.clone(), failed.clone(), cfg.epoch, cfg.max_batch, cfg.tail.clone());
            std::thread::Builder::new()
                .name("meridian-sequencer".into())
                .spawn(move || sequence(rx, batch_tx, wal, epoch, max, failed, tail))
                .expect("spawn sequencer")
        };
        let applier = {
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("meridian-applier".into())
                .spawn(move || apply_loop(batch_rx, sm, wal, applied_tx, failed, cfg))
                .expect("spawn applier")
        };
        Pipeline { queue: Mutex::new(Some(tx)), gate, applied: applied_rx, failed, threads: Mutex::new(vec![sequencer, applier]) }
    }

    pub async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError> {
        let gone = || SubmitError::Unavailable("node is shutting down".into());
        let queue = self.queue.lock().unwrap().clone().ok_or_else(gone)?;
        if let Some(e) = self.gate.as_ref().and_then(|g| g.refusal()) {
            return Err(e);
        }
        let (reply, answer) = oneshot::channel();
        queue.send(Pending { cmd, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// The applied index as the pipeline publishes it (for bookmark waits).
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Why the pipeline stopped taking writes, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap().clone()
    }

    /// Stops taking writes, lets queued ones finish, checkpoints. Blocking; call it from
    /// `spawn_blocking` in async code.
    pub fn stop_blocking(&self) {
        self.queue.lock().unwrap().take();
        for t in std::mem::take(&mut *self.threads.lock().unwrap()) {
            let _ = t.join();
        }
    }
}

fn sequence(
    mut rx: mpsc::Receiver<Pending>,
    out: std_mpsc::SyncSender<Batch>,
    wal: Wal,
    epoch: u64,
    max: usize,
    failed: Arc<Mutex<Option<String>>>,
    tail: Option<Arc<Tail>>,
) {
    let mut next = wal.last_index() + 1;
    while let Some(first) = rx.blocking_recv() {
        let mut pending = vec![first];
        while pending.len() < max {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(_) => break,
            }
        }
        if let Some(why) = failed.lock().unwrap().clone() {
            for p in pending {
                let _ = p.reply.send(Err(SubmitError::Unavailable(why.clone())));
            }
            continue;
        }
        let mut records = Vec::with_capacity(pending.len());
        let mut entries = Vec::with_capacity(pending.len());
        let mut replies = Vec::with_capacity(pending.len());
        for p in pending {
            let payload = LogPayload::Normal(p.cmd);
            records.push(Record { index: next, epoch, payload: payload.encode() });
            entries.push(LogEntry::from_payload(next, epoch, payload));
            replies.push(p.reply);
            next += 1;
        }
        let shipped = tail.as_ref().map(|_| records.clone());
        let ticket = wal.append(records);
        if let (Some(t), Some(r)) = (&tail, shipped) {
            t.push(&r);
        }
        if out.send(Batch { ticket, entries, replies }).is_err() {
            break;
        }
    }
}

fn apply_loop(
    rx: std_mpsc::Receiver<Batch>,
    sm: Arc<dyn StateMachine>,
    wal: Wal,
    applied: watch::Sender<u64>,
    failed: Arc<Mutex<Option<String>>>,
    cfg: PipelineConfig,
) {
    let purge = cfg.purge.clone().unwrap_or_else(|| Arc::new(|checkpoint| checkpoint + 1));
    let (stop_checkpoints, stopped) = std_mpsc::channel::<()>();
    let checkpointer = {
        let (sm, wal, purge, every) = (sm.clone(), wal.clone(), purge.clone(), cfg.checkpoint_interval);
        std::thread::Builder::new()
            .name("meridian-checkpointer".into())
            .spawn(move || {
                // A failing checkpoint (a full disk) is said once per distinct error, not
                // every interval.
                let mut last_error = None;
                let mut last = Instant::now();
                let poll = every.min(CHECKPOINT_POLL).max(Duration::from_millis(1));
                while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(poll) {
                    if !checkpoint_wanted(last.elapsed(), every, &*sm) {
                        continue;
                    }
                    last = Instant::now();
                    let e = checkpoint_quietly(&*sm, &wal, &purge);
                    if e.is_some() && e != last_error {
                        warn!("{}", e.as_deref().unwrap_or_default());
                    }
                    if e.is_none() && last_error.is_some() {
                        tracing::info!("state machine checkpoints succeed again");
                    }
                    last_error = e;
                }
            })
            .expect("spawn checkpointer")
    };
    let fail = |why: String, replies: Vec<Reply>| {
        let mut f = failed.lock().unwrap();
        if f.is_none() {
            error!("{why}; this node stops taking writes");
            *f = Some(why.clone());
        }
        drop(f);
        for r in replies {
            let _ = r.send(Err(SubmitError::Unavailable(why.clone())));
        }
    };
    // A batch taken off the queue that was not durable yet when the one before it was applied.
    let mut held: Option<Batch> = None;
    'batches: while let Some(Batch { ticket, mut entries, mut replies }) = held.take().or_else(|| rx.recv().ok()) {
        let stopped = failed.lock().unwrap().clone();
        if let Some(why) = stopped {
            fail(why, replies);
            continue;
        }
        if let Err(e) = ticket.wait() {
            fail(format!("WAL append failed: {e}"), replies);
            continue;
        }
        let last = entries.last().map_or(0, |e| e.index);
        if let Some(gate) = &cfg.gate {
            let mut told = false;
            loop {
                match gate.wait_committed(last) {
                    Ok(()) => break,
                    Err(GateRefusal::Final(e)) => {
                        // Never committed here: the writers learn it, nothing is applied.
                        let why = e.to_string();
                        for r in std::mem::take(&mut replies) {
                            let _ = r.send(Err(e.clone()));
                        }
                        failed.lock().unwrap().get_or_insert(why);
                        continue 'batches;
                    }
                    Err(GateRefusal::NotYet(e)) => {
                        if !told {
                            for r in std::mem::take(&mut replies) {
                                let _ = r.send(Err(e.clone()));
                            }
                            told = true;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        // The sequencer's batches are small (what queued while it encoded the last one) and
        // one fsync usually covers several: the ones behind this batch that are already
        // durable, and committed by the gate, go into the same state-machine transaction, so a
        // group commit costs one redb commit instead of one per sequencer batch. Only what
        // needs no waiting is merged, so no writer waits for a later batch; a batch that is
        // not ready is held for the next turn.
        while entries.len() < MERGE_MAX_ENTRIES {
            let Ok(mut next) = rx.try_recv() else { break };
            let next_last = next.entries.last().map_or(0, |e| e.index);
            if !next.ticket.is_durable() || cfg.gate.as_ref().is_some_and(|g| !g.committed_now(next_last)) {
                held = Some(next);
                break;
            }
            entries.append(&mut next.entries);
            replies.append(&mut next.replies);
        }
        let last = entries.last().map_or(0, |e| e.index);
        match sm.apply(&entries) {
            Ok(results) => {
                applied.send_replace(last);
                for ((result, entry), reply) in results.into_iter().zip(&entries).zip(replies) {
                    let bookmark = Bookmark { epoch: entry.epoch, index: entry.index };
                    let _ = reply.send(Ok(Committed { result, bookmark }));
                }
            }
            Err(e) => {
                fail(format!("applying to the state machine failed: {e}"), replies);
                continue;
            }
        }
    }
    drop(stop_checkpoints);
    let _ = checkpointer.join();
    checkpoint(&*sm, &wal, &purge);
}

/// Makes the applied state durable, then drops the WAL below what the policy allows.
pub fn checkpoint(sm: &dyn StateMachine, wal: &Wal, purge: &PurgePolicy) {
    if let Some(e) = checkpoint_quietly(sm, wal, purge) {
        warn!("{e}");
    }
}

/// [`checkpoint`], returning what went wrong instead of logging it.
fn checkpoint_quietly(sm: &dyn StateMachine, wal: &Wal, purge: &PurgePolicy) -> Option<String> {
    match sm.checkpoint() {
        Ok(durable) => wal.purge_before(purge(durable)).err().map(|e| format!("WAL purge after checkpoint failed: {e}")),
        Err(e) => Some(format!("state machine checkpoint failed (the WAL keeps everything since the last one): {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{MemStateMachine, StateMachineError};
    use meridian_wal::WalOptions;

    /// Records the size of every apply call; the first one says so on `entered`, then waits
    /// until `release` is sent.
    struct Recording {
        inner: MemStateMachine,
        applies: Mutex<Vec<usize>>,
        entered: Mutex<Option<std_mpsc::Sender<()>>>,
        release: Mutex<Option<std_mpsc::Receiver<()>>>,
    }

    impl StateMachine for Recording {
        fn apply(&self, e: &[LogEntry]) -> Result<Vec<crate::command::CommandResult>, StateMachineError> {
            if let Some(release) = self.release.lock().unwrap().take() {
                self.entered.lock().unwrap().take().unwrap().send(()).unwrap();
                release.recv().unwrap();
            }
            self.applies.lock().unwrap().push(e.len());
            self.inner.apply(e)
        }
        crate::state_machine::delegate_to_inner!();
        fn scan(&self, visit: &mut dyn FnMut(crate::state_machine::ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
            self.inner.scan(visit)
        }
    }

    /// Asks for a checkpoint all the time and counts the ones it gets.
    struct AlwaysDue {
        inner: MemStateMachine,
        checkpoints: std::sync::atomic::AtomicU64,
    }

    impl StateMachine for AlwaysDue {
        fn checkpoint(&self) -> Result<u64, StateMachineError> {
            self.checkpoints.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.checkpoint()
        }
        fn checkpoint_due(&self) -> bool {
            true
        }
        fn apply(&self, e: &[LogEntry]) -> Result<Vec<crate::command::CommandResult>, StateMachineError> {
            self.inner.apply(e)
        }
        crate::state_machine::delegate_to_inner!(reads);
        fn scan(&self, visit: &mut dyn FnMut(crate::state_machine::ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
            self.inner.scan(visit)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpointer_checkpoints_when_the_store_asks_before_the_interval_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalOptions::new(dir.path().join("wal"))).unwrap();
        let sm = Arc::new(AlwaysDue { inner: MemStateMachine::default(), checkpoints: Default::default() });
        let cfg = PipelineConfig { epoch: 1, checkpoint_interval: Duration::from_secs(3600), max_batch: 1024, gate: None, purge: None, tail: None };
        let pipeline = Arc::new(Pipeline::start(cfg, wal, sm.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sm.checkpoints.load(std::sync::atomic::Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = sm.checkpoints.load(std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || pipeline.stop_blocking()).await.unwrap();
        assert!(seen > 0, "the store asked for a checkpoint for 10 s and got none (the interval is 1 h)");
    }

    fn put(i: u64) -> Command {
        Command::Put { key: format!("k{i}"), value: vec![i as u8], if_revision: None }
    }

    /// Commits up to a mark the test moves.
    struct Mark {
        upto: Mutex<u64>,
        moved: std::sync::Condvar,
    }

    impl CommitGate for Mark {
        fn wait_committed(&self, index: u64) -> Result<(), GateRefusal> {
            drop(self.moved.wait_while(self.upto.lock().unwrap(), |u| *u < index).unwrap());
            Ok(())
        }
        fn committed_now(&self, index: u64) -> bool {
            *self.upto.lock().unwrap() >= index
        }
    }

    /// Starts a pipeline whose first apply waits for the returned sender, and eleven writes:
    /// the first, then ten sequenced one at a time (each a batch of its own), all durable
    /// when this returns.
    async fn eleven_batches_behind_a_held_apply(
        gate: Option<Arc<dyn CommitGate>>,
    ) -> (Arc<Pipeline>, Arc<Recording>, std_mpsc::Sender<()>, Vec<tokio::task::JoinHandle<Result<Committed, SubmitError>>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalOptions::new(dir.path().join("wal"))).unwrap();
        let (release, held) = std_mpsc::channel();
        let (entered, inside) = std_mpsc::channel();
        let sm = Arc::new(Recording { inner: MemStateMachine::default(), applies: Mutex::new(Vec::new()), entered: Mutex::new(Some(entered)), release: Mutex::new(Some(held)) });
        let cfg = PipelineConfig { epoch: 1, checkpoint_interval: Duration::from_secs(3600), max_batch: 1024, gate, purge: None, tail: None };
        let pipeline = Arc::new(Pipeline::start(cfg, wal.clone(), sm.clone()));
        let p = pipeline.clone();
        let mut writes = vec![tokio::spawn(async move { p.submit(put(1)).await })];
        // The first apply holds write 1 alone (on a busy machine the applier could otherwise
        // reach it only after more were durable, and take them too).
        tokio::task::spawn_blocking(move || inside.recv().unwrap()).await.unwrap();
        for i in 2..=11 {
            while wal.last_index() < i - 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let p = pipeline.clone();
            writes.push(tokio::spawn(async move { p.submit(put(i)).await }));
        }
        wal.subscribe_durable().wait_for(|d| *d >= 11).await.unwrap();
        // The sequencer hands a batch to the applier just after its WAL append; a preempted
        // sequencer can do so after the fsync. Give it ample time to hand over write 11.
        tokio::time::sleep(Duration::from_millis(200)).await;
        (pipeline, sm, release, writes, dir)
    }

    async fn check_and_stop(pipeline: Arc<Pipeline>, sm: &Recording, writes: Vec<tokio::task::JoinHandle<Result<Committed, SubmitError>>>) {
        for (i, w) in writes.into_iter().enumerate() {
            let c = w.await.unwrap().unwrap();
            assert_eq!(c.bookmark.index, i as u64 + 1, "each write answered with its own index");
        }
        assert_eq!(sm.applied_index(), 11);
        for i in 1..=11 {
            assert_eq!(sm.get(&format!("k{i}")).unwrap().unwrap().value, vec![i as u8]);
        }
        tokio::task::spawn_blocking(move || pipeline.stop_blocking()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_durable_by_the_time_the_applier_reaches_them_are_applied_in_one_call() {
        let (pipeline, sm, release, writes, _dir) = eleven_batches_behind_a_held_apply(None).await;
        release.send(()).unwrap();
        check_and_stop(pipeline, &sm, writes).await;
        assert_eq!(*sm.applies.lock().unwrap(), vec![1, 10], "the ten durable batches were applied in one call");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_the_gate_has_not_committed_is_not_merged_into_one_it_has() {
        let mark = Arc::new(Mark { upto: Mutex::new(6), moved: std::sync::Condvar::new() });
        let (pipeline, sm, release, writes, _dir) = eleven_batches_behind_a_held_apply(Some(mark.clone())).await;
        release.send(()).unwrap();
        // Up to 6 goes through (in two applies); 7 waits for the gate, and the writers of 2..6
        // are answered meanwhile.
        for w in &writes[..6] {
            while !w.is_finished() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sm.applied_index(), 6, "applied past what the gate committed");
        *mark.upto.lock().unwrap() = 11;
        mark.moved.notify_all();
        check_and_stop(pipeline, &sm, writes).await;
        assert_eq!(*sm.applies.lock().unwrap(), vec![1, 5, 5]);
    }
}
