//! Session scripts against scripted back-ends on loopback: the client side is an in-memory
//! stream, the back-ends are real TCP listeners that record what they were sent.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
};

use super::*;
use crate::{backend::PoolSet, config::Config};

/// How a scripted back-end misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Closes the connection at the end of data instead of replying.
    DropAfterData,
    /// Greets with 554.
    RefuseGreeting,
    /// Answers RCPT with 421 and closes, like a back-end shutting down.
    CloseAtRcpt,
    /// Offers XCLIENT and, like Postfix, refuses a HELO value over 255 octets with 501.
    XclientStrict,
    /// Offers XCLIENT and refuses every XCLIENT command with 501.
    XclientRefuse,
    /// Offers XCLIENT without ADDR.
    XclientNoAddr,
    /// Offers no CHUNKING and refuses DATA with 554 (the transaction stays open until
    /// RSET, as in Postfix).
    RefuseData,
    /// Refuses the last BDAT chunk with 554.
    RefuseBdat,
    /// Offers no CHUNKING: messages come as DATA.
    NoChunking,
    /// Takes half a second to answer the end of data (a content filter, say).
    SlowEndOfData,
    /// Closes the connection when MAIL arrives.
    CloseAtMail,
    /// Its first connection closes at the second RCPT; later ones work.
    FirstLegCloseAtSecondRcpt,
}

#[derive(Default)]
struct Recorded {
    /// Every command line received.
    lines: Vec<String>,
    /// Every message received (data without the final dot line).
    messages: Vec<Vec<u8>>,
    /// BDAT chunks of the message in progress.
    chunks: Vec<u8>,
}

async fn backend(fault: Fault) -> (SocketAddr, Arc<Mutex<Recorded>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Arc::new(Mutex::new(Recorded::default()));
    let r = Arc::clone(&rec);
    tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            accepted += 1;
            let first = accepted == 1;
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let mut rcpts = 0;
                let (rd, mut wr) = s.into_split();
                let mut rd = BufReader::new(rd);
                if fault == Fault::RefuseGreeting {
                    let _ = wr.write_all(b"554 5.3.2 not today\r\n").await;
                    return;
                }
                let _ = wr.write_all(b"220 fake ESMTP\r\n").await;
                let mut line = String::new();
                // Like Postfix: a second MAIL before RSET or the end of data is refused.
                let mut in_tx = false;
                loop {
                    line.clear();
                    if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_owned();
                    r.lock().unwrap().lines.push(cmd.clone());
                    let upper = cmd.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        match fault {
                            Fault::XclientStrict | Fault::XclientRefuse => b"250-fake\r\n250-PIPELINING\r\n250-XCLIENT ADDR PORT NAME PROTO HELO LOGIN\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
                            Fault::XclientNoAddr => b"250-fake\r\n250-PIPELINING\r\n250-XCLIENT NAME HELO\r\n250 8BITMIME\r\n",
                            Fault::RefuseData | Fault::NoChunking => b"250-fake\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
                            _ => b"250-fake\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
                        }
                    } else if upper.starts_with("XCLIENT ") {
                        let helo_len = cmd
                            .split(' ')
                            .find_map(|a| a.strip_prefix("HELO="))
                            .map_or(0, str::len);
                        if fault == Fault::XclientRefuse || helo_len > 255 {
                            b"501 5.5.4 Bad HELO syntax\r\n"
                        } else {
                            b"220 fake ESMTP\r\n"
                        }
                    } else if upper.starts_with("MAIL") && fault == Fault::CloseAtMail {
                        return;
                    } else if upper.starts_with("MAIL") {
                        if in_tx {
                            b"503 5.5.1 Error: nested MAIL command\r\n"
                        } else {
                            in_tx = true;
                            b"250 2.1.0 Ok\r\n"
                        }
                    } else if upper == "RSET" {
                        in_tx = false;
                        b"250 2.0.0 Ok\r\n"
                    } else if upper == "DATA" && fault == Fault::RefuseData {
                        b"554 5.5.1 Error: no valid recipients\r\n"
                    } else if let Some(args) = upper.strip_prefix("BDAT ") {
                        let mut words = args.split(' ');
                        let n: usize = words.next().unwrap().parse().unwrap();
                        let last = words.next() == Some("LAST");
                        let mut chunk = vec![0u8; n];
                        if rd.read_exact(&mut chunk).await.is_err() {
                            return;
                        }
                        let whole = {
                            let mut rec = r.lock().unwrap();
                            rec.chunks.extend_from_slice(&chunk);
                            last.then(|| std::mem::take(&mut rec.chunks))
                        };
                        if let Some(m) = whole {
                            in_tx = false;
                            if fault == Fault::RefuseBdat {
                                b"554 5.7.1 Error: content refused\r\n"
                            } else {
                                r.lock().unwrap().messages.push(m);
                                if fault == Fault::DropAfterData {
                                    return;
                                }
                                if fault == Fault::SlowEndOfData {
                                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                                }
                                b"250 2.0.0 queued as FAKE\r\n"
                            }
                        } else {
                            b"250 2.0.0 chunk received\r\n"
                        }
                    } else if upper.starts_with("RCPT")
                        && fault == Fault::FirstLegCloseAtSecondRcpt
                        && first
                        && {
                            rcpts += 1;
                            rcpts == 2
                        }
                    {
                        return;
                    } else if upper.starts_with("RCPT") && fault == Fault::CloseAtRcpt {
                        let _ = wr.write_all(b"421 4.3.2 shutting down\r\n").await;
                        return;
                    } else if upper.starts_with("RCPT") && upper.contains("UNKNOWN") {
                        b"550 5.1.1 no such user\r\n"
                    } else if upper.starts_with("AUTH PLAIN") {
                        // "\0alice@a.example\0secret"
                        if cmd.ends_with("AGFsaWNlQGEuZXhhbXBsZQBzZWNyZXQ=") {
                            b"235 2.7.0 Authentication successful\r\n"
                        } else {
                            b"535 5.7.8 Authentication credentials invalid\r\n"
                        }
                    } else if upper == "DATA" {
                        let _ = wr.write_all(b"354 go ahead\r\n").await;
                        let mut msg = Vec::new();
                        loop {
                            let mut l = Vec::new();
                            if rd.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if l == b".\r\n" {
                                break;
                            }
                            // Recorded as meant, like a BDAT message: without stuffing.
                            msg.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
                        }
                        r.lock().unwrap().messages.push(msg);
                        in_tx = false;
                        if fault == Fault::DropAfterData {
                            return;
                        }
                        if fault == Fault::SlowEndOfData {
                            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        }
                        b"250 2.0.0 queued as FAKE\r\n"
                    } else if upper == "QUIT" {
                        let _ = wr.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    if wr.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rec)
}

/// A service whose routing map sends a.example to pool "a" and b.example to pool "b".
fn env(dir: &Path, a: &[SocketAddr], b: &[SocketAddr], extra: &str) -> ServiceContext {
    env_pools(dir, a, b, extra, "")
}

/// [`env`] with `pool_extra` keys in both pool sections.
fn env_pools(
    dir: &Path,
    a: &[SocketAddr],
    b: &[SocketAddr],
    extra: &str,
    pool_extra: &str,
) -> ServiceContext {
    let pool_extra = if pool_extra.contains("identity") {
        pool_extra.to_owned()
    } else {
        format!("identity = \"none\"\n{pool_extra}")
    };
    let routes = dir.join("routes");
    std::fs::write(
        &routes,
        "a.example a\nb.example b\nnobody@a.example reject\n",
    )
    .unwrap();
    let list = |addrs: &[SocketAddr], p: &str| {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ name = \"{p}{i}\", address = \"{a}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A test that made a certificate in `dir` gets it named in the config.
    let tls = if dir.join("cert.pem").exists() {
        "[tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n"
    } else {
        ""
    };
    let size = if extra.contains("max_message_size") {
        ""
    } else {
        "max_message_size = 4096\n"
    };
    let text = format!(
        "[frontend]\nname = \"fe\"\n{tls}[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\nroutes = \"routes\"\n{size}{extra}\n\
         [[pool]]\nname = \"a\"\n{pool_extra}\nbackend = [{}]\n[[pool]]\nname = \"b\"\n{pool_extra}\nbackend = [{}]\n",
        list(a, "a"),
        list(b, "b")
    );
    let cfg = Config::parse(&dir.join("test.toml"), &text).unwrap();
    let pools = Arc::new(PoolSet::standalone(&cfg).unwrap());
    let groups = Arc::new(crate::backend::groups::Groups::new(cfg.groups.clone()));
    ServiceContext::new(&cfg.services[0], pools, None, groups).unwrap()
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "rb-session-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a session with `input` pipelined from the client and returns all it answered.
async fn converse(env: &ServiceContext, input: &[u8]) -> String {
    converse_from(env, "198.18.0.100:40000".parse().unwrap(), input).await
}

/// [`converse`] for a client at `peer`.
async fn converse_from(env: &ServiceContext, peer: SocketAddr, input: &[u8]) -> String {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    client.write_all(input).await.unwrap();
    let local: SocketAddr = "198.18.0.25:25".parse().unwrap();
    let session = Session::new(Conn::Plain(server), env, peer, local, "t1".into());
    tokio::time::timeout(std::time::Duration::from_secs(20), session.run())
        .await
        .expect("session finished")
        .unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    out
}

fn codes(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect()
}

#[tokio::test]
async fn message_is_relayed_and_acknowledged_by_the_backend() {
    // A back-end with CHUNKING gets the message as one BDAT LAST, stuffing removed; one
    // without gets DATA, stuffing kept (its mock removes it, as a server does).
    for (fault, verb) in [(Fault::None, "BDAT 27 LAST"), (Fault::NoChunking, "DATA")] {
        let (a, rec) = backend(fault).await;
        let dir = tempdir("relay");
        let env = env(&dir, &[a], &[], "");
        let out = converse(
            &env,
            b"EHLO client.example\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n",
        )
        .await;
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "354", "250", "221"],
            "{out}"
        );
        assert!(
            out.contains("250 2.0.0 queued as FAKE"),
            "the back-end's reply is relayed: {out}"
        );
        let rec = rec.lock().unwrap();
        assert_eq!(
            rec.messages,
            [b"Subject: hi\r\n\r\nbody\r\n.dot\r\n".to_vec()],
            "{verb}"
        );
        assert!(rec.lines.iter().any(|l| l == "MAIL FROM:<s@x.example>"));
        assert!(
            rec.lines.iter().any(|l| l == verb),
            "{verb}: {:?}",
            rec.lines
        );
        let other = if verb == "DATA" { "BDAT" } else { "DATA" };
        assert!(
            !rec.lines.iter().any(|l| l.starts_with(other)),
            "{verb}: {:?}",
            rec.lines
        );
    }
}

#[tokio::test]
async fn a_pool_with_data_as_bdat_off_relays_data_as_data() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("nobdat");
    let env = env_pools(&dir, &[a], &[], "", "data_as_bdat = false");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\n..m\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    let rec = rec.lock().unwrap();
    assert_eq!(rec.messages, [b".m\r\n".to_vec()]);
    assert!(rec.lines.iter().any(|l| l == "DATA"), "{:?}", rec.lines);
    assert!(
        !rec.lines.iter().any(|l| l.starts_with("BDAT")),
        "the back-end offers CHUNKING, the pool says no: {:?}",
        rec.lines
    );
}

#[tokio::test]
async fn a_message_longer_than_what_is_held_goes_on_as_data() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("long");
    let env = env(&dir, &[a], &[], "max_message_size = 1000000");
    // Lines of 100 octets, some stuffed, past the held limit by more than one read.
    let line = format!("{}\r\n", "x".repeat(98));
    let stuffed = format!(".{}\r\n", ".y".repeat(49));
    let mut body = String::new();
    let mut meant = String::new();
    while body.len() <= super::message::HELD_MESSAGE + crate::stream::HOLD_MAX + 1000 {
        body.push_str(&line);
        body.push_str(&stuffed);
        meant.push_str(&line);
        meant.push_str(&stuffed[1..]);
    }
    let input = format!(
        "EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\n{body}.\r\n\
         MAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nshort\r\n.\r\nQUIT\r\n"
    );
    let out = converse(&env, input.as_bytes()).await;
    assert_eq!(
        codes(&out),
        [
            "220", "250", "250", "250", "354", "250", "250", "250", "354", "250", "221"
        ],
        "{out}"
    );
    let rec = rec.lock().unwrap();
    assert_eq!(
        rec.messages,
        [meant.into_bytes(), b"short\r\n".to_vec()],
        "both arrive whole and unstuffed"
    );
    let verbs: Vec<&str> = rec
        .lines
        .iter()
        .filter(|l| l.starts_with("DATA") || l.starts_with("BDAT"))
        .map(String::as_str)
        .collect();
    assert_eq!(verbs, ["DATA", "BDAT 7 LAST"], "{verbs:?}");
}

#[tokio::test]
async fn a_refused_bdat_is_the_reply_to_the_end_of_data_and_the_leg_goes_on() {
    let (a, rec) = backend(Fault::RefuseBdat).await;
    let dir = tempdir("refbdat");
    let env = env(&dir, &[a], &[], "");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nRSET\r\nm\r\n.\r\n\
          MAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        [
            "220", "250", "250", "250", "354", "554", "250", "250", "221"
        ],
        "the refusal answers the end of data, and no later MAIL meets 503: {out}"
    );
    assert!(out.contains("554 5.7.1 Error: content refused"), "{out}");
    let rec = rec.lock().unwrap();
    assert!(rec.messages.is_empty());
    assert!(
        rec.lines.iter().any(|l| l == "BDAT 9 LAST"),
        "the message, RSET line included, went as data: {:?}",
        rec.lines
    );
    let mails = rec.lines.iter().filter(|l| l.starts_with("MAIL")).count();
    assert_eq!(
        mails, 2,
        "one leg served both transactions: {:?}",
        rec.lines
    );
}

#[tokio::test]
async fn recipients_of_another_route_get_452_and_go_in_a_new_transaction() {
    let (a, rec_a) = backend(Fault::None).await;
    let (b, rec_b) = backend(Fault::None).await;
    let dir = tempdir("split");
    let env = env(&dir, &[a], &[b], "");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nRCPT TO:<v@b.example>\r\nRCPT TO:<w@a.example>\r\nDATA\r\nm1\r\n.\r\n\
          MAIL FROM:<s@x>\r\nRCPT TO:<v@b.example>\r\nDATA\r\nm2\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        [
            "220", "250", "250", "250", "452", "250", "354", "250", "250", "250", "354", "250",
            "221"
        ],
        "{out}"
    );
    assert!(out.contains("452 4.5.3 "), "{out}");
    assert_eq!(rec_a.lock().unwrap().messages, [b"m1\r\n".to_vec()]);
    assert_eq!(rec_b.lock().unwrap().messages, [b"m2\r\n".to_vec()]);
}

#[tokio::test]
async fn unknown_and_unrouted_recipients_are_refused_at_the_proxy() {
    let (a, _) = backend(Fault::None).await;
    let dir = tempdir("reject");
    let env = env(&dir, &[a], &[], "");
    let out = converse(&env, b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<nobody@a.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\nQUIT\r\n").await;
    assert!(out.contains("550 5.1.1 "), "{out}");
    assert!(out.contains("554 5.7.1 Relay access denied"), "{out}");
    assert!(out.contains("554 5.5.1 No valid recipients"), "{out}");
}

#[tokio::test]
async fn dead_backend_fails_over_to_the_next() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap() // closed when `l` drops: connections are refused
    };
    let (refusing, _) = backend(Fault::RefuseGreeting).await;
    let (good, rec) = backend(Fault::None).await;
    let dir = tempdir("failover");
    let env = env(&dir, &[dead, refusing, good], &[], "");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    assert_eq!(rec.lock().unwrap().messages.len(), 1);
}

#[tokio::test]
async fn no_backend_left_gives_451_not_250() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempdir("none");
    let env = env(&dir, &[dead], &[], "");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("451 4.4.1 "), "{out}");
    assert!(!out.contains("354"), "{out}");
}

#[tokio::test]
async fn backend_dropping_after_data_means_no_acknowledgement() {
    let (a, rec) = backend(Fault::DropAfterData).await;
    let dir = tempdir("drop");
    let env = env(&dir, &[a], &[], "");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "451", "221"],
        "{out}"
    );
    assert_eq!(
        rec.lock().unwrap().messages.len(),
        1,
        "the back-end got it but never said 250"
    );
}

#[tokio::test]
async fn bare_lf_smuggling_is_refused_and_never_reaches_the_backend_as_an_end() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("smuggle");
    let env = env(&dir, &[a], &[], "");
    // A hidden "\n.\n" followed by a forged transaction inside the message.
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nreal\r\n\n.\nMAIL FROM:<forged@x>\r\nRCPT TO:<victim@a.example>\r\nDATA\r\nforged\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("550 5.6.0 "), "{out}");
    let rec = rec.lock().unwrap();
    assert!(
        rec.messages.is_empty(),
        "nothing was delivered: {:?}",
        rec.messages
    );
    assert!(
        !rec.lines.iter().any(|l| l.contains("forged")),
        "{:?}",
        rec.lines
    );
}

#[tokio::test]
async fn oversized_message_gets_552() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("big");
    let env = env(&dir, &[a], &[], "");
    let mut input = b"EHLO c\r\nMAIL FROM:<s@x> SIZE=100000\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\n".to_vec();
    for _ in 0..100 {
        input.extend_from_slice(&[b'x'; 98]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let out = converse(&env, &input).await;
    assert_eq!(
        codes(&out),
        ["220", "250", "552", "250", "250", "354", "552", "221"],
        "{out}"
    );
    assert!(rec.lock().unwrap().messages.is_empty());
}

#[tokio::test]
async fn bad_input_gets_rfc_replies() {
    let dir = tempdir("bad");
    let env = env(&dir, &[], &[], "");
    let mut input = b"MAIL FROM:<s@x>\r\nHELO\r\nFOO\r\nNO\0OP\r\nRCPT TO:<u@a.example>\r\nVRFY root\r\nEXPN list\r\nBDAT 10 LAST\r\nSTARTTLS\r\nAUTH PLAIN\r\n".to_vec();
    input.extend_from_slice(&[b'a'; 3000]);
    input.extend_from_slice(b"\r\nQUIT\r\n");
    let out = converse(&env, &input).await;
    assert_eq!(
        codes(&out),
        // BDAT's 10 octets of chunk are "STARTTLS\r\n": swallowed as data (RFC 3030).
        [
            "220", "503", "501", "500", "500", "503", "252", "502", "503", "502", "500", "221"
        ],
        "{out}"
    );
}

#[tokio::test]
async fn submission_relays_auth_to_the_users_backend() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("auth");
    let env = env(&dir, &[a], &[], "auth = true\nplaintext_auth = true");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<alice@a.example>\r\nAUTH PLAIN AGFsaWNlQGEuZXhhbXBsZQB3cm9uZw==\r\nAUTH PLAIN AGFsaWNlQGEuZXhhbXBsZQBzZWNyZXQ=\r\n\
          MAIL FROM:<alice@a.example>\r\nRCPT TO:<anyone@elsewhere.example>\r\nDATA\r\nsubmitted\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        [
            "220", "250", "530", "535", "235", "250", "250", "354", "250", "221"
        ],
        "{out}"
    );
    assert!(out.contains("AUTH PLAIN LOGIN"), "{out}");
    assert_eq!(rec.lock().unwrap().messages, [b"submitted\r\n".to_vec()]);
}

/// A self-signed certificate for `fe.example`, written as PEM files in `dir`.
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["fe.example".to_owned()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k, cert.cert.der().to_vec())
}

#[tokio::test]
async fn starttls_discards_pipelined_commands_and_restarts_the_session() {
    let (a, _) = backend(Fault::None).await;
    let dir = tempdir("tls");
    let (cert, key, der) = certificate(&dir);
    let mut env = env(&dir, &[a], &[], "tls = \"starttls\"");
    let files = crate::config::TlsFiles {
        certificate: cert,
        key,
    };
    env.tls = Some(Arc::new(crate::tls::ServerTls::new(&files).unwrap()));
    let env = Arc::new(env);
    let (client, server) = tokio::io::duplex(1 << 16);
    let e2 = Arc::clone(&env);
    let task = tokio::spawn(async move {
        let s = Session::new(
            Conn::Plain(server),
            &e2,
            "198.18.0.100:1".parse().unwrap(),
            "198.18.0.25:25".parse().unwrap(),
            "t".into(),
        );
        s.run().await
    });
    let mut client = BufReader::new(client);
    let mut line = String::new();
    client.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "), "{line}");
    // RSET rides in the same packet as STARTTLS: it must never be answered (CVE-2011-0411).
    client
        .get_mut()
        .write_all(b"EHLO c\r\nSTARTTLS\r\nRSET\r\n")
        .await
        .unwrap();
    let mut ehlo = String::new();
    loop {
        line.clear();
        client.read_line(&mut line).await.unwrap();
        ehlo.push_str(&line);
        if line.starts_with("250 ") {
            break;
        }
    }
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    line.clear();
    client.read_line(&mut line).await.unwrap();
    assert_eq!(line, "220 2.0.0 Ready to start TLS\r\n");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("fe.example").unwrap();
    let tls = connector
        .connect(name, client.into_inner())
        .await
        .expect("handshake");
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"EHLO c\r\nQUIT\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    tls.read_to_string(&mut rest).await.unwrap();
    assert!(
        rest.starts_with("250-fe\r\n"),
        "the first reply after TLS answers EHLO, not RSET: {rest}"
    );
    assert!(!rest.contains("STARTTLS"), "{rest}");
    assert!(rest.ends_with("221 2.0.0 Bye\r\n"), "{rest}");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bdat_chunks_are_relayed_when_every_backend_offers_chunking() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("bdat");
    let env = env(&dir, &[a], &[], "");
    let out = converse(&env, b"EHLO c\r\nQUIT\r\n").await;
    assert!(
        !out.contains("CHUNKING"),
        "not offered before a probe saw it: {out}"
    );
    for slot in env.pools.board.slots() {
        slot.chunking
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut input = b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nBDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\n".to_vec();
    // A second message too big for the 4096-octet limit: refused, its octets swallowed.
    input.extend_from_slice(b"MAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nBDAT 5000 LAST\r\n");
    input.extend_from_slice(&[b'Q'; 5000]);
    input.extend_from_slice(b"QUIT\r\n");
    let out = converse(&env, &input).await;
    assert!(out.contains("CHUNKING"), "{out}");
    assert_eq!(
        codes(&out),
        [
            "220", "250", "250", "250", "250", "250", "250", "250", "552", "221"
        ],
        "{out}"
    );
    assert_eq!(rec.lock().unwrap().messages, [b"hello world\r\n".to_vec()]);
}

#[tokio::test]
async fn closing_waits_for_the_transaction_then_says_421() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("closing");
    let env = Arc::new(env(&dir, &[a], &[], ""));
    let token = tokio_util::sync::CancellationToken::new();
    let (client, server) = tokio::io::duplex(1 << 16);
    let (e2, t2) = (Arc::clone(&env), token.clone());
    let task = tokio::spawn(async move {
        Session::new(
            Conn::Plain(server),
            &e2,
            "198.18.0.100:1".parse().unwrap(),
            "198.18.0.25:25".parse().unwrap(),
            "t".into(),
        )
        .closing_on(t2)
        .run()
        .await
    });
    let mut client = BufReader::new(client);
    let mut line = String::new();
    client.read_line(&mut line).await.unwrap();
    client
        .get_mut()
        .write_all(b"EHLO c\r\nMAIL FROM:<s@x>\r\n")
        .await
        .unwrap();
    // Read through the EHLO reply and MAIL's 250: the transaction is open.
    loop {
        line.clear();
        client.read_line(&mut line).await.unwrap();
        if line.starts_with("250 2.1.0") {
            break;
        }
    }
    token.cancel();
    client
        .get_mut()
        .write_all(b"RCPT TO:<u@a.example>\r\nDATA\r\nlast words\r\n.\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    client.read_to_string(&mut rest).await.unwrap();
    assert_eq!(
        codes(&rest),
        ["250", "354", "250", "421"],
        "the open transaction finishes first: {rest}"
    );
    assert!(rest.contains("421 4.3.2 "), "{rest}");
    assert_eq!(rec.lock().unwrap().messages.len(), 1);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn backend_421_fails_over_and_counts_against_the_backend() {
    let (closing, crec) = backend(Fault::CloseAtRcpt).await;
    let (good, rec) = backend(Fault::None).await;
    let dir = tempdir("421");
    let env = env(&dir, &[closing, good], &[], "");
    for _ in 0..3 {
        let out = converse(
            &env,
            b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nm\r\n.\r\nQUIT\r\n",
        )
        .await;
        assert!(
            !out.contains("421"),
            "the back-end's 421 never reaches the client: {out}"
        );
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "354", "250", "221"],
            "{out}"
        );
    }
    assert_eq!(rec.lock().unwrap().messages.len(), 3);
    // Each 421 is a failed check; three (fall = 3 by default) take the back-end down.
    let seen = crec
        .lock()
        .unwrap()
        .lines
        .iter()
        .filter(|l| l.starts_with("RCPT"))
        .count();
    let state = env.pools.board.record_for(0, 0).unwrap().state;
    assert_eq!(
        state == robustifier_common::BACKEND_DOWN,
        seen >= 3,
        "{seen} 421s, state {state}"
    );
}

/// Holds every session slot of back-end `id` (the pool's default limit of 1000).
fn fill(env: &ServiceContext, id: u32) -> Vec<crate::health::board::SessionGuard> {
    (0..1000)
        .map(|_| env.pools.board.acquire(id, 1000).unwrap())
        .collect()
}

#[tokio::test]
async fn a_busy_recipient_of_a_waiting_group_gets_the_freed_slot() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("wait");
    let groups =
        "[[group]]\nname = \"premium\"\nshare = 1.0\ndomains = [\"a.example\"]\nwait_ms = 10000\n";
    let env = env(&dir, &[a], &[], groups);
    let held = fill(&env, 0);
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(held);
    });
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
    )
    .await;
    release.await.unwrap();
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "the RCPT reply came once a slot was free: {out}"
    );
    assert_eq!(rec.lock().unwrap().messages.len(), 1);
    assert_eq!(env.pools.admission.waiting(&["a".to_owned()]), 0);
}

#[tokio::test]
async fn a_busy_recipient_is_deflected_when_the_wait_is_over() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("waitover");
    let env = env(&dir, &[a], &[], "wait_ms = 200");
    let _held = fill(&env, 0);
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("451 4.3.2 "), "{out}");
    assert!(rec.lock().unwrap().lines.is_empty(), "no back-end was used");
    assert_eq!(env.pools.admission.waiting(&["a".to_owned()]), 0);
}

#[tokio::test]
async fn without_a_wait_a_busy_recipient_is_deflected_at_once() {
    let (a, _rec) = backend(Fault::None).await;
    let dir = tempdir("nowait");
    // Only the premium group waits; everyone else is deflected as before.
    let groups = "[[group]]\nname = \"premium\"\nshare = 1.0\ndomains = [\"vip.example\"]\nwait_ms = 60000\n";
    let env = env(&dir, &[a], &[], groups);
    let _held = fill(&env, 0);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        converse(
            &env,
            b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
        ),
    )
    .await
    .expect("no wait");
    assert_eq!(codes(&out), ["220", "250", "250", "451", "221"], "{out}");
    assert!(out.contains("451 4.3.2 "), "{out}");
}

#[tokio::test]
async fn a_client_leaving_while_waiting_gives_up_its_place() {
    let (a, _rec) = backend(Fault::None).await;
    let dir = tempdir("waitgone");
    let env = Arc::new(env(&dir, &[a], &[], "wait_ms = 60000"));
    let _held = fill(&env, 0);
    let (mut client, server) = tokio::io::duplex(1 << 16);
    client
        .write_all(b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\n")
        .await
        .unwrap();
    let e2 = Arc::clone(&env);
    let task = tokio::spawn(async move {
        Session::new(
            Conn::Plain(server),
            &e2,
            "198.18.0.100:1".parse().unwrap(),
            "198.18.0.25:25".parse().unwrap(),
            "t".into(),
        )
        .run()
        .await
    });
    let route = ["a".to_owned()];
    while env.pools.admission.waiting(&route) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(client);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("the session ends when its client leaves");
    assert_eq!(env.pools.admission.waiting(&route), 0);
}

/// What a session holds while it waits for its client is mostly its future: the state of
/// back-end exchanges, TLS handshakes and the message relay is boxed while it runs, so that
/// a flood of idle clients costs little. This catches a big state creeping back inline.
#[tokio::test]
async fn a_waiting_session_holds_a_small_future() {
    let dir = tempdir("size");
    let env = env(&dir, &[], &[], "");
    let (_client, server) = tokio::io::duplex(64);
    let peer: SocketAddr = "198.18.0.100:40000".parse().unwrap();
    let local: SocketAddr = "198.18.0.25:25".parse().unwrap();
    let run = Session::new(Conn::Plain(server), &env, peer, local, "t1".into()).run();
    let size = std::mem::size_of_val(&run);
    eprintln!("SMTP session future: {size} bytes");
    assert!(size <= 1024, "SMTP session future of {size} bytes");
}

/// The load record's state of back-end `id`.
fn state(env: &ServiceContext, id: u32) -> u8 {
    env.pools.board.record_for(id, 0).unwrap().state
}

#[tokio::test]
async fn a_helo_xclient_cannot_carry_is_passed_as_the_address_literal() {
    let (a, rec) = backend(Fault::XclientStrict).await;
    let dir = tempdir("longhelo");
    let env = env_pools(&dir, &[a], &[], "", "identity = \"xclient\"");
    let long = "h".repeat(300);
    let out = converse(
        &env,
        format!(
            "EHLO {long}\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nm\r\n.\r\nQUIT\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    let lines = rec.lock().unwrap().lines.clone();
    let xclient = lines.iter().find(|l| l.starts_with("XCLIENT")).unwrap();
    assert!(xclient.contains("ADDR=198.18.0.100"), "{xclient}");
    assert!(xclient.contains("HELO=[198.18.0.100]"), "{xclient}");
    assert!(
        lines.iter().any(|l| l == "EHLO [198.18.0.100]"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_client_whose_input_the_backend_refuses_is_closed_and_the_backend_stays_up() {
    let (a, rec) = backend(Fault::XclientRefuse).await;
    let (b, rec_b) = backend(Fault::XclientRefuse).await;
    let dir = tempdir("clientfault");
    // One failed check would take a back-end down.
    let env = env_pools(
        &dir,
        &[a, b],
        &[],
        "",
        "identity = \"xclient\"\nhealth = { fall = 1 }",
    );
    let max = crate::front::limits::AUTH_FAILURES_MAX as usize;
    for _ in 0..max {
        let out = converse(
            &env,
            b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nRCPT TO:<v@a.example>\r\nQUIT\r\n",
        )
        .await;
        assert_eq!(codes(&out), ["220", "250", "250", "421"], "{out}");
        assert!(out.contains("421 4.7.0 "), "{out}");
    }
    use robustifier_common::BACKEND_UP;
    assert_eq!((state(&env, 0), state(&env, 1)), (BACKEND_UP, BACKEND_UP));
    // The same input is not tried on the other back-end of the route.
    let tried = |r: &Arc<Mutex<Recorded>>| {
        r.lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| l.starts_with("XCLIENT"))
            .count()
    };
    assert_eq!(tried(&rec) + tried(&rec_b), max, "one attempt per session");
    // A repeat offender is refused before any back-end is asked.
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("421 4.7.0 Too many refused sessions"), "{out}");
    assert_eq!(tried(&rec) + tried(&rec_b), max);
}

#[tokio::test]
async fn one_clients_refused_recipients_never_make_a_refusal_storm() {
    let (a, _) = backend(Fault::None).await;
    let dir = tempdir("storm");
    let env = env_pools(&dir, &[a], &[], "", "health = { fall = 1 }");
    let mut input = b"EHLO c\r\nMAIL FROM:<s@x>\r\n".to_vec();
    for i in 0..(crate::health::board::ERROR_STORM + 5) {
        input.extend_from_slice(format!("RCPT TO:<unknown{i}@a.example>\r\n").as_bytes());
    }
    input.extend_from_slice(b"QUIT\r\n");
    let out = converse(&env, &input).await;
    assert!(out.contains("550 5.1.1 no such user"), "{out}");
    assert_eq!(state(&env, 0), robustifier_common::BACKEND_UP);
    // Guessing addresses uses up the session's error budget, as in Postfix.
    assert_eq!(
        out.matches("550 5.1.1").count(),
        super::MAX_ERRORS as usize,
        "{out}"
    );
    assert!(out.contains("421 4.7.0 Too many errors"), "{out}");
}

#[tokio::test]
async fn refused_data_resets_the_backend_transaction() {
    let (a, rec) = backend(Fault::RefuseData).await;
    let dir = tempdir("refdata");
    let env = env(&dir, &[a], &[], "");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\n\
          MAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nRSET\r\n\
          MAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nEHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        [
            "220", "250", "250", "250", "554", "250", "250", "250", "250", "250", "250", "250",
            "250", "221"
        ],
        "no later transaction meets the back-end's 503: {out}"
    );
    assert!(!out.contains("503"), "{out}");
    let lines = rec.lock().unwrap().lines.clone();
    let resets = lines.iter().filter(|l| *l == "RSET").count();
    assert_eq!(
        resets, 4,
        "refused DATA, RSET and EHLO each reset, and the leg is reset to be kept: {lines:?}"
    );
}

#[tokio::test]
async fn xclient_identity_fails_closed_without_addr() {
    let (a, rec) = backend(Fault::XclientNoAddr).await;
    let dir = tempdir("noaddr");
    let env = env_pools(&dir, &[a], &[], "", "identity = \"xclient\"");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(codes(&out), ["220", "250", "250", "451", "221"], "{out}");
    let lines = rec.lock().unwrap().lines.clone();
    assert!(
        !lines.iter().any(|l| l.starts_with("MAIL")),
        "no mail goes to a back-end that would take the proxy for the client: {lines:?}"
    );
}

#[tokio::test]
async fn data_after_bdat_is_refused() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("bdatdata");
    let env = env(&dir, &[a], &[], "");
    for slot in env.pools.board.slots() {
        slot.chunking
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nBDAT 3\r\nabcDATA\r\nBDAT 2 LAST\r\ndeQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "503", "250", "221"],
        "{out}"
    );
    assert_eq!(rec.lock().unwrap().messages, [b"abcde".to_vec()]);
}

/// "\0alice@a.example\0secret" and "\0alice@a.example\0wrong".
const AUTH_GOOD: &str = "AUTH PLAIN AGFsaWNlQGEuZXhhbXBsZQBzZWNyZXQ=\r\n";
const AUTH_BAD: &str = "AUTH PLAIN AGFsaWNlQGEuZXhhbXBsZQB3cm9uZw==\r\n";

#[tokio::test]
async fn no_auth_in_clear_except_from_loopback() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("clear");
    certificate(&dir);
    let env = env(&dir, &[a], &[], "auth = true\ntls = \"starttls\"");
    let input = format!("EHLO c\r\n{AUTH_GOOD}QUIT\r\n");
    let out = converse(&env, input.as_bytes()).await;
    assert!(!out.contains("AUTH PLAIN"), "not offered in clear: {out}");
    assert_eq!(codes(&out), ["220", "250", "538", "221"], "{out}");
    assert!(out.contains("538 5.7.11 "), "{out}");
    assert!(
        !rec.lock()
            .unwrap()
            .lines
            .iter()
            .any(|l| l.starts_with("AUTH")),
        "no password reached a back-end"
    );
    // A client on the same host sends nothing over the network.
    let out = converse_from(&env, "127.0.0.1:40000".parse().unwrap(), input.as_bytes()).await;
    assert!(out.contains("AUTH PLAIN LOGIN"), "{out}");
    assert_eq!(codes(&out), ["220", "250", "235", "221"], "{out}");
}

#[tokio::test]
async fn a_client_guessing_passwords_is_refused_before_any_backend() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("guess");
    let env = env(&dir, &[a], &[], "auth = true\nplaintext_auth = true");
    let max = crate::front::limits::AUTH_FAILURES_MAX as usize;
    let input = format!("EHLO c\r\n{}{AUTH_GOOD}QUIT\r\n", AUTH_BAD.repeat(max));
    let out = converse(&env, input.as_bytes()).await;
    let mut expect = vec!["220", "250"];
    expect.extend(std::iter::repeat_n("535", max));
    expect.push("421");
    assert_eq!(codes(&out), expect, "{out}");
    assert!(out.contains("421 4.7.0 "), "{out}");
    let tried = |rec: &Mutex<Recorded>| {
        rec.lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| l.starts_with("AUTH"))
            .count()
    };
    assert_eq!(tried(&rec), max, "the refused attempt reached no back-end");
    // The next session of the same client is refused too, even with the right password.
    let input = format!("EHLO c\r\n{AUTH_GOOD}QUIT\r\n");
    let out = converse(&env, input.as_bytes()).await;
    assert_eq!(codes(&out), ["220", "250", "421"], "{out}");
    assert_eq!(tried(&rec), max);
    // Another client is not.
    let out = converse_from(&env, "198.18.0.200:1".parse().unwrap(), input.as_bytes()).await;
    assert_eq!(codes(&out), ["220", "250", "235", "221"], "{out}");
}

#[tokio::test]
async fn a_failed_auth_counts_in_the_error_budget() {
    let (a, _) = backend(Fault::None).await;
    let dir = tempdir("authbudget");
    let env = env(&dir, &[a], &[], "auth = true\nplaintext_auth = true");
    let input = format!(
        "EHLO c\r\n{}{AUTH_BAD}QUIT\r\n",
        "BOGUS\r\n".repeat(MAX_ERRORS as usize - 1)
    );
    let out = converse(&env, input.as_bytes()).await;
    let codes = codes(&out);
    assert_eq!(codes[codes.len() - 2..], ["535", "421"], "{out}");
    assert!(out.contains("421 4.7.0 Too many errors"), "{out}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_at_the_write_deadline() {
    let dir = tempdir("noread");
    let env = env(&dir, &[], &[], "");
    // The replies to these fill the client's receive buffer, which it never reads.
    let (mut client, server) = tokio::io::duplex(4096);
    client.write_all(&b"EHLO c\r\n".repeat(100)).await.unwrap();
    let session = Session::new(
        Conn::Plain(server),
        &env,
        "198.18.0.100:1".parse().unwrap(),
        "198.18.0.25:25".parse().unwrap(),
        "t".into(),
    );
    let ended = tokio::time::timeout(std::time::Duration::from_secs(24 * 3600), session.run())
        .await
        .expect("the session ends though its client never reads");
    match ended {
        Err(SessionError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("{other:?}"),
    }
    drop(client);
}

#[tokio::test]
async fn recipients_beyond_the_bound_are_refused_and_not_kept() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("rcpts");
    let env = env(&dir, &[a], &[], "");
    let mut input = String::from("EHLO c\r\nMAIL FROM:<s@x.example>\r\n");
    for i in 0..=MAX_RECIPIENTS {
        input.push_str(&format!("RCPT TO:<u{i}@a.example>\r\n"));
    }
    input.push_str("QUIT\r\n");
    let out = converse(&env, input.as_bytes()).await;
    let codes = codes(&out);
    assert_eq!(
        codes.iter().filter(|c| **c == "250").count(),
        2 + MAX_RECIPIENTS
    );
    assert_eq!(codes[codes.len() - 2..], ["452", "221"], "{out}");
    assert!(out.contains("452 4.5.3 Too many recipients"), "{out}");
    let rcpts = rec
        .lock()
        .unwrap()
        .lines
        .iter()
        .filter(|l| l.starts_with("RCPT"))
        .count();
    assert_eq!(
        rcpts, MAX_RECIPIENTS,
        "the extra recipient reached no back-end"
    );
}

/// AUTH leases its back-end like a recipient or a POP3 login does: a user whose group may
/// wait queues for a slot instead of failing at once.
#[tokio::test]
async fn auth_waits_for_a_slot_like_a_login() {
    let (a, rec) = backend(Fault::None).await;
    let dir = tempdir("authwait");
    let env = env(
        &dir,
        &[a],
        &[],
        "auth = true\nplaintext_auth = true\nwait_ms = 8000",
    );
    let held: Vec<_> = (0..1000)
        .map(|_| env.pools.board.acquire(0, 1000).unwrap())
        .collect();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(held);
    });
    let out = converse(&env, format!("EHLO c\r\n{AUTH_GOOD}QUIT\r\n").as_bytes()).await;
    release.await.unwrap();
    assert_eq!(codes(&out), ["220", "250", "235", "221"], "{out}");
    assert!(
        rec.lock()
            .unwrap()
            .lines
            .iter()
            .any(|l| l.starts_with("AUTH PLAIN"))
    );
    assert_eq!(env.pools.admission.waiting(&["a".to_owned()]), 0);
}

/// While the back-end's reply to the end of data is awaited the session says so, and a
/// stopping front-end lets it finish instead of cutting it (`front::accept::Abort`).
#[tokio::test]
async fn a_session_waiting_for_its_end_of_data_reply_is_committing() {
    let (a, rec) = backend(Fault::SlowEndOfData).await;
    let dir = tempdir("commit");
    let env = Arc::new(env(&dir, &[a], &[], ""));
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (e2, f2) = (Arc::clone(&env), Arc::clone(&flag));
    let task = tokio::spawn(async move {
        Session::new(
            Conn::Plain(server),
            &e2,
            "198.18.0.100:1".parse().unwrap(),
            "198.18.0.25:25".parse().unwrap(),
            "t".into(),
        )
        .committing_on(f2)
        .run()
        .await
    });
    client
        .write_all(b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nm\r\n.\r\n")
        .await
        .unwrap();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !flag.load(std::sync::atomic::Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the session never said it was committing");
    client.write_all(b"QUIT\r\n").await.unwrap();
    task.await.unwrap().unwrap();
    assert!(!flag.load(std::sync::atomic::Ordering::Acquire));
    assert_eq!(rec.lock().unwrap().messages.len(), 1);
}

/// The proxy keeps no password to log in again elsewhere: an authenticated session whose
/// back-end goes away ends cleanly with 421, and the client reconnects.
#[tokio::test]
async fn an_authenticated_session_that_loses_its_backend_ends_with_421() {
    let (a, _) = backend(Fault::CloseAtMail).await;
    let dir = tempdir("authlost");
    let env = env(&dir, &[a], &[], "auth = true\nplaintext_auth = true");
    let out = converse(
        &env,
        format!("EHLO c\r\n{AUTH_GOOD}MAIL FROM:<alice@a.example>\r\nRCPT TO:<x@b.example>\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(codes(&out), ["220", "250", "235", "421"], "{out}");
    assert!(out.contains("421 4.4.2 "), "{out}");
}

/// The transaction's phases: a recipient fixes the route, BDAT is a phase of its own that
/// keeps the recipients, and a transaction without recipients never enters it.
#[test]
fn a_transaction_moves_through_its_phases() {
    let mut tx = Transaction::new(MailFrom::default(), "MAIL FROM:<s@x>".into());
    assert!(tx.route().is_none() && tx.rcpts().is_empty());
    tx.start_bdat();
    assert!(!tx.bdat_used(), "no BDAT phase without recipients");
    let route = crate::route::PoolNames::from(["a".to_owned()]);
    tx.accept(route.clone(), "RCPT TO:<u@a.example>".into());
    assert_eq!(tx.route(), Some(&route));
    tx.start_bdat();
    tx.add_bdat(10);
    tx.set_broken();
    tx.accept(route.clone(), "RCPT TO:<v@a.example>".into());
    assert!(tx.bdat_used() && tx.broken());
    assert_eq!(tx.bdat_size(), 10);
    assert_eq!(tx.rcpts().len(), 2);
}

/// A leg that breaks after recipients were accepted is replaced before DATA: the new one
/// gets MAIL and every accepted recipient again, then the new recipient, and the message.
#[tokio::test]
async fn a_leg_lost_between_recipients_is_replaced_with_the_recipients_replayed() {
    let (a, rec) = backend(Fault::FirstLegCloseAtSecondRcpt).await;
    let dir = tempdir("replay");
    let env = env(&dir, &[a], &[], "");
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nRCPT TO:<v@a.example>\r\nDATA\r\nm\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    let rec = rec.lock().unwrap();
    let rcpts: Vec<&str> = rec
        .lines
        .iter()
        .filter(|l| l.starts_with("RCPT") || l.starts_with("MAIL"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        rcpts,
        [
            "MAIL FROM:<s@x>",
            "RCPT TO:<u@a.example>",
            "RCPT TO:<v@a.example>",
            "MAIL FROM:<s@x>",
            "RCPT TO:<u@a.example>",
            "RCPT TO:<v@a.example>",
        ]
    );
    assert_eq!(rec.messages.len(), 1);
}

/// The `message_relayed` and `session_refused` events of `env`'s sessions so far.
fn records(env: &ServiceContext) -> Vec<crate::events::Kind> {
    env.events
        .recent(100)
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| {
            matches!(
                k,
                crate::events::Kind::MessageRelayed(_) | crate::events::Kind::SessionRefused { .. }
            )
        })
        .collect()
}

#[tokio::test]
async fn each_relayed_message_is_one_record_with_its_message_id_and_queue_id() {
    let (a, _rec) = backend(Fault::None).await;
    let dir = tempdir("records");
    let env = env(&dir, &[a], &[], "");
    for slot in env.pools.board.slots() {
        slot.chunking
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // One message by DATA, one by BDAT with its Message-ID cut between two chunks, and a
    // transaction reset before its end (no record).
    let mut input = b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nRCPT TO:<v@a.example>\r\nDATA\r\nSubject: one\r\nMessage-ID: <one@x>\r\n\r\nbody\r\n.\r\n".to_vec();
    input.extend_from_slice(
        b"MAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nBDAT 15\r\nMessage-ID: <twBDAT 11 LAST\r\no@x>\r\n\r\nb\r\n",
    );
    input.extend_from_slice(b"MAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nRSET\r\nQUIT\r\n");
    let out = converse(&env, &input).await;
    assert_eq!(out.matches("queued as FAKE").count(), 2, "{out}");
    let got = records(&env);
    assert_eq!(got.len(), 2, "{got:?}");
    let relayed: Vec<&crate::events::Relayed> = got
        .iter()
        .filter_map(|k| match k {
            crate::events::Kind::MessageRelayed(r) => Some(&**r),
            _ => None,
        })
        .collect();
    assert_eq!(relayed[0].message_id.as_deref(), Some("<one@x>"));
    assert_eq!(relayed[1].message_id.as_deref(), Some("<two@x>"));
    for r in &relayed {
        assert_eq!(r.session, "t1");
        assert_eq!(r.queue_id.as_deref(), Some("FAKE"));
        assert_eq!(r.client, "198.18.0.100:40000");
        assert_eq!(r.helo.as_deref(), Some("c"));
        assert_eq!(r.mail_from, "s@x");
        assert_eq!(r.pool, "a");
        assert!(r.route_reason.contains("route map"), "{}", r.route_reason);
    }
    assert_eq!(relayed[0].rcpt_count, 2);
    assert_eq!(relayed[0].rcpts, ["u@a.example", "v@a.example"]);
}

#[tokio::test]
async fn a_deflected_session_is_recorded_with_its_id() {
    let (a, _rec) = backend(Fault::None).await;
    let dir = tempdir("deflected-record");
    let env = env(&dir, &[a], &[], "");
    let _held = fill(&env, 0);
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("451 4.3.2 "), "{out}");
    let got = records(&env);
    assert!(
        matches!(
            got.as_slice(),
            [crate::events::Kind::SessionRefused { session, reason, .. }]
                if session == "t1" && reason.contains("deflected")
        ),
        "{got:?}"
    );
}

/// `env` counting into fresh statistics, as a front-end's services do.
fn counting(env: ServiceContext) -> (ServiceContext, Arc<crate::stats::Stats>) {
    let stats = Arc::new(crate::stats::Stats::new(10));
    let pools: Vec<crate::config::Pool> = ["a", "b"]
        .iter()
        .filter_map(|n| env.pools.pool(n))
        .map(|p| p.pool.clone())
        .collect();
    let table = stats.table(
        ["smtp"],
        pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| (b.id, b.name.as_str()))),
        pools.iter().map(|p| (p.id, p.name.as_str())),
        [],
    );
    (env.counting(table, 0), stats)
}

fn totals(
    stats: &crate::stats::Stats,
    scope: crate::stats::Scope,
    name: &str,
) -> crate::stats::Totals {
    stats
        .totals()
        .remove(&(scope, name.to_owned()))
        .unwrap_or_default()
}

#[tokio::test]
async fn relayed_messages_and_their_recipients_are_counted() {
    use crate::stats::Scope;
    let (a, _rec) = backend(Fault::None).await;
    let dir = tempdir("counted");
    let (env, stats) = counting(env(&dir, &[a], &[], ""));
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nRCPT TO:<v@a.example>\r\nDATA\r\nhello\r\n.\r\n\
          MAIL FROM:<s@x>\r\nRCPT TO:<w@a.example>\r\nDATA\r\nagain\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(out.matches("queued").count(), 2, "{out}");
    for (scope, name) in [
        (Scope::Backend, "a0"),
        (Scope::Pool, "a"),
        (Scope::Group, "default"),
    ] {
        let t = totals(&stats, scope, name);
        assert_eq!((t.sessions, t.messages, t.recipients), (1, 2, 3), "{name}");
        // Only the back-end and its pool time the back-end's greeting.
        let timed = scope != Scope::Group;
        assert_eq!(t.latency.map(|l| l.count), timed.then_some(1), "{name}");
        assert!(t.bytes_to_backend > 0 && t.bytes_to_client > 0, "{name}");
    }
    let smtp = totals(&stats, Scope::Service, "smtp");
    assert_eq!((smtp.messages, smtp.recipients), (2, 3));
    assert!(smtp.deflected.is_empty());
}

#[tokio::test]
async fn deflections_are_counted_with_their_reason() {
    use crate::stats::Scope;
    let (a, _rec) = backend(Fault::None).await;
    let dir = tempdir("deflected");
    let (busy, stats) = counting(env(&dir, &[a], &[], ""));
    let _held = fill(&busy, 0);
    let out = converse(
        &busy,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("451 4.3.2 "), "{out}");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempdir("deflected-none");
    let (down, down_stats) = counting(env(&dir, &[dead], &[], ""));
    let out = converse(
        &down,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("451 4.4.1 "), "{out}");
    for (stats, reason) in [(&stats, "overload"), (&down_stats, "no_backend")] {
        for (scope, name) in [
            (Scope::Pool, "a"),
            (Scope::Service, "smtp"),
            (Scope::Group, "default"),
        ] {
            let t = totals(stats, scope, name);
            assert_eq!(t.deflected.get(reason), Some(&1), "{reason} {name}: {t:?}");
            assert_eq!(t.deflections(), 1, "{reason} {name}");
            assert_eq!(t.messages, 0);
        }
    }
}

/// `env` routing by a directory (a fake source) after its map, with `pool` as the
/// service's pool.
fn with_directory(
    env: ServiceContext,
    answers: &[(&str, &str)],
    not_found: crate::config::directory::NotFound,
    pool: Option<&str>,
    edit: impl FnOnce(&mut crate::config::directory::Directory),
) -> (
    ServiceContext,
    Arc<crate::directory::resolver::testing::Fake>,
) {
    use crate::directory::resolver::{Resolver, testing};
    let fake = testing::Fake::new(answers);
    let mut d = testing::directory("people", not_found);
    edit(&mut d);
    let resolver = Resolver::with_source(&d, Arc::clone(&fake) as _);
    let mut service = (*env.service).clone();
    service.directory = Some("people".into());
    service.pool = pool.map(str::to_owned);
    let mut env = env.with_directory(Some(Arc::new(resolver)));
    env.service = Arc::new(service);
    (env, fake)
}

#[tokio::test]
async fn recipients_the_map_does_not_know_are_routed_by_the_directory() {
    let (a, rec_a) = backend(Fault::None).await;
    let (b, rec_b) = backend(Fault::None).await;
    let dir = tempdir("directory");
    let (env, fake) = with_directory(
        env(&dir, &[a], &[b], ""),
        &[("carol@c.example", "b0"), ("a.example", "b")],
        crate::config::directory::NotFound::Pool,
        None,
        |_| {},
    );
    // carol's entry pins back-end b0; the map still routes a.example itself.
    let out = converse(
        &env,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<carol@C.EXAMPLE>\r\nDATA\r\nm1\r\n.\r\n\
          MAIL FROM:<s@x>\r\nRCPT TO:<u@a.example>\r\nDATA\r\nm2\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&out),
        [
            "220", "250", "250", "250", "354", "250", "250", "250", "354", "250", "221"
        ],
        "{out}"
    );
    assert_eq!(rec_b.lock().unwrap().messages, [b"m1\r\n".to_vec()]);
    assert_eq!(rec_a.lock().unwrap().messages, [b"m2\r\n".to_vec()]);
    assert_eq!(fake.calls(), 1, "the map answered a.example");
    let to = crate::smtp::Address::parse_user("carol@c.example").unwrap();
    assert_eq!(
        env.route_recipient(&to).await,
        crate::service::Routed::Route(
            crate::route::Route::Pools(vec!["b/b0".into()].into()),
            crate::service::RouteSource::Directory {
                name: "people".into(),
                origin: crate::directory::resolver::Origin::Cache
            }
        )
    );
    assert!(env.pool_names().contains(&"b".to_owned()));
}

#[tokio::test]
async fn a_recipient_the_directory_does_not_know_goes_to_the_pool_or_is_refused() {
    use crate::config::directory::NotFound;
    let (a, rec_a) = backend(Fault::None).await;
    let dir = tempdir("directory-unknown");
    let input =
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<who@d.example>\r\nDATA\r\nm\r\n.\r\nQUIT\r\n";
    let (to_pool, _) = with_directory(
        env(&dir, &[a], &[], ""),
        &[],
        NotFound::Pool,
        Some("a"),
        |_| {},
    );
    let out = converse(&to_pool, input).await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    assert_eq!(rec_a.lock().unwrap().messages, [b"m\r\n".to_vec()]);
    let (refused, _) = with_directory(
        env(&dir, &[a], &[], ""),
        &[],
        NotFound::Reject,
        Some("a"),
        |_| {},
    );
    let out = converse(&refused, input).await;
    assert!(out.contains("550 5.1.1 "), "{out}");
    assert_eq!(
        rec_a.lock().unwrap().messages.len(),
        1,
        "nothing more relayed"
    );
}

#[tokio::test]
async fn a_failing_directory_gives_temporary_replies_never_a_refusal() {
    use crate::config::directory::NotFound;
    let (a, rec_a) = backend(Fault::None).await;
    let dir = tempdir("directory-down");
    let answers = [("carol@c.example", "a"), ("carol", "a")];
    let (submission, fake) = with_directory(
        env(&dir, &[a], &[], "auth = true\nplaintext_auth = true"),
        &answers,
        NotFound::Reject,
        Some("a"),
        |_| {},
    );
    fake.fail(true);
    // "\0carol\0secret"
    let out = converse(
        &submission,
        b"EHLO c\r\nAUTH PLAIN AGNhcm9sAHNlY3JldA==\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(codes(&out), ["220", "250", "454", "221"], "{out}");
    assert!(
        out.contains("454 4.7.0 Temporary authentication failure\r\n"),
        "{out}"
    );
    let (relay, fake) = with_directory(
        env(&dir, &[a], &[], ""),
        &answers,
        NotFound::Reject,
        Some("a"),
        |_| {},
    );
    fake.fail(true);
    let out = converse(
        &relay,
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<carol@c.example>\r\nRCPT TO:<u@a.example>\r\nQUIT\r\n",
    )
    .await;
    assert!(
        out.contains("451 4.3.0 Directory temporarily unavailable, try again later\r\n"),
        "{out}"
    );
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "451", "250", "221"],
        "the map still routes its own: {out}"
    );
    assert!(!out.contains("\r\n5"), "never a permanent reply: {out}");
    let rec = rec_a.lock().unwrap();
    assert!(
        !rec.lines.iter().any(|l| l.contains("carol")),
        "{:?}",
        rec.lines
    );
    assert_eq!(relay.directory.as_ref().unwrap().counters().errors, 1);
    assert_eq!(submission.directory.as_ref().unwrap().counters().errors, 1);
}

#[tokio::test]
async fn an_expired_answer_stands_in_while_the_directory_fails() {
    let (b, rec_b) = backend(Fault::None).await;
    let dir = tempdir("directory-stale");
    // Every answer expires at once: the second session finds only a stale one.
    let (env, fake) = with_directory(
        env(&dir, &[], &[b], ""),
        &[("carol@c.example", "b")],
        crate::config::directory::NotFound::Reject,
        None,
        |d| d.cache.positive_ttl = std::time::Duration::ZERO,
    );
    let input =
        b"EHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<carol@c.example>\r\nDATA\r\nm\r\n.\r\nQUIT\r\n";
    let out = converse(&env, input).await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    fake.fail(true);
    let out = converse(&env, input).await;
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    assert_eq!(rec_b.lock().unwrap().messages.len(), 2);
    assert_eq!(fake.calls(), 2);
    let to = crate::smtp::Address::parse_user("carol@c.example").unwrap();
    let crate::service::Routed::Route(_, source) = env.route_recipient(&to).await else {
        panic!("no stale answer");
    };
    assert_eq!(source.to_string(), "directory people (stale cache)");
    assert_eq!(env.directory.as_ref().unwrap().counters().stale, 2);
}
