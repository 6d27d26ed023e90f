//! An outbound relay cluster in the lab, with somewhere to relay to: the fixture of the
//! queue tests and of the demo's "slow domain" step.
//!
//! ```text
//!   client ── VIP 198.18.0.25:25 ── fea: service "relay" (pool "mx")
//!   be1..beN   pool "mx": the relays (the makes asked for), each with an agent
//!   beN+1      pool "slowq": one Postfix relay with an agent, idle (where a slow
//!              domain's mail can be queued instead)
//!   beN+2      fast.example: a healthy destination (Postfix, maildirs)
//!   beN+3      slow.example: a destination answering 451 4.7.1 until recovered
//! ```
//!
//! Every relay accepts mail for both domains from anyone and relays each to its
//! destination only (transport map, manualroute router or relay action). No domain queue
//! is configured: slow.example's mail piles up on the "mx" relays, in their deferred
//! queues, with the destination's 451 as the reason.
//!
//! ```no_run
//! use robustifier_lab::{mail::Make, relay_lab::{RelayLab, SLOW}};
//! let Some(mut r) = RelayLab::privileged("doc", &[Make::Postfix, Make::Postfix]) else { return };
//! let ids = r.send(&[&r.slow.rcpt()], 3).unwrap();
//! let status = r.queue_status(SLOW).unwrap(); // `queue status --domain slow.example --json`
//! r.slow.recover().unwrap();
//! r.flush().unwrap();
//! r.slow.wait_for_ids(ids.len(), std::time::Duration::from_secs(120)).unwrap();
//! ```

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{Context as _, ensure};

use crate::{
    Lab, Plan,
    frontend_config::{Backend, FrontendConfig, Pool, Service},
    mail::{
        MailHost, Make, Users, clients,
        destinations::{Destination, Mode},
        exim, opensmtpd, postfix,
    },
    topology::{VIP_SMTP, internal_v4},
};

/// The healthy destination's domain.
pub const FAST: &str = "fast.example";
/// The tempfailing destination's domain.
pub const SLOW: &str = "slow.example";
/// The port of every relay's agent.
pub const AGENT_PORT: u16 = 7025;

/// The relay cluster, its destinations and its lab (which ends everything when dropped).
pub struct RelayLab {
    /// Pool "mx" first (as many as makes were asked for), then pool "slowq".
    pub relays: Vec<MailHost>,
    /// How many of [`RelayLab::relays`] are in pool "mx".
    pub mx: usize,
    pub fast: Destination,
    pub slow: Destination,
    /// Ends every process above when it goes down (or is dropped).
    pub lab: Lab,
    sent: AtomicUsize,
}

impl RelayLab {
    /// The lab plan for `mx` relays: them, one "slowq" relay, two destinations.
    pub fn plan(mx: usize) -> Plan {
        Plan::new(1, mx + 3)
    }

    /// A relay lab for a privileged test (`None` when its preconditions are missing, see
    /// [`crate::privileged_lab`]); a failure to build it fails the test.
    pub fn privileged(tag: &str, mx: &[Make]) -> Option<RelayLab> {
        let lab = crate::privileged_lab(tag, RelayLab::plan(mx.len()))?;
        Some(RelayLab::start(lab, mx).expect("relay lab"))
    }

    /// Starts the destinations, the relays (`mx` in pool "mx", one Postfix in "slowq") with
    /// their agents, and the front-end, in `lab` (built with [`RelayLab::plan`]).
    pub fn start(mut lab: Lab, mx: &[Make]) -> anyhow::Result<RelayLab> {
        ensure!(
            !mx.is_empty() && lab.backends.len() >= mx.len() + 3 && !lab.frontends.is_empty(),
            "a relay lab of {} relays needs RelayLab::plan({0})",
            mx.len()
        );
        let n = mx.len() + 1;
        let fast = Destination::start(&mut lab, n, FAST, Mode::Healthy)?;
        let slow = Destination::start(&mut lab, n + 1, SLOW, Mode::Tempfail)?;
        let users = Users::new()
            .with("postmaster@relay.example", "relay-pw")
            .relaying(FAST, fast.smtp_addr())
            .relaying(SLOW, slow.smtp_addr());
        let mut relays = Vec::new();
        for (i, make) in mx.iter().copied().chain([Make::Postfix]).enumerate() {
            let host = MailHost::start(&mut lab, i, make, &users)?;
            start_agent(&mut lab, i, &host)?;
            relays.push(host);
        }
        let mut r = RelayLab {
            relays,
            mx: mx.len(),
            fast,
            slow,
            lab,
            sent: AtomicUsize::new(0),
        };
        let cfg = r.frontend_config("");
        r.lab.start_frontend(0, &cfg)?;
        // No VRRP here: the SMTP VIP is put on the front-end by hand.
        r.lab.frontends[0]
            .ns
            .ip(&["addr", "add", &format!("{VIP_SMTP}/32"), "dev", "pub0"])?;
        Ok(r)
    }

    /// The relay's name in the front-end's configuration (`be1`, ...), by index.
    pub fn relay_name(&self, i: usize) -> String {
        format!("be{}", i + 1)
    }

    /// The front-end's configuration: service "relay" on the SMTP VIP to pool "mx", pool
    /// "slowq", agents with the lab's key, and `extra` TOML at the end (a `[[domain_queue]]`,
    /// say, for a reload).
    pub fn frontend_config(&self, extra: &str) -> String {
        let key = crate::agent_key_file(&self.lab.log_dir);
        let backend = |j: usize| {
            let at = internal_v4(11 + j as u8);
            Backend::new(&format!("be{}", j + 1), format!("{at}:25"))
                .agent(format!("{at}:{AGENT_PORT}"))
        };
        let pool = |name: &str, range: std::ops::Range<usize>| {
            Pool::new(name, "none")
                .line(&format!("agent_key_file = \"{}\"", key.display()))
                .backends(range.map(backend))
                .health("interval_ms = 500\ntimeout_ms = 3000\nagent_interval_ms = 500")
        };
        FrontendConfig::new("fea", &self.lab.pin_dir(0))
            .service(
                Service::new("relay", "smtp", 25)
                    .vips(&[VIP_SMTP.into()])
                    .line("pool = \"mx\""),
            )
            .pool(pool("mx", 0..self.mx))
            .pool(pool("slowq", self.mx..self.mx + 1))
            .toml(&format!(
                "[ha]\ncontrol_socket = \"{}\"",
                self.control_socket().display()
            ))
            .toml(extra)
            .build()
    }

    /// Where the front-end's configuration file is (rewrite it and SIGHUP to reload).
    pub fn config_path(&self) -> PathBuf {
        self.lab.log_dir.join("fea.toml")
    }

    pub fn control_socket(&self) -> PathBuf {
        crate::vrrp::control_socket(&self.lab, 0)
    }

    /// Sends `count` messages, each to every address of `to` in one transaction, through
    /// the SMTP VIP from the client; returns their Message-IDs (without `<>`), unique in
    /// this lab. Fails when a message is not accepted.
    pub fn send(&self, to: &[&str], count: usize) -> anyhow::Result<Vec<String>> {
        self.send_to(
            SocketAddr::new(VIP_SMTP.into(), 25),
            &self.lab.client.ns,
            to,
            count,
        )
    }

    /// [`RelayLab::send`] straight to relay `i`'s port 25, from the front-end's namespace
    /// (on the back-end segment), bypassing the proxy's choice of relay.
    pub fn send_via(&self, i: usize, to: &[&str], count: usize) -> anyhow::Result<Vec<String>> {
        let ns = self.lab.frontends[0].ns.clone();
        self.send_to(self.relays[i].smtp_addr(), &ns, to, count)
    }

    fn send_to(
        &self,
        server: SocketAddr,
        ns: &crate::Netns,
        to: &[&str],
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        ensure!(!to.is_empty(), "no recipient");
        let server = server.to_string();
        let rcpts = to.join(",");
        let mut ids = Vec::new();
        for _ in 0..count {
            let n = self.sent.fetch_add(1, Ordering::Relaxed);
            let tag = format!("{}-m{n}", self.lab.prefix);
            let data = clients::data_file(&self.lab.log_dir, &tag, &clients::message(&tag, to[0]));
            let out = clients::swaks(
                ns,
                "client.robustifier.test",
                &[
                    "--server",
                    &server,
                    "--from",
                    "sender@client.example.org",
                    "--to",
                    &rcpts,
                    "--data",
                    &data,
                ],
            );
            ensure!(
                out.status.success(),
                "message {tag} to {rcpts} via {server} not accepted:\n{}",
                clients::text(&out)
            );
            ids.push(format!("{tag}@client.example.org"));
        }
        Ok(ids)
    }

    /// `robustifier queue status --domain <domain> --json` of the front-end, parsed.
    pub fn queue_status(&self, domain: &str) -> anyhow::Result<serde_json::Value> {
        let out = crate::cli::run([
            "queue".as_ref(),
            "status".as_ref(),
            "--domain".as_ref(),
            domain.as_ref(),
            "--json".as_ref(),
            "--socket".as_ref(),
            self.control_socket().as_os_str(),
        ]);
        ensure!(
            out.status.success(),
            "queue status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("queue status --json")
    }

    /// `robustifier queue status` as the operator reads it (every domain, a table).
    pub fn queue_table(&self) -> anyhow::Result<String> {
        let socket = self.control_socket();
        let out = crate::cli::run([
            "queue".as_ref(),
            "status".as_ref(),
            "--socket".as_ref(),
            socket.as_os_str(),
        ]);
        ensure!(
            out.status.success(),
            "queue status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Has every relay retry its deferred mail now. An OpenSMTPD relay is restarted first:
    /// OpenSMTPD 6.8 takes `smtpctl schedule all` ("N envelopes scheduled") but its mta
    /// process keeps holding the route to a host that tempfailed every recipient, and
    /// tries again only when that route's delay ends.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        for r in &mut self.relays {
            if r.make == Make::OpenSmtpd {
                r.stop_smtp(&mut self.lab);
                r.restart_smtp(&mut self.lab)?;
            }
            r.flush_queue()
                .with_context(|| format!("flushing {}", r.name()))?;
        }
        Ok(())
    }

    /// Polls `check` every 500 ms until it gives `Some`, or fails after `within` with
    /// `what` and the last value it saw.
    pub fn eventually<T, D: std::fmt::Debug>(
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> anyhow::Result<Result<T, D>>,
    ) -> anyhow::Result<T> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match check()? {
                Ok(v) => return Ok(v),
                Err(last) if std::time::Instant::now() > deadline => {
                    anyhow::bail!("{what}: not within {within:?}; last: {last:#?}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

/// Starts `robustifier agent` on relay `i` for its make, with the lab's key, at
/// [`AGENT_PORT`]; Exim's and OpenSMTPD's commands reach their private instances through
/// the lab's stand-ins first on its PATH.
pub fn start_agent(lab: &mut Lab, i: usize, host: &MailHost) -> anyhow::Result<()> {
    let bin_dir = lab.log_dir.join(format!("agent-bin-{i}"));
    std::fs::create_dir_all(&bin_dir)?;
    let state_dir = lab.log_dir.join(format!("agent-state-{i}"));
    std::fs::create_dir_all(&state_dir)?;
    let mut args = vec![
        "--spool".to_owned(),
        host.layout.dir.display().to_string(),
        "--state-dir".to_owned(),
        state_dir.display().to_string(),
    ];
    match host.make {
        Make::Postfix => args.extend([
            "--mta".into(),
            "postfix".into(),
            "--mta-config".into(),
            postfix::config_dir(&host.layout).display().to_string(),
        ]),
        Make::Exim => {
            exim::command_wrapper(&host.layout, &bin_dir)?;
            args.extend(["--mta".into(), "exim".into()]);
        }
        Make::OpenSmtpd => {
            opensmtpd::command_wrapper(&host.layout, &bin_dir)?;
            args.extend(["--mta".into(), "opensmtpd".into()]);
        }
    }
    let listen = SocketAddr::new(host.v4().into(), AGENT_PORT);
    let bin = crate::robustifier_bin().display().to_string();
    let key = crate::agent_key_file(&lab.log_dir).display().to_string();
    let path = format!("PATH={}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir.display());
    let listen_s = listen.to_string();
    let mut argv = vec![
        "env",
        &path,
        &bin,
        "agent",
        "--listen",
        &listen_s,
        "--key-file",
        &key,
    ];
    argv.extend(args.iter().map(String::as_str));
    let ns = host.layout.ns.clone();
    lab.spawn(&ns, &format!("agent-{}", host.name()), &argv)?;
    crate::wait_port(&ns, listen)
}

/// The moves of queued mail, driven as the operator does: a reload, `queue move`,
/// `queue moves`, the alarms and events, and each relay's own queue listing. Replies are
/// JSON for the test to read with the proxy's types.
impl RelayLab {
    /// Rewrites the front-end's configuration with `extra` TOML at its end (see
    /// [`RelayLab::frontend_config`]) and applies it with `robustifier reload`; returns what
    /// the command printed. Fails when the front-end refuses it.
    pub fn reload(&self, extra: &str) -> anyhow::Result<String> {
        std::fs::write(self.config_path(), self.frontend_config(extra))?;
        let socket = self.control_socket();
        let out = crate::cli::run(["reload".as_ref(), "--socket".as_ref(), socket.as_os_str()]);
        ensure!(
            out.status.success(),
            "reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `robustifier queue move --domain <domain> --to <pool> --wait <wait_secs> --json`;
    /// fails when the command does (a refusal, or back-ends not done in time).
    pub fn queue_move(
        &self,
        domain: &str,
        pool: &str,
        wait_secs: u64,
    ) -> anyhow::Result<serde_json::Value> {
        let wait = wait_secs.to_string();
        self.json_command(&[
            "queue", "move", "--domain", domain, "--to", pool, "--wait", &wait,
        ])
    }

    /// `robustifier queue moves --domain <domain> --json` (the pool of the domain's
    /// `[[domain_queue]]`): the progress, without starting anything.
    pub fn queue_moves(&self, domain: &str) -> anyhow::Result<serde_json::Value> {
        self.json_command(&["queue", "moves", "--domain", domain])
    }

    /// `robustifier alarms --json` of the front-end: its active alarms and recent events.
    pub fn alarms(&self) -> anyhow::Result<serde_json::Value> {
        self.json_command(&["alarms"])
    }

    /// `robustifier <args> --json --socket <the front-end's>`, parsed.
    fn json_command(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let socket = self.control_socket();
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        all.extend(["--json".as_ref(), "--socket".as_ref(), socket.as_os_str()]);
        let out = crate::cli::run(&all);
        ensure!(
            out.status.success(),
            "robustifier {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).with_context(|| format!("{args:?} --json"))
    }

    /// Relay `i`'s queue listing as its MTA prints it, run here rather than asked of the
    /// agent: `postqueue -j` (Postfix), `exim -bp`, `smtpctl show queue` (OpenSMTPD).
    pub fn queue_listing(&self, i: usize) -> anyhow::Result<String> {
        let host = &self.relays[i];
        let bin_dir = self.lab.log_dir.join(format!("agent-bin-{i}"));
        let mut cmd = match host.make {
            Make::Postfix => {
                let mut c = host.layout.ns.command("postqueue");
                c.arg("-c").arg(postfix::config_dir(&host.layout)).arg("-j");
                c
            }
            Make::Exim => {
                let mut c = host.layout.ns.command(bin_dir.join("exim"));
                c.arg("-bp");
                c
            }
            Make::OpenSmtpd => {
                let mut c = host.layout.ns.command(bin_dir.join("smtpctl"));
                c.args(["show", "queue"]);
                c
            }
        };
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "listing {}'s queue: {}",
            host.name(),
            clients::text(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Panics unless `delivered` (the Message-IDs read at a destination, sorted) holds each of
/// `sent` exactly once and nothing else; `what` names the destination in the failure.
pub fn exactly_once(what: &str, delivered: &[String], sent: &[String]) {
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for id in delivered {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let dup: Vec<_> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(dup.is_empty(), "{what}: delivered more than once: {dup:?}");
    let mut want = sent.to_vec();
    want.sort();
    assert_eq!(delivered, want.as_slice(), "{what}: delivered vs sent");
}
