//! The epoch history: which epoch started at which log index (PostgreSQL's timeline history,
//! Kafka's leader-epoch cache). It is what lets a primary tell a rejoining node exactly where
//! their logs part: the node's last record in epoch `e` is valid only up to the index where
//! the next epoch began.
//!
//! Persisted in the WAL's hard state (`vote` bytes) together with the current epoch, so it
//! survives restarts and is written atomically with the epoch.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochHistory {
    /// (epoch, first index written in that epoch), ascending in both.
    pub starts: Vec<(u64, u64)>,
}

impl EpochHistory {
    /// Records that `epoch` starts at `index` (idempotent; later epochs supersede).
    pub fn begin(&mut self, epoch: u64, index: u64) {
        self.starts.retain(|(e, i)| *e < epoch && *i <= index);
        self.starts.push((epoch, index));
    }

    /// The last index at which a log whose record at `index` has epoch `epoch` agrees with
    /// this history: records of `epoch` are shared up to (not including) the start of the
    /// next epoch in this history.
    pub fn agreed_until(&self, epoch: u64, index: u64) -> u64 {
        match self.starts.iter().find(|(e, _)| *e > epoch) {
            Some((_, next_start)) => index.min(next_start.saturating_sub(1)),
            None => index,
        }
    }

    pub fn epoch_at(&self, index: u64) -> u64 {
        self.starts.iter().rev().find(|(_, i)| *i <= index).map_or(0, |(e, _)| *e)
    }

    /// The last index at or below `upto` where a log with this history and one with `other`
    /// agree. Every (epoch, index) has one writer (see `epoch`), so two logs agree up to the
    /// highest index whose epoch is the same in both — found from the two histories in one
    /// step, instead of walking back a record per round trip. Below both histories' first
    /// start (a snapshot-installed prefix) the logs are taken to agree.
    pub fn fork_point(&self, other: &EpochHistory, upto: u64) -> u64 {
        let mut bounds: Vec<u64> = self.starts.iter().chain(&other.starts).map(|(_, i)| *i).filter(|i| *i <= upto).collect();
        bounds.push(0);
        bounds.sort_unstable();
        bounds.dedup();
        // Intervals [lo, hi] on which both histories are constant, from the top down.
        let mut hi = upto;
        for &lo in bounds.iter().rev() {
            if self.epoch_at(lo) == other.epoch_at(lo) {
                return hi;
            }
            if lo == 0 {
                break;
            }
            hi = lo - 1;
        }
        0
    }

    /// The history up to `index` (for a standby that installs a snapshot of that index).
    pub fn up_to(&self, index: u64) -> EpochHistory {
        EpochHistory { starts: self.starts.iter().copied().filter(|(_, i)| *i <= index).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_point_is_where_the_next_epoch_began() {
        let mut h = EpochHistory::default();
        h.begin(1, 1);
        h.begin(2, 101); // the standby promoted at 101
        // Old primary wrote epoch-1 records up to 130: only up to 100 are shared.
        assert_eq!(h.agreed_until(1, 130), 100);
        assert_eq!(h.agreed_until(1, 90), 90);
        assert_eq!(h.agreed_until(2, 150), 150);
        assert_eq!(h.epoch_at(100), 1);
        assert_eq!(h.epoch_at(101), 2);
        // The fork point from both histories at once: a standby that wrote epoch 5 from 95 on
        // (never seen by this node) agrees with it only up to 94, wherever its log ends.
        let mut s = EpochHistory::default();
        s.begin(1, 1);
        s.begin(5, 95);
        assert_eq!(h.fork_point(&s, 130), 94);
        assert_eq!(s.fork_point(&h, 130), 94);
        assert_eq!(h.fork_point(&h.clone(), 130), 130);
        let mut t = EpochHistory::default();
        t.begin(7, 1);
        assert_eq!(h.fork_point(&t, 50), 0, "no common epoch: nothing agreed");
        assert_eq!(h.up_to(100).starts, vec![(1, 1)]);
        let p = HaPersisted { history: h.clone(), owner: true, in_sync: true, peer_in_sync: false };
        assert_eq!(HaPersisted::decode(&p.encode()).unwrap(), p);
        assert!(HaPersisted::decode(&[0xff; 3]).is_err(), "damaged epoch state decoded");
    }
}

/// What an HA node persists in the WAL's hard state, beside the epoch number itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaPersisted {
    pub history: EpochHistory,
    /// True when this node became primary of the current epoch (it promoted itself);
    /// false when it adopted the epoch from another node.
    pub owner: bool,
    /// As a standby: the primary recorded this node in sync (it has every acknowledged
    /// write), so it may promote itself in the sync levels. Cleared when it falls out of
    /// sync, diverges, re-seeds or becomes primary.
    pub in_sync: bool,
    /// As a primary: this node recorded its standby in sync (acknowledgements wait for it).
    /// A primary resuming after a restart starts as recorded here.
    pub peer_in_sync: bool,
}

impl HaPersisted {
    /// Empty bytes are a node that never had an epoch; anything else must decode — damaged
    /// epoch state is refused, never replaced by a default (which would forget the history
    /// that locates divergence).
    pub fn decode(bytes: &[u8]) -> Result<HaPersisted, String> {
        if bytes.is_empty() {
            return Ok(HaPersisted::default());
        }
        postcard::from_bytes(bytes).map_err(|e| format!("{} bytes do not decode: {e}", bytes.len()))
    }
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("HA state encodes")
    }
}
