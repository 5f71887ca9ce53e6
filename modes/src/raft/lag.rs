//! Replication lag in seconds (`meridian_replication_lag_seconds`, `/health`).
//!
//! The lag of a node is the age of the oldest entry it should hold but does not — the
//! definition PostgreSQL uses for replay lag. It does not grow while a follower trails by a
//! few milliseconds under steady load (a "time since last fully caught up" clock would: under
//! a constant stream a follower is never exactly level with the leader).
//!
//! - On the leader: for each member, the entries after its acknowledged (matched) index; the
//!   reported figure is the largest over members.
//! - On a follower or learner: the entries the cluster committed (as the leader last said)
//!   that this node has not applied.
//!
//! Each side keeps a timeline of when its reference index (the leader's last log index, a
//! follower's known cluster-committed index) first reached each value it was seen at, fed on
//! every metrics change; an entry's age is read from the first sample at or past it, so it is
//! exact to the metrics' granularity and never overstated by more than that.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

/// Samples kept at most: beyond this the oldest are merged away (the figure stays an
/// upper bound on the true age of the oldest entry covered by the dropped samples).
const MAX_SAMPLES: usize = 4096;

#[derive(Default)]
pub struct LagClock {
    inner: Mutex<Timeline>,
}

#[derive(Default)]
struct Timeline {
    leader: bool,
    /// (index reached, when it was first seen), index increasing.
    samples: VecDeque<(u64, Instant)>,
}

impl LagClock {
    /// Records the reference index (`reference`: the leader's last log position, or the
    /// cluster-committed position on another node) as seen now. A change of role restarts
    /// the timeline: the two references are not comparable.
    pub fn observe(&self, leader: bool, reference: u64) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.leader != leader {
            t.leader = leader;
            t.samples.clear();
        }
        if t.samples.back().is_none_or(|(i, _)| reference > *i) {
            t.samples.push_back((reference, Instant::now()));
            if t.samples.len() > MAX_SAMPLES {
                // Keep the older timestamp for the merged range (an entry's age is not understated).
                let (_, first) = t.samples.pop_front().expect("non-empty");
                if let Some(s) = t.samples.front_mut() {
                    s.1 = first;
                }
            }
        }
    }

    /// Seconds since the first entry after `have` was seen (0 when nothing after it was).
    pub fn age_after(&self, have: u64) -> f64 {
        let t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.samples.iter().find(|(i, _)| *i > have).map_or(0.0, |(_, at)| at.elapsed().as_secs_f64())
    }

    /// Drops samples every member already holds (`floor`: the lowest index held by all).
    pub fn forget_up_to(&self, floor: u64) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while t.samples.len() > 1 && t.samples.front().is_some_and(|(i, _)| *i <= floor) {
            t.samples.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn age_is_that_of_the_oldest_missing_entry() {
        let c = LagClock::default();
        c.observe(true, 10);
        std::thread::sleep(Duration::from_millis(60));
        c.observe(true, 20);
        assert_eq!(c.age_after(20), 0.0, "a member holding everything has no lag");
        let old = c.age_after(5);
        let new = c.age_after(15);
        assert!(old >= 0.06, "entries 6..10 were seen 60 ms ago: {old}");
        assert!(new < old && new < 0.05, "entries 16..20 are newer: {new} vs {old}");
        c.forget_up_to(10);
        assert!(c.age_after(12) < 0.05, "samples up to 10 were dropped");
        c.observe(false, 3);
        assert_eq!(c.age_after(3), 0.0, "a new role starts a new timeline");
        assert!(c.age_after(2) < 0.05);
    }
}
