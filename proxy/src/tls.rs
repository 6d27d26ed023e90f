//! TLS with rustls: the front-end's server certificate (re-read when its files change, so a
//! renewed certificate needs no restart) and client configurations that verify back-ends
//! against a configured CA.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{config::TlsFiles, reload::Watched};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// Builds a server configuration from PEM files.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let chain = certs(&files.certificate)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "{} and {}: {e}",
                files.certificate.display(),
                files.key.display()
            )
        })
}

/// The server side: an acceptor for the certificate as it is on disk now.
pub struct ServerTls {
    config: Watched<ServerConfig>,
}

impl ServerTls {
    pub fn new(files: &TlsFiles) -> Result<ServerTls, String> {
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
pub fn connector(ca: &Path) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
