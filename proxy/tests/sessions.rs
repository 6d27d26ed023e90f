//! Sessions and accept limits of a whole front-end, without root: the front-end runs on
//! plain loopback sockets (no kernel side) in this process, the back-ends are scripted.

mod support;

use support::{Client, Running, SmtpBackend, config, pop3_backend, tempdir};

fn smtp_service(extra: &str, backends: &[&SmtpBackend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ name = \"mx{i}\", address = \"{}\" }}", b.addr))
        .collect();
    format!(
        "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n{extra}\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\nbackend = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_acknowledged_only_after_the_backend_took_it() {
    let backend = SmtpBackend::holding().await;
    let fe = Running::start(&tempdir("ack"), &config(&smtp_service("", &[&backend])));
    let mut c = Client::connect(fe.addr("smtp")).await;
    c.smtp_until_data("alice@example.test").await;
    c.send("Subject: one\r\n\r\nhello\r\n.").await;
    // The back-end holds its reply: the client has nothing yet.
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), c.line()).await;
    assert!(early.is_err(), "a reply before the back-end's: {early:?}");
    assert!(backend.messages().is_empty());
    backend.hold.as_ref().unwrap().add_permits(1);
    let reply = c.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    let messages = backend.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].contains("hello"), "{messages:?}");
    assert!(c.ask("QUIT").await.starts_with("221"));
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pop3_login_reaches_the_store() {
    let (store, users) = pop3_backend().await;
    let text = config(&format!(
        "[[service]]\nname = \"pop3\"\nprotocol = \"pop3\"\nport = 110\npool = \"store\"\n\
         [[pool]]\nname = \"store\"\nidentity = \"none\"\nbackend = [{{ name = \"s0\", address = \"{store}\" }}]\n"
    ));
    let fe = Running::start(&tempdir("pop3"), &text);
    let mut c = Client::connect(fe.addr("pop3")).await;
    assert!(c.line().await.starts_with("+OK"));
    c.send("USER carol").await;
    assert!(c.line().await.starts_with("+OK"));
    c.send("PASS secret").await;
    let login = c.line().await;
    assert!(login.starts_with("+OK"), "{login}");
    c.send("STAT").await;
    assert_eq!(c.line().await, "+OK 1 42");
    c.send("QUIT").await;
    assert!(c.line().await.starts_with("+OK"));
    // The store closed: so does the front-end, without waiting for the client.
    assert_eq!(c.line().await, "", "closed after QUIT");
    assert_eq!(*users.lock().unwrap(), vec!["carol".to_owned()]);
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_clients_are_refused_unless_configured() {
    let backend = SmtpBackend::start().await;
    // The default: no `serve_loopback_clients`.
    let text = format!(
        "[frontend]\nname = \"fe-test\"\n{}",
        smtp_service("", &[&backend])
    );
    let fe = Running::start(&tempdir("loopback"), &text);
    let mut c = Client::connect(fe.addr("smtp")).await;
    let greeting = c.line().await;
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    assert_eq!(c.line().await, "", "closed after the refusal");
    assert!(!backend.had_sessions());
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_service_limit_are_shed_and_served_again_once_one_ends() {
    let backend = SmtpBackend::start().await;
    let text = config(&smtp_service("max_connections = 2", &[&backend]));
    let fe = Running::start(&tempdir("limit"), &text);
    let addr = fe.addr("smtp");
    let mut first = Client::connect(addr).await;
    let mut second = Client::connect(addr).await;
    assert!(first.line().await.starts_with("220"));
    assert!(second.line().await.starts_with("220"));
    let mut third = Client::connect(addr).await;
    let shed = third.line().await;
    assert!(shed.starts_with("421 4.3.2"), "{shed}");
    assert!(first.ask("QUIT").await.starts_with("221"));
    assert_eq!(first.line().await, "");
    // The freed permit goes back when the session's task ends: a new client gets in.
    let mut served = None;
    for _ in 0..50 {
        let mut c = Client::connect(addr).await;
        let l = c.line().await;
        if l.starts_with("220") {
            served = Some(c);
            break;
        }
        assert!(l.starts_with("421 4.3.2"), "{l}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut fourth = served.expect("a session once one of the two ended");
    let reply = fourth.send_message_after_greeting("bob@example.test").await;
    assert!(reply.starts_with("250"), "{reply}");
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_more_than_its_share_of_sessions() {
    let backend = SmtpBackend::start().await;
    let text = config(&smtp_service("max_per_client = 1", &[&backend]));
    let fe = Running::start(&tempdir("per-client"), &text);
    let addr = fe.addr("smtp");
    let mut first = Client::connect(addr).await;
    assert!(first.line().await.starts_with("220"));
    let mut second = Client::connect(addr).await;
    let shed = second.line().await;
    assert!(shed.starts_with("421 4.3.2"), "{shed}");
    assert!(
        first.ask("NOOP").await.starts_with("250"),
        "the first is unharmed"
    );
    fe.stop().await;
}
