//! [`Switch`]: the handler a node's cluster port keeps while the mode behind it is replaced.
//!
//! A node owns its transport for its whole life; the replication mode that serves it may stop
//! and start again (after a storage error, once the disk has room: see the node's
//! `resume.rs`). While no mode is attached, requests are refused with `unavailable` and the
//! reason — to a peer that is exactly a node that is down, which every mode already handles
//! (Raft retries, an HA standby counts the silence towards its failover timeout) — and one-way
//! messages are dropped.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Handler, NodeId, RemoteError};

pub struct Switch {
    /// The attached handler, or why there is none.
    target: RwLock<Result<Arc<dyn Handler>, String>>,
}

impl Switch {
    /// Nothing attached yet; requests are refused with `why`.
    pub fn detached(why: impl Into<String>) -> Switch {
        Switch { target: RwLock::new(Err(why.into())) }
    }

    /// Serves everything with `h` from now on.
    pub fn attach(&self, h: Arc<dyn Handler>) {
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = Ok(h);
    }

    /// Stops serving: requests are refused with `why` until the next [`attach`](Self::attach).
    pub fn detach(&self, why: impl Into<String>) {
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = Err(why.into());
    }

    fn current(&self) -> Result<Arc<dyn Handler>, String> {
        self.target.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Handler for Switch {
    async fn on_request(&self, from: &NodeId, msg_type: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
        match self.current() {
            Ok(h) => h.on_request(from, msg_type, payload).await,
            Err(why) => Err(RemoteError::new("unavailable", why)),
        }
    }

    async fn on_message(&self, from: &NodeId, msg_type: u16, payload: Bytes) {
        if let Ok(h) = self.current() {
            h.on_message(from, msg_type, payload).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    #[async_trait]
    impl Handler for Echo {
        async fn on_request(&self, _: &NodeId, _: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
            Ok(payload)
        }
        async fn on_message(&self, _: &NodeId, _: u16, _: Bytes) {}
    }

    #[tokio::test]
    async fn refuses_while_detached_and_serves_once_attached() {
        let s = Switch::detached("starting");
        let from = "n1".to_string();
        let e = s.on_request(&from, 0x0101, Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!((e.code.as_str(), e.message.as_str()), ("unavailable", "starting"));
        s.attach(Arc::new(Echo));
        assert_eq!(s.on_request(&from, 0x0101, Bytes::from_static(b"x")).await.unwrap(), Bytes::from_static(b"x"));
        s.detach("storage failed");
        assert_eq!(s.on_request(&from, 0x0101, Bytes::new()).await.unwrap_err().message, "storage failed");
    }
}
