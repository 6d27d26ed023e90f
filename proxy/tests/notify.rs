//! systemd's notification protocol without systemd: this test binds the unix datagram
//! socket systemd would (`NOTIFY_SOCKET`, with SO_PASSCRED so each message names its
//! sender's pid, as systemd sees it), and runs `robustifier run --without-kernel` the way
//! robustifier.service does, with `WATCHDOG_USEC`. It checks READY=1 only once the port
//! accepts, WATCHDOG=1 over and over, RELOADING=1 then READY=1 around a reload, and that
//! `reload-or-upgrade` (the unit's ExecReload) reloads while the binary is the same and
//! upgrades once it was replaced: the new process says MAINPID=<its pid> before READY=1,
//! feeds the watchdog, and the old one never says STOPPING=1 (that would stop the service).
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::Path,
    sync::mpsc,
    time::Instant,
};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use support::{Client, Log, PATIENCE, SmtpBackend, Started, config, free_port, tempdir};

/// One notification: its sender's pid and its lines.
#[derive(Debug, Clone)]
struct Note {
    pid: u32,
    text: String,
}

impl Note {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
}

/// The notification socket, read on a thread of its own.
struct Notes(mpsc::Receiver<Note>);

impl Notes {
    fn bind(path: &Path) -> Notes {
        let sock = UnixDatagram::bind(path).unwrap();
        // The daemon sends after its switch to its own user, as under systemd, whose
        // socket is open to every user.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        setsockopt(&sock, sockopt::PassCred, &true).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut buf = [0u8; 4096];
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!(UnixCredentials);
                let Ok(msg) = recvmsg::<()>(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::empty(),
                ) else {
                    return;
                };
                let pid = msg
                    .cmsgs()
                    .unwrap()
                    .find_map(|c| match c {
                        ControlMessageOwned::ScmCredentials(c) => Some(c.pid() as u32),
                        _ => None,
                    })
                    .unwrap_or(0);
                let n = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send(Note { pid, text }).is_err() {
                    return;
                }
            }
        });
        Notes(rx)
    }

    /// The notifications up to and including the first that `until` accepts.
    fn until(&self, what: &str, until: impl Fn(&Note) -> bool) -> Vec<Note> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.0.recv_timeout(left) {
                Ok(note) => {
                    let done = until(&note);
                    seen.push(note);
                    if done {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no notification {what}; got {seen:?}");
    }
}

/// Without the watchdog's own messages.
fn besides_watchdog(notes: &[Note]) -> Vec<&Note> {
    notes
        .iter()
        .filter(|n| n.text.trim() != "WATCHDOG=1")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reload_watchdog_and_upgrade_are_told_to_systemd() {
    let backend = SmtpBackend::start().await;
    let dir = tempdir("notify");
    let socket = dir.join("control").join("control.sock");
    let port = free_port();
    let text = |name: &str| {
        config(&format!(
            "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {port}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\nbackend = [{{ name = \"{name}\", address = \"{}\" }}]\n\
             [ha]\ncontrol_socket = \"{}\"\n",
            backend.addr,
            socket.display()
        ))
    };
    let file = dir.join("robustifier.toml");
    std::fs::write(&file, text("b1")).unwrap();
    let notify = dir.join("notify.sock");
    let notes = Notes::bind(&notify);

    // The installed binary stands in a copy: a binary the package manager did not replace
    // yet. The original plays the new package's.
    let installed = dir.join("robustifier");
    std::fs::copy(env!("CARGO_BIN_EXE_robustifier"), &installed).unwrap();
    let mut child = std::process::Command::new(&installed)
        .args(["run", "--without-kernel", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::follow(child.stderr.take().unwrap());
    let first = child.id();
    let mut started = Started::default();
    started.0.push(first);

    // READY=1, and at that moment the port accepts and greets.
    let before = notes.until("READY=1", |n| n.has("READY=1"));
    let ready = before.last().unwrap();
    assert_eq!(ready.pid, first, "{before:?}");
    assert!(ready.text.contains("STATUS=serving"), "{ready:?}");
    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    assert!(c.reply().await.starts_with("220"));
    drop(c);
    log.wait("systemd watchdog");

    // The watchdog is fed over and over while the loops run.
    for _ in 0..3 {
        notes.until("WATCHDOG=1", |n| n.has("WATCHDOG=1") && n.pid == first);
    }

    // ExecReload with the same binary: a live reload, told as RELOADING=1 ... READY=1.
    std::fs::write(&file, text("b2")).unwrap();
    let out = std::process::Command::new(&installed)
        .args(["reload-or-upgrade", "--without-kernel", "--config"])
        .arg(&file)
        .arg("--pid")
        .arg(first.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.starts_with("applied: version"),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reload = notes.until("READY=1 after the reload", |n| n.has("READY=1"));
    let told = besides_watchdog(&reload);
    assert!(told.len() == 2 && told[0].has("RELOADING=1"), "{reload:?}");
    assert!(
        told[0]
            .text
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reload:?}"
    );
    assert!(told.iter().all(|n| n.pid == first), "{reload:?}");

    // The package replaced the binary: ExecReload (the new binary, as systemd runs it,
    // with the watchdog variables naming itself) upgrades.
    let upgrade_log = dir.join("upgrade.log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_robustifier"))
        .args(["reload-or-upgrade", "--without-kernel", "--config"])
        .arg(&file)
        .env("MAINPID", first.to_string())
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "2000000")
        .env("WATCHDOG_PID", std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&upgrade_log).unwrap())
        .stderr(std::fs::File::create(dir.join("upgrade.err")).unwrap())
        .status()
        .unwrap();
    let said = std::fs::read_to_string(&upgrade_log).unwrap();
    assert!(
        out.success() && said.contains("runs a replaced binary: upgrading"),
        "{said} {}",
        std::fs::read_to_string(dir.join("upgrade.err")).unwrap_or_default()
    );
    let upgraded = notes.until("READY=1 from the new process", |n| {
        n.has("READY=1") && n.pid != first
    });
    let second = upgraded.last().unwrap().pid;
    started.0.push(second);
    let announced = upgraded
        .iter()
        .position(|n| n.has(&format!("MAINPID={second}")) && n.pid == second);
    assert!(
        announced.is_some_and(|i| i < upgraded.len() - 1),
        "MAINPID={second} before READY=1: {upgraded:?}"
    );
    // The new process feeds the watchdog although WATCHDOG_PID named another process.
    notes.until("WATCHDOG=1 from the new process", |n| {
        n.has("WATCHDOG=1") && n.pid == second
    });

    // The old process drains and exits without a word that would stop the service.
    log.wait("upgrade: handed over to the successor");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    // Its last words, if any, are in the socket by now; the new one is told to stop.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let last = notes.until("STOPPING=1", |n| n.has("STOPPING=1"));
    let stopping: Vec<&Note> = last.iter().filter(|n| n.has("STOPPING=1")).collect();
    assert_eq!(stopping.len(), 1, "{last:?}");
    assert_eq!(
        stopping[0].pid, second,
        "only the main process says STOPPING=1: {last:?}"
    );
    assert!(
        last.iter().all(|n| n.pid != first),
        "the old process is silent after the hand-over: {last:?}"
    );
    wait_gone(second);
}

/// Waits until `pid` (not our child) has exited.
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + PATIENCE;
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "pid {pid} did not stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
