//! `CLUSTER_CONFLICT_STRATEGY=manual` on real state machines (issue 13): versions written in
//! two regions without either seeing the other's are kept as one conflict, the same in both
//! regions, beside the last-write-wins value; a write made having seen both settles it in
//! every region it reaches; versions written one after the other never conflict.

use meridian_modes::command::{Command, KeyValue, Stamp};
use meridian_modes::conflicts::{decode, record_key};
use meridian_modes::state_machine::{digest, LogEntry, MemStateMachine};
use meridian_modes::StateMachine;

struct Region {
    name: &'static str,
    sm: MemStateMachine,
    next: u64,
    clock: u64,
}

impl Region {
    fn new(name: &'static str, clock_ms: u64) -> Region {
        Region { name, sm: MemStateMachine::default(), next: 0, clock: clock_ms << 16 }
    }
    fn apply(&mut self, command: Command) {
        self.next += 1;
        self.sm.apply(&[LogEntry { index: self.next, epoch: 1, command, meta: None }]).unwrap();
    }
    fn write(&mut self, key: &str, value: Option<&str>) {
        self.clock += 1 << 16;
        let command = match value {
            Some(v) => Command::Put { key: key.into(), value: v.as_bytes().to_vec(), if_revision: None },
            None => Command::Delete { key: key.into(), if_revision: None },
        };
        self.apply(Command::Stamped { stamp: Stamp { hlc: self.clock, region: self.name.into() }, command: Box::new(command) });
    }
    /// What this region's shipper would send for `keys`: their current versions, if written here.
    fn ship(&self, keys: &[&str]) -> Command {
        let writes: Vec<KeyValue> =
            keys.iter().filter_map(|k| self.sm.get_version(k).unwrap()).filter(|v| v.stamp.as_ref().is_some_and(|s| s.region == self.name)).collect();
        Command::RegionBatch { origin: self.name.into(), through: self.next, clock: self.clock, writes, primary: None, keep_conflicts: true }
    }
    fn receive(&mut self, batch: Command) {
        if let Command::RegionBatch { writes, .. } = &batch {
            let seen = writes.iter().filter_map(|w| w.stamp.as_ref()).map(|s| s.hlc).max().unwrap_or(0);
            self.clock = self.clock.max(seen); // the hybrid clock observes what it applies
        }
        self.apply(batch);
    }
    /// The stamps in the conflict on `key`, by region.
    fn conflict(&self, key: &str) -> Option<Vec<String>> {
        let record = self.sm.get_version(&record_key(key)).unwrap()?;
        Some(decode(&record.value).unwrap().iter().map(|v| format!("{}@{}", v.stamp.as_ref().unwrap().hlc >> 16, v.stamp.as_ref().unwrap().region)).collect())
    }
    fn value(&self, key: &str) -> Option<String> {
        self.sm.get(key).unwrap().map(|kv| String::from_utf8(kv.value).unwrap())
    }
}

fn exchange(a: &mut Region, b: &mut Region, keys: &[&str]) {
    let (to_b, to_a) = (a.ship(keys), b.ship(keys));
    b.receive(to_b);
    a.receive(to_a);
}

#[test]
fn concurrent_writes_are_one_conflict_in_both_regions_until_a_write_that_saw_both() {
    let (mut us, mut eu) = (Region::new("us", 1000), Region::new("eu", 1000));
    us.write("k", Some("base"));
    exchange(&mut us, &mut eu, &["k"]);
    assert_eq!((us.conflict("k"), eu.conflict("k")), (None, None), "one write, shipped: nothing concurrent");

    // Both regions write k without hearing from the other.
    us.write("k", Some("from-us"));
    eu.write("k", Some("from-eu"));
    exchange(&mut us, &mut eu, &["k"]);
    let held = us.conflict("k").expect("us keeps the conflict");
    assert_eq!(held, vec!["1002@eu", "1002@us"]);
    assert_eq!(eu.conflict("k").as_ref(), Some(&held), "both regions keep the same conflict");
    assert_eq!(us.value("k"), eu.value("k"), "last-write-wins still decides the value");
    assert_eq!(us.value("k").as_deref(), Some("from-us"), "(1002, us) > (1002, eu)");
    assert_eq!(digest(&us.sm).unwrap().sha256, digest(&eu.sm).unwrap().sha256, "the conflict records are reserved keys, outside the digest");

    // A write in eu, which holds both versions, settles the conflict there, and in us when it arrives.
    eu.write("k", Some("resolved"));
    assert_eq!(eu.conflict("k"), None);
    assert!(us.conflict("k").is_some());
    exchange(&mut us, &mut eu, &["k"]);
    assert_eq!(us.conflict("k"), None, "the resolution was written having seen both sides");
    assert_eq!((us.value("k").as_deref(), eu.value("k").as_deref()), (Some("resolved"), Some("resolved")));
}

#[test]
fn a_write_made_after_seeing_the_other_regions_version_is_no_conflict() {
    let (mut us, mut eu) = (Region::new("us", 1000), Region::new("eu", 5000));
    eu.write("k", Some("eu-first"));
    exchange(&mut us, &mut eu, &["k"]);
    us.write("k", Some("us-after")); // us had eu's version: its parent
    exchange(&mut us, &mut eu, &["k"]);
    assert_eq!((us.conflict("k"), eu.conflict("k")), (None, None));
    assert_eq!(eu.value("k").as_deref(), Some("us-after"), "us's clock moved past eu's stamp when it merged it");
}

#[test]
fn a_delete_against_an_update_is_a_conflict_and_two_deletes_are_not() {
    let (mut us, mut eu) = (Region::new("us", 1000), Region::new("eu", 1000));
    for k in ["a", "b"] {
        us.write(k, Some("v"));
    }
    exchange(&mut us, &mut eu, &["a", "b"]);
    us.write("a", None);
    eu.write("a", Some("kept"));
    us.write("b", None);
    eu.write("b", None);
    exchange(&mut us, &mut eu, &["a", "b"]);
    assert!(us.conflict("a").is_some() && eu.conflict("a").is_some(), "delete vs update");
    assert_eq!((us.conflict("b"), eu.conflict("b")), (None, None), "both deleted: the same outcome either way");
}

#[test]
fn without_manual_nothing_is_kept() {
    let (mut us, mut eu) = (Region::new("us", 1000), Region::new("eu", 1000));
    us.write("k", Some("from-us"));
    eu.write("k", Some("from-eu"));
    let mut to_eu = us.ship(&["k"]);
    if let Command::RegionBatch { keep_conflicts, .. } = &mut to_eu {
        *keep_conflicts = false;
    }
    eu.receive(to_eu);
    assert_eq!(eu.conflict("k"), None);
    assert_eq!(eu.value("k").as_deref(), Some("from-us"));
}
