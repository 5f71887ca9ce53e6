//! A cluster mode that stops on a storage error and starts again once the disk has room.
//!
//! A node whose WAL or state store failed (a full disk, an I/O error) can take no part in
//! replication: in `ha_standby` a primary that went on answering its standby's fetches would
//! keep the standby from taking over while it refused every write, and openraft stops its
//! core for good on a storage error. So the node leaves its cluster the way a crashed node
//! does: the mode is shut down and the cluster port, which the node keeps, refuses its traffic
//! ([`meridian_modes::transport::Switch`]). The others carry on without it (the standby takes
//! over after its failover timeout; the Raft group elects a leader).
//!
//! Once the disk has room (probed every few seconds, [`meridian_modes::room`]), the storage is
//! opened again the way a restart opens it — the store reloads its file (dropping what was
//! applied but not durable), the WAL reopens (dropping a torn tail) and is replayed as the
//! mode's start-up replays it — and the mode starts again on the same port. It then rejoins
//! through the paths a restarted node takes (HA's rejoin as standby of whoever holds the
//! higher epoch, with a divergent tail set aside; Raft's catch-up from the leader). Nothing
//! acknowledged is lost for the same reason as after a kill -9: a write is acknowledged only
//! once it is durable where the mode's rules say (this node's WAL, its standby's, a Raft
//! majority's).
//!
//! A node that fails again within a minute of starting again (a nearly full disk passes the
//! probe once the stopped mode has released space, and fills again as it catches up) waits
//! twice as long before its next probe, up to 32 intervals.
//!
//! While the mode is down, writes, reads and admin calls on this node answer 503 with the
//! reason, and `/health` says `unhealthy` with the reason and the way back. `standalone` does
//! not go through here: it has no one to hand over to, so it reopens its storage in place
//! and keeps serving reads meanwhile ([`meridian_modes::standalone`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use meridian_modes::command::Command;
use meridian_modes::replicator::{
    AdminError, AdminRequest, Committed, DivergentTailInfo, Health, ReadError, ReadRequest, RegionLink, ReplicationStatus,
    SubmitError,
};
use meridian_modes::{Replicator, StateMachine};
use meridian_wal::Wal;
use tracing::{error, warn};

/// A failure this soon after the mode started again counts as the same episode (backoff).
const SOON: Duration = Duration::from_secs(60);
/// The longest wait before probing, in multiples of the watch interval.
const MAX_BACKOFF: u32 = 32;

/// How the node stops serving a mode and starts it again (`node.rs` implements it).
#[async_trait]
pub trait Restart: Send + Sync + 'static {
    /// The mode is going down because of `why`: stop routing cluster traffic to it.
    fn detach(&self, why: &str);
    /// Opens the storage again as a restart would and starts the mode on it; an error means
    /// not yet (the next probe tries again).
    async fn restart(&self) -> Result<(Arc<dyn Replicator>, Wal), String>;
}

/// The mode now running and the WAL it writes: replaced together.
struct Running {
    replicator: Arc<dyn Replicator>,
    wal: Wal,
}

/// The [`Replicator`] the rest of the node holds for a cluster mode: the mode running now,
/// or the reason it is down.
pub struct Resumable {
    mode: &'static str,
    /// The state store, the same object across restarts (it reopens in place).
    store: Arc<dyn StateMachine>,
    running: RwLock<Running>,
    /// `Some(why)` from the moment a storage failure is seen until the mode runs again.
    down: RwLock<Option<String>>,
    stopping: AtomicBool,
}

impl Resumable {
    pub fn new(replicator: Arc<dyn Replicator>, wal: Wal, store: Arc<dyn StateMachine>) -> Arc<Resumable> {
        Arc::new(Resumable {
            mode: replicator.mode(),
            store,
            running: RwLock::new(Running { replicator, wal }),
            down: RwLock::new(None),
            stopping: AtomicBool::new(false),
        })
    }

    fn current(&self) -> Arc<dyn Replicator> {
        self.running.read().unwrap().replicator.clone()
    }

    fn current_wal(&self) -> Wal {
        self.running.read().unwrap().wal.clone()
    }

    /// Why this node serves nothing now, in the words a client and an operator read.
    fn down_message(&self) -> Option<String> {
        self.down.read().unwrap().as_ref().map(|why| {
            format!("this node's storage failed ({why}); it has left its cluster and takes part again once its disk has room")
        })
    }

    /// Watches for a storage failure every `every`; on one, stops the mode and, once
    /// `probe_dir`'s disk has room, starts it again through `restart` (see the module docs).
    /// Runs until the node shuts down.
    pub fn watch(self: &Arc<Self>, restart: Arc<dyn Restart>, probe_dir: PathBuf, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            // A disk that is nearly full can pass the probe and fill again as soon as the mode
            // has caught up: a node that fails again soon after starting waits twice as long
            // before it probes (up to `MAX_BACKOFF` × `every`), as a crash-looping service would.
            let (mut last_start, mut backoff) = (None::<std::time::Instant>, every);
            loop {
                tokio::time::sleep(every).await;
                let Some(node) = me.upgrade() else { return };
                if node.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let (mode, wal) = (node.current(), node.current_wal());
                // The store's own failure matters where no mode sees it: an HA standby's
                // apply runs in the background and retries, and redb refuses every commit
                // after a failed one until it is opened again.
                let Some(why) = mode.storage_failure().or_else(|| wal.failure()).or_else(|| node.store.storage_failure()) else { continue };
                error!(error = %why, "storage failed: this node stops its replication mode and leaves the cluster until its disk has room again; the others carry on without it");
                *node.down.write().unwrap() = Some(why.clone());
                restart.detach(&why);
                mode.shutdown().await;
                drop((node, mode, wal));
                backoff = if last_start.is_some_and(|t| t.elapsed() < SOON) { (backoff * 2).min(every * MAX_BACKOFF) } else { every };
                if backoff > every {
                    warn!(wait_s = backoff.as_secs(), "the storage failed again soon after the mode started again; waiting longer before the next attempt");
                }
                tokio::time::sleep(backoff - every).await;
                loop {
                    tokio::time::sleep(every).await;
                    let Some(node) = me.upgrade() else { return };
                    if node.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    let dir = probe_dir.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || meridian_modes::room::probe_room(&dir)).await.expect("room probe panicked") {
                        tracing::debug!(error = %e, "storage not usable yet; this node stays out of its cluster");
                        continue;
                    }
                    match restart.restart().await {
                        Ok((replicator, wal)) => {
                            last_start = Some(std::time::Instant::now());
                            *node.running.write().unwrap() = Running { replicator, wal };
                            *node.down.write().unwrap() = None;
                            if node.stopping.load(Ordering::SeqCst) {
                                node.current().shutdown().await;
                                return;
                            }
                            warn!(after = %why, "storage has room again: the replication mode started again and this node rejoins its cluster");
                            break;
                        }
                        Err(e) => warn!(error = %e, "the disk has room, but the replication mode did not start again; retrying"),
                    }
                }
            }
        });
    }
}

#[async_trait]
impl Replicator for Resumable {
    fn mode(&self) -> &'static str {
        self.mode
    }

    async fn submit(&self, cmd: Command) -> Result<Committed, SubmitError> {
        match self.down_message() {
            Some(m) => Err(SubmitError::Unavailable(m)),
            None => self.current().submit(cmd).await,
        }
    }

    async fn read_fence(&self, req: &ReadRequest) -> Result<(), ReadError> {
        // The store is reloaded while the mode is down: its state is not known to be agreed.
        match self.down_message() {
            Some(m) => Err(ReadError::Unavailable(m)),
            None => self.current().read_fence(req).await,
        }
    }

    fn status(&self) -> ReplicationStatus {
        let mut s = self.current().status();
        if let Some(m) = self.down_message() {
            s.role = "stopped".into();
            s.is_leader = false;
            s.state = "storage_failed".into();
            s.health = Health::Unhealthy;
            s.notes.insert(0, m);
        }
        s
    }

    fn peer_http_addrs(&self) -> Vec<(String, Option<String>)> {
        self.current().peer_http_addrs()
    }

    fn storage_failure(&self) -> Option<String> {
        self.down.read().unwrap().clone().or_else(|| self.current().storage_failure())
    }

    fn wal(&self) -> Option<Wal> {
        Some(self.current_wal())
    }

    fn region_links(&self) -> Vec<RegionLink> {
        self.current().region_links()
    }

    fn divergent_tails(&self) -> Vec<DivergentTailInfo> {
        self.current().divergent_tails()
    }

    async fn admin(&self, req: AdminRequest) -> Result<serde_json::Value, AdminError> {
        match self.down_message() {
            Some(m) => Err(AdminError::Unavailable(m)),
            None => self.current().admin(req).await,
        }
    }

    async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.current().shutdown().await;
    }
}
