//! `robustifier cluster trace` in the mail cluster: a manager on the back-end segment, a
//! member in the front-end's namespace, and be1's agent (its certificate named as the
//! back-end in the configuration) shipping real Postfix's `maillog_file`. A message sent
//! through the SMTP VIP is traced by its Message-ID: the front-end's record (client,
//! session, routing, back-end, Postfix's queue id from its 250) and Postfix's own lines of
//! that queue id, its `status=sent` delivery line among them. A message to be3 is traced
//! likewise to OpenSMTPD's lines of its message id, shipped from its log by be3's agent.
//!
//! Privileged.

use std::time::Duration;

use robustifier_lab::{
    client::{self, accepted},
    cluster::Cluster,
    mail::{opensmtpd, postfix},
    manager::{self, ClusterManager, cluster_config, member_priorities, shared_routers},
    privileged,
    topology::VIP_SMTP,
    unique_prefix,
    vrrp::{eventually, owns},
};

/// A bound for a poll to come round, not a timing claim.
const GENEROUS: Duration = Duration::from_secs(60);
const TO: &str = "alice@example.test";
/// A mailbox on be3, OpenSMTPD.
const TO_BE3: &str = "erin@example.org";

#[test]
fn messages_through_the_vip_are_traced_to_the_mtas_own_lines() {
    if !privileged::check("cluster_trace") {
        return;
    }
    let mut c = Cluster::up(&unique_prefix("ctrace"), 1).expect("cluster up");
    c.set_extra(0, &shared_routers(20));
    let m = ClusterManager::up(&mut c.lab).expect("manager up");
    for agent in ["be1", "be3"] {
        let issued = robustifier_lab::cli::run(&[
            "cluster".to_owned(),
            "issue".into(),
            "--dir".into(),
            m.pki.display().to_string(),
            "--agent".into(),
            agent.into(),
        ]);
        assert!(
            issued.status.success(),
            "{}",
            String::from_utf8_lossy(&issued.stderr)
        );
    }
    m.start_member(&mut c.lab, 0).expect("member");
    m.commit_wait(&cluster_config(&c, &[member_priorities(0)]), "first", 60)
        .expect("first commit");
    m.start_frontend(&mut c.lab, 0).expect("front-end");
    let ns = c.lab.frontends[0].ns.clone();
    eventually("the front-end owns the SMTP VIP", GENEROUS, || {
        owns(&ns, "pub0", VIP_SMTP.into())
    })
    .unwrap();

    // be1's agent: reports as always, and ships Postfix's log to the manager. The lab's
    // back-ends share the host's disk, whose use on a well-filled build machine passes
    // regular mail's share of the disk threshold: the agents report an empty file system
    // (the shared memory one) so that their reports deflect nothing here.
    let p = |f: &str| m.pki.join(f).display().to_string();
    let spool = "/dev/shm";
    let (manager_addr, maillog) = (
        m.addr.to_string(),
        postfix::maillog(&c.hosts[0].layout).display().to_string(),
    );
    let argv = [
        "--mta",
        "postfix",
        "--spool",
        spool,
        "--maillog",
        &maillog,
        "--manager",
        &manager_addr,
        "--ca",
        &p("ca.pem"),
        "--cert",
        &p("agents/be1.pem"),
        "--key",
        &p("agents/be1.key"),
    ];
    robustifier_lab::cli::start_agent(&mut c.lab, 0, "agent-be1", &argv).expect("agent");
    let log3 = opensmtpd::log(&c.hosts[2].layout).display().to_string();
    let argv = [
        "--mta",
        "opensmtpd",
        "--spool",
        spool,
        "--maillog",
        &log3,
        "--manager",
        &manager_addr,
        "--ca",
        &p("ca.pem"),
        "--cert",
        &p("agents/be3.pem"),
        "--key",
        &p("agents/be3.key"),
    ];
    robustifier_lab::cli::start_agent(&mut c.lab, 2, "agent-be3", &argv).expect("agent be3");

    let tag = format!("trace-{}", std::process::id());
    let r = client::send_mail_in(
        &c.lab.client.ns,
        std::net::SocketAddr::new(VIP_SMTP.into(), 25),
        "sender@client.example.org",
        &[TO],
        &manager::message(&tag, TO),
    );
    assert!(accepted(&r), "{r:?}");
    let message_id = format!("<{tag}@client.example.org>");

    let mut trace = serde_json::Value::Null;
    eventually("the trace shows Postfix's delivery line", GENEROUS, || {
        if let Ok(out) = m.cli_ok(&["trace", &message_id, "--json"]) {
            trace = serde_json::from_str(&out).unwrap_or_default();
        }
        let sent = trace["messages"][0]["mta"].as_array().is_some_and(|l| {
            l.iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains("status=sent")))
        });
        if !sent {
            // The member and the agent ship every few hundred milliseconds.
            std::thread::sleep(Duration::from_millis(200));
        }
        sent
    })
    .unwrap_or_else(|e| panic!("{e}: {trace:#}"));
    let msg = &trace["messages"][0];
    let record = &msg["record"];
    assert_eq!(msg["member"], c.lab.frontends[0].name.as_str(), "{msg:#}");
    assert_eq!(record["backend"], "be1", "{record:#}");
    assert_eq!(record["pool"], "be1", "{record:#}");
    assert_eq!(record["message_id"], message_id.as_str());
    assert!(
        record["route_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("route map"),
        "{record:#}"
    );
    let queue_id = record["queue_id"]
        .as_str()
        .expect("Postfix's queue id")
        .to_owned();
    let lines: Vec<&str> = msg["mta"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        lines.iter().all(|l| l.contains(&format!("{queue_id}:"))),
        "only the queue id's lines: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("message-id={message_id}"))),
        "Postfix's cleanup line names the Message-ID: {lines:#?}"
    );
    // OpenSMTPD names its message id in its 250; its agent ships the lines of it.
    let tag3 = format!("trace-be3-{}", std::process::id());
    let r = client::send_mail_in(
        &c.lab.client.ns,
        std::net::SocketAddr::new(VIP_SMTP.into(), 25),
        "sender@client.example.org",
        &[TO_BE3],
        &manager::message(&tag3, TO_BE3),
    );
    assert!(accepted(&r), "{r:?}");
    let trace3 = traced_to(&m, &format!("<{tag3}@client.example.org>"), "result=Ok");
    let record3 = &trace3["messages"][0]["record"];
    assert_eq!(record3["backend"], "be3", "{trace3:#}");
    let msgid = record3["queue_id"]
        .as_str()
        .expect("OpenSMTPD's message id");
    assert_eq!(msgid.len(), 8, "{record3:#}");
    println!("{}", m.cli_ok(&["trace", msgid]).unwrap());

    // The same by queue id, as the operator reads it.
    let shown = m.cli_ok(&["trace", &queue_id]).unwrap();
    println!("{shown}");
    for what in [
        format!("queue id {queue_id}"),
        "back-end be1".to_owned(),
        "status=sent".to_owned(),
    ] {
        assert!(shown.contains(&what), "{what} missing in:\n{shown}");
    }
}

/// The trace of `id` once its first message shows an MTA line containing `what`.
fn traced_to(m: &ClusterManager, id: &str, what: &str) -> serde_json::Value {
    let mut trace = serde_json::Value::Null;
    eventually(
        &format!("the trace of {id} shows {what:?}"),
        GENEROUS,
        || {
            if let Ok(out) = m.cli_ok(&["trace", id, "--json"]) {
                trace = serde_json::from_str(&out).unwrap_or_default();
            }
            let seen = trace["messages"][0]["mta"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|l| l.as_str().is_some_and(|l| l.contains(what)))
            });
            if !seen {
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {trace:#}\nthe merged log:\n{}",
            m.cli_ok(&["logs"]).unwrap_or_default()
        )
    });
    trace
}
