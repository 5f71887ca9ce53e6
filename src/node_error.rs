//! [`NodeError`]: why a node could not start or stopped serving, and the exit code it
//! means. Public as `node::NodeError`; in a file of its own because `storage` returns it too.

use std::net::SocketAddr;

use meridian_modes::recovery::RecoveryError;

use crate::lock::LockError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    NodeId(#[from] crate::node_id::NodeIdError),
    #[error("cannot open the WAL: {0}")]
    Wal(#[from] meridian_wal::WalError),
    #[error("cannot open the state store: {0}")]
    Store(#[from] meridian_modes::state_machine::StateMachineError),
    #[error("recovery failed: {0}")]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    WalUnusable(#[from] crate::wal_unusable::WalUnusable),
    #[error("cannot start ha_standby: {0}")]
    Ha(#[from] meridian_modes::ha::HaStartError),
    #[error("cannot start the cluster transport on {addr} (MERIDIAN_CLUSTER_BIND_ADDR): {reason}")]
    Transport { addr: SocketAddr, reason: String },
    #[error("cannot listen on {addr} (MERIDIAN_HTTP_ADDR): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

impl NodeError {
    /// 2 for a setting the operator must change, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            NodeError::Config(_) | NodeError::Bind { .. } | NodeError::Transport { .. } => 2,
            NodeError::Lock(LockError::NotADirectory { .. }) => 2,
            _ => 1,
        }
    }
}
