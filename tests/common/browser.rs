//! Headless Chromium driven over the DevTools protocol, for the cluster page's browser test.
//!
//! The page must be watched *while* a node is killed, so `--dump-dom` (one load, one dump)
//! is not enough: the test keeps one tab open and asks it for its DOM as often as it likes.
//! The protocol runs over a WebSocket; the few frames needed (masked text out, text in,
//! possibly fragmented) are written here rather than adding a WebSocket crate for one test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

/// The Chromium binary, if one is installed (`MERIDIAN_CHROMIUM` overrides the search).
pub fn find_chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MERIDIAN_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome", "headless_shell"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
    })
}

pub struct Browser {
    child: Child,
    ws: Option<TcpStream>,
    next_id: u64,
}

impl Browser {
    /// Starts headless Chromium on about:blank with DevTools on a loopback port it picks,
    /// and attaches to its tab.
    pub fn start(bin: &Path, profile: &Path) -> Browser {
        std::fs::create_dir_all(profile).unwrap();
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox", // the tests may run as root, where the sandbox refuses to start
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1500,760",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Owned by `b` from here, so a failed start below still stops the process.
        let mut b = Browser { child, ws: None, next_id: 0 };
        let port = wait_for_port(profile);
        let ws_path = page_socket(port);
        b.ws = Some(ws_connect(port, &ws_path));
        b
    }

    /// Sends one DevTools command and returns its `result`.
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({"id": id, "method": method, "params": params}).to_string();
        let ws = self.ws.as_mut().expect("attached");
        send_text(ws, msg.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no answer to {method} in 30 s");
            let reply: serde_json::Value = serde_json::from_slice(&read_message(ws)).expect("DevTools sends JSON");
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {}", reply["error"]);
                return reply["result"].clone();
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({"url": url}));
    }

    /// Evaluates a JavaScript expression in the page; returns its value.
    pub fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self.call("Runtime.evaluate", serde_json::json!({"expression": expr, "returnByValue": true}));
        r["result"]["value"].clone()
    }

    pub fn screenshot(&mut self, to: &Path) {
        let r = self.call("Page.captureScreenshot", serde_json::json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium writes the port it bound to `DevToolsActivePort` in its profile.
fn wait_for_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(port) = std::fs::read_to_string(&file).ok().and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok())) {
            return port;
        }
        assert!(Instant::now() < deadline, "chromium did not open its DevTools port in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The WebSocket path of the first tab, from `/json/list`.
fn page_socket(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = super::http("GET", &format!("http://127.0.0.1:{port}/json/list"), None);
        if status == 200 {
            let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if let Some(url) = list.as_array().into_iter().flatten().find(|t| t["type"] == "page").and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                let path = url.splitn(4, '/').nth(3).unwrap();
                return format!("/{path}");
            }
        }
        assert!(Instant::now() < deadline, "chromium lists no page");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ws_connect(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: bWVyaWRpYW4tdWktdGVzdA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 101 "), "DevTools refused the WebSocket: {status}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    assert!(r.buffer().is_empty(), "unexpected bytes after the handshake");
    s
}

/// One masked text frame (clients must mask).
fn send_text(s: &mut TcpStream, payload: &[u8]) {
    let mask: [u8; 4] = rand::random();
    let mut frame = vec![0x81u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
}

/// The next whole text message (fragments joined; control frames answered or skipped).
fn read_message(s: &mut TcpStream) -> Vec<u8> {
    let mut msg = Vec::new();
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).unwrap();
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        assert!(len < 64 << 20, "a {len}-byte WebSocket frame");
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).unwrap();
        match opcode {
            0x8 => panic!("chromium closed the DevTools socket"),
            0x9 | 0xA => continue, // ping/pong: Chromium does not require an answer here
            _ => msg.extend_from_slice(&payload),
        }
        if fin {
            return msg;
        }
    }
}
