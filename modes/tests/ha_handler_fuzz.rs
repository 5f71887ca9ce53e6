//! Every HA message handler, fed arbitrary message types, payloads and epochs, as the
//! admitted peer would send them: no panic, and the node's epoch moves only as the epoch
//! rule allows (`ha::epoch::check_raise`) — up, to the claimed epoch, never to one carrying
//! this node's own tag, never by more than `MAX_ROUND_STEP` rounds. Forwarded commands
//! outside the HTTP limits are refused. Run on a standby and on a primary.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meridian_modes::command::{Command, Limits, Op, Txn};
use meridian_modes::ha::epoch::{self, tag_of};
use meridian_modes::ha::messages::*;
use meridian_modes::ha::{ConfiguredRole, HaConfig, HaStandby};
use meridian_modes::replicator::LeaderHint;
use meridian_modes::state_machine::MemStateMachine;
use meridian_modes::transport::{Transport, TransportConfig};
use meridian_modes::Replicator;
use meridian_wal::{Wal, WalOptions};
use proptest::prelude::*;

mod ha_support;
use ha_support::ha_config;

const ME: &str = "node-a";
const PEER_ID: &str = "node-b";

struct Subject {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    ha: Arc<HaStandby>,
    handler: Arc<dyn meridian_modes::transport::Handler>,
}

fn subject(role: ConfiguredRole) -> Subject {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ha, handler) = rt.block_on(async {
        let (wal, _) = Wal::open(WalOptions::new(dir.path().join("wal"))).unwrap();
        // Nobody listens on the peer address: the node runs alone.
        let cfg = HaConfig {
            sync_timeout: Duration::from_millis(200),
            forward_writes: true,
            ..ha_config(ME, role, "127.0.0.1:9".into(), dir.path())
        };
        let ha = HaStandby::new(cfg, wal, Arc::new(MemStateMachine::default())).unwrap();
        let handler = ha.handler();
        let mut registry = prometheus_client::registry::Registry::default();
        let tcfg = TransportConfig::new("fuzz", ME, "127.0.0.1:0".parse().unwrap());
        let t = Transport::start(tcfg, handler.clone(), &mut registry).await.unwrap();
        ha.start(t);
        (ha, handler)
    });
    let want = if role == ConfiguredRole::Primary { "primary" } else { "standby" };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ha.status().role != want || (want == "primary" && !ha.status().is_leader) {
        assert!(std::time::Instant::now() < deadline, "the node never became {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Subject { _dir: dir, rt, ha, handler }
}

/// Epochs worth trying against a node whose epoch is `mine`.
fn epoch_strategy() -> impl Strategy<Value = (u8, u64)> {
    (0u8..8, any::<u64>())
}

fn pick_epoch(kind: u8, random: u64, mine: u64) -> u64 {
    let b = tag_of(PEER_ID);
    match kind {
        0 => 0,
        1 => mine,
        2 => epoch::next(mine, b).unwrap_or(u64::MAX),
        3 => epoch::next(mine, tag_of(ME)).unwrap_or(u64::MAX), // our own tag: never adoptable
        4 => u64::MAX,
        5 => mine.saturating_add(1),
        6 => (epoch::round(mine) + epoch::MAX_ROUND_STEP + 5) << epoch::TAG_BITS | b,
        _ => random,
    }
}

fn command(kind: u8, n: usize) -> Command {
    match kind % 5 {
        0 => Command::Put { key: "k".into(), value: vec![1; n], if_revision: None },
        1 => Command::Put { key: "x".repeat(n), value: vec![], if_revision: None },
        2 => Command::Delete { key: String::new(), if_revision: None },
        3 => Command::Txn(Txn { compare: vec![], success: vec![Op::Put { key: "t".into(), value: vec![2; n] }; n % 7], failure: vec![] }),
        _ => Command::Noop,
    }
}

fn payload(msg_type: u16, e: u64, cmd: Command, garbage: &[u8], shape: u8) -> Bytes {
    if shape == 0 {
        return Bytes::copy_from_slice(garbage);
    }
    let leader = LeaderHint { node_id: PEER_ID.into(), http_addr: None };
    match msg_type {
        FETCH => encode(&Fetch {
            epoch: e,
            node_id: PEER_ID.into(),
            from: u64::from(shape) * 3,
            prev_epoch: e,
            positions: Positions { received: e, flushed: 3, applied: 2 },
            wait_ms: 0,
            max_records: 5,
            http_addr: None,
            want_snapshot: shape.is_multiple_of(2),
            agreed: e,
            history: vec![(e, 1), (e.wrapping_add(1), u64::from(shape))],
            failover_timeout_ms: e,
        }),
        ACK => encode(&Ack { epoch: e, node_id: PEER_ID.into(), positions: Positions { received: e, flushed: e, applied: e } }),
        SNAPSHOT_CHUNK => encode(&SnapshotChunkReq { snapshot_id: e, offset: e, max_bytes: u32::MAX }),
        FENCE => encode(&Fence { epoch: e, from: PEER_ID.into() }),
        FORWARD => encode(&Forward { epoch: e, command: cmd }),
        PROMOTE => encode(&Promote { epoch: e, last_index: u64::from(shape) }),
        READ_INDEX => encode(&ReadIndex { epoch: e, node_id: PEER_ID.into() }),
        WITNESS_PING => encode(&WitnessPing { epoch: e, node_id: PEER_ID.into(), standby_in_sync: shape % 2 == 1, failover_timeout_ms: e, handover_to: None }),
        WITNESS_VOTE => encode(&WitnessVote { epoch: e, node_id: PEER_ID.into(), failover_timeout_ms: e }),
        _ => {
            let _ = leader;
            Bytes::copy_from_slice(garbage)
        }
    }
}

const TYPES: [u16; 11] = [FETCH, ACK, SNAPSHOT_CHUNK, FENCE, FORWARD, PROMOTE, READ_INDEX, WITNESS_PING, WITNESS_VOTE, 0x0000, 0xffff];

fn run(s: &Subject, cases: u32) {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..ProptestConfig::default() });
    let strategy = (0usize..TYPES.len(), epoch_strategy(), 0u8..5, 0usize..3000, proptest::collection::vec(any::<u8>(), 0..64), 0u8..4, any::<bool>());
    runner
        .run(&strategy, |(t, (kind, random), ck, n, garbage, shape, one_way)| {
            let msg_type = TYPES[t];
            let before = s.ha.status().epoch;
            let claimed = pick_epoch(kind, random, before);
            let cmd = command(ck, n);
            let too_big = cmd.validate(&Limits { max_key_bytes: 1024, max_value_bytes: 1024, max_txn_ops: 4 }).is_err();
            let p = payload(msg_type, claimed, cmd, &garbage, shape);
            let reply = s.rt.block_on(async {
                let from = "peer".to_string();
                if one_way {
                    s.handler.on_message(&from, msg_type, p.clone()).await;
                    None
                } else {
                    Some(tokio::time::timeout(Duration::from_secs(10), s.handler.on_request(&from, msg_type, p)).await)
                }
            });
            if let Some(r) = &reply {
                prop_assert!(r.is_ok(), "handler for {msg_type:#x} hung");
            }
            let after = s.ha.status().epoch;
            prop_assert!(after >= before, "epoch went back: {before} -> {after}");
            if after != before {
                // Promotion by PROMOTE starts this node's own next epoch; anything else must be the claimed epoch, allowed by the rule.
                // Random bytes (`shape == 0`) can decode as a valid message carrying an epoch of their own:
                // then only the rule applies, not the claimed value.
                let own = epoch::owner(after) == tag_of(ME) && msg_type == PROMOTE;
                prop_assert!(own || after == claimed || shape == 0, "epoch moved to {after}, claimed {claimed} ({msg_type:#x})");
                if !own {
                    prop_assert!(epoch::check_raise(before, after, tag_of(ME)).is_ok(), "epoch raised against the rule: {before} -> {after}");
                }
            }
            if msg_type == FORWARD && shape != 0 && too_big {
                if let Some(Ok(Ok(b))) = reply {
                    match decode::<ForwardReply>(&b) {
                        Ok(ForwardReply::Committed { .. }) => prop_assert!(false, "an out-of-limits forwarded command was committed"),
                        Ok(ForwardReply::Failed { .. }) | Err(_) => {}
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn standby_handlers_survive_arbitrary_messages_and_keep_the_epoch_rule() {
    let s = subject(ConfiguredRole::Standby);
    run(&s, 400);
    s.rt.block_on(s.ha.shutdown());
}

#[test]
fn primary_handlers_survive_arbitrary_messages_and_keep_the_epoch_rule() {
    let s = subject(ConfiguredRole::Primary);
    run(&s, 400);
    s.rt.block_on(s.ha.shutdown());
}

/// The frame from issue 9, reproduction 1, as the handler sees it: FENCE with epoch 2^64-1.
#[test]
fn a_fence_with_epoch_u64_max_does_not_move_the_epoch() {
    let s = subject(ConfiguredRole::Primary);
    let before = s.ha.status().epoch;
    let r = s.rt.block_on(s.handler.on_request(&"peer".to_string(), FENCE, encode(&Fence { epoch: u64::MAX, from: PEER_ID.into() })));
    assert!(r.is_ok());
    assert_eq!(s.ha.status().epoch, before);
    assert!(s.ha.status().is_leader, "a forged fence deposed the primary");
    s.rt.block_on(s.ha.shutdown());
}
