//! SQL directories against real servers in the lab: PostgreSQL 15 and MariaDB 10.11, each
//! a lab process on a back-end address with TLS only. The front-end's source
//! (`robustifier::directory::open`) is asked from inside a front-end namespace: hostile
//! keys reach only the rows holding exactly their text, the session runs over TLS (the
//! server's own view of it) and a certificate from another CA is refused, and a lookup
//! fails over to the second server while the first is stopped or frozen.
//! Privileged: run as root with `ROBUSTIFIER_REQUIRE_PRIVILEGED=1`.

use std::{path::Path, sync::Arc};

use robustifier::{
    config::directory::{RawDirectory, directories, sql::RawSql},
    directory::{Found, Key, Source, SourceError},
};
use robustifier_lab::{
    Lab, Netns, Plan,
    directory::sql::{SqlServer, literal},
    mail::tls,
    privileged, unique_prefix,
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
