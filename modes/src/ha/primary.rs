//! The primary's side: serving fetches (and so the stream), snapshots, forwarded writes and
//! fences; heartbeats to the standby and the witness; the lease; switchover.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tracing::{info, warn};

use super::epochs::HaPersisted;
use super::gate::{OutOfSync, SyncGate, SyncMode};
use super::messages::*;
use super::{Core, Promotion, Role, PEER, WITNESS};
use crate::pipeline::{Pipeline, PipelineConfig, PurgePolicy, Tail};
use crate::replicator::{AdminError, SubmitError};
use crate::state_machine::write_snapshot;
use crate::transport::{Handler, NodeId, RemoteError};

/// Biggest WAL read per fetch answer, so one answer stays well under the frame limit.
const MAX_FETCH_BYTES: usize = 8 << 20;
const CHUNK_BYTES: u32 = 4 << 20;

pub(crate) struct HaHandler {
    pub core: Arc<Core>,
}

fn bad(e: String) -> RemoteError {
    RemoteError::new("bad_request", e)
}

#[async_trait]
impl Handler for HaHandler {
    async fn on_request(&self, _from: &NodeId, msg_type: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
        let core = &self.core;
        match msg_type {
            FETCH => Ok(encode(&serve_fetch(core, decode(&payload).map_err(bad)?).await)),
            SNAPSHOT_CHUNK => serve_chunk(core, decode(&payload).map_err(bad)?).map(|c| encode(&c)),
            FENCE => Ok(encode(&on_fence(core, decode(&payload).map_err(bad)?).await)),
            FORWARD => Ok(encode(&on_forward(core, decode(&payload).map_err(bad)?).await)),
            READ_INDEX => Ok(encode(&super::read_index::on_read_index(core, decode(&payload).map_err(bad)?).await)),
            PROMOTE => super::standby::on_promote(core, decode(&payload).map_err(bad)?).await.map(|r| encode(&r)),
            SWITCHOVER => switchover(core)
                .await
                .map(|v| Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
                .map_err(|e| RemoteError::new("rejected", e.to_string())),
            other => Err(RemoteError::new("unknown_message", format!("HA node does not handle message type {other:#x}"))),
        }
    }

    async fn on_message(&self, _from: &NodeId, msg_type: u16, payload: Bytes) {
        if msg_type == ACK {
            if let Ok(a) = decode::<Ack>(&payload) {
                on_ack(&self.core, a);
            }
        }
    }
}

impl Core {
    /// How the gate treats a standby that stops confirming (see `gate`).
    fn out_of_sync_policy(&self) -> OutOfSync {
        let witness = self.cfg.witness_addr.is_some();
        match self.cfg.sync_mode {
            SyncMode::Async => OutOfSync::Never,
            _ if self.cfg.sync_strict => OutOfSync::Never,
            _ if witness => OutOfSync::Recorded,
            SyncMode::SemiSync => OutOfSync::Automatic,
            SyncMode::Sync | SyncMode::RemoteApply => OutOfSync::Operator,
        }
    }

    /// Starts taking writes in `epoch` (already persisted). `in_contact`: this node has just
    /// heard from the witness or the standby (a won vote, an aborted switchover), which
    /// grants a first lease. The standby starts in sync as persisted (`peer_in_sync`).
    pub(crate) fn start_pipeline(self: &Arc<Self>, epoch: u64, in_contact: bool) -> (Arc<Pipeline>, Arc<SyncGate>) {
        let seen = *self.last_standby_contact.lock().unwrap();
        let in_sync = self.persisted.lock().unwrap().peer_in_sync;
        let gate = Arc::new(SyncGate::new(
            self.cfg.sync_mode,
            self.cfg.sync_timeout,
            *self.standby_positions.lock().unwrap(),
            seen,
            in_sync,
            self.out_of_sync_policy(),
        ));
        // The standby is told it is in sync only once that is persisted here: a primary that
        // restarts must not acknowledge alone what an in-sync standby lacks.
        let mut rx = gate.subscribe_in_sync();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let now = *rx.borrow_and_update();
                let Some(core) = weak.upgrade() else { return };
                let mut p = core.persisted.lock().unwrap().clone();
                if p.peer_in_sync != now && core.epoch() == epoch {
                    p.peer_in_sync = now;
                    let _ = core.persist_epoch(epoch, p);
                }
                drop(core);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        if self.cfg.witness_addr.is_some() {
            // With a witness the primary must hold a lease to acknowledge.
            let until = if in_contact { Instant::now() + self.lease() } else { Instant::now() };
            gate.extend_lease(until);
        }
        let weak = Arc::downgrade(self);
        let retention = self.cfg.wal_retention;
        let purge: PurgePolicy = Arc::new(move |checkpoint| {
            // Keep what the standby still needs, up to the retention cap.
            let standby = weak.upgrade().map_or(0, |c| c.standby_positions.lock().unwrap().flushed);
            (checkpoint + 1).min((standby + 1).max((checkpoint + 1).saturating_sub(retention)))
        });
        let tail = Tail::new(self.wal.last_index());
        *self.tail.lock().unwrap() = Some(tail.clone());
        let pcfg = PipelineConfig {
            epoch,
            checkpoint_interval: self.cfg.checkpoint_interval,
            max_batch: 1024,
            gate: Some(gate.clone()),
            purge: Some(purge),
            tail: Some(tail),
        };
        let pipeline = Arc::new(Pipeline::start(pcfg, self.wal.clone(), self.sm.clone()));
        // Mirror the pipeline's applied index into the node-wide watch that reads wait on.
        let mut applied = pipeline.applied();
        let core = self.clone();
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                let v = *applied.borrow();
                core.applied_tx.send_replace(v);
            }
        });
        (pipeline, gate)
    }

    /// The primary stops acknowledging writes when it has heard from neither the standby nor
    /// the witness for this long; the witness grants a failover only after a full failover
    /// timeout of silence, so the two windows never overlap.
    pub(crate) fn lease(&self) -> Duration {
        self.cfg.failover_timeout / 2
    }

    /// Becomes primary of `epoch`, a new epoch this node started ([`super::epoch::next`]):
    /// persist the epoch and where it starts, then take writes. There is no other way to
    /// become primary — resuming after a restart starts a new epoch too — so every position
    /// this node writes carries an (epoch, index) nobody else ever wrote.
    pub(crate) async fn become_primary(self: &Arc<Self>, epoch: u64, how: Promotion) -> Result<(), String> {
        let _t = self.transition.lock().await;
        if super::epoch::owner(epoch) != self.tag || epoch <= self.epoch() {
            return Err(format!("refusing to become primary in epoch {}: not a new epoch of this node's", super::epoch::display(epoch)));
        }
        self.replay_log().await.map_err(|e| format!("{e}; staying standby"))?;
        let mut p: HaPersisted = self.persisted.lock().unwrap().clone();
        p.history.begin(epoch, self.wal.last_index() + 1);
        p.owner = true;
        p.in_sync = false;
        p.peer_in_sync = match how {
            Promotion::Takeover => false,
            Promotion::Resume => p.peer_in_sync,
            Promotion::Handover => true,
        };
        self.persist_epoch(epoch, p).map_err(|e| format!("{e}; staying standby"))?;
        // Whatever this node knew of a standby predates its promotion.
        *self.last_standby_contact.lock().unwrap() = None;
        let (pipeline, gate) = self.start_pipeline(epoch, true);
        *self.role.lock().unwrap() = Role::Primary { pipeline: pipeline.clone(), gate };
        *self.leader.lock().unwrap() = Some(self.self_hint());
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
        self.note("primary");
        info!(epoch, round = super::epoch::round(epoch), "this node is now the primary");
        // The first record of the epoch marks where it begins in every log that has it.
        tokio::spawn(async move {
            let _ = pipeline.submit(crate::command::Command::Noop).await;
        });
        Ok(())
    }

    /// Applies every record in the log that the state does not have yet. Before a node takes
    /// writes its whole log is the history: a record it logged but never applied (a fenced
    /// primary's last writes, an apply that failed) goes into the state before any new
    /// write, or the first new write would find a hole.
    pub(crate) async fn replay_log(&self) -> Result<u64, String> {
        let (wal, sm) = (self.wal.clone(), self.sm.clone());
        let replayed = tokio::task::spawn_blocking(move || crate::recovery::replay(&wal, &*sm).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| format!("cannot bring the state up to the log: {e}"))?;
        if replayed > 0 {
            info!(records = replayed, "applied logged records before taking writes");
            self.applied_tx.send_replace(self.sm.applied_index());
        }
        Ok(replayed)
    }

    /// The gate of the stream this node serves: as primary, and while handing over.
    pub(crate) fn gate(&self) -> Option<Arc<SyncGate>> {
        match &*self.role.lock().unwrap() {
            Role::Primary { gate, .. } | Role::Switching { gate } => Some(gate.clone()),
            Role::Standby => None,
        }
    }

    fn not_primary(&self) -> FetchReply {
        FetchReply::NotPrimary {
            epoch: self.epoch(),
            leader: self.leader.lock().unwrap().clone(),
            last_index: self.wal.last_index(),
            node_id: self.cfg.node_id.clone(),
        }
    }

    fn record_epoch(&self, index: u64) -> u64 {
        if index >= self.wal.first_index() && index <= self.wal.last_index() {
            if let Ok(r) = self.wal.read_from(index, 1, 0) {
                if let Some(r) = r.first().filter(|r| r.index == index) {
                    return r.epoch;
                }
            }
        }
        self.persisted.lock().unwrap().history.epoch_at(index)
    }

    fn standby_seen(&self, p: Positions) {
        *self.last_standby_contact.lock().unwrap() = Some(Instant::now());
        let mut sp = self.standby_positions.lock().unwrap();
        sp.received = sp.received.max(p.received);
        sp.flushed = sp.flushed.max(p.flushed);
        sp.applied = sp.applied.max(p.applied);
    }
}

async fn serve_fetch(core: &Arc<Core>, f: Fetch) -> FetchReply {
    core.check_peer_id(&f.node_id);
    core.adopt_epoch(f.epoch, None, &f.node_id).await;
    let Some(gate) = core.gate() else { return core.not_primary() };
    let epoch = core.epoch();
    let leader = core.self_hint();
    let prev = f.from.saturating_sub(1);
    let my_last = core.wal.last_index();

    // Does the standby's log agree with ours at `prev`? If not, tell it where they part.
    if prev > 0 {
        let history = core.persisted.lock().unwrap().history.clone();
        let mine = if prev <= my_last { Some(core.record_epoch(prev)) } else { None };
        if mine != Some(f.prev_epoch) {
            let mut after = history.agreed_until(f.prev_epoch, prev.min(my_last));
            if after >= prev {
                after = prev - 1;
            }
            info!(standby = %f.node_id, standby_last = prev, standby_epoch = f.prev_epoch, after, "standby log diverges; asking it to truncate");
            return FetchReply::Diverged { epoch, after, leader };
        }
    }
    // The standby's log matches ours up to `prev`: its positions are in our index space.
    let clamp = |v: u64| v.min(prev);
    let p = Positions { received: clamp(f.positions.received), flushed: clamp(f.positions.flushed), applied: clamp(f.positions.applied) };
    if f.want_snapshot {
        // The standby rolled its log back but its state still holds discarded records.
        gate.reset(p);
        *core.standby_positions.lock().unwrap() = p;
    } else {
        gate.update(p);
    }
    core.standby_seen(p);

    if f.want_snapshot || f.from < core.wal.first_index() {
        return match prepare_snapshot(core).await {
            Ok((snapshot_id, size)) => FetchReply::NeedSnapshot { epoch, snapshot_id, size, leader },
            Err(e) => {
                warn!("cannot prepare a snapshot for the standby: {e}");
                FetchReply::Records { epoch, records: vec![], commit_index: *core.applied_tx.borrow(), last_index: my_last, leader, ack_received: false, ack_applied: false, in_sync: false }
            }
        };
    }
    // Long poll: answer as soon as there is something to send, else after wait_ms. Fresh
    // records come from the in-memory tail, before they are durable here, so the standby's
    // fsync overlaps ours; older ones are read from the WAL (durable records only).
    let wait = Duration::from_millis(f.wait_ms.min(10_000));
    let max = (f.max_records.max(1) as usize).min(100_000);
    let from = f.from;
    let tail = core.tail.lock().unwrap().clone();
    let records = match tail {
        Some(tail) => {
            let mut last = tail.subscribe();
            let _ = tokio::time::timeout(wait, last.wait_for(|l| *l >= from)).await;
            match tail.read(from, max, MAX_FETCH_BYTES) {
                Some(r) => r,
                None => tokio::task::block_in_place(|| core.wal.read_from(from, max, MAX_FETCH_BYTES)).unwrap_or_default(),
            }
        }
        None => {
            let mut durable = core.wal.subscribe_durable();
            let _ = tokio::time::timeout(wait, durable.wait_for(|d| *d >= from)).await;
            if core.wal.durable_index() >= from {
                tokio::task::block_in_place(|| core.wal.read_from(from, max, MAX_FETCH_BYTES)).unwrap_or_default()
            } else {
                vec![]
            }
        }
    };
    let bytes: usize = records.iter().map(|r| r.payload.len() + 32).sum();
    core.replication_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    let records = records.into_iter().map(|r| WireRecord { index: r.index, epoch: r.epoch, payload: r.payload }).collect();
    let ack_received = core.cfg.sync_mode == super::SyncMode::SemiSync;
    let ack_applied = core.cfg.sync_mode == super::SyncMode::RemoteApply;
    let in_sync = core.standby_in_sync();
    FetchReply::Records { epoch, records, commit_index: *core.applied_tx.borrow(), last_index: core.wal.last_index(), leader, ack_received, ack_applied, in_sync }
}

/// Snapshots for re-seeding a standby live in files under `DATA_DIR/snapshots/`, written
/// from one read transaction and served in chunks, so neither side holds a whole state in
/// memory. Only the newest is kept.
pub(crate) fn snapshot_dir(core: &Core) -> PathBuf {
    core.cfg.data_dir.join("snapshots")
}

async fn prepare_snapshot(core: &Arc<Core>) -> Result<(u64, u64), String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (sm, dir) = (core.sm.clone(), snapshot_dir(core));
    let (path, meta, size) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let io = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", dir.display());
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create the snapshot directory", e))?;
        let tmp = dir.join(format!("outgoing.{}.tmp", NEXT.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&tmp).map_err(|e| io("cannot create a snapshot file", e))?;
        let (w, meta) = write_snapshot(&*sm, std::io::BufWriter::new(file)).map_err(|e| e.to_string())?;
        w.into_inner().map_err(|e| io("cannot write the snapshot", e.into_error()))?;
        let path = dir.join(format!("outgoing-{}.snap", meta.applied_index));
        std::fs::rename(&tmp, &path).map_err(|e| io("cannot rename the snapshot", e))?;
        let size = std::fs::metadata(&path).map_err(|e| io("cannot stat the snapshot", e))?.len();
        Ok((path, meta, size))
    })
    .await
    .map_err(|e| e.to_string())??;
    info!(index = meta.applied_index, keys = meta.keys, bytes = size, file = %path.display(), "prepared a snapshot to re-seed the standby");
    let old = core.snapshot_cache.lock().unwrap().replace((meta.applied_index, path.clone(), size));
    if let Some((_, old_path, _)) = old.filter(|(_, p, _)| *p != path) {
        let _ = std::fs::remove_file(old_path);
    }
    Ok((meta.applied_index, size))
}

fn serve_chunk(core: &Arc<Core>, req: SnapshotChunkReq) -> Result<SnapshotChunk, RemoteError> {
    let cache = core.snapshot_cache.lock().unwrap().clone();
    let expired = || RemoteError::new("snapshot_expired", "that snapshot is no longer held; fetch again");
    let Some((_, path, size)) = cache.filter(|(id, _, _)| *id == req.snapshot_id) else {
        return Err(expired());
    };
    let offset = req.offset.min(size);
    let want = u64::from(req.max_bytes.min(CHUNK_BYTES)).min(size - offset);
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut data = Vec::with_capacity(want as usize);
        f.take(want).read_to_end(&mut data)?;
        Ok(data)
    };
    // A newer snapshot may have replaced this one (its file is gone): the standby starts over.
    let data = read().map_err(|_| expired())?;
    let done = offset + data.len() as u64 >= size;
    Ok(SnapshotChunk { data, done })
}

async fn on_fence(core: &Arc<Core>, f: Fence) -> FenceReply {
    core.check_peer_id(&f.from);
    let mine = core.epoch();
    if f.epoch > mine {
        core.adopt_epoch(f.epoch, None, &f.from).await;
    } else if f.epoch == mine && !core.is_primary() {
        // The primary of our epoch is alive and says so: that is contact.
        *core.last_primary_contact.lock().unwrap() = Instant::now();
    }
    FenceReply { epoch: core.epoch(), primary: core.is_primary(), leader: core.leader.lock().unwrap().clone(), last_index: core.wal.last_index() }
}

async fn on_forward(core: &Arc<Core>, f: Forward) -> ForwardReply {
    core.adopt_epoch(f.epoch, None, PEER).await;
    // A forwarded write passes the same checks as one that came in over HTTP here: the
    // cluster port is not a way around the limits.
    if let Err(e) = f.command.validate(&core.cfg.limits) {
        return ForwardReply::Failed { code: e.code().into(), message: e.to_string(), leader: None };
    }
    let pipeline = match &*core.role.lock().unwrap() {
        Role::Primary { pipeline, .. } => Some(pipeline.clone()),
        _ => None,
    };
    let Some(pipeline) = pipeline else {
        return ForwardReply::Failed {
            code: "not_leader".into(),
            message: "this node is not the primary".into(),
            leader: core.leader.lock().unwrap().clone(),
        };
    };
    match pipeline.submit(f.command).await {
        Ok(c) => ForwardReply::Committed { result: c.result, bookmark_epoch: c.bookmark.epoch, bookmark_index: c.bookmark.index },
        Err(e) => {
            let (code, leader) = match &e {
                SubmitError::NotLeader { leader } => ("not_leader", leader.clone()),
                SubmitError::Fenced { leader, .. } => ("fenced", leader.clone()),
                SubmitError::Timeout(_) => ("timeout", None),
                SubmitError::ReadOnly(_) => ("read_only", None),
                SubmitError::Unavailable(_) => ("unavailable", None),
            };
            ForwardReply::Failed { code: code.into(), message: e.to_string(), leader }
        }
    }
}

fn on_ack(core: &Arc<Core>, a: Ack) {
    if a.epoch != core.epoch() {
        return;
    }
    if let Some(gate) = core.gate() {
        gate.update(a.positions);
        core.standby_seen(a.positions);
    }
}

/// What the standby and the witness answered when this primary asserted `epoch`.
pub(crate) struct Assertion {
    pub sent: Instant,
    pub peer: Option<FenceReply>,
    pub witness: Option<WitnessReply>,
}

/// Asserts `epoch` to the standby (`FENCE`) and renews the lease with the witness, in
/// parallel, each bounded by one heartbeat interval: the heartbeat, and the confirmation
/// a linearizable read needs (`read_index`).
impl Core {
    /// Whether this primary's standby is recorded in sync: persisted here and the gate
    /// agreeing. Always true in `async`, where there is nothing to be in sync with.
    pub(crate) fn standby_in_sync(&self) -> bool {
        if self.cfg.sync_mode == SyncMode::Async {
            return true;
        }
        self.persisted.lock().unwrap().peer_in_sync && self.gate().is_some_and(|g| g.in_sync() && !g.wants_solo())
    }

    /// Records the standby out of sync, then lets the gate acknowledge alone. With a witness
    /// the record is at the witness (which then refuses the standby's vote) — if it cannot
    /// be made there, nothing is acknowledged alone.
    async fn record_out_of_sync(self: &Arc<Self>, why: &str) -> Result<(), String> {
        let Some(gate) = self.gate() else { return Err("not the primary".into()) };
        let epoch = self.epoch();
        if self.cfg.witness_addr.is_some() {
            let ping = encode(&WitnessPing { epoch, node_id: self.cfg.node_id.clone(), standby_in_sync: false, failover_timeout_ms: self.cfg.failover_timeout.as_millis() as u64 });
            let b = self
                .transport()
                .request(&WITNESS.to_string(), WITNESS_PING, ping, Some(self.cfg.heartbeat))
                .await
                .map_err(|e| format!("the witness cannot be reached to record the standby out of sync: {e}"))?;
            let r: WitnessReply = decode(&b)?;
            if !r.granted || r.epoch != epoch {
                return Err(format!("the witness did not record the standby out of sync: {}", r.reason));
            }
        }
        let mut p = self.persisted.lock().unwrap().clone();
        p.peer_in_sync = false;
        self.persist_epoch(epoch, p)?;
        gate.go_solo(why);
        Ok(())
    }
}

/// `POST /admin/standby/release` on the primary: the operator lets it go on alone.
pub(crate) async fn release_standby(core: &Arc<Core>) -> Result<serde_json::Value, AdminError> {
    if !core.is_primary() {
        return Err(AdminError::Rejected("run this on the primary".into()));
    }
    core.record_out_of_sync("released by the operator").await.map_err(AdminError::Unavailable)?;
    warn!("the operator released the standby: this primary acknowledges alone until the standby has caught up; the standby may not promote itself meanwhile");
    Ok(serde_json::json!({"released": true, "epoch": core.epoch()}))
}

pub(crate) async fn assert_epoch(core: &Arc<Core>, epoch: u64) -> Assertion {
    let t = core.transport();
    let hb = core.cfg.heartbeat;
    let sent = Instant::now();
    let fence = encode(&Fence { epoch, from: core.cfg.node_id.clone() });
    let (peer_id, witness_id) = (PEER.to_string(), WITNESS.to_string());
    let peer = t.request(&peer_id, FENCE, fence, Some(hb));
    let witness = async {
        match &core.cfg.witness_addr {
            Some(_) => {
                let ping = encode(&WitnessPing { epoch, node_id: core.cfg.node_id.clone(), standby_in_sync: core.standby_in_sync(), failover_timeout_ms: core.cfg.failover_timeout.as_millis() as u64 });
                Some(t.request(&witness_id, WITNESS_PING, ping, Some(hb)).await)
            }
            None => None,
        }
    };
    let (peer, witness) = tokio::join!(peer, witness);
    Assertion {
        sent,
        peer: peer.ok().and_then(|b| decode::<FenceReply>(&b).ok()),
        witness: witness.and_then(|r| r.ok()).and_then(|b| decode::<WitnessReply>(&b).ok()),
    }
}

/// One heartbeat round as primary: assert the epoch to the peer, renew the lease with the
/// witness, and stop acknowledging if neither could be reached for the lease period.
pub(crate) async fn tick(core: &Arc<Core>) {
    let epoch = core.epoch();
    let a = assert_epoch(core, epoch).await;
    let mut lease_from: Option<Instant> = None;
    if let Some(r) = a.peer {
        if r.epoch > epoch {
            core.adopt_epoch(r.epoch, r.leader, PEER).await;
            return;
        }
        *core.last_standby_contact.lock().unwrap() = Some(a.sent);
        if r.epoch == epoch && !r.primary {
            lease_from = lease_from.max(Some(a.sent));
        }
    }
    if let Some(r) = a.witness {
        if r.epoch > epoch {
            warn!(witness_epoch = r.epoch, "the witness knows a higher epoch: {}", r.reason);
            core.adopt_epoch(r.epoch, None, WITNESS).await;
            return;
        }
        if r.granted {
            *core.last_witness_contact.lock().unwrap() = Some(a.sent);
            lease_from = lease_from.max(Some(a.sent));
        } else {
            // E.g. a different failover timeout: say why, but not every heartbeat.
            static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
            let mut last = LAST.lock().unwrap();
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                warn!("the witness refused this primary's ping: {}", r.reason);
                *last = Some(Instant::now());
            }
        }
    }
    // Writes have waited the sync timeout for the standby: record it out of sync (at the
    // witness) before acknowledging alone.
    if let Some(gate) = core.gate().filter(|g| g.wants_solo()) {
        match core.record_out_of_sync("it did not confirm within the sync timeout; recorded at the witness").await {
            Ok(()) => {}
            Err(e) => {
                let _ = gate;
                warn!("writes stay blocked: {e}");
            }
        }
    }
    // The lease runs from when this round's confirmed exchange was *sent*: the standby or
    // the witness confirmed no newer primary existed at some moment after that. A fetch that
    // merely arrived (it may have been sent long ago, before the standby gave up on this
    // node) proves nothing and never extends the lease.
    if core.cfg.witness_addr.is_some() {
        if let (Some(gate), Some(from)) = (core.gate(), lease_from) {
            gate.extend_lease(from + core.lease());
        }
    }
}

/// A planned role swap with zero loss: stop taking writes, let queued ones commit, wait for
/// the standby to have everything, have it promote, then follow it.
///
/// Bounded (30 s for the standby to catch up, 10 s for its promotion) and safe to cancel:
/// it runs in its own task, so a dropped HTTP request cannot leave the node `Switching`.
/// The transition lock is held only to change roles, so a FENCE arriving meanwhile is
/// handled at once; the switchover then ends without restoring this node as primary.
pub(crate) async fn switchover(core: &Arc<Core>) -> Result<serde_json::Value, AdminError> {
    let c = core.clone();
    tokio::spawn(async move { switchover_task(&c).await })
        .await
        .map_err(|e| AdminError::Unavailable(format!("the switchover failed: {e}")))?
}

async fn switchover_task(core: &Arc<Core>) -> Result<serde_json::Value, AdminError> {
    if !core.is_primary() {
        // Run it on the primary.
        let t = core.transport();
        let b = t
            .request(&PEER.to_string(), SWITCHOVER, Bytes::new(), Some(Duration::from_secs(60)))
            .await
            .map_err(|e| AdminError::Unavailable(format!("cannot reach the primary: {e}")))?;
        return serde_json::from_slice(&b).map_err(|e| AdminError::Unavailable(e.to_string()));
    }
    let (pipeline, gate, epoch) = {
        let _t = core.transition.lock().await;
        let old = std::mem::replace(&mut *core.role.lock().unwrap(), Role::Standby);
        let Role::Primary { pipeline, gate } = old else {
            *core.role.lock().unwrap() = old;
            return Err(AdminError::Rejected("not the primary".into()));
        };
        if let Some(e) = crate::pipeline::CommitGate::refusal(&*gate) {
            *core.role.lock().unwrap() = Role::Primary { pipeline, gate };
            return Err(AdminError::Unavailable(format!("no switchover now: {e}")));
        }
        *core.role.lock().unwrap() = Role::Switching { gate: gate.clone() };
        core.note("switching");
        (pipeline, gate, core.epoch())
    };
    let _ = tokio::task::spawn_blocking(move || pipeline.stop_blocking()).await;
    let last = core.wal.last_index();
    let deadline = Instant::now() + Duration::from_secs(30);
    while core.standby_positions.lock().unwrap().flushed < last {
        if Instant::now() > deadline {
            return restore_after_switchover(core, epoch, format!("the standby did not catch up to index {last} within 30s")).await;
        }
        if !matches!(*core.role.lock().unwrap(), Role::Switching { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let req = encode(&Promote { epoch, last_index: last });
    let reply = core.transport().request(&PEER.to_string(), PROMOTE, req, Some(Duration::from_secs(10))).await;
    let reply = match reply.map_err(|e| e.to_string()).and_then(|b| decode::<PromoteReply>(&b)) {
        Ok(r) if r.epoch > epoch => r,
        Ok(r) => return restore_after_switchover(core, epoch, format!("the standby answered epoch {}", r.epoch)).await,
        Err(e) => return restore_after_switchover(core, epoch, format!("the standby did not promote: {e}")).await,
    };
    if let Err(e) = super::epoch::check_raise(epoch, reply.epoch, core.tag) {
        return restore_after_switchover(core, epoch, format!("the standby answered an epoch this node cannot adopt: {e}")).await;
    }
    drop(gate);
    let _t = core.transition.lock().await;
    if core.epoch() >= reply.epoch {
        // Already adopted (the new primary's fence arrived first).
        return Ok(serde_json::json!({"switched": true, "epoch": reply.epoch, "new_primary": reply.leader, "last_index": last}));
    }
    // Follow the new primary: persist its epoch, never take another write in ours. This node
    // has every write of the old epoch, and the new primary waits for it: in sync.
    *core.role.lock().unwrap() = Role::Standby;
    let mut p = core.persisted.lock().unwrap().clone();
    p.owner = false;
    p.in_sync = true;
    p.peer_in_sync = false;
    if let Err(e) = core.persist_epoch(reply.epoch, p) {
        return Err(AdminError::Unavailable(e));
    }
    *core.leader.lock().unwrap() = Some(reply.leader.clone());
    *core.last_primary_contact.lock().unwrap() = Instant::now();
    core.leader_changes.fetch_add(1, Ordering::Relaxed);
    core.note("standby");
    info!(new_epoch = reply.epoch, new_primary = %reply.leader.node_id, last_index = last, "switchover complete; following the new primary");
    Ok(serde_json::json!({"switched": true, "epoch": reply.epoch, "new_primary": reply.leader, "last_index": last}))
}

/// A switchover that did not happen: take writes again in `epoch` — unless a higher epoch
/// appeared meanwhile (a FENCE), in which case this node stays the standby it became.
async fn restore_after_switchover(core: &Arc<Core>, epoch: u64, why: String) -> Result<serde_json::Value, AdminError> {
    let _t = core.transition.lock().await;
    if core.epoch() != epoch || !matches!(*core.role.lock().unwrap(), Role::Switching { .. }) {
        warn!("switchover aborted: {why}; a newer epoch appeared meanwhile, so this node follows it");
        return Err(AdminError::Unavailable(format!("{why}; this node was fenced meanwhile and follows the new primary")));
    }
    warn!("switchover aborted: {why}; staying primary");
    // No lease from a restore: the next heartbeat round must earn it.
    let (pipeline, gate) = core.start_pipeline(epoch, false);
    *core.role.lock().unwrap() = Role::Primary { pipeline, gate };
    core.note("primary");
    Err(AdminError::Unavailable(why))
}
