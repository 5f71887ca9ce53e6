//! A standby's checkpoint (redb's fsync: milliseconds, or seconds on a busy disk) runs beside
//! its fetches. While one is stuck the standby still receives what the primary writes, so a
//! `sync` commit (which waits for the standby's next fetch) never waits out a standby
//! checkpoint. Two in-process nodes on loopback; the standby's state machine holds its first
//! checkpoint after something was applied until the test lets it go.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_modes::command::{Command, CommandResult, KeyValue};
use meridian_modes::ha::{ConfiguredRole, HaConfig, HaStandby};
use meridian_modes::state_machine::{AppliedState, LogEntry, MemStateMachine, ScanEvent, StateMachine, StateMachineError};
use meridian_modes::transport::{Transport, TransportConfig};
use meridian_modes::Replicator;
use meridian_wal::{Wal, WalOptions};

mod ha_support;
use ha_support::ha_config;

/// Holds the first checkpoint taken after an apply until `release` is sent.
struct StuckCheckpoint {
    inner: MemStateMachine,
    entered: Mutex<Option<std_mpsc::Sender<()>>>,
    release: Mutex<Option<std_mpsc::Receiver<()>>>,
}

impl StateMachine for StuckCheckpoint {
    fn checkpoint(&self) -> Result<u64, StateMachineError> {
        if self.inner.applied_index() > 0 {
            if let Some(release) = self.release.lock().unwrap().take() {
                self.entered.lock().unwrap().take().unwrap().send(()).unwrap();
                let _ = release.recv();
            }
        }
        self.inner.checkpoint()
    }
    fn apply(&self, e: &[LogEntry]) -> Result<Vec<CommandResult>, StateMachineError> {
        self.inner.apply(e)
    }
    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }
    fn applied_state(&self) -> Result<AppliedState, StateMachineError> {
        self.inner.applied_state()
    }
    fn durable_index(&self) -> u64 {
        self.inner.durable_index()
    }
    fn get_version(&self, key: &str) -> Result<Option<KeyValue>, StateMachineError> {
        self.inner.get_version(key)
    }
    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<KeyValue>, StateMachineError> {
        self.inner.list(prefix, start_after, limit)
    }
    fn scan(&self, visit: &mut dyn FnMut(ScanEvent) -> Result<(), StateMachineError>) -> Result<(), StateMachineError> {
        self.inner.scan(visit)
    }
    fn replace_all(
        &self,
        applied_index: u64,
        epoch: u64,
        meta: Option<Vec<u8>>,
        entries: &mut dyn FnMut() -> Result<Option<KeyValue>, StateMachineError>,
    ) -> Result<(), StateMachineError> {
        self.inner.replace_all(applied_index, epoch, meta, entries)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn node(cfg: HaConfig, port: u16, wal: Wal, sm: Arc<dyn StateMachine>) -> Arc<HaStandby> {
    let id = cfg.node_id.clone();
    let ha = HaStandby::new(cfg, wal, sm).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let t = Transport::start(TransportConfig::new("ckpt", &id, format!("127.0.0.1:{port}").parse().unwrap()), ha.handler(), &mut registry).await.unwrap();
    ha.start(t);
    ha
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn put(i: u32) -> Command {
    Command::Put { key: format!("k{i}"), value: vec![i as u8], if_revision: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_receives_records_while_its_checkpoint_is_stuck() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pa, pb) = (free_port(), free_port());
    let (wal_a, _) = Wal::open(WalOptions::new(da.path().join("wal"))).unwrap();
    let (wal_b, _) = Wal::open(WalOptions::new(db.path().join("wal"))).unwrap();
    let (entered_tx, entered) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    let sm_b = Arc::new(StuckCheckpoint { inner: MemStateMachine::default(), entered: Mutex::new(Some(entered_tx)), release: Mutex::new(Some(release_rx)) });
    let a = node(ha_config("a", ConfiguredRole::Primary, format!("127.0.0.1:{pb}"), da.path()), pa, wal_a, Arc::new(MemStateMachine::default())).await;
    let cfg_b = HaConfig { checkpoint_interval: Duration::from_millis(50), ..ha_config("b", ConfiguredRole::Standby, format!("127.0.0.1:{pa}"), db.path()) };
    let b = node(cfg_b, pb, wal_b.clone(), sm_b.clone()).await;
    until("a primary", || a.status().role == "primary" && a.status().is_leader).await;

    let first = a.submit(put(1)).await.expect("first write").bookmark.index;
    until("the first write applied on the standby", || sm_b.applied_index() >= first).await;
    let entered = tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(20)).is_ok());
    assert!(entered.await.unwrap(), "the standby took no checkpoint after applying");

    // The checkpoint is stuck now. The next write must still reach the standby.
    let second = a.submit(put(2)).await.expect("second write").bookmark.index;
    let deadline = Instant::now() + Duration::from_secs(20);
    while wal_b.last_index() < second && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = wal_b.last_index();
    release.send(()).unwrap();
    assert!(received >= second, "the standby stopped fetching while its checkpoint ran (has {received}, the primary wrote {second})");
    until("the second write applied on the standby", || sm_b.applied_index() >= second).await;
    b.shutdown().await;
    a.shutdown().await;
}
