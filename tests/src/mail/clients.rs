//! Real mail clients for lab tests (swaks, Python's poplib) and the checks on what arrives:
//! shared by the back-end tests and the end-to-end tests through the proxy.

use std::{net::SocketAddr, path::Path, process::Output, time::Duration};

use super::MailHost;
use crate::Netns;

/// swaks in `ns`, with a generous timeout and a fixed HELO name.
pub fn swaks(ns: &Netns, helo: &str, args: &[&str]) -> Output {
    ns.command("swaks")
        .args(["--timeout", "60", "--helo", helo])
        .args(args)
        .output()
        .expect("run swaks")
}

/// stdout and stderr of a finished command, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A test message for `to`, tagged `tag` in its Message-ID. It carries the headers the MTAs
/// would otherwise add (Date, Message-ID), a line that needs dot-stuffing, trailing blanks,
/// a tab and an empty line: what must arrive unchanged.
pub fn message(tag: &str, to: &str) -> String {
    format!(
        "From: Sender <sender@client.example.org>\r\n\
         To: <{to}>\r\n\
         Subject: robustifier lab {tag}\r\n\
         Date: Mon, 02 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{tag}@client.example.org>\r\n\
         \r\n\
         Hello {to},\r\n\
         .a line that starts with a dot\r\n\
         ..and one with two\r\n\
         trailing blanks   \r\n\
         \ta tab\r\n\
         \r\n\
         -- \r\n\
         end of {tag}\r\n"
    )
}

/// Writes `msg` to a file under `dir` for swaks's `--data`. swaks ends the data with
/// `CRLF . CRLF` after the file's last line, so the file leaves out the final line end.
pub fn data_file(dir: &Path, tag: &str, msg: &str) -> String {
    let path = dir.join(format!("{tag}.eml"));
    std::fs::write(&path, msg.strip_suffix("\r\n").unwrap_or(msg)).unwrap();
    format!("@{}", path.display())
}

/// Sends the lab's message `tag` (see [`message`]) to `to` through `server` with swaks in
/// `ns` (HELO `helo`, the data file under `dir`) and `extra` options; asserts that swaks
/// succeeded and returns its transcript.
pub fn swaks_deliver(
    ns: &Netns,
    helo: &str,
    dir: &Path,
    server: std::net::SocketAddr,
    to: &str,
    tag: &str,
    extra: &[&str],
) -> String {
    let msg = message(tag, to);
    let data = data_file(dir, tag, &msg);
    let server = server.to_string();
    let mut args = vec![
        "--server",
        &server,
        "--from",
        "sender@client.example.org",
        "--to",
        to,
        "--data",
        &data,
    ];
    args.extend_from_slice(extra);
    let out = swaks(ns, helo, &args);
    let t = text(&out);
    assert!(out.status.success(), "swaks {args:?} failed:\n{t}");
    t
}

/// Checks that `delivered` is `sent` (CRLF turned into the Maildir's LF) below trace headers
/// the MTA added, and returns those headers.
pub fn check_delivered(delivered: &[u8], sent: &str) -> String {
    let sent_lf = sent.replace("\r\n", "\n");
    let delivered_text = String::from_utf8_lossy(delivered);
    assert!(
        delivered.ends_with(sent_lf.as_bytes()),
        "delivered message does not end with the sent one byte for byte:\n--- sent\n{sent_lf}--- delivered\n{delivered_text}"
    );
    let added = &delivered_text[..delivered.len() - sent_lf.len()];
    for line in added.lines() {
        // Header names are case-insensitive (Exim writes "Return-path:").
        let lower = line.to_ascii_lowercase();
        let trace = [
            "return-path:",
            "x-original-to:",
            "delivered-to:",
            "received:",
        ]
        .iter()
        .any(|h| lower.starts_with(h))
            || line.starts_with([' ', '\t']);
        assert!(trace, "unexpected added line {line:?} in\n{delivered_text}");
    }
    added.to_owned()
}

/// The message in `messages` whose Message-ID is `tag`'s.
pub fn find<'a>(messages: &'a [Vec<u8>], tag: &str) -> &'a [u8] {
    let needle = format!("Message-ID: <{tag}@");
    messages
        .iter()
        .find(|m| String::from_utf8_lossy(m).contains(&needle))
        .unwrap_or_else(|| panic!("no message {tag} among {}", messages.len()))
}

/// Waits for `tag` in `to`'s Maildir on `host`, checks it byte for byte; returns the trace
/// headers the MTA added.
pub fn delivered(host: &MailHost, to: &str, tag: &str) -> String {
    let sent = message(tag, to);
    let needle = format!("Message-ID: <{tag}@");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let msgs = host.messages(to);
        if msgs
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains(&needle))
        {
            return check_delivered(find(&msgs, tag), &sent);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{tag} never reached {to} on {}:\n{}",
            host.name(),
            host.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Python's poplib: logs in over `mode` (plain, stls, pop3s),
/// LISTs and RETRs everything; prints one JSON object.
pub const POP_CLIENT: &str = r#"
import base64, json, poplib, ssl, sys
host, port, mode, user, password, ca = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
out = {}
try:
    if mode == "pop3s":
        p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=60)
    else:
        p = poplib.POP3(host, int(port), timeout=60)
    out["welcome"] = p.getwelcome().decode()
    out["capa"] = sorted(p.capa().keys())
    if mode == "stls":
        p.stls(ctx)
        out["tls"] = p.sock.version()
    elif mode == "pop3s":
        out["tls"] = p.sock.version()
    p.user(user)
    p.pass_(password)
    resp, listing, _ = p.list()
    out["list"] = [l.decode() for l in listing]
    out["messages"] = []
    for entry in out["list"]:
        n = int(entry.split()[0])
        resp, lines, octets = p.retr(n)
        out["messages"].append(base64.b64encode(b"".join(l + b"\n" for l in lines)).decode())
    p.quit()
except poplib.error_proto as e:
    out["error"] = e.args[0].decode(errors="replace")
print(json.dumps(out))
"#;

/// Debian's interpreter (installed by setup), not whatever a PATH shim offers.
pub fn python() -> &'static str {
    // Debian's interpreter (installed by setup), not whatever a PATH shim offers.
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Runs the poplib client in `ns` against `addr` over `mode` (plain, stls, pop3s).
pub fn poplib(
    ns: &Netns,
    addr: SocketAddr,
    mode: &str,
    user: &str,
    pw: &str,
    ca: &Path,
) -> serde_json::Value {
    let out = ns
        .command(python())
        .arg("-c")
        .arg(POP_CLIENT)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(mode)
        .arg(user)
        .arg(pw)
        .arg(ca)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "poplib client failed:\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

pub fn b64decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
