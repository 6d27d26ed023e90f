//! Mutual TLS between the manager and its members and operators, TLS 1.3 only.
//!
//! The cluster CA is the only trust anchor on both sides. On top of rustls's WebPKI checks
//! (chain, validity, key usage: a member's certificate is for client authentication only,
//! so it cannot serve as the manager), each side checks, during the handshake, the
//! identity the peer's certificate carries (see [`super::pki`]): the server accepts only
//! members and operators of its own cluster, the client only the manager of its own
//! cluster. A peer that fails fails the handshake, before a byte of the protocol is read.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, ServerConnection, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::pki::{self, Identity, MANAGER_NAME, PkiError, Role};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file that cannot be read.
    #[error(transparent)]
    Files(#[from] crate::tls::TlsError),
    #[error("{}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("{}: {source}", path.display())]
    OwnCertificate { path: PathBuf, source: PkiError },
    #[error("{}: a {found} certificate cannot be used here (needs {expected})", path.display())]
    OwnRole {
        path: PathBuf,
        found: Role,
        expected: &'static str,
    },
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer's certificate: {0}")]
    PeerCertificate(PkiError),
    #[error("the peer {name:?} is a {found}, not a {expected}")]
    PeerRole {
        name: String,
        found: Role,
        expected: &'static str,
    },
    #[error("the peer {name:?} belongs to cluster {found:?}, not {expected:?}")]
    PeerCluster {
        name: String,
        found: String,
        expected: String,
    },
    /// Never seen: [`MANAGER_NAME`] is a valid DNS name (a test connects with it).
    #[error("{MANAGER_NAME:?} is not a DNS name")]
    ManagerName,
    #[error("connecting to the manager at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with the manager at {addr}: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("the manager at {addr}: no TLS session within {after:?}")]
    Timeout { addr: String, after: Duration },
}

/// Who may connect to the manager.
const CLIENT_ROLES: &[Role] = &[Role::Member, Role::Operator, Role::Agent];
const CLIENT_ROLES_TEXT: &str = "member, operator or agent";

/// Checks a verified peer certificate's identity: one of `roles`, of `cluster`.
fn check_peer(
    cert: &CertificateDer<'_>,
    cluster: &str,
    roles: &[Role],
    expected: &'static str,
) -> Result<Identity, TlsError> {
    let id = pki::identity(cert).map_err(TlsError::PeerCertificate)?;
    if !roles.contains(&id.role) {
        return Err(TlsError::PeerRole {
            name: id.name,
            found: id.role,
            expected,
        });
    }
    if id.cluster != cluster {
        return Err(TlsError::PeerCluster {
            name: id.name,
            found: id.cluster,
            expected: cluster.to_owned(),
        });
    }
    Ok(id)
}

/// A refusal as rustls reports it: the handshake fails with a bad-certificate alert and
/// this error, which the side that refused sees in full.
fn refusal(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in crate::tls::certs(ca)? {
        roots.add(cert).map_err(|source| crate::tls::TlsError::Ca {
            path: ca.to_owned(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// The chain and key of `cert`/`key`, and the identity of the certificate, which must be
/// one of `roles`.
/// The name in the certificate `cert` (its first, the leaf).
pub fn own_name(cert: &Path) -> Result<String, TlsError> {
    let chain = crate::tls::certs(cert)?;
    let first = chain.first().ok_or(crate::tls::TlsError::NoCertificate {
        path: cert.to_owned(),
    })?;
    let id = pki::identity(first).map_err(|source| TlsError::OwnCertificate {
        path: cert.to_owned(),
        source,
    })?;
    Ok(id.name)
}

fn own(
    cert: &Path,
    key: &Path,
    roles: &[Role],
    expected: &'static str,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        Identity,
    ),
    TlsError,
> {
    let chain = crate::tls::certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(crate::tls::pem(key))?;
    let first = chain.first().ok_or(crate::tls::TlsError::NoCertificate {
        path: cert.to_owned(),
    })?;
    let id = pki::identity(first).map_err(|source| TlsError::OwnCertificate {
        path: cert.to_owned(),
        source,
    })?;
    if !roles.contains(&id.role) {
        return Err(TlsError::OwnRole {
            path: cert.to_owned(),
            found: id.role,
            expected,
        });
    }
    Ok((chain, key, id))
}

fn key_pair_error(cert: &Path, key: &Path) -> impl FnOnce(rustls::Error) -> TlsError {
    let (certificate, key) = (cert.to_owned(), key.to_owned());
    move |source| {
        crate::tls::TlsError::KeyPair {
            certificate,
            key,
            source,
        }
        .into()
    }
}

/// The client verifier of the manager: WebPKI against the cluster CA, then the identity.
#[derive(Debug)]
struct ClusterClients {
    inner: Arc<dyn ClientCertVerifier>,
    cluster: String,
}

impl ClientCertVerifier for ClusterClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_peer(end_entity, &self.cluster, CLIENT_ROLES, CLIENT_ROLES_TEXT).map_err(refusal)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server verifier of members and operators: WebPKI against the cluster CA (which
/// checks [`MANAGER_NAME`] and server authentication), then the identity.
#[derive(Debug)]
struct ClusterManager {
    inner: Arc<WebPkiServerVerifier>,
    cluster: String,
}

impl ServerCertVerifier for ClusterManager {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_peer(end_entity, &self.cluster, &[Role::Manager], "manager").map_err(refusal)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The manager's server side: its certificate (which must be a manager's), and client
/// certificates REQUIRED, chained to the cluster CA (rustls's WebPKI client verifier) and
/// naming a member or operator of the manager's own cluster. Anonymous clients fail the
/// handshake.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, private, me) = own(cert, key, &[Role::Manager], "manager")?;
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca)?, crate::tls::provider())
        .build()
        .map_err(|source| TlsError::Verifier {
            path: ca.to_owned(),
            source,
        })?;
    let verifier = ClusterClients {
        inner,
        cluster: me.cluster,
    };
    let config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(crate::tls::TlsError::Provider)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, private)
        .map_err(key_pair_error(cert, key))?;
    Ok(Arc::new(config))
}

/// A member's or operator's client side: trusts only the cluster CA, accepts only the
/// manager of its own cluster, presents its certificate.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let (chain, private, me) = own(cert, key, CLIENT_ROLES, CLIENT_ROLES_TEXT)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, crate::tls::provider())
        .build()
        .map_err(|source| TlsError::Verifier {
            path: ca.to_owned(),
            source,
        })?;
    let verifier = ClusterManager {
        inner,
        cluster: me.cluster,
    };
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(crate::tls::TlsError::Provider)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, private)
        .map_err(key_pair_error(cert, key))?;
    Ok(Arc::new(config))
}

fn peer_end_entity<'a>(
    certs: Option<&'a [CertificateDer<'static>]>,
) -> Result<&'a CertificateDer<'static>, TlsError> {
    certs
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)
}

/// After a server handshake: the client's identity (role, name) from its certificate. The
/// handshake of [`server_config`] already refused a certificate of another cluster than
/// the server's own; this repeats the role check, so a connection from any other
/// configuration cannot hand a manager's identity to the protocol.
pub fn peer_identity(conn: &ServerConnection) -> Result<Identity, TlsError> {
    let cert = peer_end_entity(conn.peer_certificates())?;
    let id = pki::identity(cert).map_err(TlsError::PeerCertificate)?;
    if !CLIENT_ROLES.contains(&id.role) {
        return Err(TlsError::PeerRole {
            name: id.name,
            found: id.role,
            expected: CLIENT_ROLES_TEXT,
        });
    }
    Ok(id)
}

/// After a client handshake: the server's identity, which must be a manager (the handshake
/// of [`client_config`] already checked its cluster against the client's own).
pub fn manager_identity(conn: &ClientConnection) -> Result<Identity, TlsError> {
    let cert = peer_end_entity(conn.peer_certificates())?;
    let id = pki::identity(cert).map_err(TlsError::PeerCertificate)?;
    if id.role != Role::Manager {
        return Err(TlsError::PeerRole {
            name: id.name,
            found: id.role,
            expected: "manager",
        });
    }
    Ok(id)
}

/// Connects to the manager at `addr` (host:port) and completes the TLS handshake, both
/// within `timeout`, verifying the server as [`MANAGER_NAME`] whatever address was dialled.
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let name = ServerName::try_from(MANAGER_NAME).map_err(|_| TlsError::ManagerName)?;
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| TlsError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| TlsError::Handshake {
                addr: addr.to_owned(),
                source,
            })
    };
    let stream =
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| TlsError::Timeout {
                addr: addr.to_owned(),
                after: timeout,
            })??;
    manager_identity(stream.get_ref().1)?;
    Ok(stream)
}

#[cfg(test)]
mod tests;
