//! Monitoring in the mail cluster: a front-end under the cluster manager with a metrics
//! endpoint and SNMPv2c traps to a station (net-snmp's `snmptrapd` with ROBUSTIFIER-MIB)
//! on the back-end segment. be1's Postfix stopped raises `backend_down:be1`: it is in the
//! front-end's `robustifier alarms`, in the manager's merged log, a trap the station
//! decodes by name (sent by the manager, which the member reaches), `0` in `/metrics`, and
//! down on the web interface's overview in a headless chromium. Postfix started again
//! clears it in each of those places. Both events reach the merged log unmarked: the
//! front-end left their traps to the manager.
//!
//! The member, which wrote the version before its front-end started, reports no error
//! once the front-end runs it.
//!
//! Privileged.

use std::time::Duration;

use robustifier_lab::{
    cluster::Cluster,
    manager::{ClusterManager, cluster_config, member_priorities, member_row, shared_routers},
    monitor::{self, METRICS_PORT, Station, samples},
    privileged,
    topology::VIP_SMTP,
    unique_prefix,
    vrrp::{eventually, owns},
};

/// A bound for a poll to come round, not a timing claim.
const GENEROUS: Duration = Duration::from_secs(60);
const KEY: &str = "backend_down:be1";

/// The merged log's events of be1's down alarm, as their `alarm` field and whether the
/// front-end sent their trap itself, oldest first.
fn merged(m: &ClusterManager) -> Vec<(String, bool)> {
    let out = m.cli_ok(&["logs", "--json"]).unwrap_or_default();
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            let ev = &e["event"];
            ev["backend"] == "be1"
                && ev["alarm"].is_string()
                && (ev["kind"] == "backend_down" || ev["kind"] == "backend_up")
        })
        .map(|e| {
            (
                e["event"]["alarm"].as_str().unwrap_or_default().to_owned(),
                e["event"]["notified"] == true,
            )
        })
        .collect()
}

/// Waits until be1's rows of the web overview's back-ends table (seen in a headless
/// chromium in the manager's namespace) all say `state`; the last screenshot is `png`.
fn web_shows_be1(m: &ClusterManager, state: &str, png: &str) {
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/lab-screenshots")
        .join(png);
    let mut rows = Vec::new();
    let shown = eventually(&format!("be1 {state} on the overview"), GENEROUS, || {
        let link = m.login_link().expect("a login link");
        let seen = robustifier_lab::web::screenshot_overview(&m.ns, &link, &shot, GENEROUS)
            .expect("the overview in chromium");
        rows = seen
            .backends
            .into_iter()
            .filter(|r| r.split(' ').nth(2) == Some("be1"))
            .collect();
        !rows.is_empty() && rows.iter().all(|r| r.contains(&format!(" {state} ")))
    });
    assert!(shown.is_ok(), "be1 {state} on the overview: {rows:?}");
}

#[test]
fn a_stopped_backend_is_an_alarm_everywhere_an_operator_looks_and_clears() {
    if !privileged::check("monitoring") {
        return;
    }
    let mut c = Cluster::up(&unique_prefix("mon"), 1).expect("cluster up");
    c.set_extra(0, &shared_routers(20));
    let m = ClusterManager::up(&mut c.lab).expect("manager up");
    let station = Station::start(&c.lab).expect("the monitoring station");
    m.start_member(&mut c.lab, 0).expect("member");
    let text = format!(
        "{}\n{}",
        cluster_config(&c, &[member_priorities(0)]),
        station.monitor_toml()
    );
    m.commit_wait(&text, "monitoring", 60).expect("commit");
    m.start_frontend(&mut c.lab, 0).expect("front-end");
    let ns = c.lab.frontends[0].ns.clone();
    eventually("the front-end owns the SMTP VIP", GENEROUS, || {
        owns(&ns, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    let fe = c.lab.frontends[0].name.clone();
    // The member wrote the version before its front-end ran; once it runs it, that note
    // is no longer an error.
    eventually("no error left on the member", GENEROUS, || {
        std::thread::sleep(Duration::from_millis(200));
        m.status().is_ok_and(|s| {
            member_row(&s, &fe).is_some_and(|r| r["last_error"].is_null() && r["applied"] == 1)
        })
    })
    .unwrap();
    let metrics_at = std::net::SocketAddr::new(
        c.lab.frontends[0]
            .internal_v4
            .expect("the front-end's back-end address")
            .into(),
        METRICS_PORT,
    );
    let up_is = |want: &str| {
        station.metrics(metrics_at).is_ok_and(|t| {
            let s = samples(&t, "robustifier_backend_up", "backend=\"be1\"");
            !s.is_empty() && s.iter().all(|l| l.ends_with(want))
        })
    };
    eventually("be1 up in /metrics", GENEROUS, || {
        std::thread::sleep(Duration::from_millis(200));
        up_is(" 1")
    })
    .unwrap();
    web_shows_be1(&m, "up", "monitoring-up.png");

    c.hosts[0].stop_smtp(&mut c.lab);
    let lab = &c.lab;
    eventually(
        &format!("{KEY} in the front-end's alarms"),
        GENEROUS,
        || {
            std::thread::sleep(Duration::from_millis(200));
            monitor::alarms(lab, 0).is_ok_and(|r| monitor::active(&r, KEY).is_some())
        },
    )
    .unwrap();
    let raised = station.wait_notification("robustifierAlarmRaised", KEY, &fe, GENEROUS);
    assert_eq!(raised.len(), 1, "one raise trap: {}", station.traps());
    let mut seen = Vec::new();
    let logged = eventually("the raise in the merged log", GENEROUS, || {
        std::thread::sleep(Duration::from_millis(200));
        seen = merged(&m);
        seen == [("raised".to_owned(), false)]
    });
    assert!(logged.is_ok(), "merged: {seen:?}");
    eventually("be1 down in /metrics", GENEROUS, || {
        std::thread::sleep(Duration::from_millis(200));
        up_is(" 0")
    })
    .unwrap();
    web_shows_be1(&m, "down", "monitoring-down.png");

    c.hosts[0].restart_smtp(&mut c.lab).expect("Postfix again");
    let lab = &c.lab;
    eventually(&format!("{KEY} cleared"), GENEROUS, || {
        std::thread::sleep(Duration::from_millis(200));
        monitor::alarms(lab, 0).is_ok_and(|r| monitor::active(&r, KEY).is_none())
    })
    .unwrap();
    let cleared = station.wait_notification("robustifierAlarmCleared", KEY, &fe, GENEROUS);
    assert_eq!(cleared.len(), 1, "one clear trap: {}", station.traps());
    let logged = eventually("the clear in the merged log", GENEROUS, || {
        std::thread::sleep(Duration::from_millis(200));
        seen = merged(&m);
        seen == [("raised".to_owned(), false), ("cleared".to_owned(), false)]
    });
    assert!(logged.is_ok(), "merged: {seen:?}");
    eventually("be1 up again in /metrics", GENEROUS, || {
        std::thread::sleep(Duration::from_millis(200));
        up_is(" 1")
    })
    .unwrap();
    web_shows_be1(&m, "up", "monitoring-cleared.png");
}
