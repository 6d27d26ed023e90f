//! TLS material for the mail lab: one certificate authority per lab (key and certificate in
//! `<log_dir>/mail/tls/`) and a server certificate (ECDSA P-256) per mail host signed by it, with the
//! host's name and addresses as subject alternative names, so clients can verify with
//! `ca.pem` alone (swaks `--tls-verify --tls-ca-path`, Python's `cafile=`).

use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Where a host's certificate, key and the lab's CA certificate are.
#[derive(Clone, Debug)]
pub struct HostCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The lab's TLS directory under its log directory.
pub fn tls_dir(log_dir: &Path) -> PathBuf {
    log_dir.join("mail").join("tls")
}

/// The CA certificate (PEM) every lab mail host's certificate chains to.
pub fn ca_file(log_dir: &Path) -> PathBuf {
    tls_dir(log_dir).join("ca.pem")
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Robustifier lab mail CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Robustifier lab");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes `contents` to `path`, readable by root only (private keys).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The lab's CA: loaded from `ca.key` when an earlier host made it, created otherwise.
fn issuer(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let key_path = dir.join("ca.key");
    let cert_path = dir.join("ca.pem");
    let key = if key_path.is_file() {
        KeyPair::from_pem(&fs::read_to_string(&key_path)?).context("parsing the lab CA key")?
    } else {
        let key = KeyPair::generate().context("generating the lab CA key")?;
        write_private(&key_path, &key.serialize_pem())?;
        key
    };
    if !cert_path.is_file() {
        let cert = ca_params().self_signed(&key)?;
        fs::write(&cert_path, cert.pem())?;
    }
    Ok(Issuer::new(ca_params(), key))
}

/// Issues (or re-issues) `host`'s certificate for `dns_name` and `addrs`.
pub fn host_cert(
    log_dir: &Path,
    host: &str,
    dns_name: &str,
    addrs: &[IpAddr],
) -> anyhow::Result<HostCert> {
    let dir = tls_dir(log_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let issuer = issuer(&dir)?;
    let mut params = CertificateParams::new(vec![dns_name.to_owned()])?;
    params
        .subject_alt_names
        .extend(addrs.iter().map(|a| SanType::IpAddress(*a)));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, dns_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let out = HostCert {
        cert: dir.join(format!("{host}.pem")),
        key: dir.join(format!("{host}.key")),
        ca: dir.join("ca.pem"),
    };
    fs::write(&out.cert, cert.pem())?;
    write_private(&out.key, &key.serialize_pem())?;
    Ok(out)
}
