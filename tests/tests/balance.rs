//! Load-aware routing in the lab, with smtp-sink back-ends as fault injectors: a slow
//! back-end loses its share, a dead one gets nothing and comes back, an agent's mail queue
//! over the threshold takes its back-end out, a burst keeps premium mail flowing while
//! regular mail is deflected with 451 and no back-end exceeds its session limit, premium
//! sessions with a `wait_ms` wait for a slot instead and are all delivered, a service with
//! no back-end left is shed by the kernel with 421, and a reload drains removed back-ends
//! and puts added ones to work. Privileged.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use robustifier::datapath::{Snapshot, Tables};
use robustifier_lab::{
    Lab, Plan, cli,
    client::{self, accepted as delivered},
    frontend_config::{Backend, FrontendConfig, Pool, Service},
    maps,
    sink::Sink,
    topology::{VIP_SMTP, internal_v4},
};

fn lab(tag: &str, backends: usize) -> Option<Lab> {
    robustifier_lab::privileged_lab(tag, Plan::new(1, backends))
}

/// Back-end `j` (be1, be2, ...) with its agent.
fn backend(j: usize) -> Backend {
    let at = internal_v4(11 + j as u8);
    Backend::new(&format!("be{}", j + 1), format!("{at}:25")).agent(format!("{at}:7025"))
}

/// A front-end routing everything to pool "mx" over back-ends be1..=n, with `groups`.
fn config(lab: &Lab, n: usize, pool_extra: &str, groups: &str) -> String {
    let key = robustifier_lab::agent_key_file(&lab.log_dir);
    FrontendConfig::new("fea", &lab.pin_dir(0))
        .service(
            Service::new("smtp", "smtp", 25)
                .vips(&[VIP_SMTP.into()])
                .line("pool = \"mx\""),
        )
        .pool(
            Pool::new("mx", "none")
                .line(&format!("agent_key_file = \"{}\"", key.display()))
                .backends((0..n).map(backend))
                .table(pool_extra)
                .health("interval_ms = 200\ntimeout_ms = 3000\nrise = 2\nfall = 2\nagent_interval_ms = 200"),
        )
        .toml(groups)
        .build()
}

fn start(lab: &mut Lab, n: usize, pool_extra: &str, groups: &str) {
    let cfg = config(lab, n, pool_extra, groups);
    lab.start_frontend(0, &cfg).unwrap();
    lab.frontend(0)
        .ns
        .add_address("pub0", VIP_SMTP.into())
        .unwrap();
}

fn snapshot(lab: &Lab) -> Snapshot {
    Snapshot::read(&Tables::from_pins(&lab.pin_dir(0)).unwrap()).unwrap()
}

/// Polls `f` on the maps until it holds (60 s at most: a generous bound, not a timing claim).
fn eventually(lab: &Lab, what: &str, f: impl Fn(&Snapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = snapshot(lab);
        if f(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "never: {what}\n{}", s.render());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send(lab: &Lab, rcpt: &str) -> Vec<String> {
    client::send_mail_in(
        &lab.client.ns,
        SocketAddr::new(VIP_SMTP.into(), 25),
        "sender@client.example",
        &[rcpt],
        "Subject: t\n\nhello\n",
    )
}

/// The pid of the front-end's `robustifier run`, for SIGHUP.
fn frontend_pid(lab: &mut Lab) -> nix::unistd::Pid {
    lab.frontend_daemon(0).expect("the front-end runs").pid()
}

#[test]
fn slow_backend_loses_its_share_dead_one_gets_none_and_comes_back() {
    let Some(mut lab) = lab("sl", 3) else { return };
    let fast1 = Sink::start(&mut lab, 0, &[]).unwrap();
    let fast2 = Sink::start(&mut lab, 1, &[]).unwrap();
    let slow = Sink::start(&mut lab, 2, &["-W", "CONNECT:1"]).unwrap();
    start(&mut lab, 3, "", "");
    // Probes measure the slow greeting.
    eventually(&lab, "the slow back-end's response time is known", |s| {
        s.backends[2].response_us >= 500_000
    });
    for _ in 0..20 {
        assert!(delivered(&send(&lab, "u@example.org")));
    }
    assert_eq!(
        slow.count(),
        0,
        "power of two choices never prefers the slowest of three"
    );
    assert_eq!(fast1.count() + fast2.count(), 20);

    // be2 dies: probes take it down; no session fails for it.
    fast2.stop(&mut lab);
    eventually(&lab, "be2 down", |s| s.backends[1].state == "down");
    let before = fast2.count();
    for _ in 0..10 {
        assert!(delivered(&send(&lab, "u@example.org")));
    }
    assert_eq!(fast2.count(), before);

    // It comes back and is readmitted.
    let back = Sink::start(&mut lab, 1, &[]).unwrap();
    eventually(&lab, "be2 up again", |s| s.backends[1].state == "up");
    for _ in 0..20 {
        assert!(delivered(&send(&lab, "u@example.org")));
    }
    assert!(
        back.count() > before,
        "the recovered back-end takes sessions again"
    );
}

#[test]
fn agent_mail_queue_over_threshold_takes_the_backend_out_of_routing() {
    let Some(mut lab) = lab("ag", 2) else { return };
    let s1 = Sink::start(&mut lab, 0, &[]).unwrap();
    let s2 = Sink::start(&mut lab, 1, &[]).unwrap();
    // Agents count files in a spool directory standing in for the MTA's queue. The
    // directories live on the shared-memory file system: the agents also report their
    // spool's disk use, and the build machine's disk (however full) must not keep be1 out
    // once its queue is back under the threshold.
    let shm = ShmDirs::new("balance-ag", 2);
    let spools = shm.0.clone();
    for (i, spool) in spools.iter().enumerate() {
        let args = ["--mta", "spool", "--spool", spool.to_str().unwrap()];
        cli::start_agent(&mut lab, i, &format!("agent{i}"), &args).unwrap();
    }
    start(&mut lab, 2, "[pool.thresholds]\nmail_queue = 5", "");
    eventually(&lab, "agents report", |s| {
        s.backends.iter().all(|b| b.updated_ns > 0)
    });
    for n in 0..8 {
        std::fs::write(spools[0].join(format!("q{n}")), "queued").unwrap();
    }
    eventually(&lab, "be1 over its mail queue threshold", |s| {
        s.backends[0].mail_queue >= 8 && s.backends[0].weight == 0
    });
    let before = s1.count();
    for _ in 0..10 {
        assert!(delivered(&send(&lab, "u@example.org")));
    }
    assert_eq!(
        s1.count(),
        before,
        "no new session for the back-end over its threshold"
    );
    assert!(s2.count() >= 10);
    // Back under 90 % of the threshold: readmitted.
    for n in 0..8 {
        std::fs::remove_file(spools[0].join(format!("q{n}"))).unwrap();
    }
    eventually(&lab, "be1 readmitted", |s| s.backends[0].weight > 0);
}

/// Directories under `/dev/shm`, unique to this run, removed when dropped.
struct ShmDirs(Vec<std::path::PathBuf>);

impl ShmDirs {
    fn new(tag: &str, n: usize) -> Self {
        let dirs: Vec<_> = (0..n)
            .map(|i| {
                let d = std::path::PathBuf::from(format!(
                    "/dev/shm/robustifier-{tag}-{}-{i}",
                    std::process::id()
                ));
                std::fs::create_dir_all(&d).unwrap();
                d
            })
            .collect();
        ShmDirs(dirs)
    }
}

impl Drop for ShmDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// 24 sessions at once from the client, every other one to a premium domain
/// (`vip.example`, else `regular.example`): (premium?, the client's transcript) each.
fn burst(lab: &Lab) -> Vec<(bool, Vec<String>)> {
    lab.client
        .ns
        .enter(|| {
            let handles: Vec<_> = (0..24)
                .map(|i| {
                    let premium = i % 2 == 0;
                    std::thread::spawn(move || {
                        let domain = if premium { "vip" } else { "regular" };
                        let rcpt = format!("u{i}@{domain}.example");
                        let to = SocketAddr::new(IpAddr::V4(VIP_SMTP), 25);
                        let r = client::send_mail(
                            to,
                            None,
                            "s@client.example",
                            &[&rcpt],
                            "Subject: burst\n\nx\n",
                        )
                        .unwrap_or_else(|e| vec![format!("error {e}")]);
                        (premium, r)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
        .unwrap()
}

#[test]
fn burst_keeps_premium_flowing_deflects_regular_and_respects_limits() {
    let Some(mut lab) = lab("bu", 2) else { return };
    // Each message takes a second at the back-end, so sessions pile up.
    let sinks = [
        Sink::start(&mut lab, 0, &["-w", "1"]).unwrap(),
        Sink::start(&mut lab, 1, &["-w", "1"]).unwrap(),
    ];
    let groups = "[[group]]\nname = \"premium\"\nshare = 1.0\ndomains = [\"vip.example\"]\n\n[[group]]\nname = \"regular\"\nshare = 0.5\n";
    start(&mut lab, 2, "[pool.thresholds]\nsessions = 4", groups);

    // Watch the back-ends' established sessions while the burst runs.
    let peak = Arc::new(Mutex::new(0usize));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        let nss: Vec<_> = lab.backends.iter().map(|b| b.ns.clone()).collect();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for ns in &nss {
                    let out = ns
                        .sh("ss", &["-Htn", "state", "established", "( sport = :25 )"])
                        .unwrap_or_default();
                    let n = out.lines().count();
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(n);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let results = burst(&lab);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();

    let accepted = |p: bool| {
        results
            .iter()
            .filter(|(q, r)| *q == p && delivered(r))
            .count()
    };
    let deflected = |p: bool| {
        results
            .iter()
            .filter(|(q, r)| *q == p && r.iter().any(|l| l.starts_with("451 4.3.2")))
            .count()
    };
    eprintln!(
        "burst: premium {} accepted / {} deflected, regular {} accepted / {} deflected, peak back-end sessions {}",
        accepted(true),
        deflected(true),
        accepted(false),
        deflected(false),
        peak.lock().unwrap()
    );
    let other: Vec<_> = results
        .iter()
        .filter(|(_, r)| !delivered(r) && !r.iter().any(|l| l.starts_with("451 4.3.2")))
        .collect();
    assert!(
        other.is_empty(),
        "every session is either delivered or deflected with 451 4.3.2: {other:?}"
    );
    // Regular sessions may hold at most half of each back-end's 4 sessions (2 + 2); premium
    // ones take every slot left, so at least as many of them get through.
    assert!(
        accepted(false) <= 4 && accepted(true) >= 4 && accepted(true) >= accepted(false),
        "premium {} vs regular {}",
        accepted(true),
        accepted(false)
    );
    assert!(
        deflected(false) > 0,
        "regular mail is deflected under the burst"
    );
    assert!(
        *peak.lock().unwrap() <= 4 + 1,
        "a back-end never holds more than its 4 sessions (+1 probe): {}",
        peak.lock().unwrap()
    );
    let total: usize = sinks.iter().map(Sink::count).sum();
    assert_eq!(
        total,
        accepted(true) + accepted(false),
        "every accepted message reached a back-end"
    );
}

#[test]
fn burst_premium_waits_for_a_slot_instead_of_being_deflected() {
    let Some(mut lab) = lab("bw", 2) else { return };
    let sinks = [
        Sink::start(&mut lab, 0, &["-w", "1"]).unwrap(),
        Sink::start(&mut lab, 1, &["-w", "1"]).unwrap(),
    ];
    // The same burst as above, but premium sessions may wait for a slot (generously: the
    // outcome is asserted, not how long it took); regular ones are still deflected at once.
    let groups = "[[group]]\nname = \"premium\"\nshare = 1.0\ndomains = [\"vip.example\"]\nwait_ms = 20000\n\n[[group]]\nname = \"regular\"\nshare = 0.5\n";
    start(&mut lab, 2, "[pool.thresholds]\nsessions = 4", groups);
    let results = burst(&lab);
    let count = |p: bool, f: &dyn Fn(&[String]) -> bool| {
        results.iter().filter(|(q, r)| *q == p && f(r)).count()
    };
    let deflected = |r: &[String]| r.iter().any(|l| l.starts_with("451 4.3.2"));
    eprintln!(
        "burst with a premium wait: premium {} accepted / {} deflected, regular {} accepted / {} deflected",
        count(true, &|r| delivered(r)),
        count(true, &deflected),
        count(false, &|r| delivered(r)),
        count(false, &deflected),
    );
    let premium: Vec<_> = results
        .iter()
        .filter(|(p, r)| *p && !delivered(r))
        .collect();
    assert!(
        premium.is_empty(),
        "every premium session waits for a slot and is delivered: {premium:?}"
    );
    assert!(
        count(false, &deflected) > 0,
        "regular mail is still deflected under the burst"
    );
    let total: usize = sinks.iter().map(Sink::count).sum();
    assert_eq!(
        total,
        count(true, &|r| delivered(r)) + count(false, &|r| delivered(r)),
        "every accepted message reached a back-end"
    );
}

#[test]
fn service_without_any_backend_is_shed_by_the_kernel() {
    let Some(mut lab) = lab("sh", 1) else { return };
    let sink = Sink::start(&mut lab, 0, &[]).unwrap();
    start(&mut lab, 1, "", "");
    assert!(delivered(&send(&lab, "u@example.org")));
    sink.stop(&mut lab);
    eventually(&lab, "service exhausted", |s| {
        s.services[0].capacity == "exhausted"
    });
    let shed_before = snapshot(&lab).services[0].steered_shed;
    let r = send(&lab, "u@example.org");
    assert!(r[0].starts_with("421 4.3.2 "), "{r:?}");
    assert_eq!(
        snapshot(&lab).services[0].steered_shed,
        shed_before + 1,
        "answered by the shed listener"
    );
}

/// The agent on a real Postfix host reports its queue (`postqueue -j`): a message that
/// cannot be delivered stays deferred, the agent counts it, and with a mail-queue threshold
/// of 1 the front-end takes the back-end out of routing.
#[test]
fn agent_measures_a_real_postfix_deferred_queue() {
    use robustifier_lab::mail::{MailHost, Make, Users, clients, postfix};
    let Some(mut lab) = lab("pq", 1) else { return };
    let users = Users::new().with("alice@example.test", "alice-pw");
    let host = MailHost::start(&mut lab, 0, Make::Postfix, &users).unwrap();
    let conf = postfix::config_dir(&host.layout);
    let args = [
        "--mta",
        "postfix",
        "--mta-config",
        conf.to_str().unwrap(),
        "--spool",
        host.layout.dir.to_str().unwrap(),
    ];
    cli::start_agent(&mut lab, 0, "agent-postfix", &args).unwrap();
    // The agent measures the disk of the back-end's directory, on the build machine's disk.
    start(
        &mut lab,
        1,
        "[pool.thresholds]\nmail_queue = 1\ndisk_percent = 100",
        "",
    );
    eventually(&lab, "agent reports an empty queue", |s| {
        s.backends[0].updated_ns > 0 && s.backends[0].mail_queue == 0 && s.backends[0].weight > 0
    });

    // Authenticated relay to a domain that cannot be reached from the lab: deferred.
    let server = host.submission_addr().unwrap().to_string();
    let out = clients::swaks(
        &lab.frontend(0).ns,
        "fea.robustifier.test",
        &[
            "--server",
            &server,
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-pw",
            "--from",
            "alice@example.test",
            "--to",
            "someone@nowhere.invalid",
        ],
    );
    assert!(out.status.success(), "{}", clients::text(&out));
    eventually(&lab, "the deferred message shows in the load record", |s| {
        s.backends[0].mail_queue >= 1
    });
    eventually(&lab, "be1 out of routing (weight 0)", |s| {
        s.backends[0].weight == 0
    });
    // The service's only back-end is over its threshold: the kernel sheds at connect.
    eventually(&lab, "service exhausted", |s| {
        s.services[0].capacity == "exhausted"
    });
    let r = send(&lab, "alice@example.test");
    assert!(
        r[0].starts_with("421 4.3.2"),
        "deflected while over the threshold: {r:?}"
    );
}

/// SIGHUP with a back-end removed from the configuration: it drains (no new sessions) and
/// comes back when the configuration has it again.
#[test]
fn backend_removed_from_the_config_drains_on_reload() {
    let Some(mut lab) = lab("rl", 2) else { return };
    let s1 = Sink::start(&mut lab, 0, &[]).unwrap();
    let s2 = Sink::start(&mut lab, 1, &[]).unwrap();
    start(&mut lab, 2, "", "");
    let full = config(&lab, 2, "", "");
    let path = lab.log_dir.join("fea.toml");
    // The same configuration without be2.
    let be2 = format!(", {}", backend(1).render());
    assert!(full.contains(&be2));
    std::fs::write(&path, full.replace(&be2, "")).unwrap();
    let pid = frontend_pid(&mut lab);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually(&lab, "be2 draining", |s| s.backends[1].state == "draining");
    let before = s2.count();
    for _ in 0..10 {
        assert!(delivered(&send(&lab, "u@example.org")));
    }
    assert_eq!(
        s2.count(),
        before,
        "a removed back-end takes no new session"
    );
    assert!(s1.count() >= 10);
    std::fs::write(&path, &full).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually(&lab, "be2 readmitted", |s| s.backends[1].state == "up");
}

/// Reads one SMTP reply and returns its last line.
fn reply(r: &mut impl std::io::BufRead) -> String {
    client::smtp_reply(r).unwrap()
}

/// SIGHUP with a back-end added to the configuration: it gets the next id in the load map
/// (`robustifier maps --json` shows its record) and takes new sessions at once, while a
/// session open across the reload finishes; the new back-end's probes run. No restart.
#[test]
fn backend_added_to_the_config_takes_sessions_on_reload() {
    use std::io::{BufReader, Write as _};
    let Some(mut lab) = lab("ad", 2) else { return };
    let _s1 = Sink::start(&mut lab, 0, &[]).unwrap();
    let s2 = Sink::start(&mut lab, 1, &[]).unwrap();
    start(&mut lab, 1, "", "");
    eventually(&lab, "be1 alone and up", |s| {
        s.backends.len() == 1 && s.backends[0].state == "up"
    });
    assert!(delivered(&send(&lab, "u@example.org")));

    // A session open across the reload, up to its recipient.
    let to = SocketAddr::new(VIP_SMTP.into(), 25);
    let stream = lab
        .client
        .ns
        .enter(move || client::connect(to, None, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let greeting = reply(&mut r);
    assert!(greeting.starts_with("220"), "{greeting}");
    let mut say = |line: &str| {
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        reply(&mut r)
    };
    assert!(say("EHLO open.example").starts_with("250"));
    assert!(say("MAIL FROM:<open@client.example>").starts_with("250"));
    assert!(say("RCPT TO:<open@example.org>").starts_with("250"));

    let path = lab.log_dir.join("fea.toml");
    std::fs::write(&path, config(&lab, 2, "", "")).unwrap();
    let pid = frontend_pid(&mut lab);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let be2 = format!("{}:25", internal_v4(12));
    eventually(&lab, "be2 up with the next id", |s| {
        s.backends
            .iter()
            .any(|b| b.id == 1 && b.address == be2 && b.state == "up")
    });
    let maps = maps::json(&lab.pin_dir(0));
    let rows = maps["backends"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|b| b["id"] == 1 && b["address"] == be2.as_str() && b["pool_id"] == 0),
        "robustifier maps --json: {maps:#}"
    );

    // The session opened before the reload finishes.
    assert!(say("DATA").starts_with("354"));
    assert!(say("Subject: open\r\n\r\nacross the reload\r\n.").starts_with("250"));
    let _ = say("QUIT");

    // New sessions reach be2: bounded, and each is delivered somewhere.
    let mut sent = 0;
    while s2.count() == 0 {
        assert!(sent < 100, "be2 never took a session in {sent} messages");
        assert!(delivered(&send(&lab, "u@example.org")));
        sent += 1;
    }
    // Its probes run: with its server gone (and no session sent there) it goes down.
    s2.stop(&mut lab);
    eventually(&lab, "be2 down by its probes", |s| {
        s.backends.iter().any(|b| b.id == 1 && b.state == "down")
    });
}
