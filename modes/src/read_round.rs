//! Read rounds: the mode-independent half of a linearizable read.
//!
//! A linearizable read (Raft's ReadIndex, Ongaro's thesis §6.4) has two steps:
//! 1. A **round** that yields a *read index*: an index at or above every write acknowledged
//!    before the read arrived, taken while the node that vouches for it is confirmed as the
//!    leader (a heartbeat answered by a quorum in Raft; the standby's or witness's answer in
//!    HA, `ha::read_index`). How a round confirms leadership is the mode's; it is passed in.
//! 2. **Wait** until this node has applied up to the read index, then read the local state.
//!
//! This module holds what every mode shares: [`SharedRounds`], which lets concurrent reads
//! share one round instead of one each, and [`read_at`], the two steps together.
//!
//! Sharing is sound only for a round that *started* after the read arrived: a round already
//! under way may have confirmed leadership before the read began, so it proves nothing about
//! it. So a read waits for the next round to start; under load one round serves every read
//! that arrived during the previous one (etcd batches its ReadIndex the same way).
//!
//! ```ignore
//! // once per node (per kind of round):
//! let rounds: Arc<IndexRounds> = SharedRounds::new();
//! // per read:
//! let node = node.clone();
//! read_at(&rounds, move || confirm_and_get_read_index(node.clone()), applied_rx, wait).await?;
//! // … then serve the read from the local state machine.
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::applied_wait::wait_for_applied;
use crate::replicator::ReadError;

/// Rounds that yield a read index, or why none could be had (the read fails with it).
pub type IndexRounds = SharedRounds<Result<u64, ReadError>>;

/// Waits until a read served from this node's state now is linearizable: joins the next
/// round of `rounds` (running `round` if none is due), then waits up to `wait` for `applied`
/// (this node's applied index) to reach the round's read index.
///
/// Errors: the round's own error; [`ReadError::BookmarkTimeout`] if the index is not applied
/// in time; [`ReadError::Unavailable`] if `applied`'s sender is gone (shutting down).
pub async fn read_at<F, Fut>(rounds: &Arc<IndexRounds>, round: F, mut applied: watch::Receiver<u64>, wait: Duration) -> Result<(), ReadError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, ReadError>> + Send + 'static,
{
    let index = SharedRounds::join(rounds, round).await?;
    wait_for_applied(&mut applied, index, wait).await
}

/// One kind of round (a leader's confirmation, a follower's request for the leader's read
/// index) shared by the reads waiting for it. Rounds run one at a time, in spawned tasks, so
/// a read whose client goes away never leaves the others waiting. `T` is the round's result,
/// handed to every read that waited for it (usually an [`IndexRounds`] result).
pub struct SharedRounds<T> {
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
    pub fn new() -> Arc<SharedRounds<T>> {
        Arc::new(SharedRounds { state: Mutex::new(RoundState::default()), done: watch::channel((0, None)).0 })
    }

    /// The result of the first round that starts after this call. `round` runs that round
    /// if this call is the one to start it (the rounds of one `SharedRounds` should all do
    /// the same thing: whichever caller's `round` runs, its result serves them all).
    pub async fn join<F, Fut>(rounds: &Arc<Self>, round: F) -> T
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
    use std::time::Instant;

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

    #[tokio::test]
    async fn a_read_waits_until_the_read_index_is_applied_here() {
        let rounds: Arc<IndexRounds> = SharedRounds::new();
        let (applied, rx) = watch::channel(3u64);
        let setter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            applied.send_replace(5);
            applied
        });
        let t = Instant::now();
        read_at(&rounds, || async { Ok(5) }, rx, Duration::from_secs(5)).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(25), "answered before index 5 was applied");
        let applied = setter.await.unwrap();

        // Not applied in time: the read fails rather than serving stale state.
        let e = read_at(&rounds, || async { Ok(9) }, applied.subscribe(), Duration::from_millis(20)).await.unwrap_err();
        assert!(matches!(e, ReadError::BookmarkTimeout { wanted: 9, applied: 5, .. }), "{e:?}");
        // A round that cannot confirm leadership fails the read with its reason.
        let e = read_at(&rounds, || async { Err(ReadError::Unavailable("no quorum".into())) }, applied.subscribe(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ReadError::Unavailable(m) if m == "no quorum"));
    }
}
