//! The entries this node applied lately, in memory, for the shipper.
//!
//! The shipper needs, for each committed position, only which keys a client write there
//! touched (see [`super::shipper`]). Reading that back from the WAL cost the region leader a
//! file read, a decode of every entry and a hand-off to a blocking thread per batch — about
//! 4 % of its CPU under load, on top of what a single Raft group spends. The applier has
//! just decoded the very same entries, so while this node ships (it leads its region) the
//! state machine wrapper ([`super::observe`]) records here what each applied entry touched.
//!
//! The feed is only a faster path to what the WAL holds, never a second source of truth:
//! - it holds a **contiguous** run of positions (an entry after a gap empties it first), so
//!   a range read from it is the same range the WAL would give;
//! - it is **bounded** ([`MAX_ENTRIES`], [`MAX_BYTES`]; the oldest go first), and a position
//!   below what it holds is read from the WAL as before (a remote that was cut off, a leader
//!   that just took over);
//! - only **applied** entries enter it, so it never reaches past what the region agreed on;
//! - the shipper asks it only for positions the WAL still holds, so a remote whose mark the
//!   log was purged past still takes the full-state resend.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::command::{Command, Op};
use crate::state_machine::LogEntry;

/// Entries and key bytes kept at most.
pub const MAX_ENTRIES: usize = 65_536;
pub const MAX_BYTES: usize = 16 << 20;

/// What one applied entry means to the shipper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touched {
    /// Nothing to ship (a membership change, a collection, a primary record, a no-op).
    Nothing,
    /// A client write stamped in this region: its proposed clock and every key it may have
    /// written or deleted (both branches of a txn: the state tells what the key holds now).
    Stamped { hlc: u64, keys: Vec<String> },
    /// Another region's batch merged with conflicts kept (`CLUSTER_CONFLICT_STRATEGY=manual`):
    /// its origin and keys.
    Merged { origin: String, keys: Vec<String> },
}

impl Touched {
    pub fn of(c: &Command) -> Touched {
        match c {
            Command::Stamped { command, stamp } => {
                let mut keys = Vec::new();
                written_keys(command, &mut keys);
                keys.sort_unstable();
                keys.dedup();
                Touched::Stamped { hlc: stamp.hlc, keys }
            }
            Command::RegionBatch { origin, writes, keep_conflicts: true, .. } => {
                Touched::Merged { origin: origin.clone(), keys: writes.iter().map(|w| w.key.clone()).collect() }
            }
            _ => Touched::Nothing,
        }
    }

    fn bytes(&self) -> usize {
        32 + match self {
            Touched::Nothing => 0,
            Touched::Stamped { keys, .. } | Touched::Merged { keys, .. } => keys.iter().map(|k| k.len() + 24).sum(),
        }
    }
}

fn written_keys(c: &Command, keys: &mut Vec<String>) {
    match c {
        Command::Put { key, .. } | Command::Delete { key, .. } => keys.push(key.clone()),
        Command::Txn(t) => {
            for op in t.success.iter().chain(&t.failure) {
                if let Op::Put { key, .. } | Op::Delete { key } = op {
                    keys.push(key.clone());
                }
            }
        }
        Command::Stamped { command, .. } => written_keys(command, keys),
        Command::Noop | Command::RegionBatch { .. } | Command::SetPrimary(_) | Command::CollectTombstones { .. } => {}
    }
}

/// What [`Feed::read`] found for a range.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// The positions from the one asked for on, in order, contiguous.
    Entries(Vec<(u64, Touched)>),
    /// The position asked for is not recorded yet (applied, about to be recorded).
    NotYet,
    /// Not here: read the WAL.
    Missing,
}

#[derive(Default)]
pub struct Feed {
    on: AtomicBool,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<(u64, Touched)>,
    bytes: usize,
}

impl Feed {
    /// Records from now on (this node ships), or stops and forgets (it no longer does).
    pub fn set_on(&self, on: bool) {
        if self.on.swap(on, Ordering::SeqCst) != on && !on {
            *self.ring.lock().unwrap() = Ring::default();
        }
    }

    /// Records entries just applied, in index order (a position already held is skipped: a
    /// replay after a storage reopen applies the same committed entries again).
    pub fn record(&self, entries: &[LogEntry]) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let mut ring = self.ring.lock().unwrap();
        for e in entries {
            match ring.entries.back() {
                Some((last, _)) if e.index <= *last => continue,
                Some((last, _)) if e.index != last + 1 => *ring = Ring::default(),
                _ => {}
            }
            let t = Touched::of(&e.command);
            ring.bytes += t.bytes();
            ring.entries.push_back((e.index, t));
        }
        while ring.entries.len() > MAX_ENTRIES || ring.bytes > MAX_BYTES {
            let (_, t) = ring.entries.pop_front().expect("over the bounds, so not empty");
            ring.bytes -= t.bytes();
        }
    }

    /// Forgets everything (the state was replaced by a snapshot: positions restart there).
    pub fn clear(&self) {
        *self.ring.lock().unwrap() = Ring::default();
    }

    /// Up to `max` recorded entries from position `from` through `through`.
    pub fn read(&self, from: u64, through: u64, max: usize) -> Fed {
        let ring = self.ring.lock().unwrap();
        let (Some((first, _)), Some((last, _))) = (ring.entries.front(), ring.entries.back()) else { return Fed::Missing };
        if from < *first {
            return Fed::Missing;
        }
        if from > *last {
            return Fed::NotYet;
        }
        let skip = (from - first) as usize;
        Fed::Entries(ring.entries.iter().skip(skip).take_while(|(i, _)| *i <= through).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Stamp;
    use crate::payload::LogPayload;

    fn put(index: u64, key: &str) -> LogEntry {
        let c = Command::Put { key: key.into(), value: b"v".to_vec(), if_revision: None };
        LogEntry::from_payload(index, 1, LogPayload::Normal(Command::Stamped { command: Box::new(c), stamp: Stamp { hlc: index, region: "us".into() } }))
    }

    fn keys(f: &Fed) -> Vec<(u64, String)> {
        let Fed::Entries(v) = f else { panic!("{f:?}") };
        v.iter().map(|(i, t)| (*i, if let Touched::Stamped { keys, .. } = t { keys.join(",") } else { String::new() })).collect()
    }

    #[test]
    fn records_only_while_on_and_forgets_when_turned_off() {
        let f = Feed::default();
        f.record(&[put(1, "a")]);
        assert_eq!(f.read(1, 1, 10), Fed::Missing);
        f.set_on(true);
        f.record(&[put(2, "b"), put(3, "c")]);
        assert_eq!(f.read(1, 3, 10), Fed::Missing, "position 1 was applied while off: the WAL has it");
        assert_eq!(keys(&f.read(2, 3, 10)), vec![(2, "b".into()), (3, "c".into())]);
        assert_eq!(keys(&f.read(3, 9, 10)), vec![(3, "c".into())]);
        assert_eq!(f.read(4, 9, 10), Fed::NotYet);
        f.set_on(false);
        f.set_on(true);
        assert_eq!(f.read(2, 3, 10), Fed::Missing);
    }

    #[test]
    fn a_gap_empties_it_and_a_replay_changes_nothing() {
        let f = Feed::default();
        f.set_on(true);
        f.record(&[put(5, "a"), put(6, "b")]);
        f.record(&[put(5, "x"), put(6, "y"), put(7, "c")]);
        assert_eq!(keys(&f.read(5, 7, 10)), vec![(5, "a".into()), (6, "b".into()), (7, "c".into())]);
        f.record(&[put(9, "d")]);
        assert_eq!(f.read(7, 9, 10), Fed::Missing, "after a gap only what follows it is held");
        assert_eq!(keys(&f.read(9, 9, 10)), vec![(9, "d".into())]);
    }

    #[test]
    fn the_oldest_go_first_past_the_bound() {
        let f = Feed::default();
        f.set_on(true);
        let entries: Vec<LogEntry> = (1..=MAX_ENTRIES as u64 + 10).map(|i| put(i, "k")).collect();
        f.record(&entries);
        assert_eq!(f.read(10, 10, 1), Fed::Missing);
        assert_eq!(keys(&f.read(11, 12, 1)), vec![(11, "k".into())]);
    }

    #[test]
    fn a_txn_touches_both_branches_once_each() {
        let txn = crate::command::Txn {
            compare: vec![],
            success: vec![Op::Put { key: "b".into(), value: vec![] }, Op::Get { key: "g".into() }, Op::Delete { key: "a".into() }],
            failure: vec![Op::Put { key: "b".into(), value: vec![] }, Op::Delete { key: "c".into() }],
        };
        let t = Touched::of(&Command::Stamped { command: Box::new(Command::Txn(txn)), stamp: Stamp { hlc: 7, region: "us".into() } });
        assert_eq!(t, Touched::Stamped { hlc: 7, keys: vec!["a".into(), "b".into(), "c".into()] });
    }
}
