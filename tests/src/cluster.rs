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
    mail::{
        MailHost, Make, PORT_POP3_PROXY, PORT_SMTP, PORT_SMTP_PROXY, PORT_SUBMISSION, Users, tls,
    },
    topology::{VIP_POP, VIP_POP_V6, VIP_SMTP, VIP_SMTP_V6, internal_v4},
};

/// Port of the `robustifier agent` on every back-end.
pub const AGENT_PORT: u16 = 7025;

/// The agent-fed thresholds of the lab's SMTP pools. The lab's back-ends share the host's
/// kernel and disk, so each agent reports the whole machine's load average and disk use: on
/// a busy build machine with a well-filled disk those pass the defaults (run queue 8, disk
/// 90 %) times regular mail's share, and every regular recipient would be deflected before
/// any burst. Here session limits do the deflecting.
const LAB_THRESHOLDS: &str = "run_queue = 64\ndisk_percent = 100";

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
        let mut lab = Lab::up(
            prefix,
            Plan {
                frontends,
                backends: BACKENDS.len(),
            },
        )?;
        let mut hosts = Vec::new();
        for (i, (make, users)) in BACKENDS.iter().enumerate() {
            let users = users.iter().fold(Users::new(), |u, (a, p)| u.with(a, p));
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
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.cert.ca.clone()
    }

    /// Adds TOML (e.g. `[[vrrp]]` sections) to front-end `i`'s configuration.
    pub fn set_extra(&mut self, i: usize, toml: &str) {
        self.extra[i] = toml.to_owned();
    }

    /// Front-end `i`'s configuration.
    pub fn frontend_config(&self, i: usize) -> String {
        let fe = &self.lab.frontends[i];
        let be = |j: u8| internal_v4(11 + j);
        let dir = self.lab.log_dir.display();
        format!(
            r#"[frontend]
name = "{name}"
interface = "pub0"
pin_dir = "{pin}"

[tls]
certificate = "{cert}"
key = "{key}"

[[service]]
name = "smtp"
protocol = "smtp"
port = 25
hostname = "mx-{name}.robustifier.test"
vips = ["{VIP_SMTP}", "{VIP_SMTP_V6}"]
tls = "starttls"
routes = "{dir}/smtp.map"

[[service]]
name = "smtps"
protocol = "smtp"
port = 465
hostname = "mx-{name}.robustifier.test"
vips = ["{VIP_SMTP}", "{VIP_SMTP_V6}"]
tls = "implicit"
routes = "{dir}/smtp.map"

[[service]]
name = "submission"
protocol = "smtp"
port = {PORT_SUBMISSION}
hostname = "mx-{name}.robustifier.test"
vips = ["{VIP_SMTP}", "{VIP_SMTP_V6}"]
tls = "starttls"
auth = true
routes = "{dir}/submission.map"

[[service]]
name = "pop3"
protocol = "pop3"
port = 110
hostname = "pop-{name}.robustifier.test"
vips = ["{VIP_POP}", "{VIP_POP_V6}"]
tls = "starttls"
routes = "{dir}/pop.map"

[[service]]
name = "pop3s"
protocol = "pop3"
port = 995
hostname = "pop-{name}.robustifier.test"
vips = ["{VIP_POP}", "{VIP_POP_V6}"]
tls = "implicit"
routes = "{dir}/pop.map"

# be1's leg goes over STARTTLS, its certificate checked against the lab CA.
[[pool]]
name = "be1"
identity = "xclient"
tls = "starttls"
ca = "{ca}"
server_name = "be1.robustifier.test"
backend = [{{ name = "be1", address = "{b1}:{PORT_SMTP}", agent = "{b1}:{AGENT_PORT}" }}]
agent_key_file = "{agent_key}"
[pool.health]
interval_ms = 1000
agent_interval_ms = 500
{lab_thresholds}

[[pool]]
name = "be2"
identity = "xclient"
backend = [{{ name = "be2", address = "{b2}:{PORT_SMTP}", agent = "{b2}:{AGENT_PORT}" }}]
agent_key_file = "{agent_key}"
[pool.health]
interval_ms = 1000
agent_interval_ms = 500
[pool.thresholds]
# A small back-end: four sessions at once from this front-end.
sessions = 4
{LAB_THRESHOLDS}

[[pool]]
name = "be3"
identity = "proxy"
backend = [{{ name = "be3", address = "{b3}:{PORT_SMTP_PROXY}", agent = "{b3}:{AGENT_PORT}" }}]
agent_key_file = "{agent_key}"
[pool.health]
interval_ms = 1000
agent_interval_ms = 500
{lab_thresholds}

[[pool]]
name = "sub-be1"
identity = "none"
backend = [{{ name = "be1-submission", address = "{b1}:{PORT_SUBMISSION}" }}]

[[pool]]
name = "sub-be2"
identity = "none"
backend = [{{ name = "be2-submission", address = "{b2}:{PORT_SUBMISSION}" }}]

[[pool]]
name = "pop-be1"
identity = "proxy"
backend = [{{ name = "be1-pop3", address = "{b1}:{PORT_POP3_PROXY}" }}]

[[pool]]
name = "pop-be2"
identity = "proxy"
backend = [{{ name = "be2-pop3", address = "{b2}:{PORT_POP3_PROXY}" }}]

[[pool]]
name = "pop-be3"
identity = "proxy"
backend = [{{ name = "be3-pop3", address = "{b3}:{PORT_POP3_PROXY}" }}]

# Under load, carol's mail is premium: served to the hard limits, and past them it waits
# for a session slot (well beyond a burst's length) instead of being deflected; everyone
# else may use three quarters of each threshold (3 of be2's 4 sessions; the host's disk
# use, which the agents report, stays under it on a build machine) and is deflected at
# once beyond it.
[[group]]
name = "premium"
share = 1.0
recipients = ["carol@example.net"]
wait_ms = 20000

[[group]]
name = "regular"
share = 0.75

{extra}
"#,
            name = fe.name,
            pin = self.lab.pin_dir(i).display(),
            cert = self.cert.cert.display(),
            key = self.cert.key.display(),
            ca = self.cert.ca.display(),
            b1 = be(0),
            b2 = be(1),
            b3 = be(2),
            extra = self.extra[i],
            agent_key = crate::agent_key_file(&self.lab.log_dir).display(),
            lab_thresholds = format!("[pool.thresholds]\n{LAB_THRESHOLDS}"),
        )
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
        let bin = crate::robustifier_bin();
        for (i, host) in self.hosts.iter().enumerate() {
            let listen = format!("{}:{AGENT_PORT}", internal_v4(11 + i as u8));
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
                bin.display().to_string(),
                "agent".into(),
                "--listen".into(),
                listen.clone(),
                "--key-file".into(),
                crate::agent_key_file(&self.lab.log_dir)
                    .display()
                    .to_string(),
                "--state-file".into(),
                state.display().to_string(),
                "--spool".into(),
                spool.display().to_string(),
                "--mta".into(),
            ];
            args.extend(mta);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let ns = self.lab.backends[i].ns.clone();
            self.lab.spawn(&ns, &format!("agent-be{}", i + 1), &argv)?;
            crate::wait_port(&ns, listen.parse()?)?;
        }
        Ok(())
    }

    /// The running `robustifier run` of front-end `i` (the last one started, if it has not
    /// exited), for signals: SIGHUP to reload, SIGKILL to crash it.
    pub fn frontend_daemon(&mut self, i: usize) -> Option<&mut crate::Daemon> {
        let name = format!("robustifier on {}", self.lab.frontends[i].name);
        self.lab
            .daemons()
            .iter_mut()
            .rev()
            .find(|d| d.name == name)
            .filter(|d| d.running())
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
