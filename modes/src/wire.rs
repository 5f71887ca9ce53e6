//! The payload encoding of cluster messages: postcard (compact, and schema-checked by the
//! Rust types on both sides, so both nodes must run builds with the same message types).
//! A payload that does not decode is an error, never a default, and is never acted on.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub fn encode<T: Serialize>(v: &T) -> Bytes {
    // Our message types hold only plain data, which postcard always encodes.
    Bytes::from(postcard::to_allocvec(v).expect("cluster messages encode"))
}

/// `family` names the protocol in the error, e.g. `malformed HA message: …`.
pub fn decode<'a, T: Deserialize<'a>>(family: &str, b: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed {family} message: {e}"))
}
