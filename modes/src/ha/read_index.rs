//! Linearizable reads (`consistency=linearizable`) in `ha_standby`.
//!
//! A local read can be stale, or ahead of another node's, in two ways:
//! - this node believes it is the primary, but the standby has already been promoted (a
//!   partition, a SIGSTOP) and acknowledged writes this node has not seen;
//! - the primary ships records to the standby before they commit (the stream overlaps the
//!   two fsyncs), so the standby may show a write the primary does not show yet. A read on
//!   the standby that saw it, followed by a read on the primary that does not, would run
//!   time backwards. (Found by `tests/linearizability.rs`.)
//!
//! So a linearizable read takes a *read index* after it arrived — the primary's last
//! logged index, which bounds everything either node may have applied — establishes that
//! no newer primary exists, waits until this node has applied up to the read index, and
//! then serves the local state:
//! - On the primary: assert the epoch to the standby and the witness at once (the
//!   heartbeat's exchange, `heartbeat::assert_epoch`). The standby answering "standby of this epoch", or the
//!   witness answering "granted in this epoch", proves nobody was promoted before that
//!   answer — the standby needs the witness's vote (or this node's silence for a whole
//!   failover timeout, which the exchange itself resets) to promote. A higher epoch in
//!   either answer fences this node; no answer means 503.
//! - On the standby: ask the primary for its read index (`READ_INDEX`). Sound because the
//!   asking node is the only other node that could be primary, and it checks that it did
//!   not become one while it asked.
//! - Waiting for the read index means a read on the primary waits for the writes in flight
//!   when it arrived (one write's latency under write load); if they cannot commit (a
//!   `sync` primary without its standby) the read answers 504 after `wait_ms`.
//! - Raft's ReadIndex is the model (Ongaro's thesis, §6.4); no clock is trusted.
//! - Concurrent reads share rounds ([`SharedRounds`]): a read waits for the first round
//!   that *started* after it arrived — a round already under way may have been answered
//!   before the read began, so it proves nothing about it. Under load a round serves every
//!   read that arrived during the previous one (etcd batches its ReadIndex the same way).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::messages::*;
use super::heartbeat::assert_epoch;
use super::{Core, Role, PEER};
use crate::bookmark::wait_for_applied;
use crate::replicator::ReadError;

/// Waits until a read served from this node's state now would be linearizable.
pub(crate) async fn linearizable_fence(core: &Arc<Core>, wait: std::time::Duration) -> Result<(), ReadError> {
    enum Now {
        Primary,
        Switching,
        Standby,
    }
    let now = match &*core.role.lock().unwrap() {
        Role::Primary { .. } => Now::Primary,
        Role::Switching { .. } => Now::Switching,
        Role::Standby => Now::Standby,
    };
    let c = core.clone();
    let index = match now {
        Now::Primary => SharedRounds::join(&core.confirm_rounds, move || confirm_primary(c.clone())).await?,
        Now::Switching => return Err(ReadError::Unavailable("switchover in progress; retry shortly".into())),
        Now::Standby => SharedRounds::join(&core.index_rounds, move || read_index_from_primary(c.clone())).await?,
    };
    let mut rx = core.applied_tx.subscribe();
    wait_for_applied(&mut rx, index, wait).await
}

/// The primary's last logged index: no node can have applied a record beyond it.
fn logged_index(core: &Core) -> u64 {
    let tail = core.tail.lock().unwrap().as_ref().map_or(0, |t| *t.subscribe().borrow());
    core.wal.last_index().max(tail).max(core.sm.applied_index())
}

/// The read index, once this node is confirmed as the primary.
async fn confirm_primary(core: Arc<Core>) -> Result<u64, ReadError> {
    let core = &core;
    let epoch = core.epoch();
    let index = logged_index(core);
    let a = assert_epoch(core, epoch).await;
    let higher = [a.peer.as_ref().map(|r| r.epoch), a.witness.as_ref().map(|r| r.epoch)].into_iter().flatten().max();
    if let Some(h) = higher.filter(|h| *h > epoch) {
        let leader = a.peer.as_ref().and_then(|r| r.leader.clone());
        core.adopt_epoch(h, leader.clone(), "peer or witness").await;
        return Err(ReadError::NotLeader { leader });
    }
    let by_peer = a.peer.as_ref().is_some_and(|r| r.epoch == epoch && !r.primary);
    let by_witness = a.witness.as_ref().is_some_and(|r| r.epoch == epoch && r.granted);
    if !(by_peer || by_witness) {
        return Err(ReadError::Unavailable(
            "cannot confirm that this node is still the primary: neither the standby nor the witness answered".into(),
        ));
    }
    if core.epoch() != epoch || !core.is_primary() {
        return Err(ReadError::NotLeader { leader: core.leader.lock().unwrap().clone() });
    }
    Ok(index)
}

async fn read_index_from_primary(core: Arc<Core>) -> Result<u64, ReadError> {
    let epoch = core.epoch();
    let req = encode(&ReadIndex { epoch, node_id: core.cfg.node_id.clone() });
    let b = core
        .transport()
        .request(&PEER.to_string(), READ_INDEX, req, Some(core.cfg.heartbeat))
        .await
        .map_err(|e| ReadError::Unavailable(format!("cannot reach the primary for a linearizable read: {e}")))?;
    let r: ReadIndexReply = decode(&b).map_err(ReadError::Unavailable)?;
    if !r.primary {
        return Err(ReadError::Unavailable("the peer is not the primary (a failover may be in progress); retry shortly".into()));
    }
    // This node is the only other candidate: if it was promoted while it asked, the answer
    // may come from a deposed primary.
    if core.is_primary() || core.epoch() > r.epoch {
        return Err(ReadError::Unavailable("this node's role changed during the read; retry".into()));
    }
    Ok(r.index)
}

/// The primary's side of [`READ_INDEX`].
pub(crate) async fn on_read_index(core: &Arc<Core>, req: ReadIndex) -> ReadIndexReply {
    if req.epoch > core.epoch() {
        core.adopt_epoch(req.epoch, None, &req.node_id).await;
    }
    let index = logged_index(core);
    let primary = core.is_primary();
    ReadIndexReply { epoch: core.epoch(), primary, index, leader: core.leader.lock().unwrap().clone() }
}

/// One kind of round (a primary's confirmation, a standby's read index) shared by the
/// reads waiting for it. Rounds run one at a time, in spawned tasks, so a read whose
/// client goes away never leaves the others waiting.
pub(crate) struct SharedRounds<T> {
    state: Mutex<RoundState>,
    /// The newest finished round: (its number, its result).
    done: watch::Sender<(u64, Option<T>)>,
}

#[derive(Default)]
struct RoundState {
    /// The number of the newest round started.
    started: u64,
    running: bool,
    /// The highest round number a read waits for.
    wanted: u64,
}

impl<T: Clone + Send + Sync + 'static> SharedRounds<T> {
    pub(crate) fn new() -> Arc<SharedRounds<T>> {
        Arc::new(SharedRounds { state: Mutex::new(RoundState::default()), done: watch::channel((0, None)).0 })
    }

    /// The result of the first round that starts after this call.
    pub(crate) async fn join<F, Fut>(rounds: &Arc<Self>, round: F) -> T
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut rx = rounds.done.subscribe();
        let need = {
            let mut s = rounds.state.lock().unwrap();
            let need = s.started + 1;
            s.wanted = s.wanted.max(need);
            if !s.running {
                s.running = true;
                s.started = need;
                Self::spawn(rounds.clone(), need, Arc::new(round));
            }
            need
        };
        loop {
            {
                let v = rx.borrow_and_update();
                if v.0 >= need {
                    if let Some(t) = &v.1 {
                        return t.clone();
                    }
                }
            }
            // The sender lives as long as `rounds`, which this call holds.
            let _ = rx.changed().await;
        }
    }

    fn spawn<F, Fut>(rounds: Arc<Self>, number: u64, round: Arc<F>)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        tokio::spawn(async move {
            let result = round().await;
            rounds.done.send_replace((number, Some(result)));
            let next = {
                let mut s = rounds.state.lock().unwrap();
                s.running = s.wanted > number;
                if s.running {
                    s.started = number + 1;
                }
                s.running
            };
            if next {
                Self::spawn(rounds, number + 1, round);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_gets_a_round_that_started_after_it_and_concurrent_reads_share_rounds() {
        let rounds: Arc<SharedRounds<Instant>> = SharedRounds::new();
        let count = Arc::new(AtomicU64::new(0));
        let mut joins = Vec::new();
        for i in 0..200u64 {
            let (rounds, count) = (rounds.clone(), count.clone());
            joins.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 40)).await;
                let called = Instant::now();
                let started = SharedRounds::join(&rounds, move || {
                    let count = count.clone();
                    async move {
                        let started = Instant::now();
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        started
                    }
                })
                .await;
                (called, started)
            }));
        }
        for j in joins {
            let (called, started) = j.await.unwrap();
            assert!(started >= called, "a read was answered by a round that had started before it arrived");
        }
        let n = count.load(Ordering::SeqCst);
        // 200 reads spread over ~40 ms, rounds of ≥10 ms: a handful of rounds (more only if
        // the machine stalls the reads' arrival), never one per read.
        assert!((2..=40).contains(&n), "{n} rounds for 200 reads");
    }
}
