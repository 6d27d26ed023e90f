//! A whole mail cluster in the lab: real back-ends of mixed makes, front-ends running
//! Robustifier with routing maps, TLS and (optionally) VRRP for the virtual IPs. The
//! end-to-end tests and `cargo xtask demo` build the same cluster from here.
//!
//! | back-end | make | mailboxes | SMTP identity |
//! |---|---|---|---|
//! | be1 | Postfix | alice, bob @example.test | XCLIENT |
//! | be2 | Postfix | carol, dave @example.net | XCLIENT |
//! | be3 | OpenSMTPD | erin @example.org | PROXY v2 |
//!
//! Services on the VIPs: SMTP 25 (STARTTLS), 465 (implicit TLS), submission 587 (AUTH),
//! POP3 110 (STLS) and 995 (implicit TLS). Recipients and POP3 users are routed by domain.

use std::{net::IpAddr, path::PathBuf};

use crate::mail::postfix;

use anyhow::Context as _;

use crate::{
    Lab, Plan,
    frontend_config::{Backend, FrontendConfig, Pool, Service},
    mail::{
        MailHost, Make, PORT_POP3_PROXY, PORT_SMTP, PORT_SMTP_PROXY, PORT_SUBMISSION, Users, tls,
    },
    topology::{VIP_POP, VIP_POP_V6, VIP_SMTP, VIP_SMTP_V6, internal_v4},
};

/// Port of the `robustifier agent` on every back-end.
pub const AGENT_PORT: u16 = 7025;

/// Each back-end's make and mailboxes (address, password).
pub const BACKENDS: [(Make, &[(&str, &str)]); 3] = [
    (
        Make::Postfix,
        &[
            ("alice@example.test", "alice-pw"),
            ("bob@example.test", "bob-pw"),
        ],
    ),
    (
        Make::Postfix,
        &[
            ("carol@example.net", "carol-pw"),
            ("dave@example.net", "dave-pw"),
        ],
    ),
    (Make::OpenSmtpd, &[("erin@example.org", "erin-pw")]),
];

pub struct Cluster {
    pub lab: Lab,
    pub hosts: Vec<MailHost>,
    /// The front-ends' certificate (signed by the lab CA) and the CA clients trust.
    pub cert: tls::HostCert,
    /// Extra TOML per front-end (VRRP sections, ...), added to the generated config.
    extra: Vec<String>,
    /// Per SMTP pool (be1, be2, be3): back-ends after the pool's own, and threshold keys
    /// after the lab's, for tests that reshape a pool.
    pool_backends: [Vec<Backend>; 3],
    pool_thresholds: [String; 3],
    /// Set by [`Cluster::use_directories`]: `[[directory]]` sections, and the directory
    /// each kind of service routes by instead of its text map.
    directories: Option<Directories>,
}

/// `[[directory]]` TOML and the directory names the services use: SMTP recipients (the
/// services on 25 and 465), submission users (587), POP3 users (110 and 995).
#[derive(Debug, Clone)]
pub struct Directories {
    pub toml: String,
    pub smtp: String,
    pub submission: String,
    pub pop: String,
}

impl Cluster {
    /// For a privileged test named `tag`: a cluster with one front-end running and its
    /// virtual addresses up, or `None` (said loudly) where privileged tests may skip.
    pub fn one_frontend(tag: &str) -> Option<Cluster> {
        if !crate::privileged::check(tag) {
            return None;
        }
        let mut c = Cluster::up(&crate::unique_prefix(tag), 1).expect("cluster up");
        c.start_frontend(0).expect("front-end");
        c.add_vips(0).expect("virtual addresses");
        Some(c)
    }

    /// Builds the lab and starts the mail servers; front-ends start with [`Cluster::start_frontend`].
    pub fn up(prefix: &str, frontends: usize) -> anyhow::Result<Cluster> {
        Cluster::up_with_mailboxes(prefix, frontends, &[])
    }

    /// [`Cluster::up`], with further mailboxes `(back-end, address, password)`: the same
    /// address on two back-ends lets a test move a recipient from one to the other and see
    /// where its mail lands. The routing maps do not name their domains.
    pub fn up_with_mailboxes(
        prefix: &str,
        frontends: usize,
        extra: &[(usize, &str, &str)],
    ) -> anyhow::Result<Cluster> {
        let mut lab = Lab::up(
            prefix,
            Plan {
                frontends,
                backends: BACKENDS.len(),
            },
        )?;
        let mut hosts = Vec::new();
        for (i, (make, users)) in BACKENDS.iter().enumerate() {
            let users = users
                .iter()
                .copied()
                .chain(extra.iter().filter(|e| e.0 == i).map(|e| (e.1, e.2)))
                .fold(Users::new(), |u, (a, p)| u.with(a, p));
            hosts.push(
                MailHost::start(&mut lab, i, *make, &users)
                    .with_context(|| format!("mail host be{}", i + 1))?,
            );
        }
        let vips = [
            VIP_SMTP.into(),
            VIP_POP.into(),
            VIP_SMTP_V6.into(),
            VIP_POP_V6.into(),
        ];
        let cert = tls::host_cert(&lab.log_dir, "frontend", "mx.robustifier.test", &vips)?;
        readable_by_daemon(&cert.key)?;
        let dir = &lab.log_dir;
        std::fs::write(
            dir.join("smtp.map"),
            "# recipient domain -> pool\nexample.test be1\nexample.net be2\nexample.org be3\nnobody@example.test reject\n",
        )?;
        std::fs::write(
            dir.join("submission.map"),
            "# user's domain -> pool\nexample.test sub-be1\nexample.net sub-be2\n",
        )?;
        std::fs::write(
            dir.join("pop.map"),
            "# user's domain -> pool\nexample.test pop-be1\nexample.net pop-be2\nexample.org pop-be3\n",
        )?;
        Ok(Cluster {
            lab,
            hosts,
            cert,
            extra: vec![String::new(); frontends],
            pool_backends: Default::default(),
            pool_thresholds: Default::default(),
            directories: None,
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.cert.ca.clone()
    }

    /// Adds TOML (e.g. `[[vrrp]]` sections) to front-end `i`'s configuration.
    pub fn set_extra(&mut self, i: usize, toml: &str) {
        self.extra[i] = toml.to_owned();
    }

    /// The SMTP pool of back-end `j` (be1, be2, be3) in every front-end's configuration:
    /// `backends` after its own back-end, `thresholds` (one key a line, none of the keys
    /// the lab sets: `sessions` only for be1 and be3) after the lab's thresholds.
    pub fn set_pool_extra(&mut self, j: usize, backends: Vec<Backend>, thresholds: &str) {
        self.pool_backends[j] = backends;
        self.pool_thresholds[j] = thresholds.to_owned();
    }

    /// Routes every service by a directory instead of its text map (in the configuration
    /// [`Cluster::frontend_config`] writes from now on). The pools keep their names: be1,
    /// be2, be3 (SMTP), sub-be1, sub-be2 (submission), pop-be1, pop-be2, pop-be3 (POP3);
    /// back-end names: be1, be2, be3, be1-submission, be2-submission, be1-pop3, ...
    pub fn use_directories(&mut self, d: Directories) {
        self.directories = Some(d);
    }

    /// Issues a new certificate for the front-ends (same lab CA) under the file names
    /// `host`.pem and `host`.key, for `dns_name` and the VIPs, and puts it in the
    /// configuration [`Cluster::frontend_config`] writes from now on.
    pub fn new_certificate(&mut self, host: &str, dns_name: &str) -> anyhow::Result<()> {
        let vips = [
            VIP_SMTP.into(),
            VIP_POP.into(),
            VIP_SMTP_V6.into(),
            VIP_POP_V6.into(),
        ];
        let cert = tls::host_cert(&self.lab.log_dir, host, dns_name, &vips)?;
        readable_by_daemon(&cert.key)?;
        self.cert = cert;
        Ok(())
    }

    /// Front-end `i`'s configuration.
    pub fn frontend_config(&self, i: usize) -> String {
        let name = &self.lab.frontends[i].name;
        let dir = self.lab.log_dir.display();
        let smtp_vips = [VIP_SMTP.into(), VIP_SMTP_V6.into()];
        let pop_vips = [VIP_POP.into(), VIP_POP_V6.into()];
        let service = |svc: &str, protocol: &str, port: u16, tls: &str, map: &str| {
            let host = if protocol == "pop3" { "pop" } else { "mx" };
            Service::new(svc, protocol, port)
                .vips(if protocol == "pop3" {
                    &pop_vips
                } else {
                    &smtp_vips
                })
                .line(&format!("hostname = \"{host}-{name}.robustifier.test\""))
                .line(&format!("tls = \"{tls}\""))
                .line(&match &self.directories {
                    None => format!("routes = \"{dir}/{map}\""),
                    Some(d) => {
                        let name = match map {
                            "submission.map" => &d.submission,
                            "pop.map" => &d.pop,
                            _ => &d.smtp,
                        };
                        format!("directory = \"{name}\"")
                    }
                })
        };
        let agent_key = format!(
            "agent_key_file = \"{}\"",
            crate::agent_key_file(&self.lab.log_dir).display()
        );
        // An SMTP pool of one back-end whose agent the front-end polls.
        let smtp_pool = |j: u8, identity: &str, port: u16| {
            let be = internal_v4(11 + j);
            let name = format!("be{}", j + 1);
            Pool::new(&name, identity)
                .backend(
                    Backend::new(&name, format!("{be}:{port}")).agent(format!("{be}:{AGENT_PORT}")),
                )
                .backends(self.pool_backends[usize::from(j)].iter().cloned())
                .line(&agent_key)
                .health("interval_ms = 1000\nagent_interval_ms = 500")
        };
        // The host-wide run queue and disk use that the lab's agents report are left out
        // of the decision by the pool builder (`frontend_config`): session limits and
        // the test's own thresholds do the deflecting here.
        let thresholds = |j: usize, own: &str| {
            let extra = self.pool_thresholds[j].trim_end();
            [own, extra]
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let plain_pool = |pool: &str, identity: &str, backend: &str, j: u8, port: u16| {
            Pool::new(pool, identity).backend(Backend::new(
                backend,
                format!("{}:{port}", internal_v4(11 + j)),
            ))
        };
        FrontendConfig::new(name, &self.lab.pin_dir(i))
            .toml(&format!(
                "[tls]\ncertificate = \"{}\"\nkey = \"{}\"",
                self.cert.cert.display(),
                self.cert.key.display()
            ))
            .service(service("smtp", "smtp", 25, "starttls", "smtp.map"))
            .service(service("smtps", "smtp", 465, "implicit", "smtp.map"))
            .service(
                service("submission", "smtp", PORT_SUBMISSION, "starttls", "submission.map")
                    .line("auth = true"),
            )
            .service(service("pop3", "pop3", 110, "starttls", "pop.map"))
            .service(service("pop3s", "pop3", 995, "implicit", "pop.map"))
            // be1's leg goes over STARTTLS, its certificate checked against the lab CA.
            .pool(
                smtp_pool(0, "xclient", PORT_SMTP)
                    .line("tls = \"starttls\"")
                    .line(&format!("ca = \"{}\"", self.cert.ca.display()))
                    .line("server_name = \"be1.robustifier.test\"")
                    .thresholds(&thresholds(0, "")),
            )
            // A small back-end: four sessions at once from this front-end.
            .pool(
                smtp_pool(1, "xclient", PORT_SMTP)
                    .thresholds(&thresholds(1, "sessions = 4")),
            )
            .pool(smtp_pool(2, "proxy", PORT_SMTP_PROXY).thresholds(&thresholds(2, "")))
            .pool(plain_pool("sub-be1", "none", "be1-submission", 0, PORT_SUBMISSION))
            .pool(plain_pool("sub-be2", "none", "be2-submission", 1, PORT_SUBMISSION))
            .pool(plain_pool("pop-be1", "proxy", "be1-pop3", 0, PORT_POP3_PROXY))
            .pool(plain_pool("pop-be2", "proxy", "be2-pop3", 1, PORT_POP3_PROXY))
            .pool(plain_pool("pop-be3", "proxy", "be3-pop3", 2, PORT_POP3_PROXY))
            // Under load, carol's mail is premium: served to the hard limits, and past them
            // it waits for a session slot (well beyond a burst's length) instead of being
            // deflected; everyone else may use three quarters of each threshold (3 of be2's
            // 4 sessions; the host's disk use, which the agents report, stays under it on a
            // build machine) and is deflected at once beyond it.
            .toml(
                "[[group]]\nname = \"premium\"\nshare = 1.0\nrecipients = [\"carol@example.net\"]\nwait_ms = 20000\n\n[[group]]\nname = \"regular\"\nshare = 0.75",
            )
            .toml(&self.extra[i])
            .toml(self.directories.as_ref().map_or("", |d| d.toml.as_str()))
            .build()
    }

    /// Starts Robustifier on front-end `i`.
    pub fn start_frontend(&mut self, i: usize) -> anyhow::Result<()> {
        let cfg = self.frontend_config(i);
        self.lab.start_frontend(i, &cfg)?;
        Ok(())
    }

    /// Starts `robustifier agent` on every back-end: Postfix's own queue for the Postfix
    /// hosts, the spool directory for OpenSMTPD. Operators' requests go in
    /// [`Cluster::agent_state`].
    pub fn start_agents(&mut self) -> anyhow::Result<()> {
        for (i, host) in self.hosts.iter().enumerate() {
            let state = self.agent_state(i);
            std::fs::write(&state, "")?;
            // Postfix is asked for its queue; OpenSMTPD's queue is counted as files.
            let (spool, mta) = if host.make == Make::Postfix {
                (
                    host.layout.dir.clone(),
                    vec![
                        "postfix".to_owned(),
                        "--mta-config".into(),
                        postfix::config_dir(&host.layout).display().to_string(),
                    ],
                )
            } else {
                let queue = host.layout.dir.join("opensmtpd/spool/queue");
                (queue, vec!["spool".to_owned()])
            };
            let mut args: Vec<String> = vec![
                "--state-file".into(),
                state.display().to_string(),
                "--spool".into(),
                spool.display().to_string(),
                "--mta".into(),
            ];
            args.extend(mta);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::cli::start_agent(&mut self.lab, i, &format!("agent-be{}", i + 1), &argv)?;
        }
        Ok(())
    }

    /// The running `robustifier run` of front-end `i` (the last one started, if it has not
    /// exited), for signals: SIGHUP to reload, SIGKILL to crash it.
    pub fn frontend_daemon(&mut self, i: usize) -> Option<&mut crate::Daemon> {
        self.lab.frontend_daemon(i)
    }

    /// The operator's state file of back-end `i`'s agent (`drain=1`, `weight=N`).
    pub fn agent_state(&self, i: usize) -> PathBuf {
        self.lab.log_dir.join(format!("agent-be{}.state", i + 1))
    }

    /// Puts the four VIPs on front-end `i` by hand (when VRRP does not manage them).
    pub fn add_vips(&self, i: usize) -> anyhow::Result<()> {
        let ns = &self.lab.frontends[i].ns;
        for vip in [IpAddr::V4(VIP_SMTP), IpAddr::V4(VIP_POP)] {
            ns.ip(&["addr", "add", &format!("{vip}/32"), "dev", "pub0"])?;
        }
        for vip in [VIP_SMTP_V6, VIP_POP_V6] {
            ns.ip(&["addr", "add", &format!("{vip}/128"), "dev", "pub0", "nodad"])?;
        }
        Ok(())
    }

    /// The back-end that holds `address`'s mailbox.
    pub fn host_of(&self, address: &str) -> &MailHost {
        self.hosts
            .iter()
            .find(|h| h.users.get(address).is_some())
            .unwrap_or_else(|| panic!("no back-end has {address}"))
    }

    pub fn password(&self, address: &str) -> String {
        self.host_of(address)
            .users
            .get(address)
            .map(|u| u.password.clone())
            .unwrap_or_default()
    }
}

/// Gives the front-end daemon's group read access to `key`, as an operator would: the
/// daemon re-reads its configuration (which checks the key) and the certificate as its
/// unprivileged user after the start.
fn readable_by_daemon(key: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(group) = nix::unistd::Group::from_name("robustifier")? {
        nix::unistd::chown(key, None, Some(group.gid))?;
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o640))?;
    }
    Ok(())
}
