//! The cluster manager as an operator meets it, without root: `robustifier manager`,
//! `robustifier member` and `robustifier cluster` as processes of the built binary on
//! loopback, each member in front of a fake front-end (a control socket served by this
//! test, which records every request it gets and the file each `reload` names).
//!
//! Services are shared by every member's configuration, so real front-ends of one cluster
//! would all want the same ports; the fakes make that moot and let the test see exactly
//! what each member asked of its front-end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a step that fails fails the test"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_robustifier");
/// A bound on every wait, so that a broken test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);
const METRICS_TOKEN: &str = "manager-metrics-token-0123";

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rb-mgr-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `ready` every 50 ms until it holds; fails after [`PATIENCE`].
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process this test started: killed (by its pid) and reaped when dropped.
struct Proc(Child);

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        Proc(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn signal(&mut self, s: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), s);
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request a fake front-end got, with the text of the file a `reload` named.
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    file: Option<String>,
}

/// A front-end's control socket answering as a running front-end would.
struct Fake {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Its events, as a front-end's (`events SEQ` answers from them).
    events: robustifier::events::Events,
}

impl Fake {
    fn start(socket: PathBuf, name: &str) -> Fake {
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = robustifier::events::Events::new(name, None);
        let (s, name, ev) = (seen.clone(), name.to_owned(), events.clone());
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
                let reply = match verb {
                    "status" => format!(
                        "ok {{\"frontend\":\"{name}\",\"pid\":1,\"version\":\"fake\",\"routers\":[],\"ready\":true}}"
                    ),
                    "reload" => {
                        file = std::fs::read_to_string(arg).ok();
                        "ok {\"version\":\"fake\",\"summary\":\"fake reload\",\"restart_needed\":[]}"
                            .to_owned()
                    }
                    "drain" => format!("ok {{\"backend\":\"{arg}\",\"draining\":true}}"),
                    "manager" => "ok noted".to_owned(),
                    "events" => format!(
                        "ok {}",
                        serde_json::to_string(&ev.since(arg.parse().unwrap(), 200)).unwrap()
                    ),
                    _ => "error not a fake front-end request".to_owned(),
                };
                s.lock().unwrap().push(Seen {
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
    fn emit(&self, i: u32) {
        let backend = format!("mx{i}");
        self.events.emit(robustifier::events::Kind::BackendDown {
            backend,
            pool: "mx".into(),
            reason: "test".into(),
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn reloads(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.line.starts_with("reload "))
            .collect()
    }
}

/// A cluster on loopback: its certificates, the manager, and members with fake front-ends.
struct Cluster {
    dir: PathBuf,
    port: u16,
    /// The manager's `/metrics` (bearer token [`METRICS_TOKEN`]).
    metrics_port: u16,
    manager: Option<Proc>,
    members: BTreeMap<String, Proc>,
    fakes: BTreeMap<String, Fake>,
}

impl Cluster {
    /// The certificates, the manager running, and `members` each with its fake front-end
    /// (not started).
    fn new(tag: &str, members: &[&str]) -> Cluster {
        let dir = tempdir(tag);
        let mut init = Command::new(BIN);
        init.args(["cluster", "init", "--dir"])
            .arg(dir.join("pki"))
            .args(["--name", "test", "--manager-name", "127.0.0.1"])
            .args(["--operator", "alice"]);
        for m in members {
            init.args(["--member", m]);
        }
        let out = init.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let fakes = members
            .iter()
            .map(|m| {
                let fake = Fake::start(dir.join(format!("{m}.sock")), m);
                ((*m).to_owned(), fake)
            })
            .collect();
        let mut c = Cluster {
            dir,
            port: free_port(),
            metrics_port: free_port(),
            manager: None,
            members: BTreeMap::new(),
            fakes,
        };
        c.start_manager();
        c
    }

    fn pki(&self, file: &str) -> PathBuf {
        self.dir.join("pki").join(file)
    }

    fn state(&self) -> PathBuf {
        self.dir.join("manager")
    }

    /// Starts the manager (on the same port and state every time) and waits until it
    /// answers an operator.
    fn start_manager(&mut self) {
        let render = self.dir.join("render");
        std::fs::create_dir_all(&render).unwrap();
        let token = self.dir.join("metrics.token");
        std::fs::write(&token, METRICS_TOKEN).unwrap();
        self.manager = Some(Proc::spawn(
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
                .args([
                    "--metrics-listen",
                    &format!("127.0.0.1:{}", self.metrics_port),
                ])
                .arg("--metrics-token-file")
                .arg(token),
        ));
        wait_until("the manager answers", || {
            self.cli(&["log", "--json"]).status.success()
        });
    }

    fn stop_manager(&mut self, s: nix::sys::signal::Signal) {
        self.manager.take().unwrap().signal(s);
    }

    fn start_member(&mut self, name: &str) {
        let p = Proc::spawn(
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
                .arg(self.dir.join(format!("member-{name}")))
                .arg("--socket")
                .arg(&self.fakes[name].socket)
                .args(["--max-retry-ms", "200", "--alarm-after-ms", "1000"]),
        );
        self.members.insert(name.to_owned(), p);
    }

    fn stop_member(&mut self, name: &str) {
        self.members
            .remove(name)
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// `robustifier cluster ARGS` as operator alice.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(
            args,
            &self.pki("operators/alice.pem"),
            &self.pki("operators/alice.key"),
        )
    }

    fn cli_as(&self, args: &[&str], cert: &Path, key: &Path) -> Output {
        self.cli_command(args, cert, key).output().unwrap()
    }

    fn cli_command(&self, args: &[&str], cert: &Path, key: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("cluster")
            .args(args)
            .env("ROBUSTIFIER_MANAGER", format!("127.0.0.1:{}", self.port))
            .env("ROBUSTIFIER_CA", self.pki("ca.pem"))
            .env("ROBUSTIFIER_CERT", cert)
            .env("ROBUSTIFIER_KEY", key);
        cmd
    }

    /// The cluster configuration with back-end mx1 at `weight`, and `extra` lines for
    /// member `extra_for`.
    fn config(&self, weight: u32, extra_for: &str, extra: &str) -> String {
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
    fn commit(&self, config: &str, base: u64, more: &[&str]) -> Output {
        let file = self.write(&format!("commit-{}.toml", fastrand_name()), config);
        let mut args = vec!["commit", file.to_str().unwrap(), "--base"];
        let base = base.to_string();
        args.push(&base);
        args.extend_from_slice(more);
        self.cli(&args)
    }

    fn commit_ok(&self, config: &str, base: u64, more: &[&str]) {
        let out = self.commit(config, base, more);
        assert!(out.status.success(), "commit on {base}: {}", text(&out));
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let f = self.dir.join(name);
        std::fs::write(&f, content).unwrap();
        f
    }

    fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn head(&self) -> u64 {
        self.status()["head"].as_u64().unwrap()
    }

    /// The log, oldest first.
    fn log(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["log", "--json", "--limit", "10000"]);
        assert!(out.status.success(), "{}", text(&out));
        let mut log: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        log.sort_by_key(|v| v["number"].as_u64().unwrap());
        log
    }

    /// A version's text as `cluster show` prints it, without its first (header) line.
    fn show(&self, args: &[&str]) -> String {
        let mut all = vec!["show"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(out.status.success(), "{}", text(&out));
        let s = String::from_utf8(out.stdout).unwrap();
        s.split_once('\n').unwrap().1.to_owned()
    }

    /// Waits until every configured member reports `version` applied.
    fn wait_applied(&self, version: u64) {
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
fn fastrand_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn of_two_concurrent_commits_on_one_base_exactly_one_wins() {
    let c = Cluster::new("race", &["fe1"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    let a = c.write("a.toml", &c.config(2, "", ""));
    let b = c.write("b.toml", &c.config(3, "", ""));
    let (alice, key) = (c.pki("operators/alice.pem"), c.pki("operators/alice.key"));
    // Both processes started before either is waited for.
    let children: Vec<Child> = [&a, &b]
        .iter()
        .map(|f| {
            c.cli_command(
                &["commit", f.to_str().unwrap(), "--base", "1"],
                &alice,
                &key,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|ch| ch.wait_with_output().unwrap())
        .collect();
    let won: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    let lost: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        outs.iter().map(text).collect::<Vec<_>>()
    );
    let why = text(lost[0]);
    assert!(
        why.contains("stale") || why.contains("head is version 2"),
        "{why}"
    );
    assert_eq!(c.head(), 2);
    assert_eq!(c.log().len(), 2, "the loser left no version");
}

#[test]
fn an_unconfirmed_commit_comes_back_and_a_confirmed_one_stays() {
    let mut c = Cluster::new("confirm", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    c.commit_ok(&c.config(2, "", ""), 1, &["--confirm-secs", "2"]);
    wait_until("the manager reverts version 2", || c.log().len() >= 3);
    let log = c.log();
    assert_eq!(log[2]["number"], 3);
    assert_eq!(log[2]["author"], "manager (confirm timeout)", "{log:?}");
    assert_eq!(
        c.show(&["3"]),
        c.show(&["1"]),
        "version 3 is version 1 again"
    );
    assert_ne!(c.show(&["2"]), c.show(&["1"]));
    c.wait_applied(3);
    assert!(c.status()["pending"].is_null());

    c.commit_ok(&c.config(4, "", ""), 3, &["--confirm-secs", "2"]);
    assert!(
        !c.status()["pending"].is_null(),
        "version 4 awaits confirmation"
    );
    let out = c.cli(&["confirm"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("version 4 confirmed"), "{}", text(&out));
    // Well past the deadline the manager checks every second: nothing came back.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.log().len(), 4, "{:?}", c.log());
    assert!(c.status()["pending"].is_null());
    c.wait_applied(4);
}

#[test]
fn a_text_one_member_refuses_is_refused_naming_it() {
    let c = Cluster::new("refuse", &["fe1", "fe2"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    let missing = c.dir.join("no-such-dir");
    let tls = format!(
        "tls = {{ certificate = \"{0}/cert.pem\", key = \"{0}/key.pem\" }}",
        missing.display()
    );
    let out = c.commit(&c.config(2, "fe2", &tls), 1, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("member fe2 refuses it"),
        "{}",
        text(&out)
    );
    assert_eq!(c.head(), 1, "head unchanged");
    // The same change for no member goes through: it was fe2's files.
    c.commit_ok(&c.config(2, "", ""), 1, &[]);
}

#[test]
fn a_manager_killed_during_commits_keeps_a_consistent_journal_and_trail() {
    use robustifier::manager::{client::Client, wire::Request};
    let mut c = Cluster::new("sigkill", &["fe1"]);
    c.start_member("fe1");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let looping = {
        let (stop, committed) = (stop.clone(), committed.clone());
        let addr = format!("127.0.0.1:{}", c.port);
        let (ca, cert, key) = (
            c.pki("ca.pem"),
            c.pki("operators/alice.pem"),
            c.pki("operators/alice.key"),
        );
        let configs: Vec<String> = (0..400).map(|w| c.config(w % 200 + 1, "", "")).collect();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // Each commit on its own connection, on the head it just read; every
                // failure (the manager gone, a race) is tried again with the next text.
                for text in configs.into_iter().cycle() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut client) = Client::connect(&addr, &ca, &cert, &key).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let Ok(v) = client
                        .call(&Request::Log { limit: 1 }, Duration::from_secs(10))
                        .await
                    else {
                        continue;
                    };
                    let base = v[0]["number"].as_u64().unwrap_or(0);
                    let request = Request::Commit {
                        base,
                        text,
                        comment: String::new(),
                        confirm_secs: None,
                    };
                    if client.call(&request, Duration::from_secs(10)).await.is_ok() {
                        committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        })
    };
    let count = || committed.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("commits before the kill", || count() >= 10);
    c.stop_manager(nix::sys::signal::Signal::SIGKILL);
    let at_kill = count();
    c.start_manager();
    wait_until("commits after the restart", || count() >= at_kill + 10);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    looping.join().unwrap();

    let log = c.log();
    let numbers: Vec<u64> = log.iter().map(|v| v["number"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "consecutive versions");
    assert!(numbers.len() as u64 > at_kill + 10);
    for v in &numbers {
        let out = c.cli(&["show", &v.to_string()]);
        assert!(out.status.success(), "show {v}: {}", text(&out));
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(
            first,
            format!("# robustifier cluster configuration, version {v}")
        );
    }
    let out = c.cli(&["audit", "--verify"]);
    assert!(out.status.success(), "{}", text(&out));
    // The member follows the restarted manager to the head.
    c.wait_applied(*numbers.last().unwrap());
}

#[test]
fn an_audit_entry_edited_while_the_manager_is_stopped_is_found() {
    let mut c = Cluster::new("tamper", &["fe1"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.commit_ok(&c.config(2, "", ""), 1, &[]);
    c.commit_ok(&c.config(3, "", ""), 2, &[]);
    let out = c.cli(&["audit", "--verify"]);
    assert!(out.status.success(), "intact first: {}", text(&out));
    c.stop_manager(nix::sys::signal::Signal::SIGTERM);
    {
        const ENTRIES: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("entries");
        let db = redb::Database::open(c.state().join("audit.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(ENTRIES).unwrap();
            use redb::ReadableTable as _;
            let bytes = t.get(2).unwrap().unwrap().value().to_vec();
            let mut entry: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(
                entry["what"].as_str().unwrap().contains("version 2"),
                "{entry}"
            );
            entry["what"] = "version 2 on 1: nothing to see".into();
            t.insert(2, serde_json::to_vec(&entry).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    c.start_manager();
    let out = c.cli(&["audit", "--verify"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("entry 2 was edited"), "{}", text(&out));
}

#[test]
fn foreign_and_missing_client_certificates_are_refused() {
    let c = Cluster::new("foreign", &["fe1"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    let other = c.dir.join("other");
    let out = Command::new(BIN)
        .args(["cluster", "init", "--dir"])
        .arg(&other)
        .args(["--name", "other", "--manager-name", "127.0.0.1"])
        .args(["--operator", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let file = c.write("foreign.toml", &c.config(7, "", ""));
    let out = c.cli_as(
        &["commit", file.to_str().unwrap(), "--base", "1"],
        &other.join("operators/alice.pem"),
        &other.join("operators/alice.key"),
    );
    assert!(!out.status.success(), "{}", text(&out));

    // No certificate at all: a TLS client that trusts the cluster's CA but shows nothing.
    let reply = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(without_certificate(c.port, &c.pki("ca.pem"), &file));
    // The connection fails (a TLS alert): no reply at all, let alone a commit.
    assert!(
        ["handshake:", "read:", "write:"]
            .iter()
            .any(|p| reply.starts_with(p))
            || reply.is_empty(),
        "{reply}"
    );

    assert_eq!(c.head(), 1, "nothing changed");
    assert_eq!(c.log().len(), 1);
}

/// Sends a commit without a client certificate; returns what came back (an error text
/// when the connection failed).
async fn without_certificate(port: u16, ca: &Path, file: &Path) -> String {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return format!("handshake: {e}"),
    };
    let request = serde_json::json!({
        "op": "commit",
        "base": 1,
        "text": std::fs::read_to_string(file).unwrap(),
    });
    if let Err(e) = tls.write_all(format!("{request}\n").as_bytes()).await {
        return format!("write: {e}");
    }
    let mut got = Vec::new();
    match tokio::time::timeout(PATIENCE, tls.read_to_end(&mut got)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&got).into_owned(),
        Ok(Err(e)) => format!("read: {e}"),
        Err(_) => panic!("the manager neither answered nor closed"),
    }
}

#[test]
fn a_member_back_from_down_applies_only_the_newest() {
    let mut c = Cluster::new("catchup", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    c.stop_member("fe2");
    let before = c.fakes["fe2"].reloads().len();
    assert_eq!(before, 1);
    for v in 2..=4 {
        c.commit_ok(&c.config(v as u32, "", ""), v - 1, &[]);
    }
    c.start_member("fe2");
    c.wait_applied(4);
    let after = c.fakes["fe2"].reloads();
    assert_eq!(
        after.len() - before,
        1,
        "one reload after the restart: {:?}",
        &after[before..]
    );
    assert_eq!(
        after[before].file.as_deref(),
        Some(c.show(&["4", "--member", "fe2"]).as_str()),
        "it carries the head's rendering"
    );
    assert_eq!(c.fakes["fe1"].reloads().len(), 4, "fe1 took each version");
}

#[test]
fn a_drain_reaches_every_front_end_and_is_audited() {
    let mut c = Cluster::new("drain", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    let out = c.cli(&["drain", "mx1"]);
    assert!(out.status.success(), "{}", text(&out));
    for (name, fake) in &c.fakes {
        assert!(
            fake.seen().iter().any(|s| s.line == "drain mx1"),
            "{name}: {:?}",
            fake.seen()
        );
    }
    let out = c.cli(&["audit"]);
    assert!(out.status.success(), "{}", text(&out));
    let audit = text(&out);
    for name in ["fe1", "fe2"] {
        assert!(
            audit.lines().any(
                |l| l.contains("operator alice") && l.contains(&format!("drain mx1 on {name}"))
            ),
            "{audit}"
        );
    }
}

/// `cluster logs --json`: each entry's member and sequence number, in the order printed.
fn merged(c: &Cluster) -> Vec<(String, u64)> {
    let out = c.cli(&["logs", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                e["member"].as_str().unwrap().to_owned(),
                e["event"]["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn events_reach_the_merged_log_once_across_a_manager_and_a_member_away() {
    let mut c = Cluster::new("logs", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    for i in 0..3 {
        c.fakes["fe1"].emit(i);
    }
    c.fakes["fe2"].emit(0);
    wait_until("4 events merged", || merged(&c).len() == 4);

    // The manager away while events happen on both front-ends.
    c.stop_manager(nix::sys::signal::Signal::SIGKILL);
    for i in 3..8 {
        c.fakes["fe1"].emit(i);
    }
    c.fakes["fe2"].emit(1);
    c.start_manager();
    wait_until("10 events merged", || merged(&c).len() == 10);

    // A member away (its front-end keeps the events meanwhile).
    c.stop_member("fe2");
    c.fakes["fe2"].emit(2);
    c.fakes["fe2"].emit(3);
    c.start_member("fe2");
    wait_until("12 events merged", || merged(&c).len() == 12);
    std::thread::sleep(Duration::from_secs(2));
    let all = merged(&c);
    let of = |m: &str| -> Vec<u64> {
        all.iter()
            .filter(|(member, _)| member == m)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(
        of("fe1"),
        (1..=8).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(of("fe2"), [1, 2, 3, 4]);
}

#[test]
fn a_front_end_hears_when_its_manager_is_out_of_reach_and_back() {
    let mut c = Cluster::new("reach", &["fe1"]);
    c.start_member("fe1");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    let said = |c: &Cluster| -> Vec<String> {
        c.fakes["fe1"]
            .seen()
            .into_iter()
            .map(|s| s.line)
            .filter(|l| l.starts_with("manager "))
            .collect()
    };
    // Reachable from the start: the front-end hears so (it leaves SNMP to the manager).
    // (It may hear so more than once: at each connection and when it is seen to restart.)
    wait_until("the front-end told the manager is up", || {
        !said(&c).is_empty()
    });
    let lines = said(&c);
    assert!(lines.iter().all(|l| l == "manager up"), "{lines:?}");
    c.stop_manager(nix::sys::signal::Signal::SIGKILL);
    let down = |c: &Cluster| said(c).iter().position(|l| l.starts_with("manager down "));
    wait_until("the front-end told", || down(&c).is_some());
    let at = down(&c).unwrap();
    assert_eq!(said(&c).len(), at + 1, "said once: {:?}", said(&c));
    c.start_manager();
    wait_until("the front-end told it is back", || said(&c).len() > at + 1);
    assert_eq!(said(&c)[at + 1], "manager up");
}

/// `GET /metrics` of the manager: the status code and the body.
fn manager_metrics(c: &Cluster, token: Option<&str>) -> (u16, String) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.metrics_port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply[9..12].parse().unwrap();
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

#[test]
fn the_manager_metrics_show_a_member_behind() {
    let mut c = Cluster::new("metrics", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    wait_until("fe1 on version 1", || {
        c.status()["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "fe1" && m["applied"] == 1)
    });
    assert_eq!(manager_metrics(&c, None).0, 401);
    assert_eq!(manager_metrics(&c, Some("wrong-token-0123456789")).0, 401);
    let (code, body) = manager_metrics(&c, Some(METRICS_TOKEN));
    assert_eq!(code, 200, "{body}");
    for line in [
        "robustifier_manager_head_version 1",
        "robustifier_manager_member_drift{member=\"fe1\"} 0",
        "robustifier_manager_member_drift{member=\"fe2\"} 1",
        "robustifier_manager_member_connected{member=\"fe2\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "{line}\n{body}");
    }
}
