//! Dedicated queues for troublesome domains, without root: a front-end in this process on
//! loopback with scripted back-ends sends recipients of a `[[domain_queue]]`'s domains to
//! its pool, splits a transaction that mixes them with others (`452`), records why, lists
//! the queues in its status, and follows a reload that adds or removes the block.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use robustifier::{events::Kind, frontend::Command};
use support::{
    Client, Daemon, Running, SmtpBackend, config, free_port, ha_status, robustifier,
    run_without_kernel, stop_daemon, tempdir,
};
use tokio::sync::oneshot;

fn pool(name: &str, backend: &SmtpBackend) -> String {
    format!(
        "[[pool]]\nname = \"{name}\"\nidentity = \"none\"\nbackend = [{{ name = \"{name}0\", address = \"{}\" }}]\n",
        backend.addr
    )
}

/// One relay service on pool "mx", the pool "slowq", and `blocks`.
fn relay(mx: &SmtpBackend, slowq: &SmtpBackend, blocks: &str) -> String {
    config(&format!(
        "[[service]]\nname = \"relay\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n{}{}{blocks}",
        pool("mx", mx),
        pool("slowq", slowq)
    ))
}

const SLOW: &str =
    "[[domain_queue]]\ndomains = [\"slow.example\", \".slow.example\"]\npool = \"slowq\"\n";

/// Each relayed message's first recipient, pool and routing reason, oldest first.
async fn relayed(fe: &Running) -> Vec<(String, String, String)> {
    let (done, events) = oneshot::channel();
    fe.commands
        .send(Command::Events { since: 0, done })
        .await
        .unwrap();
    events
        .await
        .unwrap()
        .events
        .into_iter()
        .filter_map(|e| match e.kind {
            Kind::MessageRelayed(r) => Some((r.rcpts[0].clone(), r.pool, r.route_reason)),
            _ => None,
        })
        .collect()
}

async fn status(fe: &Running) -> serde_json::Value {
    let (done, report) = oneshot::channel();
    fe.commands.send(Command::Status { done }).await.unwrap();
    serde_json::to_value(report.await.unwrap()).unwrap()
}

/// Whether the body `marker` reached `backend`.
fn got(backend: &SmtpBackend, marker: &str) -> bool {
    backend.messages().iter().any(|m| m.contains(marker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_domain_goes_to_its_pool_and_others_to_the_service_pool() {
    let (mx, slowq) = (SmtpBackend::start().await, SmtpBackend::start().await);
    let fe = Running::start(&tempdir("dq-route"), &relay(&mx, &slowq, SLOW));
    let addr = fe.addr("relay");
    for (to, marker) in [
        ("a@slow.example", "to-slow"),
        ("c@MX.Slow.Example", "to-sub"),
        ("b@fast.example", "to-fast"),
        ("d@notslow.example", "to-notslow"),
    ] {
        let mut c = Client::connect(addr).await;
        let reply = c.send_message(to, marker).await;
        assert!(reply.starts_with("250"), "{to}: {reply}");
    }
    assert!(got(&slowq, "to-slow") && got(&slowq, "to-sub"));
    assert!(got(&mx, "to-fast") && got(&mx, "to-notslow"));
    assert_eq!((mx.messages().len(), slowq.messages().len()), (2, 2));

    let records = relayed(&fe).await;
    assert_eq!(records.len(), 4, "{records:?}");
    for (rcpt, pool, reason) in &records {
        let rcpt = rcpt.to_lowercase();
        let dedicated = rcpt.contains("slow.example") && !rcpt.contains("notslow");
        assert_eq!(pool, if dedicated { "slowq" } else { "mx" }, "{rcpt}");
        assert_eq!(
            reason.starts_with("domain_queue"),
            dedicated,
            "{rcpt}: {reason}"
        );
    }
    assert!(records[0].2.starts_with("domain_queue slow.example,"));
    assert!(records[1].2.starts_with("domain_queue .slow.example,"));
    assert!(records[2].2.starts_with("the service's pool,"));

    let report = status(&fe).await;
    assert_eq!(
        report["domain_queues"],
        serde_json::json!([{ "domains": ["slow.example", ".slow.example"], "pool": "slowq" }])
    );
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_mixing_domains_is_split_and_the_retry_lands_right() {
    let (mx, slowq) = (SmtpBackend::start().await, SmtpBackend::start().await);
    let fe = Running::start(&tempdir("dq-split"), &relay(&mx, &slowq, SLOW));
    let mut c = Client::connect(fe.addr("relay")).await;
    assert!(c.reply().await.starts_with("220"));
    assert!(c.ask("EHLO client.test").await.starts_with("250"));
    assert!(c.ask("MAIL FROM:<s@client.test>").await.starts_with("250"));
    assert!(c.ask("RCPT TO:<a@slow.example>").await.starts_with("250"));
    let second = c.ask("RCPT TO:<b@fast.example>").await;
    assert!(second.starts_with("452 4.5.3"), "{second}");
    // Another dedicated recipient joins the first.
    assert!(c.ask("RCPT TO:<e@x.slow.example>").await.starts_with("250"));
    assert!(c.ask("DATA").await.starts_with("354"));
    c.send("Subject: t\r\n\r\nfirst transaction\r\n.").await;
    assert!(c.reply().await.starts_with("250"));
    // The client's retry of the refused recipient, in a new transaction.
    assert!(c.ask("MAIL FROM:<s@client.test>").await.starts_with("250"));
    assert!(c.ask("RCPT TO:<b@fast.example>").await.starts_with("250"));
    assert!(c.ask("DATA").await.starts_with("354"));
    c.send("Subject: t\r\n\r\nretried\r\n.").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.ask("QUIT").await.starts_with("221"));

    assert_eq!(slowq.messages().len(), 1);
    assert!(got(&slowq, "first transaction"));
    assert_eq!(mx.messages().len(), 1);
    assert!(got(&mx, "retried"));
    // The slow pool's back-end saw both dedicated recipients and never the other one.
    let commands = slowq.seen.lock().unwrap().commands.clone();
    let rcpts: Vec<&String> = commands.iter().filter(|c| c.starts_with("RCPT")).collect();
    assert_eq!(
        rcpts,
        ["RCPT TO:<a@slow.example>", "RCPT TO:<e@x.slow.example>"]
    );
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_and_removing_the_block_moves_new_mail_and_keeps_sessions() {
    let (mx, slowq) = (SmtpBackend::start().await, SmtpBackend::start().await);
    let fe = Running::start(&tempdir("dq-reload"), &relay(&mx, &slowq, ""));
    let addr = fe.addr("relay");
    assert_eq!(status(&fe).await["domain_queues"], serde_json::json!([]));

    // A session open across the reload, its recipient accepted for the old route.
    let mut open = Client::connect(addr).await;
    open.smtp_until_data("a@slow.example").await;
    let added = fe.reload(&relay(&mx, &slowq, SLOW)).await.unwrap();
    assert!(
        added.summary.contains("domain_queue slow.example added"),
        "{}",
        added.summary
    );
    assert!(added.restart_needed.is_empty(), "{added:?}");
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("a@slow.example", "after-add")
            .await
            .starts_with("250")
    );
    open.send("Subject: t\r\n\r\nopened-before\r\n.").await;
    assert!(open.reply().await.starts_with("250"));
    assert!(got(&mx, "opened-before"), "the open session kept its route");
    assert!(got(&slowq, "after-add"));
    assert_eq!(
        status(&fe).await["domain_queues"][0]["pool"],
        serde_json::json!("slowq")
    );

    // Removed again: the open session goes on, new mail for the domain goes to "mx".
    let mut open = Client::connect(addr).await;
    open.smtp_until_data("b@slow.example").await;
    let removed = fe.reload(&relay(&mx, &slowq, "")).await.unwrap();
    assert!(
        removed
            .summary
            .contains("domain_queue slow.example removed"),
        "{}",
        removed.summary
    );
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("a@slow.example", "after-remove")
            .await
            .starts_with("250")
    );
    open.send("Subject: t\r\n\r\nopened-while-dedicated\r\n.")
        .await;
    assert!(open.reply().await.starts_with("250"));
    assert!(got(&slowq, "opened-while-dedicated"));
    assert!(got(&mx, "after-remove"));
    assert_eq!((mx.messages().len(), slowq.messages().len()), (2, 2));
    assert_eq!(status(&fe).await["domain_queues"], serde_json::json!([]));
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_status_lists_the_dedicated_queues_in_json_and_text() {
    let (mx, slowq) = (SmtpBackend::start().await, SmtpBackend::start().await);
    let dir = tempdir("dq-status");
    let socket = dir.join("control").join("control.sock");
    let file = dir.join("robustifier.toml");
    let text = relay(&mx, &slowq, SLOW).replace(
        "port = 25\n",
        &format!("port = {}\nvips = [\"127.0.0.1\"]\n", free_port()),
    );
    std::fs::write(
        &file,
        format!("{text}[ha]\ncontrol_socket = \"{}\"\n", socket.display()),
    )
    .unwrap();
    let (daemon, _log) = run_without_kernel(&file);
    let daemon = Daemon::new(daemon);
    assert_eq!(
        ha_status(&socket)["domain_queues"],
        serde_json::json!([{ "domains": ["slow.example", ".slow.example"], "pool": "slowq" }])
    );
    let out = robustifier(&["ha", "status", "--socket", socket.to_str().unwrap()]);
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("dedicated queue: slow.example, .slow.example -> pool slowq"),
        "{shown}"
    );
    stop_daemon(daemon).await;
}
