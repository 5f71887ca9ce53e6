//! Message families: several protocols (HA, Raft, later cross-region traffic) on one
//! cluster port, each served by its own [`Handler`].
//!
//! A message type is a `u16` whose high byte names its [`Family`] and whose low byte names
//! the message within it (`Family::Ha.msg(0x05)` = `0x0105`). [`Families`] is itself a
//! [`Handler`]: the transport hands it everything, and it passes each message on, whole and
//! unchanged, to the handler registered for its family. A family handler therefore still
//! matches on full message types and never sees another family's traffic.
//!
//! Traffic for a family this node does not serve (a Raft node sent an HA fence, a peer on a
//! newer build) is refused if it is a request — the caller learns why at once — and dropped if
//! it is a one-way message. Whoever can reach the port decides how many such messages arrive,
//! so drops are logged at most once per [`DROP_LOG_WINDOW`] with a count, never one line each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Handler, NodeId, RemoteError};

/// Message families: the high byte of a msg_type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ha = 0x01,
    Raft = 0x02,
    Region = 0x03,
}

impl Family {
    const ALL: [Family; 3] = [Family::Ha, Family::Raft, Family::Region];

    /// The message type of message `low` in this family.
    pub const fn msg(self, low: u8) -> u16 {
        ((self as u16) << 8) | low as u16
    }

    /// The family a message type belongs to, if it is one this build knows.
    pub fn of(msg_type: u16) -> Option<Family> {
        let high = (msg_type >> 8) as u8;
        Family::ALL.into_iter().find(|f| *f as u8 == high)
    }

    fn slot(self) -> usize {
        self as usize - 1
    }
}

/// At most one log line about dropped one-way messages per window.
pub const DROP_LOG_WINDOW: Duration = Duration::from_secs(5);

/// A [`Handler`] that routes each message to the handler registered for its family.
pub struct Families {
    handlers: [Option<Arc<dyn Handler>>; Family::ALL.len()],
    /// One-way messages dropped since the last log line, and when that line was written.
    dropped: AtomicU64,
    last_drop_log: Mutex<Option<Instant>>,
}

impl Families {
    /// No family served: every request is refused until families are added [`with`](Self::with).
    pub fn new() -> Self {
        Families { handlers: Default::default(), dropped: AtomicU64::new(0), last_drop_log: Mutex::new(None) }
    }

    /// Serves family `f` with `h` (replacing any handler registered for it before).
    pub fn with(mut self, f: Family, h: Arc<dyn Handler>) -> Self {
        self.handlers[f.slot()] = Some(h);
        self
    }

    fn handler(&self, msg_type: u16) -> Option<&Arc<dyn Handler>> {
        Family::of(msg_type).and_then(|f| self.handlers[f.slot()].as_ref())
    }

    fn note_dropped(&self, from: &NodeId, msg_type: u16) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last_drop_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < DROP_LOG_WINDOW) {
            return;
        }
        *last = Some(now);
        let count = self.dropped.swap(0, Ordering::Relaxed);
        tracing::warn!(
            %from, msg_type = format!("{msg_type:#06x}"), dropped = count,
            "dropped one-way cluster messages of a family this node does not serve (at most one line per {}s)",
            DROP_LOG_WINDOW.as_secs()
        );
    }
}

impl Default for Families {
    fn default() -> Self {
        Families::new()
    }
}

#[async_trait]
impl Handler for Families {
    async fn on_request(&self, from: &NodeId, msg_type: u16, payload: Bytes) -> Result<Bytes, RemoteError> {
        match self.handler(msg_type) {
            Some(h) => h.on_request(from, msg_type, payload).await,
            None => Err(RemoteError::new(
                "unknown_family",
                match Family::of(msg_type) {
                    Some(f) => format!("this node does not serve the {f:?} family (message type {msg_type:#06x})"),
                    None => format!("message type {msg_type:#06x} belongs to no known family"),
                },
            )),
        }
    }

    async fn on_message(&self, from: &NodeId, msg_type: u16, payload: Bytes) {
        match self.handler(msg_type) {
            Some(h) => h.on_message(from, msg_type, payload).await,
            None => self.note_dropped(from, msg_type),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it received and answers requests with its name.
    struct Named(&'static str, Mutex<Vec<u16>>);

    #[async_trait]
    impl Handler for Named {
        async fn on_request(&self, _from: &NodeId, msg_type: u16, _payload: Bytes) -> Result<Bytes, RemoteError> {
            self.1.lock().unwrap().push(msg_type);
            Ok(Bytes::from_static(self.0.as_bytes()))
        }
        async fn on_message(&self, _from: &NodeId, msg_type: u16, _payload: Bytes) {
            self.1.lock().unwrap().push(msg_type);
        }
    }

    fn named(name: &'static str) -> Arc<Named> {
        Arc::new(Named(name, Mutex::new(Vec::new())))
    }

    #[test]
    fn message_types_split_into_family_and_low_byte() {
        assert_eq!(Family::Ha.msg(0x05), 0x0105);
        assert_eq!(Family::Raft.msg(0xff), 0x02ff);
        assert_eq!(Family::of(0x0105), Some(Family::Ha));
        assert_eq!(Family::of(0x0200), Some(Family::Raft));
        assert_eq!(Family::of(0x0301), Some(Family::Region));
        assert_eq!(Family::of(0x0001), None);
        assert_eq!(Family::of(0x0401), None);
    }

    #[tokio::test]
    async fn each_message_reaches_the_handler_of_its_family_unchanged() {
        let (ha, raft) = (named("ha"), named("raft"));
        let f = Families::new().with(Family::Ha, ha.clone()).with(Family::Raft, raft.clone());
        let from: NodeId = "peer".into();
        assert_eq!(f.on_request(&from, 0x0105, Bytes::new()).await.unwrap(), "ha");
        assert_eq!(f.on_request(&from, 0x0201, Bytes::new()).await.unwrap(), "raft");
        f.on_message(&from, 0x0102, Bytes::new()).await;
        f.on_message(&from, 0x0207, Bytes::new()).await;
        assert_eq!(*ha.1.lock().unwrap(), vec![0x0105, 0x0102]);
        assert_eq!(*raft.1.lock().unwrap(), vec![0x0201, 0x0207]);
    }

    #[tokio::test]
    async fn a_request_for_an_unserved_family_is_refused_with_a_reason() {
        let ha = named("ha");
        let f = Families::new().with(Family::Ha, ha.clone());
        let from: NodeId = "peer".into();
        let e = f.on_request(&from, Family::Raft.msg(1), Bytes::new()).await.unwrap_err();
        assert_eq!(e.code, "unknown_family");
        assert!(e.message.contains("Raft"), "{e}");
        let e = f.on_request(&from, 0x7701, Bytes::new()).await.unwrap_err();
        assert_eq!(e.code, "unknown_family");
        assert!(e.message.contains("no known family"), "{e}");
        assert!(ha.1.lock().unwrap().is_empty(), "the HA handler saw another family's request");
    }

    #[tokio::test]
    async fn a_one_way_message_for_an_unserved_family_is_dropped_and_counted_once_per_window() {
        let ha = named("ha");
        let f = Families::new().with(Family::Ha, ha.clone());
        let from: NodeId = "peer".into();
        for _ in 0..1000 {
            f.on_message(&from, Family::Region.msg(1), Bytes::new()).await;
        }
        assert!(ha.1.lock().unwrap().is_empty(), "the HA handler saw another family's message");
        // The first drop was logged (and reset the count); the other 999 wait for the next line.
        assert_eq!(f.dropped.load(Ordering::Relaxed), 999);
        assert!(f.last_drop_log.lock().unwrap().is_some());
    }
}
