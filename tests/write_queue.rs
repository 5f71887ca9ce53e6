//! The write queue's bound (`MERIDIAN_WRITE_QUEUE_BYTES`, `api::write_budget`), with real
//! processes: writes that cannot commit pile up only to the bound; past it the node answers
//! `503` + `Retry-After: 1` at once instead of queueing, and every acknowledged write
//! survives.
//!
//! The pile-up is made with Raft: both followers of a three-node cluster SIGSTOPped, so the
//! leader's writes wait for a majority that is not there (they hang; nothing times them out).
//! 48 writers of 64 KiB each against a 1 MiB bound: 15 fit, the other 33 must be refused
//! while the followers are still stopped. Then the followers resume; the writes that waited
//! commit, and every acknowledged one is read back (linearizable) on every node.

mod common;

use std::time::Duration;

use common::raft::{get_value, RaftCluster, RaftOpts};

const WRITERS: usize = 48;
const VALUE_BYTES: usize = 64 << 10;
const BOUND: usize = 1 << 20;

fn value_for(i: usize) -> String {
    format!("{i:04}-").repeat(VALUE_BYTES / 5)
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

struct Answer {
    writer: usize,
    status: u16,
    retry_after: Option<String>,
}

#[test]
fn writes_past_the_bound_are_refused_at_once_with_retry_after_and_acknowledged_ones_survive() {
    let mut c = RaftCluster::start(
        3,
        RaftOpts { extra: vec![("MERIDIAN_WRITE_QUEUE_BYTES".into(), BOUND.to_string())], ..Default::default() },
    );
    let (leader, _) = c.wait_stable_leader(Duration::from_secs(30));
    let base = c.base(leader);
    let followers = c.others(leader);
    for &f in &followers {
        c.pause(f);
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    let handles: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (client, tx, url) = (client.clone(), tx.clone(), format!("{base}/v1/kv/queued-{i}"));
            rt.spawn(async move {
                let r = client.put(&url).body(value_for(i)).timeout(Duration::from_secs(120)).send().await;
                let (status, retry_after) = match r {
                    Ok(r) => (r.status().as_u16(), r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned)),
                    Err(_) => (0, None),
                };
                let _ = tx.send(Answer { writer: i, status, retry_after });
            })
        })
        .collect();
    drop(tx);

    // While the followers are stopped: every answer is a refusal, and at least the writes
    // that do not fit are answered.
    let must_refuse = WRITERS - BOUND / (VALUE_BYTES + 256);
    let mut answers: Vec<Answer> = Vec::new();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while answers.len() < must_refuse {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(a)) => answers.push(a),
                _ => break,
            }
        }
        // A little longer, to see that nothing else is answered while no majority exists.
        while let Ok(Some(a)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            answers.push(a);
        }
    });
    let refused_while_stopped = answers.len();
    assert!(
        refused_while_stopped >= must_refuse,
        "only {refused_while_stopped} of {WRITERS} writes were answered while no majority existed; at least {must_refuse} do not fit in {BOUND} bytes and must be refused at once (queued instead?)"
    );
    for a in &answers {
        assert_eq!(a.status, 503, "writer {} got {} while no majority existed", a.writer, a.status);
        assert_eq!(a.retry_after.as_deref(), Some("1"), "writer {}: 503 without Retry-After: 1", a.writer);
    }
    assert!(refused_while_stopped < WRITERS, "every write was refused: the bound let none wait ({refused_while_stopped})");
    println!(
        "write queue bound {BOUND} B: {refused_while_stopped} of {WRITERS} writes of {VALUE_BYTES} B refused at once, {} waited; leader peak RSS {} MiB",
        WRITERS - refused_while_stopped,
        vm_hwm_kib(c.nodes[leader].pid()) / 1024
    );

    for &f in &followers {
        c.resume(f);
    }
    rt.block_on(async {
        for h in handles {
            let _ = h.await;
        }
        while let Some(a) = rx.recv().await {
            answers.push(a);
        }
    });
    let acknowledged: Vec<usize> = answers.iter().filter(|a| a.status == 200).map(|a| a.writer).collect();
    assert!(!acknowledged.is_empty(), "no waiting write was acknowledged after the followers resumed");
    for i in 0..c.len() {
        for &w in &acknowledged {
            let got = get_value(&c.base(i), &format!("queued-{w}"), "linearizable").unwrap();
            assert_eq!(got.as_deref(), Some(value_for(w).as_str()), "acknowledged write {w} missing or wrong on node {i}");
        }
    }
    println!("{} acknowledged after the resume, all present on all {} nodes", acknowledged.len(), c.len());
}
