//! Shipping this region's writes to one remote region.
//!
//! Only the region's Raft leader ships (every node runs a [`Link`] per remote region; the
//! others wait). What it ships, and why that is enough:
//!
//! - **Which keys**: the log says. Committed entries (positions at or below this node's
//!   applied index, never the not-yet-agreed tail) are read from the remote's high-water
//!   mark on — the recent ones from memory ([`super::feed`]), older ones from the WAL; every
//!   key a [`Command::Stamped`] entry wrote or deleted is collected.
//! - **Which versions**: the state says. For each such key the *current* stored version is
//!   shipped if this region wrote it (its stamp names this region), tombstones included. A
//!   later version than the entry's own is as good under last-write-wins (it would win
//!   anyway); a version from another region is that region's to ship. So a conditional write
//!   ships its effect, never a command the remote would evaluate against other state.
//! - **Where it resumes**: the remote answers every batch with its mark for this region,
//!   stored in its replicated state, so a new leader on either side resumes from what the
//!   remote region agreed on, with no gap; a batch sent twice is merged twice, which changes
//!   nothing.
//! - **Versions that lost a conflict** (`CLUSTER_CONFLICT_STRATEGY=manual`): a version this
//!   region wrote that a concurrent one from another region replaced here is no longer any
//!   key's current version, so the rules above would never ship it, and the other region
//!   would never learn of the conflict. When an entry merging another region's batch left a
//!   conflict on a key, this region's versions in that conflict are shipped too; they lose
//!   the merge there (the winner is already there) and the receiver records the same conflict.
//! - **When the log is gone** (purged behind a snapshot), every version this region wrote is
//!   resent from one state scan, the mark moving only with the last batch.
//!
//! A remote region is reached at any of its listed addresses: the node that answers proposes
//! the batch through its own Raft group, forwarding to its leader if it is not the leader.
//! Failures are retried forever, backing off to [`MAX_BACKOFF`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_wal::{Wal, WalError};

use super::feed::{Fed, Feed, Touched};
use super::messages::{ShipReply, ShipRequest, SHIP};
use super::primary::PrimaryView;
use crate::apply::clock_key;
use crate::conflicts;
use crate::command::{Command, KeyValue, PrimaryRecord, MAX_REGION_BATCH};
use crate::raft::RaftNode;
use crate::payload::LogPayload;
use crate::state_machine::{ScanEvent, StateMachine};
use crate::transport::{NodeId, Transport};
use crate::replicator::Replicator as _;
use crate::wire::{decode, encode};

/// Log records read per batch, and the bytes of versions per batch (under the frame limit).
const READ_RECORDS: usize = 1024;
const BATCH_BYTES: usize = 4 << 20;
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Batches in flight to one remote region at most.
const PIPELINE: usize = 16;
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
const SHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// What `/admin/region/status` shows of one remote region.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LinkStatus {
    pub region: String,
    /// The address that answered last.
    pub address: Option<String>,
    /// The remote's high-water mark for this region: everything this region wrote up to this
    /// log position is there.
    pub acknowledged: u64,
    /// Log positions committed here that the remote may still miss: those after the last
    /// position known to be there or to hold nothing to ship.
    pub lag_entries: u64,
    /// How long the remote has been behind; 0 when it has everything.
    pub lag_seconds: f64,
    pub shipped_versions: u64,
    /// Batches the remote answered (versions per batch = `shipped_versions / shipped_batches`).
    pub shipped_batches: u64,
    pub shipped_bytes: u64,
    pub last_error: Option<String>,
    /// True while this node is the one shipping (its region's leader).
    pub shipping: bool,
}

/// The link to one remote region.
pub struct Link {
    pub region: String,
    /// Transport peer ids, one per listed address.
    peers: Vec<NodeId>,
    own_region: String,
    status: Mutex<LinkStatus>,
    /// When the remote last had everything committed here.
    caught_up_at: Mutex<Instant>,
    /// Positions up to here are at the remote or hold nothing to ship. Entries without
    /// writes (a remote's batch merged here, a membership change) are never sent on their
    /// own: sending them would make the remote log an entry that it would answer in kind,
    /// two regions trading empty batches forever.
    covered: AtomicU64,
    shipped_bytes: AtomicU64,
    /// The remote's primary record as of its last answer.
    remote_primary: Mutex<Option<PrimaryRecord>>,
    /// The remote's mark, for writers waiting on it (`semi_sync`).
    acked: tokio::sync::watch::Sender<u64>,
    primary: Arc<PrimaryView>,
    /// What this node applied lately (see [`super::feed`]); on while this node ships.
    feed: Arc<Feed>,
}

/// The log positions and versions of one batch.
struct Batch {
    /// The position this batch continues from (see [`ShipRequest::after`]).
    after: u64,
    through: u64,
    writes: Vec<KeyValue>,
    /// Client writes among the entries read (a write superseded at once ships no version,
    /// but its position must still reach the remote for `semi_sync`).
    stamped: usize,
    /// The highest stamp among this region's writes up to `through` (see
    /// [`ShipRequest::clock`]); 0 says nothing.
    clock: u64,
}

impl Link {
    pub fn new(transport: &Transport, own_region: &str, region: &str, addrs: &[String], primary: Arc<PrimaryView>, feed: Arc<Feed>) -> Arc<Link> {
        let peers = addrs
            .iter()
            .map(|a| {
                let id: NodeId = format!("region:{region}@{a}");
                transport.add_peer_alias(id.clone(), a.clone());
                id
            })
            .collect();
        Arc::new(Link {
            region: region.to_owned(),
            peers,
            own_region: own_region.to_owned(),
            status: Mutex::new(LinkStatus { region: region.to_owned(), ..LinkStatus::default() }),
            caught_up_at: Mutex::new(Instant::now()),
            covered: AtomicU64::new(0),
            shipped_bytes: AtomicU64::new(0),
            remote_primary: Mutex::new(None),
            acked: tokio::sync::watch::channel(0).0,
            primary,
            feed,
        })
    }

    /// The transport peers (one per listed address) of the remote region.
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// Watches the remote's mark for this region.
    pub fn acked(&self) -> tokio::sync::watch::Receiver<u64> {
        self.acked.subscribe()
    }

    pub fn status(&self, applied: u64) -> LinkStatus {
        let mut s = self.status.lock().unwrap().clone();
        s.lag_entries = applied.saturating_sub(self.covered.load(Ordering::Relaxed).max(s.acknowledged));
        s.lag_seconds = if s.lag_entries == 0 { 0.0 } else { self.caught_up_at.lock().unwrap().elapsed().as_secs_f64() };
        s.shipped_bytes = self.shipped_bytes.load(Ordering::Relaxed);
        s
    }

    /// Ships while `is_leader()` holds, forever; returns only when `stopped()`.
    pub async fn run(self: Arc<Self>, transport: Transport, wal: Wal, sm: Arc<dyn StateMachine>, raft: Arc<RaftNode>, stopped: impl Fn() -> bool + Send + Sync) {
        let is_leader = || raft.is_leader();
        let mut backoff = Duration::from_millis(50);
        let mut next_peer = 0usize;
        while !stopped() {
            if !is_leader() {
                self.feed.set_on(false);
                self.status.lock().unwrap().shipping = false;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            self.feed.set_on(true);
            self.status.lock().unwrap().shipping = true;
            match self.ship_while_leader(&transport, &wal, &sm, &raft, &stopped, &mut next_peer).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::debug!(region = %self.region, error = %e, "cross-region shipping failed; retrying");
                    {
                        let mut s = self.status.lock().unwrap();
                        if s.last_error.as_deref() != Some(e.as_str()) {
                            tracing::warn!(region = %self.region, error = %e, "cross-region shipping failed; retrying with backoff");
                        }
                        s.last_error = Some(e);
                    }
                    next_peer += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Learns the remote's mark, then ships from it while this node leads its region, with
    /// up to [`PIPELINE`] batches in flight: batch k+1 leaves before batch k's answer is back,
    /// so a version reaches the remote about one one-way delay after its commit here instead
    /// of waiting behind the previous batch's round trip. Each batch says where it continues from
    /// (`after`); the receiver merges an origin's batches one at a time, in that order, and
    /// refuses one that would leave a gap ([`ShipRequest::after`]), so the remote's mark
    /// still only ever covers versions it holds.
    async fn ship_while_leader(
        &self,
        transport: &Transport,
        wal: &Wal,
        sm: &Arc<dyn StateMachine>,
        raft: &Arc<RaftNode>,
        stopped: &(impl Fn() -> bool + Send + Sync),
        next_peer: &mut usize,
    ) -> Result<(), String> {
        use futures_util::StreamExt as _;
        let peer = self.peers[*next_peer % self.peers.len()].clone();
        let mut covered = self.send(transport, &peer, raft, Batch { after: 0, through: 0, writes: Vec::new(), stamped: 0, clock: 0 }).await?;
        self.covered.store(covered, Ordering::Relaxed);
        // Positions up to `sent` are in flight, at the remote, or hold nothing to ship.
        let mut sent = covered;
        // The `through` of the last batch sent (or the remote's mark): the next batch continues
        // from it. Not `sent`: ranges skipped for holding nothing never reach the remote, whose
        // mark therefore stays below them, and a batch continuing from them would look to it
        // like one after a lost batch.
        let mut last_sent = covered;
        let mut in_flight = futures_util::stream::FuturesOrdered::new();
        while raft.is_leader() && !stopped() {
            let applied = sm.applied_index();
            if in_flight.is_empty() && self.remote_primary_behind() {
                // A promotion the remote has not heard of: tell it, with or without data.
                covered = self.send(transport, &peer, raft, Batch { after: 0, through: covered, writes: Vec::new(), stamped: 0, clock: 0 }).await?.max(covered);
                continue;
            }
            if in_flight.len() < PIPELINE && sent < applied {
                let from = sent + 1;
                // The feed never serves what the WAL no longer holds: a remote that far behind
                // takes the full-state resend, as it would without the feed.
                let fed = if from >= wal.first_index() { self.feed.read(from, applied, READ_RECORDS) } else { Fed::Missing };
                let read = match fed {
                    // Recent entries, from memory: their versions are mostly among the recent
                    // writes the store keeps in memory too, so this runs here.
                    Fed::Entries(entries) => gather(entries.into_iter().map(Ok), &**sm, &self.own_region, from),
                    Fed::NotYet => Ok(Batch { after: 0, through: from - 1, writes: Vec::new(), stamped: 0, clock: 0 }),
                    Fed::Missing => {
                        let (w, s, own) = (wal.clone(), sm.clone(), self.own_region.clone());
                        tokio::task::spawn_blocking(move || collect(&w, &*s, &own, from, applied)).await.map_err(|e| e.to_string())?
                    }
                };
                match read {
                    Ok(batch) if batch.through < from => tokio::time::sleep(Duration::from_millis(1)).await, // not durable here yet
                    Ok(batch) if batch.writes.is_empty() && batch.stamped == 0 => sent = batch.through, // nothing to ship up to here
                    Ok(mut batch) => {
                        tracing::debug!(region = %self.region, after = last_sent, through = batch.through, versions = batch.writes.len(), in_flight = in_flight.len(), "shipping a batch");
                        batch.after = last_sent;
                        sent = batch.through;
                        last_sent = batch.through;
                        in_flight.push_back(self.send(transport, &peer, raft, batch));
                    }
                    Err(Collect::Purged) if in_flight.is_empty() => {
                        tracing::info!(region = %self.region, from, "the log below the remote's mark is gone (snapshot); resending every version this region wrote");
                        covered = self.resend_all(transport, &peer, sm, raft).await?;
                        sent = covered;
                        last_sent = covered;
                    }
                    Err(Collect::Purged) => {} // after the batches in flight
                    Err(Collect::Failed(e)) => return Err(e),
                }
            }
            if in_flight.is_empty() {
                covered = covered.max(sent);
                self.covered.store(covered, Ordering::Relaxed);
                if covered >= sm.applied_index() {
                    *self.caught_up_at.lock().unwrap() = Instant::now();
                    tokio::time::sleep(IDLE_POLL).await;
                }
                continue;
            }
            // Collect answers in order; look for more to send every IDLE_POLL meanwhile.
            let more = in_flight.len() < PIPELINE && sent < sm.applied_index();
            // `biased`: the batches in flight are polled first on every turn (a request is sent
            // only when its future is polled), then the loop goes on to send more.
            tokio::select! {
                biased;
                answer = in_flight.next() => {
                    tracing::debug!(region = %self.region, ?answer, "batch answered");
                    covered = covered.max(answer.expect("not empty")?);
                    self.covered.store(covered, Ordering::Relaxed);
                }
                _ = tokio::time::sleep(IDLE_POLL), if !more => {}
                _ = std::future::ready(()), if more => {}
            }
        }
        Ok(())
    }

    async fn resend_all(&self, transport: &Transport, peer: &NodeId, sm: &Arc<dyn StateMachine>, raft: &Arc<RaftNode>) -> Result<u64, String> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(2);
        let (s, own) = (sm.clone(), self.own_region.clone());
        let scan = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let (mut view, mut clock) = (0, 0);
            let mut batch = Vec::new();
            let mut bytes = 0;
            s.scan(&mut |ev| {
                match ev {
                    ScanEvent::View { applied_index, .. } => view = applied_index,
                    // This region's last own stamp as of the view: every write after it is
                    // stamped higher (invariant 1 in `apply`), so the last batch may claim it.
                    ScanEvent::Entry(kv) if kv.key == clock_key() => clock = crate::apply::number(Some(kv)),
                    // This region's versions that lost a conflict (see the module docs).
                    ScanEvent::Entry(kv) if conflicts::key_of_record(&kv.key).is_some() => {
                        let lost = conflicts::decode(&kv.value).unwrap_or_default();
                        batch.extend(lost.into_iter().filter(|v| v.stamp.as_ref().is_some_and(|st| st.region == own)));
                    }
                    ScanEvent::Entry(kv) if kv.stamp.as_ref().is_some_and(|st| st.region == own) => {
                        bytes += kv.key.len() + kv.value.len() + 64;
                        batch.push(kv);
                        if batch.len() >= MAX_REGION_BATCH || bytes >= BATCH_BYTES {
                            bytes = 0;
                            let writes = std::mem::take(&mut batch);
                            tx.blocking_send(Batch { after: 0, through: 0, writes, stamped: 0, clock: 0 })
                                .map_err(|_| crate::state_machine::StateMachineError::Storage("the resend stopped".into()))?;
                        }
                    }
                    ScanEvent::Entry(_) => {}
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            tx.blocking_send(Batch { after: 0, through: view, writes: batch, stamped: 0, clock }).map_err(|_| "the resend stopped".to_string())
        });
        let mut mark = 0;
        while let Some(b) = rx.recv().await {
            mark = self.send(transport, peer, raft, b).await?;
        }
        scan.await.map_err(|e| e.to_string())??;
        Ok(mark)
    }

    /// True when this region holds a primary record the remote has not confirmed.
    fn remote_primary_behind(&self) -> bool {
        let local = self.primary.get();
        local.is_some_and(|l| l.supersedes(self.remote_primary.lock().unwrap().as_ref()))
    }

    /// Sends one batch (with this region's primary record) and returns the remote's mark
    /// for this region. A newer primary record in the answer is adopted through this
    /// region's Raft log.
    async fn send(&self, transport: &Transport, peer: &NodeId, raft: &Arc<RaftNode>, batch: Batch) -> Result<u64, String> {
        let bytes: usize = batch.writes.iter().map(|w| w.key.len() + w.value.len()).sum();
        let versions = batch.writes.len() as u64;
        let local_primary = self.primary.get();
        let req = ShipRequest { origin: self.own_region.clone(), after: batch.after, through: batch.through, clock: batch.clock, writes: batch.writes, primary: local_primary.clone() };
        let reply = transport.request(peer, SHIP, encode(&req), Some(SHIP_TIMEOUT)).await.map_err(|e| format!("{peer}: {e}"))?;
        match decode::<ShipReply>("region", &reply)? {
            ShipReply::Merged { high_water, primary } => {
                if let Some(p) = &primary {
                    if p.supersedes(local_primary.as_ref()) {
                        tracing::info!(region = %p.region, epoch = p.epoch, from = %self.region, "learned of a newer primary region; adopting it");
                        raft.submit(Command::SetPrimary(p.clone())).await.map_err(|e| format!("adopting primary region {}: {e}", p.region))?;
                    }
                }
                *self.remote_primary.lock().unwrap() = primary;
                self.acked.send_modify(|a| *a = (*a).max(high_water));
                self.shipped_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                let mut s = self.status.lock().unwrap();
                s.acknowledged = s.acknowledged.max(high_water);
                s.address = peer.split_once('@').map(|(_, a)| a.to_owned());
                s.shipped_versions += versions;
                s.shipped_batches += 1;
                s.last_error = None;
                Ok(high_water)
            }
            ShipReply::Refused { code, message } => Err(format!("{peer} refused the batch ({code}): {message}")),
        }
    }
}

enum Collect {
    Purged,
    Failed(String),
}

/// Reads committed entries `from..=applied` from the WAL and gathers the current versions
/// this region wrote of the keys they touched.
fn collect(wal: &Wal, sm: &dyn StateMachine, own: &str, from: u64, applied: u64) -> Result<Batch, Collect> {
    let records = match wal.read_from(from, READ_RECORDS, BATCH_BYTES) {
        Ok(r) => r,
        Err(WalError::Purged { .. }) => return Err(Collect::Purged),
        Err(e) => return Err(Collect::Failed(e.to_string())),
    };
    if records.first().is_some_and(|r| r.index > from) {
        return Err(Collect::Purged);
    }
    let entries = records.iter().take_while(|r| r.index <= applied).map(|r| {
        let touched = match LogPayload::decode(&r.payload).map_err(|e| Collect::Failed(format!("WAL record {}: {e}", r.index)))? {
            LogPayload::Normal(c) => Touched::of(&c),
            _ => Touched::Nothing,
        };
        Ok((r.index, touched))
    });
    gather(entries, sm, own, from)
}

/// Gathers the current versions this region wrote of the keys the entries (positions `from`
/// on, in order, contiguous) touched, as far as one batch goes.
///
/// First the entries a batch can take and their keys, then every key's current version in
/// one storage read ([`StateMachine::get_versions`]: a read transaction per key was about 2 %
/// of the region leader's CPU under load), then the batch, cut where its bytes run out.
fn gather(entries: impl Iterator<Item = Result<(u64, Touched), Collect>>, sm: &dyn StateMachine, own: &str, from: u64) -> Result<Batch, Collect> {
    let mut taken = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for entry in entries {
        let (index, touched) = entry?;
        if let Touched::Stamped { keys, .. } = &touched {
            for k in keys {
                if !listed.contains(k) {
                    listed.insert(k.clone());
                }
            }
        }
        taken.push((index, touched));
        if listed.len() + 256 > MAX_REGION_BATCH {
            break; // a whole entry at most over: a txn holds at most 256 ops
        }
    }
    let keys: Vec<String> = listed.into_iter().collect();
    let versions = sm.get_versions(&keys).map_err(|e| Collect::Failed(e.to_string()))?;
    let mut current: std::collections::HashMap<String, Option<KeyValue>> = keys.into_iter().zip(versions).collect();
    let mut writes = Vec::new();
    let (mut through, mut bytes, mut stamped, mut clock) = (from - 1, 0usize, 0usize, 0u64);
    for (index, touched) in taken {
        match touched {
            Touched::Merged { origin, keys } => {
                for k in keys {
                    for v in own_conflict_versions(sm, own, &origin, &k).map_err(Collect::Failed)? {
                        bytes += v.key.len() + v.value.len() + 64;
                        writes.push(v);
                    }
                }
            }
            Touched::Stamped { hlc, keys } => {
                stamped += 1;
                // The proposed stamp; the applied one is at least as high (invariant 1 in `apply`).
                clock = clock.max(hlc);
                for k in keys {
                    // Taken out once: a key already in this batch is there at its current version.
                    if let Some(Some(v)) = current.remove(&k) {
                        if v.stamp.as_ref().is_some_and(|st| st.region == own) {
                            bytes += v.key.len() + v.value.len() + 64;
                            writes.push(v);
                        }
                    }
                }
            }
            Touched::Nothing => {}
        }
        through = index;
        if bytes >= BATCH_BYTES {
            break;
        }
    }
    Ok(Batch { after: 0, through, writes, stamped, clock })
}

/// This region's versions in the conflict on `key`, if there is one and a version from
/// `origin` holds the key. Only then: the origin's answer, our versions merged there, holds
/// its own version, so it ships nothing back (no versions traded back and forth).
fn own_conflict_versions(sm: &dyn StateMachine, own: &str, origin: &str, key: &str) -> Result<Vec<KeyValue>, String> {
    let current = sm.get_version(key).map_err(|e| e.to_string())?;
    if current.is_none_or(|c| c.stamp.is_none_or(|s| s.region != origin)) {
        return Ok(Vec::new());
    }
    let Some(record) = sm.get_version(&conflicts::record_key(key)).map_err(|e| e.to_string())? else { return Ok(Vec::new()) };
    Ok(conflicts::decode(&record.value).unwrap_or_default().into_iter().filter(|v| v.stamp.as_ref().is_some_and(|s| s.region == own)).collect())
}



#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Op, Stamp, Txn};
    use crate::region::hlc::Hlc;
    use crate::region::observe::Observed;
    use crate::state_machine::{LogEntry, MemStateMachine};
    use meridian_wal::{Record, WalOptions};

    fn stamped(c: Command, hlc: u64) -> Command {
        Command::Stamped { command: Box::new(c), stamp: Stamp { hlc, region: "us".into() } }
    }

    fn put(key: &str) -> Command {
        Command::Put { key: key.into(), value: key.as_bytes().to_vec(), if_revision: None }
    }

    /// Every kind of entry the shipper meets: this region's puts (a key written twice), a
    /// txn, a delete, a no-op, a primary record, another region's batch with conflicts kept
    /// (one version beats ours, one loses).
    fn commands() -> Vec<Command> {
        let theirs = |key: &str, hlc: u64| KeyValue {
            key: key.into(),
            value: b"eu".to_vec(),
            create_revision: 1,
            mod_revision: 1,
            stamp: Some(Stamp { hlc, region: "eu".into() }),
            tombstone: false,
            parent: None,
        };
        let txn = Txn { compare: vec![], success: vec![Op::Put { key: "t1".into(), value: b"x".to_vec() }, Op::Delete { key: "a".into() }], failure: vec![Op::Delete { key: "t2".into() }] };
        vec![
            stamped(put("a"), 10),
            stamped(put("b"), 11),
            Command::Noop,
            stamped(put("a"), 12),
            stamped(Command::Txn(txn), 13),
            Command::SetPrimary(PrimaryRecord { epoch: 1, region: "us".into(), hlc: 14 }),
            stamped(put("c"), 15),
            Command::RegionBatch { origin: "eu".into(), through: 3, clock: 40, writes: vec![theirs("c", 40), theirs("b", 1)], primary: None, keep_conflicts: true },
            stamped(Command::Delete { key: "d".into(), if_revision: None }, 41),
            stamped(put("e"), 42),
        ]
    }

    fn summary(b: &Batch) -> (u64, Vec<KeyValue>, usize, u64) {
        (b.through, b.writes.clone(), b.stamped, b.clock)
    }

    /// The feed is a faster path to what the WAL holds: from every position, the batch
    /// gathered from it equals the one read back from the WAL.
    #[test]
    fn a_batch_from_the_feed_is_the_batch_from_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalOptions::new(dir.path().join("wal"))).unwrap();
        let feed = Arc::new(Feed::default());
        feed.set_on(true);
        let inner: Arc<dyn StateMachine> = Arc::new(MemStateMachine::default());
        let sm = Observed::new(inner.clone(), Arc::new(Hlc::default()), feed.clone(), crate::region::primary::PrimaryView::new(inner));
        let cmds = commands();
        let n = cmds.len() as u64;
        let entries: Vec<LogEntry> = cmds.into_iter().enumerate().map(|(i, c)| LogEntry::from_payload(i as u64 + 1, 1, LogPayload::Normal(c))).collect();
        let records = entries.iter().map(|e| Record { index: e.index, epoch: 1, payload: LogPayload::Normal(e.command.clone()).encode() }).collect();
        wal.append(records).wait().unwrap();
        sm.apply(&entries).unwrap();
        let mut shipped_conflict = false;
        for from in 1..=n {
            for through in from..=n {
                let Fed::Entries(fed) = feed.read(from, through, READ_RECORDS) else { panic!("the feed holds {from}..={through}") };
                let a = gather(fed.into_iter().map(Ok), &sm, "us", from).unwrap_or_else(|_| panic!("gather {from}"));
                let b = collect(&wal, &sm, "us", from, through).unwrap_or_else(|_| panic!("collect {from}"));
                assert_eq!(summary(&a), summary(&b), "from {from} through {through}");
                assert_eq!(a.through, through);
                shipped_conflict |= a.writes.iter().any(|w| w.key == "c" && w.stamp.as_ref().is_some_and(|s| s.region == "us"));
            }
        }
        assert!(shipped_conflict, "the batch that lost a conflict ships our version of c");
        assert_eq!(feed.read(n + 1, n + 1, 1), Fed::NotYet);
    }
}
