//! `robustifier install-update DIR`: the root side of a package update on a member.
//!
//! The member (unprivileged) writes `DIR/incoming.deb`, then renames `DIR/incoming.json`
//! into place ([`UpdateRequest`]); `robustifier-update.path` sees it and starts
//! `robustifier-update.service`, which runs this as root. It checks the package's hash
//! against the request, installs it with the installer (`dpkg -i`), keeps the package it
//! replaces as `previous.deb` and the one it installed as `installed.deb`, and writes
//! `DIR/result.json` ([`UpdateResult`]) for the member. The request is removed before the
//! result is written, so the path unit never fires twice for one request and a member that
//! sees the result may write the next request at once.
//!
//! An update the installer fails on is rolled back here at once: `installed.deb` (the
//! appliance image ships it, so a member's first update has one too) is installed again,
//! since a failed `dpkg -i` may leave the new files in place under the old process. The
//! result still says the update failed, and how the rollback went; the manager then also
//! sends the package it last installed, when it has one.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::Command,
};

use serde::{Deserialize, Serialize};

pub const INCOMING_DEB: &str = "incoming.deb";
pub const INCOMING_JSON: &str = "incoming.json";
pub const RESULT_JSON: &str = "result.json";
pub const INSTALLED_DEB: &str = "installed.deb";
pub const PREVIOUS_DEB: &str = "previous.deb";
/// Where a member writes updates when its configuration names no `update_dir`.
pub const DEFAULT_DIR: &str = crate::config::UPDATE_DIR;
/// The installer when neither `--installer` nor `ROBUSTIFIER_INSTALLER` names another.
pub const DEFAULT_INSTALLER: &str = "dpkg -i";

/// `incoming.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    pub version: String,
    /// Lower-case hex SHA-256 of `incoming.deb`.
    pub sha256: String,
    /// The package is the one the member ran before a failed update.
    #[serde(default)]
    pub rollback: bool,
}

/// `result.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateResult {
    pub version: String,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Request(PathBuf, serde_json::Error),
    #[error("version {0:?} is not a Debian version")]
    BadVersion(String),
    #[error("the package's SHA-256 is {got}, the request says {want}: not installed")]
    HashMismatch { got: String, want: String },
    #[error("the installer is empty")]
    NoInstaller,
    #[error("installer {0:?} could not run: {1}")]
    Spawn(String, std::io::Error),
    #[error("installer {command:?} failed ({status}): {output}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

/// Whether `v` may be a Debian version: what the manager read from the package's control
/// file, checked again here before it reaches a command line or a file.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.as_bytes()[0].is_ascii_digit()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+-~:".contains(&b))
}

/// Whether `s` is a lower-case hex SHA-256.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a file, read in blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

/// Writes `bytes` to `path` so that a reader sees the old or the new content: a file
/// beside it, synced, renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Carries out the request in `dir` with `installer` (a command and its arguments; the
/// package's path is appended) and writes `result.json`. The result is also returned; an
/// error before the request could be read leaves no result.
pub fn run(dir: &Path, installer: &str) -> Result<UpdateResult, InstallError> {
    let json = dir.join(INCOMING_JSON);
    let bytes = std::fs::read(&json).map_err(|e| InstallError::Io(json.clone(), e))?;
    let parsed: Result<UpdateRequest, _> = serde_json::from_slice(&bytes);
    let (version, rollback) = parsed
        .as_ref()
        .map(|r| (r.version.clone(), r.rollback))
        .unwrap_or_default();
    let outcome = match parsed {
        Err(e) => Err(InstallError::Request(json.clone(), e)),
        Ok(request) => install(dir, &request, installer),
    };
    // The request goes first: see the module's comment.
    for f in [INCOMING_JSON, INCOMING_DEB] {
        let p = dir.join(f);
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(InstallError::Io(p, e));
        }
    }
    let error = outcome.err().map(|e| {
        let mut why = e.to_string();
        if matches!(e, InstallError::Failed { .. }) && !rollback {
            why.push_str(&roll_back(dir, installer));
        }
        why
    });
    let result = UpdateResult {
        version,
        ok: error.is_none(),
        error,
    };
    let out = dir.join(RESULT_JSON);
    let bytes = serde_json::to_vec(&result).map_err(|e| InstallError::Request(out.clone(), e))?;
    write_atomic(&out, &bytes).map_err(|e| InstallError::Io(out, e))?;
    Ok(result)
}

/// Installs `installed.deb` again after a failed update: what the result adds to the
/// failure's text.
fn roll_back(dir: &Path, installer: &str) -> String {
    let installed = dir.join(INSTALLED_DEB);
    if !installed.is_file() {
        return format!("; no {INSTALLED_DEB} to roll back to");
    }
    match run_installer(installer, &installed, "") {
        Ok(()) => format!("; rolled back to {INSTALLED_DEB}"),
        Err(e) => format!("; the rollback to {INSTALLED_DEB} failed too: {e}"),
    }
}

fn install(dir: &Path, request: &UpdateRequest, installer: &str) -> Result<(), InstallError> {
    if !valid_version(&request.version) {
        return Err(InstallError::BadVersion(request.version.clone()));
    }
    let deb = dir.join(INCOMING_DEB);
    let got = sha256_file(&deb).map_err(|e| InstallError::Io(deb.clone(), e))?;
    if got != request.sha256 {
        return Err(InstallError::HashMismatch {
            got,
            want: request.sha256.clone(),
        });
    }
    run_installer(installer, &deb, &request.version)?;
    // Installed: the package it replaced becomes the previous one (what a rollback that
    // the manager has no copy for would need), this one the installed one.
    let installed = dir.join(INSTALLED_DEB);
    if installed.exists() {
        let previous = dir.join(PREVIOUS_DEB);
        std::fs::rename(&installed, &previous).map_err(|e| InstallError::Io(previous, e))?;
    }
    std::fs::rename(&deb, &installed).map_err(|e| InstallError::Io(installed, e))?;
    Ok(())
}

/// Runs `installer` on `deb` (`version`: what it is told it installs, empty when it is
/// the installed package again).
fn run_installer(installer: &str, deb: &Path, version: &str) -> Result<(), InstallError> {
    let mut words = installer.split_whitespace();
    let program = words.next().ok_or(InstallError::NoInstaller)?;
    let output = Command::new(program)
        .args(words)
        .arg(deb)
        .env("ROBUSTIFIER_UPDATE_VERSION", version)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| InstallError::Spawn(installer.to_owned(), e))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        let text: String = text.trim().chars().rev().take(2000).collect();
        return Err(InstallError::Failed {
            command: installer.to_owned(),
            status: output.status,
            output: text.chars().rev().collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rb-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn request(d: &Path, body: &[u8], sha256: &str) {
        std::fs::write(d.join(INCOMING_DEB), body).unwrap();
        let r = UpdateRequest {
            version: "1.2.3-1".into(),
            sha256: sha256.into(),
            rollback: false,
        };
        std::fs::write(d.join(INCOMING_JSON), serde_json::to_vec(&r).unwrap()).unwrap();
    }

    /// An installer that copies the package to `seen` (what it was given).
    fn recorder(d: &Path) -> String {
        let script = d.join("installer.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ncp \"$1\" {}/seen\n", d.display()),
        )
        .unwrap();
        format!("sh {}", script.display())
    }

    #[test]
    fn a_package_is_installed_and_the_one_it_replaces_kept() {
        let d = dir("ok");
        let installer = recorder(&d);
        std::fs::write(d.join(INSTALLED_DEB), b"old package").unwrap();
        request(
            &d,
            b"new package",
            &hex(ring::digest::digest(&ring::digest::SHA256, b"new package").as_ref()),
        );
        let r = run(&d, &installer).unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.version, "1.2.3-1");
        assert_eq!(std::fs::read(d.join("seen")).unwrap(), b"new package");
        assert_eq!(std::fs::read(d.join(PREVIOUS_DEB)).unwrap(), b"old package");
        assert_eq!(
            std::fs::read(d.join(INSTALLED_DEB)).unwrap(),
            b"new package"
        );
        assert!(!d.join(INCOMING_JSON).exists() && !d.join(INCOMING_DEB).exists());
        let written: UpdateResult =
            serde_json::from_slice(&std::fs::read(d.join(RESULT_JSON)).unwrap()).unwrap();
        assert_eq!(written, r);
    }

    #[test]
    fn a_bad_hash_is_refused_before_the_installer_runs() {
        let d = dir("hash");
        let installer = recorder(&d);
        std::fs::write(d.join(INSTALLED_DEB), b"old package").unwrap();
        request(&d, b"tampered", &"0".repeat(64));
        let r = run(&d, &installer).unwrap();
        assert!(!r.ok);
        assert!(
            r.error.as_deref().unwrap_or_default().contains("SHA-256"),
            "{r:?}"
        );
        assert!(!d.join("seen").exists(), "the installer ran");
        assert_eq!(
            std::fs::read(d.join(INSTALLED_DEB)).unwrap(),
            b"old package"
        );
        assert!(!d.join(PREVIOUS_DEB).exists());
        assert!(
            !d.join(INCOMING_JSON).exists(),
            "the request stays and fires again"
        );
    }

    #[test]
    fn a_failing_installer_leaves_the_installed_package() {
        let d = dir("fail");
        std::fs::write(d.join(INSTALLED_DEB), b"old package").unwrap();
        request(
            &d,
            b"pkg",
            &hex(ring::digest::digest(&ring::digest::SHA256, b"pkg").as_ref()),
        );
        let r = run(&d, "false").unwrap();
        assert!(
            !r.ok && r.error.as_deref().unwrap_or_default().contains("failed"),
            "{r:?}"
        );
        assert_eq!(
            std::fs::read(d.join(INSTALLED_DEB)).unwrap(),
            b"old package"
        );
    }

    /// An installer that logs each package it is given and fails on one holding "bad".
    fn picky(d: &Path) -> String {
        let script = d.join("picky.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat \"$1\" >> {log}/given; echo >> {log}/given\n\
                 ! grep -q bad \"$1\"\n",
                log = d.display()
            ),
        )
        .unwrap();
        format!("sh {}", script.display())
    }

    fn sha(body: &[u8]) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref())
    }

    #[test]
    fn a_first_update_that_fails_is_rolled_back_to_the_installed_package() {
        // The image's installed.deb, and no previous.deb yet: the member's first update.
        let d = dir("first");
        let installer = picky(&d);
        std::fs::write(d.join(INSTALLED_DEB), b"image package").unwrap();
        request(&d, b"bad package", &sha(b"bad package"));
        let r = run(&d, &installer).unwrap();
        assert!(!r.ok, "{r:?}");
        let error = r.error.unwrap_or_default();
        assert!(
            error.contains("failed") && error.contains("rolled back to installed.deb"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("given")).unwrap(),
            "bad package\nimage package\n",
            "the update, then the installed package again"
        );
        assert_eq!(
            std::fs::read(d.join(INSTALLED_DEB)).unwrap(),
            b"image package"
        );
        assert!(!d.join(PREVIOUS_DEB).exists());
    }

    #[test]
    fn a_failed_rollback_is_not_rolled_back_and_nothing_installed_is_said() {
        let d = dir("rollback");
        let installer = picky(&d);
        std::fs::write(d.join(INSTALLED_DEB), b"image package").unwrap();
        std::fs::write(d.join(INCOMING_DEB), b"bad old package").unwrap();
        let r = UpdateRequest {
            version: "1.2.2-1".into(),
            sha256: sha(b"bad old package"),
            rollback: true,
        };
        std::fs::write(d.join(INCOMING_JSON), serde_json::to_vec(&r).unwrap()).unwrap();
        let r = run(&d, &installer).unwrap();
        assert!(!r.ok);
        assert_eq!(
            std::fs::read_to_string(d.join("given")).unwrap(),
            "bad old package\n"
        );

        let d = dir("none");
        let installer = picky(&d);
        request(&d, b"bad package", &sha(b"bad package"));
        let r = run(&d, &installer).unwrap();
        assert!(
            r.error
                .unwrap_or_default()
                .contains("no installed.deb to roll back to")
        );
    }

    #[test]
    fn versions_and_hashes_are_checked() {
        assert!(valid_version("0.1.0+lab2") && valid_version("1:2.0-3~bpo1"));
        for bad in ["", "x1", "1 2", "1/../2", "1;rm"] {
            assert!(!valid_version(bad), "{bad}");
        }
        assert!(valid_sha256(&"a".repeat(64)) && !valid_sha256(&"A".repeat(64)));
    }
}
