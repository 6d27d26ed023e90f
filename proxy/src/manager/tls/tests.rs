use std::io;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::manager::pki::{DEFAULT_MANAGER, init, paths};

/// A folder for one test, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("robustifier-mtls-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }

    /// A cluster named `cluster` with members fe-a, fe-b and operator alice.
    fn cluster(test: &str, cluster: &str) -> Dir {
        let d = Dir::new(test);
        init(
            &d.0,
            cluster,
            &[],
            &["fe-a".into(), "fe-b".into()],
            &["alice".into()],
        )
        .unwrap();
        d
    }

    fn ca(&self) -> PathBuf {
        self.0.join("ca.pem")
    }

    fn pair(&self, role: Role, name: &str) -> (PathBuf, PathBuf) {
        paths(&self.0, role, name)
    }

    fn server(&self) -> Arc<ServerConfig> {
        let (c, k) = self.pair(Role::Manager, DEFAULT_MANAGER);
        server_config(&self.ca(), &c, &k).unwrap()
    }

    fn client(&self, role: Role, name: &str) -> Arc<ClientConfig> {
        let (c, k) = self.pair(role, name);
        client_config(&self.ca(), &c, &k).unwrap()
    }

    /// A certificate signed by this cluster's CA with any subject and usage, as a forger
    /// holding the CA key (or a buggy issuer) could make: what only the identity checks
    /// can refuse.
    fn forged(
        &self,
        unit: &str,
        cluster: &str,
        server: bool,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca_der = CertificateDer::from_pem_file(self.ca()).unwrap();
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(self.0.join("ca.key")).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key).unwrap();
        let sans = if server {
            vec![MANAGER_NAME.to_owned()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "intruder");
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, unit);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const WAIT: Duration = Duration::from_secs(30);

/// Accepts one connection on loopback; on success sends "hello" and returns the client's
/// identity.
async fn serve_once(
    config: Arc<ServerConfig>,
) -> (String, JoinHandle<Result<Identity, io::Error>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(config).accept(tcp).await?;
        let id = peer_identity(tls.get_ref().1).unwrap();
        tls.write_all(b"hello").await?;
        tls.shutdown().await?;
        Ok(id)
    });
    (addr, task)
}

/// The rustls error inside an I/O error of tokio-rustls.
fn rustls_error(e: &io::Error) -> &rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {e:?}"))
}

/// The identity check's refusal carried inside a rustls certificate error.
fn refused(e: &rustls::Error) -> &TlsError {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<TlsError>().unwrap()
        }
        other => panic!("not an identity refusal: {other:?}"),
    }
}

fn handshake_error(e: TlsError) -> rustls::Error {
    match e {
        TlsError::Handshake { source, .. } => rustls_error(&source).clone(),
        other => panic!("not a handshake error: {other}"),
    }
}

/// A client's connection works when it can read the server's "hello".
async fn read_hello(mut stream: TlsStream<TcpStream>) -> Result<(), io::Error> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    assert_eq!(buf, b"hello");
    Ok(())
}

#[tokio::test]
async fn member_and_operator_connect_and_are_identified() {
    let d = Dir::cluster("ok", "mail-east");
    for (role, name) in [(Role::Member, "fe-a"), (Role::Operator, "alice")] {
        let (addr, server) = serve_once(d.server()).await;
        let stream = connect(&addr, d.client(role, name), WAIT).await.unwrap();
        let manager = manager_identity(stream.get_ref().1).unwrap();
        assert_eq!(
            manager,
            Identity {
                role: Role::Manager,
                name: DEFAULT_MANAGER.into(),
                cluster: "mail-east".into()
            }
        );
        read_hello(stream).await.unwrap();
        let peer = server.await.unwrap().unwrap();
        assert_eq!(
            peer,
            Identity {
                role,
                name: name.into(),
                cluster: "mail-east".into()
            }
        );
    }
}

#[tokio::test]
async fn a_client_certificate_of_another_clusters_ca_is_refused() {
    let a = Dir::cluster("other-ca-a", "mail-east");
    // The same cluster name on another CA: only the CA tells them apart.
    let b = Dir::cluster("other-ca-b", "mail-east");
    let (c, k) = b.pair(Role::Member, "fe-a");
    // It trusts A's CA, so it would accept A's manager: the refusal is the server's.
    let client = client_config(&a.ca(), &c, &k).unwrap();
    let (addr, server) = serve_once(a.server()).await;
    let outcome = match connect(&addr, client, WAIT).await {
        Ok(stream) => read_hello(stream).await,
        Err(e) => panic!("the client side failed first: {e}"),
    };
    let server_err = server.await.unwrap().unwrap_err();
    assert_eq!(
        rustls_error(&server_err),
        &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
    // The client learns it from the alert, not from an orderly end.
    let client_err = outcome.unwrap_err();
    assert_eq!(
        rustls_error(&client_err),
        &rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let d = Dir::cluster("anonymous", "mail-east");
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(d.ca()).unwrap())
        .unwrap();
    let anonymous = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (addr, server) = serve_once(d.server()).await;
    let outcome = match connect(&addr, Arc::new(anonymous), WAIT).await {
        Ok(stream) => read_hello(stream).await,
        Err(e) => panic!("the client side failed first: {e}"),
    };
    let server_err = server.await.unwrap().unwrap_err();
    assert_eq!(
        rustls_error(&server_err),
        &rustls::Error::NoCertificatesPresented
    );
    assert_eq!(
        rustls_error(&outcome.unwrap_err()),
        &rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
    );
}

#[tokio::test]
async fn a_client_of_the_ca_naming_another_cluster_is_refused() {
    let d = Dir::cluster("forged-cluster", "mail-east");
    let (chain, key) = d.forged("member", "mail-west", false);
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(d.ca()).unwrap())
        .unwrap();
    let client = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let (addr, server) = serve_once(d.server()).await;
    if let Ok(stream) = connect(&addr, Arc::new(client), WAIT).await {
        assert!(read_hello(stream).await.is_err());
    }
    let server_err = server.await.unwrap().unwrap_err();
    match refused(rustls_error(&server_err)) {
        TlsError::PeerCluster {
            name,
            found,
            expected,
        } => assert_eq!(
            (name.as_str(), found.as_str(), expected.as_str()),
            ("intruder", "mail-west", "mail-east")
        ),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_client_refuses_a_manager_of_another_cluster() {
    let a = Dir::cluster("other-manager-a", "mail-east");
    let b = Dir::cluster("other-manager-b", "mail-east");
    let (addr, _server) = serve_once(b.server()).await;
    let err = connect(&addr, a.client(Role::Member, "fe-a"), WAIT)
        .await
        .unwrap_err();
    assert_eq!(
        handshake_error(err),
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
}

/// A server presenting `chain` (requiring client certificates of `d`'s CA).
fn impostor(
    d: &Dir,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<ServerConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(d.ca()).unwrap())
        .unwrap();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
            .build()
            .unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

#[tokio::test]
async fn a_client_refuses_a_member_certificate_presented_as_the_manager() {
    let d = Dir::cluster("member-as-server", "mail-east");
    let (c, k) = d.pair(Role::Member, "fe-b");
    // The manager's own configuration refuses it outright.
    assert!(matches!(
        server_config(&d.ca(), &c, &k),
        Err(TlsError::OwnRole {
            found: Role::Member,
            ..
        })
    ));
    // Served anyway: a client-authentication certificate without the manager's name.
    let chain = crate::tls::certs(&c).unwrap();
    let key = PrivateKeyDer::from_pem_file(&k).unwrap();
    let (addr, _server) = serve_once(impostor(&d, chain, key)).await;
    let err = connect(&addr, d.client(Role::Operator, "alice"), WAIT)
        .await
        .unwrap_err();
    let e = handshake_error(err);
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::InvalidPurpose)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::InvalidPurposeContext { .. }
                )
        ),
        "{e:?}"
    );
    // With the manager's name and usage but a member's role, the identity check refuses it.
    let (chain, key) = d.forged("member", "mail-east", true);
    let (addr, _server) = serve_once(impostor(&d, chain, key)).await;
    let err = connect(&addr, d.client(Role::Member, "fe-a"), WAIT)
        .await
        .unwrap_err();
    match refused(&handshake_error(err)) {
        TlsError::PeerRole {
            found: Role::Member,
            ..
        } => {}
        other => panic!("{other}"),
    }
}

#[test]
fn a_manager_certificate_is_no_client_and_the_manager_name_is_a_dns_name() {
    let d = Dir::cluster("manager-as-client", "mail-east");
    let (c, k) = d.pair(Role::Manager, DEFAULT_MANAGER);
    assert!(matches!(
        client_config(&d.ca(), &c, &k),
        Err(TlsError::OwnRole {
            found: Role::Manager,
            ..
        })
    ));
    assert!(ServerName::try_from(MANAGER_NAME).is_ok());
}

#[tokio::test]
async fn connect_reports_a_refused_connection_with_the_address() {
    let d = Dir::cluster("refused", "mail-east");
    // A port that was just free: bound, then released.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    match connect(&addr, d.client(Role::Member, "fe-a"), WAIT).await {
        Err(TlsError::Connect { addr: a, source }) => {
            assert_eq!(a, addr);
            assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn connect_gives_up_on_a_server_that_never_answers() {
    let d = Dir::cluster("silent", "mail-east");
    // Accepts (the kernel completes the TCP handshake) but never speaks TLS.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let after = Duration::from_millis(200);
    match connect(&addr, d.client(Role::Member, "fe-a"), after).await {
        Err(TlsError::Timeout { addr: a, after: t }) => assert_eq!((a, t), (addr, after)),
        other => panic!("{:?}", other.map(|_| ())),
    }
    drop(listener);
}

#[tokio::test]
async fn an_agent_issued_later_connects_and_is_identified_as_one() {
    let d = Dir::cluster("agent", "mail-east");
    let (c, _) = crate::manager::pki::issue(&d.0, Role::Agent, "mx1", &[]).unwrap();
    assert_eq!(c, d.0.join("agents/mx1.pem"));
    let (addr, server) = serve_once(d.server()).await;
    let stream = connect(&addr, d.client(Role::Agent, "mx1"), WAIT)
        .await
        .unwrap();
    read_hello(stream).await.unwrap();
    let peer = server.await.unwrap().unwrap();
    assert_eq!(
        peer,
        Identity {
            role: Role::Agent,
            name: "mx1".into(),
            cluster: "mail-east".into()
        }
    );
}
