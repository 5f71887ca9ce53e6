//! Frames over a byte stream: buffered reading and writing, the send queue, the close signal.
//!
//! A connection is split in two halves, each owned by one task: a reader that parses frames
//! (with [`FrameReader`]) and a writer that drains the connection's [`Outbox`] (with
//! [`run_writer`]). Callers never touch the socket; they put frames in the outbox, so one
//! stalled socket blocks only the callers of that connection.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::MissedTickBehavior;

use super::frame::{Frame, FrameError, FrameKind, LENGTH_BYTES};

/// A TCP or TLS stream, boxed so the rest of the transport has one type for both.
pub(crate) trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}
pub(crate) type BoxStream = Box<dyn AsyncStream>;
pub(crate) type StreamReader = FrameReader<tokio::io::ReadHalf<BoxStream>>;
pub(crate) type StreamWriter = FrameWriter<tokio::io::WriteHalf<BoxStream>>;

pub(crate) fn split(stream: BoxStream, max_frame_bytes: usize) -> (StreamReader, StreamWriter) {
    let (r, w) = tokio::io::split(stream);
    (FrameReader::new(r, max_frame_bytes), FrameWriter::new(w))
}

/// Bytes queued for one connection before senders wait: bounds memory per peer while
/// letting a stream of small messages batch into few writes. A frame larger than this
/// waits for the queue to drain and then goes alone.
const QUEUE_BYTES: usize = 16 << 20;
/// Frames queued per connection (a second bound, for floods of tiny frames).
const QUEUE_FRAMES: usize = 4096;
/// Frames, and bytes, written between flushes when the queue stays full. The byte bound
/// lets a due ping in between big frames.
const WRITE_BATCH: usize = 64;
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Largest single read into the buffer; bigger frames arrive over several reads.
const READ_CHUNK: usize = 1 << 20;
const MIN_READ: usize = 8 << 10;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
}

impl ReadError {
    /// The rustls error under an I/O error, if that is what it is (alerts, bad certificates).
    pub fn tls_cause(&self) -> Option<String> {
        match self {
            ReadError::Io(e) => tls_cause(e),
            _ => None,
        }
    }
}

pub(crate) fn tls_cause(e: &io::Error) -> Option<String> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).map(|e| e.to_string())
}

pub(crate) struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    max: usize,
    received: Option<Counter>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R, max_frame_bytes: usize) -> FrameReader<R> {
        FrameReader { rd, buf: BytesMut::with_capacity(MIN_READ), max: max_frame_bytes, received: None }
    }

    /// The handshake runs with a small limit; the configured one applies after it.
    pub fn set_limit(&mut self, max_frame_bytes: usize) {
        self.max = max_frame_bytes;
    }

    pub fn count_into(&mut self, c: Counter) {
        self.received = Some(c);
    }

    /// The next frame, or `Ok(None)` when the peer closed the stream between frames.
    /// `idle` bounds the wait for each read, not for the whole frame, so a large frame on a
    /// slow link is fine while a silent peer is not. Cancel-safe: partial data stays buffered.
    pub async fn read_frame(&mut self, idle: Duration) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = Frame::parse(&mut self.buf, self.max)? {
                if let Some(c) = &self.received {
                    c.inc_by(frame.wire_len() as u64);
                }
                return Ok(Some(frame));
            }
            // Parse has checked the announced length, so this reserves at most what the
            // current (size-checked) frame still needs, in bounded steps.
            let need = if self.buf.len() >= LENGTH_BYTES {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                (LENGTH_BYTES + len).saturating_sub(self.buf.len())
            } else {
                MIN_READ
            };
            self.buf.reserve(need.clamp(MIN_READ, READ_CHUNK));
            match tokio::time::timeout(idle, self.rd.read_buf(&mut self.buf)).await {
                Err(_) => return Err(ReadError::Idle(idle)),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(0)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(0)) => return Err(ReadError::Truncated(self.buf.len())),
                Ok(Ok(_)) => {}
            }
        }
    }
}

pub(crate) struct FrameWriter<W> {
    wr: BufWriter<W>,
    sent: Option<Counter>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(wr: W) -> FrameWriter<W> {
        FrameWriter { wr: BufWriter::with_capacity(64 << 10, wr), sent: None }
    }

    pub fn count_into(&mut self, c: Counter) {
        self.sent = Some(c);
    }

    /// Buffers a frame; [`FrameWriter::flush`] sends it. A large payload bypasses the buffer.
    pub async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        self.wr.write_all(&frame.encode_header()).await?;
        self.wr.write_all(&frame.payload).await?;
        if let Some(c) = &self.sent {
            c.inc_by(frame.wire_len() as u64);
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.wr.flush().await
    }

    /// Flushes and closes the stream (TLS close_notify, then FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.wr.shutdown().await
    }
}

/// Why a connection ended; decides what its waiting callers are told.
#[derive(Clone, Debug)]
pub(crate) enum CloseReason {
    Shutdown,
    PeerRemoved,
    Lost(String),
}

/// Closes one connection from any task; the first reason given is kept.
#[derive(Clone)]
pub(crate) struct CloseSignal(Arc<CloseState>);

struct CloseState {
    tx: watch::Sender<bool>,
    why: Mutex<Option<CloseReason>>,
}

impl CloseSignal {
    pub fn new() -> CloseSignal {
        CloseSignal(Arc::new(CloseState { tx: watch::channel(false).0, why: Mutex::new(None) }))
    }

    /// Returns false if it was already closed.
    pub fn close(&self, why: CloseReason) -> bool {
        {
            let mut w = self.0.why.lock().unwrap_or_else(|p| p.into_inner());
            if w.is_some() {
                return false;
            }
            *w = Some(why);
        }
        self.0.tx.send_replace(true);
        true
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.0.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_closed(&self) -> bool {
        *self.0.tx.borrow()
    }

    pub async fn closed(&self) {
        let mut rx = self.0.tx.subscribe();
        // The sender lives as long as `self`, so this returns only once closed.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// A frame waiting to be written, holding its share of the queue's byte budget.
pub(crate) struct Outgoing {
    frame: Frame,
    _budget: Option<OwnedSemaphorePermit>,
}

/// The send side of a connection's queue. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    budget: Arc<Semaphore>,
}

/// The writer task is gone; the connection is closed.
#[derive(Debug)]
pub(crate) struct OutboxClosed;

impl Outbox {
    pub fn new() -> (Outbox, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        (Outbox { tx, budget: Arc::new(Semaphore::new(QUEUE_BYTES)) }, rx)
    }

    /// Queues a frame, waiting while the queue is over its byte budget. Frames from one
    /// task go out in the order queued (the semaphore and the channel are both FIFO).
    pub async fn send(&self, frame: Frame) -> Result<(), OutboxClosed> {
        let cost = frame.wire_len().min(QUEUE_BYTES) as u32;
        let permit = self.budget.clone().acquire_many_owned(cost).await.map_err(|_| OutboxClosed)?;
        self.tx.send(Outgoing { frame, _budget: Some(permit) }).await.map_err(|_| OutboxClosed)
    }

    /// For pings and pongs: never waits; dropped when the queue is full (a full queue means
    /// traffic is flowing, which is what a ping would have shown).
    pub fn try_send_control(&self, frame: Frame) -> bool {
        self.tx.try_send(Outgoing { frame, _budget: None }).is_ok()
    }
}

/// Pings for the client side of a connection: sent every `every`, carrying the time since
/// `epoch` in the request id so the pong tells the round trip without any bookkeeping.
pub(crate) struct Keepalive {
    pub every: Duration,
    pub epoch: Instant,
}

/// Drains the outbox into the stream until the connection is closed or a write fails.
/// A write failure closes the connection with the error as the reason.
pub(crate) async fn run_writer(
    mut w: StreamWriter,
    mut rx: mpsc::Receiver<Outgoing>,
    close: CloseSignal,
    keepalive: Option<Keepalive>,
) {
    let every = keepalive.as_ref().map(|k| k.every).unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let result: io::Result<()> = async {
        loop {
            // A due ping goes before queued frames: under a steady stream the queue is never
            // empty, and a starved ping would get a busy connection declared dead.
            let first = tokio::select! {
                biased;
                _ = close.closed() => return Ok(()),
                _ = ticker.tick(), if keepalive.is_some() => {
                    let k = keepalive.as_ref().expect("guarded by the branch condition");
                    let stamp = k.epoch.elapsed().as_nanos() as u64;
                    Frame::new(FrameKind::Ping, 0, stamp, bytes::Bytes::new())
                }
                m = rx.recv() => match m {
                    Some(m) => m.frame,
                    None => return Ok(()),
                },
            };
            // A write blocked on a peer that stopped reading must not outlive a close.
            let batch = async {
                w.write_frame(&first).await?;
                let mut bytes = first.wire_len();
                for _ in 0..WRITE_BATCH {
                    if bytes >= WRITE_BATCH_BYTES {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(m) => {
                            w.write_frame(&m.frame).await?;
                            bytes += m.frame.wire_len();
                        }
                        Err(_) => break,
                    }
                }
                w.flush().await
            };
            tokio::select! {
                biased;
                _ = close.closed() => return Ok(()),
                r = batch => r?,
            }
        }
    }
    .await;

    match result {
        Err(e) => {
            close.close(CloseReason::Lost(format!("write failed: {e}")));
        }
        Ok(()) => {
            // Tell the peer we are going (FIN / close_notify) rather than leave it to time out.
            let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
        }
    }
}
