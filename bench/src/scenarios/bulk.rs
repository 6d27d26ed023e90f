//! Bulk relay: 10 MiB messages through each proxy, a few sessions at a time: SMTP here
//! (smtp-source to smtp-sink), POP3 RETR from Dovecot in [`super::bulk_pop3`].
//! Figures: proxy CPU-seconds per GB relayed and throughput; HAProxy with and without
//! splice(2).

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::{Ctx, procs, report::Metric, rivals};

pub(super) const SCENARIO: &str = "bulk";
pub(super) const SIZE: usize = 10 * 1024 * 1024;
const CASE: &str = "10 MiB messages";

pub(super) const CPU: Metric = Metric {
    name: "proxy CPU per GB",
    unit: "CPU-s/GB",
    lower_is_better: true,
};
pub(super) const THROUGHPUT: Metric = Metric {
    name: "throughput",
    unit: "MB/s",
    lower_is_better: false,
};

/// The SMTP case, then the POP3 case (each in its own lab); both run when one fails.
pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let smtp = run_smtp(ctx).context("SMTP case");
    let pop3 = super::bulk_pop3::run(ctx).context("POP3 case");
    match (smtp, pop3) {
        (Err(a), Err(b)) => Err(anyhow::anyhow!("{a:#}; {b:#}")),
        (a, b) => a.and(b),
    }
}

fn run_smtp(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let n = s.bulk_messages;
    let mut lab = super::lab("bb", 1, 1)?;
    let sink = rivals::sink(&mut lab, 0, &[])?;
    rivals::route_direct(&lab)?;
    let cfg = rivals::robustifier_config(&lab, 0, 1, "", "");
    let rob = rivals::start_robustifier(&mut lab, &cfg)?;
    let hap = rivals::start_haproxy(&mut lab, 1, false)?;
    let ngx = rivals::start_nginx(&mut lab, sink)?;
    let systems: Vec<(&str, SocketAddr, Vec<i32>)> = vec![
        ("direct", sink, vec![]),
        (
            "haproxy",
            rivals::fe_addr(rivals::HAPROXY_PORT),
            procs::tree(hap),
        ),
        (
            "haproxy-splice",
            rivals::fe_addr(rivals::HAPROXY_SPLICE_PORT),
            procs::tree(hap),
        ),
        ("nginx", rivals::fe_addr(rivals::NGINX_PORT), ngx),
        ("robustifier", rivals::vip(), procs::tree(rob)),
    ];
    for (name, addr, _) in &systems {
        super::cost::smtp_source(&lab, *addr, 2, SIZE, 2)
            .with_context(|| format!("warm-up of {name}"))?;
    }
    for rep in 0..s.reps {
        for (name, addr, pids) in super::shuffled(&systems) {
            let cpu0 = procs::cpu_us(&pids);
            let secs = super::cost::smtp_source(&lab, addr, n, SIZE, 4)
                .with_context(|| name.to_owned())?;
            let cpu = (procs::cpu_us(&pids) - cpu0) / 1e6;
            let gb = (n * SIZE) as f64 / 1e9;
            if !pids.is_empty() {
                ctx.add(SCENARIO, CASE, CPU, name, cpu / gb);
            }
            ctx.add(SCENARIO, CASE, THROUGHPUT, name, gb * 1000.0 / secs);
        }
        println!("bench: bulk: repetition {} of {} done", rep + 1, s.reps);
    }
    ctx.note(
        "bulk: 4 concurrent smtp-source sessions of 10 MiB each; CPU per GB is utime+stime \
         of the proxy's processes (splice moves data in the kernel, mostly outside them).",
    );
    Ok(())
}
