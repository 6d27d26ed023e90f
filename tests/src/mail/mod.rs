//! Real mail servers as lab back-ends: on a back-end host, an MTA (Postfix, or OpenSMTPD or
//! Exim as other makes) and Dovecot for POP3, each with its own configuration, spool and log
//! under the lab's log directory, started inside the host's namespace and ended by the lab.
//!
//! Layout of back-end `beN` (everything under `<log_dir>/mail/beN/`):
//!
//! | path | what |
//! |---|---|
//! | `mail/<domain>/<user>/Maildir/` | the mailboxes: the MTA delivers here, Dovecot reads here (uid `mail`) |
//! | `postfix/etc`, `postfix/spool`, `postfix/data`, `postfix.log` | Postfix's config, queue, data directory, maillog |
//! | `opensmtpd/`, `opensmtpd.log` | OpenSMTPD's config, tables, private spool, log |
//! | `exim/etc`, `exim/spool`, `exim/log/mainlog` | Exim's config, spool, logs |
//! | `dovecot/`, `dovecot.log` | Dovecot's config, passwd-file, base and state dirs, log |
//! | `<log_dir>/mail/tls/ca.pem` | the lab CA every host certificate chains to |
//!
//! Ports on the host's back-end addresses (IPv4 and IPv6):
//!
//! | port | service |
//! |---|---|
//! | 25 | SMTP; STARTTLS (Postfix, Exim); XCLIENT from the front-ends (Postfix; 198.18.1.0/24, 2001:db8:0:2::/64) |
//! | 10025 | SMTP expecting a PROXY v2 header first (Postfix `smtpd_upstream_proxy_protocol`, OpenSMTPD `proxy-v2`; not Exim) |
//! | 587 | submission with AUTH PLAIN/LOGIN, also without TLS (Postfix: Dovecot SASL; Exim: password file; not OpenSMTPD) |
//! | 110 | POP3, STLS |
//! | 995 | POP3 over TLS |
//! | 10110 | POP3 expecting a PROXY v2 header first (Dovecot `haproxy = yes`, trusted 198.18.1.0/24) |
//!
//! Users: [`Users`] lists `local@domain` and password; their domains are the domains the MTA
//! accepts (Postfix virtual mailbox domains, OpenSMTPD `rcpt-to` table, Exim `local_domains`
//! and a mailbox lookup), unknown recipients
//! get 550 at RCPT, and Dovecot's passwd-file holds the same pairs (POP3 and SMTP AUTH log
//! in with the full address). Every mailbox belongs to the system user `mail`.
//!
//! ```no_run
//! use robustifier_lab::{Lab, Plan, mail::{MailHost, Make, Users}};
//! let mut lab = Lab::up("rbtdoc", Plan { frontends: 1, backends: 2 })?;
//! let users = Users::lab_default();
//! let be1 = MailHost::start(&mut lab, 0, Make::Postfix, &users)?;
//! let be2 = MailHost::start(&mut lab, 1, Make::OpenSmtpd, &users)?;
//! // ... relay to be1.smtp_addr() with XCLIENT, to be2's 10025 with PROXY v2:
//! assert_eq!(be2.smtp_identity().1, robustifier_lab::mail::ClientIdentity::ProxyV2);
//! let delivered: Vec<Vec<u8>> = be1.wait_for_messages("alice@example.test", 1)?;
//! be2.stop(&mut lab); // or leave it to lab.down()
//! lab.down()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod clients;
pub mod destinations;
pub mod dovecot;
pub mod exim;
pub mod opensmtpd;
pub mod postfix;
pub mod proxy_v2;
pub mod tls;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Gid, Pid, Uid},
};

use crate::{Daemon, Lab, Netns};

pub const PORT_SMTP: u16 = 25;
pub const PORT_SMTP_PROXY: u16 = 10025;
pub const PORT_SUBMISSION: u16 = 587;
pub const PORT_POP3: u16 = 110;
pub const PORT_POP3S: u16 = 995;
pub const PORT_POP3_PROXY: u16 = 10110;

/// Networks whose hosts may send XCLIENT (Postfix) and PROXY headers: the back-end segment,
/// where the front-ends' inner addresses are.
pub const TRUSTED_V4: &str = "198.18.1.0/24";
pub const TRUSTED_V6: &str = "2001:db8:0:2::/64";

/// DNS suffix of the lab's mail hosts (`be1.robustifier.test`); nothing resolves it, it
/// names hosts in greetings, Received headers and certificates.
pub const HOST_DOMAIN: &str = "robustifier.test";

/// How long a server may take to start answering on a loaded machine before we give up.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Which MTA runs on a back-end host. Dovecot serves POP3 on every host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Make {
    /// Debian's Postfix 3.7, a private instance (`master -c DIR`).
    Postfix,
    /// Debian's OpenSMTPD 6.8, unpacked privately by `cargo xtask setup`, in its own mount
    /// namespace so its compiled-in spool and control socket are its own. No TLS and no AUTH
    /// (its TLS is broken against Debian 12's OpenSSL 3, see [`opensmtpd`]).
    OpenSmtpd,
    /// Debian's Exim 4.96 (exim4-daemon-light), unpacked privately, in its own mount
    /// namespace; STARTTLS and AUTH, but neither XCLIENT nor PROXY (see [`exim`]).
    Exim,
}

/// How a front-end passes the real client address to a back-end's SMTP service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIdentity {
    /// Postfix XCLIENT after EHLO, on port 25.
    Xclient,
    /// A PROXY v2 header before the greeting, on port 10025.
    ProxyV2,
    /// No way: the back-end sees the front-end's address.
    None,
}

impl Make {
    /// The MTA's log files.
    pub fn logs(self, layout: &Layout) -> Vec<PathBuf> {
        match self {
            Make::Postfix => postfix::logs(layout),
            Make::OpenSmtpd => opensmtpd::logs(layout),
            Make::Exim => exim::logs(layout),
        }
    }

    /// Whether the MTA offers STARTTLS on its SMTP ports.
    pub fn starttls(self) -> bool {
        matches!(self, Make::Postfix | Make::Exim)
    }

    /// Whether the host has a submission port (587) with SMTP AUTH.
    pub fn submission(self) -> bool {
        matches!(self, Make::Postfix | Make::Exim)
    }

    /// What the proxy should use for this make: XCLIENT where the MTA has it (Postfix),
    /// PROXY v2 otherwise (OpenSMTPD), nothing for Exim. Postfix takes PROXY v2 on 10025 too.
    pub fn client_identity(self) -> ClientIdentity {
        match self {
            Make::Postfix => ClientIdentity::Xclient,
            Make::OpenSmtpd => ClientIdentity::ProxyV2,
            Make::Exim => ClientIdentity::None,
        }
    }

    /// Whether the host has the PROXY v2 SMTP port (10025).
    pub fn proxy_v2(self) -> bool {
        matches!(self, Make::Postfix | Make::OpenSmtpd)
    }
}

/// A mailbox: `local@domain` with its password (POP3 login and SMTP AUTH use the full
/// address as the user name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub address: String,
    pub password: String,
}

impl User {
    pub fn local(&self) -> &str {
        self.address.split_once('@').map_or("", |(l, _)| l)
    }
    pub fn domain(&self) -> &str {
        self.address.split_once('@').map_or("", |(_, d)| d)
    }
}

/// The mailboxes of a back-end; their domains are the domains the MTA accepts mail for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    list: Vec<User>,
    /// Off by default; see [`Users::relaying`].
    relay: Vec<(String, SocketAddr)>,
    /// Off by default; see [`Users::tempfailing`].
    tempfail: Vec<String>,
}

impl Users {
    pub fn new() -> Users {
        Users::default()
    }

    /// Adds `address` (lower case `local@domain`, no spaces or colons) with `password`.
    pub fn with(mut self, address: &str, password: &str) -> Users {
        self.list.push(User {
            address: address.to_owned(),
            password: password.to_owned(),
        });
        self
    }

    /// The MTA also accepts mail for `domain` (lower case), from any client, and relays it
    /// to `to` only (Postfix: `relay_domains` and a transport map; Exim: a `manualroute`
    /// router; OpenSMTPD: a `relay` action): with nothing listening there it defers it, so
    /// it piles up in the queue. Called once per relayed domain.
    pub fn relaying(mut self, domain: &str, to: SocketAddr) -> Users {
        self.relay.retain(|(d, _)| d != domain);
        self.relay.push((domain.to_owned(), to));
        self
    }

    /// The first domain relayed and where to, if [`Users::relaying`] set one.
    pub fn relay(&self) -> Option<(&str, SocketAddr)> {
        self.relays().next()
    }

    /// Every domain relayed and where to, in the order [`Users::relaying`] added them.
    pub fn relays(&self) -> impl Iterator<Item = (&str, SocketAddr)> {
        self.relay.iter().map(|(d, a)| (d.as_str(), *a))
    }

    /// Postfix answers `451 4.7.1` to every RCPT for `domain` (an access map), so that its
    /// senders defer that mail with a reason; [`Users::without_tempfail`] undoes it. The
    /// other makes ignore it.
    pub fn tempfailing(mut self, domain: &str) -> Users {
        if !self.tempfail.iter().any(|d| d == domain) {
            self.tempfail.push(domain.to_owned());
        }
        self
    }

    /// These users with no domain tempfailed.
    pub fn without_tempfail(mut self) -> Users {
        self.tempfail.clear();
        self
    }

    /// The domains [`Users::tempfailing`] named.
    pub fn tempfails(&self) -> &[String] {
        &self.tempfail
    }

    /// alice and bob at example.test, carol at example.net.
    pub fn lab_default() -> Users {
        Users::new()
            .with("alice@example.test", "alice-secret")
            .with("bob@example.test", "bob-secret")
            .with("carol@example.net", "carol-secret")
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.list.iter()
    }

    pub fn get(&self, address: &str) -> Option<&User> {
        self.list.iter().find(|u| u.address == address)
    }

    /// The distinct domains, in order of first appearance.
    pub fn domains(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for u in &self.list {
            if !out.iter().any(|d| d == u.domain()) {
                out.push(u.domain().to_owned());
            }
        }
        out
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.list.is_empty(), "a mail host needs at least one user");
        for u in &self.list {
            let (local, domain) = (u.local(), u.domain());
            let ok_part = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-+".contains(c))
            };
            ensure!(
                ok_part(local) && ok_part(domain) && domain.contains('.'),
                "user {:?}: expected a lower-case local@domain",
                u.address
            );
            ensure!(
                !u.password.is_empty()
                    && !u
                        .password
                        .chars()
                        .any(|c| c.is_whitespace() || c == ':' || c.is_control()),
                "user {:?}: password must be non-empty, without spaces or colons",
                u.address
            );
        }
        Ok(())
    }
}

/// Where a mail host lives on disk and on the network; shared by the server modules.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Host name in the lab (`be1`).
    pub host: String,
    pub fqdn: String,
    /// A name unique to this lab and host (Dovecot's instance name).
    pub instance: String,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// `<log_dir>/mail/<host>`.
    pub dir: PathBuf,
    /// `<dir>/mail`: `<domain>/<user>/Maildir/` below it.
    pub mail_root: PathBuf,
    pub tls: tls::HostCert,
    /// Dovecot's authentication socket for Postfix SASL.
    pub auth_socket: PathBuf,
    /// The uid and gid that own every mailbox (`mail`).
    pub mail_uid: Uid,
    pub mail_gid: Gid,
}

impl Layout {
    pub fn maildir(&self, address: &str) -> PathBuf {
        let (local, domain) = address.split_once('@').unwrap_or((address, ""));
        self.mail_root.join(domain).join(local).join("Maildir")
    }
}

/// A back-end host running real mail servers. The processes belong to the [`Lab`]
/// (`Lab::down` ends them); this value is the handle to their addresses, mailboxes and logs.
#[derive(Debug)]
pub struct MailHost {
    pub index: usize,
    pub make: Make,
    pub users: Users,
    pub layout: Layout,
    mta: Pid,
    pop: Pid,
    logs: Vec<PathBuf>,
}

impl MailHost {
    /// Starts `make` and Dovecot on back-end `backend` (0 = be1) with `users`, and waits until
    /// every port answers. Calling it again for the same host after [`MailHost::stop`]
    /// starts the servers again on the same mailboxes and spool.
    pub fn start(lab: &mut Lab, backend: usize, make: Make, users: &Users) -> anyhow::Result<Self> {
        users.validate()?;
        let host = lab
            .backends
            .get(backend)
            .with_context(|| format!("the lab has no back-end {backend}"))?;
        let (name, ns, v4, v6) = (host.name.clone(), host.ns.clone(), host.v4, host.v6);
        let mail = nix::unistd::User::from_name("mail")?
            .context("system user `mail` missing (Debian's base-passwd has it)")?;
        let dir = lab.log_dir.join("mail").join(&name);
        let fqdn = format!("{name}.{HOST_DOMAIN}");
        let tls = tls::host_cert(
            &lab.log_dir,
            &name,
            &fqdn,
            &[IpAddr::V4(v4), IpAddr::V6(v6)],
        )?;
        let layout = Layout {
            instance: format!("{}-{name}", lab.prefix),
            host: name,
            fqdn,
            ns,
            v4,
            v6,
            mail_root: dir.join("mail"),
            auth_socket: dir.join("dovecot").join("run").join(dovecot::AUTH_SOCKET),
            dir,
            tls,
            mail_uid: mail.uid,
            mail_gid: mail.gid,
        };
        make_mailboxes(&layout, users)?;

        let pop = dovecot::start(lab, &layout, users)?;
        let mta = match make {
            Make::Postfix => postfix::start(lab, &layout, users),
            Make::OpenSmtpd => opensmtpd::start(lab, &layout, users),
            Make::Exim => exim::start(lab, &layout, users),
        };
        let mta = match mta {
            Ok(pid) => pid,
            Err(e) => {
                end_daemon(lab, pop, true);
                return Err(e);
            }
        };
        let mut logs = make.logs(&layout);
        logs.extend(dovecot::logs(&layout));
        let host = MailHost {
            index: backend,
            make,
            users: users.clone(),
            layout,
            mta,
            pop,
            logs,
        };
        if let Err(e) = host.wait_ready(lab) {
            host.stop(lab);
            return Err(e.context(format!("mail host {} did not come up", host.layout.host)));
        }
        Ok(host)
    }

    fn wait_ready(&self, lab: &mut Lab) -> anyhow::Result<()> {
        let logs = &self.logs;
        let mut probes = vec![
            (self.pop, PORT_POP3, Probe::Greeting("+OK")),
            (self.pop, PORT_POP3S, Probe::Connect),
            (self.pop, PORT_POP3_PROXY, Probe::ProxyLocal("+OK")),
            (self.mta, PORT_SMTP, Probe::Greeting("220 ")),
        ];
        if self.make.proxy_v2() {
            probes.push((self.mta, PORT_SMTP_PROXY, Probe::ProxyLocal("220 ")));
        }
        if self.make.submission() {
            probes.push((self.mta, PORT_SUBMISSION, Probe::Greeting("220 ")));
        }
        for (pid, port, probe) in probes {
            let addr = SocketAddr::new(IpAddr::V4(self.layout.v4), port);
            wait_service(lab, pid, &self.layout.ns, addr, probe, logs)?;
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.layout.host
    }
    pub fn v4(&self) -> Ipv4Addr {
        self.layout.v4
    }
    pub fn v6(&self) -> Ipv6Addr {
        self.layout.v6
    }
    fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.layout.v4), port)
    }
    /// SMTP (port 25); XCLIENT from the front-ends on Postfix.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.at(PORT_SMTP)
    }
    /// SMTP after a PROXY v2 header (port 10025), where the make has it.
    pub fn smtp_proxy_addr(&self) -> Option<SocketAddr> {
        self.make.proxy_v2().then(|| self.at(PORT_SMTP_PROXY))
    }
    /// Submission with AUTH (port 587), where the make has it.
    pub fn submission_addr(&self) -> Option<SocketAddr> {
        self.make.submission().then(|| self.at(PORT_SUBMISSION))
    }
    /// POP3 with STLS (port 110).
    pub fn pop3_addr(&self) -> SocketAddr {
        self.at(PORT_POP3)
    }
    /// POP3 over TLS (port 995).
    pub fn pop3s_addr(&self) -> SocketAddr {
        self.at(PORT_POP3S)
    }
    /// POP3 after a PROXY v2 header (port 10110).
    pub fn pop3_proxy_addr(&self) -> SocketAddr {
        self.at(PORT_POP3_PROXY)
    }
    /// The address and the way a front-end should tell this host the client's address.
    pub fn smtp_identity(&self) -> (SocketAddr, ClientIdentity) {
        match self.make.client_identity() {
            ClientIdentity::ProxyV2 => (self.at(PORT_SMTP_PROXY), ClientIdentity::ProxyV2),
            other => (self.smtp_addr(), other),
        }
    }
    /// The lab CA certificate the host's TLS certificate chains to.
    pub fn ca_file(&self) -> &Path {
        &self.layout.tls.ca
    }
    /// Root of the mailboxes: `<root>/<domain>/<user>/Maildir/`.
    pub fn mail_root(&self) -> &Path {
        &self.layout.mail_root
    }
    pub fn maildir(&self, address: &str) -> PathBuf {
        self.layout.maildir(address)
    }

    /// Files of the messages delivered to `address` (new/ and cur/), oldest first.
    pub fn message_files(&self, address: &str) -> Vec<PathBuf> {
        let dir = self.maildir(address);
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| {
                let mtime = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (mtime, e.path())
            })
            .collect();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }

    /// The raw bytes of the messages delivered to `address`, oldest first.
    pub fn messages(&self, address: &str) -> Vec<Vec<u8>> {
        self.message_files(address)
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .collect()
    }

    /// Waits until `address` holds at least `count` messages (delivery follows the SMTP
    /// reply asynchronously) and returns them.
    pub fn wait_for_messages(&self, address: &str, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let got = self.messages(address);
            if got.len() >= count {
                return Ok(got);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {address} has {} messages, expected {count}; logs:\n{}",
                    self.layout.host,
                    got.len(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the host's servers logged: the MTA's log first, then Dovecot's.
    pub fn log_text(&self) -> String {
        let mut out = String::new();
        for p in &self.logs {
            let text = std::fs::read(p).unwrap_or_default();
            out.push_str(&format!("== {} ==\n", p.display()));
            out.push_str(&String::from_utf8_lossy(&text));
        }
        out
    }

    /// The MTA's log only.
    pub fn mta_log_text(&self) -> String {
        self.make
            .logs(&self.layout)
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned())
            .collect()
    }

    /// Dovecot's log only.
    pub fn pop3_log_text(&self) -> String {
        let log = dovecot::log(&self.layout);
        String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned()
    }

    /// Dovecot's log once it holds `needle`, or as it is after `timeout`. Dovecot's
    /// processes hand their lines to its log process, which writes them a little after
    /// the session they describe has ended, so a test reading the log right after a
    /// session must wait for the line instead of reading once.
    pub fn pop3_log_with(&self, needle: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let text = self.pop3_log_text();
            if text.contains(needle) || std::time::Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Process ids of the host's processes still alive (not zombies): the MTA's and
    /// Dovecot's process groups. Empty after [`MailHost::stop`] or `Lab::down`.
    pub fn processes(&self) -> Vec<i32> {
        let mut out = group_members(self.mta);
        out.extend(group_members(self.pop));
        out
    }

    /// Stops the MTA only (SMTP ports close; POP3 stays): a back-end failing for SMTP.
    pub fn stop_smtp(&self, lab: &mut Lab) {
        end_daemon(lab, self.mta, true);
    }

    /// Crashes the MTA: `signal` (SIGKILL for a crash) to its whole process group at once,
    /// so no process of it gets to flush or clean up; then reaps it. The spool stays as the
    /// crash left it, for [`MailHost::restart_smtp`].
    pub fn kill_smtp(&self, lab: &mut Lab, signal: Signal) {
        let _ = kill(Pid::from_raw(-self.mta.as_raw()), signal);
        end_daemon(lab, self.mta, true);
    }

    /// Starts the MTA again on the same configuration, spool and mailboxes after
    /// [`MailHost::stop_smtp`] or [`MailHost::kill_smtp`], and waits until every port of the
    /// host answers (Dovecot's still run).
    pub fn restart_smtp(&mut self, lab: &mut Lab) -> anyhow::Result<()> {
        let users = self.users.clone();
        self.mta = match self.make {
            Make::Postfix => postfix::start(lab, &self.layout, &users),
            Make::OpenSmtpd => opensmtpd::start(lab, &self.layout, &users),
            Make::Exim => exim::start(lab, &self.layout, &users),
        }?;
        self.wait_ready(lab)
            .with_context(|| format!("{} did not come back", self.layout.host))
    }

    /// Asks the MTA to retry its deferred mail now, ignoring retry times: Postfix
    /// `postqueue -f`, Exim `exim -qff`, OpenSMTPD `smtpctl schedule all` (the last two
    /// through the stand-ins that reach the private instance).
    pub fn flush_queue(&self) -> anyhow::Result<()> {
        let bin = self.layout.dir.join("bin");
        match self.make {
            Make::Postfix => {
                run_checked(
                    self.layout
                        .ns
                        .command("postqueue")
                        .arg("-c")
                        .arg(postfix::config_dir(&self.layout))
                        .arg("-f"),
                    "postqueue -f",
                )?;
            }
            Make::Exim => {
                std::fs::create_dir_all(&bin)?;
                exim::command_wrapper(&self.layout, &bin)?;
                run_checked(
                    self.layout.ns.command(bin.join("exim")).arg("-qff"),
                    "exim -qff",
                )?;
            }
            Make::OpenSmtpd => {
                std::fs::create_dir_all(&bin)?;
                opensmtpd::command_wrapper(&self.layout, &bin)?;
                run_checked(
                    self.layout
                        .ns
                        .command(bin.join("smtpctl"))
                        .args(["schedule", "all"]),
                    "smtpctl schedule all",
                )?;
            }
        }
        Ok(())
    }

    /// Rewrites the MTA's configuration for `users` and has it read it again, without a
    /// restart (Postfix only: `postfix reload`); the host's users become `users`.
    pub fn reconfigure(&mut self, users: &Users) -> anyhow::Result<()> {
        users.validate()?;
        anyhow::ensure!(
            self.make == Make::Postfix,
            "{}: only Postfix is reconfigured live",
            self.layout.host
        );
        postfix::reload(&self.layout, users)?;
        self.users = users.clone();
        Ok(())
    }

    /// Stops Dovecot only (POP3 and SASL go away).
    pub fn stop_pop3(&self, lab: &mut Lab) {
        end_daemon(lab, self.pop, true);
    }

    /// Stops both servers and waits until none of their processes is left.
    pub fn stop(&self, lab: &mut Lab) {
        self.stop_smtp(lab);
        self.stop_pop3(lab);
    }
}

/// Creates the Maildirs of `users` (owned by `mail`), so Dovecot finds them before the first
/// delivery.
fn make_mailboxes(layout: &Layout, users: &Users) -> anyhow::Result<()> {
    std::fs::create_dir_all(&layout.mail_root)?;
    chown(&layout.mail_root, layout)?;
    for u in users.iter() {
        let domain = layout.mail_root.join(u.domain());
        let user = domain.join(u.local());
        let maildir = user.join("Maildir");
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(maildir.join(sub))
                .with_context(|| format!("creating {}", maildir.display()))?;
        }
        for d in [&domain, &user, &maildir] {
            chown(d, layout)?;
        }
        for sub in ["tmp", "new", "cur"] {
            let d = maildir.join(sub);
            chown(&d, layout)?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

fn chown(path: &Path, layout: &Layout) -> anyhow::Result<()> {
    std::os::unix::fs::chown(
        path,
        Some(layout.mail_uid.as_raw()),
        Some(layout.mail_gid.as_raw()),
    )
    .with_context(|| format!("chown mail {}", path.display()))
}

/// Writes `contents` to `path`, creating its directory.
pub(crate) fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Runs `cmd` to completion; on failure the error names it and carries its output.
pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what}: {cmd:?} failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

/// Starts `cmd` as a daemon of the lab, logging to `log`; returns its pid.
pub(crate) fn spawn_daemon(
    lab: &mut Lab,
    name: &str,
    cmd: Command,
    log: PathBuf,
) -> anyhow::Result<Pid> {
    let daemon = Daemon::spawn(name, cmd, log)?;
    let pid = daemon.pid();
    lab.daemons().push(daemon);
    Ok(pid)
}

/// Ends the lab daemon `pid` (SIGTERM, then SIGKILL after its grace time); with `group`,
/// also what is left of its process group, and waits until the group is empty.
pub(crate) fn end_daemon(lab: &mut Lab, pid: Pid, group: bool) {
    let daemons = lab.daemons();
    if let Some(i) = daemons.iter().position(|d| d.pid() == pid) {
        let mut d = daemons.remove(i);
        let _ = d.stop();
    }
    if group {
        // Children get SIGTERM from their master; whatever outlives it gets SIGKILL.
        let wait_empty = |limit: Duration| {
            let deadline = Instant::now() + limit;
            while !group_members(pid).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        wait_empty(Duration::from_secs(10));
        if !group_members(pid).is_empty() {
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            wait_empty(Duration::from_secs(10));
        }
    }
}

/// Live (non-zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: Pid) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid pgrp ...; comm may hold spaces, so split after ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
            state != Some("Z") && pgrp == Some(pgid.as_raw())
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Probe {
    /// Connect only.
    Connect,
    /// Connect and expect a greeting starting with this.
    Greeting(&'static str),
    /// Send a PROXY v2 LOCAL header and expect a greeting starting with this.
    ProxyLocal(&'static str),
}

fn probe_once(addr: SocketAddr, probe: Probe) -> Result<(), String> {
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let expect = match probe {
        Probe::Connect => return Ok(()),
        Probe::Greeting(g) => g,
        Probe::ProxyLocal(g) => {
            (&stream)
                .write_all(&proxy_v2::local())
                .map_err(|e| e.to_string())?;
            g
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading the greeting: {e}"))?;
    if !line.starts_with(expect) {
        return Err(format!(
            "greeting {:?}, expected {expect:?}",
            line.trim_end()
        ));
    }
    let _ = (&stream).write_all(b"QUIT\r\n");
    Ok(())
}

/// Polls `addr` inside `ns` until `probe` succeeds; fails early when daemon `pid` exits.
pub(crate) fn wait_service(
    lab: &mut Lab,
    pid: Pid,
    ns: &Netns,
    addr: SocketAddr,
    probe: Probe,
    logs: &[PathBuf],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let log_tail = |logs: &[PathBuf]| -> String {
        logs.iter()
            .map(|p| {
                let t = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
                let tail: Vec<&str> = t.lines().rev().take(30).collect();
                format!(
                    "== {} ==\n{}\n",
                    p.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    };
    loop {
        if let Some(d) = lab.daemons().iter_mut().find(|d| d.pid() == pid) {
            if let Some(status) = d.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before {addr} answered:\n{}\n{}",
                    d.name,
                    d.log_text(),
                    log_tail(logs)
                );
            }
        } else {
            bail!("no lab process {pid} serves {addr}");
        }
        let last = ns.enter(move || probe_once(addr, probe))?;
        match last {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "{addr} not ready within {READY_TIMEOUT:?}: {e}\n{}",
                    log_tail(logs)
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Starts Postfix's `smtp-sink` on lab host `host` (by name: `be1`, `fea`, ...) at its
/// primary address and `port`, with extra `args` (see smtp-sink(1): `-R dir` to dump mail,
/// `-q cmd` / `-Q cmd` to reject, `-w n` to delay the greeting, ...; it runs as `postfix`
/// unless `args` has `-u`, so a `-R` directory must be writable by that user). A faulty or slow
/// back-end for fault-injection tests; it ends with the lab. Returns the listening address.
pub fn smtp_sink(
    lab: &mut Lab,
    host: &str,
    port: u16,
    args: &[&str],
) -> anyhow::Result<SocketAddr> {
    let h = lab
        .backends
        .iter()
        .chain(lab.frontends.iter())
        .chain(std::iter::once(&lab.client))
        .find(|h| h.name == host)
        .with_context(|| format!("the lab has no host {host:?}"))?;
    let addr = SocketAddr::new(IpAddr::V4(h.v4), port);
    let ns = h.ns.clone();
    let mut cmd = ns.command("/usr/sbin/smtp-sink");
    if !args.contains(&"-u") {
        // Run as root, smtp-sink insists on a user to switch to.
        cmd.args(["-u", "postfix"]);
    }
    cmd.args(args).arg(addr.to_string()).arg("64");
    let log = lab.log_dir.join(format!("smtp-sink-{host}-{port}.log"));
    let pid = spawn_daemon(
        lab,
        &format!("smtp-sink on {host}:{port}"),
        cmd,
        log.clone(),
    )?;
    wait_service(lab, pid, &ns, addr, Probe::Connect, &[log])?;
    Ok(addr)
}
