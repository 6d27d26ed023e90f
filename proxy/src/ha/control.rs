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
    #[error("control socket {path}: {what} is in the way; remove it if it is not needed")]
    NotASocket { path: PathBuf, what: String },
    #[error("control socket {path}: {reason}")]
    Reply { path: PathBuf, reason: String },
}

/// Binds the socket. Only a stale socket (one nobody accepts on: its daemon died) is
/// replaced; a live socket means another daemon runs, and anything else at the path (a
/// file, a directory, a symlink, wherever it points) is an error and left alone.
///
/// The socket never exists with looser permissions than 0600: it is bound inside a
/// private directory (0700) made for the purpose, restricted there, and then linked into
/// place; a link never replaces nor follows what is at the path, so a daemon that took
/// the path meanwhile keeps it.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _};
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
            what: "no file name".into(),
        });
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io)?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
        Ok(m) if m.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ControlError::InUse {
                        path: path.to_owned(),
                    });
                }
                // Nobody accepts: the socket of a daemon that died.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path).map_err(io)?;
                }
                Err(e) => return Err(io(e)),
            }
        }
        Ok(m) => {
            let t = m.file_type();
            let what = if t.is_symlink() {
                "a symbolic link"
            } else if t.is_dir() {
                "a directory"
            } else if t.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
                what: what.into(),
            });
        }
    }
    let mut private_name = std::ffi::OsString::from(".");
    private_name.push(name);
    private_name.push(format!(".{}.tmp", std::process::id()));
    let private = dir.join(private_name);
    // A leftover of this pid (a crash between mkdir and cleanup) is ours to clear.
    let _ = std::fs::remove_file(private.join("s"));
    let _ = std::fs::remove_dir(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        // Only root may release addresses.
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::hard_link(&staged, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(e.kind(), "another daemon bound it at the same time")
            } else {
                e
            }
        })?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound.map_err(io)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rb-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn is_socket(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
    }

    #[tokio::test]
    async fn binds_0600_and_replaces_only_a_stale_socket() {
        let d = dir("stale");
        let path = d.join("control.sock");
        let l = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "no staging directory left behind"
        );
        // Live: another daemon serves it.
        assert!(matches!(bind(&path), Err(ControlError::InUse { .. })));
        drop(l);
        // Stale: the daemon is gone, the file is still there.
        assert!(is_socket(&path));
        let l = bind(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(l);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[tokio::test]
    async fn never_replaces_or_follows_anything_else() {
        let d = dir("other");
        let path = d.join("control.sock");

        std::fs::write(&path, "precious").unwrap();
        let e = bind(&path).unwrap_err();
        assert!(
            matches!(&e, ControlError::NotASocket { what, .. } if what == "a regular file"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        std::fs::remove_file(&path).unwrap();

        std::fs::create_dir(&path).unwrap();
        let e = bind(&path).unwrap_err();
        assert!(
            matches!(&e, ControlError::NotASocket { what, .. } if what == "a directory"),
            "{e}"
        );
        std::fs::remove_dir(&path).unwrap();

        // A symlink, whether to a stale socket, a file or nowhere, stays as it is.
        let stale = d.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let target = d.join("target");
        std::fs::write(&target, "target").unwrap();
        for to in [&stale, &target, &d.join("missing")] {
            std::os::unix::fs::symlink(to, &path).unwrap();
            let e = bind(&path).unwrap_err();
            assert!(
                matches!(&e, ControlError::NotASocket { what, .. } if what == "a symbolic link"),
                "{e}"
            );
            assert_eq!(std::fs::read_link(&path).unwrap(), *to);
            std::fs::remove_file(&path).unwrap();
        }
        assert!(is_socket(&stale), "the link's target is untouched");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "target");
        assert!(
            !d.join("missing").exists(),
            "nothing created through the link"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
