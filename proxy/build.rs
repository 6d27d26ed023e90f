//! Builds the kernel programs (`ebpf/robustifier-ebpf`) for the BPF target with BTF and
//! leaves the object in OUT_DIR, where `src/datapath/mod.rs` embeds it.

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "robustifier-ebpf";

fn main() -> anyhow::Result<()> {
    // One clear line instead of a linker backtrace when setup has not run.
    if which("bpf-linker").is_none() {
        bail!("bpf-linker is not installed: run `cargo xtask setup` (installs bpf-linker 0.10.4)");
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (is nightly rust-src installed? `cargo xtask setup`)")
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
