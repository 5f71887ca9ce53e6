//! Spawning and breaking real `meridian` processes for the process-level tests.
#![allow(dead_code)]

pub mod browser;
pub mod ha;
pub mod linearizability;
pub mod proxy;
pub mod raft;
pub mod region;
pub mod writers;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// A free loopback port (bound then released; the node binds it right after), never one
/// handed out before in this process: the tests of a file run in parallel, and the kernel
/// may give a port just released to another test's `free_port` before the first test's
/// node has bound it. CI saw exactly that: an HA node's peer port answered by another
/// test's node of the same name ("the peer has this node's id").
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&port) {
            seen.push(port);
            return port;
        }
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (from /proc; `None`
/// where /proc cannot tell).
pub fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")).then(|| f.get(9).map(|s| s.to_string())).flatten()
    })?;
    let wanted = format!("socket:[{inode}]");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted)))
}

pub struct Node {
    pub child: Option<Child>,
    pub port: u16,
    /// `None`: leave MERIDIAN_DATA_DIR unset (the default ./data under `cwd`).
    pub data_dir: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    /// Largest file the node may write, in 512-byte blocks (`ulimit -f`): a full disk for one
    /// process, no root needed. Writes past it fail with EFBIG (SIGXFSZ is ignored).
    pub file_size_limit_blocks: Option<u64>,
}

/// A running node the helpers can talk to: a process this test started ([`Node`]) or a
/// container (`tests/docker_compose.rs`).
pub trait Target {
    fn url(&self, path: &str) -> String;
    fn log_text(&self) -> String;
}

impl Target for Node {
    fn url(&self, path: &str) -> String {
        Node::url(self, path)
    }
    fn log_text(&self) -> String {
        Node::log_text(self)
    }
}

impl Node {
    /// Starts a standalone node on a fresh port with `data_dir` and extra `MERIDIAN_*` settings.
    pub fn start(data_dir: &Path, extra: &[(&str, &str)]) -> Node {
        let mut node = Node {
            child: None,
            port: free_port(),
            data_dir: Some(data_dir.to_path_buf()),
            cwd: None,
            env: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: data_dir.with_extension("log"),
            file_size_limit_blocks: None,
        };
        node.spawn_ready();
        node
    }

    /// Starts a node with a full environment list (cluster modes).
    pub fn start_env(data_dir: &Path, env: Vec<(String, String)>) -> Node {
        Node::start_env_limited(data_dir, env, None)
    }

    /// Likewise, with `ulimit -f` (512-byte blocks, /bin/sh's unit) set for the node: a write past that size in
    /// any one file fails with EFBIG (SIGXFSZ ignored). `prlimit --fsize` lifts it later.
    pub fn start_env_limited(data_dir: &Path, env: Vec<(String, String)>, file_size_limit_blocks: Option<u64>) -> Node {
        let mut node = Node {
            child: None,
            port: free_port(),
            data_dir: Some(data_dir.to_path_buf()),
            cwd: None,
            env,
            log: data_dir.with_extension("log"),
            file_size_limit_blocks,
        };
        node.spawn_ready();
        node
    }

    /// Replaces (or adds) one environment variable for the next start.
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.to_string(), v.to_string()));
    }

    pub fn command(&self) -> Command {
        let mut cmd = match self.file_size_limit_blocks {
            // `exec` keeps the PID, and an ignored signal stays ignored across exec. The soft
            // limit only: the hard one stays, so `prlimit --fsize` can lift it again without
            // CAP_SYS_RESOURCE (a test's "room again").
            Some(blocks) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(format!("ulimit -S -f {blocks} && trap '' XFSZ && exec \"$0\"")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.env_clear().env("MERIDIAN_HTTP_ADDR", format!("127.0.0.1:{}", self.port));
        if let Some(d) = &self.data_dir {
            cmd.env("MERIDIAN_DATA_DIR", d);
        }
        if let Some(c) = &self.cwd {
            cmd.current_dir(c);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = self.command().stdout(Stdio::null()).stderr(Stdio::from(log)).spawn().expect("spawn meridian");
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn wait_ready(&mut self) {
        if let Err(e) = self.try_ready() {
            panic!("{e}");
        }
    }

    /// Spawns, and if another process took the port between [`free_port`] and the bind
    /// (tests run in parallel), tries again on a fresh port.
    fn spawn_ready(&mut self) {
        for attempt in 1.. {
            self.spawn();
            match self.try_ready() {
                Ok(()) => return,
                Err(e) if attempt < 4 && e.contains("(MERIDIAN_HTTP_ADDR)") && e.contains("in use") => self.port = free_port(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Waits until this node's own process answers `/health` with 200. A 200 alone is not
    /// enough: while a node that lost the race for its port is exiting, another test's node
    /// on that port answers.
    fn try_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("meridian exited with {status} before becoming ready; log:\n{}", self.log_text()));
            }
            if let Ok(200) = http_get_status(&self.url("/health")) {
                if listens_on(self.child.as_ref().unwrap().id(), self.port) != Some(false) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("meridian did not become ready in 30 s; log:\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether `needle` shows up in the node's log within `within`. For lines written by
    /// work the node finishes after it has answered (a standby acknowledges a flush before
    /// its background apply logs anything).
    pub fn log_shows(&self, needle: &str, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// kill -9: no chance to flush or checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut c = self.child.take().expect("running");
        unsafe_kill(c.id() as i32, 15);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                c.kill().unwrap();
                panic!("meridian did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a signal via the `kill` command (keeps the tests free of unsafe libc calls).
/// Where the records of a WAL segment file end: after its last non-zero byte. A
/// preallocated segment (wal/src/spare.rs) is zero-filled to its full size, so its file
/// length says nothing about its records; a test that cuts "the last N bytes" of the log
/// cuts from here.
pub fn wal_data_end(segment: &Path) -> u64 {
    let bytes = std::fs::read(segment).unwrap();
    bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p as u64 + 1)
}

pub fn unsafe_kill(pid: i32, sig: i32) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Runs the binary to completion with only the given environment; returns (code, stderr).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().current_dir(cwd).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Minimal HTTP/1.1 GET returning the status code.
pub fn http_get_status(url: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other("bad HTTP answer"))
}

/// A blocking HTTP call for synchronous tests: (status, body).
pub fn http(method: &str, url: &str, body: Option<Vec<u8>>) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let mut rb = c.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    })
}

pub fn http_json(method: &str, url: &str) -> serde_json::Value {
    let (status, body) = http(method, url, None);
    assert!((200..300).contains(&status), "{method} {url} answered {status}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}
