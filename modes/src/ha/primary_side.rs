//! What only the primary (or a primary handing over) keeps about its standby and its stream.
//!
//! Kept apart from the standby's state ([`super::standby_side`]) so each role's fields are in
//! one place with their meaning; [`super::Core`] holds one of each. A node that becomes
//! primary calls [`PrimarySide::reset`]: a standby contact from before the promotion grants
//! no lease in the new epoch. (The standby's last reported positions are kept: a resuming
//! primary seeds its sync gate with them.)

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::messages::Positions;
use crate::pipeline::Tail;
use crate::read_round::IndexRounds;
use crate::snapshot_stream::Outgoing;

pub struct PrimarySide {
    /// When the standby last fetched (or answered a heartbeat): the primary's lease.
    pub(crate) last_standby_contact: Mutex<Option<Instant>>,
    /// The standby's received / flushed / applied positions, as it last reported them.
    pub(crate) standby_positions: Mutex<Positions>,
    /// The standby's failover timeout when it differs from this node's (a health note).
    pub(crate) peer_timeout_mismatch: Mutex<Option<u64>>,
    /// The write pipeline's in-memory tail, streamed before it is durable locally.
    pub(crate) tail: Mutex<Option<Arc<Tail>>>,
    /// The snapshot prepared for a standby that must re-seed, in `DATA_DIR/snapshots/`.
    pub(crate) snapshots: Outgoing,
    /// Linearizable reads: epoch confirmations, each shared by the reads waiting for it.
    pub(crate) confirm_rounds: Arc<IndexRounds>,
}

impl PrimarySide {
    pub(crate) fn new(snapshots: Outgoing) -> PrimarySide {
        PrimarySide {
            last_standby_contact: Mutex::new(None),
            standby_positions: Mutex::new(Positions::default()),
            peer_timeout_mismatch: Mutex::new(None),
            tail: Mutex::new(None),
            snapshots,
            confirm_rounds: crate::read_round::SharedRounds::new(),
        }
    }

    /// A new epoch as primary: the standby has not been heard from in it yet.
    pub(crate) fn reset(&self) {
        *self.last_standby_contact.lock().unwrap() = None;
    }
}
