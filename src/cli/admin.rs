//! The operator's commands against a running node, each over its HTTP API with the admin
//! token: `status` (every node, like `patronictl list`), `promote`, `switchover`, `backup`,
//! `digest`.
//!
//! Exit codes: 0 done; 1 the node answered but refused (wrong token, not possible now: the
//! message says why); 3 the node cannot be reached. Messages go to stderr, results to stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::api::cluster_view::{ClusterView, NodeView};
use crate::client::{ClientError, MeridianClient};

/// Which node, and the admin token.
#[derive(Args, Clone)]
pub struct Target {
    /// Base URL of the node to ask.
    #[arg(long, env = "MERIDIAN_URL", default_value = "http://127.0.0.1:7474")]
    pub url: String,
    /// Admin bearer token (the node's MERIDIAN_ADMIN_TOKEN).
    #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 3;

impl Target {
    fn client(&self, timeout: Duration) -> MeridianClient {
        MeridianClient::new(&self.url, self.token.clone(), timeout)
    }
}

/// Prints why a call failed and returns the exit code for it.
fn fail(cmd: &str, t: &Target, e: ClientError) -> i32 {
    match e {
        ClientError::Unreachable { url, source } => {
            eprintln!("meridian {cmd}: cannot reach {url}: is the node running and is --url (MERIDIAN_URL) right? ({})", crate::client::with_causes(&source));
            EXIT_UNREACHABLE
        }
        ClientError::Status { status, body } => {
            let (code, message) = match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(v) => (v["error"]["code"].as_str().unwrap_or("").to_owned(), v["error"]["message"].as_str().unwrap_or(&body).to_owned()),
                Err(_) => (String::new(), body),
            };
            if status == reqwest::StatusCode::UNAUTHORIZED {
                let had = if t.token.is_some() { "refused the admin token" } else { "needs an admin token" };
                eprintln!("meridian {cmd}: {} {had} ({status}): set MERIDIAN_ADMIN_TOKEN (or --token) to the node's MERIDIAN_ADMIN_TOKEN", t.url);
            } else {
                eprintln!("meridian {cmd}: {} refused ({status}{}): {message}", t.url, if code.is_empty() { String::new() } else { format!(" {code}") });
            }
            EXIT_REFUSED
        }
    }
}

async fn print_json_answer(cmd: &str, t: &Target, r: Result<reqwest::Response, ClientError>) -> i32 {
    match r {
        Ok(resp) => {
            let body = resp.text().await.unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(body)),
                Err(_) => println!("{body}"),
            }
            0
        }
        Err(e) => fail(cmd, t, e),
    }
}

/// `meridian status`: the asked node's view of every node it knows of.
pub async fn status(t: &Target, output: Output) -> i32 {
    let c = t.client(Duration::from_secs(10));
    let view = match c.get("/ui/cluster.json").await {
        Ok(r) => match r.json::<ClusterView>().await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("meridian status: {} answered something that is not a cluster view: {e}", t.url);
                return EXIT_REFUSED;
            }
        },
        Err(e) => return fail("status", t, e),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&view).expect("a view serializes")),
        Output::Table => print!("{}", table(&view)),
    }
    0
}

/// The `patronictl list`-like table, then each node's notes.
pub fn table(v: &ClusterView) -> String {
    let header = ["NODE", "ROLE", "HEALTH", "EPOCH", "WAL", "APPLIED", "LAG", "SYNC", "PEERS", "URL"];
    let rows: Vec<[String; 10]> = v.nodes.iter().map(row).collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let s: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", s.join("  ").trim_end())
    };
    let mut out = format!("cluster: mode {}, asked {}{}\n", v.mode, v.served_by, v.leader.as_ref().map(|l| format!(", leader {l}")).unwrap_or_default());
    out += &line(&header.map(String::from));
    for r in &rows {
        out += &line(r);
    }
    for n in &v.nodes {
        let notes: Vec<&str> = if n.reachable { n.notes.iter().map(String::as_str).collect() } else { n.error.as_deref().into_iter().collect() };
        for note in notes {
            out += &format!("{}: {note}\n", n.node_id);
        }
    }
    out
}

fn row(n: &NodeView) -> [String; 10] {
    let d = || "-".to_owned();
    let role = match &n.membership {
        Some(m) => format!("{} ({m})", n.role),
        None => n.role.clone(),
    };
    if !n.reachable {
        return [n.node_id.clone(), "down".into(), "unreachable".into(), d(), d(), d(), d(), d(), d(), n.url.clone().unwrap_or_default()];
    }
    let sync = match (&n.sync_mode, n.in_sync) {
        (Some(m), Some(true)) => format!("{m}, in sync"),
        (Some(m), Some(false)) => format!("{m}, out of sync"),
        (Some(m), None) => m.clone(),
        (None, _) => d(),
    };
    let peers: Vec<String> = n.peers.iter().map(|p| format!("{} {}", p.id, if p.healthy { "up" } else { "down" })).collect();
    [
        n.node_id.clone(),
        role,
        n.health.clone(),
        n.epoch_label.clone(),
        format!("{}/{}", n.wal_last_index, n.wal_durable_index),
        n.applied_index.to_string(),
        format!("{:.1}s{}", n.lag_seconds, n.lag_records.map(|r| format!(" {r}rec")).unwrap_or_default()),
        sync,
        if peers.is_empty() { d() } else { peers.join(", ") },
        n.url.clone().unwrap_or_default(),
    ]
}

pub async fn promote(t: &Target, force: bool) -> i32 {
    let path = if force { "/admin/promote?force=true" } else { "/admin/promote" };
    print_json_answer("promote", t, t.client(Duration::from_secs(60)).post(path).await).await
}

pub async fn switchover(t: &Target) -> i32 {
    print_json_answer("switchover", t, t.client(Duration::from_secs(120)).post("/admin/switchover").await).await
}

pub async fn digest(t: &Target) -> i32 {
    print_json_answer("digest", t, t.client(Duration::from_secs(300)).get("/admin/digest").await).await
}

/// `meridian backup --out FILE`: streams `/admin/backup` to `FILE.partial`, renamed to FILE
/// only once complete, so a cut download never looks like a backup. Progress on stderr.
pub async fn backup(t: &Target, out: &Path) -> i32 {
    let resp = match t.client(Duration::from_secs(24 * 3600)).get("/admin/backup").await {
        Ok(r) => r,
        Err(e) => return fail("backup", t, e),
    };
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    match stream_to(resp, &partial).await {
        Ok((bytes, took)) => {
            if let Err(e) = std::fs::rename(&partial, out) {
                eprintln!("meridian backup: cannot move {} to {}: {e}", partial.display(), out.display());
                return EXIT_REFUSED;
            }
            eprintln!("backup: wrote {bytes} bytes to {} in {:.1} s (restore with: meridian restore --from {} --data-dir DIR)", out.display(), took.as_secs_f64(), out.display());
            0
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            eprintln!("meridian backup: {e}; nothing was written to {}", out.display());
            EXIT_REFUSED
        }
    }
}

async fn stream_to(mut resp: reqwest::Response, path: &Path) -> Result<(u64, Duration), String> {
    let start = Instant::now();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?);
    let (mut bytes, mut shown) = (0u64, Instant::now());
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("the download stopped after {bytes} bytes: {e}"))? {
        f.write_all(&chunk).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        bytes += chunk.len() as u64;
        if shown.elapsed() >= Duration::from_secs(1) {
            eprintln!("backup: {:.1} MiB so far", bytes as f64 / (1 << 20) as f64);
            shown = Instant::now();
        }
    }
    let file = f.into_inner().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.sync_all().map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
    Ok((bytes, start.elapsed()))
}
