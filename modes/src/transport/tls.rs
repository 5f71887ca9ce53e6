//! TLS for cluster traffic: PEM files → rustls server and client configurations.
//!
//! Both sides present the node's certificate and trust only the cluster CA. With
//! `verify_client` the server demands a client certificate signed by that CA; without it the
//! server asks for none (clients still verify the server). The crypto provider is always
//! passed explicitly (ring): relying on the process default panics when another crate in the
//! binary pulls in a second provider.
//!
//! A valid certificate proves only "some node of this cluster". [`certificate_names`] ties
//! it to one node: the node id claimed in the cluster handshake must be a DNS name in the
//! certificate's subject alternative names.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub const CERT_FILE_VAR: &str = "MERIDIAN_CLUSTER_TLS_CERT_FILE";
pub const KEY_FILE_VAR: &str = "MERIDIAN_CLUSTER_TLS_KEY_FILE";
pub const CA_FILE_VAR: &str = "MERIDIAN_CLUSTER_TLS_CA_FILE";
pub const MIN_VERSION_VAR: &str = "MERIDIAN_CLUSTER_TLS_MIN_VERSION";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// Accept TLS 1.2 and 1.3.
    V1_2,
    /// Accept TLS 1.3 only.
    #[default]
    V1_3,
}

/// Where the PEM files are, as configured by `MERIDIAN_CLUSTER_TLS_*`.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    /// The node's certificate chain (leaf first).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The CA that signs every node's certificate.
    pub ca_file: Option<PathBuf>,
    pub verify_client: bool,
    pub min_version: TlsVersion,
}

/// Ready-to-use rustls configurations for both directions. Cheap to clone.
#[derive(Clone)]
pub struct TlsSettings {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    pub(crate) verify_client: bool,
    pub(crate) min_version: TlsVersion,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("verify_client", &self.verify_client)
            .field("min_version", &self.min_version)
            .finish_non_exhaustive()
    }
}

/// A TLS setting that cannot be used. [`TlsConfigError::variable`] names the environment
/// variable to fix; the message names the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("{variable} is not set; it is required when cluster TLS is enabled")]
    NotSet { variable: &'static str },
    #[error("{variable}: cannot read {}: {source}", path.display())]
    Unreadable { variable: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{variable}: {} is not usable: {reason}", path.display())]
    Invalid { variable: &'static str, path: PathBuf, reason: String },
    #[error("{KEY_FILE_VAR}: the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{variable}: {reason}")]
    Unsupported { variable: &'static str, reason: String },
}

impl TlsConfigError {
    /// The environment variable whose value is wrong, e.g. `MERIDIAN_CLUSTER_TLS_KEY_FILE`.
    pub fn variable(&self) -> &'static str {
        match self {
            TlsConfigError::NotSet { variable }
            | TlsConfigError::Unreadable { variable, .. }
            | TlsConfigError::Invalid { variable, .. }
            | TlsConfigError::Unsupported { variable, .. } => variable,
            TlsConfigError::KeyMismatch { .. } => KEY_FILE_VAR,
        }
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSettings {
    /// Reads the PEM files and builds both configurations. Every failure names its variable.
    pub fn load(p: &TlsPaths) -> Result<TlsSettings, TlsConfigError> {
        let cert_path = required(&p.cert_file, CERT_FILE_VAR)?;
        let key_path = required(&p.key_file, KEY_FILE_VAR)?;
        let ca_path = required(&p.ca_file, CA_FILE_VAR)?;

        let chain = read_certs(cert_path, CERT_FILE_VAR)?;
        let key = read_key(key_path)?;
        let roots = Arc::new(read_roots(ca_path)?);
        let provider = provider();

        // rustls checks the pair too, but its error would not say which file is at fault.
        match CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsConfigError::KeyMismatch { cert: cert_path.to_owned(), key: key_path.to_owned() })
            }
            Err(e) => return Err(invalid(KEY_FILE_VAR, key_path, e)),
        }

        let versions: &[&'static rustls::SupportedProtocolVersion] = match p.min_version {
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
            TlsVersion::V1_2 => &[&rustls::version::TLS12, &rustls::version::TLS13],
        };

        let server_builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(unsupported_version)?;
        let server_builder = if p.verify_client {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| invalid(CA_FILE_VAR, ca_path, e))?;
            server_builder.with_client_cert_verifier(verifier)
        } else {
            server_builder.with_no_client_auth()
        };
        let server = server_builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| invalid(CERT_FILE_VAR, cert_path, e))?;

        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(unsupported_version)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid(CERT_FILE_VAR, cert_path, e))?;

        Ok(TlsSettings {
            server: Arc::new(server),
            client: Arc::new(client),
            verify_client: p.verify_client,
            min_version: p.min_version,
        })
    }
}

fn required<'a>(v: &'a Option<PathBuf>, variable: &'static str) -> Result<&'a Path, TlsConfigError> {
    match v {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Err(TlsConfigError::NotSet { variable }),
    }
}

fn unsupported_version(e: rustls::Error) -> TlsConfigError {
    TlsConfigError::Unsupported { variable: MIN_VERSION_VAR, reason: format!("the TLS provider refused it: {e}") }
}

fn invalid(variable: &'static str, path: &Path, reason: impl fmt::Display) -> TlsConfigError {
    TlsConfigError::Invalid { variable, path: path.to_owned(), reason: reason.to_string() }
}

/// Reading the file ourselves first separates "cannot read" from "not PEM".
fn read_file(path: &Path, variable: &'static str) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Unreadable { variable, path: path.to_owned(), source })
}

fn read_certs(path: &Path, variable: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read_file(path, variable)?;
    let certs =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(variable, path, e))?;
    if certs.is_empty() {
        return Err(invalid(variable, path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read_file(path, KEY_FILE_VAR)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => invalid(KEY_FILE_VAR, path, "no PEM private key found"),
        e => invalid(KEY_FILE_VAR, path, e),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, CA_FILE_VAR)? {
        roots.add(cert).map_err(|e| invalid(CA_FILE_VAR, path, e))?;
    }
    Ok(roots)
}

/// Whether the certificate names `host`: an IP SAN equal to it when it is an IP address,
/// else a DNS SAN (admission matches a peer's configured host this way).
pub(crate) fn certificate_names_host(cert: &CertificateDer<'_>, host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => certificate_names_ip(cert, ip),
        Err(_) => certificate_names(cert, host),
    }
}

/// Whether the certificate has `ip` as an IP address SAN.
pub(crate) fn certificate_names_ip(cert: &CertificateDer<'_>, ip: std::net::IpAddr) -> bool {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &ServerName::IpAddress(ip.into())).is_ok()
}

/// Whether the end-entity certificate names `node` as a DNS subject alternative name.
/// A node id that is not a valid DNS name can never match.
pub(crate) fn certificate_names(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    // An IP address SAN must not stand in for a node id.
    if !matches!(name, ServerName::DnsName(_)) {
        return false;
    }
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}
