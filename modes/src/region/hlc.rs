//! A hybrid logical clock: the timestamps multi-region last-write-wins compares.
//!
//! A reading is one `u64`: wall-clock milliseconds since the Unix epoch in the high 48 bits
//! and a counter in the low 16 (Kulkarni et al., "Logical Physical Clocks", 2014). Readings
//! handed out by one clock strictly increase, even when the wall clock steps back, and a
//! clock that has *observed* a reading (a version shipped from another region, applied here)
//! never hands out one below it: a write made after another was seen is stamped after it,
//! whatever the two regions' wall clocks say. That is what keeps last-write-wins from
//! undoing a write with one its author had already read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;

#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

impl Hlc {
    /// The next reading: above every reading handed out or observed, and at least the wall
    /// clock.
    pub fn now(&self) -> u64 {
        let wall = wall_ms() << LOGICAL_BITS;
        let mut prev = self.last.load(Ordering::Acquire);
        loop {
            let next = wall.max(prev + 1);
            match self.last.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Takes note of a reading made elsewhere.
    pub fn observe(&self, reading: u64) {
        self.last.fetch_max(reading, Ordering::AcqRel);
    }

    /// The last reading handed out or observed.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

/// The wall-clock part of a reading, in milliseconds since the Unix epoch.
pub fn millis(reading: u64) -> u64 {
    reading >> LOGICAL_BITS
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_increase_and_never_fall_below_an_observed_one() {
        let c = Hlc::default();
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        assert!(millis(a) > 1_600_000_000_000, "the physical part is wall-clock milliseconds");
        // A reading from a region whose clock is an hour ahead.
        let ahead = (millis(b) + 3_600_000) << LOGICAL_BITS;
        c.observe(ahead);
        assert!(c.now() > ahead);
        // Observing an older reading changes nothing.
        let before = c.last();
        c.observe(a);
        assert_eq!(c.last(), before);
    }
}
