//! Serving the control socket: one request per connection, answered by the front-end.

use std::{path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::warn;

use super::{handover, request::Request};
use crate::frontend::Command;

/// Long enough for `reload` with any path (PATH_MAX is 4096).
pub(super) const MAX_REQUEST: u64 = 4200;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves requests until `stop`, or until a successor took over; each connection runs on
/// `tasks`. The socket file at `path` is removed when serving ends (after a hand-over,
/// before the successor hears it may bind its own).
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let handed_over = CancellationToken::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            () = handed_over.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (commands, path, handed_over) = (commands.clone(), path.clone(), handed_over.clone());
        tasks.spawn(async move {
            if let Err(e) = connection(stream, &commands, &path, &handed_over).await {
                warn!(error = %e, "control connection failed");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn connection(
    mut stream: UnixStream,
    commands: &mpsc::Sender<Command>,
    path: &std::path::Path,
    handed_over: &CancellationToken,
) -> std::io::Result<()> {
    let mut line = String::new();
    let request = {
        let (rd, _) = stream.split();
        let mut reader = tokio::io::BufReader::new(rd.take(MAX_REQUEST + 1));
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => Err("no request within 5 s".to_owned()),
            Ok(Err(e)) => Err(format!("unreadable request: {e}")),
            Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST || !line.ends_with('\n') => {
                Err("request too long or not ended by a newline".to_owned())
            }
            Ok(Ok(_)) => Request::parse(&line),
        }
    };
    let reply = match request {
        Err(why) => Err(why),
        Ok(Request::HandOver) => {
            return handover::offer(stream, commands, path, handed_over).await;
        }
        Ok(request) => answer(request, commands).await,
    };
    let line = match reply {
        Ok(text) => format!("ok {text}\n"),
        Err(why) => format!("error {}\n", why.replace('\n', " ")),
    };
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await
}

async fn answer(request: Request, commands: &mpsc::Sender<Command>) -> Result<String, String> {
    let gone = || "the front-end is stopping".to_owned();
    match request {
        Request::Status => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Status { done })
                .await
                .map_err(|_| gone())?;
            let report = answer.await.map_err(|_| gone())?;
            serde_json::to_string(&report).map_err(|e| e.to_string())
        }
        Request::Alarms => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Alarms { done })
                .await
                .map_err(|_| gone())?;
            let report = answer.await.map_err(|_| gone())?;
            serde_json::to_string(&report).map_err(|e| e.to_string())
        }
        Request::Manager(down) => {
            commands
                .send(Command::ManagerReachable { down })
                .await
                .map_err(|_| gone())?;
            Ok("noted".to_owned())
        }
        Request::Stats(since) => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Stats { since, done })
                .await
                .map_err(|_| gone())?;
            let minutes = answer.await.map_err(|_| gone())?;
            serde_json::to_string(&minutes).map_err(|e| e.to_string())
        }
        Request::Events(since) => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Events { since, done })
                .await
                .map_err(|_| gone())?;
            let report = answer.await.map_err(|_| gone())?;
            serde_json::to_string(&report).map_err(|e| e.to_string())
        }
        Request::Reload { file } => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Reload {
                    file,
                    done: Some(done),
                })
                .await
                .map_err(|_| gone())?;
            let reloaded = answer
                .await
                .map_err(|_| gone())?
                .map_err(|e| e.to_string())?;
            serde_json::to_string(&reloaded).map_err(|e| e.to_string())
        }
        Request::Release(vrid) | Request::Resume(vrid) => {
            let release = matches!(request, Request::Release(_));
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Handoff {
                    vrid,
                    release,
                    done,
                })
                .await
                .map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        }
        Request::Drain { backend, drain } => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Drain {
                    backend,
                    drain,
                    done,
                })
                .await
                .map_err(|_| gone())?;
            let drained = answer.await.map_err(|_| gone())??;
            serde_json::to_string(&drained).map_err(|e| e.to_string())
        }
        Request::Queue(domain) => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Queue { domain, done })
                .await
                .map_err(|_| gone())?;
            let table = answer.await.map_err(|_| gone())?;
            serde_json::to_string(&table).map_err(|e| e.to_string())
        }
        Request::QueueMove {
            domain,
            pool,
            status_only,
        } => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::QueueMove {
                    domain,
                    pool,
                    status_only,
                    done,
                })
                .await
                .map_err(|_| gone())?;
            let report = answer.await.map_err(|_| gone())??;
            serde_json::to_string(&report).map_err(|e| e.to_string())
        }
        Request::RouteLookup {
            service,
            key,
            user,
            fresh,
        } => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::RouteLookup {
                    service,
                    key,
                    user,
                    fresh,
                    done,
                })
                .await
                .map_err(|_| gone())?;
            let report = answer.await.map_err(|_| gone())??;
            serde_json::to_string(&report).map_err(|e| e.to_string())
        }
        Request::RouteFlush(directory) => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::RouteFlush { directory, done })
                .await
                .map_err(|_| gone())?;
            let flushed = answer.await.map_err(|_| gone())??;
            serde_json::to_string(&flushed).map_err(|e| e.to_string())
        }
        Request::Directories => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::Directories { done })
                .await
                .map_err(|_| gone())?;
            let stats = answer.await.map_err(|_| gone())?;
            serde_json::to_string(&stats).map_err(|e| e.to_string())
        }
        Request::HandOver => Err("handover is a dialogue of its own".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// Malformed requests get one `error` line each, a huge one is cut off at the bound,
    /// and the server keeps serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_requests_get_one_error_line() {
        let dir = std::env::temp_dir().join(format!("rb-ctl-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let listener = super::super::bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        // A front-end that answers status requests only.
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if let Command::Status { done } = c {
                    let _ = done.send(crate::frontend::StatusReport {
                        frontend: "fe".into(),
                        pid: 1,
                        version: "v".into(),
                        routers: Vec::new(),
                        ready: true,
                        tasks: Vec::new(),
                        drained: Vec::new(),
                        backends: Vec::new(),
                        domain_queues: Vec::new(),
                        release: String::new(),
                    });
                }
            }
        });
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let server = tokio::spawn(serve(
            listener,
            path.clone(),
            tx,
            stop.clone(),
            tasks.clone(),
        ));
        let ask = |raw: Vec<u8>| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let _ = s.write_all(&raw);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
        };
        let cases: &[(&[u8], &str)] = &[
            (b"\n", "error unknown request \"\""),
            (b"status now\n", "error status takes no argument"),
            (b"release 300\n", "error \"300\" is not a VRID"),
            (
                b"status",
                "error request too long or not ended by a newline",
            ),
            (b"release \xff\n", "error unreadable request"),
            (b"status\n", "ok {"),
        ];
        for &(raw, want) in cases {
            let got = ask(raw.to_vec()).await.unwrap();
            assert!(got.starts_with(want), "{raw:?}: {got:?}");
            assert!(got.ends_with('\n') && got.lines().count() == 1, "{got:?}");
        }
        let got = ask(vec![b'x'; 1 << 20]).await.unwrap();
        assert!(got.starts_with("error request too long"), "{got}");
        let got = ask(b"status\n".to_vec()).await.unwrap();
        assert!(got.contains("\"version\":\"v\""), "{got}");
        stop.cancel();
        server.await.unwrap();
        assert!(!path.exists(), "the socket file goes when serving ends");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
