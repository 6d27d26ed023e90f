//! What a hostile client tries against the cluster, with real peers: Postfix behind XCLIENT,
//! Dovecot behind PROXY v2. No client can take back-ends out of service, leave a back-end
//! transaction open for the next one, or smuggle a command into a back-end's login.
//! Privileged.

use std::{net::SocketAddr, time::Duration};

use robustifier_lab::{
    client,
    cluster::Cluster,
    mail::clients::{delivered, message, python, text},
    maps,
    topology::{VIP_POP, VIP_SMTP},
};

/// Every back-end's state in the front-end's load map (`robustifier maps --json`).
fn states(c: &Cluster) -> Vec<(String, String)> {
    maps::backend_states(&c.lab.pin_dir(0))
}

/// The lab's test message `tag` to `to` as DATA text: dot-stuffed (RFC 5321 4.5.2), with
/// the final dot line, so that it is one element of [`session`]'s lines.
fn data(tag: &str, to: &str) -> String {
    let text: Vec<String> = message(tag, to)
        .trim_end_matches("\r\n")
        .split("\r\n")
        .map(|l| match l.strip_prefix('.') {
            Some(_) => format!(".{l}"),
            None => l.to_owned(),
        })
        .collect();
    format!("{}\r\n.", text.join("\r\n"))
}

/// One session sending the lab's message `tag` to `owner`: the last line of every reply.
fn send_one(c: &Cluster, owner: &str, tag: &str) -> Vec<String> {
    session(
        c,
        &[
            "EHLO client.example.org".into(),
            "MAIL FROM:<sender@client.example.org>".into(),
            format!("RCPT TO:<{owner}>"),
            "DATA".into(),
            data(tag, owner),
            "QUIT".into(),
        ],
    )
}

/// Sends `lines` in one SMTP session from the client namespace, one reply read per line
/// (multi-line replies read whole); returns the last line of each reply.
fn session(c: &Cluster, lines: &[String]) -> Vec<String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let to = SocketAddr::new(VIP_SMTP.into(), 25);
    let lines = lines.to_vec();
    c.lab
        .client
        .ns
        .enter(move || -> std::io::Result<Vec<String>> {
            let s = client::connect(to, None, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut r = BufReader::new(s.try_clone()?);
            let mut w = s;
            let mut reply = || -> std::io::Result<String> {
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 {
                        return Ok("<closed>".into());
                    }
                    if l.as_bytes().get(3) != Some(&b'-') {
                        return Ok(l.trim_end().to_owned());
                    }
                }
            };
            let mut got = vec![reply()?];
            for l in &lines {
                w.write_all(format!("{l}\r\n").as_bytes())?;
                got.push(reply()?);
            }
            Ok(got)
        })
        .unwrap()
        .unwrap()
}

#[test]
fn a_client_cannot_take_the_backends_down_with_what_postfix_refuses() {
    let Some(c) = Cluster::one_frontend("hrdn") else {
        return;
    };
    let owner = "alice@example.test";
    let long_helo = format!("{}.example", "h".repeat(300));
    // More sessions than the back-ends' `fall`: before, each one counted a failed check
    // (Postfix refuses an XCLIENT HELO over 255 octets) and failed over to every back-end.
    for _ in 0..5 {
        let got = session(
            &c,
            &[
                format!("EHLO {long_helo}"),
                "MAIL FROM:<attacker@client.example.org>".into(),
                format!("RCPT TO:<{owner}>"),
                "RCPT TO:<nobody-here@example.test>".into(),
                format!("RCPT TO:<{owner}>"),
                "QUIT".into(),
            ],
        );
        assert!(got[0].starts_with("220"), "{got:?}");
        assert!(
            !got.iter()
                .any(|l| l.starts_with("451") || l.starts_with("421")),
            "the client's long name is not the back-end's failure: {got:?}"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let s = states(&c);
    assert!(s.iter().all(|(_, st)| st == "up"), "{s:?}");
    // A legitimate client right after is served, not shed.
    let tag = "after-attack";
    let got = send_one(&c, owner, tag);
    assert!(
        got.iter().filter(|l| l.starts_with("250")).count() >= 4,
        "{got:?}"
    );
    delivered(c.host_of(owner), owner, tag);
}

#[test]
fn an_abandoned_transaction_never_reaches_the_next_one_on_postfix() {
    let Some(c) = Cluster::one_frontend("hrdt") else {
        return;
    };
    let owner = "alice@example.test";
    let tag = "second-transaction";
    // EHLO in the middle of a transaction resets it (RFC 5321 4.1.4): Postfix must see a
    // reset too, or the next MAIL meets its "503 nested MAIL command".
    let got = session(
        &c,
        &[
            "EHLO client.example.org".into(),
            "MAIL FROM:<sender@client.example.org>".into(),
            format!("RCPT TO:<{owner}>"),
            "EHLO client.example.org".into(),
            "MAIL FROM:<sender@client.example.org>".into(),
            format!("RCPT TO:<{owner}>"),
            "DATA".into(),
            data(tag, owner),
            "QUIT".into(),
        ],
    );
    assert!(!got.iter().any(|l| l.starts_with("503")), "{got:?}");
    assert_eq!(
        got.iter().filter(|l| l.starts_with("250")).count(),
        7,
        "{got:?}"
    );
    delivered(c.host_of(owner), owner, tag);
}

/// Logs in over POP3S with a raw AUTH PLAIN `response`, then (a fresh session) counts the
/// mailbox with the real credentials.
const POP_INJECT: &str = r#"
import base64, json, poplib, ssl, sys
host, port, user, password, ca = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
out = {}
p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=60)
raw = b"\0" + user.encode() + b"\0" + password.encode() + b"\r\nDELE 1"
try:
    out["auth"] = p._shortcmd("AUTH PLAIN " + base64.b64encode(raw).decode()).decode()
except poplib.error_proto as e:
    out["auth"] = e.args[0].decode(errors="replace")
try:
    p.quit()
except Exception:
    pass
p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=60)
p.user(user)
p.pass_(password)
out["count"] = p.stat()[0]
p.quit()
print(json.dumps(out))
"#;

#[test]
fn a_command_smuggled_in_sasl_plain_never_reaches_dovecot() {
    let Some(c) = Cluster::one_frontend("hrdp") else {
        return;
    };
    let owner = "alice@example.test";
    let tag = "keep-me";
    let got = send_one(&c, owner, tag);
    assert!(got.iter().any(|l| l.contains("2.0.0")), "{got:?}");
    delivered(c.host_of(owner), owner, tag);
    let ca = c.ca();
    let out = c
        .lab
        .client
        .ns
        .command(python())
        .arg("-c")
        .arg(POP_INJECT)
        .arg(VIP_POP.to_string())
        .arg("995")
        .arg(owner)
        .arg(c.password(owner))
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        got["auth"].as_str().unwrap().starts_with("-ERR"),
        "the response with CR/LF inside is refused: {got}"
    );
    assert!(
        got["count"].as_u64().unwrap() >= 1,
        "no DELE reached the mailbox: {got}"
    );
}

/// Bytes that are not TLS where TLS is due (port 465, or after STARTTLS): the connection
/// ends without a session, and the front-end serves the next client as before.
#[test]
fn garbage_instead_of_tls_ends_the_connection_only() {
    use std::io::{Read as _, Write as _};
    let Some(c) = Cluster::one_frontend("hrdl") else {
        return;
    };
    // Writes each of `writes` to `port` of the SMTP VIP, half a second apart, then reads
    // everything until the front-end closes.
    let exchange = |port: u16, writes: &[&[u8]]| -> Vec<u8> {
        c.lab
            .client
            .ns
            .enter(|| {
                let to = SocketAddr::new(VIP_SMTP.into(), port);
                let mut s = client::connect(to, None, Duration::from_secs(5)).unwrap();
                for (i, w) in writes.iter().enumerate() {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    s.write_all(w).unwrap();
                }
                s.set_read_timeout(Some(Duration::from_secs(70))).unwrap();
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                got
            })
            .unwrap()
    };
    let got = exchange(465, &[b"EHLO plain.example\r\nMAIL FROM:<a@b.example>\r\n"]);
    assert!(
        !String::from_utf8_lossy(&got).contains("250"),
        "no SMTP without the handshake: {got:?}"
    );
    let got = exchange(
        25,
        &[
            b"EHLO c.example\r\nSTARTTLS\r\n",
            b"\x16\x03\x01\x00\x05hello, not a ClientHello\r\nMAIL FROM:<a@b>\r\n",
        ],
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("220 2.0.0 Ready to start TLS"), "{text}");
    assert!(
        !text.contains("250 2.1.0"),
        "nothing after the failed handshake: {text}"
    );
    // The front-end is unharmed.
    let got = session(&c, &["EHLO client.example.org".into(), "QUIT".into()]);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[1].starts_with("250") && got[2].starts_with("221"),
        "{got:?}"
    );
}
