//! The cluster secret: a shared key that both ends of a connection prove they hold, in the
//! handshake, without sending it.
//!
//! Each side sends a fresh 32-byte random nonce; each then sends
//! `HMAC-SHA256(secret, label | cluster id | client nonce | server nonce | own node id)`, where
//! `label` is `meridian/v2/server` for the server's proof and `meridian/v2/client` for the
//! client's, so a proof can never be reflected back in the other direction, and the nonces
//! make every proof good for one connection only. The server proves first: a client that
//! reached an impostor learns it before it proves anything. Proofs are compared in constant
//! time (ring's `hmac::verify`).
//!
//! The secret authenticates the handshake, not each frame: on a network where an attacker
//! can take over a TCP stream after the handshake, use mTLS.

use std::fmt;

use ring::hmac;

/// Bytes of a handshake nonce and of a proof (HMAC-SHA256).
pub const NONCE_BYTES: usize = 32;
pub const PROOF_BYTES: usize = 32;
/// Shortest secret accepted: 128 bits even for a secret of random bytes.
pub const MIN_SECRET_BYTES: usize = 16;

pub type Nonce = [u8; NONCE_BYTES];
pub type Proof = [u8; PROOF_BYTES];

/// Which end of the connection a proof comes from; each has its own label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Client => b"meridian/v2/client",
            Side::Server => b"meridian/v2/server",
        }
    }
}

/// The shared cluster secret (`MERIDIAN_CLUSTER_SECRET`). Its `Debug` output never shows it.
#[derive(Clone)]
pub struct ClusterSecret {
    key: hmac::Key,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// The connection a proof is bound to.
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    pub cluster_id: &'a str,
    pub client_nonce: &'a Nonce,
    pub server_nonce: &'a Nonce,
}

impl ClusterSecret {
    /// Fails when the secret is shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8]) -> Result<ClusterSecret, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the cluster secret must be at least {MIN_SECRET_BYTES} bytes (e.g. the output of `openssl rand -hex 32`)"
            ));
        }
        Ok(ClusterSecret { key: hmac::Key::new(hmac::HMAC_SHA256, secret) })
    }

    /// The proof `side`, calling itself `node_id`, gives for this connection.
    pub fn prove(&self, side: Side, t: &Transcript<'_>, node_id: &str) -> Proof {
        let tag = hmac::sign(&self.key, &message(side, t, node_id));
        let mut out = [0u8; PROOF_BYTES];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `proof` is the one `side`, calling itself `node_id`, must give. Constant time.
    pub fn verify(&self, side: Side, t: &Transcript<'_>, node_id: &str, proof: &[u8]) -> bool {
        hmac::verify(&self.key, &message(side, t, node_id), proof).is_ok()
    }
}

/// Variable-length fields carry a length so no two transcripts encode alike.
fn message(side: Side, t: &Transcript<'_>, node_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + 2 * NONCE_BYTES + t.cluster_id.len() + node_id.len());
    let mut field = |b: &[u8]| {
        m.extend_from_slice(&(b.len() as u32).to_be_bytes());
        m.extend_from_slice(b);
    };
    field(side.label());
    field(t.cluster_id.as_bytes());
    field(t.client_nonce);
    field(t.server_nonce);
    field(node_id.as_bytes());
    m
}

/// A fresh random nonce (the thread-local CSPRNG).
pub(crate) fn nonce() -> Nonce {
    let mut n = [0u8; NONCE_BYTES];
    rand::Rng::fill(&mut rand::rng(), &mut n[..]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc4231_test_case_1() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[0x0b; 20]);
        let tag = hmac::sign(&key, b"Hi There");
        assert_eq!(hex::encode(tag.as_ref()), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    }

    #[test]
    fn a_proof_is_bound_to_side_secret_nonces_cluster_and_node() {
        let s = ClusterSecret::new(b"0123456789abcdef-secret").unwrap();
        let (c, n) = ([1u8; 32], [2u8; 32]);
        let t = Transcript { cluster_id: "prod", client_nonce: &c, server_nonce: &n };
        let p = s.prove(Side::Client, &t, "node-a");
        assert!(s.verify(Side::Client, &t, "node-a", &p));
        // A reflected proof, another node, another connection, another cluster, another secret.
        assert!(!s.verify(Side::Server, &t, "node-a", &p));
        assert!(!s.verify(Side::Client, &t, "node-b", &p));
        let t2 = Transcript { server_nonce: &[3u8; 32], ..t };
        assert!(!s.verify(Side::Client, &t2, "node-a", &p));
        assert!(!s.verify(Side::Client, &Transcript { cluster_id: "test", ..t }, "node-a", &p));
        let other = ClusterSecret::new(b"0123456789abcdef-other!").unwrap();
        assert!(!other.verify(Side::Client, &t, "node-a", &p));
        assert!(!s.verify(Side::Client, &t, "node-a", &p[..31]));
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(ClusterSecret::new(b"too short").is_err());
        assert!(format!("{:?}", ClusterSecret::new(&[7; 16]).unwrap()).contains(".."));
    }
}
