//! Commands a client submits and the results of applying them.
//!
//! A [`Command`] is what a WAL record (or a Raft entry) carries, inside a
//! [`LogPayload`](crate::payload::LogPayload) that alone turns it into payload bytes. Preconditions (`if_revision`, txn compares) are part of the
//! command and are evaluated when the entry is *applied*, so every replica reaches the same
//! verdict from the same log — the etcd model. A failed precondition still consumes its index.

use serde::{Deserialize, Serialize};

/// A state-changing request, as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`; with `if_revision`, only if the key's mod revision equals it
    /// (0 = the key must not exist).
    Put { key: String, #[serde(with = "serde_bytes")] value: Vec<u8>, if_revision: Option<u64> },
    /// Remove `key`; with `if_revision`, only if the key's mod revision equals it.
    Delete { key: String, if_revision: Option<u64> },
    /// All-or-nothing transaction.
    Txn(Txn),
    /// Changes nothing; written by a new leader/primary to commit its epoch.
    Noop,
    /// multi_region: a client command stamped by its region's leader. Its puts and deletes
    /// carry `stamp` and win over a key's current version only if `stamp` is higher (last
    /// write wins); deletes leave tombstones. See [`crate::region`].
    Stamped { stamp: Stamp, command: Box<Command> },
    /// multi_region: versions shipped from region `origin`, merged key by key (last write
    /// wins), and that region's high-water mark raised to `through` (a position in the
    /// origin's log), all in one entry so that both land together. `clock`: every version the
    /// origin stamps after `through` is stamped above it (see [`crate::apply`], "received
    /// clocks"); 0 when the batch says nothing about it.
    /// `keep_conflicts`: the receiving region's `CLUSTER_CONFLICT_STRATEGY` is `manual`.
    RegionBatch { origin: String, through: u64, clock: u64, writes: Vec<KeyValue>, primary: Option<PrimaryRecord>, keep_conflicts: bool },
    /// multi_region: which region takes writes, stored if it is newer than the record held
    /// (see [`PrimaryRecord`]).
    SetPrimary(PrimaryRecord),
    /// multi_region: removes each named tombstone if it is still the key's version, and
    /// raises the region's collection horizon to `horizon` (see [`crate::apply`], "collecting
    /// tombstones"). Proposed by the region leader's collector, never by a client.
    CollectTombstones { horizon: u64, tombstones: Vec<(String, Stamp)> },
}

/// multi_region with one primary region: which region takes writes since which promotion.
/// Records compare by (epoch, region), so two regions promoting themselves at once still
/// agree, everywhere, on one winner; a region adopts a record only if it is higher than its
/// own. `hlc` is the promoting leader's clock at the promotion: a version the old primary
/// stamped after it was written there without knowing of the promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryRecord {
    pub epoch: u64,
    pub region: String,
    pub hlc: u64,
}

impl PrimaryRecord {
    fn rank(&self) -> (u64, &str) {
        (self.epoch, &self.region)
    }

    /// True when `self` should replace `held`.
    pub fn supersedes(&self, held: Option<&PrimaryRecord>) -> bool {
        held.is_none_or(|h| self.rank() > h.rank())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.region.len());
        v.extend_from_slice(&self.epoch.to_le_bytes());
        v.extend_from_slice(&self.hlc.to_le_bytes());
        v.extend_from_slice(self.region.as_bytes());
        v
    }

    pub fn decode(b: &[u8]) -> Option<PrimaryRecord> {
        if b.len() < 16 {
            return None;
        }
        Some(PrimaryRecord {
            epoch: u64::from_le_bytes(b[..8].try_into().ok()?),
            hlc: u64::from_le_bytes(b[8..16].try_into().ok()?),
            region: String::from_utf8(b[16..].to_vec()).ok()?,
        })
    }
}

/// The reserved key holding the [`PrimaryRecord`].
pub fn primary_key() -> String {
    format!("{RESERVED_PREFIX}region/primary")
}

/// Where and when a version was written, for multi-region last-write-wins: a hybrid logical
/// clock reading (see `region::hlc`) and the region that wrote it. Versions compare by
/// (hlc, region), so two regions never tie.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub hlc: u64,
    pub region: String,
}

/// Keys starting with this byte are the store's own (a multi-region high-water mark per
/// origin region): clients cannot name them ([`Command::validate`]), reads and lists never
/// show them, snapshots carry them, and digests leave them out (they differ per region by
/// design).
pub const RESERVED_PREFIX: char = '\u{0}';

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's mod revision equals this (0 = the key is absent).
    Revision(u64),
    /// The key exists and holds exactly these bytes.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key exists (true) or is absent (false).
    Exists(bool),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put { key: String, #[serde(with = "serde_bytes")] value: Vec<u8> },
    Delete { key: String },
    Get { key: String },
}

/// A stored key with its revisions (etcd's create/mod revision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// multi_region only: who wrote this version and when; `None` in every other mode.
    pub stamp: Option<Stamp>,
    /// A deleted key kept so that an older version arriving later cannot resurrect it
    /// (multi_region only; always with a stamp). Reads treat it as absent.
    pub tombstone: bool,
    /// multi_region only: the stamp of the version this one replaced where it was written
    /// (`None`: the key had none there). Two versions conflict when neither region had seen
    /// the other's version as it wrote its own (see `apply`, "conflicts").
    pub parent: Option<Stamp>,
}

impl KeyValue {
    /// A live key written at `index` with no stamp (every mode but multi_region).
    pub fn plain(key: impl Into<String>, value: Vec<u8>, create_revision: u64, mod_revision: u64) -> KeyValue {
        KeyValue { key: key.into(), value, create_revision, mod_revision, stamp: None, tombstone: false, parent: None }
    }

    /// True when a client may see this entry: not a tombstone and not a reserved key.
    pub fn is_visible(&self) -> bool {
        !self.tombstone && !is_reserved(&self.key)
    }
}

/// True for the store's own keys (see [`RESERVED_PREFIX`]).
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// What applying one command did. `revision` is the index of the entry that carried it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub revision: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Written,
    Deleted { existed: bool },
    /// `if_revision` did not match; `current_revision` is the key's mod revision (0 = absent).
    PreconditionFailed { current_revision: u64 },
    Txn { succeeded: bool, results: Vec<OpResult> },
    Noop,
    /// A [`Command::RegionBatch`] applied: the origin's high-water mark now, and how many of
    /// the shipped versions won over what was here.
    RegionMerged { high_water: u64, won: u64, conflicts: u64 },
    /// A [`Command::CollectTombstones`] applied: how many tombstones were removed.
    Collected { removed: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put { key: String },
    Delete { key: String, deleted: bool },
    Get { key: String, kv: Option<KeyValue> },
}

impl Command {
    /// True when the command cannot change state (a txn of only gets still takes an index,
    /// so that its reads are serialized with writes).
    pub fn is_noop(&self) -> bool {
        matches!(self, Command::Noop)
    }
}

/// Versions in one [`Command::RegionBatch`].
pub const MAX_REGION_BATCH: usize = 4096;

/// What a client command may contain. The HTTP layer enforces the same numbers; a command
/// that arrives any other way (forwarded over the cluster port) is checked here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Compares in a txn, and ops in each branch.
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_key_bytes: 1024, max_value_bytes: 1 << 20, max_txn_ops: 256 }
    }
}

/// Why a command was refused before it reached the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
}

impl Invalid {
    /// The API error code this maps to.
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::BadRequest(_) => "bad_request",
            Invalid::TooLarge(_) => "too_large",
        }
    }
}

impl Command {
    /// Checks a client command against `limits`: keys 1..=max bytes, values up to the value
    /// limit, txns within the op limit. `Noop` is the log's own and never a client's.
    pub fn validate(&self, limits: &Limits) -> Result<(), Invalid> {
        let key = |k: &str| {
            if k.is_empty() || k.len() > limits.max_key_bytes {
                return Err(Invalid::BadRequest(format!("keys must be 1 to {} bytes of UTF-8; this one is {} bytes", limits.max_key_bytes, k.len())));
            }
            if is_reserved(k) {
                return Err(Invalid::BadRequest("keys may not start with a NUL character (reserved for the store's own keys)".into()));
            }
            Ok(())
        };
        let value = |v: &[u8]| {
            if v.len() > limits.max_value_bytes {
                return Err(Invalid::TooLarge(format!("value is {} bytes; the limit is {} (MERIDIAN_MAX_VALUE_BYTES)", v.len(), limits.max_value_bytes)));
            }
            Ok(())
        };
        match self {
            Command::Put { key: k, value: v, .. } => {
                key(k)?;
                value(v)
            }
            Command::Delete { key: k, .. } => key(k),
            Command::Txn(t) => {
                for (what, n) in [("compares", t.compare.len()), ("success ops", t.success.len()), ("failure ops", t.failure.len())] {
                    if n > limits.max_txn_ops {
                        return Err(Invalid::BadRequest(format!("a txn may have at most {} {what}; this one has {n}", limits.max_txn_ops)));
                    }
                }
                for c in &t.compare {
                    key(&c.key)?;
                    if let CompareTarget::Value(v) = &c.target {
                        value(v)?;
                    }
                }
                for op in t.success.iter().chain(&t.failure) {
                    match op {
                        Op::Put { key: k, value: v } => {
                            key(k)?;
                            value(v)?;
                        }
                        Op::Delete { key: k } | Op::Get { key: k } => key(k)?,
                    }
                }
                Ok(())
            }
            Command::Noop => Err(Invalid::BadRequest("a no-op is written by the log itself, never submitted".into())),
            Command::Stamped { command, .. } => command.validate(limits),
            Command::SetPrimary(p) => {
                if p.region.is_empty() || p.region.len() > 64 {
                    return Err(Invalid::BadRequest("a primary record needs a region name of 1 to 64 bytes".into()));
                }
                Ok(())
            }
            Command::CollectTombstones { tombstones, .. } => {
                if tombstones.len() > MAX_REGION_BATCH {
                    return Err(Invalid::BadRequest(format!("a collection names at most {MAX_REGION_BATCH} tombstones")));
                }
                Ok(())
            }
            Command::RegionBatch { origin, writes, .. } => {
                if origin.is_empty() || writes.len() > MAX_REGION_BATCH {
                    return Err(Invalid::BadRequest(format!("a region batch needs an origin and at most {MAX_REGION_BATCH} versions")));
                }
                for w in writes {
                    key(&w.key)?;
                    value(&w.value)?;
                    if w.stamp.is_none() {
                        return Err(Invalid::BadRequest(format!("shipped version of {:?} has no stamp", w.key)));
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The types as they were before their byte fields were marked `serde_bytes` (which only
    /// makes them faster to encode and decode): stored and shipped bytes must not change.
    mod before {
        use serde::Serialize;
        // Unused variants keep the variant indexes postcard writes.
        #[allow(dead_code)]
        #[derive(Serialize)]
        pub enum Command {
            Put { key: String, value: Vec<u8>, if_revision: Option<u64> },
            Delete { key: String, if_revision: Option<u64> },
            Txn(Txn),
        }
        #[derive(Serialize)]
        pub struct Txn {
            pub compare: Vec<Compare>,
            pub success: Vec<Op>,
            pub failure: Vec<Op>,
        }
        #[derive(Serialize)]
        pub struct Compare {
            pub key: String,
            pub target: CompareTarget,
        }
        #[allow(dead_code)]
        #[derive(Serialize)]
        pub enum CompareTarget {
            Revision(u64),
            Value(Vec<u8>),
        }
        #[derive(Serialize)]
        pub enum Op {
            Put { key: String, value: Vec<u8> },
        }
        #[derive(Serialize)]
        pub struct KeyValue {
            pub key: String,
            pub value: Vec<u8>,
            pub create_revision: u64,
            pub mod_revision: u64,
            pub stamp: Option<super::Stamp>,
            pub tombstone: bool,
            pub parent: Option<super::Stamp>,
        }
    }

    #[test]
    fn byte_fields_encode_as_before_in_postcard_and_json() {
        let value: Vec<u8> = (0..=255).collect();
        let same = |old: &dyn erased::Encode, new: &dyn erased::Encode| {
            assert_eq!(old.postcard(), new.postcard(), "postcard bytes changed");
            assert_eq!(old.json(), new.json(), "JSON changed");
        };
        same(
            &before::Command::Put { key: "k".into(), value: value.clone(), if_revision: Some(3) },
            &Command::Put { key: "k".into(), value: value.clone(), if_revision: Some(3) },
        );
        same(
            &before::Command::Txn(before::Txn {
                compare: vec![before::Compare { key: "c".into(), target: before::CompareTarget::Value(value.clone()) }],
                success: vec![before::Op::Put { key: "p".into(), value: value.clone() }],
                failure: vec![],
            }),
            &Command::Txn(Txn {
                compare: vec![Compare { key: "c".into(), target: CompareTarget::Value(value.clone()) }],
                success: vec![Op::Put { key: "p".into(), value: value.clone() }],
                failure: vec![],
            }),
        );
        let kv = KeyValue::plain("k", value.clone(), 4, 9);
        let old_kv = before::KeyValue { key: "k".into(), value: value.clone(), create_revision: 4, mod_revision: 9, stamp: None, tombstone: false, parent: None };
        same(&old_kv, &kv);
        // And what the old types wrote reads back.
        let back: KeyValue = postcard::from_bytes(&postcard::to_allocvec(&old_kv).unwrap()).unwrap();
        assert_eq!(back, kv);
        let back: KeyValue = serde_json::from_slice(&serde_json::to_vec(&old_kv).unwrap()).unwrap();
        assert_eq!(back, kv);
    }

    mod erased {
        pub trait Encode {
            fn postcard(&self) -> Vec<u8>;
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Encode for T {
            fn postcard(&self) -> Vec<u8> {
                postcard::to_allocvec(self).unwrap()
            }
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }

    #[test]
    fn validate_applies_the_http_limits() {
        let l = Limits { max_key_bytes: 1024, max_value_bytes: 1024, max_txn_ops: 2 };
        let put = |k: &str, n: usize| Command::Put { key: k.into(), value: vec![0; n], if_revision: None };
        assert!(put("k", 1024).validate(&l).is_ok());
        assert_eq!(put("", 1).validate(&l).unwrap_err().code(), "bad_request");
        assert_eq!(put(&"x".repeat(5000), 1).validate(&l).unwrap_err().code(), "bad_request");
        assert_eq!(put("k", 100_000).validate(&l).unwrap_err().code(), "too_large");
        assert!(Command::Noop.validate(&l).is_err());
        let txn = Command::Txn(Txn { compare: vec![], success: vec![Op::Get { key: "a".into() }; 3], failure: vec![] });
        assert_eq!(txn.validate(&l).unwrap_err().code(), "bad_request");
        let txn = Command::Txn(Txn { compare: vec![], success: vec![Op::Put { key: "a".into(), value: vec![0; 2000] }], failure: vec![] });
        assert_eq!(txn.validate(&l).unwrap_err().code(), "too_large");
    }
}
