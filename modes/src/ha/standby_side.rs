//! What only the standby keeps about the primary it follows and the records it holds.
//!
//! Kept apart from the primary's state ([`super::primary_side`]); [`super::Core`] holds one
//! of each. Invariant enforced with these fields (`stream::release_agreed`): a standby applies
//! a record only once the primary has said it is durable there (`agreed`); until then it is
//! `held`, so a standby never serves state the primary might not have.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::read_round::IndexRounds;
use crate::state_machine::LogEntry;

pub struct StandbySide {
    /// When the primary last answered a fetch: the failover clock.
    pub(crate) last_primary_contact: Mutex<Instant>,
    /// The primary's last and commit index, as last reported to this standby.
    pub(crate) primary_last_index: AtomicU64,
    pub(crate) primary_commit_index: AtomicU64,
    /// The peer answered a fetch as a standby too: (epoch, last index, node id, when).
    pub(crate) peer_standby: Mutex<Option<(u64, u64, String, Instant)>>,
    /// This standby's log diverged or fell behind the primary's WAL: it must re-seed from a
    /// snapshot (and may not promote itself meanwhile).
    pub(crate) want_snapshot: AtomicBool,
    /// The background apply of the latest batch (which first awaits the earlier ones).
    pub(crate) applying: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<(), String>>>>,
    /// Batches handed to the background apply and not yet applied.
    pub(crate) apply_backlog: AtomicUsize,
    /// The primary's durable index as last heard — records up to it are agreed.
    pub(crate) agreed: AtomicU64,
    /// Records stored here but not yet known durable on the primary, in index order.
    pub(crate) held: Mutex<Vec<LogEntry>>,
    /// Linearizable reads: read-index requests to the primary, each shared by the reads
    /// waiting for it.
    pub(crate) index_rounds: Arc<IndexRounds>,
    /// Progress lines while behind the primary.
    pub(crate) catch_up: Mutex<crate::progress::CatchUp>,
    /// The checkpoint running beside the fetches (`driver::start_checkpoint`), if any.
    pub(crate) checkpoint: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StandbySide {
    pub(crate) fn new() -> StandbySide {
        StandbySide {
            last_primary_contact: Mutex::new(Instant::now()),
            primary_last_index: AtomicU64::new(0),
            primary_commit_index: AtomicU64::new(0),
            peer_standby: Mutex::new(None),
            want_snapshot: AtomicBool::new(false),
            applying: tokio::sync::Mutex::new(None),
            apply_backlog: AtomicUsize::new(0),
            agreed: AtomicU64::new(0),
            held: Mutex::new(Vec::new()),
            index_rounds: crate::read_round::SharedRounds::new(),
            catch_up: Mutex::new(Default::default()),
            checkpoint: Mutex::new(None),
        }
    }
}
