//! BPF_PROG_TEST_RUN fixtures: crafted packets through the real XDP program, checking the
//! verdict and the counters it leaves in the maps. Privileged: loads the program.

use std::{net::Ipv4Addr, path::PathBuf};

use etherparse::PacketBuilder;
use robustifier::{
    config::Config,
    datapath::{DataPath, Snapshot},
};
use robustifier_lab::{privileged, unique_prefix};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const CONFIG: &str = r#"
[frontend]
name = "fixture"
pin_dir = "PIN_DIR"

[flood]
syn_rate_per_sec = 1
syn_burst = 3
block = ["203.0.113.0/24", "2001:db8:bad::/48"]

[classes]
priority = ["198.18.7.0/24", "2001:db8:7::/48"]

[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["198.18.0.25", "2001:db8::25"]

[[service]]
name = "pop3"
protocol = "pop3"
port = 110

[[pool]]
name = "store"
backend = [{ name = "be1", address = "198.18.1.11:25" }]

[[group]]
name = "premium"
share = 1.0
clients = ["198.18.8.0/24"]

[[group]]
name = "regular"
share = 0.5
clients = ["198.18.9.0/24"]
"#;

/// A loaded data path with its own pin directory, removed on drop.
struct Fixture {
    dp: DataPath,
    pin_dir: PathBuf,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        if !privileged::check("xdp_fixtures") {
            return None;
        }
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/robustifier/{}", unique_prefix("fx")));
        let text = CONFIG.replace("PIN_DIR", pin_dir.to_str().unwrap());
        let cfg = Config::parse(std::path::Path::new("fixture.toml"), &text).unwrap();
        let mut dp = DataPath::load(&pin_dir).unwrap_or_else(|e| {
            // No Fixture exists yet to clean up on drop.
            let _ = std::fs::remove_dir_all(&pin_dir);
            panic!("load the XDP program: {e}")
        });
        dp.tables.apply(&cfg).unwrap();
        Some(Fixture { dp, pin_dir })
    }

    fn run(&self, packet: &[u8]) -> u32 {
        self.dp.run_xdp(packet).expect("BPF_PROG_TEST_RUN")
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::read(&self.dp.tables).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn v4_tcp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(40000, dport, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(7) };
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn v6_tcp(src: [u8; 16], dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(src, dst, 64)
        .tcp(40000, dport, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 25);

#[test]
fn priority_class_holds_configured_and_premium_group_prefixes() {
    let Some(f) = Fixture::new() else { return };
    let mut p = f.snapshot().priority;
    p.sort();
    assert_eq!(
        p,
        ["198.18.7.0/24", "198.18.8.0/24", "2001:db8:7::/48"],
        "a group below share 1.0 is not priority"
    );
}

#[test]
fn ipv4_syn_to_service_passes_and_is_counted() {
    let Some(f) = Fixture::new() else { return };
    let pkt = v4_tcp(CLIENT, VIP, 25, true);
    assert_eq!(f.run(&pkt), XDP_PASS);
    assert_eq!(f.run(&v4_tcp(CLIENT, VIP, 25, false)), XDP_PASS);
    let s = f.snapshot();
    assert_eq!(s.xdp.packets, 2);
    assert_eq!(s.xdp.service, 2);
    let smtp = &s.services[0];
    assert_eq!(smtp.packets, 2);
    assert_eq!(smtp.syns, 1, "only the SYN counts as a new connection");
    assert_eq!(smtp.passed, 2);
    assert_eq!(smtp.bytes, 2 * pkt.len() as u64);
}

#[test]
fn ipv6_and_wildcard_services_are_matched() {
    let Some(f) = Fixture::new() else { return };
    assert_eq!(
        f.run(&v6_tcp(v6("2001:db8::100"), v6("2001:db8::25"), 25)),
        XDP_PASS
    );
    // POP3 is configured for every local address: any destination on port 110 matches.
    assert_eq!(
        f.run(&v4_tcp(CLIENT, Ipv4Addr::new(198, 18, 5, 5), 110, true)),
        XDP_PASS
    );
    // Port 25 on an address that is not a VIP is not a service.
    assert_eq!(
        f.run(&v4_tcp(CLIENT, Ipv4Addr::new(198, 18, 5, 5), 25, true)),
        XDP_PASS
    );
    let s = f.snapshot();
    assert_eq!((s.services[0].syns, s.services[1].syns), (1, 1));
    assert_eq!(s.xdp.no_service, 1);
}

#[test]
fn vlan_tagged_packets_are_parsed() {
    let Some(f) = Fixture::new() else { return };
    let mut one = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(10.try_into().unwrap())
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .tcp(40000, 25, 1, 64240)
        .syn()
        .write(&mut one, &[])
        .unwrap();
    let mut two = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(20.try_into().unwrap(), 30.try_into().unwrap())
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .tcp(40001, 25, 1, 64240)
        .syn()
        .write(&mut two, &[])
        .unwrap();
    assert_eq!(f.run(&one), XDP_PASS);
    assert_eq!(f.run(&two), XDP_PASS);
    assert_eq!(f.snapshot().services[0].syns, 2);
}

#[test]
fn truncated_and_foreign_packets_pass_and_are_counted() {
    let Some(f) = Fixture::new() else { return };
    let full = v4_tcp(CLIENT, VIP, 25, true);
    // Cut inside the TCP header, inside the IPv4 header, inside the Ethernet header.
    for cut in [14 + 20 + 10, 14 + 10, 14] {
        assert_eq!(f.run(&full[..cut]), XDP_PASS, "cut at {cut}");
    }
    // An IPv4 header that claims 60 bytes of options in a short packet.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x4f;
    assert_eq!(f.run(&bad_ihl), XDP_PASS);
    // ARP.
    let mut arp = vec![0u8; 42];
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(f.run(&arp), XDP_PASS);
    // UDP to the VIP.
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .udp(5000, 25)
        .write(&mut udp, &[1, 2, 3])
        .unwrap();
    assert_eq!(f.run(&udp), XDP_PASS);
    let s = f.snapshot();
    assert_eq!(s.xdp.malformed, 4, "three cuts and one bad IHL");
    assert_eq!(s.xdp.non_ip, 1);
    assert_eq!(s.xdp.non_tcp, 1);
    assert_eq!(
        s.services[0].packets, 0,
        "nothing malformed is charged to a service"
    );
}

#[test]
fn block_listed_prefixes_are_dropped() {
    let Some(f) = Fixture::new() else { return };
    assert_eq!(
        f.run(&v4_tcp(Ipv4Addr::new(203, 0, 113, 9), VIP, 25, true)),
        XDP_DROP
    );
    assert_eq!(
        f.run(&v4_tcp(Ipv4Addr::new(203, 0, 113, 9), VIP, 25, false)),
        XDP_DROP
    );
    assert_eq!(
        f.run(&v6_tcp(v6("2001:db8:bad::1"), v6("2001:db8::25"), 25)),
        XDP_DROP
    );
    // Next to the prefix: passes.
    assert_eq!(
        f.run(&v4_tcp(Ipv4Addr::new(203, 0, 114, 9), VIP, 25, true)),
        XDP_PASS
    );
    // Block-listed source to a port that is no service: not ours to drop.
    assert_eq!(
        f.run(&v4_tcp(Ipv4Addr::new(203, 0, 113, 9), VIP, 22, true)),
        XDP_PASS
    );
    let s = f.snapshot();
    assert_eq!(s.xdp.dropped_blocklist, 3);
    assert_eq!(s.services[0].dropped_blocklist, 3);
    assert_eq!(s.services[0].passed, 1);
}

#[test]
fn syn_burst_beyond_the_budget_is_dropped() {
    let Some(f) = Fixture::new() else { return };
    let flood = Ipv4Addr::new(198, 18, 3, 3);
    // Burst 3 at 1/s: three SYNs in a row pass, the fourth and fifth are dropped.
    let verdicts: Vec<u32> = (0..5)
        .map(|_| f.run(&v4_tcp(flood, VIP, 25, true)))
        .collect();
    assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
    // Non-SYN segments of established connections are never budgeted.
    assert_eq!(f.run(&v4_tcp(flood, VIP, 25, false)), XDP_PASS);
    // Another source has its own bucket.
    assert_eq!(f.run(&v4_tcp(CLIENT, VIP, 25, true)), XDP_PASS);
    let s = f.snapshot();
    assert_eq!(s.xdp.dropped_syn_budget, 2);
    assert_eq!(s.services[0].dropped_syn_budget, 2);
}

#[test]
fn ipv6_sources_share_the_syn_budget_of_their_prefix() {
    let Some(f) = Fixture::new() else { return };
    let vip = v6("2001:db8::25");
    // The default prefix is /64: these two are one host to the budget.
    let (a, same64, other64) = (
        v6("2001:db8:50:1::1"),
        v6("2001:db8:50:1:ffff::2"),
        v6("2001:db8:50:2::1"),
    );
    let verdicts: Vec<u32> = [a, a, a, same64, same64]
        .iter()
        .map(|src| f.run(&v6_tcp(*src, vip, 25)))
        .collect();
    assert_eq!(
        verdicts,
        [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP],
        "a second address of the /64 gets no budget of its own"
    );
    assert_eq!(
        f.run(&v6_tcp(other64, vip, 25)),
        XDP_PASS,
        "another /64 has its own bucket"
    );
    assert_eq!(f.snapshot().xdp.dropped_syn_budget, 2);
}

/// Every pinned map, dumped by bpftool, shows the field names of its key and value types:
/// the BTF in the object reaches the kernel.
#[test]
fn bpftool_dump_shows_field_names_for_every_map() {
    let Some(f) = Fixture::new() else { return };
    // A SYN puts an entry in the SYN bucket map.
    assert_eq!(f.run(&v4_tcp(CLIENT, VIP, 25, true)), XDP_PASS);
    let expect: &[(&str, &[&str])] = &[
        (
            "rb_services",
            &["addr_be", "port_be", "service_id", "protocol"],
        ),
        (
            "rb_svc_stats",
            &["packets", "syns", "steered_normal", "steered_shed"],
        ),
        (
            "rb_xdp_stats",
            &["malformed", "dropped_blocklist", "dropped_syn_budget"],
        ),
        ("rb_block_v4", &["prefix_len", "rule_id"]),
        ("rb_block_v6", &["prefix_len", "rule_id"]),
        ("rb_class_v4", &["prefix_len", "class"]),
        ("rb_class_v6", &["prefix_len", "class"]),
        ("rb_syn_bucket", &["tokens_milli", "last_ns"]),
        (
            "rb_config",
            &["syn_rate_per_sec", "syn_burst", "client_prefix_v6"],
        ),
        ("rb_svc_state", &["capacity"]),
        (
            "rb_backends",
            &[
                "addr_be",
                "state",
                "weight",
                "response_us",
                "run_queue_milli",
                "mail_queue",
                "disk_permille",
                "active_sessions",
                "updated_ns",
            ],
        ),
    ];
    assert_eq!(expect.len(), robustifier_common::PINNED_MAPS.len());
    for (map, fields) in expect {
        let path = f.pin_dir.join(map);
        let out = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{map}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for field in *fields {
            assert!(
                text.contains(&format!("\"{field}\"")),
                "{map} dump lacks {field}:\n{text}"
            );
        }
    }
}
