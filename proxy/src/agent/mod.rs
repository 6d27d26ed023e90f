//! `robustifier agent`: runs on a back-end host and tells front-ends how loaded it is. On
//! each TCP connection it writes one line and closes:
//!
//! ```text
//! robustifier-agent/1 runq=0.52 mailq=12 disk_permille=431 weight=100 drain=0
//! ```
//!
//! - `runq`: one-minute load average (`/proc/loadavg`);
//! - `mailq`: messages in the local MTA's queue, asked the MTA's own way (Postfix
//!   `postqueue -j`, Exim `exim -bpc`, OpenSMTPD `smtpctl show queue`) or counted as files
//!   in a spool directory;
//! - `disk_permille`: use of the spool file system;
//! - `weight`, `drain`: what the operator wrote in the state file (`weight=N`, `drain=1`).
//!
//! Figures are gathered at most once a second, whatever the number of front-ends asking.
//!
//! A front-end may instead send a command: `queue` gets the mail queue per destination
//! domain ([`queue`]) as one JSON line, gathered at most once every
//! [`QUEUE_CACHE`] seconds.
//!
//! With `--maillog`, the agent also ships its MTA's log lines to the cluster manager
//! ([`maillog`]), for `cluster trace`.
//!
//! Before the report comes the challenge and response of `crate::agent_wire`:
//! a front-end without the shared key gets nothing. The agent refuses to start without a
//! key unless told `--insecure-no-key`, and binds only the address it is given.

pub mod maillog;
pub mod moves;
pub mod queue;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    process::Command,
    sync::Mutex,
};
use tracing::{debug, info, warn};

use crate::{
    agent_wire::{
        AgentKey, CHALLENGE_MAGIC, MAGIC, MAX_COMMAND, MAX_LINE, MoveReply, Op, PollError,
        QueueReply, random_nonce,
    },
    lines::{Line, read_line},
};

/// How long a front-end has to answer the challenge.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one reading of the queue per domain serves commands.
const QUEUE_CACHE: Duration = Duration::from_secs(2);
/// Pause after a failed accept (out of descriptors, say) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mta {
    Postfix,
    Exim,
    Opensmtpd,
    /// Count the files under `--spool`.
    Spool,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub mta: Mta,
    /// Postfix configuration directory (`postqueue -c`), Exim configuration file (`-C`).
    pub mta_config: Option<PathBuf>,
    /// The spool whose file system's use is reported (and counted, for `Mta::Spool`).
    pub spool: PathBuf,
    pub state_file: Option<PathBuf>,
    /// `None` only when the operator asked for `--insecure-no-key`.
    pub key: Option<AgentKey>,
    /// Where moves keep their journals (`--state-dir`); without it moves are refused.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub run_queue: f64,
    pub mail_queue: u32,
    pub disk_permille: u32,
    pub weight: Option<u32>,
    pub drain: bool,
}

impl Figures {
    pub fn line(&self) -> String {
        let mut l = format!(
            "{MAGIC} runq={:.2} mailq={} disk_permille={} drain={}",
            self.run_queue,
            self.mail_queue,
            self.disk_permille,
            u8::from(self.drain)
        );
        if let Some(w) = self.weight {
            l.push_str(&format!(" weight={w}"));
        }
        l.push('\n');
        l
    }
}

pub async fn gather(o: &Options) -> Figures {
    // File reads, statvfs and the spool walk block: they run off the runtime's threads.
    let (spool, state, count) = (o.spool.clone(), o.state_file.clone(), o.mta == Mta::Spool);
    let local = tokio::task::spawn_blocking(move || local_figures(&spool, state.as_deref(), count))
        .await
        .unwrap_or_else(|e| {
            warn!(error = %e, "gathering local figures failed");
            (Figures::default(), None)
        });
    let (mut f, spool_count) = local;
    match spool_count {
        Some(n) => f.mail_queue = n,
        None => match mail_queue(o).await {
            Ok(n) => f.mail_queue = n,
            Err(e) => warn!(error = %e, "cannot read the mail queue"),
        },
    }
    f
}

/// Figures read from local files (blocking): load, disk, the operator's state file, and
/// the spool count when `count` is set.
fn local_figures(spool: &Path, state: Option<&Path>, count: bool) -> (Figures, Option<u32>) {
    let mut f = Figures {
        run_queue: run_queue().unwrap_or(0.0),
        disk_permille: disk_permille(spool).unwrap_or(0),
        ..Figures::default()
    };
    if let Some(state) = state
        && let Ok(text) = std::fs::read_to_string(state)
    {
        for line in text.lines() {
            match line.trim().split_once('=') {
                Some(("weight", v)) => f.weight = v.trim().parse().ok(),
                Some(("drain", v)) => f.drain = v.trim() == "1",
                _ => {}
            }
        }
    }
    (f, count.then(|| count_files(spool, 8)))
}

fn run_queue() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Used share of the file system holding `path`, as `df` counts it (blocks reserved for
/// root count as unavailable).
pub fn disk_permille(path: &Path) -> Option<u32> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let used = s.blocks().saturating_sub(s.blocks_free()) as f64;
    let avail = s.blocks_available() as f64;
    (used + avail > 0.0).then(|| ((used / (used + avail)) * 1000.0).round() as u32)
}

/// Why the mail queue could not be counted; the agent then reports no figure for it.
#[derive(Debug, thiserror::Error)]
enum QueueError {
    #[error("{command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("exim -bpc: {0}")]
    Count(#[source] std::num::ParseIntError),
    #[error("counting the spool: {0}")]
    Spool(#[source] tokio::task::JoinError),
}

async fn mail_queue(o: &Options) -> Result<u32, QueueError> {
    let run = |mut cmd: Command| async move {
        let out = cmd.output().await.map_err(|source| QueueError::Spawn {
            command: format!("{cmd:?}"),
            source,
        })?;
        if !out.status.success() {
            return Err(QueueError::Failed {
                command: format!("{cmd:?}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match o.mta {
        Mta::Postfix => {
            let mut cmd = Command::new("postqueue");
            if let Some(dir) = &o.mta_config {
                cmd.arg("-c").arg(dir);
            }
            cmd.arg("-j");
            // One JSON object per queued message.
            Ok(run(cmd)
                .await?
                .lines()
                .filter(|l| l.starts_with('{'))
                .count() as u32)
        }
        Mta::Exim => {
            let mut cmd = Command::new("exim");
            if let Some(c) = &o.mta_config {
                cmd.arg("-C").arg(c);
            }
            cmd.arg("-bpc");
            run(cmd).await?.trim().parse().map_err(QueueError::Count)
        }
        Mta::Opensmtpd => {
            let mut cmd = Command::new("smtpctl");
            cmd.args(["show", "queue"]);
            Ok(run(cmd)
                .await?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count() as u32)
        }
        Mta::Spool => {
            let spool = o.spool.clone();
            tokio::task::spawn_blocking(move || count_files(&spool, 8))
                .await
                .map_err(QueueError::Spool)
        }
    }
}

fn count_files(dir: &Path, depth: u32) -> u32 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_file() => 1,
            Ok(t) if t.is_dir() && depth > 0 => count_files(&e.path(), depth - 1),
            _ => 0,
        })
        .sum()
}

/// Serves reports on `listen` (that address only) until the process is stopped.
pub async fn serve(listen: SocketAddr, o: Options) -> Result<(), AgentError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: listen,
            source,
        })?;
    info!(
        %listen,
        mta = ?o.mta,
        spool = %o.spool.display(),
        authenticated = o.key.is_some(),
        "agent listening"
    );
    if o.key.is_none() {
        warn!("no key: any host that reaches this port reads the report (--insecure-no-key)");
    }
    crate::notify::ready(&format!("agent listening on {listen}"));
    moves::resume(&o);
    let reports = Reports::new(o);
    accept_loop(|| listener.accept(), reports).await;
    Ok(())
}

/// The agent's options and its cache of figures, shared by its connections.
#[derive(Clone)]
pub struct Reports {
    o: Arc<Options>,
    cache: Arc<Mutex<Option<(Instant, Figures)>>>,
    queue: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Reports {
    pub fn new(o: Options) -> Reports {
        Reports {
            o: Arc::new(o),
            cache: Arc::default(),
            queue: Arc::default(),
        }
    }

    /// The reply to `op` with its argument, as one JSON line without its newline.
    /// `authenticated`: the command came with the key's MAC.
    async fn reply(&self, op: Op, arg: &str, authenticated: bool) -> String {
        match op {
            Op::Move => {
                let reply = if authenticated {
                    moves::command(&self.o, arg).await
                } else {
                    MoveReply::Error("moving mail needs an agent with a key (--key-file)".into())
                };
                serde_json::to_string(&reply)
                    .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
            }
            Op::Find => {
                let reply = if authenticated {
                    moves::find::answer(&self.o, arg).await
                } else {
                    crate::agent_wire::FindReply::Unknown(
                        "finding moved mail needs an agent with a key (--key-file)".into(),
                    )
                };
                serde_json::to_string(&reply)
                    .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
            }
            Op::Queue => {
                let mut c = self.queue.lock().await;
                if let Some((at, json)) = &*c
                    && at.elapsed() < QUEUE_CACHE
                {
                    return json.clone();
                }
                let reply = match queue::report(&self.o).await {
                    Ok(r) => QueueReply::Ok(r),
                    Err(e) => {
                        warn!(error = %e, "cannot read the mail queue per domain");
                        QueueReply::Error(e.to_string())
                    }
                };
                // Bounded by the parsers' limits, well under the reply bound.
                let json = serde_json::to_string(&reply)
                    .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
                *c = Some((Instant::now(), json.clone()));
                json
            }
        }
    }

    async fn figures(&self) -> Figures {
        let mut c = self.cache.lock().await;
        match *c {
            Some((at, f)) if at.elapsed() < Duration::from_secs(1) => f,
            _ => {
                let f = gather(&self.o).await;
                *c = Some((Instant::now(), f));
                f
            }
        }
    }
}

/// Accepts forever: a failed accept (out of descriptors, a connection reset before it was
/// taken) is logged and retried after a short pause instead of ending the agent.
pub async fn accept_loop<A, F, S>(mut accept: A, reports: Reports)
where
    A: FnMut() -> F,
    F: Future<Output = std::io::Result<(S, SocketAddr)>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let (stream, peer) = match accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "agent accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let reports = reports.clone();
        tokio::spawn(async move {
            match connection(stream, &reports).await {
                Ok(()) => debug!(%peer, "agent report sent"),
                Err(e) => warn!(%peer, error = %e, "agent poll refused or failed"),
            }
        });
    }
}

/// One poll: challenge, check the answer, then the sealed report; or, without a key, the
/// report at once.
async fn connection<S>(stream: S, reports: &Reports) -> Result<(), PollError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut s = BufReader::new(stream);
    let Some(key) = reports.o.key else {
        let line = reports.figures().await.line();
        s.write_all(line.as_bytes()).await?;
        s.flush().await?;
        // An old-style poll reads the report and goes; a command follows it.
        if let Ok(Ok(Line::Complete(l))) =
            tokio::time::timeout(ANSWER_TIMEOUT, read_line(&mut s, MAX_LINE)).await
        {
            let asked = String::from_utf8_lossy(&l);
            let mut w = asked.split_ascii_whitespace();
            if let (Some("command"), Some(Some(op)), None) = (
                w.next(),
                w.next().map(|o| o.strip_prefix("op=").and_then(Op::parse)),
                w.next(),
            ) {
                let json = reports.reply(op, "", false).await;
                s.write_all(format!("{json}\n").as_bytes()).await?;
            }
        }
        return Ok(s.shutdown().await?);
    };
    let challenge = random_nonce()?;
    s.write_all(
        format!(
            "{CHALLENGE_MAGIC} challenge={}\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, challenge)
        )
        .as_bytes(),
    )
    .await?;
    s.flush().await?;
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, read_line(&mut s, MAX_COMMAND)).await {
        Err(_) => return Err(PollError::Timeout),
        Ok(Ok(Line::Complete(l))) => String::from_utf8_lossy(&l).into_owned(),
        Ok(Ok(Line::TooLong)) => return Err(PollError::TooLong),
        Ok(Ok(Line::Eof)) => return Err(PollError::NoAnswer),
        Ok(Err(e)) => return Err(e.into()),
    };
    if answer.starts_with("command ") {
        let c = key
            .check_command(&challenge, &answer)
            .ok_or(PollError::BadAnswer)?;
        let json = reports.reply(c.op, &c.arg, true).await;
        let sealed = key.seal_reply(&challenge, &c.nonce, c.op, &json);
        s.write_all(sealed.as_bytes()).await?;
        return Ok(s.shutdown().await?);
    }
    let nonce = key
        .check_answer(&challenge, &answer)
        .ok_or(PollError::BadAnswer)?;
    let line = reports.figures().await.line();
    let sealed = key.seal(&challenge, &nonce, line.trim_end());
    s.write_all(sealed.as_bytes()).await?;
    Ok(s.shutdown().await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_wire::parse;

    #[tokio::test]
    async fn spool_agent_reports_what_the_front_end_parses() {
        let dir = std::env::temp_dir().join(format!("rb-agent-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("deferred/A")).unwrap();
        for i in 0..3 {
            std::fs::write(dir.join(format!("deferred/A/m{i}")), "x").unwrap();
        }
        let state = dir.join("state");
        std::fs::write(&state, "weight=25\ndrain=1\n").unwrap();
        let o = Options {
            mta: Mta::Spool,
            mta_config: None,
            spool: dir.clone(),
            state_file: Some(state.clone()),
            key: None,
            state_dir: None,
        };
        let f = gather(&o).await;
        assert_eq!(f.mail_queue, 4, "three messages and the state file");
        let r = parse(f.line().trim_end()).unwrap();
        assert_eq!((r.mail_queue, r.weight, r.drain), (4, Some(25), true));
        assert!(r.disk_permille <= 1000);
        std::fs::remove_dir_all(dir).unwrap();
    }

    use crate::{agent_wire::Endpoint, health::agent_client::poll};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

    fn spool_options(tag: &str, key: Option<AgentKey>) -> (Options, PathBuf) {
        let dir = std::env::temp_dir().join(format!("rb-agent-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..2 {
            std::fs::write(dir.join(format!("m{i}")), "x").unwrap();
        }
        let o = Options {
            mta: Mta::Spool,
            mta_config: None,
            spool: dir.clone(),
            state_file: None,
            key,
            state_dir: None,
        };
        (o, dir)
    }

    fn key(secret: &str) -> AgentKey {
        AgentKey::from_secret(secret.as_bytes()).unwrap()
    }

    /// An agent on a loopback port; every other accept fails when `flaky`.
    async fn agent(o: Options, flaky: bool) -> (SocketAddr, Arc<AtomicU32>) {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&calls);
        tokio::spawn(accept_loop(
            move || {
                let (l, n) = (Arc::clone(&listener), c.fetch_add(1, Ordering::SeqCst));
                async move {
                    if flaky && n % 2 == 0 {
                        Err(std::io::Error::from_raw_os_error(libc::EMFILE))
                    } else {
                        l.accept().await
                    }
                }
            },
            Reports::new(o),
        ));
        (addr, calls)
    }

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_poll_with_the_right_key_gets_the_report() {
        let (o, dir) = spool_options("right", Some(key("the shared agent key")));
        let (address, _) = agent(o, false).await;
        let ep = Endpoint {
            address,
            key: Some(key("the shared agent key\n")),
        };
        let r = poll(ep, LIMIT).await.unwrap();
        assert_eq!(r.mail_queue, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The queue command end to end: with the key the agent's own reply comes through (a
    /// spool agent says it knows no domains), with another key or none nothing does, and
    /// a command replayed from another exchange gets nothing either.
    #[tokio::test]
    async fn the_queue_command_needs_the_key() {
        use crate::health::agent_client::queue;
        let (o, dir) = spool_options("command", Some(key("the shared agent key")));
        let (address, _) = agent(o, false).await;
        let right = Endpoint {
            address,
            key: Some(key("the shared agent key")),
        };
        let e = queue(right, LIMIT).await.unwrap_err();
        assert!(
            matches!(&e, PollError::Refused(why) if why.contains("knows no destinations")),
            "{e}"
        );
        let wrong = Endpoint {
            address,
            key: Some(key("another agent key!")),
        };
        let e = queue(wrong, LIMIT).await.unwrap_err();
        assert!(matches!(e, PollError::NoReport), "{e}");
        let e = queue(Endpoint { address, key: None }, LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(e, PollError::KeyExpected), "{e}");

        let replay = key("the shared agent key").command(&[7u8; 32], &[8u8; 32], Op::Queue, "");
        let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut r = BufReader::new(&mut tcp);
        let mut first = String::new();
        r.read_line(&mut first).await.unwrap();
        assert!(first.starts_with(CHALLENGE_MAGIC), "{first:?}");
        tcp.write_all(replay.as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut rest = String::new();
        tcp.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "", "a replayed command got {rest:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_insecure_agent_answers_the_command_after_its_report() {
        use crate::health::agent_client::queue;
        let (o, dir) = spool_options("insecure-command", None);
        let (address, _) = agent(o, false).await;
        let e = queue(Endpoint { address, key: None }, LIMIT)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, PollError::Refused(why) if why.contains("knows no destinations")),
            "{e}"
        );
        // The old-style poll still gets its report.
        let r = poll(Endpoint { address, key: None }, LIMIT).await.unwrap();
        assert_eq!(r.mail_queue, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_poll_with_a_wrong_key_or_none_gets_nothing() {
        let (o, dir) = spool_options("wrong", Some(key("the shared agent key")));
        let (address, _) = agent(o, false).await;
        let wrong = Endpoint {
            address,
            key: Some(key("another agent key!")),
        };
        let e = poll(wrong, LIMIT).await.unwrap_err();
        assert!(matches!(e, PollError::NoReport), "{e}");
        let none = Endpoint { address, key: None };
        let e = poll(none, LIMIT).await.unwrap_err();
        assert!(matches!(e, PollError::KeyExpected), "{e}");

        // What a client without the key sees on the wire: a challenge, never figures,
        // whether it answers with garbage or a replayed answer of another exchange.
        let replay = key("the shared agent key").answer(&[7u8; 32], &[8u8; 32]);
        for answer in ["poll nonce=AAAA mac=AAAA\n", replay.as_str(), ""] {
            let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
            let mut r = BufReader::new(&mut tcp);
            let mut first = String::new();
            r.read_line(&mut first).await.unwrap();
            assert!(first.starts_with(CHALLENGE_MAGIC), "{first:?}");
            tcp.write_all(answer.as_bytes()).await.unwrap();
            tcp.shutdown().await.unwrap();
            let mut rest = String::new();
            tcp.read_to_string(&mut rest).await.unwrap();
            assert_eq!(rest, "", "answer {answer:?} got {rest:?}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_insecure_agent_is_refused_by_a_front_end_with_a_key() {
        let (o, dir) = spool_options("insecure", None);
        let (address, _) = agent(o, false).await;
        let r = poll(Endpoint { address, key: None }, LIMIT).await.unwrap();
        assert_eq!(r.mail_queue, 2, "without keys on both sides it works");
        let keyed = Endpoint {
            address,
            key: Some(key("the shared agent key")),
        };
        let e = poll(keyed, LIMIT).await.unwrap_err();
        assert!(matches!(e, PollError::NoChallenge(_)), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn accept_errors_do_not_end_the_agent() {
        let (o, dir) = spool_options("flaky", Some(key("the shared agent key")));
        let (address, calls) = agent(o, true).await;
        let ep = Endpoint {
            address,
            key: Some(key("the shared agent key")),
        };
        for _ in 0..3 {
            assert_eq!(poll(ep, LIMIT).await.unwrap().mail_queue, 2);
        }
        assert!(
            calls.load(Ordering::SeqCst) >= 6,
            "three accepts failed before the three polls were served"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The front-end's agent loop (`health::spawn_checks`) against an agent: the figures
    /// reach the board's load record with the right key; with a wrong one the agent counts
    /// as unreachable and the record has none of its figures.
    async fn figures_on_the_board(agent_secret: &str, frontend_secret: &str) -> u32 {
        let (o, dir) = spool_options(
            &format!("board-{}", agent_secret.len() + frontend_secret.len()),
            Some(key(agent_secret)),
        );
        let (address, calls) = agent(o, false).await;
        // Beside the spool, whose files the agent counts.
        let key_file = dir.with_extension("key");
        std::fs::write(&key_file, frontend_secret).unwrap();
        let cfg = crate::config::Config::parse(
            Path::new("t.toml"),
            &format!(
                "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nagent_key_file={:?}\n\
                 backend=[{{name='a',address='127.0.0.1:9',agent='{address}'}}]\n\
                 [pool.health]\ninterval_ms=600000\nagent_interval_ms=100\n",
                key_file.display().to_string()
            ),
        )
        .unwrap();
        let board = crate::health::board::Board::new(&cfg);
        let pools = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::backend::PoolSet::new(&cfg, Arc::clone(&board), board.clone()).unwrap(),
        ));
        let (stop, tasks) = (
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        );
        let slot = board.slot(0).unwrap();
        let supervisor = crate::supervise::Supervisor::new(
            tasks.clone(),
            stop.clone(),
            crate::supervise::Registry::default(),
        );
        crate::health::spawn_checks(&pools, &board, &slot, &stop, &supervisor);
        // Polls run one after the other: once the agent accepts a third connection, the
        // front-end has taken in the outcome of the first two.
        while calls.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mail_queue = board.record_for(0, 0).unwrap().mail_queue;
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_file(key_file).unwrap();
        mail_queue
    }

    #[tokio::test]
    async fn a_wrong_key_counts_as_agent_unreachable_on_the_front_end() {
        let right = "the shared agent key";
        assert_eq!(figures_on_the_board(right, right).await, 2);
        assert_eq!(figures_on_the_board(right, "a wrong agent key!").await, 0);
    }
}
