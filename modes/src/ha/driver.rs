//! The node's main loop: decide the starting role, then one heartbeat round as primary or
//! one fetch round as standby, checkpoints, and automatic failover after the timeout.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::messages::*;
use super::{ConfiguredRole, Core, Promotion, Role, PEER};
use super::stream::{follow_step};
use super::promotion::{try_promote};
use super::standby_checkpoint;
use crate::state_machine::checkpoint_wanted;

/// The node's main loop: one heartbeat round as primary, or one fetch round as standby.
pub(crate) async fn drive(core: Arc<Core>) {
    decide_role(&core).await;
    let mut last_checkpoint = Instant::now();
    while !core.stopping.load(Ordering::SeqCst) {
        let primary = matches!(*core.role.lock().unwrap(), Role::Primary { .. });
        let switching = matches!(*core.role.lock().unwrap(), Role::Switching { .. });
        if primary && core.write_path_failure().is_some() {
            // Silent: see `Core::write_path_failure`.
            tokio::time::sleep(core.cfg.heartbeat).await;
        } else if primary {
            let start = Instant::now();
            super::heartbeat::tick(&core).await;
            tokio::time::sleep(core.cfg.heartbeat.saturating_sub(start.elapsed()).max(Duration::from_millis(10))).await;
        } else if switching {
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            follow_step(&core).await;
            if checkpoint_wanted(last_checkpoint.elapsed(), core.cfg.checkpoint_interval, &*core.sm) && standby_checkpoint::start(&core) {
                last_checkpoint = Instant::now();
            }
            let silent = core.standby.last_primary_contact.lock().unwrap().elapsed();
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

/// What the peer says about itself when probed with our epoch. Start-up is not latency
/// critical, and a probe that times out on a busy machine would let a deposed primary
/// resume, so the probe waits generously.
pub(super) async fn probe(core: &Arc<Core>) -> Option<FenceReply> {
    let req = encode(&Fence { epoch: core.epoch(), from: core.cfg.node_id.clone() });
    let wait = (core.cfg.heartbeat * 2).max(Duration::from_secs(2));
    let b = core.transport().request(&PEER.to_string(), FENCE, req, Some(wait)).await.ok()?;
    decode(&b).ok()
}

/// Chooses the starting role from what was persisted and what the peer says — not only from
/// `HA_ROLE`, so a former primary restarted with `HA_ROLE=primary` never takes a write.
pub(super) async fn decide_role(core: &Arc<Core>) {
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
        // A fresh cluster: its processes start in any order (containers do), so the witness
        // or the peer may not answer yet. Keep trying for the failover timeout (at least 10 s)
        // rather than once: nobody has ever taken a write, and a standby never promotes
        // itself into an epoch-0 cluster it is not recorded in sync with, so giving up here
        // left the cluster without a primary for good. Stop as soon as a primary appears.
        _ if configured == ConfiguredRole::Primary && epoch == 0 => {
            let deadline = Instant::now() + core.cfg.failover_timeout.max(Duration::from_secs(10));
            loop {
                match try_promote(core, true, Promotion::Takeover).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() >= deadline => {
                        warn!("not starting as primary: {e}");
                        break;
                    }
                    Err(e) => info!("not starting as primary yet: {e}; trying again"),
                }
                tokio::time::sleep(core.cfg.heartbeat.max(Duration::from_millis(300))).await;
                if core.epoch() > 0 || probe(core).await.is_some_and(|p| p.primary || p.epoch > 0) {
                    info!("another node started the cluster meanwhile; following it");
                    break;
                }
            }
        }
        _ if configured == ConfiguredRole::Primary => {
            warn!(epoch, "configured HA_ROLE=primary, but this node was deposed in epoch {epoch}; it stays standby until it finds the primary (POST /admin/promote to take over)");
        }
        _ => info!(epoch, "starting as standby"),
    }
    if !core.is_primary() {
        core.note("connecting");
        *core.standby.last_primary_contact.lock().unwrap() = Instant::now();
    }
}
