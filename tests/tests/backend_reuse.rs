//! Kept back-end legs with a real Postfix (XCLIENT over STARTTLS): two clients one after
//! another, from different addresses and with different HELO names, and Postfix sees each
//! as itself, nothing of the first in the second's Received line or log; Postfix refuses
//! to re-identify a kept leg, and the proxy then keeps none for it. Privileged.

use std::net::SocketAddr;

use robustifier_lab::{
    cluster::Cluster,
    mail::clients::{self, delivered},
    topology::{VIP_SMTP, VIP_SMTP_V6},
};

const TO: &str = "alice@example.test";

/// The pid of the smtpd that logged `tag`'s queue line (`smtpd[PID]: ID: client=...`),
/// and that line. Messages carry their tag in the Message-ID, which the cleanup line
/// names next to the same queue id.
fn smtpd_of(log: &str, tag: &str) -> (String, String) {
    let id = log
        .lines()
        .find(|l| l.contains("cleanup[") && l.contains(&format!("message-id=<{tag}@")))
        .and_then(|l| l.split(": ").nth(1).map(str::to_owned))
        .unwrap_or_else(|| panic!("no cleanup line for {tag}:\n{log}"));
    let line = log
        .lines()
        .find(|l| l.contains("smtpd[") && l.contains(&format!("{id}: client=")))
        .unwrap_or_else(|| panic!("no smtpd line for {id}:\n{log}"))
        .to_owned();
    let pid = line
        .split("smtpd[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or_default()
        .to_owned();
    (pid, line)
}

#[test]
fn a_kept_postfix_leg_carries_each_client_as_itself() {
    let Some(c) = Cluster::one_frontend("reuse") else {
        return;
    };
    let (ns, dir) = (&c.lab.client.ns, &c.lab.log_dir);
    let v4 = SocketAddr::new(VIP_SMTP.into(), 25);
    let v6 = SocketAddr::new(VIP_SMTP_V6.into(), 25);
    let host = c.host_of(TO);

    clients::swaks_deliver(ns, "one.client.test", dir, v4, TO, "reuse-one", &[]);
    let first = delivered(host, TO, "reuse-one");
    assert!(
        first.contains("one.client.test") && first.contains("[198.18.0.100]"),
        "{first}"
    );
    clients::swaks_deliver(ns, "two.client.test", dir, v6, TO, "reuse-two", &[]);
    let second = delivered(host, TO, "reuse-two");
    assert!(
        second.contains("from two.client.test") && second.contains("IPv6:2001:db8:"),
        "Received names the second client: {second}"
    );
    assert!(
        !second.contains("one.client.test") && !second.contains("198.18.0.100"),
        "nothing of the first client: {second}"
    );

    let log = host.mta_log_text();
    let (_, line2) = smtpd_of(&log, "reuse-two");
    assert!(line2.contains("2001:db8:"), "{line2}");
    assert!(!line2.contains("sasl_username"), "no login: {line2}");

    // This Postfix checks XCLIENT's authorisation against the address the previous
    // XCLIENT set, so it refused to re-identify the kept leg: the proxy tried once (the
    // second client then went on a fresh leg, as its Received line shows), and keeps no
    // more legs for it.
    clients::swaks_deliver(ns, "three.client.test", dir, v4, TO, "reuse-three", &[]);
    let third = delivered(host, TO, "reuse-three");
    assert!(
        third.contains("from three.client.test") && third.contains("[198.18.0.100]"),
        "{third}"
    );
    let log = host.mta_log_text();
    let tries = log.matches("lost connection after XCLIENT").count();
    assert_eq!(tries, 1, "one try at re-identifying a kept leg:\n{log}");
}
