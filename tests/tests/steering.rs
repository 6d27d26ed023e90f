//! End to end in network namespaces: a real TCP client in the lab's client namespace
//! connects to a virtual IP; XDP counts the packets and the sk_lookup program hands the
//! connection to the daemon's listener, which the daemon never bound to the VIP.
//! Privileged: builds namespaces, loads and attaches programs.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use robustifier::datapath::{Snapshot, Tables};
use robustifier_common::{CAPACITY_EXHAUSTED, CAPACITY_PRIORITY_ONLY, ServiceState};
use robustifier_lab::{
    Lab, Plan, cli, client,
    frontend_config::{Backend, FrontendConfig, Pool, Service},
    topology::{VIP_POP, VIP_SMTP, VIP_SMTP_V6, public_v4},
};

fn config(lab: &Lab, extra: &str) -> String {
    FrontendConfig::new("fea", &lab.pin_dir(0))
        .toml(extra)
        .service(Service::new("smtp", "smtp", 25).vips(&[VIP_SMTP.into(), VIP_SMTP_V6.into()]))
        .service(Service::new("pop3", "pop3", 110).vips(&[VIP_POP.into()]))
        .pool(Pool::new("store", "none").backend(Backend::new("be1", "198.18.1.11:25")))
        .build()
}

fn lab(tag: &str) -> Option<Lab> {
    robustifier_lab::privileged_lab(tag, Plan::new(1, 0))
}

fn add_vips(lab: &Lab) {
    let fe = &lab.frontend(0).ns;
    for vip in [VIP_SMTP.into(), VIP_POP.into(), VIP_SMTP_V6.into()] {
        fe.add_address("pub0", vip).unwrap();
    }
}

/// Talks to `to` from the client namespace (from `src` if given).
fn talk(
    lab: &Lab,
    to: SocketAddr,
    src: Option<IpAddr>,
    lines: &[&str],
) -> std::io::Result<Vec<String>> {
    lab.client
        .ns
        .enter(move || client::dialogue(to, src, lines))
        .unwrap()
}

fn snapshot(lab: &Lab) -> Snapshot {
    Snapshot::read(&Tables::from_pins(&lab.pin_dir(0)).unwrap()).unwrap()
}

fn smtp(port: u16) -> SocketAddr {
    SocketAddr::new(VIP_SMTP.into(), port)
}

#[test]
fn connections_to_vips_reach_the_proxy_through_xdp_and_steering() {
    let Some(mut lab) = lab("st") else { return };
    lab.start_frontend(0, &config(&lab, "")).unwrap();
    // The VIPs appear after the daemon started: it binds none of them.
    add_vips(&lab);

    let got = talk(&lab, smtp(25), None, &["NOOP", "QUIT"]).unwrap();
    assert_eq!(
        got,
        ["220 fea ESMTP Robustifier", "250 2.0.0 OK", "221 2.0.0 Bye"]
    );
    let got = talk(
        &lab,
        SocketAddr::new(VIP_SMTP_V6.into(), 25),
        None,
        &["QUIT"],
    )
    .unwrap();
    assert_eq!(got[0], "220 fea ESMTP Robustifier", "IPv6 client");
    let got = talk(&lab, SocketAddr::new(VIP_POP.into(), 110), None, &["QUIT"]).unwrap();
    assert_eq!(got, ["+OK fea POP3 Robustifier ready", "+OK Bye"]);

    let s = snapshot(&lab);
    let (smtp_row, pop_row) = (&s.services[0], &s.services[1]);
    assert_eq!(smtp_row.steered_normal, 2, "{s:#?}");
    assert_eq!(smtp_row.syns, 2);
    assert!(
        smtp_row.packets >= 10,
        "both sessions' packets pass XDP: {}",
        smtp_row.packets
    );
    assert_eq!(pop_row.steered_normal, 1);
    assert_eq!(s.xdp.service, smtp_row.packets + pop_row.packets);

    // An address that goes away stops being served; when it comes back it is served again.
    let fe = &lab.frontend(0).ns;
    fe.del_address("pub0", VIP_SMTP.into()).unwrap();
    assert!(
        talk(&lab, smtp(25), None, &["QUIT"]).is_err(),
        "VIP removed"
    );
    fe.add_address("pub0", VIP_SMTP.into()).unwrap();
    let got = talk(&lab, smtp(25), None, &["QUIT"]).unwrap();
    assert_eq!(got[0], "220 fea ESMTP Robustifier");
}

#[test]
fn priority_class_and_capacity_flag_choose_the_listener() {
    let Some(mut lab) = lab("pr") else { return };
    let premium = public_v4(101);
    lab.client
        .ns
        .ip(&["addr", "add", &format!("{premium}/24"), "dev", "eth0"])
        .unwrap();
    lab.start_frontend(
        0,
        &config(&lab, &format!("[classes]\npriority = [\"{premium}/32\"]")),
    )
    .unwrap();
    add_vips(&lab);
    let premium = Some(IpAddr::V4(premium));
    let regular = Some(IpAddr::V4(lab.client.v4));

    assert_eq!(
        talk(&lab, smtp(25), regular, &["QUIT"]).unwrap()[0],
        "220 fea ESMTP Robustifier"
    );
    assert_eq!(
        talk(&lab, smtp(25), premium, &["QUIT"]).unwrap()[0],
        "220 fea ESMTP Robustifier"
    );
    let s = snapshot(&lab);
    assert_eq!(
        (s.services[0].steered_normal, s.services[0].steered_priority),
        (1, 1)
    );

    // User space marks the service as serving the priority class only.
    let mut t = Tables::from_pins(&lab.pin_dir(0)).unwrap();
    let set = |t: &mut Tables, capacity| {
        for id in [0, 1] {
            t.svc_state
                .set(id, ServiceState { capacity, _pad: 0 }, 0)
                .unwrap();
        }
    };
    set(&mut t, CAPACITY_PRIORITY_ONLY);
    let shed = talk(&lab, smtp(25), regular, &[]).unwrap();
    assert_eq!(shed.len(), 1);
    assert!(shed[0].starts_with("421 4.3.2 fea "), "{shed:?}");
    assert_eq!(
        talk(&lab, smtp(25), premium, &["QUIT"]).unwrap()[0],
        "220 fea ESMTP Robustifier"
    );

    // Exhausted: everyone gets the protocol's temporary failure, POP3 too.
    set(&mut t, CAPACITY_EXHAUSTED);
    assert!(talk(&lab, smtp(25), premium, &[]).unwrap()[0].starts_with("421 4.3.2"));
    let pop = talk(&lab, SocketAddr::new(VIP_POP.into(), 110), regular, &[]).unwrap();
    assert!(pop[0].starts_with("-ERR [SYS/TEMP] "), "{pop:?}");

    let s = snapshot(&lab);
    assert_eq!(s.services[0].steered_shed, 2);
    assert_eq!(s.services[0].steered_priority, 2);
    assert_eq!(
        s.services[0].steered_normal, 1,
        "no normal session while shedding"
    );
    assert_eq!(s.services[1].steered_shed, 1);
}

#[test]
fn block_list_and_syn_budget_drop_on_the_wire() {
    let Some(mut lab) = lab("bl") else { return };
    let (blocked, flooder) = (public_v4(66), public_v4(77));
    for a in [blocked, flooder] {
        lab.client
            .ns
            .ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"])
            .unwrap();
    }
    let extra = format!("[flood]\nsyn_rate_per_sec = 1\nsyn_burst = 2\nblock = [\"{blocked}/32\"]");
    lab.start_frontend(0, &config(&lab, &extra)).unwrap();
    add_vips(&lab);

    let c = lab.client.ns.clone();
    let blocked_try = c
        .enter(move || client::connect(smtp(25), Some(blocked.into()), Duration::from_millis(700)))
        .unwrap();
    assert!(
        blocked_try.is_err(),
        "a block-listed source must not connect"
    );

    // Two SYNs within the burst pass; the third, at once, is dropped.
    let results = c
        .enter(move || {
            (0..3)
                .map(|_| {
                    client::connect(smtp(25), Some(flooder.into()), Duration::from_millis(500))
                        .is_ok()
                })
                .collect::<Vec<bool>>()
        })
        .unwrap();
    assert_eq!(results, [true, true, false]);
    // A well-behaved source is unaffected.
    assert!(talk(&lab, smtp(25), None, &["QUIT"]).is_ok());

    let s = snapshot(&lab);
    assert!(s.xdp.dropped_blocklist >= 1, "{:?}", s.xdp);
    assert!(s.services[0].dropped_syn_budget >= 1, "{:?}", s.services[0]);
    assert_eq!(
        s.services[0].steered_normal, 3,
        "two from the flooder, one from the client"
    );
}

fn map_id(path: &Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_u64().unwrap()
}

#[test]
fn restart_reuses_pinned_maps_and_stop_detaches() {
    let Some(mut lab) = lab("rs") else { return };
    let cfg = config(&lab, "");
    lab.start_frontend(0, &cfg).unwrap();
    add_vips(&lab);
    assert!(talk(&lab, smtp(25), None, &["QUIT"]).is_ok());
    let backends = lab.pin_dir(0).join("rb_backends");
    let id_before = map_id(&backends);

    let status = lab.daemons().last_mut().unwrap().stop().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    let link = lab
        .frontend(0)
        .ns
        .sh("ip", &["link", "show", "pub0"])
        .unwrap();
    assert!(!link.contains("xdp"), "XDP detached on stop: {link}");
    assert!(
        talk(&lab, smtp(25), None, &["QUIT"]).is_err(),
        "nothing steers after stop"
    );
    assert_eq!(
        snapshot(&lab).services[0].steered_normal,
        1,
        "counters outlive the daemon"
    );

    lab.start_frontend(0, &cfg).unwrap();
    assert_eq!(
        map_id(&backends),
        id_before,
        "the restarted daemon reuses the pinned map"
    );
    let again = talk(&lab, smtp(25), None, &["QUIT"]);
    assert!(
        again.is_ok(),
        "{again:?} {:#?} {}",
        snapshot(&lab),
        lab.daemons().last().unwrap().log_text()
    );
    assert_eq!(snapshot(&lab).services[0].steered_normal, 2);
    lab.daemons().last_mut().unwrap().stop().unwrap();

    let out = cli::run([
        "unload".as_ref(),
        "--pin-dir".as_ref(),
        lab.pin_dir(0).as_os_str(),
    ]);
    assert!(out.status.success());
    assert!(
        !backends.exists() && !lab.pin_dir(0).exists(),
        "unload removes the pins"
    );
}
