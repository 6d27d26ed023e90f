//! The lab topology: two bridges in a switch namespace, one for the public side (clients,
//! front-ends, virtual IPs) and one for the back-end side (front-ends, mail servers).
//!
//! ```text
//!   client ──┐  public 198.18.0.0/24, 2001:db8:0:1::/64  ┌── fe-a (pub0 .1)   VIPs .25 SMTP, .110 POP3
//!            └──────────────── br0 ────────────────────────┴── fe-b (pub0 .2)
//!   fe-a (int0 .1), fe-b (int0 .2) ── br1 ── be1 .11, be2 .12, be3 .13, be4 .14 (be5 .15, be6 .16)
//!                             back-end 198.18.1.0/24, 2001:db8:0:2::/64
//! ```
//!
//! Host interfaces have the same names in every lab (`eth0`, `pub0`, `int0`); namespace
//! names carry the lab's prefix, so labs of parallel tests never meet.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;

use crate::{Daemon, Netns, netns};

pub const VIP_SMTP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 25);
pub const VIP_POP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 110);
pub const VIP_SMTP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x25);
pub const VIP_POP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x110);

/// `host` on the public segment.
pub fn public_v4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, host)
}
pub fn public_v6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, host)
}
/// `host` on the back-end segment.
pub fn internal_v4(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, host)
}
pub fn internal_v6(host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, host)
}

/// How much of the topology to build.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub frontends: usize,
    pub backends: usize,
}

impl Plan {
    pub const fn new(frontends: usize, backends: usize) -> Plan {
        Plan {
            frontends,
            backends,
        }
    }

    pub const FULL: Plan = Plan {
        frontends: 2,
        backends: 4,
    };
}

pub struct Host {
    pub name: String,
    pub ns: Netns,
    /// Primary address: public side for the client and front-ends, back-end side for servers.
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// Front-ends only: the address on the back-end segment.
    pub internal_v4: Option<Ipv4Addr>,
}

pub struct Lab {
    pub prefix: String,
    pub switch: Netns,
    pub client: Host,
    pub frontends: Vec<Host>,
    pub backends: Vec<Host>,
    pub log_dir: PathBuf,
    daemons: Vec<Daemon>,
    /// Every namespace created, registered at creation so a half-built lab is removed too.
    namespaces: Vec<Netns>,
    pin_dirs: Vec<PathBuf>,
    down: bool,
}

impl Lab {
    /// Builds the topology under `prefix`. On error, whatever was built is removed.
    pub fn up(prefix: &str, plan: Plan) -> anyhow::Result<Lab> {
        anyhow::ensure!(
            plan.frontends <= 2 && plan.backends <= 6,
            "the lab has at most 2 front-ends and 6 back-ends"
        );
        let log_dir = std::env::temp_dir().join("robustifier-lab").join(prefix);
        std::fs::create_dir_all(&log_dir)?;
        let switch = Netns::create(&format!("{prefix}-sw"))?;
        // From here on, a failure drops `lab`, which removes what exists.
        let mut lab = Lab {
            prefix: prefix.to_owned(),
            client: Host::placeholder(),
            switch: switch.clone(),
            frontends: Vec::new(),
            backends: Vec::new(),
            log_dir,
            daemons: Vec::new(),
            namespaces: vec![switch],
            pin_dirs: Vec::new(),
            down: false,
        };
        for br in ["br0", "br1"] {
            lab.switch.ip(&["link", "add", br, "type", "bridge"])?;
            lab.switch.ip(&["link", "set", br, "up"])?;
        }
        lab.client = lab.host(
            "client",
            &[(
                "eth0",
                "br0",
                IpAddr::V4(public_v4(100)),
                IpAddr::V6(public_v6(0x100)),
            )],
        )?;
        for i in 0..plan.frontends {
            let n = i as u8 + 1;
            let name = ["fea", "feb"][i];
            let mut fe = lab.host(
                name,
                &[
                    (
                        "pub0",
                        "br0",
                        IpAddr::V4(public_v4(n)),
                        IpAddr::V6(public_v6(n.into())),
                    ),
                    (
                        "int0",
                        "br1",
                        IpAddr::V4(internal_v4(n)),
                        IpAddr::V6(internal_v6(n.into())),
                    ),
                ],
            )?;
            fe.internal_v4 = Some(internal_v4(n));
            lab.frontends.push(fe);
        }
        for j in 0..plan.backends {
            let n = 11 + j as u8;
            let be = lab.host(
                &format!("be{}", j + 1),
                &[(
                    "eth0",
                    "br1",
                    IpAddr::V4(internal_v4(n)),
                    IpAddr::V6(internal_v6(n.into())),
                )],
            )?;
            lab.backends.push(be);
        }
        Ok(lab)
    }

    fn host(&mut self, name: &str, links: &[(&str, &str, IpAddr, IpAddr)]) -> anyhow::Result<Host> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        self.namespaces.push(ns.clone());
        let mut host = Host {
            name: name.to_owned(),
            ns,
            v4: Ipv4Addr::UNSPECIFIED,
            v6: Ipv6Addr::UNSPECIFIED,
            internal_v4: None,
        };
        for (k, (ifname, bridge, v4, v6)) in links.iter().enumerate() {
            let peer = format!("{name}-{k}");
            netns::ip(&[
                "link",
                "add",
                ifname,
                "netns",
                &host.ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &self.switch.name,
            ])?;
            self.switch
                .ip(&["link", "set", &peer, "master", bridge, "up"])?;
            host.ns
                .ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname])?;
            host.ns
                .ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
            host.ns.ip(&["link", "set", ifname, "up"])?;
            if k == 0 {
                if let IpAddr::V4(a) = v4 {
                    host.v4 = *a;
                }
                if let IpAddr::V6(a) = v6 {
                    host.v6 = *a;
                }
            }
        }
        Ok(host)
    }

    pub fn frontend(&self, i: usize) -> &Host {
        &self.frontends[i]
    }

    /// The switch's end of `host`'s `link`-th cable (0: `eth0`/`pub0`, 1: `int0`), in
    /// [`Lab::switch`]: setting it down is pulling that cable, and the host keeps its
    /// addresses (an administrative down inside the host would flush its IPv6 ones).
    pub fn switch_port(&self, host: &str, link: usize) -> String {
        format!("{host}-{link}")
    }

    /// Where front-end `i` pins its maps in this lab.
    pub fn pin_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/robustifier/{}-{}",
            self.prefix, self.frontends[i].name
        ))
    }

    /// `config` with front-end `i`'s control socket in this lab, unless it names one: every
    /// front-end has a control socket, and the default path is per front-end name, which
    /// labs running side by side share.
    pub fn with_control_socket(&self, i: usize, config: &str) -> String {
        let mut config = config.to_owned();
        if !config.contains("control_socket") {
            config.push_str(&format!(
                "\n[ha]\ncontrol_socket = \"{}\"\n",
                crate::vrrp::control_socket(self, i).display()
            ));
        }
        config
    }

    /// Starts `robustifier run` in front-end `i` with `config` (TOML) and waits until it is
    /// ready. Its pin directory is removed when the lab goes down.
    pub fn start_frontend(&mut self, i: usize, config: &str) -> anyhow::Result<&mut Daemon> {
        let config = self.with_control_socket(i, config);
        let path = self
            .log_dir
            .join(format!("{}.toml", self.frontends[i].name));
        std::fs::write(&path, config)?;
        self.start_frontend_file(i, &path)
    }

    /// Starts `robustifier run` in front-end `i` from the configuration file `path` as it
    /// is (a cluster member's file, say), and waits until it is ready.
    pub fn start_frontend_file(
        &mut self,
        i: usize,
        path: &std::path::Path,
    ) -> anyhow::Result<&mut Daemon> {
        let fe = &self.frontends[i];
        let mut cmd = fe.ns.command(crate::robustifier_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let log = self.log_dir.join(format!("{}.log", fe.name));
        let pin_dir = self.pin_dir(i);
        if !self.pin_dirs.contains(&pin_dir) {
            self.pin_dirs.push(pin_dir);
        }
        let mut daemon = Daemon::spawn(&format!("robustifier on {}", fe.name), cmd, log)?;
        daemon
            .wait_for_log("robustifier ready", Duration::from_secs(20))
            .context("front-end did not come up")?;
        self.daemons.push(daemon);
        Ok(self.daemons.last_mut().expect("just pushed"))
    }

    /// Starts any process in `host`'s namespace, ended when the lab goes down.
    pub fn spawn(
        &mut self,
        host: &Netns,
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<&mut Daemon> {
        let mut cmd = host.command(args[0]);
        cmd.args(&args[1..]);
        let log = self.log_dir.join(format!("{name}.log"));
        self.daemons.push(Daemon::spawn(name, cmd, log)?);
        Ok(self.daemons.last_mut().expect("just pushed"))
    }

    /// The running `robustifier run` of front-end `i` (the last one started, if it has not
    /// exited), for signals: SIGHUP to reload, SIGKILL to crash it.
    pub fn frontend_daemon(&mut self, i: usize) -> Option<&mut Daemon> {
        let name = format!("robustifier on {}", self.frontends[i].name);
        self.daemons
            .iter_mut()
            .rev()
            .find(|d| d.name == name)
            .filter(|d| d.running())
    }

    pub fn daemons(&mut self) -> &mut Vec<Daemon> {
        &mut self.daemons
    }

    /// Leaves the namespaces in place when this value goes away (for `cargo xtask lab up`);
    /// [`sweep`] removes them later. Processes the lab started still end.
    pub fn persist(mut self) {
        self.daemons.clear();
        self.down = true;
    }

    /// Ends the lab's processes (by pid), removes its namespaces and pin directories.
    pub fn down(&mut self) -> anyhow::Result<()> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        self.daemons.clear();
        let mut errors = Vec::new();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ns.delete() {
                errors.push(e.to_string());
            }
        }
        for dir in &self.pin_dirs {
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(dir)
            {
                errors.push(format!("{}: {e}", dir.display()));
            }
        }
        anyhow::ensure!(errors.is_empty(), "lab teardown: {}", errors.join("; "));
        Ok(())
    }
}

impl Host {
    fn placeholder() -> Host {
        Host {
            name: String::new(),
            ns: Netns {
                name: String::new(),
            },
            v4: Ipv4Addr::UNSPECIFIED,
            v6: Ipv6Addr::UNSPECIFIED,
            internal_v4: None,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("{e}");
        }
    }
}

/// Removes the namespaces whose name starts with `prefix` and whose creating process is
/// gone (leftovers of a killed run); labs of runs still alive are left alone.
pub fn sweep(prefix: &str) -> Vec<String> {
    let names: Vec<String> = netns::list(prefix)
        .into_iter()
        .filter(|n| crate::orphaned(n))
        .collect();
    for n in &names {
        let _ = netns::ip(&["netns", "del", n]);
    }
    names
}
