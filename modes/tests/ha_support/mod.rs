//! What the in-process HA tests share: one node's configuration with test-sized timings
//! (heartbeat 100 ms, no automatic failover, checkpoints once an hour). A test changes
//! what it is about with struct update syntax: `HaConfig { forward_writes: true, ..ha_config(..) }`.

use std::path::Path;
use std::time::Duration;

use meridian_modes::command::Limits;
use meridian_modes::ha::gate::SyncMode;
use meridian_modes::ha::{ConfiguredRole, HaConfig};

pub fn ha_config(node_id: &str, role: ConfiguredRole, peer_addr: String, data_dir: &Path) -> HaConfig {
    HaConfig {
        node_id: node_id.into(),
        role,
        peer_addr,
        witness_addr: None,
        sync_mode: SyncMode::Async,
        heartbeat: Duration::from_millis(100),
        failover_timeout: Duration::from_secs(3600),
        auto_failover: false,
        batch_records: 100,
        sync_timeout: Duration::from_secs(1),
        forward_writes: false,
        http_addr: None,
        checkpoint_interval: Duration::from_secs(3600),
        data_dir: data_dir.to_path_buf(),
        wal_retention: 1000,
        limits: Limits { max_key_bytes: 1024, max_value_bytes: 1024, max_txn_ops: 4 },
        sync_strict: false,
        max_lag_on_failover: None,
    }
}
