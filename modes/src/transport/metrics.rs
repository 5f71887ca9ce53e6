//! Transport metrics, registered under the `meridian_transport` prefix of the node's registry.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `meridian_transport_bytes_sent_total` | counter | `peer` |
//! | `meridian_transport_bytes_received_total` | counter | `peer` |
//! | `meridian_transport_connection_failures_total` | counter | `peer` (failed connect attempts) |
//! | `meridian_transport_handshake_failures_total` | counter | `reason` (tls, wrong_cluster, bad_version, identity_mismatch, bad_frame, timeout, io, not_a_peer, busy) |
//! | `meridian_transport_rtt_seconds` | histogram | `peer` (handshake and ping round trips) |
//! | `meridian_transport_peer_connected` | gauge | `peer` (1 while an outgoing connection is up) |
//!
//! Bytes are counted per frame (length prefix included) once the peer is known, i.e. after
//! the handshake, under its admitted label (so strangers cannot add series); TLS record
//! overhead is not included.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::handshake::RejectReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

type HistogramFamily = Family<PeerLabel, Histogram, fn() -> Histogram>;

pub(crate) struct TransportMetrics {
    bytes_sent: Family<PeerLabel, Counter>,
    bytes_received: Family<PeerLabel, Counter>,
    connection_failures: Family<PeerLabel, Counter>,
    handshake_failures: Family<ReasonLabel, Counter>,
    rtt: HistogramFamily,
    connected: Family<PeerLabel, Gauge>,
}

/// Byte counters of one connection, looked up once so the per-frame path takes no lock.
#[derive(Clone)]
pub(crate) struct ByteCounters {
    pub sent: Counter,
    pub received: Counter,
}

fn rtt_histogram() -> Histogram {
    // 50 µs … ~1.6 s: loopback round trips up to a stalled WAN link.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl TransportMetrics {
    pub fn register(registry: &mut Registry) -> TransportMetrics {
        let m = TransportMetrics {
            bytes_sent: Family::default(),
            bytes_received: Family::default(),
            connection_failures: Family::default(),
            handshake_failures: Family::default(),
            rtt: HistogramFamily::new_with_constructor(rtt_histogram),
            connected: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("meridian_transport");
        r.register("bytes_sent", "Frame bytes sent to a peer", m.bytes_sent.clone());
        r.register("bytes_received", "Frame bytes received from a peer", m.bytes_received.clone());
        r.register("connection_failures", "Failed attempts to connect to a peer", m.connection_failures.clone());
        r.register(
            "handshake_failures",
            "Connections refused or failed during the TLS or cluster handshake",
            m.handshake_failures.clone(),
        );
        r.register("rtt_seconds", "Round-trip time to a peer (handshake and keep-alive pings)", m.rtt.clone());
        r.register("peer_connected", "1 while an outgoing connection to the peer is established", m.connected.clone());
        m
    }

    pub fn bytes(&self, peer: &str) -> ByteCounters {
        let l = PeerLabel { peer: peer.to_owned() };
        ByteCounters {
            sent: self.bytes_sent.get_or_create(&l).clone(),
            received: self.bytes_received.get_or_create(&l).clone(),
        }
    }

    pub fn connection_failed(&self, peer: &str) {
        self.connection_failures.get_or_create(&PeerLabel { peer: peer.to_owned() }).inc();
    }

    pub fn handshake_failed(&self, reason: RejectReason) {
        self.handshake_failures.get_or_create(&ReasonLabel { reason: reason.label() }).inc();
    }

    pub fn rtt(&self, peer: &str, seconds: f64) {
        self.rtt.get_or_create(&PeerLabel { peer: peer.to_owned() }).observe(seconds);
    }

    pub fn set_connected(&self, peer: &str, up: bool) {
        self.connected.get_or_create(&PeerLabel { peer: peer.to_owned() }).set(up as i64);
    }
}
