//! `robustifier route lookup|flush|directories` without root: a front-end (`run
//! --without-kernel`) whose SMTP service routes by an SQLite directory (written with the
//! `sqlite3` tool); what the operator sees of an answer's origin (source, cache), the
//! route a session would take (a pool, a pinned back-end, `reject`, the service's pool
//! for an unknown key), the counters, a flush, and the metrics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::process::Command;

use serde_json::Value;
use support::{
    Daemon, config, free_port, get, promtool_accepts, robustifier, run_without_kernel, tempdir,
};

fn sqlite(db: &std::path::Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .unwrap_or_else(|e| {
            panic!("sqlite3 not runnable ({e}): `cargo xtask setup` installs Debian's sqlite3")
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `robustifier route ARGS --socket SOCKET`: stdout, or the failure's stderr as `Err`.
fn route(socket: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["route"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--socket", socket.to_str().unwrap()]);
    let out = robustifier(&all);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn lookup(socket: &std::path::Path, key: &str, extra: &[&str]) -> Value {
    let mut args = vec!["lookup", key, "--service", "smtp", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&route(socket, &args).unwrap()).unwrap()
}

#[test]
fn an_operator_sees_how_a_directory_routes_and_flushes_its_cache() {
    let dir = tempdir("route-lookup");
    let db = dir.join("mailboxes.db");
    sqlite(
        &db,
        "CREATE TABLE mailbox (address TEXT PRIMARY KEY, pool TEXT NOT NULL);\
         INSERT INTO mailbox VALUES ('alice@example.test', 'a'), ('bob@example.test', 'reject'),\
         ('carol@example.test', 'b2');",
    );
    let socket = dir.join("control").join("fe.sock");
    let metrics = free_port();
    let file = dir.join("robustifier.toml");
    std::fs::write(
        &file,
        config(&format!(
            "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {}\nvips = [\"127.0.0.1\"]\n\
             directory = \"local\"\npool = \"b\"\n\
             [[directory]]\nname = \"local\"\n[directory.sql]\nurls = [\"sqlite://{}\"]\n\
             query = \"SELECT pool FROM mailbox WHERE address = %s\"\n\
             [[pool]]\nname = \"a\"\nidentity = \"none\"\nbackend = [{{ name = \"a1\", address = \"127.0.0.1:9\" }}]\n\
             [[pool]]\nname = \"b\"\nidentity = \"none\"\nbackend = [{{ name = \"b1\", address = \"127.0.0.1:9\" }}, {{ name = \"b2\", address = \"127.0.0.1:9\" }}]\n\
             [ha]\ncontrol_socket = \"{}\"\n\
             [monitor]\nmetrics_listen = \"127.0.0.1:{metrics}\"\nmetrics_insecure_no_auth = true\n",
            free_port(),
            db.display(),
            socket.display(),
        )),
    )
    .unwrap();
    let (child, _log) = run_without_kernel(&file);
    let daemon = Daemon::new(child);

    // Asked of the source, then answered from the cache, then asked again with --fresh.
    let first = lookup(&socket, "alice@example.test", &[]);
    assert_eq!(first["decision"], "a", "{first}");
    assert_eq!(first["source"], "directory local (source)", "{first}");
    assert_eq!(first["directory"]["values"], serde_json::json!(["a"]));
    let cached = lookup(&socket, "alice@EXAMPLE.test", &[]);
    assert_eq!(
        cached["key"], "alice@example.test",
        "the domain is lower-cased: {cached}"
    );
    assert_eq!(cached["directory"]["origin"], "cache", "{cached}");
    assert_eq!(cached["source"], "directory local (cache)", "{cached}");
    let fresh = lookup(&socket, "alice@example.test", &["--fresh"]);
    assert_eq!(fresh["directory"]["origin"], "source", "{fresh}");

    // A rejected key, a pinned back-end, and an unknown key falling to the service's pool.
    assert_eq!(
        lookup(&socket, "bob@example.test", &[])["decision"],
        "reject"
    );
    let carol = lookup(&socket, "carol@example.test", &[]);
    assert_eq!(carol["decision"], "b/b2", "{carol}");
    let zed = lookup(&socket, "zed@example.test", &[]);
    assert_eq!(zed["decision"], "b", "{zed}");
    assert_eq!(zed["source"], "the service's pool", "{zed}");
    assert_eq!(zed["directory"]["not_found"], true, "{zed}");
    // A hostile key is one literal key: nothing matches it.
    let wild = lookup(&socket, "'%'@example.test", &[]);
    assert_eq!(wild["directory"]["not_found"], true, "{wild}");

    // What an operator mistyped is said, not guessed.
    let e = route(&socket, &["lookup", "alice", "--service", "smtp"]).unwrap_err();
    assert!(e.contains("is not an address"), "{e}");
    let e = route(
        &socket,
        &["lookup", "alice@example.test", "--service", "nope"],
    )
    .unwrap_err();
    assert!(e.contains("no service is called \"nope\""), "{e}");
    let e = route(&socket, &["flush", "--directory", "nope"]).unwrap_err();
    assert!(
        e.contains("no service uses a directory called \"nope\""),
        "{e}"
    );

    // The counters, then a flush: the next lookup asks the source again.
    let stats: Value =
        serde_json::from_str(&route(&socket, &["directories", "--json"]).unwrap()).unwrap();
    let local = &stats[0];
    assert_eq!(
        (local["name"].as_str(), local["kind"].as_str()),
        (Some("local"), Some("sqlite"))
    );
    assert!(local["counters"]["hits"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        local["counters"]["misses"].as_u64().unwrap() >= 5,
        "{stats}"
    );
    assert!(
        local["counters"]["cached"].as_u64().unwrap() >= 4,
        "{stats}"
    );
    assert_eq!(route(&socket, &["flush"]).unwrap().trim(), "flushed: local");
    let after = lookup(&socket, "alice@example.test", &[]);
    assert_eq!(after["directory"]["origin"], "source", "{after}");

    let (code, text) = get(metrics, "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        text.contains(
            "robustifier_directory_outcomes_total{directory=\"local\",kind=\"sqlite\",outcome=\"hit\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("robustifier_directory_cached_keys{directory=\"local\",kind=\"sqlite\"} 1"),
        "{text}"
    );
    promtool_accepts(&text);
    drop(daemon);
    std::fs::remove_dir_all(dir).unwrap();
}
