//! Configuration from `MERIDIAN_*` environment variables and an optional TOML file.
//!
//! Every variable is listed once in [`VARIABLES`] with what it accepts; that table drives the
//! unknown-variable check and the error messages. Values are read as raw strings and extracted
//! with figment's lossy mode, because figment's plain `Env` provider guesses types from the
//! text (a token `123456` would become a number and fail as a string). Precedence: defaults,
//! then the TOML file named by `MERIDIAN_CONFIG_FILE`, then the environment.
//!
//! Any problem is a [`ConfigError`] naming the variable; `main` prints it and exits with 2.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const PREFIX: &str = "MERIDIAN_";

/// The slowest HA heartbeat accepted, in milliseconds.
pub const MAX_HA_HEARTBEAT_MS: u64 = 60_000;

/// Variables the command-line tools read (`meridian status --url`, …), not the node: a node
/// started in a shell that exports them must not refuse them as unknown.
pub const CLIENT_VARIABLES: &[&str] = &["URL"];

/// Every variable, without the prefix, and what it accepts.
pub const VARIABLES: &[(&str, &str)] = &[
    ("CONFIG_FILE", "a path to a TOML file with the same keys (lowercase, no prefix)"),
    ("DATA_DIR", "a directory path (default ./data)"),
    ("CLUSTER_DATA_DIR", "the seed guide's name for MERIDIAN_DATA_DIR: a directory path; if both are set they must name the same directory"),
    ("CLUSTER_DEBUG", "true or false (true: replication debug logging, adds meridian_modes=debug to MERIDIAN_LOG_LEVEL)"),
    ("HTTP_ADDR", "a socket address such as 0.0.0.0:7474"),
    ("LOG_LEVEL", "a tracing filter such as info, debug, meridian=debug"),
    ("LOG_FORMAT", "text or json"),
    ("MAX_VALUE_BYTES", "a positive integer number of bytes (default 1048576)"),
    ("FORWARD_WRITES", "true or false"),
    ("ADMIN_TOKEN", "a bearer token string"),
    ("API_TOKEN", "a bearer token string"),
    ("READ_TOKEN", "a bearer token string that may only read data (GET on /v1)"),
    ("WAL_SEGMENT_BYTES", "a WAL segment size in bytes, at least 4096 (default 67108864)"),
    ("CHECKPOINT_INTERVAL", "a duration such as 1s or 500ms, or a bare number of seconds"),
    ("HTTP_MAX_CONNECTIONS", "a positive integer: most HTTP connections open at once (default 4096)"),
    ("WRITE_QUEUE_BYTES", "a number of bytes from 4096 to 4294967295: writes in flight at most (default 67108864)"),
    ("HTTP_HEADER_TIMEOUT", "a duration such as 10s, or a bare number of seconds: time to send a request's head once it has begun"),
    ("HTTP_BODY_TIMEOUT", "a duration such as 30s, or a bare number of seconds: time to send a request's whole body"),
    ("HTTP_IDLE_TIMEOUT", "a duration such as 60s, or a bare number of seconds: how long a connection may wait for its next request"),
    ("CLUSTER_MODE", "one of standalone, ha_standby, raft, multi_region, witness"),
    ("CLUSTER_NODE_ID", "a node name of letters, digits, '-', '_' or '.' (unset: generated once and kept in DATA_DIR/node_id)"),
    ("CLUSTER_BIND_ADDR", "a socket address such as 0.0.0.0:7688"),
    ("CLUSTER_ADVERTISE_ADDR", "host:port other nodes use to reach this node's cluster port"),
    ("CLUSTER_HTTP_ADVERTISE_ADDR", "the HTTP base URL clients are redirected to, e.g. http://node1:7474"),
    ("CLUSTER_HA_ROLE", "primary or standby"),
    ("CLUSTER_HA_PEER_ADDR", "host:port of the other node's cluster port (witness: an optional comma-separated list of the data nodes' host:port)"),
    ("CLUSTER_HA_SYNC_MODE", "one of async, semi_sync, sync, remote_apply"),
    ("CLUSTER_HA_HEARTBEAT_MS", "an integer number of milliseconds, 1 to 60000, at most half of CLUSTER_HA_FAILOVER_TIMEOUT"),
    ("CLUSTER_HA_FAILOVER_TIMEOUT", "a duration such as 30s, or a bare number of seconds"),
    ("CLUSTER_HA_AUTO_FAILOVER", "true or false"),
    ("CLUSTER_HA_WAL_BATCH_SIZE", "a positive integer number of records"),
    ("CLUSTER_HA_SYNC_TIMEOUT", "a duration such as 5s, or a bare number of seconds"),
    ("CLUSTER_HA_WITNESS_ADDR", "host:port of the witness's cluster port"),
    ("CLUSTER_HA_WAL_RETENTION", "a number of WAL records the primary keeps for a lagging standby before re-seeding it from a snapshot"),
    ("CLUSTER_HA_SYNC_STRICT", "true or false (true: a sync primary never acknowledges without its standby, not even right after a failover)"),
    ("CLUSTER_HA_MAX_LAG_ON_FAILOVER", "a number of records an async standby may be behind and still promote itself (default unlimited)"),
    ("CLUSTER_RAFT_CLUSTER_ID", "a cluster name"),
    ("CLUSTER_RAFT_BOOTSTRAP", "true or false"),
    ("CLUSTER_RAFT_PEERS", "a comma-separated list of id:host:port"),
    ("CLUSTER_RAFT_ELECTION_TIMEOUT", "a duration such as 1s, or a bare number of seconds"),
    ("CLUSTER_RAFT_HEARTBEAT_TIMEOUT", "a duration such as 100ms, or a bare number of seconds"),
    ("CLUSTER_RAFT_SNAPSHOT_INTERVAL", "a duration such as 300s, or a bare number of seconds"),
    ("CLUSTER_RAFT_SNAPSHOT_THRESHOLD", "a positive integer number of log entries"),
    ("CLUSTER_RAFT_TRAILING_LOGS", "an integer number of log entries"),
    ("CLUSTER_RAFT_MAX_APPEND_ENTRIES", "a positive integer number of entries"),
    ("CLUSTER_RAFT_ROLE", "voter or replica"),
    ("CLUSTER_RAFT_FORCE_NEW_CLUSTER", "true or false"),
    ("CLUSTER_REGION_ID", "a region name of 1 to 64 letters, digits, - or _"),
    ("CLUSTER_REMOTE_REGIONS", "a comma-separated list of region:host:port"),
    ("CLUSTER_CROSS_REGION_MODE", "async or semi_sync"),
    ("CLUSTER_CONFLICT_STRATEGY", "last_write_wins or manual"),
    ("CLUSTER_PRIMARY_REGION", "a region name"),
    ("CLUSTER_REGION_WRITES", "primary or active_active"),
    ("CLUSTER_TOMBSTONE_GC_INTERVAL", "a duration such as 60s, or a bare number of seconds; 0 never collects tombstones"),
    ("CLUSTER_TLS_ENABLED", "true or false"),
    ("CLUSTER_TLS_CERT_FILE", "a path to a PEM certificate chain"),
    ("CLUSTER_TLS_KEY_FILE", "a path to a PEM private key"),
    ("CLUSTER_TLS_CA_FILE", "a path to a PEM CA certificate"),
    ("CLUSTER_TLS_VERIFY_CLIENT", "true or false"),
    ("CLUSTER_TLS_MIN_VERSION", "1.2 or 1.3"),
    ("CLUSTER_SECRET", "a shared secret of at least 16 bytes, the same on every node, that cluster peers prove in the handshake"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    Standalone,
    HaStandby,
    Raft,
    MultiRegion,
    Witness,
}

impl ClusterMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterMode::Standalone => "standalone",
            ClusterMode::HaStandby => "ha_standby",
            ClusterMode::Raft => "raft",
            ClusterMode::MultiRegion => "multi_region",
            ClusterMode::Witness => "witness",
        }
    }

    /// Modes whose nodes run a Raft group: `raft`, and `multi_region` (one group per region).
    pub fn runs_raft(self) -> bool {
        matches!(self, ClusterMode::Raft | ClusterMode::MultiRegion)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaRole {
    Primary,
    Standby,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaSyncMode {
    Async,
    SemiSync,
    Sync,
    RemoteApply,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRole {
    Voter,
    Replica,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrossRegionMode {
    Async,
    SemiSync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStrategy {
    LastWriteWins,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionWrites {
    Primary,
    ActiveActive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMinVersion {
    V12,
    V13,
}

impl Serialize for TlsMinVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            TlsMinVersion::V12 => "1.2",
            TlsMinVersion::V13 => "1.3",
        })
    }
}

impl<'de> Deserialize<'de> for TlsMinVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Lossy extraction may hand us 1.2 as a float; accept its text either way.
        let v = serde_json::Value::deserialize(d)?;
        let text = match &v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match text.trim() {
            "1.2" => Ok(TlsMinVersion::V12),
            "1.3" => Ok(TlsMinVersion::V13),
            _ => Err(serde::de::Error::custom(format!("invalid value {text:?}"))),
        }
    }
}

/// A duration written with a unit (`100ms`, `1s`, `30s`, via humantime) or as a bare number
/// of seconds (`300`), as the seed guide writes `RAFT_SNAPSHOT_INTERVAL`. Every duration
/// setting goes through this one type, so all accept both forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `100ms`, `1m30s`, `300` (seconds) or `1.5` (seconds).
    pub fn parse(text: &str) -> Result<HumanDuration, String> {
        let t = text.trim();
        if let Ok(secs) = t.parse::<f64>() {
            return seconds(secs).ok_or_else(|| format!("invalid duration {text:?} (a bare number is seconds, and must be 0 or more)"));
        }
        humantime::parse_duration(t).map(HumanDuration).map_err(|e| format!("invalid duration {text:?} ({e})"))
    }
}

fn seconds(secs: f64) -> Option<HumanDuration> {
    // NaN and infinities fall outside the range too.
    (0.0..1e12).contains(&secs).then(|| HumanDuration(Duration::from_secs_f64(secs)))
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Lossy extraction hands a bare `300` over as a number; a TOML file may too.
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => HumanDuration::parse(&s).map_err(serde::de::Error::custom),
            serde_json::Value::Number(n) => n
                .as_f64()
                .and_then(seconds)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {n} (a bare number is seconds, and must be 0 or more)"))),
            other => Err(serde::de::Error::custom(format!("invalid duration {other}"))),
        }
    }
}

impl From<HumanDuration> for Duration {
    fn from(h: HumanDuration) -> Duration {
        h.0
    }
}

/// Every setting, flat: field `cluster_ha_role` is `MERIDIAN_CLUSTER_HA_ROLE`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub cluster_data_dir: Option<PathBuf>,
    pub cluster_debug: bool,
    pub http_addr: SocketAddr,
    pub log_level: String,
    pub log_format: LogFormat,
    pub max_value_bytes: u64,
    pub forward_writes: bool,
    pub admin_token: Option<String>,
    pub api_token: Option<String>,
    pub read_token: Option<String>,
    pub wal_segment_bytes: u64,
    pub checkpoint_interval: HumanDuration,
    pub http_max_connections: u64,
    /// Bytes of writes in flight at most (`api::write_budget`).
    pub write_queue_bytes: u64,
    pub http_header_timeout: HumanDuration,
    pub http_body_timeout: HumanDuration,
    pub http_idle_timeout: HumanDuration,

    pub cluster_mode: ClusterMode,
    /// Empty when unset; [`crate::node_id::resolve`] fills it in at start.
    pub cluster_node_id: String,
    pub cluster_bind_addr: SocketAddr,
    pub cluster_advertise_addr: Option<String>,
    pub cluster_http_advertise_addr: Option<String>,

    pub cluster_ha_role: Option<HaRole>,
    pub cluster_ha_peer_addr: Option<String>,
    pub cluster_ha_sync_mode: HaSyncMode,
    pub cluster_ha_heartbeat_ms: u64,
    pub cluster_ha_failover_timeout: HumanDuration,
    pub cluster_ha_auto_failover: bool,
    pub cluster_ha_wal_batch_size: u64,
    pub cluster_ha_sync_timeout: HumanDuration,
    pub cluster_ha_witness_addr: Option<String>,
    pub cluster_ha_wal_retention: u64,
    pub cluster_ha_sync_strict: bool,
    pub cluster_ha_max_lag_on_failover: Option<u64>,

    pub cluster_raft_cluster_id: String,
    pub cluster_raft_bootstrap: bool,
    pub cluster_raft_peers: Option<String>,
    pub cluster_raft_election_timeout: HumanDuration,
    pub cluster_raft_heartbeat_timeout: HumanDuration,
    pub cluster_raft_snapshot_interval: HumanDuration,
    pub cluster_raft_snapshot_threshold: u64,
    pub cluster_raft_trailing_logs: u64,
    pub cluster_raft_max_append_entries: u64,
    pub cluster_raft_role: RaftRole,
    pub cluster_raft_force_new_cluster: bool,

    pub cluster_region_id: Option<String>,
    pub cluster_remote_regions: Option<String>,
    pub cluster_cross_region_mode: CrossRegionMode,
    pub cluster_conflict_strategy: ConflictStrategy,
    pub cluster_primary_region: Option<String>,
    pub cluster_region_writes: RegionWrites,
    /// multi_region: how often the region leader collects tombstones every region has (0: never).
    pub cluster_tombstone_gc_interval: HumanDuration,

    pub cluster_tls_enabled: bool,
    pub cluster_tls_cert_file: Option<PathBuf>,
    pub cluster_tls_key_file: Option<PathBuf>,
    pub cluster_tls_ca_file: Option<PathBuf>,
    pub cluster_tls_verify_client: bool,
    pub cluster_tls_min_version: TlsMinVersion,
    pub cluster_secret: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        let secs = |s| HumanDuration(Duration::from_secs(s));
        let millis = |s| HumanDuration(Duration::from_millis(s));
        Config {
            config_file: None,
            data_dir: PathBuf::from("./data"),
            cluster_data_dir: None,
            cluster_debug: false,
            http_addr: "0.0.0.0:7474".parse().unwrap(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            max_value_bytes: 1 << 20,
            forward_writes: true,
            admin_token: None,
            api_token: None,
            read_token: None,
            wal_segment_bytes: 64 << 20,
            // Small, frequent checkpoints: every 1s the fsync of a second's dirty redb pages
            // competed with the WAL's fdatasync and doubled PUT p99 (bench/checkpoints.sh).
            checkpoint_interval: HumanDuration(Duration::from_millis(250)),
            http_max_connections: 4096,
            write_queue_bytes: 64 << 20,
            http_header_timeout: secs(10),
            http_body_timeout: secs(30),
            http_idle_timeout: secs(60),
            cluster_mode: ClusterMode::Standalone,
            // Empty = unset: the node generates one and keeps it (see `crate::node_id`).
            cluster_node_id: String::new(),
            cluster_bind_addr: "0.0.0.0:7688".parse().unwrap(),
            cluster_advertise_addr: None,
            cluster_http_advertise_addr: None,
            cluster_ha_role: None,
            cluster_ha_peer_addr: None,
            cluster_ha_sync_mode: HaSyncMode::SemiSync,
            cluster_ha_heartbeat_ms: 1000,
            cluster_ha_failover_timeout: secs(30),
            cluster_ha_auto_failover: true,
            cluster_ha_wal_batch_size: 1000,
            cluster_ha_sync_timeout: secs(5),
            cluster_ha_witness_addr: None,
            cluster_ha_wal_retention: 1_000_000,
            cluster_ha_sync_strict: false,
            cluster_ha_max_lag_on_failover: None,
            cluster_raft_cluster_id: "meridian".into(),
            cluster_raft_bootstrap: false,
            cluster_raft_peers: None,
            cluster_raft_election_timeout: secs(1),
            cluster_raft_heartbeat_timeout: millis(100),
            cluster_raft_snapshot_interval: secs(300),
            // etcd's default snapshot count. Building a snapshot writes and fsyncs the whole
            // state on every member at about the same time; every 8192 entries that was PUT
            // p99's tail at 64 clients (66 ms, against 23 ms with no snapshot in the run).
            cluster_raft_snapshot_threshold: 100_000,
            cluster_raft_trailing_logs: 10240,
            cluster_raft_max_append_entries: 64,
            cluster_raft_role: RaftRole::Voter,
            cluster_raft_force_new_cluster: false,
            cluster_region_id: None,
            cluster_remote_regions: None,
            cluster_cross_region_mode: CrossRegionMode::Async,
            cluster_conflict_strategy: ConflictStrategy::LastWriteWins,
            cluster_primary_region: None,
            cluster_region_writes: RegionWrites::Primary,
            cluster_tombstone_gc_interval: HumanDuration(Duration::from_secs(60)),
            cluster_tls_enabled: false,
            cluster_tls_cert_file: None,
            cluster_tls_key_file: None,
            cluster_tls_ca_file: None,
            cluster_tls_verify_client: true,
            cluster_tls_min_version: TlsMinVersion::V12,
            cluster_secret: None,
        }
    }
}

/// A configuration problem: which variable, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The full variable name, e.g. `MERIDIAN_CLUSTER_MODE`.
    pub variable: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn new(name: &str, message: impl Into<String>) -> Self {
        ConfigError { variable: format!("{PREFIX}{}", name.to_uppercase()), message: message.into() }
    }
}

fn accepts(name: &str) -> &'static str {
    VARIABLES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map_or("a valid value", |(_, a)| a)
}

/// A raft peer or remote region: `id:host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedAddr {
    pub id: String,
    pub addr: String,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars())
    }

    /// Reads the configuration from `(name, value)` pairs; only `MERIDIAN_*` names are read.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut env = BTreeMap::new();
        for (k, v) in vars {
            let Some(name) = k.strip_prefix(PREFIX) else { continue };
            if CLIENT_VARIABLES.contains(&name) {
                continue;
            }
            if !VARIABLES.iter().any(|(n, _)| *n == name) {
                return Err(unknown_variable(&k, name));
            }
            if v.is_empty() {
                continue; // an empty variable means "unset", as in most shells' `VAR= cmd`
            }
            env.insert(name.to_lowercase(), v);
        }
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = env.get("config_file") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(ConfigError::new("CONFIG_FILE", format!("{} is not a readable file", path.display())));
            }
            fig = fig.merge(Toml::file(path));
        }
        let data_dir_in_env = env.contains_key("data_dir");
        fig = fig.merge(Serialized::defaults(env));
        let mut cfg: Config = fig.extract_lossy().map_err(from_figment)?;
        cfg.apply_seed_guide_aliases(data_dir_in_env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// `CLUSTER_DATA_DIR` (the seed guide's name) is `DATA_DIR`: taken when `DATA_DIR` is not
    /// set, refused when both name different directories (which one holds the data would be
    /// a guess).
    fn apply_seed_guide_aliases(&mut self, data_dir_in_env: bool) -> Result<(), ConfigError> {
        let Some(alias) = self.cluster_data_dir.clone() else { return Ok(()) };
        let data_dir_set = data_dir_in_env || self.data_dir != Config::default().data_dir;
        if data_dir_set && self.data_dir != alias {
            return Err(ConfigError::new(
                "CLUSTER_DATA_DIR",
                format!(
                    "names {} but MERIDIAN_DATA_DIR names {}: they are one setting in Meridian; set only one of them",
                    alias.display(),
                    self.data_dir.display()
                ),
            ));
        }
        self.data_dir = alias;
        Ok(())
    }

    /// The tracing filter: `LOG_LEVEL`, with replication debug logging added by `CLUSTER_DEBUG`.
    pub fn log_filter(&self) -> String {
        if self.cluster_debug {
            format!("{},meridian_modes=debug", self.log_level)
        } else {
            self.log_level.clone()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_value_bytes == 0 || self.max_value_bytes > 64 << 20 {
            return Err(ConfigError::new("MAX_VALUE_BYTES", "must be between 1 and 67108864 (64 MiB)"));
        }
        if self.wal_segment_bytes < 4096 {
            return Err(ConfigError::new("WAL_SEGMENT_BYTES", accepts("WAL_SEGMENT_BYTES")));
        }
        for (name, d) in [
            ("CHECKPOINT_INTERVAL", self.checkpoint_interval),
            ("HTTP_HEADER_TIMEOUT", self.http_header_timeout),
            ("HTTP_BODY_TIMEOUT", self.http_body_timeout),
            ("HTTP_IDLE_TIMEOUT", self.http_idle_timeout),
        ] {
            if d.0.is_zero() {
                return Err(ConfigError::new(name, format!("must be longer than zero: expected {}", accepts(name))));
            }
        }
        if !(4096..=u64::from(u32::MAX)).contains(&self.write_queue_bytes) {
            return Err(ConfigError::new("WRITE_QUEUE_BYTES", format!("must be {}", accepts("WRITE_QUEUE_BYTES"))));
        }
        if self.http_max_connections == 0 {
            return Err(ConfigError::new("HTTP_MAX_CONNECTIONS", "must be at least 1"));
        }
        let id_ok = self.cluster_node_id.is_empty() || crate::node_id::valid(&self.cluster_node_id);
        if !id_ok {
            return Err(ConfigError::new("CLUSTER_NODE_ID", format!("invalid value {:?}: expected {}", self.cluster_node_id, accepts("CLUSTER_NODE_ID"))));
        }
        if self.cluster_mode.runs_raft() && self.cluster_raft_role == RaftRole::Voter && self.cluster_node_id.is_empty() {
            return Err(ConfigError::new(
                "CLUSTER_NODE_ID",
                "is required for a raft voter: set it to this node's id in MERIDIAN_CLUSTER_RAFT_PEERS (a generated id cannot be listed there in advance)",
            ));
        }
        if self.read_token.is_some() && self.api_token.is_none() {
            return Err(ConfigError::new(
                "READ_TOKEN",
                "needs MERIDIAN_API_TOKEN too: without it /v1 takes requests with no token at all, so a read-only token would restrict nothing",
            ));
        }
        if self.read_token.is_some() && self.read_token == self.api_token {
            return Err(ConfigError::new("READ_TOKEN", "must differ from MERIDIAN_API_TOKEN (the same token cannot be both read-only and read-write)"));
        }
        if self.cluster_ha_wal_batch_size == 0 {
            return Err(ConfigError::new("CLUSTER_HA_WAL_BATCH_SIZE", "must be at least 1"));
        }
        // A standby judges its primary by the heartbeat: one slower than a minute would let a
        // silent primary look healthy for that long (and an absurd one overflowed below).
        if self.cluster_ha_heartbeat_ms == 0 || self.cluster_ha_heartbeat_ms > MAX_HA_HEARTBEAT_MS {
            return Err(ConfigError::new("CLUSTER_HA_HEARTBEAT_MS", format!("must be 1 to {MAX_HA_HEARTBEAT_MS} milliseconds")));
        }
        if self.cluster_mode == ClusterMode::HaStandby
            && Duration::from_millis(self.cluster_ha_heartbeat_ms) * 2 > self.cluster_ha_failover_timeout.0
        {
            return Err(ConfigError::new(
                "CLUSTER_HA_FAILOVER_TIMEOUT",
                "must be at least twice MERIDIAN_CLUSTER_HA_HEARTBEAT_MS, or a slow heartbeat would trigger failovers",
            ));
        }
        // The seed guide's rule (heartbeat_timeout < election_timeout / 2): a follower then
        // campaigns only after missing two heartbeats in a row, since it waits at least the
        // election timeout (raft::RaftConfig::openraft_config). etcd recommends a wider
        // margin (election 5-10x heartbeat); docs/raft.md says so.
        if self.cluster_raft_heartbeat_timeout.0.is_zero()
            || self.cluster_raft_heartbeat_timeout.0.checked_mul(2).is_none_or(|d| d >= self.cluster_raft_election_timeout.0)
        {
            return Err(ConfigError::new(
                "CLUSTER_RAFT_HEARTBEAT_TIMEOUT",
                "must be above zero and less than half of MERIDIAN_CLUSTER_RAFT_ELECTION_TIMEOUT (the seed guide's rule), or a lost heartbeat would start an election",
            ));
        }
        let raft_peers = self.raft_peers()?;
        if self.cluster_mode.runs_raft() {
            if raft_peers.is_empty() {
                return Err(ConfigError::new("CLUSTER_RAFT_PEERS", "raft mode needs the cluster's voters as id:host:port,... (this node included)"));
            }
            let listed = raft_peers.iter().any(|p| p.id == self.cluster_node_id);
            if self.cluster_raft_role == RaftRole::Voter && !listed {
                return Err(ConfigError::new(
                    "CLUSTER_RAFT_PEERS",
                    format!(
                        "a voter must list itself: add {}:<its cluster host:port> (MERIDIAN_CLUSTER_NODE_ID={}), or set MERIDIAN_CLUSTER_ADVERTISE_ADDR to that host:port",
                        self.cluster_node_id, self.cluster_node_id
                    ),
                ));
            }
            // Members dial this node at its RAFT_PEERS entry, else CLUSTER_ADVERTISE_ADDR, else
            // the bind address — which names no host when it is 0.0.0.0.
            if !listed && self.cluster_advertise_addr.is_none() && self.cluster_bind_addr.ip().is_unspecified() {
                return Err(ConfigError::new(
                    "CLUSTER_ADVERTISE_ADDR",
                    format!(
                        "this node is not in CLUSTER_RAFT_PEERS and binds {}: set its cluster address as the other members should dial it (host:port)",
                        self.cluster_bind_addr
                    ),
                ));
            }
            if self.cluster_raft_role == RaftRole::Replica && self.cluster_raft_bootstrap {
                return Err(ConfigError::new("CLUSTER_RAFT_BOOTSTRAP", "a read replica (CLUSTER_RAFT_ROLE=replica) cannot bootstrap a cluster"));
            }
        }
        self.remote_regions()?;
        let ha_peers = self.ha_peer_addrs()?;
        for (name, v) in [
            ("CLUSTER_HA_WITNESS_ADDR", &self.cluster_ha_witness_addr),
            ("CLUSTER_ADVERTISE_ADDR", &self.cluster_advertise_addr),
        ] {
            if let Some(a) = v {
                check_host_port(a).map_err(|m| ConfigError::new(name, m))?;
            }
        }
        if self.cluster_mode == ClusterMode::HaStandby {
            if self.cluster_ha_role.is_none() {
                return Err(ConfigError::new("CLUSTER_HA_ROLE", "is required when MERIDIAN_CLUSTER_MODE=ha_standby (primary or standby)"));
            }
            if self.cluster_ha_peer_addr.is_none() {
                return Err(ConfigError::new("CLUSTER_HA_PEER_ADDR", "is required when MERIDIAN_CLUSTER_MODE=ha_standby (host:port)"));
            }
        }
        if let Some(s) = &self.cluster_secret {
            if s.len() < meridian_modes::transport::secret::MIN_SECRET_BYTES {
                return Err(ConfigError::new("CLUSTER_SECRET", "must be at least 16 bytes (e.g. the output of `openssl rand -hex 32`)"));
            }
        }
        // Who may reach the witness: the listed data nodes, or, unlisted, any node proving
        // membership — which needs a credential; by address alone it would be anyone.
        if self.cluster_mode == ClusterMode::Witness
            && ha_peers.is_empty()
            && !(self.cluster_tls_enabled && self.cluster_tls_verify_client)
            && self.cluster_secret.is_none()
        {
            return Err(ConfigError::new(
                "CLUSTER_HA_PEER_ADDR",
                "the witness must list the data nodes' cluster addresses (host:port,host:port) unless cluster peers are authenticated (MERIDIAN_CLUSTER_TLS_ENABLED=true with MERIDIAN_CLUSTER_TLS_VERIFY_CLIENT=true, or MERIDIAN_CLUSTER_SECRET)",
            ));
        }
        if self.cluster_mode == ClusterMode::MultiRegion {
            self.check_multi_region()?;
        }
        if self.cluster_tls_enabled {
            for (name, v) in [
                ("CLUSTER_TLS_CERT_FILE", &self.cluster_tls_cert_file),
                ("CLUSTER_TLS_KEY_FILE", &self.cluster_tls_key_file),
                ("CLUSTER_TLS_CA_FILE", &self.cluster_tls_ca_file),
            ] {
                if v.is_none() {
                    return Err(ConfigError::new(name, "is required when MERIDIAN_CLUSTER_TLS_ENABLED=true"));
                }
            }
        }
        Ok(())
    }

    /// `CLUSTER_HA_PEER_ADDR` as a list: a data node's one peer, or the data nodes the
    /// witness admits (comma-separated; none when unset).
    pub fn ha_peer_addrs(&self) -> Result<Vec<String>, ConfigError> {
        let Some(v) = &self.cluster_ha_peer_addr else { return Ok(vec![]) };
        let list: Vec<String> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        if self.cluster_mode != ClusterMode::Witness && list.len() > 1 {
            return Err(ConfigError::new(
                "CLUSTER_HA_PEER_ADDR",
                format!("invalid value {v:?}: only the witness takes a list; a data node names its one peer (host:port)"),
            ));
        }
        for a in &list {
            check_host_port(a).map_err(|m| ConfigError::new("CLUSTER_HA_PEER_ADDR", m))?;
        }
        Ok(list)
    }

    /// The voters: `CLUSTER_RAFT_PEERS`, and this node at `CLUSTER_ADVERTISE_ADDR` when it is a
    /// voter the list leaves out — the seed guide's compose files list only the *other*
    /// voters and give each node's own address in `ADVERTISE_ADDR`.
    pub fn raft_peers(&self) -> Result<Vec<NamedAddr>, ConfigError> {
        let mut peers = parse_named_list("CLUSTER_RAFT_PEERS", self.cluster_raft_peers.as_deref())?;
        let me = &self.cluster_node_id;
        let implied = self.cluster_mode.runs_raft() && self.cluster_raft_role == RaftRole::Voter && !me.is_empty();
        if let Some(addr) = self.cluster_advertise_addr.as_ref().filter(|_| implied && !peers.iter().any(|p| p.id == *me)) {
            peers.push(NamedAddr { id: me.clone(), addr: addr.clone() });
        }
        Ok(peers)
    }

    /// The multi-region settings: a region name, remotes that are other regions, and what
    /// this build does not do yet refused by name rather than ignored.
    fn check_multi_region(&self) -> Result<(), ConfigError> {
        let valid = |r: &str| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let Some(me) = &self.cluster_region_id else {
            return Err(ConfigError::new("CLUSTER_REGION_ID", "is required when MERIDIAN_CLUSTER_MODE=multi_region"));
        };
        if !valid(me) {
            return Err(ConfigError::new("CLUSTER_REGION_ID", format!("invalid value {me:?}: expected {}", accepts("CLUSTER_REGION_ID"))));
        }
        let remotes = self.remote_regions()?;
        if remotes.is_empty() {
            return Err(ConfigError::new("CLUSTER_REMOTE_REGIONS", "multi_region needs at least one other region: region:host:port,..."));
        }
        for r in &remotes {
            if !valid(&r.id) || r.id == *me {
                return Err(ConfigError::new(
                    "CLUSTER_REMOTE_REGIONS",
                    format!("invalid region {:?}: a remote region needs a name of 1 to 64 letters, digits, '-' or '_', other than this region's ({me})", r.id),
                ));
            }
        }
        if self.cluster_region_writes == RegionWrites::Primary {
            match &self.cluster_primary_region {
                None => {
                    return Err(ConfigError::new(
                        "CLUSTER_PRIMARY_REGION",
                        "is required with MERIDIAN_CLUSTER_REGION_WRITES=primary (the default): name the region that takes writes, or set MERIDIAN_CLUSTER_REGION_WRITES=active_active",
                    ))
                }
                Some(p) if *p != *me && !remotes.iter().any(|r| r.id == *p) => {
                    return Err(ConfigError::new("CLUSTER_PRIMARY_REGION", format!("invalid value {p:?}: it is neither this region nor one in MERIDIAN_CLUSTER_REMOTE_REGIONS")));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    pub fn remote_regions(&self) -> Result<Vec<NamedAddr>, ConfigError> {
        parse_named_list("CLUSTER_REMOTE_REGIONS", self.cluster_remote_regions.as_deref())
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("invalid value {s:?}: expected host:port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("invalid value {s:?}: expected host:port with a port number"));
    }
    Ok(())
}

fn parse_named_list(name: &str, v: Option<&str>) -> Result<Vec<NamedAddr>, ConfigError> {
    let Some(v) = v else { return Ok(vec![]) };
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || ConfigError::new(name, format!("invalid entry {item:?}: expected {}", accepts(name)));
        let (id, addr) = item.split_once(':').ok_or_else(bad)?;
        if id.is_empty() || check_host_port(addr).is_err() {
            return Err(bad());
        }
        out.push(NamedAddr { id: id.into(), addr: addr.into() });
    }
    Ok(out)
}

fn unknown_variable(full: &str, name: &str) -> ConfigError {
    // Suggest the closest known name: most typos are one or two letters off.
    let best = VARIABLES
        .iter()
        .map(|(n, _)| (edit_distance(n, name), *n))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, n)| format!(" (did you mean {PREFIX}{n}?)"))
        .unwrap_or_default();
    ConfigError { variable: full.to_owned(), message: format!("unknown variable{best}; see the README's configuration table") }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn from_figment(e: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let field = e.path.last().cloned().unwrap_or_default();
    match &e.kind {
        Kind::UnknownField(f, _) => ConfigError::new(f, "unknown setting in the configuration file"),
        Kind::InvalidValue(actual, _) | Kind::InvalidType(actual, _) => {
            ConfigError::new(&field, format!("invalid value ({actual}): expected {}", accepts(&field)))
        }
        Kind::UnknownVariant(v, _) => ConfigError::new(&field, format!("invalid value {v:?}: expected {}", accepts(&field))),
        _ if !field.is_empty() => ConfigError::new(&field, format!("{}: expected {}", e.kind, accepts(&field))),
        _ => ConfigError { variable: format!("{PREFIX}CONFIG_FILE"), message: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string())).collect()
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:7474");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.cluster_mode, ClusterMode::Standalone);
        assert_eq!(c.cluster_ha_sync_mode, HaSyncMode::SemiSync);
        assert_eq!(c.cluster_ha_failover_timeout.0, Duration::from_secs(30));
        assert!(c.forward_writes);
    }

    #[test]
    fn every_variable_is_a_field_and_every_field_a_variable() {
        let v = serde_json::to_value(Config::default()).unwrap();
        let fields: Vec<String> = v.as_object().unwrap().keys().map(|k| k.to_uppercase()).collect();
        for f in &fields {
            assert!(VARIABLES.iter().any(|(n, _)| n == f), "field {f} has no VARIABLES row");
        }
        for (n, _) in VARIABLES {
            assert!(fields.iter().any(|f| f == n), "variable {n} has no field");
        }
    }

    #[test]
    fn raw_strings_parse_into_their_types() {
        let c = Config::from_vars(vars(&[
            ("ADMIN_TOKEN", "123456"),
            ("CLUSTER_HA_HEARTBEAT_MS", "250"),
            ("CLUSTER_RAFT_ELECTION_TIMEOUT", "1500ms"),
            ("CLUSTER_HA_FAILOVER_TIMEOUT", "3s"),
            ("FORWARD_WRITES", "false"),
            ("CLUSTER_TLS_MIN_VERSION", "1.3"),
            ("CLUSTER_RAFT_PEERS", "n1:127.0.0.1:7001, n2:host2:7002"),
        ]))
        .unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("123456"));
        assert_eq!(c.cluster_ha_heartbeat_ms, 250);
        assert_eq!(c.cluster_raft_election_timeout.0, Duration::from_millis(1500));
        assert_eq!(c.cluster_ha_failover_timeout.0, Duration::from_secs(3));
        assert!(!c.forward_writes);
        assert_eq!(c.cluster_tls_min_version, TlsMinVersion::V13);
        assert_eq!(c.raft_peers().unwrap()[1], NamedAddr { id: "n2".into(), addr: "host2:7002".into() });
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("CLUSTER_MODE", "bogus"),
            ("HTTP_ADDR", "nonsense"),
            ("CLUSTER_RAFT_ELECTION_TIMEOUT", "fast"),
            ("CLUSTER_RAFT_ELECTION_TIMEOUT", "-3"),
            ("CLUSTER_RAFT_SNAPSHOT_INTERVAL", "300x"),
            ("MAX_VALUE_BYTES", "-1"),
            ("FORWARD_WRITES", "perhaps"),
            ("CLUSTER_RAFT_PEERS", "n1-no-port"),
            ("CLUSTER_TLS_MIN_VERSION", "1.1"),
            ("LOG_FORMAT", "xml"),
            // Heartbeats must be less than half the election timeout (1s by default).
            ("CLUSTER_RAFT_HEARTBEAT_TIMEOUT", "500ms"),
            ("CLUSTER_RAFT_HEARTBEAT_TIMEOUT", "0s"),
        ];
        for (k, v) in cases {
            let e = Config::from_vars(vars(&[(k, v)])).unwrap_err();
            assert_eq!(e.variable, format!("{PREFIX}{k}"), "{k}={v} gave {e}");
        }
    }

    #[test]
    fn the_seed_guide_settings_are_taken_as_it_writes_them() {
        // Bare seconds wherever a duration goes, as the guide writes RAFT_SNAPSHOT_INTERVAL.
        let c = Config::from_vars(vars(&[
            ("CLUSTER_RAFT_SNAPSHOT_INTERVAL", "300"),
            ("CLUSTER_HA_FAILOVER_TIMEOUT", "30"),
            ("CHECKPOINT_INTERVAL", "0.5"),
            ("CLUSTER_RAFT_HEARTBEAT_TIMEOUT", "100ms"),
        ]))
        .unwrap();
        assert_eq!(c.cluster_raft_snapshot_interval.0, Duration::from_secs(300));
        assert_eq!(c.cluster_ha_failover_timeout.0, Duration::from_secs(30));
        assert_eq!(c.checkpoint_interval.0, Duration::from_millis(500));
        assert_eq!(c.cluster_raft_heartbeat_timeout.0, Duration::from_millis(100));
        // CLUSTER_DATA_DIR is DATA_DIR; both set must agree.
        let c = Config::from_vars(vars(&[("CLUSTER_DATA_DIR", "/srv/m")])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/m"));
        Config::from_vars(vars(&[("CLUSTER_DATA_DIR", "/srv/m"), ("DATA_DIR", "/srv/m")])).unwrap();
        let e = Config::from_vars(vars(&[("CLUSTER_DATA_DIR", "/srv/m"), ("DATA_DIR", "./data")])).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTER_DATA_DIR");
        assert!(e.message.contains("set only one"), "{e}");
        // CLUSTER_DEBUG raises the replication crate's log level.
        let c = Config::from_vars(vars(&[("CLUSTER_DEBUG", "true"), ("LOG_LEVEL", "warn")])).unwrap();
        assert_eq!(c.log_filter(), "warn,meridian_modes=debug");
        assert_eq!(Config::from_vars(vars(&[("LOG_LEVEL", "warn")])).unwrap().log_filter(), "warn");
        // The node id may be left to the node, except where peers must list it.
        assert_eq!(Config::from_vars(vars(&[])).unwrap().cluster_node_id, "");
        let e = Config::from_vars(vars(&[("CLUSTER_MODE", "raft"), ("CLUSTER_RAFT_PEERS", "n1:h1:7688")])).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTER_NODE_ID", "{e}");
    }

    #[test]
    fn cluster_secret_and_the_witness_peer_list_are_checked() {
        let e = Config::from_vars(vars(&[("CLUSTER_SECRET", "short")])).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTER_SECRET");
        let e = Config::from_vars(vars(&[("CLUSTER_MODE", "witness")])).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTER_HA_PEER_ADDR", "{e}");
        let w = Config::from_vars(vars(&[("CLUSTER_MODE", "witness"), ("CLUSTER_HA_PEER_ADDR", "a:7688, b:7688")])).unwrap();
        assert_eq!(w.ha_peer_addrs().unwrap(), ["a:7688", "b:7688"]);
        Config::from_vars(vars(&[("CLUSTER_MODE", "witness"), ("CLUSTER_SECRET", "0123456789abcdef")])).unwrap();
        let e = Config::from_vars(vars(&[
            ("CLUSTER_MODE", "ha_standby"),
            ("CLUSTER_HA_ROLE", "primary"),
            ("CLUSTER_HA_PEER_ADDR", "a:7688,b:7688"),
        ]))
        .unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTER_HA_PEER_ADDR");
    }

    #[test]
    fn misspelt_variable_is_refused_with_a_suggestion() {
        let e = Config::from_vars(vars(&[("CLUSTR_MODE", "raft")])).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTR_MODE");
        assert!(e.message.contains("MERIDIAN_CLUSTER_MODE"), "{e}");
    }

    #[test]
    fn missing_mode_requirements_are_named() {
        let e = Config::from_vars(vars(&[("CLUSTER_MODE", "ha_standby")])).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTER_HA_ROLE");
        let e = Config::from_vars(vars(&[("CLUSTER_TLS_ENABLED", "true")])).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTER_TLS_CERT_FILE");
    }

    #[test]
    fn raft_settings_that_cannot_work_are_named() {
        let raft = |extra: &[(&str, &str)]| {
            let mut v = vec![("CLUSTER_MODE", "raft"), ("CLUSTER_NODE_ID", "n1")];
            v.extend_from_slice(extra);
            Config::from_vars(vars(&v))
        };
        assert_eq!(raft(&[]).unwrap_err().variable, "MERIDIAN_CLUSTER_RAFT_PEERS");
        let e = raft(&[("CLUSTER_RAFT_PEERS", "n2:h2:7688,n3:h3:7688")]).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_CLUSTER_RAFT_PEERS");
        assert!(e.message.contains("must list itself"), "{e}");
        // A replica outside the list, bound to 0.0.0.0, with no advertised address.
        let replica = [("CLUSTER_RAFT_PEERS", "n2:h2:7688"), ("CLUSTER_RAFT_ROLE", "replica"), ("CLUSTER_BIND_ADDR", "0.0.0.0:7688")];
        assert_eq!(raft(&replica).unwrap_err().variable, "MERIDIAN_CLUSTER_ADVERTISE_ADDR");
        let mut ok = replica.to_vec();
        ok.push(("CLUSTER_ADVERTISE_ADDR", "r1:7688"));
        raft(&ok).unwrap();
        ok.push(("CLUSTER_RAFT_BOOTSTRAP", "true"));
        assert_eq!(raft(&ok).unwrap_err().variable, "MERIDIAN_CLUSTER_RAFT_BOOTSTRAP");
        raft(&[("CLUSTER_RAFT_PEERS", "n1:h1:7688,n2:h2:7688,n3:h3:7688"), ("CLUSTER_RAFT_BOOTSTRAP", "true")]).unwrap();
        // The seed guide's form: the other voters listed, this one at its advertised address.
        let c = raft(&[("CLUSTER_RAFT_PEERS", "n2:h2:7688,n3:h3:7688"), ("CLUSTER_ADVERTISE_ADDR", "h1:7688")]).unwrap();
        let ids: Vec<(String, String)> = c.raft_peers().unwrap().into_iter().map(|p| (p.id, p.addr)).collect();
        assert_eq!(ids, [("n2".into(), "h2:7688".into()), ("n3".into(), "h3:7688".into()), ("n1".into(), "h1:7688".into())]);
    }

    #[test]
    fn toml_file_is_read_and_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(&f, "max_value_bytes = 2048\nlog_level = \"debug\"\n").unwrap();
        let c = Config::from_vars(vars(&[("CONFIG_FILE", f.to_str().unwrap()), ("LOG_LEVEL", "warn")])).unwrap();
        assert_eq!(c.max_value_bytes, 2048);
        assert_eq!(c.log_level, "warn");
        std::fs::write(&f, "no_such_key = 1\n").unwrap();
        let e = Config::from_vars(vars(&[("CONFIG_FILE", f.to_str().unwrap())])).unwrap_err();
        assert_eq!(e.variable, "MERIDIAN_NO_SUCH_KEY");
    }
}
