//! Collecting tombstones: a deleted key's tombstone is removed once no region can still send
//! a version it would have to beat.
//!
//! The region leader, every `MERIDIAN_CLUSTER_TOMBSTONE_GC_INTERVAL`, chooses a horizon and
//! proposes [`Command::CollectTombstones`] through its Raft log (so every node of the region
//! removes the same tombstones at the same position). The rules, and why they are enough, are
//! invariants 1–3 in [`crate::apply`]; here they become two conditions on a tombstone:
//!
//! - **its stamp is below the horizon**, the lowest received clock over every remote region
//!   (a remote that has sent nothing yet holds the horizon at 0): every version any remote
//!   stamped at or below it has arrived, so none can come later and need the tombstone to
//!   lose to;
//! - **if this region wrote it, every remote region has acknowledged it** (their marks for
//!   this region have passed its position): only this region ships its own tombstones, so
//!   once it forgets one, a remote that never got it would keep the deleted value for good.
//!
//! A tombstone another region wrote needs no acknowledgement here: that region keeps it until
//! every region has it.
//!
//! Received clocks move only with writes. So that an idle cluster still collects its last
//! tombstones, a pass that saw any tombstone ends with a **clock tick**: a stamped no-op
//! committed through this region's log, which the shipper sends like any write. The tick
//! raises this region's clock (invariant 1) and, once shipped, every remote's received clock
//! for this region. Passes stop ticking once no tombstone is left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::shipper::Link;
use crate::apply::{horizon_key, received_clock_key};
use crate::command::{Command, KeyValue, Outcome, Stamp, MAX_REGION_BATCH};
use crate::raft::RaftNode;
use crate::replicator::Replicator as _;
use crate::state_machine::{ScanEvent, StateMachine, StateMachineError};

pub struct Collector {
    own_region: String,
    hlc: Arc<super::hlc::Hlc>,
    remotes: Vec<String>,
    links: Vec<Arc<Link>>,
    sm: Arc<dyn StateMachine>,
    raft: Arc<RaftNode>,
    /// Tombstones this node removed as leader, since it started.
    pub collected: AtomicU64,
}

impl Collector {
    pub fn new(own_region: String, hlc: Arc<super::hlc::Hlc>, remotes: Vec<String>, links: Vec<Arc<Link>>, sm: Arc<dyn StateMachine>, raft: Arc<RaftNode>) -> Collector {
        Collector { own_region, hlc, remotes, links, sm, raft, collected: AtomicU64::new(0) }
    }

    /// Collects every `interval` while this node leads its region, until `stopped()`.
    pub async fn run(self: Arc<Self>, interval: Duration, stopped: impl Fn() -> bool + Send + Sync) {
        loop {
            tokio::time::sleep(interval).await;
            if stopped() {
                return;
            }
            if !self.raft.is_leader() {
                continue;
            }
            match self.collect_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(tombstones = n, horizon = self.horizon(), "collected tombstones every region has"),
                Err(e) => tracing::warn!(error = %e, "collecting tombstones failed; trying again next interval"),
            }
        }
    }

    /// This region's stored horizon (what its last collection used).
    pub fn horizon(&self) -> u64 {
        read_u64(&*self.sm, &horizon_key())
    }

    /// The horizon a collection may use now (see [`horizon`]).
    pub fn next_horizon(&self) -> u64 {
        horizon(&*self.sm, &self.remotes)
    }

    /// One pass: scans for tombstones that meet both conditions and proposes their removal in
    /// batches, then a clock tick if it saw any tombstone. Returns how many were removed.
    pub async fn collect_once(&self) -> Result<u64, String> {
        let horizon = self.next_horizon();
        // The remotes' marks as this leader last heard them: lower bounds, so safe to use.
        let acked = self.links.iter().map(|l| l.status(0).acknowledged).min().unwrap_or(0);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(String, Stamp)>>(2);
        let (sm, own) = (self.sm.clone(), self.own_region.clone());
        // Returns how many tombstones the scan saw.
        let scan = tokio::task::spawn_blocking(move || -> Result<u64, String> {
            let (mut batch, mut seen) = (Vec::new(), 0);
            sm.scan(&mut |ev| {
                let ScanEvent::Entry(kv) = ev else { return Ok(()) };
                seen += u64::from(kv.tombstone);
                let Some(stamp) = collectable(&kv, &own, horizon, acked) else { return Ok(()) };
                batch.push((kv.key, stamp));
                if batch.len() >= MAX_REGION_BATCH {
                    tx.blocking_send(std::mem::take(&mut batch)).map_err(|_| StateMachineError::Storage("the collection stopped".into()))?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            if !batch.is_empty() {
                tx.blocking_send(batch).map_err(|_| "the collection stopped".to_string())?;
            }
            Ok(seen)
        });
        let mut removed = 0;
        while let Some(tombstones) = rx.recv().await {
            match self.raft.submit(Command::CollectTombstones { horizon, tombstones }).await {
                Ok(c) => {
                    if let Outcome::Collected { removed: n } = c.result.outcome {
                        removed += n;
                    }
                }
                Err(e) => return Err(format!("the collection was not committed: {e}")),
            }
        }
        let seen = scan.await.map_err(|e| e.to_string())??;
        self.collected.fetch_add(removed, Ordering::Relaxed);
        if seen > 0 {
            let tick = Command::Stamped { stamp: Stamp { hlc: self.hlc.now(), region: self.own_region.clone() }, command: Box::new(Command::Noop) };
            self.raft.submit(tick).await.map_err(|e| format!("the clock tick was not committed: {e}"))?;
        }
        Ok(removed)
    }
}

/// The horizon a collection may use in a region whose remotes are `remotes`: the lowest
/// received clock over them (0 while any has sent nothing).
pub fn horizon(sm: &dyn StateMachine, remotes: &[String]) -> u64 {
    remotes.iter().map(|r| read_u64(sm, &received_clock_key(r))).min().unwrap_or(0)
}

/// The stamp of `kv` if it is a tombstone region `own` may collect: stamped below `horizon`,
/// and if `own` wrote it, at a position every remote has acknowledged (`acked`, the lowest of
/// their marks for `own`).
pub fn collectable(kv: &KeyValue, own: &str, horizon: u64, acked: u64) -> Option<Stamp> {
    let stamp = kv.stamp.as_ref().filter(|s| kv.tombstone && s.hlc < horizon)?;
    if stamp.region == own && kv.mod_revision > acked {
        return None; // a remote may not have it yet
    }
    Some(stamp.clone())
}

/// A reserved key's number as this node's state holds it (0 when absent).
pub(crate) fn read_u64(sm: &dyn StateMachine, key: &str) -> u64 {
    crate::apply::number(sm.get_version(key).ok().flatten())
}
