//! Real mail servers as lab back-ends (Postfix twice, OpenSMTPD, Exim; Dovecot on each),
//! exercised from front-end A's namespace the way the proxy will use them: swaks delivers (plain, with XCLIENT, after a PROXY v2 header, with
//! AUTH on 587, over STARTTLS), the Maildirs hold the message byte for byte, Python's poplib
//! reads it back from Dovecot (STLS, 995, PROXY v2), and the lab's teardown leaves no
//! process behind. Privileged: builds namespaces and runs daemons as root.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    process::Output,
    time::Duration,
};

use robustifier_lab::{
    Lab, Plan,
    mail::{
        self, ClientIdentity, MailHost, Make, Users,
        clients::{self, b64decode, delivered, message, text},
        proxy_v2,
    },
};

fn lab(tag: &str, backends: usize) -> Option<Lab> {
    robustifier_lab::privileged_lab(tag, Plan::new(1, backends))
}

/// The front-end's address on the back-end segment (198.18.1.1), where the proxy's
/// back-end connections come from.
fn fea_inner(lab: &Lab) -> IpAddr {
    IpAddr::V4(
        lab.frontend(0)
            .internal_v4
            .expect("front-end inner address"),
    )
}

/// Runs swaks in front-end A's namespace.
fn swaks(lab: &Lab, args: &[&str]) -> Output {
    clients::swaks(&lab.frontend(0).ns, "fea.robustifier.test", args)
}

/// Delivers `tag` to `to` on `server` with swaks and `extra` options; returns the swaks
/// transcript, asserting success.
fn deliver(lab: &Lab, server: SocketAddr, to: &str, tag: &str, extra: &[&str]) -> String {
    let (ns, dir) = (&lab.frontend(0).ns, &lab.log_dir);
    let t = clients::swaks_deliver(ns, "fea.robustifier.test", dir, server, to, tag, extra);
    assert!(
        t.contains("<-  250 2.0.0 ") || t.contains("<-  250 "),
        "{t}"
    );
    t
}

fn pop(
    lab: &Lab,
    host: &MailHost,
    port: u16,
    mode: &str,
    user: &str,
    pw: &str,
) -> serde_json::Value {
    let addr = SocketAddr::new(host.v4().into(), port);
    clients::poplib(&lab.frontend(0).ns, addr, mode, user, pw, host.ca_file())
}

/// POP3 over `mode`: the messages Dovecot returns are the Maildir's, byte for byte, and
/// LIST's sizes are their sizes with CRLF line ends.
fn check_pop(lab: &Lab, host: &MailHost, port: u16, mode: &str, user: &str) {
    let pw = host.users.get(user).unwrap().password.clone();
    let got = pop(lab, host, port, mode, user, &pw);
    assert!(got.get("error").is_none(), "{}: {got}", host.name());
    if mode != "plain" {
        assert!(got["tls"].as_str().unwrap().starts_with("TLS"), "{got}");
    }
    if mode == "plain" {
        let capa: Vec<&str> = got["capa"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(capa.contains(&"STLS"), "{capa:?}");
    }
    let mut retrieved: Vec<Vec<u8>> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| b64decode(m.as_str().unwrap()))
        .collect();
    let mut stored = host.messages(user);
    assert_eq!(retrieved.len(), stored.len(), "{}: {got}", host.name());
    let mut sizes: Vec<usize> = got["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l.as_str()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let mut expected_sizes: Vec<usize> = stored
        .iter()
        .map(|m| m.len() + m.iter().filter(|&&b| b == b'\n').count())
        .collect();
    retrieved.sort();
    stored.sort();
    sizes.sort();
    expected_sizes.sort();
    assert!(
        retrieved == stored,
        "{}: RETR differs from the Maildir",
        host.name()
    );
    assert_eq!(sizes, expected_sizes, "LIST sizes count CRLF");
}

/// The first line `addr` sends to a client in front-end A's namespace.
fn greeting(lab: &Lab, addr: SocketAddr) -> String {
    lab.frontend(0)
        .ns
        .enter(move || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut l = String::new();
            BufReader::new(&s).read_line(&mut l).unwrap();
            let _ = (&s).write_all(b"QUIT\r\n");
            l
        })
        .unwrap()
}

/// Sends a PROXY v2 header from `src` to `host`'s POP3 PROXY port, logs in as `user` and
/// returns the server's replies.
fn pop_via_proxy(lab: &Lab, host: &MailHost, src: SocketAddr, user: &str) -> Vec<String> {
    let to = host.pop3_proxy_addr();
    let pw = host.users.get(user).unwrap().password.clone();
    let user = user.to_owned();
    let vip = SocketAddr::new(robustifier_lab::topology::VIP_POP.into(), 110);
    lab.frontend(0)
        .ns
        .enter(move || {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            (&s).write_all(&proxy_v2::proxy(src, vip)).unwrap();
            let mut r = BufReader::new(&s);
            let mut got = Vec::new();
            let mut read = |got: &mut Vec<String>| {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                got.push(l.trim_end().to_owned());
            };
            read(&mut got);
            for cmd in [
                format!("USER {user}"),
                format!("PASS {pw}"),
                "STAT".into(),
                "QUIT".into(),
            ] {
                (&s).write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
                read(&mut got);
            }
            got
        })
        .unwrap()
}

/// Plain SMTP after a PROXY v2 header from an IPv6 client, spoken by hand.
fn smtp_via_proxy_v6(
    lab: &Lab,
    addr: SocketAddr,
    src: SocketAddr,
    to: &str,
    tag: &str,
) -> Vec<String> {
    let vip = SocketAddr::new(robustifier_lab::topology::VIP_SMTP_V6.into(), 25);
    let msg = message(tag, to);
    let to = to.to_owned();
    lab.frontend(0)
        .ns
        .enter(move || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            (&s).write_all(&proxy_v2::proxy(src, vip)).unwrap();
            let mut r = BufReader::new(&s);
            let mut got = Vec::new();
            // Reads one reply (all its lines) and keeps its last line.
            let mut reply = |got: &mut Vec<String>| loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if l.len() < 4 || l.as_bytes()[3] != b'-' {
                    got.push(l.trim_end().to_owned());
                    break;
                }
            };
            reply(&mut got);
            let stuffed = msg.replace("\r\n.", "\r\n..");
            for cmd in [
                "EHLO fea.robustifier.test\r\n".to_owned(),
                "MAIL FROM:<sender@client.example.org>\r\n".into(),
                format!("RCPT TO:<{to}>\r\n"),
                "DATA\r\n".into(),
                format!("{stuffed}.\r\n"),
                "QUIT\r\n".into(),
            ] {
                (&s).write_all(cmd.as_bytes()).unwrap();
                reply(&mut got);
            }
            got
        })
        .unwrap()
}

/// AUTH PLAIN and LOGIN with a Dovecot user succeed and deliver; a wrong password gets 535;
/// without AUTH, submission takes no mail.
fn check_submission(lab: &Lab, host: &MailHost, submission: SocketAddr) {
    let n = host.name();
    for mech in ["PLAIN", "LOGIN"] {
        let tag = format!("{n}-auth-{}", mech.to_lowercase());
        let extra = [
            "--auth",
            mech,
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-secret",
        ];
        let t = deliver(lab, submission, "bob@example.test", &tag, &extra);
        assert!(t.contains("<-  235 "), "{t}");
        delivered(host, "bob@example.test", &tag);
    }
    let server = submission.to_string();
    let out = swaks(
        lab,
        &[
            "--server",
            &server,
            "--from",
            "alice@example.test",
            "--to",
            "bob@example.test",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "wrong-password",
        ],
    );
    let t = text(&out);
    assert!(!out.status.success(), "a wrong password must fail: {t}");
    assert!(t.contains("<** 535"), "{t}");
    let t = text(&swaks(
        lab,
        &[
            "--server",
            &server,
            "--from",
            "x@client.example.org",
            "--to",
            "bob@example.test",
        ],
    ));
    assert!(
        t.contains("<** 5"),
        "unauthenticated submission rejected: {t}"
    );
}

#[test]
fn postfix_opensmtpd_and_exim_backends_deliver_authenticate_and_serve_pop3() {
    let Some(mut lab) = lab("mb", 4) else { return };
    let users = Users::lab_default();
    let makes = [Make::Postfix, Make::Postfix, Make::OpenSmtpd, Make::Exim];
    let hosts: Vec<MailHost> = makes
        .iter()
        .enumerate()
        .map(|(i, make)| {
            MailHost::start(&mut lab, i, *make, &users)
                .unwrap_or_else(|e| panic!("starting {make:?} on be{}: {e:#}", i + 1))
        })
        .collect();
    for host in &hosts {
        smtp_from_the_front_end(&lab, host);
        client_identity(&lab, host);
        smtp_after_proxy_v2(&lab, host);
        submission(&lab, host);
        unknown_recipients(&lab, host);
        pop3(&lab, host);
        ipv6(&lab, host);
        pop3_after_proxy_v2(&lab, host);
        queue_is_empty(host);
    }

    // Every process of every host ends with the lab.
    let pids: Vec<i32> = hosts.iter().flat_map(|h| h.processes()).collect();
    assert!(!pids.is_empty());
    lab.down().unwrap();
    wait_gone(&hosts);
}

/// Waits until none of the hosts' processes is alive (their masters are gone already; the
/// children may take a moment to act on their SIGTERM).
fn wait_gone(hosts: &[MailHost]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<i32> = hosts.iter().flat_map(|h| h.processes()).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn backends_stop_restart_and_smtp_sink_misbehaves() {
    let Some(mut lab) = lab("ms", 2) else { return };
    let users = Users::new().with("dave@example.org", "dave-secret");
    let host = MailHost::start(&mut lab, 0, Make::Postfix, &users).unwrap();
    deliver(&lab, host.smtp_addr(), "dave@example.org", "ms-first", &[]);
    delivered(&host, "dave@example.org", "ms-first");
    let ns = host.layout.ns.clone();
    let connect = |addr: SocketAddr| {
        ns.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)).is_ok())
            .unwrap()
    };

    // SMTP down, POP3 up: a back-end failing for one service.
    host.stop_smtp(&mut lab);
    assert!(!connect(host.smtp_addr()));
    check_pop(&lab, &host, mail::PORT_POP3, "stls", "dave@example.org");
    host.stop(&mut lab);
    assert!(!connect(host.pop3_addr()));
    assert!(host.processes().is_empty());

    // Started again on the same spool and mailboxes.
    let host = MailHost::start(&mut lab, 0, Make::Postfix, &users).unwrap();
    assert_eq!(host.messages("dave@example.org").len(), 1);
    deliver(&lab, host.smtp_addr(), "dave@example.org", "ms-second", &[]);
    delivered(&host, "dave@example.org", "ms-second");
    check_pop(&lab, &host, mail::PORT_POP3, "stls", "dave@example.org");
    let queue = mail::postfix::queue_listing(&host.layout).unwrap();
    assert!(queue.contains("Mail queue is empty"), "{queue}");

    // smtp-sink as a faulty back-end: a soft error for every RCPT.
    let sink = mail::smtp_sink(&mut lab, "be2", 25, &["-r", "RCPT"]).unwrap();
    let out = swaks(
        &lab,
        &["--server", &sink.to_string(), "--to", "dave@example.org"],
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("<** 4"), "soft error from the sink: {t}");

    lab.down().unwrap();
    wait_gone(std::slice::from_ref(&host));
}

/// Plain SMTP from the front-end, with STARTTLS verified against the lab CA where
/// the make offers it.
fn smtp_from_the_front_end(lab: &Lab, host: &MailHost) {
    let n = host.name();
    let fea = fea_inner(lab);
    let ca = host.ca_file().display().to_string();
    let tag = format!("{n}-plain");
    let tls: &[&str] = if host.make.starttls() {
        &["--tls", "--tls-verify", "--tls-ca-path", &ca]
    } else {
        &[]
    };
    let t = deliver(lab, host.smtp_addr(), "alice@example.test", &tag, tls);
    assert_eq!(t.contains("250-STARTTLS"), host.make.starttls(), "{t}");
    let trace = delivered(host, "alice@example.test", &tag);
    assert!(
        trace.contains(&format!("[{fea}]")),
        "Received names the front-end: {trace}"
    );
}

/// The client's address: XCLIENT on Postfix; the other makes do not offer it.
fn client_identity(lab: &Lab, host: &MailHost) {
    let n = host.name();
    let tag = format!("{n}-xclient");
    let (addr, identity) = host.smtp_identity();
    assert_eq!(identity, host.make.client_identity());
    if identity != ClientIdentity::Xclient {
        let out = swaks(
            lab,
            &[
                "--server",
                &host.smtp_addr().to_string(),
                "--quit-after",
                "EHLO",
            ],
        );
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(!t.contains("XCLIENT"), "{n} offers no XCLIENT: {t}");
        let expect = match identity {
            ClientIdentity::ProxyV2 => host.smtp_proxy_addr().unwrap(),
            _ => host.smtp_addr(),
        };
        assert_eq!(addr, expect);
        return;
    }
    assert_eq!(addr, host.smtp_addr());
    deliver(
        lab,
        addr,
        "bob@example.test",
        &tag,
        &[
            "--xclient-addr",
            "198.18.0.100",
            "--xclient-name",
            "client.example.org",
        ],
    );
    let trace = delivered(host, "bob@example.test", &tag);
    assert!(
        trace.contains("client.example.org [198.18.0.100]"),
        "Received shows the XCLIENT address: {trace}"
    );
    let log = host.mta_log_text();
    assert!(
        log.contains("client=client.example.org[198.18.0.100]"),
        "{log}"
    );
}

/// PROXY v2 on port 10025 (swaks writes the header), where the make has it.
fn smtp_after_proxy_v2(lab: &Lab, host: &MailHost) {
    let n = host.name();
    let Some(proxy_addr) = host.smtp_proxy_addr() else {
        let addr = SocketAddr::new(host.v4().into(), mail::PORT_SMTP_PROXY);
        assert!(refused(lab, addr), "{n} has no PROXY port");
        return;
    };
    let fea = fea_inner(lab);
    let tag = format!("{n}-proxy");
    deliver(
        lab,
        proxy_addr,
        "carol@example.net",
        &tag,
        &[
            "--proxy-version",
            "2",
            "--proxy-family",
            "AF_INET",
            "--proxy-source",
            "198.18.0.77",
            "--proxy-source-port",
            "40077",
            "--proxy-dest",
            "198.18.0.25",
            "--proxy-dest-port",
            "25",
        ],
    );
    let trace = delivered(host, "carol@example.net", &tag);
    assert!(
        trace.contains("198.18.0.77"),
        "Received shows the PROXY source: {trace}"
    );
    assert!(!trace.contains(&format!("[{fea}]")), "{trace}");

    // ... and from an IPv6 client, header written by our own code.
    let tag = format!("{n}-proxy6");
    let src: SocketAddr = "[2001:db8:0:1::100]:40066".parse().unwrap();
    let got = smtp_via_proxy_v6(lab, proxy_addr, src, "carol@example.net", &tag);
    assert!(got[0].starts_with("220 "), "{got:?}");
    assert!(got[5].starts_with("250 "), "end of data accepted: {got:?}");
    let trace = delivered(host, "carol@example.net", &tag);
    assert!(
        trace.to_lowercase().contains("2001:db8:0:1::100"),
        "{trace}"
    );
}

/// Whether connecting to `addr` from front-end A is refused.
fn refused(lab: &Lab, addr: SocketAddr) -> bool {
    lab.frontend(0)
        .ns
        .enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)).is_err())
        .unwrap()
}

/// AUTH on 587 with a Dovecot user, where the make has submission.
fn submission(lab: &Lab, host: &MailHost) {
    match host.submission_addr() {
        Some(submission) => check_submission(lab, host, submission),
        None => {
            let addr = SocketAddr::new(host.v4().into(), mail::PORT_SUBMISSION);
            assert!(refused(lab, addr), "{} has no submission port", host.name());
        }
    }
}

/// Unknown recipients are refused at RCPT.
fn unknown_recipients(lab: &Lab, host: &MailHost) {
    let t = text(&swaks(
        lab,
        &[
            "--server",
            &host.smtp_addr().to_string(),
            "--to",
            "nobody@example.test",
        ],
    ));
    assert!(t.contains("<** 55"), "{t}");
}

/// POP3: plain, STLS, 995; RETR equals the Maildir byte for byte.
fn pop3(lab: &Lab, host: &MailHost) {
    for user in [
        "alice@example.test",
        "bob@example.test",
        "carol@example.net",
    ] {
        check_pop(lab, host, mail::PORT_POP3, "stls", user);
    }
    check_pop(lab, host, mail::PORT_POP3, "plain", "alice@example.test");
    check_pop(lab, host, mail::PORT_POP3S, "pop3s", "alice@example.test");
    let bad = pop(
        lab,
        host,
        mail::PORT_POP3,
        "stls",
        "alice@example.test",
        "nope",
    );
    assert!(
        bad["error"].as_str().unwrap_or("").starts_with("-ERR"),
        "{bad}"
    );
}

/// Both services answer on the host's IPv6 address too.
fn ipv6(lab: &Lab, host: &MailHost) {
    for (port, expect) in [(mail::PORT_SMTP, "220 "), (mail::PORT_POP3, "+OK")] {
        let g = greeting(lab, SocketAddr::new(host.v6().into(), port));
        assert!(
            g.starts_with(expect),
            "{} [{}]:{port}: {g:?}",
            host.name(),
            host.v6()
        );
    }
}

/// POP3 after a PROXY v2 header: Dovecot logs the proxied client address.
fn pop3_after_proxy_v2(lab: &Lab, host: &MailHost) {
    let src: SocketAddr = "198.18.0.88:40088".parse().unwrap();
    let got = pop_via_proxy(lab, host, src, "alice@example.test");
    assert!(got[0].starts_with("+OK"), "{got:?}");
    assert!(got[2].starts_with("+OK"), "login: {got:?}");
    let count = host.messages("alice@example.test").len();
    assert!(
        got[3].starts_with(&format!("+OK {count} ")),
        "STAT: {got:?}"
    );
    let log = host.pop3_log_with("rip=198.18.0.88", Duration::from_secs(10));
    assert!(log.contains("rip=198.18.0.88"), "{log}");
}

/// Everything was delivered: the MTA's own queue listing is empty (where the lab has one).
fn queue_is_empty(host: &MailHost) {
    match host.make {
        Make::Postfix => {
            let q = mail::postfix::queue_listing(&host.layout).unwrap();
            assert!(q.contains("Mail queue is empty"), "{q}");
        }
        Make::Exim => {
            let q = mail::exim::queue_listing(&host.layout).unwrap();
            assert!(q.trim().is_empty(), "{q}");
        }
        Make::OpenSmtpd => {}
    }
}
