//! The stop signal shared by every task of one transport, and the wait for them to finish.
//!
//! As in mini-redis: each task holds a [`Shutdown`], which carries both the signal and a
//! clone of a channel sender; when every task has ended, the channel's receiver sees it
//! closed. Dropping the controller (the last `Transport` handle) also signals the tasks, so
//! a transport that is dropped without `shutdown()` still stops.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

#[derive(Clone)]
pub(crate) struct Shutdown {
    rx: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Shutdown {
    /// Returns once shutdown is signalled (or the transport was dropped).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

pub(crate) struct ShutdownController {
    tx: watch::Sender<bool>,
    alive_tx: Mutex<Option<mpsc::Sender<()>>>,
    alive_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl ShutdownController {
    pub fn new() -> ShutdownController {
        let (alive_tx, alive_rx) = mpsc::channel(1);
        ShutdownController {
            tx: watch::channel(false).0,
            alive_tx: Mutex::new(Some(alive_tx)),
            alive_rx: tokio::sync::Mutex::new(alive_rx),
        }
    }

    /// A handle for a new task; `None` once shutdown has begun (the task must not start).
    pub fn handle(&self) -> Option<Shutdown> {
        let alive = self.alive_tx.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some(Shutdown { rx: self.tx.subscribe(), _alive: alive })
    }

    pub fn is_signalled(&self) -> bool {
        *self.tx.borrow()
    }

    /// Signals every task and waits up to `bound` for them to end. Returns whether they did.
    pub async fn shutdown(&self, bound: Duration) -> bool {
        self.tx.send_replace(true);
        self.alive_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut rx = self.alive_rx.lock().await;
        tokio::time::timeout(bound, rx.recv()).await.is_ok()
    }
}
