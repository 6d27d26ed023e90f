//! Kept legs through whole sessions: the client side is an in-memory stream, the back-end
//! a scripted SMTP server on loopback that records each connection's commands.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
};

use crate::{
    backend::PoolSet, config::Config, service::ServiceContext, smtp::session::Session, stream::Conn,
};

/// How the scripted back-end behaves.
#[derive(Clone, Copy, Default)]
struct Script {
    /// Offers XCLIENT with every attribute (else no identity is passed).
    xclient: bool,
    /// Answers the end of data with 554 instead of 250.
    refuse_message: bool,
    /// Closes each connection right after accepting a message, as a back-end whose idle
    /// timeout ran out would once the leg was kept.
    close_after_message: bool,
    /// Refuses a second XCLIENT on a connection, as Postfix does (it checks the
    /// authorisation against the address the first one set).
    one_xclient: bool,
    /// Holds the reply to the end of data this long (milliseconds), so sessions overlap.
    slow_dot_ms: u64,
}

#[derive(Default)]
struct Seen {
    /// Each connection's command lines, in order of connection.
    conns: Vec<Vec<String>>,
    /// Whether each MAIL arrived with the RCPT after it already in the same read.
    mail_with_rcpt: Vec<bool>,
    messages: usize,
}

struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// Told each time the back-end closes a connection by itself.
    closed: Arc<tokio::sync::Notify>,
}

async fn backend(script: Script) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let closed = Arc::new(tokio::sync::Notify::new());
    let (s2, c2) = (Arc::clone(&seen), Arc::clone(&closed));
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let n = {
                let mut seen = s2.lock().unwrap();
                seen.conns.push(Vec::new());
                seen.conns.len() - 1
            };
            let (seen, closed) = (Arc::clone(&s2), Arc::clone(&c2));
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut rd = BufReader::new(rd);
                let _ = wr.write_all(b"220 be ESMTP\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_owned();
                    let upper = cmd.to_ascii_uppercase();
                    {
                        let mut seen = seen.lock().unwrap();
                        seen.conns[n].push(cmd.clone());
                        if upper.starts_with("MAIL") {
                            let with = rd.buffer().starts_with(b"RCPT");
                            seen.mail_with_rcpt.push(with);
                        }
                    }
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        if script.xclient {
                            b"250-be\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PROTO HELO LOGIN PORT DESTADDR DESTPORT\r\n250 8BITMIME\r\n"
                        } else {
                            b"250-be\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
                        }
                    } else if upper.starts_with("XCLIENT")
                        && script.one_xclient
                        && seen.lock().unwrap().conns[n]
                            .iter()
                            .filter(|l| l.starts_with("XCLIENT"))
                            .count()
                            > 1
                    {
                        b"550 5.7.0 Error: insufficient authorization\r\n"
                    } else if upper.starts_with("XCLIENT") {
                        b"220 be ESMTP\r\n"
                    } else if upper.starts_with("MAIL FROM:<REFUSED@") {
                        b"553 5.7.1 sender refused\r\n"
                    } else if upper.starts_with("RCPT")
                        && seen.lock().unwrap().conns[n]
                            .iter()
                            .rev()
                            .nth(1)
                            .is_some_and(|l| l.starts_with("MAIL FROM:<refused@"))
                    {
                        b"503 5.5.1 Error: need MAIL command\r\n"
                    } else if upper.starts_with("AUTH PLAIN") {
                        b"235 2.7.0 Authentication successful\r\n"
                    } else if upper == "DATA" {
                        let _ = wr.write_all(b"354 go ahead\r\n").await;
                        loop {
                            let mut l = Vec::new();
                            if rd.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if l == b".\r\n" {
                                break;
                            }
                        }
                        seen.lock().unwrap().conns[n].push(".".into());
                        if script.slow_dot_ms > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(
                                script.slow_dot_ms,
                            ))
                            .await;
                        }
                        if script.refuse_message {
                            b"554 5.7.1 message refused\r\n"
                        } else {
                            seen.lock().unwrap().messages += 1;
                            if script.close_after_message {
                                let _ = wr.write_all(b"250 2.0.0 queued as FAKE\r\n").await;
                                drop(wr);
                                closed.notify_one();
                                return;
                            }
                            b"250 2.0.0 queued as FAKE\r\n"
                        }
                    } else if upper == "QUIT" {
                        let _ = wr.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 Ok\r\n"
                    };
                    if wr.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Backend { addr, seen, closed }
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rb-idle-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A service routing a.example to pool "a" of the one back-end at `addr`.
fn service(tag: &str, addr: SocketAddr, pool_keys: &str, service_keys: &str) -> ServiceContext {
    let dir = tempdir(tag);
    std::fs::write(dir.join("routes"), "a.example a\n").unwrap();
    let text = format!(
        "[frontend]\nname = \"fe\"\n[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\nroutes = \"routes\"\n{service_keys}\n\
         [[pool]]\nname = \"a\"\n{pool_keys}\nhealth = {{ fall = 1 }}\nbackend = [{{ name = \"a0\", address = \"{addr}\" }}]\n"
    );
    let cfg = Config::parse(&dir.join("test.toml"), &text).unwrap();
    let pools = Arc::new(PoolSet::standalone(&cfg).unwrap());
    let groups = Arc::new(crate::backend::groups::Groups::new(cfg.groups.clone()));
    ServiceContext::new(&cfg.services[0], pools, None, groups).unwrap()
}

/// Runs one session of a client at `peer` sending `input`; returns what it was answered.
async fn session(env: &ServiceContext, peer: &str, input: &str) -> String {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    client.write_all(input.as_bytes()).await.unwrap();
    // The client sends nothing more: a script without QUIT is a client that went away.
    client.shutdown().await.unwrap();
    let local: SocketAddr = "198.18.0.25:25".parse().unwrap();
    let s = Session::new(
        Conn::Plain(server),
        env,
        peer.parse().unwrap(),
        local,
        "t".into(),
    );
    tokio::time::timeout(std::time::Duration::from_secs(20), s.run())
        .await
        .expect("session finished")
        .unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    out
}

fn message(helo: &str) -> String {
    format!(
        "EHLO {helo}\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nSubject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    )
}

fn idle_of(env: &ServiceContext) -> (u32, usize) {
    let slot = env.pools.board.slot(0).unwrap();
    (
        slot.idle.load(std::sync::atomic::Ordering::Relaxed),
        env.pools.idle.count(0),
    )
}

#[tokio::test]
async fn a_kept_leg_serves_the_next_client_under_that_clients_identity_only() {
    let be = backend(Script {
        xclient: true,
        ..Script::default()
    })
    .await;
    let env = service("reuse", be.addr, "identity = \"xclient\"", "");
    let out = session(&env, "198.18.0.1:40001", &message("one.example")).await;
    assert!(out.contains("250 2.0.0 queued as FAKE"), "{out}");
    assert_eq!(idle_of(&env), (1, 1), "the leg is kept, as an idle leg");
    let active = env.pools.board.record_for(0, 0).unwrap().active_sessions;
    assert_eq!(active, 0, "a kept leg is not a session");
    let out = session(&env, "198.18.0.2:40002", &message("two.example")).await;
    assert!(out.contains("250 2.0.0 queued as FAKE"), "{out}");
    let seen = be.seen.lock().unwrap();
    assert_eq!(
        seen.conns.len(),
        1,
        "one connection for both: {:?}",
        seen.conns
    );
    assert_eq!(seen.messages, 2);
    let xclients: Vec<&String> = seen.conns[0]
        .iter()
        .filter(|l| l.starts_with("XCLIENT"))
        .collect();
    assert_eq!(xclients.len(), 2, "{:?}", seen.conns[0]);
    let second = xclients[1];
    for want in [
        "ADDR=198.18.0.2",
        "PORT=40002",
        "HELO=two.example",
        "LOGIN=[UNAVAILABLE]",
        "NAME=[UNAVAILABLE]",
        "DESTADDR=198.18.0.25",
        "DESTPORT=25",
    ] {
        assert!(second.split(' ').any(|a| a == want), "{want} in {second}");
    }
    assert!(!second.contains("198.18.0.1") && !second.contains("one.example"));
    // The leg was kept as its finished transaction left it (no RSET: nothing was open),
    // and the new client's XCLIENT and EHLO came first on it.
    let after_first_dot = seen.conns[0]
        .iter()
        .skip_while(|l| *l != ".")
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(after_first_dot[1], *second);
    assert_eq!(after_first_dot[2], "EHLO two.example");
    assert!(
        !seen.conns[0].iter().any(|l| l == "RSET"),
        "{:?}",
        seen.conns
    );
}

#[tokio::test]
async fn a_leg_left_inside_a_transaction_is_reset_before_it_is_kept() {
    let be = backend(Script::default()).await;
    let env = service("open", be.addr, "identity = \"none\"", "");
    // The client quits after its recipient: the back-end holds MAIL and RCPT.
    let out = session(
        &env,
        "198.18.0.1:40001",
        "EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("221"), "{out}");
    assert_eq!(idle_of(&env), (1, 1), "the reset leg is kept");
    let out = session(&env, "198.18.0.2:40002", &message("two.example")).await;
    assert!(out.contains("250 2.0.0 queued as FAKE"), "{out}");
    let seen = be.seen.lock().unwrap();
    assert_eq!(seen.conns.len(), 1, "{:?}", seen.conns);
    let lines = &seen.conns[0];
    let rset = lines.iter().position(|l| l == "RSET");
    let mails: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("MAIL"))
        .collect();
    assert_eq!(mails.len(), 2, "{lines:?}");
    assert!(
        rset.is_some_and(|r| mails[0] < r && r < mails[1]),
        "RSET between the open transaction and the next: {lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "RSET").count(),
        1,
        "{lines:?}"
    );
}

#[tokio::test]
async fn mail_and_the_first_rcpt_go_in_one_write_and_a_refused_mail_is_the_answer() {
    let be = backend(Script::default()).await;
    let env = service("pipe", be.addr, "identity = \"none\"", "");
    let out = session(
        &env,
        "198.18.0.1:40001",
        "EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nRCPT TO:<v@a.example>\r\nRSET\r\n\
         MAIL FROM:<refused@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    let codes: Vec<&str> = out
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect();
    // The second transaction's RCPT gets the back-end's refusal of MAIL, not its 503.
    assert_eq!(
        codes,
        [
            "220", "250", "250", "250", "250", "250", "250", "553", "221"
        ],
        "{out}"
    );
    let seen = be.seen.lock().unwrap();
    assert_eq!(seen.mail_with_rcpt, [true, true], "{:?}", seen.conns);
}

#[tokio::test]
async fn a_leg_the_backend_closed_while_kept_is_never_used_and_not_charged() {
    let be = backend(Script {
        xclient: true,
        close_after_message: true,
        ..Script::default()
    })
    .await;
    let env = service("closed", be.addr, "identity = \"xclient\"", "");
    let closed = be.closed.notified();
    let out = session(&env, "198.18.0.1:40001", &message("one.example")).await;
    assert!(out.contains("250 2.0.0 queued as FAKE"), "{out}");
    closed.await;
    let out = session(&env, "198.18.0.2:40002", &message("two.example")).await;
    assert!(out.contains("250 2.0.0 queued as FAKE"), "{out}");
    let seen = be.seen.lock().unwrap();
    assert_eq!(seen.conns.len(), 2, "a fresh leg: {:?}", seen.conns);
    assert!(
        seen.conns[1].iter().any(|l| l.starts_with("MAIL")),
        "the message went on the fresh leg: {:?}",
        seen.conns
    );
    // One failure (fall = 1) would have taken the back-end down.
    let state = env.pools.board.record_for(0, 0).unwrap().state;
    assert_eq!(state, robustifier_common::BACKEND_UP);
}

#[tokio::test]
async fn legs_of_aborted_transactions_and_logins_are_not_kept() {
    // The back-end refused the message: its transaction state is not trusted.
    let be = backend(Script {
        refuse_message: true,
        ..Script::default()
    })
    .await;
    let env = service("refused", be.addr, "identity = \"none\"", "");
    let out = session(&env, "198.18.0.1:40001", &message("one.example")).await;
    assert!(out.contains("554 5.7.1"), "{out}");
    assert_eq!(idle_of(&env), (0, 0));
    session(&env, "198.18.0.1:40002", &message("one.example")).await;
    assert_eq!(be.seen.lock().unwrap().conns.len(), 2);

    // The client vanished in the middle of the message.
    let be = backend(Script::default()).await;
    let env = service("vanished", be.addr, "identity = \"none\"", "");
    session(
        &env,
        "198.18.0.1:40001",
        "EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nhalf a mess",
    )
    .await;
    assert_eq!(idle_of(&env), (0, 0));
    session(&env, "198.18.0.1:40002", &message("one.example")).await;
    assert_eq!(be.seen.lock().unwrap().conns.len(), 2);

    // The back-end holds a user's login on the leg.
    let be = backend(Script::default()).await;
    let env = service(
        "login",
        be.addr,
        "identity = \"none\"",
        "auth = true\nplaintext_auth = true",
    );
    let out = session(
        &env,
        "198.18.0.1:40001",
        "EHLO c\r\nAUTH PLAIN AGFsaWNlQGEuZXhhbXBsZQBzZWNyZXQ=\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("235"), "{out}");
    assert_eq!(idle_of(&env), (0, 0));
    assert_eq!(
        be.seen.lock().unwrap().conns[0].last().map(String::as_str),
        Some("QUIT")
    );
}

#[tokio::test]
async fn kept_legs_stay_within_the_cap() {
    let be = backend(Script {
        slow_dot_ms: 300,
        ..Script::default()
    })
    .await;
    let env = Arc::new(service(
        "cap",
        be.addr,
        "identity = \"none\"\nidle_legs = 2",
        "",
    ));
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let env = Arc::clone(&env);
            tokio::spawn(async move {
                session(&env, &format!("198.18.0.{}:4000{i}", i + 1), &message("c")).await
            })
        })
        .collect();
    for r in runs {
        assert!(r.await.unwrap().contains("250 2.0.0 queued"));
    }
    assert_eq!(
        be.seen.lock().unwrap().conns.len(),
        6,
        "the sessions overlapped"
    );
    assert_eq!(idle_of(&env), (2, 2));
    // The rest were closed politely.
    let quits = be
        .seen
        .lock()
        .unwrap()
        .conns
        .iter()
        .filter(|c| c.last().is_some_and(|l| l == "QUIT"))
        .count();
    assert_eq!(quits, 4);
}

#[tokio::test]
async fn draining_or_removing_a_backend_closes_its_kept_legs() {
    let be = backend(Script::default()).await;
    let env = service("drain", be.addr, "identity = \"none\"", "");
    session(&env, "198.18.0.1:40001", &message("c")).await;
    assert_eq!(idle_of(&env), (1, 1));
    env.pools.board.set_drained("a0", true).unwrap();
    env.pools.idle.sweep();
    assert_eq!(idle_of(&env), (0, 0));

    env.pools.board.set_drained("a0", false).unwrap();
    session(&env, "198.18.0.1:40001", &message("c")).await;
    assert_eq!(idle_of(&env), (1, 1));
    env.pools.idle.close_backend(0);
    assert_eq!(idle_of(&env), (0, 0));
}

#[tokio::test]
async fn proxy_v2_legs_and_a_zero_cap_are_never_kept() {
    let be = backend(Script::default()).await;
    let env = service("zero", be.addr, "identity = \"none\"\nidle_legs = 0", "");
    session(&env, "198.18.0.1:40001", &message("c")).await;
    assert_eq!(idle_of(&env), (0, 0));
    assert_eq!(
        be.seen.lock().unwrap().conns[0].last().map(String::as_str),
        Some("QUIT")
    );
    // A pool that keeps legs, but not for a back-end told by PROXY v2.
    let env = service("pv2", be.addr, "identity = \"none\"", "");
    let backend = env.pools.board.slots()[0].settings().backend.clone();
    let mut c = crate::backend::Candidate {
        pool: Arc::clone(env.pools.pool("a").unwrap()),
        backend,
    };
    assert!(super::IdleLegs::keeps(&c));
    Arc::make_mut(&mut c.backend).identity = crate::config::Identity::ProxyV2;
    assert!(!super::IdleLegs::keeps(&c));
}

#[tokio::test]
async fn a_backend_that_refuses_a_second_xclient_gets_no_kept_legs() {
    let be = backend(Script {
        xclient: true,
        one_xclient: true,
        ..Script::default()
    })
    .await;
    let env = service("once", be.addr, "identity = \"xclient\"", "");
    for (i, helo) in ["one.example", "two.example", "three.example"]
        .iter()
        .enumerate()
    {
        let out = session(&env, &format!("198.18.0.{}:4000{i}", i + 1), &message(helo)).await;
        assert!(out.contains("250 2.0.0 queued as FAKE"), "{out}");
    }
    let seen = be.seen.lock().unwrap();
    let xclients = |c: &Vec<String>| c.iter().filter(|l| l.starts_with("XCLIENT")).count();
    // The kept leg was tried once and refused; then no leg was kept.
    assert_eq!(seen.conns.len(), 3, "{:?}", seen.conns);
    assert_eq!(xclients(&seen.conns[0]), 2);
    for c in &seen.conns[1..] {
        assert_eq!(xclients(c), 1, "{c:?}");
        assert_eq!(c.last().map(String::as_str), Some("QUIT"), "{c:?}");
    }
    assert!(seen.conns[1].iter().any(|l| l.contains("ADDR=198.18.0.2")));
    let state = env.pools.board.record_for(0, 0).unwrap().state;
    assert_eq!(state, robustifier_common::BACKEND_UP, "not charged");
}
