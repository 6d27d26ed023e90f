//! End to end with real peers: clients (swaks, Python's smtplib and poplib, curl) in the
//! client namespace talk to the virtual IPs; Robustifier routes each recipient and user to
//! the back-end that owns it (Postfix, Postfix, OpenSMTPD, each with Dovecot); every
//! message is found in the right Maildir byte for byte, with the real client's address in
//! its trace headers. Privileged.

use std::{
    net::{IpAddr, SocketAddr},
    process::Output,
};

use robustifier_lab::{
    Lab,
    cluster::Cluster,
    mail::clients::{self, b64decode, delivered, message, text},
    topology::{VIP_POP, VIP_SMTP, VIP_SMTP_V6},
};

const CLIENT_V4: &str = "198.18.0.100";

fn swaks(lab: &Lab, args: &[&str]) -> Output {
    clients::swaks(&lab.client.ns, "client.robustifier.test", args)
}

/// Sends `tag` to `to` through `server` with swaks and `extra`; asserts a 250 at the end.
fn deliver(c: &Cluster, server: SocketAddr, to: &str, tag: &str, extra: &[&str]) -> String {
    let (ns, dir) = (&c.lab.client.ns, &c.lab.log_dir);
    clients::swaks_deliver(ns, "client.robustifier.test", dir, server, to, tag, extra)
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP_SMTP.into(), port)
}

#[test]
fn real_clients_reach_the_right_mailboxes_through_the_proxy() {
    let Some(c) = Cluster::one_frontend("e2e") else {
        return;
    };
    let ca = c.ca().display().to_string();
    let tls_verify: &[&str] = &["--tls-verify", "--tls-ca-path", &ca];

    // swaks, plain, to a Postfix back-end: XCLIENT carries the client's address.
    let t = deliver(&c, vip(25), "alice@example.test", "plain", &[]);
    assert!(
        t.contains("<-  220 mx-fea.robustifier.test ESMTP Robustifier"),
        "{t}"
    );
    let trace = delivered(
        c.host_of("alice@example.test"),
        "alice@example.test",
        "plain",
    );
    assert!(
        trace.contains(&format!("[{CLIENT_V4}]")),
        "Received shows the real client: {trace}"
    );
    // The leg to be1 runs over STARTTLS, be1's certificate checked against the lab CA.
    let log = c.host_of("alice@example.test").mta_log_text();
    assert!(
        log.contains("TLS connection established from"),
        "the leg to be1 is TLS: {log}"
    );

    // STARTTLS on 25, verified against the lab CA.
    let mut args = vec!["--tls"];
    args.extend_from_slice(tls_verify);
    let t = deliver(&c, vip(25), "carol@example.net", "starttls", &args);
    assert!(t.contains("TLS started"), "{t}");
    delivered(
        c.host_of("carol@example.net"),
        "carol@example.net",
        "starttls",
    );

    // Implicit TLS on 465, to OpenSMTPD: PROXY v2 carries the client's address.
    let mut args = vec!["--tlsc"];
    args.extend_from_slice(tls_verify);
    deliver(&c, vip(465), "erin@example.org", "smtps", &args);
    let trace = delivered(c.host_of("erin@example.org"), "erin@example.org", "smtps");
    assert!(
        trace.contains(CLIENT_V4),
        "PROXY v2 source in OpenSMTPD's Received: {trace}"
    );

    // Pipelining, over IPv6.
    let t = deliver(
        &c,
        SocketAddr::new(VIP_SMTP_V6.into(), 25),
        "dave@example.net",
        "pipelined",
        &["--pipeline"],
    );
    assert!(t.contains("PIPELINING"), "{t}");
    delivered(
        c.host_of("dave@example.net"),
        "dave@example.net",
        "pipelined",
    );

    // Submission: AUTH relayed to the user's own back-end; a wrong password is refused there.
    let mut args = vec![
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice@example.test",
        "--auth-password",
        "alice-pw",
    ];
    args.extend_from_slice(tls_verify);
    let t = deliver(&c, vip(587), "bob@example.test", "submitted", &args);
    assert!(t.contains("<~  235 "), "authenticated over TLS: {t}");
    delivered(
        c.host_of("bob@example.test"),
        "bob@example.test",
        "submitted",
    );
    let server = vip(587).to_string();
    let out = swaks(
        &c.lab,
        &[
            "--server",
            &server,
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "carol@example.net",
            "--auth-password",
            "nope",
            "--to",
            "dave@example.net",
        ],
    );
    assert!(
        text(&out).contains("535 5.7.8"),
        "the back-end refused: {}",
        text(&out)
    );

    // Unknown recipients are refused at the proxy.
    let out = swaks(
        &c.lab,
        &[
            "--server",
            &vip(25).to_string(),
            "--to",
            "nobody@example.test",
        ],
    );
    assert!(text(&out).contains("<** 550 5.1.1"), "{}", text(&out));

    // curl over SMTP.
    let body = c.lab.log_dir.join("curl.eml");
    std::fs::write(&body, message("curl", "bob@example.test")).unwrap();
    let out = c
        .lab
        .client
        .ns
        .command("curl")
        .args([
            "-sS",
            "--url",
            &format!("smtp://{VIP_SMTP}:25"),
            "--mail-from",
            "sender@client.example.org",
            "--mail-rcpt",
            "bob@example.test",
            "--upload-file",
        ])
        .arg(&body)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    delivered(c.host_of("bob@example.test"), "bob@example.test", "curl");

    // be1's health probes go over STARTTLS too (its pool's TLS): after all this time it is
    // still up, and its load record says so.
    let tables = robustifier::datapath::Tables::from_pins(&c.lab.pin_dir(0)).unwrap();
    let snap = robustifier::datapath::Snapshot::read(&tables).unwrap();
    assert_eq!(snap.backends[0].state, "up", "{}", snap.render());
    assert!(snap.backends[0].response_us > 0, "{}", snap.render());
}

/// smtplib in the client namespace: one session, three recipients on three routes.
const SPLIT: &str = r#"
import json, smtplib, sys
host, msg = sys.argv[1], sys.argv[2]
rcpts = ["alice@example.test", "carol@example.net", "erin@example.org"]
out = []
s = smtplib.SMTP(host, 25, timeout=60)
s.ehlo("client.robustifier.test")
left = rcpts
while left:
    refused = s.sendmail("sender@client.example.org", left, msg.replace("TO", left[0]))
    out.append({"sent": left, "refused": {k: [v[0], v[1].decode()] for k, v in refused.items()}})
    left = [r for r in left if r in refused]
    if len(out) > 5:
        break
s.quit()
print(json.dumps(out))
"#;

#[test]
fn one_session_with_three_routes_is_split_by_452_and_delivered_everywhere() {
    let Some(c) = Cluster::one_frontend("split") else {
        return;
    };
    let msg = message("split", "TO");
    let out = c
        .lab
        .client
        .ns
        .command(clients::python())
        .args(["-c", SPLIT, &VIP_SMTP.to_string(), &msg])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rounds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rounds = rounds.as_array().unwrap();
    assert_eq!(
        rounds.len(),
        3,
        "three transactions, one per route: {rounds:?}"
    );
    for (i, r) in rounds.iter().enumerate() {
        let refused = r["refused"].as_object().unwrap();
        assert_eq!(refused.len(), 2 - i, "{rounds:?}");
        for (_, v) in refused {
            assert_eq!(v[0], 452, "{rounds:?}");
            assert!(v[1].as_str().unwrap().starts_with("4.5.3"), "{rounds:?}");
        }
    }
    for to in [
        "alice@example.test",
        "carol@example.net",
        "erin@example.org",
    ] {
        let host = c.host_of(to);
        let msgs = host.wait_for_messages(to, 1).unwrap();
        assert_eq!(msgs.len(), 1, "{to}");
        assert!(
            String::from_utf8_lossy(&msgs[0]).contains("Message-ID: <split@"),
            "{to}"
        );
    }
}

#[test]
fn pop3_users_reach_their_mailboxes_over_stls_and_pop3s_and_never_in_clear() {
    let Some(c) = Cluster::one_frontend("pop") else {
        return;
    };
    let ca = c.ca();
    for (to, tag) in [
        ("alice@example.test", "p1"),
        ("carol@example.net", "p2"),
        ("erin@example.org", "p3"),
    ] {
        deliver(&c, vip(25), to, tag, &[]);
        delivered(c.host_of(to), to, tag);
    }
    let pop = |port: u16| SocketAddr::new(IpAddr::V4(VIP_POP), port);
    for (user, port, mode) in [
        ("alice@example.test", 110, "stls"),
        ("carol@example.net", 110, "stls"),
        ("erin@example.org", 995, "pop3s"),
    ] {
        let got = clients::poplib(
            &c.lab.client.ns,
            pop(port),
            mode,
            user,
            &c.password(user),
            &ca,
        );
        assert!(got.get("error").is_none(), "{user}: {got}");
        assert!(
            got["welcome"]
                .as_str()
                .unwrap()
                .starts_with("+OK pop-fea.robustifier.test"),
            "{got}"
        );
        let retrieved: Vec<Vec<u8>> = got["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| b64decode(m.as_str().unwrap()))
            .collect();
        let stored = c.host_of(user).messages(user);
        assert_eq!(
            retrieved, stored,
            "{user}: RETR through the proxy is the Maildir, byte for byte"
        );
        let log = c
            .host_of(user)
            .pop3_log_with(CLIENT_V4, std::time::Duration::from_secs(10));
        assert!(
            log.contains(CLIENT_V4),
            "Dovecot saw the real client through PROXY v2: {log}"
        );
    }
    // Without STLS the password never leaves the client's host: the proxy refuses the
    // login in clear (Dovecot's disable_plaintext_auth), the right password included.
    let got = clients::poplib(
        &c.lab.client.ns,
        pop(110),
        "plain",
        "alice@example.test",
        &c.password("alice@example.test"),
        &ca,
    );
    assert!(
        got["error"]
            .as_str()
            .unwrap()
            .starts_with("-ERR [AUTH] Plaintext authentication disallowed"),
        "{got}"
    );
    // A wrong password: the back-end's answer, unchanged.
    let got = clients::poplib(
        &c.lab.client.ns,
        pop(110),
        "stls",
        "carol@example.net",
        "wrong",
        &ca,
    );
    assert!(
        got["error"].as_str().unwrap().starts_with("-ERR [AUTH]")
            && !got["error"].as_str().unwrap().contains("Plaintext"),
        "{got}"
    );

    // curl pop3s: retrieve carol's first message over implicit TLS.
    let out = c
        .lab
        .client
        .ns
        .command("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args([
            "--user",
            "carol@example.net:carol-pw",
            &format!("pop3s://{VIP_POP}:995/1"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Message-ID: <p2@"),
        "{}",
        text(&out)
    );
}

/// The cluster's agents, started as the demo starts them, answer the front-end with the
/// lab's shared key: an operator's drain through each agent reaches the load map, and
/// clearing it readmits the back-end.
#[test]
fn cluster_agents_answer_the_front_end_with_the_shared_key() {
    use robustifier::datapath::{Snapshot, Tables};
    let Some(mut c) = Cluster::one_frontend("agk") else {
        return;
    };
    c.start_agents().expect("agents");
    let eventually = |what: &str, f: &dyn Fn(&Snapshot) -> bool| {
        // A generous bound for the polls to come round, not a timing claim.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let s = Snapshot::read(&Tables::from_pins(&c.lab.pin_dir(0)).unwrap()).unwrap();
            if f(&s) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never: {what}\n{}",
                s.render()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // be1, be2, be3 are the first three back-ends of the configuration (ids 0 to 2).
    for i in 0..3 {
        std::fs::write(c.agent_state(i), "drain=1\n").unwrap();
    }
    eventually("every agent's drain shows", &|s| {
        s.backends[..3].iter().all(|b| b.state == "draining")
    });
    for i in 0..3 {
        std::fs::write(c.agent_state(i), "").unwrap();
    }
    eventually("every back-end readmitted", &|s| {
        s.backends[..3].iter().all(|b| b.state == "up")
    });
}
