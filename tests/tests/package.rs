//! The Debian package: `cargo xtask package --profile dev` builds it; it holds the binary
//! (which runs), every unit of packaging/systemd/, the man pages, the MIB, the example
//! configurations and the maintainer scripts; lintian finds no error or warning; and
//! `systemd-analyze verify` accepts the units as unpacked. Nothing is installed on this
//! host: the package is unpacked into a directory of the test's own.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `program args` run to its end; fails the test with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (cargo xtask setup installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {text}",
        out.status
    );
    text
}

fn build() -> PathBuf {
    for tool in ["lintian", "systemd-analyze", "dpkg-deb"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} missing: run `cargo xtask setup`");
    }
    // `cargo xtask test` has built the package under test already (for the VM test too).
    if let Some(deb) = std::env::var_os("ROBUSTIFIER_DEB").filter(|d| !d.is_empty()) {
        let deb = PathBuf::from(deb);
        assert!(
            deb.is_file(),
            "ROBUSTIFIER_DEB={} is not a file",
            deb.display()
        );
        return deb;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "run",
            "-q",
            "-p",
            "xtask",
            "--",
            "package",
            "--profile",
            "dev",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo xtask package --profile dev failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = said
        .lines()
        .find_map(|l| l.strip_prefix("package: "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("cargo xtask package named no package: {said}"));
    assert!(
        deb.starts_with(root().join("target/debian")),
        "{}",
        deb.display()
    );
    deb
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(robustifier_lab::unique_prefix(tag));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_package_holds_everything_passes_lintian_and_its_units_verify() {
    let deb = build();
    let deb_s = deb.to_str().unwrap();

    let info = run("dpkg-deb", &["--info", deb_s]);
    for want in [
        "Package: robustifier",
        "Architecture: amd64",
        "adduser",
        " postinst ",
        " prerm ",
        " postrm ",
    ] {
        assert!(
            info.contains(want),
            "no {want:?} in the control data:\n{info}"
        );
    }

    let contents = run("dpkg-deb", &["--contents", deb_s]);
    let has = |path: &str| {
        contents
            .lines()
            .any(|l| l.ends_with(&format!(" ./{path}")) || l.ends_with(&format!(" {path}")))
    };
    let mut want: Vec<String> = [
        "usr/bin/robustifier",
        "usr/share/snmp/mibs/ROBUSTIFIER-MIB.txt",
        "usr/share/man/man8/robustifier.8.gz",
        "usr/share/man/man8/robustifier-run.8.gz",
        "usr/share/man/man8/robustifier-agent.8.gz",
        "usr/share/man/man8/robustifier-manager.8.gz",
        "usr/share/man/man8/robustifier-reload-or-upgrade.8.gz",
        "usr/share/man/man8/robustifier-member.8.gz",
        "usr/share/doc/robustifier/copyright",
        "usr/share/doc/robustifier/changelog.Debian.gz",
    ]
    .map(String::from)
    .to_vec();
    // Every unit of the folder, whoever wrote it (the update units included).
    for dir in ["packaging/systemd", "config"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if dir == "packaging/systemd" {
                want.push(format!("lib/systemd/system/{name}"));
            } else if name.ends_with(".toml") {
                want.push(format!("usr/share/doc/robustifier/examples/{name}"));
            }
        }
    }
    for unit in [
        "robustifier.service",
        "robustifier-agent.service",
        "robustifier-manager.service",
        "robustifier-member.service",
    ] {
        assert!(
            want.contains(&format!("lib/systemd/system/{unit}")),
            "{unit}"
        );
    }
    for path in &want {
        assert!(has(path), "{path} not in the package:\n{contents}");
    }
    let binary = contents
        .lines()
        .find(|l| l.ends_with("usr/bin/robustifier"))
        .unwrap();
    // Root's, by name or by id (cargo-deb writes ids).
    assert!(
        binary.starts_with("-rwxr-xr-x root/root") || binary.starts_with("-rwxr-xr-x 0/0"),
        "{binary}"
    );

    // The unpacked binary runs; the scripts parse; an upgrade reloads the front-end, never
    // stops or restarts it.
    let unpacked = scratch("deb");
    run("dpkg-deb", &["-x", deb_s, unpacked.to_str().unwrap()]);
    let version = run(
        unpacked.join("usr/bin/robustifier").to_str().unwrap(),
        &["--version"],
    );
    assert!(version.starts_with("robustifier "), "{version}");
    let control = scratch("deb-control");
    run("dpkg-deb", &["-e", deb_s, control.to_str().unwrap()]);
    for script in ["postinst", "prerm", "postrm"] {
        run("sh", &["-n", control.join(script).to_str().unwrap()]);
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(
        postinst.contains("systemctl reload \"$FRONTEND\""),
        "{postinst}"
    );
    for never in [
        "restart \"$FRONTEND\"",
        "stop \"$FRONTEND\"",
        "restart robustifier.service",
    ] {
        assert!(!postinst.contains(never), "postinst must not {never}");
    }

    let lint = run("lintian", &["--fail-on", "error,warning", deb_s]);
    assert!(
        !lint
            .lines()
            .any(|l| l.starts_with("E: ") || l.starts_with("W: ")),
        "{lint}"
    );

    // The units as unpacked, against this host's own targets (systemd is not PID 1 here:
    // verify loads them offline).
    let sysroot = scratch("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/systemd")).unwrap();
    run(
        "cp",
        &[
            "-a",
            "/lib/systemd/system",
            sysroot.join("lib/systemd").to_str().unwrap(),
        ],
    );
    run("dpkg-deb", &["-x", deb_s, sysroot.to_str().unwrap()]);
    let units: Vec<String> = want
        .iter()
        .filter(|p| p.starts_with("lib/systemd/system/"))
        .map(|p| sysroot.join(p).to_str().unwrap().to_owned())
        .collect();
    let mut args = vec!["verify", "--man=no"];
    let root_arg = format!("--root={}", sysroot.display());
    args.push(&root_arg);
    args.extend(units.iter().map(String::as_str));
    let said = run("systemd-analyze", &args);
    assert!(
        !said.lines().any(|l| l.contains("robustifier")),
        "systemd-analyze verify on the units:\n{said}"
    );
    for d in [unpacked, control, sysroot] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The front-end unit: readiness, watchdog, reload, and a reason for every capability it
/// keeps; the daemon's own kept set is within it.
#[test]
fn the_front_end_unit_is_notify_with_watchdog_and_explains_its_capabilities() {
    let unit =
        std::fs::read_to_string(root().join("packaging/systemd/robustifier.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in robustifier.service"))
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("NotifyAccess"), "all");
    assert!(value("WatchdogSec").ends_with('s'));
    assert_eq!(
        value("ExecStart"),
        "/usr/bin/robustifier run -c /etc/robustifier/robustifier.toml"
    );
    assert_eq!(
        value("ExecReload"),
        "/usr/bin/robustifier reload-or-upgrade -c /etc/robustifier/robustifier.toml"
    );
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("ProtectSystem"), "strict");
    let caps: Vec<&str> = value("CapabilityBoundingSet").split_whitespace().collect();
    for cap in &caps {
        assert!(
            unit.lines()
                .any(|l| l.starts_with("#  ") && l[3..].split_whitespace().any(|w| w == *cap)),
            "{cap} has no reason in the unit's comment"
        );
    }
    for kept in robustifier::privs::KEPT {
        let name = kept.to_string();
        assert!(
            caps.contains(&name.as_str()),
            "{name} is kept by the daemon"
        );
    }
}

/// The member's unit: the daemon user without any capability, sandboxed as the manager's
/// unit is, its options from member.env only, and ordered after the front-end it links.
#[test]
fn the_member_unit_runs_unprivileged_from_its_options_after_the_front_end() {
    let read = |name: &str| {
        std::fs::read_to_string(root().join("packaging/systemd").join(name))
            .unwrap_or_else(|e| panic!("packaging/systemd/{name}: {e}"))
    };
    let member = read("robustifier-member.service");
    let manager = read("robustifier-manager.service");
    let values = |unit: &str, key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    let one = |key: &str| values(&member, key).join(" ");
    assert_eq!(one("ExecStart"), "/usr/bin/robustifier member $MEMBER_ARGS");
    assert_eq!(one("EnvironmentFile"), "-/etc/robustifier/member.env");
    assert_eq!(one("User"), "robustifier");
    assert_eq!(one("Group"), "robustifier");
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("AmbientCapabilities"), "");
    for key in ["Wants", "After"] {
        assert!(
            one(key)
                .split_whitespace()
                .any(|u| u == "robustifier.service"),
            "{key}= of the member names robustifier.service"
        );
    }
    // Every hardening line of the manager's unit, the same in the member's.
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictAddressFamilies",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "SystemCallErrorNumber",
        "UMask",
    ] {
        assert!(
            !values(&manager, key).is_empty(),
            "{key} in the manager's unit"
        );
        assert_eq!(values(&member, key), values(&manager, key), "{key}");
    }
}
