//! Software updates through the cluster manager, with the mail cluster: two front-ends,
//! each with its member and an update folder watched by a lab "installer" that stands in
//! for `robustifier-update.path`: it runs `robustifier install-update DIR` in the
//! front-end's namespace with an injected installer, which unpacks the package with
//! `dpkg-deb -x` and runs `robustifier upgrade --binary` on the unpacked binary (the real
//! hand-over without a refused connection). The packages are built here with `dpkg-deb
//! --build` from the built binary, stamped with a build id so that each reports its
//! package's version. One test in phases (one lab):
//!
//! a. a rollout with both members present: one member at a time (the installers' runs
//!    never overlap, in the rollout's order), both report the new version, mail flows
//!    through the VIP throughout with nothing refused, the audit trail has each step;
//! b. a rollout while fe-b's member is away: fe-a is upgraded, fe-b when it returns;
//! c. a package whose binary exits 1 at start: fe-a fails, is rolled back to the package
//!    it ran, the rollout stops and fe-b's installer never runs;
//! d. `install-update` refuses a package whose hash is not the request's, and runs no
//!    installer.
//!
//! Privileged.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use robustifier_lab::{
    cli::Successor,
    cluster::Cluster,
    manager::{
        ClusterManager, Traffic, cluster_config, member_priorities, member_row, runs_head,
        shared_routers,
    },
    privileged,
    process::Signal,
    topology::VIP_SMTP,
    unique_prefix,
    vrrp::{eventually, owns},
};

/// The recipients of the traffic, and the back-end each lands on.
const TRAFFIC: [(&str, usize); 3] = [
    ("alice@example.test", 0),
    ("dave@example.net", 1),
    ("erin@example.org", 2),
];
/// A bound for a poll to come round, not a timing claim.
const GENEROUS: Duration = Duration::from_secs(120);

/// One run of `install-update` by a lab installer: front-end, package version, start,
/// end, and whether it installed.
#[derive(Debug, Clone)]
struct Run {
    frontend: usize,
    version: String,
    start: Instant,
    end: Instant,
    ok: bool,
}

/// The lab's stand-in for the path unit of each front-end.
struct Installers {
    stop: Arc<AtomicBool>,
    runs: Arc<Mutex<Vec<Run>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Installers {
    fn start(c: &Cluster, m: &ClusterManager, dirs: &[PathBuf]) -> Installers {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let bin = robustifier_lab::robustifier_bin();
        let mut threads = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let fe = &c.lab.frontends[i];
            // Unpack, then hand the front-end over to the unpacked binary.
            let script = c.lab.log_dir.join(format!("installer-{}.sh", fe.name));
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nset -e\ndest=$(mktemp -d {log}/unpacked-{name}-XXXXXX)\n\
                     dpkg-deb -x \"$1\" \"$dest\"\n\
                     exec {bin} upgrade --config {cfg} --binary \"$dest/usr/bin/robustifier\" --log {log}/{name}-upgraded.log\n",
                    log = c.lab.log_dir.display(),
                    name = fe.name,
                    bin = bin.display(),
                    cfg = m.member_config(&c.lab, i).display(),
                ),
            )
            .unwrap();
            let (ns, dir, bin) = (fe.ns.clone(), dir.clone(), bin.clone());
            let (stop, runs) = (Arc::clone(&stop), Arc::clone(&runs));
            let log = c.lab.log_dir.join(format!("installer-{}.log", fe.name));
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let request = dir.join("incoming.json");
                    let Ok(text) = std::fs::read_to_string(&request) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let version = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["version"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    let start = Instant::now();
                    let out = ns
                        .command(&bin)
                        .arg("install-update")
                        .arg(&dir)
                        .env("ROBUSTIFIER_INSTALLER", format!("sh {}", script.display()))
                        .env("RUST_LOG", "info")
                        .env("NO_COLOR", "1")
                        .output();
                    let end = Instant::now();
                    let ok = out.as_ref().is_ok_and(|o| o.status.success());
                    if let Ok(o) = &out {
                        let mut said = String::from_utf8_lossy(&o.stdout).into_owned();
                        said.push_str(&String::from_utf8_lossy(&o.stderr));
                        let _ = std::fs::write(&log, said);
                    }
                    runs.lock().unwrap().push(Run {
                        frontend: i,
                        version,
                        start,
                        end,
                        ok,
                    });
                }
            }));
        }
        Installers {
            stop,
            runs,
            threads,
        }
    }

    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }
}

impl Drop for Installers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A package `robustifier` of `version` (`0.1.0+ID`) holding `binary` as
/// /usr/bin/robustifier, built with dpkg-deb in `dir`.
fn build_deb(dir: &Path, version: &str, binary: &[u8]) -> PathBuf {
    let stage = dir.join(format!("stage-{version}"));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(stage.join("usr/bin")).unwrap();
    std::fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: robustifier\nVersion: {version}\nArchitecture: amd64\n\
             Maintainer: Robustifier lab <lab@example.org>\nDescription: lab package\n"
        ),
    )
    .unwrap();
    let bin = stage.join("usr/bin/robustifier");
    std::fs::write(&bin, binary).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let deb = dir.join(format!("robustifier_{version}_amd64.deb"));
    // Fast compression: the binary is large and the point is the rollout.
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-z1", "--build"])
        .arg(&stage)
        .arg(&deb)
        .output()
        .expect("run dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb --build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb
}

/// The built binary without its debug sections (smaller to ship), stamped with `id`.
fn stamped(dir: &Path, id: &str) -> Vec<u8> {
    let stripped = dir.join("robustifier-stripped");
    if !stripped.is_file() {
        let out = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(robustifier_lab::robustifier_bin())
            .arg(&stripped)
            .output()
            .expect("run objcopy");
        assert!(
            out.status.success(),
            "objcopy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut bytes = std::fs::read(&stripped).unwrap();
    robustifier::release::stamp(&mut bytes, id).expect("stamp the build id");
    bytes
}

fn release_of(m: &ClusterManager, name: &str) -> String {
    m.status()
        .ok()
        .and_then(|s| {
            member_row(&s, name).and_then(|r| r["frontend"]["release"].as_str().map(str::to_owned))
        })
        .unwrap_or_default()
}

/// The state of the last rollout (`running`, `done`, `stopped`), as the manager says.
fn rollout_state(m: &ClusterManager) -> String {
    m.cli_ok(&["upgrade", "--status", "--json"])
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["rollout"]["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The pid of the front-end member `name` reports, if the manager has it.
fn frontend_pid(m: &ClusterManager, name: &str) -> Option<u64> {
    let st = m.status().ok()?;
    member_row(&st, name)
        .and_then(|r| r["frontend"]["pid"].as_u64())
        .filter(|&pid| pid != 0)
}

/// Ends, when the test ends (passed or failed), every front-end the installers started:
/// each runs a binary unpacked under the test's own `unpacked-*` folders, so they are found
/// by that path and ended by pid. The manager's status cannot say which they are: in a
/// rollback a member's front-end is replaced twice, and a pid read in between is stale.
struct UnpackedFrontends {
    prefix: String,
}

impl UnpackedFrontends {
    fn under(dir: &Path) -> UnpackedFrontends {
        UnpackedFrontends {
            prefix: format!("{}/unpacked-", dir.display()),
        }
    }

    /// The pids whose program lies under the prefix.
    fn pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let argv0 = argv0.split(|&b| b == 0).next().unwrap_or_default();
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                argv0.starts_with(self.prefix.as_bytes())
                    || exe.to_string_lossy().starts_with(&self.prefix)
            })
            .collect()
    }
}

impl Drop for UnpackedFrontends {
    fn drop(&mut self) {
        // Each `Successor` ends its process (TERM, then KILL) as it goes.
        for pid in self.pids() {
            drop(Successor {
                pid: nix::unistd::Pid::from_raw(pid),
            });
        }
    }
}

fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_manager_rolls_a_package_over_the_cluster_and_back() {
    if !privileged::check_tools("cluster_upgrade", &["dpkg-deb", "objcopy"]) {
        return;
    }
    let mut c = Cluster::up(&unique_prefix("cupg"), 2).expect("cluster up");
    c.set_extra(0, &shared_routers(20));
    let names: Vec<String> = c.lab.frontends.iter().map(|f| f.name.clone()).collect();
    let dir = c.lab.log_dir.clone();
    let unpacked = UnpackedFrontends::under(&dir);
    let update_dirs: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.join(format!("updates-{n}")))
        .collect();

    let m = ClusterManager::up(&mut c.lab).expect("manager up");
    for i in [0, 1] {
        m.start_member(&mut c.lab, i).expect("member");
    }
    // Each member's own update folder, in its `[frontend]` table.
    let mut text = cluster_config(&c, &[member_priorities(0), member_priorities(1)]);
    for i in [0, 1] {
        let pin = format!("frontend = {{ pin_dir = \"{}\"", c.lab.pin_dir(i).display());
        text = text.replace(
            &pin,
            &format!("{pin}, update_dir = \"{}\"", update_dirs[i].display()),
        );
    }
    assert_eq!(text.matches("update_dir").count(), 2, "{text}");
    m.commit_wait(&text, "first", 60).expect("first commit");
    for i in [0, 1] {
        m.start_frontend(&mut c.lab, i).expect("front-end");
    }
    let fea = c.lab.frontends[0].ns.clone();
    eventually("fe-a owns the SMTP VIP", GENEROUS, || {
        owns(&fea, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    eventually("both members report their front-ends", GENEROUS, || {
        names.iter().all(|n| !release_of(&m, n).is_empty())
            && m.status()
                .is_ok_and(|s| names.iter().all(|n| runs_head(&s, n)))
    })
    .unwrap();
    let installers = Installers::start(&c, &m, &update_dirs);
    // The rollout's order: the members by name.
    let mut order: Vec<usize> = vec![0, 1];
    order.sort_by_key(|&i| names[i].clone());

    let base = env!("CARGO_PKG_VERSION");
    let (v2, v3, v4) = (
        format!("{base}+lab2"),
        format!("{base}+lab3"),
        format!("{base}+lab4"),
    );
    let deb2 = build_deb(&dir, &v2, &stamped(&dir, "lab2"));
    let deb3 = build_deb(&dir, &v3, &stamped(&dir, "lab3"));
    let deb4 = build_deb(
        &dir,
        &v4,
        b"#!/bin/sh\necho lab4 will not start >&2\nexit 1\n",
    );

    let recipients: Vec<&str> = TRAFFIC.iter().map(|(r, _)| *r).collect();
    let traffic = Traffic::start(
        &c.lab,
        VIP_SMTP.into(),
        "cupg",
        &recipients,
        Duration::from_millis(100),
        5000,
    )
    .unwrap();

    // a. Both members present: one at a time, in order.
    let out = m.cli(&[
        "upgrade",
        &deb2.display().to_string(),
        "--wait",
        "--timeout",
        "120",
    ]);
    println!("a. {}", output(&out));
    assert!(out.status.success(), "{}", output(&out));
    for n in &names {
        assert_eq!(release_of(&m, n), v2, "{n}: {:#}", m.status().unwrap());
    }
    let runs = installers.runs();
    assert_eq!(
        runs.iter()
            .map(|r| (r.frontend, r.version.as_str(), r.ok))
            .collect::<Vec<_>>(),
        [(order[0], v2.as_str(), true), (order[1], v2.as_str(), true)],
        "{runs:?}"
    );
    assert!(
        runs[0].end <= runs[1].start,
        "the second member's install began before the first's ended: {runs:?}"
    );
    traffic.more(5, "mail after the rollout", GENEROUS).unwrap();

    // b. fe-b's member away during a rollout: upgraded when it returns.
    let away = order[1];
    m.stop_member(&mut c.lab, away, Signal::SIGTERM).unwrap();
    eventually("the manager sees the member gone", GENEROUS, || {
        m.status()
            .is_ok_and(|s| member_row(&s, &names[away]).is_some_and(|r| r["connected"] == false))
    })
    .unwrap();
    let out = m.cli(&[
        "upgrade",
        &deb3.display().to_string(),
        "--wait",
        "--timeout",
        "120",
    ]);
    println!("b. {}", output(&out));
    assert!(out.status.success(), "{}", output(&out));
    assert!(
        output(&out).contains(&format!("upgraded when they return: {}", names[away])),
        "{}",
        output(&out)
    );
    assert_eq!(release_of(&m, &names[order[0]]), v3);
    m.start_member(&mut c.lab, away).unwrap();
    eventually(
        "the member back is upgraded, the rollout done",
        GENEROUS,
        || release_of(&m, &names[away]) == v3 && rollout_state(&m) == "done",
    )
    .unwrap();
    let status = m.cli_ok(&["upgrade", "--status"]).unwrap();
    println!("b. {status}");
    assert!(status.contains("Done"), "{status}");
    let before_bad = installers.runs().len();
    assert_eq!(before_bad, 4);

    // c. A package whose binary does not start: rolled back on the first member only.
    let serving_before_c = frontend_pid(&m, &names[order[0]]);
    let out = m.cli(&[
        "upgrade",
        &deb4.display().to_string(),
        "--wait",
        "--timeout",
        "120",
    ]);
    println!("c. {}", output(&out));
    assert!(!out.status.success(), "{}", output(&out));
    eventually("the rollback's install is recorded", GENEROUS, || {
        installers.runs().len() >= before_bad + 2
    })
    .unwrap();
    let runs = installers.runs();
    let after: Vec<(usize, &str, bool)> = runs[before_bad..]
        .iter()
        .map(|r| (r.frontend, r.version.as_str(), r.ok))
        .collect();
    assert_eq!(
        after,
        [
            (order[0], v4.as_str(), false),
            (order[0], v3.as_str(), true)
        ],
        "the first member tried the package and was rolled back; the second never touched"
    );
    for n in &names {
        assert_eq!(release_of(&m, n), v3, "{n}");
    }
    // The rollback's install started the first member's front-end once more (the bad
    // package's never ran): the manager reports that process.
    eventually("the rolled-back front-end is reported", GENEROUS, || {
        frontend_pid(&m, &names[order[0]]).is_some_and(|pid| Some(pid) != serving_before_c)
    })
    .unwrap();
    let status = m.cli_ok(&["upgrade", "--status"]).unwrap();
    println!("c. {status}");
    assert!(
        status.contains("RolledBack") && status.contains("Stopped"),
        "{status}"
    );
    let audit = m.cli_ok(&["audit"]).unwrap();
    for needle in [
        format!("member {} runs {v2}", names[order[0]]),
        format!("member {} runs {v3}", names[away]),
        format!("member {} to {v4}", names[order[0]]),
        "rollback".to_owned(),
        "upload".to_owned(),
    ] {
        assert!(
            audit.contains(&needle),
            "{needle} not in the audit trail:\n{audit}"
        );
    }
    assert!(m.cli(&["audit", "--verify"]).status.success());

    // Mail flowed throughout, nothing refused, everything delivered.
    traffic
        .more(5, "mail after the rollback", GENEROUS)
        .unwrap();
    traffic
        .finish_delivered(
            &c,
            &TRAFFIC,
            "through the VIP during the rollouts: ",
            GENEROUS,
        )
        .unwrap();

    // d. install-update refuses a package that is not the request's.
    let d = dir.join("bad-hash");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(&deb2, d.join("incoming.deb")).unwrap();
    std::fs::write(
        d.join("incoming.json"),
        format!(
            "{{\"version\":\"{v2}\",\"sha256\":\"{}\",\"rollback\":false}}",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let marker = d.join("installer-ran");
    let out = std::process::Command::new(robustifier_lab::robustifier_bin())
        .arg("install-update")
        .arg(&d)
        .env(
            "ROBUSTIFIER_INSTALLER",
            format!("touch {}", marker.display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", output(&out));
    assert!(
        !marker.exists(),
        "the installer ran on a package with a bad hash"
    );
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["ok"], false, "{result}");
    assert!(
        result["error"]
            .as_str()
            .unwrap_or_default()
            .contains("SHA-256"),
        "{result}"
    );
    drop(installers);
    let left = unpacked.pids();
    assert!(
        !left.is_empty(),
        "the upgraded front-ends run from unpacked packages"
    );
    drop(unpacked);
}
