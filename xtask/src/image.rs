//! `cargo xtask image`: the appliance image. The builder is the lab crate's
//! (`robustifier_lab::image`) so that the VM test boots what this command ships; this
//! module supplies the package (`cargo xtask package`) and reports what was written.

use std::{path::Path, time::Instant};

use robustifier_lab::image::{self, Image, Options};

use crate::util::root;

/// Builds the package for `profile` and the image at `out` (relative to the workspace);
/// returns the image and the package in it.
pub fn run(
    seed: Option<std::path::PathBuf>,
    out: &Path,
    profile: &str,
) -> anyhow::Result<(Image, std::path::PathBuf)> {
    let start = Instant::now();
    let deb = crate::package::build(profile)?;
    let out = root().join(out);
    let built = image::build(&Options {
        work: root().join("target/image"),
        out,
        deb: Some(deb.clone()),
        seed,
    })?;
    println!(
        "xtask image: {} ({} MiB on disk) in {:.0}s",
        built.disk.display(),
        allocated_mib(&built.disk),
        start.elapsed().as_secs_f64()
    );
    println!(
        "xtask image: kernel {}, initrd {}",
        built.kernel.display(),
        built.initrd.display()
    );
    if let Some(seed) = &built.seed {
        println!("xtask image: seed disk {}", seed.display());
    }
    Ok((built, deb))
}

fn allocated_mib(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512 / (1024 * 1024))
        .unwrap_or(0)
}
