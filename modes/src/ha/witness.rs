//! The witness (`MERIDIAN_CLUSTER_MODE=witness`): a third process that stores no data and
//! breaks ties, so that an HA pair never has two primaries in a partition.
//!
//! - The primary pings it every heartbeat; the witness remembers when it last heard from the
//!   primary of the highest epoch and answers with that epoch — a primary whose epoch is
//!   lower learns it was deposed.
//! - A node asks for a vote before it becomes primary. The witness grants epoch `E` only if
//!   `E` is higher than every epoch it has granted or seen, `E` is an epoch the asking node
//!   may start (its tag, see [`super::epoch`]), and the primary it knows has been silent for
//!   at least the failover timeout — or there is none yet, or the asker *is* that primary
//!   (resuming after a restart in a new epoch: nobody else was elected since). The granted
//!   epoch is persisted before the answer.
//! - Damaged `witness.json` refuses to start, naming the file: a witness that forgot the
//!   epochs it granted could grant one twice.
//! - A ping at a higher epoch than any granted here (a primary the operator forced with
//!   `?force=true`, which skips the witness) is accepted, provided the pinging node may
//!   start that epoch: refusing it would leave the witness backing the *old* primary, which
//!   could then resume past the forced one.
//!
//! Together with the primary's lease (it stops acknowledging writes when it has reached
//! neither standby nor witness for half the failover timeout), two of three votes are needed
//! to write, so the windows in which the old and the new primary accept writes never overlap.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::messages::{WitnessPing, WitnessReply, WitnessVote};

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    epoch: u64,
    holder: String,
    /// The holder's standby is in sync (as the holder last said): only then may it be voted
    /// primary. Reset by every vote (the new primary's standby is the old primary).
    #[serde(default)]
    standby_in_sync: bool,
    /// The holder is handing over to this node (a switchover): its vote needs no silence.
    #[serde(default)]
    handover_to: String,
}

pub struct Witness {
    path: PathBuf,
    failover_timeout: Duration,
    state: Mutex<(Persisted, Instant)>,
}

impl Witness {
    pub fn open(data_dir: &std::path::Path, failover_timeout: Duration) -> std::io::Result<Witness> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("witness.json");
        let persisted = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is damaged ({e}); the witness cannot know which epochs it granted. Restore it, or remove it only while both data nodes are up and agree on the primary", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))),
        };
        // After a restart the witness does not know when the primary last pinged: it counts
        // from now, which can only delay a failover, never allow an early one.
        Ok(Witness { path, failover_timeout, state: Mutex::new((persisted, Instant::now())) })
    }

    fn persist(&self, p: &Persisted) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(p)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(d) = self.path.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn epoch(&self) -> u64 {
        self.state.lock().unwrap().0.epoch
    }

    pub fn holder(&self) -> String {
        self.state.lock().unwrap().0.holder.clone()
    }

    /// The failover timeout must be the same on the data nodes and the witness: the primary's
    /// lease (half of its timeout) ends before the witness grants a vote (after its own).
    fn timeout_mismatch(&self, epoch: u64, ms: u64) -> Option<WitnessReply> {
        let mine = self.failover_timeout.as_millis() as u64;
        (ms != mine).then(|| {
            warn!(witness_ms = mine, node_ms = ms, "a data node uses another MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT than this witness; refused");
            WitnessReply {
                epoch,
                granted: false,
                reason: format!("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT differs: the witness has {mine} ms, this node {ms} ms; set the same value on all three"),
            }
        })
    }

    pub fn ping(&self, p: &WitnessPing) -> WitnessReply {
        let mut g = self.state.lock().unwrap();
        if let Some(r) = self.timeout_mismatch(g.0.epoch, p.failover_timeout_ms) {
            return r;
        }
        if p.epoch < g.0.epoch {
            return WitnessReply { epoch: g.0.epoch, granted: false, reason: format!("epoch {} was superseded by {}", p.epoch, g.0.epoch) };
        }
        if let Some(why) = Self::not_startable(g.0.epoch, p.epoch, &p.node_id) {
            return WitnessReply { epoch: g.0.epoch, granted: false, reason: why };
        }
        let handover = p.handover_to.clone().unwrap_or_default();
        if p.epoch > g.0.epoch || g.0.holder != p.node_id || g.0.standby_in_sync != p.standby_in_sync || g.0.handover_to != handover {
            let next = Persisted { epoch: p.epoch, holder: p.node_id.clone(), standby_in_sync: p.standby_in_sync, handover_to: handover };
            if let Err(e) = self.persist(&next) {
                warn!("witness cannot persist its state: {e}");
                return WitnessReply { epoch: g.0.epoch, granted: false, reason: format!("witness storage error: {e}") };
            }
            g.0 = next;
        }
        g.1 = Instant::now();
        WitnessReply { epoch: g.0.epoch, granted: true, reason: String::new() }
    }

    pub fn vote(&self, v: &WitnessVote) -> WitnessReply {
        let mut g = self.state.lock().unwrap();
        if let Some(r) = self.timeout_mismatch(g.0.epoch, v.failover_timeout_ms) {
            return r;
        }
        if v.epoch <= g.0.epoch {
            return WitnessReply { epoch: g.0.epoch, granted: false, reason: format!("epoch {} is not above {}", v.epoch, g.0.epoch) };
        }
        if let Some(why) = Self::not_startable(g.0.epoch, v.epoch, &v.node_id) {
            return WitnessReply { epoch: g.0.epoch, granted: false, reason: why };
        }
        let silent = g.1.elapsed();
        let no_primary_yet = g.0.holder.is_empty();
        let resuming = g.0.holder == v.node_id;
        let handed_over = !g.0.handover_to.is_empty() && g.0.handover_to == v.node_id;
        if !no_primary_yet && !resuming && !handed_over && !g.0.standby_in_sync {
            return WitnessReply {
                epoch: g.0.epoch,
                granted: false,
                reason: format!("{} recorded its standby out of sync: it may lack acknowledged writes", g.0.holder),
            };
        }
        if silent < self.failover_timeout && !no_primary_yet && !resuming && !handed_over {
            return WitnessReply {
                epoch: g.0.epoch,
                granted: false,
                reason: format!("the primary ({}) pinged {:.1}s ago", g.0.holder, silent.as_secs_f64()),
            };
        }
        let next = Persisted { epoch: v.epoch, holder: v.node_id.clone(), standby_in_sync: false, handover_to: String::new() };
        if let Err(e) = self.persist(&next) {
            return WitnessReply { epoch: g.0.epoch, granted: false, reason: format!("witness storage error: {e}") };
        }
        info!(epoch = v.epoch, node = %v.node_id, "witness granted promotion");
        g.0 = next;
        g.1 = Instant::now();
        WitnessReply { epoch: v.epoch, granted: true, reason: String::new() }
    }
}

impl Witness {
    /// Why `node` cannot be primary of `epoch` (given the witness knows `known`): only the
    /// node whose tag the epoch carries can start it, and no message moves epochs by more
    /// than [`super::epoch::MAX_ROUND_STEP`] rounds.
    fn not_startable(known: u64, epoch: u64, node: &str) -> Option<String> {
        use super::epoch;
        if epoch::owner(epoch) != epoch::tag_of(node) {
            return Some(format!("epoch {} is not one node {node:?} can start", epoch::display(epoch)));
        }
        if epoch > known {
            if let Err(e) = epoch::check_raise(known, epoch, 0) {
                return Some(e.to_string());
            }
        }
        None
    }
}

/// The witness as a node: it answers pings and votes over the transport, serves `/health`,
/// and refuses data requests (it stores no data).
pub struct WitnessNode {
    pub node_id: String,
    pub witness: Arc<Witness>,
    pub transport: crate::transport::Transport,
}

pub struct WitnessHandler(pub Arc<Witness>);

#[async_trait::async_trait]
impl crate::transport::Handler for WitnessHandler {
    async fn on_request(
        &self,
        _from: &crate::transport::NodeId,
        msg_type: u16,
        payload: bytes::Bytes,
    ) -> Result<bytes::Bytes, crate::transport::RemoteError> {
        use super::messages::{decode, encode, WITNESS_PING, WITNESS_VOTE};
        let bad = |e: String| crate::transport::RemoteError::new("bad_request", e);
        match msg_type {
            WITNESS_PING => Ok(encode(&self.0.ping(&decode(&payload).map_err(bad)?))),
            WITNESS_VOTE => Ok(encode(&self.0.vote(&decode(&payload).map_err(bad)?))),
            other => Err(crate::transport::RemoteError::new("unknown_message", format!("the witness does not handle message type {other:#x}"))),
        }
    }
    async fn on_message(&self, _from: &crate::transport::NodeId, _msg_type: u16, _payload: bytes::Bytes) {}
}

#[async_trait::async_trait]
impl crate::replicator::Replicator for WitnessNode {
    fn mode(&self) -> &'static str {
        "witness"
    }
    async fn submit(&self, _cmd: crate::command::Command) -> Result<crate::replicator::Committed, crate::replicator::SubmitError> {
        Err(crate::replicator::SubmitError::ReadOnly("a witness stores no data; write to the primary".into()))
    }
    async fn read_fence(&self, _req: &crate::replicator::ReadRequest) -> Result<(), crate::replicator::ReadError> {
        Err(crate::replicator::ReadError::Unavailable("a witness stores no data; read from the primary or the standby".into()))
    }
    fn status(&self) -> crate::replicator::ReplicationStatus {
        crate::replicator::ReplicationStatus {
            mode: "witness",
            node_id: self.node_id.clone(),
            role: "witness".into(),
            is_leader: false,
            state: format!("primary of epoch {} is {}", self.witness.epoch(), self.witness.holder()),
            commit_index: 0,
            applied_index: 0,
            epoch: self.witness.epoch(),
            peers: vec![],
            health: crate::replicator::Health::Healthy,
            lag_seconds: 0.0,
            leader_changes: 0,
            replication_bytes: 0,
            notes: vec![],
        }
    }
    async fn shutdown(&self) {
        self.transport.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_need_a_silent_primary_and_a_higher_epoch() {
        use super::super::epoch::{next, tag_of};
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::open(dir.path(), Duration::from_millis(200)).unwrap();
        let (a, b) = (tag_of("a"), tag_of("b"));
        let e1 = next(0, a).unwrap();
        // No primary yet: the first one is granted at once.
        assert!(w.vote(&WitnessVote { epoch: e1, node_id: "a".into(), failover_timeout_ms: 200 }).granted);
        assert!(w.ping(&WitnessPing { epoch: e1, node_id: "a".into(), standby_in_sync: true, failover_timeout_ms: 200, handover_to: None }).granted);
        let e2 = next(e1, b).unwrap();
        let v = w.vote(&WitnessVote { epoch: e2, node_id: "b".into(), failover_timeout_ms: 200 });
        assert!(!v.granted, "granted while the primary is pinging");
        // The primary itself may resume in a new epoch at once.
        let e1b = next(e1, a).unwrap();
        assert!(w.vote(&WitnessVote { epoch: e1b, node_id: "a".into(), failover_timeout_ms: 200 }).granted);
        assert!(w.ping(&WitnessPing { epoch: e1b, node_id: "a".into(), standby_in_sync: true, failover_timeout_ms: 200, handover_to: None }).granted);
        std::thread::sleep(Duration::from_millis(250));
        assert!(!w.vote(&WitnessVote { epoch: e1b, node_id: "b".into(), failover_timeout_ms: 200 }).granted, "same epoch granted");
        // An epoch carrying another node's tag, or one far in the future, is never granted.
        let e3 = next(e1b, b).unwrap();
        assert!(!w.vote(&WitnessVote { epoch: e3, node_id: "a".into(), failover_timeout_ms: 200 }).granted, "granted an epoch of b to a");
        assert!(!w.vote(&WitnessVote { epoch: u64::MAX, node_id: "b".into(), failover_timeout_ms: 200 }).granted, "granted epoch 2^64-1");
        assert!(!w.ping(&WitnessPing { epoch: next(e3, a).unwrap(), node_id: "b".into(), standby_in_sync: true, failover_timeout_ms: 200, handover_to: None }).granted);
        assert!(w.vote(&WitnessVote { epoch: e3, node_id: "b".into(), failover_timeout_ms: 200 }).granted);
        // The old primary learns it was deposed.
        let p = w.ping(&WitnessPing { epoch: e1b, node_id: "a".into(), standby_in_sync: true, failover_timeout_ms: 200, handover_to: None });
        assert!(!p.granted && p.epoch == e3);
        // Persisted across a restart.
        let w = Witness::open(dir.path(), Duration::from_millis(200)).unwrap();
        assert_eq!(w.epoch(), e3);
        assert!(!w.vote(&WitnessVote { epoch: e3, node_id: "a".into(), failover_timeout_ms: 200 }).granted);
    }

    /// The witness never votes for a standby its primary recorded out of sync.
    #[test]
    fn no_vote_for_an_out_of_sync_standby() {
        use super::super::epoch::{next, tag_of};
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::open(dir.path(), Duration::from_millis(100)).unwrap();
        let e1 = next(0, tag_of("a")).unwrap();
        assert!(w.vote(&WitnessVote { epoch: e1, node_id: "a".into(), failover_timeout_ms: 100 }).granted);
        assert!(w.ping(&WitnessPing { epoch: e1, node_id: "a".into(), standby_in_sync: false, failover_timeout_ms: 100, handover_to: None }).granted);
        std::thread::sleep(Duration::from_millis(150));
        let e2 = next(e1, tag_of("b")).unwrap();
        let r = w.vote(&WitnessVote { epoch: e2, node_id: "b".into(), failover_timeout_ms: 100 });
        assert!(!r.granted && r.reason.contains("out of sync"), "{}", r.reason);
        assert!(w.ping(&WitnessPing { epoch: e1, node_id: "a".into(), standby_in_sync: true, failover_timeout_ms: 100, handover_to: None }).granted);
        std::thread::sleep(Duration::from_millis(150));
        assert!(w.vote(&WitnessVote { epoch: e2, node_id: "b".into(), failover_timeout_ms: 100 }).granted);
    }

    /// A switchover goes through the witness: the holder names the node it hands over to,
    /// whose vote is then granted at once; nobody else's is.
    #[test]
    fn a_handover_is_voted_at_once_for_the_named_node_only() {
        use super::super::epoch::{next, tag_of};
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::open(dir.path(), Duration::from_secs(60)).unwrap();
        let e1 = next(0, tag_of("a")).unwrap();
        assert!(w.vote(&WitnessVote { epoch: e1, node_id: "a".into(), failover_timeout_ms: 60_000 }).granted);
        let ping = |to: Option<&str>| WitnessPing { epoch: e1, node_id: "a".into(), standby_in_sync: true, failover_timeout_ms: 60_000, handover_to: to.map(String::from) };
        assert!(w.ping(&ping(None)).granted);
        let e2 = next(e1, tag_of("b")).unwrap();
        assert!(!w.vote(&WitnessVote { epoch: e2, node_id: "b".into(), failover_timeout_ms: 60_000 }).granted, "voted while the primary pings");
        assert!(w.ping(&ping(Some("b"))).granted);
        assert!(!w.vote(&WitnessVote { epoch: next(e1, tag_of("c")).unwrap(), node_id: "c".into(), failover_timeout_ms: 60_000 }).granted, "voted for a node not handed over to");
        assert!(w.vote(&WitnessVote { epoch: e2, node_id: "b".into(), failover_timeout_ms: 60_000 }).granted, "the handover was not voted");
    }

    #[test]
    fn a_node_with_another_failover_timeout_is_refused_naming_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::open(dir.path(), Duration::from_millis(200)).unwrap();
        let e1 = super::super::epoch::next(0, super::super::epoch::tag_of("a")).unwrap();
        let r = w.vote(&WitnessVote { epoch: e1, node_id: "a".into(), failover_timeout_ms: 300 });
        assert!(!r.granted && r.reason.contains("MERIDIAN_CLUSTER_HA_FAILOVER_TIMEOUT"), "{}", r.reason);
        let r = w.ping(&WitnessPing { epoch: e1, node_id: "a".into(), standby_in_sync: true, failover_timeout_ms: 300, handover_to: None });
        assert!(!r.granted, "a ping with another failover timeout renewed a lease");
        assert!(w.vote(&WitnessVote { epoch: e1, node_id: "a".into(), failover_timeout_ms: 200 }).granted);
    }

    #[test]
    fn damaged_witness_state_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("witness.json"), b"{\"epoch\": 3, \"hol").unwrap();
        let e = Witness::open(dir.path(), Duration::from_millis(200)).err().expect("opened damaged state");
        assert!(e.to_string().contains("witness.json"), "{e}");
    }
}
