//! An operator drain of one back-end on a running front-end, without root: the
//! `robustifier run --without-kernel` process with two scripted back-ends, drained and
//! undrained with `robustifier backend drain|undrain` over its control socket.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{net::SocketAddr, path::Path};

use support::{
    Client, Daemon, SmtpBackend, config, free_port, ha_status, robustifier, run_without_kernel,
    stop_daemon, tempdir,
};

/// `robustifier backend VERB NAME --socket S`: its stdout, or its stderr as the error.
fn backend(socket: &Path, verb: &str, name: &str) -> Result<String, String> {
    let out = robustifier(&["backend", verb, name, "--socket", socket.to_str().unwrap()]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `n` sessions open at once, each up to DATA's 354 (so each holds its back-end), then
/// each message finished. Because a held session counts in its back-end's score, the
/// second of two undrained back-ends is chosen while the first is busy.
async fn concurrent_messages(addr: SocketAddr, n: usize) {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = Client::connect(addr).await;
        c.smtp_until_data(&format!("u{i}@example.test")).await;
        clients.push(c);
    }
    for mut c in clients {
        c.send("Subject: test\r\n\r\nbody\r\n.").await;
        let reply = c.reply().await;
        assert!(reply.starts_with("250"), "{reply}");
        assert!(c.ask("QUIT").await.starts_with("221"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_takes_no_new_session_until_undrained() {
    let first = SmtpBackend::start().await;
    let second = SmtpBackend::start().await;
    let dir = tempdir("drain");
    let socket = dir.join("control").join("control.sock");
    let port = free_port();
    let file = dir.join("robustifier.toml");
    std::fs::write(
        &file,
        config(&format!(
            "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {port}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
             backend = [{{ name = \"first\", address = \"{}\" }}, {{ name = \"second\", address = \"{}\" }}]\n\
             [ha]\ncontrol_socket = \"{}\"\n",
            first.addr,
            second.addr,
            socket.display()
        )),
    )
    .unwrap();
    let (daemon, _log) = run_without_kernel(&file);
    let daemon = Daemon::new(daemon);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let counts = || (first.messages().len(), second.messages().len());

    // Both serve: two sessions at once go one to each.
    concurrent_messages(addr, 2).await;
    assert_eq!(counts(), (1, 1), "both back-ends serve before the drain");
    assert_eq!(ha_status(&socket)["drained"], serde_json::json!([]));

    // An unknown name is refused and changes nothing.
    let refused = backend(&socket, "drain", "nobody").unwrap_err();
    assert!(refused.contains("no back-end \"nobody\""), "{refused}");

    let said = backend(&socket, "drain", "first").unwrap();
    let reply: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"backend": "first", "draining": true})
    );
    assert_eq!(ha_status(&socket)["drained"], serde_json::json!(["first"]));
    // A reload of the same file keeps the drain.
    let out = robustifier(&[
        "reload",
        "--socket",
        socket.to_str().unwrap(),
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Drained: even four sessions at once all go to the other.
    concurrent_messages(addr, 4).await;
    assert_eq!(counts(), (1, 5), "no new session on the drained back-end");
    assert_eq!(ha_status(&socket)["drained"], serde_json::json!(["first"]));

    let said = backend(&socket, "undrain", "first").unwrap();
    let reply: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"backend": "first", "draining": false})
    );
    assert_eq!(ha_status(&socket)["drained"], serde_json::json!([]));
    concurrent_messages(addr, 2).await;
    assert_eq!(counts(), (2, 6), "the undrained back-end is used again");

    stop_daemon(daemon).await;
    let _ = std::fs::remove_dir_all(dir);
}
