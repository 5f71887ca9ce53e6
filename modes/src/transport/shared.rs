//! [`Shared`]: what every task of one transport reads — the endpoint, the accept loop and
//! the connections it serves, the peers and their links.

use std::sync::Arc;

use super::admission::Gate;
use super::metrics::TransportMetrics;
use super::refusals::RefusalLog;
use super::tls::TlsSettings;
use super::{Handler, TransportConfig};

/// What every task of one transport reads: never changes after start.
pub(crate) struct Shared {
    pub cfg: TransportConfig,
    pub tls: Option<TlsSettings>,
    pub metrics: TransportMetrics,
    pub handler: Arc<dyn Handler>,
    pub gate: Gate,
    pub refusals: RefusalLog,
}
