//! Running out of file descriptors is not a storage failure (issue 9, reproduction 3, the WAL
//! half). The node runs with a tiny `ulimit -n`; the test holds idle HTTP connections until
//! the node has no descriptor left, so the WAL's checkpoint purge (which opens
//! `wal.state.tmp`) and segment rotation (which opens `*.wal.tmp`) meet EMFILE. Writes must
//! not be refused for good: once the connections close, PUTs succeed and `/health` is not
//! unhealthy, without a restart.
//!
//! The HTTP connection cap keeps a node with a normal limit from running out this way (it
//! leaves room for storage), but it never goes below 16 connections; a node idles with about
//! 17 descriptors open, so a limit of 32 still lets idle connections take the last one.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http, Node, BIN};

const FD_LIMIT: usize = 32;

fn start_with_fd_limit(data: &std::path::Path) -> Node {
    let mut node = Node {
        child: None,
        port: common::free_port(),
        data_dir: Some(data.to_path_buf()),
        cwd: None,
        env: vec![
            ("MERIDIAN_CHECKPOINT_INTERVAL".into(), "100ms".into()),
            ("MERIDIAN_WAL_SEGMENT_BYTES".into(), "16384".into()),
        ],
        log: data.with_extension("log"),
        file_size_limit_blocks: None,
    };
    // The same environment `Node::command` sets, behind a shell that lowers the fd limit;
    // `exec` keeps the PID.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\"")).arg(BIN);
    cmd.env_clear().env("MERIDIAN_HTTP_ADDR", format!("127.0.0.1:{}", node.port)).env("MERIDIAN_DATA_DIR", data);
    for (k, v) in &node.env {
        cmd.env(k, v);
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
    node.child = Some(cmd.stdout(Stdio::null()).stderr(Stdio::from(log)).spawn().unwrap());
    node.wait_ready();
    node
}

/// Descriptors the node holds with numbers below the limit: when that is the limit, `open`
/// fails with EMFILE. (Counting all of them is not enough: a descriptor inherited from the
/// test harness may sit above the limit and leave a slot free below it.)
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok()).filter(|fd| *fd < FD_LIMIT).count())
        .unwrap_or(0)
}

/// One HTTP/1.1 request on a kept-alive connection; returns the status.
fn request(s: &mut BufReader<TcpStream>, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
    write!(s.get_mut(), "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len())?;
    s.get_mut().write_all(body)?;
    read_response(s)
}

fn read_response(s: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    s.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0;
    loop {
        line.clear();
        s.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body)?;
    Ok(status)
}

#[test]
fn running_out_of_file_descriptors_pauses_writes_and_they_resume_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = start_with_fd_limit(&data);
    let pid = node.pid();

    // A connection opened before the flood, to write through while no new one can be accepted.
    let mut writer = BufReader::new(TcpStream::connect(("127.0.0.1", node.port)).unwrap());
    writer.get_ref().set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    assert_eq!(request(&mut writer, "PUT", "/v1/kv/before", b"v").unwrap(), 200);

    // Idle connections until the node has no descriptor left.
    let mut idle = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_fds(pid) < FD_LIMIT {
        assert!(Instant::now() < deadline, "the node holds only {} fds after {} connections", open_fds(pid), idle.len());
        idle.push(TcpStream::connect(("127.0.0.1", node.port)).unwrap());
        std::thread::sleep(Duration::from_millis(30));
    }
    eprintln!("{} idle connections; the node holds {} fds (limit {FD_LIMIT})", idle.len(), open_fds(pid));

    // Writes while no descriptor is free, pipelined on the open connection. Each checkpoint
    // (100 ms) purges the WAL, which rewrites wal.state through a new file, and a purge that
    // empties the log makes the next write open a new segment file. The answers may wait for
    // a descriptor; none may be a refusal.
    let mut sent = 0;
    for (i, len) in [100, 100, 100, 20000, 20000].into_iter().enumerate() {
        write!(writer.get_mut(), "PUT /v1/kv/during{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n").unwrap();
        writer.get_mut().write_all(&vec![b'd'; len]).unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    writer.get_ref().set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut statuses = Vec::new();
    while statuses.len() < sent {
        match read_response(&mut writer) {
            Ok(status) => statuses.push(status),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => panic!("reading an answer while out of descriptors: {e}"),
        }
    }
    let answered_while_short = statuses.len();
    assert!(open_fds(pid) >= FD_LIMIT - 1, "the flood ended early: {} fds", open_fds(pid));
    drop(idle);
    writer.get_ref().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while statuses.len() < sent {
        statuses.push(read_response(&mut writer).unwrap());
    }
    eprintln!("{answered_while_short} of {sent} writes answered while out of descriptors, the rest after: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200), "writes while out of descriptors answered {statuses:?}; log:\n{}", tail(&node));

    // Descriptors are back: writes on new connections succeed, health is not unhealthy.
    for i in 0..20 {
        let (status, body) = http("PUT", &node.url(&format!("/v1/kv/after{i}")), Some(vec![b'a'; 3000]));
        assert_eq!(status, 200, "PUT after the flood: {}\n{}", String::from_utf8_lossy(&body), tail(&node));
    }
    let (status, body) = http("GET", &node.url("/health"), None);
    assert_eq!(status, 200, "health after the flood: {}", String::from_utf8_lossy(&body));
    let (status, body) = http("GET", &node.url("/v1/kv/during4"), None);
    assert_eq!((status, body.len()), (200, 20000));
    assert!(node.log_text().contains("Too many open files"), "the test never ran the node out of descriptors:\n{}", tail(&node));
}

fn tail(node: &Node) -> String {
    let log = node.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
