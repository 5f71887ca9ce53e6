//! Rate-limited logging of refused connections.
//!
//! Whoever can reach the cluster port decides how many connections are refused, so logging
//! each one lets a stranger fill the disk (a flood once wrote 73k lines in 20 s). Per
//! [`WINDOW`], the first refusal is logged in full (address, claimed node, reason, detail)
//! and the rest are counted; when the window ends, one summary line gives the counts by
//! reason. Every refusal is still counted in `meridian_transport_handshake_failures_total`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::handshake::RejectReason;

/// One detailed line and one summary line at most per window.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct RefusalLog {
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Refusals since the last summary, by reason label.
    counts: BTreeMap<&'static str, u64>,
    /// The first few distinct source addresses (bounded: sources are the attacker's choice).
    sources: BTreeSet<std::net::IpAddr>,
    more_sources: bool,
}

/// How many distinct sources a summary names.
const SOURCES_NAMED: usize = 4;

impl RefusalLog {
    /// Records a refusal; logs it in full if it is the first of its window.
    pub fn record(&self, remote: SocketAddr, reason: RejectReason, claimed: Option<&str>, detail: &str) {
        let first = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let first = w.counts.is_empty();
            *w.counts.entry(reason.label()).or_insert(0) += 1;
            let ip = remote.ip().to_canonical();
            if w.sources.len() < SOURCES_NAMED {
                w.sources.insert(ip);
            } else if !w.sources.contains(&ip) {
                w.more_sources = true;
            }
            first
        };
        if first {
            tracing::warn!(
                %remote, claimed_node = claimed.unwrap_or("?"), reason = reason.label(), %detail,
                "cluster connection refused (further refusals in the next {}s are summarised)", WINDOW.as_secs()
            );
        } else {
            tracing::debug!(%remote, claimed_node = claimed.unwrap_or("?"), reason = reason.label(), %detail, "cluster connection refused");
        }
    }

    /// Ends the window: one summary line if more than the logged refusal happened in it.
    pub fn summarise(&self) {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let total: u64 = w.counts.values().sum();
        if total <= 1 {
            return;
        }
        let by_reason = w.counts.iter().map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(" ");
        let mut sources: Vec<String> = w.sources.iter().map(|ip| ip.to_string()).collect();
        if w.more_sources {
            sources.push("and others".into());
        }
        tracing::warn!(
            refused = total, %by_reason, sources = %sources.join(", "),
            "cluster connections refused in the last {}s", WINDOW.as_secs()
        );
    }
}
