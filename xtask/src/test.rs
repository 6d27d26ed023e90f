//! `cargo xtask test`: what CI runs. Setup, formatting, clippy in two passes (user crates
//! on the host, the eBPF crate for the BPF target), then every test with the privileged
//! ones required: a missing precondition fails them instead of skipping them; then a
//! 3-minute soak that fails on any acknowledged message lost.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, bail};
use robustifier_lab::netns;

use crate::{
    setup,
    util::{cargo, exec, root},
};

/// Prefix of the namespaces tests create (`robustifier_lab::unique_prefix`).
const TEST_PREFIX: &str = "rbt";

/// Per fuzz target in `cargo xtask test`: whichever bound comes first.
const FUZZ_SECONDS: u64 = 4;
const FUZZ_RUNS: u64 = 200_000;

/// The appliance image the VM test boots (`ROBUSTIFIER_IMAGE`), relative to the root.
const IMAGE: &str = "target/image/test-suite.img";

pub fn run_step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let start = Instant::now();
    println!("xtask test: {name}");
    f().with_context(|| format!("step `{name}` failed"))?;
    println!(
        "xtask test: {name} ok ({:.1}s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    run_step("setup", setup::run)?;
    // The appliance image's Debian system downloads and unpacks while the steps below
    // run; the image itself is made after the build, from the binary under test.
    let image_base =
        std::thread::spawn(|| robustifier_lab::image::prepare(&root().join("target/image")));
    run_step("fmt", || cargo(&["fmt", "--all", "--", "--check"]))?;
    run_step("clippy (user crates)", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "robustifier-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    run_step("clippy (eBPF crate)", || {
        exec(
            Command::new("cargo")
                .current_dir(root())
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("RUSTC")
                .args([
                    "+nightly",
                    "clippy",
                    "-p",
                    "robustifier-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ]),
        )
    })?;
    // Each fuzz target briefly, seeded with its corpus: the targets keep building, and the
    // properties they assert hold on the seeds and near them.
    run_step("fuzz (short)", || {
        crate::fuzz::run(
            None,
            crate::fuzz::Budget {
                seconds: FUZZ_SECONDS,
                runs: Some(FUZZ_RUNS),
                optimized: false,
            },
        )
    })?;
    run_step("build robustifier", || {
        cargo(&["build", "-p", "robustifier"])
    })?;
    let (mut image, mut deb) = (std::path::PathBuf::new(), std::path::PathBuf::new());
    run_step("appliance image", || {
        image_base
            .join()
            .map_err(|_| anyhow::anyhow!("the image thread panicked"))??;
        let (built, package) = crate::image::run(None, std::path::Path::new(IMAGE), "dev")?;
        (image, deb) = (built.disk, package);
        Ok(())
    })?;
    let stale = crate::lab::down(TEST_PREFIX);
    if !stale.is_empty() {
        println!(
            "xtask test: removed {} namespaces left by an earlier run",
            stale.len()
        );
    }
    // Namespaces of another run still alive now (a second checkout testing on this
    // machine) are not this run's to judge: when that run dies they look orphaned.
    let foreign: std::collections::HashSet<u32> = netns::list(TEST_PREFIX)
        .iter()
        .filter_map(|n| robustifier_lab::owner_pid(n))
        .collect();
    let mut totals = (0u64, 0u64);
    run_step("tests", || {
        let bin = root().join("target/debug/robustifier");
        let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        totals = tests(
            Command::new(cargo_bin)
                .current_dir(root())
                .env("ROBUSTIFIER_BIN", bin)
                .env("ROBUSTIFIER_REQUIRE_PRIVILEGED", "1")
                .env("ROBUSTIFIER_IMAGE", &image)
                .env("ROBUSTIFIER_DEB", &deb)
                .args([
                    "test",
                    "--workspace",
                    "--exclude",
                    "robustifier-ebpf",
                    "--no-fail-fast",
                    "--lib",
                    "--bins",
                    "--tests",
                ]),
        )?;
        Ok(())
    })?;
    // The benchmark harness, once per scenario at tiny size, so it does not rot between
    // benchmark runs (no figure is judged).
    run_step("bench smoke", || crate::bench::run(false, true, &[], true))?;
    // Every message acknowledged under crashes, failovers and attacks must arrive.
    run_step("soak (3 minutes)", || {
        crate::soak::run(&crate::soak::Options {
            minutes: 3.0,
            clients: 4,
            seed: None,
            prepare: false,
        })
    })?;
    // Namespaces of test processes that have exited are leaks.
    let left: Vec<String> = netns::list(TEST_PREFIX)
        .into_iter()
        .filter(|n| robustifier_lab::orphaned(n))
        .filter(|n| robustifier_lab::owner_pid(n).is_none_or(|p| !foreign.contains(&p)))
        .collect();
    if !left.is_empty() {
        bail!("tests left namespaces behind: {}", left.join(" "));
    }
    println!(
        "xtask test: all passed in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    // One closing line for the whole suite, whatever binary ran last.
    println!("{} passed, {} failed", totals.0, totals.1);
    Ok(())
}

/// Runs cargo test, passing its output through, and adds up the `test result:` lines.
fn tests(cmd: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().context("test output")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                match (words.next().map(str::parse::<u64>), words.next()) {
                    (Some(Ok(n)), Some("passed")) => passed += n,
                    (Some(Ok(n)), Some("failed")) => failed += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("{passed} passed, {failed} failed");
        bail!("{cmd:?} failed ({status})");
    }
    Ok((passed, failed))
}
