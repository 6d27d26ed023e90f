//! The cluster's certificate authority: one CA per cluster, and the certificates of its
//! manager, members (front-ends) and operators, as PEM files in one directory.
//!
//! Layout of a cluster directory (created 0700; private keys 0600, created with that mode
//! so no other user ever sees them, even for an instant):
//!
//! ```text
//! DIR/ca.pem, DIR/ca.key                      the cluster CA (10 years)
//! DIR/manager.pem, DIR/manager.key            the manager (2 years)
//! DIR/members/NAME.pem, DIR/members/NAME.key  each member (2 years)
//! DIR/operators/NAME.pem, DIR/operators/NAME.key
//! DIR/agents/NAME.pem, DIR/agents/NAME.key    each back-end host's agent (NAME: the
//!                                             back-end's name in the configuration)
//! ```
//!
//! A certificate's subject says who holds it: CN the name, O the cluster, OU the role
//! (`manager`, `member`, `operator`). The manager's certificate is for server
//! authentication and carries [`MANAGER_NAME`] (and any extra names given); the others are
//! for client authentication only, so a member's certificate cannot pass for the manager.
//! Keys are ECDSA P-256. Certificates start one hour in the past, so a member whose clock
//! is a little behind the manager's accepts a certificate issued just now.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};
use x509_parser::prelude::FromDer as _;

/// The DNS name every manager certificate carries and every client verifies, whatever
/// address it dialled: the cluster CA is the only trust anchor, so the name marks the role,
/// not a place. `.internal` is reserved for private use and never resolves publicly.
pub const MANAGER_NAME: &str = "manager.robustifier.internal";

/// The common name of the manager's certificate written by [`init`].
pub const DEFAULT_MANAGER: &str = "manager";

const CA_DAYS: i64 = 10 * 365;
const LEAF_DAYS: i64 = 2 * 365;
/// Tolerated clock skew: certificates are valid from this long before they were made.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// What a certificate's holder is to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Member,
    Operator,
    /// A back-end host's agent: it may only ship its MTA's log lines.
    Agent,
}

impl Role {
    /// The OU of the role's certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Member => "member",
            Role::Operator => "operator",
            Role::Agent => "agent",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "manager" => Some(Role::Manager),
            "member" => Some(Role::Member),
            "operator" => Some(Role::Operator),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate names: its role, its name and its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    pub cluster: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: {source}", path.display())]
    Key { path: PathBuf, source: rcgen::Error },
    #[error("creating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{} already exists: refusing to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("{what} {name:?}: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'")]
    Name { what: &'static str, name: String },
    #[error("{what} {name:?} is given twice")]
    Duplicate { what: &'static str, name: String },
    #[error("not an X.509 certificate: {0}")]
    Parse(#[from] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("the certificate's subject has no single {0}")]
    Subject(&'static str),
    #[error("the certificate's role (OU) {0:?} is none of manager, member, operator, agent")]
    Role(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError {
    let path = path.to_owned();
    move |source| PkiError::Io { path, source }
}

/// Names become file names and certificate subjects: a short, plain alphabet only.
fn check_name(what: &'static str, name: &str) -> Result<(), PkiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Name {
            what,
            name: name.to_owned(),
        })
    }
}

/// Where the certificate and key of `role`/`name` live under `dir`.
pub fn paths(dir: &Path, role: Role, name: &str) -> (PathBuf, PathBuf) {
    let base = match role {
        Role::Manager => dir.join("manager"),
        Role::Member => dir.join("members").join(name),
        Role::Operator => dir.join("operators").join(name),
        Role::Agent => dir.join("agents").join(name),
    };
    (base.with_extension("pem"), base.with_extension("key"))
}

fn make_dir(path: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err(path))
}

/// Writes a new file with `mode` from the start; an existing file is never replaced.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                PkiError::Exists {
                    path: path.to_owned(),
                }
            } else {
                PkiError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn refuse_existing(path: &Path) -> Result<(), PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(PkiError::Exists {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::days(days);
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // A random tag makes each CA's subject unique, so a certificate of another cluster of
    // the same name is refused as from an unknown issuer, not as a forged signature.
    dn.push(
        DnType::CommonName,
        format!("Robustifier cluster CA {:016x}", fastrand::u64(..)),
    );
    dn.push(DnType::OrganizationName, cluster);
    params.distinguished_name = dn;
    // Path length 0: the CA signs only end-entity certificates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS);
    params
}

fn leaf_params(
    role: Role,
    name: &str,
    cluster: &str,
    alt_names: &[String],
) -> Result<CertificateParams, PkiError> {
    let mut sans = Vec::with_capacity(alt_names.len() + 1);
    if role == Role::Manager {
        sans.push(MANAGER_NAME.to_owned());
    }
    sans.extend(alt_names.iter().cloned());
    // `new` takes each name as an IP address when it parses as one, else as a DNS name.
    let mut params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, cluster);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Manager => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Member | Role::Operator | Role::Agent => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_DAYS);
    Ok(params)
}

/// A signed leaf, as (certificate PEM, key PEM).
fn sign_leaf(
    issuer: &Issuer<'_, KeyPair>,
    role: Role,
    name: &str,
    cluster: &str,
    alt_names: &[String],
) -> Result<(String, String), PkiError> {
    let key = new_key()?;
    let cert = leaf_params(role, name, cluster, alt_names)?.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a leaf's pair (the key first, 0600) and records both paths.
fn write_pair(
    (cert_path, key_path): &(PathBuf, PathBuf),
    (cert, key): &(String, String),
    written: &mut Vec<PathBuf>,
) -> Result<(), PkiError> {
    write_new(key_path, key, 0o600)?;
    written.push(key_path.clone());
    write_new(cert_path, cert, 0o644)?;
    written.push(cert_path.clone());
    Ok(())
}

/// Creates DIR (0700) with a new cluster: DIR/ca.pem, DIR/ca.key (0600), DIR/manager.pem +
/// manager.key, DIR/members/NAME.pem + .key, DIR/operators/NAME.pem + .key. Refuses to
/// overwrite an existing DIR/ca.key (or any other file of the layout). `manager_names`:
/// extra DNS names or IP addresses for the manager's certificate. Returns the files
/// written.
pub fn init(
    dir: &Path,
    cluster: &str,
    manager_names: &[String],
    members: &[String],
    operators: &[String],
) -> Result<Vec<PathBuf>, PkiError> {
    init_with_agents(dir, cluster, manager_names, members, operators, &[])
}

/// [`init`], with the certificates of back-end hosts' agents too.
pub fn init_with_agents(
    dir: &Path,
    cluster: &str,
    manager_names: &[String],
    members: &[String],
    operators: &[String],
    agents: &[String],
) -> Result<Vec<PathBuf>, PkiError> {
    check_name("cluster name", cluster)?;
    let mut planned = vec![paths(dir, Role::Manager, DEFAULT_MANAGER)];
    for (role, what, names) in [
        (Role::Member, "member name", members),
        (Role::Operator, "operator name", operators),
        (Role::Agent, "agent name", agents),
    ] {
        for (i, name) in names.iter().enumerate() {
            check_name(what, name)?;
            if names[..i].contains(name) {
                return Err(PkiError::Duplicate {
                    what,
                    name: name.clone(),
                });
            }
            planned.push(paths(dir, role, name));
        }
    }
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    // Everything is checked before anything is written, so a refusal leaves no half cluster.
    refuse_existing(&ca_key_path)?;
    refuse_existing(&ca_cert_path)?;
    for (c, k) in &planned {
        refuse_existing(c)?;
        refuse_existing(k)?;
    }
    // Every certificate is signed before any file is written, for the same reason.
    let ca_key = new_key()?;
    let ca_cert = ca_params(cluster).self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), ca_key)?;
    let mut signed = Vec::with_capacity(planned.len());
    signed.push(sign_leaf(
        &issuer,
        Role::Manager,
        DEFAULT_MANAGER,
        cluster,
        manager_names,
    )?);
    for m in members {
        signed.push(sign_leaf(&issuer, Role::Member, m, cluster, &[])?);
    }
    for o in operators {
        signed.push(sign_leaf(&issuer, Role::Operator, o, cluster, &[])?);
    }
    for a in agents {
        signed.push(sign_leaf(&issuer, Role::Agent, a, cluster, &[])?);
    }

    make_dir(dir)?;
    make_dir(&dir.join("members"))?;
    make_dir(&dir.join("operators"))?;
    if !agents.is_empty() {
        make_dir(&dir.join("agents"))?;
    }
    let mut written = Vec::with_capacity(2 + 2 * planned.len());
    // The CA key first, created exclusively: of two concurrent inits only one gets past it.
    write_new(&ca_key_path, &ca_key_pem, 0o600)?;
    written.push(ca_key_path);
    write_new(&ca_cert_path, &ca_cert.pem(), 0o644)?;
    written.push(ca_cert_path);
    for (p, s) in planned.iter().zip(&signed) {
        write_pair(p, s, &mut written)?;
    }
    Ok(written)
}

/// Issues one more certificate from DIR's CA (a member or operator added later, or the
/// manager re-issued after its files were moved away); refuses to overwrite an existing
/// one. `alt_names` become subject alternative names (for the manager, besides
/// [`MANAGER_NAME`]). Returns (cert, key) paths.
pub fn issue(
    dir: &Path,
    role: Role,
    name: &str,
    alt_names: &[String],
) -> Result<(PathBuf, PathBuf), PkiError> {
    check_name("name", name)?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let ca_der = CertificateDer::from_pem_file(&ca_cert_path).map_err(|source| PkiError::Pem {
        path: ca_cert_path.clone(),
        source,
    })?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|source| PkiError::Key {
        path: ca_key_path.clone(),
        source,
    })?;
    let cluster = subject(&ca_der)?.organization;
    let pair = paths(dir, role, name);
    refuse_existing(&pair.0)?;
    refuse_existing(&pair.1)?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)?;
    let signed = sign_leaf(&issuer, role, name, &cluster, alt_names)?;
    if let Some(parent) = pair.0.parent() {
        make_dir(parent)?;
    }
    write_pair(&pair, &signed, &mut Vec::with_capacity(2))?;
    Ok(pair)
}

struct Subject {
    common_name: String,
    organization: String,
    unit: Option<String>,
}

/// The single value of each subject attribute we use; a certificate with two CNs (or two
/// Os) names nobody in particular and is refused.
fn subject(cert: &CertificateDer<'_>) -> Result<Subject, PkiError> {
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())?;
    let subject = x509.subject();
    fn single<'a>(
        mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
        what: &'static str,
    ) -> Result<Option<String>, PkiError> {
        let Some(first) = it.next() else {
            return Ok(None);
        };
        if it.next().is_some() {
            return Err(PkiError::Subject(what));
        }
        first
            .as_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| PkiError::Subject(what))
    }
    let common_name = single(subject.iter_common_name(), "common name (CN)")?
        .ok_or(PkiError::Subject("common name (CN)"))?;
    let organization = single(subject.iter_organization(), "organization (O)")?
        .ok_or(PkiError::Subject("organization (O)"))?;
    let unit = single(
        subject.iter_organizational_unit(),
        "organizational unit (OU)",
    )?;
    Ok(Subject {
        common_name,
        organization,
        unit,
    })
}

/// The identity a certificate (DER) carries. Its name and cluster pass the same checks as
/// names given to [`init`], so they are safe in file names and logs.
pub fn identity(cert: &CertificateDer<'_>) -> Result<Identity, PkiError> {
    let s = subject(cert)?;
    let unit = s
        .unit
        .ok_or(PkiError::Subject("organizational unit (OU)"))?;
    let role = Role::parse(&unit).ok_or(PkiError::Role(unit))?;
    check_name("name", &s.common_name)?;
    check_name("cluster name", &s.organization)?;
    Ok(Identity {
        role,
        name: s.common_name,
        cluster: s.organization,
    })
}

#[cfg(test)]
mod tests;
