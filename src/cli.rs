//! The `meridian` command line (clap).
//!
//! `meridian` or `meridian serve` runs a node configured by `MERIDIAN_*` variables; the other
//! subcommands are tools around a node: `healthcheck` (Docker), `kv`, `restore`, `wal`,
//! `bench`, `certs`, and the operator's [`admin`] commands (`status`, `promote`, `switchover`,
//! `backup`, `digest`). Exit codes: 0 success, 1 failure (or refused), 2 bad configuration or
//! usage, 3 the node cannot be reached (admin commands).

pub mod admin;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::error;

use crate::client::MeridianClient;
use crate::config::{Config, ConfigError, LogFormat};
use crate::node::{shutdown_signal, Node};

#[derive(Parser)]
#[command(name = "meridian", version, about = "Replicated key-value store. With no subcommand, runs a node configured by MERIDIAN_* environment variables.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node (the default).
    Serve,
    /// Exit 0 when the local node answers /health with a status other than unhealthy.
    Healthcheck {
        /// Base URL; defaults to 127.0.0.1 on the port of MERIDIAN_HTTP_ADDR (7474).
        #[arg(long)]
        url: Option<String>,
    },
    /// Every node of the cluster as the node at --url sees it: role, health, epoch/term,
    /// positions, lag, sync level, peers (like `patronictl list`).
    Status {
        #[command(flatten)]
        target: admin::Target,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: admin::Output,
    },
    /// Promote the standby at --url to primary (ha_standby). Without --force, only a standby
    /// recorded in sync is promoted in the sync levels.
    Promote {
        #[command(flatten)]
        target: admin::Target,
        /// Promote even a standby that is not in sync (acknowledged writes may be lost).
        #[arg(long)]
        force: bool,
    },
    /// Planned, zero-loss role swap, asked of the primary at --url (ha_standby).
    Switchover {
        #[command(flatten)]
        target: admin::Target,
    },
    /// Download a consistent snapshot of the node's state to FILE (progress on stderr).
    Backup {
        #[command(flatten)]
        target: admin::Target,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the node's state digest (compare nodes to prove they converged).
    Digest {
        #[command(flatten)]
        target: admin::Target,
    },
    /// Read and write keys on a running node.
    Kv {
        #[arg(long, default_value = "http://127.0.0.1:7474", env = "MERIDIAN_URL")]
        url: String,
        /// Bearer token (defaults to MERIDIAN_API_TOKEN).
        #[arg(long)]
        token: Option<String>,
        #[command(subcommand)]
        op: KvOp,
    },
    /// Create a data directory from a backup taken with GET /admin/backup.
    Restore {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Inspect a WAL directory offline (read-only), or replace a lost one (`reset`).
    Wal {
        #[command(subcommand)]
        op: WalOp,
    },
    /// Development certificates for mutual TLS between nodes.
    Certs {
        #[command(subcommand)]
        op: CertsOp,
    },
    /// PUT load against a running node; prints throughput and p50/p99 latency.
    Bench {
        #[arg(long, default_value = "http://127.0.0.1:7474")]
        url: String,
        #[arg(long)]
        token: Option<String>,
        /// Comma-separated client counts.
        #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
        clients: Vec<usize>,
        /// Duration of each step, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 16)]
        key_bytes: usize,
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// Benchmark reads instead: GET with this consistency (local or linearizable).
        #[arg(long, value_parser = ["local", "linearizable"])]
        reads: Option<String>,
    },
}

#[derive(Subcommand)]
enum CertsOp {
    /// A development CA and one certificate + key per node (server and client use; SANs:
    /// the node name, localhost, 127.0.0.1), for MERIDIAN_CLUSTER_TLS_*.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated node names, e.g. node1,node2,node3.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KvOp {
    Get { key: String },
    Put { key: String, value: String },
    Delete { key: String },
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum WalOp {
    /// Check every record; report a torn tail or corruption with file and offset.
    Verify { dir: PathBuf },
    /// Print one line per record.
    Dump { dir: PathBuf },
    /// Accept the loss of a missing, foreign or damaged WAL: keep state.redb, move the old WAL
    /// aside (DATA_DIR/wal.lost-*), and start a new one above every revision handed out. Says
    /// what was lost. Refuses while a node runs on DATA_DIR, or when the WAL is fine.
    Reset {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Serve => rt.block_on(serve()),
        Cmd::Healthcheck { url } => rt.block_on(healthcheck(url)),
        Cmd::Kv { url, token, op } => rt.block_on(kv(url, token.or_else(|| std::env::var("MERIDIAN_API_TOKEN").ok()), op)),
        Cmd::Status { target, output } => rt.block_on(admin::status(&target, output)),
        Cmd::Promote { target, force } => rt.block_on(admin::promote(&target, force)),
        Cmd::Switchover { target } => rt.block_on(admin::switchover(&target)),
        Cmd::Backup { target, out } => rt.block_on(admin::backup(&target, &out)),
        Cmd::Digest { target } => rt.block_on(admin::digest(&target)),
        Cmd::Restore { from, data_dir } => restore(&from, &data_dir),
        Cmd::Wal { op } => wal(op),
        Cmd::Certs { op: CertsOp::Generate { out, nodes } } => match meridian_modes::transport::certs::generate(&out, &nodes) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                0
            }
            Err(e) => {
                eprintln!("meridian certs: {e}");
                1
            }
        },
        Cmd::Bench { url, token, clients, duration, key_bytes, value_bytes, reads } => {
            let opts = crate::bench::BenchOptions { url, token, clients, duration, key_bytes, value_bytes, reads };
            match rt.block_on(crate::bench::run(opts)) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("meridian bench: {e}");
                    1
                }
            }
        }
    }
}

fn init_logging(cfg: &Config) -> Result<(), ConfigError> {
    let filter = tracing_subscriber::EnvFilter::try_new(cfg.log_filter())
        .map_err(|e| ConfigError::new("LOG_LEVEL", format!("invalid filter {:?}: {e}", cfg.log_level)))?;
    // Colour only on a terminal: log files and container logs get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn serve() -> i32 {
    let cfg = match Config::from_env().and_then(|c| init_logging(&c).map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meridian: configuration error: {e}");
            return 2;
        }
    };
    let node = match Node::open(&cfg).await {
        Ok(n) => n,
        Err(e) => {
            error!("{e}");
            eprintln!("meridian: {e}");
            return e.exit_code();
        }
    };
    match node.serve(shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            e.exit_code()
        }
    }
}

async fn healthcheck(url: Option<String>) -> i32 {
    let url = url.unwrap_or_else(|| {
        let port = std::env::var("MERIDIAN_HTTP_ADDR")
            .ok()
            .and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned()))
            .unwrap_or_else(|| "7474".into());
        format!("http://127.0.0.1:{port}")
    });
    let c = MeridianClient::new(&url, None, Duration::from_secs(3));
    match c.get("/health").await {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            1
        }
    }
}

async fn kv(url: String, token: Option<String>, op: KvOp) -> i32 {
    let c = MeridianClient::new(&url, token, Duration::from_secs(30));
    let result = match op {
        KvOp::Get { key } => match c.get(&MeridianClient::key_path(&key)).await {
            Ok(r) => {
                let body = r.bytes().await.unwrap_or_default();
                let _ = std::io::stdout().write_all(&body);
                let _ = std::io::stdout().write_all(b"\n");
                Ok(())
            }
            Err(e) => Err(e),
        },
        KvOp::Put { key, value } => print_json(c.put(&MeridianClient::key_path(&key), value.into_bytes()).await).await,
        KvOp::Delete { key } => print_json(c.delete(&MeridianClient::key_path(&key)).await).await,
        KvOp::List { prefix, limit } => {
            let q = format!("/v1/kv?prefix={}&limit={limit}", urlencode(&prefix));
            print_json(c.get(&q).await).await
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("meridian kv: {e}");
            1
        }
    }
}

fn urlencode(s: &str) -> String {
    MeridianClient::key_path(s).trim_start_matches("/v1/kv/").replace('/', "%2F")
}

async fn print_json(r: Result<reqwest::Response, crate::client::ClientError>) -> Result<(), crate::client::ClientError> {
    let r = r?;
    println!("{}", r.text().await.unwrap_or_default());
    Ok(())
}

fn restore(from: &std::path::Path, data_dir: &std::path::Path) -> i32 {
    match crate::node::restore(from, data_dir) {
        Ok(meta) => {
            println!("restored {} keys at index {} into {}", meta.keys, meta.applied_index, data_dir.display());
            0
        }
        Err(e) => {
            eprintln!("meridian restore: {e}");
            1
        }
    }
}

fn wal(op: WalOp) -> i32 {
    let result = match op {
        WalOp::Reset { data_dir } => {
            return match crate::storage::reset(&data_dir) {
                Ok(report) => {
                    println!("{report}");
                    0
                }
                Err(e) => {
                    eprintln!("meridian wal reset: {e}");
                    1
                }
            }
        }
        WalOp::Verify { dir } => meridian_wal::verify(&dir).map(|r| {
            println!("WAL {}: records {}..={} in {} segment(s)", dir.display(), r.first_index, r.last_index, r.segments);
            if let Some(t) = r.truncated_tail {
                println!("torn tail (would be truncated on open): {t:?}");
            } else {
                println!("ok");
            }
        }),
        WalOp::Dump { dir } => meridian_wal::dump(&dir, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("meridian wal: {e}");
            1
        }
    }
}
