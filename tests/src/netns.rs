//! Network namespaces by name (`ip netns`), and commands run inside them.
//!
//! Commands enter only the network namespace (`nsenter --net`), not a new mount namespace
//! as `ip netns exec` does: that one remounts /sys and would hide the host's bpffs, where
//! the daemon pins its maps.

use std::process::{Command, Output};

use anyhow::{Context as _, bail};

#[derive(Debug, Clone)]
pub struct Netns {
    pub name: String,
}

/// Runs a command to completion and fails with its stderr when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip` with the given arguments, run in the host namespace.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    pub fn delete(&self) -> anyhow::Result<()> {
        if Netns::exists(&self.name) {
            ip(&["netns", "del", &self.name])?;
        }
        Ok(())
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds `addr` to `dev` as a host address (/32, or /128 without duplicate address
    /// detection, so that it is usable at once): how the lab puts a virtual address up.
    pub fn add_address(&self, dev: &str, addr: std::net::IpAddr) -> anyhow::Result<()> {
        match addr {
            std::net::IpAddr::V4(a) => self.ip(&["addr", "add", &format!("{a}/32"), "dev", dev])?,
            std::net::IpAddr::V6(a) => {
                self.ip(&["addr", "add", &format!("{a}/128"), "dev", dev, "nodad"])?
            }
        };
        Ok(())
    }

    /// Removes the host address `addr` from `dev` (the reverse of [`Netns::add_address`]).
    pub fn del_address(&self, dev: &str, addr: std::net::IpAddr) -> anyhow::Result<()> {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        self.ip(&["addr", "del", &format!("{addr}/{len}"), "dev", dev])?;
        Ok(())
    }

    /// A command that will run `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `program args...` in the namespace to completion; stdout on success.
    pub fn sh(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Namespaces whose names start with `prefix` (for status and for cleaning up leftovers).
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

impl Netns {
    /// Runs `f` on a thread that has entered this namespace, so plain std networking in `f`
    /// happens inside it. The calling thread's namespace is untouched.
    pub fn enter<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> anyhow::Result<T> {
        let file =
            std::fs::File::open(self.path()).with_context(|| format!("open {}", self.path()))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }
}
