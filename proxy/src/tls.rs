//! TLS with rustls: the front-end's server certificate (re-read when its files change, so a
//! renewed certificate needs no restart) and client configurations that verify back-ends
//! against a configured CA.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{config::TlsFiles, reload::Watched};

/// A certificate, key or CA file that cannot be used, named with its path.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} and {}: {source}", certificate.display(), key.display())]
    KeyPair {
        certificate: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: {source}", path.display())]
    Ca {
        path: PathBuf,
        source: rustls::Error,
    },
    /// The crypto provider refused the default protocol versions.
    #[error(transparent)]
    Provider(rustls::Error),
    #[error("{}: not an X.509 certificate: {reason}", path.display())]
    X509 { path: PathBuf, reason: String },
}

/// When the first certificate in `path` ends (unix seconds).
pub fn not_after(path: &Path) -> Result<i64, TlsError> {
    use x509_parser::prelude::FromDer as _;
    let certs = certs(path)?;
    let first = certs.first().ok_or_else(|| TlsError::NoCertificate {
        path: path.to_owned(),
    })?;
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(first.as_ref()).map_err(|e| {
            TlsError::X509 {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        })?;
    Ok(cert.validity().not_after.timestamp())
}

pub(crate) fn pem(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError {
    let path = path.to_owned();
    move |source| TlsError::Pem { path, source }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(pem(path))?
        .collect::<Result<_, _>>()
        .map_err(pem(path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds a server configuration from PEM files.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certs(&files.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(pem(&files.key))?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::KeyPair {
            certificate: files.certificate.clone(),
            key: files.key.clone(),
            source,
        })
}

/// The server side: an acceptor for the certificate as it is on disk now.
pub struct ServerTls {
    config: Watched<ServerConfig>,
}

impl ServerTls {
    pub fn new(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let f = files.clone();
        let config = Watched::new(
            "TLS certificate",
            vec![files.certificate.clone(), files.key.clone()],
            move || server_config(&f),
        )?;
        Ok(ServerTls { config })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.get())
    }
}

/// A connector that trusts exactly the CAs in `ca` (PEM).
pub fn connector(ca: &Path) -> Result<TlsConnector, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca)? {
        roots.add(cert).map_err(|source| TlsError::Ca {
            path: ca.to_owned(),
            source,
        })?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
