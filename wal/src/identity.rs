//! [`WalId`]: the identity a WAL directory is given when it is first created.
//!
//! The id is a random 128-bit number written into `wal.state` before the first segment
//! exists, and into the header of every segment. It lets the WAL tell its own files from
//! another WAL's, and lets the state built from a WAL remember which WAL that was: a caller
//! that passes [`WalOptions::expected_id`](crate::WalOptions::expected_id) gets
//! [`WalError::Missing`](crate::WalError::Missing) or
//! [`WalError::Foreign`](crate::WalError::Foreign) instead of a silently fresh, empty log.

use std::fmt;

/// A WAL directory's identity; shown as 32 lower-case hex digits. Never zero (zero in a
/// segment header means "written before WALs had identities").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalId(u128);

impl WalId {
    /// A fresh random identity.
    pub(crate) fn generate() -> WalId {
        loop {
            let id: u128 = rand::random();
            if id != 0 {
                return WalId(id);
            }
        }
    }

    /// `None` for zero, the "no identity" marker.
    pub fn from_u128(id: u128) -> Option<WalId> {
        (id != 0).then_some(WalId(id))
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }

    pub(crate) fn from_le_bytes(b: &[u8]) -> Option<WalId> {
        WalId::from_u128(u128::from_le_bytes(b[..16].try_into().unwrap()))
    }
}

impl fmt::Display for WalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_non_zero_and_print_as_32_hex_digits() {
        let (a, b) = (WalId::generate(), WalId::generate());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(WalId::from_le_bytes(&a.as_u128().to_le_bytes()), Some(a));
        assert_eq!(WalId::from_u128(0), None);
    }
}
