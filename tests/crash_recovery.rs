//! kill -9 under load: every write acknowledged with 200 survives with its value, and nothing
//! that was never written appears.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Node;
use rand::Rng;
use serde_json::Value;

const WRITERS: usize = 16;

#[derive(Default)]
struct History {
    /// key → value of every PUT that was answered 200.
    acked: HashMap<String, String>,
    /// key → value of every PUT that was sent (acked or not).
    attempted: HashMap<String, String>,
    /// writer → highest counter acknowledged on its `latest` key.
    latest_acked: HashMap<usize, u64>,
    latest_attempted: HashMap<usize, u64>,
}

async fn write_until_killed(base: String, writer: usize, round: usize, hist: Arc<Mutex<History>>) {
    let c = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for n in 0u64.. {
        let key = format!("r{round}/w{writer:02}/{n:06}");
        let value = format!("value-{round}-{writer}-{n}-{}", "x".repeat((n % 7) as usize * 40));
        hist.lock().unwrap().attempted.insert(key.clone(), value.clone());
        let ok = matches!(c.put(format!("{base}/v1/kv/{key}")).body(value.clone()).send().await, Ok(r) if r.status() == 200);
        if !ok {
            return; // the node is gone
        }
        hist.lock().unwrap().acked.insert(key, value);
        // Overwrites of one key too: the surviving value must be at least the last acked one.
        hist.lock().unwrap().latest_attempted.insert(writer, n);
        let latest = format!("{base}/v1/kv/latest/w{writer:02}");
        match c.put(latest).body(n.to_string()).send().await {
            Ok(r) if r.status() == 200 => {
                hist.lock().unwrap().latest_acked.insert(writer, n);
            }
            _ => return,
        }
    }
}

async fn all_keys(c: &reqwest::Client, base: &str) -> HashMap<String, Vec<u8>> {
    use base64::Engine;
    let mut out = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/kv?limit=1000");
        if let Some(a) = &after {
            url.push_str(&format!("&start_after={a}"));
        }
        let page: Value = c.get(url).send().await.unwrap().json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            let v = base64::engine::general_purpose::STANDARD.decode(item["value_b64"].as_str().unwrap()).unwrap();
            out.insert(item["key"].as_str().unwrap().to_owned(), v);
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments and frequent checkpoints so rotation, purge and replay all happen.
    let mut node = Node::start(
        &dir.path().join("data"),
        &[("MERIDIAN_WAL_SEGMENT_BYTES", "65536"), ("MERIDIAN_CHECKPOINT_INTERVAL", "150ms")],
    );
    let hist = Arc::new(Mutex::new(History::default()));
    let c = reqwest::Client::new();
    let mut total_acked = 0;
    for round in 0..3 {
        let base = node.url("");
        let writers: Vec<_> = (0..WRITERS).map(|w| tokio::spawn(write_until_killed(base.clone(), w, round, hist.clone()))).collect();
        let wait = rand::rng().random_range(400..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        node.kill9();
        for w in writers {
            tokio::time::timeout(Duration::from_secs(10), w).await.expect("writers stop once the node is gone").unwrap();
        }
        node.restart();

        let stored = all_keys(&c, &node.url("")).await;
        let h = hist.lock().unwrap();
        for (k, v) in &h.acked {
            let got = stored.get(k).unwrap_or_else(|| panic!("round {round}: acknowledged key {k} is missing after kill -9"));
            assert_eq!(got, v.as_bytes(), "round {round}: key {k} has the wrong value");
        }
        for (k, v) in &stored {
            if let Some(w) = k.strip_prefix("latest/w") {
                let w: usize = w.parse().unwrap();
                let n: u64 = String::from_utf8(v.clone()).unwrap().parse().unwrap();
                assert!(n >= h.latest_acked.get(&w).copied().unwrap_or(0), "latest/w{w} went back to {n}");
                assert!(n <= h.latest_attempted[&w], "latest/w{w} holds {n}, never written");
                continue;
            }
            let sent = h.attempted.get(k).unwrap_or_else(|| panic!("key {k} appeared but was never written"));
            assert_eq!(v, sent.as_bytes(), "key {k} holds a value that was never written");
        }
        assert!(h.acked.len() > total_acked, "round {round} acknowledged no writes; the test proved nothing");
        total_acked = h.acked.len();
        eprintln!("round {round}: {} acknowledged writes checked, {} keys stored", h.acked.len(), stored.len());
    }
}
