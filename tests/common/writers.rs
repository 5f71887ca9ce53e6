//! Concurrent writers for the fault tests: each PUTs unique keys and records what was
//! acknowledged, so a test can check every acknowledged write after the fault.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http;

#[derive(Default, Clone)]
pub struct Write {
    pub key: String,
    pub value: String,
    pub node: usize,
    pub sent: Duration,
    pub answered: Duration,
    pub ok: bool,
    /// HTTP status, or 0 when there was no answer.
    pub status: u16,
}

/// Stops its writers when dropped too (a test that panics must not leave them running).
pub struct Writers {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<Write>>>,
}

/// `n` concurrent writers PUTting unique keys to `targets` (round-robin per writer) until stopped.
pub fn start_writers(targets: Vec<String>, n: usize, prefix: &str, epoch0: Instant) -> Writers {
    start_writers_sized(targets, n, prefix, epoch0, 0)
}

/// As [`start_writers`], with values padded to `value_len` bytes.
pub fn start_writers_sized(targets: Vec<String>, n: usize, prefix: &str, epoch0: Instant, value_len: usize) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let prefix = prefix.to_owned();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
            let mut tasks = Vec::new();
            for w in 0..n {
                let (client, st, targets, prefix) = (client.clone(), st.clone(), targets.clone(), prefix.clone());
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    for i in 0u64.. {
                        if st.load(Ordering::SeqCst) || i > 200_000 {
                            break;
                        }
                        let node = (w + i as usize) % targets.len();
                        let key = format!("{prefix}/w{w:02}/{i:06}");
                        let mut value = format!("v-{w}-{i}-");
                        while value.len() < value_len {
                            value.push('x');
                        }
                        let sent = epoch0.elapsed();
                        let r = client.put(format!("{}/v1/kv/{key}", targets[node])).body(value.clone()).send().await;
                        let status = r.as_ref().map_or(0, |r| r.status().as_u16());
                        let ok = status == 200;
                        out.push(Write { key, value, node, sent, answered: epoch0.elapsed(), ok, status });
                        if !ok {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    out
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        })
    });
    Writers { stop, handle: Some(handle) }
}

impl Writers {
    /// Asks the writers to send nothing new (requests in flight still finish); `finish`
    /// then collects what they did.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn finish(mut self) -> Vec<Write> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().expect("finished once").join().unwrap()
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The value of `key` on the node at `base` (a local read), if it has one.
pub fn get_at(base: &str, key: &str) -> Option<String> {
    let (s, b) = http("GET", &format!("{base}/v1/kv/{key}?consistency=local"), None);
    (s == 200).then(|| String::from_utf8(b).unwrap())
}

/// The acknowledged writes that the node at `base` does not hold with their value.
pub fn missing_at(base: &str, writes: &[Write]) -> Vec<Write> {
    writes.iter().filter(|w| w.ok && get_at(base, &w.key).as_deref() != Some(w.value.as_str())).cloned().collect()
}
