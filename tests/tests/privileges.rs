//! Least privilege of `robustifier run`: a front-end started as root runs as the
//! unprivileged `robustifier` user with CAP_NET_ADMIN and CAP_NET_RAW only, on every
//! thread, and still does what the lab asks of it: `ha status` over its control socket (with
//! its supervised tasks), VRRP failover (adding the address, announcing it), `ha release` and
//! `ha resume` (removing and adding it again), a reload on SIGHUP and `robustifier maps` on
//! its pins. Privileged: namespaces, raw sockets, netlink, BPF; needs the user
//! `cargo xtask setup` creates.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use robustifier::privs::ThreadCreds;
use robustifier_lab::{
    Lab, Plan, cli, client, privileged,
    topology::{VIP_POP, VIP_SMTP},
    vrrp::{config_builder, eventually, opposite_primaries, owns, start_pair},
};

const FEA: usize = 0;
const FEB: usize = 1;
const GENEROUS: Duration = Duration::from_secs(20);
/// CAP_NET_ADMIN (12) and CAP_NET_RAW (13), as /proc prints capability sets.
const KEPT: u64 = (1 << 12) | (1 << 13);
/// What the daemon logs when a privileged step fails after the switch.
const FAILURES: [&str; 6] = [
    "cannot add virtual address",
    "cannot remove virtual address",
    "cannot announce virtual addresses",
    "VRRP socket failing",
    "load writer cannot open the pinned maps",
    "configuration refused",
];

/// The lab's front-end config, naming the user so that a missing one fails the start.
fn config(lab: &Lab, i: usize) -> String {
    config_builder(lab, i, &opposite_primaries(i), "")
        .frontend_line("user = \"robustifier\"")
        .build()
}

fn greeting(lab: &Lab, vip: impl Into<IpAddr>, port: u16) -> String {
    client::greeting(&lab.client.ns, SocketAddr::new(vip.into(), port))
}

/// Each thread of `pid` with its credentials.
fn threads(pid: Pid) -> Vec<(String, ThreadCreds)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let t = t.unwrap();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            let name = status.lines().next().unwrap_or_default().to_owned();
            let creds = ThreadCreds::parse(&status)
                .unwrap_or_else(|| panic!("unparsable status of {t:?}:\n{status}"));
            (
                format!("{} ({name})", t.file_name().to_string_lossy()),
                creds,
            )
        })
        .collect()
}

fn assert_dropped(pid: Pid, uid: u32, gid: u32) {
    let main = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let c = ThreadCreds::parse(&main).unwrap();
    assert_eq!(c.uids, vec![uid; 4], "{main}");
    assert_eq!(c.gids, vec![gid; 4], "{main}");
    assert_ne!(uid, 0);
    assert_eq!(c.effective, KEPT, "CapEff\n{main}");
    assert_eq!(c.permitted, KEPT, "CapPrm\n{main}");
    assert_eq!(c.bounding, KEPT, "CapBnd\n{main}");
    assert_eq!(c.ambient, 0, "CapAmb\n{main}");
    assert_eq!(c.inheritable, 0, "CapInh\n{main}");
    assert!(c.no_new_privs, "NoNewPrivs\n{main}");
    let all = threads(pid);
    assert!(all.len() > 1, "a runtime has worker threads");
    for (tid, t) in all {
        assert_eq!(t.uids, vec![uid; 4], "thread {tid}");
        assert_eq!(t.gids, vec![gid; 4], "thread {tid}");
        assert_eq!(t.bounding, KEPT, "thread {tid}");
        assert_eq!(
            (t.permitted | t.effective | t.inheritable | t.ambient) & !KEPT,
            0,
            "thread {tid} holds more than CAP_NET_ADMIN and CAP_NET_RAW: {t:?}"
        );
    }
}

fn assert_no_failure(log: &str, who: &str) {
    for f in FAILURES {
        assert!(!log.contains(f), "{who} logged {f:?}:\n{log}");
    }
}

/// The daemon's user, which `cargo xtask setup` creates; missing, the test fails under
/// `ROBUSTIFIER_REQUIRE_PRIVILEGED=1` and says loudly that it skips otherwise.
fn daemon_user() -> Option<nix::unistd::User> {
    let user = nix::unistd::User::from_name("robustifier").unwrap();
    if user.is_none() {
        privileged::unmet("prv", "no user robustifier (run `cargo xtask setup`)");
    }
    user
}

#[test]
fn frontend_drops_to_its_user_and_keeps_working() {
    let Some(user) = daemon_user() else { return };
    let Some(mut lab) = robustifier_lab::privileged_lab("prv", Plan::new(2, 0)) else {
        return;
    };
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let (cfg_a, cfg_b) = (config(&lab, FEA), config(&lab, FEB));
    let (a, b) = start_pair(&mut lab, &cfg_a, &cfg_b).unwrap();
    let (pid_a, pid_b) = (lab.daemons()[FEA].pid(), lab.daemons()[FEB].pid());
    eventually("fea owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    eventually("feb owns the POP VIP", GENEROUS, || {
        owns(&b, "pub0", VIP_POP.into())
    })
    .unwrap();
    assert_dropped(pid_a, uid, gid);
    assert_dropped(pid_b, uid, gid);
    assert_eq!(greeting(&lab, VIP_SMTP, 25), "220 fea ESMTP Robustifier");

    // The control socket, created after the switch, answers root's `ha` commands, and the
    // status carries the supervised tasks (the load writer reopened the handed-over pins).
    let json = cli::ha_ok(&lab, FEB, &["status", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["ready"], true, "{json}");
    let tasks = report["tasks"].as_array().unwrap();
    let writer = tasks
        .iter()
        .find(|t| t["name"] == "load writer")
        .unwrap_or_else(|| panic!("no load writer in {json}"));
    assert_eq!(writer["running"], true, "{json}");
    assert_eq!(writer["restarts"], 0, "{json}");
    let routers = tasks
        .iter()
        .filter(|t| t["name"].as_str().unwrap().starts_with("vrrp router"))
        .count();
    assert_eq!(routers, 2, "{json}");

    // Failover to the dropped feb: it adds the SMTP VIP and serves it.
    let log_b_before = lab.daemons()[FEB].log_text();
    lab.daemons()[FEA]
        .stop_with(Signal::SIGKILL, Duration::from_secs(5))
        .unwrap();
    eventually("feb owns the SMTP VIP after fea died", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    eventually("the SMTP VIP answers from feb", GENEROUS, || {
        greeting(&lab, VIP_SMTP, 25) == "220 feb ESMTP Robustifier"
    })
    .unwrap();

    // Release removes the address, resume adds it back.
    cli::ha_ok(&lab, FEB, &["release", "51"]);
    eventually("feb gave the SMTP VIP up", GENEROUS, || {
        !owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    cli::ha_ok(&lab, FEB, &["resume", "51"]);
    eventually("feb owns the SMTP VIP after resume", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();

    // A reload re-reads the configuration as the daemon's user.
    nix::sys::signal::kill(pid_b, Signal::SIGHUP).unwrap();
    lab.daemons()[FEB]
        .wait_for_log("reload: configuration applied", GENEROUS)
        .unwrap();

    // The maps are still root's to read.
    let maps = cli::ok([
        "maps".as_ref(),
        "--pin-dir".as_ref(),
        lab.pin_dir(FEB).as_os_str(),
    ]);
    assert!(!maps.is_empty());

    assert_dropped(pid_b, uid, gid);
    let log_b = lab.daemons()[FEB].log_text();
    assert!(log_b.contains("privileges dropped"), "{log_b}");
    assert_no_failure(&log_b, "feb");
    assert!(log_b.len() > log_b_before.len());
}
