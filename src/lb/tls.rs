//! How `caravan lb` speaks TLS to the upstreams of `proto=https` routes: rustls (ring), trusting
//! Mozilla's roots and the CAs of `-upstream-ca FILE` (a PEM bundle, for services whose
//! certificates an internal CA signs). Instances are addressed by IP, so their certificates
//! must name that IP (a subjectAltName of type IP address).

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading upstream CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("upstream CA file {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("upstream CA file {path}: certificate {index}: {message}")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error("TLS settings: {0}")]
    Config(String),
}

/// The client settings for TLS upstreams.
pub fn client_config(upstream_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = upstream_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsError::CaFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::CaFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: path.to_owned(),
            });
        }
        for (index, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                index: index + 1,
                message: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_says_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("holds no certificate"), "{e}");
        assert!(client_config(None).is_ok());
    }
}
