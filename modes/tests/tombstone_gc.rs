//! Collecting tombstones never brings a deleted key back (issue 13: "collected only once every
//! region has acknowledged past them").
//!
//! A model of three regions, each a real state machine applying real commands, driven by a
//! random schedule of steps: writes and deletes on a few keys with leader clocks that jump
//! back and forth (as a new leader's may), shipping batches built the way the shipper builds
//! them (current versions of the keys the new entries touched, and the entries' highest
//! stamp as the batch's clock), delivering them in order per link but late, links cut for a
//! while, old batches delivered again, full-state resends, clocks that move past what a
//! region receives (as the hybrid clock does) but may also fall back (a new leader's), and
//! collections that pick tombstones with the collector's own rules
//! (`region::collect::{horizon, collectable}`). At the end every link is drained, and every
//! region must hold exactly the last-write-wins outcome computed here without the state
//! machine.
//!
//! Each rule, removed, makes the property fail within its 4096 cases (checked when it was
//! written, three runs each): the horizon in `merge`, the acknowledgement condition, the
//! minimum over remotes, the strict `<`, and both raises of an own stamp (invariants 1 and 3).
//! Two of those scenarios are also fixed tests below, which fail on every run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use meridian_modes::apply::{clock_key, high_water_key, horizon_key};
use meridian_modes::command::{Command, KeyValue, Stamp};
use meridian_modes::region::collect::{collectable, horizon};
use meridian_modes::state_machine::{digest, LogEntry, MemStateMachine, ScanEvent};
use meridian_modes::StateMachine;
use proptest::prelude::*;

const REGIONS: [&str; 3] = ["ap", "eu", "us"];
const KEYS: u8 = 6;

#[derive(Clone, Debug)]
enum Step {
    /// Region, key, value (None deletes), clock movement in ms (may go back).
    Write(usize, u8, Option<u8>, i64),
    /// Build a batch from region .0's new entries for region .1.
    Ship(usize, usize),
    /// Deliver the oldest batch in flight from .0 to .1.
    Deliver(usize, usize),
    /// Deliver again batch number .2 (mod how many were delivered) from .0 to .1.
    Again(usize, usize, usize),
    /// Resend every version .0 wrote to .1 (only with nothing in flight, as the shipper does).
    Resend(usize, usize),
    Collect(usize),
    /// A write by region .0 to its own key (moves its clock on without touching the shared keys).
    Tick(usize, i64),
    /// Cut the link from .0 to .1, or heal it: nothing is delivered on a cut link.
    Toggle(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    let link = (0usize..3, 1usize..3).prop_map(|(o, d)| (o, (o + d) % 3));
    prop_oneof![
        4 => (0usize..3, 0..KEYS, prop::option::weighted(0.5, any::<u8>()), -200i64..100).prop_map(|(r, k, v, dt)| Step::Write(r, k, v, dt)),
        3 => link.clone().prop_map(|(o, t)| Step::Ship(o, t)),
        3 => link.clone().prop_map(|(o, t)| Step::Deliver(o, t)),
        2 => (link.clone(), any::<usize>()).prop_map(|((o, t), n)| Step::Again(o, t, n)),
        2 => link.clone().prop_map(|(o, t)| Step::Resend(o, t)),
        1 => link.prop_map(|(o, t)| Step::Toggle(o, t)),
        2 => (0usize..3).prop_map(Step::Collect),
        3 => (0usize..3, 0i64..100).prop_map(|(r, dt)| Step::Tick(r, dt)),
    ]
}

struct Region {
    sm: MemStateMachine,
    next: u64,
    /// Milliseconds on this region's leader clock.
    clock_ms: i64,
    /// This region's own writes: (position, proposed stamp, keys touched).
    log: Vec<(u64, u64, String)>,
}

impl Region {
    fn apply(&mut self, command: Command) -> u64 {
        self.next += 1;
        self.sm.apply(&[LogEntry { index: self.next, epoch: 1, command, meta: None }]).unwrap();
        self.next
    }
    fn own_versions(&self, own: &str, keys: impl Iterator<Item = String>) -> Vec<KeyValue> {
        keys.filter_map(|k| self.sm.get_version(&k).unwrap()).filter(|v| v.stamp.as_ref().is_some_and(|s| s.region == own)).collect()
    }
    /// Applies a batch from another region, and moves this region's clock past it, as the
    /// hybrid clock does (`region::observe`).
    fn receive(&mut self, batch: Command) {
        if let Command::RegionBatch { clock, writes, .. } = &batch {
            let seen = writes.iter().filter_map(|w| w.stamp.as_ref()).map(|s| s.hlc).max().unwrap_or(0).max(*clock);
            self.clock_ms = self.clock_ms.max((seen >> 16) as i64);
        }
        self.apply(batch);
    }
    fn reserved(&self, key: &str) -> u64 {
        self.sm.get_version(key).unwrap().map_or(0, |kv| u64::from_le_bytes(kv.value.try_into().unwrap()))
    }
}

#[derive(Default)]
struct Link {
    /// Own-log positions up to here have been put in a batch.
    shipped: u64,
    last_through: u64,
    in_flight: VecDeque<Command>,
    delivered: Vec<Command>,
    cut: bool,
}

fn key(k: u8) -> String {
    format!("k{k}")
}

struct Model {
    regions: Vec<Region>,
    links: BTreeMap<(usize, usize), Link>,
    /// Every write with the stamp it was applied with: the expected outcome's input.
    writes: Vec<(String, Stamp, Option<u8>)>,
    collected: u64,
}

impl Model {
    fn new(skew: &[i64]) -> Model {
        let regions = (0..3).map(|i| Region { sm: MemStateMachine::default(), next: 0, clock_ms: 10_000 + skew[i], log: Vec::new() }).collect();
        let mut links = BTreeMap::new();
        for o in 0..3 {
            for t in (0..3).filter(|t| *t != o) {
                links.insert((o, t), Link::default());
            }
        }
        Model { regions, links, writes: Vec::new(), collected: 0 }
    }

    fn run(&mut self, s: &Step) {
        match *s {
            Step::Write(r, k, v, dt) => {
                let region = &mut self.regions[r];
                region.clock_ms = (region.clock_ms + dt).max(1);
                let proposed = (region.clock_ms as u64) << 16;
                let command = match v {
                    Some(v) => Command::Put { key: key(k), value: vec![v], if_revision: None },
                    None => Command::Delete { key: key(k), if_revision: None },
                };
                // The stamp it is applied with (invariant 1): above every earlier own stamp, and
                // not below the collection horizon.
                let applied = proposed.max(region.reserved(&clock_key()) + 1).max(region.reserved(&horizon_key()));
                let pos = region.apply(Command::Stamped { stamp: Stamp { hlc: proposed, region: REGIONS[r].into() }, command: Box::new(command) });
                assert_eq!(region.reserved(&clock_key()), applied);
                region.log.push((pos, proposed, key(k)));
                self.writes.push((key(k), Stamp { hlc: applied, region: REGIONS[r].into() }, v));
            }
            Step::Ship(o, t) => {
                let region = &self.regions[o];
                let link = self.links.get_mut(&(o, t)).unwrap();
                let new: Vec<&(u64, u64, String)> = region.log.iter().filter(|(p, ..)| *p > link.shipped).collect();
                if new.is_empty() {
                    return;
                }
                let clock = new.iter().map(|(_, st, _)| *st).max().unwrap();
                let keys: BTreeSet<String> = new.iter().map(|(.., k)| k.clone()).collect();
                let writes = region.own_versions(REGIONS[o], keys.into_iter());
                let through = region.next;
                link.in_flight.push_back(Command::RegionBatch { origin: REGIONS[o].into(), through, clock, writes, primary: None, keep_conflicts: false });
                link.shipped = through;
                link.last_through = through;
            }
            Step::Deliver(o, t) => {
                let link = self.links.get_mut(&(o, t)).unwrap();
                if link.cut {
                    return;
                }
                if let Some(b) = link.in_flight.pop_front() {
                    link.delivered.push(b.clone());
                    self.regions[t].receive(b);
                }
            }
            Step::Again(o, t, n) => {
                let link = &self.links[&(o, t)];
                if !link.cut && !link.delivered.is_empty() {
                    let b = link.delivered[n % link.delivered.len()].clone();
                    self.regions[t].receive(b);
                }
            }
            Step::Resend(o, t) => {
                if self.links[&(o, t)].cut || !self.links[&(o, t)].in_flight.is_empty() {
                    return;
                }
                let region = &self.regions[o];
                let mut writes = Vec::new();
                region
                    .sm
                    .scan(&mut |ev| {
                        if let ScanEvent::Entry(kv) = ev {
                            if kv.stamp.as_ref().is_some_and(|s| s.region == REGIONS[o]) {
                                writes.push(kv);
                            }
                        }
                        Ok(())
                    })
                    .unwrap();
                let b = Command::RegionBatch { origin: REGIONS[o].into(), through: region.next, clock: region.reserved(&clock_key()), writes, primary: None, keep_conflicts: false };
                let link = self.links.get_mut(&(o, t)).unwrap();
                link.shipped = region.next;
                link.last_through = region.next;
                link.delivered.push(b.clone());
                self.regions[t].receive(b);
            }
            Step::Tick(r, dt) => {
                let region = &mut self.regions[r];
                region.clock_ms += dt;
                let stamp = Stamp { hlc: (region.clock_ms as u64) << 16, region: REGIONS[r].into() };
                let command = Command::Put { key: format!("own-{r}"), value: vec![dt as u8], if_revision: None };
                let pos = region.apply(Command::Stamped { stamp, command: Box::new(command) });
                region.log.push((pos, (region.clock_ms as u64) << 16, format!("own-{r}")));
            }
            Step::Toggle(o, t) => {
                let link = self.links.get_mut(&(o, t)).unwrap();
                link.cut = !link.cut;
            }
            Step::Collect(r) => {
                let remotes: Vec<String> = (0..3).filter(|x| *x != r).map(|x| REGIONS[x].to_string()).collect();
                let h = horizon(&self.regions[r].sm, &remotes);
                // What the remotes acknowledged of this region: their marks, as they hold them.
                let acked = (0..3).filter(|x| *x != r).map(|x| self.regions[x].reserved(&high_water_key(REGIONS[r]))).min().unwrap();
                let mut tombstones = Vec::new();
                self.regions[r]
                    .sm
                    .scan(&mut |ev| {
                        if let ScanEvent::Entry(kv) = ev {
                            if let Some(st) = collectable(&kv, REGIONS[r], h, acked) {
                                tombstones.push((kv.key.clone(), st));
                            }
                        }
                        Ok(())
                    })
                    .unwrap();
                if !tombstones.is_empty() {
                    self.collected += tombstones.len() as u64;
                    self.regions[r].apply(Command::CollectTombstones { horizon: h, tombstones });
                }
            }
        }
    }

    /// Ships and delivers everything, twice round (a delivery can make nothing new to ship,
    /// but the order of links must not matter).
    fn drain(&mut self) {
        for link in self.links.values_mut() {
            link.cut = false;
        }
        for _ in 0..2 {
            for o in 0..3 {
                for t in (0..3).filter(|t| *t != o) {
                    self.run(&Step::Ship(o, t));
                    while !self.links[&(o, t)].in_flight.is_empty() {
                        self.run(&Step::Deliver(o, t));
                    }
                }
            }
        }
    }

    /// Per key, the value of the write with the highest applied stamp (None: deleted or never written).
    fn expected(&self) -> BTreeMap<String, Option<u8>> {
        let mut best: BTreeMap<String, (Stamp, Option<u8>)> = BTreeMap::new();
        for (k, st, v) in &self.writes {
            let e = best.entry(k.clone()).or_insert((st.clone(), *v));
            if *st > e.0 {
                *e = (st.clone(), *v);
            }
        }
        best.into_iter().map(|(k, (_, v))| (k, v)).collect()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let want = self.expected();
        let live0 = digest(&self.regions[0].sm).unwrap().live_sha256;
        for (i, r) in self.regions.iter().enumerate() {
            for k in 0..KEYS {
                let got = r.sm.get(&key(k)).unwrap().map(|kv| kv.value[0]);
                prop_assert_eq!(got, want.get(&key(k)).copied().flatten(), "region {} key {}", REGIONS[i], key(k));
            }
            prop_assert_eq!(&digest(&r.sm).unwrap().live_sha256, &live0, "region {} diverged", REGIONS[i]);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn collecting_tombstones_never_resurrects_a_key(skew in prop::collection::vec(-300i64..300, 3), steps in prop::collection::vec(step(), 1..200)) {
        let mut m = Model::new(&skew);
        for s in &steps {
            m.run(s);
        }
        m.drain();
        m.check()?;
        // Collect everywhere after convergence, then once more shipping: still the outcome.
        for r in 0..3 {
            m.run(&Step::Collect(r));
        }
        m.drain();
        m.check()?;
    }
}

/// A fixed schedule in which every region deletes, every link delivers, and every region
/// writes once more so that the horizons pass the deletes: every tombstone is collected,
/// everywhere (the property test above checks safety; this checks that collection happens).
#[test]
fn tombstones_every_region_has_are_collected() {
    let mut m = Model::new(&[0, 0, 0]);
    for r in 0..3 {
        m.run(&Step::Write(r, r as u8, Some(1), 10));
        m.run(&Step::Write(r, r as u8, None, 10));
    }
    m.drain();
    for r in 0..3 {
        m.run(&Step::Write(r, 3, Some(r as u8), 10)); // moves every received clock past the deletes
    }
    m.drain();
    for r in 0..3 {
        m.run(&Step::Collect(r));
    }
    for (i, r) in m.regions.iter().enumerate() {
        assert_eq!(digest(&r.sm).unwrap().tombstones, 0, "region {} kept tombstones", REGIONS[i]);
    }
    assert_eq!(m.collected, 9, "three tombstones in each of three regions");
    m.check().unwrap();
}

/// Region `us` collects its own tombstone before `eu` has it: `eu` would keep the deleted
/// value for good. The acknowledgement rule holds the tombstone back.
#[test]
fn an_origin_keeps_its_tombstone_until_every_region_has_it() {
    let (ap, eu, us) = (0, 1, 2);
    let mut m = Model::new(&[0, 0, 0]);
    m.run(&Step::Write(eu, 0, Some(7), 10)); // eu writes k0
    for t in [ap, us] {
        m.run(&Step::Ship(eu, t));
        m.run(&Step::Deliver(eu, t));
    }
    m.run(&Step::Write(us, 0, None, 100)); // us deletes it; ships to ap only
    m.run(&Step::Ship(us, ap));
    m.run(&Step::Deliver(us, ap));
    for o in [ap, eu] {
        m.run(&Step::Write(o, 1, Some(1), 500)); // both clocks pass the delete
        m.run(&Step::Ship(o, us));
        m.run(&Step::Deliver(o, us));
    }
    m.run(&Step::Collect(us));
    m.drain();
    m.check().unwrap();
}

/// Region `ap` collects `us`'s tombstone while `eu` still holds the older value and resends
/// everything it wrote: the resent version is below `ap`'s horizon and must not come back.
#[test]
fn a_late_copy_below_the_horizon_does_not_resurrect_a_collected_key() {
    let (ap, eu, us) = (0, 1, 2);
    let mut m = Model::new(&[0, 0, 0]);
    m.run(&Step::Write(eu, 0, Some(7), 10)); // eu writes k0, reaches ap and us
    for t in [ap, us] {
        m.run(&Step::Ship(eu, t));
        m.run(&Step::Deliver(eu, t));
    }
    m.run(&Step::Write(us, 0, None, 100)); // us deletes it; ap gets the tombstone, eu not yet
    m.run(&Step::Ship(us, ap));
    m.run(&Step::Deliver(us, ap));
    for o in [eu, us] {
        m.run(&Step::Write(o, 1, Some(1), 500)); // both clocks pass the delete at ap
        m.run(&Step::Ship(o, ap));
        m.run(&Step::Deliver(o, ap));
    }
    m.run(&Step::Collect(ap));
    m.run(&Step::Resend(eu, ap)); // eu still holds k0 = 7
    m.drain();
    m.check().unwrap();
}
