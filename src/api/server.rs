//! The HTTP server loop: accepts connections up to a cap, serves each with hyper's HTTP/1
//! connection under the clocks of [`super::timeouts`], and stops gracefully.
//!
//! It replaces `axum::serve`, which has no connection cap and no timeouts: idle sockets,
//! slow heads and half-sent bodies were held for ever, and enough of them used up the
//! process's file descriptors, which the WAL needs to keep taking writes.
//!
//! - **Cap** (`MERIDIAN_HTTP_MAX_CONNECTIONS`): a connection over it is answered 503 and
//!   closed at once, so a client learns why and the node keeps its descriptors. The cap is
//!   lowered at start to fit the process's open-file limit with room for storage.
//! - **Refusals and accept errors** are logged at most once per [`LOG_EVERY`], with a count.
//! - **Shutdown**: stop accepting, ask every connection to finish its request and close, and
//!   wait up to [`DRAIN_LIMIT`] for them.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use super::timeouts::{DeadlineBody, Phase, PhaseBody, TimedIo};

/// At most one log line per kind of trouble in this period.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Descriptors kept for the WAL, the state store, the cluster transport and the runtime.
const FD_RESERVE: u64 = 256;
/// Refused connections given a moment to read their 503 (see [`refuse`]) at once; more are
/// closed without the wait.
const REFUSALS_LINGERING: usize = 64;

const REFUSAL_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: 107\r\n\r\n{\"error\":{\"code\":\"unavailable\",\"message\":\"too many open HTTP connections (MERIDIAN_HTTP_MAX_CONNECTIONS)\"}}";

/// The HTTP limits from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl HttpLimits {
    pub fn from_config(cfg: &crate::config::Config) -> HttpLimits {
        HttpLimits {
            max_connections: usize::try_from(cfg.http_max_connections).unwrap_or(usize::MAX),
            header_timeout: cfg.http_header_timeout.0,
            body_timeout: cfg.http_body_timeout.0,
            idle_timeout: cfg.http_idle_timeout.0,
        }
    }
}

/// Counts an event and says when it is time to log it (with how many since the last line).
struct Throttle {
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn new() -> Self {
        Throttle { last: None, count: 0 }
    }

    fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

/// Serves `app` on `listener` until `stop` resolves, then drains.
pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits, stop: impl Future<Output = ()> + Send) -> io::Result<()> {
    let cap = effective_cap(limits.max_connections, open_files_limit());
    let slots = Arc::new(Semaphore::new(cap));
    let lingering = Arc::new(Semaphore::new(REFUSALS_LINGERING));
    let (closing_tx, closing) = watch::channel(false);
    let (mut refused_log, mut accept_log) = (Throttle::new(), Throttle::new());
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin; the cap should make this rare.
                    if let Some(n) = accept_log.hit() {
                        warn!(error = %e, times = n, "cannot accept HTTP connections; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(n) = refused_log.hit() {
                warn!(limit = cap, refused = n, "HTTP connection refused with 503: MERIDIAN_HTTP_MAX_CONNECTIONS reached");
            }
            refuse(stream, &lingering);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, closing) = (app.clone(), closing.clone());
        tokio::spawn(async move {
            serve_connection(stream, app, limits, closing).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let cap = u32::try_from(cap).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_LIMIT, slots.acquire_many(cap)).await.is_err() {
        warn!(open = cap as usize - slots.available_permits(), "HTTP connections still open after {DRAIN_LIMIT:?}; closing them");
    }
    Ok(())
}

async fn serve_connection(stream: TcpStream, app: Router, limits: HttpLimits, mut closing: watch::Receiver<bool>) {
    let phase = Arc::new(Phase::default());
    let io = TokioIo::new(TimedIo::new(stream, phase.clone(), limits.header_timeout));
    let router = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        phase.begin();
        let req = req.map(|b| axum::body::Body::new(DeadlineBody::new(b, limits.body_timeout)));
        let answer = hyper::service::Service::call(&router, req);
        let phase = phase.clone();
        async move {
            let resp = answer.await.unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(resp.map(|b| PhaseBody::new(b, phase)))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's header-read timer runs while a connection waits for its next head: the idle clock.
    builder.timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        // Timeouts, resets and malformed requests are the client's business, not the node's.
        debug!(error = %e, "HTTP connection ended");
    }
}

/// Answers 503 and closes. The client has often sent its request already; closing a socket
/// with unread input makes the kernel send a reset that can destroy the answer before the
/// client reads it, so a few refusals at a time get a second to read the request first.
fn refuse(stream: TcpStream, lingering: &Arc<Semaphore>) {
    let _ = stream.try_write(REFUSAL_ANSWER);
    let Ok(permit) = lingering.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            let mut budget = 64 << 10;
            while budget > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => budget -= n.min(budget),
                }
            }
        })
        .await;
        drop(permit);
    });
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// The soft `RLIMIT_NOFILE` from `/proc/self/limits`, if it can be read.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The configured cap, lowered so that a full house of connections still leaves the node
/// descriptors for its storage.
fn effective_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(fds) = fd_limit else { return configured.max(1) };
    let room = usize::try_from(fds.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX).max(16);
    if configured > room {
        warn!(
            configured,
            used = room,
            open_files_limit = fds,
            "MERIDIAN_HTTP_MAX_CONNECTIONS is more than the open-file limit (ulimit -n) allows with room for storage; using the lower cap (raise ulimit -n to serve more)"
        );
        return room;
    }
    info!(max_connections = configured, open_files_limit = fds, "HTTP connection cap");
    configured.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_answer_declares_its_length() {
        let text = std::str::from_utf8(REFUSAL_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn cap_fits_the_open_file_limit() {
        assert_eq!(effective_cap(4096, Some(1024)), 1024 - FD_RESERVE as usize);
        assert_eq!(effective_cap(4096, Some(20_000)), 4096);
        assert_eq!(effective_cap(4096, None), 4096);
        assert_eq!(effective_cap(4096, Some(100)), 16);
    }

    #[test]
    fn throttle_logs_the_first_then_counts() {
        let mut t = Throttle::new();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        t.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(t.hit(), Some(3));
    }
}
