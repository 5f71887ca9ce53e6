//! # meridian — node wiring, storage, HTTP API and CLI
//!
//! A write travels: [`api`] (validate) → [`meridian_modes::Replicator::submit`] (the mode:
//! WAL append with group commit, replication, commit) → [`store`] (apply to redb) → answer
//! with `revision` and `bookmark`. A read: [`api`] → `Replicator::read_fence` (bookmark,
//! read index) → [`store`].
//!
//! Module map:
//! - [`config`]: `MERIDIAN_*` variables and the TOML file → [`config::Config`]; exit 2 on error.
//! - [`store`]: the redb state machine.
//! - [`storage`]: the state and the WAL it was built from, kept together: the check at
//!   start, `meridian wal reset`.
//! - `wal_unusable`: [`storage::WalUnusable`], why a WAL cannot be used with its state and
//!   what the operator can do.
//! - [`node`]: opens the data directory (lock, WAL, store, recovery), starts the mode and
//!   the HTTP server, and shuts them down in order.
//! - `node_error`: [`node::NodeError`], why a node could not start or stopped serving, and
//!   its exit code.
//! - [`resume`]: a cluster mode that stops on a storage error and starts again, on the same
//!   port, once the disk has room.
//! - [`lock`]: the data-directory lock that keeps a second process out.
//! - [`node_id`]: the node's name when none is configured (generated once, kept in DATA_DIR).
//! - [`cert_check`]: warns at start when the node's own cluster certificate is out of date.
//! - [`api`]: the HTTP data and admin API (axum), errors, auth.
//! - [`metrics`]: the Prometheus registry.
//! - [`cli`]: the `meridian` command line (serve, healthcheck, kv, restore, wal, bench, certs).
//! - [`client`]: a small HTTP client for the CLI and the benchmark.
//! - [`bench`]: the PUT load generator.

pub mod api;
pub mod bench;
pub mod cert_check;
pub mod cli;
pub mod client;
pub mod config;
pub mod lock;
pub mod metrics;
pub mod node;
mod node_error;
pub mod node_id;
pub mod resume;
pub mod storage;
pub mod store;
mod wal_unusable;
