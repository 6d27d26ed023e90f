use super::*;

/// Two members sharing one SMTP service and one pool, with one router (IPv4 and IPv6).
fn cluster(extra: &str) -> String {
    format!(
        r#"
[frontend]
name = "template"

[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["198.18.0.25"]

[[pool]]
name = "store"
identity = "none"
backend = [{{ name = "x", address = "198.19.0.11:25" }}]

[[vrrp]]
vrid = 51
priority = 100
vips = ["198.18.0.25"]

[[vrrp]]
vrid = 51
priority = 100
vips = ["2001:db8::25"]

[members.fe1]
frontend = {{ interface = "eth1", pin_dir = "/sys/fs/bpf/fe1" }}
vrrp = {{ 51 = {{ priority = 200 }} }}

[members.fe2]
frontend = {{ interface = "eth2" }}
{extra}
"#
    )
}

fn dir() -> &'static Path {
    Path::new("/etc/robustifier")
}

#[test]
fn each_member_gets_the_shared_parts_and_its_own() {
    let all = check(&cluster(""), dir()).unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.member.as_str()).collect();
    assert_eq!(names, ["fe1", "fe2"]);
    let (fe1, fe2) = (&all[0].config, &all[1].config);
    assert_eq!(fe1.frontend.name, "fe1", "the name is the member's key");
    assert_eq!(fe2.frontend.name, "fe2");
    assert_eq!(fe1.frontend.interface.as_deref(), Some("eth1"));
    assert_eq!(fe2.frontend.interface.as_deref(), Some("eth2"));
    assert_eq!(fe1.frontend.pin_dir, Path::new("/sys/fs/bpf/fe1"));
    assert_eq!(
        fe2.frontend.pin_dir,
        Path::new(robustifier_common::PIN_DIR),
        "not overridden: the default"
    );
    assert_eq!(fe1.services.len(), 1);
    assert_eq!(fe2.services.len(), 1);
    let prio = |c: &Config| -> Vec<u8> { c.vrrp.iter().map(|r| r.priority.get()).collect() };
    assert_eq!(prio(fe1), [200, 200], "both families of VRID 51");
    assert_eq!(prio(fe2), [100, 100]);
    assert!(!all[0].text.contains("members"), "{}", all[0].text);
}

#[test]
fn a_member_that_refuses_refuses_for_all_naming_it() {
    let text = cluster("ha = { drain_deadline_s = -1 }");
    let err = check(&text, dir()).unwrap_err();
    let RenderError::Member { member, error } = &err else {
        panic!("{err}");
    };
    assert_eq!(member, "fe2");
    assert_eq!(error.key, "ha.drain_deadline_s", "{err}");
    assert!(
        err.to_string().starts_with("member fe2 refuses it: "),
        "{err}"
    );
}

#[test]
fn shared_keys_cannot_differ_per_member() {
    let err = check(&cluster("service = { x = 1 }"), dir()).unwrap_err();
    assert!(
        matches!(&err, RenderError::Text { key, .. } if key == "members.fe2.service"),
        "{err}"
    );
    let err = check(&cluster("vrrp = { 51 = { vips = [] } }"), dir()).unwrap_err();
    assert!(
        matches!(&err, RenderError::Text { key, .. } if key == "members.fe2.vrrp.51.vips"),
        "{err}"
    );
    let err = check(&cluster("vrrp = { 52 = { priority = 1 } }"), dir()).unwrap_err();
    assert!(
        matches!(&err, RenderError::Text { key, .. } if key == "members.fe2.vrrp.52"),
        "{err}"
    );
    let renamed = cluster("").replace(
        r#"frontend = { interface = "eth2" }"#,
        r#"frontend = { interface = "eth2", name = "other" }"#,
    );
    let err = check(&renamed, dir()).unwrap_err();
    assert!(
        matches!(&err, RenderError::Text { key, .. } if key == "members.fe2.frontend.name"),
        "{err}"
    );
}

#[test]
fn members_are_required_and_named_safely() {
    let plain = cluster("")
        .replace("[members.fe1]", "[x1]")
        .replace("[members.fe2]", "[x2]");
    let err = check(&plain, dir()).unwrap_err();
    assert!(
        matches!(&err, RenderError::Text { key, .. } if key == "members"),
        "{err}"
    );
    let bad = cluster("").replace("[members.fe2]", "[members.\"../x\"]");
    let err = check(&bad, dir()).unwrap_err();
    assert!(
        matches!(&err, RenderError::Text { key, .. } if key == "members.../x"),
        "{err}"
    );
    assert!(valid_name("fe-1.a_b"));
    assert!(!valid_name(""));
    assert!(!valid_name(".hidden"));
    assert!(!valid_name(&"a".repeat(65)));
}

#[test]
fn syntax_errors_are_refused() {
    let err = check("[frontend\nname=", dir()).unwrap_err();
    assert!(matches!(err, RenderError::Text { .. }), "{err}");
}

#[test]
fn rendering_is_deterministic() {
    let c = ClusterConfig::parse(&cluster("")).unwrap();
    assert_eq!(c.render("fe1").unwrap(), c.render("fe1").unwrap());
    assert!(c.render("fe3").is_err());
}
