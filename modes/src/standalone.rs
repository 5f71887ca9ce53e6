//! `standalone`: one node, durable. A write is acknowledged once its WAL record is fsynced
//! and the command is applied — the [`Pipeline`] with no commit gate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meridian_wal::Wal;

use crate::bookmark::wait_for_applied;
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

pub struct Standalone {
    cfg: StandaloneConfig,
    pipeline: Arc<Pipeline>,
    sm: Arc<dyn StateMachine>,
    wal: Wal,
    stopped: AtomicBool,
}

impl Standalone {
    /// Starts taking writes. The WAL must already be replayed into `sm` ([`crate::recovery::replay`]).
    pub fn start(cfg: StandaloneConfig, wal: Wal, sm: Arc<dyn StateMachine>) -> Arc<Standalone> {
        let pcfg = PipelineConfig {
            epoch: wal.hard_state().epoch,
            checkpoint_interval: cfg.checkpoint_interval,
            max_batch: cfg.max_batch,
            gate: None,
            purge: None,
            tail: None,
        };
        let pipeline = Arc::new(Pipeline::start(pcfg, wal.clone(), sm.clone()));
        Arc::new(Standalone { cfg, pipeline, sm, wal, stopped: AtomicBool::new(false) })
    }
}

#[async_trait]
impl Replicator for Standalone {
    fn mode(&self) -> &'static str {
        "standalone"
    }

    async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError> {
        self.pipeline.submit(cmd).await
    }

    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError> {
        // One node: every acknowledged write is already applied, so local reads are linearizable.
        if let Some(b) = req.bookmark {
            wait_for_applied(&mut self.pipeline.applied(), b.index, req.wait).await?;
        }
        Ok(())
    }

    fn storage_failure(&self) -> Option<String> {
        self.pipeline.failure()
    }

    fn status(&self) -> ReplicationStatus {
        let failed = self.pipeline.failure();
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
        // Let queued writes finish and checkpoint, then close the WAL.
        let pipeline = self.pipeline.clone();
        let wal = self.wal.clone();
        let _ = tokio::task::spawn_blocking(move || {
            pipeline.stop_blocking();
            if let Err(e) = wal.close() {
                tracing::warn!("closing the WAL: {e}");
            }
        })
        .await;
    }
}
