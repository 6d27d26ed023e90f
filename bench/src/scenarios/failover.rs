//! Failover: SIGKILL of the master front-end's VRRP process and its public link taken
//! down (the front-end is gone), from the link going down to the first message delivered
//! through the VIP by a client sending continuously. Robustifier against keepalived + HAProxy with the same advert
//! interval (1 s and 0.1 s); messages accepted (250 after the data) but not at the sink
//! count as lost.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use robustifier_lab::{
    Lab,
    sink::Sink,
    topology::VIP_SMTP,
    vrrp::{
        KeepalivedInstance, control_socket, eventually, keepalived_config, keepalived_vrrp_pid,
        owns, start_keepalived,
    },
};

use crate::{Ctx, procs, report::Metric, rivals, smtp};

const SCENARIO: &str = "failover";
const MASTER: usize = 0;
const BACKUP: usize = 1;
const TIME: Metric = Metric {
    name: "gone to first delivered message",
    unit: "ms",
    lower_is_better: true,
};
const LOST: Metric = Metric {
    name: "messages lost per failover",
    unit: "messages",
    lower_is_better: true,
};

/// One trial's outcome.
struct Trial {
    failover: Duration,
    lost: usize,
}

/// Sending threads: one stuck on a dead front-end (until its timeout) must not hide the
/// moment the VIP answers again, so several send side by side.
const SENDERS: usize = 8;

/// Sends mail through the VIP from [`SENDERS`] threads until `stop`; (session start, end,
/// delivered) per session.
fn sender(lab: &Lab, stop: &AtomicBool, log: &Mutex<Vec<(Instant, Instant, bool)>>) {
    let msg = smtp::message(1024);
    let t = smtp::Timeouts {
        connect: Duration::from_millis(100),
        io: Duration::from_secs(2),
    };
    let _ = lab.client.ns.enter(|| {
        let _ = procs::pin_current(procs::LOAD_CPU);
        std::thread::scope(|sc| {
            for i in 0..SENDERS {
                let msg = &msg;
                sc.spawn(move || {
                    std::thread::sleep(Duration::from_millis(3 * i as u64));
                    while !stop.load(Ordering::Relaxed) {
                        let s = Instant::now();
                        let ok = smtp::session(rivals::vip(), msg, t).is_ok();
                        log.lock().expect("log").push((s, Instant::now(), ok));
                        // Paced: about one attempt per 20 ms per thread.
                        std::thread::sleep(Duration::from_millis(if ok { 20 } else { 5 }));
                    }
                });
            }
        });
    });
}

/// Settles the master, kills it with `kill_master`, times the first delivery; cleans up.
fn trial(lab: &Lab, sink: &Sink, cs: u16, kill_master: &dyn Fn()) -> anyhow::Result<Trial> {
    let (m, b) = (&lab.frontend(MASTER).ns, &lab.frontend(BACKUP).ns);
    eventually("master owns the VIP", Duration::from_secs(30), || {
        owns(m, "pub0", VIP_SMTP.into()) && !owns(b, "pub0", VIP_SMTP.into())
    })?;
    let msg = smtp::message(1024);
    eventually(
        "a session through the master",
        Duration::from_secs(10),
        || {
            lab.client
                .ns
                .enter(|| smtp::session(rivals::vip(), &msg, smtp::Timeouts::NORMAL).is_ok())
                .unwrap_or(false)
        },
    )?;
    let received0 = sink.count();
    let stop = AtomicBool::new(false);
    let log = Mutex::new(Vec::new());
    let interval = Duration::from_millis(u64::from(cs) * 10);
    let result = std::thread::scope(|sc| {
        sc.spawn(|| sender(lab, &stop, &log));
        // A few adverts in steady state, then a kill at a random phase of the advert cycle.
        std::thread::sleep(Duration::from_millis(500) + interval.mul_f64(fastrand::f64()));
        kill_master();
        let _ = lab.frontend(MASTER).ns.ip(&["link", "set", "pub0", "down"]);
        // Timed from the moment the front-end is gone. Not from the kill: keepalived's kill
        // leaves HAProxy serving on the old master until its link is down, and a session
        // started in between would count as "after the failover" in a few milliseconds.
        let t0 = Instant::now();
        let r = loop {
            let first = log
                .lock()
                .expect("log")
                .iter()
                .find(|(s, _, ok)| *ok && *s >= t0)
                .map(|(_, e, _)| *e - t0);
            if let Some(d) = first {
                break Ok(d);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                break Err(anyhow::anyhow!(
                    "no message delivered within 30 s of the kill"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // A little more traffic through the new master, then stop.
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        r
    });
    let accepted = log
        .lock()
        .expect("log")
        .iter()
        .filter(|(_, _, ok)| *ok)
        .count();
    // Delivered messages are at the sink when the reply came; give the files a moment.
    std::thread::sleep(Duration::from_millis(300));
    let received = sink.count() - received0;
    let _ = m.ip(&["addr", "del", &format!("{VIP_SMTP}/32"), "dev", "pub0"]);
    m.ip(&["link", "set", "pub0", "up"])?;
    Ok(Trial {
        failover: result?,
        lost: accepted.saturating_sub(received),
    })
}

fn robustifier_config(lab: &Lab, fe: usize, prio: u8, cs: u16) -> String {
    let top = format!(
        "[ha]\ncontrol_socket = \"{}\"\n",
        control_socket(lab, fe).display()
    );
    let mut c = rivals::robustifier_config(lab, fe, 1, &top, "");
    c.push_str(&format!(
        "\n[[vrrp]]\nvrid = 51\npriority = {prio}\nadvert_interval_cs = {cs}\nvips = [\"{VIP_SMTP}\"]\ngarp_interval_ms = 200\n"
    ));
    c
}

fn robustifier_trials(cs: u16, n: usize) -> anyhow::Result<Vec<Trial>> {
    let mut lab = super::lab("bfr", 2, 1)?;
    let sink = Sink::start(&mut lab, 0, &[])?;
    let backup = robustifier_config(&lab, BACKUP, 100, cs);
    let master = robustifier_config(&lab, MASTER, 150, cs);
    let pid = lab.start_frontend(BACKUP, &backup)?.pid().as_raw();
    procs::pin_pid(pid, procs::SUT_CPU)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let pid = lab.start_frontend(MASTER, &master)?.pid();
        let d = lab.daemons().len() - 1;
        procs::pin_pid(pid.as_raw(), procs::SUT_CPU)?;
        out.push(trial(&lab, &sink, cs, &|| {
            let _ = kill(pid, Signal::SIGKILL);
        })?);
        lab.daemons()[d].stop()?;
    }
    Ok(out)
}

fn keepalived_trials(cs: u16, n: usize) -> anyhow::Result<Vec<Trial>> {
    let mut lab = super::lab("bfk", 2, 1)?;
    let sink = Sink::start(&mut lab, 0, &[])?;
    for fe in [MASTER, BACKUP] {
        rivals::start_haproxy_on(&mut lab, fe, 1, true, "")?;
    }
    let conf = |prio| {
        keepalived_config(
            "bench",
            &[KeepalivedInstance {
                vrid: 51,
                priority: prio,
                vip: VIP_SMTP.into(),
                interval_cs: cs,
            }],
        )
    };
    let d = start_keepalived(&mut lab, BACKUP, &conf(100))?;
    procs::pin_pid(lab.daemons()[d].pid().as_raw(), procs::SUT_CPU)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let d = start_keepalived(&mut lab, MASTER, &conf(150))?;
        procs::pin_pid(lab.daemons()[d].pid().as_raw(), procs::SUT_CPU)?;
        // The pid file of the VRRP child is rewritten once it runs; the settle in `trial`
        // waits for the address, so read the pid inside the kill.
        let lab_ref = &lab;
        out.push(trial(lab_ref, &sink, cs, &|| {
            if let Some(p) = keepalived_vrrp_pid(lab_ref, MASTER) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        })?);
        lab.daemons()[d].stop()?;
    }
    Ok(out)
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let n = ctx.sizes.failover_trials;
    for (case, cs) in [("adverts 1 s", 100u16), ("adverts 0.1 s", 10)] {
        let mut systems = ["robustifier", "keepalived+haproxy"];
        fastrand::shuffle(&mut systems);
        for name in systems {
            let trials = if name == "robustifier" {
                robustifier_trials(cs, n)?
            } else {
                keepalived_trials(cs, n)?
            };
            for t in trials {
                ctx.add(
                    SCENARIO,
                    case,
                    TIME,
                    name,
                    t.failover.as_secs_f64() * 1000.0,
                );
                ctx.add(SCENARIO, case, LOST, name, t.lost as f64);
            }
            println!("bench: failover {case}: {name} done");
        }
    }
    Ok(())
}
