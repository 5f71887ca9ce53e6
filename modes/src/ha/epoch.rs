//! Epoch numbers, and the one rule by which a node adopts a higher one.
//!
//! **Invariant: every writer of a log position owns a unique (epoch, index).** Raft gets it
//! from majorities (one leader per term). An HA pair has no majority without its witness,
//! so uniqueness comes from the numbers themselves, as Paxos ballots do: an epoch's low
//! [`TAG_BITS`] bits are the tag of the node that started it ([`tag_of`] its node id), the
//! high bits count rounds. A node only ever starts epochs carrying its own tag ([`next`]),
//! so two nodes can never both write in the same epoch — not two nodes both configured
//! `HA_ROLE=primary`, not a manual promote racing an automatic one, not a primary resuming
//! alone after a crash (which always starts a new epoch: `driver::decide_role`). Epochs
//! stay totally ordered `u64`s, so every comparison (fencing, the witness, log matching on
//! (epoch, index)) is unchanged.
//!
//! A message may raise this node's epoch only through [`check_raise`]: never past the
//! arithmetic range, never by more than [`MAX_ROUND_STEP`] rounds at once (a real promotion
//! moves one round), and never into an epoch carrying this node's own tag — this node would
//! have persisted such an epoch before using it, so a message claiming one is forged or
//! comes from damaged state.

use sha2::{Digest, Sha256};

/// Bits of an epoch that name its owner.
pub const TAG_BITS: u32 = 16;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Rounds one message may raise an epoch by. Legitimate epochs move one round per
/// promotion; a jump of a million is a forged or corrupt message.
pub const MAX_ROUND_STEP: u64 = 1 << 20;

/// The tag of the node named `node_id`: 1..=65535 (0 is never a tag, so epoch 0 stays "none").
pub fn tag_of(node_id: &str) -> u64 {
    let h = Sha256::digest(node_id.as_bytes());
    let v = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    1 + v % TAG_MASK
}

/// The round an epoch belongs to (the promotion count).
pub fn round(epoch: u64) -> u64 {
    epoch >> TAG_BITS
}

/// The tag of the node that started `epoch` (0 for epoch 0).
pub fn owner(epoch: u64) -> u64 {
    epoch & TAG_MASK
}

/// A human form for logs: `round.tag`.
pub fn display(epoch: u64) -> String {
    format!("{}.{}", round(epoch), owner(epoch))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    #[error("epoch {0} is out of range: no further epoch can be started")]
    Exhausted(u64),
    #[error("epoch {claimed} jumps more than {MAX_ROUND_STEP} rounds past this node's {mine}; refused as forged or corrupt")]
    TooFar { mine: u64, claimed: u64 },
    #[error("epoch {0} carries this node's own tag but this node never started it; refused (forged, or this node's epoch state was lost)")]
    NotStartedHere(u64),
}

/// The epoch this node (tagged `tag`) starts next, above every epoch in `seen`.
pub fn next(seen: u64, tag: u64) -> Result<u64, EpochError> {
    let r = round(seen).checked_add(1).filter(|r| *r <= u64::MAX >> TAG_BITS).ok_or(EpochError::Exhausted(seen))?;
    Ok((r << TAG_BITS) | tag)
}

/// Whether a message may raise this node's epoch from `mine` to `claimed` (only called when
/// `claimed > mine`). `my_tag` is this node's tag.
pub fn check_raise(mine: u64, claimed: u64, my_tag: u64) -> Result<(), EpochError> {
    if round(claimed) > round(mine).saturating_add(MAX_ROUND_STEP) {
        return Err(EpochError::TooFar { mine, claimed });
    }
    if owner(claimed) == my_tag {
        return Err(EpochError::NotStartedHere(claimed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_never_start_the_same_epoch() {
        let (a, b) = (tag_of("node-a"), tag_of("node-b"));
        assert_ne!(a, b);
        assert!(a > 0 && b > 0 && a <= TAG_MASK && b <= TAG_MASK);
        // Both start from nothing (both configured primary): different epochs, ordered.
        let (ea, eb) = (next(0, a).unwrap(), next(0, b).unwrap());
        assert_ne!(ea, eb);
        assert_eq!(round(ea), 1);
        // Each node's next epoch is above everything it has seen, whoever started it.
        let e2 = next(ea.max(eb), a).unwrap();
        assert!(e2 > ea && e2 > eb && owner(e2) == a);
    }

    #[test]
    fn raising_is_checked() {
        let (a, b) = (tag_of("node-a"), tag_of("node-b"));
        let mine = next(0, a).unwrap();
        assert!(check_raise(mine, next(mine, b).unwrap(), a).is_ok());
        // The frame from issue 9: epoch 2^64-1.
        assert!(matches!(check_raise(mine, u64::MAX, a), Err(EpochError::TooFar { .. })));
        // An epoch carrying our own tag that we never started.
        assert!(matches!(check_raise(mine, next(mine, a).unwrap(), a), Err(EpochError::NotStartedHere(_))));
        // No wrap at the top.
        assert!(next(u64::MAX, a).is_err());
    }
}
