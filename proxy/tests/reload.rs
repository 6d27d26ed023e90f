//! Reloads applied live, without root: a front-end in this process on plain loopback
//! sockets takes each kind of change while it serves, and a reload that cannot be applied
//! changes nothing.

mod support;

use support::{Client, Running, SmtpBackend, config, tempdir};

fn pool(name: &str, settings: &str, backends: &[(&str, &SmtpBackend)]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(n, b)| format!("{{ name = \"{n}\", address = \"{}\" }}", b.addr))
        .collect();
    format!(
        "[[pool]]\nname = \"{name}\"\nidentity = \"none\"\nbackend = [{}]\n{settings}\n",
        list.join(", ")
    )
}

fn service(name: &str, port: u16, pool: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nprotocol = \"smtp\"\nport = {port}\npool = \"{pool}\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_added_by_a_reload_answers_and_a_removed_one_stops_accepting() {
    let mx = SmtpBackend::start().await;
    let dir = tempdir("services");
    let first = config(&format!(
        "{}{}",
        service("smtp", 25, "mx", ""),
        pool("mx", "", &[("mx0", &mx)])
    ));
    // The socket the added service will listen on, bound now so its port is known.
    let submission = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let submission_addr = submission.local_addr().unwrap();
    let fe = Running::start_with(&dir, &first, vec![("submission", submission)]);
    let smtp_addr = fe.addr("smtp");
    let both = config(&format!(
        "{}{}{}",
        service("smtp", 25, "mx", ""),
        service("submission", 587, "mx", ""),
        pool("mx", "", &[("mx0", &mx)])
    ));
    let done = fe.reload(&both).await.unwrap();
    assert!(done.summary.contains("submission"), "{}", done.summary);
    let mut c = Client::connect(submission_addr).await;
    assert!(
        c.send_message("a@example.test", "via 587")
            .await
            .starts_with("250")
    );
    // "smtp" goes: its listener closes, the other service keeps serving.
    let only = config(&format!(
        "{}{}",
        service("submission", 587, "mx", ""),
        pool("mx", "", &[("mx0", &mx)])
    ));
    fe.reload(&only).await.unwrap();
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(smtp_addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(closed, "the removed service's listener closes");
    let mut c = Client::connect(submission_addr).await;
    assert!(
        c.send_message("b@example.test", "still")
            .await
            .starts_with("250")
    );
    assert_eq!(mx.messages().len(), 2);
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pool_takes_new_sessions_while_a_session_open_across_the_reload_finishes() {
    let old = SmtpBackend::start().await;
    let new = SmtpBackend::start().await;
    let fe = Running::start(
        &tempdir("pools"),
        &config(&format!(
            "{}{}",
            service("smtp", 25, "a", ""),
            pool("a", "", &[("old", &old)])
        )),
    );
    let addr = fe.addr("smtp");
    let mut open = Client::connect(addr).await;
    open.smtp_until_data("x@example.test").await;
    // The service now routes to pool "b", which did not exist.
    fe.reload(&config(&format!(
        "{}{}{}",
        service("smtp", 25, "b", ""),
        pool("a", "", &[("old", &old)]),
        pool("b", "", &[("new", &new)])
    )))
    .await
    .unwrap();
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("y@example.test", "new pool")
            .await
            .starts_with("250")
    );
    open.send("Subject: across\r\n\r\nopened before\r\n.").await;
    assert!(open.reply().await.starts_with("250"));
    assert_eq!((old.messages().len(), new.messages().len()), (1, 1));
    assert!(old.messages()[0].contains("opened before"));
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_session_threshold_and_identity_are_in_force_for_the_next_session() {
    let mx = SmtpBackend::start().await;
    let one = "[pool.thresholds]\nsessions = 1";
    let fe = Running::start(
        &tempdir("thresholds"),
        &config(&format!(
            "{}{}",
            service("smtp", 25, "mx", ""),
            pool("mx", one, &[("mx0", &mx)])
        )),
    );
    let addr = fe.addr("smtp");
    let mut holder = Client::connect(addr).await;
    holder.smtp_until_data("x@example.test").await;
    // The back-end's one session is taken: the next is deflected.
    let mut second = Client::connect(addr).await;
    assert!(second.reply().await.starts_with("220"));
    assert!(second.ask("EHLO c.test").await.starts_with("250"));
    assert!(second.ask("MAIL FROM:<s@c.test>").await.starts_with("250"));
    let refused = second.ask("RCPT TO:<y@example.test>").await;
    assert!(refused.starts_with('4'), "over the threshold: {refused}");
    assert!(second.ask("QUIT").await.starts_with("221"));
    // Four sessions (three for the default group), and XCLIENT to pass the client's identity.
    let four = pool("mx", "[pool.thresholds]\nsessions = 4", &[("mx0", &mx)])
        .replace("identity = \"none\"", "identity = \"xclient\"");
    fe.reload(&config(&format!(
        "{}{}",
        service("smtp", 25, "mx", ""),
        four
    )))
    .await
    .unwrap();
    let mut third = Client::connect(addr).await;
    let reply = third.send_message("z@example.test", "admitted").await;
    assert!(reply.starts_with("250"), "under the new threshold: {reply}");
    let xclient = mx
        .seen
        .lock()
        .unwrap()
        .commands
        .iter()
        .filter(|c| c.starts_with("XCLIENT"))
        .count();
    assert_eq!(
        xclient, 1,
        "only the session after the reload passed its identity"
    );
    holder.send("Subject: held\r\n\r\nheld\r\n.").await;
    assert!(holder.reply().await.starts_with("250"));
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_connection_limit_sheds_new_connections_at_once() {
    let mx = SmtpBackend::start().await;
    let fe = Running::start(
        &tempdir("limit"),
        &config(&format!(
            "{}{}",
            service("smtp", 25, "mx", "max_connections = 10"),
            pool("mx", "", &[("mx0", &mx)])
        )),
    );
    let addr = fe.addr("smtp");
    let mut first = Client::connect(addr).await;
    assert!(first.reply().await.starts_with("220"));
    fe.reload(&config(&format!(
        "{}{}",
        service("smtp", 25, "mx", "max_connections = 1"),
        pool("mx", "", &[("mx0", &mx)])
    )))
    .await
    .unwrap();
    let mut second = Client::connect(addr).await;
    let shed = second.line().await;
    assert!(shed.starts_with("421 4.3.2"), "{shed}");
    assert!(
        first.ask("NOOP").await.starts_with("250"),
        "the open session is kept"
    );
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_be_applied_changes_nothing() {
    let mx = SmtpBackend::start().await;
    let other = SmtpBackend::start().await;
    let dir = tempdir("refused");
    let text = config(&format!(
        "{}{}",
        service("smtp", 25, "mx", ""),
        pool("mx", "", &[("mx0", &mx)])
    ));
    let fe = Running::start(&dir, &text);
    let addr = fe.addr("smtp");
    let running = fe.reload(&text).await.unwrap();
    assert_eq!(running.summary, "no change");
    // A new service on a port that is taken, together with a back-end change: the port
    // cannot be bound, so neither change happens.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let bad = config(&format!(
        "{}{}{}",
        service("smtp", 25, "mx", ""),
        service("extra", port, "mx", "vips = [\"127.0.0.1\"]"),
        pool("mx", "", &[("other", &other)])
    ));
    let err = fe.reload(&bad).await.unwrap_err();
    assert!(err.contains("extra"), "{err}");
    let mut c = Client::connect(addr).await;
    assert!(
        c.send_message("a@example.test", "same as before")
            .await
            .starts_with("250")
    );
    assert_eq!((mx.messages().len(), other.messages().len()), (1, 0));
    // A file that does not validate: refused with the key, the version unchanged.
    let err = fe
        .reload(&text.replace("port = 25", "port = 0"))
        .await
        .unwrap_err();
    assert!(err.contains("port"), "{err}");
    let again = fe.reload(&text).await.unwrap();
    assert_eq!(again.version, running.version);
    fe.stop().await;
}

/// A back-end a reload removed takes no new session, so it is no longer probed (each probe
/// costs it an SMTP session); restored, it is probed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_is_not_probed_until_it_comes_back() {
    let (a, b) = (SmtpBackend::start().await, SmtpBackend::start().await);
    let dir = tempdir("probes");
    let health = "[pool.health]\ninterval_ms = 100\n";
    let text = |backends: &[(&str, &SmtpBackend)]| {
        config(&format!(
            "{}{}",
            service("smtp", 25, "mx", ""),
            pool("mx", health, backends)
        ))
    };
    let probes = |b: &SmtpBackend| {
        b.seen
            .lock()
            .unwrap()
            .commands
            .iter()
            .filter(|c| c.starts_with("EHLO robustifier-probe"))
            .count()
    };
    let fe = Running::start(&dir, &text(&[("a", &a), ("b", &b)]));
    until("b probed twice", || probes(&b) >= 2).await;
    fe.reload(&text(&[("a", &a)])).await.unwrap();
    // A probe already under way may finish; after it, none.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (b_then, a_then) = (probes(&b), probes(&a));
    until("five more rounds at a", || probes(&a) >= a_then + 5).await;
    assert_eq!(probes(&b), b_then, "the removed back-end was probed");
    fe.reload(&text(&[("a", &a), ("b", &b)])).await.unwrap();
    until("b probed again once restored", || probes(&b) > b_then).await;
    fe.stop().await;
}

/// Waits (bounded by the support's patience) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + support::PATIENCE;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
