//! `AppendTicket`: the promise an append returns, resolved by the writer thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use tokio::sync::oneshot;

use crate::error::WalError;

/// Resolves to the last index of its append once that append is fdatasync'ed
/// (or to why it never will be). Await it, or call [`wait`](Self::wait) from
/// plain threads.
///
/// Dropping a ticket does not cancel the append: it was enqueued, in order,
/// when [`Wal::append`](crate::Wal::append) returned.
#[must_use = "an append is durable only once its ticket resolves"]
pub struct AppendTicket {
    state: State,
}

enum State {
    Ready(Option<Result<u64, WalError>>),
    Waiting(oneshot::Receiver<Result<u64, WalError>>),
}

impl AppendTicket {
    pub(crate) fn ready(result: Result<u64, WalError>) -> Self {
        AppendTicket {
            state: State::Ready(Some(result)),
        }
    }

    pub(crate) fn waiting(rx: oneshot::Receiver<Result<u64, WalError>>) -> Self {
        AppendTicket {
            state: State::Waiting(rx),
        }
    }

    /// Blocks the calling thread until the append is durable.
    pub fn wait(self) -> Result<u64, WalError> {
        block_on(self)
    }

    /// Whether the append is already durable, without waiting. `false` while it is in
    /// flight and when it failed (then [`wait`](Self::wait) returns the error at once).
    pub fn is_durable(&mut self) -> bool {
        if let State::Waiting(rx) = &mut self.state {
            match rx.try_recv() {
                Ok(r) => self.state = State::Ready(Some(r)),
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => self.state = State::Ready(Some(Err(WalError::Closed))),
            }
        }
        matches!(self.state, State::Ready(Some(Ok(_))))
    }
}

impl Future for AppendTicket {
    type Output = Result<u64, WalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Ready(r) => Poll::Ready(r.take().expect("AppendTicket polled after completion")),
            // The writer only drops a sender without answering when it is gone.
            State::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(WalError::Closed))),
        }
    }
}

/// Waits for a reply from the writer thread.
pub(crate) fn wait_reply<T>(rx: oneshot::Receiver<Result<T, WalError>>) -> Result<T, WalError> {
    block_on(rx).unwrap_or(Err(WalError::Closed))
}

/// Runs a future to completion on this thread. Unlike tokio's `blocking_recv`
/// it does not panic inside a runtime, so the blocking API keeps working from
/// `spawn_blocking` and from tests that mix both worlds.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_what_the_writer_sends() {
        let (tx, rx) = oneshot::channel();
        let t = thread::spawn(move || AppendTicket::waiting(rx).wait());
        tx.send(Ok(42)).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), 42);
    }

    #[test]
    fn is_durable_looks_without_waiting_and_keeps_the_answer() {
        let (tx, rx) = oneshot::channel();
        let mut t = AppendTicket::waiting(rx);
        assert!(!t.is_durable());
        tx.send(Ok(7)).unwrap();
        assert!(t.is_durable());
        assert!(t.is_durable());
        assert_eq!(t.wait().unwrap(), 7);

        let (tx, rx) = oneshot::channel::<Result<u64, WalError>>();
        let mut failed = AppendTicket::waiting(rx);
        drop(tx);
        assert!(!failed.is_durable());
        assert!(matches!(failed.wait(), Err(WalError::Closed)));
    }

    #[test]
    fn a_vanished_writer_reads_as_closed() {
        let (tx, rx) = oneshot::channel::<Result<u64, WalError>>();
        drop(tx);
        assert!(matches!(
            AppendTicket::waiting(rx).wait(),
            Err(WalError::Closed)
        ));
    }
}
