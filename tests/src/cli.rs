//! Running the `robustifier` command line from a test (`maps`, `ha`, `agent`, `unload`,
//! `check-config`): one runner, so that every test reports a failed command the same way,
//! with the arguments and what the command wrote on stderr.

use std::{
    ffi::{OsStr, OsString},
    process::{Command, Output},
};

use crate::Lab;

/// `robustifier <args>`, run to its end.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(crate::robustifier_bin())
        .args(args)
        .output()
        .expect("run the robustifier binary")
}

/// `robustifier <args>`, which must succeed: its stdout as text. A failure fails the test
/// with the arguments and the command's stderr.
pub fn ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = run(&args);
    assert!(
        out.status.success(),
        "robustifier {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `robustifier ha --socket <front-end i's control socket> <args>`, run to its end.
pub fn ha(lab: &Lab, i: usize, args: &[&str]) -> Output {
    run(ha_args(lab, i, args))
}

/// [`ha`], which must succeed: its stdout as text.
pub fn ha_ok(lab: &Lab, i: usize, args: &[&str]) -> String {
    ok(ha_args(lab, i, args))
}

fn ha_args(lab: &Lab, i: usize, args: &[&str]) -> Vec<OsString> {
    let mut all: Vec<OsString> = vec![
        "ha".into(),
        "--socket".into(),
        crate::vrrp::control_socket(lab, i).into(),
    ];
    all.extend(args.iter().map(OsString::from));
    all
}

/// Starts `robustifier agent` on back-end `i` (named `name` among the lab's processes),
/// listening on the back-end's address at [`crate::cluster::AGENT_PORT`] with the lab's
/// agent key, with `args` added (`--mta`, `--spool`, ...); returns once it listens.
pub fn start_agent(
    lab: &mut Lab,
    i: usize,
    name: &str,
    args: &[&str],
) -> anyhow::Result<std::net::SocketAddr> {
    let listen = std::net::SocketAddr::new(
        crate::topology::internal_v4(11 + i as u8).into(),
        crate::cluster::AGENT_PORT,
    );
    let bin = crate::robustifier_bin();
    let key = crate::agent_key_file(&lab.log_dir);
    let (listen_text, bin_text, key_text) = (
        listen.to_string(),
        bin.display().to_string(),
        key.display().to_string(),
    );
    let mut argv = vec![
        bin_text.as_str(),
        "agent",
        "--listen",
        &listen_text,
        "--key-file",
        &key_text,
    ];
    argv.extend_from_slice(args);
    let ns = lab.backends[i].ns.clone();
    lab.spawn(&ns, name, &argv)?;
    crate::wait_port(&ns, listen)?;
    Ok(listen)
}

/// A front-end process started by `robustifier upgrade`: not the lab's child, so the lab
/// cannot end it; this ends it (SIGTERM, by pid) when the test is done with it, passed or
/// failed.
pub struct Successor {
    pub pid: nix::unistd::Pid,
}

impl Successor {
    /// Whether the process has ended (a zombie nobody reaps counts as ended).
    pub fn gone(&self) -> bool {
        nix::sys::signal::kill(self.pid, None).is_err()
            || std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .is_ok_and(|s| s.contains(") Z "))
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if !self.gone() {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// `robustifier upgrade` of front-end `i` (its configuration file in the lab's log
/// directory), run in its namespace: returns the new process once it serves, as the
/// control socket says. Its output goes to `<name>-successor.log` in the log directory.
pub fn upgrade(lab: &Lab, i: usize) -> Successor {
    let fe = &lab.frontends[i];
    let config = lab.log_dir.join(format!("{}.toml", fe.name));
    let log = lab.log_dir.join(format!("{}-successor.log", fe.name));
    let out = fe
        .ns
        .command(crate::robustifier_bin())
        .arg("upgrade")
        .arg("--config")
        .arg(&config)
        .arg("--log")
        .arg(&log)
        .output()
        .expect("run robustifier upgrade");
    let status: serde_json::Value =
        serde_json::from_str(&ha_ok(lab, i, &["status", "--json"])).expect("status as JSON");
    let pid = status["pid"].as_u64().expect("a pid in the status") as i32;
    let successor = Successor {
        pid: nix::unistd::Pid::from_raw(pid),
    };
    assert!(
        out.status.success(),
        "robustifier upgrade: {}\n{}\nsuccessor's log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    successor
}

/// Writes `text` (with the lab's control socket) as front-end `i`'s configuration, sends
/// SIGHUP and waits for its `n`th reload line, applied or refused as `applied` says.
pub fn reload_by_signal(lab: &mut Lab, i: usize, text: &str, n: usize, applied: bool) {
    let file = lab.log_dir.join(format!("{}.toml", lab.frontends[i].name));
    std::fs::write(file, lab.with_control_socket(i, text)).expect("write the configuration");
    let daemon = lab.frontend_daemon(i).expect("the front-end runs");
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let needle = if applied {
        "reload: configuration applied"
    } else {
        "reload: refused"
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while daemon.log_text().matches(needle).count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload line {n} ({needle}):\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
