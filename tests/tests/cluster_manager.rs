//! The cluster manager with the mail cluster: a manager on the back-end segment, a member
//! in each front-end's namespace, both front-ends started from the files their members
//! wrote, Postfix and OpenSMTPD back-ends behind them. One test in phases (one lab: it
//! takes long to build):
//!
//! a. a commit that moves a recipient from be1 to be2 reaches both front-ends live: its
//!    mail lands in be2's Maildir, and both members report the new version;
//! b. fe-b stopped (daemon and member killed, cables pulled) during three commits while
//!    mail flows through fe-a; back, its member applies the newest version and no older
//!    one; every acknowledged message is delivered once;
//! c. a commit that one member would refuse is refused for all, naming that member;
//! d. the manager killed with SIGKILL while commits are made in a loop and restarted on
//!    its state: the journal holds consecutive versions, each with its text, the audit
//!    trail verifies, and the mail sent meanwhile is delivered.
//!
//! Privileged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use robustifier_lab::{
    client::{self, accepted},
    cluster::Cluster,
    manager::{
        self, ClusterManager, Traffic, check_delivered, cluster_config, member_priorities,
        member_row, runs_head, shared_routers,
    },
    privileged,
    process::Signal,
    topology::VIP_SMTP,
    unique_prefix,
    vrrp::{eventually, owns},
};

const FEA: usize = 0;
const FEB: usize = 1;
/// A mailbox on be1 and on be2: the commits route it to one or the other.
const MOVED: &str = "frank@example.com";
/// The recipients of the traffic, and the back-end each lands on once MOVED is on be2.
const TRAFFIC: [(&str, usize); 4] = [
    ("alice@example.test", 0),
    ("dave@example.net", 1),
    ("erin@example.org", 2),
    (MOVED, 1),
];
/// A bound for a poll to come round, not a timing claim.
const GENEROUS: Duration = Duration::from_secs(60);

/// The cluster configuration: the lab's, with MOVED routed to pool `pool` and be3's pool
/// limited to `sessions` sessions (a change each commit can make), members' `own` lines
/// after their priorities.
fn text(c: &Cluster, pool: &str, own_b: &str) -> String {
    let own = [
        member_priorities(FEA),
        format!("{}\n{own_b}", member_priorities(FEB)),
    ];
    cluster_config(c, &own).replace("/smtp.map\"", &format!("/smtp-{pool}.map\""))
}

fn with_sessions(c: &mut Cluster, sessions: u32) {
    c.set_pool_extra(2, vec![], &format!("sessions = {sessions}"));
}

/// The versions the member's log says it applied or wrote.
fn versions_taken(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("version applied") || l.contains("version written"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("version="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

fn send_one(c: &Cluster, tag: &str, to: &str) {
    let r = client::send_mail_in(
        &c.lab.client.ns,
        std::net::SocketAddr::new(VIP_SMTP.into(), 25),
        "sender@client.example.org",
        &[to],
        &manager::message(tag, to),
    );
    assert!(accepted(&r), "{tag}: {r:?}");
}

fn set_cables(c: &Cluster, i: usize, state: &str) {
    let host = &c.lab.frontends[i].name;
    for link in [0, 1] {
        let port = c.lab.switch_port(host, link);
        c.lab
            .switch
            .ip(&["link", "set", &port, state])
            .expect("set the switch port");
    }
}

#[test]
fn the_manager_configures_the_mail_cluster_through_outages_and_a_crash() {
    if !privileged::check("cluster_manager") {
        return;
    }
    let mut c = Cluster::up_with_mailboxes(
        &unique_prefix("cmgr"),
        2,
        &[(0, MOVED, "frank-pw"), (1, MOVED, "frank-pw")],
    )
    .expect("cluster up");
    let dir = c.lab.log_dir.clone();
    let routes = std::fs::read_to_string(dir.join("smtp.map")).unwrap();
    for pool in ["be1", "be2"] {
        std::fs::write(
            dir.join(format!("smtp-{pool}.map")),
            format!("{routes}{MOVED} {pool}\n"),
        )
        .unwrap();
    }
    c.set_extra(0, &shared_routers(20));
    let names: Vec<String> = c.lab.frontends.iter().map(|f| f.name.clone()).collect();
    let (fea, feb) = (names[FEA].as_str(), names[FEB].as_str());

    // The manager, the members, the first version; the front-ends start from its files.
    let m = ClusterManager::up(&mut c.lab).expect("manager up");
    for i in [FEA, FEB] {
        m.start_member(&mut c.lab, i).expect("member");
    }
    let (v1, said) = m
        .commit_wait(&text(&c, "be1", ""), "first", 60)
        .expect("first commit");
    assert_eq!(v1, 1);
    assert!(said.starts_with("every member runs version 1"), "{said}");
    for i in [FEA, FEB] {
        m.start_frontend(&mut c.lab, i)
            .expect("front-end from the member's file");
    }
    let (a, b) = (
        c.lab.frontends[FEA].ns.clone(),
        c.lab.frontends[FEB].ns.clone(),
    );
    eventually("fea owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    eventually("feb owns the POP VIP", GENEROUS, || {
        owns(&b, "pub0", robustifier_lab::topology::VIP_POP.into())
    })
    .unwrap();
    send_one(&c, "cmgr-before", MOVED);
    check_delivered(&c, &[("cmgr-before".into(), 0, MOVED.into())], GENEROUS).unwrap();
    let before = m.status().unwrap();

    // a. MOVED routed to be2: applied live on both front-ends.
    let (v2, said) = m
        .commit_wait(&text(&c, "be2", ""), "frank to be2", 60)
        .expect("second commit");
    println!("a. {said}");
    let st = m.status().unwrap();
    for name in [fea, feb] {
        assert!(
            runs_head(&st, name),
            "{name} does not run version {v2}: {st:#}"
        );
        let row = member_row(&st, name).unwrap();
        assert!(row["last_error"].is_null(), "{row:#}");
        let old = &member_row(&before, name).unwrap()["frontend"]["version"];
        assert!(
            row["frontend"]["version"].is_string() && row["frontend"]["version"] != *old,
            "{name}'s front-end did not take the new configuration: {row:#}"
        );
    }
    for i in [FEA, FEB] {
        let log = m.member_log(&mut c.lab, i);
        assert_eq!(versions_taken(&log), [1, 2], "{log}");
        assert!(log.contains("version applied"), "{log}");
    }
    send_one(&c, "cmgr-after", MOVED);
    check_delivered(&c, &[("cmgr-after".into(), 1, MOVED.into())], GENEROUS).unwrap();

    // b. feb out during three commits, mail flowing through fea.
    let recipients: Vec<&str> = TRAFFIC.iter().map(|(r, _)| *r).collect();
    let traffic = Traffic::start(
        &c.lab,
        VIP_SMTP.into(),
        "cmgr-b",
        &recipients,
        Duration::from_millis(100),
        3000,
    )
    .unwrap();
    c.frontend_daemon(FEB)
        .expect("feb runs")
        .stop_with(Signal::SIGKILL, Duration::from_secs(15))
        .unwrap();
    m.stop_member(&mut c.lab, FEB, Signal::SIGKILL).unwrap();
    set_cables(&c, FEB, "down");
    let mut last = v2;
    for k in 0..3 {
        with_sessions(&mut c, 50 + k);
        last = m.commit(&text(&c, "be2", ""), "feb away").unwrap();
    }
    assert_eq!(last, v2 + 3);
    eventually("fea runs the newest version", GENEROUS, || {
        m.status().is_ok_and(|s| runs_head(&s, fea))
    })
    .unwrap();
    // Mail keeps flowing through fea while feb is away.
    let away = traffic.acknowledged();
    eventually(
        "ten messages through fea while feb is away",
        GENEROUS,
        || traffic.acknowledged() >= away + 10,
    )
    .unwrap();
    let st = m.status().unwrap();
    let row = member_row(&st, feb).unwrap();
    assert_eq!(row["connected"], false, "{row:#}");
    assert_eq!(row["applied"], v2, "{row:#}");

    // feb back: cables, then its daemon from the file it last ran, then its member.
    set_cables(&c, FEB, "up");
    m.start_frontend(&mut c.lab, FEB).expect("feb again");
    let restarted = Instant::now();
    m.start_member(&mut c.lab, FEB).unwrap();
    eventually("feb runs the newest version", GENEROUS, || {
        m.status().is_ok_and(|s| runs_head(&s, feb))
    })
    .unwrap();
    let caught_up = restarted.elapsed();
    println!("b. feb runs version {last} {caught_up:?} after its member's restart");
    let log = m.member_log(&mut c.lab, FEB);
    assert_eq!(
        versions_taken(&log),
        [last],
        "after the restart only the newest version is taken:\n{log}"
    );
    assert!(log.contains("version applied"), "{log}");
    let shown = m
        .cli_ok(&["show", &last.to_string(), "--member", feb])
        .unwrap();
    let file = std::fs::read_to_string(m.member_config(&c.lab, FEB)).unwrap();
    assert_eq!(
        shown.split_once('\n').map(|x| x.1),
        Some(file.as_str()),
        "feb's file is not its rendering of version {last}"
    );
    traffic
        .more(5, "five messages after feb's return", GENEROUS)
        .unwrap();
    let sent = traffic
        .finish_delivered(&c, &TRAFFIC, "b. through fea: ", GENEROUS)
        .unwrap();
    assert!(sent.accepted.len() >= 10, "too little traffic: {sent:?}");

    // c. A certificate file that does not exist for feb: refused for all, naming feb.
    let missing = format!(
        "tls = {{ certificate = \"{}/missing.pem\" }}",
        dir.display()
    );
    let out = m
        .commit_output(&text(&c, "be2", &missing), "refused", &[])
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("c. {}", said.trim());
    assert!(!out.status.success(), "{said}");
    assert!(said.contains(&format!("member {feb} refuses it")), "{said}");
    assert_eq!(m.head().unwrap(), last);

    // d. The manager killed while commits are made in a loop, and restarted.
    let traffic = Traffic::start(
        &c.lab,
        VIP_SMTP.into(),
        "cmgr-d",
        &recipients,
        Duration::from_millis(100),
        3000,
    )
    .unwrap();
    let texts: Vec<String> = (0..12)
        .map(|k| {
            with_sessions(&mut c, 100 + k);
            text(&c, "be2", "")
        })
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let committer = {
        let (m, done) = (m.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            // Each text until it is committed or 200 attempts fail (the manager is down).
            let mut committed = Vec::new();
            for (k, t) in texts.iter().enumerate() {
                for _ in 0..200 {
                    match m.commit(t, &format!("loop {k}")) {
                        Ok(v) => {
                            committed.push((v, t.clone()));
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            committed
        })
    };
    eventually("three loop commits", GENEROUS, || {
        done.load(Ordering::Relaxed) >= 3
    })
    .unwrap();
    m.stop(&mut c.lab, Signal::SIGKILL).unwrap();
    // Mail does not wait for the manager.
    traffic
        .more(5, "five messages while the manager is down", GENEROUS)
        .unwrap();
    m.start(&mut c.lab).expect("manager restarted");
    let committed = committer.join().unwrap();
    assert!(committed.len() >= 10, "{committed:?}");
    let head = m.head().unwrap();
    let log: Vec<serde_json::Value> =
        serde_json::from_str(&m.cli_ok(&["log", "--json", "--limit", "1000"]).unwrap()).unwrap();
    let mut numbers: Vec<u64> = log.iter().filter_map(|v| v["number"].as_u64()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=head).collect::<Vec<u64>>());
    println!(
        "d. {} commits reported, head {head}; versions 1..={head} in the journal",
        committed.len()
    );
    for v in 1..=head {
        let shown = m.cli_ok(&["show", &v.to_string()]).unwrap();
        assert!(
            shown.starts_with(&format!(
                "# robustifier cluster configuration, version {v}\n"
            )),
            "{shown}"
        );
        if let Some((_, t)) = committed.iter().find(|(n, _)| *n == v) {
            assert_eq!(shown.split_once('\n').map(|x| x.1), Some(t.as_str()), "{v}");
        }
    }
    let verified = m.cli(&["audit", "--verify"]);
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    eventually("both members run the head", GENEROUS, || {
        m.status()
            .is_ok_and(|s| runs_head(&s, fea) && runs_head(&s, feb))
    })
    .unwrap();
    let sent = traffic
        .finish_delivered(&c, &TRAFFIC, "d. ", GENEROUS)
        .unwrap();
    assert!(sent.accepted.len() >= 10, "too little traffic: {sent:?}");
    println!("{}", m.cli_ok(&["status"]).unwrap());
}
