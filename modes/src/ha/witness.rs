//! The witness (`MERIDIAN_CLUSTER_MODE=witness`): a third process that stores no data and
//! breaks ties, so that an HA pair never has two primaries in a partition.
//!
//! - The primary pings it every heartbeat; the witness remembers when it last heard from the
//!   primary of the highest epoch and answers with that epoch — a primary whose epoch is
//!   lower learns it was deposed.
//! - A standby asks for a vote before promoting. The witness grants epoch `E` only if `E` is
//!   higher than every epoch it has granted or seen, and the primary has been silent for at
//!   least the failover timeout. The granted epoch is persisted before the answer.
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
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(_) => Persisted::default(),
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

    pub fn ping(&self, p: &WitnessPing) -> WitnessReply {
        let mut g = self.state.lock().unwrap();
        if p.epoch < g.0.epoch {
            return WitnessReply { epoch: g.0.epoch, granted: false, reason: format!("epoch {} was superseded by {}", p.epoch, g.0.epoch) };
        }
        if p.epoch > g.0.epoch || g.0.holder != p.node_id {
            let next = Persisted { epoch: p.epoch, holder: p.node_id.clone() };
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
        if v.epoch <= g.0.epoch {
            return WitnessReply { epoch: g.0.epoch, granted: false, reason: format!("epoch {} is not above {}", v.epoch, g.0.epoch) };
        }
        let silent = g.1.elapsed();
        if silent < self.failover_timeout {
            return WitnessReply {
                epoch: g.0.epoch,
                granted: false,
                reason: format!("the primary ({}) pinged {:.1}s ago", g.0.holder, silent.as_secs_f64()),
            };
        }
        let next = Persisted { epoch: v.epoch, holder: v.node_id.clone() };
        if let Err(e) = self.persist(&next) {
            return WitnessReply { epoch: g.0.epoch, granted: false, reason: format!("witness storage error: {e}") };
        }
        info!(epoch = v.epoch, node = %v.node_id, "witness granted promotion");
        g.0 = next;
        g.1 = Instant::now();
        WitnessReply { epoch: v.epoch, granted: true, reason: String::new() }
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
        let dir = tempfile::tempdir().unwrap();
        let w = Witness::open(dir.path(), Duration::from_millis(200)).unwrap();
        assert!(w.ping(&WitnessPing { epoch: 1, node_id: "a".into() }).granted);
        let v = w.vote(&WitnessVote { epoch: 2, node_id: "b".into() });
        assert!(!v.granted, "granted while the primary is pinging");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!w.vote(&WitnessVote { epoch: 1, node_id: "b".into() }).granted, "same epoch granted");
        assert!(w.vote(&WitnessVote { epoch: 2, node_id: "b".into() }).granted);
        // The old primary learns it was deposed.
        let p = w.ping(&WitnessPing { epoch: 1, node_id: "a".into() });
        assert!(!p.granted && p.epoch == 2);
        // Persisted across a restart.
        let w = Witness::open(dir.path(), Duration::from_millis(200)).unwrap();
        assert_eq!(w.epoch(), 2);
        assert!(!w.vote(&WitnessVote { epoch: 2, node_id: "a".into() }).granted);
    }
}
