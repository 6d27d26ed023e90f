//! Statistics per minute, without root: sessions through `robustifier run
//! --without-kernel` (its roll-up every 200 ms, `stats_period_ms`, so that minutes pass
//! quickly) show up with their exact counts in `robustifier stats`, in `/metrics` (which
//! promtool accepts), and, shipped by `robustifier member`, at `robustifier manager` in
//! `robustifier cluster stats`.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use robustifier::stats::Minute;
use support::{
    Client, Daemon, PATIENCE, SmtpBackend,
    cluster::{BIN, Cluster, text},
    config, free_port, get, pop3_backend, promtool_accepts, run_without_kernel, stop_daemon,
    tempdir,
};

fn minutes(o: &Output) -> Vec<Minute> {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The front-end's minutes, from `robustifier stats --json`.
fn frontend_minutes(socket: &Path) -> Vec<Minute> {
    minutes(
        &Command::new(BIN)
            .args(["stats", "--json", "--socket"])
            .arg(socket)
            .output()
            .unwrap(),
    )
}

/// (sessions, messages, recipients) of `service` summed over `minutes`.
fn service_sums(minutes: &[Minute], service: &str) -> (u64, u64, u64) {
    minutes
        .iter()
        .filter_map(|m| m.services.get(service))
        .fold((0, 0, 0), |(s, m, r), t| {
            (s + t.sessions, m + t.messages, r + t.recipients)
        })
}

/// (messages, recipients) of back-end `name` summed over `minutes`.
fn backend_sums(minutes: &[Minute], name: &str) -> (u64, u64) {
    minutes
        .iter()
        .filter_map(|m| m.backends.get(name))
        .fold((0, 0), |(m, r), t| (m + t.messages, r + t.recipients))
}

/// Polls `what` every 100 ms until `ok` holds; fails after [`PATIENCE`].
async fn until<T: std::fmt::Debug>(what: &str, get: impl Fn() -> T, ok: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let v = get();
        if ok(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; last {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `robustifier cluster stats ARGS --json` as operator alice.
fn cluster_stats(c: &Cluster, args: &[&str]) -> Output {
    let mut all = vec!["stats", "--json"];
    all.extend_from_slice(args);
    c.cli(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_show_up_in_the_frontends_minutes_and_at_the_manager() {
    let dir = tempdir("stats");
    let socket = dir.join("control").join("control.sock");
    let backend = SmtpBackend::start().await;
    let (store, _) = pop3_backend().await;
    let (port, pop3_port, metrics_port) = (free_port(), free_port(), free_port());
    let file = dir.join("robustifier.toml");
    std::fs::write(
        &file,
        config(&format!(
            "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {port}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
             backend = [{{ name = \"mx1\", address = \"{}\" }}]\n\
             [[service]]\nname = \"pop3\"\nprotocol = \"pop3\"\nport = {pop3_port}\nvips = [\"127.0.0.1\"]\npool = \"store\"\n\
             [[pool]]\nname = \"store\"\nidentity = \"none\"\n\
             backend = [{{ name = \"s0\", address = \"{store}\" }}]\n\
             [ha]\ncontrol_socket = \"{}\"\n\
             [monitor]\nstats_log = \"{}\"\nstats_period_ms = 200\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\nmetrics_insecure_no_auth = true\n",
            backend.addr,
            socket.display(),
            dir.join("stats").display(),
        )),
    )
    .unwrap();
    let (daemon, _log) = run_without_kernel(&file);
    let daemon = Daemon::new(daemon);
    // The cluster's certificates (member fe1, operator alice) and its manager.
    let mut cluster = Cluster::init(dir.join("cluster"), &["fe1"], &[], None)
        .with_manager_args(&["--stats-days", "2"])
        .started();
    cluster.start_member_on("fe1", &socket, &[]);

    // Two sessions: two messages of one recipient each, then one of two recipients.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut a = Client::connect(addr).await;
    assert!(
        a.send_message("one@a.test", "first")
            .await
            .starts_with("250")
    );
    assert!(
        a.send_message_after_greeting("two@a.test")
            .await
            .starts_with("250")
    );
    assert!(a.ask("QUIT").await.starts_with("221"));
    let mut b = Client::connect(addr).await;
    assert!(b.reply().await.starts_with("220"));
    assert!(b.ask("EHLO client.test").await.starts_with("250"));
    assert!(b.ask("MAIL FROM:<s@client.test>").await.starts_with("250"));
    assert!(b.ask("RCPT TO:<x@b.test>").await.starts_with("250"));
    assert!(b.ask("RCPT TO:<y@b.test>").await.starts_with("250"));
    assert!(b.ask("DATA").await.starts_with("354"));
    b.send("Subject: two\r\n\r\nbody\r\n.").await;
    assert!(b.reply().await.starts_with("250"));
    assert!(b.ask("QUIT").await.starts_with("221"));
    assert_eq!(backend.messages().len(), 3);
    // And a POP3 session, relayed after its login.
    let mut p = Client::connect(format!("127.0.0.1:{pop3_port}").parse().unwrap()).await;
    assert!(p.line().await.starts_with("+OK"));
    p.send("USER carol").await;
    assert!(p.line().await.starts_with("+OK"));
    p.send("PASS secret").await;
    assert!(p.line().await.starts_with("+OK"));
    p.send("STAT").await;
    assert_eq!(p.line().await, "+OK 1 42");
    p.send("QUIT").await;
    assert!(p.line().await.starts_with("+OK"));
    assert_eq!(p.line().await, "", "closed after QUIT");

    // Once every message is in a minute, two more minutes pass: nothing is counted twice.
    let seen = until(
        "the messages in the front-end's minutes",
        || frontend_minutes(&socket),
        |m| service_sums(m, "smtp").1 >= 3,
    )
    .await;
    let last = seen.last().unwrap().minute;
    let all = until(
        "two more minutes",
        || frontend_minutes(&socket),
        |m| m.last().is_some_and(|m| m.minute >= last + 2),
    )
    .await;
    assert_eq!(service_sums(&all, "smtp"), (2, 3, 4), "{all:?}");
    assert_eq!(backend_sums(&all, "mx1"), (3, 4));
    let pool: u64 = all
        .iter()
        .filter_map(|m| m.pools.get("mx"))
        .map(|t| t.recipients)
        .sum();
    assert_eq!(pool, 4);
    assert!(all.iter().all(|m| m.member == "fe-test"));
    let bytes: u64 = all
        .iter()
        .filter_map(|m| m.services.get("smtp"))
        .map(|t| t.bytes_to_backend)
        .sum();
    assert!(bytes > 0, "message octets went to the back-end");
    let pop3 = until(
        "the POP3 session in the minutes",
        || frontend_minutes(&socket),
        |m| m.iter().any(|m| m.services.contains_key("pop3")),
    )
    .await;
    let pop3: Vec<_> = pop3.iter().filter_map(|m| m.services.get("pop3")).collect();
    assert_eq!(pop3.iter().map(|t| t.sessions).sum::<u64>(), 1);
    // At least what was relayed after the login: STAT and QUIT, and their answers.
    let to_backend: u64 = pop3.iter().map(|t| t.bytes_to_backend).sum();
    let to_client: u64 = pop3.iter().map(|t| t.bytes_to_client).sum();
    assert!(to_backend >= 12 && to_client >= 19, "{pop3:?}");
    // `--since` gives only the later minutes; the table names the keys.
    let later = minutes(
        &Command::new(BIN)
            .args(["stats", "--json", "--since", &last.to_string(), "--socket"])
            .arg(&socket)
            .output()
            .unwrap(),
    );
    assert!(later.iter().all(|m| m.minute > last) && !later.is_empty());
    let table = Command::new(BIN)
        .args(["stats", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(text(&table).contains("backend  mx1"), "{}", text(&table));
    // The log has the same minutes, one per line.
    let logged = std::fs::read_to_string(dir.join("stats").join("stats.jsonl")).unwrap();
    let logged: Vec<Minute> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(service_sums(&logged, "smtp"), (2, 3, 4));

    // /metrics: the totals, in a form promtool accepts.
    let (code, metrics) = get(metrics_port, "/metrics", None);
    assert_eq!(code, 200, "{metrics}");
    for line in [
        "robustifier_sessions_total{scope=\"service\",name=\"smtp\"} 2",
        "robustifier_messages_total{scope=\"backend\",name=\"mx1\"} 3",
        "robustifier_recipients_total{scope=\"pool\",name=\"mx\"} 4",
        "robustifier_backend_greeting_seconds_count{scope=\"backend\",name=\"mx1\"} 2",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    promtool_accepts(&metrics);

    // At the manager, under the member's name, the same counts.
    let at_manager = until(
        "the minutes at the manager",
        || minutes(&cluster_stats(&cluster, &["--member", "fe1"])),
        |m| m.last().is_some_and(|m| m.minute >= last + 2),
    )
    .await;
    assert_eq!(service_sums(&at_manager, "smtp"), (2, 3, 4));
    assert!(at_manager.iter().all(|m| m.member == "fe1"));
    assert!(minutes(&cluster_stats(&cluster, &["--member", "fe2"])).is_empty());
    stop_daemon(daemon).await;
}
