//! Helpers for the failover tests (issue 5): front-end configurations with virtual routers,
//! address ownership, keepalived as an interoperability peer, tshark captures.
//!
//! Everything runs inside the lab's namespaces; keepalived gets its own config, pid files
//! and log under the lab's log directory, and is ended by pid with the lab.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{Lab, Netns, topology::VIP_POP, topology::VIP_SMTP};

/// One `[[vrrp]]` section.
#[derive(Clone, Debug)]
pub struct Vr {
    pub vrid: u8,
    pub priority: u8,
    pub vip: IpAddr,
    pub interval_cs: u16,
    /// Extra TOML lines for the section (tracking, preempt, ...).
    pub extra: String,
}

impl Vr {
    pub fn new(vrid: u8, priority: u8, vip: impl Into<IpAddr>, interval_cs: u16) -> Vr {
        Vr {
            vrid,
            priority,
            vip: vip.into(),
            interval_cs,
            extra: String::new(),
        }
    }

    pub fn with(mut self, extra: &str) -> Vr {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }
}

/// The control socket of front-end `i` in this lab.
pub fn control_socket(lab: &Lab, i: usize) -> PathBuf {
    lab.log_dir.join(format!("{}.sock", lab.frontends[i].name))
}

/// A front-end config: SMTP on the SMTP VIP, POP3 on the POP VIP, the given routers on
/// `pub0`, the control socket in the lab's log directory.
pub fn frontend_config(lab: &Lab, i: usize, routers: &[Vr], ha_extra: &str) -> String {
    let fe = &lab.frontends[i];
    let mut s = format!(
        r#"
[frontend]
name = "{name}"
interface = "pub0"
pin_dir = "{pin}"

[ha]
control_socket = "{sock}"
{ha_extra}

[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["{VIP_SMTP}"]

[[service]]
name = "pop3"
protocol = "pop3"
port = 110
vips = ["{VIP_POP}"]
"#,
        name = fe.name,
        pin = lab.pin_dir(i).display(),
        sock = control_socket(lab, i).display(),
    );
    for r in routers {
        s.push_str(&format!(
            "\n[[vrrp]]\nvrid = {}\npriority = {}\nadvert_interval_cs = {}\nvips = [\"{}\"]\ngarp_interval_ms = 200\n{}",
            r.vrid, r.priority, r.interval_cs, r.vip, r.extra
        ));
    }
    s
}

/// Whether `addr` is on `dev` in `ns`.
pub fn owns(ns: &Netns, dev: &str, addr: IpAddr) -> bool {
    let Ok(out) = ns.ip(&["-o", "addr", "show", "dev", dev]) else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!(" {addr}/");
    text.contains(&needle)
}

/// Polls `f` every 10 ms until it holds; returns how long that took, or fails after
/// `timeout` with `what`.
pub fn eventually(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A keepalived 2.2.7 `vrrp_instance` in VRRPv3 mode on `pub0`.
#[derive(Clone, Debug)]
pub struct KeepalivedInstance {
    pub vrid: u8,
    pub priority: u8,
    pub vip: IpAddr,
    pub interval_cs: u16,
}

/// keepalived's configuration for `instances`.
pub fn keepalived_config(router_id: &str, instances: &[KeepalivedInstance]) -> String {
    let mut s = format!(
        "global_defs {{\n  router_id {router_id}\n  vrrp_version 3\n  vrrp_garp_master_delay 1\n  vrrp_garp_master_repeat 1\n}}\n"
    );
    for k in instances {
        // advert_int is in seconds; VRRPv3 allows centisecond fractions.
        let secs = f64::from(k.interval_cs) / 100.0;
        let len = if k.vip.is_ipv6() { 128 } else { 32 };
        s.push_str(&format!(
            "vrrp_instance VI_{vrid} {{\n  state BACKUP\n  interface pub0\n  virtual_router_id {vrid}\n  priority {prio}\n  advert_int {secs}\n  virtual_ipaddress {{\n    {vip}/{len} dev pub0\n  }}\n}}\n",
            vrid = k.vrid,
            prio = k.priority,
            vip = k.vip,
        ));
    }
    s
}

/// Starts keepalived in front-end `i`'s namespace, in the foreground with its own files.
/// Returns the index of its daemon in `lab.daemons()`.
pub fn start_keepalived(lab: &mut Lab, i: usize, config: &str) -> anyhow::Result<usize> {
    let name = format!("keepalived-{}", lab.frontends[i].name);
    let dir = lab.log_dir.clone();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
    let pid = dir.join(format!("{name}.pid"));
    let vrrp_pid = dir.join(format!("{name}-vrrp.pid"));
    let ns = lab.frontends[i].ns.clone();
    let args = [
        "keepalived",
        "-n",
        "-l",
        "-D",
        "-P",
        "-f",
        path(&conf),
        "-p",
        path(&pid),
        "-r",
        path(&vrrp_pid),
    ];
    lab.spawn(&ns, &name, &args)?;
    Ok(lab.daemons().len() - 1)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Starts tshark capturing VRRP on `pub0` of `ns` into `file`; returns its daemon index.
pub fn start_capture(lab: &mut Lab, ns: &Netns, file: &Path) -> anyhow::Result<usize> {
    let name = format!("tshark-{}", ns.name);
    let args = [
        "tshark",
        "-i",
        "pub0",
        "-f",
        "ip proto 112 or ip6 proto 112",
        "-w",
        path(file),
    ];
    lab.spawn(ns, &name, &args)?;
    Ok(lab.daemons().len() - 1)
}
