//! A binary upgrade and reloads over the control socket, without root: the
//! `robustifier run --without-kernel` process replaced by a new one with
//! `robustifier upgrade` while a client sends a message after another, and `robustifier
//! reload` applying a file (and refusing a bad one) through the control socket.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use support::{
    Client, PATIENCE, SmtpBackend, Started, config, free_port, ha_status, robustifier,
    run_without_kernel, tempdir,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_refuses_no_connection_and_loses_no_message() {
    let first = SmtpBackend::start().await;
    let second = SmtpBackend::start().await;
    let dir = tempdir("upgrade");
    // A directory the daemon makes (and gives its user, when it starts as root).
    let socket = dir.join("control").join("control.sock");
    let port = free_port();
    let text = |backends: &[(&str, &SmtpBackend)]| {
        let list: Vec<String> = backends
            .iter()
            .map(|(name, b)| format!("{{ name = \"{name}\", address = \"{}\" }}", b.addr))
            .collect();
        config(&format!(
            "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {port}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\nbackend = [{}]\n\
             [ha]\ncontrol_socket = \"{}\"\n",
            list.join(", "),
            socket.display()
        ))
    };
    let file = dir.join("robustifier.toml");
    std::fs::write(&file, text(&[("first", &first)])).unwrap();
    let (mut old, log) = run_without_kernel(&file);
    let mut started = Started::default();
    started.0.push(old.id());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let before = ha_status(&socket);
    assert_eq!(before["pid"], old.id());
    let first_version = before["version"].as_str().unwrap().to_owned();

    // `robustifier reload -c FILE`: applies FILE, says what changed.
    let changed = dir.join("two-backends.toml");
    std::fs::write(&changed, text(&[("first", &first), ("second", &second)])).unwrap();
    let out = robustifier(&["reload", "--config", changed.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("applied: version "), "{said}");
    assert!(
        said.contains("back-end second added"),
        "the summary names the change: {said}"
    );
    let version = ha_status(&socket)["version"].as_str().unwrap().to_owned();
    assert_ne!(version, first_version);
    assert!(said.contains(&version), "{said}");
    // A bad file: refused, nothing changed, non-zero exit with the key.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        text(&[("first", &first)]).replace("identity = \"none\"", "identity = \"bogus\""),
    )
    .unwrap();
    let out = robustifier(&[
        "reload",
        "--socket",
        socket.to_str().unwrap(),
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("identity"), "{why}");
    assert_eq!(ha_status(&socket)["version"].as_str().unwrap(), version);

    // A session open before the upgrade, mid-transaction during it.
    let mut held = Client::connect(addr).await;
    assert!(held.reply().await.starts_with("220"));
    assert!(held.ask("EHLO client.test").await.starts_with("250"));

    // A client sending a message after another throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let (mut acknowledged, mut failures) = (0usize, Vec::new());
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_probe)) => {}
                    other => {
                        failures.push(format!("connect {i}: {other:?}"));
                        continue;
                    }
                }
                let mut c = Client::connect(addr).await;
                let reply = c.send_message(&format!("u{i}@example.test"), "load").await;
                if reply.starts_with("250") {
                    acknowledged += 1;
                } else {
                    failures.push(format!("message {i}: {reply}"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acknowledged, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let upgrade_log = dir.join("successor.log");
    let out = tokio::task::spawn_blocking({
        let upgrade_log = upgrade_log.clone();
        move || {
            robustifier(&[
                "upgrade",
                "--config",
                changed.to_str().unwrap(),
                "--without-kernel",
                "--log",
                upgrade_log.to_str().unwrap(),
            ]);
        }
    });
    out.await.unwrap();
    let after = ha_status(&socket);
    let new_pid = after["pid"].as_u64().unwrap() as u32;
    started.0.push(new_pid);
    assert_ne!(
        new_pid,
        old.id(),
        "a new process serves: {after}\n{}",
        std::fs::read_to_string(&upgrade_log).unwrap_or_default()
    );
    assert_eq!(after["version"].as_str().unwrap(), version);
    log.wait("upgrade: handed over to the successor");

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "refused or failed during the upgrade: {failures:?}"
    );
    eprintln!("{acknowledged} messages acknowledged around the upgrade");
    assert!(acknowledged > 0);

    // The session from before finishes its transaction on the old process, which then ends.
    let reply = held.send_message_after_greeting("held@example.test").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert!(held.ask("QUIT").await.starts_with("221"));
    let exit = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "the old process drains and exits: {exit}");

    // Every acknowledged message is at a back-end, once.
    let delivered = first.messages().len() + second.messages().len();
    assert_eq!(
        delivered,
        acknowledged + 1,
        "acknowledged {acknowledged} + the held one"
    );

    // The successor serves on, and stops on SIGTERM like any front-end.
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("last@example.test", "x")
            .await
            .starts_with("250")
    );
    let pid = nix::unistd::Pid::from_raw(new_pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the successor did not stop"
        );
        // It is not our child: reaping is its parent's business; a zombie counts as gone.
        if std::fs::read_to_string(format!("/proc/{new_pid}/stat"))
            .is_ok_and(|s| s.contains(") Z "))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
