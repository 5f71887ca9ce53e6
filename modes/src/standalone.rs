//! `standalone`: one node, durable. A write is acknowledged after its WAL record is fsynced
//! and the command is applied.
//!
//! Two threads form a pipeline so that fsync and apply overlap:
//! - the *sequencer* drains every queued write, gives each the next index and enqueues the
//!   batch in the WAL (whose writer merges concurrent batches into one fsync);
//! - the *applier* waits for each batch to be durable, applies it to the state machine in one
//!   transaction, answers the writers, and checkpoints the state machine now and then so the
//!   WAL below the checkpoint can be purged.
//!
//! If the WAL or the state machine fails (disk full, I/O error), the node stops taking writes
//! — every later write answers `unavailable` — but keeps serving reads, because a log with a
//! hole in it must not be appended to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use meridian_wal::{AppendTicket, Record, Wal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::bookmark::{wait_for_applied, Bookmark};
use crate::command::Command;
use crate::replicator::{
    Committed, Health, ReadError, ReadRequest, ReplicationStatus, Replicator, SubmitError,
};
use crate::state_machine::{LogEntry, StateMachine};

#[derive(Clone, Debug)]
pub struct StandaloneConfig {
    pub node_id: String,
    /// How often the state machine is made durable (and the WAL below it purged).
    pub checkpoint_interval: Duration,
    /// Most writes in one WAL append / one apply transaction.
    pub max_batch: usize,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig { node_id: "node1".into(), checkpoint_interval: Duration::from_secs(1), max_batch: 1024 }
    }
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

pub struct Standalone {
    cfg: StandaloneConfig,
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    applied: watch::Receiver<u64>,
    failed: Arc<Mutex<Option<String>>>,
    sm: Arc<dyn StateMachine>,
    wal: Wal,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
}

impl Standalone {
    /// Starts the pipeline. The WAL must already be replayed into `sm` ([`crate::recovery::replay`]).
    pub fn start(cfg: StandaloneConfig, wal: Wal, sm: Arc<dyn StateMachine>) -> Arc<Standalone> {
        let (tx, rx) = mpsc::channel::<Pending>(cfg.max_batch * 4);
        // Bounded so that a slow disk pushes back on the sequencer instead of queueing forever.
        let (batch_tx, batch_rx) = std_mpsc::sync_channel::<Batch>(64);
        let (applied_tx, applied_rx) = watch::channel(sm.applied_index());
        let failed = Arc::new(Mutex::new(None));
        let epoch = wal.hard_state().epoch;

        let sequencer = {
            let wal = wal.clone();
            let max = cfg.max_batch;
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("meridian-sequencer".into())
                .spawn(move || sequence(rx, batch_tx, wal, epoch, max, failed))
                .expect("spawn sequencer")
        };
        let applier = {
            let wal = wal.clone();
            let sm = sm.clone();
            let failed = failed.clone();
            let interval = cfg.checkpoint_interval;
            std::thread::Builder::new()
                .name("meridian-applier".into())
                .spawn(move || apply_loop(batch_rx, sm, wal, applied_tx, failed, interval))
                .expect("spawn applier")
        };
        Arc::new(Standalone {
            cfg,
            queue: Mutex::new(Some(tx)),
            applied: applied_rx,
            failed,
            sm,
            wal,
            threads: Mutex::new(vec![sequencer, applier]),
            stopped: AtomicBool::new(false),
        })
    }
}

fn sequence(
    mut rx: mpsc::Receiver<Pending>,
    out: std_mpsc::SyncSender<Batch>,
    wal: Wal,
    epoch: u64,
    max: usize,
    failed: Arc<Mutex<Option<String>>>,
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
            records.push(Record { index: next, epoch, payload: p.cmd.encode() });
            entries.push(LogEntry { index: next, epoch, command: p.cmd });
            replies.push(p.reply);
            next += 1;
        }
        let ticket = wal.append(records);
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
    interval: Duration,
) {
    let mut last_checkpoint = Instant::now();
    let fail = |why: String, replies: Vec<Reply>| {
        error!("{why}; this node stops taking writes");
        failed.lock().unwrap().get_or_insert(why.clone());
        for r in replies {
            let _ = r.send(Err(SubmitError::Unavailable(why.clone())));
        }
    };
    for batch in rx {
        if failed.lock().unwrap().is_some() {
            fail(failed.lock().unwrap().clone().unwrap_or_default(), batch.replies);
            continue;
        }
        if let Err(e) = batch.ticket.wait() {
            fail(format!("WAL append failed: {e}"), batch.replies);
            continue;
        }
        match sm.apply(&batch.entries) {
            Ok(results) => {
                let last = batch.entries.last().map_or(0, |e| e.index);
                applied.send_replace(last);
                for ((result, entry), reply) in results.into_iter().zip(&batch.entries).zip(batch.replies) {
                    let bookmark = Bookmark { epoch: entry.epoch, index: entry.index };
                    let _ = reply.send(Ok(Committed { result, bookmark }));
                }
            }
            Err(e) => {
                fail(format!("applying to the state machine failed: {e}"), batch.replies);
                continue;
            }
        }
        if last_checkpoint.elapsed() >= interval {
            checkpoint(&*sm, &wal);
            last_checkpoint = Instant::now();
        }
    }
    checkpoint(&*sm, &wal);
}

/// Makes the applied state durable, then drops the WAL below it.
fn checkpoint(sm: &dyn StateMachine, wal: &Wal) {
    match sm.checkpoint() {
        Ok(durable) => {
            if let Err(e) = wal.purge_before(durable + 1) {
                warn!("WAL purge after checkpoint failed: {e}");
            }
        }
        Err(e) => warn!("state machine checkpoint failed (the WAL keeps everything since the last one): {e}"),
    }
}

#[async_trait]
impl Replicator for Standalone {
    fn mode(&self) -> &'static str {
        "standalone"
    }

    async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError> {
        let queue = self.queue.lock().unwrap().clone();
        let queue = queue.ok_or_else(|| SubmitError::Unavailable("node is shutting down".into()))?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| SubmitError::Unavailable("node is shutting down".into()))?;
        answer.await.map_err(|_| SubmitError::Unavailable("node is shutting down".into()))?
    }

    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError> {
        // One node: every acknowledged write is already applied, so local reads are linearizable.
        if let Some(b) = req.bookmark {
            let mut applied = self.applied.clone();
            wait_for_applied(&mut applied, b.index, req.wait).await?;
        }
        Ok(())
    }

    fn status(&self) -> ReplicationStatus {
        let failed = self.failed.lock().unwrap().clone();
        let stopped = self.stopped.load(Ordering::Relaxed);
        let (health, state) = match (&failed, stopped) {
            (Some(_), _) => (Health::Unhealthy, "failed"),
            (None, true) => (Health::Unhealthy, "stopped"),
            (None, false) => (Health::Healthy, "running"),
        };
        ReplicationStatus {
            mode: "standalone",
            node_id: self.cfg.node_id.clone(),
            role: "primary".into(),
            is_leader: true,
            state: state.into(),
            commit_index: self.wal.durable_index(),
            applied_index: self.sm.applied_index(),
            epoch: self.wal.hard_state().epoch,
            peers: vec![],
            health,
            lag_seconds: 0.0,
            leader_changes: 0,
            replication_bytes: 0,
            notes: failed.into_iter().collect(),
        }
    }

    async fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Dropping the sender lets the sequencer drain what is queued and exit; the applier
        // follows, checkpoints, and the WAL is closed after both.
        self.queue.lock().unwrap().take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        let wal = self.wal.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            if let Err(e) = wal.close() {
                warn!("closing the WAL: {e}");
            }
        })
        .await;
    }
}
