//! The lab's LDAP directory: OpenLDAP's slapd as a lab process in a lab namespace, with
//! its own slapd.conf, schema, mdb database and TLS certificate (from the lab CA) under the
//! lab's log folder.
//!
//! The tree: suffix `dc=robustifier,dc=test`; mailboxes under `ou=people` as
//! `robustifierMailbox` entries (a tiny schema of our own, so that an address may hold any
//! UTF-8, which `mail`'s IA5 syntax does not allow): `robustifierAddress` (the key),
//! `robustifierSmtpPool`, `robustifierSubmissionPool`, `robustifierPopPool` (the routes).
//! The front-end binds as [`BIND_DN`]; anonymous clients may read nothing, so a lookup
//! that answers proves the bind.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use base64::Engine as _;
use nix::sys::signal::{Signal, kill};

use crate::{Daemon, Netns, mail::tls};

pub const SUFFIX: &str = "dc=robustifier,dc=test";
/// Where the mailboxes are: the `base` of the lab's `[directory.ldap]`.
pub const PEOPLE: &str = "ou=people,dc=robustifier,dc=test";
/// The front-end's bind DN; its password is in [`Slapd::bind_password_file`].
pub const BIND_DN: &str = "cn=robustifier,ou=services,dc=robustifier,dc=test";
const ROOT_DN: &str = "cn=admin,dc=robustifier,dc=test";
/// The filter the lab's directories use.
pub const FILTER: &str = "(&(objectClass=robustifierMailbox)(robustifierAddress=%s))";
pub const LDAP_PORT: u16 = 389;
pub const LDAPS_PORT: u16 = 636;

const SCHEMA: &str = "\
# Robustifier lab: mailbox routes. OIDs under 1.3.6.1.4.1.32473, the arc kept for examples.
attributetype ( 1.3.6.1.4.1.32473.1.1.1 NAME 'robustifierAddress'
  DESC 'a mailbox address or login name, any UTF-8'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.3.6.1.4.1.32473.1.1.2 NAME 'robustifierSmtpPool'
  DESC 'pool or back-ends for the mailbox as an SMTP recipient'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.3.6.1.4.1.32473.1.1.3 NAME 'robustifierSubmissionPool'
  DESC 'pool or back-ends for the user on submission'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.3.6.1.4.1.32473.1.1.4 NAME 'robustifierPopPool'
  DESC 'pool or back-ends for the user on POP3'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.32473.1.2.1 NAME 'robustifierMailbox' SUP top STRUCTURAL
  MUST ( cn $ robustifierAddress )
  MAY ( robustifierSmtpPool $ robustifierSubmissionPool $ robustifierPopPool ) )
";

/// One mailbox entry: its address and the values of each route attribute (none: the
/// attribute is left out).
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub address: String,
    pub smtp: Vec<String>,
    pub submission: Vec<String>,
    pub pop: Vec<String>,
}

impl Entry {
    /// An entry routed to `smtp` for mail, `submission` and `pop` for logins.
    pub fn new(address: &str, smtp: &str, submission: &str, pop: &str) -> Entry {
        let one = |v: &str| {
            if v.is_empty() {
                Vec::new()
            } else {
                vec![v.to_owned()]
            }
        };
        Entry {
            address: address.to_owned(),
            smtp: one(smtp),
            submission: one(submission),
            pop: one(pop),
        }
    }
}

/// The lab cluster's mailboxes (see `Cluster::use_directories`): alice and bob on be1,
/// carol and dave on be2, erin on be3.
pub fn lab_mailboxes() -> Vec<Entry> {
    vec![
        Entry::new("alice@example.test", "be1", "sub-be1", "pop-be1"),
        Entry::new("bob@example.test", "be1", "sub-be1", "pop-be1"),
        Entry::new("carol@example.net", "be2", "sub-be2", "pop-be2"),
        Entry::new("dave@example.net", "be2", "sub-be2", "pop-be2"),
        Entry::new("erin@example.org", "be3", "", "pop-be3"),
    ]
}

/// A running (or stopped, or paused) slapd.
pub struct Slapd {
    pub name: String,
    pub addr: IpAddr,
    /// Its folder: slapd.conf, schema, the database, the ldapi socket, the passwords.
    pub dir: PathBuf,
    /// The CA its certificate chains to (the lab CA).
    pub ca: PathBuf,
    /// Holds the password of [`BIND_DN`] (one file for all the lab's slapds).
    pub bind_password_file: PathBuf,
    ns: Netns,
    daemon: Option<Daemon>,
    paused: bool,
    next_entry: u32,
}

impl Slapd {
    /// Writes `name`'s configuration under `log_dir` and starts it in `ns`, listening on
    /// `addr` (LDAP with StartTLS on 389, LDAPS on 636), with the bind DN in place and no
    /// mailbox yet ([`Slapd::add`]).
    pub fn start(log_dir: &Path, ns: &Netns, name: &str, addr: IpAddr) -> anyhow::Result<Slapd> {
        let dir = log_dir.join(format!("slapd-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data"))?;
        let cert = tls::host_cert(
            log_dir,
            &format!("slapd-{name}"),
            &format!("{name}.lab.test"),
            &[addr],
        )?;
        fs::write(dir.join("robustifier.schema"), SCHEMA)?;
        let root_pw = format!("root-{}", crate::unique_prefix(name));
        // One password for every slapd of the lab: replicas a front-end fails over
        // between know the same bind DN.
        let bind_password_file = log_dir.join("ldap-bind.pw");
        if !bind_password_file.exists() {
            let pw = format!("bind-{}", crate::unique_prefix(name));
            fs::write(&bind_password_file, format!("{pw}\n"))?;
            readable_by_daemon(&bind_password_file)?;
        }
        let bind_pw = fs::read_to_string(&bind_password_file)?.trim().to_owned();
        let d = dir.display();
        let conf = format!(
            "# Robustifier lab slapd {name}\n\
             include /etc/ldap/schema/core.schema\n\
             include {d}/robustifier.schema\n\
             pidfile {d}/slapd.pid\n\
             argsfile {d}/slapd.args\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             TLSCACertificateFile {ca}\n\
             TLSCertificateFile {cert}\n\
             TLSCertificateKeyFile {key}\n\
             sizelimit 500\n\
             database mdb\n\
             maxsize 67108864\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {root_pw}\n\
             directory {d}/data\n\
             index objectClass eq\n\
             index robustifierAddress eq\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by dn.exact=\"{BIND_DN}\" read by * none\n",
            ca = cert.ca.display(),
            cert = cert.cert.display(),
            key = cert.key.display(),
        );
        fs::write(dir.join("slapd.conf"), conf)?;
        fs::write(dir.join("root.pw"), &root_pw)?;
        let mut slapd = Slapd {
            name: name.to_owned(),
            addr,
            dir,
            ca: cert.ca,
            bind_password_file,
            ns: ns.clone(),
            daemon: None,
            paused: false,
            next_entry: 0,
        };
        slapd.run()?;
        let base = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: robustifier\no: Robustifier lab\n\n\
             dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: robustifier\nuserPassword: {bind_pw}\n\n"
        );
        slapd.ldif("ldapadd", &base)?;
        Ok(slapd)
    }

    /// `ldaps://addr:636`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}:{LDAPS_PORT}", host(self.addr))
    }

    /// `ldap://addr:389` (the front-end upgrades it with StartTLS).
    pub fn ldap_url(&self) -> String {
        format!("ldap://{}:{LDAP_PORT}", host(self.addr))
    }

    /// A `[[directory]]` named `name` reading `attribute` from this server (and then from
    /// `more_urls`, failover), with `extra` TOML lines for the directory's common keys.
    pub fn directory_toml(
        &self,
        name: &str,
        attribute: &str,
        more_urls: &[String],
        extra: &str,
    ) -> String {
        let mut urls = vec![self.ldaps_url()];
        urls.extend(more_urls.iter().cloned());
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        format!(
            "[[directory]]\nname = {name:?}\n{extra}\n[directory.ldap]\nurls = [{urls}]\n\
             ca_file = {ca:?}\nbase = {PEOPLE:?}\nfilter = {FILTER:?}\nattribute = {attribute:?}\n\
             bind_dn = {BIND_DN:?}\nbind_password_file = {pw:?}\n\n",
            urls = urls.join(", "),
            ca = self.ca.display().to_string(),
            pw = self.bind_password_file.display().to_string(),
        )
    }

    /// The lab cluster's services routed by this server (`Cluster::use_directories`): one
    /// `[[directory]]` per kind of service (`ldap-smtp`, `ldap-submission`, `ldap-pop`),
    /// each reading its pool attribute, with `common` TOML lines for the common keys and a
    /// 300 ms share per server.
    pub fn lab_directories(&self, common: &str) -> crate::cluster::Directories {
        let mut toml = String::new();
        for (name, attribute) in [
            ("ldap-smtp", "robustifierSmtpPool"),
            ("ldap-submission", "robustifierSubmissionPool"),
            ("ldap-pop", "robustifierPopPool"),
        ] {
            toml.push_str(&self.directory_toml(name, attribute, &[], common));
            toml.push_str("server_timeout_ms = 300\n\n");
        }
        crate::cluster::Directories {
            toml,
            smtp: "ldap-smtp".into(),
            submission: "ldap-submission".into(),
            pop: "ldap-pop".into(),
        }
    }

    /// Adds mailbox entries (each under its own `cn`, so addresses need no DN escaping).
    pub fn add(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v.as_bytes());
        let mut ldif = String::new();
        for e in entries {
            self.next_entry += 1;
            ldif.push_str(&format!(
                "dn: cn=m{n},{PEOPLE}\nobjectClass: robustifierMailbox\ncn: m{n}\nrobustifierAddress:: {a}\n",
                n = self.next_entry,
                a = b64(&e.address),
            ));
            for (attr, values) in [
                ("robustifierSmtpPool", &e.smtp),
                ("robustifierSubmissionPool", &e.submission),
                ("robustifierPopPool", &e.pop),
            ] {
                for v in values {
                    ldif.push_str(&format!("{attr}:: {}\n", b64(v)));
                }
            }
            ldif.push('\n');
        }
        self.ldif("ldapadd", &ldif)
    }

    /// Ends slapd (SIGTERM); its data stays for [`Slapd::restart`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.resume()?;
        if let Some(mut d) = self.daemon.take() {
            d.stop()?;
        }
        Ok(())
    }

    /// Starts slapd again on the same data and addresses.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.run()
    }

    /// Stops the process (SIGSTOP): connections open and the kernel still accepts new ones,
    /// but nothing answers: a directory that hangs.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        let d = self.daemon.as_ref().context("slapd is not running")?;
        kill(d.pid(), Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// Lets a paused slapd go on (SIGCONT).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.paused {
            if let Some(d) = &self.daemon {
                kill(d.pid(), Signal::SIGCONT)?;
            }
            self.paused = false;
        }
        Ok(())
    }

    pub fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("ldapi.sock")
    }

    fn ldapi_url(&self) -> String {
        let path = self.socket().display().to_string().replace('/', "%2F");
        format!("ldapi://{path}")
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let _ = fs::remove_file(self.socket());
        let listen = format!(
            "{} {} {}",
            self.ldap_url(),
            self.ldaps_url(),
            self.ldapi_url()
        );
        let conf = self.dir.join("slapd.conf");
        let mut cmd = self.ns.command("slapd");
        // -d keeps slapd in the foreground (a Daemon we can signal); "stats" logs each
        // connection and operation, for the test's log.
        cmd.args(["-d", "stats", "-f"])
            .arg(&conf)
            .args(["-h", &listen]);
        let log = self.dir.join("slapd.log");
        let mut daemon = Daemon::spawn(&format!("slapd {}", self.name), cmd, log)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                anyhow::bail!(
                    "slapd {} exited ({status}):\n{}",
                    self.name,
                    daemon.log_text()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "slapd {} does not listen:\n{}",
                self.name,
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Runs `tool` (ldapadd, ldapmodify) as the root DN over the ldapi socket with `ldif`.
    fn ldif(&self, tool: &str, ldif: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut child = std::process::Command::new(tool)
            .args(["-x", "-H", &self.ldapi_url(), "-D", ROOT_DN, "-y"])
            .arg(self.dir.join("root.pw"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {tool} (Debian package ldap-utils)"))?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(ldif.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} failed: {}{}\n{ldif}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        // A stopped process does not act on SIGTERM: let it go on first.
        let _ = self.resume();
    }
}

/// The front-end reads the bind password at each connection, after it has switched to its
/// unprivileged user.
fn readable_by_daemon(file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(group) = nix::unistd::Group::from_name("robustifier")? {
        nix::unistd::chown(file, None, Some(group.gid))?;
    }
    fs::set_permissions(file, fs::Permissions::from_mode(0o640))?;
    Ok(())
}

fn host(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}
