//! Reloads and a binary upgrade on the mail cluster, under SMTP and POP3 traffic: one
//! client sends a message every 50 ms through the SMTP VIP (to mailboxes on Postfix,
//! Postfix and OpenSMTPD, each with its own Message-ID), another opens a POP3 session every
//! 200 ms through the POP VIP (STLS and implicit TLS, STAT, RETR 1, QUIT), while the
//! front-end takes a service added and removed, a back-end added, re-weighted, removed and
//! restored, a pool threshold, a group, a block list, a client class, a new certificate, a
//! refused file, a binary upgrade and a reload of the new process over its control socket.
//! No connection is refused or reset, every POP3 session is answered +OK to the end, every
//! acknowledged message is in the right Maildir exactly once, and the removed back-end saw
//! no connection while it was out. Privileged.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use robustifier_lab::{
    client::{self, accepted},
    cluster::Cluster,
    frontend_config::Backend,
    mail::clients::{self, text},
    topology::{VIP_POP, VIP_SMTP, internal_v6},
};

/// Recipients of the SMTP traffic, one per back-end, in turn.
const RECIPIENTS: [&str; 3] = ["alice@example.test", "dave@example.net", "erin@example.org"];
/// Every mailbox of the cluster, where a message might land by mistake.
const MAILBOXES: [&str; 5] = [
    "alice@example.test",
    "bob@example.test",
    "carol@example.net",
    "dave@example.net",
    "erin@example.org",
];

/// POP3 sessions in a loop until the stop file exists (at most 400): one JSON line each,
/// `{"user", "mode", "ok"}` or with `"error"`: any answer that is not +OK, any refused,
/// reset or failed connection or handshake.
const POP_LOOP: &str = r#"
import json, os, poplib, ssl, sys, time
host, ca, stop = sys.argv[1], sys.argv[2], sys.argv[3]
users = json.loads(sys.argv[4])
ctx = ssl.create_default_context(cafile=ca)
def ok(resp, what):
    if not resp.startswith(b"+OK"):
        raise poplib.error_proto(what + ": " + resp.decode(errors="replace"))
for n in range(400):
    if os.path.exists(stop):
        break
    user, pw = users[n % len(users)]
    mode = "pop3s" if n % 2 else "stls"
    out = {"n": n, "user": user, "mode": mode}
    try:
        if mode == "pop3s":
            p = poplib.POP3_SSL(host, 995, context=ctx, timeout=30)
        else:
            p = poplib.POP3(host, 110, timeout=30)
        ok(p.getwelcome(), "greeting")
        if mode == "stls":
            ok(p.stls(ctx), "STLS")
        ok(p.user(user), "USER")
        ok(p.pass_(pw), "PASS")
        count, _ = p.stat()
        if count > 0:
            resp, _, _ = p.retr(1)
            ok(resp, "RETR")
        ok(p.quit(), "QUIT")
        out["ok"] = True
    except Exception as e:
        out["error"] = type(e).__name__ + ": " + str(e)
    print(json.dumps(out), flush=True)
    time.sleep(0.2)
"#;

/// The common name of the certificate a new TLS handshake with `host`:`port` sees.
const PEER_CN: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    with ctx.wrap_socket(s, server_hostname=sys.argv[1]) as t:
        subject = dict(x[0] for x in t.getpeercert()["subject"])
        print(subject["commonName"])
"#;

/// What the SMTP client saw: messages acknowledged (tag, recipient), sessions that ended
/// otherwise, connections that failed.
#[derive(Default, Debug)]
struct Seen {
    accepted: Vec<(String, &'static str)>,
    not_accepted: Vec<String>,
    failed: Vec<String>,
}

fn message(tag: &str, to: &str) -> String {
    format!(
        "From: <sender@client.example.org>\nTo: <{to}>\nSubject: reload traffic {tag}\n\
         Message-ID: <{tag}@client.example.org>\n\nreload traffic {tag}\n"
    )
}

/// The second back-end of pool be2: be2's Postfix again, over IPv6, so it delivers into
/// the same Maildirs while its connections are told apart by their source address.
fn be2_v6(weight: u32) -> Backend {
    Backend::new("be2-v6", format!("[{}]:25", internal_v6(12))).weight(weight)
}

/// Mail sessions be2's Postfix logged from the front-end's IPv6 address: sessions of the
/// be2-v6 back-end that gave a MAIL command (its health probes only say EHLO and QUIT).
/// XCLIENT puts the client's address in the session's later lines, so each `disconnect`
/// is matched to the `connect` line of the same smtpd process before it.
fn v6_sessions(c: &Cluster) -> usize {
    let v6 = format!("unknown[{}]", internal_v6(1));
    let log = c.host_of("dave@example.net").mta_log_text();
    let mut from_v6: HashMap<&str, bool> = HashMap::new();
    let mut count = 0;
    for line in log.lines() {
        let Some((process, rest)) = line.split_once("]: ") else {
            continue;
        };
        if let Some(peer) = rest.strip_prefix("connect from ") {
            from_v6.insert(process, peer.starts_with(&v6));
        } else if rest.starts_with("disconnect from ")
            && rest.contains(" mail=")
            && from_v6.remove(process).unwrap_or(false)
        {
            count += 1;
        }
    }
    count
}

fn maps(c: &Cluster) -> serde_json::Value {
    robustifier_lab::maps::json(&c.lab.pin_dir(0))
}

fn be2_v6_row(c: &Cluster) -> Option<serde_json::Value> {
    let needle = internal_v6(12).to_string();
    maps(c)["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["address"].as_str().is_some_and(|a| a.contains(&needle)))
        .cloned()
}

/// The changes the front-end's last applied reload reported.
fn last_reload(c: &mut Cluster) -> String {
    let log = c.frontend_daemon(0).expect("the front-end runs").log_text();
    log.lines()
        .rfind(|l| l.contains("reload: configuration applied"))
        .unwrap_or_default()
        .to_owned()
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    // A generous bound for a poll or a probe to come round, not a timing claim.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn peer_cn(c: &Cluster) -> String {
    let out = c
        .lab
        .client
        .ns
        .command(clients::python())
        .args(["-c", PEER_CN, &VIP_POP.to_string(), "995"])
        .arg(c.ca())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn reloads_and_an_upgrade_under_smtp_and_pop3_traffic_lose_nothing() {
    let Some(mut c) = Cluster::one_frontend("lrm") else {
        return;
    };
    let smtp = SocketAddr::new(VIP_SMTP.into(), 25);
    let alt = SocketAddr::new(VIP_SMTP.into(), 2525);
    let dir = c.lab.log_dir.clone();

    // SMTP traffic: a message every 50 ms from the client's namespace, bounded in count.
    let stop = Arc::new(AtomicBool::new(false));
    let ns = std::fs::File::open(c.lab.client.ns.path()).unwrap();
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut seen = Seen::default();
            for n in 0..1500 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let to = RECIPIENTS[n % RECIPIENTS.len()];
                let tag = format!("lrm-{n}");
                match client::send_mail(
                    smtp,
                    None,
                    "sender@client.example.org",
                    &[to],
                    &message(&tag, to),
                ) {
                    Ok(r) if accepted(&r) => seen.accepted.push((tag, to)),
                    Ok(r) => seen.not_accepted.push(format!("{tag}: {}", r.join(" | "))),
                    Err(e) => seen.failed.push(format!("{tag}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };
    // POP3 traffic: one Python process in the client's namespace, a session every 200 ms.
    let pop_stop = dir.join("pop-loop.stop");
    let users: Vec<(&str, String)> = [
        "alice@example.test",
        "carol@example.net",
        "erin@example.org",
    ]
    .iter()
    .map(|u| (*u, c.password(u)))
    .collect();
    let mut pop = c
        .lab
        .client
        .ns
        .command(clients::python())
        .args(["-c", POP_LOOP, &VIP_POP.to_string()])
        .arg(c.ca())
        .arg(&pop_stop)
        .arg(serde_json::to_string(&users).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pop_out = pop.stdout.take().unwrap();
    let pop_reader = std::thread::spawn(move || {
        BufReader::new(pop_out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });

    let mut n = 0;
    let mut reload = |c: &mut Cluster| {
        n += 1;
        let text = c.frontend_config(0);
        robustifier_lab::cli::reload_by_signal(&mut c.lab, 0, &text, n, true);
    };
    // The extra TOML, section by section, as the reloads change it.
    let alt_service = format!(
        "[[service]]\nname = \"alt\"\nprotocol = \"smtp\"\nport = 2525\nvips = [\"{VIP_SMTP}\"]\n\
         hostname = \"alt-fea.robustifier.test\"\nroutes = \"{}/smtp.map\"\n",
        dir.display()
    );
    let group = "[[group]]\nname = \"bulk\"\nshare = 0.5\ndomains = [\"bulk.example\"]\n";
    let flood = "[flood]\nblock = [\"198.19.99.0/24\"]\n";
    let class = "[classes]\npriority = [\"198.18.0.100/32\"]\n";
    let extra = |parts: &[&str]| parts.concat();

    // 1. A service added on port 2525: it answers, and its message is delivered.
    c.set_extra(0, &extra(&[&alt_service]));
    reload(&mut c);
    let r = client::send_mail_in(
        &c.lab.client.ns,
        alt,
        "sender@client.example.org",
        &["alice@example.test"],
        &message("lrm-alt", "alice@example.test"),
    );
    assert!(accepted(&r), "{r:?}");

    // 2. A back-end added to pool be2 (be2's Postfix over IPv6): it takes mail. The pool
    // picks the back-end of the lowest load per weight, so a heavy weight makes it the
    // first choice.
    let v6_before = v6_sessions(&c);
    c.set_pool_extra(1, vec![be2_v6(1000)], "");
    reload(&mut c);
    eventually("be2-v6 takes a mail session", || {
        v6_sessions(&c) > v6_before
    });

    // 3. Its weight changed: the kernel's load map shows the new weight.
    c.set_pool_extra(1, vec![be2_v6(50)], "");
    reload(&mut c);
    assert!(
        last_reload(&mut c).contains("be2-v6"),
        "{}",
        last_reload(&mut c)
    );
    eventually("be2-v6's weight is 50 in the maps", || {
        be2_v6_row(&c).is_some_and(|b| b["weight"] == 50)
    });

    // 4. The back-end removed: once it is drained, it receives no new session.
    c.set_pool_extra(1, vec![], "");
    reload(&mut c);
    eventually("be2-v6 drains", || {
        be2_v6_row(&c).is_none_or(|b| b["state"] != "up" && b["active_sessions"] == 0)
    });
    // A session in flight at the removal ends and is logged; the count then holds.
    let mut removed_at = v6_sessions(&c);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = v6_sessions(&c);
        if std::mem::replace(&mut removed_at, now) == now {
            break;
        }
        if Instant::now() > deadline {
            let needle = format!("[{}]", internal_v6(1));
            let log = c.host_of("dave@example.net").mta_log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
            let fe = c.frontend_daemon(0).unwrap().log_text();
            let fel: Vec<&str> = fe.lines().filter(|l| l.contains("be2")).collect();
            panic!(
                "be2-v6 still receives sessions after its removal: {:?}\n{}\nfront-end:\n{}",
                be2_v6_row(&c),
                lines[lines.len().saturating_sub(20)..].join("\n"),
                fel[fel.len().saturating_sub(30)..].join("\n")
            );
        }
    }

    // 5. A pool threshold: be1 now limits its sessions.
    c.set_pool_extra(0, vec![], "sessions = 40");
    reload(&mut c);
    let said = last_reload(&mut c);
    assert!(said.contains("pool be1: thresholds.sessions"), "{said}");

    // 6. A group added.
    c.set_extra(0, &extra(&[&alt_service, group]));
    reload(&mut c);
    let said = last_reload(&mut c);
    assert!(said.contains("bulk"), "{said}");

    // 7. A block list (of a network that is not the client's) in the kernel's map.
    c.set_extra(0, &extra(&[&alt_service, group, flood]));
    reload(&mut c);
    assert_eq!(maps(&c)["block"], serde_json::json!(["198.19.99.0/24"]));

    // 8. A client class: the client's own address steered as priority.
    c.set_extra(0, &extra(&[&alt_service, group, flood, class]));
    reload(&mut c);
    let priority = maps(&c)["priority"].to_string();
    assert!(priority.contains("198.18.0.100"), "{priority}");

    // 9. New certificate files: a new handshake sees the new certificate.
    assert_eq!(peer_cn(&c), "mx.robustifier.test");
    c.new_certificate("frontend2", "mx2.robustifier.test")
        .expect("a second certificate");
    reload(&mut c);
    assert_eq!(peer_cn(&c), "mx2.robustifier.test");

    // 10. A file that does not validate: refused, nothing changes.
    robustifier_lab::cli::reload_by_signal(
        &mut c.lab,
        0,
        "[frontend]\nname = \"fea\"\n[[service]]\nport = \"x\"\n",
        1,
        false,
    );
    assert_eq!(maps(&c)["block"], serde_json::json!(["198.19.99.0/24"]));
    assert_eq!(peer_cn(&c), "mx2.robustifier.test");

    // 11. The service on 2525 removed: it no longer answers.
    c.set_extra(0, &extra(&[group, flood, class]));
    reload(&mut c);
    let gone = c
        .lab
        .client
        .ns
        .enter(move || {
            client::send_mail(
                alt,
                None,
                "s@client.example.org",
                &["alice@example.test"],
                "x\n",
            )
        })
        .unwrap();
    assert!(gone.is_err(), "port 2525 still answers: {gone:?}");

    // 12. The back-end restored (with the heavy weight it was added with: selection picks
    // the lowest load per weight, so a light one may wait long for its first session).
    // Until now it received nothing.
    let v6_removed = v6_sessions(&c);
    c.set_pool_extra(1, vec![be2_v6(1000)], "");
    reload(&mut c);
    eventually("be2-v6 takes mail again", || v6_sessions(&c) > v6_removed);

    // 13. A binary upgrade: a new process serves, the old one drains and exits.
    let old_pid = c.frontend_daemon(0).expect("the front-end runs").pid();
    let successor = robustifier_lab::cli::upgrade(&c.lab, 0);
    assert_ne!(successor.pid, old_pid);

    // 14. The new process reloads over its control socket: the block list emptied.
    let file = dir.join("fea-2.toml");
    c.set_extra(0, &extra(&[group, class]));
    std::fs::write(&file, c.lab.with_control_socket(0, &c.frontend_config(0))).unwrap();
    let said = robustifier_lab::cli::ok([
        "reload".as_ref(),
        "--socket".as_ref(),
        robustifier_lab::vrrp::control_socket(&c.lab, 0).as_os_str(),
        "--config".as_ref(),
        file.as_os_str(),
    ]);
    assert!(said.contains("198.19.99.0/24 removed"), "{said}");
    assert_eq!(maps(&c)["block"], serde_json::json!([]));
    std::thread::sleep(Duration::from_millis(500));

    stop.store(true, Ordering::Relaxed);
    std::fs::write(&pop_stop, "").unwrap();
    let seen = sender.join().unwrap();
    let pop_lines = pop_reader.join().unwrap();
    let pop_status = pop.wait().unwrap();
    let mut pop_err = String::new();
    std::io::Read::read_to_string(&mut pop.stderr.take().unwrap(), &mut pop_err).unwrap();
    assert!(pop_status.success(), "the POP3 client: {pop_err}");

    assert!(
        seen.failed.is_empty(),
        "SMTP connections failed: {:?}",
        seen.failed
    );
    assert!(
        seen.not_accepted.is_empty(),
        "SMTP sessions not accepted: {:?}",
        seen.not_accepted
    );
    assert!(
        seen.accepted.len() >= 30,
        "too little SMTP traffic: {seen:?}"
    );
    let pop_failed: Vec<&String> = pop_lines
        .iter()
        .filter(|l| !l.contains("\"ok\": true"))
        .collect();
    assert!(
        pop_failed.is_empty(),
        "POP3 sessions failed: {pop_failed:?}"
    );
    assert!(
        pop_lines.len() >= 10,
        "too little POP3 traffic: {pop_lines:?}"
    );
    assert_eq!(
        v6_removed, removed_at,
        "be2-v6 received sessions while it was removed"
    );

    // Every acknowledged message is in its recipient's Maildir, once, and nowhere else.
    let mut expected: Vec<(String, &str)> = seen.accepted.clone();
    expected.push(("lrm-alt".into(), "alice@example.test"));
    let found = |c: &Cluster| {
        let mut at: HashMap<String, Vec<&'static str>> = HashMap::new();
        for mailbox in MAILBOXES {
            for m in c.host_of(mailbox).messages(mailbox) {
                let text = String::from_utf8_lossy(&m).into_owned();
                if let Some(id) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: <"))
                    .and_then(|l| l.split('@').next())
                {
                    at.entry(id.to_owned()).or_default().push(mailbox);
                }
            }
        }
        at
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let at = loop {
        let at = found(&c);
        if expected.iter().all(|(tag, _)| at.contains_key(tag)) {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged but not delivered: {:?}",
            expected
                .iter()
                .filter(|(tag, _)| !at.contains_key(tag))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for (tag, to) in &expected {
        assert_eq!(at[tag], [*to], "{tag}");
    }
    drop(successor);
}
