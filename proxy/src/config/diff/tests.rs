use std::path::{Path, PathBuf};

use super::*;

/// A folder with the files the full configuration names (certificates, keys, maps),
/// removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("robustifier-diff-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, content) in [
            ("cert.pem", "cert"),
            ("cert2.pem", "cert"),
            ("key.pem", "key"),
            ("key2.pem", "key"),
            ("ca.pem", "ca"),
            ("ca2.pem", "ca"),
            ("agent.key", "the pool's agent secret"),
            ("agent2.key", "another agent secret"),
            ("agent-c.key", "back-end c's own secret"),
            ("routes.map", "alice store\n"),
            ("routes2.map", "alice store\n"),
        ] {
            std::fs::write(dir.join(file), content).unwrap();
        }
        Dir(dir)
    }

    fn parse(&self, text: &str) -> Config {
        Config::parse(&self.0.join("robustifier.toml"), text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every key of every section set, so that each can be edited in place.
const FULL: &str = r#"
[frontend]
name = "fe"
interface = "eth0"
xdp_mode = "native"
pin_dir = "/sys/fs/bpf/rb"
user = "robustifier"
serve_loopback_clients = false
runtime = "multi"
workers = 2

[tls]
certificate = "cert.pem"
key = "key.pem"

[flood]
syn_rate_per_sec = 100
syn_burst = 200
block = ["198.19.99.0/24"]
client_prefix_v6 = 64

[classes]
priority = ["198.18.7.0/24"]

[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["198.18.0.25"]
hostname = "mx.example"
max_connections = 900
max_per_client = 10
tls = "implicit"
auth = false
plaintext_auth = false
routes = "routes.map"
pool = "store"
max_message_size = 10000000
idle_timeout_secs = 300
wait_ms = 0

[[pool]]
name = "store"
identity = "proxy"
tls = "starttls"
ca = "ca.pem"
server_name = "store.example"
shared_store = true
connect_timeout_ms = 5000
idle_legs = 16
idle_leg_ms = 10000
data_as_bdat = true
agent_key_file = "agent.key"
health = { interval_ms = 2000, timeout_ms = 3000, rise = 2, fall = 3, agent_interval_ms = 2000 }
thresholds = { mail_queue = 5000, disk_percent = 90.0, run_queue = 8.0, response_ms = 5000, sessions = 1000 }
backend = [
  { name = "a", address = "198.18.1.11:25", weight = 100, identity = "proxy", agent = "198.18.1.11:9000" },
  { name = "b", address = "198.18.1.12:25", weight = 70, identity = "none", agent = "198.18.1.12:9000", agent_insecure = false },
]

[[pool]]
name = "spare"
identity = "none"
agent_insecure = false
backend = [{ name = "c", address = "198.18.2.11:25", identity = "none", agent = "198.18.2.11:9000", agent_key_file = "agent-c.key" }]

[[group]]
name = "premium"
share = 1.0
domains = ["premium.example"]
recipients = ["boss@example.org"]
clients = ["198.18.8.0/24"]
wait_ms = 1000

[[group]]
name = "regular"
share = 0.5

[ha]
control_socket = "/run/rb/control.sock"
drain_deadline_s = 30

[[vrrp]]
vrid = 51
interface = "int0"
priority = 150
advert_interval_cs = 100
max_advert_interval_cs = 1000
preempt = true
preempt_delay_ms = 0
vips = ["198.18.0.100"]
unicast_peers = ["198.18.0.2"]
garp_count = 5
garp_interval_ms = 1000
track = { listeners = 50, datapath = 40, backends = 30, interfaces = { int1 = 60 } }

[[domain_queue]]
domains = ["slow.example", ".slow.example"]
# A literal string, so that the service's pool line stays the only one of its form.
pool = 'store'
deferred_alarm = 500
oldest_alarm_secs = 3600
auto = false
recover_secs = 1800
"#;

use ChangeKind::*;

/// One edit of one key: (the key, the text replaced, its replacement, the kind expected,
/// whether that kind is the only one the edit may produce).
#[rustfmt::skip]
const EDITS: &[(&str, &str, &str, ChangeKind, bool)] = &[
    ("frontend.name", "name = \"fe\"", "name = \"fe2\"", Frontend, true),
    ("frontend.interface", "\"eth0\"", "\"eth1\"", Frontend, true),
    ("frontend.xdp_mode", "\"native\"", "\"generic\"", Frontend, true),
    ("frontend.pin_dir", "/rb\"", "/rb2\"", Frontend, true),
    ("frontend.user", "\"robustifier\"", "\"mail\"", Frontend, true),
    ("frontend.serve_loopback_clients", "clients = false", "clients = true", Frontend, true),
    ("frontend.runtime", "\"multi\"", "\"per-core\"", Frontend, true),
    ("frontend.workers", "workers = 2", "workers = 3", Frontend, true),
    ("tls.certificate", "\"cert.pem\"", "\"cert2.pem\"", Tls, true),
    ("tls.key", "\"key.pem\"", "\"key2.pem\"", Tls, true),
    ("flood.syn_rate_per_sec", "sec = 100", "sec = 50", Kernel, true),
    ("flood.syn_burst", "burst = 200", "burst = 300", Kernel, true),
    ("flood.block", "198.19.99.0/24", "198.19.98.0/24", Kernel, true),
    ("flood.client_prefix_v6", "v6 = 64", "v6 = 56", Kernel, true),
    ("classes.priority", "198.18.7.0/24", "198.18.6.0/24", Kernel, true),
    ("service.name", "\"smtp\"\nprotocol", "\"mx\"\nprotocol", Services, true),
    ("service.protocol", "protocol = \"smtp\"", "protocol = \"pop3\"", Services, true),
    ("service.port", "port = 25\n", "port = 2525\n", Services, true),
    ("service.vips", "\"198.18.0.25\"", "\"198.18.0.26\"", Services, true),
    ("service.hostname", "\"mx.example\"", "\"mx2.example\"", Services, true),
    ("service.max_connections", "= 900", "= 800", Services, true),
    ("service.max_per_client", "client = 10", "client = 20", Services, true),
    ("service.tls", "\"implicit\"", "\"none\"", Services, true),
    ("service.auth", "\nauth = false", "\nauth = true", Services, true),
    ("service.plaintext_auth", "plaintext_auth = false", "plaintext_auth = true", Services, true),
    ("service.routes", "\"routes.map\"", "\"routes2.map\"", Services, true),
    ("service.pool", "pool = \"store\"", "pool = \"spare\"", Services, true),
    ("service.max_message_size", "10000000", "20000000", Services, true),
    ("service.idle_timeout_secs", "secs = 300", "secs = 600", Services, true),
    ("service.wait_ms", "wait_ms = 0", "wait_ms = 500", Balance, true),
    // The back-end moves along with its pool's name.
    ("pool.name", "name = \"spare\"", "name = \"reserve\"", Pools, false),
    ("pool.identity", "\nidentity = \"proxy\"", "\nidentity = \"none\"", Pools, true),
    ("pool.tls", "tls = \"starttls\"", "tls = \"none\"", Pools, true),
    ("pool.ca", "\"ca.pem\"", "\"ca2.pem\"", Pools, true),
    ("pool.server_name", "\"store.example\"", "\"store2.example\"", Pools, true),
    ("pool.shared_store", "shared_store = true", "shared_store = false", Pools, true),
    ("pool.connect_timeout_ms", "connect_timeout_ms = 5000", "connect_timeout_ms = 6000", Pools, true),
    ("pool.idle_legs", "idle_legs = 16", "idle_legs = 0", Pools, true),
    ("pool.idle_leg_ms", "idle_leg_ms = 10000", "idle_leg_ms = 5000", Pools, true),
    ("pool.data_as_bdat", "data_as_bdat = true", "data_as_bdat = false", Pools, true),
    // The back-ends' key changes with the file.
    ("pool.agent_key_file", "\"agent.key\"", "\"agent2.key\"", Pools, false),
    ("pool.agent_insecure", "\nagent_insecure = false", "\nagent_insecure = true", Pools, true),
    ("pool.health.interval_ms", "{ interval_ms = 2000", "{ interval_ms = 2500", Pools, true),
    ("pool.health.timeout_ms", "timeout_ms = 3000", "timeout_ms = 3500", Pools, true),
    ("pool.health.rise", "rise = 2", "rise = 3", Pools, true),
    ("pool.health.fall", "fall = 3", "fall = 4", Pools, true),
    ("pool.health.agent_interval_ms", "agent_interval_ms = 2000", "agent_interval_ms = 2500", Pools, true),
    ("pool.thresholds.mail_queue", "mail_queue = 5000", "mail_queue = 4000", Balance, true),
    ("pool.thresholds.disk_percent", "disk_percent = 90.0", "disk_percent = 80.0", Balance, true),
    ("pool.thresholds.run_queue", "run_queue = 8.0", "run_queue = 6.0", Balance, true),
    ("pool.thresholds.response_ms", "response_ms = 5000", "response_ms = 4000", Balance, true),
    ("pool.thresholds.sessions", "sessions = 1000", "sessions = 500", Balance, true),
    ("backend.name", "name = \"a\"", "name = \"a2\"", Backends, true),
    ("backend.address", "198.18.1.11:25", "198.18.1.21:25", Backends, true),
    ("backend.weight", "weight = 100", "weight = 50", Backends, true),
    ("backend.identity", "\"proxy\", agent", "\"none\", agent", Backends, true),
    ("backend.agent", "198.18.1.11:9000", "198.18.1.11:9001", Backends, true),
    ("backend.agent_key_file", "\"agent-c.key\"", "\"agent2.key\"", Backends, true),
    ("backend.agent_insecure", ", agent_insecure = false", ", agent_insecure = true", Backends, true),
    ("group.share", "share = 0.5", "share = 0.6", Balance, true),
    ("group.domains", "\"premium.example\"", "\"vip.example\"", Balance, true),
    ("group.recipients", "boss@", "chief@", Balance, true),
    ("group.clients", "198.18.8.0/24", "198.18.9.0/24", Balance, true),
    ("group.wait_ms", "wait_ms = 1000", "wait_ms = 2000", Balance, true),
    ("ha.control_socket", "control.sock", "ha.sock", Frontend, false),
    ("ha.drain_deadline_s", "deadline_s = 30", "deadline_s = 60", Ha, true),
    ("vrrp.priority", "priority = 150", "priority = 100", Vrrp, true),
    ("vrrp.advert_interval_cs", "\nadvert_interval_cs = 100", "\nadvert_interval_cs = 200", Vrrp, true),
    ("vrrp.max_advert_interval_cs", "max_advert_interval_cs = 1000", "max_advert_interval_cs = 2000", Vrrp, true),
    ("vrrp.preempt", "preempt = true", "preempt = false", Vrrp, true),
    ("vrrp.preempt_delay_ms", "delay_ms = 0", "delay_ms = 100", Vrrp, true),
    ("vrrp.vips", "\"198.18.0.100\"", "\"198.18.0.101\"", Vrrp, true),
    ("vrrp.unicast_peers", "\"198.18.0.2\"", "\"198.18.0.3\"", Vrrp, true),
    ("vrrp.garp_count", "garp_count = 5", "garp_count = 3", Vrrp, true),
    ("vrrp.garp_interval_ms", "garp_interval_ms = 1000", "garp_interval_ms = 500", Vrrp, true),
    ("vrrp.track", "listeners = 50", "listeners = 10", Vrrp, true),
    ("vrrp.track.interfaces", "int1 = 60", "int1 = 70", Vrrp, true),
    ("domain_queue.domains", "\"slow.example\", \".slow", "\"slow2.example\", \".slow", Services, true),
    ("domain_queue.pool", "pool = 'store'", "pool = 'spare'", Services, true),
    ("domain_queue.deferred_alarm", "deferred_alarm = 500", "deferred_alarm = 600", Services, true),
    ("domain_queue.oldest_alarm_secs", "oldest_alarm_secs = 3600", "oldest_alarm_secs = 7200", Services, true),
    ("domain_queue.auto", "auto = false", "auto = true", Services, true),
    ("domain_queue.recover_secs", "recover_secs = 1800", "recover_secs = 2400", Services, true),
];

fn edited(key: &str, from: &str, to: &str) -> String {
    assert_eq!(
        FULL.matches(from).count(),
        1,
        "{key}: {from:?} must occur once"
    );
    FULL.replacen(from, to, 1)
}

#[test]
fn every_edited_key_is_reported_with_its_kind() {
    let dir = Dir::new("keys");
    let base = dir.parse(FULL);
    for &(key, from, to, kind, only) in EDITS {
        let got = changes(&base, &dir.parse(&edited(key, from, to)));
        assert!(
            got.iter().any(|c| c.kind == kind),
            "{key}: no {kind} change in {got:?}"
        );
        if only {
            assert!(
                got.iter().all(|c| c.kind == kind),
                "{key}: changes of other kinds than {kind}: {got:?}"
            );
        }
        let back = changes(&dir.parse(&edited(key, from, to)), &base);
        assert_eq!(back.len(), got.len(), "{key}: {got:?} but back {back:?}");
    }
}

#[test]
fn a_change_of_one_kind_yields_only_that_kind() {
    for kind in ChangeKind::ALL {
        assert!(
            EDITS.iter().any(|&(_, _, _, k, only)| k == kind && only),
            "no edit of kind {kind} alone"
        );
    }
}

#[test]
fn each_key_of_the_compared_structs_has_an_edit() {
    // The keys of Frontend, Flood, Service, Pool and Backend as the file names them: a row
    // dropped from EDITS fails here.
    let keys: Vec<&str> = EDITS.iter().map(|e| e.0).collect();
    for key in [
        "frontend.name",
        "frontend.interface",
        "frontend.xdp_mode",
        "frontend.pin_dir",
        "frontend.user",
        "frontend.serve_loopback_clients",
        "frontend.runtime",
        "frontend.workers",
        "flood.syn_rate_per_sec",
        "flood.syn_burst",
        "flood.block",
        "flood.client_prefix_v6",
        "service.name",
        "service.protocol",
        "service.port",
        "service.vips",
        "service.hostname",
        "service.max_connections",
        "service.max_per_client",
        "service.tls",
        "service.auth",
        "service.plaintext_auth",
        "service.routes",
        "service.pool",
        "service.max_message_size",
        "service.idle_timeout_secs",
        "service.wait_ms",
        "pool.name",
        "pool.identity",
        "pool.tls",
        "pool.ca",
        "pool.server_name",
        "pool.shared_store",
        "pool.connect_timeout_ms",
        "pool.idle_legs",
        "pool.idle_leg_ms",
        "pool.data_as_bdat",
        "pool.agent_key_file",
        "pool.agent_insecure",
        "backend.name",
        "backend.address",
        "backend.weight",
        "backend.identity",
        "backend.agent",
        "backend.agent_key_file",
        "backend.agent_insecure",
        "domain_queue.domains",
        "domain_queue.pool",
        "domain_queue.deferred_alarm",
        "domain_queue.oldest_alarm_secs",
        "domain_queue.auto",
        "domain_queue.recover_secs",
    ] {
        assert!(keys.contains(&key), "{key} has no edit");
    }
}

#[test]
fn identical_configs_have_no_change_and_one_version() {
    let dir = Dir::new("same");
    let (a, b) = (dir.parse(FULL), dir.parse(FULL));
    assert_eq!(changes(&a, &b), []);
    assert_eq!(a.version, b.version);
    assert_eq!(a.version.len(), 12);
    assert!(a.version.bytes().all(|c| c.is_ascii_hexdigit()));
    // A comment is a new version of the file but no change of what runs.
    let commented = dir.parse(&format!("# reviewed\n{FULL}"));
    assert_ne!(commented.version, a.version);
    assert_eq!(changes(&a, &commented), []);
    // Loading the file gives the version of its bytes.
    let path = dir.0.join("robustifier.toml");
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(Config::load(&path).unwrap().version, a.version);
}

#[test]
fn changes_are_worded_old_to_new() {
    let dir = Dir::new("words");
    let base = dir.parse(FULL);
    let what = |key, from, to| -> Vec<String> {
        changes(&base, &dir.parse(&edited(key, from, to)))
            .into_iter()
            .map(|c| c.what)
            .collect()
    };
    assert_eq!(
        what("port", "port = 25\n", "port = 2525\n"),
        ["service smtp: port 25 -> 2525"]
    );
    assert_eq!(
        what("block", "198.19.99.0/24", "198.19.98.0/24"),
        [
            "flood: block 198.19.98.0/24 added",
            "flood: block 198.19.99.0/24 removed"
        ]
    );
    assert_eq!(
        what("wait", "wait_ms = 0", "wait_ms = 500"),
        ["service smtp: wait 0s -> 500ms"]
    );
    assert_eq!(
        what("disk", "disk_percent = 90.0", "disk_percent = 80.5"),
        ["pool store: thresholds.disk_percent 90 -> 80.5"]
    );
    assert_eq!(
        what("name", "name = \"spare\"", "name = \"reserve\""),
        [
            "pool reserve added",
            "pool spare removed",
            "back-end c: pool spare -> reserve"
        ]
    );
    // A key is named, never shown.
    assert_eq!(
        what("key", "\"agent.key\"", "\"agent2.key\""),
        [
            format!(
                "pool store: agent_key_file {} -> {}",
                dir.0.join("agent.key").display(),
                dir.0.join("agent2.key").display()
            ),
            "back-end a: agent key changed".into(),
            "back-end b: agent key changed".into(),
        ]
    );
    assert_eq!(
        what("user", "user = \"robustifier\"\n", ""),
        ["frontend: user robustifier -> unset"]
    );
}

#[test]
fn backends_added_removed_and_reordered() {
    let dir = Dir::new("order");
    let base = dir.parse(FULL);
    let a = "  { name = \"a\", address = \"198.18.1.11:25\", weight = 100, identity = \"proxy\", agent = \"198.18.1.11:9000\" },\n";
    let swapped = FULL
        .replacen(a, "", 1)
        .replacen("\n]\n", &format!("\n{a}]\n"), 1);
    let got = changes(&base, &dir.parse(&swapped));
    assert_eq!(
        got,
        [Change {
            kind: Backends,
            what: "pool store: back-end order a, b -> b, a".into()
        }]
    );
    let without_a = FULL.replacen(a, "", 1);
    let got = changes(&base, &dir.parse(&without_a));
    assert_eq!(
        summary(&got),
        "1 change: back-end a removed from pool store"
    );
    let got = changes(&dir.parse(&without_a), &base);
    assert_eq!(summary(&got), "1 change: back-end a added to pool store");
}

#[test]
fn summary_counts_and_joins() {
    assert_eq!(summary(&[]), "no change");
    let change = |kind, what: &str| Change {
        kind,
        what: what.into(),
    };
    assert_eq!(
        summary(&[
            change(Services, "service smtp: port 25 -> 2525"),
            change(Backends, "back-end b added to pool store"),
            change(Vrrp, "vrrp 51 ipv4 on int0: priority 150 -> 100"),
        ]),
        "3 changes: service smtp: port 25 -> 2525; back-end b added to pool store; \
         vrrp 51 ipv4 on int0: priority 150 -> 100"
    );
}

#[test]
fn only_the_frontend_section_takes_a_restart() {
    let live: Vec<ChangeKind> = ChangeKind::ALL.into_iter().filter(|k| k.live()).collect();
    assert_eq!(
        live,
        [Services, Pools, Backends, Balance, Kernel, Tls, Ha, Vrrp],
        "{:?}",
        ChangeKind::ALL.map(ChangeKind::as_str)
    );
    let dir = Dir::new("restart");
    let base = dir.parse(FULL);
    let new = FULL
        .replacen("port = 25\n", "port = 2525\n", 1)
        .replacen("priority = 150", "priority = 100", 1)
        .replacen("deadline_s = 30", "deadline_s = 60", 1)
        .replacen("\"native\"", "\"generic\"", 1);
    assert_eq!(
        restart_needed(&base, &dir.parse(&new)),
        ["frontend: xdp_mode native -> generic"]
    );
}

fn cfg(text: &str) -> Config {
    Config::parse(Path::new("t.toml"), text).unwrap()
}

const BASE: &str = "[frontend]\nname='f'\n[[service]]\nname='smtp'\nprotocol='smtp'\nport=25\npool='p'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{name='a',address='198.18.1.11:25'}]\n";

#[test]
fn backends_of_running_pools_need_no_restart() {
    let added = BASE.replace("}]", "},{name='b',address='198.18.1.12:25'}]");
    assert!(restart_needed(&cfg(BASE), &cfg(&added)).is_empty());
    let moved = BASE.replace("1.11", "1.21");
    assert!(restart_needed(&cfg(BASE), &cfg(&moved)).is_empty());
    assert!(restart_needed(&cfg(&added), &cfg(BASE)).is_empty());
}

#[test]
fn pools_services_and_settings_are_named() {
    let new = format!(
        "{}[[pool]]\nname='q'\nidentity='none'\nbackend=[{{name='q1',address='198.18.2.11:25'}}]\n",
        BASE.replace("port=25", "port=2525")
            .replace("'198.18.1.11:25'}", "'198.18.1.11:25',weight=5}")
    );
    let got = changes(&cfg(BASE), &cfg(&new));
    assert_eq!(
        got,
        [
            Change {
                kind: Services,
                what: "service smtp: port 25 -> 2525".into()
            },
            Change {
                kind: Pools,
                what: "pool q added".into()
            },
            Change {
                kind: Backends,
                what: "back-end a: weight 100 -> 5".into()
            },
            Change {
                kind: Backends,
                what: "back-end q1 added to pool q".into()
            },
        ]
    );
    let back = changes(&cfg(&new), &cfg(BASE));
    assert!(
        back.iter()
            .any(|c| c.kind == Pools && c.what == "pool q removed"),
        "{back:?}"
    );
}

#[test]
fn an_snmp_destination_changed_takes_a_restart() {
    let dir = Dir::new("snmp");
    std::fs::write(dir.0.join("snmp.community"), "public\n").unwrap();
    let with = |target: &str| {
        format!(
            "{BASE}[[monitor.snmp]]\ntarget='{target}'\nversion='2c'\ncommunity_file='snmp.community'\n"
        )
    };
    let old = dir.parse(&with("198.18.0.9:162"));
    assert!(restart_needed(&old, &dir.parse(&with("198.18.0.9:162"))).is_empty());
    assert_eq!(
        restart_needed(&old, &dir.parse(&with("198.18.0.10:162"))),
        ["monitor: snmp destinations 198.18.0.9:162 (v2c, traps) -> 198.18.0.10:162 (v2c, traps)"]
    );
    assert_eq!(
        restart_needed(&dir.parse(BASE), &old),
        ["monitor: snmp destinations none -> 198.18.0.9:162 (v2c, traps)"]
    );
}

#[test]
fn dedicated_queues_added_moved_and_removed_are_named_and_live() {
    let dir = Dir::new("domain-queues");
    let base = dir.parse(FULL);
    let without = FULL.split("[[domain_queue]]").next().unwrap();
    let none = dir.parse(without);
    let added = changes(&none, &base);
    let whats: Vec<&str> = added.iter().map(|c| c.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "domain_queue slow.example added",
            "domain_queue .slow.example added"
        ]
    );
    assert!(added.iter().all(|c| c.kind == Services && c.kind.live()));
    let removed = changes(&base, &none);
    assert_eq!(removed.len(), 2);
    assert!(removed[0].what.ends_with("removed"), "{removed:?}");
    let moved = changes(
        &base,
        &dir.parse(&edited("pool", "pool = 'store'", "pool = 'spare'")),
    );
    let whats: Vec<&str> = moved.iter().map(|c| c.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "domain_queue slow.example: pool store -> spare",
            "domain_queue .slow.example: pool store -> spare"
        ]
    );
    assert!(restart_needed(&base, &none).is_empty());
}

#[test]
fn a_changed_directory_names_its_changed_keys() {
    use crate::config::directory::NotFound;
    use crate::directory::resolver::testing::directory;
    let mut old = cfg("[frontend]\nname = \"fe\"\n");
    old.directories = vec![
        directory("people", NotFound::Pool),
        directory("gone", NotFound::Pool),
    ];
    let mut new = old.clone();
    new.directories.remove(1);
    let d = &mut new.directories[0];
    d.timeout = std::time::Duration::from_millis(2500);
    d.not_found = NotFound::Reject;
    d.cache.negative_ttl = std::time::Duration::from_secs(5);
    d.cache.stale_max = None;
    let crate::config::directory::SourceConfig::Ldap(l) = &mut d.source else {
        unreachable!()
    };
    l.base = "ou=other".into();
    let what: Vec<String> = changes(&old, &new).into_iter().map(|c| c.what).collect();
    assert_eq!(
        what,
        [
            "directory people: timeout 1s -> 2.5s",
            "directory people: not_found pool -> reject",
            "directory people: negative_ttl 60s -> 5s",
            "directory people: stale true -> false",
            "directory people: [directory.ldap] changed",
            "directory gone removed",
        ]
    );
    assert!(changes(&old, &old).is_empty());
}
