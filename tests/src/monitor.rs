//! Watching the lab's front-ends as an operator's monitoring would: a station on the
//! back-end bridge (in the switch namespace, beside the cluster manager) runs net-snmp's
//! `snmptrapd` with ROBUSTIFIER-MIB loaded, taking the front-ends' SNMPv2c notifications
//! into a log file, and scrapes their Prometheus endpoints with curl and the bearer token;
//! and each front-end's own view of its alarms (`robustifier alarms --json`).
//!
//! The station owns what it starts: dropping it ends `snmptrapd` by its pid and removes
//! its folder (configuration, secrets, log), also when a test or the demo fails midway.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{Daemon, Lab, Netns};

/// The monitoring station's address, on the back-end bridge in the switch namespace:
/// every front-end reaches it over its `int0`.
pub const STATION_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 251);
/// Where the front-ends serve `/metrics` (every address of their namespace).
pub const METRICS_PORT: u16 = 9190;
const COMMUNITY: &str = "robustifier-lab";

/// A program on PATH or in /usr/sbin (snmptrapd's home, not on every user's PATH).
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The folder of the IETF base modules ROBUSTIFIER-MIB imports: Debian ships them with
/// erlang-snmp only.
fn base_mibs() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/erlang/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("mibs"))
        .find(|p| p.join("SNMPv2-SMI.mib").is_file())
}

/// The repository's MIB folder.
pub fn mib_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mib")
}

/// An `snmptrapd` and a Prometheus scraper on the lab's back-end bridge.
pub struct Station {
    pub ns: Netns,
    /// Where the front-ends send their notifications.
    pub target: SocketAddr,
    /// The station's folder: removed when the station is dropped.
    pub dir: PathBuf,
    /// snmptrapd's log: one line per notification, its objects by MIB name.
    pub trap_log: PathBuf,
    pub community_file: PathBuf,
    pub token_file: PathBuf,
    /// curl's `-H @file`: the bearer token stays off the command line.
    header_file: PathBuf,
    daemon: Option<Daemon>,
}

impl Station {
    /// Puts [`STATION_V4`] on the switch's back-end bridge and starts `snmptrapd` there
    /// (v2c, community from a file the front-ends read too); returns once it logs its
    /// start. The secrets are written for the front-ends' unprivileged user to read.
    pub fn start(lab: &Lab) -> anyhow::Result<Station> {
        let snmptrapd = program("snmptrapd")
            .context("snmptrapd missing (Debian's snmptrapd; `cargo xtask setup` installs it)")?;
        let base = base_mibs().context(
            "the IETF base MIBs are missing (Debian's erlang-snmp; `cargo xtask setup` installs it)",
        )?;
        let ns = lab.switch.clone();
        ns.ip(&["addr", "add", &format!("{STATION_V4}/24"), "dev", "br1"])?;
        let dir = lab.log_dir.join("monitoring");
        std::fs::create_dir_all(&dir)?;
        let state = dir.join("snmptrapd-state");
        std::fs::create_dir_all(&state)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let token = format!("lab-metrics-{}-{}", std::process::id(), now.as_nanos());
        let mut station = Station {
            ns: ns.clone(),
            target: SocketAddr::new(STATION_V4.into(), 162),
            trap_log: dir.join("snmptrapd.log"),
            community_file: dir.join("snmp.community"),
            token_file: dir.join("metrics.token"),
            header_file: dir.join("curl.headers"),
            dir,
            daemon: None,
        };
        for (file, text) in [
            (&station.community_file, COMMUNITY),
            (&station.token_file, token.as_str()),
        ] {
            std::fs::write(file, format!("{text}\n"))?;
            readable_by_daemon(file)?;
        }
        std::fs::write(
            &station.header_file,
            format!("Authorization: Bearer {token}\n"),
        )?;
        let conf = station.dir.join("snmptrapd.conf");
        std::fs::write(&conf, format!("authCommunity log {COMMUNITY}\n"))?;
        let mut cmd = ns.command(snmptrapd);
        cmd.env("SNMP_PERSISTENT_DIR", &state)
            .args(["-f", "-n", "-C", "-Lf"])
            .arg(&station.trap_log)
            .arg("-c")
            .arg(&conf)
            .arg("-M")
            .arg(format!("{}:{}", base.display(), mib_dir().display()))
            .args(["-m", "SNMPv2-MIB:ROBUSTIFIER-MIB"])
            .arg(format!("udp:{}", station.target));
        let daemon = Daemon::spawn("snmptrapd", cmd, station.dir.join("snmptrapd.out"))?;
        station.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !station.traps().contains("NET-SNMP version") {
            anyhow::ensure!(
                Instant::now() < deadline,
                "snmptrapd did not start: {}",
                std::fs::read_to_string(station.dir.join("snmptrapd.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(station)
    }

    /// The front-ends' `[monitor]`: the metrics endpoint on every address at
    /// [`METRICS_PORT`] with the station's token, and SNMPv2c traps to the station.
    pub fn monitor_toml(&self) -> String {
        format!(
            "[monitor]\nmetrics_listen = \"0.0.0.0:{METRICS_PORT}\"\nmetrics_token_file = \"{}\"\n\n\
             [[monitor.snmp]]\ntarget = \"{}\"\nversion = \"2c\"\ncommunity_file = \"{}\"\n",
            self.token_file.display(),
            self.target,
            self.community_file.display()
        )
    }

    /// snmptrapd's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|d| d.pid().as_raw())
    }

    /// snmptrapd's log so far.
    pub fn traps(&self) -> String {
        std::fs::read_to_string(&self.trap_log).unwrap_or_default()
    }

    /// The notifications `trap` (a ROBUSTIFIER-MIB name: `robustifierAlarmRaised`,
    /// `robustifierAlarmCleared`) about alarm `key` logged so far, one line each.
    pub fn notifications(&self, trap: &str, key: &str) -> Vec<String> {
        notifications(&self.traps(), trap, key)
    }

    /// Waits up to `timeout` for at least one [`Station::notifications`] from front-end
    /// `frontend`; those of every front-end once there is one, none if there never is.
    pub fn wait_notification(
        &self,
        trap: &str,
        key: &str,
        frontend: &str,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.notifications(trap, key);
            if found.iter().any(|n| from_frontend(n, frontend)) || Instant::now() > deadline {
                return found
                    .into_iter()
                    .filter(|n| from_frontend(n, frontend))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET /metrics` from the station at `addr` with the bearer token (curl).
    pub fn metrics(&self, addr: SocketAddr) -> anyhow::Result<String> {
        let out = self
            .ns
            .command("curl")
            .args(["-sS", "--fail", "--max-time", "5", "-H"])
            .arg(format!("@{}", self.header_file.display()))
            .arg(format!("http://{addr}/metrics"))
            .output()
            .context("run curl")?;
        anyhow::ensure!(
            out.status.success(),
            "curl http://{addr}/metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lines of snmptrapd's log `log` that are notification `trap` about alarm `key`.
pub fn notifications(log: &str, trap: &str, key: &str) -> Vec<String> {
    let oid = format!("SNMPv2-MIB::snmpTrapOID.0 = OID: ROBUSTIFIER-MIB::{trap}\t");
    let key = format!("ROBUSTIFIER-MIB::robustifierAlarmKey.0 = STRING: {key}\t");
    log.lines()
        .filter(|l| l.contains(&oid) && l.contains(&key))
        .map(str::to_owned)
        .collect()
}

/// Whether a notification's line names `frontend` as its sender.
pub fn from_frontend(line: &str, frontend: &str) -> bool {
    line.contains(&format!(
        "ROBUSTIFIER-MIB::robustifierAlarmFrontend.0 = STRING: {frontend}\t"
    ))
}

/// The samples of `metric` in Prometheus text `text` whose labels contain `label`
/// (`backend="be1"`).
pub fn samples<'a>(text: &'a str, metric: &str, label: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(label))
        })
        .collect()
}

/// `robustifier alarms --socket <front-end i's control socket> --json`.
pub fn alarms(lab: &Lab, i: usize) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(crate::robustifier_bin())
        .arg("alarms")
        .arg("--socket")
        .arg(crate::vrrp::control_socket(lab, i))
        .arg("--json")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "robustifier alarms: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The active alarm `key` in an `alarms --json` report.
pub fn active<'a>(report: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    report["alarms"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
}

/// Gives the front-end daemon's group read access to `file`: the daemon checks the files
/// its configuration names when it applies a new version, as its unprivileged user.
fn readable_by_daemon(file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(group) = nix::unistd::Group::from_name("robustifier")? {
        nix::unistd::chown(file, None, Some(group.gid))?;
    }
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o640))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_match_trap_key_and_frontend() {
        let log = "2026-01-01 host [UDP: [198.18.1.1]:40000->[198.18.1.251]:162]:\t\
            SNMPv2-MIB::snmpTrapOID.0 = OID: ROBUSTIFIER-MIB::robustifierAlarmRaised\t\
            ROBUSTIFIER-MIB::robustifierAlarmFrontend.0 = STRING: fea\t\
            ROBUSTIFIER-MIB::robustifierAlarmKey.0 = STRING: backend_down:be1\t\n\
            x\tSNMPv2-MIB::snmpTrapOID.0 = OID: ROBUSTIFIER-MIB::robustifierAlarmRaised\t\
            ROBUSTIFIER-MIB::robustifierAlarmFrontend.0 = STRING: fea\t\
            ROBUSTIFIER-MIB::robustifierAlarmKey.0 = STRING: backend_down:be1-submission\t\n";
        let raised = notifications(log, "robustifierAlarmRaised", "backend_down:be1");
        assert_eq!(raised.len(), 1);
        assert!(from_frontend(&raised[0], "fea"));
        assert!(!from_frontend(&raised[0], "feb"));
        assert!(notifications(log, "robustifierAlarmCleared", "backend_down:be1").is_empty());
    }

    #[test]
    fn samples_match_metric_and_label() {
        let text = "# TYPE robustifier_backend_up gauge\n\
            robustifier_backend_up{pool=\"be1\",backend=\"be1\"} 0\n\
            robustifier_backend_up{pool=\"sub-be1\",backend=\"be1-submission\"} 0\n\
            robustifier_backend_up_total{backend=\"be1\"} 3\n";
        assert_eq!(
            samples(text, "robustifier_backend_up", "backend=\"be1\""),
            ["robustifier_backend_up{pool=\"be1\",backend=\"be1\"} 0"]
        );
    }
}
