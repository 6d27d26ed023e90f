//! Overload: a burst of five times capacity (two back-ends of four sessions each, every
//! message held a second at the back-end), half of it premium mail. Robustifier's groups
//! (premium served to the hard limit and waiting up to 5 s for a slot, regular deflected
//! early with 451) against HAProxy
//! with `maxconn 4` per server and a 5 s queue (it cannot tell premium from regular).
//! Figures: share of premium and regular sessions delivered, share deflected with a 4xx
//! reply, share that ended without any reply (timeout, reset, closed), and the back-ends'
//! peak concurrent sessions.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use crate::{
    Ctx,
    report::Metric,
    rivals,
    smtp::{self, Outcome},
};

const SCENARIO: &str = "overload";
const PER_BACKEND: usize = 4;
const BACKENDS: usize = 2;
const OVERLOAD: usize = 5;

fn pct(name: &'static str) -> Metric<'static> {
    Metric {
        name,
        unit: "%",
        lower_is_better: false,
    }
}
const P99: Metric = Metric {
    name: "delivered session p99",
    unit: "ms",
    lower_is_better: true,
};
const PEAK: Metric = Metric {
    name: "peak back-end sessions (limit 4)",
    unit: "sessions",
    lower_is_better: true,
};

/// One burst: every session at once; (premium?, outcome) each, and the peak sessions any
/// back-end held meanwhile.
fn burst(
    lab: &robustifier_lab::Lab,
    to: SocketAddr,
) -> anyhow::Result<(Vec<(bool, Outcome)>, usize)> {
    let n = PER_BACKEND * BACKENDS * OVERLOAD;
    let msg = smtp::message(1024);
    let done = AtomicBool::new(false);
    let peak = AtomicUsize::new(0);
    let backends: Vec<_> = lab.backends.iter().map(|b| b.ns.clone()).collect();
    let results = std::thread::scope(|sc| {
        sc.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                for ns in &backends {
                    let out = ns
                        .sh("ss", &["-Htn", "state", "established", "( sport = :25 )"])
                        .unwrap_or_default();
                    peak.fetch_max(out.lines().count(), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let r = lab.client.ns.enter(|| {
            std::thread::scope(|inner| {
                let hs: Vec<_> = (0..n)
                    .map(|i| {
                        let msg = &msg;
                        inner.spawn(move || {
                            let premium = i % 2 == 0;
                            let rcpt = if premium {
                                format!("u{i}@vip.example")
                            } else {
                                format!("u{i}@regular.example")
                            };
                            let t = smtp::Timeouts {
                                connect: Duration::from_secs(5),
                                io: Duration::from_secs(15),
                            };
                            (premium, smtp::session_to(to, &rcpt, msg, t))
                        })
                    })
                    .collect();
                hs.into_iter()
                    .filter_map(|h| h.join().ok())
                    .collect::<Vec<_>>()
            })
        });
        done.store(true, Ordering::Relaxed);
        r
    })?;
    Ok((results, peak.load(Ordering::Relaxed)))
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let mut lab = super::lab("bo", 1, BACKENDS)?;
    for i in 0..BACKENDS {
        rivals::sink(&mut lab, i, &["-w", "1"])?;
    }
    // Premium sessions may wait as long as HAProxy's queue (5 s) for a slot; regular
    // ones are deflected at once.
    let groups = "[[group]]\nname = \"premium\"\nshare = 1.0\ndomains = [\"vip.example\"]\nwait_ms = 5000\n\n\
                  [[group]]\nname = \"regular\"\nshare = 0.5\n";
    let cfg = rivals::robustifier_config(
        &lab,
        0,
        BACKENDS,
        groups,
        &format!("[pool.thresholds]\nsessions = {PER_BACKEND}\n"),
    );
    rivals::start_robustifier(&mut lab, &cfg)?;
    rivals::start_haproxy_on(
        &mut lab,
        0,
        BACKENDS,
        false,
        &format!("maxconn {PER_BACKEND}"),
    )?;
    let systems = [
        ("haproxy", rivals::fe_addr(rivals::HAPROXY_PORT)),
        ("robustifier", rivals::vip()),
    ];
    let case = format!("{OVERLOAD}x capacity burst");
    for rep in 0..s.overload_reps {
        for (name, addr) in super::shuffled(&systems) {
            let (results, peak) = burst(&lab, addr)?;
            let share = |premium: bool, f: &dyn Fn(&Outcome) -> bool| {
                let all: Vec<_> = results.iter().filter(|(p, _)| *p == premium).collect();
                100.0 * all.iter().filter(|(_, o)| f(o)).count() as f64 / all.len().max(1) as f64
            };
            let delivered = |o: &Outcome| matches!(o, Outcome::Delivered(_));
            let deferred = |o: &Outcome| matches!(o, Outcome::Deferred(_));
            let failed = |o: &Outcome| matches!(o, Outcome::Failed(_) | Outcome::Refused(_));
            ctx.add(
                SCENARIO,
                &case,
                pct("premium delivered"),
                name,
                share(true, &delivered),
            );
            ctx.add(
                SCENARIO,
                &case,
                pct("regular delivered"),
                name,
                share(false, &delivered),
            );
            ctx.add(
                SCENARIO,
                &case,
                pct("regular deflected with 4xx"),
                name,
                share(false, &deferred),
            );
            let no_reply = (share(true, &failed) + share(false, &failed)) / 2.0;
            ctx.add(
                SCENARIO,
                &case,
                Metric {
                    name: "sessions ended without a reply",
                    unit: "%",
                    lower_is_better: true,
                },
                name,
                no_reply,
            );
            ctx.add(SCENARIO, &case, PEAK, name, peak as f64);
            let took: Vec<Duration> = results
                .iter()
                .filter_map(|(_, o)| match o {
                    Outcome::Delivered(d) => Some(*d),
                    _ => None,
                })
                .collect();
            if !took.is_empty() {
                let p = smtp::percentiles(&took, &[0.99]);
                ctx.add(SCENARIO, &case, P99, name, p[0]);
            }
            // Let the back-ends drain before the next burst.
            std::thread::sleep(Duration::from_secs(2));
        }
        println!(
            "bench: overload: repetition {} of {} done",
            rep + 1,
            s.overload_reps
        );
    }
    ctx.note(
        "overload: 40 sessions at once (half to vip.example, the premium group), two \
         smtp-sink back-ends answering the data after 1 s; peak sessions counted with ss every \
         20 ms (a health probe may add one). Robustifier's premium group waits up to 5 s for a \
         back-end slot (`wait_ms = 5000`, HAProxy's queue timeout), regular is deflected at once.",
    );
    Ok(())
}
