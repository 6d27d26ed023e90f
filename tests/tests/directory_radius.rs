//! Routing maps kept in RADIUS: the source against the lab's FreeRADIUS and against fake
//! servers that answer like careless or hostile ones, and (end to end) the lab cluster
//! routing mail and POP3 users by FreeRADIUS. Privileged.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use robustifier::{
    config::directory::{RawDirectory, directories, radius::RawRadius},
    directory::{self, Found, Key, SourceError, radius::packet},
};
use robustifier_lab::{
    Lab, Plan,
    cluster::{Cluster, Directories},
    directory::radius::{FreeRadius, SECRET, directory_toml, lab_users},
    mail::clients::{self, delivered},
    privileged,
    topology::{VIP_POP, VIP_SMTP, internal_v4},
};

/// How a fake server answers each Access-Request.
#[derive(Clone, Copy)]
enum Fake {
    /// An Access-Accept whose Response Authenticator proves the secret, without a
    /// Message-Authenticator: what a pre-BlastRADIUS server sends, and what an attacker
    /// who can forge MD5 prefixes would send.
    NoMessageAuthenticator,
    /// An Access-Accept with a Message-Authenticator that does not verify (the rest
    /// signed with the secret).
    WrongMessageAuthenticator,
    /// A correct Access-Accept with Reply-Message "fake-be".
    Good,
}

/// A fake RADIUS server on a UDP socket made in a lab namespace; stops when dropped.
struct FakeServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl FakeServer {
    fn start(lab: &Lab, ns_host: usize, addr: SocketAddr, mode: Fake) -> FakeServer {
        let socket = lab.backends[ns_host]
            .ns
            .enter(|| UdpSocket::bind(addr))
            .unwrap()
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answered = 0;
            let mut buf = [0u8; 4096];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = packet::decode(&buf[..n]) else {
                    continue;
                };
                let secret = SECRET.as_bytes();
                let attrs: &[(u8, &[u8])] = match mode {
                    Fake::Good => &[(18, b"fake-be")],
                    _ => &[(18, b"be3")],
                };
                let mut reply = packet::signed_reply(
                    packet::ACCESS_ACCEPT,
                    req.identifier,
                    &req.authenticator,
                    secret,
                    attrs,
                    !matches!(mode, Fake::NoMessageAuthenticator),
                );
                if matches!(mode, Fake::WrongMessageAuthenticator) {
                    reply[packet::HEADER + 2] ^= 0x55;
                    packet::sign_response(&mut reply, &req.authenticator, secret);
                }
                socket.send_to(&reply, from).unwrap();
                answered += 1;
            }
            answered
        });
        FakeServer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server; how many requests it answered.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn radius_directory(
    servers: &[SocketAddr],
    secret_file: &Path,
    attribute: &str,
    timeout_ms: u64,
) -> robustifier::config::directory::Directory {
    let raw = RawDirectory {
        name: "radius".into(),
        timeout_ms: Some(timeout_ms),
        cache_ttl_secs: None,
        negative_ttl_secs: None,
        cache_size: None,
        stale: None,
        stale_max_secs: None,
        not_found: None,
        ldap: None,
        sql: None,
        radius: Some(RawRadius {
            servers: servers.iter().map(ToString::to_string).collect(),
            secret_file: secret_file.display().to_string(),
            user_name: None,
            attribute: Some(attribute.into()),
            nas_identifier: None,
            attempts: None,
            password_file: None,
        }),
    };
    directories(vec![raw], Path::new("/"))
        .unwrap()
        .pop()
        .unwrap()
}

/// Looks every key up, from front-end 0's namespace, each within the directory's timeout
/// as the resolver bounds it.
fn lookups(
    lab: &Lab,
    d: &robustifier::config::directory::Directory,
    keys: &[Key],
) -> Vec<Result<Found, SourceError>> {
    let source = directory::open(d).unwrap();
    let timeout = d.timeout;
    lab.frontends[0]
        .ns
        .enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut out = Vec::new();
                for k in keys {
                    out.push(
                        tokio::time::timeout(timeout, source.lookup(k))
                            .await
                            .unwrap_or(Err(SourceError::Timeout(timeout.as_millis() as u64))),
                    );
                }
                out
            })
        })
        .unwrap()
}

fn values(v: &[&str]) -> Result<Found, SourceError> {
    Ok(Found::Values(v.iter().map(|s| (*s).to_owned()).collect()))
}

#[test]
fn the_radius_source_trusts_only_signed_answers_of_freeradius() {
    if !privileged::check_tools("directory_radius_source", &["freeradius"]) {
        return;
    }
    let lab = Lab::up(&robustifier_lab::unique_prefix("rads"), Plan::new(1, 2)).unwrap();
    let fe = IpAddr::V4(internal_v4(1));
    let mut radius = FreeRadius::start(
        &lab,
        &lab.backends[0].ns,
        "freeradius",
        IpAddr::V4(internal_v4(11)),
        &[fe],
        &lab_users(),
    )
    .unwrap();
    let secret = radius.secret_file.clone();
    let d = radius_directory(&[radius.address], &secret, "Reply-Message", 2000);

    // Lab users are found with their attribute; unknown names are not.
    let got = lookups(
        &lab,
        &d,
        &[
            Key::recipient("alice@example.test"),
            Key::recipient("carol@example.net"),
            Key::recipient("erin@example.org"),
            Key::recipient("nobody@example.test"),
        ],
    );
    assert_eq!(
        got,
        [
            values(&["be1"]),
            values(&["be2"]),
            values(&["be3"]),
            Ok(Found::NotFound)
        ]
    );
    // Another attribute of the same entries.
    let pop = radius_directory(&[radius.address], &secret, "Framed-Pool", 2000);
    assert_eq!(
        lookups(&lab, &pop, &[Key::user("dave@example.net")]),
        [values(&["pop-be2"])]
    );

    // Hostile names match nothing but themselves, and no lab user is named so.
    let hostile = [
        "*",
        "alice*",
        "*@example.test",
        "alice@example.test\0",
        "alice@example.test\0x",
        "\0alice@example.test",
        &format!("alice@example.test{}", "a".repeat(300)),
        &"alice@example.test".repeat(14),
        "ålice@example.test",
        "alice@example.test ",
        "DEFAULT",
        "\"alice@example.test\"",
        "%{User-Name}",
        "alice@example.test\", Reply-Message := \"be2",
    ];
    let keys: Vec<Key> = hostile.iter().map(|h| Key::recipient(*h)).collect();
    for (h, got) in hostile.iter().zip(lookups(&lab, &d, &keys)) {
        assert_eq!(got, Ok(Found::NotFound), "{h:?}");
    }

    // A wrong secret: FreeRADIUS drops the request (its Message-Authenticator fails), so
    // the lookup fails; it never yields a route.
    let wrong = lab.log_dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-lab-secret\n").unwrap();
    let bad = radius_directory(&[radius.address], &wrong, "Reply-Message", 1000);
    let got = lookups(&lab, &bad, &[Key::recipient("alice@example.test")]);
    assert!(
        matches!(got[0], Err(SourceError::Unavailable(_))),
        "{got:?}"
    );

    // Fake servers on be2: replies without a Message-Authenticator, or with a wrong one,
    // are never trusted, though their Response Authenticator proves the secret.
    let be2 = |port: u16| SocketAddr::new(IpAddr::V4(internal_v4(12)), port);
    for (mode, port) in [
        (Fake::NoMessageAuthenticator, 1812),
        (Fake::WrongMessageAuthenticator, 1813),
    ] {
        let fake = FakeServer::start(&lab, 1, be2(port), mode);
        let d = radius_directory(&[be2(port)], &secret, "Reply-Message", 1000);
        let got = lookups(&lab, &d, &[Key::recipient("alice@example.test")]);
        assert!(matches!(got[0], Err(SourceError::Invalid(_))), "{got:?}");
        assert_eq!(fake.finish(), 2, "both attempts were answered and refused");
    }

    // Failover: the first server refuses (nothing listens there), the second answers.
    let d = radius_directory(&[be2(1815), radius.address], &secret, "Reply-Message", 2000);
    assert_eq!(
        lookups(&lab, &d, &[Key::recipient("bob@example.test")]),
        [values(&["be1"])]
    );
    // The first server hangs (FreeRADIUS frozen): its tries time out, the next answers.
    radius.pause();
    let fake = FakeServer::start(&lab, 1, be2(1814), Fake::Good);
    let d = radius_directory(&[radius.address, be2(1814)], &secret, "Reply-Message", 2000);
    assert_eq!(
        lookups(&lab, &d, &[Key::recipient("bob@example.test")]),
        [values(&["fake-be"])]
    );
    assert_eq!(fake.finish(), 1);
    radius.resume();
    // FreeRADIUS stopped: every server down is an error, not a route.
    radius.stop();
    let d = radius_directory(&[radius.address], &secret, "Reply-Message", 1000);
    let got = lookups(&lab, &d, &[Key::recipient("alice@example.test")]);
    assert!(
        matches!(got[0], Err(SourceError::Unavailable(_))),
        "{got:?}"
    );
    radius.restart().unwrap();
    let d = radius_directory(&[radius.address], &secret, "Reply-Message", 2000);
    assert_eq!(
        lookups(&lab, &d, &[Key::recipient("alice@example.test")]),
        [values(&["be1"])]
    );
}

/// The lab cluster routing every service by FreeRADIUS (on a second address of be3):
/// mail and POP3 users reach their back-ends; with FreeRADIUS stopped, users already
/// looked up still flow from the cache (stale), others get temporary replies.
#[test]
fn the_cluster_routes_mail_and_pop3_users_by_freeradius() {
    if !privileged::check_tools("directory_radius_cluster", &["freeradius"]) {
        return;
    }
    let mut c = Cluster::up(&robustifier_lab::unique_prefix("radc"), 1).unwrap();
    let ip = IpAddr::V4(internal_v4(20));
    c.lab.backends[2].ns.add_address("eth0", ip).unwrap();
    let mut radius = FreeRadius::start(
        &c.lab,
        &c.lab.backends[2].ns,
        "freeradius",
        ip,
        &[IpAddr::V4(internal_v4(1))],
        &lab_users(),
    )
    .unwrap();
    // Answers expire at once and are then served stale while FreeRADIUS is away.
    let common = "cache_ttl_secs = 1\nnegative_ttl_secs = 1\nnot_found = \"reject\"";
    let servers = [radius.address];
    let toml = [
        directory_toml(
            "rad-smtp",
            &servers,
            &radius.secret_file,
            "Reply-Message",
            common,
        ),
        directory_toml(
            "rad-sub",
            &servers,
            &radius.secret_file,
            "Filter-Id",
            common,
        ),
        directory_toml(
            "rad-pop",
            &servers,
            &radius.secret_file,
            "Framed-Pool",
            common,
        ),
    ]
    .join("\n");
    c.use_directories(Directories {
        toml,
        smtp: "rad-smtp".into(),
        submission: "rad-sub".into(),
        pop: "rad-pop".into(),
    });
    c.start_frontend(0).unwrap();
    c.add_vips(0).unwrap();
    let smtp = SocketAddr::new(VIP_SMTP.into(), 25);
    let pop = SocketAddr::new(VIP_POP.into(), 110);
    let (ns, dir) = (&c.lab.client.ns, &c.lab.log_dir);
    for (to, tag) in [
        ("alice@example.test", "r1"),
        ("carol@example.net", "r2"),
        ("erin@example.org", "r3"),
    ] {
        clients::swaks_deliver(ns, "client.robustifier.test", dir, smtp, to, tag, &[]);
        delivered(c.host_of(to), to, tag);
    }
    let ca = c.ca();
    for user in [
        "alice@example.test",
        "carol@example.net",
        "erin@example.org",
    ] {
        let got = clients::poplib(ns, pop, "stls", user, &c.password(user), &ca);
        assert!(got.get("error").is_none(), "{user}: {got}");
        assert_eq!(
            got["messages"].as_array().unwrap().len(),
            c.host_of(user).messages(user).len(),
            "{user} reads its own back-end's mailbox"
        );
    }
    // Unknown recipients are refused (not_found = "reject").
    let out = clients::swaks(
        ns,
        "client.robustifier.test",
        &[
            "--server",
            &smtp.to_string(),
            "--to",
            "nobody@example.test",
            "--quit-after",
            "RCPT",
        ],
    );
    assert!(
        clients::text(&out).contains("550 5.1.1"),
        "{}",
        clients::text(&out)
    );

    radius.stop();
    // Past the cache's TTL: alice and carol were looked up and are served stale.
    std::thread::sleep(Duration::from_millis(1500));
    clients::swaks_deliver(
        ns,
        "client.robustifier.test",
        dir,
        smtp,
        "alice@example.test",
        "r4",
        &[],
    );
    delivered(c.host_of("alice@example.test"), "alice@example.test", "r4");
    let got = clients::poplib(
        ns,
        pop,
        "stls",
        "carol@example.net",
        &c.password("carol@example.net"),
        &ca,
    );
    assert!(got.get("error").is_none(), "carol (stale): {got}");
    // bob and dave were never looked up: temporary replies.
    let out = clients::swaks(
        ns,
        "client.robustifier.test",
        &[
            "--server",
            &smtp.to_string(),
            "--to",
            "bob@example.test",
            "--quit-after",
            "RCPT",
        ],
    );
    assert!(
        clients::text(&out).contains("451 4.3.0"),
        "{}",
        clients::text(&out)
    );
    let got = clients::poplib(
        ns,
        pop,
        "stls",
        "dave@example.net",
        &c.password("dave@example.net"),
        &ca,
    );
    assert!(
        got["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("-ERR [SYS/TEMP]"),
        "{got}"
    );
}
