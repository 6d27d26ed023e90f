//! `robustifier member`: a front-end's link to its cluster's manager.
//!
//! It holds a connection to the manager (mutual TLS: the manager must show a manager
//! certificate of this cluster), receives the member's configuration of each new version,
//! applies it live over the front-end's control socket and reports the version it runs,
//! the result, and the front-end's status.
//!
//! The last applied configuration is the file the front-end starts from
//! (`STATE/config.toml`), so a front-end whose manager is unreachable starts and serves as
//! it last did: mail never waits for the manager. A version is written next to it and
//! renamed over it (atomic), applied, and put back to the previous text if the front-end
//! refuses it. Versions are applied one at a time and never an older one than the one
//! running.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{io::BufReader, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    tls,
    wire::{self, Action, Request, ToMember, UpdateStage},
};
use crate::{
    config::Config,
    control::{self, ControlError},
    frontend::StatusReport,
};

/// How often the front-end's new events are read and shipped.
const EVENTS_EVERY: Duration = Duration::from_secs(1);
/// How often the front-end's new minutes of statistics are read and shipped (cheap when
/// there are none; a minute reaches the manager within this of its end).
const STATS_EVERY: Duration = Duration::from_secs(2);
/// How often the front-end's status is read and, when it changed, reported.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// A report goes out at least this often, changed or not (the manager's "last seen").
const REPORT_AT_LEAST: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reload builds everything before it applies anything (certificates, maps).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Options {
    /// `host:port` of the manager.
    pub manager: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Holds `config.toml` (what the front-end runs and starts from) and `applied.json`.
    pub state_dir: PathBuf,
    /// The front-end's control socket.
    pub control_socket: PathBuf,
    /// The longest wait between two connection attempts.
    pub max_retry: Duration,
    /// How long the manager may be out of reach before the front-end raises an alarm (a
    /// manager restarting is none).
    pub alarm_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// What `applied.json` records.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Applied {
    version: u64,
}

/// The member's state on disk.
struct State {
    dir: PathBuf,
    applied: u64,
    /// The last version tried, and why it failed.
    tried: u64,
    error: Option<String>,
    /// The error is only that the front-end was not running when the version was written:
    /// it goes once the front-end runs that version.
    until_started: bool,
}

impl State {
    fn open(dir: &Path) -> Result<State, MemberError> {
        std::fs::create_dir_all(dir).map_err(|e| MemberError::Io(dir.to_owned(), e))?;
        // The front-end is told the file by its absolute path (it may run elsewhere).
        let dir = &std::fs::canonicalize(dir).map_err(|e| MemberError::Io(dir.to_owned(), e))?;
        let applied = std::fs::read(dir.join("applied.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Applied>(&b).ok())
            .unwrap_or_default()
            .version;
        Ok(State {
            dir: dir.to_owned(),
            applied,
            tried: applied,
            error: None,
            until_started: false,
        })
    }

    fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    fn record_applied(&mut self, version: u64) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&Applied { version }).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join("applied.json"), &bytes)?;
        self.applied = version;
        Ok(())
    }
}

/// Runs until `stop`, reconnecting to the manager whenever the connection ends.
pub async fn run(o: Options, stop: CancellationToken) -> Result<(), MemberError> {
    let client = tls::client_config(&o.ca, &o.cert, &o.key)?;
    let o = Arc::new(o);
    let mut state = State::open(&o.state_dir)?;
    info!(manager = %o.manager, applied = state.applied, "member starting");
    let mut wait = Duration::from_millis(200);
    // Whether the front-end was last told the manager is reachable (none: not told yet),
    // and since when it has not been.
    let mut told: Option<bool> = None;
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = tls::connect(&o.manager, client.clone(), CONNECT_TIMEOUT) => r,
        };
        let why = match connected {
            Ok(stream) => {
                wait = Duration::from_millis(200);
                down_since = None;
                // Told at every connection, not only after a down: while it hears the
                // manager is reachable, the front-end leaves its alarms' SNMP
                // notifications to the manager.
                told = tell(&o, None).await.then_some(true).or(told);
                let why = session(&o, &mut state, stream, &stop).await;
                if stop.is_cancelled() {
                    return Ok(());
                }
                warn!(reason = %why, "connection to the manager ended");
                why
            }
            Err(e) => {
                warn!(error = %e, "manager unreachable; the front-end runs on");
                e.to_string()
            }
        };
        // An alarm on the front-end (and so in its traps and metrics) once it has lasted
        // `alarm_after`.
        let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
        if told != Some(false) && since.elapsed() >= o.alarm_after && tell(&o, Some(why)).await {
            told = Some(false);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(o.max_retry);
    }
}

async fn session<S>(
    o: &Arc<Options>,
    state: &mut State,
    stream: S,
    stop: &CancellationToken,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (r, mut w) = tokio::io::split(stream);
    let hello = Request::Hello {
        applied: state.applied,
        release: env!("CARGO_PKG_VERSION").to_owned(),
    };
    if let Err(e) = wire::write(&mut w, &hello).await {
        return e.to_string();
    }
    let (in_tx, mut incoming) = mpsc::channel(4);
    let reader = tokio::spawn(async move {
        let mut r = BufReader::new(r);
        loop {
            let m = wire::read::<ToMember, _>(&mut r).await;
            let end = m.is_err();
            if in_tx.send(m).await.is_err() || end {
                break;
            }
        }
    });
    let (done_tx, mut done) = mpsc::channel::<Request>(16);
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut last: Option<StatusReport> = None;
    let mut last_sent = tokio::time::Instant::now();
    // Where the manager's copy of the front-end's events ends; none until it says.
    let mut cursor: Option<(String, u64)> = None;
    let mut events_tick = tokio::time::interval(EVENTS_EVERY);
    // The last minute of statistics the manager has; none until it says.
    let mut stats_cursor: Option<u64> = None;
    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    // The package the manager is sending, and why its chunks were refused, if they were.
    let mut package = super::upgrade_member::Receiver::default();
    let mut package_error: Option<String> = None;
    let why = loop {
        let report = tokio::select! {
            () = stop.cancelled() => break "stopping".to_owned(),
            _ = events_tick.tick(), if cursor.is_some() => {
                match next_events(o, &mut cursor).await {
                    Some(batch) => {
                        // A full batch: more are waiting (every relayed message is an
                        // event), so the next is read at once rather than in a second.
                        if matches!(&batch, Request::Events { events, .. }
                            if events.len() >= crate::frontend::EVENTS_PER_REQUEST)
                        {
                            events_tick.reset_immediately();
                        }
                        batch
                    }
                    None => continue,
                }
            }
            _ = stats_tick.tick(), if stats_cursor.is_some() => {
                match next_stats(o, &mut stats_cursor).await {
                    Some(batch) => batch,
                    None => continue,
                }
            }
            _ = tick.tick() => {
                let status = frontend_status(o).await;
                if let Some(s) = &status {
                    reconcile(state, s);
                }
                if status == last && last_sent.elapsed() < REPORT_AT_LEAST {
                    continue;
                }
                last = status.clone();
                report(state, status)
            }
            m = incoming.recv() => match m {
                Some(Ok(ToMember::Apply { version, text })) => {
                    apply(o, state, version, text).await;
                    let status = frontend_status(o).await;
                    last = status.clone();
                    report(state, status)
                }
                Some(Ok(ToMember::Act { id, action })) => {
                    // An action may take long (a release drains first); applies go on.
                    let (o, done_tx) = (o.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        let (ok, message) = act(&o, &action).await;
                        let _ = done_tx.send(Request::Acted { id, ok, message }).await;
                    });
                    continue;
                }
                Some(Ok(ToMember::Resume { boot, seq })) => {
                    cursor = Some((boot, seq));
                    continue;
                }
                Some(Ok(ToMember::ResumeStats { minute })) => {
                    stats_cursor = Some(minute);
                    continue;
                }
                Some(Ok(ToMember::PackageChunk { sha256, total, offset, data })) => {
                    if offset == 0 {
                        package_error = None;
                    }
                    if package_error.is_none()
                        && let Err(e) = package.chunk(&update_dir(state), &sha256, total, offset, &data)
                    {
                        warn!(error = %e, "package from the manager refused");
                        package_error = Some(e.to_string());
                    }
                    continue;
                }
                Some(Ok(ToMember::Install { version, sha256, rollback })) => {
                    let written = match package_error.take() {
                        Some(e) => Err(e),
                        None => package.install(&version, &sha256, rollback).map_err(|e| e.to_string()),
                    };
                    match written {
                        Ok(dir) => {
                            info!(%version, rollback, dir = %dir.display(), "package handed to the installer");
                            let done_tx = done_tx.clone();
                            let sha = sha256.clone();
                            tokio::spawn(async move {
                                let (ok, message) = super::upgrade_member::result(dir, version).await;
                                let stage = if ok { UpdateStage::Installed } else { UpdateStage::Failed };
                                let _ = done_tx.send(Request::Update { sha256: sha, stage, message }).await;
                            });
                            Request::Update { sha256, stage: UpdateStage::Written, message: String::new() }
                        }
                        Err(message) => {
                            warn!(%version, error = %message, "package not handed to the installer");
                            Request::Update { sha256, stage: UpdateStage::Failed, message }
                        }
                    }
                }
                Some(Ok(ToMember::Refused { error })) => break format!("refused by the manager: {error}"),
                Some(Err(e)) => break e.to_string(),
                None => break "closed".to_owned(),
            },
            Some(acted) = done.recv() => acted,
        };
        if let Err(e) = wire::write(&mut w, &report).await {
            break e.to_string();
        }
        last_sent = tokio::time::Instant::now();
    };
    reader.abort();
    why
}

/// The front-end's events after `cursor`, as a message for the manager, moving the cursor
/// past them; `None` when there are none (or the front-end does not answer). A front-end
/// that restarted numbers from 1 again: its new run is read from the start.
async fn next_events(o: &Options, cursor: &mut Option<(String, u64)>) -> Option<Request> {
    let (boot, seq) = cursor.clone()?;
    let mut got = frontend_events(o, seq).await?;
    if got.boot != boot {
        got = frontend_events(o, 0).await?;
    }
    let new_run = got.boot != boot;
    if new_run {
        // A front-end that restarted has forgotten that the manager is reachable.
        tell(o, None).await;
    }
    let last = got.events.last().map(|e| e.seq);
    if last.is_none() && !new_run {
        return None;
    }
    *cursor = Some((got.boot.clone(), last.unwrap_or(0)));
    Some(Request::Events {
        boot: got.boot,
        oldest: got.oldest,
        events: got.events,
    })
}

/// The front-end's minutes after `cursor`, as a message for the manager, moving the
/// cursor past them; `None` when there are none (or the front-end does not answer).
async fn next_stats(o: &Options, cursor: &mut Option<u64>) -> Option<Request> {
    let since = (*cursor)?;
    let reply = ask(o, format!("stats {since}"), Duration::from_secs(5)).await;
    let minutes: Vec<crate::stats::Minute> = serde_json::from_str(&reply.ok()?).ok()?;
    *cursor = Some(minutes.last()?.minute);
    Some(Request::Stats { minutes })
}

async fn frontend_events(o: &Options, since: u64) -> Option<crate::events::Since> {
    let reply = ask(o, format!("events {since}"), Duration::from_secs(5)).await;
    serde_json::from_str(&reply.ok()?).ok()
}

/// One request to the front-end's control socket, off the runtime's threads (the socket
/// client blocks): the reply after `ok`, or why there is none.
async fn ask(o: &Options, line: String, timeout: Duration) -> Result<String, String> {
    let socket = o.control_socket.clone();
    tokio::task::spawn_blocking(move || {
        control::request(&socket, &line, timeout).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("control request task failed: {e}")))
}

fn report(state: &State, status: Option<StatusReport>) -> Request {
    Request::Report {
        applied: state.applied,
        tried: state.tried,
        error: state.error.clone(),
        status,
    }
}

/// Applies `version` unless it is not newer than the one running.
async fn apply(o: &Options, state: &mut State, version: u64, text: String) {
    if version <= state.applied {
        info!(
            version,
            applied = state.applied,
            "not applying a version that is not newer"
        );
        return;
    }
    state.tried = version;
    let file = state.config();
    let socket = o.control_socket.clone();
    let result = tokio::task::spawn_blocking(move || apply_file(&file, &socket, &text)).await;
    let outcome = match result {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("apply task failed: {e}")),
    };
    match outcome {
        Outcome::Applied(summary) => {
            info!(version, %summary, "version applied");
            state.error = None;
            state.until_started = false;
        }
        Outcome::Written(note) => {
            info!(version, %note, "version written");
            state.error = Some(note);
            state.until_started = true;
        }
        Outcome::Failed(e) => {
            warn!(version, error = %e, "version not applied");
            state.error = Some(e);
            state.until_started = false;
            return;
        }
    }
    if let Err(e) = state.record_applied(version) {
        state.error = Some(format!("applied, but not recorded: {e}"));
    }
}

enum Outcome {
    /// The front-end runs it.
    Applied(String),
    /// The front-end does not run: it starts from it.
    Written(String),
    Failed(String),
}

fn apply_file(file: &Path, socket: &Path, text: &str) -> Outcome {
    // The member's own rules first: a file it names may be missing on this host.
    if let Err(e) = Config::parse(file, text) {
        return Outcome::Failed(format!("refused here: {e}"));
    }
    let previous = std::fs::read(file).ok();
    if let Err(e) = write_atomic(file, text.as_bytes()) {
        return Outcome::Failed(format!("{}: {e}", file.display()));
    }
    let line = format!("reload {}", file.display());
    match control::request(socket, &line, RELOAD_TIMEOUT) {
        Ok(reply) => Outcome::Applied(
            serde_json::from_str::<crate::frontend::Reloaded>(&reply).map_or(reply, |r| r.summary),
        ),
        Err(ControlError::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Outcome::Written(format!(
                "the front-end is not running; it starts from this version ({})",
                file.display()
            ))
        }
        Err(e) => {
            // Put the text the front-end runs back, so that its next start is the same.
            let restored = match &previous {
                Some(p) => write_atomic(file, p),
                None => std::fs::remove_file(file),
            };
            let mut why = format!("the front-end refused it: {e}");
            if let Err(r) = restored {
                why.push_str(&format!("; and the previous file was not restored: {r}"));
            }
            Outcome::Failed(why)
        }
    }
}

/// A version whose apply timed out may have been applied after all: the front-end's
/// version is the hash of the text.
fn reconcile(state: &mut State, status: &StatusReport) {
    let runs_the_file = || {
        std::fs::read_to_string(state.config())
            .ok()
            .and_then(|text| Config::parse(&state.config(), &text).ok())
            .is_some_and(|cfg| cfg.version == status.version)
    };
    // Written while the front-end was down, and the front-end has started from it.
    if state.until_started && state.tried == state.applied && runs_the_file() {
        state.error = None;
        state.until_started = false;
        return;
    }
    if state.tried > state.applied
        && state.error.is_some()
        && let Ok(text) = std::fs::read_to_string(state.config())
        && let Ok(cfg) = Config::parse(&state.config(), &text)
        && cfg.version == status.version
    {
        let tried = state.tried;
        state.error = None;
        if let Err(e) = state.record_applied(tried) {
            state.error = Some(format!("applied, but not recorded: {e}"));
        }
    }
}

/// Where package updates go: the `[frontend] update_dir` of the configuration the
/// front-end runs, else the default.
fn update_dir(state: &State) -> PathBuf {
    std::fs::read_to_string(state.config())
        .ok()
        .and_then(|text| Config::parse(&state.config(), &text).ok())
        .map_or_else(
            || PathBuf::from(crate::config::UPDATE_DIR),
            |cfg| cfg.frontend.update_dir,
        )
}

/// Tells the front-end whether the manager is reachable; whether it heard.
async fn tell(o: &Options, down: Option<String>) -> bool {
    let line = match down {
        None => "manager up".to_owned(),
        Some(why) => {
            let why: String = why
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(400)
                .collect();
            format!("manager down {why}")
        }
    };
    ask(o, line, Duration::from_secs(5)).await.is_ok()
}

async fn frontend_status(o: &Options) -> Option<StatusReport> {
    let reply = ask(o, "status".to_owned(), Duration::from_secs(5)).await;
    serde_json::from_str(&reply.ok()?).ok()
}

async fn act(o: &Options, action: &Action) -> (bool, String) {
    let line = action.control_line();
    info!(action = %line, "operator action from the manager");
    // A release waits for the drain, which the configuration bounds by a day.
    match ask(o, line, Duration::from_secs(86_460)).await {
        Ok(reply) => (true, reply),
        Err(e) => (false, e),
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content, never a
/// mix: a file beside it, synced, renamed over it, and the folder synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
