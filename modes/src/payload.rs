//! What a WAL record's payload holds: the one place that turns log entries into payload bytes
//! and back. Every writer and every reader of WAL payloads goes through [`LogPayload`].
//!
//! ```text
//! v1       0xA1 | postcard(LogPayload)
//! legacy   postcard(Command)            (written before payloads were versioned)
//! ```
//!
//! Why a legacy record can never be mistaken for v1: postcard writes an enum's variant index
//! first, as a varint. [`Command`] has four variants, so a legacy payload starts with a byte in
//! `0x00..=0x03`. A varint byte of `0xA1` has its high (continuation) bit set, which only a
//! variant index of 128 or more produces. So the first byte alone tells the two apart, and any
//! byte that is neither is damage or a newer format, refused by name.

use serde::{Deserialize, Serialize};

use crate::command::Command;

/// The version tag of the current payload layout.
const V1: u8 = 0xA1;
/// Legacy payloads start with a [`Command`] variant index, below this.
const LEGACY_VARIANTS: u8 = 4;

/// What one log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogPayload {
    /// Carries nothing for the state; an entry that only takes an index (Raft's blank entry).
    Blank,
    /// A client's (or the log's own) command.
    Normal(Command),
    /// A replication-membership change, opaque here; the mode that wrote it decodes it.
    Membership(Vec<u8>),
}

/// Why payload bytes do not decode.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the payload is empty")]
    Empty,
    #[error("unknown payload version tag {0:#04x}: neither a v1 payload (0xa1) nor a legacy command; damaged, or written by a newer meridian")]
    UnknownVersion(u8),
    #[error("the body of a {version} payload does not decode: {reason}")]
    BadBody { version: &'static str, reason: String },
}

impl LogPayload {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![V1];
        // postcard cannot fail for these plain types with an in-memory Vec.
        out.extend_from_slice(&postcard::to_allocvec(self).expect("payload encodes"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<LogPayload, PayloadError> {
        match bytes.first() {
            None => Err(PayloadError::Empty),
            Some(&V1) => whole(&bytes[1..], "v1"),
            Some(&b) if b < LEGACY_VARIANTS => whole(bytes, "legacy").map(LogPayload::Normal),
            Some(&b) => Err(PayloadError::UnknownVersion(b)),
        }
    }

    /// The command to apply: the carried one, or [`Command::Noop`] for entries that change no key.
    pub fn command(&self) -> Command {
        match self {
            LogPayload::Normal(c) => c.clone(),
            LogPayload::Blank | LogPayload::Membership(_) => Command::Noop,
        }
    }
}

/// Decodes `bytes` as exactly one `T`: bytes left over mean the length or the body is damaged.
fn whole<'a, T: Deserialize<'a>>(bytes: &'a [u8], version: &'static str) -> Result<T, PayloadError> {
    let bad = |reason: String| PayloadError::BadBody { version, reason };
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes left over after the body", rest.len())));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Compare, CompareTarget, Op, Txn};

    fn commands() -> Vec<Command> {
        vec![
            Command::Put { key: "a/b".into(), value: vec![0, 1, 255], if_revision: Some(0) },
            Command::Delete { key: "k".into(), if_revision: None },
            Command::Txn(Txn {
                compare: vec![Compare { key: "x".into(), target: CompareTarget::Value(b"v".to_vec()) }],
                success: vec![Op::Put { key: "x".into(), value: b"w".to_vec() }],
                failure: vec![Op::Get { key: "x".into() }],
            }),
            Command::Noop,
        ]
    }

    #[test]
    fn every_payload_round_trips() {
        let mut all: Vec<LogPayload> = commands().into_iter().map(LogPayload::Normal).collect();
        all.extend([LogPayload::Blank, LogPayload::Membership(vec![7, 0, 0xA1])]);
        for p in all {
            let bytes = p.encode();
            assert_eq!(bytes[0], 0xA1);
            assert_eq!(LogPayload::decode(&bytes).unwrap(), p);
        }
    }

    #[test]
    fn a_legacy_record_decodes_as_a_normal_entry() {
        for c in commands() {
            // Exactly what the WAL held before payloads were versioned.
            let legacy = postcard::to_allocvec(&c).unwrap();
            assert!(legacy[0] < LEGACY_VARIANTS, "{c:?} starts with {:#04x}", legacy[0]);
            assert_eq!(LogPayload::decode(&legacy).unwrap(), LogPayload::Normal(c));
        }
    }

    #[test]
    fn only_normal_entries_carry_a_command() {
        let put = Command::Delete { key: "k".into(), if_revision: None };
        assert_eq!(LogPayload::Normal(put.clone()).command(), put);
        assert_eq!(LogPayload::Blank.command(), Command::Noop);
        assert_eq!(LogPayload::Membership(vec![1]).command(), Command::Noop);
    }

    #[test]
    fn damaged_payloads_are_named_errors_not_panics() {
        assert!(matches!(LogPayload::decode(&[]), Err(PayloadError::Empty)));
        assert!(matches!(LogPayload::decode(&[0xff, 0xff, 0xff]), Err(PayloadError::UnknownVersion(0xff))));
        assert!(matches!(LogPayload::decode(&[0x04]), Err(PayloadError::UnknownVersion(0x04))));
        assert!(matches!(LogPayload::decode(&[0xA1]), Err(PayloadError::BadBody { version: "v1", .. })));
        assert!(matches!(LogPayload::decode(&[0xA1, 9]), Err(PayloadError::BadBody { version: "v1", .. })));
        let mut trailing = LogPayload::Blank.encode();
        trailing.push(0);
        assert!(matches!(LogPayload::decode(&trailing), Err(PayloadError::BadBody { .. })));
        let put = postcard::to_allocvec(&Command::Put { key: "k".into(), value: vec![1; 10], if_revision: None }).unwrap();
        assert!(matches!(LogPayload::decode(&put[..put.len() - 3]), Err(PayloadError::BadBody { version: "legacy", .. })));
    }
}
