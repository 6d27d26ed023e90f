//! Tracking: a front-end whose tracked interface goes down, or whose
//! listeners die, lowers its priority by the configured weight, so the peer preempts and
//! owns the address; when the interface returns, the front-end takes the address back.
//! `ha status` names the failing check. Privileged: namespaces, raw sockets, netlink, BPF.

use std::time::Duration;

use robustifier_lab::{
    Lab, Plan, cli,
    topology::VIP_SMTP,
    vrrp::{Vr, eventually, frontend_config, owns, start_pair},
};

const FEA: usize = 0;
const FEB: usize = 1;
const GENEROUS: Duration = Duration::from_secs(20);

fn status(lab: &Lab, i: usize) -> String {
    cli::ha_ok(lab, i, &["status"])
}

#[test]
fn tracked_interface_down_moves_the_address_and_back() {
    let Some(mut lab) = robustifier_lab::privileged_lab("hat", Plan::new(2, 0)) else {
        return;
    };
    // fea: 150, minus 60 while int0 (its back-end side) is down = 90 < feb's 120.
    let a_routers = [Vr::new(51, 150, VIP_SMTP, 20)
        .with("track = { interfaces = { int0 = 60 }, listeners = 50, datapath = 50 }")];
    let cfg_a = frontend_config(&lab, FEA, &a_routers, "");
    let cfg_b = frontend_config(&lab, FEB, &[Vr::new(51, 120, VIP_SMTP, 20)], "");
    let (a, b) = start_pair(&mut lab, &cfg_a, &cfg_b).unwrap();
    eventually("fea owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    // Listeners run and the data path is attached: nothing fails, full priority.
    let st = status(&lab, FEA);
    assert!(
        st.contains(" 150/150 ") && !st.contains("tracking failing"),
        "{st}"
    );

    a.ip(&["link", "set", "int0", "down"]).unwrap();
    let took = eventually("feb takes over while fea's int0 is down", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP.into()) && !owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    println!("tracked interface down -> handover: {took:?}");
    let st = status(&lab, FEA);
    assert!(
        st.contains("Backup")
            && st.contains("  90/150 ")
            && st.contains("tracking failing: interface int0"),
        "{st}"
    );

    a.ip(&["link", "set", "int0", "up"]).unwrap();
    eventually(
        "fea takes the address back once int0 is up",
        GENEROUS,
        || owns(&a, "pub0", VIP_SMTP.into()) && !owns(&b, "pub0", VIP_SMTP.into()),
    )
    .unwrap();
    let log = lab.daemons()[FEA].log_text();
    assert!(
        log.contains("tracking: lowering priority") && log.contains("tracking: healthy again"),
        "{log}"
    );
}

/// A proxy whose listeners die (destroyed from outside with `ss -K`) stops counting as able
/// to serve: its priority drops by the `listeners` weight and the peer takes the address.
#[test]
fn dead_listeners_move_the_address() {
    let Some(mut lab) = robustifier_lab::privileged_lab("hal", Plan::new(2, 0)) else {
        return;
    };
    let a_routers = [Vr::new(51, 150, VIP_SMTP, 20).with("track = { listeners = 60 }")];
    let cfg_a = frontend_config(&lab, FEA, &a_routers, "");
    let cfg_b = frontend_config(&lab, FEB, &[Vr::new(51, 120, VIP_SMTP, 20)], "");
    let (a, b) = start_pair(&mut lab, &cfg_a, &cfg_b).unwrap();
    eventually("fea owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();

    // Every TCP listener in fea's namespace is the proxy's: destroy them all.
    let killed = a.sh("ss", &["-K", "-tln"]).unwrap();
    assert!(killed.contains("LISTEN"), "{killed}");
    eventually(
        "feb takes over from the front-end that cannot accept",
        GENEROUS,
        || owns(&b, "pub0", VIP_SMTP.into()) && !owns(&a, "pub0", VIP_SMTP.into()),
    )
    .unwrap();
    let st = status(&lab, FEA);
    assert!(
        st.contains("  90/150 ") && st.contains("tracking failing: listeners"),
        "{st}"
    );
}
