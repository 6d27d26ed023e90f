//! What routing by a directory costs: one front-end, one smtp-sink back-end, and one
//! Robustifier whose SMTP services differ only in how they route a recipient: a text
//! routing map (the rival, "text map"), or a `[[directory]]` of each source kind (SQLite,
//! PostgreSQL, MariaDB, LDAP, RADIUS) answering the recipient's pool by its domain (`%d`),
//! its servers lab processes in the second back-end's namespace.
//!
//! - "1 KiB, warm cache": smtp-source sends every session to the same recipient, so every
//!   lookup after the first is a cache hit; proxy CPU per session.
//! - "1 KiB, cache miss": our own client from a few threads, each session to a recipient
//!   never asked before (`u<N>@example.test`): every lookup goes to the source (found by
//!   the domain, never cached); proxy CPU per session.
//! - "slow directory": serial session latency p50/p99 through a PostgreSQL directory whose
//!   answers come 20 ms late (a delaying relay in the directory's namespace: the lab's
//!   kernel has no netem), warm cache and cache miss, against the text map.
//!
//! Each case records the directory's figure as system "robustifier" and the text map's
//! figure of the same repetition as "text map", so the report's ratios are paired.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use robustifier_lab::{
    Lab,
    directory::{
        ldap::{BIND_DN, Entry, PEOPLE, Slapd},
        radius::{FreeRadius, User},
        sql::{self, SqlServer},
    },
    topology::VIP_SMTP,
    wait_port,
};

use super::cost::smtp_source;
use crate::{
    Ctx,
    procs::{self, LOAD_CPU},
    report::{Metric, SUT},
    rivals, smtp,
};

const SCENARIO: &str = "lookups";
/// The rival: the same front-end routing by a text map.
const TEXT: &str = "text map";
/// smtp-source's sessions at a time (as in `cost`).
const CONCURRENCY: usize = 20;
/// Client threads of the cache-miss case.
const MISS_CLIENTS: usize = 4;
const DOMAIN: &str = "example.test";
/// The recipient smtp-source always sends to (`cost::smtp_source`).
const WARM_RCPT: &str = "rcpt@example.test";
/// What the slow directory's relay adds to each answer.
const DELAY_MS: u64 = 20;
const RELAY_PORT: u16 = 15432;

/// Each system's SMTP service port on the VIP; the directory (if any) has the same name.
const SYSTEMS: [(&str, u16); 6] = [
    (TEXT, 25),
    ("sqlite", 2601),
    ("postgres", 2602),
    ("mysql", 2603),
    ("ldap", 2604),
    ("radius", 2605),
];
/// The PostgreSQL directory behind the delaying relay.
const SLOW: (&str, u16) = ("postgres-slow", 2606);

const CPU: Metric = Metric {
    name: "proxy CPU per session",
    unit: "us",
    lower_is_better: true,
};
const P50: Metric = Metric {
    name: "serial latency p50",
    unit: "ms",
    lower_is_better: true,
};
const P99: Metric = Metric {
    name: "serial latency p99",
    unit: "ms",
    lower_is_better: true,
};

/// Numbers the cache-miss recipients across the whole run, so none is ever asked twice.
static NEXT_RCPT: AtomicUsize = AtomicUsize::new(0);

fn fresh_rcpt() -> String {
    format!("u{}@{DOMAIN}", NEXT_RCPT.fetch_add(1, Ordering::Relaxed))
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(VIP_SMTP.into(), port)
}

/// TOML basic string (the paths and URLs here hold no control characters).
fn q(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

/// The common keys of every directory: an unknown domain is refused, so a session that
/// gets through was routed by the directory, not by the service's `pool`.
fn directory_head(name: &str) -> String {
    format!(
        "[[directory]]\nname = {}\nnot_found = \"reject\"\n",
        q(name)
    )
}

fn sql_directory(name: &str, s: &SqlServer, url: &str) -> String {
    format!(
        "{}[directory.sql]\nurls = [{}]\npassword_file = {}\nca_file = {}\n\
         query = \"SELECT smtp_pool FROM mailbox WHERE address = %d\"\n\n",
        directory_head(name),
        q(url),
        q(s.password_file.display().to_string()),
        q(s.ca.display().to_string()),
    )
}

/// The directory servers, each holding the one row "example.test -> mx".
struct Directories {
    toml: String,
    _slapd: Slapd,
    _radius: FreeRadius,
}

fn start_directories(lab: &mut Lab) -> anyhow::Result<Directories> {
    let host = &lab.backends[1];
    let ns = host.ns.clone();
    let ip = IpAddr::V4(host.v4);
    let row = format!(
        "INSERT INTO mailbox (address, smtp_pool) VALUES ({}, 'mx');\n",
        sql::literal(DOMAIN)
    );
    let mut toml = String::new();

    let file = sql::sqlite_file(lab, "lookups.db")?;
    sql::sqlite_exec(&file, &row)?;
    toml.push_str(&format!(
        "{}[directory.sql]\nurls = [{}]\nquery = \"SELECT smtp_pool FROM mailbox WHERE address = %d\"\n\n",
        directory_head("sqlite"),
        q(format!("sqlite://{}", file.display())),
    ));

    let pg = SqlServer::postgres(lab, &ns, ip, "pg").context("PostgreSQL")?;
    pg.sql(&row)?;
    toml.push_str(&sql_directory("postgres", &pg, &pg.url()));
    let slow_url = pg.url().replace(
        &pg.addr.to_string(),
        &SocketAddr::new(ip, RELAY_PORT).to_string(),
    );
    toml.push_str(&sql_directory(SLOW.0, &pg, &slow_url));
    start_relay(lab, SocketAddr::new(ip, RELAY_PORT), pg.addr)?;

    let my = SqlServer::mariadb(lab, &ns, ip, "my").context("MariaDB")?;
    my.sql(&row)?;
    toml.push_str(&sql_directory("mysql", &my, &my.url()));

    let mut slapd = Slapd::start(&lab.log_dir, &ns, "lookups", ip).context("slapd")?;
    slapd.add(&[Entry::new(DOMAIN, "mx", "", "")])?;
    toml.push_str(&format!(
        "{}[directory.ldap]\nurls = [{}]\nca_file = {}\nbase = {}\n\
         filter = \"(&(objectClass=robustifierMailbox)(robustifierAddress=%d))\"\n\
         attribute = \"robustifierSmtpPool\"\nbind_dn = {}\nbind_password_file = {}\n\n",
        directory_head("ldap"),
        q(slapd.ldaps_url()),
        q(slapd.ca.display().to_string()),
        q(PEOPLE),
        q(BIND_DN),
        q(slapd.bind_password_file.display().to_string()),
    ));

    let fe = lab
        .frontend(0)
        .internal_v4
        .context("front-end without a back-end address")?;
    let radius = FreeRadius::start(
        lab,
        &ns,
        "radius",
        ip,
        &[IpAddr::V4(fe)],
        &[User::new(DOMAIN, &[("Reply-Message", "mx")])],
    )
    .context("FreeRADIUS")?;
    toml.push_str(&format!(
        "{}[directory.radius]\nservers = [{}]\nsecret_file = {}\nuser_name = \"%d\"\n\
         attribute = \"Reply-Message\"\n\n",
        directory_head("radius"),
        q(radius.address.to_string()),
        q(radius.secret_file.display().to_string()),
    ));

    // The directory servers (and the workers they fork later) share the load CPU, so the
    // system under test keeps its own.
    let out = robustifier_lab::netns::run(
        std::process::Command::new("ip").args(["netns", "pids", &ns.name]),
    )?;
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        procs::pin_pid(pid, LOAD_CPU)?;
    }
    Ok(Directories {
        toml,
        _slapd: slapd,
        _radius: radius,
    })
}

/// The delaying relay (`cargo xtask bench-delay-relay`) on `listen` in the directories'
/// namespace, in front of `upstream`.
fn start_relay(lab: &mut Lab, listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let ns = lab.backends[1].ns.clone();
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let (l, u, d) = (
        listen.to_string(),
        upstream.to_string(),
        DELAY_MS.to_string(),
    );
    rivals::spawn_pinned(
        lab,
        &ns,
        "delay-relay",
        LOAD_CPU,
        &[
            &exe,
            "bench-delay-relay",
            "--listen",
            &l,
            "--upstream",
            &u,
            "--delay-ms",
            &d,
        ],
    )?;
    wait_port(&ns, listen)
}

/// A TCP relay from `listen` to `upstream` that passes on what the upstream sends `delay`
/// after it arrived (requests go through at once), like a longer path for the answers
/// only: an answer in several segments comes `delay` late, not once per segment. Threads:
/// one per direction per connection, and one holding the answers.
pub fn serve_delay_relay(
    listen: SocketAddr,
    upstream: SocketAddr,
    delay: Duration,
) -> anyhow::Result<()> {
    use std::{
        io::{Read as _, Write as _},
        net::{Shutdown, TcpStream},
        time::Instant,
    };
    let l = std::net::TcpListener::bind(listen)?;
    for conn in l.incoming() {
        let Ok(client) = conn else { continue };
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(mut c_read), Ok(mut s_read)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let (mut c_write, mut s_write) = (client, server);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = c_read.read(&mut buf) {
                if s_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = s_write.shutdown(Shutdown::Write);
        });
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = s_read.read(&mut buf) {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for (due, chunk) in rx {
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                if c_write.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = c_write.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}

fn config(lab: &Lab, sink: SocketAddr, map: &Path, directories: &str) -> String {
    let mut s = format!(
        "[frontend]\nname = {}\ninterface = \"pub0\"\npin_dir = {}\n",
        q(&lab.frontend(0).name),
        q(lab.pin_dir(0).display().to_string())
    );
    for (name, port) in SYSTEMS.iter().chain([&SLOW]) {
        let route = if *name == TEXT {
            format!("routes = {}", q(map.display().to_string()))
        } else {
            format!("directory = {}", q(name))
        };
        s.push_str(&format!(
            "\n[[service]]\nname = \"smtp-{}\"\nprotocol = \"smtp\"\nport = {port}\n\
             vips = [\"{VIP_SMTP}\"]\npool = \"mx\"\nmax_connections = 30000\n\
             max_per_client = 30000\n{route}\n",
            name.replace(' ', "-")
        ));
    }
    s.push_str(&format!(
        "\n[[pool]]\nname = \"mx\"\nidentity = \"none\"\n\
         backend = [{{ name = \"be1\", address = \"{sink}\" }}]\n\
         [pool.health]\ninterval_ms = 200\ntimeout_ms = 3000\nrise = 2\nfall = 2\n\n{directories}"
    ));
    s
}

/// `n` sessions from [`MISS_CLIENTS`] threads in the client namespace, each to a fresh
/// recipient; their durations (any session not delivered is an error).
fn miss_load(lab: &Lab, to: SocketAddr, msg: &[u8], n: usize) -> anyhow::Result<Vec<Duration>> {
    lab.client.ns.enter(|| {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..MISS_CLIENTS)
                .map(|c| {
                    let count = n / MISS_CLIENTS + usize::from(c < n % MISS_CLIENTS);
                    sc.spawn(move || -> anyhow::Result<Vec<Duration>> {
                        (0..count)
                            .map(|_| deliver(to, &fresh_rcpt(), msg))
                            .collect()
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in hs {
                all.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
            }
            Ok(all)
        })
    })?
}

fn deliver(to: SocketAddr, rcpt: &str, msg: &[u8]) -> anyhow::Result<Duration> {
    match smtp::session_to(to, rcpt, msg, smtp::Timeouts::NORMAL) {
        smtp::Outcome::Delivered(d) => Ok(d),
        other => anyhow::bail!("session to {rcpt} via {to}: {other:?}"),
    }
}

/// `n` serial sessions from the client namespace, to `WARM_RCPT` or each to a fresh
/// recipient.
fn serial(
    lab: &Lab,
    to: SocketAddr,
    msg: &[u8],
    n: usize,
    warm: bool,
) -> anyhow::Result<Vec<Duration>> {
    lab.client.ns.enter(|| {
        (0..n)
            .map(|_| {
                let rcpt = if warm {
                    WARM_RCPT.to_owned()
                } else {
                    fresh_rcpt()
                };
                deliver(to, &rcpt, msg)
            })
            .collect()
    })?
}

/// Every system delivers to the lab's domain, and every directory refuses a domain it
/// does not hold (so what is measured is routed by the directory).
fn check(lab: &Lab, msg: &[u8]) -> anyhow::Result<()> {
    lab.client.ns.enter(|| {
        for (name, port) in SYSTEMS.iter().chain([&SLOW]) {
            deliver(addr(*port), WARM_RCPT, msg).with_context(|| name.to_string())?;
            if *name != TEXT {
                match smtp::session_to(
                    addr(*port),
                    "x@unknown.invalid",
                    msg,
                    smtp::Timeouts::NORMAL,
                ) {
                    smtp::Outcome::Rejected(550) => {}
                    other => anyhow::bail!(
                        "{name}: a domain the directory does not hold got {other:?}, not 550"
                    ),
                }
            }
        }
        Ok(())
    })?
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let mut lab = super::lab("bl", 1, 2)?;
    let sink = rivals::sink(&mut lab, 0, &[])?;
    let dirs = start_directories(&mut lab)?;
    let map = lab.log_dir.join("lookups.map");
    std::fs::write(&map, format!("{DOMAIN} mx\n"))?;
    let cfg = config(&lab, sink, &map, &dirs.toml);
    let rob = rivals::start_robustifier_at(&mut lab, &cfg, addr(SYSTEMS[0].1))?;
    for (_, port) in SYSTEMS.iter().chain([&SLOW]).skip(1) {
        wait_port(&lab.client.ns, addr(*port))?;
    }
    let pids = procs::tree(rob);
    let msg = smtp::message(1024);
    check(&lab, &msg)?;
    let n = s.lookups_sessions;
    for (name, port) in SYSTEMS {
        smtp_source(&lab, addr(port), s.cost_warmup, 1024, CONCURRENCY)
            .with_context(|| format!("warm-up of {name}"))?;
        miss_load(&lab, addr(port), &msg, s.cost_warmup)
            .with_context(|| format!("warm-up of {name}"))?;
    }
    let measure = |name: &str, port: u16, case: &str, warm: bool| -> anyhow::Result<f64> {
        let c0 = procs::cpu_us(&pids);
        if warm {
            smtp_source(&lab, addr(port), n, 1024, CONCURRENCY)
        } else {
            miss_load(&lab, addr(port), &msg, n).map(|_| 0.0)
        }
        .with_context(|| format!("{name}, {case}"))?;
        Ok((procs::cpu_us(&pids) - c0) / n as f64)
    };
    let sources: Vec<(&str, u16)> = SYSTEMS
        .iter()
        .copied()
        .filter(|(n, _)| *n != TEXT)
        .collect();
    for rep in 0..s.lookups_reps {
        for (case, warm) in [("1 KiB, warm cache", true), ("1 KiB, cache miss", false)] {
            // Each source runs back to back with a run of the text map, in a random order,
            // so that the pair meets the same moment of a shared machine.
            let mut pairs = Vec::new();
            for (name, port) in super::shuffled(&sources) {
                let (mut ours, mut text) = (0.0, 0.0);
                for first in super::shuffled(&[true, false]) {
                    if first {
                        ours = measure(name, port, case, warm)?;
                    } else {
                        text = measure(TEXT, SYSTEMS[0].1, case, warm)?;
                    }
                }
                pairs.push((name, ours, text));
            }
            // In the sources' fixed order, so the report lists them alike in every run.
            for (name, _) in &sources {
                let (_, ours, text) = pairs
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .context("a source without a figure")?;
                let case = format!("{case}: {name}");
                ctx.add(SCENARIO, &case, CPU, SUT, *ours);
                ctx.add(SCENARIO, &case, CPU, TEXT, *text);
            }
        }
        println!(
            "bench: lookups CPU: repetition {} of {} done",
            rep + 1,
            s.lookups_reps
        );
    }
    for rep in 0..s.lookups_reps {
        for (case, warm) in [
            ("slow directory, warm cache", true),
            ("slow directory, cache miss", false),
        ] {
            for (name, port) in super::shuffled(&[(SUT, SLOW.1), (TEXT, SYSTEMS[0].1)]) {
                // The recipient is in the cache before the timed sessions (its answer may
                // have expired since the last case).
                serial(&lab, addr(port), &msg, 1, true)?;
                let d = serial(&lab, addr(port), &msg, s.lookups_slow, warm)
                    .with_context(|| format!("{name}, {case}"))?;
                let p = smtp::percentiles(&d, &[0.5, 0.99]);
                ctx.add(SCENARIO, case, P50, name, p[0]);
                ctx.add(SCENARIO, case, P99, name, p[1]);
            }
        }
        println!(
            "bench: lookups slow directory: repetition {} of {} done",
            rep + 1,
            s.lookups_reps
        );
    }
    ctx.note(format!(
        "lookups: one Robustifier, one SMTP service per system on the same VIP and pool; \
         each directory answers the recipient's domain (%d) and refuses unknown domains. \
         CPU is the front-end's scheduler time over {n} sessions per run (warm cache: \
         smtp-source -s {CONCURRENCY} to one recipient; cache miss: {MISS_CLIENTS} threads of \
         our client, each session a new recipient); each source's run is paired with a run of \
         the text map just before or after it (the rival). Slow directory: PostgreSQL through a relay \
         holding each answer {DELAY_MS} ms, {} serial sessions per system and repetition.",
        s.lookups_slow
    ));
    drop(dirs);
    Ok(())
}
