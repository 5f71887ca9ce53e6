//! The three clocks of an HTTP/1 connection, so a client that stops half-way costs a slot
//! for a bounded time only:
//!
//! - **idle** (`MERIDIAN_HTTP_IDLE_TIMEOUT`): hyper's header-read timer, which runs from the
//!   connection's open and from the end of each answer until the next head is complete. Set in
//!   [`super::server`]; a silent or kept-alive-but-unused connection is closed when it fires.
//! - **head** (`MERIDIAN_HTTP_HEADER_TIMEOUT`): [`TimedIo`], from the first byte of a head to
//!   its end. Shorter than idle, so a slowloris trickle is cut early while an idle keep-alive
//!   connection may wait longer for its next request. Answered 408 when the socket allows.
//! - **body** (`MERIDIAN_HTTP_BODY_TIMEOUT`): [`DeadlineBody`], from the end of the head to
//!   the last body byte, whatever the pace. A never-ending chunked body or a half-sent one
//!   ends in [`BodyTimeout`], which the handlers answer 408.
//!
//! [`Phase`] tells the head clock whether a request is being served: bytes read then are body
//! (or the next pipelined head), not a slow head.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Whether the connection has a request in service: from its head's end until its answer's
/// body is done (or dropped).
#[derive(Default)]
pub struct Phase {
    in_request: AtomicBool,
}

impl Phase {
    pub fn begin(&self) {
        self.in_request.store(true, Ordering::Release);
    }

    fn end(&self) {
        self.in_request.store(false, Ordering::Release);
    }

    fn in_request(&self) -> bool {
        self.in_request.load(Ordering::Acquire)
    }
}

/// The answer written when a head times out: the connection is then closed.
const HEAD_TIMEOUT_ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 102\r\n\r\n{\"error\":{\"code\":\"timeout\",\"message\":\"request head not complete within MERIDIAN_HTTP_HEADER_TIMEOUT\"}}";

/// A TCP stream whose reads fail once a request head has taken longer than the head timeout.
pub struct TimedIo {
    inner: TcpStream,
    phase: Arc<Phase>,
    header_timeout: Duration,
    head_deadline: Option<Pin<Box<Sleep>>>,
    /// The last write could not complete: hyper may hold part of an answer, so a 408 written
    /// now could land inside it.
    write_blocked: bool,
}

impl TimedIo {
    pub fn new(inner: TcpStream, phase: Arc<Phase>, header_timeout: Duration) -> TimedIo {
        TimedIo { inner, phase, header_timeout, head_deadline: None, write_blocked: false }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.phase.in_request() {
            this.head_deadline = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.head_deadline.is_none() && !this.phase.in_request() {
                    this.head_deadline = Some(Box::pin(tokio::time::sleep(this.header_timeout)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this.head_deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                if !this.write_blocked {
                    // No answer is being written while a head is read: nothing to interleave with.
                    let _ = this.inner.try_write(HEAD_TIMEOUT_ANSWER);
                }
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head not complete within MERIDIAN_HTTP_HEADER_TIMEOUT")))
            }
            other => other,
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_blocked = r.is_pending();
        r
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_blocked = r.is_pending();
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The request body did not arrive within `MERIDIAN_HTTP_BODY_TIMEOUT`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} (MERIDIAN_HTTP_BODY_TIMEOUT)", humantime::format_duration(*.0))]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// Finds a body timeout among an error's causes (extractor rejections wrap it).
    pub fn in_chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(t) = err.downcast_ref::<BodyTimeout>() {
                return Some(t);
            }
            cur = err.source();
        }
        None
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
pub struct DeadlineBody<B> {
    inner: B,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        DeadlineBody { inner, timeout, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer body that ends its request's [`Phase`] when it is done or dropped.
pub struct PhaseBody<B> {
    inner: B,
    phase: Arc<Phase>,
}

impl<B> PhaseBody<B> {
    pub fn new(inner: B, phase: Arc<Phase>) -> Self {
        PhaseBody { inner, phase }
    }
}

impl<B> Drop for PhaseBody<B> {
    fn drop(&mut self) {
        self.phase.end();
    }
}

impl<B: Body + Unpin> Body for PhaseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            this.phase.end();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_timeout_answer_declares_its_length() {
        let text = std::str::from_utf8(HEAD_TIMEOUT_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
