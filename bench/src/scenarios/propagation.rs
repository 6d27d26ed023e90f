//! How long a configuration change takes to reach the whole cluster: from an operator's
//! `robustifier cluster commit` to every member running the new version, over a series of
//! commits (each a real change: a back-end's weight), in two set-ups:
//!
//! - 2 members, each a real front-end (`robustifier run --without-kernel`) with its
//!   `robustifier member`. The cluster configuration's services are shared, so each
//!   front-end runs in a network namespace of its own (created here, removed at the end)
//!   where its service port is its own; the member reaches it over its control socket, a
//!   file, from the host namespace.
//! - 50 members: 50 `robustifier member` processes, each in front of a fake front-end whose
//!   control socket this process serves (it answers `status` and accepts every `reload`),
//!   so the figure is the manager's and the members' part alone.
//!
//! Latency per commit, from the manager's own clock: `cluster status --json` after
//! `commit --wait` gives the commit's time (`head_ms`) and when the manager heard each
//! member report the version applied (`applied_ms`); the latency is the latest of those
//! minus the commit's time. The manager runs on the system's CPU; members, front-ends and
//! the operator's CLI on the other one (they stand for other hosts). The goal, stated and
//! not asserted: p99 under 1 s with 50 members.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use robustifier_lab::{Daemon, Netns, robustifier_bin, unique_prefix};

use crate::{
    Ctx,
    procs::{self, SUT_CPU},
    report::{Metric, SUT},
    smtp,
};

const SCENARIO: &str = "propagation";
const P50: Metric = Metric {
    name: "commit to every member applied, p50",
    unit: "ms",
    lower_is_better: true,
};
const P99: Metric = Metric {
    name: "commit to every member applied, p99 (goal < 1000 ms at 50 members)",
    unit: "ms",
    lower_is_better: true,
};
const GOAL_MS: f64 = 1000.0;
/// The many-member set-up.
const MANY: usize = 50;
/// How long one commit may take to reach every member before the run fails (a hang
/// guard, not a figure).
const WAIT_SECS: &str = "120";
/// How long a process may take to start answering.
const START: Duration = Duration::from_secs(30);

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let commits = ctx.sizes.propagation_commits;
    for rep in 0..ctx.sizes.propagation_reps {
        let case = "2 members, real front-ends";
        let took = Setup::real(2)?.measure(commits)?;
        record(ctx, case, &took, rep);
        let case = "50 members, fake front-ends";
        let took = Setup::fake(MANY)?.measure(commits)?;
        let p99 = record(ctx, case, &took, rep);
        ctx.note(format!(
            "propagation: 50 members, repetition {}: p99 {p99:.0} ms ({} the goal of {GOAL_MS:.0} ms)",
            rep + 1,
            if p99 < GOAL_MS { "within" } else { "over" }
        ));
    }
    Ok(())
}

/// Records one series' p50 and p99; returns the p99.
fn record(ctx: &mut Ctx, case: &str, took: &[Duration], rep: usize) -> f64 {
    let p = smtp::percentiles(took, &[0.5, 0.99]);
    println!(
        "bench: propagation {case}, repetition {}: {} commits, p50 {:.1} ms, p99 {:.1} ms",
        rep + 1,
        took.len(),
        p[0],
        p[1]
    );
    ctx.add(SCENARIO, case, P50, SUT, p[0]);
    ctx.add(SCENARIO, case, P99, SUT, p[1]);
    p[1]
}

/// A cluster on this host: its certificates, the manager, members, their front-ends.
/// Dropping it stops every process it started (by pid), then removes its namespaces and
/// files.
struct Setup {
    dir: PathBuf,
    addr: String,
    members: Vec<String>,
    /// Each member's control socket.
    sockets: Vec<PathBuf>,
    daemons: Vec<Daemon>,
    fakes: Option<Fakes>,
    namespaces: Vec<Netns>,
}

impl Setup {
    /// The certificates and the manager, for members `m01`...
    fn new(tag: &str, n: usize) -> anyhow::Result<Setup> {
        let dir = std::env::temp_dir().join(unique_prefix(tag));
        std::fs::create_dir_all(&dir)?;
        let members: Vec<String> = (1..=n).map(|i| format!("m{i:02}")).collect();
        let sockets = members
            .iter()
            .map(|m| dir.join(format!("{m}-control")).join("control.sock"))
            .collect();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut s = Setup {
            dir,
            addr: format!("127.0.0.1:{port}"),
            members,
            sockets,
            daemons: Vec::new(),
            fakes: None,
            namespaces: Vec::new(),
        };
        let mut init = Command::new(robustifier_bin());
        init.args(["cluster", "init", "--dir"])
            .arg(s.pki(""))
            .args(["--name", "bench", "--manager-name", "127.0.0.1"])
            .args(["--operator", "bench"]);
        for m in &s.members {
            init.args(["--member", m]);
        }
        checked(&mut init)?;
        let render = s.dir.join("render");
        std::fs::create_dir_all(&render)?;
        let mut cmd = Command::new(robustifier_bin());
        cmd.args(["manager", "--listen", &s.addr])
            .arg("--state-dir")
            .arg(s.dir.join("manager"))
            .arg("--ca")
            .arg(s.pki("ca.pem"))
            .arg("--cert")
            .arg(s.pki("manager.pem"))
            .arg("--key")
            .arg(s.pki("manager.key"))
            .arg("--render-dir")
            .arg(render);
        let manager = Daemon::spawn("manager", cmd, s.dir.join("manager.log"))?;
        procs::pin_pid(manager.pid().as_raw(), SUT_CPU)?;
        s.daemons.push(manager);
        let deadline = Instant::now() + START;
        while !s.cli(&["log", "--json"])?.status.success() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the manager does not answer: {}",
                s.daemons[0].log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    /// `n` members, each with a real front-end in its own namespace.
    fn real(n: usize) -> anyhow::Result<Setup> {
        let mut s = Setup::new("prop-real", n)?;
        for m in s.members.clone() {
            s.start_member(&m)?;
        }
        // The first version: each member writes it as the file its front-end starts from
        // (and reports that its front-end does not run yet).
        s.commit(0, false)?;
        for (i, m) in s.members.clone().iter().enumerate() {
            let ns = Netns::create(&unique_prefix("prop"))?;
            s.namespaces.push(ns.clone());
            let mut cmd = ns.command(robustifier_bin());
            cmd.args(["run", "--without-kernel", "--config"])
                .arg(s.member_dir(m).join("config.toml"));
            s.daemons.push(Daemon::spawn(
                m,
                cmd,
                s.dir.join(format!("{m}-frontend.log")),
            )?);
            let deadline = Instant::now() + START;
            while control(&s.sockets[i], "status").is_err() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "front-end {m} does not answer on {}: {}",
                    s.sockets[i].display(),
                    s.daemons.last().map(Daemon::log_text).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(s)
    }

    /// `n` members, each with a fake front-end served here.
    fn fake(n: usize) -> anyhow::Result<Setup> {
        let mut s = Setup::new("prop-fake", n)?;
        s.fakes = Some(Fakes::start(&s.members, &s.sockets)?);
        for m in s.members.clone() {
            s.start_member(&m)?;
        }
        s.commit(0, false)?;
        Ok(s)
    }

    fn pki(&self, file: &str) -> PathBuf {
        self.dir.join("pki").join(file)
    }

    fn member_dir(&self, m: &str) -> PathBuf {
        self.dir.join(format!("{m}-state"))
    }

    fn start_member(&mut self, m: &str) -> anyhow::Result<()> {
        let i = self
            .members
            .iter()
            .position(|x| x == m)
            .context("no such member")?;
        let mut cmd = Command::new(robustifier_bin());
        cmd.args(["member", "--manager", &self.addr])
            .arg("--ca")
            .arg(self.pki("ca.pem"))
            .arg("--cert")
            .arg(self.pki(&format!("members/{m}.pem")))
            .arg("--key")
            .arg(self.pki(&format!("members/{m}.key")))
            .arg("--state-dir")
            .arg(self.member_dir(m))
            .arg("--socket")
            .arg(&self.sockets[i]);
        let log = self.dir.join(format!("{m}-member.log"));
        self.daemons.push(Daemon::spawn(m, cmd, log)?);
        Ok(())
    }

    /// The cluster configuration with the back-end's weight `weight`.
    fn config(&self, weight: usize) -> String {
        let mut t = format!(
            "[frontend]\nname = \"template\"\nserve_loopback_clients = true\n\n\
             [[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 2525\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
             backend = [{{ name = \"mx1\", address = \"127.0.0.1:1\", weight = {weight} }}]\n"
        );
        for (m, socket) in self.members.iter().zip(&self.sockets) {
            t.push_str(&format!(
                "\n[members.{m}]\nha = {{ control_socket = \"{}\" }}\n",
                socket.display()
            ));
        }
        t
    }

    /// `robustifier cluster ARGS` as the bench's operator.
    fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(robustifier_bin())
            .arg("cluster")
            .args(args)
            .env("ROBUSTIFIER_MANAGER", &self.addr)
            .env("ROBUSTIFIER_CA", self.pki("ca.pem"))
            .env("ROBUSTIFIER_CERT", self.pki("operators/bench.pem"))
            .env("ROBUSTIFIER_KEY", self.pki("operators/bench.key"))
            .output()
            .context("robustifier cluster")
    }

    /// Commits a new version on `base` (each with another weight), waits until every
    /// member runs it, and returns how long that took by the manager's clock.
    /// With `live`, every member must have had its front-end take the version live.
    fn commit(&self, base: u64, live: bool) -> anyhow::Result<Duration> {
        let version = base + 1;
        let file = self.dir.join("commit.toml");
        std::fs::write(&file, self.config(base as usize % 200 + 1))?;
        let out = self.cli(&[
            "commit",
            &file.display().to_string(),
            "--base",
            &base.to_string(),
            "--wait",
            WAIT_SECS,
        ])?;
        anyhow::ensure!(
            out.status.success(),
            "commit of version {version}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.cli(&["status", "--json"])?;
        anyhow::ensure!(out.status.success(), "cluster status failed");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        anyhow::ensure!(
            status["head"] == version,
            "head is {} after committing version {version}",
            status["head"]
        );
        let head_ms = status["head_ms"].as_u64().context("head_ms")?;
        let mut latest = 0;
        let mut n = 0;
        for m in status["members"].as_array().context("members")? {
            if m["configured"] != true {
                continue;
            }
            anyhow::ensure!(
                m["applied"] == version,
                "member {} runs version {} after the wait for {version}",
                m["name"],
                m["applied"]
            );
            // A member whose front-end did not take the version live says why (the real
            // front-ends must run it, not merely start from it).
            anyhow::ensure!(
                !live || m["last_error"].is_null(),
                "member {}: {}",
                m["name"],
                m["last_error"]
            );
            latest = latest.max(m["applied_ms"].as_u64().context("applied_ms")?);
            n += 1;
        }
        anyhow::ensure!(
            n == self.members.len(),
            "{n} of {} members configured",
            self.members.len()
        );
        Ok(Duration::from_millis(latest.saturating_sub(head_ms)))
    }

    /// `commits` commits after the first version; their latencies.
    fn measure(&self, commits: usize) -> anyhow::Result<Vec<Duration>> {
        (1..=commits as u64)
            .map(|base| self.commit(base, true))
            .collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Members and front-ends first, the manager last (it was started first).
        while let Some(mut d) = self.daemons.pop() {
            let _ = d.stop();
        }
        self.fakes = None;
        for ns in &self.namespaces {
            let _ = ns.delete();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// One request on a front-end's control socket; the reply's text after `ok `.
fn control(socket: &Path, line: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    reply
        .trim_end()
        .strip_prefix("ok ")
        .map(str::to_owned)
        .with_context(|| format!("{line}: {reply}"))
}

/// Fake front-ends: one control socket each, answering as a running front-end that
/// accepts every reload. Dropping them stops their threads.
struct Fakes {
    stop: Arc<AtomicBool>,
    sockets: Vec<PathBuf>,
    threads: Vec<JoinHandle<()>>,
}

impl Fakes {
    fn start(names: &[String], sockets: &[PathBuf]) -> anyhow::Result<Fakes> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (name, socket) in names.iter().zip(sockets) {
            if let Some(dir) = socket.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let listener =
                UnixListener::bind(socket).with_context(|| format!("bind {}", socket.display()))?;
            let (stop, name) = (stop.clone(), name.clone());
            threads.push(std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(conn) = conn {
                        let _ = answer(conn, &name);
                    }
                }
            }));
        }
        Ok(Fakes {
            stop,
            sockets: sockets.to_vec(),
            threads,
        })
    }
}

/// One control request: `status` gets a minimal status, `reload FILE` is accepted.
fn answer(mut conn: UnixStream, name: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let reply = match line.split_whitespace().next() {
        Some("status") => format!(
            "ok {{\"frontend\":\"{name}\",\"pid\":{},\"version\":\"fake\",\"routers\":[],\"ready\":true}}",
            std::process::id()
        ),
        Some("reload") => {
            "ok {\"version\":\"fake\",\"summary\":\"accepted\",\"restart_needed\":[]}".to_owned()
        }
        _ => "error not served by this fake front-end".to_owned(),
    };
    conn.write_all(format!("{reply}\n").as_bytes())
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes each thread from its accept so it sees the flag.
        for s in &self.sockets {
            let _ = UnixStream::connect(s);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
