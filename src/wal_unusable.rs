//! [`WalUnusable`]: why [`storage`](crate::storage) refuses a WAL (missing, another node's,
//! damaged) and what the operator can do. Public as `storage::WalUnusable`; in a file of its
//! own because [`NodeError`](crate::node::NodeError) carries it and `storage` returns `NodeError`.

/// The WAL cannot be used with this state: what was found, then what the operator can do.
#[derive(Debug, thiserror::Error)]
#[error("{problem}\n{advice}")]
pub struct WalUnusable {
    pub problem: String,
    pub advice: String,
}
