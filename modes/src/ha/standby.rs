//! The standby's side: deciding the role at start, the fetch loop (append, apply, ack),
//! divergence and snapshot catch-up, failure detection and promotion, and forwarding writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_wal::Record;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::messages::*;
use super::{ConfiguredRole, Core, Promotion, Role, PEER, WITNESS};
use crate::bookmark::Bookmark;
use crate::command::Command;
use crate::replicator::{AdminError, Committed, LeaderHint, SubmitError};
use crate::state_machine::{install_snapshot, LogEntry};
use crate::transport::TransportError;

/// The node's main loop: one heartbeat round as primary, or one fetch round as standby.
pub(crate) async fn drive(core: Arc<Core>) {
    decide_role(&core).await;
    let mut last_checkpoint = Instant::now();
    while !core.stopping.load(Ordering::SeqCst) {
        let primary = matches!(*core.role.lock().unwrap(), Role::Primary { .. });
        let switching = matches!(*core.role.lock().unwrap(), Role::Switching { .. });
        if primary {
            let start = Instant::now();
            super::primary::tick(&core).await;
            tokio::time::sleep(core.cfg.heartbeat.saturating_sub(start.elapsed()).max(Duration::from_millis(10))).await;
        } else if switching {
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            follow_step(&core).await;
            if last_checkpoint.elapsed() >= core.cfg.checkpoint_interval {
                checkpoint(&core).await;
                last_checkpoint = Instant::now();
            }
            let silent = core.last_primary_contact.lock().unwrap().elapsed();
            if core.cfg.auto_failover && silent >= core.cfg.failover_timeout && !core.is_primary() {
                warn!(silent_s = silent.as_secs_f64(), "the primary has been silent for the failover timeout; trying to take over");
                if let Err(why) = try_promote(&core, false, Promotion::Takeover).await {
                    info!("not promoting: {why}");
                    // Do not hammer the witness; the next attempt comes a heartbeat later.
                    tokio::time::sleep(core.cfg.heartbeat).await;
                }
            }
        }
    }
}

async fn checkpoint(core: &Arc<Core>) {
    let (sm, wal, retention) = (core.sm.clone(), core.wal.clone(), core.cfg.wal_retention);
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(durable) = sm.checkpoint() {
            // A standby keeps some WAL too: if it is promoted, the old primary may need it.
            let _ = wal.purge_before((durable + 1).saturating_sub(retention).max(wal.first_index()));
        }
    })
    .await;
}

/// What the peer says about itself when probed with our epoch. Start-up is not latency
/// critical, and a probe that times out on a busy machine would let a deposed primary
/// resume, so the probe waits generously.
async fn probe(core: &Arc<Core>) -> Option<FenceReply> {
    let req = encode(&Fence { epoch: core.epoch(), from: core.cfg.node_id.clone() });
    let wait = (core.cfg.heartbeat * 2).max(Duration::from_secs(2));
    let b = core.transport().request(&PEER.to_string(), FENCE, req, Some(wait)).await.ok()?;
    decode(&b).ok()
}

/// Chooses the starting role from what was persisted and what the peer says — not only from
/// `HA_ROLE`, so a former primary restarted with `HA_ROLE=primary` never takes a write.
async fn decide_role(core: &Arc<Core>) {
    let configured = core.cfg.role;
    let mut peer = None;
    for _ in 0..3 {
        if let Some(r) = probe(core).await {
            peer = Some(r);
            break;
        }
        // A refused connection fails at once: give a peer that is starting too a moment.
        tokio::time::sleep(core.cfg.heartbeat.max(Duration::from_millis(300))).await;
    }
    let epoch = core.epoch();
    let owner = core.persisted.lock().unwrap().owner;
    let say = |found: &str| {
        let as_role = if found == "primary" { ConfiguredRole::Primary } else { ConfiguredRole::Standby };
        if as_role != configured {
            warn!(configured = ?configured, "configured HA_ROLE disagrees with what this node found: {found}");
        }
    };
    // A peer that answers with an epoch this node may not adopt is treated as unreachable.
    if let Some(p) = peer.as_ref().filter(|p| p.epoch > epoch) {
        if !core.adopt_epoch(p.epoch, p.leader.clone(), PEER).await {
            peer = None;
        }
    }
    match peer {
        Some(p) if p.epoch > epoch || (p.epoch == epoch && p.primary) => {
            say("standby: the peer is primary");
            info!(epoch = p.epoch, "following the peer as standby");
            *core.leader.lock().unwrap() = p.leader;
        }
        // The primary streams records before they are durable on it, so after a crash its
        // standby may hold records it lost. Resuming as primary would make the standby set
        // them aside although it has applied (and shown) them; the standby takes over
        // instead, with its longer log, and this node follows it.
        Some(p) if owner && epoch > 0 && p.epoch == epoch && !p.primary && p.last_index > core.wal.last_index() => {
            say("standby: the peer holds records this node lost");
            warn!(
                epoch,
                last_index = core.wal.last_index(),
                standby_last_index = p.last_index,
                "this node was the primary, but its standby holds records this node lost in a crash; it stays standby: the peer takes over after MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT (or POST /admin/promote on it) and this node follows"
            );
        }
        // Resuming is a promotion like any other: a new epoch (never the old one: records
        // this node lost in a crash may live on at the standby under the old epoch, and a
        // new record at the same index must not look like them), and the witness's vote.
        _ if owner && epoch > 0 => {
            say("primary: this node is the primary of the latest epoch it knows");
            match try_promote(core, true, Promotion::Resume).await {
                Ok(e) => info!(epoch = %super::epoch::display(e), "resumed as primary in a new epoch"),
                Err(e) => warn!("not resuming as primary: {e}"),
            }
        }
        _ if configured == ConfiguredRole::Primary && epoch == 0 => {
            if let Err(e) = try_promote(core, true, Promotion::Takeover).await {
                warn!("not starting as primary: {e}");
            }
        }
        _ if configured == ConfiguredRole::Primary => {
            warn!(epoch, "configured HA_ROLE=primary, but this node was deposed in epoch {epoch}; it stays standby until it finds the primary (POST /admin/promote to take over)");
        }
        _ => info!(epoch, "starting as standby"),
    }
    if !core.is_primary() {
        core.note("connecting");
        *core.last_primary_contact.lock().unwrap() = Instant::now();
    }
}

fn last_record_epoch(core: &Core) -> u64 {
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

fn positions(core: &Core) -> Positions {
    Positions { received: core.wal.last_index(), flushed: core.wal.durable_index(), applied: core.sm.applied_index() }
}

async fn send_ack(core: &Arc<Core>, p: Positions) {
    let ack = encode(&Ack { epoch: core.epoch(), node_id: core.cfg.node_id.clone(), positions: p });
    let _ = core.transport().send(&PEER.to_string(), ACK, ack).await;
}

async fn follow_step(core: &Arc<Core>) {
    let fetch = Fetch {
        epoch: core.epoch(),
        node_id: core.cfg.node_id.clone(),
        from: core.wal.last_index() + 1,
        prev_epoch: last_record_epoch(core),
        positions: positions(core),
        wait_ms: core.cfg.heartbeat.as_millis() as u64,
        max_records: core.cfg.batch_records as u32,
        http_addr: core.cfg.http_addr.clone(),
        want_snapshot: core.want_snapshot.load(Ordering::SeqCst),
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
        FetchReply::Records { epoch, records, commit_index, last_index, leader, ack_received, ack_applied, in_sync } => {
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
            *core.last_primary_contact.lock().unwrap() = Instant::now();
            *core.leader.lock().unwrap() = Some(leader);
            core.primary_last_index.store(last_index, Ordering::Relaxed);
            core.primary_commit_index.store(commit_index, Ordering::Relaxed);
            if let Err(e) = set_in_sync(core, in_sync) {
                warn!("{e}");
                return;
            }
            if records.is_empty() {
                core.note(if core.sm.applied_index() >= last_index { "streaming" } else { "catching_up" });
                return;
            }
            if let Err(e) = append_and_apply(core, records, ack_received, ack_applied).await {
                warn!("standby cannot store records: {e}");
                core.note("failed");
                tokio::time::sleep(core.cfg.heartbeat).await;
                return;
            }
            core.note(if core.sm.applied_index() >= last_index { "streaming" } else { "catching_up" });
        }
        FetchReply::Diverged { epoch, after, leader } => {
            if epoch < core.epoch() {
                return;
            }
            *core.last_primary_contact.lock().unwrap() = Instant::now();
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
        FetchReply::NeedSnapshot { epoch, snapshot_id, size, leader } => {
            if epoch < core.epoch() {
                return;
            }
            *core.leader.lock().unwrap() = Some(leader);
            if let Err(e) = set_in_sync(core, false) {
                warn!("{e}");
                return;
            }
            core.note("snapshot");
            if let Err(e) = fetch_and_install_snapshot(core, snapshot_id, size).await {
                warn!("snapshot catch-up failed: {e}");
                tokio::time::sleep(core.cfg.heartbeat).await;
            }
        }
        FetchReply::NotPrimary { epoch, leader, last_index, node_id } => {
            core.check_peer_id(&node_id);
            if epoch > core.epoch() && !core.adopt_epoch(epoch, leader, PEER).await {
                return;
            }
            *core.peer_standby.lock().unwrap() = Some((epoch, last_index, node_id, Instant::now()));
            core.note("no_primary");
            tokio::time::sleep(core.cfg.heartbeat / 2).await;
        }
    }
}

/// Persists what the primary recorded about this standby (see `gate`): whether it may
/// promote itself.
fn set_in_sync(core: &Arc<Core>, in_sync: bool) -> Result<(), String> {
    let mut p = core.persisted.lock().unwrap().clone();
    if p.in_sync == in_sync {
        return Ok(());
    }
    p.in_sync = in_sync;
    core.persist_epoch(core.epoch(), p)?;
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
    let pending = core.applying.lock().await.take();
    match pending {
        Some(h) => h.await.map_err(|e| e.to_string())?,
        None => Ok(()),
    }
}

/// Appends a batch to the WAL, then applies it in the background so the next fetch overlaps
/// the apply. Positions normally ride on that next fetch (sent right after the fsync); a
/// separate ack goes out only where that would be late: receipt before the fsync
/// (`semi_sync`) and the apply when the primary waits for it (`remote_apply`).
async fn append_and_apply(core: &Arc<Core>, records: Vec<WireRecord>, ack_received: bool, ack_applied: bool) -> Result<(), String> {
    let last = records.last().map_or(0, |r| r.index);
    if ack_received {
        // Receipt is what semi_sync waits for: say so before the fsync.
        send_ack(core, Positions { received: last, ..positions(core) }).await;
    }
    // A record of a newer epoch extends the history before it is stored.
    let newest = core.persisted.lock().unwrap().history.starts.last().map_or(0, |(e, _)| *e);
    let mut hist_changed = false;
    let mut p = core.persisted.lock().unwrap().clone();
    for r in &records {
        if r.epoch > newest && p.history.starts.last().is_none_or(|(e, _)| *e < r.epoch) {
            p.history.begin(r.epoch, r.index);
            hist_changed = true;
        }
    }
    if hist_changed {
        let epoch = core.epoch().max(p.history.starts.last().map_or(0, |(e, _)| *e));
        core.persist_epoch(epoch, p)?;
    }
    let mut entries = Vec::with_capacity(records.len());
    let mut wal_records = Vec::with_capacity(records.len());
    let mut bytes = 0;
    for r in records {
        let command = Command::decode(&r.payload).map_err(|e| format!("record {} does not decode: {e}", r.index))?;
        bytes += r.payload.len() + 32;
        entries.push(LogEntry { index: r.index, epoch: r.epoch, command });
        wal_records.push(Record { index: r.index, epoch: r.epoch, payload: r.payload });
    }
    core.wal.append(wal_records).await.map_err(|e| e.to_string())?;
    core.replication_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    // Applies run one after another in the background, each after its predecessor, so the
    // next fetch (carrying the flushed position `sync` waits for) never waits for an apply.
    // A failed apply fails every later one (no entry is skipped) and surfaces here.
    let prev = {
        let mut slot = core.applying.lock().await;
        if slot.as_ref().is_some_and(|h| h.is_finished()) || core.apply_backlog.load(Ordering::SeqCst) >= MAX_APPLY_BACKLOG {
            drop(slot);
            settle(core).await?;
            None
        } else {
            slot.take()
        }
    };
    core.apply_backlog.fetch_add(1, Ordering::SeqCst);
    let c = core.clone();
    let handle = tokio::spawn(async move {
        let result = apply_after(&c, prev, entries, ack_applied).await;
        c.apply_backlog.fetch_sub(1, Ordering::SeqCst);
        result
    });
    *core.applying.lock().await = Some(handle);
    Ok(())
}

/// Batches applied in the background but not yet done, at most; then the standby waits.
const MAX_APPLY_BACKLOG: usize = 4;

async fn apply_after(core: &Arc<Core>, prev: Option<JoinHandle<Result<(), String>>>, entries: Vec<LogEntry>, ack_applied: bool) -> Result<(), String> {
    if let Some(prev) = prev {
        prev.await.map_err(|e| e.to_string())??;
    }
    let (sm, wal) = (core.sm.clone(), core.wal.clone());
    tokio::task::spawn_blocking(move || {
        // A former primary steps down with records in its log that it never applied (their
        // commit failed when it was fenced). The primary has just confirmed the log up to
        // this batch, so those records are agreed: apply them from the local WAL first.
        if entries.first().is_some_and(|e| e.index > sm.applied_index() + 1) {
            let n = crate::recovery::replay(&wal, &*sm).map_err(|e| e.to_string())?;
            info!(records = n, "applied agreed records from the local WAL that were logged but not applied");
        }
        sm.apply(&entries).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    core.applied_tx.send_replace(core.sm.applied_index());
    if ack_applied {
        send_ack(core, positions(core)).await;
    }
    Ok(())
}

async fn set_aside_divergent(core: &Arc<Core>, after: u64) -> Result<(), String> {
    settle(core).await?;
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
    if core.sm.applied_index() > after {
        // The state already includes discarded records: it must be re-seeded.
        core.want_snapshot.store(true, Ordering::SeqCst);
    }
    Ok(())
}

async fn fetch_and_install_snapshot(core: &Arc<Core>, id: u64, size: u64) -> Result<(), String> {
    settle(core).await?;
    // Streamed to a file, then installed from it: the state is never whole in memory.
    let dir = super::primary::snapshot_dir(core);
    let path = dir.join("incoming.snap");
    let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    tokio::fs::create_dir_all(&dir).await.map_err(|e| io("cannot create the directory of", e))?;
    let mut file = tokio::fs::File::create(&path).await.map_err(|e| io("cannot create", e))?;
    let mut offset = 0u64;
    loop {
        let req = encode(&SnapshotChunkReq { snapshot_id: id, offset, max_bytes: 4 << 20 });
        let b = core
            .transport()
            .request(&PEER.to_string(), SNAPSHOT_CHUNK, req, Some(Duration::from_secs(30)))
            .await
            .map_err(|e| e.to_string())?;
        let chunk: SnapshotChunk = decode(&b)?;
        file.write_all(&chunk.data).await.map_err(|e| io("cannot write", e))?;
        offset += chunk.data.len() as u64;
        *core.last_primary_contact.lock().unwrap() = Instant::now();
        if chunk.done {
            break;
        }
        if chunk.data.is_empty() {
            return Err("empty snapshot chunk".into());
        }
    }
    file.flush().await.map_err(|e| io("cannot write", e))?;
    drop(file);
    if offset != size {
        warn!(expected = size, got = offset, "the snapshot's size differs from what the primary announced");
    }
    let (sm, wal) = (core.sm.clone(), core.wal.clone());
    let meta = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let f = std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta = install_snapshot(&*sm, std::io::BufReader::new(f)).map_err(|e| e.to_string())?;
        wal.reset_to(meta.applied_index + 1).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&path);
        Ok(meta)
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut p = core.persisted.lock().unwrap().clone();
    p.history.begin(meta.epoch, meta.applied_index);
    core.persist_epoch(core.epoch().max(meta.epoch), p)?;
    core.want_snapshot.store(false, Ordering::SeqCst);
    core.applied_tx.send_replace(meta.applied_index);
    // The primary was heard from just before the install; the install's own duration (seconds
    // for a large state) is not the primary's silence and must not trigger a failover.
    *core.last_primary_contact.lock().unwrap() = Instant::now();
    info!(index = meta.applied_index, keys = meta.keys, "installed a snapshot from the primary");
    send_ack(core, positions(core)).await;
    Ok(())
}

/// Promotion: win the witness's vote (when there is one), fence the old primary if it can be
/// reached, then become primary of a new, persisted epoch.
pub(crate) async fn try_promote(core: &Arc<Core>, manual: bool, how: Promotion) -> Result<u64, String> {
    if core.is_primary() {
        return Err("already primary".into());
    }
    // Above every epoch this node knows of, including one the witness refused it for.
    let seen = core.epoch().max(core.witness_epoch.load(Ordering::SeqCst));
    let new_epoch = super::epoch::next(seen, core.tag).map_err(|e| e.to_string())?;
    if !manual {
        // A standby that is not caught up with what the primary acknowledged must not take
        // over in the sync levels: the writes it lacks were promised to be kept.
        if let Some(why) = not_eligible(core) {
            return Err(why);
        }
    }
    // Prove this node can serve before it wins a vote or fences anyone: a standby whose log
    // does not replay would otherwise leave the pair with no primary at all.
    settle(core).await?;
    core.replay_log().await.map_err(|e| format!("{e}; this node does not promote"))?;
    // Two standbys (e.g. both nodes restarted): only the one further ahead promotes itself.
    if !manual {
        if let Some((e, last, id, at)) = core.peer_standby.lock().unwrap().clone() {
            let mine = (core.epoch(), core.wal.last_index(), core.cfg.node_id.clone());
            if at.elapsed() < core.cfg.heartbeat * 3 && (e, last, id.clone()) > mine {
                return Err(format!("the peer {id} is also standby and further ahead; it promotes"));
            }
        }
    }
    if core.cfg.witness_addr.is_some() {
        let vote = encode(&WitnessVote { epoch: new_epoch, node_id: core.cfg.node_id.clone(), failover_timeout_ms: core.cfg.failover_timeout.as_millis() as u64 });
        let b = core
            .transport()
            .request(&WITNESS.to_string(), WITNESS_VOTE, vote, Some(core.cfg.heartbeat))
            .await
            .map_err(|e| format!("the witness cannot be reached: {e}"))?;
        let r: WitnessReply = decode(&b)?;
        if !r.granted {
            core.witness_epoch.fetch_max(r.epoch, Ordering::SeqCst);
            return Err(format!("the witness refused: {}", r.reason));
        }
    }
    // Fence the old primary if it is reachable at all (best effort: it may be dead).
    let f = encode(&Fence { epoch: new_epoch, from: core.cfg.node_id.clone() });
    if let Ok(b) = core.transport().request(&PEER.to_string(), FENCE, f, Some(core.cfg.heartbeat)).await {
        if let Ok(r) = decode::<FenceReply>(&b) {
            if r.epoch > new_epoch || (r.epoch == new_epoch && r.primary) {
                return Err(format!("the peer is already primary in epoch {}", r.epoch));
            }
        }
    }
    settle(core).await?;
    core.become_primary(new_epoch, how).await?;
    Ok(new_epoch)
}

/// Why this standby may not promote itself (automatically, or by `/admin/promote` without
/// `force`): in the sync levels only an *in-sync* standby may — one that the primary
/// recorded as having every acknowledged write — never one re-seeding from a snapshot or
/// behind what the primary acknowledged; in `async`, one at most
/// `HA_MAX_LAG_ON_FAILOVER` records behind.
fn not_eligible(core: &Arc<Core>) -> Option<String> {
    let (have, acked) = (core.wal.durable_index(), core.primary_commit_index.load(Ordering::Relaxed));
    let primary_last = core.primary_last_index.load(Ordering::Relaxed);
    if core.want_snapshot.load(Ordering::SeqCst) {
        return Some("this standby is re-seeding from a snapshot; its state is not the primary's".into());
    }
    match core.cfg.sync_mode {
        super::SyncMode::Async => {
            let behind = primary_last.saturating_sub(have);
            match core.cfg.max_lag_on_failover {
                Some(max) if behind > max => Some(format!(
                    "this standby is {behind} records behind the primary's last known index {primary_last} (MERIDIAN_CLUSTER_HA_MAX_LAG_ON_FAILOVER={max})"
                )),
                _ => None,
            }
        }
        _ if have < acked => Some(format!("this standby has index {have}, the primary acknowledged up to {acked} ({} records behind)", acked - have)),
        _ if !core.persisted.lock().unwrap().in_sync => Some(format!(
            "this standby is not in sync: the primary did not record it as having every acknowledged write (it has index {have}; the primary's last known index is {primary_last}, {} records ahead); it may lack writes acknowledged without it",
            primary_last.saturating_sub(have)
        )),
        _ => None,
    }
}

/// `POST /admin/promote` on the standby.
pub(crate) async fn manual_promote(core: &Arc<Core>, force: bool) -> Result<serde_json::Value, AdminError> {
    if core.is_primary() {
        return Err(AdminError::Rejected("this node is already the primary".into()));
    }
    if !force {
        if let Some(why) = not_eligible(core) {
            return Err(AdminError::Rejected(format!("promoting could lose acknowledged writes: {why}; wait for it to catch up or pass ?force=true")));
        }
    }
    let epoch = if force {
        // An operator override: skip the witness and the tie-break.
        force_promote(core).await
    } else {
        try_promote(core, true, Promotion::Takeover).await
    }
    .map_err(AdminError::Rejected)?;
    Ok(serde_json::json!({"promoted": true, "epoch": epoch, "last_index": core.wal.last_index()}))
}

async fn force_promote(core: &Arc<Core>) -> Result<u64, String> {
    let seen = core.epoch().max(core.witness_epoch.load(Ordering::SeqCst));
    let new_epoch = super::epoch::next(seen, core.tag).map_err(|e| e.to_string())?;
    let f = encode(&Fence { epoch: new_epoch, from: core.cfg.node_id.clone() });
    let _ = core.transport().request(&PEER.to_string(), FENCE, f, Some(core.cfg.heartbeat)).await;
    settle(core).await?;
    core.become_primary(new_epoch, Promotion::Takeover).await?;
    Ok(new_epoch)
}

/// The primary asks this standby to take over during a switchover.
pub(crate) async fn on_promote(core: &Arc<Core>, p: Promote) -> Result<PromoteReply, crate::transport::RemoteError> {
    let reject = |m: String| crate::transport::RemoteError::new("rejected", m);
    if core.is_primary() {
        return Err(reject("already primary".into()));
    }
    if p.epoch != core.epoch() {
        return Err(reject(format!("epoch mismatch: primary {} vs standby {}", p.epoch, core.epoch())));
    }
    settle(core).await.map_err(reject)?;
    if core.wal.durable_index() < p.last_index || core.sm.applied_index() < p.last_index {
        return Err(reject(format!("not caught up: have {}, need {}", core.wal.durable_index(), p.last_index)));
    }
    let new_epoch = super::epoch::next(p.epoch, core.tag).map_err(|e| reject(e.to_string()))?;
    core.become_primary(new_epoch, Promotion::Handover).await.map_err(reject)?;
    Ok(PromoteReply { epoch: core.epoch(), leader: core.self_hint() })
}

/// A write on the standby goes to the primary over the transport (or `421` without forwarding).
pub(crate) async fn forward(core: &Arc<Core>, command: Command) -> Result<Committed, SubmitError> {
    let leader = core.leader.lock().unwrap().clone();
    if !core.cfg.forward_writes {
        return Err(SubmitError::NotLeader { leader });
    }
    let req = encode(&Forward { epoch: core.epoch(), command });
    let b = core
        .transport()
        .request(&PEER.to_string(), FORWARD, req, Some(Duration::from_secs(30)))
        .await
        .map_err(|e| SubmitError::Unavailable(format!("cannot reach the primary to forward the write: {e}")))?;
    match decode::<ForwardReply>(&b).map_err(SubmitError::Unavailable)? {
        ForwardReply::Committed { result, bookmark_epoch, bookmark_index } => {
            Ok(Committed { result, bookmark: Bookmark { epoch: bookmark_epoch, index: bookmark_index } })
        }
        ForwardReply::Failed { code, message, leader } => Err(match code.as_str() {
            "not_leader" => SubmitError::NotLeader { leader: leader.or_else(|| Some(LeaderHint { node_id: PEER.into(), http_addr: None })) },
            "fenced" => SubmitError::Fenced { epoch: core.epoch(), leader },
            "timeout" => SubmitError::Timeout(message),
            "read_only" => SubmitError::ReadOnly(message),
            _ => SubmitError::Unavailable(message),
        }),
    }
}
