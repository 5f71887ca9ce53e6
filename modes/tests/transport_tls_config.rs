//! `TlsSettings::load` errors name the variable to fix, the file, and the reason.

use std::path::Path;

use meridian_modes::transport::certs;
use meridian_modes::transport::{TlsConfigError, TlsPaths, TlsSettings, TlsVersion};

fn paths(dir: &Path, cert: &str, key: &str, ca: &str) -> TlsPaths {
    TlsPaths {
        cert_file: Some(dir.join(cert)),
        key_file: Some(dir.join(key)),
        ca_file: Some(dir.join(ca)),
        verify_client: true,
        min_version: TlsVersion::V1_3,
    }
}

fn load_err(p: &TlsPaths) -> TlsConfigError {
    TlsSettings::load(p).expect_err("loading should fail")
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), &["node1".to_string(), "node2".to_string()]).unwrap();
    dir
}

#[test]
fn good_files_load() {
    let dir = setup();
    TlsSettings::load(&paths(dir.path(), "node1.pem", "node1-key.pem", "ca.pem")).unwrap();
    let mut p = paths(dir.path(), "node1.pem", "node1-key.pem", "ca.pem");
    p.verify_client = false;
    p.min_version = TlsVersion::V1_2;
    TlsSettings::load(&p).unwrap();
}

#[test]
fn missing_cert_file_names_the_cert_variable_and_the_file() {
    let dir = setup();
    let e = load_err(&paths(dir.path(), "nope.pem", "node1-key.pem", "ca.pem"));
    assert_eq!(e.variable(), "MERIDIAN_CLUSTER_TLS_CERT_FILE");
    let msg = e.to_string();
    assert!(msg.contains("MERIDIAN_CLUSTER_TLS_CERT_FILE") && msg.contains("nope.pem"), "{msg}");

    let mut unset = paths(dir.path(), "node1.pem", "node1-key.pem", "ca.pem");
    unset.cert_file = None;
    assert_eq!(load_err(&unset).variable(), "MERIDIAN_CLUSTER_TLS_CERT_FILE");
}

#[test]
fn a_key_that_does_not_match_the_certificate_names_the_key_variable() {
    let dir = setup();
    let e = load_err(&paths(dir.path(), "node1.pem", "node2-key.pem", "ca.pem"));
    assert_eq!(e.variable(), "MERIDIAN_CLUSTER_TLS_KEY_FILE");
    let msg = e.to_string();
    assert!(msg.contains("node2-key.pem") && msg.contains("does not match"), "{msg}");

    // Not a key at all, and a missing one.
    let e = load_err(&paths(dir.path(), "node1.pem", "node1.pem", "ca.pem"));
    assert_eq!(e.variable(), "MERIDIAN_CLUSTER_TLS_KEY_FILE");
    assert!(e.to_string().contains("no PEM private key"), "{e}");
    assert_eq!(
        load_err(&paths(dir.path(), "node1.pem", "gone-key.pem", "ca.pem")).variable(),
        "MERIDIAN_CLUSTER_TLS_KEY_FILE"
    );
}

#[test]
fn a_missing_unreadable_or_garbage_ca_names_the_ca_variable() {
    let dir = setup();
    let e = load_err(&paths(dir.path(), "node1.pem", "node1-key.pem", "missing-ca.pem"));
    assert_eq!(e.variable(), "MERIDIAN_CLUSTER_TLS_CA_FILE");
    assert!(e.to_string().contains("missing-ca.pem"), "{e}");

    std::fs::write(dir.path().join("garbage.pem"), b"this is not a certificate\n").unwrap();
    let e = load_err(&paths(dir.path(), "node1.pem", "node1-key.pem", "garbage.pem"));
    assert_eq!(e.variable(), "MERIDIAN_CLUSTER_TLS_CA_FILE");
    assert!(e.to_string().contains("garbage.pem") && e.to_string().contains("no PEM certificate"), "{e}");

    // A PEM block that is not a valid certificate.
    std::fs::write(dir.path().join("bad-der.pem"), b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .unwrap();
    assert_eq!(
        load_err(&paths(dir.path(), "node1.pem", "node1-key.pem", "bad-der.pem")).variable(),
        "MERIDIAN_CLUSTER_TLS_CA_FILE"
    );

    // A directory where the file should be cannot be read.
    let e = load_err(&paths(dir.path(), "node1.pem", "node1-key.pem", ""));
    assert_eq!(e.variable(), "MERIDIAN_CLUSTER_TLS_CA_FILE");
}

#[test]
fn generated_files_are_where_the_docs_say() {
    let dir = tempfile::tempdir().unwrap();
    let written = certs::generate(dir.path(), &["node1".to_string()]).unwrap();
    let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["ca.pem", "ca-key.pem", "node1.pem", "node1-key.pem"]);
    assert!(certs::generate(dir.path(), &["../escape".to_string()]).is_err());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("node1-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
    }
}
