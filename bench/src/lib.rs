//! `cargo xtask bench`: Robustifier against the rivals a user would pick instead (HAProxy,
//! nginx mail, keepalived, nftables), measured side by side in one run.
//!
//! Every scenario builds its own lab of namespaces (removed on exit, also after a failure),
//! starts the systems under comparison on CPU 0 and its load generators and sinks on CPU 1,
//! warms up, then measures several repetitions with the systems in random order. Load
//! loops are bounded in count and time. Timing figures are reported, never asserted.

pub mod compare;
pub mod flood;
pub mod pop3;
pub mod procs;
pub mod report;
pub mod rivals;
pub mod scenarios;
pub mod smtp;

use std::time::Instant;

use report::{Metric, Report, Samples};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each scenario once at tiny size: proves the harness works.
    Smoke,
    /// Fewer repetitions and sessions, under 3 minutes.
    Quick,
    /// The figures to quote, under 15 minutes.
    Full,
}

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub reps: usize,
    pub cost_sessions: usize,
    pub cost_serial: usize,
    pub cost_warmup: usize,
    pub slow_sessions: usize,
    pub slow_reps: usize,
    pub flood_secs: f64,
    pub flood_reps: usize,
    pub idle_sessions: usize,
    pub memory_reps: usize,
    pub failover_trials: usize,
    pub bulk_messages: usize,
    pub bulk_pop3_messages: usize,
    pub overload_reps: usize,
    /// Length of each steady and reload window, in seconds.
    pub reload_secs: f64,
    pub reload_reloads: usize,
    pub reload_upgrades: usize,
    pub reload_reps: usize,
    /// Commits measured per repetition of `propagation`, and its repetitions.
    pub propagation_commits: usize,
    pub propagation_reps: usize,
    /// `queues`: slow.example messages deferred on the relays, fast.example messages timed
    /// before and after isolating it, messages per move of the per-make move rate, and the
    /// repetitions of the latter.
    pub queues_slow: usize,
    pub queues_fast: usize,
    pub queues_move: usize,
    pub queues_reps: usize,
    /// `lookups`: sessions per system, case and repetition of the CPU cases, serial sessions
    /// per system and case of the slow directory, and the repetitions of both.
    pub lookups_sessions: usize,
    pub lookups_slow: usize,
    pub lookups_reps: usize,
}

impl Mode {
    pub fn sizes(self) -> Sizes {
        match self {
            Mode::Smoke => Sizes {
                reps: 1,
                cost_sessions: 40,
                cost_serial: 20,
                cost_warmup: 10,
                slow_sessions: 12,
                slow_reps: 1,
                flood_secs: 0.5,
                flood_reps: 1,
                idle_sessions: 200,
                memory_reps: 1,
                failover_trials: 1,
                bulk_messages: 2,
                bulk_pop3_messages: 1,
                overload_reps: 1,
                reload_secs: 3.0,
                reload_reloads: 2,
                reload_upgrades: 1,
                reload_reps: 1,
                propagation_commits: 5,
                propagation_reps: 1,
                queues_slow: 5,
                queues_fast: 5,
                queues_move: 3,
                queues_reps: 1,
                lookups_sessions: 30,
                lookups_slow: 10,
                lookups_reps: 1,
            },
            Mode::Quick => Sizes {
                reps: 3,
                cost_sessions: 400,
                cost_serial: 150,
                cost_warmup: 50,
                slow_sessions: 48,
                slow_reps: 2,
                flood_secs: 1.5,
                flood_reps: 2,
                idle_sessions: 2000,
                memory_reps: 1,
                failover_trials: 2,
                bulk_messages: 8,
                bulk_pop3_messages: 12,
                overload_reps: 2,
                reload_secs: 15.0,
                reload_reloads: 20,
                reload_upgrades: 3,
                reload_reps: 1,
                propagation_commits: 20,
                propagation_reps: 1,
                queues_slow: 300,
                queues_fast: 100,
                queues_move: 100,
                queues_reps: 1,
                lookups_sessions: 600,
                lookups_slow: 100,
                lookups_reps: 5,
            },
            Mode::Full => Sizes {
                reps: 7,
                cost_sessions: 1500,
                cost_serial: 400,
                cost_warmup: 200,
                slow_sessions: 160,
                slow_reps: 3,
                flood_secs: 3.0,
                flood_reps: 3,
                idle_sessions: 9_000,
                memory_reps: 2,
                failover_trials: 10,
                bulk_messages: 12,
                bulk_pop3_messages: 12,
                overload_reps: 3,
                reload_secs: 20.0,
                reload_reloads: 20,
                reload_upgrades: 3,
                reload_reps: 2,
                propagation_commits: 40,
                propagation_reps: 3,
                queues_slow: 2000,
                queues_fast: 300,
                queues_move: 500,
                queues_reps: 1,
                lookups_sessions: 1500,
                lookups_slow: 300,
                lookups_reps: 7,
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Smoke => "smoke",
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }
}

/// What a scenario gets: its sizes, and where its figures and notes go.
pub struct Ctx {
    pub mode: Mode,
    pub sizes: Sizes,
    pub samples: Samples,
    pub notes: Vec<String>,
}

impl Ctx {
    pub fn add(&mut self, scenario: &str, case: &str, metric: Metric, system: &str, v: f64) {
        self.samples.add(scenario, case, metric, system, v);
    }

    pub fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        println!("bench: note: {s}");
        self.notes.push(s);
    }
}

/// A scenario by name, in the order they run.
pub const SCENARIOS: &[&str] = &[
    "cost",
    "slow",
    "drop",
    "memory",
    "failover",
    "bulk",
    "overload",
    "reload",
    "propagation",
    "queues",
    "lookups",
];

/// Runs the scenarios named in `only` (all when empty) and returns the report; a failing
/// scenario is recorded and the others still run.
pub fn run(mode: Mode, only: &[String], command: &str) -> anyhow::Result<Report> {
    let started = Instant::now();
    procs::pin_current(procs::LOAD_CPU)?;
    // Best effort: the idle sessions need one descriptor each (some machines cap the hard
    // limit below this and deny raising it).
    let _ = procs::raise_nofile(60_000);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    fastrand::seed(seed);
    let mut ctx = Ctx {
        mode,
        sizes: mode.sizes(),
        samples: Samples::default(),
        notes: vec![format!("random order seed {seed}")],
    };
    let mut report = Report {
        mode: mode.name().into(),
        command: command.into(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        machine: report::Machine::describe(),
        ..Report::default()
    };
    for name in SCENARIOS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let t = Instant::now();
        println!("bench: scenario {name} ({} mode)", mode.name());
        let r = match *name {
            "cost" => scenarios::cost::run(&mut ctx),
            "slow" => scenarios::slow::run(&mut ctx),
            "drop" => scenarios::drop_path::run(&mut ctx),
            "memory" => scenarios::memory::run(&mut ctx),
            "failover" => scenarios::failover::run(&mut ctx),
            "bulk" => scenarios::bulk::run(&mut ctx),
            "overload" => scenarios::overload::run(&mut ctx),
            "reload" => scenarios::reload::run(&mut ctx),
            "propagation" => scenarios::propagation::run(&mut ctx),
            "queues" => scenarios::queues::run(&mut ctx),
            "lookups" => scenarios::lookups::run(&mut ctx),
            _ => unreachable!(),
        };
        println!(
            "bench: scenario {name} took {:.0} s",
            t.elapsed().as_secs_f64()
        );
        if let Err(e) = r {
            eprintln!("bench: scenario {name} failed: {e:#}");
            report.failures.insert((*name).into(), format!("{e:#}"));
        }
    }
    report.figures = std::mem::take(&mut ctx.samples).into_figures();
    report.ratios = report::ratios(&report.figures);
    report.notes = ctx.notes;
    report.duration_s = started.elapsed().as_secs_f64();
    Ok(report)
}
