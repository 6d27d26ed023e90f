use std::sync::Mutex;

use super::*;

/// Members whose state the test sets, and the audit trail they received.
#[derive(Default)]
struct Fake {
    members: Mutex<Vec<MemberView>>,
    audit: Mutex<Vec<String>>,
}

impl Cluster for Fake {
    fn members(&self) -> Vec<MemberView> {
        self.members.lock().unwrap().clone()
    }
    fn audit(&self, who: &str, action: &str, what: &str, error: Option<&str>) {
        self.audit
            .lock()
            .unwrap()
            .push(format!("{who} {action} {what} {}", error.unwrap_or("ok")));
    }
}

impl Fake {
    fn new(names: &[&str], release: &str) -> Fake {
        let f = Fake::default();
        *f.members.lock().unwrap() = names
            .iter()
            .map(|n| MemberView {
                name: (*n).into(),
                connected: true,
                release: release.into(),
                ready: true,
            })
            .collect();
        f
    }
    fn set(&self, name: &str, connected: bool, release: &str) {
        for m in self.members.lock().unwrap().iter_mut() {
            if m.name == name {
                m.connected = connected;
                m.release = release.into();
            }
        }
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rb-upgrade-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A package "uploaded" without the upload: its file and its record.
fn package(u: &Upgrades, sha: &str, version: &str) {
    std::fs::write(u.package_path(sha), version).unwrap();
    lock(&u.state).packages.insert(
        sha.into(),
        Package {
            version: version.into(),
            size: version.len() as u64,
            by: "t".into(),
            uploaded_ms: 0,
        },
    );
}

fn states(u: &Upgrades) -> Vec<StepState> {
    lock(&u.state)
        .rollout
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .map(|s| s.state)
        .collect()
}

fn rollout_state(u: &Upgrades) -> RolloutState {
    lock(&u.state).rollout.as_ref().unwrap().state
}

const V1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const V2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

#[test]
fn members_are_upgraded_one_at_a_time() {
    let u = Upgrades::open(&dir("order")).unwrap();
    let c = Fake::new(&["fe-a", "fe-b"], "0.1.0+old");
    package(&u, V1, "0.1.0+v1");
    let (mut a, mut b) = (u.attach("fe-a", 1), u.attach("fe-b", 2));
    u.start(&c, "alice", V1, 60).unwrap();
    u.step(&c);
    assert_eq!(states(&u), [StepState::Installing, StepState::Pending]);
    let order = a.try_recv().unwrap();
    assert_eq!(
        (order.version.as_str(), order.rollback),
        ("0.1.0+v1", false)
    );
    assert!(
        b.try_recv().is_err(),
        "fe-b is sent nothing while fe-a upgrades"
    );
    // fe-a installed but its front-end does not run the version yet: still waiting.
    u.progress("fe-a", V1, UpdateStage::Installed, "");
    u.step(&c);
    assert_eq!(states(&u), [StepState::Installing, StepState::Pending]);
    c.set("fe-a", true, "0.1.0+v1");
    u.step(&c);
    assert_eq!(states(&u), [StepState::Done, StepState::Installing]);
    assert!(b.try_recv().is_ok());
    c.set("fe-b", true, "0.1.0+v1");
    u.step(&c);
    assert_eq!(rollout_state(&u), RolloutState::Done);
    assert_eq!(
        lock(&u.state).installed.get("fe-b").map(String::as_str),
        Some(V1)
    );
    let audit = c.audit.lock().unwrap().join("\n");
    assert!(
        audit.contains("upgraded member fe-a runs 0.1.0+v1 ok"),
        "{audit}"
    );
    assert!(audit.contains("upgrade done"), "{audit}");
    // The state survives a restart of the manager.
    let again = Upgrades::open(
        &std::env::temp_dir().join(format!("rb-upgrade-order-{}", std::process::id())),
    )
    .unwrap();
    assert_eq!(rollout_state(&again), RolloutState::Done);
}

#[test]
fn a_failed_member_is_rolled_back_and_the_rest_untouched() {
    let u = Upgrades::open(&dir("rollback")).unwrap();
    let c = Fake::new(&["fe-a", "fe-b"], "0.1.0+v1");
    package(&u, V1, "0.1.0+v1");
    package(&u, V2, "0.1.0+v2");
    lock(&u.state).installed.insert("fe-a".into(), V1.into());
    let (mut a, mut b) = (u.attach("fe-a", 1), u.attach("fe-b", 2));
    u.start(&c, "alice", V2, 60).unwrap();
    u.step(&c);
    assert_eq!(a.try_recv().unwrap().sha256, V2);
    u.progress("fe-a", V2, UpdateStage::Failed, "installer failed");
    u.step(&c);
    assert_eq!(states(&u), [StepState::RollingBack, StepState::Pending]);
    let back = a.try_recv().unwrap();
    assert_eq!((back.sha256.as_str(), back.rollback), (V1, true));
    // fe-a still runs V1 (the new binary never served), but the rollback is not done
    // until the installer put V1's package back.
    u.step(&c);
    assert_eq!(states(&u), [StepState::RollingBack, StepState::Pending]);
    u.progress("fe-a", V1, UpdateStage::Installed, "");
    u.step(&c);
    assert_eq!(states(&u), [StepState::RolledBack, StepState::Pending]);
    assert_eq!(rollout_state(&u), RolloutState::Stopped);
    u.step(&c);
    assert!(b.try_recv().is_err(), "fe-b was sent a package");
    assert_eq!(
        lock(&u.state).installed.get("fe-a").map(String::as_str),
        Some(V1)
    );
    let audit = c.audit.lock().unwrap().join("\n");
    assert!(
        audit.contains("upgrade failed member fe-a to 0.1.0+v2 installer failed"),
        "{audit}"
    );
}

#[test]
fn a_member_without_a_previous_package_fails_after_the_timeout() {
    let u = Upgrades::open(&dir("timeout")).unwrap();
    let c = Fake::new(&["fe-a", "fe-b"], "0.1.0");
    package(&u, V2, "0.1.0+v2");
    let _a = u.attach("fe-a", 1);
    u.start(&c, "alice", V2, 1).unwrap();
    u.step(&c);
    // Sent a second ago, by the record.
    lock(&u.state).rollout.as_mut().unwrap().steps[0].started_ms -= 1000;
    u.step(&c);
    assert_eq!(states(&u), [StepState::Failed, StepState::Pending]);
    assert_eq!(rollout_state(&u), RolloutState::Stopped);
}

#[test]
fn a_member_away_is_upgraded_when_it_returns() {
    let u = Upgrades::open(&dir("away")).unwrap();
    let c = Fake::new(&["fe-a", "fe-b"], "0.1.0");
    package(&u, V1, "0.1.0+v1");
    c.set("fe-a", false, "0.1.0");
    let mut b = u.attach("fe-b", 2);
    u.start(&c, "alice", V1, 60).unwrap();
    u.step(&c);
    assert_eq!(states(&u), [StepState::Away, StepState::Installing]);
    assert!(b.try_recv().is_ok());
    c.set("fe-b", true, "0.1.0+v1");
    u.step(&c);
    assert_eq!(states(&u), [StepState::Away, StepState::Done]);
    assert_eq!(rollout_state(&u), RolloutState::Running);
    // A new rollout may start meanwhile; this one waits only for fe-a.
    c.set("fe-a", true, "0.1.0");
    let mut a = u.attach("fe-a", 3);
    u.step(&c);
    assert_eq!(states(&u), [StepState::Installing, StepState::Done]);
    assert_eq!(a.try_recv().unwrap().sha256, V1);
}

fn build_deb(d: &Path, name: &str, version: &str) -> PathBuf {
    let stage = d.join(format!("stage-{name}-{version}"));
    std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
    std::fs::write(
        stage.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n"),
    )
    .unwrap();
    let deb = d.join(format!("{name}_{version}.deb"));
    let out = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb
}

fn upload(u: &Upgrades, bytes: &[u8], sha: &str) -> Result<(u64, Option<Package>), UpgradeError> {
    let mut last = Err(UpgradeError::Unknown(String::new()));
    for (i, part) in bytes.chunks(1000).enumerate() {
        let data = base64::engine::general_purpose::STANDARD.encode(part);
        last = u.chunk("alice", sha, bytes.len() as u64, (i * 1000) as u64, &data);
        if last.is_err() {
            break;
        }
    }
    last
}

#[test]
fn an_upload_is_hashed_and_its_version_read() {
    let d = dir("upload");
    let u = Upgrades::open(&d).unwrap();
    let deb = std::fs::read(build_deb(&d, "robustifier", "0.2.0-1")).unwrap();
    let sha = hex(ring::digest::digest(&ring::digest::SHA256, &deb).as_ref());
    let (_, p) = upload(&u, &deb, &sha).unwrap();
    assert_eq!(p.unwrap().version, "0.2.0-1");
    assert!(u.package_path(&sha).is_file());
    // A package whose bytes do not match the hash the operator named is refused.
    let mut bad = deb.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        upload(&u, &bad, &V1.replace('1', "a")),
        Err(UpgradeError::HashMismatch { .. })
    ));
    assert!(!u.package_path(&V1.replace('1', "a")).exists());
    // Another software's package is refused.
    let other = std::fs::read(build_deb(&d, "postfix", "3.0")).unwrap();
    let osha = hex(ring::digest::digest(&ring::digest::SHA256, &other).as_ref());
    assert!(matches!(
        upload(&u, &other, &osha),
        Err(UpgradeError::NotPackage(_))
    ));
    // Chunks out of order and oversized packages are refused.
    assert!(matches!(
        u.chunk("alice", &sha, 10, 5, "AAAA"),
        Err(UpgradeError::OutOfOrder { .. })
    ));
    assert!(matches!(
        u.chunk("alice", &sha, MAX_PACKAGE + 1, 0, ""),
        Err(UpgradeError::TooLarge(_))
    ));
    // A rollout of an unknown package is refused.
    let c = Fake::new(&["fe-a"], "0.1.0");
    assert!(matches!(
        u.start(&c, "alice", V2, 60),
        Err(UpgradeError::Unknown(_))
    ));
}
