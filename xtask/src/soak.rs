//! `cargo xtask soak --minutes N`: the demo's cluster under steady mail and chaos, then a
//! count of every message.
//!
//! - Legitimate clients send mail through the SMTP VIP (IPv4 and IPv6), each message with a
//!   unique Message-ID and one or two recipients of one domain, so every back-end gets
//!   mail; a POP3 client fetches through the POP3 VIP. A message that gets a temporary
//!   failure (4xx, a refused or cut connection) stays with its client, which retries it
//!   later with a backoff, as an MTA would; a 5xx is final.
//! - A chaos loop, bounded in time, picks at random: SIGKILL of a back-end's MTA (whole
//!   process group) and its restart; SIGKILL of a front-end and its restart (VRRP moves the
//!   address away and back); a cable pulled for a few seconds (the switch's port of a
//!   back-end or of a front-end's back-end side); SIGHUP to a front-end; and attacks from an
//!   address of their own: a 300-octet EHLO name with several RCPTs, a storm of RCPTs to
//!   unknown users, AUTH password guessing, a client that stops reading.
//! - At the end the chaos stops, the clients retry what they still hold for a bounded time,
//!   the back-ends' queues are flushed and drained (bounded), and every message a client saw
//!   acknowledged with 250 must be in each of its recipients' Maildirs, found by Message-ID.
//!   Lost messages fail the run and are listed; duplicates and the clients' refusal and
//!   temporary-failure rates are reported. A summary is printed and a JSON report written
//!   to `target/soak/`.
//!
//! The lab is removed at the end, also on failure (its Drop).

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use robustifier_lab::{
    Netns, client,
    cluster::Cluster,
    mail::clients,
    process::Signal,
    topology::{self, VIP_POP, VIP_POP_V6, VIP_SMTP, VIP_SMTP_V6},
    vrrp::{eventually, owns},
};
use serde_json::json;

use crate::{
    demo, setup,
    util::{cargo, root},
};

/// Attacks come from this address of the client host, so that the limits they trigger
/// (failed logins, repeat offenders) fall on the attacker and not on the legitimate clients.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
const SENDER: &str = "soak@client.example.org";
/// Recipient sets of the legitimate mail: every mailbox, and two-recipient messages within
/// a domain (recipients of different routes would be split by the proxy's `452 4.5.3`).
const RCPT_SETS: &[&[&str]] = &[
    &["alice@example.test"],
    &["bob@example.test"],
    &["alice@example.test", "bob@example.test"],
    &["carol@example.net"],
    &["dave@example.net"],
    &["carol@example.net", "dave@example.net"],
    &["erin@example.org"],
];
/// Longest wait between two retries of a deferred message.
const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// After the send phase, how long clients keep retrying what they hold.
const RETRY_PHASE: Duration = Duration::from_secs(90);
/// How long the back-ends get to deliver what they acknowledged.
const DRAIN: Duration = Duration::from_secs(120);

pub struct Options {
    pub minutes: f64,
    pub clients: usize,
    pub seed: Option<u64>,
    /// Run setup and build the daemon first (`cargo xtask test` has done both already).
    pub prepare: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.minutes > 0.0 && opts.clients > 0,
        "--minutes and --clients must be positive"
    );
    if opts.prepare {
        setup::run()?;
        cargo(&["build", "-p", "robustifier"])?;
    }
    sweep_stale();
    let seed = opts.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let prefix = format!("rbsoak{}", std::process::id());
    println!(
        "soak: {:.1} min, {} clients, seed {seed} (--seed {seed} replays the chaos choices), lab {prefix}",
        opts.minutes, opts.clients
    );

    let setup_start = Instant::now();
    let mut c = Cluster::up(&prefix, 2)?;
    c.start_agents()?;
    // The lab's back-ends all report the host's disk use and load average, which other work
    // on the machine can drive past a group's share of the thresholds, and then sessions
    // are deflected before they reach a back-end. The lab's clients, the attacker included,
    // get the full share: sessions are deflected by the hard limits only (be2 takes four at
    // once), the soak measures the cluster, and the attacks meet the proxy's input limits.
    let group = "\n[[group]]\nname = \"soak-clients\"\nshare = 1.0\nclients = [\"198.18.0.0/24\", \"2001:db8:0:1::/64\"]\n";
    let (primary, backup) = (demo::vrrp(&c, 0, 150, 100), demo::vrrp(&c, 1, 100, 150));
    c.set_extra(0, &format!("{primary}{group}"));
    c.set_extra(1, &format!("{backup}{group}"));
    c.start_frontend(0)?;
    c.start_frontend(1)?;
    c.lab
        .client
        .ns
        .ip(&["addr", "add", &format!("{ATTACKER}/24"), "dev", "eth0"])?;
    for (i, vip) in [
        (0, IpAddr::V4(VIP_SMTP)),
        (0, IpAddr::V6(VIP_SMTP_V6)),
        (1, IpAddr::V4(VIP_POP)),
        (1, IpAddr::V6(VIP_POP_V6)),
    ] {
        let ns = c.lab.frontends[i].ns.clone();
        eventually(
            &format!("{} owns {vip}", c.lab.frontends[i].name),
            Duration::from_secs(30),
            || owns(&ns, "pub0", vip),
        )?;
    }
    let setup_time = setup_start.elapsed();
    println!("soak: lab up in {:.1}s", setup_time.as_secs_f64());

    let outcome = soak(&mut c, opts, seed);
    let log_dir = c.lab.log_dir.clone();
    let down = c.lab.down();
    let mut report = outcome?;
    down?;
    report.setup_s = setup_time.as_secs_f64();
    report.seed = seed;
    let path = report.write(opts.minutes)?;
    report.print();
    println!("soak: report {}", path.display());
    if report.ok() {
        // Thousands of Maildir files: kept only when they are evidence.
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        println!(
            "soak: the lab's logs and Maildirs are in {}",
            log_dir.display()
        );
    }
    anyhow::ensure!(
        report.lost.is_empty(),
        "{} acknowledged messages lost: {}",
        report.lost.len(),
        report.lost.join(" ")
    );
    anyhow::ensure!(
        report.chaos_errors.is_empty(),
        "the cluster did not recover from chaos: {}",
        report.chaos_errors.join("; ")
    );
    Ok(())
}

/// Removes what a killed earlier soak left: its namespaces and pin directories (only of
/// runs whose process is gone).
fn sweep_stale() {
    let removed = topology::sweep("rbsoak");
    if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf/robustifier") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("rbsoak") && robustifier_lab::orphaned(&name) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if !removed.is_empty() {
        println!(
            "soak: removed {} namespaces of an earlier run",
            removed.len()
        );
    }
}

fn soak(c: &mut Cluster, opts: &Options, seed: u64) -> anyhow::Result<Report> {
    let start = Instant::now();
    let run = Duration::from_secs_f64(opts.minutes * 60.0);
    let send_until = start + run;
    let retry_until = send_until + RETRY_PHASE;
    // Chaos leaves the last part of the send phase quiet, so that clients see the cluster
    // whole again before they stop taking new mail.
    let quiet = (run / 8).min(Duration::from_secs(20));
    let chaos_from = start + quiet;
    let chaos_until = send_until - quiet;
    let stop = Arc::new(AtomicBool::new(false));
    let run_id = format!("{:x}", seed & 0xffff_ffff);

    let mut senders = Vec::new();
    for k in 0..opts.clients {
        let ns = c.lab.client.ns.clone();
        // One client in four speaks IPv6.
        let vip = if k % 4 == 3 {
            SocketAddr::new(VIP_SMTP_V6.into(), 25)
        } else {
            SocketAddr::new(VIP_SMTP.into(), 25)
        };
        let stop = Arc::clone(&stop);
        let tag = format!("soak-{run_id}-c{k}");
        let rng_seed = seed.wrapping_add(k as u64 + 1);
        senders.push(std::thread::spawn(move || {
            ns.enter(move || {
                sender(
                    &tag,
                    vip,
                    fastrand::Rng::with_seed(rng_seed),
                    send_until,
                    retry_until,
                    &stop,
                )
            })
        }));
    }
    let fetcher = {
        let ns = c.lab.client.ns.clone();
        let ca = c.ca();
        let users: Vec<(String, String)> = c
            .hosts
            .iter()
            .flat_map(|h| h.users.iter())
            .map(|u| (u.address.clone(), u.password.clone()))
            .collect();
        let stop = Arc::clone(&stop);
        let rng = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9);
        std::thread::spawn(move || fetcher(&ns, &ca, &users, rng, send_until, &stop))
    };

    let mut chaos = Chaos {
        rng: fastrand::Rng::with_seed(seed),
        start,
        events: Vec::new(),
        background: Vec::new(),
    };
    let result = chaos.run(c, chaos_from, chaos_until);
    if result.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let mut msgs = Vec::new();
    let mut stats = SendStats::default();
    for h in senders {
        let (m, s) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        msgs.extend(m);
        stats.add(&s);
    }
    let pop = fetcher
        .join()
        .map_err(|_| anyhow::anyhow!("the POP3 client panicked"))?;
    for (_, h) in chaos.background.drain(..) {
        if let Ok(Some(ev)) = h.join() {
            chaos.events.push(ev);
        }
    }
    result?;
    println!(
        "soak: sending ended after {:.0}s; waiting for the back-ends to deliver",
        start.elapsed().as_secs_f64()
    );

    let drain_start = Instant::now();
    let (found, unacked_found) = drain(c, &msgs);
    let drain_s = drain_start.elapsed().as_secs_f64();
    let (lost, duplicates) = account(&msgs, &found);
    let mut events = chaos.events;
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let chaos_errors = events
        .iter()
        .filter_map(|e| {
            e.error
                .as_ref()
                .map(|x| format!("{} {}: {x}", e.kind, e.target))
        })
        .collect();
    Ok(Report {
        seed,
        minutes: opts.minutes,
        clients: opts.clients,
        setup_s: 0.0,
        total_s: start.elapsed().as_secs_f64(),
        drain_s,
        messages: msgs.len() as u64,
        acked: count(&msgs, |m| m.outcome == Outcome::Acked),
        acked_after_retry: count(&msgs, |m| m.outcome == Outcome::Acked && m.attempts > 1),
        deferred_once: count(&msgs, |m| m.deferrals > 0),
        still_deferred: count(&msgs, |m| m.outcome == Outcome::Held),
        refused: count(&msgs, |m| matches!(m.outcome, Outcome::Refused(_))),
        deliveries_expected: msgs
            .iter()
            .filter(|m| m.outcome == Outcome::Acked)
            .map(|m| m.rcpts.len() as u64)
            .sum(),
        deliveries_found: msgs
            .iter()
            .filter(|m| m.outcome == Outcome::Acked)
            .flat_map(|m| m.rcpts.iter().map(|r| (r.clone(), m.id.clone())))
            .filter(|k| found.contains_key(k))
            .count() as u64,
        unacked_found,
        lost,
        duplicates,
        stats,
        pop,
        events,
        chaos_errors,
    })
}

fn count(msgs: &[Msg], f: impl Fn(&Msg) -> bool) -> u64 {
    msgs.iter().filter(|m| f(m)).count() as u64
}

// ---------------------------------------------------------------- legitimate clients

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Acknowledged with 250 at the end of data.
    Acked,
    /// Refused with a 5xx: the client gives it back to its sender.
    Refused(String),
    /// Still held by the client when the run ended (only temporary failures so far).
    Held,
}

struct Msg {
    id: String,
    rcpts: Vec<String>,
    attempts: u32,
    deferrals: u32,
    next_try: Instant,
    outcome: Outcome,
}

#[derive(Default, Debug)]
struct SendStats {
    attempts: u64,
    acked: u64,
    /// Temporary failures by reply (`451 4.3.2`) or connection error.
    temporary: BTreeMap<String, u64>,
    /// Permanent refusals by reply.
    refused: BTreeMap<String, u64>,
}

impl SendStats {
    fn add(&mut self, o: &SendStats) {
        self.attempts += o.attempts;
        self.acked += o.acked;
        for (k, v) in &o.temporary {
            *self.temporary.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.refused {
            *self.refused.entry(k.clone()).or_default() += v;
        }
    }
    fn temporary_total(&self) -> u64 {
        self.temporary.values().sum()
    }
    fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

enum Attempt {
    Acked,
    Temporary(String),
    Permanent(String),
}

/// What one session's replies mean for the message (see [`client::send_mail`]: it stops at
/// the first reply that is not positive).
fn classify(lines: &[String]) -> Attempt {
    let verdict = |l: &String| {
        let key: Vec<&str> = l.split_whitespace().take(2).collect();
        let key = key.join(" ");
        if l.starts_with('4') {
            Attempt::Temporary(key)
        } else {
            Attempt::Permanent(key)
        }
    };
    if let Some(i) = lines.iter().position(|l| l.starts_with("354")) {
        return match lines.get(i + 1) {
            Some(l) if l.starts_with("250") => Attempt::Acked,
            Some(l) => verdict(l),
            None => Attempt::Temporary("no reply to the end of data".into()),
        };
    }
    match lines
        .iter()
        .find(|l| !(l.starts_with('2') || l.starts_with('3')))
    {
        Some(l) => verdict(l),
        None => Attempt::Temporary("session ended early".into()),
    }
}

fn sender(
    tag: &str,
    vip: SocketAddr,
    mut rng: fastrand::Rng,
    send_until: Instant,
    retry_until: Instant,
    stop: &AtomicBool,
) -> (Vec<Msg>, SendStats) {
    let mut held: Vec<Msg> = Vec::new();
    let mut done = Vec::new();
    let mut stats = SendStats::default();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= retry_until {
            break;
        }
        let mut m = if let Some(i) = held.iter().position(|m| m.next_try <= now) {
            held.swap_remove(i)
        } else if now < send_until {
            n += 1;
            let set = RCPT_SETS[rng.usize(..RCPT_SETS.len())];
            Msg {
                id: format!("{tag}-{n}"),
                rcpts: set.iter().map(|s| (*s).to_owned()).collect(),
                attempts: 0,
                deferrals: 0,
                next_try: now,
                outcome: Outcome::Held,
            }
        } else if held.is_empty() {
            break;
        } else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        m.attempts += 1;
        stats.attempts += 1;
        let rcpts: Vec<&str> = m.rcpts.iter().map(String::as_str).collect();
        let body = clients::message(&m.id, &m.rcpts.join(">, <"));
        let result = match client::send_mail(vip, None, SENDER, &rcpts, &body) {
            Ok(lines) => classify(&lines),
            Err(e) => Attempt::Temporary(format!("connection {:?}", e.kind())),
        };
        match result {
            Attempt::Acked => {
                stats.acked += 1;
                m.outcome = Outcome::Acked;
                done.push(m);
            }
            Attempt::Temporary(why) => {
                *stats.temporary.entry(why).or_default() += 1;
                m.deferrals += 1;
                let backoff = Duration::from_secs(1 << m.deferrals.min(4)).min(MAX_BACKOFF);
                m.next_try = Instant::now() + backoff;
                held.push(m);
            }
            Attempt::Permanent(why) => {
                *stats.refused.entry(why.clone()).or_default() += 1;
                m.outcome = Outcome::Refused(why);
                done.push(m);
            }
        }
        if Instant::now() < send_until {
            std::thread::sleep(Duration::from_millis(300 + rng.u64(..400)));
        }
    }
    done.extend(held);
    (done, stats)
}

#[derive(Default, Debug)]
struct PopStats {
    sessions: u64,
    ok: u64,
    failed: BTreeMap<String, u64>,
}

/// Python's poplib over STLS: logs in, STAT, RETRs the newest message, QUITs; one JSON
/// object out, errors included (a failure under chaos is counted, not fatal).
const POP_FETCH: &str = r#"
import json, poplib, ssl, sys
host, port, user, password, ca = sys.argv[1:6]
out = {}
try:
    p = poplib.POP3(host, int(port), timeout=20)
    p.stls(ssl.create_default_context(cafile=ca))
    p.user(user)
    p.pass_(password)
    n, _ = p.stat()
    if n:
        p.retr(n)
    p.quit()
    out["count"] = n
except Exception as e:
    out["error"] = type(e).__name__ + ": " + str(e)[:60]
print(json.dumps(out))
"#;

fn fetcher(
    ns: &Netns,
    ca: &Path,
    users: &[(String, String)],
    mut rng: fastrand::Rng,
    until: Instant,
    stop: &AtomicBool,
) -> PopStats {
    let mut stats = PopStats::default();
    while Instant::now() < until && !stop.load(Ordering::Relaxed) && !users.is_empty() {
        let (user, pw) = &users[rng.usize(..users.len())];
        let host: IpAddr = if rng.bool() {
            VIP_POP.into()
        } else {
            VIP_POP_V6.into()
        };
        stats.sessions += 1;
        let out = ns
            .command(clients::python())
            .arg("-c")
            .arg(POP_FETCH)
            .args([&host.to_string(), "110", user, pw])
            .arg(ca)
            .output();
        let verdict = match out {
            Ok(o) => match serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                Ok(v) if v.get("count").is_some() => None,
                Ok(v) => Some(v["error"].as_str().unwrap_or("?").to_owned()),
                Err(_) => Some(format!("client failed: {}", clients::text(&o).trim())),
            },
            Err(e) => Some(format!("cannot run python: {e}")),
        };
        match verdict {
            None => stats.ok += 1,
            Some(why) => *stats.failed.entry(why).or_default() += 1,
        }
        std::thread::sleep(Duration::from_millis(1000 + rng.u64(..1000)));
    }
    stats
}

// ---------------------------------------------------------------- chaos

#[derive(Debug, Clone)]
struct Event {
    at_s: f64,
    kind: &'static str,
    target: String,
    detail: String,
    /// The cluster did not come back (a restart failed, an address never moved).
    error: Option<String>,
}

struct Chaos {
    rng: fastrand::Rng,
    start: Instant,
    events: Vec<Event>,
    background: Vec<(&'static str, std::thread::JoinHandle<Option<Event>>)>,
}

const KINDS: [&str; 8] = [
    "kill-backend",
    "kill-frontend",
    "link-flap",
    "reload",
    "attack-long-ehlo",
    "attack-rcpt-storm",
    "attack-auth-guess",
    "attack-slow-reader",
];

impl Chaos {
    fn run(&mut self, c: &mut Cluster, from: Instant, until: Instant) -> anyhow::Result<()> {
        sleep_until(from);
        while Instant::now() < until {
            let kind = KINDS[self.rng.usize(..KINDS.len())];
            // One attack of a kind at a time: a second password guesser from the same
            // address would only meet the first one's lock-out.
            if self
                .background
                .iter()
                .any(|(k, h)| *k == kind && !h.is_finished())
            {
                continue;
            }
            let at_s = self.start.elapsed().as_secs_f64();
            let (target, result) = match kind {
                "kill-backend" => self.kill_backend(c),
                "kill-frontend" => self.kill_frontend(c),
                "link-flap" => self.link_flap(c),
                "reload" => self.reload(c),
                attack => {
                    // Attacks run beside the chaos: the proxy makes some of them slow on
                    // purpose (failed logins cost the guesser time).
                    let ns = c.lab.client.ns.clone();
                    let ca = c.ca();
                    let start = self.start;
                    let h = std::thread::spawn(move || {
                        let detail = match attack {
                            "attack-long-ehlo" => ns.enter(long_ehlo),
                            "attack-rcpt-storm" => ns.enter(rcpt_storm),
                            "attack-slow-reader" => ns.enter(slow_reader),
                            _ => Ok(auth_guess(&ns, &ca)),
                        }
                        .unwrap_or_else(|e| format!("error: {e}"));
                        println!(
                            "soak: {:>6.1}s {attack} {VIP_SMTP} (from {at_s:.1}s): {detail}",
                            start.elapsed().as_secs_f64()
                        );
                        Some(Event {
                            at_s,
                            kind: attack,
                            target: VIP_SMTP.to_string(),
                            detail,
                            error: None,
                        })
                    });
                    self.background.push((attack, h));
                    self.pause(3, 6);
                    continue;
                }
            };
            let (detail, error) = match result {
                Ok(d) => (d, None),
                Err(e) => (String::new(), Some(format!("{e:#}"))),
            };
            println!(
                "soak: {at_s:>6.1}s {kind} {target}: {}",
                error.as_deref().unwrap_or(&detail)
            );
            let failed = error.is_some();
            self.events.push(Event {
                at_s,
                kind,
                target,
                detail,
                error,
            });
            if failed {
                // A cluster that did not recover makes further chaos meaningless; the
                // clients still finish and the count still runs.
                return Ok(());
            }
            self.pause(3, 6);
        }
        Ok(())
    }

    fn pause(&mut self, min_s: u64, max_s: u64) {
        std::thread::sleep(Duration::from_millis(
            self.rng.u64(min_s * 1000..max_s * 1000),
        ));
    }

    fn kill_backend(&mut self, c: &mut Cluster) -> (String, anyhow::Result<String>) {
        let i = self.rng.usize(..c.hosts.len());
        let down = Duration::from_millis(self.rng.u64(500..4000));
        let host = &mut c.hosts[i];
        let name = format!("{} ({:?})", host.name(), host.make);
        host.kill_smtp(&mut c.lab, Signal::SIGKILL);
        std::thread::sleep(down);
        let t = Instant::now();
        let r = host.restart_smtp(&mut c.lab).map(|()| {
            format!(
                "down {:.1}s, answering again {:.1}s after the restart",
                down.as_secs_f64(),
                t.elapsed().as_secs_f64()
            )
        });
        (name, r)
    }

    fn kill_frontend(&mut self, c: &mut Cluster) -> (String, anyhow::Result<String>) {
        let i = self.rng.usize(..2);
        let name = c.lab.frontends[i].name.clone();
        let down = Duration::from_millis(self.rng.u64(1000..4000));
        let r = (|| -> anyhow::Result<String> {
            // Front-end A is master of the SMTP address, B of the POP3 address.
            let vip: IpAddr = if i == 0 { VIP_SMTP } else { VIP_POP }.into();
            let (me, other) = (
                c.lab.frontends[i].ns.clone(),
                c.lab.frontends[1 - i].ns.clone(),
            );
            let d = c
                .frontend_daemon(i)
                .with_context(|| format!("{name} is not running"))?;
            d.stop_with(Signal::SIGKILL, Duration::from_secs(5))?;
            let moved = eventually(
                &format!("the other front-end takes {vip}"),
                Duration::from_secs(30),
                || owns(&other, "pub0", vip),
            )?;
            std::thread::sleep(down);
            c.start_frontend(i)?;
            let back = eventually(
                &format!("{name} takes {vip} back"),
                Duration::from_secs(30),
                || owns(&me, "pub0", vip),
            )?;
            Ok(format!(
                "{vip} moved in {:.2}s, {name} down {:.1}s, took it back {:.2}s after its restart",
                moved.as_secs_f64(),
                down.as_secs_f64(),
                back.as_secs_f64()
            ))
        })();
        (name, r)
    }

    fn link_flap(&mut self, c: &mut Cluster) -> (String, anyhow::Result<String>) {
        // Back-ends' cables and the front-ends' back-end side: the public side would only
        // repeat the front-end kill (both front-ends claim the addresses while apart).
        let ports: Vec<String> = c
            .lab
            .backends
            .iter()
            .take(c.hosts.len())
            .map(|h| c.lab.switch_port(&h.name, 0))
            .chain(
                c.lab
                    .frontends
                    .iter()
                    .map(|h| c.lab.switch_port(&h.name, 1)),
            )
            .collect();
        let port = ports[self.rng.usize(..ports.len())].clone();
        let down = Duration::from_millis(self.rng.u64(500..4000));
        let sw = c.lab.switch.clone();
        let r = (|| -> anyhow::Result<String> {
            sw.ip(&["link", "set", &port, "down"])?;
            std::thread::sleep(down);
            sw.ip(&["link", "set", &port, "up"])?;
            Ok(format!("down {:.1}s", down.as_secs_f64()))
        })();
        (format!("switch port {port}"), r)
    }

    fn reload(&mut self, c: &mut Cluster) -> (String, anyhow::Result<String>) {
        let i = self.rng.usize(..2);
        let name = c.lab.frontends[i].name.clone();
        let r = (|| -> anyhow::Result<String> {
            let d = c
                .frontend_daemon(i)
                .with_context(|| format!("{name} is not running"))?;
            nix::sys::signal::kill(d.pid(), Signal::SIGHUP)?;
            std::thread::sleep(Duration::from_millis(500));
            anyhow::ensure!(c.frontend_daemon(i).is_some(), "{name} exited on SIGHUP");
            Ok("SIGHUP, still running".into())
        })();
        (name, r)
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn smtp_vip() -> SocketAddr {
    SocketAddr::new(VIP_SMTP.into(), 25)
}

/// Replies by code: `250 x3, 550 x12`.
fn codes(replies: &[String]) -> String {
    let mut by: BTreeMap<String, u32> = BTreeMap::new();
    for r in replies {
        *by.entry(r.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .or_default() += 1;
    }
    by.iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// EHLO with a 300-octet name, then several RCPTs: replies by code.
fn long_ehlo() -> String {
    let name = format!("{}.example", "h".repeat(292));
    let mut lines = vec![
        format!("EHLO {name}"),
        "MAIL FROM:<probe@attacker.example>".to_owned(),
    ];
    for r in [
        "alice@example.test",
        "bob@example.test",
        "nobody@example.test",
        "carol@example.net",
        "erin@example.org",
    ] {
        lines.push(format!("RCPT TO:<{r}>"));
    }
    lines.push("QUIT".into());
    match client::smtp_dialogue(smtp_vip(), Some(ATTACKER.into()), &lines) {
        Ok(r) => format!("{}-octet EHLO name: {}", name.len(), codes(&r)),
        Err(e) => format!("connection {:?}", e.kind()),
    }
}

/// 60 RCPTs to users that do not exist: replies by code (the proxy cuts the session short
/// after 20 refusals).
fn rcpt_storm() -> String {
    let mut lines = vec![
        "EHLO storm.attacker.example".to_owned(),
        "MAIL FROM:<storm@attacker.example>".to_owned(),
    ];
    lines.extend((0..60).map(|i| format!("RCPT TO:<nosuch{i}@example.test>")));
    lines.push("QUIT".into());
    match client::smtp_dialogue(smtp_vip(), Some(ATTACKER.into()), &lines) {
        Ok(r) => format!("{} replies: {}", r.len(), codes(&r)),
        Err(e) => format!("connection {:?}", e.kind()),
    }
}

/// Six guesses of alice's password on submission (STARTTLS, AUTH PLAIN) with swaks: the
/// AUTH replies by code.
fn auth_guess(ns: &Netns, ca: &Path) -> String {
    let server = format!("{VIP_SMTP}:587");
    let mut replies = Vec::new();
    for i in 0..6 {
        let out = ns
            .command("swaks")
            .args(["--timeout", "20", "--server", &server])
            .args(["--local-interface", &ATTACKER.to_string()])
            .args(["--helo", "guess.attacker.example", "--tls"])
            .arg("--tls-ca-path")
            .arg(ca)
            .args(["--auth", "PLAIN", "--auth-user", "alice@example.test"])
            .args([
                "--auth-password",
                &format!("guess-{i}"),
                "--quit-after",
                "AUTH",
            ])
            .output();
        let reply = match out {
            Ok(o) => {
                let t = clients::text(&o);
                let after_auth = t.split("~> AUTH").nth(1).unwrap_or("");
                after_auth
                    .lines()
                    .find_map(server_line)
                    .or_else(|| t.lines().rev().find_map(server_line))
                    .unwrap_or("no reply")
                    .to_owned()
            }
            Err(e) => format!("swaks: {e}"),
        };
        replies.push(reply);
    }
    format!("AUTH replies: {}", codes(&replies))
}

/// A server line of swaks's transcript (`<~ ` over TLS, `<~*` for an error reply).
fn server_line(l: &str) -> Option<&str> {
    l.trim()
        .strip_prefix("<~")
        .map(|r| r.trim_start_matches(['*', ' ']))
}

/// Sends EHLO and 20000 pipelined NOOPs without ever reading, holds the connection for
/// 15 s, then tells whether the proxy had closed it.
fn slow_reader() -> String {
    let stream = match client::connect(smtp_vip(), Some(ATTACKER.into()), Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return format!("connection {:?}", e.kind()),
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut w = &stream;
    let _ = w.write_all(b"EHLO slow.attacker.example\r\n");
    let batch = "NOOP\r\n".repeat(20_000);
    let mut written = 0;
    for chunk in batch.as_bytes().chunks(4096) {
        if w.write_all(chunk).is_err() {
            break;
        }
        written += chunk.len();
    }
    std::thread::sleep(Duration::from_secs(15));
    let closed = w.write_all(b"NOOP\r\n").and_then(|()| w.flush()).is_err();
    format!(
        "{written} octets of NOOPs written unread; after 15 s the connection was {}",
        if closed { "closed" } else { "still open" }
    )
}

// ---------------------------------------------------------------- the count

/// Waits (bounded) until every acknowledged message is in its recipients' Maildirs, asking
/// the back-ends to retry deferred mail on the way. Returns how often each (recipient,
/// Message-ID) pair was found, and how many soak messages were found that no client saw
/// acknowledged.
fn drain(c: &Cluster, msgs: &[Msg]) -> (HashMap<(String, String), u32>, u64) {
    let deadline = Instant::now() + DRAIN;
    let mut last_flush: Option<Instant> = None;
    loop {
        if last_flush.is_none_or(|t| t.elapsed() > Duration::from_secs(20)) {
            for h in &c.hosts {
                if let Err(e) = h.flush_queue() {
                    println!("soak: {}: {e:#}", h.name());
                }
            }
            last_flush = Some(Instant::now());
        }
        let found = scan(c);
        let missing = msgs
            .iter()
            .filter(|m| m.outcome == Outcome::Acked)
            .flat_map(|m| m.rcpts.iter().map(|r| (r.clone(), m.id.clone())))
            .filter(|k| !found.contains_key(k))
            .count();
        if missing == 0 || Instant::now() > deadline {
            let ids: HashMap<&str, &Msg> = msgs.iter().map(|m| (m.id.as_str(), m)).collect();
            let unacked = found
                .keys()
                .filter(|(_, id)| {
                    ids.get(id.as_str())
                        .is_some_and(|m| m.outcome != Outcome::Acked)
                })
                .count() as u64;
            return (found, unacked);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The acknowledged deliveries (`id->recipient`) missing from `found`, and those found
/// more than once (of any message, acknowledged or not).
fn account(msgs: &[Msg], found: &HashMap<(String, String), u32>) -> (Vec<String>, Vec<String>) {
    let mut lost = Vec::new();
    let mut duplicates = Vec::new();
    for m in msgs {
        for r in &m.rcpts {
            let n = found.get(&(r.clone(), m.id.clone())).copied().unwrap_or(0);
            if m.outcome == Outcome::Acked && n == 0 {
                lost.push(format!("{}->{r}", m.id));
            }
            if n > 1 {
                duplicates.push(format!("{}->{r} x{n}", m.id));
            }
        }
    }
    (lost, duplicates)
}

/// Every (mailbox, Message-ID local part) in the cluster's Maildirs, with its count.
fn scan(c: &Cluster) -> HashMap<(String, String), u32> {
    let mut found = HashMap::new();
    for h in &c.hosts {
        for u in h.users.iter() {
            for m in h.messages(&u.address) {
                if let Some(id) = message_id(&m) {
                    *found.entry((u.address.clone(), id)).or_default() += 1;
                }
            }
        }
    }
    found
}

/// The local part of a message's Message-ID (what the soak puts there is unique per
/// message), from its header.
fn message_id(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    text.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("message-id").then_some(value)
        })
        .and_then(|v| {
            let v = v.trim().trim_start_matches('<');
            v.split_once('@').map(|(local, _)| local.to_owned())
        })
}

// ---------------------------------------------------------------- the report

struct Report {
    seed: u64,
    minutes: f64,
    clients: usize,
    setup_s: f64,
    total_s: f64,
    drain_s: f64,
    messages: u64,
    acked: u64,
    acked_after_retry: u64,
    deferred_once: u64,
    still_deferred: u64,
    refused: u64,
    deliveries_expected: u64,
    deliveries_found: u64,
    unacked_found: u64,
    lost: Vec<String>,
    duplicates: Vec<String>,
    stats: SendStats,
    pop: PopStats,
    events: Vec<Event>,
    chaos_errors: Vec<String>,
}

impl Report {
    fn ok(&self) -> bool {
        self.lost.is_empty() && self.chaos_errors.is_empty()
    }

    fn rate(part: u64, whole: u64) -> f64 {
        if whole == 0 {
            0.0
        } else {
            part as f64 * 100.0 / whole as f64
        }
    }

    fn chaos_by_kind(&self) -> BTreeMap<&'static str, u64> {
        let mut by = BTreeMap::new();
        for e in &self.events {
            *by.entry(e.kind).or_default() += 1;
        }
        by
    }

    fn print(&self) {
        let s = &self.stats;
        let rows: Vec<(String, String)> = vec![
            ("messages sent".into(), self.messages.to_string()),
            (
                "acknowledged (250)".into(),
                format!("{} ({} after a retry)", self.acked, self.acked_after_retry),
            ),
            (
                "deferred at least once (4xx, cut)".into(),
                self.deferred_once.to_string(),
            ),
            (
                "still held by clients at the end".into(),
                self.still_deferred.to_string(),
            ),
            ("refused (5xx)".into(), self.refused.to_string()),
            (
                "deliveries expected / found".into(),
                format!("{} / {}", self.deliveries_expected, self.deliveries_found),
            ),
            ("LOST".into(), self.lost.len().to_string()),
            ("duplicates".into(), self.duplicates.len().to_string()),
            (
                "delivered but never acknowledged".into(),
                self.unacked_found.to_string(),
            ),
            ("SMTP attempts".into(), s.attempts.to_string()),
            (
                "refusal rate (5xx / attempts)".into(),
                format!("{:.2} %", Self::rate(s.refused_total(), s.attempts)),
            ),
            (
                "temporary-failure rate".into(),
                format!("{:.2} %", Self::rate(s.temporary_total(), s.attempts)),
            ),
            (
                "POP3 sessions ok / total".into(),
                format!("{} / {}", self.pop.ok, self.pop.sessions),
            ),
            (
                "lab set-up / drain / total".into(),
                format!(
                    "{:.0} s / {:.0} s / {:.0} s",
                    self.setup_s, self.drain_s, self.total_s
                ),
            ),
        ];
        println!("\n== soak summary (seed {})", self.seed);
        for (k, v) in rows {
            println!("   {k:<36} {v}");
        }
        println!("   temporary failures by reason:");
        for (k, v) in &s.temporary {
            println!("     {k:<34} {v}");
        }
        if !s.refused.is_empty() {
            println!("   refusals by reply:");
            for (k, v) in &s.refused {
                println!("     {k:<34} {v}");
            }
        }
        if !self.pop.failed.is_empty() {
            println!("   POP3 failures:");
            for (k, v) in &self.pop.failed {
                println!("     {k:<34} {v}");
            }
        }
        println!("   chaos events:");
        for (k, v) in self.chaos_by_kind() {
            println!("     {k:<34} {v}");
        }
        for d in self.duplicates.iter().take(20) {
            println!("   duplicate: {d}");
        }
        for l in &self.lost {
            println!("   LOST: {l}");
        }
    }

    fn write(&self, minutes: f64) -> anyhow::Result<PathBuf> {
        let dir = root().join("target").join("soak");
        std::fs::create_dir_all(&dir)?;
        let s = &self.stats;
        let v = json!({
            "seed": self.seed,
            "minutes": self.minutes,
            "clients": self.clients,
            "setup_s": self.setup_s,
            "drain_s": self.drain_s,
            "total_s": self.total_s,
            "messages": {
                "sent": self.messages,
                "acknowledged": self.acked,
                "acknowledged_after_retry": self.acked_after_retry,
                "deferred_at_least_once": self.deferred_once,
                "still_held": self.still_deferred,
                "refused": self.refused,
                "deliveries_expected": self.deliveries_expected,
                "deliveries_found": self.deliveries_found,
                "lost": self.lost,
                "duplicates": self.duplicates,
                "delivered_never_acknowledged": self.unacked_found,
            },
            "smtp": {
                "attempts": s.attempts,
                "acknowledged": s.acked,
                "temporary": s.temporary,
                "refused": s.refused,
                "refusal_rate_percent": Self::rate(s.refused_total(), s.attempts),
                "temporary_rate_percent": Self::rate(s.temporary_total(), s.attempts),
            },
            "pop3": {
                "sessions": self.pop.sessions,
                "ok": self.pop.ok,
                "failed": self.pop.failed,
            },
            "chaos": {
                "by_kind": self.chaos_by_kind(),
                "errors": self.chaos_errors,
                "events": self.events.iter().map(|e| json!({
                    "at_s": e.at_s,
                    "kind": e.kind,
                    "target": e.target,
                    "detail": e.detail,
                    "error": e.error,
                })).collect::<Vec<_>>(),
            },
        });
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = dir.join(format!("soak-{minutes}m-{stamp}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&v)?)?;
        std::fs::write(dir.join("latest.json"), serde_json::to_string_pretty(&v)?)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_a_250_after_the_data_is_an_acknowledgement() {
        let ok = lines(&[
            "220 hi",
            "250 ok",
            "250 ok",
            "250 ok",
            "354 go",
            "250 2.0.0 queued",
            "221 bye",
        ]);
        assert!(matches!(classify(&ok), Attempt::Acked));
        let cut = lines(&["220 hi", "250 ok", "250 ok", "250 ok", "354 go"]);
        assert!(matches!(classify(&cut), Attempt::Temporary(_)));
        let deferred = lines(&["220 hi", "250 ok", "250 ok", "451 4.3.2 busy"]);
        assert!(matches!(classify(&deferred), Attempt::Temporary(r) if r == "451 4.3.2"));
        let after_data = lines(&[
            "220 hi",
            "250 ok",
            "250 ok",
            "250 ok",
            "354 go",
            "451 4.4.1 lost",
        ]);
        assert!(matches!(classify(&after_data), Attempt::Temporary(_)));
        let refused = lines(&["220 hi", "250 ok", "250 ok", "550 5.1.1 no"]);
        assert!(matches!(classify(&refused), Attempt::Permanent(r) if r == "550 5.1.1"));
        let shed = lines(&["421 4.3.2 busy"]);
        assert!(matches!(classify(&shed), Attempt::Temporary(_)));
    }

    fn msg(id: &str, rcpts: &[&str], outcome: Outcome) -> Msg {
        Msg {
            id: id.into(),
            rcpts: rcpts.iter().map(|r| (*r).to_owned()).collect(),
            attempts: 1,
            deferrals: 0,
            next_try: Instant::now(),
            outcome,
        }
    }

    #[test]
    fn an_acknowledged_delivery_missing_from_any_recipient_is_lost() {
        let msgs = [
            msg("a", &["x@d", "y@d"], Outcome::Acked),
            msg("b", &["x@d"], Outcome::Acked),
            msg("held", &["x@d"], Outcome::Held),
            msg("refused", &["x@d"], Outcome::Refused("550 5.1.1".into())),
        ];
        let found: HashMap<(String, String), u32> = [
            (("x@d".into(), "a".into()), 1),
            (("x@d".into(), "b".into()), 2),
        ]
        .into_iter()
        .collect();
        let (lost, dups) = account(&msgs, &found);
        assert_eq!(lost, ["a->y@d"], "held and refused messages are not lost");
        assert_eq!(dups, ["b->x@d x2"]);
        let all: HashMap<(String, String), u32> = [
            (("x@d".into(), "a".into()), 1),
            (("y@d".into(), "a".into()), 1),
            (("x@d".into(), "b".into()), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(account(&msgs, &all), (vec![], vec![]));
    }

    #[test]
    fn message_ids_come_from_the_header_only() {
        let m = b"Return-Path: <a@b>\nMessage-Id: <soak-1-c0-7@client.example.org>\n\nMessage-ID: <body@x>\n";
        assert_eq!(message_id(m).as_deref(), Some("soak-1-c0-7"));
        assert_eq!(message_id(b"Subject: x\n\nMessage-ID: <body@x>\n"), None);
    }
}
