//! `cargo xtask image`: the appliance image. The builder is the lab crate's
//! (`robustifier_lab::image`) so that the VM test boots what this command ships; this
//! module supplies the package and reports what was written.

use std::{path::Path, time::Instant};

use robustifier_lab::image::{self, Image, Options};

use crate::util::root;

/// Builds the package for `profile` and the image at `out` (relative to the workspace).
pub fn run(seed: Option<std::path::PathBuf>, out: &Path, profile: &str) -> anyhow::Result<Image> {
    let start = Instant::now();
    let deb = package(profile)?;
    let out = root().join(out);
    let built = image::build(&Options {
        work: root().join("target/image"),
        out,
        deb: Some(deb),
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
    Ok(built)
}

/// The Robustifier .deb for `profile`.
fn package(profile: &str) -> anyhow::Result<std::path::PathBuf> {
    let (flag, dir) = if profile == "release" {
        (Some("--release"), "release")
    } else {
        (None, "debug")
    };
    let mut args = vec!["build", "-p", "robustifier"];
    args.extend(flag);
    crate::util::cargo(&args)?;
    let out = root().join("target/image");
    std::fs::create_dir_all(&out)?;
    image::stand_in_deb(
        &root().join("target").join(dir).join("robustifier"),
        env!("CARGO_PKG_VERSION"),
        &out,
    )
}

fn allocated_mib(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512 / (1024 * 1024))
        .unwrap_or(0)
}
