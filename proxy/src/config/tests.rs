use super::*;

const GOOD: &str = r#"
[frontend]
name = "fe-a"
interface = "eth0"

[flood]
syn_rate_per_sec = 100
block = ["203.0.113.0/24", "2001:db8:bad::/48"]

[classes]
priority = ["198.18.7.0/24"]

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
backend = [
  { name = "x", address = "198.19.0.11:25" },
  { name = "y", address = "[2001:db8:1::12]:25", weight = 50 },
]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

fn error(text: &str) -> (String, String) {
    let e = parse(text).expect_err("config should be refused");
    assert_eq!(e.file, Path::new("test.toml"));
    (e.key, e.reason)
}

#[test]
fn good_config_is_typed() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.frontend.pin_dir, Path::new(PIN_DIR));
    assert_eq!(c.frontend.xdp_mode, XdpMode::Auto);
    assert_eq!(
        c.flood.syn_burst, 100,
        "burst defaults to one second of rate"
    );
    assert_eq!(c.services[1].id, 1);
    assert_eq!(c.services[1].protocol, Protocol::Pop3);
    assert!(c.services[1].vips.is_empty());
    assert_eq!(c.services[0].hostname, "fe-a");
    let ids: Vec<u32> = c.backends().map(|(_, b)| b.id).collect();
    assert_eq!(ids, [0, 1]);
    assert_eq!(c.pools[0].backends[1].weight, 50);
}

#[test]
fn unknown_key_is_named() {
    let (key, reason) = error(&GOOD.replace("port = 110", "port = 110\nprot = 1"));
    assert_eq!(key, "service[1].prot");
    assert!(reason.contains("unknown field `prot`"), "{reason}");
}

#[test]
fn wrong_type_is_named() {
    let (key, reason) = error(&GOOD.replace("port = 110", "port = \"pop\""));
    assert_eq!(key, "service[1].port");
    assert!(reason.contains("invalid type"), "{reason}");
}

#[test]
fn out_of_range_port_is_refused() {
    let (key, _) = error(&GOOD.replace("port = 110", "port = 70000"));
    assert_eq!(key, "service[1].port");
    let (key, reason) = error(&GOOD.replace("port = 110", "port = 0"));
    assert_eq!(
        (key.as_str(), reason.as_str()),
        ("service[1].port", "must be 1 to 65535")
    );
}

#[test]
fn duplicate_vip_port_is_refused() {
    let text = GOOD.replace("port = 110", "port = 25\nvips = [\"198.18.0.25\"]");
    let (key, reason) = error(&text);
    assert_eq!(key, "service[1]");
    assert!(
        reason.contains("198.18.0.25 port 25 is already used"),
        "{reason}"
    );
}

#[test]
fn prefix_with_host_bits_is_refused() {
    let (key, reason) = error(&GOOD.replace("203.0.113.0/24", "203.0.113.7/24"));
    assert_eq!(key, "flood.block[0]");
    assert!(reason.contains("did you mean 203.0.113.0/24"), "{reason}");
}

#[test]
fn bad_backend_address_is_named() {
    let (key, _) = error(&GOOD.replace("198.19.0.11:25", "mail.example"));
    assert_eq!(key, "pool[0].backend[0].address");
}

#[test]
fn duplicate_backend_is_refused() {
    let (key, reason) = error(&GOOD.replace("name = \"y\"", "name = \"x\""));
    assert_eq!(key, "pool[0].backend[1].name");
    assert!(reason.contains("duplicate"), "{reason}");
}

#[test]
fn bad_enum_values_are_explained() {
    let (key, reason) = error(&GOOD.replace("protocol = \"pop3\"", "protocol = \"imap\""));
    assert_eq!(key, "service[1].protocol");
    assert!(reason.contains("\"imap\""), "{reason}");
    let (key, _) = error(&GOOD.replace(
        "interface = \"eth0\"",
        "interface = \"eth0\"\nxdp_mode = \"fast\"",
    ));
    assert_eq!(key, "frontend.xdp_mode");
}

#[test]
fn syntax_error_names_the_file() {
    let e = parse("[frontend\nname=").unwrap_err();
    assert!(e.to_string().starts_with("test.toml: "), "{e}");
}

#[test]
fn missing_section_is_named() {
    let (key, reason) = error("[[service]]\nname='a'\nprotocol='smtp'\nport=25\n");
    assert_eq!(key, "");
    assert!(reason.contains("missing field `frontend`"), "{reason}");
}

#[test]
fn admission_waits_are_typed_and_bounded() {
    let c = parse(&format!(
        "{}\n[[group]]\nname = \"premium\"\nshare = 1.0\ndomains = [\"vip.example\"]\nwait_ms = 5000\n[[group]]\nname = \"regular\"\nshare = 0.5\n",
        GOOD.replace("port = 110", "port = 110\nwait_ms = 250")
    ))
    .unwrap();
    assert_eq!(c.groups[0].wait, Some(std::time::Duration::from_secs(5)));
    assert_eq!(c.groups[1].wait, None, "the service's wait applies");
    assert_eq!(c.services[1].wait, std::time::Duration::from_millis(250));
    assert!(c.services[0].wait.is_zero(), "no wait by default");

    let (key, reason) = error(&format!(
        "{GOOD}\n[[group]]\nname = \"premium\"\nshare = 1.0\nwait_ms = 300001\n"
    ));
    assert_eq!(key, "group[0].wait_ms");
    assert!(reason.contains("at most 300000 ms"), "{reason}");
    let (key, _) = error(&GOOD.replace("port = 110", "port = 110\nwait_ms = 900000"));
    assert_eq!(key, "service[1].wait_ms");
    let (key, reason) = error(&GOOD.replace("port = 110", "port = 110\nwait_ms = -1"));
    assert_eq!(key, "service[1].wait_ms");
    assert!(reason.contains("invalid value"), "{reason}");
}

// Found by the config fuzz target: a TOML syntax error came out as toml's several-line
// rendering, breaking the one-line `file: key: reason` format of check-config.
#[test]
fn syntax_error_is_one_line_with_its_position() {
    let e = parse("[frontend]\nname = \"mx.exampl\n").unwrap_err();
    assert!(!e.to_string().contains('\n'), "{e}");
    assert!(
        e.reason.starts_with("TOML syntax error at line 2, column "),
        "{}",
        e.reason
    );
}
