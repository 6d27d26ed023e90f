//! `robustifier cluster trace` without root: a front-end (`run --without-kernel`) relays a
//! message to a scripted back-end that answers `250 2.0.0 Ok: queued as ABC123`; its member
//! ships the front-end's events to the manager, and the back-end's agent ships the lines of
//! a Postfix-format log file this test writes. The trace by queue id and by Message-ID
//! shows the session and the MTA's lines, and an agent restart ships no line twice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{io::Write as _, path::Path};

use support::{
    Client, Daemon,
    cluster::{Cluster, text, wait_for},
    config, free_port, run_without_kernel, tempdir,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
};

const MESSAGE_ID: &str = "<trace-1.42@client.test>";

/// An SMTP back-end that takes everything and names queue id ABC123 for every message.
async fn queueing_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 mx1.test ESMTP\r\n").await;
                let mut in_data = false;
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let upper = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            b"250 2.0.0 Ok: queued as ABC123\r\n"
                        } else {
                            b""
                        }
                    } else if upper.starts_with("EHLO") {
                        b"250-mx1.test\r\n250 8BITMIME\r\n"
                    } else if upper == "DATA" {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if upper == "QUIT" {
                        let _ = w.write_all(b"221 2.0.0 bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

/// `cluster trace ID --json`.
fn trace_of(c: &Cluster, id: &str) -> serde_json::Value {
    let out = c.cli(&["trace", id, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The agent of back-end mx1, shipping the lines of `maillog`.
fn start_agent(c: &Cluster, maillog: &Path) -> Daemon {
    Daemon::spawn(
        std::process::Command::new(support::cluster::BIN)
            .arg("agent")
            .args(["--listen", "127.0.0.1:0", "--insecure-no-key"])
            .args(["--mta", "postfix", "--spool"])
            .arg(&c.dir)
            .arg("--maillog")
            .arg(maillog)
            .args(["--manager", &format!("127.0.0.1:{}", c.port)])
            .arg("--ca")
            .arg(c.pki("ca.pem"))
            .arg("--cert")
            .arg(c.pki("agents/mx1.pem"))
            .arg("--key")
            .arg(c.pki("agents/mx1.key")),
    )
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The MTA lines the trace of `id` shows for its first message.
fn mta_lines(trace: &serde_json::Value) -> Vec<String> {
    trace["messages"][0]["mta"]
        .as_array()
        .map(|a| a.iter().map(|l| l.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_traced_by_queue_id_and_message_id_with_its_mta_lines_once() {
    let mut s = Cluster::init(tempdir("trace"), &["fe1"], &["mx1"], None).started();
    let dir = s.dir.clone();

    let mx = queueing_backend().await;
    let port = free_port();
    // In a folder of its own: the front-end, its privileges dropped, makes it its user's.
    let socket = dir.join("control").join("fe1.sock");
    let file = dir.join("robustifier.toml");
    std::fs::write(
        &file,
        config(&format!(
            "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {port}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
             backend = [{{ name = \"mx1\", address = \"{mx}\" }}]\n\
             [ha]\ncontrol_socket = \"{}\"\n",
            socket.display()
        )),
    )
    .unwrap();
    let (frontend, _log) = run_without_kernel(&file);
    let _frontend = Daemon::new(frontend);
    s.start_member_on("fe1", &socket, &[]);

    // One message through the front-end.
    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    c.smtp_until_data("rcpt@example.org").await;
    c.send(&format!(
        "Subject: trace\r\nMessage-ID:\r\n {MESSAGE_ID}\r\n\r\nbody\r\n."
    ))
    .await;
    let end = c.reply().await;
    assert!(end.starts_with("250"), "{end}");
    assert!(c.ask("QUIT").await.starts_with("221"));

    // The back-end's log, as Postfix writes it, with lines of other messages and none.
    let maillog = dir.join("maillog");
    append(
        &maillog,
        "2026-11-30T08:00:00.000001+00:00 mx1 postfix/smtpd[100]: connect from fe1[127.0.0.1]\n\
         2026-11-30T08:00:00.000002+00:00 mx1 postfix/smtpd[100]: ABC123: client=fe1[127.0.0.1]\n\
         2026-11-30T08:00:00.000003+00:00 mx1 postfix/cleanup[101]: ABC123: message-id=<trace-1.42@client.test>\n\
         2026-11-30T08:00:00.000004+00:00 mx1 postfix/smtpd[100]: DEF456: client=other[127.0.0.1]\n\
         2026-11-30T08:00:00.000005+00:00 mx1 postfix/qmgr[102]: ABC123: from=<sender@client.test>, size=300, nrcpt=1 (queue active)\n",
    );
    let agent = start_agent(&s, &maillog);
    append(
        &maillog,
        "2026-11-30T08:00:01.000000+00:00 mx1 postfix/local[103]: ABC123: to=<rcpt@example.org>, relay=local, delay=0.1, dsn=2.0.0, status=sent (delivered to mailbox)\n",
    );

    let trace = wait_for("the trace by queue id has the delivery line", || {
        let t = trace_of(&s, "ABC123");
        mta_lines(&t)
            .iter()
            .any(|l| l.contains("status=sent"))
            .then_some(t)
    })
    .await;
    let m = &trace["messages"][0];
    let record = &m["record"];
    assert_eq!(m["member"], "fe1");
    assert_eq!(record["backend"], "mx1");
    assert_eq!(record["pool"], "mx");
    assert_eq!(record["queue_id"], "ABC123");
    assert_eq!(record["message_id"], MESSAGE_ID);
    assert_eq!(record["mail_from"], "sender@client.test");
    assert_eq!(record["rcpts"][0], "rcpt@example.org");
    assert!(
        record["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{record}"
    );
    assert!(
        record["route_reason"]
            .as_str()
            .unwrap()
            .contains("the service's pool"),
        "{record}"
    );
    let session = record["session"].as_str().unwrap().to_owned();
    assert!(!session.is_empty());
    let lines = mta_lines(&trace);
    assert_eq!(lines.len(), 4, "only ABC123's lines: {lines:?}");
    assert!(lines.iter().all(|l| l.contains("ABC123")), "{lines:?}");

    // The same by Message-ID, with or without its brackets, and by session.
    for id in [
        MESSAGE_ID,
        MESSAGE_ID.trim_matches(|c| c == '<' || c == '>'),
        &session,
    ] {
        let t = trace_of(&s, id);
        assert_eq!(
            t["messages"][0]["record"]["queue_id"], "ABC123",
            "{id}: {t}"
        );
        assert_eq!(mta_lines(&t), lines, "{id}");
    }
    // As an operator reads it.
    let out = s.cli(&["trace", "ABC123"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for what in [
        session.as_str(),
        "front-end fe1",
        "back-end mx1",
        "queue id ABC123",
        "status=sent",
    ] {
        assert!(shown.contains(what), "{what} missing in:\n{shown}");
    }
    // The merged log filtered on the session has its record and nothing else.
    let out = s.cli(&["logs", "--session", &session, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["event"]["kind"], "message_relayed");

    // The agent restarts: what it shipped is not shipped again, what came meanwhile is.
    drop(agent);
    append(
        &maillog,
        "2026-11-30T08:00:02.000000+00:00 mx1 postfix/qmgr[102]: ABC123: removed\n",
    );
    let _agent = start_agent(&s, &maillog);
    let lines = wait_for("the line written while the agent was away", || {
        let l = mta_lines(&trace_of(&s, "ABC123"));
        l.iter()
            .any(|l| l.ends_with("ABC123: removed"))
            .then_some(l)
    })
    .await;
    // The agent ships in file order: lines shipped twice would have been stored before
    // the new one, so they would show now.
    assert_eq!(lines.len(), 5, "each line once: {lines:?}");
    let mut unique = lines.clone();
    unique.dedup();
    assert_eq!(unique, lines);
}
