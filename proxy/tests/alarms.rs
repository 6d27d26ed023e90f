//! Events and alarms of a running front-end, without root: `robustifier run
//! --without-kernel` with one back-end that is down at first, then comes up, and a reload
//! that is refused, then one that is applied; `robustifier alarms` and the event log show
//! each alarm raised and cleared.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{path::Path, process::Command, time::Duration};

use support::{
    Daemon, config, free_port, get, greeter, promtool_accepts, run_without_kernel, stop_daemon,
    tempdir,
};

const BIN: &str = env!("CARGO_BIN_EXE_robustifier");

fn alarms(socket: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["alarms", "--json", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn keys(report: &serde_json::Value) -> Vec<String> {
    report["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `alarms` until `ok` holds (the health checks run every 100 ms).
async fn until(
    socket: &Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..300 {
        let r = alarms(socket);
        if ok(&r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: never; last report {}", alarms(socket));
}

const TOKEN: &str = "0123456789abcdef0123";

/// One request on the front-end's control socket, which must be answered `ok`.
fn control(socket: &Path, line: &str) {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply).unwrap();
    assert!(reply.starts_with("ok"), "{line}: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_then_up_and_a_refused_reload_raise_and_clear_alarms() {
    let dir = tempdir("alarms");
    let socket = dir.join("control").join("control.sock");
    let events = dir.join("events");
    let (port, mx_port, metrics_port) = (free_port(), free_port(), free_port());
    let token_file = dir.join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let file = dir.join("robustifier.toml");
    let text = config(&format!(
        "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {port}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
         backend = [{{ name = \"mx1\", address = \"127.0.0.1:{mx_port}\" }}]\n\
         [pool.health]\ninterval_ms = 100\ntimeout_ms = 500\nrise = 1\nfall = 1\n\
         [ha]\ncontrol_socket = \"{}\"\n\
         [monitor]\nevent_log = \"{}\"\nevent_log_max_bytes = 65536\nevent_log_files = 2\n\
         metrics_listen = \"127.0.0.1:{metrics_port}\"\nmetrics_token_file = \"{}\"\n",
        socket.display(),
        events.display(),
        token_file.display()
    ));
    std::fs::write(&file, &text).unwrap();
    let (daemon, _log) = run_without_kernel(&file);
    let daemon = Daemon::new(daemon);

    // Nothing listens on mx1's port: down, and its pool has no back-end.
    let r = until(&socket, "mx1 down", |r| {
        keys(r).contains(&"backend_down:mx1".to_owned())
    })
    .await;
    assert!(keys(&r).contains(&"pool_overloaded:mx".to_owned()), "{r}");
    let down = &r["alarms"][0];
    assert_eq!(down["severity"], "major");

    // The metrics endpoint: nothing without the token; with it, the back-end down and the
    // alarms, in a form promtool accepts.
    let (code, _) = get(metrics_port, "/metrics", None);
    assert_eq!(code, 401);
    let (code, _) = get(metrics_port, "/metrics", Some("0123456789abcdeX"));
    assert_eq!(code, 401);
    let (code, metrics) = get(metrics_port, "/metrics", Some(TOKEN));
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("robustifier_backend_up{pool=\"mx\",backend=\"mx1\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("robustifier_alarms_active{severity=\"major\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("robustifier_events_total{kind=\"backend_down\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("robustifier_snmp_notifications_lost_total{outcome=\"dropped\"} 0"),
        "{metrics}"
    );
    // The statistics' counters, there from the start for every configured key.
    assert!(
        metrics.contains("robustifier_sessions_total{scope=\"service\",name=\"smtp\"} 0"),
        "{metrics}"
    );
    promtool_accepts(&metrics);
    let (code, ready) = get(metrics_port, "/ready", Some(TOKEN));
    assert_eq!((code, ready.starts_with("ready")), (200, true), "{ready}");

    // It comes up: both alarms clear.
    let up = greeter(mx_port).await;
    until(&socket, "mx1 up", |r| keys(r).is_empty()).await;

    // The member says the manager is out of reach, then back.
    control(&socket, "manager down connection refused");
    until(&socket, "manager unreachable", |r| {
        keys(r) == ["manager_unreachable"]
    })
    .await;
    control(&socket, "manager up");
    until(&socket, "manager back", |r| keys(r).is_empty()).await;

    // A reload that is refused raises an alarm; an applied one clears it.
    std::fs::write(&file, text.replace("pool = \"mx\"", "pool = \"nowhere\"")).unwrap();
    let out = Command::new(BIN)
        .args(["reload", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    until(&socket, "reload refused", |r| keys(r) == ["reload_refused"]).await;
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(BIN)
        .args(["reload", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = until(&socket, "reload applied", |r| keys(r).is_empty()).await;

    // The events in order, each alarm raised once and cleared once.
    let seen: Vec<(String, String)> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["kind"].as_str()?.to_owned(),
                e["alarm"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("backend_down", "raised"),
        ("pool_overloaded", "raised"),
        ("backend_up", "cleared"),
        ("pool_overloaded", "cleared"),
        ("manager_unreachable", "raised"),
        ("manager_reachable", "cleared"),
        ("reload_refused", "raised"),
        ("reload_applied", "cleared"),
    ]
    .iter()
    .map(|(k, a)| ((*k).to_owned(), (*a).to_owned()))
    .collect();
    assert_eq!(seen, want);

    // The same events in the log file, as JSON lines.
    let logged = std::fs::read_to_string(events.join("events.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), r["events"].as_array().unwrap().len());
    assert_eq!(lines.last().unwrap()["kind"], "reload_applied");
    assert_eq!(lines[0]["frontend"], "fe-test");

    up.abort();
    stop_daemon(daemon).await;
    let _ = std::fs::remove_dir_all(dir);
}
