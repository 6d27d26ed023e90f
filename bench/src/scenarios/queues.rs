//! Dedicated domain queues on the relay lab (`robustifier_lab::relay_lab`): a relay
//! cluster ("mx"), an idle pool "slowq", fast.example accepting and slow.example answering
//! 451.
//!
//! 1. Healthy-domain latency: N messages for slow.example go straight to the "mx" relays
//!    (several messages per session, one recipient each) and wait there deferred; then M
//!    fast.example messages through the VIP, each carrying its send time in a header, are
//!    timed to their file in fast.example's maildir (its mtime), after 20 untimed ones. Then a `[[domain_queue]]`
//!    for slow.example and a reload make the front-end move that mail to "slowq"; once the
//!    move is done, M more fast.example messages are timed. System "robustifier" is the
//!    isolated cluster and "not isolated" the same cluster before, so the ratio is
//!    after / before. The reload's move is timed too (reload to every source done).
//! 2. Move rate per make: K slow.example messages queued on one relay (Postfix, Exim,
//!    OpenSMTPD, in random order; Postfix's all deferred, OpenSMTPD's behind a route that
//!    tempfailed), `robustifier queue move --domain slow.example --to slowq
//!    --wait` timed (it polls every second, so a figure may be up to a second long).
//!
//! The whole mail system (proxy, MTAs, agents) runs on both CPUs here: the load is light
//! and the system under test is the cluster, not one process.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use robustifier_lab::{
    Lab, cli,
    mail::Make,
    relay_lab::{RelayLab, SLOW},
    topology::VIP_SMTP,
    unique_prefix,
};
use serde_json::Value;

use crate::{Ctx, procs, report::Metric, report::SUT};

const SCENARIO: &str = "queues";
/// The same relays before the slow domain had a queue of its own.
const BEFORE: &str = "not isolated";
const P50: Metric = Metric {
    name: "fast.example delivery latency p50",
    unit: "ms",
    lower_is_better: true,
};
const P99: Metric = Metric {
    name: "fast.example delivery latency p99",
    unit: "ms",
    lower_is_better: true,
};
const ISOLATION_RATE: Metric = Metric {
    name: "reload's move to slowq",
    unit: "messages/s",
    lower_is_better: false,
};
const MOVE_RATE: Metric = Metric {
    name: "queue move --wait",
    unit: "messages/s",
    lower_is_better: false,
};
/// Messages per SMTP session when filling the queues.
const PER_SESSION: usize = 50;
/// Bounds of every wait: filling, deferral, delivery, a move.
const WITHIN: Duration = Duration::from_secs(600);
const HEADER_SENT: &str = "X-Bench-Sent";
/// fast.example messages sent before the first timed ones.
const WARM_UP: usize = 20;

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    // The relay cluster is the system under test: let it (and everything the lab starts
    // from this thread) use every CPU, and pin back to the load CPU afterwards.
    unpin_current()?;
    let r = isolation(ctx).and_then(|()| move_rates(ctx));
    procs::pin_current(procs::LOAD_CPU)?;
    r
}

fn isolation(ctx: &mut Ctx) -> anyhow::Result<()> {
    let (n, m) = (ctx.sizes.queues_slow, ctx.sizes.queues_fast);
    let lab = Lab::up(&unique_prefix("bq"), RelayLab::plan(2))?;
    let mut r = RelayLab::start(lab, &[Make::Postfix, Make::Postfix])?;
    let case = format!("{n} deferred for {SLOW}");
    fill(&r, &(0..r.mx).collect::<Vec<_>>(), n, "slow")?;
    wait_queued(&r, &(0..r.mx).collect::<Vec<_>>(), n, n)?;
    println!("bench: queues: {n} messages for {SLOW} deferred on the mx relays");
    // Not timed: the first messages of a run open the relays' connections to
    // fast.example and would count against "before" only.
    fast_latencies(&r, WARM_UP.min(m), "warm-up")?;
    let before = fast_latencies(&r, m, "before")?;

    let cfg = r.frontend_config(&format!(
        "[[domain_queue]]\ndomains = [\"{SLOW}\"]\npool = \"slowq\""
    ));
    std::fs::write(r.config_path(), cfg)?;
    let t = Instant::now();
    control(&r, &["reload"])?;
    let moved = wait_isolated(&r, n)?;
    let took = t.elapsed();
    println!(
        "bench: queues: {moved} messages moved to slowq by the reload in {:.1} s",
        took.as_secs_f64()
    );
    let after = fast_latencies(&r, m, "after")?;

    for (system, d) in [(BEFORE, &before), (SUT, &after)] {
        let p = crate::smtp::percentiles(d, &[0.5, 0.99]);
        ctx.add(SCENARIO, &case, P50, system, p[0]);
        ctx.add(SCENARIO, &case, P99, system, p[1]);
    }
    ctx.add(
        SCENARIO,
        &format!("{n} messages, 2 Postfix relays"),
        ISOLATION_RATE,
        SUT,
        moved as f64 / took.as_secs_f64(),
    );
    r.lab.down()
}

fn move_rates(ctx: &mut Ctx) -> anyhow::Result<()> {
    let k = ctx.sizes.queues_move;
    let makes = [Make::Postfix, Make::Exim, Make::OpenSmtpd];
    let lab = Lab::up(&unique_prefix("bqm"), RelayLab::plan(makes.len()))?;
    let mut r = RelayLab::start(lab, &makes)?;
    for rep in 0..ctx.sizes.queues_reps {
        for i in super::shuffled(&[0, 1, 2]) {
            let make = makes[i];
            fill(&r, &[i], k, &format!("m{rep}-{i}"))?;
            // Postfix tries each message once. OpenSMTPD, once the route to slow.example
            // has tempfailed, keeps the rest queued behind the route's delay (minutes):
            // one deferral is the state to move from. Exim's listing does not say whether
            // a message was deferred: queued it is.
            let deferred = match make {
                Make::Postfix => k,
                Make::OpenSmtpd => 1,
                Make::Exim => 0,
            };
            wait_queued(&r, &[i], k, deferred)?;
            let t = Instant::now();
            let report = control(
                &r,
                &[
                    "queue", "move", "--domain", SLOW, "--to", "slowq", "--wait", "600", "--json",
                ],
            )?;
            let took = t.elapsed();
            let report: Value = serde_json::from_str(&report).context("queue move --json")?;
            let moved = sum_moved(&report, &[r.relay_name(i)]);
            ensure!(
                moved == k as u64,
                "{make:?}: {moved} of {k} moved: {report:#}"
            );
            let rate = moved as f64 / took.as_secs_f64();
            println!(
                "bench: queues: {make:?} moved {moved} in {:.1} s ({rate:.1}/s)",
                took.as_secs_f64()
            );
            ctx.add(
                SCENARIO,
                &format!("{k} messages, {} relay", format!("{make:?}").to_lowercase()),
                MOVE_RATE,
                SUT,
                rate,
            );
        }
    }
    r.lab.down()
}

/// Lets the calling thread (and what it starts) run on every CPU.
fn unpin_current() -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for c in 0..cpus.min(nix::sched::CpuSet::count()) {
        set.set(c)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// `robustifier <args> --socket <the front-end's>`: its stdout, or its stderr as the error.
fn control(r: &RelayLab, args: &[&str]) -> anyhow::Result<String> {
    let socket = r.control_socket();
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.extend([std::ffi::OsStr::new("--socket"), socket.as_os_str()]);
    let out = cli::run(&all);
    ensure!(
        out.status.success(),
        "robustifier {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One message to `rcpt`, with `Message-ID: <id@bench.invalid>` and, when `sent` is
/// given, its send time (Unix nanoseconds) in a header.
fn message(rcpt: &str, id: &str, sent: Option<u128>) -> Vec<u8> {
    let mut m = format!(
        "From: bench@client.invalid\r\nTo: {rcpt}\r\nSubject: queues bench\r\n\
         Message-ID: <{id}@bench.invalid>\r\n"
    );
    if let Some(ns) = sent {
        m.push_str(&format!("{HEADER_SENT}: {ns}\r\n"));
    }
    m.push_str("\r\n");
    for _ in 0..12 {
        m.push_str(&"x".repeat(76));
        m.push_str("\r\n");
    }
    m.push_str(".\r\n");
    m.into_bytes()
}

/// Reads one reply (all its lines); returns its code.
fn reply(r: &mut BufReader<TcpStream>) -> anyhow::Result<u16> {
    loop {
        let mut line = String::new();
        ensure!(r.read_line(&mut line)? > 0, "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("bad reply {line:?}"));
        }
    }
}

/// One SMTP session to `to` sending every message `next` yields (until `None`), each in
/// a transaction of its own to `rcpt`; fails at the first reply that is not a success.
fn session(
    to: SocketAddr,
    rcpt: &str,
    mut next: impl FnMut() -> Option<Vec<u8>>,
) -> anyhow::Result<usize> {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connect {to}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut step = |w: &mut TcpStream, cmd: &[u8], want: u16| -> anyhow::Result<()> {
        w.write_all(cmd)?;
        let code = reply(&mut r)?;
        ensure!(
            code / 100 == want,
            "{to}: {code} to {:?}",
            String::from_utf8_lossy(cmd).trim_end()
        );
        Ok(())
    };
    step(&mut w, b"", 2)?;
    step(&mut w, b"EHLO client.invalid\r\n", 2)?;
    let rcpt_cmd = format!("RCPT TO:<{rcpt}>\r\n");
    let mut sent = 0;
    while let Some(msg) = next() {
        step(&mut w, b"MAIL FROM:<bench@client.invalid>\r\n", 2)?;
        step(&mut w, rcpt_cmd.as_bytes(), 2)?;
        step(&mut w, b"DATA\r\n", 3)?;
        step(&mut w, &msg, 2)?;
        sent += 1;
    }
    let _ = w.write_all(b"QUIT\r\n");
    Ok(sent)
}

/// Sends `n` slow.example messages straight to the relays `relays` (shared out evenly,
/// one thread per relay, [`PER_SESSION`] messages per session), from the front-end's
/// namespace on the back-end segment.
fn fill(r: &RelayLab, relays: &[usize], n: usize, tag: &str) -> anyhow::Result<()> {
    let rcpt = r.slow.rcpt();
    let deadline = Instant::now() + WITHIN;
    let prefix = &r.lab.prefix;
    r.lab.frontends[0].ns.enter(|| {
        std::thread::scope(|sc| {
            let hs: Vec<_> = relays
                .iter()
                .enumerate()
                .map(|(j, &i)| {
                    let to = r.relays[i].smtp_addr();
                    let share = n / relays.len() + usize::from(j < n % relays.len());
                    let rcpt = &rcpt;
                    sc.spawn(move || -> anyhow::Result<()> {
                        let mut done = 0;
                        while done < share {
                            ensure!(
                                Instant::now() < deadline,
                                "{done} of {share} sent to {to} within {WITHIN:?}"
                            );
                            let batch = PER_SESSION.min(share - done);
                            let mut k = 0;
                            let sent = session(to, rcpt, || {
                                (k < batch).then(|| {
                                    k += 1;
                                    let id = format!("{prefix}-{tag}-{i}-{}", done + k);
                                    message(rcpt, &id, None)
                                })
                            })?;
                            done += sent;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in hs {
                h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
            }
            Ok(())
        })
    })?
}

/// slow.example's figures on relay `i` from `queue status --json`: (queued, deferred).
fn slow_queue(status: &Value, backend: &str) -> (u64, u64) {
    status["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["backend"] == backend)
        .flat_map(|b| b["domains"].as_array().into_iter().flatten())
        .filter(|d| d["domain"] == SLOW)
        .fold((0, 0), |(q, d), x| {
            (
                q + x["queued"].as_u64().unwrap_or(0),
                d + x["deferred"].as_u64().unwrap_or(0),
            )
        })
}

/// Waits until the relays `relays` hold `n` slow.example messages between them, at least
/// `deferred` of them deferred (tried and refused).
fn wait_queued(r: &RelayLab, relays: &[usize], n: usize, deferred: usize) -> anyhow::Result<()> {
    let names: Vec<String> = relays.iter().map(|&i| r.relay_name(i)).collect();
    RelayLab::eventually(
        &format!("{n} messages for {SLOW} queued on {names:?}"),
        WITHIN,
        || {
            let s = r.queue_status(SLOW)?;
            let (q, d) = names.iter().fold((0, 0), |(q, d), b| {
                let (bq, bd) = slow_queue(&s, b);
                (q + bq, d + bd)
            });
            Ok(if q == n as u64 && d >= deferred as u64 {
                Ok(())
            } else {
                Err((q, d))
            })
        },
    )
}

/// Messages moved, per `queue move`/`queue moves --json`, by the back-ends `backends`.
fn sum_moved(report: &Value, backends: &[String]) -> u64 {
    report["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| backends.iter().any(|n| b["backend"] == n.as_str()))
        .map(|b| b["status"]["moved"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until the reload's move is done on every "mx" relay and they hold no
/// slow.example mail; returns the messages moved.
fn wait_isolated(r: &RelayLab, n: usize) -> anyhow::Result<u64> {
    let mx: Vec<String> = (0..r.mx).map(|i| r.relay_name(i)).collect();
    RelayLab::eventually(
        &format!("{n} messages for {SLOW} moved to slowq"),
        WITHIN,
        || {
            let text = control(r, &["queue", "moves", "--domain", SLOW, "--json"])?;
            let report: Value = serde_json::from_str(&text).context("queue moves --json")?;
            let done = mx.iter().all(|name| {
                report["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|b| b["backend"] == name.as_str() && b["status"]["state"] == "done")
            });
            let moved = sum_moved(&report, &mx);
            if !done || moved < n as u64 {
                return Ok(Err(report));
            }
            let s = r.queue_status(SLOW)?;
            let left: u64 = mx.iter().map(|b| slow_queue(&s, b).0).sum();
            Ok(if left == 0 { Ok(moved) } else { Err(s) })
        },
    )
}

/// Sends `m` fast.example messages through the VIP one after the other, one per session,
/// each stamped with its send time, and waits until all are in fast.example's maildir;
/// returns each one's arrival (file mtime) minus send time.
fn fast_latencies(r: &RelayLab, m: usize, tag: &str) -> anyhow::Result<Vec<Duration>> {
    let rcpt = r.fast.rcpt();
    let prefix = format!("{}-fast-{tag}-", r.lab.prefix);
    let vip = SocketAddr::new(VIP_SMTP.into(), 25);
    let deadline = Instant::now() + WITHIN;
    r.lab.client.ns.enter(|| -> anyhow::Result<()> {
        for k in 0..m {
            ensure!(
                Instant::now() < deadline,
                "{k} of {m} sent within {WITHIN:?}"
            );
            let mut once = true;
            session(vip, &rcpt, || {
                std::mem::take(&mut once).then(|| {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos();
                    message(&rcpt, &format!("{prefix}{k}"), Some(now))
                })
            })?;
        }
        Ok(())
    })??;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        got = r
            .fast
            .host
            .message_files(&rcpt)
            .iter()
            .filter_map(|p| latency(p, &prefix))
            .collect();
        if got.len() >= m {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if got.len() < m {
        bail!(
            "{} of {m} fast.example messages ({tag}) delivered",
            got.len()
        );
    }
    Ok(got)
}

/// A delivered file's mtime minus its send-time header, if it is one of ours (its
/// Message-ID starts with `prefix`).
fn latency(path: &Path, prefix: &str) -> Option<Duration> {
    let raw = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let header = text.split("\r\n\r\n").next()?.split("\n\n").next()?;
    let value = |name: &str| {
        header.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let id = value("message-id")?.trim_start_matches('<');
    if !id.starts_with(prefix) {
        return None;
    }
    let sent = UNIX_EPOCH + Duration::from_nanos(value(HEADER_SENT)?.parse().ok()?);
    let arrived = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(arrived.duration_since(sent).unwrap_or_default())
}
