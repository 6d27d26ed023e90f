//! SQL directories against real servers in the lab: PostgreSQL 15 and MariaDB 10.11, each
//! a lab process on a back-end address with TLS only. The front-end's source
//! (`robustifier::directory::open`) is asked from inside a front-end namespace: hostile
//! keys reach only the rows holding exactly their text, the session runs over TLS (the
//! server's own view of it) and a certificate from another CA is refused, and a lookup
//! fails over to the second server while the first is stopped or frozen. End to end, the
//! lab cluster routes mail and POP3 logins by each engine in turn.
//! Privileged: run as root with `ROBUSTIFIER_REQUIRE_PRIVILEGED=1`.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use robustifier::{
    config::directory::{RawDirectory, directories, sql::RawSql},
    directory::{Found, Key, Source, SourceError},
};
use robustifier_lab::{
    Lab, Netns, Plan, cli,
    client::send_mail_in,
    cluster::{Cluster, Directories},
    directory::sql::{SqlServer, literal, sqlite_exec, sqlite_file},
    mail::{clients, tls},
    privileged,
    topology::{VIP_POP, VIP_SMTP},
    unique_prefix,
};

fn lab(tag: &str) -> Option<Lab> {
    if !privileged::check_tools(
        tag,
        &["sqlite3", "mariadbd", "mariadb-install-db", "setpriv"],
    ) {
        return None;
    }
    if !Path::new("/usr/lib/postgresql/15/bin/postgres").is_file() {
        privileged::unmet(tag, "PostgreSQL 15 not installed (run `cargo xtask setup`)");
        return None;
    }
    Some(Lab::up(&unique_prefix(tag), Plan::new(1, 2)).expect("lab up"))
}

/// The source of a `[[directory]]` with `[directory.sql]` over `urls`, as the front-end
/// builds it.
fn source(
    urls: &[String],
    server: &SqlServer,
    ca: &Path,
    query: &str,
    timeout_ms: u64,
) -> Arc<dyn Source> {
    let raw = RawDirectory {
        name: "sql".into(),
        timeout_ms: Some(timeout_ms),
        cache_ttl_secs: None,
        negative_ttl_secs: None,
        cache_size: None,
        stale: None,
        stale_max_secs: None,
        not_found: None,
        ldap: None,
        sql: Some(RawSql {
            urls: urls.to_vec(),
            password_file: Some(server.password_file.display().to_string()),
            query: query.into(),
            tls: None,
            ca_file: Some(ca.display().to_string()),
            pool_size: Some(2),
            plaintext_password: None,
        }),
        radius: None,
    };
    let d = directories(vec![raw], Path::new("/")).expect("valid directory");
    robustifier::directory::open(&d[0]).expect("source")
}

/// Runs `f` on a runtime whose sockets live in `ns` (the front-end's namespace).
fn in_ns<T: Send>(ns: &Netns, f: impl AsyncFnOnce() -> T + Send) -> T {
    ns.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
    .expect("in the namespace")
}

const BY_ADDRESS: &str = "SELECT smtp_pool FROM mailbox WHERE address = %s";

fn hostile_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "' OR '1'='1",
        "x' OR '1'='1' --",
        "%",
        "_",
        "*",
        "\\",
        ";DROP TABLE mailbox;--",
        "nul\0byte",
        "ünïcødé@exämple.test",
        "ALICE@example.test",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    keys.push("a".repeat(10_000) + "@example.test");
    keys
}

/// On `server`: every hostile key finds nothing; with a row of its own it finds that row
/// only; the lab's rows are still there.
fn hostile_keys_match_only_their_literal_rows(lab: &Lab, server: &SqlServer, postgres: bool) {
    let fe = lab.frontends[0].ns.clone();
    let keys = hostile_keys();
    let urls = [server.url()];
    let check = |expect_own: bool| {
        let keys = keys.clone();
        let s = source(&urls, server, &server.ca, BY_ADDRESS, 10_000);
        in_ns(&fe, async move || {
            for (i, k) in keys.iter().enumerate() {
                let got = s.lookup(&Key::recipient(k.clone())).await;
                // PostgreSQL text holds no NUL: that key can have no row of its own.
                let own = expect_own && !(postgres && k.contains('\0'));
                let want = if own {
                    Found::Values(vec![format!("literal-{i}")])
                } else {
                    Found::NotFound
                };
                assert_eq!(
                    got,
                    Ok(want),
                    "key {:?}",
                    k.chars().take(40).collect::<String>()
                );
            }
            assert_eq!(
                s.lookup(&Key::recipient("alice@example.test")).await,
                Ok(Found::Values(vec!["be1".into()]))
            );
        });
    };
    check(false);
    for (i, k) in keys.iter().enumerate() {
        if postgres && k.contains('\0') {
            continue;
        }
        let value = if k.contains('\0') {
            // MariaDB: the NUL as a function of its code, not inside a literal.
            let (a, b) = k.split_once('\0').expect("nul");
            format!("CONCAT({}, CHAR(0), {})", literal(a), literal(b))
        } else {
            literal(k)
        };
        server
            .sql(&format!(
                "INSERT INTO mailbox (address, smtp_pool) VALUES ({value}, 'literal-{i}');"
            ))
            .expect("insert a hostile row");
    }
    check(true);
    // Remove them again for the other tests on this server.
    server
        .sql("DELETE FROM mailbox WHERE smtp_pool LIKE 'literal-%';")
        .expect("delete the hostile rows");
}

/// The server's own view of the source's session: its TLS protocol version.
fn tls_seen_by_server(lab: &Lab, server: &SqlServer, query: &str) -> Found {
    let fe = lab.frontends[0].ns.clone();
    let s = source(&[server.url()], server, &server.ca, query, 10_000);
    in_ns(&fe, async move || {
        s.lookup(&Key::recipient("alice@example.test"))
            .await
            .expect("TLS query")
    })
}

/// A source trusting another CA than the server's is refused at the handshake.
fn a_certificate_from_another_ca_is_refused(lab: &Lab, server: &SqlServer) {
    let other = lab.log_dir.join("other-ca");
    let other_ca = tls::host_cert(&other, "x", "x.robustifier.test", &[])
        .expect("other CA")
        .ca;
    let fe = lab.frontends[0].ns.clone();
    let s = source(&[server.url()], server, &other_ca, BY_ADDRESS, 5_000);
    let got = in_ns(&fe, async move || {
        s.lookup(&Key::recipient("alice@example.test")).await
    });
    assert!(
        matches!(&got, Err(SourceError::Unavailable(why)) if why.to_lowercase().contains("certificate")),
        "{got:?}"
    );
}

#[test]
fn postgres_source() {
    let Some(mut lab) = lab("dsqlpg") else { return };
    let (ns, ip) = (lab.backends[0].ns.clone(), lab.backends[0].v4);
    let pg = SqlServer::postgres(&mut lab, &ns, ip.into(), "pg1").expect("PostgreSQL");
    hostile_keys_match_only_their_literal_rows(&lab, &pg, true);
    let seen = tls_seen_by_server(
        &lab,
        &pg,
        "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl AND %s <> ''",
    );
    assert!(
        matches!(&seen, Found::Values(v) if v.len() == 1 && v[0].starts_with("TLSv1.")),
        "{seen:?}"
    );
    a_certificate_from_another_ca_is_refused(&lab, &pg);
}

#[test]
fn mariadb_source() {
    let Some(mut lab) = lab("dsqlmy") else { return };
    let (ns, ip) = (lab.backends[0].ns.clone(), lab.backends[0].v4);
    let my = SqlServer::mariadb(&mut lab, &ns, ip.into(), "my1").expect("MariaDB");
    hostile_keys_match_only_their_literal_rows(&lab, &my, false);
    let seen = tls_seen_by_server(
        &lab,
        &my,
        "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_version' AND %s <> ''",
    );
    assert!(
        matches!(&seen, Found::Values(v) if v.len() == 1 && v[0].starts_with("TLSv1.")),
        "{seen:?}"
    );
    a_certificate_from_another_ca_is_refused(&lab, &my);
}

/// Two servers: the second answers while the first is stopped, then while it is frozen
/// (its connections open, nothing answering); with both down the lookup fails; the first
/// answers again once it is back.
#[test]
fn postgres_failover() {
    let Some(mut lab) = lab("dsqlfo") else { return };
    let (ns1, ip1) = (lab.backends[0].ns.clone(), lab.backends[0].v4);
    let (ns2, ip2) = (lab.backends[1].ns.clone(), lab.backends[1].v4);
    let pg1 = SqlServer::postgres(&mut lab, &ns1, ip1.into(), "pg1").expect("pg1");
    let pg2 = SqlServer::postgres(&mut lab, &ns2, ip2.into(), "pg2").expect("pg2");
    // Both hold the password of pg1's file: the source reads one password_file.
    let password = std::fs::read_to_string(&pg1.password_file).expect("password");
    pg2.admin(&format!(
        "ALTER ROLE robustifier PASSWORD {};",
        literal(password.trim_end())
    ))
    .expect("same password on pg2");
    // Each server says which one it is, so an answer tells who gave it.
    let query =
        "SELECT smtp_pool || '@' || host(inet_server_addr()) FROM mailbox WHERE address = %s";
    let fe = lab.frontends[0].ns.clone();
    let s = source(&[pg1.url(), pg2.url()], &pg1, &pg1.ca, query, 10_000);
    let from = |ip: std::net::Ipv4Addr| Ok(Found::Values(vec![format!("be1@{ip}")]));
    let lab = &mut lab;
    // One runtime for the whole sequence: the source's pools keep their connections.
    in_ns(&fe, async move || {
        let key = Key::recipient("alice@example.test");
        assert_eq!(
            s.lookup(&key).await,
            from(ip1),
            "both up: the first answers"
        );
        pg1.stop(lab).expect("stop pg1");
        assert_eq!(s.lookup(&key).await, from(ip2), "pg1 stopped: pg2 answers");
        pg1.start(lab).expect("start pg1");
        assert_eq!(
            s.lookup(&key).await,
            from(ip1),
            "pg1 back: it answers again"
        );
        pg1.pause(lab).expect("pause pg1");
        assert_eq!(s.lookup(&key).await, from(ip2), "pg1 frozen: pg2 answers");
        pg2.stop(lab).expect("stop pg2");
        let got = s.lookup(&key).await;
        assert!(
            matches!(got, Err(SourceError::Unavailable(_))),
            "pg1 frozen, pg2 stopped: no answer, got {got:?}"
        );
        pg1.resume(lab).expect("resume pg1");
        assert_eq!(s.lookup(&key).await, from(ip1), "pg1 thawed: it answers");
    });
}

/// `[[directory]]` blocks for the lab's three services on one engine (`prefix`-smtp,
/// -sub, -pop), each reading its column of `mailbox`; `server` keys (URL, password, CA)
/// or an SQLite URL.
fn cluster_directories(prefix: &str, urls: &[String], server: Option<&SqlServer>) -> String {
    let mut out = String::new();
    for (kind, column) in [
        ("smtp", "smtp_pool"),
        ("sub", "submission_pool"),
        ("pop", "pop_pool"),
    ] {
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        out.push_str(&format!(
            "[[directory]]\nname = \"{prefix}-{kind}\"\n# Answers expire at once: a stopped server shows stale answers.\ncache_ttl_secs = 1\nnegative_ttl_secs = 1\n\n[directory.sql]\nurls = [{}]\nquery = \"SELECT {column} FROM mailbox WHERE address = %s\"\n",
            urls.join(", ")
        ));
        if let Some(s) = server {
            out.push_str(&format!(
                "password_file = {:?}\nca_file = {:?}\n",
                s.password_file.display().to_string(),
                s.ca.display().to_string()
            ));
        }
        out.push('\n');
    }
    out
}

fn use_engine(c: &mut Cluster, prefix: &str, toml: &str) {
    c.use_directories(Directories {
        toml: toml.to_owned(),
        smtp: format!("{prefix}-smtp"),
        submission: format!("{prefix}-sub"),
        pop: format!("{prefix}-pop"),
    });
}

fn vip_smtp() -> SocketAddr {
    SocketAddr::new(VIP_SMTP.into(), 25)
}

/// Mail to alice, carol and erin lands in their back-ends' mailboxes, and their POP3
/// logins reach those back-ends (what they retrieve is their Maildir).
fn mail_and_logins_reach_their_backends(c: &Cluster, round: &str) {
    let ca = c.ca();
    for to in [
        "alice@example.test",
        "carol@example.net",
        "erin@example.org",
    ] {
        let tag = format!("{round}-{}", to.split('@').next().unwrap_or_default());
        let (ns, dir) = (&c.lab.client.ns, &c.lab.log_dir);
        clients::swaks_deliver(
            ns,
            "client.robustifier.test",
            dir,
            vip_smtp(),
            to,
            &tag,
            &[],
        );
        clients::delivered(c.host_of(to), to, &tag);
    }
    for user in [
        "alice@example.test",
        "carol@example.net",
        "erin@example.org",
    ] {
        let pop = SocketAddr::new(VIP_POP.into(), 995);
        let got = clients::poplib(&c.lab.client.ns, pop, "pop3s", user, &c.password(user), &ca);
        assert!(got.get("error").is_none(), "{round}: {user}: {got}");
        let retrieved: Vec<Vec<u8>> = got["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| clients::b64decode(m.as_str().expect("base64")))
            .collect();
        assert_eq!(
            retrieved,
            c.host_of(user).messages(user),
            "{round}: {user}'s login reached their back-end"
        );
    }
}

/// The last reply to RCPT TO:<to> in a session through the SMTP VIP.
fn rcpt_reply(c: &Cluster, to: &str) -> String {
    let r = send_mail_in(
        &c.lab.client.ns,
        vip_smtp(),
        "sender@client.example.org",
        &[to],
        "Subject: directory\r\n\r\nrcpt check\r\n",
    );
    // Greeting, EHLO, MAIL, RCPT.
    r.get(3)
        .cloned()
        .unwrap_or_else(|| format!("no RCPT reply: {r:?}"))
}

/// The lab cluster routed by PostgreSQL, then (reloaded) by MariaDB, then by an SQLite
/// file: each round's mail and POP3 logins reach the right back-ends. With PostgreSQL
/// stopped, cached recipients flow on their stale answers and an uncached one gets
/// 451 4.3.0; back, it answers again. Each later round asks a key the earlier sources
/// cannot answer (their servers stopped, or a row only the new source has), so an answer
/// shows the reload switched sources.
#[test]
fn cluster_routes_by_postgres_then_mariadb_then_sqlite() {
    if !privileged::check_tools("dsqle2e", &["sqlite3", "mariadbd", "setpriv"]) {
        return;
    }
    let mut c = Cluster::up(&unique_prefix("dsqle2e"), 1).expect("cluster up");
    let (ns1, ip1) = (c.lab.backends[0].ns.clone(), c.lab.backends[0].v4);
    let (ns2, ip2) = (c.lab.backends[1].ns.clone(), c.lab.backends[1].v4);
    let pg = SqlServer::postgres(&mut c.lab, &ns1, ip1.into(), "pg").expect("PostgreSQL");
    let my = SqlServer::mariadb(&mut c.lab, &ns2, ip2.into(), "my").expect("MariaDB");
    let lite = sqlite_file(&c.lab, "mailbox.db").expect("SQLite file");
    // Only the SQLite file refuses bob: proof that the last round asks it.
    sqlite_exec(
        &lite,
        "UPDATE mailbox SET smtp_pool = 'reject' WHERE address = 'bob@example.test';",
    )
    .expect("bob refused in SQLite");
    let toml = [
        cluster_directories("pg", &[pg.url()], Some(&pg)),
        cluster_directories("my", &[my.url()], Some(&my)),
        cluster_directories("lite", &[format!("sqlite://{}", lite.display())], None),
    ]
    .concat();

    // Round 1: PostgreSQL.
    use_engine(&mut c, "pg", &toml);
    c.start_frontend(0).expect("front-end");
    c.add_vips(0).expect("virtual addresses");
    mail_and_logins_reach_their_backends(&c, "pg");
    pg.stop(&mut c.lab).expect("stop PostgreSQL");
    // Past the cache's 1 s, alice's answer is stale: still served while the server is down.
    std::thread::sleep(Duration::from_secs(2));
    let r = rcpt_reply(&c, "alice@example.test");
    assert!(r.starts_with("250"), "stale answer for alice: {r}");
    let r = rcpt_reply(&c, "bob@example.test");
    assert!(r.starts_with("451 4.3.0"), "bob was never looked up: {r}");
    pg.start(&mut c.lab).expect("start PostgreSQL");
    let r = rcpt_reply(&c, "bob@example.test");
    assert!(r.starts_with("250"), "PostgreSQL back: bob routed: {r}");

    // Round 2: MariaDB, with PostgreSQL stopped: dave, never asked before, is routed.
    pg.stop(&mut c.lab).expect("stop PostgreSQL");
    use_engine(&mut c, "my", &toml);
    let cfg = c.frontend_config(0);
    cli::reload_by_signal(&mut c.lab, 0, &cfg, 1, true);
    let r = rcpt_reply(&c, "dave@example.net");
    assert!(r.starts_with("250"), "MariaDB routes dave: {r}");
    mail_and_logins_reach_their_backends(&c, "my");

    // Round 3: SQLite, MariaDB stopped too; only the file refuses bob.
    my.stop(&mut c.lab).expect("stop MariaDB");
    use_engine(&mut c, "lite", &toml);
    let cfg = c.frontend_config(0);
    cli::reload_by_signal(&mut c.lab, 0, &cfg, 2, true);
    let r = rcpt_reply(&c, "bob@example.test");
    assert!(r.starts_with("550"), "the SQLite file refuses bob: {r}");
    mail_and_logins_reach_their_backends(&c, "lite");
}
