//! SNMP notifications of alarms against net-snmp, on loopback: `robustifier run
//! --without-kernel` with one back-end down at first, then up, sends its traps to two
//! `snmptrapd`s, one that accepts only SNMPv2c with the community, one that accepts only
//! SNMPv3 with authentication and privacy for the user, and to a third as SNMPv3 informs
//! (authPriv, its engine discovered); each, with ROBUSTIFIER-MIB loaded, logs the alarm
//! raised and cleared by name. The MIB itself must load in `snmptranslate`
//! and pass `smilint` at its strictest level.
//!
//! `cargo xtask setup` installs the tools (Debian's snmptrapd, snmp, smitools) and the IETF
//! base modules the MIB imports (SNMPv2-SMI, -TC, -CONF: Debian ships them with erlang-snmp
//! only). Under `cargo xtask test` (`ROBUSTIFIER_REQUIRE_PRIVILEGED=1`) a missing one fails
//! the test; elsewhere the test says loudly that it did not run.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::{
    Daemon,
    cluster::{Cluster, wait_for},
    config, free_port, greeter, run_without_kernel, stop_daemon, tempdir,
};

const COMMUNITY: &str = "robustifier-test";
const USER: &str = "robustifier";
const AUTH_KEY: &str = "auth-key-0123";
const PRIV_KEY: &str = "priv-key-4567";
/// The front-end's snmpEngineID: 0x80 + enterprise 99999, format 4 (text), "fe-test".
const ENGINE_ID: &str = "8001869f0466652d74657374";

fn mib_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mib")
}

/// A program on PATH or in /usr/sbin (snmptrapd's home, not on every user's PATH).
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The folder of the IETF base modules (erlang-snmp's).
fn base_mibs() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/erlang/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("mibs"))
        .find(|p| p.join("SNMPv2-SMI.mib").is_file())
}

struct Tools {
    snmptrapd: PathBuf,
    snmptranslate: PathBuf,
    smilint: PathBuf,
    base: PathBuf,
}

/// The tools, or `None` after saying loudly why not (a failure under `cargo xtask test`).
fn tools(test: &str) -> Option<Tools> {
    let found = (
        program("snmptrapd"),
        program("snmptranslate"),
        program("smilint"),
        base_mibs(),
    );
    if let (Some(snmptrapd), Some(snmptranslate), Some(smilint), Some(base)) = found {
        return Some(Tools {
            snmptrapd,
            snmptranslate,
            smilint,
            base,
        });
    }
    let why = format!(
        "needs snmptrapd, snmptranslate, smilint and the IETF base MIBs \
         (Debian's snmptrapd, snmp, smitools and erlang-snmp; `cargo xtask setup` installs them); found {found:?}"
    );
    assert!(
        std::env::var_os("ROBUSTIFIER_REQUIRE_PRIVILEGED").is_none(),
        "{test}: {why}"
    );
    eprintln!("NOT RUN: {test}: {why}");
    None
}

fn mib_path(t: &Tools) -> String {
    format!("{}:{}", t.base.display(), mib_dir().display())
}

#[test]
fn the_mib_loads_in_snmptranslate_and_passes_smilint() {
    let Some(t) = tools("the_mib_loads_in_snmptranslate_and_passes_smilint") else {
        return;
    };
    // Only our module and its imports, so any complaint on stderr is about them.
    for (name, oid) in [
        ("robustifierAlarmRaised", ".1.3.6.1.4.1.99999.0.1"),
        ("robustifierAlarmCleared", ".1.3.6.1.4.1.99999.0.2"),
        ("robustifierAlarmKey", ".1.3.6.1.4.1.99999.1.2"),
    ] {
        let out = Command::new(&t.snmptranslate)
            .args([
                "-m",
                "ROBUSTIFIER-MIB",
                "-M",
                &mib_path(&t),
                "-IR",
                "-On",
                name,
            ])
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{name}: {stdout}{stderr}");
        assert_eq!(stdout.trim(), oid, "{stderr}");
        // net-snmp's note on its first run on a machine (it made its state directory)
        // says nothing about the module.
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("Created directory: "))
            .collect();
        assert!(complaints.is_empty(), "{name}: {stderr}");
    }
    // Level 6 reports everything libsmi checks, style included; -s: a summary of none.
    let smilint = |file: &Path| {
        let out = Command::new(&t.smilint)
            .env("SMIPATH", t.base.display().to_string())
            .args(["-l", "6", "-s"])
            .arg(file)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let mib = mib_dir().join("ROBUSTIFIER-MIB.txt");
    assert_eq!(smilint(&mib), "");
    // The check is no formality: the same module without its conformance groups is told off.
    let dir = tempdir("smilint");
    let text = std::fs::read_to_string(&mib).unwrap();
    let cut = text.find("robustifierCompliances OBJECT").unwrap();
    let broken = dir.join("ROBUSTIFIER-MIB.txt");
    std::fs::write(&broken, format!("{}END\n", &text[..cut])).unwrap();
    assert_ne!(smilint(&broken), "");
    let _ = std::fs::remove_dir_all(dir);
}

/// An `snmptrapd` on loopback `port` with `conf`, logging to `log` with the MIB loaded.
fn snmptrapd(t: &Tools, dir: &Path, tag: &str, port: u16, conf: &str) -> (Child, PathBuf) {
    let conf_file = dir.join(format!("{tag}.conf"));
    std::fs::write(&conf_file, conf).unwrap();
    let state = dir.join(format!("{tag}-state"));
    std::fs::create_dir_all(&state).unwrap();
    let log = dir.join(format!("{tag}.log"));
    let child = Command::new(&t.snmptrapd)
        .env("SNMP_PERSISTENT_DIR", &state)
        .args(["-f", "-n", "-C", "-Lf"])
        .arg(&log)
        .arg("-c")
        .arg(&conf_file)
        .args(["-M", &mib_path(t), "-m", "SNMPv2-MIB:ROBUSTIFIER-MIB"])
        .arg(format!("udp:127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, log)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Polls `log` until `ok` holds of its text.
async fn until(log: &Path, what: &str, ok: impl Fn(&str) -> bool) {
    for _ in 0..300 {
        if ok(&read(log)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: never; {} holds:\n{}", log.display(), read(log));
}

/// The notifications of `trap` (a name in ROBUSTIFIER-MIB) in snmptrapd's log: one line of
/// varbinds each.
fn notifications<'a>(log: &'a str, trap: &str) -> Vec<&'a str> {
    let oid = format!("SNMPv2-MIB::snmpTrapOID.0 = OID: ROBUSTIFIER-MIB::{trap}\t");
    log.lines().filter(|l| l.contains(&oid)).collect()
}

fn about(line: &str, key: &str) -> bool {
    line.contains(&format!(
        "ROBUSTIFIER-MIB::robustifierAlarmKey.0 = STRING: {key}\t"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snmptrapd_logs_the_alarm_raised_and_cleared_by_name_over_v2c_and_v3_auth_priv() {
    let test = "snmptrapd_logs_the_alarm_raised_and_cleared_by_name_over_v2c_and_v3_auth_priv";
    let Some(t) = tools(test) else {
        return;
    };
    let dir = tempdir("snmp");
    let (v2c_port, v3_port, inform_port) = (free_port(), free_port(), free_port());
    // Each manager takes one kind only: a trap it logs came the way the test says.
    let (mut v2c, v2c_log) = snmptrapd(
        &t,
        &dir,
        "v2c",
        v2c_port,
        &format!("authCommunity log {COMMUNITY}\n"),
    );
    let (mut v3, v3_log) = snmptrapd(
        &t,
        &dir,
        "v3",
        v3_port,
        &format!(
            "createUser -e 0x{ENGINE_ID} {USER} SHA {AUTH_KEY} AES {PRIV_KEY}\n\
             authUser log {USER} priv\n"
        ),
    );
    // Informs: this manager is the authoritative engine, with its own engine ID, which
    // the front-end discovers.
    let (mut inform, inform_log) = snmptrapd(
        &t,
        &dir,
        "inform",
        inform_port,
        &format!(
            "createUser {USER} SHA {AUTH_KEY} AES {PRIV_KEY}\n\
             authUser log {USER} priv\n"
        ),
    );
    let logs = [&v2c_log, &v3_log, &inform_log];
    for log in logs {
        until(log, "snmptrapd started", |l| l.contains("NET-SNMP version")).await;
    }

    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{text}\n")).unwrap();
        p.display().to_string()
    };
    let (community, auth_key, priv_key) = (
        file("community", COMMUNITY),
        file("auth.key", AUTH_KEY),
        file("priv.key", PRIV_KEY),
    );
    let boots = dir.join("engine.boots");
    let (port, mx_port) = (free_port(), free_port());
    let socket = dir.join("control").join("control.sock");
    let cfg = dir.join("robustifier.toml");
    std::fs::write(
        &cfg,
        config(&format!(
            "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {port}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
             backend = [{{ name = \"mx1\", address = \"127.0.0.1:{mx_port}\" }}]\n\
             [pool.health]\ninterval_ms = 100\ntimeout_ms = 500\nrise = 1\nfall = 1\n\
             [ha]\ncontrol_socket = \"{}\"\n\
             [[monitor.snmp]]\ntarget = \"127.0.0.1:{v2c_port}\"\nversion = \"2c\"\ncommunity_file = \"{community}\"\n\
             [[monitor.snmp]]\ntarget = \"127.0.0.1:{v3_port}\"\nversion = \"3\"\nuser = \"{USER}\"\n\
             auth = \"sha\"\nauth_key_file = \"{auth_key}\"\npriv = \"aes\"\npriv_key_file = \"{priv_key}\"\n\
             engine_boots_file = \"{}\"\n\
             [[monitor.snmp]]\ntarget = \"127.0.0.1:{inform_port}\"\nversion = \"3\"\nuser = \"{USER}\"\n\
             auth = \"sha\"\nauth_key_file = \"{auth_key}\"\npriv = \"aes\"\npriv_key_file = \"{priv_key}\"\n\
             inform = true\n",
            socket.display(),
            boots.display()
        )),
    )
    .unwrap();
    let (daemon, _log) = run_without_kernel(&cfg);
    let daemon = Daemon::new(daemon);

    // Nothing listens on mx1's port: down, raised; then it comes up, cleared.
    let raised = |l: &str| {
        notifications(l, "robustifierAlarmRaised")
            .iter()
            .any(|n| about(n, "backend_down:mx1"))
    };
    for log in logs {
        until(log, "backend_down:mx1 raised", raised).await;
    }
    let up = greeter(mx_port).await;
    let cleared = |l: &str| {
        notifications(l, "robustifierAlarmCleared")
            .iter()
            .any(|n| about(n, "backend_down:mx1"))
    };
    for log in logs {
        until(log, "backend_down:mx1 cleared", cleared).await;
    }
    for log in logs {
        let text = read(log);
        let raised = notifications(&text, "robustifierAlarmRaised");
        let down: Vec<_> = raised
            .iter()
            .filter(|n| about(n, "backend_down:mx1"))
            .collect();
        assert_eq!(down.len(), 1, "{text}");
        for object in [
            "ROBUSTIFIER-MIB::robustifierAlarmFrontend.0 = STRING: fe-test\t",
            "ROBUSTIFIER-MIB::robustifierAlarmSeverity.0 = INTEGER: major(3)\t",
            "ROBUSTIFIER-MIB::robustifierAlarmSequence.0 = Counter64: ",
            "ROBUSTIFIER-MIB::robustifierAlarmMessage.0 = STRING: back-end mx1 (pool mx) down",
            "ROBUSTIFIER-MIB::robustifierAlarmKind.0 = STRING: backend_down",
        ] {
            assert!(down[0].contains(object), "{object} in {}", down[0]);
        }
        let cleared = notifications(&text, "robustifierAlarmCleared");
        let up: Vec<_> = cleared
            .iter()
            .filter(|n| about(n, "backend_down:mx1"))
            .collect();
        assert_eq!(up.len(), 1, "{text}");
        assert!(
            up[0].contains("ROBUSTIFIER-MIB::robustifierAlarmKind.0 = STRING: backend_up"),
            "{}",
            up[0]
        );
    }
    // The engine's boots were taken and kept for the next start.
    assert_eq!(std::fs::read_to_string(&boots).unwrap(), "1\n");

    up.abort();
    stop_daemon(daemon).await;
    for trapd in [&mut v2c, &mut v3, &mut inform] {
        trapd.kill().unwrap();
        trapd.wait().unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The merged log's events of front-end fe1 about back-end mx1's alarm, as (alarm,
/// notified) pairs, oldest first.
fn merged_mx1(c: &Cluster) -> Vec<(String, bool)> {
    let out = c.cli(&["logs", "--json"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            let e = &e["event"];
            (e["backend"] == "mx1" && e["alarm"].is_string()).then(|| {
                (
                    e["alarm"].as_str().unwrap().to_owned(),
                    e["notified"].as_bool().unwrap_or(false),
                )
            })
        })
        .collect()
}

/// Waits until the merged log holds `n` of mx1's alarm events.
async fn until_merged(c: &Cluster, n: usize) -> Vec<(String, bool)> {
    wait_for(
        &format!("the merged log holding {n} of mx1's alarm events"),
        || {
            let got = merged_mx1(c);
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

/// How many notifications of `trap` about alarm `key` the log holds.
fn count(log: &Path, trap: &str, key: &str) -> usize {
    let text = read(log);
    notifications(&text, trap)
        .iter()
        .filter(|n| about(n, key))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_notifies_while_reachable_and_the_front_end_while_not_each_alarm_once() {
    let test = "the_manager_notifies_while_reachable_and_the_front_end_while_not_each_alarm_once";
    let Some(t) = tools(test) else {
        return;
    };
    let dir = tempdir("snmp-mgr");
    let trap_port = free_port();
    let (mut trapd, log) = snmptrapd(
        &t,
        &dir,
        "v2c",
        trap_port,
        &format!("authCommunity log {COMMUNITY}\n"),
    );
    until(&log, "snmptrapd started", |l| {
        l.contains("NET-SNMP version")
    })
    .await;
    let community = dir.join("community");
    std::fs::write(&community, format!("{COMMUNITY}\n")).unwrap();

    let mut c = Cluster::init(dir.join("cluster"), &["fe1"], &[], None).started();

    let (port, mx_port) = (free_port(), free_port());
    let socket = dir.join("control").join("control.sock");
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        format!(
            "[frontend]\nname = \"template\"\nserve_loopback_clients = true\n\
             [[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {port}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
             backend = [{{ name = \"mx1\", address = \"127.0.0.1:{mx_port}\" }}]\n\
             [pool.health]\ninterval_ms = 100\ntimeout_ms = 500\nrise = 1\nfall = 1\n\
             [ha]\ncontrol_socket = \"{}\"\n\
             [[monitor.snmp]]\ntarget = \"127.0.0.1:{trap_port}\"\nversion = \"2c\"\ncommunity_file = \"{}\"\n\
             [members.fe1]\n",
            socket.display(),
            community.display()
        ),
    )
    .unwrap();
    let out = c.cli(&["commit", cluster.to_str().unwrap(), "--base", "0"]);
    assert!(out.status.success(), "{out:?}");

    c.start_member_on("fe1", &socket, &["--alarm-after-ms", "1000"]);
    let file = c.member_state("fe1").join("config.toml");
    wait_for("the member's configuration", || file.exists().then_some(())).await;
    let (daemon, _log) = run_without_kernel(&file);
    let daemon = Daemon::new(daemon);
    let key = "backend_down:mx1";
    let (raised, cleared) = ("robustifierAlarmRaised", "robustifierAlarmCleared");

    // mx1 is down from the start. Once its raise is in the merged log, the member has told
    // the front-end that the manager is reachable (it does so before shipping a new run's
    // events): the clear that follows is the manager's to send.
    until_merged(&c, 1).await;
    let up = greeter(mx_port).await;
    let merged = until_merged(&c, 2).await;
    assert_eq!(merged[1], ("cleared".to_owned(), false), "{merged:?}");
    until(&log, "the clear sent by the manager", |_| {
        count(&log, cleared, key) == 1
    })
    .await;
    assert_eq!(count(&log, raised, key), 1);

    // The manager gone: the front-end hears it (an alarm it sends itself), and sends the
    // next raise itself too.
    c.stop_manager(nix::sys::signal::Signal::SIGKILL);
    until(&log, "manager_unreachable raised by the front-end", |_| {
        count(&log, raised, "manager_unreachable") == 1
    })
    .await;
    up.abort();
    until(&log, "the second raise, sent by the front-end", |_| {
        count(&log, raised, key) == 2
    })
    .await;

    // The manager back: the front-end clears its alarm; the events it sent meanwhile
    // reach the merged log marked as notified, and the manager does not send them again.
    c.start_manager();
    let merged = until_merged(&c, 3).await;
    assert_eq!(merged[2], ("raised".to_owned(), true), "{merged:?}");
    until(&log, "manager_unreachable cleared", |_| {
        count(&log, cleared, "manager_unreachable") == 1
    })
    .await;
    let up = greeter(mx_port).await;
    let merged = until_merged(&c, 4).await;
    assert_eq!(merged[3], ("cleared".to_owned(), false), "{merged:?}");
    until(&log, "the second clear, sent by the manager", |_| {
        count(&log, cleared, key) == 2
    })
    .await;

    // A while for a doubled notification to show up: none does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&log, raised, key), 2, "{}", read(&log));
    assert_eq!(count(&log, cleared, key), 2, "{}", read(&log));
    assert_eq!(count(&log, raised, "manager_unreachable"), 1);
    assert_eq!(count(&log, cleared, "manager_unreachable"), 1);

    up.abort();
    stop_daemon(daemon).await;
    drop(c);
    trapd.kill().unwrap();
    trapd.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
