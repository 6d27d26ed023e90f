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

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{io::AsyncWriteExt as _, net::TcpListener, process::Command, sync::Mutex};
use tracing::{info, warn};

use crate::health::agent_client::MAGIC;

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
    let mut f = Figures {
        run_queue: run_queue().unwrap_or(0.0),
        disk_permille: disk_permille(&o.spool).unwrap_or(0),
        ..Figures::default()
    };
    match mail_queue(o).await {
        Ok(n) => f.mail_queue = n,
        Err(e) => warn!(error = %e, "cannot read the mail queue"),
    }
    if let Some(state) = &o.state_file
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
    f
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

async fn mail_queue(o: &Options) -> Result<u32, String> {
    let run = |mut cmd: Command| async move {
        let out = cmd.output().await.map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
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
            run(cmd)
                .await?
                .trim()
                .parse()
                .map_err(|e| format!("exim -bpc: {e}"))
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
        Mta::Spool => Ok(count_files(&o.spool, 8)),
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

/// Serves reports on `listen` until the process is stopped.
pub async fn serve(listen: SocketAddr, o: Options) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    info!(%listen, mta = ?o.mta, spool = %o.spool.display(), "agent listening");
    let cache: Arc<Mutex<Option<(Instant, Figures)>>> = Arc::default();
    let o = Arc::new(o);
    loop {
        let (mut stream, peer) = listener.accept().await?;
        let (cache, o) = (Arc::clone(&cache), Arc::clone(&o));
        tokio::spawn(async move {
            let figures = {
                let mut c = cache.lock().await;
                match *c {
                    Some((at, f)) if at.elapsed() < Duration::from_secs(1) => f,
                    _ => {
                        let f = gather(&o).await;
                        *c = Some((Instant::now(), f));
                        f
                    }
                }
            };
            if let Err(e) = stream.write_all(figures.line().as_bytes()).await {
                warn!(%peer, error = %e, "agent report not sent");
            }
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::agent_client::parse;

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
        };
        let f = gather(&o).await;
        assert_eq!(f.mail_queue, 4, "three messages and the state file");
        let r = parse(f.line().trim_end()).unwrap();
        assert_eq!((r.mail_queue, r.weight, r.drain), (4, Some(25), true));
        assert!(r.disk_permille <= 1000);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
