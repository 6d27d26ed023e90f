//! What reloads and binary upgrades cost clients: 8 concurrent SMTP clients (our own
//! client, 1 KiB messages, one per session) send through each system to two smtp-sink
//! back-ends, first in a steady window, then in a window of the same length in which the
//! system is reloaded (each reload applies a real configuration change) and upgraded.
//!
//! - Robustifier: the configuration is rewritten (the second back-end's weight alternates
//!   between 100 and 50) and `robustifier reload` asks the daemon over its control socket
//!   (on the system's CPU, as the rivals' commands run there); it answers once the reload is
//!   in force, and counts when its answer names the weight change. Upgrade: `robustifier
//!   upgrade --config CFG`, which exits 0 once the new process serves.
//! - HAProxy (master-worker, `-W -S`): the configuration is rewritten (the second server's
//!   weight alternates) and the master CLI gets `reload`; it counts once a new worker runs.
//!   Upgrade: the same re-execution of the binary from disk (the same binary here).
//! - nginx: the configuration is rewritten (`server_name` alternates) and `nginx -s reload`
//!   run; it counts once a new worker runs. Upgrade: USR2 to the master, then, once the new
//!   master runs its workers, WINCH and QUIT to the old one.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{sys::signal::Signal, unistd::Pid};
use robustifier_lab::Lab;

use crate::{
    Ctx,
    procs::{self, SUT_CPU},
    report::Metric,
    rivals,
    smtp::{self, Outcome},
};

const SCENARIO: &str = "reload";
const CLIENTS: usize = 8;
const BACKENDS: usize = 2;
/// Sessions one client opens in a window at most; the window's end normally stops it first.
const MAX_PER_CLIENT: usize = 20_000;
/// How long one reload or upgrade may take to show its effect.
const CONFIRM: Duration = Duration::from_secs(20);

const fn count(name: &'static str, lower_is_better: bool) -> Metric<'static> {
    Metric {
        name,
        unit: "sessions",
        lower_is_better,
    }
}
const ATTEMPTED: Metric = count("sessions attempted", false);
const REFUSED: Metric = count("refused (goal 0)", true);
const FAILED: Metric = count("reset or failed mid-session", true);
const ANSWERED: Metric = count("answered 4xx/5xx", true);
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
const P99_RATIO: Metric = Metric {
    name: "p99 reloads / p99 steady (goal <= 1.2)",
    unit: "x",
    lower_is_better: true,
};
/// The goal for [`P99_RATIO`].
const P99_GOAL: f64 = 1.2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Reload,
    Upgrade,
}

/// `reloads` reloads with `upgrades` upgrades spread evenly among them.
fn schedule(reloads: usize, upgrades: usize) -> Vec<Op> {
    let total = reloads + upgrades;
    let at: Vec<usize> = (1..=upgrades).map(|j| j * total / (upgrades + 1)).collect();
    (0..total)
        .map(|i| {
            if at.contains(&i) {
                Op::Upgrade
            } else {
                Op::Reload
            }
        })
        .collect()
}

/// How each system is reloaded and upgraded, with what it needs to do so.
enum Kind {
    Robustifier {
        config: PathBuf,
        base: String,
        pid: i32,
        /// Why `robustifier upgrade` cannot be run, when it cannot.
        no_upgrade: Option<String>,
    },
    Haproxy(rivals::HaproxyMaster),
    Nginx {
        dir: PathBuf,
        conf: PathBuf,
        master: i32,
    },
}

struct System {
    name: &'static str,
    addr: SocketAddr,
    kind: Kind,
    /// Reloads applied so far: each one flips the configuration to the other variant.
    flips: u32,
    /// Upgrades skipped (Robustifier without its upgrade command).
    skipped: usize,
}

/// Processes an upgrade started that the lab did not (a new master, a new daemon): ended by
/// pid before the lab goes down.
#[derive(Default)]
struct Strays(Vec<i32>);

impl Drop for Strays {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in &self.0 {
            if alive(*pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// Whether `pid` runs (a zombie, exited but not reaped, does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(str::to_owned)
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The running children (and their descendants) of `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    procs::tree(pid)
        .into_iter()
        .filter(|p| *p != pid && alive(*p))
        .collect()
}

fn signal(pid: i32, s: Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid), s).with_context(|| format!("{s} to {pid}"))
}

/// Polls `ready` every 20 ms until it holds or [`CONFIRM`] passes.
fn wait_until(what: &str, mut ready: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONFIRM;
    loop {
        if ready()? {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not seen within {CONFIRM:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Robustifier's configuration with the last back-end's weight set to `weight`.
fn robustifier_variant(base: &str, weight: u32) -> String {
    let last = format!("{{ name = \"be{BACKENDS}\",");
    base.replace(
        &last,
        &format!("{{ name = \"be{BACKENDS}\", weight = {weight},"),
    )
}

/// Whether `robustifier upgrade` exists in the binary under test (`Err` says why not).
fn upgrade_available() -> Result<(), String> {
    let out = std::process::Command::new(robustifier_lab::robustifier_bin())
        .args(["upgrade", "--help"])
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e}",
                robustifier_lab::robustifier_bin().display()
            )
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`robustifier upgrade --help` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `robustifier run` processes started with `config` other than `old`.
fn robustifier_processes(config: &Path, old: i32) -> Vec<i32> {
    let config = config.to_string_lossy();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| *p != old && alive(*p))
        .filter(|p| {
            let Ok(raw) = std::fs::read(format!("/proc/{p}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            !args.iter().any(|a| a == "upgrade")
                && args.iter().any(|a| a == "run")
                && args.iter().any(|a| *a == config)
        })
        .collect()
}

impl System {
    /// Applies `op`; returns once its effect is seen. Processes it starts go to `strays`.
    fn apply(&mut self, lab: &Lab, op: Op, strays: &mut Strays) -> anyhow::Result<()> {
        let flip = self.flips.is_multiple_of(2);
        match (&mut self.kind, op) {
            (Kind::Robustifier { config, base, .. }, Op::Reload) => {
                let (was, weight) = if flip { (100, 50) } else { (50, 100) };
                std::fs::write(
                    &*config,
                    lab.with_control_socket(0, &robustifier_variant(base, weight)),
                )?;
                // One command that returns once the reload is in force: polling the maps
                // with a process per look would cost the load generator's CPU.
                let out = std::process::Command::new("taskset")
                    .args(["-c", &SUT_CPU.to_string()])
                    .arg(robustifier_lab::robustifier_bin())
                    .arg("reload")
                    .arg("--socket")
                    .arg(robustifier_lab::vrrp::control_socket(lab, 0))
                    .output()
                    .context("robustifier reload")?;
                let said = String::from_utf8_lossy(&out.stdout);
                anyhow::ensure!(
                    out.status.success() && said.contains(&format!("weight {was} -> {weight}")),
                    "robustifier reload: {said} {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            (
                Kind::Robustifier {
                    config,
                    pid,
                    no_upgrade,
                    ..
                },
                Op::Upgrade,
            ) => {
                if no_upgrade.is_some() {
                    self.skipped += 1;
                    return Ok(());
                }
                // Its output goes to a file, not a pipe: the new daemon may inherit the
                // command's descriptors and would hold a pipe open for as long as it runs.
                let log_path = lab.log_dir.join("robustifier-upgrade.log");
                let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len());
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)?;
                let status = lab
                    .frontend(0)
                    .ns
                    .command("taskset")
                    .args(["-c", &SUT_CPU.to_string(), "timeout"])
                    .arg(CONFIRM.as_secs().to_string())
                    .arg(robustifier_lab::robustifier_bin())
                    .args(["upgrade", "--config"])
                    .arg(&*config)
                    .env("RUST_LOG", "info")
                    .env("NO_COLOR", "1")
                    .stdin(std::process::Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .status()
                    .context("robustifier upgrade")?;
                if !status.success() {
                    let text = std::fs::read(&log_path).unwrap_or_default();
                    let from = (log_start as usize).min(text.len());
                    anyhow::bail!(
                        "robustifier upgrade failed ({status}): {}",
                        String::from_utf8_lossy(&text[from..]).trim()
                    );
                }
                let old = *pid;
                let new = robustifier_processes(config, old);
                let Some(&new) = new.iter().max() else {
                    anyhow::bail!(
                        "robustifier upgrade exited 0 but no new `robustifier run --config {}` runs",
                        config.display()
                    );
                };
                strays.0.push(new);
                procs::pin_pid(new, SUT_CPU)?;
                *pid = new;
                return Ok(());
            }
            (Kind::Haproxy(h), op) => {
                if op == Op::Reload {
                    let weight = if flip { 50 } else { 100 };
                    std::fs::write(&h.config, rivals::haproxy_master_config(BACKENDS, weight))?;
                }
                let before = descendants(h.pid);
                rivals::haproxy_master_command(&h.master_socket, "reload")?;
                wait_until("HAProxy's new worker", || {
                    Ok(descendants(h.pid).iter().any(|p| !before.contains(p)))
                })?;
                if op == Op::Upgrade {
                    return Ok(());
                }
            }
            (Kind::Nginx { dir, conf, master }, Op::Reload) => {
                let text = std::fs::read_to_string(&*conf)?;
                let (from, to) = if flip {
                    (
                        "server_name mx.bench.invalid;",
                        "server_name mx2.bench.invalid;",
                    )
                } else {
                    (
                        "server_name mx2.bench.invalid;",
                        "server_name mx.bench.invalid;",
                    )
                };
                anyhow::ensure!(text.contains(from), "nginx.conf has no {from:?}");
                std::fs::write(&*conf, text.replace(from, to))?;
                let before = descendants(*master);
                let d = dir.to_string_lossy().into_owned();
                let out = lab
                    .frontend(0)
                    .ns
                    .command("nginx")
                    .args(["-e", &format!("{d}/startup.log"), "-p", &d, "-c"])
                    .arg(&*conf)
                    .args(["-s", "reload"])
                    .output()
                    .context("nginx -s reload")?;
                anyhow::ensure!(
                    out.status.success(),
                    "nginx -s reload failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let m = *master;
                wait_until("nginx's new worker", || {
                    Ok(descendants(m).iter().any(|p| !before.contains(p)))
                })?;
            }
            (Kind::Nginx { dir, master, .. }, Op::Upgrade) => {
                let old = *master;
                let pid_file = dir.join("nginx.pid");
                signal(old, Signal::SIGUSR2)?;
                let mut new = 0;
                wait_until("nginx's new master and its workers", || {
                    new = std::fs::read_to_string(&pid_file)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(old);
                    Ok(new != old && alive(new) && !descendants(new).is_empty())
                })?;
                strays.0.push(new);
                signal(old, Signal::SIGWINCH)?;
                signal(old, Signal::SIGQUIT)?;
                wait_until("the old nginx master's exit", || Ok(!alive(old)))?;
                *master = new;
                return Ok(());
            }
        }
        self.flips += 1;
        Ok(())
    }
}

/// One session's duration and outcome.
type Session = (Duration, Outcome);

/// [`CLIENTS`] clients in the client namespace, each sending one session after the other to
/// `to` until `stop` is set (or [`MAX_PER_CLIENT`] sessions).
fn load(lab: &Lab, to: SocketAddr, msg: &[u8], stop: &AtomicBool) -> anyhow::Result<Vec<Session>> {
    lab.client.ns.enter(|| {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    sc.spawn(|| {
                        let mut out = Vec::new();
                        while !stop.load(Ordering::Relaxed) && out.len() < MAX_PER_CLIENT {
                            let t = Instant::now();
                            let o = smtp::session_to(
                                to,
                                "rcpt@example.test",
                                msg,
                                smtp::Timeouts::NORMAL,
                            );
                            out.push((t.elapsed(), o));
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in hs {
                all.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))?);
            }
            Ok(all)
        })
    })?
}

/// A window of `secs` under load with `ops` spread evenly over it. The load runs until the
/// window has passed and the last operation has shown its effect, so every one of them
/// happens under load.
fn window(
    lab: &Lab,
    sys: &mut System,
    msg: &[u8],
    secs: f64,
    ops: &[Op],
    strays: &mut Strays,
) -> anyhow::Result<Vec<Session>> {
    let stop = AtomicBool::new(false);
    let addr = sys.addr;
    std::thread::scope(|sc| {
        let h = sc.spawn(|| load(lab, addr, msg, &stop));
        let start = Instant::now();
        let mut failed = None;
        for (i, op) in ops.iter().enumerate() {
            let at =
                start + Duration::from_secs_f64(secs * (i + 1) as f64 / (ops.len() + 1) as f64);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if let Err(e) = sys.apply(lab, *op, strays) {
                failed = Some(e.context(format!("{} {op:?} {} of {}", sys.name, i + 1, ops.len())));
                break;
            }
        }
        let end = start + Duration::from_secs_f64(secs);
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        stop.store(true, Ordering::Relaxed);
        let sessions = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        match failed {
            Some(e) => Err(e),
            None => sessions,
        }
    })
}

/// Records a window's figures under `case`; returns its p99 (of the sessions that began).
fn record(ctx: &mut Ctx, case: &str, system: &str, sessions: &[Session]) -> f64 {
    let n = |f: &dyn Fn(&Outcome) -> bool| sessions.iter().filter(|(_, o)| f(o)).count() as f64;
    ctx.add(SCENARIO, case, ATTEMPTED, system, sessions.len() as f64);
    ctx.add(
        SCENARIO,
        case,
        REFUSED,
        system,
        n(&|o| matches!(o, Outcome::Refused(_))),
    );
    ctx.add(
        SCENARIO,
        case,
        FAILED,
        system,
        n(&|o| matches!(o, Outcome::Failed(_))),
    );
    ctx.add(
        SCENARIO,
        case,
        ANSWERED,
        system,
        n(&|o| matches!(o, Outcome::Deferred(_) | Outcome::Rejected(_))),
    );
    let began: Vec<Duration> = sessions
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Refused(_)))
        .map(|(d, _)| *d)
        .collect();
    let p = smtp::percentiles(&began, &[0.5, 0.99]);
    ctx.add(SCENARIO, case, P50, system, p[0]);
    ctx.add(SCENARIO, case, P99, system, p[1]);
    p[1]
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let no_upgrade = upgrade_available().err();
    let mut lab = super::lab("bl", 1, BACKENDS)?;
    let mut strays = Strays::default();
    let sinks = (0..BACKENDS)
        .map(|i| rivals::sink(&mut lab, i, &[]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let base = rivals::robustifier_config(&lab, 0, BACKENDS, "", "");
    let rob = rivals::start_robustifier(&mut lab, &base)?;
    let config = lab.log_dir.join(format!("{}.toml", lab.frontend(0).name));
    let hap = rivals::start_haproxy_master(&mut lab, BACKENDS)?;
    // nginx's mail proxy takes its one upstream from the auth_http responder: the first sink.
    let ngx = rivals::start_nginx_daemon(&mut lab, sinks[0])?;
    strays.0.push(ngx[0]);
    let ngx_dir = lab.log_dir.join("nginx");
    // Robustifier takes sessions once its probes have seen the back-ends up.
    wait_until("Robustifier's back-ends up", || {
        let m = rivals::maps(&lab)?;
        Ok(m["backends"]
            .as_array()
            .is_some_and(|b| b.len() == BACKENDS && b.iter().all(|b| b["state"] == "up")))
    })?;
    let mut systems = vec![
        System {
            name: "robustifier",
            addr: rivals::vip(),
            kind: Kind::Robustifier {
                config,
                base,
                pid: rob,
                no_upgrade: no_upgrade.clone(),
            },
            flips: 0,
            skipped: 0,
        },
        System {
            name: "haproxy",
            addr: rivals::fe_addr(rivals::HAPROXY_PORT),
            kind: Kind::Haproxy(hap),
            flips: 0,
            skipped: 0,
        },
        System {
            name: "nginx",
            addr: rivals::fe_addr(rivals::NGINX_PORT),
            kind: Kind::Nginx {
                conf: ngx_dir.join("nginx.conf"),
                dir: ngx_dir,
                master: ngx[0],
            },
            flips: 0,
            skipped: 0,
        },
    ];
    let lab = &lab;
    let msg = smtp::message(1024);
    let ops = schedule(s.reload_reloads, s.reload_upgrades);
    let case_reload = format!(
        "{} reloads + {} upgrades",
        s.reload_reloads, s.reload_upgrades
    );
    let case_steady = "steady".to_owned();
    for sys in &mut systems {
        window(lab, sys, &msg, 1.0, &[], &mut strays)
            .with_context(|| format!("warm-up of {}", sys.name))?;
    }
    // Per system: refused sessions over all reload windows, and the p99 ratios.
    let mut verdicts: Vec<(&str, f64, Vec<f64>)> =
        systems.iter().map(|s| (s.name, 0.0, Vec::new())).collect();
    let order: Vec<usize> = (0..systems.len()).collect();
    for rep in 0..s.reload_reps {
        for i in super::shuffled(&order) {
            let sys = &mut systems[i];
            let steady = window(lab, sys, &msg, s.reload_secs, &[], &mut strays)
                .with_context(|| format!("{} steady window", sys.name))?;
            let during = window(lab, sys, &msg, s.reload_secs, &ops, &mut strays)
                .with_context(|| format!("{} reload window", sys.name))?;
            let p99_steady = record(ctx, &case_steady, sys.name, &steady);
            let p99_reload = record(ctx, &case_reload, sys.name, &during);
            let ratio = p99_reload / p99_steady;
            ctx.add(SCENARIO, &case_reload, P99_RATIO, sys.name, ratio);
            let refused = during
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Refused(_)))
                .count();
            verdicts[i].1 += refused as f64;
            verdicts[i].2.push(ratio);
        }
        println!(
            "bench: reload: repetition {} of {} done",
            rep + 1,
            s.reload_reps
        );
    }
    for (name, refused, ratios) in &verdicts {
        let mut r = ratios.clone();
        r.sort_by(f64::total_cmp);
        let median = r.get(r.len() / 2).copied().unwrap_or(f64::NAN);
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        ctx.note(format!(
            "reload: {name}: {refused} refused during reloads (goal 0: {}); p99 during reloads \
             {median:.2}x steady (goal <= {P99_GOAL}: {})",
            met(*refused == 0.0),
            met(median <= P99_GOAL),
        ));
    }
    ctx.note(
        "reload: latency is over the sessions that began (a refused connection has none); \
         HAProxy's upgrade is its master-worker reload, which re-executes the binary from \
         disk (the same binary here, so it differs from a reload only in keeping the \
         configuration); nginx's is USR2, then WINCH and QUIT to the old master.",
    );
    if let Some(why) = no_upgrade {
        let skipped: usize = systems.iter().map(|s| s.skipped).sum();
        anyhow::bail!(
            "Robustifier's upgrade part was not measured ({skipped} upgrades skipped; its reload \
             windows held reloads only): {why}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_are_spread_among_the_reloads() {
        assert_eq!(schedule(2, 1), vec![Op::Reload, Op::Upgrade, Op::Reload]);
        let full = schedule(20, 3);
        assert_eq!(full.len(), 23);
        let at: Vec<usize> = (0..full.len())
            .filter(|i| full[*i] == Op::Upgrade)
            .collect();
        assert_eq!(at, vec![5, 11, 17]);
    }

    #[test]
    fn a_variant_changes_only_the_last_backends_weight() {
        let base = "backend = [{ name = \"be1\", address = \"a:25\" }, \
                    { name = \"be2\", address = \"b:25\" }]";
        let v = robustifier_variant(base, 50);
        assert_eq!(
            v,
            "backend = [{ name = \"be1\", address = \"a:25\" }, \
             { name = \"be2\", weight = 50, address = \"b:25\" }]"
        );
        assert_ne!(
            robustifier_variant(base, 100),
            robustifier_variant(base, 50)
        );
    }
}
