//! Helpers for the failover tests: front-end configurations with virtual routers,
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

use crate::{
    Lab, Netns,
    frontend_config::{FrontendConfig, Service},
    topology::{VIP_POP, VIP_SMTP, VIP_SMTP_V6},
};

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

/// The control socket of front-end `i` in this lab, in a directory of its own that the
/// daemon creates and hands to its unprivileged user.
pub fn control_socket(lab: &Lab, i: usize) -> PathBuf {
    lab.log_dir
        .join(format!("{}.control", lab.frontends[i].name))
        .join("control.sock")
}

/// A front-end config: SMTP on the SMTP VIP, POP3 on the POP VIP, the given routers on
/// `pub0`, the control socket in the lab's log directory.
pub fn frontend_config(lab: &Lab, i: usize, routers: &[Vr], ha_extra: &str) -> String {
    config_builder(lab, i, routers, ha_extra).build()
}

/// [`frontend_config`] as a builder, for a test that adds to it.
pub fn config_builder(lab: &Lab, i: usize, routers: &[Vr], ha_extra: &str) -> FrontendConfig {
    let mut cfg = FrontendConfig::new(&lab.frontends[i].name, &lab.pin_dir(i))
        .toml(&format!(
            "[ha]\ncontrol_socket = \"{}\"\n{ha_extra}",
            control_socket(lab, i).display()
        ))
        .service(Service::new("smtp", "smtp", 25).vips(&[VIP_SMTP.into(), VIP_SMTP_V6.into()]))
        .service(Service::new("pop3", "pop3", 110).vips(&[VIP_POP.into()]));
    for r in routers {
        cfg = cfg.toml(&format!(
            "[[vrrp]]\nvrid = {}\npriority = {}\nadvert_interval_cs = {}\nvips = [\"{}\"]\ngarp_interval_ms = 200\n{}",
            r.vrid, r.priority, r.interval_cs, r.vip, r.extra
        ));
    }
    cfg
}

/// Two virtual routers with opposite primaries, as front-end `i` of a pair configures
/// them: front-end 0 is master of VRID 51 (the SMTP VIP) and backup of 52 (the POP VIP),
/// front-end 1 the reverse.
pub fn opposite_primaries(i: usize) -> Vec<Vr> {
    let (smtp, pop) = if i == 0 { (150, 100) } else { (100, 150) };
    vec![
        Vr::new(51, smtp, VIP_SMTP, 20),
        Vr::new(52, pop, VIP_POP, 20),
    ]
}

/// Starts front-ends 0 and 1 with `cfg_a` and `cfg_b`; returns their namespaces.
pub fn start_pair(lab: &mut Lab, cfg_a: &str, cfg_b: &str) -> anyhow::Result<(Netns, Netns)> {
    lab.start_frontend(0, cfg_a)?;
    lab.start_frontend(1, cfg_b)?;
    Ok((lab.frontends[0].ns.clone(), lab.frontends[1].ns.clone()))
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
        // A killed VRRP child stays dead, so a test can crash keepalived (its parent would
        // otherwise respawn it, and SIGKILL on the parent makes the child resign politely).
        "-R",
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

/// The pid of keepalived's VRRP child process (the one that speaks the protocol), from the
/// pid file [`start_keepalived`] gave it.
pub fn keepalived_vrrp_pid(lab: &Lab, i: usize) -> Option<i32> {
    let file = lab
        .log_dir
        .join(format!("keepalived-{}-vrrp.pid", lab.frontends[i].name));
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The IP datagrams in a capture of Ethernet frames. A live capture is written as pcapng;
/// tshark converts it to classic pcap, whose records are simple to walk.
pub fn pcap_ip_packets(file: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let pcap = file.with_extension("classic.pcap");
    crate::netns::run(std::process::Command::new("tshark").args([
        "-r",
        path(file),
        "-F",
        "pcap",
        "-w",
        path(&pcap),
    ]))?;
    let bytes = std::fs::read(&pcap).with_context(|| format!("reading {}", pcap.display()))?;
    anyhow::ensure!(bytes.len() >= 24, "{}: no pcap header", file.display());
    let magic = u32::from_le_bytes(bytes[0..4].try_into()?);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => anyhow::bail!("{}: not a pcap file (magic {magic:#x})", file.display()),
    };
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32_at(&bytes[at + 8..]) as usize;
        let start = at + 16;
        let Some(frame) = bytes.get(start..start + caplen) else {
            break;
        };
        // Ethernet II only: skip the 14-byte header.
        if frame.len() > 14 {
            out.push(frame[14..].to_vec());
        }
        at = start + caplen;
    }
    Ok(out)
}

/// `config` (from [`keepalived_config`]) with a notify script on every instance that
/// appends "INSTANCE <name> <state> <priority>" to `log` at each of keepalived's state
/// changes (its first BACKUP included): a record of transitions that needs no timing.
/// Returns the configuration; the script is written beside `log`.
pub fn with_notify_log(config: &str, log: &Path) -> anyhow::Result<String> {
    let script = log.with_extension("sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
    )
    .with_context(|| format!("writing {}", script.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(config
        .replace("global_defs {\n", "global_defs {\n  script_user root\n")
        .replace(
            "  state BACKUP\n",
            &format!("  state BACKUP\n  notify {}\n", script.display()),
        ))
}

/// The lines of a notify log (see [`with_notify_log`]); none while it does not exist.
pub fn notify_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Starts tshark on `pub0` of `ns` printing "source<TAB>priority" per VRRP advert, line
/// by line, into its daemon log: what a peer in `ns` has been sent, to count adverts as
/// they arrive. Returns its daemon index.
pub fn start_advert_log(lab: &mut Lab, ns: &Netns) -> anyhow::Result<usize> {
    let name = format!("tshark-adverts-{}", ns.name);
    let args = [
        "tshark",
        "-i",
        "pub0",
        "-l",
        "-n",
        "-f",
        "ip proto 112",
        "-T",
        "fields",
        "-e",
        "ip.src",
        "-e",
        "vrrp.prio",
    ];
    lab.spawn(ns, &name, &args)?;
    Ok(lab.daemons().len() - 1)
}

/// How many adverts from `src` at `priority` an advert log ([`start_advert_log`]) holds.
pub fn adverts_logged(log_text: &str, src: &str, priority: u8) -> usize {
    let line = format!("{src}\t{priority}");
    log_text.lines().filter(|l| l.trim_end() == line).count()
}
