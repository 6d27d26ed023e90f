//! Where test and benchmark runs put their temporary files. Each test binary and each
//! benchmark run gets a directory of its own and finds it as `TMPDIR` (so every
//! `std::env::temp_dir()` under it, the labs' logs, state and copied binaries included,
//! lands there). It is removed when that part passes and kept, with its path printed, when
//! it fails: its logs are the diagnosis. A later run removes what runs that are gone left.
//!
//! Without this, every run left its files in the shared temporary directory: a cluster
//! upgrade test alone leaves unpacked packages of close to 1 GB, and a machine that runs
//! the suite repeatedly (CI among them) filled its disk.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Prefix of the directories: `rbx<pid of the xtask process>-<tag>`, short because lab
/// daemons put UNIX sockets several levels below it (a socket path has 107 bytes at most).
/// The pid in the name is read as the labs' names are ([`robustifier_lab::owner_pid`]).
const PREFIX: &str = "rbx";

/// Set (to anything), every scratch directory is kept.
const KEEP: &str = "ROBUSTIFIER_KEEP_SCRATCH";

pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh, empty directory for `tag` in this process's run.
    pub fn new(tag: &str) -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("{PREFIX}{}-{tag}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("clearing {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        // Like /tmp: lab daemons run as their own users and make files of their own here.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o1777))?;
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory when `passed` (unless `ROBUSTIFIER_KEEP_SCRATCH` is set, to
    /// read a passing run's logs); otherwise keeps it and says where it is.
    pub fn finish(self, passed: bool) -> String {
        self.close(!passed || std::env::var_os(KEEP).is_some())
    }

    fn close(self, keep: bool) -> String {
        if keep {
            return format!("its temporary files are kept in {}", self.path.display());
        }
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => String::new(),
            Err(e) => format!("could not remove {}: {e}", self.path.display()),
        }
    }
}

/// Removes what runs that are gone kept, then says how much disk is free: a full disk fails
/// tests in ways that do not name it.
pub fn tidy() {
    let (count, bytes) = sweep();
    if count > 0 {
        println!(
            "xtask: removed {count} temporary directories ({:.1} MiB) of earlier runs",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    for dir in [std::env::temp_dir(), crate::util::root().join("target")] {
        if let Ok(fs) = nix::sys::statvfs::statvfs(&dir) {
            let free = fs.blocks_available() as f64 * fs.fragment_size() as f64;
            println!(
                "xtask: {:.1} GiB free for {}",
                free / (1024.0 * 1024.0 * 1024.0),
                dir.display()
            );
        }
    }
}

/// Removes the directories of runs whose process is gone; returns how many and their size
/// in bytes.
fn sweep() -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return (0, 0);
    };
    let (mut count, mut bytes) = (0, 0);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_scratch(&name) || !robustifier_lab::orphaned(&name) {
            continue;
        }
        let size = size_of(&entry.path());
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            count += 1;
            bytes += size;
        }
    }
    (count, bytes)
}

/// Whether `name` is a scratch directory's: the prefix, then a pid.
fn is_scratch(name: &str) -> bool {
    name.starts_with(PREFIX) && robustifier_lab::owner_pid(name).is_some()
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scratch_directories_are_swept() {
        assert!(is_scratch("rbx1234-7"));
        assert!(is_scratch("rbx1234-bench"));
        assert_eq!(robustifier_lab::owner_pid("rbx1234-7"), Some(1234));
        assert!(!is_scratch("rbxfoo"));
        assert!(!is_scratch("rbt1234-cupg0"));
        assert!(!is_scratch("rb-frontend-1234-7"));
        assert!(!is_scratch("robustifier-lab"));
    }

    #[test]
    fn a_closed_directory_is_gone_and_a_kept_one_is_named() {
        let passed = Scratch::new("selftest-pass").unwrap();
        std::fs::write(passed.path().join("log"), "x").unwrap();
        let path = passed.path().to_owned();
        assert_eq!(passed.close(false), "");
        assert!(!path.exists());

        let failed = Scratch::new("selftest-fail").unwrap();
        std::fs::write(failed.path().join("log"), "x").unwrap();
        let path = failed.path().to_owned();
        assert!(failed.close(true).contains(&path.display().to_string()));
        assert!(path.join("log").exists());
        std::fs::remove_dir_all(path).unwrap();
    }
}
