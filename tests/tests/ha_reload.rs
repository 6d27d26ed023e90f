//! Reloads change a running virtual router in place, with keepalived 2.2.7 as the peer:
//! Robustifier is master; reloads that must not move the master (a tracked object added
//! with the interval unchanged, a priority lowered but still above keepalived's, other
//! settings with the address list unchanged) leave keepalived's notify record without a
//! transition; a reload lowering our priority below keepalived's (which preempts) moves
//! the master exactly once; a binary upgrade while master (`robustifier upgrade`: the new
//! process continues the mastership) moves nothing either, with keepalived and with a second
//! Robustifier as the peer. A reload naming a router the machine cannot
//! run is refused whole. Privileged; needs keepalived and tshark (`cargo xtask setup` installs them).
//!
//! "Nothing moved" is judged after keepalived has been sent a number of our adverts at the
//! new settings worth several of its Master_Down_Intervals (counted by a capture in its
//! namespace), not after a pause: had keepalived been going to take over, its timer would
//! have run out within them.

use std::time::Duration;

use robustifier_lab::{
    Lab, Plan, cli, privileged,
    topology::VIP_POP,
    unique_prefix,
    vrrp::{
        KeepalivedInstance, Vr, adverts_logged, control_socket, eventually, frontend_config,
        keepalived_config, notify_lines, owns, start_advert_log, start_keepalived, with_notify_log,
    },
};

const FEA: usize = 0;
const FEB: usize = 1;
const GENEROUS: Duration = Duration::from_secs(20);
/// fea's address on pub0: the source of its IPv4 adverts; feb's (keepalived's).
const FEA_PUB: &str = "198.18.0.1";
const FEB_PUB: &str = "198.18.0.2";
/// Adverts at 20 cs covering five of keepalived's Master_Down_Intervals at priority 100
/// (3 x 0.2 s + 0.12 s): if an advert were going to let it take over, it would have.
const SETTLE_ADVERTS: usize = 25;

fn lab(tag: &str) -> Option<Lab> {
    if !privileged::check_tools(tag, &["keepalived", "tshark"]) {
        return None;
    }
    Some(Lab::up(&unique_prefix(tag), Plan::new(2, 0)).expect("lab up"))
}

fn reload(lab: &mut Lab, text: &str, n: usize, applied: bool) {
    robustifier_lab::cli::reload_by_signal(lab, FEA, text, n, applied);
}

fn fea_log(lab: &mut Lab) -> String {
    lab.frontend_daemon(FEA)
        .expect("the front-end runs")
        .log_text()
}

/// Whether `ha status` lists a router of this VRID.
fn has_router(status: &str, vrid: u8) -> bool {
    status.lines().any(|l| l.starts_with(&format!("{vrid} ")))
}

fn transitions(log: &str) -> usize {
    log.matches("VRRP transition").count()
}

/// Waits until keepalived's namespace has seen `more` adverts from `src` at `priority`
/// beyond the `from` it had.
fn settle(lab: &mut Lab, capture: usize, src: &str, priority: u8, from: usize, more: usize) {
    let what = format!("{more} more adverts from {src} at priority {priority}");
    eventually(&what, GENEROUS * 3, || {
        adverts_logged(&lab.daemons()[capture].log_text(), src, priority) >= from + more
    })
    .unwrap();
}

/// Starts the capture of adverts in feb's namespace; returns its index among the lab's
/// processes once it captures.
fn capture_on_feb(lab: &mut Lab) -> usize {
    let b = lab.frontend(FEB).ns.clone();
    let capture = start_advert_log(lab, &b).unwrap();
    eventually("tshark captures on feb's pub0", GENEROUS, || {
        lab.daemons()[capture].log_text().contains("Capturing on")
    })
    .unwrap();
    capture
}

fn logged(lab: &mut Lab, capture: usize, src: &str, priority: u8) -> usize {
    adverts_logged(&lab.daemons()[capture].log_text(), src, priority)
}

#[test]
fn reloads_move_the_master_only_when_the_priorities_ask_for_it() {
    let Some(mut lab) = lab("hkr") else { return };
    let (a, b) = (lab.frontend(FEA).ns.clone(), lab.frontend(FEB).ns.clone());
    let capture = capture_on_feb(&mut lab);

    let router = |priority: u8, extra: &str| Vr::new(52, priority, VIP_POP, 20).with(extra);
    let cfg = |lab: &Lab, r: Vr| frontend_config(lab, FEA, &[r], "");
    let first = cfg(&lab, router(150, ""));
    lab.start_frontend(FEA, &first).unwrap();
    eventually("robustifier owns the POP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_POP.into())
    })
    .unwrap();

    let notify = lab.log_dir.join("keepalived-notify.log");
    let ka = keepalived_config(
        "feb",
        &[KeepalivedInstance {
            vrid: 52,
            priority: 100,
            vip: VIP_POP.into(),
            interval_cs: 20,
        }],
    );
    start_keepalived(&mut lab, FEB, &with_notify_log(&ka, &notify).unwrap()).unwrap();
    eventually("keepalived starts as backup", GENEROUS, || {
        notify_lines(&notify) == ["INSTANCE VI_52 BACKUP 100"]
    })
    .unwrap();
    let n = logged(&mut lab, capture, FEA_PUB, 150);
    settle(&mut lab, capture, FEA_PUB, 150, n, SETTLE_ADVERTS);
    assert_eq!(notify_lines(&notify), ["INSTANCE VI_52 BACKUP 100"]);
    let settled = transitions(&fea_log(&mut lab));

    // A tracked object added, the interval unchanged: nothing advertised changes.
    let tracked = "track = { listeners = 10, datapath = 10 }";
    let n = logged(&mut lab, capture, FEA_PUB, 150);
    let text = cfg(&lab, router(150, tracked));
    reload(&mut lab, &text, 1, true);
    settle(&mut lab, capture, FEA_PUB, 150, n, SETTLE_ADVERTS);

    // The priority lowered, still above keepalived's 100.
    let text = cfg(&lab, router(120, tracked));
    reload(&mut lab, &text, 2, true);
    settle(&mut lab, capture, FEA_PUB, 120, 0, SETTLE_ADVERTS);
    let st = cli::ha_ok(&lab, FEA, &["status"]);
    assert!(st.contains("Master") && st.contains(" 120/120 "), "{st}");

    // Other settings, the address list unchanged.
    let more = format!("{tracked}\ngarp_count = 2\nmax_advert_interval_cs = 500");
    let n = logged(&mut lab, capture, FEA_PUB, 120);
    let text = cfg(&lab, router(120, &more));
    reload(&mut lab, &text, 3, true);
    settle(&mut lab, capture, FEA_PUB, 120, n, SETTLE_ADVERTS);

    assert_eq!(
        notify_lines(&notify),
        ["INSTANCE VI_52 BACKUP 100"],
        "keepalived changed state on a reload that should move nothing"
    );
    let log = fea_log(&mut lab);
    assert_eq!(transitions(&log), settled, "{log}");
    assert!(!log.contains("takes a restart"), "{log}");
    assert!(owns(&a, "pub0", VIP_POP.into()) && !owns(&b, "pub0", VIP_POP.into()));

    // A binary upgrade while master: the new process continues the mastership (its one
    // transition is that continuation), keepalived hears the adverts go on and changes
    // nothing, the address stays where it is.
    let n = logged(&mut lab, capture, FEA_PUB, 120);
    let successor = cli::upgrade(&lab, FEA);
    settle(&mut lab, capture, FEA_PUB, 120, n, SETTLE_ADVERTS);
    assert_eq!(
        notify_lines(&notify),
        ["INSTANCE VI_52 BACKUP 100"],
        "keepalived changed state on the upgrade"
    );
    assert!(owns(&a, "pub0", VIP_POP.into()) && !owns(&b, "pub0", VIP_POP.into()));
    let successor_file = lab.log_dir.join("fea-successor.log");
    let successor_log = || std::fs::read_to_string(&successor_file).unwrap_or_default();
    let log = successor_log();
    assert_eq!(transitions(&log), 1, "{log}");
    assert!(log.contains("reason=TakenOver"), "{log}");

    // Below keepalived's priority, applied to the new process over its control socket:
    // keepalived preempts, once.
    let file = lab.log_dir.join("fea-50.toml");
    std::fs::write(&file, cfg(&lab, router(50, &more))).unwrap();
    let socket = robustifier_lab::vrrp::control_socket(&lab, FEA);
    let said = cli::ok([
        "reload".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--config".as_ref(),
        file.as_os_str(),
    ]);
    assert!(said.contains("priority 120 -> 50"), "{said}");
    eventually("keepalived takes the POP VIP over", GENEROUS, || {
        owns(&b, "pub0", VIP_POP.into()) && !owns(&a, "pub0", VIP_POP.into())
    })
    .unwrap();
    eventually("keepalived records its takeover", GENEROUS, || {
        notify_lines(&notify).len() >= 2
    })
    .unwrap();
    let n = logged(&mut lab, capture, FEB_PUB, 100);
    settle(&mut lab, capture, FEB_PUB, 100, n, SETTLE_ADVERTS);
    assert_eq!(
        notify_lines(&notify),
        ["INSTANCE VI_52 BACKUP 100", "INSTANCE VI_52 MASTER 100"],
        "keepalived must take over exactly once"
    );
    let log = successor_log();
    assert_eq!(transitions(&log), 2, "{log}");
    assert!(log.contains("from=Master to=Backup"), "{log}");
    let st = cli::ha_ok(&lab, FEA, &["status"]);
    assert!(st.contains("Backup") && st.contains(" 50/50 "), "{st}");
    drop(successor);
}

/// A reload adding a router on an interface that does not exist is refused whole: the
/// running router keeps its role and settings. Then a reload that adds a second router
/// and another that removes the first (a master: it resigns and gives its address up)
/// apply without a restart.
#[test]
fn routers_added_and_removed_by_reloads_and_a_bad_one_refused() {
    let Some(mut lab) = robustifier_lab::privileged_lab("hrr", Plan::new(1, 0)) else {
        return;
    };
    let a = lab.frontend(FEA).ns.clone();
    let pop = Vr::new(52, 150, VIP_POP, 20);
    let first = frontend_config(&lab, FEA, std::slice::from_ref(&pop), "");
    lab.start_frontend(FEA, &first).unwrap();
    eventually("fea owns the POP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_POP.into())
    })
    .unwrap();

    let smtp = Vr::new(51, 255, robustifier_lab::topology::VIP_SMTP, 20);
    let bad = frontend_config(
        &lab,
        FEA,
        &[
            Vr::new(52, 120, VIP_POP, 20),
            smtp.clone().with("interface = \"nosuch0\""),
        ],
        "",
    );
    reload(&mut lab, &bad, 1, false);
    let log = fea_log(&mut lab);
    assert!(
        log.contains("nosuch0") && log.contains("no such interface"),
        "{log}"
    );
    let st = cli::ha_ok(&lab, FEA, &["status"]);
    assert!(st.contains(" 150/150 ") && !has_router(&st, 51), "{st}");

    // The address owner is master at once.
    let both = frontend_config(&lab, FEA, &[pop, smtp.clone()], "");
    reload(&mut lab, &both, 1, true);
    eventually("the added router owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", robustifier_lab::topology::VIP_SMTP.into())
    })
    .unwrap();
    let st = cli::ha_ok(&lab, FEA, &["status"]);
    assert!(has_router(&st, 51) && has_router(&st, 52), "{st}");

    let only_smtp = frontend_config(&lab, FEA, &[smtp], "");
    reload(&mut lab, &only_smtp, 2, true);
    eventually("the removed router gives the POP VIP up", GENEROUS, || {
        !owns(&a, "pub0", VIP_POP.into())
    })
    .unwrap();
    let st = cli::ha_ok(&lab, FEA, &["status"]);
    assert!(has_router(&st, 51) && !has_router(&st, 52), "{st}");
    assert!(owns(&a, "pub0", robustifier_lab::topology::VIP_SMTP.into()));
    let log = fea_log(&mut lab);
    assert!(log.contains("VRRP router removed by a reload"), "{log}");

    // The drain deadline changes live; the control socket is the daemon's, bound at its
    // start: a new path is named as taking a restart, and the socket stays where it is.
    let old = control_socket(&lab, FEA);
    let new = old.with_file_name("moved.sock");
    let moved = only_smtp.replace(
        &format!("control_socket = \"{}\"", old.display()),
        &format!(
            "control_socket = \"{}\"\ndrain_deadline_s = 5",
            new.display()
        ),
    );
    assert_ne!(moved, only_smtp);
    reload(&mut lab, &moved, 3, true);
    let st = cli::ha_ok(&lab, FEA, &["status"]);
    assert!(has_router(&st, 51), "{st}");
    assert!(!new.exists(), "a control socket at the new path");
    let log = fea_log(&mut lab);
    assert!(
        log.contains("takes a restart") && log.contains("control_socket"),
        "{log}"
    );
}

/// A binary upgrade while master, with a second Robustifier as the backup: the backup hears
/// the adverts go on from the same address and never leaves Backup; the new process's one
/// transition is continuing the mastership, and the address stays where it is.
#[test]
fn an_upgrade_while_master_is_no_transition_for_a_robustifier_peer() {
    let Some(mut lab) = lab("hup") else { return };
    let (a, b) = (lab.frontend(FEA).ns.clone(), lab.frontend(FEB).ns.clone());
    let capture = capture_on_feb(&mut lab);
    let text = frontend_config(&lab, FEA, &[Vr::new(52, 150, VIP_POP, 20)], "");
    lab.start_frontend(FEA, &text).unwrap();
    eventually("fea owns the POP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_POP.into())
    })
    .unwrap();
    let text = frontend_config(&lab, FEB, &[Vr::new(52, 100, VIP_POP, 20)], "");
    lab.start_frontend(FEB, &text).unwrap();
    eventually("feb is a backup", GENEROUS, || {
        cli::ha_ok(&lab, FEB, &["status"]).contains("Backup")
    })
    .unwrap();
    let feb_log = |lab: &mut Lab| lab.frontend_daemon(FEB).expect("feb runs").log_text();
    let before = transitions(&feb_log(&mut lab));
    assert_eq!(before, 1, "feb's start: Initialize -> Backup");

    let n = logged(&mut lab, capture, FEA_PUB, 150);
    let successor = cli::upgrade(&lab, FEA);
    settle(&mut lab, capture, FEA_PUB, 150, n, SETTLE_ADVERTS);
    let log = feb_log(&mut lab);
    assert_eq!(
        transitions(&log),
        before,
        "feb moved on fea's upgrade:\n{log}"
    );
    let st = cli::ha_ok(&lab, FEB, &["status"]);
    assert!(st.contains("Backup"), "{st}");
    assert!(owns(&a, "pub0", VIP_POP.into()) && !owns(&b, "pub0", VIP_POP.into()));
    let successor_log =
        std::fs::read_to_string(lab.log_dir.join("fea-successor.log")).unwrap_or_default();
    assert_eq!(transitions(&successor_log), 1, "{successor_log}");
    assert!(
        successor_log.contains("reason=TakenOver"),
        "{successor_log}"
    );
    drop(successor);
}
