//! Virtual-IP failover between two Robustifier front-ends: two virtual routers
//! with opposite primaries (SMTP VIP master on fea, POP VIP master on feb). Killing one
//! front-end with SIGKILL moves its address to the other within Master_Down_Interval (the
//! assertion uses a generous bound; the measured time is printed), a client's next session
//! through the moved address gets the greeting, and a restarted front-end takes its address
//! back by preemption; a graceful stop resigns with priority 0. Privileged: namespaces, raw sockets, netlink, BPF.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use nix::sys::signal::Signal;
use robustifier_lab::{
    Lab, Plan, cli, client,
    topology::{VIP_POP, VIP_SMTP},
    vrrp::{Vr, eventually, frontend_config, opposite_primaries, owns, start_pair},
};

const FEA: usize = 0;
const FEB: usize = 1;
/// Far above Master_Down_Interval at these timers (0.72 s); a loaded CI machine is slow.
const GENEROUS: Duration = Duration::from_secs(20);

fn lab(tag: &str) -> Option<Lab> {
    robustifier_lab::privileged_lab(tag, Plan::new(2, 0))
}

fn greeting(lab: &Lab, vip: impl Into<IpAddr>, port: u16) -> String {
    client::greeting(&lab.client.ns, SocketAddr::new(vip.into(), port))
}

#[test]
fn sigkill_moves_the_address_and_restart_takes_it_back() {
    let Some(mut lab) = lab("haf") else { return };
    // fea: master of VRID 51 (SMTP VIP), backup of 52 (POP VIP); feb the reverse.
    let cfg_a = frontend_config(&lab, FEA, &opposite_primaries(FEA), "");
    let cfg_b = frontend_config(&lab, FEB, &opposite_primaries(FEB), "");
    let (a, b) = start_pair(&mut lab, &cfg_a, &cfg_b).unwrap();

    // Each owns its own VIP, and only that one.
    eventually("fea owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    eventually("feb owns the POP VIP", GENEROUS, || {
        owns(&b, "pub0", VIP_POP.into())
    })
    .unwrap();
    // A front-end started alone first holds both addresses until its peer's adverts
    // preempt it (within a Master_Down_Interval on a busy machine).
    eventually("each holds only its own VIP", GENEROUS, || {
        !owns(&a, "pub0", VIP_POP.into()) && !owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    assert_eq!(greeting(&lab, VIP_SMTP, 25), "220 fea ESMTP Robustifier");
    assert_eq!(
        greeting(&lab, VIP_POP, 110),
        "+OK feb POP3 Robustifier ready"
    );

    let status = cli::ha_ok(&lab, FEA, &["status"]);
    let row = |vrid: &str| {
        status
            .lines()
            .find(|l| l.starts_with(vrid))
            .unwrap_or_else(|| panic!("no VRID {vrid} in:\n{status}"))
            .to_owned()
    };
    assert!(
        row("51").contains("Master") && row("51").contains("(self)"),
        "{status}"
    );
    assert!(
        row("52").contains("Backup") && row("52").contains("198.18.0.2"),
        "{status}"
    );
    let json = cli::ha_ok(&lab, FEA, &["status", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["frontend"], "fea");
    assert_eq!(report["routers"][0]["last_transition"]["to"], "Master");

    // kill -9 fea: feb takes the SMTP VIP too.
    lab.daemons()[FEA]
        .stop_with(Signal::SIGKILL, Duration::from_secs(5))
        .unwrap();
    let took = eventually("feb owns the SMTP VIP after fea died", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    println!(
        "failover after SIGKILL: {took:?} (Master_Down_Interval at 0.2 s adverts, priority 100: 0.72 s)"
    );
    assert!(owns(&b, "pub0", VIP_POP.into()), "feb keeps its own VIP");
    let got = eventually("the SMTP VIP answers from feb", GENEROUS, || {
        greeting(&lab, VIP_SMTP, 25) == "220 feb ESMTP Robustifier"
    });
    assert!(got.is_ok(), "{}", greeting(&lab, VIP_SMTP, 25));
    assert_eq!(
        greeting(&lab, VIP_POP, 110),
        "+OK feb POP3 Robustifier ready"
    );

    // fea returns: it clears the address it left behind, waits as backup, then preempts.
    lab.start_frontend(FEA, &cfg_a).unwrap();
    eventually("fea takes the SMTP VIP back", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into()) && !owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    eventually("the SMTP VIP answers from fea again", GENEROUS, || {
        greeting(&lab, VIP_SMTP, 25) == "220 fea ESMTP Robustifier"
    })
    .unwrap();
    assert!(owns(&b, "pub0", VIP_POP.into()) && !owns(&a, "pub0", VIP_POP.into()));
    let log = lab.daemons().last().unwrap().log_text();
    assert!(
        log.contains("removed a virtual address left by an earlier run"),
        "{log}"
    );

    // A graceful stop resigns with priority 0: feb takes over after Skew_Time rather than
    // Master_Down_Interval, and the address is gone from fea.
    let status = lab.daemons().last_mut().unwrap().stop().unwrap();
    assert!(status.success(), "{status}");
    let took = eventually("feb owns the SMTP VIP after fea stopped", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    println!("takeover after SIGTERM (priority 0): {took:?} after the stop returned");
    assert!(
        !owns(&a, "pub0", VIP_SMTP.into()),
        "a graceful stop gives the address up"
    );
    let log = lab.daemons().last().unwrap().log_text();
    assert!(log.contains("resigned after drain"), "{log}");
}

#[test]
fn unicast_peers_fail_over_without_multicast() {
    let Some(mut lab) = lab("hau") else { return };
    let peer = |i: usize| format!("unicast_peers = [\"{}\"]", lab.frontend(1 - i).v4);
    let a_routers = [Vr::new(51, 150, VIP_SMTP, 20).with(&peer(FEA))];
    let b_routers = [Vr::new(51, 100, VIP_SMTP, 20).with(&peer(FEB))];
    let cfg_a = frontend_config(&lab, FEA, &a_routers, "");
    let cfg_b = frontend_config(&lab, FEB, &b_routers, "");
    let (a, b) = start_pair(&mut lab, &cfg_a, &cfg_b).unwrap();
    eventually("fea owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    // feb hears fea's unicast adverts and stays backup.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!owns(&b, "pub0", VIP_SMTP.into()), "feb must stay backup");
    // The client has talked to fea, so its ARP cache holds fea's MAC for the VIP and feb's
    // gratuitous ARP is what moves it. (A client asking afresh would also hear fea's kernel,
    // which still holds the address a killed daemon could not remove.)
    assert_eq!(greeting(&lab, VIP_SMTP, 25), "220 fea ESMTP Robustifier");
    lab.daemons()[FEA]
        .stop_with(Signal::SIGKILL, Duration::from_secs(5))
        .unwrap();
    eventually("feb takes over", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    eventually("the SMTP VIP answers from feb", GENEROUS, || {
        greeting(&lab, VIP_SMTP, 25) == "220 feb ESMTP Robustifier"
    })
    .unwrap();
}
