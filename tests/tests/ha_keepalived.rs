//! Interoperability with keepalived 2.2.7: keepalived as master with a
//! Robustifier backup and the reverse, failing over in each direction and back by
//! preemption; tshark decodes every advert of ours as valid VRRPv3 with a correct checksum,
//! and our decoder accepts every advert keepalived sent. An advert for another address list
//! is not followed. Privileged; needs keepalived and
//! tshark (`cargo xtask setup` installs them).

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use robustifier::vrrp;
use robustifier_lab::{
    Lab, Plan, client, privileged,
    topology::{VIP_POP, VIP_SMTP, VIP_SMTP_V6},
    unique_prefix,
    vrrp::{
        KeepalivedInstance, Vr, eventually, frontend_config, keepalived_config,
        keepalived_vrrp_pid, owns, pcap_ip_packets, start_capture, start_keepalived,
    },
};

const FEA: usize = 0;
const FEB: usize = 1;
const GENEROUS: Duration = Duration::from_secs(20);

fn lab(tag: &str) -> Option<Lab> {
    if !privileged::check_tools(tag, &["keepalived", "tshark"]) {
        return None;
    }
    Some(Lab::up(&unique_prefix(tag), Plan::new(2, 0)).expect("lab up"))
}

fn greeting(lab: &Lab, to: SocketAddr) -> String {
    client::greeting(&lab.client.ns, to)
}

/// Stops the capture (SIGINT lets tshark finish the file) and returns the capture's
/// adverts from `src` as tshark decodes them: (version, checksum status) per packet.
fn tshark_verdicts(lab: &mut Lab, capture: usize, file: &Path, src: &str) -> Vec<(String, String)> {
    lab.daemons()[capture]
        .stop_with(Signal::SIGINT, Duration::from_secs(10))
        .unwrap();
    let out = tshark_fields(file, src);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verdicts_of(&out)
}

/// tshark's version and checksum status fields of the adverts from `src` in `file`.
fn tshark_fields(file: &Path, src: &str) -> std::process::Output {
    Command::new("tshark")
        .args(["-r", file.to_str().unwrap(), "-Y", &src_filter(src)])
        .args(["-T", "fields"])
        .args(["-e", "vrrp.version", "-e", "vrrp.checksum.status"])
        .output()
        .unwrap()
}

/// (version, checksum status) per line of [`tshark_fields`].
fn verdicts_of(out: &std::process::Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            (
                f.next().unwrap_or_default().to_owned(),
                f.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn src_filter(src: &str) -> String {
    if src.contains(':') {
        format!("vrrp && ipv6.src == {src}")
    } else {
        format!("vrrp && ip.src == {src}")
    }
}

/// What `tshark -V` says about one of our adverts, for the failure message.
fn tshark_detail(file: &Path, src: &str) -> String {
    let out = Command::new("tshark")
        .args(["-r", file.to_str().unwrap(), "-V", "-c", "400"])
        .args(["-Y", &src_filter(src)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Virtual Router") || l.contains("Checksum") || l.contains("Version"))
        .take(12)
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_ours_valid(verdicts: &[(String, String)], file: &Path, src: &str) {
    assert!(!verdicts.is_empty(), "no adverts from {src} captured");
    // tshark's checksum status: 1 = good (0 bad, 2 unverified).
    for (version, status) in verdicts {
        assert_eq!(version, "3", "{}", tshark_detail(file, src));
        assert_eq!(
            status,
            "1",
            "checksum not good:\n{}",
            tshark_detail(file, src)
        );
    }
}

/// keepalived's adverts in the capture all decode with our decoder (the live counterpart of
/// the fixtures in `vrrp::packet`'s tests).
fn assert_keepalived_decodes(file: &Path, src: &str) -> usize {
    let mut n = 0;
    for ip in pcap_ip_packets(file).unwrap() {
        match ip.first().map(|b| b >> 4) {
            Some(4)
                if ip.get(12..16)
                    == Some(
                        &src.parse::<std::net::Ipv4Addr>()
                            .map(|a| a.octets())
                            .unwrap_or_default()[..],
                    ) =>
            {
                let got = vrrp::decode_ipv4_packet(&ip)
                    .unwrap_or_else(|e| panic!("keepalived advert rejected: {e}: {ip:02x?}"));
                assert_eq!(got.advert.max_adver_int_cs, 20);
                n += 1;
            }
            _ => {}
        }
    }
    n
}

#[test]
fn keepalived_master_robustifier_backup_fail_over_and_back() {
    let Some(mut lab) = lab("hka") else { return };
    let capture_file = lab.log_dir.join("keepalived-master.pcap");
    let feb_ns = lab.frontend(FEB).ns.clone();
    let capture = start_capture(&mut lab, &feb_ns, &capture_file).unwrap();
    // Give tshark a moment to open the interface before anything is sent.
    std::thread::sleep(Duration::from_millis(1500));

    let ka = keepalived_config(
        "fea",
        &[KeepalivedInstance {
            vrid: 51,
            priority: 150,
            vip: VIP_SMTP.into(),
            interval_cs: 20,
        }],
    );
    let ka_daemon = start_keepalived(&mut lab, FEA, &ka).unwrap();
    let a = lab.frontend(FEA).ns.clone();
    eventually("keepalived on fea owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();

    let cfg_b = frontend_config(&lab, FEB, &[Vr::new(51, 100, VIP_SMTP, 20)], "");
    lab.start_frontend(FEB, &cfg_b).unwrap();
    let b = lab.frontend(FEB).ns.clone();
    // Robustifier hears keepalived and stays backup.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !owns(&b, "pub0", VIP_SMTP.into()),
        "robustifier must stay backup while keepalived is master"
    );
    assert!(owns(&a, "pub0", VIP_SMTP.into()));
    assert!(
        greeting(&lab, SocketAddr::new(VIP_SMTP.into(), 25)).starts_with("connect failed"),
        "fea runs no proxy"
    );

    // keepalived's VRRP process dies: Robustifier takes over.
    let pid = keepalived_vrrp_pid(&lab, FEA).expect("keepalived VRRP pid file");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let took = eventually(
        "robustifier takes the VIP from a crashed keepalived",
        GENEROUS,
        || owns(&b, "pub0", VIP_SMTP.into()),
    )
    .unwrap();
    println!("keepalived master crash -> robustifier master: {took:?}");
    eventually("the SMTP VIP answers from feb", GENEROUS, || {
        greeting(&lab, SocketAddr::new(VIP_SMTP.into(), 25)) == "220 feb ESMTP Robustifier"
    })
    .unwrap();

    // keepalived returns (higher priority, preempting): it takes the address back, and we
    // give it up.
    lab.daemons()[ka_daemon].stop().unwrap();
    // keepalived removes its VIPs when it stops, but the crashed child could not.
    let _ = a.ip(&["addr", "del", &format!("{VIP_SMTP}/32"), "dev", "pub0"]);
    start_keepalived(&mut lab, FEA, &ka).unwrap();
    eventually("keepalived preempts robustifier", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into()) && !owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();

    let verdicts = tshark_verdicts(&mut lab, capture, &capture_file, "198.18.0.2");
    assert_ours_valid(&verdicts, &capture_file, "198.18.0.2");
    let heard = assert_keepalived_decodes(&capture_file, "198.18.0.1");
    assert!(heard > 0, "no keepalived adverts captured");
    let fe_log = lab
        .daemons()
        .iter()
        .find(|d| d.name.contains("robustifier"))
        .unwrap()
        .log_text();
    assert!(
        fe_log.contains("to=Master") && fe_log.contains("PeerPreferred"),
        "{fe_log}"
    );
}

/// keepalived, at a higher priority, advertises VRID 51 for another address than ours:
/// Robustifier discards those adverts (as keepalived's `vrrp_strict` would) and takes its
/// own address rather than deferring to a master that does not carry it.
#[test]
fn advert_for_other_addresses_is_not_followed() {
    let Some(mut lab) = lab("hkx") else { return };
    let ka = keepalived_config(
        "fea",
        &[KeepalivedInstance {
            vrid: 51,
            priority: 150,
            vip: VIP_POP.into(),
            interval_cs: 20,
        }],
    );
    start_keepalived(&mut lab, FEA, &ka).unwrap();
    let a = lab.frontend(FEA).ns.clone();
    eventually("keepalived on fea owns its VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_POP.into())
    })
    .unwrap();

    let cfg_b = frontend_config(&lab, FEB, &[Vr::new(51, 100, VIP_SMTP, 20)], "");
    lab.start_frontend(FEB, &cfg_b).unwrap();
    let b = lab.frontend(FEB).ns.clone();
    eventually(
        "robustifier takes its VIP despite keepalived's adverts",
        GENEROUS,
        || owns(&b, "pub0", VIP_SMTP.into()),
    )
    .unwrap();
    let fe_log = lab
        .daemons()
        .iter()
        .find(|d| d.name.contains("robustifier"))
        .unwrap()
        .log_text();
    assert!(
        fe_log.contains("discarded a VRRP advert: advert lists other virtual addresses"),
        "{fe_log}"
    );
}

#[test]
fn robustifier_master_keepalived_backup_fail_over_and_back_ipv4_and_ipv6() {
    let Some(mut lab) = lab("hkb") else { return };
    let capture_file = lab.log_dir.join("robustifier-master.pcap");
    let fea_ns = lab.frontend(FEA).ns.clone();
    let capture = start_capture(&mut lab, &fea_ns, &capture_file).unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    let routers = [
        Vr::new(52, 150, VIP_POP, 20),
        Vr::new(53, 150, VIP_SMTP_V6, 20),
    ];
    let cfg_a = frontend_config(&lab, FEA, &routers, "");
    lab.start_frontend(FEA, &cfg_a).unwrap();
    let a = lab.frontend(FEA).ns.clone();
    eventually("robustifier owns the POP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_POP.into())
    })
    .unwrap();
    eventually("robustifier owns the IPv6 VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP_V6.into())
    })
    .unwrap();

    let ka = keepalived_config(
        "feb",
        &[
            KeepalivedInstance {
                vrid: 52,
                priority: 100,
                vip: VIP_POP.into(),
                interval_cs: 20,
            },
            KeepalivedInstance {
                vrid: 53,
                priority: 100,
                vip: VIP_SMTP_V6.into(),
                interval_cs: 20,
            },
        ],
    );
    let ka_daemon = start_keepalived(&mut lab, FEB, &ka).unwrap();
    let b = lab.frontend(FEB).ns.clone();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !owns(&b, "pub0", VIP_POP.into()) && !owns(&b, "pub0", VIP_SMTP_V6.into()),
        "keepalived must stay backup"
    );
    assert_eq!(
        greeting(&lab, SocketAddr::new(VIP_POP.into(), 110)),
        "+OK fea POP3 Robustifier ready"
    );
    assert_eq!(
        greeting(&lab, SocketAddr::new(VIP_SMTP_V6.into(), 25)),
        "220 fea ESMTP Robustifier"
    );

    // Robustifier dies: keepalived takes both addresses.
    let fe = lab
        .daemons()
        .iter()
        .position(|d| d.name.contains("robustifier"))
        .unwrap();
    lab.daemons()[fe]
        .stop_with(Signal::SIGKILL, Duration::from_secs(5))
        .unwrap();
    let took = eventually("keepalived takes the POP VIP", GENEROUS, || {
        owns(&b, "pub0", VIP_POP.into())
    })
    .unwrap();
    println!("robustifier master crash -> keepalived master: {took:?}");
    eventually("keepalived takes the IPv6 VIP", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP_V6.into())
    })
    .unwrap();

    // Robustifier returns and preempts keepalived for both families.
    lab.start_frontend(FEA, &cfg_a).unwrap();
    eventually("robustifier preempts keepalived (IPv4)", GENEROUS, || {
        owns(&a, "pub0", VIP_POP.into()) && !owns(&b, "pub0", VIP_POP.into())
    })
    .unwrap();
    eventually("robustifier preempts keepalived (IPv6)", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP_V6.into()) && !owns(&b, "pub0", VIP_SMTP_V6.into())
    })
    .unwrap();
    eventually("the POP VIP answers from fea again", GENEROUS, || {
        greeting(&lab, SocketAddr::new(VIP_POP.into(), 110)) == "+OK fea POP3 Robustifier ready"
    })
    .unwrap();

    let ka_log = lab.daemons()[ka_daemon].log_text();
    for complaint in ["checksum", "TTL", "invalid", "bad "] {
        assert!(
            !ka_log.contains(complaint),
            "keepalived complained ({complaint}):\n{ka_log}"
        );
    }
    let verdicts = tshark_verdicts(&mut lab, capture, &capture_file, "198.18.0.1");
    assert_ours_valid(&verdicts, &capture_file, "198.18.0.1");
    let v6_src = link_local(&a);
    let verdicts6 = tshark_verdicts_again(&capture_file, &v6_src);
    assert_ours_valid(&verdicts6, &capture_file, &v6_src);
}

/// fea's link-local address on pub0: the source of its IPv6 adverts.
fn link_local(ns: &robustifier_lab::Netns) -> String {
    let out = ns
        .ip(&["-o", "-6", "addr", "show", "dev", "pub0", "scope", "link"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .unwrap_or_else(|| panic!("no link-local address: {text}"));
    addr.split('/').next().unwrap().to_owned()
}

/// Like [`tshark_verdicts`] on a capture that has already been stopped.
fn tshark_verdicts_again(file: &Path, src: &str) -> Vec<(String, String)> {
    verdicts_of(&tshark_fields(file, src))
}
