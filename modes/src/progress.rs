//! Progress of a long copy (snapshot install, restore, catch-up), logged every few seconds:
//! bytes (or records) done, of how many when known, rate and time left.
//!
//! The log lines are for an operator watching a node that takes minutes to join: they say
//! it is moving, how fast, and when it will be done.

use std::time::{Duration, Instant};

/// How often a line is logged while the work goes on.
pub const EVERY: Duration = Duration::from_secs(5);

/// Bytes between two looks at the clock: `add` runs for every small read of a snapshot.
const CHECK_EVERY_BYTES: u64 = 1 << 20;

/// Bytes copied so far, of `total` when known.
pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    done: u64,
    next_check: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    pub fn new(what: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress { what, total, done: 0, next_check: CHECK_EVERY_BYTES, started: now, last_line: now }
    }

    /// Counts `n` more bytes; logs a line when [`EVERY`] has passed since the last.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.done < self.next_check {
            return;
        }
        self.next_check = self.done + CHECK_EVERY_BYTES;
        if self.last_line.elapsed() >= EVERY {
            self.last_line = Instant::now();
            let (rate, eta) = self.rate_and_eta();
            tracing::info!(
                done = %self.amount(self.done),
                total = %self.total.map_or("unknown".to_string(), |t| self.amount(t)),
                percent = self.total.filter(|t| *t > 0).map_or(String::new(), |t| format!("{:.1}", self.done as f64 * 100.0 / t as f64)),
                rate = %rate,
                eta = %eta,
                "{} in progress", self.what
            );
        }
    }

    /// Logs the closing line (amount, time, rate).
    pub fn finish(&self) {
        let secs = self.started.elapsed().as_secs_f64();
        let (rate, _) = self.rate_and_eta();
        tracing::info!(done = %self.amount(self.done), seconds = format!("{secs:.1}"), rate = %rate, "{} finished", self.what);
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    fn rate_and_eta(&self) -> (String, String) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let per_sec = self.done as f64 / secs;
        let rate = format!("{:.1} MiB/s", per_sec / (1 << 20) as f64);
        let eta = match self.total {
            Some(t) if per_sec > 0.0 && t >= self.done => format!("{:.0} s", (t - self.done) as f64 / per_sec),
            _ => "unknown".into(),
        };
        (rate, eta)
    }

    fn amount(&self, n: u64) -> String {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    }
}

/// A reader that counts what passes through it into a [`Progress`].
pub struct Counting<R> {
    pub inner: R,
    pub progress: Progress,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// A follower catching up with a moving target (an HA standby behind its primary): logs,
/// every [`EVERY`] while behind, where it is, how fast it closes in and when it will be
/// there; and one line when it has caught up.
#[derive(Default)]
pub struct CatchUp {
    /// (when it fell behind, position then, last line).
    behind_since: Option<(Instant, u64, Instant)>,
}

impl CatchUp {
    /// `at`: this node's applied position; `target`: the leader's last.
    pub fn observe(&mut self, at: u64, target: u64) {
        let now = Instant::now();
        match self.behind_since {
            None if at < target => self.behind_since = Some((now, at, now)),
            None => {}
            Some((since, from, _)) if at >= target => {
                let secs = since.elapsed().as_secs_f64();
                if secs >= EVERY.as_secs_f64() {
                    tracing::info!(records = at - from, seconds = format!("{secs:.1}"), rate = format!("{:.0} records/s", (at - from) as f64 / secs.max(1e-3)), "caught up with the primary");
                }
                self.behind_since = None;
            }
            Some((since, from, last)) => {
                if last.elapsed() < EVERY {
                    return;
                }
                let secs = since.elapsed().as_secs_f64().max(1e-3);
                let rate = at.saturating_sub(from) as f64 / secs;
                let eta = if rate > 0.0 { format!("{:.0} s", (target - at) as f64 / rate) } else { "unknown".into() };
                tracing::info!(at, target, behind = target - at, rate = format!("{rate:.0} records/s"), eta = %eta, "catching up with the primary");
                self.behind_since = Some((since, from, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn counts_what_is_read_and_estimates_from_the_rate() {
        let data = vec![7u8; 10_000];
        let mut c = Counting { inner: &data[..], progress: Progress::new("test copy", Some(20_000)) };
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert_eq!(c.progress.done(), 10_000);
        let (_, eta) = c.progress.rate_and_eta();
        assert!(eta.ends_with(" s"), "{eta}");
        assert_eq!(Progress::new("x", None).rate_and_eta().1, "unknown");
    }
}
