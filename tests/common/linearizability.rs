//! A linearizability checker for recorded key-value histories (Wing & Gong's search with
//! Lowe's memoization of visited states), one key at a time: each key is a register, and
//! linearizability is compositional (Herlihy & Wing), so a history is linearizable iff
//! every key's part is.
//!
//! Clients record each operation's invocation and response times on one clock. A write
//! whose answer was lost or was an error has no response time: it may have taken effect at
//! any moment after its invocation, or never. Reads without an answer are simply left out.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write a value (values are unique per history).
    Write(String),
    /// A read that answered this value, or `None` for "not found".
    Read(Option<String>),
}

#[derive(Clone, Debug)]
pub struct Event {
    pub key: String,
    pub op: Op,
    pub call: Duration,
    /// `None`: the outcome is unknown (writes only).
    pub ret: Option<Duration>,
}

/// Most search states explored for one key before giving up as inconclusive.
const MAX_STATES: usize = 2_000_000;

/// `Ok` with the number of keys checked, or a description of the first key whose history
/// cannot be linearized.
pub fn check(history: &[Event]) -> Result<usize, String> {
    let mut by_key: HashMap<&str, Vec<Event>> = HashMap::new();
    for e in history {
        by_key.entry(e.key.as_str()).or_default().push(e.clone());
    }
    let mut keys: Vec<_> = by_key.into_iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    let n = keys.len();
    for (key, events) in keys {
        check_register(&events).map_err(|why| format!("key {key:?}: {why}"))?;
    }
    Ok(n)
}

/// One register, initially absent (`None`).
fn check_register(events: &[Event]) -> Result<(), String> {
    // An unanswered write that no read observed may be taken as never applied: drop it.
    let observed: HashSet<&str> = events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Read(Some(v)) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let mut ops: Vec<&Event> = events
        .iter()
        .filter(|e| e.ret.is_some() || matches!(&e.op, Op::Write(v) if observed.contains(v.as_str())))
        .collect();
    ops.sort_by_key(|e| e.call);
    let n = ops.len();
    let ret = |i: usize| ops[i].ret.unwrap_or(Duration::MAX);

    // Depth-first search over (operations linearized so far, register value). At each step
    // an operation may go next only if no other pending operation returned before it was
    // invoked (real-time order).
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(Vec<u64>, Option<String>)> = vec![(vec![0; words], None)];
    let mut deepest = 0usize;
    while let Some((done, value)) = stack.pop() {
        if !seen.insert((done.clone(), value.clone())) {
            continue;
        }
        if seen.len() > MAX_STATES {
            return Err(format!("inconclusive: more than {MAX_STATES} states for {n} operations"));
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        let pending: Vec<usize> = (0..n).filter(|&i| !is_done(i)).collect();
        deepest = deepest.max(n - pending.len());
        if pending.iter().all(|&i| ops[i].ret.is_none()) {
            return Ok(());
        }
        let horizon = pending.iter().map(|&i| ret(i)).min().unwrap();
        // The last pushed is tried first: answered operations, earliest invocation first;
        // unanswered writes last.
        let mut next: Vec<usize> = pending.into_iter().filter(|&i| ops[i].call <= horizon).collect();
        next.sort_by_key(|&i| (ops[i].ret.is_some(), std::cmp::Reverse(ops[i].call)));
        for i in next {
            let value_after = match &ops[i].op {
                Op::Write(v) => Some(v.clone()),
                Op::Read(r) if *r == value => value.clone(),
                Op::Read(_) => continue,
            };
            let mut d = done.clone();
            d[i / 64] |= 1 << (i % 64);
            stack.push((d, value_after));
        }
    }
    let first_stuck = describe(&ops, deepest);
    Err(format!("not linearizable: {n} operations, at most {deepest} could be ordered; around: {first_stuck}"))
}

/// The operations near position `at` (by invocation), for the failure message.
fn describe(ops: &[&Event], at: usize) -> String {
    let lo = at.saturating_sub(3);
    let hi = (at + 4).min(ops.len());
    ops[lo..hi]
        .iter()
        .map(|e| {
            let ret = e.ret.map_or("?".to_string(), |r| format!("{:.3}", r.as_secs_f64()));
            format!("{:?} [{:.3}s, {ret}s]", e.op, e.call.as_secs_f64())
        })
        .collect::<Vec<_>>()
        .join("; ")
}
