//! The control socket of a front-end's HA side: a unix stream socket (by default
//! `/run/robustifier/<frontend name>/control.sock`, mode 0600) with a tiny line protocol,
//! used by `robustifier ha status|release|resume`.
//!
//! ```text
//! request (one line, at most 256 bytes)   reply (one line)
//! status                                   ok {"frontend":..,"routers":[..]}   (JSON)
//! release VRID                             ok <what happened>  |  error <why>
//! resume VRID                              ok <what happened>  |  error <why>
//! ```
//!
//! `release` answers when the handoff is done, which may take the whole drain deadline.
//! A VRID names both the IPv4 and the IPv6 router of that number, if both exist.
//!
//! Invariant: a malformed or oversized request gets an `error` line and the connection is
//! closed; nothing a client sends can stop the server.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::oneshot,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use super::router::{Command, RouterHandle, RouterStatus};
use crate::supervise::{Registry, TaskStatus};

const MAX_REQUEST: u64 = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub frontend: String,
    pub routers: Vec<RouterStatus>,
    /// Every supervised background task is running (none waits for a restart).
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub tasks: Vec<TaskStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: another daemon is serving it")]
    InUse { path: PathBuf },
    #[error("control socket {path}: {reason}")]
    Reply { path: PathBuf, reason: String },
}

/// Binds the socket, replacing a stale file left by a daemon that died.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    // Only root may release addresses.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves requests until `stop`; each connection runs on `tasks`.
pub async fn serve(
    listener: UnixListener,
    frontend: String,
    routers: Vec<RouterHandle>,
    supervised: Registry,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (frontend, routers, supervised) =
            (frontend.clone(), routers.clone(), supervised.clone());
        tasks.spawn(async move {
            if let Err(e) = connection(stream, &frontend, &routers, &supervised).await {
                warn!(error = %e, "control connection failed");
            }
        });
    }
}

async fn connection(
    stream: UnixStream,
    frontend: &str,
    routers: &[RouterHandle],
    supervised: &Registry,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST + 1));
    let mut line = String::new();
    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => "error no request within 5 s".to_owned(),
        Ok(Err(e)) => format!("error unreadable request: {e}"),
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST || !line.ends_with('\n') => {
            "error request too long or not ended by a newline".to_owned()
        }
        Ok(Ok(_)) => dispatch(line.trim(), frontend, routers, supervised).await,
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

async fn dispatch(
    request: &str,
    frontend: &str,
    routers: &[RouterHandle],
    supervised: &Registry,
) -> String {
    let mut words = request.split_ascii_whitespace();
    let verb = words.next().unwrap_or("");
    let arg = words.next();
    if words.next().is_some() {
        return "error too many arguments".to_owned();
    }
    match (verb, arg) {
        ("status", None) => {
            let report = StatusReport {
                frontend: frontend.to_owned(),
                routers: routers.iter().map(RouterHandle::status).collect(),
                ready: supervised.ready(),
                tasks: supervised.snapshot(),
            };
            match serde_json::to_string(&report) {
                Ok(json) => format!("ok {json}"),
                Err(e) => format!("error {e}"),
            }
        }
        ("release" | "resume", Some(vrid)) => {
            let Ok(vrid) = vrid.parse::<u8>() else {
                return format!("error {vrid:?} is not a VRID (1..=255)");
            };
            let targets: Vec<&RouterHandle> = routers.iter().filter(|r| r.vrid == vrid).collect();
            if targets.is_empty() {
                return format!("error no virtual router with VRID {vrid} here");
            }
            info!(vrid, verb, "control request");
            // Both families at once: their drains overlap instead of adding up.
            let mut waits = Vec::new();
            for r in targets {
                let (tx, rx) = oneshot::channel();
                let cmd = if verb == "release" {
                    Command::Release(tx)
                } else {
                    Command::Resume(tx)
                };
                if r.commands.send(cmd).await.is_err() {
                    return format!("error VRID {vrid}: the router task has stopped");
                }
                waits.push(rx);
            }
            let mut notes = Vec::new();
            for rx in waits {
                match rx.await {
                    Ok(note) => notes.push(note),
                    Err(_) => {
                        return format!(
                            "error VRID {vrid}: the router task stopped while handling the request"
                        );
                    }
                }
            }
            format!("ok {}", notes.join("; "))
        }
        ("status", Some(_)) => "error status takes no argument".to_owned(),
        ("release" | "resume", None) => format!("error {verb} needs a VRID"),
        _ => format!("error unknown request {verb:?} (status, release VRID, resume VRID)"),
    }
}

/// Sends one request and returns the text after `ok`; an `error` reply is an error.
pub fn request(path: &Path, line: &str, timeout: Duration) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    let reply = reply.trim_end();
    if let Some(text) = reply.strip_prefix("ok ") {
        Ok(text.to_owned())
    } else {
        Err(ControlError::Reply {
            path: path.to_owned(),
            reason: reply.strip_prefix("error ").unwrap_or(reply).to_owned(),
        })
    }
}

/// The status as a table for an operator.
pub fn render(report: &StatusReport) -> String {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = format!("front-end {}\n", report.frontend);
    out.push_str(&format!(
        "{:<5} {:<6} {:<10} {:<11} {:>4}/{:<4} {:<26} {:<28} {}\n",
        "VRID", "FAMILY", "INTERFACE", "STATE", "PRIO", "CONF", "MASTER", "VIPS", "LAST TRANSITION"
    ));
    for r in &report.routers {
        let mut state = r.state.clone();
        if r.draining {
            state.push_str(" drain");
        } else if r.released {
            state.push_str(" rel");
        }
        let master = r.master.map_or("-".to_owned(), |m| {
            if m == r.primary {
                format!("{m} (self)")
            } else {
                m.to_string()
            }
        });
        let vips: Vec<String> = r.vips.iter().map(ToString::to_string).collect();
        let last = r.last_transition.as_ref().map_or("-".to_owned(), |t| {
            let ago = now_ms.saturating_sub(t.at_unix_ms) as f64 / 1000.0;
            format!("{} -> {} ({}) {ago:.1} s ago", t.from, t.to, t.reason)
        });
        out.push_str(&format!(
            "{:<5} {:<6} {:<10} {:<11} {:>4}/{:<4} {:<26} {:<28} {}\n",
            r.vrid,
            r.family,
            r.interface,
            state,
            r.priority,
            r.configured_priority,
            master,
            vips.join(","),
            last
        ));
        if !r.failing.is_empty() {
            out.push_str(&format!(
                "      tracking failing: {}\n",
                r.failing.join(", ")
            ));
        }
    }
    let restarted: Vec<String> = report
        .tasks
        .iter()
        .filter(|t| t.restarts > 0 || !t.running)
        .map(|t| {
            let state = if t.running { "running" } else { "restarting" };
            let why = t.last_failure.as_deref().unwrap_or("-");
            format!("{} ({state}, {} restarts, last: {why})", t.name, t.restarts)
        })
        .collect();
    out.push_str(&format!(
        "tasks: {} supervised, {}{}\n",
        report.tasks.len(),
        if report.ready {
            "all running"
        } else {
            "NOT all running"
        },
        if restarted.is_empty() {
            String::new()
        } else {
            format!("; {}", restarted.join("; "))
        }
    ));
    out
}
