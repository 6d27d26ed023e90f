use std::{os::unix::fs::PermissionsExt as _, sync::Arc};

use super::*;

/// A folder for one test, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("robustifier-pki-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

#[test]
fn init_writes_the_layout_with_private_keys_0600() {
    let d = Dir::new("layout");
    let cluster = d.0.join("cluster");
    let written = init(
        &cluster,
        "mail-east",
        &names(&["198.18.0.10", "mgr.example.test"]),
        &names(&["fe-a", "fe-b"]),
        &names(&["alice"]),
    )
    .unwrap();
    let expected: Vec<PathBuf> = [
        "ca.key",
        "ca.pem",
        "manager.key",
        "manager.pem",
        "members/fe-a.key",
        "members/fe-a.pem",
        "members/fe-b.key",
        "members/fe-b.pem",
        "operators/alice.key",
        "operators/alice.pem",
    ]
    .iter()
    .map(|p| cluster.join(p))
    .collect();
    assert_eq!(written, expected);
    for p in &written {
        let m = mode(p);
        if p.extension().is_some_and(|e| e == "key") {
            assert_eq!(m, 0o600, "{}", p.display());
        } else {
            assert_eq!(m & 0o022, 0, "{}: {m:o}", p.display());
        }
    }
    for sub in ["", "members", "operators"] {
        assert_eq!(mode(&cluster.join(sub)), 0o700, "{sub}");
    }
    // Keys read back as what rustls and rcgen take.
    rustls::pki_types::PrivateKeyDer::from_pem_file(cluster.join("members/fe-a.key")).unwrap();
    KeyPair::from_pem(&fs::read_to_string(cluster.join("ca.key")).unwrap()).unwrap();
}

#[test]
fn identity_reads_role_name_and_cluster_of_each_kind() {
    let d = Dir::new("identity");
    init(
        &d.0,
        "mail-east",
        &[],
        &names(&["fe-a"]),
        &names(&["alice"]),
    )
    .unwrap();
    let id = |p: &str| identity(&cert(&d.0.join(p))).unwrap();
    assert_eq!(
        id("manager.pem"),
        Identity {
            role: Role::Manager,
            name: DEFAULT_MANAGER.into(),
            cluster: "mail-east".into()
        }
    );
    assert_eq!(
        id("members/fe-a.pem"),
        Identity {
            role: Role::Member,
            name: "fe-a".into(),
            cluster: "mail-east".into()
        }
    );
    assert_eq!(
        id("operators/alice.pem"),
        Identity {
            role: Role::Operator,
            name: "alice".into(),
            cluster: "mail-east".into()
        }
    );
    // The CA names a cluster but no role: it is nobody's identity.
    assert!(matches!(
        identity(&cert(&d.0.join("ca.pem"))),
        Err(PkiError::Subject("organizational unit (OU)"))
    ));
    assert!(matches!(
        identity(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])),
        Err(PkiError::Parse(_))
    ));
}

#[test]
fn manager_certificate_carries_the_manager_name_and_extra_names() {
    let d = Dir::new("sans");
    init(
        &d.0,
        "c1",
        &names(&["198.18.0.10", "mgr.example.test"]),
        &[],
        &[],
    )
    .unwrap();
    let der = cert(&d.0.join("manager.pem"));
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()).unwrap();
    let san = x.subject_alternative_name().unwrap().unwrap().value;
    let shown: Vec<String> = san.general_names.iter().map(|n| format!("{n:?}")).collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert!(shown[0].contains(MANAGER_NAME), "{shown:?}");
    assert!(shown[2].contains("mgr.example.test"), "{shown:?}");
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let member = Dir::new("sans-member");
    init(&member.0, "c1", &[], &names(&["fe-a"]), &[]).unwrap();
    let der = cert(&member.0.join("members/fe-a.pem"));
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()).unwrap();
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(x.subject_alternative_name().unwrap().is_none());
    // Validity: leaves two years, the CA ten (within the hour of backdating).
    let days = |x: &x509_parser::certificate::X509Certificate<'_>| {
        (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86_400
    };
    assert_eq!(days(&x), LEAF_DAYS);
    let ca = cert(&member.0.join("ca.pem"));
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(ca.as_ref()).unwrap();
    assert_eq!(days(&x), CA_DAYS);
}

#[test]
fn init_twice_is_refused_and_changes_nothing() {
    let d = Dir::new("twice");
    init(&d.0, "c1", &[], &names(&["fe-a"]), &[]).unwrap();
    let before = fs::read(d.0.join("ca.key")).unwrap();
    let err = init(&d.0, "c1", &[], &names(&["fe-b"]), &[]).unwrap_err();
    assert!(
        matches!(&err, PkiError::Exists { path } if *path == d.0.join("ca.key")),
        "{err}"
    );
    assert_eq!(fs::read(d.0.join("ca.key")).unwrap(), before);
    assert!(!d.0.join("members/fe-b.pem").exists());
}

#[test]
fn issue_adds_a_member_from_the_same_ca_and_refuses_to_overwrite() {
    let d = Dir::new("issue");
    init(&d.0, "mail-east", &[], &names(&["fe-a"]), &[]).unwrap();
    let (c, k) = issue(&d.0, Role::Member, "fe-c", &[]).unwrap();
    assert_eq!(c, d.0.join("members/fe-c.pem"));
    assert_eq!(k, d.0.join("members/fe-c.key"));
    assert_eq!(mode(&k), 0o600);
    assert_eq!(
        identity(&cert(&c)).unwrap(),
        Identity {
            role: Role::Member,
            name: "fe-c".into(),
            cluster: "mail-east".into()
        }
    );
    // Signed by the cluster CA: WebPKI accepts it for client authentication.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert(&d.0.join("ca.pem"))).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&cert(&c), &[], rustls::pki_types::UnixTime::now())
        .unwrap();
    let err = issue(&d.0, Role::Member, "fe-a", &[]).unwrap_err();
    assert!(
        matches!(&err, PkiError::Exists { path } if *path == d.0.join("members/fe-a.pem")),
        "{err}"
    );
    // A manager already exists too.
    assert!(matches!(
        issue(&d.0, Role::Manager, "manager-2", &[]),
        Err(PkiError::Exists { .. })
    ));
    let (c, _) = issue(&d.0, Role::Operator, "bob", &[]).unwrap();
    assert_eq!(identity(&cert(&c)).unwrap().role, Role::Operator);
}

#[test]
fn issue_without_a_ca_fails_with_the_path() {
    let d = Dir::new("no-ca");
    let err = issue(&d.0, Role::Member, "fe-a", &[]).unwrap_err();
    assert!(
        matches!(&err, PkiError::Pem { path, .. } if *path == d.0.join("ca.pem")),
        "{err}"
    );
}

#[test]
fn names_are_validated_before_anything_is_written() {
    let d = Dir::new("names");
    for bad in ["", "../etc", "a/b", "fe a", "é", &"x".repeat(65)] {
        let err = init(&d.0, "c1", &[], &names(&[bad]), &[]).unwrap_err();
        assert!(matches!(err, PkiError::Name { .. }), "{bad:?}: {err}");
        assert!(matches!(
            init(&d.0, bad, &[], &[], &[]),
            Err(PkiError::Name { .. })
        ));
    }
    assert!(matches!(
        init(&d.0, "c1", &[], &names(&["fe-a", "fe-a"]), &[]),
        Err(PkiError::Duplicate { .. })
    ));
    assert!(!d.0.exists());
    init(&d.0, "c1", &[], &names(&[&"x".repeat(64), "A.b_c-9"]), &[]).unwrap();
    assert!(matches!(
        issue(&d.0, Role::Operator, "../../x", &[]),
        Err(PkiError::Name { .. })
    ));
}
