//! The LDAP directory source against a real OpenLDAP slapd in the lab: lookups run in
//! front-end A's namespace through `robustifier::directory::open`, the way a front-end
//! asks them. Hostile keys find only the entry whose address is that very text; LDAPS and
//! StartTLS both verify the server against the CA; servers are tried in order.
//! Privileged: builds namespaces and runs slapd as root.

use std::{net::IpAddr, path::Path, time::Duration};

use robustifier::{
    config::directory::{Directory, RawDirectory, directories},
    directory::{Found, Key, SourceError},
};
use robustifier_lab::{
    Lab, Netns, Plan,
    directory::ldap::{Entry, Slapd, lab_mailboxes},
    mail::tls,
};

fn lab(tag: &str, backends: usize) -> Option<Lab> {
    if !robustifier_lab::privileged::check_tools(tag, &["slapd", "ldapadd"]) {
        return None;
    }
    Some(Lab::up(&robustifier_lab::unique_prefix(tag), Plan::new(1, backends)).expect("lab up"))
}

/// The `[[directory]]` tables in `toml`, validated as the front-end's configuration does.
fn parse(toml_text: &str, base: &Path) -> Vec<Directory> {
    let table: toml::Table = toml::from_str(toml_text).expect("TOML");
    let raw: Vec<RawDirectory> = table["directory"]
        .clone()
        .try_into()
        .expect("[[directory]] tables");
    directories(raw, base).unwrap_or_else(|(k, why)| panic!("{k}: {why}\n{toml_text}"))
}

/// Looks each key up through a freshly opened source, inside `ns`.
fn lookups(ns: &Netns, directory: &Directory, keys: &[Key]) -> Vec<Result<Found, SourceError>> {
    let directory = directory.clone();
    let keys = keys.to_vec();
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let source = robustifier::directory::open(&directory).expect("open");
            assert_eq!(source.kind(), "ldap");
            let mut out = Vec::new();
            for k in &keys {
                // A safety net against a hung test, not a measurement: the source's own
                // server timeout is what the test relies on.
                let r = tokio::time::timeout(Duration::from_secs(60), source.lookup(k))
                    .await
                    .expect("the lookup ended");
                out.push(r);
            }
            out
        })
    })
    .expect("in the front-end's namespace")
}

fn one(ns: &Netns, directory: &Directory, key: &str) -> Result<Found, SourceError> {
    lookups(ns, directory, &[Key::recipient(key)]).remove(0)
}

fn values(v: &[&str]) -> Found {
    Found::Values(v.iter().map(|s| s.to_string()).collect())
}

fn addr(lab: &Lab, i: usize) -> IpAddr {
    IpAddr::V4(lab.backends[i].v4)
}

#[test]
fn hostile_keys_find_only_their_literal_entry() {
    let Some(lab) = lab("ldaphostile", 1) else {
        return;
    };
    let mut slapd =
        Slapd::start(&lab.log_dir, &lab.backends[0].ns, "ldap1", addr(&lab, 0)).expect("slapd");
    slapd.add(&lab_mailboxes()).expect("mailboxes");
    let local64 = "l".repeat(64);
    let long = format!("{local64}@example.test");
    let literals = [
        "*@example.test",
        "alice)(robustifierAddress=*",
        "quote\"@example.test",
        "o'brien@example.test",
        "ab@example.test",
        long.as_str(),
        "Ünïcødé@example.test",
    ];
    let entries: Vec<Entry> = literals
        .iter()
        .enumerate()
        .map(|(i, a)| Entry::new(a, &format!("literal{i}"), "", ""))
        .collect();
    slapd.add(&entries).expect("literal entries");
    // Two entries for one address: a filter that names more than one is no answer.
    slapd
        .add(&[
            Entry::new("twin@example.test", "be1", "", ""),
            Entry::new("twin@example.test", "be2", "", ""),
        ])
        .expect("twins");
    let toml = slapd.directory_toml("people", "robustifierSmtpPool", &[], "");
    let dir = &parse(&toml, &lab.log_dir)[0];
    let ns = &lab.frontend(0).ns;

    let cases: Vec<(String, Found)> = vec![
        ("alice@example.test".into(), values(&["be1"])),
        ("ERIN@example.org".into(), values(&["be3"])),
        // Wildcards, unescaped, would match every entry (or every example.test one).
        ("*".into(), Found::NotFound),
        ("*@example.test".into(), values(&["literal0"])),
        // Unescaped, this closes the assertion and adds one that matches everything.
        ("alice)(robustifierAddress=*".into(), values(&["literal1"])),
        ("alice)(mail=*".into(), Found::NotFound),
        // NUL: unescaped it would cut the value (or break the filter).
        ("a\0b@example.test".into(), Found::NotFound),
        ("a\\00b@example.test".into(), Found::NotFound),
        ("\"".into(), Found::NotFound),
        ("'".into(), Found::NotFound),
        ("quote\"@example.test".into(), values(&["literal2"])),
        ("o'brien@example.test".into(), values(&["literal3"])),
        (long.clone(), values(&["literal5"])),
        (format!("{}@example.test", &local64[1..]), Found::NotFound),
        ("Ünïcødé@example.test".into(), values(&["literal6"])),
        ("Unicode@example.test".into(), Found::NotFound),
        ("nobody@example.test".into(), Found::NotFound),
    ];
    let keys: Vec<Key> = cases
        .iter()
        .map(|(k, _)| Key::recipient(k.clone()))
        .collect();
    let got = lookups(ns, dir, &keys);
    for ((key, want), got) in cases.iter().zip(got) {
        assert_eq!(got.as_ref(), Ok(want), "key {key:?}");
    }
    match one(ns, dir, "twin@example.test") {
        Err(SourceError::Invalid(why)) => assert!(why.contains("more than one"), "{why}"),
        other => panic!("two entries answered {other:?}"),
    }
    // Anonymous clients read nothing: the answers above came through the bind.
    let anonymous: String = toml
        .lines()
        .filter(|l| !l.starts_with("bind_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let anon = &parse(&anonymous, &lab.log_dir)[0];
    // slapd hides the whole tree from them: the base itself is not there.
    match one(ns, anon, "alice@example.test") {
        Err(SourceError::Unavailable(why)) => assert!(why.contains("does not exist"), "{why}"),
        other => panic!("anonymous read {other:?}"),
    }
    drop(slapd);
}

#[test]
fn ldaps_and_starttls_verify_the_server() {
    let Some(lab) = lab("ldaptls", 1) else {
        return;
    };
    let mut slapd =
        Slapd::start(&lab.log_dir, &lab.backends[0].ns, "ldap1", addr(&lab, 0)).expect("slapd");
    slapd.add(&lab_mailboxes()).expect("mailboxes");
    let ns = &lab.frontend(0).ns;
    let ldaps = slapd.directory_toml("pop", "robustifierPopPool", &[], "");
    let starttls = ldaps.replace(&slapd.ldaps_url(), &slapd.ldap_url());
    assert_ne!(ldaps, starttls);
    for toml in [&ldaps, &starttls] {
        let dir = &parse(toml, &lab.log_dir)[0];
        let got = lookups(
            ns,
            dir,
            &[
                Key::user("carol@example.net"),
                Key::user("dave@example.org"),
            ],
        );
        assert_eq!(
            got,
            [Ok(values(&["pop-be2"])), Ok(Found::NotFound)],
            "{toml}"
        );
    }
    // slapd saw both: a TLS connection on 636 and an upgrade on 389.
    let log = slapd.daemon().expect("running").log_text();
    assert!(
        log.contains("EXT oid=1.3.6.1.4.1.1466.20037"),
        "no StartTLS in\n{log}"
    );

    // A CA the server's certificate does not chain to: no answer, on either way in.
    let other = lab.log_dir.join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    let wrong = tls::host_cert(&other, "unused", "unused.test", &[]).expect("other CA");
    let ca = slapd.ca.display().to_string();
    for toml in [&ldaps, &starttls] {
        let toml = toml.replace(&ca, &wrong.ca.display().to_string());
        let dir = &parse(&toml, &lab.log_dir)[0];
        match one(ns, dir, "carol@example.net") {
            Err(SourceError::Unavailable(why)) => {
                assert!(why.to_lowercase().contains("certificate"), "{why}")
            }
            other => panic!("a wrong CA answered {other:?}\n{toml}"),
        }
    }
    // Plain LDAP without StartTLS (the password in clear, as the configuration allows it
    // here): the server answers without TLS, so the refusals above were the certificate's.
    let plain = starttls.replace(
        "[directory.ldap]\n",
        "[directory.ldap]\nstarttls = false\nplaintext_bind = true\n",
    );
    assert_ne!(plain, starttls);
    let dir = &parse(&plain, &lab.log_dir)[0];
    assert_eq!(one(ns, dir, "carol@example.net"), Ok(values(&["pop-be2"])));
}

#[test]
fn servers_are_tried_in_order() {
    let Some(lab) = lab("ldapfailover", 2) else {
        return;
    };
    let mut first =
        Slapd::start(&lab.log_dir, &lab.backends[0].ns, "ldap1", addr(&lab, 0)).expect("slapd 1");
    let mut second =
        Slapd::start(&lab.log_dir, &lab.backends[1].ns, "ldap2", addr(&lab, 1)).expect("slapd 2");
    first
        .add(&[Entry::new("alice@example.test", "from-first", "", "")])
        .expect("entry 1");
    second
        .add(&[Entry::new("alice@example.test", "from-second", "", "")])
        .expect("entry 2");
    let ns = &lab.frontend(0).ns;
    let toml = first.directory_toml(
        "people",
        "robustifierSmtpPool",
        &[second.ldaps_url()],
        "timeout_ms = 5000",
    );
    let dir = &parse(&toml, &lab.log_dir)[0];
    let alice = || one(ns, dir, "alice@example.test");
    assert_eq!(alice(), Ok(values(&["from-first"])));
    first.stop().expect("stop 1");
    assert_eq!(alice(), Ok(values(&["from-second"])), "failover when down");
    first.restart().expect("restart 1");
    assert_eq!(alice(), Ok(values(&["from-first"])), "the first again");
    // A server that accepts and then never answers gives way after server_timeout_ms.
    first.pause().expect("pause 1");
    assert_eq!(alice(), Ok(values(&["from-second"])), "failover when hung");
    first.resume().expect("resume 1");
    second.stop().expect("stop 2");
    first.stop().expect("stop 1");
    match alice() {
        Err(SourceError::Unavailable(why)) => {
            assert!(
                why.contains(&first.ldaps_url()) && why.contains(&second.ldaps_url()),
                "{why}"
            )
        }
        other => panic!("no server, yet {other:?}"),
    }
}

/// The lab cluster with every service routed by slapd: SMTP recipients by
/// `robustifierSmtpPool`, submission users by `robustifierSubmissionPool`, POP3 users by
/// `robustifierPopPool`. Cached answers outlive the directory (stale), unknown keys get a
/// temporary reply while it is down or hangs, and a restarted directory answers again.
#[test]
fn the_cluster_routes_by_ldap_and_rides_out_its_failures() {
    use robustifier_lab::{
        cluster::Cluster,
        mail::clients::{self, delivered, text},
        topology::{VIP_POP, VIP_SMTP},
    };
    use std::net::SocketAddr;

    let tag = "ldape2e";
    if !robustifier_lab::privileged::check_tools(tag, &["slapd", "ldapadd", "swaks"]) {
        return;
    }
    let mut c = Cluster::up(&robustifier_lab::unique_prefix(tag), 1).expect("cluster up");
    let be1 = &c.lab.backends[0];
    let mut slapd =
        Slapd::start(&c.lab.log_dir, &be1.ns, "ldap", IpAddr::V4(be1.v4)).expect("slapd");
    slapd.add(&lab_mailboxes()).expect("mailboxes");
    // Short cache lifetimes, so that answers are stale by the time slapd is stopped; a
    // short lookup timeout, so that a hung slapd costs a session one second.
    let common =
        "timeout_ms = 1000\ncache_ttl_secs = 1\nnegative_ttl_secs = 1\nnot_found = \"reject\"";
    c.use_directories(slapd.lab_directories(common));
    c.start_frontend(0).expect("front-end");
    c.add_vips(0).expect("virtual addresses");
    let ca = c.ca();
    let smtp = SocketAddr::new(VIP_SMTP.into(), 25);
    let pop3s = SocketAddr::new(VIP_POP.into(), 995);
    let deliver = |to: &str, tag: &str| {
        let (ns, dir) = (&c.lab.client.ns, &c.lab.log_dir);
        clients::swaks_deliver(ns, "client.robustifier.test", dir, smtp, to, tag, &[])
    };
    let rcpt = |to: &str| {
        let out = clients::swaks(
            &c.lab.client.ns,
            "client.robustifier.test",
            &["--server", &smtp.to_string(), "--to", to],
        );
        text(&out)
    };
    let pop = |user: &str| {
        clients::poplib(
            &c.lab.client.ns,
            pop3s,
            "pop3s",
            user,
            &c.password(user),
            &ca,
        )
    };
    let has_message = |got: &serde_json::Value, tag: &str| {
        got["messages"].as_array().is_some_and(|m| {
            m.iter().any(|b| {
                String::from_utf8_lossy(&clients::b64decode(b.as_str().unwrap_or(""))).contains(tag)
            })
        })
    };

    // Each recipient lands on the back-end its entry names; POP3 logins reach them there.
    for (to, tag) in [
        ("alice@example.test", "ldap-alice"),
        ("carol@example.net", "ldap-carol"),
        ("erin@example.org", "ldap-erin"),
    ] {
        deliver(to, tag);
        delivered(c.host_of(to), to, tag);
        let got = pop(to);
        assert!(got.get("error").is_none(), "{to}: {got}");
        assert!(has_message(&got, tag), "{to}'s mailbox over POP3: {got}");
    }
    // Not in the directory, and the directory says unknown keys are refused.
    assert!(rcpt("nobody@example.org").contains("<** 550 5.1.1"));

    // slapd gone: cached keys flow on stale answers; a key never asked is a temporary
    // failure, not a refusal.
    slapd.stop().expect("stop slapd");
    std::thread::sleep(Duration::from_millis(1500));
    deliver("alice@example.test", "ldap-stale");
    delivered(
        c.host_of("alice@example.test"),
        "alice@example.test",
        "ldap-stale",
    );
    assert!(
        pop("carol@example.net").get("error").is_none(),
        "stale POP3 login"
    );
    let t = rcpt("bob@example.test");
    assert!(t.contains("<** 451 4.3.0"), "{t}");
    let got = pop("dave@example.net");
    let err = got["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("-ERR [SYS/TEMP]"), "{got}");

    // slapd back: fresh answers.
    slapd.restart().expect("restart slapd");
    deliver("bob@example.test", "ldap-fresh");
    delivered(
        c.host_of("bob@example.test"),
        "bob@example.test",
        "ldap-fresh",
    );
    let got = pop("dave@example.net");
    assert!(got.get("error").is_none(), "{got}");

    // slapd hung: the lookup timeout holds, the session gets its temporary reply while
    // sessions of cached users go through meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    slapd.pause().expect("pause slapd");
    std::thread::scope(|s| {
        // Never asked before, so nothing cached to fall back on.
        let hung = s.spawn(|| rcpt("frank@example.test"));
        deliver("carol@example.net", "ldap-hung");
        delivered(
            c.host_of("carol@example.net"),
            "carol@example.net",
            "ldap-hung",
        );
        let t = hung.join().expect("session of frank");
        assert!(t.contains("<** 451 4.3.0"), "{t}");
    });
    slapd.resume().expect("resume slapd");
    // The directory answers in time again: its next answer (frank has no entry) is cached,
    // and stands in once slapd is gone.
    let t = rcpt("frank@example.test");
    assert!(t.contains("<** 550 5.1.1"), "{t}");
    slapd.stop().expect("stop slapd");
    let t = rcpt("frank@example.test");
    assert!(t.contains("<** 550 5.1.1"), "a cached answer: {t}");
    drop(slapd);
}
