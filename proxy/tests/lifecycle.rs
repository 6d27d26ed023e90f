//! A front-end's stop and reloads, without root: in this process on plain loopback
//! sockets, and as the `robustifier run --without-kernel` process driven by signals.

mod support;

use std::time::Duration;

use support::{
    Client, PATIENCE, Running, SmtpBackend, config, free_port, run_without_kernel, tempdir,
};

fn smtp(backends: &[(&str, &SmtpBackend)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(name, b)| format!("{{ name = \"{name}\", address = \"{}\" }}", b.addr))
        .collect();
    format!(
        "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\nbackend = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_says_goodbye_to_idle_sessions_and_lets_a_message_in_flight_commit() {
    let backend = SmtpBackend::holding().await;
    let fe = Running::start(&tempdir("stop"), &config(&smtp(&[("mx0", &backend)])));
    let addr = fe.addr("smtp");
    let mut idle = Client::connect(addr).await;
    assert!(idle.reply().await.starts_with("220"));
    assert!(idle.ask("EHLO idle.test").await.starts_with("250"));
    let mut busy = Client::connect(addr).await;
    busy.smtp_until_data("alice@example.test").await;
    busy.send("Subject: in flight\r\n\r\nkept\r\n.").await;
    // The message's end is at the back-end, whose reply is held; now the stop.
    let commands = fe.commands.clone();
    let served = fe.served;
    commands
        .send(robustifier::frontend::Command::Stop)
        .await
        .unwrap();
    let bye = idle.reply().await;
    assert!(
        bye.starts_with("421"),
        "an idle session is told goodbye: {bye}"
    );
    // New connections find no listener once the accept loops ended.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the listener closes at the stop");
    backend.hold.as_ref().unwrap().add_permits(1);
    let committed = busy.reply().await;
    assert!(
        committed.starts_with("250"),
        "the message in flight commits: {committed}"
    );
    assert_eq!(backend.messages().len(), 1);
    // Then that session too is told goodbye, and the front-end ends.
    let after = busy.reply().await;
    assert!(after.starts_with("421"), "{after}");
    tokio::time::timeout(PATIENCE, served)
        .await
        .expect("the front-end stops")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_backend_and_a_bad_file_changes_nothing() {
    let old = SmtpBackend::start().await;
    let new = SmtpBackend::start().await;
    let fe = Running::start(&tempdir("reload"), &config(&smtp(&[("old", &old)])));
    let addr = fe.addr("smtp");
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("a@example.test", "first")
            .await
            .starts_with("250")
    );
    assert_eq!(old.messages().len(), 1);
    // "old" leaves the pool (it drains), "new" joins it.
    fe.reload(&config(&smtp(&[("new", &new)]))).await.unwrap();
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("b@example.test", "second")
            .await
            .starts_with("250")
    );
    assert_eq!((old.messages().len(), new.messages().len()), (1, 1));
    // A file that does not parse is refused, with the reason, and nothing changes.
    let err = fe
        .reload(&config(
            "[[service]]\nname = \"smtp\"\nport = \"twenty-five\"\n",
        ))
        .await
        .unwrap_err();
    assert!(err.contains("port"), "{err}");
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("c@example.test", "third")
            .await
            .starts_with("250")
    );
    assert_eq!((old.messages().len(), new.messages().len()), (1, 2));
    fe.stop().await;
}

/// The daemon's own signal handling: SIGHUP reloads, SIGTERM stops (exit status 0), with
/// no kernel side and therefore no root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reloads_on_sighup_and_stops_on_sigterm() {
    let first = SmtpBackend::start().await;
    let second = SmtpBackend::start().await;
    let dir = tempdir("daemon");
    let port = free_port();
    let service = |backends: &[(&str, &SmtpBackend)]| {
        config(&smtp(backends)).replace(
            "port = 25\n",
            &format!("port = {port}\nvips = [\"127.0.0.1\"]\n"),
        )
    };
    let file = dir.join("robustifier.toml");
    std::fs::write(&file, service(&[("first", &first)])).unwrap();
    let (mut child, log) = run_without_kernel(&file);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("a@example.test", "one")
            .await
            .starts_with("250")
    );
    assert_eq!(first.messages().len(), 1);

    std::fs::write(&file, service(&[("second", &second)])).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    log.wait("reload: configuration applied");
    let mut c2 = Client::connect(addr).await;
    assert!(
        c2.send_message("b@example.test", "two")
            .await
            .starts_with("250")
    );
    assert_eq!((first.messages().len(), second.messages().len()), (1, 1));

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let bye = c.reply().await;
    assert!(
        bye.starts_with("421"),
        "an idle session is told goodbye: {bye}"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
