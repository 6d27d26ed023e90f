//! SMTP session cost: Postfix smtp-source -> {direct, HAProxy, nginx mail, Robustifier} ->
//! smtp-sink, one message per session. Proxy CPU per session from utime+stime of the proxy
//! processes over a concurrent run, sessions per second of that run, and serial session
//! latency (our own client) with what each proxy adds over the direct path.

use std::{net::SocketAddr, time::Instant};

use anyhow::Context as _;
use robustifier_lab::{
    Lab,
    mail::{MailHost, Make, Users},
};

use crate::{
    Ctx,
    procs::{self, LOAD_CPU},
    report::Metric,
    rivals, smtp,
};

const SCENARIO: &str = "cost";
const CONCURRENCY: usize = 20;

const CPU: Metric = Metric {
    name: "proxy CPU per session",
    unit: "us",
    lower_is_better: true,
};
/// nginx mail's auth_http responder (ours, compiled optimised), apart from nginx's own
/// processes: nginx asks it once per session.
const HELPER_CPU: Metric = Metric {
    name: "auth_http responder CPU per session",
    unit: "us",
    lower_is_better: true,
};
const RATE: Metric = Metric {
    name: "sessions per second",
    unit: "1/s",
    lower_is_better: false,
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
const ADD50: Metric = Metric {
    name: "added latency p50",
    unit: "ms",
    lower_is_better: true,
};
const ADD99: Metric = Metric {
    name: "added latency p99",
    unit: "ms",
    lower_is_better: true,
};

#[derive(Clone)]
struct System {
    name: &'static str,
    addr: SocketAddr,
    pids: Vec<i32>,
    /// Helper processes the system needs, whose CPU is reported apart (nginx's auth_http
    /// responder).
    helpers: Vec<i32>,
}

/// Runs smtp-source in the client namespace on the load CPU: `n` messages of `size` bytes,
/// one per session, `concurrency` sessions at a time, for two minutes at most. Returns the
/// wall time in seconds.
pub fn smtp_source(
    lab: &Lab,
    to: SocketAddr,
    n: usize,
    size: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = lab
        .client
        .ns
        .command("timeout")
        .args(["120", "taskset", "-c", &LOAD_CPU.to_string(), "smtp-source"])
        .args(["-s", &concurrency.min(n).to_string(), "-m", &n.to_string()])
        .args(["-l", &size.to_string(), "-M", "client.invalid"])
        .args(["-f", "bench@client.invalid", "-t", smtp::RCPT])
        .arg(to.to_string())
        .output()
        .context("smtp-source")?;
    anyhow::ensure!(
        out.status.success(),
        "smtp-source to {to} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(t.elapsed().as_secs_f64())
}

/// `n` serial sessions from the client namespace; their durations (failures are errors).
pub fn serial(
    lab: &Lab,
    to: SocketAddr,
    msg: &[u8],
    n: usize,
) -> anyhow::Result<Vec<std::time::Duration>> {
    lab.client.ns.enter(|| {
        (0..n)
            .map(|i| {
                smtp::session(to, msg, smtp::Timeouts::NORMAL)
                    .with_context(|| format!("serial session {i} to {to}"))
            })
            .collect()
    })?
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let mut lab = super::lab("bc", 1, 1)?;
    let sink = rivals::sink(&mut lab, 0, &[])?;
    rivals::route_direct(&lab)?;
    let cfg = rivals::robustifier_config(&lab, 0, 1, "", "");
    let rob = rivals::start_robustifier(&mut lab, &cfg)?;
    let hap = rivals::start_haproxy(&mut lab, 1, false)?;
    let ngx = rivals::start_nginx(&mut lab, sink)?;
    let systems = vec![
        System {
            name: "direct",
            addr: sink,
            pids: vec![],
            helpers: vec![],
        },
        System {
            name: "haproxy",
            addr: rivals::fe_addr(rivals::HAPROXY_PORT),
            pids: procs::tree(hap),
            helpers: vec![],
        },
        System {
            name: "nginx",
            addr: rivals::fe_addr(rivals::NGINX_PORT),
            // Master and worker; the responder comes last.
            pids: ngx[..ngx.len().saturating_sub(1)].to_vec(),
            helpers: ngx[ngx.len().saturating_sub(1)..].to_vec(),
        },
        System {
            name: "robustifier",
            addr: rivals::vip(),
            pids: procs::tree(rob),
            helpers: vec![],
        },
    ];
    for (case, size) in [("1 KiB", 1024usize), ("100 KiB", 100 * 1024)] {
        let msg = smtp::message(size);
        for sys in &systems {
            smtp_source(&lab, sys.addr, s.cost_warmup, size, CONCURRENCY)
                .with_context(|| format!("warm-up of {}", sys.name))?;
            serial(&lab, sys.addr, &msg, s.cost_warmup.min(20))?;
        }
        measure(ctx, &lab, &systems, case, size, true)?;
    }
    if ctx.mode == crate::Mode::Full {
        // The same sessions to a real MTA in the sink's place: Postfix's smtpd, which
        // offers CHUNKING as shipped (smtp-sink does not), writing each message to a
        // Maildir. Full mode only: starting Postfix is not worth a smoke run's time.
        let _host = postfix_in_place_of_sink(&mut lab, sink)?;
        let (case, size) = ("1 KiB, Postfix back-end", 1024usize);
        let msg = smtp::message(size);
        for sys in &systems {
            ready(&lab, sys, &msg)?;
            smtp_source(&lab, sys.addr, s.cost_warmup, size, CONCURRENCY)
                .with_context(|| format!("warm-up of {} ({case})", sys.name))?;
        }
        // No added latency here: Postfix's own delivery (a Maildir file written and
        // synced per message) varies by more than a proxy adds, and the differences came
        // out negative as often as not.
        measure(ctx, &lab, &systems, case, size, false)?;
    }
    ctx.note(
        "cost: CPU is utime+stime of the proxy's processes (nginx: master and worker; its \
         auth_http responder, compiled optimised, apart: nginx mail needs one, so its whole \
         cost is the sum) over a run of smtp-source -s 20; kernel softirq time of the \
         forwarded/proxied packets is not in it. \"direct\" is kernel forwarding through the \
         front-end namespace. The back-end is smtp-sink; in \"1 KiB, Postfix back-end\" \
         (full mode) it is Postfix's smtpd with its Maildir delivery, the one back-end of \
         the run that offers CHUNKING, as Postfix and Exim do when shipped.",
    );
    Ok(())
}

/// Ends the smtp-sink on back-end 0 and starts the lab's Postfix (with its Dovecot) at the
/// same address, pinned to the load CPU, with the bench's recipient as a Maildir user.
fn postfix_in_place_of_sink(lab: &mut Lab, sink: SocketAddr) -> anyhow::Result<MailHost> {
    if let Some(d) = lab.daemons().iter_mut().find(|d| d.name == "sink0") {
        d.stop().context("stopping smtp-sink")?;
    }
    let users = Users::new().with(smtp::RCPT, "bench-unused");
    let host = MailHost::start(lab, 0, Make::Postfix, &users).context("Postfix back-end")?;
    anyhow::ensure!(
        host.smtp_addr() == sink,
        "Postfix listens on {}, not at the sink's {sink}",
        host.smtp_addr()
    );
    for pid in host.processes() {
        procs::pin_pid(pid, LOAD_CPU)?;
    }
    Ok(host)
}

/// Waits until a session through `sys` is accepted again: after the back-end changed,
/// each proxy's health checks take a moment to find it up.
fn ready(lab: &Lab, sys: &System, msg: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match serial(lab, sys.addr, msg, 1) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("{} never took a message", sys.name)));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// The repetitions of one case: each system in a shuffled order per repetition.
fn measure(
    ctx: &mut Ctx,
    lab: &Lab,
    systems: &[System],
    case: &'static str,
    size: usize,
    added_latency: bool,
) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let msg = smtp::message(size);
    for rep in 0..s.reps {
        let mut lat = Vec::new();
        for sys in super::shuffled(systems) {
            let cpu0 = procs::cpu_us(&sys.pids);
            let helper0 = procs::cpu_us(&sys.helpers);
            let secs = smtp_source(lab, sys.addr, s.cost_sessions, size, CONCURRENCY)
                .with_context(|| format!("{} {case}", sys.name))?;
            let cpu = procs::cpu_us(&sys.pids) - cpu0;
            let helper = procs::cpu_us(&sys.helpers) - helper0;
            if !sys.pids.is_empty() {
                ctx.add(SCENARIO, case, CPU, sys.name, cpu / s.cost_sessions as f64);
            }
            if !sys.helpers.is_empty() {
                let per = helper / s.cost_sessions as f64;
                ctx.add(SCENARIO, case, HELPER_CPU, sys.name, per);
            }
            ctx.add(
                SCENARIO,
                case,
                RATE,
                sys.name,
                s.cost_sessions as f64 / secs,
            );
            let d = serial(lab, sys.addr, &msg, s.cost_serial)?;
            let p = smtp::percentiles(&d, &[0.5, 0.99]);
            ctx.add(SCENARIO, case, P50, sys.name, p[0]);
            ctx.add(SCENARIO, case, P99, sys.name, p[1]);
            lat.push((sys.name, p));
        }
        let direct = lat
            .iter()
            .find(|(n, _)| *n == "direct")
            .map(|(_, p)| p.clone());
        if let Some(d) = direct.filter(|_| added_latency) {
            for (name, p) in lat.iter().filter(|(n, _)| *n != "direct") {
                ctx.add(SCENARIO, case, ADD50, name, p[0] - d[0]);
                ctx.add(SCENARIO, case, ADD99, name, p[1] - d[1]);
            }
        }
        println!(
            "bench: cost {case}: repetition {} of {} done",
            rep + 1,
            s.reps
        );
    }
    Ok(())
}
