//! Disaster recovery: `CLUSTER_RAFT_FORCE_NEW_CLUSTER=true` turns a surviving member into a
//! one-member cluster that keeps every entry it holds (like etcd's `--force-new-cluster`).
//!
//! Done on storage, before openraft starts: a membership entry naming only this node is
//! appended after the last entry, in a new term, and the vote moves to that term for this
//! node. openraft takes the newest membership in the log as the effective one, so on start
//! this node is the only voter, elects itself and commits everything before that entry — the
//! committed writes it had and any uncommitted tail it held (an operator who forces a new
//! cluster accepts that tail, as with etcd).
//!
//! It happens once: a marker file records it, and a later start with the variable still set
//! only warns (forcing again would drop members added since). The old members must not come
//! back with their old data: wipe their data directories and add them as new members.

use std::io;
use std::path::Path;

use meridian_wal::{Record, Wal};

use super::log_store::{from_record, to_record, RaftHardState};
use super::types::{log_id, MeridianNode, Membership, Vote};
use crate::state_machine::StateMachine;

const MARKER: &str = "force-new-cluster.done";

/// Rewrites the Raft state so that `me` (id, node) is the only member. Blocking.
pub fn force(data_dir: &Path, wal: &Wal, sm: &dyn StateMachine, me: (u64, MeridianNode)) -> io::Result<()> {
    let marker = data_dir.join("raft").join(MARKER);
    if marker.exists() {
        tracing::warn!(
            marker = %marker.display(),
            "MERIDIAN_CLUSTER_RAFT_FORCE_NEW_CLUSTER is set but this node already forced a new cluster; ignoring it (remove the variable)"
        );
        return Ok(());
    }
    let mut hard = RaftHardState::load(wal)?;
    // The newest log id this node holds: its last record, or its applied state.
    let last_pos = wal.last_index();
    let (last_term, last_pos) = if last_pos >= wal.first_index() && last_pos > 0 {
        let r = wal.read_from(last_pos, 1, usize::MAX).map_err(|e| io::Error::other(e.to_string()))?;
        let r = r.first().ok_or_else(|| io::Error::other("the WAL's last record cannot be read"))?;
        from_record(r)?; // refuse to build on a record that does not decode
        (r.epoch, r.index)
    } else {
        let s = sm.applied_state().map_err(|e| io::Error::other(e.to_string()))?;
        (s.epoch, s.index.max(hard.purged.map_or(0, |p| p.index + 1)))
    };
    let voted = hard.vote.as_ref().map_or(0, |v| v.leader_id.term);
    let term = last_term.max(voted) + 1;
    let membership = Membership::from(std::collections::BTreeMap::from([(me.0, me.1.clone())]));
    let id = log_id(term, last_pos + 1).expect("position > 0");
    let entry = openraft::Entry { log_id: id, payload: openraft::EntryPayload::Membership(membership) };
    let record: Record = to_record(&entry);
    wal.append(vec![record]).wait().map_err(|e| io::Error::other(e.to_string()))?;
    hard.vote = Some(Vote::new_committed(term, me.0));
    hard.save(wal).map_err(|e| io::Error::other(e.to_string()))?;
    std::fs::create_dir_all(marker.parent().expect("has a parent"))?;
    std::fs::write(&marker, format!("term {term} at position {}\n", last_pos + 1))?;
    tracing::warn!(term, position = last_pos + 1, node = %me.1, "FORCED A NEW CLUSTER: this node is now the only member; add the others back with empty data directories");
    Ok(())
}
