//! A data directory's storage pair — `state.redb` and the `wal/` it was built from — and what
//! keeps the two together: the check at start and `meridian wal reset`.
//!
//! The state remembers the identity of its WAL ([`RedbStore::bind_wal`], written when a node
//! first opens the pair) and the WAL refuses to open as anything else
//! ([`WalOptions::expected_id`]). So a WAL that was deleted (one segment or the whole
//! directory), swapped for another node's, or damaged stops the node with a message that
//! names the path and the ways out, instead of a node that comes up with fewer keys and hands
//! out old revisions again:
//!
//! - put the WAL's files back;
//! - `meridian restore --from BACKUP --data-dir NEW_DIR` (a backup from `GET /admin/backup`);
//! - `meridian wal reset --data-dir D` ([`reset`]): accept the loss. The state is kept, the old
//!   WAL is moved aside to `D/wal.lost-<unix seconds>`, and a new WAL starts above the state's
//!   revision ceiling ([`RedbStore::revision_ceiling`]), so revisions and bookmarks keep
//!   increasing even when the lost WAL held writes the state never made durable.
//!
//! A state that is not bound yet (a new node, a `meridian restore`, a state from before WAL
//! identities) accepts whatever WAL it finds and is bound to it from then on. A deleted
//! `state.redb` is rebuilt from the WAL when the WAL still starts at index 1; after a purge it
//! cannot be, and replay refuses with the gap it found.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meridian_modes::recovery::replay_to;
use meridian_modes::state_machine::StateMachineError;
use meridian_modes::StateMachine;
use meridian_wal::{HardState, Wal, WalError, WalId, WalOptions};
use tracing::{info, warn};

use crate::lock::{DirLock, LockError};
use crate::node_error::NodeError;
use crate::store::RedbStore;

pub use crate::wal_unusable::WalUnusable;

pub const STATE_FILE: &str = "state.redb";
pub const WAL_DIR: &str = "wal";

/// How [`open`] brings the state and its WAL together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Apply every WAL record past the state (standalone, multi-region).
    All,
    /// Check the WAL against the state but apply nothing past what the state already holds:
    /// a mode that applies only agreed records (`ha_standby`) replays the rest itself once it
    /// knows what is agreed.
    Checked,
    /// As `Checked`, except that a WAL ending below the state is left to openraft. In `raft`
    /// a snapshot install moves the state past the log in one redb transaction and openraft
    /// purges the log behind it right after; a crash between the two leaves exactly this
    /// (records that the state is past, none after it), and openraft's start-up recognizes
    /// it ("last_log_id < last_applied") and purges the hole. Refusing to start here would
    /// make a follower that was killed right after an install unable to come back.
    Raft,
}

/// Opens the state, then the WAL it is bound to, replays (see [`Replay`]), and binds a state
/// not bound yet. Blocking.
pub fn open(data_dir: &Path, opts: WalOptions, replay: Replay) -> Result<(Wal, Arc<RedbStore>), NodeError> {
    let store = Arc::new(RedbStore::open(&data_dir.join(STATE_FILE))?);
    let wal = attach(data_dir, &store, opts, replay)?;
    Ok((wal, store))
}

/// Opens the WAL `store` is bound to and replays it (see [`Replay`]): the second half of
/// [`open`], also how a node whose mode stopped on a storage error reattaches the WAL to its
/// reopened store. Blocking.
pub fn attach(data_dir: &Path, store: &RedbStore, mut opts: WalOptions, replay: Replay) -> Result<Wal, NodeError> {
    opts.expected_id = store.wal_binding()?;
    let (wal, report) = Wal::open(opts).map_err(|e| match e {
        WalError::Missing { .. } | WalError::Foreign { .. } | WalError::Corrupt { .. } => {
            NodeError::from(WalUnusable { problem: e.to_string(), advice: advice(data_dir, store) })
        }
        other => other.into(),
    })?;
    if let Some(t) = &report.truncated_tail {
        warn!(?t, "the WAL had a torn tail from an unclean stop; it was truncated");
    }
    let upto = if replay == Replay::All { u64::MAX } else { store.applied_index() };
    let installed_past_log = replay == Replay::Raft && wal.first_index() <= wal.last_index() && wal.last_index() < store.applied_index();
    let replayed = if installed_past_log {
        info!(wal_last = wal.last_index(), applied = store.applied_index(), "the state is past the WAL's end (a Raft snapshot install); Raft purges the log behind it");
        0
    } else {
        replay_to(&wal, store, upto)?
    };
    store.bind_wal(wal.id())?;
    info!(first = report.first_index, last = report.last_index, replayed, applied = store.applied_index(), wal_id = %wal.id(), "storage recovered");
    Ok(wal)
}

fn advice(data_dir: &Path, store: &RedbStore) -> String {
    format!(
        "state.redb holds every write up to index {applied} durably; whatever the WAL held after that is lost unless its files \
         come back. To go on: put the WAL's files back in {wal}; or restore a backup into an empty directory \
         (meridian restore --from BACKUP --data-dir NEW_DIR); or accept the loss with \
         `meridian wal reset --data-dir {dir}`, which keeps state.redb, moves the WAL aside, and starts a new WAL above \
         revision {ceiling} so that no revision is handed out twice.",
        applied = store.applied_index(),
        wal = data_dir.join(WAL_DIR).display(),
        dir = data_dir.display(),
        ceiling = store.revision_ceiling(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{0} has no state.redb: there is nothing to continue from; restore a backup instead (meridian restore)")]
    NoState(String),
    #[error("the WAL in {wal} can be used with this state as it is (the state holds every write up to index {applied}): nothing to reset")]
    NothingToReset { wal: String, applied: u64 },
    #[error("state store: {0}")]
    Store(#[from] StateMachineError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot move {from} aside to {to}: {source}")]
    MoveAside { from: String, to: String, source: std::io::Error },
}

/// What was wrong with the old WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldWal {
    /// No WAL at all where the state's WAL should be.
    Missing,
    /// Another WAL (its identity, if it has one).
    Foreign(Option<WalId>),
    /// The WAL does not open: the reason (it names the file).
    Damaged(String),
    /// The WAL starts after `state + 1`: records in between are gone, so none after can apply.
    Gap { first: u64, last: u64 },
    /// The WAL holds records but ends before the state's applied index.
    Behind { last: u64 },
}

/// What `meridian wal reset` did; `Display` is the report it prints.
#[derive(Debug)]
pub struct ResetReport {
    pub data_dir: PathBuf,
    pub applied: u64,
    pub keys: u64,
    pub ceiling: u64,
    pub old: OldWal,
    pub moved_to: Option<PathBuf>,
    pub new_id: WalId,
    pub next_index: u64,
    pub epoch: u64,
    /// Whether the epoch (and vote) came from the old WAL's state file.
    pub kept_hard_state: bool,
}

/// `meridian wal reset --data-dir D`: see the module docs. Refuses while a node holds `D`,
/// when there is no state, and when the WAL is fine.
pub fn reset(data_dir: &Path) -> Result<ResetReport, ResetError> {
    let _lock = DirLock::acquire(data_dir)?;
    let state_path = data_dir.join(STATE_FILE);
    if !state_path.exists() {
        return Err(ResetError::NoState(data_dir.display().to_string()));
    }
    let store = RedbStore::open(&state_path)?;
    let (bound, applied, ceiling) = (store.wal_binding()?, store.applied_index(), store.revision_ceiling());
    let wal_dir = data_dir.join(WAL_DIR);
    let old = diagnose(&wal_dir, bound, applied)
        .ok_or_else(|| ResetError::NothingToReset { wal: wal_dir.display().to_string(), applied })?;

    // The old WAL's epoch and vote carry over, but only from this state's own WAL.
    let own_hard = match &old {
        OldWal::Foreign(_) => None,
        _ => meridian_wal::read_state_file(&wal_dir).ok().flatten().filter(|f| bound.is_none() || f.wal_id == bound).map(|f| f.hard),
    };
    let kept_hard_state = own_hard.is_some();
    let hard = match own_hard {
        Some(h) => h,
        None => HardState { epoch: store.applied_state()?.epoch, vote: Vec::new() },
    };
    let old_last = match old {
        OldWal::Gap { last, .. } | OldWal::Behind { last } => last,
        _ => 0,
    };
    let next_index = applied.max(ceiling).max(old_last) + 1;

    let moved_to = if wal_dir.exists() { Some(move_aside(data_dir, &wal_dir)?) } else { None };
    let (wal, _) = Wal::open(WalOptions::new(&wal_dir))?;
    wal.save_hard_state(&hard)?;
    wal.reset_to(next_index)?;
    let new_id = wal.id();
    wal.close()?;
    // A crash before this line leaves a new WAL the state is not bound to: the node refuses
    // it as foreign, and running `wal reset` again finishes the job.
    store.continue_with_new_wal(new_id, next_index - 1)?;
    Ok(ResetReport {
        data_dir: data_dir.to_path_buf(),
        applied,
        keys: store.key_count()?,
        ceiling,
        old,
        moved_to,
        new_id,
        next_index,
        epoch: hard.epoch,
        kept_hard_state,
    })
}

/// Read-only: what is wrong with `wal_dir` for a state bound to `bound` at `applied`, if
/// anything. The same tests as opening and replaying, without touching a file.
fn diagnose(wal_dir: &Path, bound: Option<WalId>, applied: u64) -> Option<OldWal> {
    if !wal_dir.exists() {
        return bound.map(|_| OldWal::Missing);
    }
    let r = match meridian_wal::verify(wal_dir) {
        Ok(r) => r,
        Err(e) => return Some(OldWal::Damaged(e.to_string())),
    };
    let empty = r.first_index > r.last_index;
    if r.created {
        bound.map(|_| OldWal::Missing)
    } else if bound.is_some() && r.wal_id != bound {
        Some(OldWal::Foreign(r.wal_id))
    } else if r.last_index < applied && !empty {
        Some(OldWal::Behind { last: r.last_index })
    } else if r.first_index > applied + 1 {
        Some(OldWal::Gap { first: r.first_index, last: r.last_index })
    } else {
        None
    }
}

/// Renames `wal_dir` to `wal.lost-<unix seconds>[.n]` beside it, durably.
fn move_aside(data_dir: &Path, wal_dir: &Path) -> Result<PathBuf, ResetError> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let to = (0..)
        .map(|n| data_dir.join(if n == 0 { format!("wal.lost-{secs}") } else { format!("wal.lost-{secs}.{n}") }))
        .find(|p| !p.exists())
        .expect("an unbounded range yields a free name");
    let err = |source| ResetError::MoveAside { from: wal_dir.display().to_string(), to: to.display().to_string(), source };
    std::fs::rename(wal_dir, &to).map_err(err)?;
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(to)
}

impl fmt::Display for ResetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, c) = (self.applied, self.ceiling);
        writeln!(f, "meridian wal reset: {}", self.data_dir.display())?;
        writeln!(f, "state:   state.redb holds every write up to index {a} ({} key{})", self.keys, if self.keys == 1 { "" } else { "s" })?;
        let old = match &self.old {
            OldWal::Missing => "missing".to_string(),
            OldWal::Foreign(Some(id)) => format!("WAL {id}, which is not the WAL this state was built from"),
            OldWal::Foreign(None) => "a WAL without an identity, not the one this state was built from".into(),
            OldWal::Damaged(why) => format!("unusable: {why}"),
            OldWal::Gap { first, last } => format!("holds records {first}..={last}, but the state needs {} next", a + 1),
            OldWal::Behind { last } => format!("ends at record {last}, before the state's index {a}"),
        };
        let moved = self.moved_to.as_ref().map_or(String::new(), |p| format!(" (moved to {}, kept for inspection: meridian wal dump)", p.display()));
        writeln!(f, "old WAL: {old}{moved}")?;
        let lost = match &self.old {
            OldWal::Behind { .. } => "no record the state lacks: it already holds everything up to index {a}".replace("{a}", &a.to_string()),
            OldWal::Gap { first, last } => {
                format!("records {}..={last} ({} records): {}..{first} are gone from the WAL, so the rest cannot be applied either", a + 1, last - a, a + 1)
            }
            _ if c > a => format!(
                "every record after index {a}: an unknown number, the WAL that held them is gone; at most {} of them had been applied and \
                 acknowledged here (indexes {}..={c}); any write acknowledged after the last checkpoint is among them",
                c - a,
                a + 1
            ),
            _ => format!("every record after index {a} that was logged but never applied here: an unknown number, the WAL that held them is gone"),
        };
        writeln!(f, "lost:    {lost}")?;
        let hard = if self.kept_hard_state { "kept from the old WAL" } else { "that of the last applied write, as the old WAL's state file could not be read" };
        write!(
            f,
            "new WAL: {}, first index {n}, epoch {e} ({hard}); revisions continue at {n}, above every revision this node handed out",
            self.new_id,
            n = self.next_index,
            e = self.epoch,
        )
    }
}
