//! The cluster manager in the lab: a manager, a member per front-end, the cluster
//! configuration built from the lab's per-front-end configurations, the operator's CLI,
//! and mail traffic whose every acknowledged message is checked in the Maildirs.
//!
//! The manager runs in the switch namespace with an address of its own on the back-end
//! bridge ([`MANAGER_V4`]): every front-end reaches it over its `int0`, as a manager on a
//! management network would be, and pulling a front-end's cables cuts its member off the
//! manager too. Each member runs in its front-end's namespace and keeps its state (the
//! file the front-end starts from) in the lab's log directory.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    Daemon, Lab,
    client::{self, accepted},
    cluster::Cluster,
    process::Signal,
    topology::{VIP_POP, VIP_POP_V6, VIP_SMTP, VIP_SMTP_V6},
};

/// The manager's address, on the back-end bridge in the switch namespace.
pub const MANAGER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 250);
pub const MANAGER_PORT: u16 = 7443;
/// The manager's web interface, on the manager's address: it is always on in the lab, so
/// that a lab (the demo's) can be looked at in a browser.
pub const WEB_PORT: u16 = 8443;
/// The operator whose certificate the lab's CLI calls use.
pub const OPERATOR: &str = "lab-operator";

/// A cluster's manager in the lab and its certificates.
#[derive(Clone)]
pub struct ClusterManager {
    /// The namespace the manager (and the operator's CLI) runs in.
    pub ns: crate::Netns,
    /// Where commits' files are written.
    pub dir: PathBuf,
    /// What `cluster init` wrote: the CA, the manager's, members' and operator's files.
    pub pki: PathBuf,
    pub state_dir: PathBuf,
    pub render_dir: PathBuf,
    pub addr: SocketAddr,
    /// The web interface (`--web-listen`), inside the switch namespace.
    pub web: SocketAddr,
    /// Member names, by front-end index.
    pub members: Vec<String>,
}

const MANAGER_PROCESS: &str = "cluster-manager";

fn member_process(name: &str) -> String {
    format!("member-{name}")
}

impl ClusterManager {
    /// Creates the cluster's certificates (one member per front-end of the lab, named as
    /// the front-end) and starts the manager; returns once it listens.
    pub fn up(lab: &mut Lab) -> anyhow::Result<ClusterManager> {
        let members: Vec<String> = lab.frontends.iter().map(|f| f.name.clone()).collect();
        Self::up_for(lab, members)
    }

    /// [`ClusterManager::up`] for members named `members` (front-ends that are not the
    /// lab's own processes, e.g. the appliance VMs).
    pub fn up_for(lab: &mut Lab, members: Vec<String>) -> anyhow::Result<ClusterManager> {
        lab.switch
            .ip(&["addr", "add", &format!("{MANAGER_V4}/24"), "dev", "br1"])?;
        let pki = lab.log_dir.join("cluster-pki");
        let mut args: Vec<String> = vec![
            "cluster".into(),
            "init".into(),
            "--dir".into(),
            pki.display().to_string(),
            "--name".into(),
            "lab".into(),
            "--manager-name".into(),
            MANAGER_V4.to_string(),
            "--operator".into(),
            OPERATOR.into(),
        ];
        for m in &members {
            args.push("--member".into());
            args.push(m.clone());
        }
        let out = crate::cli::run(&args);
        anyhow::ensure!(
            out.status.success(),
            "cluster init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = ClusterManager {
            ns: lab.switch.clone(),
            dir: lab.log_dir.clone(),
            pki,
            state_dir: lab.log_dir.join("manager-state"),
            render_dir: lab.log_dir.join("manager-render"),
            addr: SocketAddr::new(MANAGER_V4.into(), MANAGER_PORT),
            web: SocketAddr::new(MANAGER_V4.into(), WEB_PORT),
            members,
        };
        std::fs::create_dir_all(&m.render_dir)?;
        m.start(lab)?;
        Ok(m)
    }

    /// Starts the manager on its state directory (again, after a kill); returns once it
    /// listens.
    pub fn start(&self, lab: &mut Lab) -> anyhow::Result<()> {
        let p = |f: &str| self.pki.join(f).display().to_string();
        let (listen, web, state, render) = (
            self.addr.to_string(),
            self.web.to_string(),
            self.state_dir.display().to_string(),
            self.render_dir.display().to_string(),
        );
        let bin = crate::robustifier_bin().display().to_string();
        let argv = [
            "env",
            "RUST_LOG=info",
            "NO_COLOR=1",
            bin.as_str(),
            "manager",
            "--listen",
            &listen,
            "--state-dir",
            &state,
            "--ca",
            &p("ca.pem"),
            "--cert",
            &p("manager.pem"),
            "--key",
            &p("manager.key"),
            "--render-dir",
            &render,
            "--web-listen",
            &web,
        ];
        let ns = lab.switch.clone();
        lab.spawn(&ns, MANAGER_PROCESS, &argv)?;
        crate::wait_port(&ns, self.addr)?;
        crate::wait_port(&ns, self.web)
    }

    /// Ends the running manager with `signal` (SIGKILL: a crash).
    pub fn stop(&self, lab: &mut Lab, signal: Signal) -> anyhow::Result<()> {
        let d = running(lab, MANAGER_PROCESS).context("the manager is not running")?;
        d.stop_with(signal, Duration::from_secs(15))?;
        Ok(())
    }

    /// Member `i`'s state directory: `config.toml` (what its front-end starts from) and
    /// `applied.json`.
    pub fn member_state(&self, lab: &Lab, i: usize) -> PathBuf {
        lab.log_dir.join(format!("member-{}", self.members[i]))
    }

    pub fn member_config(&self, lab: &Lab, i: usize) -> PathBuf {
        self.member_state(lab, i).join("config.toml")
    }

    /// Starts front-end `i`'s member in its namespace, with a short retry so that a member
    /// whose link comes back reconnects soon.
    pub fn start_member(&self, lab: &mut Lab, i: usize) -> anyhow::Result<()> {
        let name = &self.members[i];
        let p = |f: String| self.pki.join(f).display().to_string();
        let state = self.member_state(lab, i);
        std::fs::create_dir_all(&state)?;
        // The front-end reads its file as its unprivileged user after the start.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755))?;
        let bin = crate::robustifier_bin().display().to_string();
        let (manager, state, socket) = (
            self.addr.to_string(),
            state.display().to_string(),
            crate::vrrp::control_socket(lab, i).display().to_string(),
        );
        let argv = [
            "env",
            "RUST_LOG=info",
            "NO_COLOR=1",
            bin.as_str(),
            "member",
            "--manager",
            &manager,
            "--ca",
            &p("ca.pem".into()),
            "--cert",
            &p(format!("members/{name}.pem")),
            "--key",
            &p(format!("members/{name}.key")),
            "--state-dir",
            &state,
            "--socket",
            &socket,
            "--max-retry-ms",
            "500",
        ];
        let ns = lab.frontends[i].ns.clone();
        let d = lab.spawn(&ns, &member_process(name), &argv)?;
        d.wait_for_log("member starting", Duration::from_secs(20))
    }

    /// Ends front-end `i`'s member with `signal`.
    pub fn stop_member(&self, lab: &mut Lab, i: usize, signal: Signal) -> anyhow::Result<()> {
        let d = running(lab, &member_process(&self.members[i]))
            .with_context(|| format!("member {} is not running", self.members[i]))?;
        d.stop_with(signal, Duration::from_secs(15))?;
        Ok(())
    }

    /// What front-end `i`'s running member has logged since it started.
    pub fn member_log(&self, lab: &mut Lab, i: usize) -> String {
        running(lab, &member_process(&self.members[i]))
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    /// Starts front-end `i` from the file its member wrote.
    pub fn start_frontend(&self, lab: &mut Lab, i: usize) -> anyhow::Result<()> {
        let file = self.member_config(lab, i);
        anyhow::ensure!(
            file.is_file(),
            "member {} has written no configuration yet",
            self.members[i]
        );
        lab.start_frontend_file(i, &file)?;
        Ok(())
    }

    /// `robustifier cluster <args>` as the lab's operator, run in the manager's namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        let p = |f: String| self.pki.join(f);
        self.ns
            .command(crate::robustifier_bin())
            .arg("cluster")
            .args(args)
            .env("ROBUSTIFIER_MANAGER", self.addr.to_string())
            .env("ROBUSTIFIER_CA", p("ca.pem".into()))
            .env("ROBUSTIFIER_CERT", p(format!("operators/{OPERATOR}.pem")))
            .env("ROBUSTIFIER_KEY", p(format!("operators/{OPERATOR}.key")))
            .output()
            .expect("run robustifier cluster")
    }

    /// [`ClusterManager::cli`], which must succeed: its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args);
        anyhow::ensure!(
            out.status.success(),
            "robustifier cluster {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `cluster status --json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.cli_ok(&["status", "--json"])?)?)
    }

    /// The head version.
    pub fn head(&self) -> anyhow::Result<u64> {
        self.status()?["head"]
            .as_u64()
            .context("no head in the status")
    }

    /// Writes `text` to a file and runs `cluster commit` on the current head with `extra`
    /// arguments (`--wait`, ...): the command's output, successful or not.
    pub fn commit_output(
        &self,
        text: &str,
        comment: &str,
        extra: &[&str],
    ) -> anyhow::Result<Output> {
        let head = self.head()?;
        let file = self.dir.join(format!("cluster-{}.toml", head + 1));
        std::fs::write(&file, text)?;
        let (file, base) = (file.display().to_string(), head.to_string());
        let mut args = vec!["commit", &file, "--base", &base, "-c", comment];
        args.extend_from_slice(extra);
        Ok(self.cli(&args))
    }

    /// Commits `text` on the head; the new version's number.
    pub fn commit(&self, text: &str, comment: &str) -> anyhow::Result<u64> {
        let out = self.commit_output(text, comment, &[])?;
        committed_version(&out)
    }

    /// Commits `text` and waits (up to `secs`) until every member runs it; the version and
    /// the CLI's "every member runs version V (X ms after the commit)" line.
    pub fn commit_wait(
        &self,
        text: &str,
        comment: &str,
        secs: u64,
    ) -> anyhow::Result<(u64, String)> {
        let secs = secs.to_string();
        let out = self.commit_output(text, comment, &["--wait", &secs])?;
        let v = committed_version(&out)?;
        let said = String::from_utf8_lossy(&out.stdout);
        let line = said
            .lines()
            .find(|l| l.starts_with("every member runs"))
            .unwrap_or_default()
            .to_owned();
        Ok((v, line))
    }
}

/// The version a successful `cluster commit` reports.
pub fn committed_version(out: &Output) -> anyhow::Result<u64> {
    let said = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "cluster commit failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said.lines()
        .find_map(|l| l.strip_prefix("committed version "))
        .and_then(|l| l.split(':').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no version in {said:?}"))
}

/// The last started, still running process of the lab named `name`.
fn running<'a>(lab: &'a mut Lab, name: &str) -> Option<&'a mut Daemon> {
    lab.daemons()
        .iter_mut()
        .rev()
        .find(|d| d.name == name)
        .filter(|d| d.running())
}

/// A member's row in `cluster status --json`.
pub fn member_row<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

/// Whether member `name` is connected and runs (or, its front-end stopped, starts from)
/// the head version.
pub fn runs_head(status: &serde_json::Value, name: &str) -> bool {
    member_row(status, name)
        .is_some_and(|m| m["connected"] == true && m["applied"] == status["head"])
}

/// The shared virtual routers of a cluster configuration (VRID 51: the SMTP addresses,
/// 52: the POP3 ones, IPv4 and IPv6 each), at a neutral priority each member overrides.
pub fn shared_routers(advert_cs: u16) -> String {
    let mut s = String::new();
    for (vrid, vip) in [
        (51, IpAddr::V4(VIP_SMTP)),
        (52, IpAddr::V4(VIP_POP)),
        (51, IpAddr::V6(VIP_SMTP_V6)),
        (52, IpAddr::V6(VIP_POP_V6)),
    ] {
        s.push_str(&format!(
            "\n[[vrrp]]\nvrid = {vrid}\npriority = 100\nadvert_interval_cs = {advert_cs}\nvips = [\"{vip}\"]\ngarp_interval_ms = 200\n"
        ));
    }
    s
}

/// Member `i`'s priorities: front-end 0 is master of the SMTP addresses, front-end 1 of
/// the POP3 ones, each backing the other up.
pub fn member_priorities(i: usize) -> String {
    let (smtp, pop) = if i == 0 { (150, 100) } else { (100, 150) };
    format!("vrrp = {{ 51 = {{ priority = {smtp} }}, 52 = {{ priority = {pop} }} }}")
}

/// The cluster configuration of `c`'s front-ends: front-end 0's configuration (with
/// [`Cluster::set_extra`]'s TOML, e.g. [`shared_routers`]) as the shared part, without
/// its name and pin directory, its service host names made the cluster's (they carry the
/// front-end's name); then one `[members.NAME]` table per front-end with its pin
/// directory, its own control socket (labs run side by side), and `own[i]`'s lines.
pub fn cluster_config(c: &Cluster, own: &[String]) -> String {
    let lab = &c.lab;
    let first = &lab.frontends[0].name;
    let text = c.frontend_config(0);
    let mut shared = String::new();
    let mut in_frontend = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_frontend = line.trim() == "[frontend]";
        }
        if in_frontend && (line.starts_with("name =") || line.starts_with("pin_dir =")) {
            continue;
        }
        shared.push_str(&line.replace(&format!("-{first}.robustifier.test"), ".robustifier.test"));
        shared.push('\n');
    }
    for (i, fe) in lab.frontends.iter().enumerate() {
        shared.push_str(&format!(
            "\n[members.{}]\nfrontend = {{ pin_dir = \"{}\" }}\nha = {{ control_socket = \"{}\" }}\n{}\n",
            fe.name,
            lab.pin_dir(i).display(),
            crate::vrrp::control_socket(lab, i).display(),
            own.get(i).map(String::as_str).unwrap_or_default()
        ));
    }
    shared
}

/// What an SMTP client sending through a VIP saw.
#[derive(Default, Debug, Clone)]
pub struct Sent {
    /// Acknowledged messages: (tag, recipient).
    pub accepted: Vec<(String, String)>,
    /// Sessions that ended without an acknowledgement, and connections that failed.
    pub refused: Vec<String>,
}

/// Mail sent from the client's namespace through `vip` port 25, one message every
/// `every`, to `recipients` in turn, until stopped (at most `max` messages). Each
/// message's Message-ID is `<TAG@client.example.org>` with TAG = `prefix-N`.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Sent>>,
}

impl Traffic {
    pub fn start(
        lab: &Lab,
        vip: IpAddr,
        prefix: &str,
        recipients: &[&str],
        every: Duration,
        max: usize,
    ) -> anyhow::Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&acknowledged);
        let ns = std::fs::File::open(lab.client.ns.path())?;
        let recipients: Vec<String> = recipients.iter().map(|r| (*r).to_owned()).collect();
        let (flag, prefix) = (Arc::clone(&stop), prefix.to_owned());
        let thread = std::thread::spawn(move || {
            let mut sent = Sent::default();
            if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                sent.refused.push(format!("setns: {e}"));
                return sent;
            }
            let to_addr = SocketAddr::new(vip, 25);
            for n in 0..max {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let to = &recipients[n % recipients.len()];
                let tag = format!("{prefix}-{n}");
                match client::send_mail(
                    to_addr,
                    None,
                    "sender@client.example.org",
                    &[to],
                    &message(&tag, to),
                ) {
                    Ok(r) if accepted(&r) => {
                        sent.accepted.push((tag, to.clone()));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => sent.refused.push(format!("{tag}: {}", r.join(" | "))),
                    Err(e) => sent.refused.push(format!("{tag}: {e}")),
                }
                std::thread::sleep(every);
            }
            sent
        });
        Ok(Traffic {
            stop,
            acknowledged,
            thread: Some(thread),
        })
    }

    /// How many messages were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Stops sending; what was sent.
    pub fn finish(mut self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A message whose Message-ID carries `tag`.
pub fn message(tag: &str, to: &str) -> String {
    format!(
        "From: <sender@client.example.org>\nTo: <{to}>\nSubject: cluster traffic {tag}\n\
         Message-ID: <{tag}@client.example.org>\n\ncluster traffic {tag}\n"
    )
}

/// Where each message tag lies: (back-end index, mailbox), for every mailbox of `c`.
pub fn delivered(c: &Cluster) -> HashMap<String, Vec<(usize, String)>> {
    let mut at: HashMap<String, Vec<(usize, String)>> = HashMap::new();
    for (j, host) in c.hosts.iter().enumerate() {
        for user in host.users.iter() {
            for m in host.messages(&user.address) {
                let text = String::from_utf8_lossy(&m).into_owned();
                if let Some(tag) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: <"))
                    .and_then(|l| l.split('@').next())
                {
                    at.entry(tag.to_owned())
                        .or_default()
                        .push((j, user.address.clone()));
                }
            }
        }
    }
    at
}

/// Waits (up to `timeout`) until every message in `expected` (tag, back-end index,
/// mailbox) lies in its mailbox on its back-end, exactly once and nowhere else; the
/// first message that does not, otherwise.
pub fn check_delivered(
    c: &Cluster,
    expected: &[(String, usize, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let at = delivered(c);
        let missing: Vec<&(String, usize, String)> = expected
            .iter()
            .filter(|(tag, _, _)| !at.contains_key(tag))
            .collect();
        if missing.is_empty() {
            for (tag, j, mailbox) in expected {
                anyhow::ensure!(
                    at[tag] == [(*j, mailbox.clone())],
                    "{tag}: expected once in be{}'s {mailbox}, found in {:?}",
                    j + 1,
                    at[tag]
                );
            }
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "acknowledged but not delivered: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Traffic {
    /// Waits (up to `timeout`) until `n` more messages than now are acknowledged: mail
    /// flows at this point of a test.
    pub fn more(&self, n: usize, what: &str, timeout: Duration) -> anyhow::Result<()> {
        let from = self.acknowledged();
        crate::vrrp::eventually(what, timeout, || self.acknowledged() >= from + n)?;
        Ok(())
    }

    /// Stops sending, prints what was acknowledged under `label`, and requires that nothing
    /// was refused and that every acknowledged message lies once in its recipient's
    /// mailbox on the back-end `homes` names for it (recipient, back-end index), within
    /// `timeout`.
    pub fn finish_delivered(
        self,
        c: &Cluster,
        homes: &[(&str, usize)],
        label: &str,
        timeout: Duration,
    ) -> anyhow::Result<Sent> {
        let sent = self.finish();
        println!(
            "{label}{} messages acknowledged, {} not",
            sent.accepted.len(),
            sent.refused.len()
        );
        anyhow::ensure!(sent.refused.is_empty(), "refused: {:?}", sent.refused);
        check_delivered(c, &expected(&sent, homes), timeout)?;
        Ok(sent)
    }
}

/// Each acknowledged message with where it must lie: (tag, back-end index, mailbox), the
/// back-end being its recipient's in `homes` (recipient, back-end index).
pub fn expected(sent: &Sent, homes: &[(&str, usize)]) -> Vec<(String, usize, String)> {
    sent.accepted
        .iter()
        .map(|(tag, to)| {
            let j = homes
                .iter()
                .find(|(r, _)| r == to)
                .map_or(usize::MAX, |(_, j)| *j);
            (tag.clone(), j, to.clone())
        })
        .collect()
}

impl ClusterManager {
    /// `cluster web`: a fresh login link to the web interface (it works once, within a
    /// minute).
    pub fn login_link(&self) -> anyhow::Result<String> {
        let link = self.cli_ok(&["web"])?.trim().to_owned();
        let page = format!("https://{}/login#", self.web);
        anyhow::ensure!(
            link.starts_with(&page),
            "cluster web answered {link:?}, not a link to {page}"
        );
        Ok(link)
    }

    /// `cluster issue --agent NAME`: an agent certificate in the cluster's PKI, NAME being
    /// the back-end's name in the configuration.
    pub fn issue_agent(&self, name: &str) -> anyhow::Result<()> {
        let out = crate::cli::run(&[
            "cluster".to_owned(),
            "issue".into(),
            "--dir".into(),
            self.pki.display().to_string(),
            "--agent".into(),
            name.into(),
        ]);
        anyhow::ensure!(
            out.status.success(),
            "cluster issue --agent {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Restarts back-end `i`'s agent (one [`Cluster::start_agents`] started) with the same
    /// reports and, in addition, its MTA's log shipped to this manager under an agent
    /// certificate named as the back-end (`be1`, ...), which this issues. The front-ends
    /// use probe figures only for the moment the agent is away.
    pub fn ship_maillog(&self, c: &mut Cluster, i: usize) -> anyhow::Result<()> {
        use crate::mail::{Make, opensmtpd, postfix};
        let name = format!("be{}", i + 1);
        self.issue_agent(&name)?;
        let process = format!("agent-{name}");
        if let Some(d) = running(&mut c.lab, &process) {
            d.stop()?;
        }
        let host = &c.hosts[i];
        // The same reports as the cluster's own agents: Postfix is asked for its queue,
        // OpenSMTPD's queue is counted as files.
        let (spool, mut args, maillog) = if host.make == Make::Postfix {
            (
                host.layout.dir.clone(),
                vec![
                    "postfix".to_owned(),
                    "--mta-config".into(),
                    postfix::config_dir(&host.layout).display().to_string(),
                ],
                postfix::maillog(&host.layout),
            )
        } else {
            (
                host.layout.dir.join("opensmtpd/spool/queue"),
                vec!["spool".to_owned()],
                opensmtpd::log(&host.layout),
            )
        };
        let p = |f: String| self.pki.join(f).display().to_string();
        args.extend([
            "--state-file".to_owned(),
            c.agent_state(i).display().to_string(),
            "--spool".into(),
            spool.display().to_string(),
            "--maillog".into(),
            maillog.display().to_string(),
            "--manager".into(),
            self.addr.to_string(),
            "--ca".into(),
            p("ca.pem".into()),
            "--cert".into(),
            p(format!("agents/{name}.pem")),
            "--key".into(),
            p(format!("agents/{name}.key")),
        ]);
        let mut argv: Vec<&str> = vec!["--mta"];
        argv.extend(args.iter().map(String::as_str));
        crate::cli::start_agent(&mut c.lab, i, &process, &argv)?;
        Ok(())
    }
}
