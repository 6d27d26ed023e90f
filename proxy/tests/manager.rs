//! The cluster manager as an operator meets it, without root: `robustifier manager`,
//! `robustifier member` and `robustifier cluster` as processes of the built binary on
//! loopback, each member in front of a fake front-end (a control socket served by this
//! test, which records every request it gets and the file each `reload` names).
//!
//! Services are shared by every member's configuration, so real front-ends of one cluster
//! would all want the same ports; the fakes make that moot and let the test see exactly
//! what each member asked of its front-end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{
    path::Path,
    process::{Child, Output, Stdio},
    sync::Arc,
    time::Duration,
};

use support::{
    PATIENCE,
    cluster::{Answers, Cluster, init_pki, text, wait_until},
};

const METRICS_TOKEN: &str = "manager-metrics-token-0123";

/// The certificates, the manager running (with its `/metrics`, bearer token
/// [`METRICS_TOKEN`]), and `members` each with its fake front-end (not started).
fn cluster(tag: &str, members: &[&str]) -> Cluster {
    Cluster::init(
        support::tempdir(tag),
        members,
        &[],
        Some(Answers::default()),
    )
    .with_metrics(METRICS_TOKEN)
    .started()
}

#[test]
fn of_two_concurrent_commits_on_one_base_exactly_one_wins() {
    let c = cluster("race", &["fe1"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    let a = c.write("a.toml", &c.config(2, "", ""));
    let b = c.write("b.toml", &c.config(3, "", ""));
    let (alice, key) = (c.pki("operators/alice.pem"), c.pki("operators/alice.key"));
    // Both processes started before either is waited for.
    let children: Vec<Child> = [&a, &b]
        .iter()
        .map(|f| {
            c.cli_command(
                &["commit", f.to_str().unwrap(), "--base", "1"],
                &alice,
                &key,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|ch| ch.wait_with_output().unwrap())
        .collect();
    let won: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    let lost: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        outs.iter().map(text).collect::<Vec<_>>()
    );
    let why = text(lost[0]);
    assert!(
        why.contains("stale") || why.contains("head is version 2"),
        "{why}"
    );
    assert_eq!(c.head(), 2);
    assert_eq!(c.log().len(), 2, "the loser left no version");
}

#[test]
fn an_unconfirmed_commit_comes_back_and_a_confirmed_one_stays() {
    let mut c = cluster("confirm", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    c.commit_ok(&c.config(2, "", ""), 1, &["--confirm-secs", "2"]);
    wait_until("the manager reverts version 2", || c.log().len() >= 3);
    let log = c.log();
    assert_eq!(log[2]["number"], 3);
    assert_eq!(log[2]["author"], "manager (confirm timeout)", "{log:?}");
    assert_eq!(
        c.show(&["3"]),
        c.show(&["1"]),
        "version 3 is version 1 again"
    );
    assert_ne!(c.show(&["2"]), c.show(&["1"]));
    c.wait_applied(3);
    assert!(c.status()["pending"].is_null());

    c.commit_ok(&c.config(4, "", ""), 3, &["--confirm-secs", "2"]);
    assert!(
        !c.status()["pending"].is_null(),
        "version 4 awaits confirmation"
    );
    let out = c.cli(&["confirm"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("version 4 confirmed"), "{}", text(&out));
    // Well past the deadline the manager checks every second: nothing came back.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.log().len(), 4, "{:?}", c.log());
    assert!(c.status()["pending"].is_null());
    c.wait_applied(4);
}

#[test]
fn a_text_one_member_refuses_is_refused_naming_it() {
    let c = cluster("refuse", &["fe1", "fe2"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    let missing = c.dir.join("no-such-dir");
    let tls = format!(
        "tls = {{ certificate = \"{0}/cert.pem\", key = \"{0}/key.pem\" }}",
        missing.display()
    );
    let out = c.commit(&c.config(2, "fe2", &tls), 1, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("member fe2 refuses it"),
        "{}",
        text(&out)
    );
    assert_eq!(c.head(), 1, "head unchanged");
    // The same change for no member goes through: it was fe2's files.
    c.commit_ok(&c.config(2, "", ""), 1, &[]);
}

#[test]
fn a_manager_killed_during_commits_keeps_a_consistent_journal_and_trail() {
    use robustifier::manager::{client::Client, wire::Request};
    let mut c = cluster("sigkill", &["fe1"]);
    c.start_member("fe1");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let looping = {
        let (stop, committed) = (stop.clone(), committed.clone());
        let addr = format!("127.0.0.1:{}", c.port);
        let (ca, cert, key) = (
            c.pki("ca.pem"),
            c.pki("operators/alice.pem"),
            c.pki("operators/alice.key"),
        );
        let configs: Vec<String> = (0..400).map(|w| c.config(w % 200 + 1, "", "")).collect();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // Each commit on its own connection, on the head it just read; every
                // failure (the manager gone, a race) is tried again with the next text.
                for text in configs.into_iter().cycle() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut client) = Client::connect(&addr, &ca, &cert, &key).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let Ok(v) = client
                        .call(&Request::Log { limit: 1 }, Duration::from_secs(10))
                        .await
                    else {
                        continue;
                    };
                    let base = v[0]["number"].as_u64().unwrap_or(0);
                    let request = Request::Commit {
                        base,
                        text,
                        comment: String::new(),
                        confirm_secs: None,
                    };
                    if client.call(&request, Duration::from_secs(10)).await.is_ok() {
                        committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        })
    };
    let count = || committed.load(std::sync::atomic::Ordering::Relaxed);
    wait_until("commits before the kill", || count() >= 10);
    c.stop_manager(nix::sys::signal::Signal::SIGKILL);
    let at_kill = count();
    c.start_manager();
    wait_until("commits after the restart", || count() >= at_kill + 10);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    looping.join().unwrap();

    let log = c.log();
    let numbers: Vec<u64> = log.iter().map(|v| v["number"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "consecutive versions");
    assert!(numbers.len() as u64 > at_kill + 10);
    for v in &numbers {
        let out = c.cli(&["show", &v.to_string()]);
        assert!(out.status.success(), "show {v}: {}", text(&out));
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(
            first,
            format!("# robustifier cluster configuration, version {v}")
        );
    }
    let out = c.cli(&["audit", "--verify"]);
    assert!(out.status.success(), "{}", text(&out));
    // The member follows the restarted manager to the head.
    c.wait_applied(*numbers.last().unwrap());
}

#[test]
fn an_audit_entry_edited_while_the_manager_is_stopped_is_found() {
    let mut c = cluster("tamper", &["fe1"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.commit_ok(&c.config(2, "", ""), 1, &[]);
    c.commit_ok(&c.config(3, "", ""), 2, &[]);
    let out = c.cli(&["audit", "--verify"]);
    assert!(out.status.success(), "intact first: {}", text(&out));
    c.stop_manager(nix::sys::signal::Signal::SIGTERM);
    {
        const ENTRIES: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("entries");
        let db = redb::Database::open(c.state().join("audit.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(ENTRIES).unwrap();
            use redb::ReadableTable as _;
            let bytes = t.get(2).unwrap().unwrap().value().to_vec();
            let mut entry: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(
                entry["what"].as_str().unwrap().contains("version 2"),
                "{entry}"
            );
            entry["what"] = "version 2 on 1: nothing to see".into();
            t.insert(2, serde_json::to_vec(&entry).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    c.start_manager();
    let out = c.cli(&["audit", "--verify"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("entry 2 was edited"), "{}", text(&out));
}

#[test]
fn foreign_and_missing_client_certificates_are_refused() {
    let c = cluster("foreign", &["fe1"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    let other = c.dir.join("other");
    init_pki(&other, "other", &[], &[]);
    let file = c.write("foreign.toml", &c.config(7, "", ""));
    let out = c.cli_as(
        &["commit", file.to_str().unwrap(), "--base", "1"],
        &other.join("operators/alice.pem"),
        &other.join("operators/alice.key"),
    );
    assert!(!out.status.success(), "{}", text(&out));

    // No certificate at all: a TLS client that trusts the cluster's CA but shows nothing.
    let reply = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(without_certificate(&c, &file));
    // The connection fails (a TLS alert): no reply at all, let alone a commit.
    assert!(
        ["handshake:", "read:", "write:"]
            .iter()
            .any(|p| reply.starts_with(p))
            || reply.is_empty(),
        "{reply}"
    );

    assert_eq!(c.head(), 1, "nothing changed");
    assert_eq!(c.log().len(), 1);
}

/// Sends a commit without a client certificate; returns what came back (an error text
/// when the connection failed).
async fn without_certificate(c: &Cluster, file: &Path) -> String {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let connector = tokio_rustls::TlsConnector::from(c.tls_without_certificate());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return format!("handshake: {e}"),
    };
    let request = serde_json::json!({
        "op": "commit",
        "base": 1,
        "text": std::fs::read_to_string(file).unwrap(),
    });
    if let Err(e) = tls.write_all(format!("{request}\n").as_bytes()).await {
        return format!("write: {e}");
    }
    let mut got = Vec::new();
    match tokio::time::timeout(PATIENCE, tls.read_to_end(&mut got)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&got).into_owned(),
        Ok(Err(e)) => format!("read: {e}"),
        Err(_) => panic!("the manager neither answered nor closed"),
    }
}

#[test]
fn a_member_back_from_down_applies_only_the_newest() {
    let mut c = cluster("catchup", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    c.stop_member("fe2");
    let before = c.fakes["fe2"].reloads().len();
    assert_eq!(before, 1);
    for v in 2..=4 {
        c.commit_ok(&c.config(v as u32, "", ""), v - 1, &[]);
    }
    c.start_member("fe2");
    c.wait_applied(4);
    let after = c.fakes["fe2"].reloads();
    assert_eq!(
        after.len() - before,
        1,
        "one reload after the restart: {:?}",
        &after[before..]
    );
    assert_eq!(
        after[before].file.as_deref(),
        Some(c.show(&["4", "--member", "fe2"]).as_str()),
        "it carries the head's rendering"
    );
    assert_eq!(c.fakes["fe1"].reloads().len(), 4, "fe1 took each version");
}

#[test]
fn a_drain_reaches_every_front_end_and_is_audited() {
    let mut c = cluster("drain", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    let out = c.cli(&["drain", "mx1"]);
    assert!(out.status.success(), "{}", text(&out));
    for (name, fake) in &c.fakes {
        assert!(
            fake.seen().iter().any(|s| s.line == "drain mx1"),
            "{name}: {:?}",
            fake.seen()
        );
    }
    let out = c.cli(&["audit"]);
    assert!(out.status.success(), "{}", text(&out));
    let audit = text(&out);
    for name in ["fe1", "fe2"] {
        assert!(
            audit.lines().any(
                |l| l.contains("operator alice") && l.contains(&format!("drain mx1 on {name}"))
            ),
            "{audit}"
        );
    }
}

/// `cluster logs --json`: each entry's member and sequence number, in the order printed.
fn merged(c: &Cluster) -> Vec<(String, u64)> {
    let out = c.cli(&["logs", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                e["member"].as_str().unwrap().to_owned(),
                e["event"]["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn events_reach_the_merged_log_once_across_a_manager_and_a_member_away() {
    let mut c = cluster("logs", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    for i in 0..3 {
        c.fakes["fe1"].emit(i);
    }
    c.fakes["fe2"].emit(0);
    wait_until("4 events merged", || merged(&c).len() == 4);

    // The manager away while events happen on both front-ends.
    c.stop_manager(nix::sys::signal::Signal::SIGKILL);
    for i in 3..8 {
        c.fakes["fe1"].emit(i);
    }
    c.fakes["fe2"].emit(1);
    c.start_manager();
    wait_until("10 events merged", || merged(&c).len() == 10);

    // A member away (its front-end keeps the events meanwhile).
    c.stop_member("fe2");
    c.fakes["fe2"].emit(2);
    c.fakes["fe2"].emit(3);
    c.start_member("fe2");
    wait_until("12 events merged", || merged(&c).len() == 12);
    std::thread::sleep(Duration::from_secs(2));
    let all = merged(&c);
    let of = |m: &str| -> Vec<u64> {
        all.iter()
            .filter(|(member, _)| member == m)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(
        of("fe1"),
        (1..=8).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(of("fe2"), [1, 2, 3, 4]);
}

#[test]
fn a_front_end_hears_when_its_manager_is_out_of_reach_and_back() {
    let mut c = cluster("reach", &["fe1"]);
    c.start_member("fe1");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    c.wait_applied(1);
    let said = |c: &Cluster| -> Vec<String> {
        c.fakes["fe1"]
            .seen()
            .into_iter()
            .map(|s| s.line)
            .filter(|l| l.starts_with("manager "))
            .collect()
    };
    // Reachable from the start: the front-end hears so (it leaves SNMP to the manager).
    // (It may hear so more than once: at each connection and when it is seen to restart.)
    wait_until("the front-end told the manager is up", || {
        !said(&c).is_empty()
    });
    let lines = said(&c);
    assert!(lines.iter().all(|l| l == "manager up"), "{lines:?}");
    c.stop_manager(nix::sys::signal::Signal::SIGKILL);
    let down = |c: &Cluster| said(c).iter().position(|l| l.starts_with("manager down "));
    wait_until("the front-end told", || down(&c).is_some());
    let at = down(&c).unwrap();
    assert_eq!(said(&c).len(), at + 1, "said once: {:?}", said(&c));
    c.start_manager();
    wait_until("the front-end told it is back", || said(&c).len() > at + 1);
    assert_eq!(said(&c)[at + 1], "manager up");
}

/// `GET /metrics` of the manager: the status code and the body.
fn manager_metrics(c: &Cluster, token: Option<&str>) -> (u16, String) {
    support::get(c.metrics_port(), "/metrics", token)
}

#[test]
fn the_manager_metrics_show_a_member_behind() {
    let mut c = cluster("metrics", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.commit_ok(&c.config(1, "", ""), 0, &[]);
    wait_until("fe1 on version 1", || {
        c.status()["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "fe1" && m["applied"] == 1)
    });
    assert_eq!(manager_metrics(&c, None).0, 401);
    assert_eq!(manager_metrics(&c, Some("wrong-token-0123456789")).0, 401);
    let (code, body) = manager_metrics(&c, Some(METRICS_TOKEN));
    assert_eq!(code, 200, "{body}");
    for line in [
        "robustifier_manager_head_version 1",
        "robustifier_manager_member_drift{member=\"fe1\"} 0",
        "robustifier_manager_member_drift{member=\"fe2\"} 1",
        "robustifier_manager_member_connected{member=\"fe2\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "{line}\n{body}");
    }
}
