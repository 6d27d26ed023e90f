//! The test executables of `cargo xtask test` in two lanes. Most of the lab tests' time is
//! waiting (daemons starting, deliveries, VRRP timers), so two binaries at once take little
//! more than one; `cargo test` would run them one after another.
//!
//! cargo builds the executables once (`cargo test --no-run`, its JSON messages naming each
//! one); each lane then takes the next binary from one queue, longest first (by the time
//! it took in the previous run, recorded in `target/xtask/test-times.json`). The VM test
//! boots qemu without KVM, CPU-bound: while it runs, the other lane takes only lab
//! binaries (mostly waiting), never the crates' own tests (CPU-bound). Each binary's output
//! is kept together and printed when it ends; its `test result:` lines are summed.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::scratch::Scratch;

/// Parallel lanes: the machine's two cores; more would make CPU-bound tests compete.
pub const LANES: usize = 2;

/// The package of the privileged lab tests (`tests/`): the binaries that mostly wait.
const LAB_PACKAGE: &str = "robustifier-lab";

/// Binaries that keep the CPU busy throughout (qemu TCG): nothing CPU-bound beside them.
const CPU_BOUND: &[&str] = &["robustifier-lab::appliance_vm"];

/// Seconds of the longest binaries in a warm run, for a machine that has timed none yet
/// (CI starts fresh): they start first, so neither lane ends long after the other.
const DEFAULT_SECS: &[(&str, f64)] = &[
    ("robustifier-lab::appliance_vm", 360.0),
    ("robustifier-lab::queue_move_mta", 64.0),
    ("robustifier-lab::queue_move_lab", 46.0),
    ("robustifier-lab::cluster_upgrade", 42.0),
    ("robustifier-lab::ha_reload", 35.0),
    ("robustifier-lab::mail_backends", 34.0),
];

/// Estimate for a binary neither timed nor in [`DEFAULT_SECS`].
const UNKNOWN_SECS: f64 = 10.0;

/// How long a binary's output may stay open after it exited (a daemon it left holding the
/// pipe) before what was read is printed without the rest.
const OUTPUT_GRACE: Duration = Duration::from_secs(10);

/// One test executable as cargo built it.
#[derive(Debug, Clone)]
pub struct Binary {
    /// `package::target`, with ` (lib)` or ` (bin)` for the crates' own tests.
    pub name: String,
    pub path: PathBuf,
    /// The package's directory: cargo runs a test binary there.
    pub dir: PathBuf,
    pub lab: bool,
}

/// How a binary is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Busy on the CPU all along (the VM test).
    CpuBound,
    /// A lab test: daemons in namespaces, mostly waiting.
    Lab,
    /// The crates' own unit and integration tests: short, CPU-bound.
    Crate,
}

impl Binary {
    pub fn kind(&self) -> Kind {
        if CPU_BOUND.contains(&self.name.as_str()) {
            Kind::CpuBound
        } else if self.lab {
            Kind::Lab
        } else {
            Kind::Crate
        }
    }
}

/// The test executables in cargo's `--message-format=json` output.
pub fn executables(json: &str) -> Vec<Binary> {
    json.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| {
            let path = PathBuf::from(m["executable"].as_str()?);
            let target = m["target"]["name"].as_str()?;
            let kind = m["target"]["kind"][0].as_str().unwrap_or("test");
            let manifest = PathBuf::from(m["manifest_path"].as_str()?);
            let dir = manifest.parent()?.to_owned();
            let package = package_name(m["package_id"].as_str()?, &dir);
            let name = match kind {
                "test" => format!("{package}::{target}"),
                other => format!("{package}::{target} ({other})"),
            };
            Some(Binary {
                lab: package == LAB_PACKAGE,
                name,
                path,
                dir,
            })
        })
        .collect()
}

/// The package's name from a package id (`path+file:///.../tests#robustifier-lab@0.1.0`, or
/// `path+file:///.../xtask#0.1.0` when the name is the directory's).
fn package_name(id: &str, dir: &Path) -> String {
    let after = id.rsplit_once('#').map_or(id, |(_, a)| a);
    match after.split_once('@') {
        Some((name, _)) => name.to_owned(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// The order binaries are offered in: longest first by `secs` (unknown ones at
/// [`UNKNOWN_SECS`]), the crates' own tests after every lab test so they meet the VM test
/// as late as possible.
pub fn order(binaries: &[Binary], secs: &BTreeMap<String, f64>) -> Vec<usize> {
    let est = |b: &Binary| secs.get(&b.name).copied().unwrap_or(UNKNOWN_SECS);
    let mut idx: Vec<usize> = (0..binaries.len()).collect();
    idx.sort_by(|&a, &b| {
        let (a, b) = (&binaries[a], &binaries[b]);
        (a.kind() == Kind::Crate)
            .cmp(&(b.kind() == Kind::Crate))
            .then(est(b).total_cmp(&est(a)))
            .then(a.name.cmp(&b.name))
    });
    idx
}

/// The next binary a free lane may start from `queue` (in [`order`]), given what runs:
/// nothing CPU-bound beside a CPU-bound binary; `None` if the lane must wait.
pub fn pick(queue: &[Kind], running: &[Kind]) -> Option<usize> {
    let busy = running.contains(&Kind::CpuBound);
    queue.iter().position(|&k| match k {
        Kind::Lab => true,
        Kind::CpuBound => !running.contains(&Kind::Crate),
        Kind::Crate => !busy,
    })
}

/// Passed and failed tests in one binary's output (its `test result:` lines).
pub fn count(output: &str) -> (u64, u64) {
    let (mut passed, mut failed) = (0, 0);
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            match (words.next().map(str::parse::<u64>), words.next()) {
                (Some(Ok(n)), Some("passed")) => passed += n,
                (Some(Ok(n)), Some("failed")) => failed += n,
                _ => {}
            }
        }
    }
    (passed, failed)
}

/// What one binary did.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub passed: u64,
    pub failed: u64,
    pub ok: bool,
    pub secs: f64,
}

/// The suite's totals; `failing` names every binary that failed.
#[derive(Debug, Default)]
pub struct Summary {
    pub passed: u64,
    pub failed: u64,
    pub failing: Vec<String>,
    pub secs: BTreeMap<String, f64>,
}

impl Summary {
    pub fn add(&mut self, o: &Outcome) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.secs.insert(o.name.clone(), o.secs);
        if !o.ok {
            self.failing.push(o.name.clone());
        }
    }
}

struct Queue {
    waiting: VecDeque<usize>,
    running: Vec<Kind>,
}

/// Runs `binaries` in [`LANES`] lanes, each with `env` and in its package's directory as
/// cargo would; prints each binary's output whole when it ends.
pub fn run(binaries: &[Binary], env: &[(String, std::ffi::OsString)], times: &Path) -> Summary {
    let previous = read_times(times);
    let queue = Arc::new((
        Mutex::new(Queue {
            waiting: order(binaries, &previous).into(),
            running: Vec::new(),
        }),
        Condvar::new(),
    ));
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|s| {
        for lane in 1..=LANES {
            let (queue, summary) = (&queue, &summary);
            s.spawn(move || {
                loop {
                    let (lock, cv) = &**queue;
                    let Ok(mut q) = lock.lock() else { return };
                    let i = loop {
                        if q.waiting.is_empty() {
                            return;
                        }
                        let kinds: Vec<Kind> =
                            q.waiting.iter().map(|&i| binaries[i].kind()).collect();
                        if let Some(at) = pick(&kinds, &q.running) {
                            let Some(i) = q.waiting.remove(at) else {
                                return;
                            };
                            break i;
                        }
                        let Ok(next) = cv.wait(q) else { return };
                        q = next;
                    };
                    let kind = binaries[i].kind();
                    q.running.push(kind);
                    drop(q);
                    let outcome = run_one(&binaries[i], i, env, lane);
                    if let Ok(mut sum) = summary.lock() {
                        sum.add(&outcome);
                    }
                    if let Ok(mut q) = lock.lock()
                        && let Some(at) = q.running.iter().position(|&k| k == kind)
                    {
                        q.running.remove(at);
                    }
                    cv.notify_all();
                }
            });
        }
    });
    let summary = summary.into_inner().unwrap_or_default();
    let mut secs = previous;
    secs.extend(summary.secs.clone());
    if let Err(e) = write_times(times, &secs) {
        println!("xtask test: could not record the test times: {e:#}");
    }
    summary
}

/// Runs binary number `index` with a temporary directory of its own ([`Scratch`]).
fn run_one(b: &Binary, index: usize, env: &[(String, std::ffi::OsString)], lane: usize) -> Outcome {
    let start = Instant::now();
    println!("xtask test: lane {lane}: {} started", b.name);
    let (text, status) = match Scratch::new(&index.to_string()) {
        Ok(scratch) => {
            let mut env = env.to_vec();
            env.push(("TMPDIR".into(), scratch.path().into()));
            let (mut text, status) = match capture(b, &env) {
                Ok(r) => r,
                Err(e) => (format!("{e:#}\n"), None),
            };
            let said = scratch.finish(status.is_some_and(|s| s.success()));
            if !said.is_empty() {
                text.push_str(&format!("xtask test: {}: {said}\n", b.name));
            }
            (text, status)
        }
        Err(e) => (format!("xtask test: no temporary directory: {e:#}\n"), None),
    };
    let (passed, failed) = count(&text);
    let ok = status.is_some_and(|s| s.success());
    let secs = start.elapsed().as_secs_f64();
    // One print for the whole block, so the other lane's lines never land inside it.
    let verdict = match status {
        Some(s) if s.success() => "ok".to_owned(),
        Some(s) => format!("FAILED ({s})"),
        None => "FAILED (did not run)".to_owned(),
    };
    print!(
        "xtask test: ---- {} (lane {lane}) ----\n{text}xtask test: ---- {} {verdict} in {secs:.1}s: {passed} passed, {failed} failed\n",
        b.name, b.name
    );
    Outcome {
        name: b.name.clone(),
        passed,
        failed,
        ok,
        secs,
    }
}

/// Runs the binary with stdout and stderr on one pipe (their lines in the order written).
fn capture(
    b: &Binary,
    env: &[(String, std::ffi::OsString)],
) -> anyhow::Result<(String, Option<std::process::ExitStatus>)> {
    let (mut reader, writer) = std::io::pipe().context("a pipe for the test output")?;
    let mut cmd = Command::new(&b.path);
    cmd.current_dir(&b.dir)
        .env("CARGO_MANIFEST_DIR", &b.dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", b.path.display()))?;
    // The command holds the writing ends until it is dropped: without this the pipe never
    // ends.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if let Ok(mut b) = sink.lock() {
                b.extend_from_slice(&chunk[..n]);
            }
        }
        let _ = tx.send(());
    });
    let status = child.wait()?;
    let mut note = String::new();
    if rx.recv_timeout(OUTPUT_GRACE).is_err() {
        note = format!(
            "xtask test: output still open {}s after {} exited (a process it started holds it)\n",
            OUTPUT_GRACE.as_secs(),
            b.name
        );
    }
    let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&note);
    Ok((text, Some(status)))
}

/// [`DEFAULT_SECS`], overridden by the times of the previous run on this machine.
fn read_times(path: &Path) -> BTreeMap<String, f64> {
    let mut secs: BTreeMap<String, f64> = DEFAULT_SECS
        .iter()
        .map(|&(name, s)| (name.to_owned(), s))
        .collect();
    let recorded: BTreeMap<String, f64> = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    secs.extend(recorded);
    secs
}

fn write_times(path: &Path, secs: &BTreeMap<String, f64>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(secs)?)?;
    Ok(())
}

/// Fails naming every failing binary.
pub fn verdict(summary: &Summary) -> anyhow::Result<()> {
    if !summary.failing.is_empty() || summary.failed > 0 {
        bail!(
            "{} passed, {} failed; failing test binaries: {}",
            summary.passed,
            summary.failed,
            summary.failing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(name: &str, lab: bool) -> Binary {
        Binary {
            name: name.into(),
            path: PathBuf::new(),
            dir: PathBuf::new(),
            lab,
        }
    }

    #[test]
    fn result_lines_add_up_and_other_lines_do_not_count() {
        let out = "running 3 tests\ntest a ... ok\n\
            test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test b ... FAILED\n  test result: 9 passed (indented, not a result line)\n\
            test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s\n";
        assert_eq!(count(out), (5, 1));
        assert_eq!(count("no tests here\n"), (0, 0));
    }

    #[test]
    fn the_summary_sums_binaries_and_names_each_failing_one() {
        let mut s = Summary::default();
        for (name, passed, failed, ok) in
            [("a", 3, 0, true), ("b", 2, 1, false), ("c", 0, 0, false)]
        {
            s.add(&Outcome {
                name: name.into(),
                passed,
                failed,
                ok,
                secs: 1.0,
            });
        }
        assert_eq!((s.passed, s.failed), (5, 1));
        assert_eq!(s.failing, ["b", "c"]);
        let e = verdict(&s).unwrap_err().to_string();
        assert!(e.contains("failing test binaries: b, c"), "{e}");
        let mut ok = Summary::default();
        ok.add(&Outcome {
            name: "a".into(),
            passed: 1,
            failed: 0,
            ok: true,
            secs: 1.0,
        });
        assert!(verdict(&ok).is_ok());
    }

    #[test]
    fn longest_first_with_the_crates_own_tests_last() {
        let bins = [
            bin("robustifier::robustifier (lib)", false),
            bin("robustifier-lab::ha_reload", true),
            bin("robustifier-lab::appliance_vm", true),
            bin("robustifier-lab::new_test", true),
            bin("robustifier-lab::steering", true),
        ];
        let secs: BTreeMap<String, f64> = [
            ("robustifier::robustifier (lib)", 90.0),
            ("robustifier-lab::ha_reload", 35.0),
            ("robustifier-lab::appliance_vm", 131.0),
            ("robustifier-lab::steering", 5.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let names: Vec<&str> = order(&bins, &secs)
            .into_iter()
            .map(|i| bins[i].name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "robustifier-lab::appliance_vm",
                "robustifier-lab::ha_reload",
                "robustifier-lab::new_test",
                "robustifier-lab::steering",
                "robustifier::robustifier (lib)",
            ]
        );
        assert_eq!(bins[2].kind(), Kind::CpuBound);
        assert_eq!(bins[1].kind(), Kind::Lab);
        assert_eq!(bins[0].kind(), Kind::Crate);
    }

    #[test]
    fn nothing_cpu_bound_runs_beside_the_vm_test() {
        use Kind::*;
        // Beside the VM test: the next lab binary, past a crate's tests.
        assert_eq!(pick(&[Crate, Lab], &[CpuBound]), Some(1));
        // Only crates' tests left: the lane waits for the VM test to end.
        assert_eq!(pick(&[Crate, Crate], &[CpuBound]), None);
        assert_eq!(pick(&[Crate, Crate], &[]), Some(0));
        // The VM test does not start beside a crate's tests, but a lab binary does.
        assert_eq!(pick(&[CpuBound, Lab], &[Crate]), Some(1));
        assert_eq!(pick(&[CpuBound], &[Crate]), None);
        assert_eq!(pick(&[CpuBound, Lab], &[Lab]), Some(0));
        assert_eq!(pick(&[], &[]), None);
    }

    #[test]
    fn cargo_json_names_each_test_executable_and_its_package_directory() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#robustifier-lab@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"ha_reload"},"profile":{"test":true},"executable":"/w/target/debug/deps/ha_reload-1"}
{"reason":"compiler-artifact","package_id":"path+file:///w/tests#robustifier-lab@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["lib"],"name":"robustifier_lab"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","package_id":"path+file:///w/proxy#robustifier@0.1.0","manifest_path":"/w/proxy/Cargo.toml","target":{"kind":["lib"],"name":"robustifier"},"profile":{"test":true},"executable":"/w/target/debug/deps/robustifier-2"}
{"reason":"compiler-artifact","package_id":"path+file:///w/xtask#0.1.0","manifest_path":"/w/xtask/Cargo.toml","target":{"kind":["bin"],"name":"xtask"},"profile":{"test":true},"executable":"/w/target/debug/deps/xtask-3"}
{"reason":"build-finished","success":true}
not json"#;
        let bins = executables(json);
        let got: Vec<(&str, &str, bool)> = bins
            .iter()
            .map(|b| (b.name.as_str(), b.dir.to_str().unwrap(), b.lab))
            .collect();
        assert_eq!(
            got,
            [
                ("robustifier-lab::ha_reload", "/w/tests", true),
                ("robustifier::robustifier (lib)", "/w/proxy", false),
                ("xtask::xtask (bin)", "/w/xtask", false),
            ]
        );
        assert_eq!(
            bins[0].path,
            PathBuf::from("/w/target/debug/deps/ha_reload-1")
        );
    }
}
