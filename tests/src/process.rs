//! Processes the lab starts inside its namespaces, ended by pid when the lab goes down.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
pub use nix::sys::signal::Signal;
use nix::{sys::signal::kill, unistd::Pid};

/// A started process with its log file. Dropping it ends the process (SIGTERM, then SIGKILL).
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// Where this process's output starts in `log` (the file may hold earlier runs).
    log_start: u64,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Daemon> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("log file {}", log.display()))?;
        let log_start = file.metadata()?.len();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log,
            log_start,
        })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Whether the process has not exited yet (without reaping it).
    pub fn running(&self) -> bool {
        nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(self.pid()),
            nix::sys::wait::WaitPidFlag::WEXITED
                | nix::sys::wait::WaitPidFlag::WNOHANG
                | nix::sys::wait::WaitPidFlag::WNOWAIT,
        )
        .is_ok_and(|s| s == nix::sys::wait::WaitStatus::StillAlive)
    }

    /// What this process has written so far.
    pub fn log_text(&self) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        let start = (self.log_start as usize).min(all.len());
        String::from_utf8_lossy(&all[start..]).into_owned()
    }

    /// Waits until the log contains `needle` or the process exits or `timeout` passes.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} did not log {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit; SIGKILL after that.
    pub fn stop_with(
        &mut self,
        signal: Signal,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = kill(self.pid(), signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        Ok(self.child.wait()?)
    }

    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.stop_with(Signal::SIGTERM, Duration::from_secs(15))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
