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
identity = "none"
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

#[test]
fn agents_need_a_key_file_or_an_explicit_insecure_flag() {
    let dir = std::env::temp_dir().join(format!("rb-cfg-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pool_key, own_key, short) = (dir.join("pool.key"), dir.join("own.key"), dir.join("s"));
    std::fs::write(&pool_key, "pool key, at least sixteen octets\n").unwrap();
    std::fs::write(&own_key, "the back-end's own key\n").unwrap();
    std::fs::write(&short, "too short\n").unwrap();
    let with = |pool: &str, x: &str| {
        GOOD.replace("name = \"store\"", &format!("name = \"store\"\n{pool}"))
            .replace(
                "{ name = \"x\", address = \"198.19.0.11:25\" }",
                &format!("{{ name = \"x\", address = \"198.19.0.11:25\", agent = \"198.19.0.11:7025\"{x} }}"),
            )
    };
    let key_of = |p: &Path| AgentKey::from_file(p).unwrap();
    use crate::agent_wire::AgentKey;

    // Fail closed: an agent without a key is refused, naming the back-end's agent key.
    let (key, reason) = error(&with("", ""));
    assert_eq!(key, "pool[0].backend[0].agent");
    assert!(reason.contains("agent_key_file"), "{reason}");

    let pool_file = format!("agent_key_file = {:?}", pool_key.display().to_string());
    let c = parse(&with(&pool_file, "")).unwrap();
    let a = c.pools[0].backends[0].agent.unwrap();
    assert_eq!(a.address, "198.19.0.11:7025".parse().unwrap());
    assert_eq!(a.key, Some(key_of(&pool_key)), "the pool's key");
    assert_eq!(c.pools[0].backends[1].agent, None);

    let own = format!(", agent_key_file = {:?}", own_key.display().to_string());
    let c = parse(&with(&pool_file, &own)).unwrap();
    assert_eq!(
        c.pools[0].backends[0].agent.unwrap().key,
        Some(key_of(&own_key)),
        "the back-end's own key wins"
    );

    let c = parse(&with("agent_insecure = true", "")).unwrap();
    assert_eq!(c.pools[0].backends[0].agent.unwrap().key, None);
    let c = parse(&with(&pool_file, ", agent_insecure = true")).unwrap();
    assert_eq!(c.pools[0].backends[0].agent.unwrap().key, None);

    let (key, reason) = error(&with("", &format!("{own}, agent_insecure = true")));
    assert_eq!(key, "pool[0].backend[0].agent_key_file");
    assert!(reason.contains("contradict"), "{reason}");
    let (key, reason) = error(&with(
        &format!("agent_key_file = {:?}", short.display().to_string()),
        "",
    ));
    assert_eq!(key, "pool[0].agent_key_file");
    assert!(reason.contains("at least 16"), "{reason}");
    let (key, reason) = error(&with("agent_key_file = \"/nonexistent/agent.key\"", ""));
    assert_eq!(key, "pool[0].agent_key_file");
    assert!(reason.contains("cannot read"), "{reason}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn auth_in_clear_needs_plaintext_auth() {
    let smtp = "port = 25\nvips = [\"198.18.0.25\", \"2001:db8::25\"]";
    let (key, reason) = error(&GOOD.replace(smtp, &format!("{smtp}\nauth = true")));
    assert_eq!(key, "service[0].auth");
    assert!(reason.contains("plaintext_auth = true"), "{reason}");
    let c =
        parse(&GOOD.replace(smtp, &format!("{smtp}\nauth = true\nplaintext_auth = true"))).unwrap();
    assert!(c.services[0].auth && c.services[0].plaintext_auth);
    assert!(
        !c.services[1].plaintext_auth,
        "no passwords in clear by default"
    );
}

#[test]
fn ipv6_client_prefix_reaches_the_services() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.flood.client_prefix_v6, 64);
    assert_eq!(c.services[1].client_prefix_v6, 64);
    let c = parse(&GOOD.replace("[flood]", "[flood]\nclient_prefix_v6 = 56")).unwrap();
    assert_eq!(c.flood.client_prefix_v6, 56);
    assert_eq!(c.services[0].client_prefix_v6, 56);
    let (key, _) = error(&GOOD.replace("[flood]", "[flood]\nclient_prefix_v6 = 129"));
    assert_eq!(key, "flood.client_prefix_v6");
}

#[test]
fn frontend_user_is_optional_and_checked() {
    assert_eq!(parse(GOOD).expect("good config").frontend.user, None);
    let named = GOOD.replace("name = \"fe-a\"", "name = \"fe-a\"\nuser = \"mailproxy\"");
    assert_eq!(
        parse(&named).expect("config with a user").frontend.user,
        Some("mailproxy".to_owned())
    );
    let bad = GOOD.replace("name = \"fe-a\"", "name = \"fe-a\"\nuser = \"\"");
    assert_eq!(error(&bad).0, "frontend.user");
}

#[test]
fn a_pool_must_say_how_the_client_address_reaches_its_backends() {
    let no_identity = GOOD.replace(
        "name = \"store\"\nidentity = \"none\"\n",
        "name = \"store\"\n",
    );
    assert_ne!(no_identity, GOOD);
    let (key, reason) = error(&no_identity);
    assert_eq!(key, "pool[0].identity");
    assert!(reason.contains("\"xclient\""), "{reason}");
    // Every back-end naming its own is enough.
    let each = no_identity
        .replace(
            "198.19.0.11:25\" }",
            "198.19.0.11:25\", identity = \"xclient\" }",
        )
        .replace("weight = 50 }", "weight = 50, identity = \"proxy\" }");
    assert!(parse(&each).is_ok());
}

#[test]
fn pop3_service_refuses_an_xclient_default_pool() {
    let pop3 = "protocol = \"pop3\"\nport = 110";
    let with_pool = GOOD.replace(pop3, &format!("{pop3}\npool = \"store\""));
    assert_eq!(
        parse(&with_pool).unwrap().services[1].pool.as_deref(),
        Some("store")
    );
    let xclient = with_pool.replace(
        "name = \"store\"\nidentity = \"none\"",
        "name = \"store\"\nidentity = \"xclient\"",
    );
    let (key, reason) = error(&xclient);
    assert_eq!(key, "service[1].pool");
    assert!(
        reason.contains("pool \"store\" passes the client with XCLIENT")
            && reason.contains("POP3 cannot carry"),
        "{reason}"
    );
    // The same pool is fine for SMTP, whose back-ends take XCLIENT.
    let smtp = "protocol = \"smtp\"\nport = 25";
    assert!(
        parse(
            &GOOD
                .replace(smtp, &format!("{smtp}\npool = \"store\""))
                .replace(
                    "name = \"store\"\nidentity = \"none\"",
                    "name = \"store\"\nidentity = \"xclient\""
                )
        )
        .is_ok()
    );
    let (key, reason) = error(&GOOD.replace(pop3, &format!("{pop3}\npool = \"nowhere\"")));
    assert_eq!(
        (key.as_str(), reason.as_str()),
        ("service[1].pool", "pool \"nowhere\" is not configured")
    );
}

#[test]
fn routing_maps_are_resolved_at_check_time_with_file_and_line() {
    let dir = std::env::temp_dir().join(format!("rb-cfg-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("pop.map");
    std::fs::write(&map, "alice store\n# typo below\nbob stroe\n").unwrap();
    let pop3 = "protocol = \"pop3\"\nport = 110";
    let text = GOOD.replace(pop3, &format!("{pop3}\nroutes = \"pop.map\""));
    let file = dir.join("t.toml");
    let e = Config::parse(&file, &text).expect_err("unknown pool in the map");
    assert_eq!(e.key, "service[1].routes");
    assert_eq!(
        e.reason,
        format!("{}:3: pool \"stroe\" is not configured", map.display())
    );
    std::fs::write(&map, "alice store\n").unwrap();
    let xclient = text.replace(
        "name = \"store\"\nidentity = \"none\"",
        "name = \"store\"\nidentity = \"xclient\"",
    );
    let e = Config::parse(&file, &xclient).expect_err("xclient pool in a POP3 map");
    assert!(
        e.reason.starts_with(&format!(
            "{}:1: pool \"store\" passes the client with XCLIENT",
            map.display()
        )),
        "{}",
        e.reason
    );
    assert!(Config::parse(&file, &text).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
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

#[test]
fn pool_server_name_is_parsed_once_and_a_bad_one_refused() {
    let pool = |name: &str| {
        GOOD.replace(
            "identity = \"none\"\nbackend",
            &format!(
                "identity = \"none\"\ntls = \"starttls\"\nca = \"/dev/null\"\n\
                 server_name = {name:?}\nbackend"
            ),
        )
    };
    let c = parse(&pool("be1.robustifier.test")).unwrap();
    let BackendTls::StartTls { server_name, .. } = &c.pools[0].tls else {
        panic!("starttls expected");
    };
    assert_eq!(
        server_name.as_ref().map(|n| n.to_str().into_owned()),
        Some("be1.robustifier.test".to_owned())
    );
    let (key, reason) = error(&pool("not a host name"));
    assert_eq!(key, "pool[0].server_name");
    assert!(reason.contains("\"not a host name\""), "{reason}");
}

#[test]
fn the_metrics_endpoint_needs_a_token_unless_told_otherwise() {
    let with = |monitor: &str| format!("{GOOD}\n[monitor]\n{monitor}\n");
    let (key, reason) = error(&with("metrics_listen = \"127.0.0.1:9190\""));
    assert_eq!(key, "monitor.metrics_token_file");
    assert!(reason.contains("bearer token"), "{reason}");
    let (key, _) = error(&with(
        "metrics_listen = \"127.0.0.1:9190\"\nmetrics_token_file = \"/nonexistent/token\"",
    ));
    assert_eq!(key, "monitor.metrics_token_file");
    let (key, _) = error(&with(
        "metrics_listen = \"localhost\"\nmetrics_insecure_no_auth = true",
    ));
    assert_eq!(key, "monitor.metrics_listen");
    let (key, _) = error(&with("metrics_insecure_no_auth = true"));
    assert_eq!(key, "monitor.metrics_listen");
    let open = parse(&with(
        "metrics_listen = \"127.0.0.1:9190\"\nmetrics_insecure_no_auth = true",
    ))
    .unwrap();
    let m = open.monitor.metrics.unwrap();
    assert_eq!((m.listen.port(), m.token_file), (9190, None));
    let (key, _) = error(&with("event_log_max_bytes = 100"));
    assert_eq!(key, "monitor.event_log_max_bytes");
    let (key, _) = error(&with("event_log_files = 0"));
    assert_eq!(key, "monitor.event_log_files");
    let none = parse(GOOD).unwrap();
    assert_eq!((none.monitor.event_log, none.monitor.metrics), (None, None));
}

/// A fresh folder for secret files.
fn secrets_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "robustifier-config-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn snmp_destinations_take_secrets_from_files_checked_at_load() {
    let dir = secrets_dir("snmp");
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let community = file("community", "public\n");
    let key = file("auth.key", "authpass123\n");
    let short = file("short.key", "short\n");
    let privkey = file("priv.key", "privpass123\n");
    let boots = dir.join("engine.boots").display().to_string();
    let with = |snmp: &str| format!("{GOOD}\n[[monitor.snmp]]\n{snmp}\n");

    let c = parse(&with(&format!(
        "target = \"198.18.0.9:162\"\nversion = \"2c\"\ncommunity_file = \"{community}\""
    )))
    .unwrap();
    assert_eq!(
        c.monitor.snmp,
        [snmp::Destination {
            target: "198.18.0.9:162".parse().unwrap(),
            inform: false,
            security: snmp::Security::V2c {
                community_file: community.clone().into()
            },
        }]
    );
    let v3 = format!(
        "target = \"[2001:db8::9]:162\"\nversion = \"3\"\nuser = \"robustifier\"\nauth = \"sha\"\n\
         auth_key_file = \"{key}\"\npriv = \"aes\"\npriv_key_file = \"{privkey}\"\n\
         engine_id = \"0x8001869f04666531\"\nengine_boots_file = \"{boots}\""
    );
    let c = parse(&with(&v3)).unwrap();
    let snmp::Security::V3(s) = &c.monitor.snmp[0].security else {
        panic!("v3 expected");
    };
    assert_eq!(s.auth, snmp::Auth::Sha1);
    assert_eq!(
        s.engine_id.as_deref(),
        Some(&[0x80, 0x01, 0x86, 0x9f, 0x04, 0x66, 0x65, 0x31][..])
    );
    assert!(matches!(s.privacy, Some(snmp::Privacy::Aes128 { .. })));

    // A community inline is no key of ours; a missing or empty file is refused.
    let (_, reason) = error(&with(
        "target = \"198.18.0.9:162\"\nversion = \"2c\"\ncommunity = \"public\"",
    ));
    assert!(reason.contains("unknown field `community`"), "{reason}");
    let (k, reason) = error(&with(
        "target = \"198.18.0.9:162\"\nversion = \"2c\"\ncommunity_file = \"/nonexistent/c\"",
    ));
    assert_eq!(k, "monitor.snmp[0].community_file");
    assert!(reason.contains("cannot read"), "{reason}");
    let empty = file("empty", "\n");
    let (k, reason) = error(&with(&format!(
        "target = \"198.18.0.9:162\"\nversion = \"2c\"\ncommunity_file = \"{empty}\""
    )));
    assert_eq!(k, "monitor.snmp[0].community_file");
    assert!(reason.contains("0 bytes"), "{reason}");
    // v3 keys shorter than 8 bytes, a trap without its boots file, a bad engine ID.
    let (k, reason) = error(&with(&v3.replace(&key, &short)));
    assert_eq!(k, "monitor.snmp[0].auth_key_file");
    assert!(reason.contains("must be 8 to"), "{reason}");
    let (k, _) = error(&with(&v3.replace(&privkey, &short)));
    assert_eq!(k, "monitor.snmp[0].priv_key_file");
    let no_boots = v3.replace(&format!("engine_boots_file = \"{boots}\""), "");
    let (k, reason) = error(&with(&no_boots));
    assert_eq!(k, "monitor.snmp[0].engine_boots_file");
    assert!(reason.contains("snmpEngineBoots"), "{reason}");
    // Informs discover the manager's engine: no boots file needed, none allowed.
    assert!(
        parse(&with(
            &format!("{no_boots}\ninform = true").replace("engine_id = \"0x8001869f04666531\"", "")
        ))
        .is_ok()
    );
    let (k, _) = error(&with(&format!("{v3}\ninform = true")));
    assert_eq!(k, "monitor.snmp[0].engine_boots_file");
    let (k, _) = error(&with(&v3.replace("0x8001869f04666531", "0x80")));
    assert_eq!(k, "monitor.snmp[0].engine_id");
    let (k, _) = error(&with(&v3.replace("\"sha\"", "\"md5\"")));
    assert_eq!(k, "monitor.snmp[0].auth");
    let (k, _) = error(&with(&v3.replace("\"aes\"", "\"des\"")));
    assert_eq!(k, "monitor.snmp[0].priv");
    let (k, _) = error(&with(&format!("{v3}\ncommunity_file = \"{community}\"")));
    assert_eq!(k, "monitor.snmp[0].community_file");
    let (k, _) = error(&with(&v3.replace("version = \"3\"", "version = \"1\"")));
    assert_eq!(k, "monitor.snmp[0].version");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_event_history_is_configurable_within_bounds() {
    let with = |monitor: &str| format!("{GOOD}\n[monitor]\n{monitor}\n");
    assert_eq!(
        parse(GOOD).unwrap().monitor.event_history,
        crate::events::DEFAULT_HISTORY
    );
    assert_eq!(
        parse(&with("event_history = 500"))
            .unwrap()
            .monitor
            .event_history,
        500
    );
    let (key, _) = error(&with("event_history = 10"));
    assert_eq!(key, "monitor.event_history");
}

#[test]
fn statistics_settings_have_defaults_and_bounds() {
    let with = |monitor: &str| format!("{GOOD}\n[monitor]\n{monitor}\n");
    let none = parse(GOOD).unwrap().monitor.stats;
    assert_eq!(
        (none.log, none.minutes, none.deflection_alarm_per_minute),
        (None, 1440, None)
    );
    assert_eq!(none.period, std::time::Duration::from_secs(60));
    let set = parse(&with(
        "stats_log = \"stats\"\nstats_minutes = 60\ndeflection_alarm_per_minute = 5\nflood_drop_alarm_per_minute = 7\nstats_period_ms = 100",
    ))
    .unwrap()
    .monitor
    .stats;
    assert!(set.log.unwrap().ends_with("stats"));
    assert_eq!(
        (
            set.minutes,
            set.deflection_alarm_per_minute,
            set.flood_drop_alarm_per_minute
        ),
        (60, Some(5), Some(7))
    );
    assert_eq!(set.period, std::time::Duration::from_millis(100));
    for (line, key) in [
        ("stats_minutes = 0", "monitor.stats_minutes"),
        ("stats_minutes = 20000", "monitor.stats_minutes"),
        ("stats_log_max_bytes = 10", "monitor.stats_log_max_bytes"),
        ("stats_log_files = 0", "monitor.stats_log_files"),
        ("stats_period_ms = 0", "monitor.stats_period_ms"),
        ("stats_period_ms = 120000", "monitor.stats_period_ms"),
    ] {
        assert_eq!(error(&with(line)).0, key, "{line}");
    }
}

/// GOOD with a pool for dedicated queues (XCLIENT: fine for SMTP, which is all a
/// dedicated queue serves) and `blocks` appended.
fn with_domain_queues(blocks: &str) -> String {
    format!(
        "{GOOD}\n[[pool]]\nname = \"slowq\"\nidentity = \"xclient\"\nbackend = [{{ name = \"q\", address = \"198.19.0.21:25\" }}]\n{blocks}"
    )
}

#[test]
fn domain_queues_are_normalised_and_kept() {
    let cfg = parse(&with_domain_queues(
        "[[domain_queue]]\ndomains = [\"Slow.Example.\", \".slow.example\"]\npool = \"slowq\"\n\
         deferred_alarm = 500\noldest_alarm_secs = 3600\nauto = true\nrecover_secs = 900\n\
         [[domain_queue]]\ndomains = [\"other.example\"]\npool = \"store\"\n",
    ))
    .unwrap();
    let q = &cfg.domain_queues;
    assert_eq!(q.len(), 2);
    let shown: Vec<String> = q[0].domains.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["slow.example", ".slow.example"]);
    assert_eq!(q[0].pool, "slowq");
    assert_eq!(
        (
            q[0].deferred_alarm,
            q[0].oldest_alarm_secs,
            q[0].auto,
            q[0].recover_secs
        ),
        (Some(500), Some(3600), true, Some(900))
    );
    assert_eq!(
        (q[1].deferred_alarm, q[1].auto, q[1].recover_secs),
        (None, false, None)
    );
    let table = cfg.domain_queue_table();
    // An `auto = true` block is routed only while isolated: not in the table of blocks
    // routed always.
    assert!(table.lookup("SLOW.example").is_none());
    assert!(table.lookup("mx.slow.example").is_none());
    assert_eq!(table.lookup("other.example").map(|d| d.pool), Some("store"));
    let mut always = cfg.clone();
    always.domain_queues[0].auto = false;
    let table = always.domain_queue_table();
    assert_eq!(table.lookup("SLOW.example").map(|d| d.pool), Some("slowq"));
    assert_eq!(
        table.lookup("mx.slow.example").map(|d| d.pool),
        Some("slowq")
    );
    assert!(table.lookup("notslow.example").is_none());
    assert!(parse(GOOD).unwrap().domain_queues.is_empty());
}

#[test]
fn domain_queues_are_validated() {
    let block = |body: &str| with_domain_queues(&format!("[[domain_queue]]\n{body}\n"));
    for (body, key, reason) in [
        (
            "domains = []\npool = \"slowq\"",
            "domain_queue[0].domains",
            "at least one",
        ),
        (
            "domains = [\"a..b\"]\npool = \"slowq\"",
            "domain_queue[0].domains[0]",
            "not a domain",
        ),
        (
            "domains = [\"x.example\", \"a b\"]\npool = \"slowq\"",
            "domain_queue[0].domains[1]",
            "not a domain",
        ),
        (
            "domains = [\"x.example\", \"X.example.\"]\npool = \"slowq\"",
            "domain_queue[0].domains[1]",
            "twice",
        ),
        (
            "domains = [\"x.example\"]\npool = \"nowhere\"",
            "domain_queue[0].pool",
            "not configured",
        ),
        ("domains = [\"x.example\"]", "domain_queue[0]", "pool"),
        (
            "domains = [\"x.example\"]\npool = \"slowq\"\ndeferred_alarm = 0",
            "domain_queue[0].deferred_alarm",
            "at least 1",
        ),
        (
            "domains = [\"x.example\"]\npool = \"slowq\"\noldest_alarm_secs = 0",
            "domain_queue[0].oldest_alarm_secs",
            "at least 1",
        ),
        (
            "domains = [\"x.example\"]\npool = \"slowq\"\nrecover_secs = 0",
            "domain_queue[0].recover_secs",
            "at least 1",
        ),
        (
            "domains = [\"x.example\"]\npool = \"slowq\"\nauto = true",
            "domain_queue[0].auto",
            "needs deferred_alarm",
        ),
        (
            "domains = [\"x.example\"]\npool = \"slowq\"\nqueue = 1",
            "domain_queue[0].queue",
            "unknown field",
        ),
    ] {
        let (k, r) = error(&block(body));
        assert_eq!(k, key, "{body}: {r}");
        assert!(r.contains(reason), "{body}: {r}");
    }
    // A domain belongs to one block; a domain and its subdomains are two patterns.
    let (k, r) = error(&with_domain_queues(
        "[[domain_queue]]\ndomains = [\"slow.example\"]\npool = \"slowq\"\n\
         [[domain_queue]]\ndomains = [\".slow.example\", \"SLOW.example\"]\npool = \"store\"\n",
    ));
    assert_eq!(k, "domain_queue[1].domains[1]");
    assert!(r.contains("already in domain_queue[0]"), "{r}");
}
