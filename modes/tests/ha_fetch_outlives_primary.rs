//! A standby's fetch is a long poll: the primary answers when it has records or after
//! `wait_ms`. When the primary stops being primary while a fetch waits (its mode stops on a
//! storage failure, and the node stays up to rejoin later), the answer must not tell the
//! standby it is out of sync — it never was; the node answering simply is no primary any
//! more — because an out-of-sync standby refuses to take over, and the pair is left with no
//! primary at all (seen once in `tests/disk_full.rs`, the HA primary's full disk).
//!
//! The primary runs in-process; the test plays the standby by calling the primary's message
//! handler directly, so it controls when the long poll is waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_modes::ha::gate::SyncMode;
use meridian_modes::ha::messages::*;
use meridian_modes::ha::{ConfiguredRole, HaConfig, HaStandby};
use meridian_modes::state_machine::MemStateMachine;
use meridian_modes::transport::{Handler, Transport, TransportConfig};
use meridian_modes::Replicator;
use meridian_wal::{Wal, WalOptions};

mod ha_support;
use ha_support::ha_config;

const STANDBY: &str = "node-b";

fn fetch(epoch: u64, from: u64, prev_epoch: u64, have: u64, wait_ms: u64) -> Fetch {
    Fetch {
        epoch,
        node_id: STANDBY.into(),
        from,
        prev_epoch,
        positions: Positions { received: have, flushed: have, applied: have },
        wait_ms,
        max_records: 100,
        http_addr: None,
        want_snapshot: false,
        agreed: have,
        history: vec![],
        failover_timeout_ms: 3_600_000,
    }
}

async fn ask(h: &Arc<dyn Handler>, f: &Fetch) -> FetchReply {
    let reply = h.on_request(&STANDBY.to_string(), FETCH, encode(f)).await.expect("the primary answers a fetch");
    decode::<FetchReply>(&reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_answered_after_the_primary_stopped_does_not_record_the_standby_out_of_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions::new(dir.path().join("wal"))).unwrap();
    // Nobody listens on the peer address: the test is the standby.
    let cfg = HaConfig { sync_mode: SyncMode::Sync, ..ha_config("node-a", ConfiguredRole::Primary, "127.0.0.1:9".into(), dir.path()) };
    let ha = HaStandby::new(cfg, wal, Arc::new(MemStateMachine::default())).unwrap();
    let h = ha.handler();
    let mut registry = prometheus_client::registry::Registry::default();
    let t = Transport::start(TransportConfig::new("outlives", "node-a", "127.0.0.1:0".parse().unwrap()), h.clone(), &mut registry).await.unwrap();
    ha.start(t);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(ha.status().role == "primary" && ha.status().is_leader) {
        assert!(Instant::now() < deadline, "node-a never became primary");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Take the primary's log, then report having all of it until the primary records this
    // standby in sync (it persists that first, then says so in its answers).
    let (mut epoch, mut last, mut last_epoch) = (0, 0, 0);
    loop {
        match ask(&h, &fetch(epoch, last + 1, last_epoch, last, 0)).await {
            FetchReply::Records { epoch: e, records, in_sync, .. } => {
                epoch = e;
                if let Some(r) = records.last() {
                    (last, last_epoch) = (r.index, r.epoch);
                } else if in_sync && last > 0 {
                    break;
                }
            }
            other => panic!("unexpected answer while catching up: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the primary never recorded the standby in sync");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A long poll waits at the primary; the primary's mode stops meanwhile.
    let poll = {
        let (h, f) = (h.clone(), fetch(epoch, last + 1, last_epoch, last, 2_000));
        tokio::spawn(async move { ask(&h, &f).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the fetch was meant to be waiting in its long poll");
    ha.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(10), poll).await.expect("the long poll never ended").unwrap() {
        FetchReply::Records { in_sync: false, .. } => {
            panic!("a node that is no longer primary answered the waiting fetch as a primary with in_sync: false — the standby would record itself out of sync and never take over")
        }
        FetchReply::Records { in_sync: true, .. } | FetchReply::NotPrimary { .. } => {}
        other => panic!("unexpected answer: {other:?}"),
    }
}
