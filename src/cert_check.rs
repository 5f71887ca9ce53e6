//! A look at the node's own cluster certificate at start. An expired (or not yet valid)
//! certificate still loads, and the node would start and then fail every handshake with its
//! peers, so the log says so at once, naming the file and the date. One about to expire is
//! announced too. Only the first certificate in the file (the node's own) is read.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;
use x509_parser::pem::Pem;

/// Warn this long before the end of a certificate's validity.
const EXPIRY_NOTICE: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Expired { not_after: SystemTime },
    NotYetValid { not_before: SystemTime },
    ExpiresSoon { not_after: SystemTime },
}

/// The validity at `now` of the first certificate in `pem`; `None` if none can be parsed
/// (the TLS loader has already refused such a file).
pub fn validity(pem: &[u8], now: SystemTime) -> Option<Validity> {
    let first = Pem::iter_from_buffer(pem).next()?.ok()?;
    let cert = first.parse_x509().ok()?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let v = cert.validity();
    let (not_before, not_after) = (at(v.not_before.timestamp()), at(v.not_after.timestamp()));
    Some(if now > not_after {
        Validity::Expired { not_after }
    } else if now < not_before {
        Validity::NotYetValid { not_before }
    } else if now + EXPIRY_NOTICE > not_after {
        Validity::ExpiresSoon { not_after }
    } else {
        Validity::Valid
    })
}

/// Logs a warning when the certificate in `path` is not valid now or expires soon.
pub fn warn_if_not_valid(path: &Path) {
    let Ok(pem) = std::fs::read(path) else { return };
    let file = path.display();
    let date = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    match validity(&pem, SystemTime::now()) {
        Some(Validity::Expired { not_after }) => warn!(
            %file, not_after = %date(not_after),
            "the cluster certificate (MERIDIAN_CLUSTER_TLS_CERT_FILE) expired on {}; peers will refuse this node until it is renewed", date(not_after)
        ),
        Some(Validity::NotYetValid { not_before }) => warn!(
            %file, not_before = %date(not_before),
            "the cluster certificate (MERIDIAN_CLUSTER_TLS_CERT_FILE) is not valid before {}; check the clocks", date(not_before)
        ),
        Some(Validity::ExpiresSoon { not_after }) => warn!(
            %file, not_after = %date(not_after),
            "the cluster certificate (MERIDIAN_CLUSTER_TLS_CERT_FILE) expires on {}; renew it", date(not_after)
        ),
        Some(Validity::Valid) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_modes::transport::certs::{generate_with, GenerateOptions, Validity as Made};

    fn cert(validity: Made) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        generate_with(dir.path(), &["n1".into()], &GenerateOptions { validity, ..Default::default() }).unwrap();
        std::fs::read(dir.path().join("n1.pem")).unwrap()
    }

    #[test]
    fn expired_and_valid_certificates_are_told_apart() {
        let now = SystemTime::now();
        assert!(matches!(validity(&cert(Made::Expired), now), Some(Validity::Expired { .. })));
        let fresh = cert(Made::Normal);
        assert_eq!(validity(&fresh, now), Some(Validity::Valid));
        assert!(matches!(validity(&fresh, now + Duration::from_secs(3649 * 86_400)), Some(Validity::ExpiresSoon { .. })));
        assert!(matches!(validity(&fresh, now - Duration::from_secs(3 * 86_400)), Some(Validity::NotYetValid { .. })));
        assert_eq!(validity(b"not a certificate", now), None);
    }
}
