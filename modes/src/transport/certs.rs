//! Development certificates: one CA and a certificate per node, written as PEM files.
//!
//! Layout of `out`: `ca.pem`, `ca-key.pem`, and for each node `<node>.pem` and
//! `<node>-key.pem`. Node certificates carry both the ServerAuth and ClientAuth extended key
//! usages (a node is a server to its peers and a client of them) and the subject
//! alternative names `<node>`, `localhost` and `127.0.0.1`: the node name is what the
//! handshake's identity check looks for. [`GenerateOptions::sans`] replaces `localhost` and
//! `127.0.0.1` with the node's own host names or addresses, which is what admission by
//! certificate needs when several nodes share a host (see `admission`).
//!
//! An existing CA in `out` (one this module wrote) is reused, so running it again for a new
//! node extends the cluster rather than replacing its trust root. A certificate from
//! "another CA" is simply one generated into another directory.
//!
//! For production use certificates from your own PKI; these keys are written unencrypted.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use rustls_pki_types::CertificateDer;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CA_NAME: &str = "Meridian development CA";
const DAY: Duration = Duration::from_secs(86_400);

/// How long node certificates are valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Validity {
    /// From a day ago for ten years.
    #[default]
    Normal,
    /// Ended yesterday (valid from 30 days ago to 1 day ago): for tests that must see an
    /// expired certificate refused.
    Expired,
}

#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// Applies to the node certificates; a CA created by the call is always valid.
    pub validity: Validity,
    /// Subject alternative names besides the node name (always the first SAN): DNS names or
    /// IP addresses. `None`: `localhost` and `127.0.0.1`, which every node then shares, so a
    /// peer cannot be told apart by its host on one machine. Call once per node (the CA in
    /// `out` is reused) to give each node its own.
    pub sans: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("node name {0:?} cannot be used: it must be a non-empty DNS label-like name (letters, digits, '-', '.')")]
    InvalidNodeName(String),
    #[error("subject alternative name {0:?} cannot be used: it must be a DNS name or an IP address")]
    InvalidSan(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} and {} do not form a CA this tool wrote: {reason}", CA_CERT, CA_KEY)]
    ForeignCa { reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Writes a development CA (unless `out` already holds one) and a certificate per node.
/// Returns the paths written, CA files first when created.
pub fn generate(out: &Path, nodes: &[String]) -> Result<Vec<PathBuf>, CertsError> {
    generate_with(out, nodes, &GenerateOptions::default())
}

/// [`generate`] with options (see [`GenerateOptions`]).
pub fn generate_with(out: &Path, nodes: &[String], opts: &GenerateOptions) -> Result<Vec<PathBuf>, CertsError> {
    for n in nodes {
        if !dns_name_ok(n) {
            return Err(CertsError::InvalidNodeName(n.clone()));
        }
    }
    let extra: Vec<String> = match &opts.sans {
        None => vec!["localhost".into(), "127.0.0.1".into()],
        Some(sans) => sans.clone(),
    };
    for san in &extra {
        if san.parse::<std::net::IpAddr>().is_err() && !dns_name_ok(san) {
            return Err(CertsError::InvalidSan(san.clone()));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| CertsError::Io { path: out.to_owned(), source })?;

    let mut written = Vec::new();
    let (ca_cert_path, ca_key_path) = (out.join(CA_CERT), out.join(CA_KEY));
    let issuer = if ca_cert_path.exists() && ca_key_path.exists() {
        load_ca(&ca_cert_path, &ca_key_path)?
    } else {
        let key = KeyPair::generate()?;
        let params = ca_params()?;
        let cert = params.self_signed(&key)?;
        write(&ca_cert_path, cert.pem(), false)?;
        write(&ca_key_path, key.serialize_pem(), true)?;
        written.extend([ca_cert_path, ca_key_path]);
        Issuer::new(params, key)
    };

    let (not_before, not_after) = match opts.validity {
        Validity::Normal => (-1, 3650),
        Validity::Expired => (-30, -1),
    };
    for node in nodes {
        // rcgen makes an IP address SAN of every entry that parses as one.
        let mut sans = vec![node.clone()];
        sans.extend(extra.iter().filter(|s| *s != node).cloned());
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, node.as_str());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, not_before, not_after);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let (cert_path, key_path) = (out.join(format!("{node}.pem")), out.join(format!("{node}-key.pem")));
        write(&cert_path, cert.pem(), false)?;
        write(&key_path, key.serialize_pem(), true)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

fn dns_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && !n.starts_with(['.', '-'])
        && !n.contains("..")
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// The CA's parameters are fixed, so an issuer can be rebuilt from its key alone (rcgen
/// cannot parse an existing certificate without its `x509-parser` feature).
fn ca_params() -> Result<CertificateParams, CertsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, -1, 3650);
    Ok(params)
}

fn load_ca(cert_path: &Path, key_path: &Path) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| CertsError::Io { path: p.to_owned(), source });
    let key = KeyPair::from_pem(&read(key_path)?).map_err(|e| CertsError::ForeignCa { reason: e.to_string() })?;
    let cert_pem = read(cert_path)?;
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e: rustls_pki_types::pem::Error| CertsError::ForeignCa { reason: e.to_string() })?;
    let cert: CertificateDer<'static> = der;
    let parsed = rustls::server::ParsedCertificate::try_from(&cert)
        .map_err(|e| CertsError::ForeignCa { reason: e.to_string() })?;
    // The key must be the one in the certificate, or every node certificate would fail to verify.
    if parsed.subject_public_key_info().as_ref() != key.subject_public_key_info().as_slice() {
        return Err(CertsError::ForeignCa { reason: format!("{CA_KEY} is not the key of {CA_CERT}") });
    }
    Ok(Issuer::new(ca_params()?, key))
}

/// Sets the validity window to `[now + from_days, now + to_days]`. (The `time` types rcgen
/// uses are reached through `date_time_ymd` so this crate needs no `time` dependency.)
fn set_validity(params: &mut CertificateParams, from_days: i64, to_days: i64) {
    let now = rcgen::date_time_ymd(1970, 1, 1) + now_since_epoch();
    let shift = |days: i64| {
        let d = DAY * days.unsigned_abs() as u32;
        if days < 0 {
            now - d
        } else {
            now + d
        }
    };
    params.not_before = shift(from_days);
    params.not_after = shift(to_days);
}

fn write(path: &Path, contents: String, secret: bool) -> Result<(), CertsError> {
    let io = |source| CertsError::Io { path: path.to_owned(), source };
    std::fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

fn now_since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}
