//! A running node: opens the data directory, recovers, starts the mode and the HTTP server,
//! and shuts them down in order (stop accepting → finish in-flight writes → checkpoint →
//! close the WAL).
//!
//! Data directory layout: `LOCK` (see [`crate::lock`]), `wal/` (meridian-wal segments),
//! `state.redb` (the state machine), `divergent/` (WAL tails set aside on HA rejoin).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_modes::ha::gate::SyncMode;
use meridian_modes::ha::witness::{Witness, WitnessHandler, WitnessNode};
use meridian_modes::ha::{ConfiguredRole, HaConfig, HaStandby};
use meridian_modes::raft::handler::RaftHandler;
use meridian_modes::raft::sm_store::SmStore;
use meridian_modes::raft::{RaftConfig, RaftNode};
use meridian_modes::region;
use meridian_modes::standalone::{Standalone, StandaloneConfig};
use meridian_modes::transport::{
    Admission, AllowedPeer, ClusterSecret, Families, Family, Handler, Switch, TlsPaths, TlsSettings, TlsVersion, Transport,
    TransportConfig,
};
use meridian_modes::{Replicator, StateMachine};
use meridian_wal::{Wal, WalOptions};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::server::HttpLimits;
use crate::api::{self, AppState};
use crate::config::{ClusterMode, Config, ConfigError, HaRole, HaSyncMode, TlsMinVersion};
use crate::lock::DirLock;
use crate::metrics::Metrics;
use crate::resume::{Restart, Resumable};
use crate::store::RedbStore;

pub use crate::node_error::NodeError;

/// The parts of a started node, before it serves HTTP.
pub struct Node {
    pub state: Arc<AppState>,
    listener: TcpListener,
    limits: HttpLimits,
    /// The cluster port of `ha_standby`, `raft` and `multi_region`: shut down after the mode.
    transport: Option<Transport>,
    _lock: DirLock,
}

impl Node {
    /// Opens storage, recovers and starts the replication mode. Blocking I/O happens here,
    /// before the node accepts any request.
    pub async fn open(cfg: &Config) -> Result<Node, NodeError> {
        // Settings that can only be checked by reading files come before any data is touched.
        let tls = load_tls(cfg)?;
        let lock = DirLock::acquire(&cfg.data_dir)?;
        let mut cfg = cfg.clone();
        let (node_id, generated) = crate::node_id::resolve(&cfg.data_dir, &cfg.cluster_node_id)?;
        if generated {
            info!(node_id = %node_id, file = %cfg.data_dir.join(crate::node_id::FILE).display(), "MERIDIAN_CLUSTER_NODE_ID is unset: generated this node's id and stored it");
        }
        cfg.cluster_node_id = node_id;
        let cfg = &cfg;
        if cfg.cluster_advertise_addr.is_some() && !cfg.cluster_mode.runs_raft() {
            warn!(mode = cfg.cluster_mode.as_str(), "MERIDIAN_CLUSTER_ADVERTISE_ADDR is used in raft mode only (members dial it); in this mode each node dials the address it is given (ha_standby: MERIDIAN_CLUSTER_HA_PEER_ADDR), so it is ignored");
        }
        let metrics = Metrics::new();
        let mut opts = WalOptions::new(cfg.data_dir.join("wal"));
        opts.segment_bytes = cfg.wal_segment_bytes;
        {
            let (fsync, group) = (metrics.wal_fsync.clone(), metrics.wal_group_commit.clone());
            opts.on_sync = Some(Arc::new(move |s: meridian_wal::SyncInfo| {
                fsync.observe(s.duration.as_secs_f64());
                group.observe(s.records as f64);
            }));
        }
        let data_dir = cfg.data_dir.clone();
        let reopen_opts = opts.clone();
        // The state first: it names the WAL it was built from, and the WAL must be that one.
        let replay = replay_of(cfg.cluster_mode);
        let (wal, store) = tokio::task::spawn_blocking(move || crate::storage::open(&data_dir, opts, replay))
            .await
            .expect("recovery task panicked")?;

        let sm: Arc<dyn StateMachine> = store.clone();
        // The cluster modes' transport: the node's, for its whole life (see `resume.rs`).
        let mut cluster_transport = None;
        let replicator: Arc<dyn Replicator> = match cfg.cluster_mode {
            ClusterMode::HaStandby | ClusterMode::Raft | ClusterMode::MultiRegion => {
                let switch = Arc::new(Switch::detached("this node is starting"));
                let transport = start_transport(cfg, tls, switch.clone(), &metrics).await?;
                cluster_transport = Some(transport.clone());
                let mode = Arc::new(ClusterModeStarter { cfg: cfg.clone(), store, wal_opts: reopen_opts, transport, switch });
                let running = mode.start(wal.clone()).await?;
                let resumable = Resumable::new(running, wal.clone(), sm.clone());
                resumable.watch(mode, cfg.data_dir.join("wal"), Duration::from_secs(2));
                resumable
            }
            ClusterMode::Witness => {
                let witness = Arc::new(Witness::open(&cfg.data_dir, cfg.cluster_ha_failover_timeout.0).map_err(|e| {
                    NodeError::Store(meridian_modes::state_machine::StateMachineError::Storage(format!("witness state: {e}")))
                })?);
                let handler = Arc::new(Families::new().with(Family::Ha, Arc::new(WitnessHandler(witness.clone()))));
                let transport = start_transport(cfg, tls, handler, &metrics).await?;
                Arc::new(WitnessNode { node_id: cfg.cluster_node_id.clone(), witness, transport })
            }
            ClusterMode::Standalone => {
                let node = Standalone::start(
                    StandaloneConfig { node_id: cfg.cluster_node_id.clone(), checkpoint_interval: cfg.checkpoint_interval.0, max_batch: 1024 },
                    wal.clone(),
                    sm.clone(),
                );
                // After a full disk: the same WAL again (bound to this store), once there is room.
                let mut opts = reopen_opts;
                opts.expected_id = Some(wal.id());
                let reopen: meridian_modes::standalone::ReopenWal = Arc::new(move || Wal::open(opts.clone()).map(|(w, _)| w).map_err(|e| format!("opening the WAL again: {e}")));
                node.resume_after_storage_errors(reopen, cfg.data_dir.join("wal"), Duration::from_secs(2));
                node
            }
        };
        // Raft counts no replication bytes of its own: its cluster traffic stands in.
        let raft_transport = cluster_transport.clone().filter(|_| cfg.cluster_mode.runs_raft());
        metrics.watch(replicator.clone(), wal.clone(), sm.clone(), raft_transport);

        if cfg.admin_token.is_none() {
            warn!("MERIDIAN_ADMIN_TOKEN is not set: /admin/* is open to anyone who can reach this port");
        }
        if cfg.api_token.is_none() {
            warn!("MERIDIAN_API_TOKEN is not set: /v1/* is open to anyone who can reach this port");
        }
        let listener = TcpListener::bind(cfg.http_addr).await.map_err(|source| NodeError::Bind { addr: cfg.http_addr, source })?;
        let writes = api::write_budget::WriteBudget::new(cfg.write_queue_bytes, metrics.write_queue_bytes.clone());
        let state = Arc::new(AppState {
            replicator,
            sm,
            wal,
            metrics,
            max_value_bytes: cfg.max_value_bytes as usize,
            api_token: cfg.api_token.clone(),
            read_token: cfg.read_token.clone(),
            admin_token: cfg.admin_token.clone(),
            writes,
            view: api::cluster_view::ViewConfig::new(
                advertised_http(cfg),
                (cfg.cluster_mode == ClusterMode::HaStandby).then(|| sync_mode_name(cfg.cluster_ha_sync_mode).to_owned()),
            ),
        });
        Ok(Node { state, listener, limits: HttpLimits::from_config(cfg), transport: cluster_transport, _lock: lock })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves HTTP until `stop` resolves, then shuts down in order.
    pub async fn serve(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
        let addr = self.http_addr();
        info!(%addr, mode = self.state.replicator.mode(), "meridian is serving HTTP");
        let app = api::router(self.state.clone());
        let served = api::server::serve(self.listener, app, self.limits, stop).await;
        // In-flight requests have finished; drain the write pipeline and make state durable.
        info!("shutting down: finishing queued writes and checkpointing");
        self.state.replicator.shutdown().await;
        if let Some(t) = &self.transport {
            t.shutdown().await;
        }
        info!("shutdown complete");
        served.map_err(NodeError::Serve)
    }
}

/// Starts `ha_standby`, `raft` or `multi_region` on the node's storage and cluster port, and
/// starts it again after a storage error once the disk has room ([`Resumable`]).
struct ClusterModeStarter {
    cfg: Config,
    store: Arc<RedbStore>,
    /// The options the WAL was first opened with.
    wal_opts: WalOptions,
    transport: Transport,
    /// What the port serves: the running mode's message families, or a refusal.
    switch: Arc<Switch>,
}

impl ClusterModeStarter {
    /// Starts the mode on `wal` (replayed as the mode's start-up wants: [`crate::storage::Replay`]).
    async fn start(&self, wal: Wal) -> Result<Arc<dyn Replicator>, NodeError> {
        let (cfg, transport) = (&self.cfg, self.transport.clone());
        let sm: Arc<dyn StateMachine> = self.store.clone();
        let store_err = |e: String| NodeError::Store(meridian_modes::state_machine::StateMachineError::Storage(e));
        Ok(match cfg.cluster_mode {
            ClusterMode::HaStandby => {
                let ha = HaStandby::new(ha_config(cfg), wal, sm)?;
                self.switch.attach(Arc::new(Families::new().with(Family::Ha, ha.handler())));
                ha.start(transport);
                ha
            }
            ClusterMode::Raft => {
                let store = SmStore::new(sm.clone(), &cfg.data_dir).map_err(|e| store_err(format!("Raft snapshots: {e}")))?;
                let handler = RaftHandler::new(cfg.cluster_raft_cluster_id.clone(), store.clone());
                self.switch.attach(Arc::new(Families::new().with(Family::Raft, handler.clone())));
                RaftNode::start(raft_config(cfg)?, wal, sm, store, handler, transport).await.map_err(store_err)?
            }
            ClusterMode::MultiRegion => {
                // The region's Raft group sees the state through the clock-moving wrapper; the
                // API reads the same store directly.
                let hlc = Arc::new(region::hlc::Hlc::default());
                let feed = Arc::new(region::feed::Feed::default());
                let primary = region::primary::PrimaryView::new(sm.clone());
                let observed: Arc<dyn StateMachine> = Arc::new(region::observe::Observed::new(sm, hlc.clone(), feed.clone(), primary.clone()));
                let store = SmStore::new(observed.clone(), &cfg.data_dir).map_err(|e| store_err(format!("Raft snapshots: {e}")))?;
                let mut rcfg = raft_config(cfg)?;
                let region_name = cfg.cluster_region_id.clone().unwrap_or_default();
                // One Raft group per region: its own cluster name, so node ids and cluster
                // names never collide across regions; the transport's cluster id stays shared.
                rcfg.cluster_id = format!("{}/{}", cfg.cluster_raft_cluster_id, region_name);
                let semi_sync = (cfg.cluster_cross_region_mode == crate::config::CrossRegionMode::SemiSync).then(|| Arc::new(region::SemiSync::default()));
                rcfg.propose_hook = Some(region::stamper(region_name.clone(), hlc.clone(), semi_sync.clone()));
                let handler = RaftHandler::new(rcfg.cluster_id.clone(), store.clone());
                let region_handler = region::RegionHandler::new();
                self.switch.attach(Arc::new(Families::new().with(Family::Raft, handler.clone()).with(Family::Region, region_handler.clone())));
                let node = RaftNode::start(rcfg, wal.clone(), observed.clone(), store, handler, transport.clone()).await.map_err(store_err)?;
                let rc = region::RegionConfig {
                    region: region_name,
                    remotes: cfg.remote_regions()?.into_iter().map(|r| (r.id, r.addr)).collect(),
                    primary_region: cfg.cluster_primary_region.clone(),
                    writes: match cfg.cluster_region_writes {
                        crate::config::RegionWrites::Primary => region::RegionWrites::Primary,
                        crate::config::RegionWrites::ActiveActive => region::RegionWrites::ActiveActive,
                    },
                    forward_writes: cfg.forward_writes,
                    tombstone_gc_interval: cfg.cluster_tombstone_gc_interval.0,
                    keep_conflicts: cfg.cluster_conflict_strategy == crate::config::ConflictStrategy::Manual,
                };
                region::MultiRegion::start(rc, node, observed, wal, transport, hlc, feed, primary, &region_handler, semi_sync)
            }
            ClusterMode::Standalone | ClusterMode::Witness => unreachable!("{} is not a cluster mode with a WAL", cfg.cluster_mode.as_str()),
        })
    }
}

#[async_trait::async_trait]
impl Restart for ClusterModeStarter {
    fn detach(&self, why: &str) {
        self.switch.detach(format!("this node's storage failed ({why}); it rejoins once its disk has room"));
    }

    async fn restart(&self) -> Result<(Arc<dyn Replicator>, Wal), String> {
        let (dir, store, opts) = (self.cfg.data_dir.clone(), self.store.clone(), self.wal_opts.clone());
        let replay = replay_of(self.cfg.cluster_mode);
        let wal = tokio::task::spawn_blocking(move || -> Result<Wal, String> {
            store.reopen_storage().map_err(|e| format!("reopening the state store: {e}"))?;
            crate::storage::attach(&dir, &store, opts, replay).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("the reopen task failed: {e}"))??;
        match self.start(wal.clone()).await {
            Ok(mode) => Ok((mode, wal)),
            Err(e) => {
                self.switch.detach("this node's replication mode did not start again after a storage error");
                let _ = wal.close();
                Err(e.to_string())
            }
        }
    }
}

/// How the WAL is replayed into the state at start for `mode` ([`crate::storage::Replay`]):
/// in ha_standby the mode replays (only what is agreed, or everything once primary); in raft
/// openraft does (only what is committed).
fn replay_of(mode: ClusterMode) -> crate::storage::Replay {
    match mode {
        ClusterMode::HaStandby => crate::storage::Replay::Checked,
        ClusterMode::Raft | ClusterMode::MultiRegion => crate::storage::Replay::Raft,
        _ => crate::storage::Replay::All,
    }
}

fn load_tls(cfg: &Config) -> Result<Option<TlsSettings>, NodeError> {
    if !cfg.cluster_tls_enabled {
        return Ok(None);
    }
    let paths = TlsPaths {
        cert_file: cfg.cluster_tls_cert_file.clone(),
        key_file: cfg.cluster_tls_key_file.clone(),
        ca_file: cfg.cluster_tls_ca_file.clone(),
        verify_client: cfg.cluster_tls_verify_client,
        min_version: match cfg.cluster_tls_min_version {
            TlsMinVersion::V12 => TlsVersion::V1_2,
            TlsMinVersion::V13 => TlsVersion::V1_3,
        },
    };
    let settings = TlsSettings::load(&paths).map_err(|e| {
        let var = e.variable().trim_start_matches(crate::config::PREFIX);
        NodeError::Config(ConfigError::new(var, e.to_string()))
    })?;
    if let Some(cert) = &cfg.cluster_tls_cert_file {
        crate::cert_check::warn_if_not_valid(cert);
    }
    Ok(Some(settings))
}

async fn start_transport(
    cfg: &Config,
    tls: Option<TlsSettings>,
    handler: Arc<dyn Handler>,
    metrics: &Metrics,
) -> Result<Transport, NodeError> {
    let mut tcfg = TransportConfig::new(cfg.cluster_raft_cluster_id.clone(), cfg.cluster_node_id.clone(), cfg.cluster_bind_addr);
    tcfg.tls = tls;
    tcfg.admission = admission(cfg)?;
    tcfg.secret = match &cfg.cluster_secret {
        Some(s) => Some(ClusterSecret::new(s.as_bytes()).map_err(|e| ConfigError::new("CLUSTER_SECRET", e))?),
        None => None,
    };
    let mut registry = metrics.take_registry();
    let started = Transport::start(tcfg, handler, &mut registry).await;
    metrics.put_registry(registry);
    let t = started.map_err(|e| NodeError::Transport { addr: cfg.cluster_bind_addr, reason: e.to_string() })?;
    info!(addr = %t.local_addr(), tls = cfg.cluster_tls_enabled, "cluster transport listening");
    Ok(t)
}

/// Who may connect to this node's cluster port. A data node hears only from the other data
/// node (the witness answers, it never calls); the witness hears from the data nodes it lists
/// or, unlisted, from any node proving membership (certificate or secret; `Config` refuses
/// the witness with neither). Either way their traffic arrives as `from` = `ha::PEER`.
fn admission(cfg: &Config) -> Result<Admission, NodeError> {
    if cfg.cluster_mode.runs_raft() {
        // With credentials, any node that proves membership, under the name it proves (mTLS)
        // or claims (secret): members change at run time, and the Raft handler decides what
        // each name may do. Without, only the configured voters, by source address.
        if cfg.cluster_secret.is_some() || (cfg.cluster_tls_enabled && cfg.cluster_tls_verify_client) {
            return Ok(Admission::Claimed);
        }
        // multi_region adds the other regions' nodes, under their region's name: the Region
        // handler checks the batch's origin, and the Raft handler refuses non-members.
        let peers = cfg.raft_peers()?;
        let remotes = if cfg.cluster_mode == ClusterMode::MultiRegion { cfg.remote_regions()? } else { Vec::new() };
        return Ok(Admission::Peers(
            peers
                .into_iter()
                .filter(|p| p.id != cfg.cluster_node_id)
                .map(|p| AllowedPeer { label: p.id.clone(), addr: p.addr, node_id: Some(p.id) })
                .chain(remotes.into_iter().map(|r| AllowedPeer { label: format!("region:{}", r.id), addr: r.addr, node_id: None }))
                .collect(),
        ));
    }
    let peers = cfg.ha_peer_addrs()?;
    Ok(match cfg.cluster_mode {
        ClusterMode::Witness if peers.is_empty() => Admission::Members { label: meridian_modes::ha::PEER.into() },
        ClusterMode::HaStandby | ClusterMode::Witness if !peers.is_empty() => {
            Admission::Peers(peers.into_iter().map(|a| AllowedPeer::new(meridian_modes::ha::PEER, a)).collect())
        }
        _ => return Err(ConfigError::new("CLUSTER_HA_PEER_ADDR", "no cluster peers are configured; the cluster port admits only configured peers").into()),
    })
}

/// The base URL other nodes and clients reach this node's HTTP API at:
/// `CLUSTER_HTTP_ADVERTISE_ADDR`, else the HTTP address when it names a host.
fn advertised_http(cfg: &Config) -> Option<String> {
    cfg.cluster_http_advertise_addr.clone().or_else(|| (!cfg.http_addr.ip().is_unspecified()).then(|| format!("http://{}", cfg.http_addr)))
}

fn sync_mode_name(m: HaSyncMode) -> &'static str {
    match m {
        HaSyncMode::Async => "async",
        HaSyncMode::SemiSync => "semi_sync",
        HaSyncMode::Sync => "sync",
        HaSyncMode::RemoteApply => "remote_apply",
    }
}

fn raft_config(cfg: &Config) -> Result<RaftConfig, NodeError> {
    let http_addr = advertised_http(cfg);
    let peers: Vec<(String, String)> = cfg.raft_peers()?.into_iter().map(|p| (p.id, p.addr)).collect();
    let advertise = cfg
        .cluster_advertise_addr
        .clone()
        .or_else(|| peers.iter().find(|(n, _)| *n == cfg.cluster_node_id).map(|(_, a)| a.clone()))
        .unwrap_or_else(|| cfg.cluster_bind_addr.to_string());
    Ok(RaftConfig {
        advertise,
        cluster_id: cfg.cluster_raft_cluster_id.clone(),
        node_name: cfg.cluster_node_id.clone(),
        peers,
        bootstrap: cfg.cluster_raft_bootstrap,
        force_new_cluster: cfg.cluster_raft_force_new_cluster,
        role: match cfg.cluster_raft_role {
            crate::config::RaftRole::Voter => meridian_modes::raft::RaftRole::Voter,
            crate::config::RaftRole::Replica => meridian_modes::raft::RaftRole::Replica,
        },
        election_timeout: cfg.cluster_raft_election_timeout.0,
        heartbeat: cfg.cluster_raft_heartbeat_timeout.0,
        max_append_entries: cfg.cluster_raft_max_append_entries,
        snapshot_threshold: cfg.cluster_raft_snapshot_threshold,
        trailing_logs: cfg.cluster_raft_trailing_logs,
        snapshot_interval: cfg.cluster_raft_snapshot_interval.0,
        checkpoint_interval: cfg.checkpoint_interval.0,
        forward_writes: cfg.forward_writes,
        http_addr,
        data_dir: cfg.data_dir.clone(),
        limits: meridian_modes::command::Limits {
            max_key_bytes: crate::api::kv::MAX_KEY_BYTES,
            max_value_bytes: cfg.max_value_bytes as usize,
            max_txn_ops: crate::api::txn::MAX_OPS,
        },
        propose_hook: None,
    })
}

fn ha_config(cfg: &Config) -> HaConfig {
    let http_addr = advertised_http(cfg);
    HaConfig {
        node_id: cfg.cluster_node_id.clone(),
        role: match cfg.cluster_ha_role {
            Some(HaRole::Primary) => ConfiguredRole::Primary,
            _ => ConfiguredRole::Standby,
        },
        peer_addr: cfg.cluster_ha_peer_addr.clone().unwrap_or_default(),
        witness_addr: cfg.cluster_ha_witness_addr.clone(),
        sync_mode: match cfg.cluster_ha_sync_mode {
            HaSyncMode::Async => SyncMode::Async,
            HaSyncMode::SemiSync => SyncMode::SemiSync,
            HaSyncMode::Sync => SyncMode::Sync,
            HaSyncMode::RemoteApply => SyncMode::RemoteApply,
        },
        heartbeat: std::time::Duration::from_millis(cfg.cluster_ha_heartbeat_ms),
        failover_timeout: cfg.cluster_ha_failover_timeout.0,
        auto_failover: cfg.cluster_ha_auto_failover,
        batch_records: cfg.cluster_ha_wal_batch_size as usize,
        sync_timeout: cfg.cluster_ha_sync_timeout.0,
        forward_writes: cfg.forward_writes,
        http_addr,
        checkpoint_interval: cfg.checkpoint_interval.0,
        data_dir: cfg.data_dir.clone(),
        wal_retention: cfg.cluster_ha_wal_retention,
        limits: meridian_modes::command::Limits {
            max_key_bytes: crate::api::kv::MAX_KEY_BYTES,
            max_value_bytes: cfg.max_value_bytes as usize,
            max_txn_ops: crate::api::txn::MAX_OPS,
        },
        sync_strict: cfg.cluster_ha_sync_strict,
        max_lag_on_failover: cfg.cluster_ha_max_lag_on_failover,
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} already holds Meridian data (state.redb or wal/); restore into an empty directory")]
    NotEmpty(String),
    #[error("cannot read backup {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Builds a fresh data directory from a backup stream. The state is installed in one
/// transaction only if the whole backup verifies, and the WAL starts after its index.
pub fn restore(from: &std::path::Path, data_dir: &std::path::Path) -> Result<meridian_modes::snapshot::SnapshotMeta, RestoreError> {
    let _lock = DirLock::acquire(data_dir).map_err(NodeError::from)?;
    if data_dir.join("state.redb").exists() || data_dir.join("wal").exists() {
        return Err(RestoreError::NotEmpty(data_dir.display().to_string()));
    }
    let file = std::fs::File::open(from).map_err(|source| RestoreError::Read { path: from.display().to_string(), source })?;
    let tmp = data_dir.join("state.redb.restoring");
    let _ = std::fs::remove_file(&tmp);
    let store = RedbStore::open(&tmp).map_err(NodeError::from)?;
    let total = file.metadata().ok().map(|m| m.len());
    let meta = meridian_modes::state_machine::install_snapshot_sized(&store, std::io::BufReader::new(file), total).map_err(NodeError::from)?;
    drop(store);
    // Rename only a complete store into place, so a failed restore leaves no half state.
    std::fs::rename(&tmp, data_dir.join("state.redb")).map_err(|source| RestoreError::Read { path: tmp.display().to_string(), source })?;
    Ok(meta)
}
