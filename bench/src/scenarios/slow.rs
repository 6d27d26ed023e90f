//! One slow back-end of four (smtp-sink greeting one second late): session latency p50/p99
//! from four concurrent clients, Robustifier's load-aware choice against HAProxy's
//! roundrobin and leastconn.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{Ctx, report::Metric, rivals, smtp};

const SCENARIO: &str = "slow";
const CLIENTS: usize = 4;
const P50: Metric = Metric {
    name: "session latency p50",
    unit: "ms",
    lower_is_better: true,
};
const P99: Metric = Metric {
    name: "session latency p99",
    unit: "ms",
    lower_is_better: true,
};
const SLOW_SHARE: Metric = Metric {
    name: "sessions over 500 ms",
    unit: "%",
    lower_is_better: true,
};

/// `n` sessions from `CLIENTS` concurrent clients in the client namespace; all durations.
fn load(
    lab: &robustifier_lab::Lab,
    to: SocketAddr,
    msg: &[u8],
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    lab.client.ns.enter(|| {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let count = n / CLIENTS + usize::from(c < n % CLIENTS);
                    sc.spawn(move || -> anyhow::Result<Vec<Duration>> {
                        (0..count)
                            .map(|_| smtp::session(to, msg, smtp::Timeouts::NORMAL))
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

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let mut lab = super::lab("bs", 1, 4)?;
    for i in 0..3 {
        rivals::sink(&mut lab, i, &[])?;
    }
    rivals::sink(&mut lab, 3, &["-W", "CONNECT:1"])?;
    let cfg = rivals::robustifier_config(&lab, 0, 4, "", "");
    rivals::start_robustifier(&mut lab, &cfg)?;
    rivals::start_haproxy(&mut lab, 4, false)?;
    // Robustifier learns response times from its probes; wait until it knows be4 is slow.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = rivals::maps(&lab)?;
        let slow = m["backends"][3]["response_us"].as_u64().unwrap_or(0);
        let up = m["backends"]
            .as_array()
            .is_some_and(|b| b.iter().all(|b| b["state"] == "up"));
        if slow >= 500_000 && up {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Robustifier never saw the slow back-end: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let systems = [
        ("haproxy-roundrobin", rivals::fe_addr(rivals::HAPROXY_PORT)),
        (
            "haproxy-leastconn",
            rivals::fe_addr(rivals::HAPROXY_LEASTCONN_PORT),
        ),
        ("robustifier", rivals::vip()),
    ];
    let msg = smtp::message(1024);
    for (name, addr) in &systems {
        load(&lab, *addr, &msg, CLIENTS * 2).with_context(|| format!("warm-up of {name}"))?;
    }
    for rep in 0..s.slow_reps {
        for (name, addr) in super::shuffled(&systems) {
            let d = load(&lab, addr, &msg, s.slow_sessions).with_context(|| name.to_owned())?;
            let p = smtp::percentiles(&d, &[0.5, 0.99]);
            let case = "1 of 4 greets 1 s late";
            ctx.add(SCENARIO, case, P50, name, p[0]);
            ctx.add(SCENARIO, case, P99, name, p[1]);
            let slow = d.iter().filter(|d| d.as_millis() >= 500).count();
            ctx.add(
                SCENARIO,
                case,
                SLOW_SHARE,
                name,
                100.0 * slow as f64 / d.len() as f64,
            );
        }
        println!(
            "bench: slow: repetition {} of {} done",
            rep + 1,
            s.slow_reps
        );
    }
    Ok(())
}
