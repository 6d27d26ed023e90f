//! What the tests without root share: scripted back-ends on loopback, a front-end built
//! on [`UserSpace`] in this process, and a line-oriented client.
#![allow(dead_code, reason = "each test file uses a part of the support")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a step that fails fails the test"
)]

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use robustifier::{
    config::Config,
    frontend::{Command, Frontend, Reloaded, UserSpace},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::{Semaphore, mpsc, oneshot},
    task::JoinHandle,
};

/// A generous bound on any single wait, so that a broken test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A fresh directory for one test's files.
pub fn tempdir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "rb-frontend-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What a scripted SMTP back-end was sent.
#[derive(Default)]
pub struct Seen {
    /// Each message's data as received (dot-stuffed lines, without the final dot).
    pub messages: Vec<String>,
    /// Every command line (probes included).
    pub commands: Vec<String>,
}

/// An SMTP server on loopback that accepts every command and every message. With `hold`,
/// its reply to an end of data waits for a permit of that semaphore.
pub struct SmtpBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    pub hold: Option<Arc<Semaphore>>,
}

impl SmtpBackend {
    pub async fn start() -> SmtpBackend {
        SmtpBackend::start_with(None).await
    }

    /// A back-end whose end-of-data replies wait for `hold`'s permits.
    pub async fn holding() -> SmtpBackend {
        SmtpBackend::start_with(Some(Arc::new(Semaphore::new(0)))).await
    }

    async fn start_with(hold: Option<Arc<Semaphore>>) -> SmtpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, h) = (Arc::clone(&seen), hold.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(smtp_conversation(stream, Arc::clone(&s), h.clone()));
            }
        });
        SmtpBackend { addr, seen, hold }
    }

    pub fn messages(&self) -> Vec<String> {
        self.seen.lock().unwrap().messages.clone()
    }

    /// Whether any connection that was not a health probe reached it.
    pub fn had_sessions(&self) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.commands
            .iter()
            .any(|c| c.to_ascii_uppercase().starts_with("MAIL"))
    }
}

async fn smtp_conversation(
    stream: TcpStream,
    seen: Arc<Mutex<Seen>>,
    hold: Option<Arc<Semaphore>>,
) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    if wr.write_all(b"220 backend.test ESMTP\r\n").await.is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_owned();
        seen.lock().unwrap().commands.push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-backend.test\r\n250-PIPELINING\r\n250-XCLIENT ADDR NAME HELO PROTO\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("XCLIENT") {
            // As Postfix: the session starts again with a greeting.
            b"220 backend.test ESMTP\r\n"
        } else if upper == "DATA" {
            if wr.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if rd.read_line(&mut l).await.unwrap_or(0) == 0 {
                    return;
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(&l);
            }
            if let Some(hold) = &hold {
                hold.acquire().await.unwrap().forget();
            }
            seen.lock().unwrap().messages.push(data);
            b"250 2.0.0 queued\r\n"
        } else if upper == "QUIT" {
            let _ = wr.write_all(b"221 2.0.0 bye\r\n").await;
            return;
        } else {
            b"250 2.0.0 ok\r\n"
        };
        if wr.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// A POP3 server on loopback with one mailbox: any user, password "secret", one message.
pub async fn pop3_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let users = Arc::new(Mutex::new(Vec::new()));
    let u = Arc::clone(&users);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let u = Arc::clone(&u);
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut rd = BufReader::new(rd);
                let _ = wr.write_all(b"+OK store ready\r\n").await;
                loop {
                    let mut line = String::new();
                    if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
                    let reply: &[u8] = match verb.to_ascii_uppercase().as_str() {
                        "CAPA" => b"+OK\r\nUSER\r\nUIDL\r\n.\r\n",
                        "USER" => {
                            u.lock().unwrap().push(arg.to_owned());
                            b"+OK\r\n"
                        }
                        "PASS" if arg == "secret" => b"+OK logged in\r\n",
                        "PASS" => b"-ERR [AUTH] invalid\r\n",
                        "STAT" => b"+OK 1 42\r\n",
                        "QUIT" => {
                            let _ = wr.write_all(b"+OK bye\r\n").await;
                            return;
                        }
                        _ => b"+OK\r\n",
                    };
                    if wr.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, users)
}

/// A front-end running in this process on plain loopback sockets.
pub struct Running {
    /// Where each service accepts, by service name.
    pub addrs: Vec<(String, SocketAddr)>,
    pub commands: mpsc::Sender<Command>,
    pub served: JoinHandle<anyhow::Result<()>>,
    pub file: PathBuf,
}

impl Running {
    /// Writes `config` to `dir/robustifier.toml` and starts a front-end on it; each
    /// service listens on a port of 127.0.0.1 the system picks.
    pub fn start(dir: &Path, config: &str) -> Running {
        Running::start_with(dir, config, Vec::new())
    }

    /// [`Running::start`], with sockets for services a later reload adds, by name.
    pub fn start_with(dir: &Path, config: &str, later: Vec<(&str, StdListener)>) -> Running {
        let file = dir.join("robustifier.toml");
        std::fs::write(&file, config).unwrap();
        let cfg = Config::load(&file).unwrap();
        let mut kernel = UserSpace::new();
        for (name, l) in later {
            kernel = kernel.with_listener(name, l);
        }
        for service in &cfg.services {
            let l = StdListener::bind("127.0.0.1:0").unwrap();
            kernel = kernel.with_listener(&service.name, l);
        }
        let frontend = Frontend::open(cfg, Box::new(kernel)).unwrap();
        let addrs = frontend.addresses();
        let (commands, rx) = mpsc::channel(4);
        let served = tokio::spawn(frontend.serve(rx));
        Running {
            addrs,
            commands,
            served,
            file,
        }
    }

    pub fn addr(&self, service: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener for service {service}"))
    }

    /// Rewrites the configuration file and reloads; returns the reload's outcome.
    pub async fn reload(&self, config: &str) -> Result<Reloaded, String> {
        std::fs::write(&self.file, config).unwrap();
        let (done, outcome) = oneshot::channel();
        self.commands
            .send(Command::Reload {
                file: None,
                done: Some(done),
            })
            .await
            .unwrap();
        outcome.await.unwrap().map_err(|e| e.to_string())
    }

    /// Stops the front-end and waits for `serve` to return.
    pub async fn stop(self) {
        self.commands.send(Command::Stop).await.unwrap();
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("the front-end stops")
            .unwrap()
            .unwrap();
    }
}

/// A front-end configuration: `[frontend]` serving loopback clients, then `rest`.
pub fn config(rest: &str) -> String {
    format!("[frontend]\nname = \"fe-test\"\nserve_loopback_clients = true\n{rest}")
}

/// A client speaking lines to a front-end.
pub struct Client {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let (rd, wr) = stream.into_split();
        Client {
            rd: BufReader::new(rd),
            wr,
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.wr
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// One line, without its CRLF; empty at the end of the stream.
    pub async fn line(&mut self) -> String {
        let mut l = String::new();
        tokio::time::timeout(PATIENCE, self.rd.read_line(&mut l))
            .await
            .expect("a line within the patience")
            .unwrap();
        l.trim_end().to_owned()
    }

    /// An SMTP reply: every line up to the one with a space after the code.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let l = self.line().await;
            all.push_str(&l);
            all.push('\n');
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// Sends `line` and returns the SMTP reply.
    pub async fn ask(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    /// Greeting to the end of DATA's 354 for one message from `from` to `to`.
    pub async fn smtp_until_data(&mut self, to: &str) {
        assert!(self.reply().await.starts_with("220"), "greeting");
        assert!(self.ask("EHLO client.test").await.starts_with("250"));
        assert!(
            self.ask("MAIL FROM:<sender@client.test>")
                .await
                .starts_with("250")
        );
        let rcpt = self.ask(&format!("RCPT TO:<{to}>")).await;
        assert!(rcpt.starts_with("250"), "RCPT: {rcpt}");
        assert!(self.ask("DATA").await.starts_with("354"));
    }

    /// One whole message; returns the reply to its end of data.
    pub async fn send_message(&mut self, to: &str, body: &str) -> String {
        self.smtp_until_data(to).await;
        self.send(&format!("Subject: test\r\n\r\n{body}\r\n."))
            .await;
        self.reply().await
    }
}

impl Client {
    /// [`Client::send_message`] for a client that has read the greeting already.
    pub async fn send_message_after_greeting(&mut self, to: &str) -> String {
        assert!(self.ask("EHLO client.test").await.starts_with("250"));
        assert!(
            self.ask("MAIL FROM:<sender@client.test>")
                .await
                .starts_with("250")
        );
        assert!(
            self.ask(&format!("RCPT TO:<{to}>"))
                .await
                .starts_with("250")
        );
        assert!(self.ask("DATA").await.starts_with("354"));
        self.send("Subject: test\r\n\r\nbody\r\n.").await;
        self.reply().await
    }
}

/// A stderr line reader with a wait for a line containing some text.
pub struct Log(std::sync::mpsc::Receiver<String>);

impl Log {
    pub fn follow(stderr: std::process::ChildStderr) -> Log {
        let (lines, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok)
            {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        Log(log)
    }

    pub fn wait(&self, what: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(what) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line with {what:?}");
    }
}

/// A loopback port free now (bound, then released), for a process that binds it itself.
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `robustifier run --without-kernel --config FILE` as a process, once it says it is ready,
/// with its log followed.
pub fn run_without_kernel(file: &Path) -> (std::process::Child, Log) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_robustifier"))
        .args(["run", "--without-kernel", "--config"])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::follow(child.stderr.take().unwrap());
    log.wait("robustifier ready");
    (child, log)
}

/// `robustifier ARGS` (the binary under test), run to its end.
pub fn robustifier(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_robustifier"))
        .args(args)
        .output()
        .unwrap()
}

/// `robustifier ha status --json` of the front-end on `socket`, which must answer.
pub fn ha_status(socket: &Path) -> serde_json::Value {
    let out = robustifier(&[
        "ha",
        "status",
        "--json",
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A daemon this test started: killed (SIGKILL) if the test ends before [`stop_daemon`],
/// so that a failing test leaves no process behind.
pub struct Daemon(Option<std::process::Child>);

impl Daemon {
    pub fn new(child: std::process::Child) -> Daemon {
        Daemon(Some(child))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM to a daemon this test started; it must exit 0 (within [`PATIENCE`]).
pub async fn stop_daemon(mut daemon: Daemon) {
    let mut child = daemon.0.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(exit) = child.try_wait().unwrap() {
                return Some(exit);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let exit = exit.expect("the daemon did not stop on SIGTERM");
    assert!(exit.success(), "{exit}");
}

/// An SMTP server on `port` that greets and says yes to everything: enough for the health
/// probes (a back-end that comes up on a port chosen before).
pub async fn greeter(port: u16) -> JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 mx.test ESMTP\r\n").await;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let quit = line.to_ascii_uppercase().starts_with("QUIT");
                    let reply: &[u8] = if quit { b"221 bye\r\n" } else { b"250 ok\r\n" };
                    if w.write_all(reply).await.is_err() || quit {
                        return;
                    }
                    line.clear();
                }
            });
        }
    })
}

/// `GET path` on loopback `port`, with a bearer token: the status code and the body.
pub fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply[9..12].parse().unwrap();
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // A chunked body (axum's default for a streamed one) is read whole: the callers look
    // for lines, which chunk sizes do not break.
    (code, body.to_owned())
}

/// `promtool check metrics` on `text`. Required under `cargo xtask test` (setup installs
/// it); elsewhere a missing promtool is said, not hidden.
pub fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("ROBUSTIFIER_REQUIRE_PRIVILEGED").is_none(),
                "promtool not runnable ({e}): `cargo xtask setup` installs it (Debian's prometheus)"
            );
            eprintln!("NOT CHECKED: promtool not runnable ({e}); install Debian's prometheus");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refuses the metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub mod cluster;

/// The front-end processes a test started: killed if the test fails half-way, so that none
/// outlives it.
#[derive(Default)]
pub struct Started(pub Vec<u32>);

impl Drop for Started {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pid in &self.0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
