//! bpffs: where pinned maps live. A fresh machine may not have it mounted.

use std::path::{Path, PathBuf};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use robustifier_common::PINNED_MAPS;

use super::DataPathError;

const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf unless it (or the pin directory's own file system) already
/// is one, then creates `pin_dir`.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), DataPathError> {
    let root = Path::new(BPFFS_ROOT);
    let is_bpffs = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root).map_err(|source| DataPathError::PinDir {
            path: root.to_owned(),
            source,
        })?;
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| DataPathError::Mount {
            path: root.to_owned(),
            source,
        })?;
    }
    std::fs::create_dir_all(pin_dir).map_err(|source| DataPathError::PinDir {
        path: pin_dir.to_owned(),
        source,
    })
}

/// Removes the pinned maps under `pin_dir` and the directory itself if that leaves it
/// empty. Returns the pins that were removed.
pub fn remove_pins(pin_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in PINNED_MAPS {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Something else lives there (not ours): leave it.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) => {}
        Err(e) => return Err(e),
    }
    Ok(removed)
}
