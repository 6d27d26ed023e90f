//! What the tests of the cluster manager without root share: `robustifier manager`,
//! `robustifier member` and `robustifier cluster` as processes of the built binary on
//! loopback, the cluster's certificates from `cluster init`, and fake front-ends (a
//! control socket served by the test, which records every request it gets and the file
//! each `reload` names).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{Daemon, PATIENCE, free_port};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_robustifier");

impl Daemon {
    /// `cmd` started without standard streams: killed and reaped when dropped.
    pub fn spawn(cmd: &mut Command) -> Daemon {
        Daemon::new(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Sends `signal` (by the pid this test started) and reaps the process.
    pub fn signal(mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
            let _ = child.wait();
        }
    }
}

/// A process's standard output then its standard error, for a failure's message.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `ready` every 50 ms until it holds; fails after [`PATIENCE`].
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `ready` every 100 ms, without holding up the runtime, until it gives a value;
/// fails after [`PATIENCE`].
pub async fn wait_for<T>(what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `cluster init` into `pki`: cluster `name` whose manager is 127.0.0.1, operator alice,
/// and the certificates of `members` and `agents`.
pub fn init_pki(pki: &Path, name: &str, members: &[&str], agents: &[&str]) {
    let mut init = Command::new(BIN);
    init.args(["cluster", "init", "--dir"])
        .arg(pki)
        .args(["--name", name, "--manager-name", "127.0.0.1"])
        .args(["--operator", "alice"]);
    for m in members {
        init.args(["--member", m]);
    }
    for a in agents {
        init.args(["--agent", a]);
    }
    let out = init.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// How a fake front-end answers beyond what every front-end does (its status, `reload`,
/// `drain`, `manager` and `events`). Each part is absent unless given, as from a front-end
/// of an older release or with nothing of that kind.
#[derive(Clone, Copy, Default)]
pub struct Answers {
    /// Its virtual routers' records in its status, from its name.
    pub router: Option<fn(&str) -> String>,
    /// Its back-ends' load records (`backends` in its status), from its name.
    pub backends: Option<fn(&str) -> &'static str>,
    /// Its answer to `stats SINCE`, from the minute it started and SINCE; without, a
    /// `stats` request is refused.
    pub stats: Option<fn(u64, u64) -> String>,
}

/// One request a fake front-end got, with the text of the file a `reload` named.
#[derive(Clone, Debug)]
pub struct Request {
    pub line: String,
    pub file: Option<String>,
}

/// A front-end's control socket answering as a running front-end would.
pub struct Fake {
    pub socket: PathBuf,
    seen: Arc<Mutex<Vec<Request>>>,
    /// Its events, as a front-end's (`events SEQ` answers from them).
    pub events: robustifier::events::Events,
}

/// The current unix minute.
pub fn this_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

impl Fake {
    pub fn start(socket: PathBuf, name: &str, answers: Answers) -> Fake {
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = robustifier::events::Events::new(name, None);
        let (s, name, ev) = (seen.clone(), name.to_owned(), events.clone());
        let started = this_minute();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let line = line.trim_end().to_owned();
                let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
                let mut file = None;
                let reply = match (verb, answers.stats) {
                    ("status", _) => {
                        let routers = answers.router.map_or(String::new(), |r| r(&name));
                        let backends = answers
                            .backends
                            .map_or(String::new(), |b| format!(",\"backends\":[{}]", b(&name)));
                        format!(
                            "ok {{\"frontend\":\"{name}\",\"pid\":1,\"version\":\"fake\",\"routers\":[{routers}],\"ready\":true{backends}}}"
                        )
                    }
                    ("reload", _) => {
                        file = std::fs::read_to_string(arg).ok();
                        "ok {\"version\":\"fake\",\"summary\":\"fake reload\",\"restart_needed\":[]}"
                            .to_owned()
                    }
                    ("drain", _) => format!("ok {{\"backend\":\"{arg}\",\"draining\":true}}"),
                    ("manager", _) => "ok noted".to_owned(),
                    ("events", _) => format!(
                        "ok {}",
                        serde_json::to_string(&ev.since(arg.parse().unwrap(), 200)).unwrap()
                    ),
                    ("stats", Some(stats)) => {
                        format!("ok {}", stats(started, arg.parse().unwrap_or(0)))
                    }
                    _ => "error not a fake front-end request".to_owned(),
                };
                s.lock().unwrap().push(Request {
                    line: line.clone(),
                    file,
                });
                let _ = conn.write_all(format!("{reply}\n").as_bytes());
            }
        });
        Fake {
            socket,
            seen,
            events,
        }
    }

    /// An event on this front-end (a back-end of its going down or up).
    pub fn emit(&self, i: u32) {
        let backend = format!("mx{i}");
        self.events.emit(robustifier::events::Kind::BackendDown {
            backend,
            pool: "mx".into(),
            reason: "test".into(),
        });
    }

    pub fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    pub fn reloads(&self) -> Vec<Request> {
        self.seen()
            .into_iter()
            .filter(|s| s.line.starts_with("reload "))
            .collect()
    }
}

/// A cluster on loopback in a directory of its own: its certificates, its manager, its
/// members, and fake front-ends for those that have one. Dropping it stops the members and
/// the manager, and removes the directory unless the test failed.
pub struct Cluster {
    pub dir: PathBuf,
    /// The manager's port for operators and members.
    pub port: u16,
    metrics_port: Option<u16>,
    web_port: Option<u16>,
    manager_args: Vec<String>,
    pub manager: Option<Daemon>,
    pub members: BTreeMap<String, Daemon>,
    pub fakes: BTreeMap<String, Fake>,
}

impl Cluster {
    /// The certificates in `dir/pki` (operator alice, `members`, `agents`), with a fake
    /// front-end for each member that answers as `fakes` says; no manager yet.
    pub fn init(
        dir: PathBuf,
        members: &[&str],
        agents: &[&str],
        fakes: Option<Answers>,
    ) -> Cluster {
        init_pki(&dir.join("pki"), "test", members, agents);
        let fakes = fakes.map_or_else(BTreeMap::new, |answers| {
            members
                .iter()
                .map(|m| {
                    let fake = Fake::start(dir.join(format!("{m}.sock")), m, answers);
                    ((*m).to_owned(), fake)
                })
                .collect()
        });
        Cluster {
            dir,
            port: free_port(),
            metrics_port: None,
            web_port: None,
            manager_args: Vec::new(),
            manager: None,
            members: BTreeMap::new(),
            fakes,
        }
    }

    /// The manager serves `/metrics` too, to bearer `token`.
    pub fn with_metrics(mut self, token: &str) -> Cluster {
        let port = free_port();
        let file = self.dir.join("metrics.token");
        std::fs::write(&file, token).unwrap();
        self.metrics_port = Some(port);
        self.manager_args.extend([
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--metrics-token-file".to_owned(),
            file.display().to_string(),
        ]);
        self
    }

    /// The manager serves its web interface too.
    pub fn with_web(mut self) -> Cluster {
        let port = free_port();
        self.web_port = Some(port);
        self.manager_args
            .extend(["--web-listen".to_owned(), format!("127.0.0.1:{port}")]);
        self
    }

    /// More arguments for the manager.
    pub fn with_manager_args(mut self, args: &[&str]) -> Cluster {
        self.manager_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// With its manager started.
    pub fn started(mut self) -> Cluster {
        self.start_manager();
        self
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port.expect("a manager with metrics")
    }

    pub fn web_port(&self) -> u16 {
        self.web_port.expect("a manager with its web interface")
    }

    /// A TLS client configuration that trusts only the cluster's CA and shows no
    /// certificate of its own: what a browser or a stranger brings.
    pub fn tls_without_certificate(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.pki("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }

    pub fn pki(&self, file: &str) -> PathBuf {
        self.dir.join("pki").join(file)
    }

    /// The manager's state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.join("manager")
    }

    /// Member `name`'s state directory.
    pub fn member_state(&self, name: &str) -> PathBuf {
        self.dir.join(format!("member-{name}"))
    }

    /// Starts the manager (on the same port and state every time) and waits until it
    /// answers an operator.
    pub fn start_manager(&mut self) {
        let render = self.dir.join("render");
        std::fs::create_dir_all(&render).unwrap();
        self.manager = Some(Daemon::spawn(
            Command::new(BIN)
                .arg("manager")
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .arg("--state-dir")
                .arg(self.state())
                .arg("--ca")
                .arg(self.pki("ca.pem"))
                .arg("--cert")
                .arg(self.pki("manager.pem"))
                .arg("--key")
                .arg(self.pki("manager.key"))
                .arg("--render-dir")
                .arg(render)
                .args(&self.manager_args),
        ));
        wait_until("the manager answers", || {
            self.cli(&["log", "--json"]).status.success()
        });
    }

    pub fn stop_manager(&mut self, s: nix::sys::signal::Signal) {
        self.manager.take().unwrap().signal(s);
    }

    /// Starts member `name` before its fake front-end; it raises its alarm after a second
    /// without the manager.
    pub fn start_member(&mut self, name: &str) {
        let socket = self.fakes[name].socket.clone();
        self.start_member_on(name, &socket, &["--alarm-after-ms", "1000"]);
    }

    /// Starts member `name` before the front-end on `socket`, with `more` arguments.
    pub fn start_member_on(&mut self, name: &str, socket: &Path, more: &[&str]) {
        let p = Daemon::spawn(
            Command::new(BIN)
                .arg("member")
                .args(["--manager", &format!("127.0.0.1:{}", self.port)])
                .arg("--ca")
                .arg(self.pki("ca.pem"))
                .arg("--cert")
                .arg(self.pki(&format!("members/{name}.pem")))
                .arg("--key")
                .arg(self.pki(&format!("members/{name}.key")))
                .arg("--state-dir")
                .arg(self.member_state(name))
                .arg("--socket")
                .arg(socket)
                .args(["--max-retry-ms", "200"])
                .args(more),
        );
        self.members.insert(name.to_owned(), p);
    }

    pub fn stop_member(&mut self, name: &str) {
        self.members
            .remove(name)
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// `robustifier cluster ARGS` as operator alice.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(
            args,
            &self.pki("operators/alice.pem"),
            &self.pki("operators/alice.key"),
        )
    }

    pub fn cli_as(&self, args: &[&str], cert: &Path, key: &Path) -> Output {
        self.cli_command(args, cert, key).output().unwrap()
    }

    pub fn cli_command(&self, args: &[&str], cert: &Path, key: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("cluster")
            .args(args)
            .env("ROBUSTIFIER_MANAGER", format!("127.0.0.1:{}", self.port))
            .env("ROBUSTIFIER_CA", self.pki("ca.pem"))
            .env("ROBUSTIFIER_CERT", cert)
            .env("ROBUSTIFIER_KEY", key);
        cmd
    }

    /// The cluster configuration for the fake front-ends, with back-end mx1 at `weight`,
    /// and `extra` lines for member `extra_for`.
    pub fn config(&self, weight: u32, extra_for: &str, extra: &str) -> String {
        let mut t = format!(
            "[frontend]\nname = \"template\"\nserve_loopback_clients = true\n\n\
             [[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 2525\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
             backend = [{{ name = \"mx1\", address = \"127.0.0.1:1\", weight = {weight} }}]\n"
        );
        for (name, fake) in &self.fakes {
            t.push_str(&format!(
                "\n[members.{name}]\nha = {{ control_socket = \"{}\" }}\n",
                fake.socket.display()
            ));
            if name == extra_for {
                t.push_str(extra);
                t.push('\n');
            }
        }
        t
    }

    /// Writes `config` to a file and commits it on `base`.
    pub fn commit(&self, config: &str, base: u64, more: &[&str]) -> Output {
        let file = self.write(&format!("commit-{}.toml", unique_name()), config);
        let mut args = vec!["commit", file.to_str().unwrap(), "--base"];
        let base = base.to_string();
        args.push(&base);
        args.extend_from_slice(more);
        self.cli(&args)
    }

    pub fn commit_ok(&self, config: &str, base: u64, more: &[&str]) {
        let out = self.commit(config, base, more);
        assert!(out.status.success(), "commit on {base}: {}", text(&out));
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let f = self.dir.join(name);
        std::fs::write(&f, content).unwrap();
        f
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn head(&self) -> u64 {
        self.status()["head"].as_u64().unwrap()
    }

    /// The log, oldest first.
    pub fn log(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["log", "--json", "--limit", "10000"]);
        assert!(out.status.success(), "{}", text(&out));
        let mut log: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        log.sort_by_key(|v| v["number"].as_u64().unwrap());
        log
    }

    /// A version's text as `cluster show` prints it, without its first (header) line.
    pub fn show(&self, args: &[&str]) -> String {
        let mut all = vec!["show"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(out.status.success(), "{}", text(&out));
        let s = String::from_utf8(out.stdout).unwrap();
        s.split_once('\n').unwrap().1.to_owned()
    }

    /// Waits until every configured member reports `version` applied.
    pub fn wait_applied(&self, version: u64) {
        wait_until(&format!("every member applies version {version}"), || {
            let s = self.status();
            s["head"] == version
                && s["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["configured"] == true)
                    .all(|m| m["applied"] == version)
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.members.clear();
        self.manager = None;
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A name no other file of this process has.
fn unique_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
