//! A data node's two calls to the witness, built in one place: the ping (as primary: "I am
//! primary of this epoch, my standby is or is not in sync, I may be handing over") and the
//! vote (before becoming primary of a new epoch).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::messages::*;
use super::{Core, WITNESS};

impl Core {
    fn failover_timeout_ms(&self) -> u64 {
        self.cfg.failover_timeout.as_millis() as u64
    }

    /// The ping this primary sends as primary of `epoch`.
    pub(crate) fn witness_ping(&self, epoch: u64, standby_in_sync: bool, handover_to: Option<String>) -> WitnessPing {
        WitnessPing { epoch, node_id: self.cfg.node_id.clone(), standby_in_sync, failover_timeout_ms: self.failover_timeout_ms(), handover_to }
    }

    /// Sends a ping and returns the witness's answer (`Err`: it could not be reached or
    /// answered nonsense).
    pub(crate) async fn ping_witness(&self, ping: &WitnessPing, wait: Duration) -> Result<WitnessReply, String> {
        let b = self.transport().request(&WITNESS.to_string(), WITNESS_PING, encode(ping), Some(wait)).await.map_err(|e| e.to_string())?;
        decode(&b)
    }

    /// Asks the witness to make this node primary of `epoch`. A refusal remembers the
    /// witness's epoch, so the next attempt goes above it.
    pub(crate) async fn witness_vote(&self, epoch: u64, wait: Duration) -> Result<(), String> {
        let vote = encode(&WitnessVote { epoch, node_id: self.cfg.node_id.clone(), failover_timeout_ms: self.failover_timeout_ms() });
        let b = self
            .transport()
            .request(&WITNESS.to_string(), WITNESS_VOTE, vote, Some(wait))
            .await
            .map_err(|e| format!("the witness cannot be reached: {e}"))?;
        let r: WitnessReply = decode(&b)?;
        if !r.granted {
            self.witness_epoch.fetch_max(r.epoch, Ordering::SeqCst);
            return Err(format!("the witness refused: {}", r.reason));
        }
        Ok(())
    }
}
