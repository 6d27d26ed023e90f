//! Memory: resident memory of each proxy with many idle SMTP sessions (connected, greeting
//! read, nothing sent), per session.

use std::time::Duration;

use anyhow::Context as _;

use crate::{Ctx, procs, report::Metric, rivals, smtp};

const SCENARIO: &str = "memory";
const PER_SESSION: Metric = Metric {
    name: "RSS per idle session",
    unit: "KiB",
    lower_is_better: true,
};
const TOTAL: Metric = Metric {
    name: "RSS with the sessions open",
    unit: "MiB",
    lower_is_better: true,
};

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let n = s.idle_sessions;
    let mut lab = super::lab("bm", 1, 1)?;
    let sink = rivals::greeter(&mut lab, 0)?;
    let cfg = rivals::robustifier_config(&lab, 0, 1, "", "");
    let rob = rivals::start_robustifier(&mut lab, &cfg)?;
    let hap = rivals::start_haproxy(&mut lab, 1, false)?;
    let ngx = rivals::start_nginx(&mut lab, sink)?;
    let systems = [
        (
            "haproxy",
            rivals::fe_addr(rivals::HAPROXY_PORT),
            procs::tree(hap),
        ),
        ("nginx", rivals::fe_addr(rivals::NGINX_PORT), ngx),
        ("robustifier", rivals::vip(), procs::tree(rob)),
    ];
    let case = format!("{n} idle sessions");
    let ns = lab.client.ns.clone();
    // Baselines of the fresh processes: allocators keep what a repetition freed, so each
    // repetition's figure is against the start, not against the previous repetition.
    let baseline: Vec<f64> = systems.iter().map(|(_, _, p)| procs::rss_kib(p)).collect();
    for rep in 0..s.memory_reps {
        for (name, addr, pids) in super::shuffled(&systems) {
            let i = systems.iter().position(|(n, _, _)| *n == name).unwrap_or(0);
            let before = baseline[i];
            let conns = ns
                .enter(|| smtp::idle_sessions(addr, n))?
                .with_context(|| name.to_owned())?;
            std::thread::sleep(Duration::from_millis(300));
            let after = procs::rss_kib(&pids);
            drop(conns);
            ctx.add(
                SCENARIO,
                &case,
                PER_SESSION,
                name,
                (after - before) / n as f64,
            );
            ctx.add(SCENARIO, &case, TOTAL, name, after / 1024.0);
            // Let the proxy close its side before the next system is measured.
            std::thread::sleep(Duration::from_secs(1));
        }
        println!(
            "bench: memory: repetition {} of {} done",
            rep + 1,
            s.memory_reps
        );
    }
    ctx.note(
        "memory: RSS is VmRSS summed over the proxy's processes (nginx: master, worker, \
         auth_http responder), measured on the fresh process and with the sessions open. HAProxy opens a \
         back-end connection per session at once; nginx and Robustifier greet themselves and \
         connect to a back-end only after the envelope.",
    );
    Ok(())
}
