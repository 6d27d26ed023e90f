//! `cargo xtask bench`: builds the release proxy, then runs the scenarios of
//! `robustifier-bench` and writes target/bench/report.{json,md}.

use std::{path::Path, time::Instant};

use crate::{scratch::Scratch, setup, util};

/// nginx's auth_http responder (`bench/responder/auth_http.rs`, the standard library only),
/// compiled optimised next to the proxy under test whatever the profile: a debug build of it
/// would charge nginx for our responder's lack of optimisation. A second or two, so done
/// even with `--no-build`.
fn build_auth_http(proxy: &Path) -> anyhow::Result<()> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = proxy.with_file_name("bench-auth-http");
    util::exec(
        std::process::Command::new(rustc)
            .current_dir(util::root())
            .args(["--edition", "2024", "-C", "opt-level=3", "-o"])
            .arg(&out)
            .arg("bench/responder/auth_http.rs"),
    )
}

pub fn run(quick: bool, smoke: bool, only: &[String], no_build: bool) -> anyhow::Result<()> {
    anyhow::ensure!(!(quick && smoke), "--quick and --smoke exclude each other");
    let mode = if smoke {
        robustifier_bench::Mode::Smoke
    } else if quick {
        robustifier_bench::Mode::Quick
    } else {
        robustifier_bench::Mode::Full
    };
    for o in only {
        anyhow::ensure!(
            robustifier_bench::SCENARIOS.contains(&o.as_str()),
            "unknown scenario {o:?} (one of {})",
            robustifier_bench::SCENARIOS.join(", ")
        );
    }
    let t = Instant::now();
    // The smoke mode proves the scenarios still run; its figures mean nothing, so it takes
    // the debug build `cargo xtask test` has just made instead of a release build.
    let profile = if smoke { "debug" } else { "release" };
    if !no_build {
        setup::run()?;
        let mut args = vec!["build", "-p", "robustifier"];
        if !smoke {
            args.push("--release");
        }
        util::cargo(&args)?;
    }
    let bin = util::root()
        .join("target")
        .join(profile)
        .join("robustifier");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing (run without --no-build)",
        bin.display()
    );
    build_auth_http(&bin)?;
    crate::scratch::tidy();
    // The labs' files (logs, databases, copied binaries) go to a directory of this run's.
    let scratch = Scratch::new("bench")?;
    // SAFETY: single-threaded here; the lab reads these when it starts front-ends and
    // makes its directories.
    #[expect(
        clippy::disallowed_methods,
        reason = "set once before any thread starts; the lab crate takes the binary and its directory from the environment"
    )]
    unsafe {
        std::env::set_var("ROBUSTIFIER_BIN", &bin);
        std::env::set_var("TMPDIR", scratch.path());
    };
    let command: Vec<String> = std::env::args().skip(1).collect();
    let mut report =
        robustifier_bench::run(mode, only, &format!("cargo xtask {}", command.join(" ")))?;
    let dir = if smoke {
        util::root().join("target/bench/smoke")
    } else {
        util::root().join("target/bench")
    };
    // Every run is judged against the previous run of the same mode, which is kept beside
    // it as report.prev.json. Not the smoke mode: its single tiny samples mean nothing.
    let previous = dir.join("report.json");
    if !smoke
        && let Ok(prev) = robustifier_bench::report::Report::read(&previous)
        && prev.mode == report.mode
    {
        report.agreement = Some(robustifier_bench::compare::compare(&prev, &report));
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(&previous, dir.join("report.prev.json"))?;
    }
    report.write(&dir)?;
    println!("\n{}", report.summary());
    println!(
        "bench: {} mode took {:.0} s in all ({:.0} s measuring); wrote {}/report.json and report.md",
        mode.name(),
        t.elapsed().as_secs_f64(),
        report.duration_s,
        dir.display()
    );
    let said = scratch.finish(report.failures.is_empty());
    if !said.is_empty() {
        println!("bench: {said}");
    }
    anyhow::ensure!(
        report.failures.is_empty(),
        "{} scenario(s) failed: {}",
        report.failures.len(),
        report
            .failures
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Prints where two saved reports agree within their spread (and the rows that do not).
pub fn compare(earlier: &Path, later: &Path) -> anyhow::Result<()> {
    use robustifier_bench::{compare, report::Report};
    let (a, b) = (Report::read(earlier)?, Report::read(later)?);
    anyhow::ensure!(
        a.mode == b.mode,
        "{} is a {} run and {} a {} run: compare runs of one mode",
        earlier.display(),
        a.mode,
        later.display(),
        b.mode
    );
    let agreement = compare::compare(&a, &b);
    println!("{}", agreement.markdown());
    Ok(())
}
