//! The replication stream, both ends: the primary serves fetches (records from its tail or
//! its WAL, divergence and snapshot answers, the standby's positions into the sync gate);
//! the standby fetches, appends, applies in the background, acknowledges, and sets a
//! divergent tail aside. Together with `gate` this file answers "when does a write commit?".

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_wal::Record;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::messages::*;
use super::{Core, PEER};
use crate::payload::LogPayload;
use crate::state_machine::LogEntry;
use crate::transport::TransportError;
use super::snapshot_transfer::{prepare_snapshot, fetch_and_install_snapshot};

/// Biggest WAL read per fetch answer, so one answer stays well under the frame limit.
pub(super) const MAX_FETCH_BYTES: usize = 8 << 20;

impl Core {
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
        *self.primary.last_standby_contact.lock().unwrap() = Some(Instant::now());
        let mut sp = self.primary.standby_positions.lock().unwrap();
        sp.received = sp.received.max(p.received);
        sp.flushed = sp.flushed.max(p.flushed);
        sp.applied = sp.applied.max(p.applied);
    }
}

pub(super) async fn serve_fetch(core: &Arc<Core>, f: Fetch) -> FetchReply {
    core.check_peer_id(&f.node_id);
    core.remember_peer_http(&f.node_id, f.http_addr.as_ref());
    core.check_peer_failover_timeout(f.failover_timeout_ms);
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
            let theirs = super::epochs::EpochHistory { starts: f.history.clone() };
            let mut after = history.agreed_until(f.prev_epoch, prev.min(my_last));
            if !theirs.starts.is_empty() {
                after = after.min(history.fork_point(&theirs, prev.min(my_last)));
            }
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
        *core.primary.standby_positions.lock().unwrap() = p;
    } else {
        gate.update(p);
    }
    core.standby_seen(p);

    if f.want_snapshot || f.from < core.wal.first_index() {
        return match prepare_snapshot(core).await {
            Ok((snapshot_id, size, image)) => {
                let history = core.persisted.lock().unwrap().history.up_to(snapshot_id).starts;
                FetchReply::NeedSnapshot { epoch, snapshot_id, size, image, leader, history }
            }
            Err(e) => {
                warn!("cannot prepare a snapshot for the standby: {e}");
                FetchReply::Records { epoch, records: vec![], commit_index: *core.applied_tx.borrow(), last_index: my_last, leader, ack_received: false, ack_applied: false, in_sync: false, durable_index: core.wal.durable_index() }
            }
        };
    }
    // Long poll: answer as soon as there is something to send, else after wait_ms. Fresh
    // records come from the in-memory tail, before they are durable here, so the standby's
    // fsync overlaps ours; older ones are read from the WAL (durable records only).
    let wait = Duration::from_millis(f.wait_ms.min(10_000));
    let max = (f.max_records.max(1) as usize).min(100_000);
    let from = f.from;
    let tail = core.primary.tail.lock().unwrap().clone();
    // A standby holding records above what it knows is durable here waits to apply them:
    // answer as soon as this node's durable index passes what it knows, too.
    let known = f.agreed;
    let holds = f.positions.received > known;
    let mut durable = core.wal.subscribe_durable();
    let newly_durable = async move {
        if holds {
            let _ = durable.wait_for(|d| *d > known).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let records = match tail {
        Some(tail) => {
            let mut last = tail.subscribe();
            let _ = tokio::time::timeout(wait, async {
                tokio::select! {
                    _ = last.wait_for(|l| *l >= from) => {}
                    _ = newly_durable => {}
                }
            })
            .await;
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
    // The long poll may outlast this node's time as primary: its mode stopped on a storage
    // failure while the node stays up to rejoin, or a newer epoch fenced it. Then it answers
    // as what it is. Answering as a primary would say `in_sync: false` (it has no gate any
    // more), the standby would record itself out of sync and refuse to take over — and the
    // pair would have no primary. `in_sync` is what this primary's own gate records.
    if !core.gate().is_some_and(|g| Arc::ptr_eq(&g, &gate)) {
        return core.not_primary();
    }
    let in_sync = core.standby_in_sync_at(&gate);
    let durable_index = core.wal.durable_index();
    FetchReply::Records { epoch, records, commit_index: *core.applied_tx.borrow(), last_index: core.wal.last_index(), leader, ack_received, ack_applied, in_sync, durable_index }
}

pub(super) fn on_ack(core: &Arc<Core>, a: Ack) {
    if a.epoch != core.epoch() {
        return;
    }
    if let Some(gate) = core.gate() {
        gate.update(a.positions);
        core.standby_seen(a.positions);
    }
}

pub(super) fn last_record_epoch(core: &Core) -> u64 {
    let last = core.wal.last_index();
    if last >= core.wal.first_index() && last > 0 {
        if let Ok(r) = core.wal.read_from(last, 1, 0) {
            if let Some(r) = r.first() {
                return r.epoch;
            }
        }
    }
    core.persisted.lock().unwrap().history.epoch_at(last)
}

pub(super) fn positions(core: &Core) -> Positions {
    Positions { received: core.wal.last_index(), flushed: core.wal.durable_index(), applied: core.sm.applied_index() }
}

pub(super) async fn send_ack(core: &Arc<Core>, p: Positions) {
    let ack = encode(&Ack { epoch: core.epoch(), node_id: core.cfg.node_id.clone(), positions: p });
    let _ = core.transport().send(&PEER.to_string(), ACK, ack).await;
}

pub(super) async fn follow_step(core: &Arc<Core>) {
    let fetch = Fetch {
        epoch: core.epoch(),
        node_id: core.cfg.node_id.clone(),
        from: core.wal.last_index() + 1,
        prev_epoch: last_record_epoch(core),
        positions: positions(core),
        // Right after a snapshot install the standby asks not to be held in the long poll: it
        // learns at once whether it is level with the primary (and streams), instead of a
        // heartbeat later. The reply changes the note, so only that one fetch goes unheld.
        wait_ms: if *core.state_note.lock().unwrap() == "snapshot" { 0 } else { core.cfg.heartbeat.as_millis() as u64 },
        max_records: core.cfg.batch_records as u32,
        http_addr: core.cfg.http_addr.clone(),
        want_snapshot: core.standby.want_snapshot.load(Ordering::SeqCst),
        agreed: core.standby.agreed.load(Ordering::SeqCst),
        failover_timeout_ms: core.cfg.failover_timeout.as_millis() as u64,
        history: {
            let starts = &core.persisted.lock().unwrap().history.starts;
            starts[starts.len().saturating_sub(64)..].to_vec()
        },
    };
    let deadline = core.cfg.heartbeat * 2 + Duration::from_secs(1);
    let reply = core.transport().request(&PEER.to_string(), FETCH, encode(&fetch), Some(deadline)).await;
    let reply = match reply {
        Ok(b) => match decode::<FetchReply>(&b) {
            Ok(r) => r,
            Err(e) => {
                warn!("{e}");
                return;
            }
        },
        Err(e) => {
            if !matches!(e, TransportError::Timeout { .. }) {
                debug!("fetch failed: {e}");
            }
            core.note("disconnected");
            tokio::time::sleep(core.cfg.heartbeat.min(Duration::from_millis(200))).await;
            return;
        }
    };
    match reply {
        FetchReply::Records { epoch, records, commit_index, last_index, leader, ack_received, ack_applied, in_sync, durable_index } => {
            if epoch < core.epoch() {
                // A stale primary: tell it, and do not take its records.
                let f = encode(&Fence { epoch: core.epoch(), from: core.cfg.node_id.clone() });
                let _ = core.transport().request(&PEER.to_string(), FENCE, f, Some(core.cfg.heartbeat)).await;
                return;
            }
            core.check_peer_id(&leader.node_id);
            if epoch > core.epoch() && !core.adopt_epoch(epoch, Some(leader.clone()), PEER).await {
                return;
            }
            if let Some(r) = records.iter().find(|r| r.epoch > epoch) {
                warn!(index = r.index, "the primary sent a record of an epoch above its own; batch refused");
                return;
            }
            *core.standby.last_primary_contact.lock().unwrap() = Instant::now();
            core.remember_peer_http(&leader.node_id, leader.http_addr.as_ref());
            *core.leader.lock().unwrap() = Some(leader);
            core.standby.primary_last_index.store(last_index, Ordering::Relaxed);
            core.standby.primary_commit_index.store(commit_index, Ordering::Relaxed);
            if let Err(e) = set_in_sync(core, in_sync) {
                warn!("{e}");
                return;
            }
            // Agreed up to the primary's durable index — but only over records this node's log
            // shares with it (the fetch's prefix check), i.e. up to what it stores.
            let stored = records.last().map_or(core.wal.last_index(), |r| r.index);
            core.standby.agreed.fetch_max(durable_index.min(stored), Ordering::SeqCst);
            if records.is_empty() {
                if let Err(e) = release_agreed(core, ack_applied).await {
                    warn!("standby cannot apply records: {e}");
                }
                core.note(if core.sm.applied_index() >= last_index { "streaming" } else { "catching_up" });
                core.standby.catch_up.lock().unwrap().observe(core.sm.applied_index(), last_index);
                return;
            }
            if let Err(e) = append_and_apply(core, records, ack_received, ack_applied).await {
                warn!("standby cannot store records: {e}");
                core.note("failed");
                tokio::time::sleep(core.cfg.heartbeat).await;
                return;
            }
            core.note(if core.sm.applied_index() >= last_index { "streaming" } else { "catching_up" });
            core.standby.catch_up.lock().unwrap().observe(core.sm.applied_index(), last_index);
        }
        FetchReply::Diverged { epoch, after, leader } => {
            if epoch < core.epoch() {
                return;
            }
            *core.standby.last_primary_contact.lock().unwrap() = Instant::now();
            *core.leader.lock().unwrap() = Some(leader);
            if let Err(e) = set_in_sync(core, false) {
                warn!("{e}");
                return;
            }
            if let Err(e) = set_aside_divergent(core, after).await {
                warn!("cannot set the divergent tail aside: {e}");
                tokio::time::sleep(core.cfg.heartbeat).await;
            }
        }
        FetchReply::NeedSnapshot { epoch, snapshot_id, size, image, leader, history } => {
            if epoch < core.epoch() {
                return;
            }
            *core.leader.lock().unwrap() = Some(leader);
            if let Err(e) = set_in_sync(core, false) {
                warn!("{e}");
                return;
            }
            core.note("snapshot");
            // Background applies settle first (the snapshot replaces the state); the new
            // positions go to the primary at once after the install.
            super::standby_checkpoint::wait(core).await;
            let installed = match settle(core).await {
                Ok(()) => fetch_and_install_snapshot(core, snapshot_id, size, image, history).await,
                Err(e) => Err(e),
            };
            match installed {
                Ok(()) => send_ack(core, positions(core)).await,
                Err(e) => {
                    warn!("snapshot catch-up failed: {e}");
                    tokio::time::sleep(core.cfg.heartbeat).await;
                }
            }
        }
        FetchReply::NotPrimary { epoch, leader, last_index, node_id } => {
            core.check_peer_id(&node_id);
            if epoch > core.epoch() && !core.adopt_epoch(epoch, leader, PEER).await {
                return;
            }
            *core.standby.peer_standby.lock().unwrap() = Some((epoch, last_index, node_id, Instant::now()));
            core.note("no_primary");
            tokio::time::sleep(core.cfg.heartbeat / 2).await;
        }
    }
}

/// Persists what the primary recorded about this standby (see `gate`): whether it may
/// promote itself.
pub(super) fn set_in_sync(core: &Arc<Core>, in_sync: bool) -> Result<(), String> {
    let mut changed = false;
    core.update_persisted(0, |p, _| {
        changed = p.in_sync != in_sync;
        p.in_sync = in_sync;
        changed
    })?;
    if !changed {
        return Ok(());
    }
    if in_sync {
        info!("the primary recorded this standby in sync: it has every acknowledged write and may take over");
    } else {
        warn!("the primary recorded this standby out of sync: it does not promote itself until it has caught up");
    }
    Ok(())
}

/// Waits for the background apply of every batch handed to it; anything that rewinds the log or
/// the state, or promotes, settles first so the state machine matches the WAL.
pub(crate) async fn settle(core: &Arc<Core>) -> Result<(), String> {
    let pending = core.standby.applying.lock().await.take();
    match pending {
        Some(h) => h.await.map_err(|e| e.to_string())?,
        None => Ok(()),
    }
}

/// Appends a batch to the WAL, then applies it in the background so the next fetch overlaps
/// the apply. Positions normally ride on that next fetch (sent right after the fsync); a
/// separate ack goes out only where that would be late: receipt before the fsync
/// (`semi_sync`) and the apply when the primary waits for it (`remote_apply`).
pub(super) async fn append_and_apply(core: &Arc<Core>, records: Vec<WireRecord>, ack_received: bool, ack_applied: bool) -> Result<(), String> {
    let last = records.last().map_or(0, |r| r.index);
    if ack_received {
        // Receipt is what semi_sync waits for: say so before the fsync.
        send_ack(core, Positions { received: last, ..positions(core) }).await;
    }
    // A record of a newer epoch extends the history before it is stored.
    let highest = records.iter().map(|r| r.epoch).max().unwrap_or(0);
    core.update_persisted(highest, |p, _| {
        let mut changed = false;
        for r in &records {
            if p.history.starts.last().is_none_or(|(e, _)| *e < r.epoch) {
                p.history.begin(r.epoch, r.index);
                changed = true;
            }
        }
        changed
    })?;
    let mut entries = Vec::with_capacity(records.len());
    let mut wal_records = Vec::with_capacity(records.len());
    let mut bytes = 0;
    for r in records {
        let payload = LogPayload::decode(&r.payload).map_err(|e| format!("record {} does not decode: {e}", r.index))?;
        bytes += r.payload.len() + 32;
        entries.push(LogEntry::from_payload(r.index, r.epoch, payload));
        wal_records.push(Record { index: r.index, epoch: r.epoch, payload: r.payload });
    }
    core.wal.append(wal_records).await.map_err(|e| e.to_string())?;
    core.replication_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    core.standby.held.lock().unwrap().extend(entries);
    release_agreed(core, ack_applied).await
}

/// Hands the held records that are now agreed (at or below the primary's durable index) to
/// the background apply. The rest wait for a later fetch answer: a record the primary ships
/// but then fails to make durable is never applied here, so never shown.
pub(super) async fn release_agreed(core: &Arc<Core>, ack_applied: bool) -> Result<(), String> {
    let agreed = core.standby.agreed.load(Ordering::SeqCst);
    let entries: Vec<LogEntry> = {
        let mut held = core.standby.held.lock().unwrap();
        let n = held.partition_point(|e| e.index <= agreed);
        held.drain(..n).collect()
    };
    // Records logged before this run (start-up applies only what the state held) are read
    // back from the local WAL once agreed.
    let from_wal = agreed.min(core.wal.last_index());
    if entries.is_empty() && core.sm.applied_index() >= from_wal {
        return Ok(());
    }
    // Applies run one after another in the background, each after its predecessor, so the
    // next fetch (carrying the flushed position `sync` waits for) never waits for an apply.
    // A failed apply fails every later one (no entry is skipped) and surfaces here.
    let prev = {
        let mut slot = core.standby.applying.lock().await;
        if slot.as_ref().is_some_and(|h| h.is_finished()) || core.standby.apply_backlog.load(Ordering::SeqCst) >= MAX_APPLY_BACKLOG {
            drop(slot);
            settle(core).await?;
            None
        } else {
            slot.take()
        }
    };
    core.standby.apply_backlog.fetch_add(1, Ordering::SeqCst);
    let c = core.clone();
    let handle = tokio::spawn(async move {
        let result = apply_after(&c, prev, entries, ack_applied, from_wal).await;
        c.standby.apply_backlog.fetch_sub(1, Ordering::SeqCst);
        result
    });
    *core.standby.applying.lock().await = Some(handle);
    Ok(())
}

/// Batches applied in the background but not yet done, at most; then the standby waits.
pub(super) const MAX_APPLY_BACKLOG: usize = 4;

/// Applies `entries` after the batch before them; records between the state and the first
/// entry (or up to `from_wal` when there are none) come from the local WAL — they are agreed.
pub(super) async fn apply_after(
    core: &Arc<Core>,
    prev: Option<JoinHandle<Result<(), String>>>,
    entries: Vec<LogEntry>,
    ack_applied: bool,
    from_wal: u64,
) -> Result<(), String> {
    if let Some(prev) = prev {
        prev.await.map_err(|e| e.to_string())??;
    }
    let (sm, wal) = (core.sm.clone(), core.wal.clone());
    tokio::task::spawn_blocking(move || {
        // A former primary steps down with records in its log that it never applied (their
        // commit failed when it was fenced). The primary has just confirmed the log up to
        // this batch, so those records are agreed: apply them from the local WAL first.
        let target = entries.first().map_or(from_wal, |e| e.index - 1);
        if target > sm.applied_index() {
            let n = crate::recovery::replay_to(&wal, &*sm, target).map_err(|e| e.to_string())?;
            info!(records = n, "applied agreed records from the local WAL that were logged but not applied");
        }
        if entries.is_empty() {
            return Ok(());
        }
        sm.apply(&entries).map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    core.applied_tx.send_replace(core.sm.applied_index());
    if ack_applied {
        send_ack(core, positions(core)).await;
    }
    Ok(())
}

pub(super) async fn set_aside_divergent(core: &Arc<Core>, after: u64) -> Result<(), String> {
    settle(core).await?;
    super::standby_checkpoint::wait(core).await;
    // The tail is written (and fsynced) to `divergent/` *before* the log is truncated: a
    // crash or a failed write in between leaves the records in the WAL, to be set aside on
    // the next attempt — never in neither place.
    let (wal, dir) = (core.wal.clone(), core.cfg.data_dir.join("divergent"));
    let saved = tokio::task::spawn_blocking(move || -> Result<Option<super::divergent::DivergentTail>, String> {
        if wal.last_index() <= after {
            return Ok(None);
        }
        let tail = wal.read_from(after + 1, usize::MAX, usize::MAX).map_err(|e| e.to_string())?;
        let saved = if tail.is_empty() {
            None
        } else {
            Some(super::divergent::save(&dir, after, &tail).map_err(|e| format!("cannot write the divergent tail to {}: {e}; the WAL keeps it", dir.display()))?)
        };
        wal.truncate_after(after).map_err(|e| e.to_string())?;
        Ok(saved)
    })
    .await
    .map_err(|e| e.to_string())??;
    if let Some(tail) = saved {
        warn!(records = tail.records, after, file = %tail.file, "this node's log diverged from the primary's; its divergent tail was moved aside (not applied anywhere)");
        core.divergent.lock().unwrap().push(tail);
    }
    // Held records past the fork are gone with the tail; what is agreed cannot be past it.
    core.standby.held.lock().unwrap().retain(|e| e.index <= after);
    core.standby.agreed.fetch_min(after, Ordering::SeqCst);
    if core.sm.applied_index() > after {
        // The state already includes discarded records: it must be re-seeded.
        core.standby.want_snapshot.store(true, Ordering::SeqCst);
    }
    Ok(())
}
