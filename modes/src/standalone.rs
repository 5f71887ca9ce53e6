//! `standalone`: one node, durable. A write is acknowledged once its WAL record is fsynced
//! and the command is applied — the [`Pipeline`] with no commit gate.
//!
//! ## After a storage error (a full disk)
//!
//! A failed WAL write or apply stops the pipeline: every write is refused (503) and
//! `/health` says why. Given a way to open the WAL again ([`Standalone::resume_after_storage_errors`]),
//! a watcher then checks every few seconds whether the disk has room (it writes and syncs a
//! probe file of [`crate::room::PROBE_BYTES`] beside the WAL). Once it has, the storage is opened again the
//! way a restart would: the pipeline stops, the WAL is closed and opened (its recovery drops
//! a torn tail; a record that reached the disk whole but was never acknowledged may stay,
//! like any write whose answer was lost), the state store reopens what latched the error,
//! the WAL is replayed into it, and a new pipeline takes writes. Nothing acknowledged was
//! ever outside the WAL and the store, so nothing acknowledged is lost.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use meridian_wal::Wal;

use crate::applied_wait::wait_for_applied;
use crate::command::Command;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::replicator::{Committed, Health, ReadError, ReadRequest, ReplicationStatus, Replicator, SubmitError};
use crate::state_machine::StateMachine;

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
        StandaloneConfig { node_id: "node1".into(), checkpoint_interval: Duration::from_millis(250), max_batch: 1024 }
    }
}

/// The pipeline and the WAL it writes: they are replaced together.
struct Running {
    pipeline: Arc<Pipeline>,
    wal: Wal,
}

/// Opens the WAL again with the options it was first opened with.
pub type ReopenWal = Arc<dyn Fn() -> Result<Wal, String> + Send + Sync>;

pub struct Standalone {
    cfg: StandaloneConfig,
    /// Replaced as a whole when the storage is opened again after an error.
    running: RwLock<Running>,
    sm: Arc<dyn StateMachine>,
    stopped: AtomicBool,
    /// True while the storage is being opened again: reads wait it out (the state goes
    /// back to its last durable point until the WAL is replayed).
    resuming: AtomicBool,
}

impl Standalone {
    /// Starts taking writes. The WAL must already be replayed into `sm` ([`crate::recovery::replay`]).
    pub fn start(cfg: StandaloneConfig, wal: Wal, sm: Arc<dyn StateMachine>) -> Arc<Standalone> {
        let pipeline = Arc::new(Self::pipeline(&cfg, &wal, &sm));
        Arc::new(Standalone {
            cfg,
            running: RwLock::new(Running { pipeline, wal }),
            sm,
            stopped: AtomicBool::new(false),
            resuming: AtomicBool::new(false),
        })
    }

    fn pipeline(cfg: &StandaloneConfig, wal: &Wal, sm: &Arc<dyn StateMachine>) -> Pipeline {
        let pcfg = PipelineConfig {
            epoch: wal.hard_state().epoch,
            checkpoint_interval: cfg.checkpoint_interval,
            max_batch: cfg.max_batch,
            gate: None,
            purge: None,
            tail: None,
        };
        Pipeline::start(pcfg, wal.clone(), sm.clone())
    }

    fn current(&self) -> Arc<Pipeline> {
        self.running.read().unwrap().pipeline.clone()
    }

    fn current_wal(&self) -> Wal {
        self.running.read().unwrap().wal.clone()
    }

    /// Watches for a storage failure and, once the disk at `probe_dir` has room again,
    /// opens the storage again and takes writes (see the module docs). Runs on its own
    /// thread until the node shuts down.
    pub fn resume_after_storage_errors(self: &Arc<Self>, reopen: ReopenWal, probe_dir: PathBuf, every: Duration) {
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("meridian-storage-watch".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(node) = me.upgrade() else { return };
                if node.stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Some(why) = node.current().failure() else { continue };
                match node.resume(&reopen, &probe_dir) {
                    Ok(replayed) => tracing::warn!(after = %why, replayed, "storage has room again: this node is taking writes again"),
                    Err(e) => tracing::debug!(error = %e, "storage not usable yet; writes stay refused"),
                }
            })
            .expect("spawn the storage watcher");
    }

    /// One attempt; returns how many WAL entries were replayed into the state.
    fn resume(&self, reopen: &ReopenWal, probe_dir: &std::path::Path) -> Result<u64, String> {
        crate::room::probe_room(probe_dir)?;
        self.resuming.store(true, Ordering::SeqCst);
        let result = self.reopen_storage(reopen);
        self.resuming.store(false, Ordering::SeqCst);
        result
    }

    fn reopen_storage(&self, reopen: &ReopenWal) -> Result<u64, String> {
        let old = self.current();
        old.stop_blocking();
        if let Err(e) = self.current_wal().close() {
            tracing::debug!(error = %e, "closing the failed WAL");
        }
        // From here on, any error leaves the old (stopped, failed) pipeline in place: writes
        // stay refused and the next attempt starts over.
        self.sm.reopen_storage().map_err(|e| format!("reopening the state store: {e}"))?;
        let wal = reopen()?;
        let replayed = crate::recovery::replay(&wal, &*self.sm).map_err(|e| format!("replaying the WAL: {e}"))?;
        let pipeline = Arc::new(Self::pipeline(&self.cfg, &wal, &self.sm));
        *self.running.write().unwrap() = Running { pipeline, wal };
        Ok(replayed)
    }
}

#[async_trait]
impl Replicator for Standalone {
    fn mode(&self) -> &'static str {
        "standalone"
    }

    async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError> {
        self.current().submit(cmd).await
    }

    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError> {
        // Reopening after a storage error: the state is behind until the WAL is replayed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.resuming.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ReadError::Unavailable("the storage is being opened again after a storage error".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // One node: every acknowledged write is already applied, so local reads are linearizable.
        if let Some(b) = req.bookmark {
            wait_for_applied(&mut self.current().applied(), b.index, req.wait).await?;
        }
        Ok(())
    }

    fn storage_failure(&self) -> Option<String> {
        self.current().failure()
    }

    fn wal(&self) -> Option<Wal> {
        Some(self.current_wal())
    }

    fn status(&self) -> ReplicationStatus {
        let failed = self.current().failure();
        let wal = self.current_wal();
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
            commit_index: wal.durable_index(),
            applied_index: self.sm.applied_index(),
            epoch: wal.hard_state().epoch,
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
        // Let queued writes finish and checkpoint, then close the WAL.
        let (pipeline, wal) = (self.current(), self.current_wal());
        let _ = tokio::task::spawn_blocking(move || {
            pipeline.stop_blocking();
            if let Err(e) = wal.close() {
                tracing::warn!("closing the WAL: {e}");
            }
        })
        .await;
    }
}
