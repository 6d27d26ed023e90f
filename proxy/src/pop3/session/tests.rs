//! POP3 session scripts against scripted back-ends on loopback.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
};

use super::*;
use crate::{backend::PoolSet, config::Config};

/// A back-end with one user `alice` / `secret` and one message; `locked` answers the
/// login with `-ERR [IN-USE]`.
async fn backend(locked: bool) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let seen = Arc::clone(&s2);
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut rd = BufReader::new(rd);
                let _ = wr.write_all(b"+OK fake ready\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                        seen.lock().unwrap().push("<closed>".into());
                        return;
                    }
                    let cmd = line.trim_end().to_owned();
                    seen.lock().unwrap().push(cmd.clone());
                    let reply: &[u8] = match cmd.as_str() {
                        "USER alice" => b"+OK\r\n",
                        "PASS secret" if locked => {
                            b"-ERR [IN-USE] Mailbox locked by another session\r\n"
                        }
                        "PASS secret" => b"+OK Logged in.\r\n",
                        c if c.starts_with("PASS") => b"-ERR [AUTH] Authentication failed.\r\n",
                        "STAT" => b"+OK 1 12\r\n",
                        "RETR 1" => b"+OK 12 octets\r\nSubject: x\r\n\r\n..hi\r\n.\r\n",
                        "QUIT" => {
                            let _ = wr.write_all(b"+OK Logging out.\r\n").await;
                            return;
                        }
                        _ => b"-ERR unknown\r\n",
                    };
                    let _ = wr.write_all(reply).await;
                }
            });
        }
    });
    (addr, seen)
}

fn env(dir: &std::path::Path, store: SocketAddr) -> ServiceContext {
    env_with(dir, store, "")
}

/// [`env`] with `extra` keys in the service section. The sessions' client is not on
/// loopback and not on TLS: unless `extra` says otherwise, the service allows passwords in
/// clear.
fn env_with(dir: &std::path::Path, store: SocketAddr, extra: &str) -> ServiceContext {
    let extra = if extra.contains("plaintext_auth") {
        extra.to_owned()
    } else {
        format!("plaintext_auth = true\n{extra}")
    };
    let routes = dir.join("routes");
    std::fs::write(&routes, "alice store\nmallory reject\n").unwrap();
    let text = format!(
        "[frontend]\nname = \"fe\"\n[[service]]\nname = \"pop3\"\nprotocol = \"pop3\"\nport = 110\nroutes = \"routes\"\n{extra}\n\
         [[pool]]\nname = \"store\"\nidentity = \"none\"\nbackend = [{{ name = \"s\", address = \"{store}\" }}]\n"
    );
    let cfg = Config::parse(&dir.join("t.toml"), &text).unwrap();
    let pools = Arc::new(PoolSet::standalone(&cfg).unwrap());
    let groups = Arc::new(crate::backend::groups::Groups::new(cfg.groups.clone()));
    ServiceContext::new(&cfg.services[0], pools, None, groups).unwrap()
}

async fn converse(env: &ServiceContext, input: &[u8]) -> String {
    converse_from(env, "198.18.0.100:1", input).await
}

/// [`converse`] for a client at `peer`.
async fn converse_from(env: &ServiceContext, peer: &str, input: &[u8]) -> String {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let s = Session::new(
        Conn::Plain(server),
        env,
        peer.parse().unwrap(),
        "198.18.0.110:110".parse().unwrap(),
        "t".into(),
    );
    tokio::time::timeout(std::time::Duration::from_secs(10), s.run())
        .await
        .unwrap()
        .unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    out
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rb-pop3-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn login_is_replayed_and_the_rest_relayed() {
    let (addr, seen) = backend(false).await;
    let env = env(&dir("relay"), addr);
    let out = converse(
        &env,
        b"CAPA\r\nSTAT\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("SASL PLAIN\r\n"), "{out}");
    assert!(out.contains("-ERR Not authenticated yet"), "{out}");
    assert!(out.contains("+OK Logged in.\r\n+OK 1 12\r\n+OK 12 octets\r\nSubject: x\r\n\r\n..hi\r\n.\r\n+OK Logging out.\r\n"), "{out}");
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        ["USER alice", "PASS secret", "STAT", "RETR 1", "QUIT"]
    );
}

#[tokio::test]
async fn backend_response_codes_reach_the_client_unchanged() {
    let (addr, _) = backend(true).await;
    let env = env(&dir("inuse"), addr);
    let out = converse(&env, b"USER alice\r\nPASS secret\r\nQUIT\r\n").await;
    assert!(
        out.contains("-ERR [IN-USE] Mailbox locked by another session\r\n"),
        "{out}"
    );
}

#[tokio::test]
async fn auth_plain_and_unknown_users() {
    let (addr, _) = backend(false).await;
    let env = env(&dir("auth"), addr);
    // "\0alice\0secret"
    let out = converse(&env, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nQUIT\r\n").await;
    assert!(out.contains("+OK Logged in."), "{out}");
    let out = converse(
        &env,
        b"USER mallory\r\nPASS x\r\nUSER nobody\r\nPASS x\r\nPASS y\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        out.matches("-ERR [AUTH] Authentication failed").count(),
        2,
        "{out}"
    );
    assert!(out.contains("-ERR USER first"), "{out}");
}

#[tokio::test]
async fn session_without_quit_never_sends_quit_to_the_backend() {
    let (addr, seen) = backend(false).await;
    let env = env(&dir("noquit"), addr);
    let _ = converse(&env, b"USER alice\r\nPASS secret\r\nRETR 1\r\n").await;
    // The relay ends when the client's side closes; give the back-end a moment to see it.
    for _ in 0..50 {
        if seen.lock().unwrap().last().map(String::as_str) == Some("<closed>") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = seen.lock().unwrap();
    assert!(!seen.iter().any(|l| l == "QUIT"), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("<closed>"));
}

#[tokio::test]
async fn dead_backend_gives_sys_temp() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = env(&dir("dead"), dead);
    let out = converse(&env, b"USER alice\r\nPASS secret\r\nQUIT\r\n").await;
    assert!(out.contains("-ERR [SYS/TEMP] "), "{out}");
}

/// Holds every session slot of back-end `id` (the pool's default limit of 1000).
fn fill(env: &ServiceContext, id: u32) -> Vec<crate::health::board::SessionGuard> {
    (0..1000)
        .map(|_| env.pools.board.acquire(id, 1000).unwrap())
        .collect()
}

#[tokio::test]
async fn a_busy_login_waits_for_a_freed_slot() {
    let (addr, _) = backend(false).await;
    let env = env_with(&dir("wait"), addr, "wait_ms = 8000");
    let held = fill(&env, 0);
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(held);
    });
    let out = converse(&env, b"USER alice\r\nPASS secret\r\nQUIT\r\n").await;
    release.await.unwrap();
    assert!(out.contains("+OK Logged in.\r\n"), "{out}");
    assert_eq!(env.pools.admission.waiting(&["store".to_owned()]), 0);
}

#[tokio::test]
async fn a_busy_login_is_deflected_when_the_wait_is_over() {
    let (addr, seen) = backend(false).await;
    let env = env_with(&dir("waitover"), addr, "wait_ms = 200");
    let _held = fill(&env, 0);
    let out = converse(&env, b"USER alice\r\nPASS secret\r\nQUIT\r\n").await;
    assert!(out.contains("-ERR [SYS/TEMP] System busy"), "{out}");
    assert!(seen.lock().unwrap().is_empty(), "no back-end was used");
    assert_eq!(env.pools.admission.waiting(&["store".to_owned()]), 0);
}

/// As for SMTP: the login exchanges and the relay are boxed, so a session waiting for its
/// client's next command holds a small future.
#[tokio::test]
async fn a_waiting_session_holds_a_small_future() {
    let d = dir("size");
    let env = env(&d, "127.0.0.1:1".parse().unwrap());
    let (_client, server) = tokio::io::duplex(64);
    let run = Session::new(
        Conn::Plain(server),
        &env,
        "198.18.0.100:1".parse().unwrap(),
        "198.18.0.110:110".parse().unwrap(),
        "t".into(),
    )
    .run();
    let size = std::mem::size_of_val(&run);
    eprintln!("POP3 session future: {size} bytes");
    assert!(size <= 1280, "POP3 session future of {size} bytes");
}

const PLAINTEXT_REFUSED: &str =
    "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections\r\n";

#[tokio::test]
async fn no_password_in_clear_except_from_loopback() {
    let (addr, seen) = backend(false).await;
    let env = env_with(&dir("clear"), addr, "plaintext_auth = false");
    let out = converse(
        &env,
        b"CAPA\r\nUSER alice\r\nPASS secret\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nQUIT\r\n",
    )
    .await;
    assert!(!out.contains("\r\nUSER\r\n"), "{out}");
    assert!(!out.contains("SASL"), "{out}");
    assert_eq!(out.matches(PLAINTEXT_REFUSED).count(), 3, "{out}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "no password reached a back-end"
    );
    let out = converse_from(
        &env,
        "127.0.0.1:1",
        b"CAPA\r\nUSER alice\r\nPASS secret\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("\r\nUSER\r\nSASL PLAIN\r\n"), "{out}");
    assert!(out.contains("+OK Logged in."), "{out}");
}

#[tokio::test]
async fn a_client_guessing_passwords_is_refused_before_any_backend() {
    let (addr, seen) = backend(false).await;
    let env = env(&dir("guess"), addr);
    let max = crate::front::limits::AUTH_FAILURES_MAX as usize;
    let input =
        "USER alice\r\nPASS wrong\r\n".repeat(max) + "USER alice\r\nPASS secret\r\nQUIT\r\n";
    let out = converse(&env, input.as_bytes()).await;
    assert_eq!(
        out.matches("-ERR [AUTH] Authentication failed").count(),
        max,
        "{out}"
    );
    assert!(
        out.ends_with("-ERR [LOGIN-DELAY] Too many failed logins, try again later\r\n"),
        "{out}"
    );
    let passes = |seen: &Mutex<Vec<String>>| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("PASS"))
            .count()
    };
    assert_eq!(passes(&seen), max, "the refused login reached no back-end");
    // AUTH PLAIN of the same client, in a new session, is refused too.
    let out = converse(&env, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nQUIT\r\n").await;
    assert!(out.contains("-ERR [LOGIN-DELAY]"), "{out}");
    assert_eq!(passes(&seen), max);
    // Another client logs in.
    let out = converse_from(
        &env,
        "198.18.0.200:1",
        b"USER alice\r\nPASS secret\r\nQUIT\r\n",
    )
    .await;
    assert!(out.contains("+OK Logged in."), "{out}");
}

/// A session of a client at 198.18.0.100 that sends `input` and then neither sends nor
/// reads; the session's result, or a panic if it is still running a day later.
async fn silent_client(env: &ServiceContext, input: &[u8], buffer: usize) -> Result<(), Pop3Error> {
    let (mut client, server) = tokio::io::duplex(buffer);
    client.write_all(input).await.unwrap();
    let s = Session::new(
        Conn::Plain(server),
        env,
        "198.18.0.100:1".parse().unwrap(),
        "198.18.0.110:110".parse().unwrap(),
        "t".into(),
    );
    let r = tokio::time::timeout(std::time::Duration::from_secs(24 * 3600), s.run())
        .await
        .expect("the session ends");
    drop(client);
    r
}

#[tokio::test(start_paused = true)]
async fn a_silent_sasl_continuation_times_out() {
    let env = env(&dir("sasl"), "127.0.0.1:1".parse().unwrap());
    let r = silent_client(&env, b"AUTH PLAIN\r\n", 1024).await;
    assert!(matches!(r, Err(Pop3Error::Timeout)), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_at_the_write_deadline() {
    let env = env(&dir("noread"), "127.0.0.1:1".parse().unwrap());
    // The capability lists fill the client's receive buffer, which it never reads.
    let r = silent_client(&env, &b"CAPA\r\n".repeat(100), 1024).await;
    match r {
        Err(Pop3Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_logged_in_session_that_goes_quiet_is_logged_out() {
    let (addr, seen) = backend(false).await;
    let env = env(&dir("autologout"), addr);
    let (mut client, server) = tokio::io::duplex(1024);
    client
        .write_all(b"USER alice\r\nPASS secret\r\n")
        .await
        .unwrap();
    let session = tokio::spawn({
        let s = Session::new(
            Conn::Plain(server),
            Box::leak(Box::new(env)),
            "198.18.0.100:1".parse().unwrap(),
            "198.18.0.110:110".parse().unwrap(),
            "t".into(),
        );
        s.run()
    });
    let mut reader = BufReader::new(&mut client);
    let mut line = String::new();
    while !line.contains("Logged in") {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
    }
    // Logged in and relaying; from now on nothing moves either way.
    tokio::time::pause();
    // RFC 1939 3: the autologout timer is at least 10 minutes; a day is far beyond it.
    tokio::time::timeout(std::time::Duration::from_secs(24 * 3600), session)
        .await
        .expect("the relay ends after the autologout time")
        .unwrap()
        .unwrap();
    assert!(!seen.lock().unwrap().iter().any(|l| l == "QUIT"));
}

/// A back-end that logs `alice` in and then resets the connection at her first command.
async fn resetting_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let _ = s.get_mut().write_all(b"+OK fake ready\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let reply: &[u8] = match line.trim_end() {
                        "USER alice" => b"+OK\r\n",
                        "PASS secret" => b"+OK Logged in.\r\n",
                        _ => {
                            // SO_LINGER 0: closing sends a reset, like a crashed server.
                            let _ = socket2::SockRef::from(s.get_ref())
                                .set_linger(Some(std::time::Duration::ZERO));
                            return;
                        }
                    };
                    let _ = s.get_mut().write_all(reply).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_that_breaks_after_login_counts_as_a_failed_check() {
    let addr = resetting_backend().await;
    let d = dir("afterlogin");
    std::fs::write(d.join("routes"), "alice store\n").unwrap();
    // One failed check takes the back-end down.
    let text = format!(
        "[frontend]\nname = \"fe\"\n[[service]]\nname = \"pop3\"\nprotocol = \"pop3\"\nport = 110\nroutes = \"routes\"\nplaintext_auth = true\n\
         [[pool]]\nname = \"store\"\nidentity = \"none\"\nhealth = {{ fall = 1 }}\nbackend = [{{ name = \"s\", address = \"{addr}\" }}]\n"
    );
    let cfg = Config::parse(&d.join("t.toml"), &text).unwrap();
    let pools = Arc::new(PoolSet::standalone(&cfg).unwrap());
    let groups = Arc::new(crate::backend::groups::Groups::new(cfg.groups.clone()));
    let env = ServiceContext::new(&cfg.services[0], pools, None, groups).unwrap();
    let out = converse(&env, b"USER alice\r\nPASS secret\r\nSTAT\r\n").await;
    assert!(out.contains("+OK Logged in."), "{out}");
    assert_eq!(
        env.pools.board.record_for(0, 0).unwrap().state,
        robustifier_common::BACKEND_DOWN
    );
}

/// `env` without its map, routing by a directory (a fake source), with `pool` as the
/// service's pool.
fn with_directory(
    env: ServiceContext,
    answers: &[(&str, &str)],
    not_found: crate::config::directory::NotFound,
    pool: Option<&str>,
) -> (
    ServiceContext,
    Arc<crate::directory::resolver::testing::Fake>,
) {
    use crate::directory::resolver::{Resolver, testing};
    let fake = testing::Fake::new(answers);
    let mut d = testing::directory("people", not_found);
    // Every answer expires at once: a failing source leaves only stale ones.
    d.cache.positive_ttl = std::time::Duration::ZERO;
    let resolver = Resolver::with_source(&d, Arc::clone(&fake) as _);
    let mut service = (*env.service).clone();
    service.directory = Some("people".into());
    service.routes = None;
    service.pool = pool.map(str::to_owned);
    let mut env = env.with_directory(Some(Arc::new(resolver)));
    env.routes = None;
    env.service = Arc::new(service);
    (env, fake)
}

#[tokio::test]
async fn a_login_is_routed_by_the_directory_and_by_its_stale_answer() {
    let (addr, seen) = backend(false).await;
    let (env, fake) = with_directory(
        env(&dir("directory"), addr),
        &[("alice", "s")],
        crate::config::directory::NotFound::Reject,
        None,
    );
    let input = b"USER alice\r\nPASS secret\r\nQUIT\r\n";
    let out = converse(&env, input).await;
    assert!(out.contains("+OK Logged in.\r\n"), "{out}");
    fake.fail(true);
    let out = converse(&env, input).await;
    assert!(out.contains("+OK Logged in.\r\n"), "stale: {out}");
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|l| *l == "USER alice")
            .count(),
        2
    );
    assert_eq!(fake.calls(), 2);
    assert_eq!(env.directory.as_ref().unwrap().counters().stale, 1);
}

#[tokio::test]
async fn a_user_the_directory_does_not_know_goes_to_the_pool_or_is_refused() {
    use crate::config::directory::NotFound;
    let (addr, seen) = backend(false).await;
    let input = b"USER bob\r\nPASS secret\r\nQUIT\r\n";
    let (to_pool, _) = with_directory(
        env(&dir("dir-pool"), addr),
        &[],
        NotFound::Pool,
        Some("store"),
    );
    converse(&to_pool, input).await;
    assert!(seen.lock().unwrap().iter().any(|l| l == "USER bob"));
    seen.lock().unwrap().clear();
    let (refused, _) = with_directory(
        env(&dir("dir-reject"), addr),
        &[],
        NotFound::Reject,
        Some("store"),
    );
    let out = converse(&refused, input).await;
    assert!(out.contains("-ERR [AUTH] Authentication failed"), "{out}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn a_failing_directory_gives_sys_temp() {
    let (addr, seen) = backend(false).await;
    let (env, fake) = with_directory(
        env(&dir("dir-down"), addr),
        &[("alice", "store")],
        crate::config::directory::NotFound::Reject,
        Some("store"),
    );
    fake.fail(true);
    let out = converse(&env, b"USER alice\r\nPASS secret\r\nQUIT\r\n").await;
    assert!(
        out.contains("-ERR [SYS/TEMP] Directory temporarily unavailable\r\n"),
        "{out}"
    );
    assert!(seen.lock().unwrap().is_empty());
}
