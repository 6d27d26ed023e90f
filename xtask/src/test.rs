//! `cargo xtask test`: what CI runs. Setup, formatting, clippy in two passes (user crates
//! on the host, the eBPF crate for the BPF target), the build, the fuzz targets briefly
//! while the appliance image is made, then every test with the privileged ones required
//! (a missing precondition fails them instead of skipping them), in two lanes
//! ([`crate::lanes`]); then a 3-minute soak that fails on any acknowledged message lost,
//! with the benchmark smoke run beside it. What runs side by side is mostly waiting
//! (disk, daemons, timers) while the two cores do the other's work.

use std::{
    process::Command,
    time::{Duration, Instant},
};

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

/// The steps of [`run`], in order; `cargo xtask test --only` runs some of them (to time
/// them alone; CI runs them all).
pub const STEPS: &[&str] = &[
    "setup", "fmt", "clippy", "build", "image", "fuzz", "tests", "bench", "soak",
];

pub fn run(only: &[String]) -> anyhow::Result<()> {
    for o in only {
        anyhow::ensure!(
            STEPS.contains(&o.as_str()),
            "unknown step {o:?} (one of {})",
            STEPS.join(", ")
        );
    }
    let wanted = |step: &str| only.is_empty() || only.iter().any(|o| o == step);
    let start = Instant::now();
    crate::scratch::tidy();
    if wanted("setup") {
        run_step("setup", setup::run)?;
    }
    // The appliance image's Debian system downloads and unpacks while the steps below
    // run; the image itself is made after the build, from the binary under test.
    let image_base = wanted("image").then(|| {
        std::thread::spawn(|| robustifier_lab::image::prepare(&root().join("target/image")))
    });
    if wanted("fmt") {
        run_step("fmt", || cargo(&["fmt", "--all", "--", "--check"]))?;
    }
    if wanted("clippy") {
        clippy()?;
    }
    if wanted("build") {
        run_step("build robustifier", || {
            cargo(&["build", "-p", "robustifier"])
        })?;
    }
    // The image (the package, then dpkg in a chroot and the disk: mostly disk work) is made
    // while the fuzz targets build and run (CPU work), from the binary just built.
    let image = image_base.map(|base| {
        std::thread::spawn(move || {
            let start = Instant::now();
            base.join()
                .map_err(|_| anyhow::anyhow!("the image thread panicked"))??;
            let built = crate::image::run(None, std::path::Path::new(IMAGE), "dev");
            println!(
                "xtask test: appliance image made in {:.1}s (beside the fuzz step)",
                start.elapsed().as_secs_f64()
            );
            built
        })
    });
    let fuzzed = if wanted("fuzz") { fuzz() } else { Ok(()) };
    let (mut image_path, mut deb) = (None, None);
    if let Some(thread) = image {
        run_step("appliance image", || {
            let (built, package) = thread
                .join()
                .map_err(|_| anyhow::anyhow!("the image thread panicked"))??;
            (image_path, deb) = (Some(built.disk), Some(package));
            Ok(())
        })?;
    }
    fuzzed?;
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
    if wanted("tests") {
        run_step("tests", || {
            totals = tests(image_path.as_deref(), deb.as_deref())?;
            Ok(())
        })?;
    }
    // The benchmark harness, once per scenario at tiny size, so it does not rot between
    // benchmark runs (no figure is judged); in a process of its own beside the soak: both
    // mostly wait, each in namespaces and pin directories named for its own process.
    let bench = wanted("bench").then(bench_smoke).transpose()?;
    // Every message acknowledged under crashes, failovers and attacks must arrive.
    let soaked = if wanted("soak") {
        run_step("soak (3 minutes)", || {
            crate::soak::run(&crate::soak::Options {
                minutes: 3.0,
                clients: 4,
                seed: None,
                prepare: false,
            })
        })
    } else {
        Ok(())
    };
    if let Some(bench) = bench {
        run_step("bench smoke (beside the soak)", || bench.wait())?;
    }
    soaked?;
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

/// `cargo xtask bench --smoke --no-build` running, its lines printed as they come with a
/// `bench| ` prefix (they interleave with the soak's).
struct Bench {
    child: std::process::Child,
    /// Says when the output has ended.
    ended: std::sync::mpsc::Receiver<()>,
    start: Instant,
}

fn bench_smoke() -> anyhow::Result<Bench> {
    use std::io::{BufRead as _, BufReader};
    println!("xtask test: bench smoke (started beside the soak; its lines begin with `bench| `)");
    let exe = std::env::current_exe().context("the xtask binary")?;
    let (reader, writer) = std::io::pipe().context("a pipe for the bench output")?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(root())
        .args(["bench", "--smoke", "--no-build"])
        .stdin(std::process::Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    // The command holds the writing ends: the pipe ends only once it is gone.
    drop(cmd);
    let (tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            println!("bench| {line}");
        }
        let _ = tx.send(());
    });
    Ok(Bench {
        child,
        ended,
        start: Instant::now(),
    })
}

impl Bench {
    fn wait(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        // A process the bench left behind may hold the pipe open: its lines are not waited
        // for long.
        if self.ended.recv_timeout(Duration::from_secs(10)).is_err() {
            println!("xtask test: the bench's output is still open 10s after it exited");
        }
        println!(
            "xtask test: bench smoke ended after {:.1}s",
            self.start.elapsed().as_secs_f64()
        );
        if !status.success() {
            bail!("cargo xtask bench --smoke --no-build failed ({status})");
        }
        Ok(())
    }
}

fn clippy() -> anyhow::Result<()> {
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
    })
}

/// Each fuzz target briefly, seeded with its corpus: the targets keep building, and the
/// properties they assert hold on the seeds and near them.
fn fuzz() -> anyhow::Result<()> {
    run_step("fuzz (short)", || {
        crate::fuzz::run(
            None,
            crate::fuzz::Budget {
                seconds: FUZZ_SECONDS,
                runs: Some(FUZZ_RUNS),
                optimized: false,
            },
        )
    })
}

/// Builds every test executable once, then runs them in two lanes ([`crate::lanes`]) with
/// the privileged tests required; returns the passed and failed tests of all of them.
fn tests(
    image: Option<&std::path::Path>,
    deb: Option<&std::path::Path>,
) -> anyhow::Result<(u64, u64)> {
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo_bin);
    build.current_dir(root()).args([
        "test",
        "--workspace",
        "--exclude",
        "robustifier-ebpf",
        "--no-run",
        "--lib",
        "--bins",
        "--tests",
        "--message-format=json-render-diagnostics",
    ]);
    let out = build
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {build:?}"))?;
    if !out.status.success() {
        bail!("{build:?} failed ({})", out.status);
    }
    let binaries = crate::lanes::executables(&String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(
        !binaries.is_empty(),
        "cargo test --no-run named no test binary"
    );
    println!(
        "xtask test: {} test binaries, {} lanes",
        binaries.len(),
        crate::lanes::LANES
    );
    let mut env: Vec<(String, std::ffi::OsString)> = vec![
        (
            "ROBUSTIFIER_BIN".into(),
            root().join("target/debug/robustifier").into(),
        ),
        ("ROBUSTIFIER_REQUIRE_PRIVILEGED".into(), "1".into()),
        ("CARGO".into(), cargo_bin.into()),
    ];
    if let Some(image) = image {
        env.push(("ROBUSTIFIER_IMAGE".into(), image.into()));
    }
    if let Some(deb) = deb {
        env.push(("ROBUSTIFIER_DEB".into(), deb.into()));
    }
    let summary = crate::lanes::run(
        &binaries,
        &env,
        &root().join("target/xtask/test-times.json"),
    );
    println!("{} passed, {} failed", summary.passed, summary.failed);
    crate::lanes::verdict(&summary)?;
    Ok((summary.passed, summary.failed))
}
