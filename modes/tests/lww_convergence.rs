//! Multi-region convergence (issue 13, "what must be shown" 2): random concurrent writes and
//! deletes on the same few keys in three regions, with clocks skewed by up to seconds; every
//! region applies its own writes, then receives the others' versions as region batches in a
//! random order, each batch possibly delivered twice. Every region must end with the same
//! digest, equal to the last-write-wins outcome computed here independently: per key, the
//! version with the highest (hlc, region), a delete leaving the key absent.

use std::collections::BTreeMap;

use meridian_modes::command::{Command, KeyValue, Stamp};
use meridian_modes::state_machine::{digest, LogEntry, MemStateMachine};
use meridian_modes::StateMachine;
use proptest::prelude::*;

const REGIONS: [&str; 3] = ["ap", "eu", "us"];

#[derive(Clone, Debug)]
struct Write {
    region: usize,
    key: u8,
    /// `None` deletes.
    value: Option<u8>,
    /// Milliseconds on the writer's (skewed) clock.
    at_ms: u64,
}

fn writes() -> impl Strategy<Value = Vec<Write>> {
    // Each region's clock is skewed by up to ±3 s; writes in a region move its clock forward.
    (prop::collection::vec(0u64..6000, 3), prop::collection::vec((0usize..3, 0u8..5, prop::option::weighted(0.7, any::<u8>()), 0u64..50), 1..60))
        .prop_map(|(skew, raw)| {
            let mut clock = [0u64; 3];
            raw.into_iter()
                .map(|(region, key, value, step)| {
                    clock[region] += step;
                    Write { region, key, value, at_ms: 10_000 + skew[region] + clock[region] }
                })
                .collect()
        })
}

/// The region's HLC reading for a write: physical milliseconds in the high 48 bits and a
/// counter below, strictly increasing per region (as `region::hlc::Hlc` hands them out).
fn stamps(ws: &[Write]) -> Vec<Stamp> {
    let mut last = [0u64; 3];
    ws.iter()
        .map(|w| {
            let hlc = (w.at_ms << 16).max(last[w.region] + 1);
            last[w.region] = hlc;
            Stamp { hlc, region: REGIONS[w.region].into() }
        })
        .collect()
}

fn key(k: u8) -> String {
    format!("k{k}")
}

struct Region {
    sm: MemStateMachine,
    next: u64,
}

impl Region {
    fn apply(&mut self, command: Command) {
        self.next += 1;
        self.sm.apply(&[LogEntry { index: self.next, epoch: 1, command, meta: None }]).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_region_converges_to_the_last_write_wins_outcome(ws in writes(), order_seed in any::<u64>(), dup_mask in any::<u64>()) {
        let stamps = stamps(&ws);
        let mut regions: Vec<Region> = (0..3).map(|_| Region { sm: MemStateMachine::default(), next: 0 }).collect();
        // Each region applies its own writes as its leader stamped them, and remembers what
        // it ships: the versions it wrote, in batches of up to three, numbered by position.
        let mut batches: Vec<(usize, Command)> = Vec::new();
        for (origin, region) in regions.iter_mut().enumerate() {
            let mine: Vec<(usize, &Write)> = ws.iter().enumerate().filter(|(_, w)| w.region == origin).collect();
            for (i, w) in &mine {
                let command = match w.value {
                    Some(v) => Command::Put { key: key(w.key), value: vec![v], if_revision: None },
                    None => Command::Delete { key: key(w.key), if_revision: None },
                };
                region.apply(Command::Stamped { stamp: stamps[*i].clone(), command: Box::new(command) });
            }
            for (n, chunk) in mine.chunks(3).enumerate() {
                let versions = chunk
                    .iter()
                    .map(|(i, w)| KeyValue { stamp: Some(stamps[*i].clone()), tombstone: w.value.is_none(), ..KeyValue::plain(key(w.key), w.value.map(|v| vec![v]).unwrap_or_default(), 0, 0) })
                    .collect();
                batches.push((origin, Command::RegionBatch { origin: REGIONS[origin].into(), through: (n as u64 + 1) * 3, clock: 0, writes: versions, primary: None, keep_conflicts: false }));
            }
        }
        // Deliver every batch to every other region in a shuffled order, some twice.
        let mut deliveries: Vec<(usize, usize)> = Vec::new();
        for (b, (origin, _)) in batches.iter().enumerate() {
            for to in (0..3).filter(|t| t != origin) {
                deliveries.push((b, to));
                if dup_mask >> ((b * 2 + to) % 64) & 1 == 1 {
                    deliveries.push((b, to));
                }
            }
        }
        let mut rng = order_seed;
        for i in (1..deliveries.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            deliveries.swap(i, (rng >> 33) as usize % (i + 1));
        }
        for (b, to) in deliveries {
            regions[to].apply(batches[b].1.clone());
        }

        // The expected state, computed without the state machine: the highest stamp per key.
        let mut expected: BTreeMap<String, (Stamp, Option<u8>)> = BTreeMap::new();
        for (w, st) in ws.iter().zip(&stamps) {
            let e = expected.entry(key(w.key)).or_insert((st.clone(), w.value));
            if *st > e.0 {
                *e = (st.clone(), w.value);
            }
        }
        let d0 = digest(&regions[0].sm).unwrap();
        for (i, r) in regions.iter().enumerate() {
            prop_assert_eq!(&digest(&r.sm).unwrap().sha256, &d0.sha256, "region {} diverged", REGIONS[i]);
            for k in 0..5u8 {
                let got = r.sm.get(&key(k)).unwrap().map(|kv| kv.value[0]);
                let want = expected.get(&key(k)).and_then(|(_, v)| *v);
                prop_assert_eq!(got, want, "region {} key {}", REGIONS[i], key(k));
                if let Some((st, _)) = expected.get(&key(k)) {
                    let stored = r.sm.get_version(&key(k)).unwrap().and_then(|kv| kv.stamp);
                    prop_assert_eq!(stored.as_ref(), Some(st));
                }
            }
            // Each region's mark for each origin is the highest batch it received from it.
            for origin in (0..3).filter(|o| *o != i) {
                let sent = batches.iter().filter(|(o, _)| *o == origin).count() as u64 * 3;
                let mark = r.sm.get_version(&format!("\u{0}hwm/{}", REGIONS[origin])).unwrap().map_or(0, |kv| u64::from_le_bytes(kv.value.try_into().unwrap()));
                prop_assert_eq!(mark, sent);
            }
        }
    }
}
