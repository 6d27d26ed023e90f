//! The appliance image: a Debian 12 system with the Robustifier package, as a GPT disk
//! that boots by UEFI, built without loop devices or mounts. `cargo xtask image` and the
//! VM test both call [`build`], so the test boots exactly what the command ships.
//!
//! Steps: debootstrap (cached under `target/image/cache/<key>`, the key a hash of the
//! package list, so repeated builds skip the download and unpack), a copy of it made into
//! the appliance (first-boot unit, networkd, guest agent, the package installed with
//! service starts denied, docs and apt lists removed), then the disk: the root file system
//! by `mkfs.ext4 -d`, an EFI system partition by mtools holding a `grub-mkstandalone`
//! binary, both written into a file partitioned by sfdisk. The kernel and initrd are also
//! copied next to the disk so a VM may boot them directly (`-kernel`/`-initrd`).

use std::{
    fs,
    io::{Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian release and mirror of the image.
pub const SUITE: &str = "bookworm";
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// File-system label of the root partition: the boot loader and the kernel find it by it.
pub const ROOT_LABEL: &str = "RBROOT";
/// Label of the seed disk the first boot reads.
pub const SEED_LABEL: &str = "RBSEED";

/// The kernel command line of the image (the boot loader's and a direct `-kernel` boot's).
pub const CMDLINE: &str = "root=LABEL=RBROOT ro console=ttyS0 net.ifnames=1";

/// The kernel, from bookworm-backports: Debian 12's own 6.1 verifier rejects the
/// front-end's eBPF programs ("reg type unsupported for arg#0 function memset"), the
/// backported kernel loads them. The cloud flavour has the virtio drivers and little else.
pub const KERNEL: (&str, &str) = ("linux-image-cloud-amd64", "bookworm-backports");

/// What debootstrap installs on top of minbase, with why. The cache key is built from this.
pub const PACKAGES: &[(&str, &str)] = &[
    (
        "initramfs-tools",
        "the kernel's initrd (the kernel comes from KERNEL)",
    ),
    ("systemd", "init, journald, networkd"),
    ("systemd-sysv", "systemd as /sbin/init"),
    ("udev", "device names, the seed disk by its label"),
    ("dbus", "systemctl talks to systemd over it"),
    ("iproute2", "ip, for the operator and the first boot"),
    ("kmod", "module loading"),
    (
        "qemu-guest-agent",
        "the tests and the operator run commands through it; no SSH",
    ),
    (
        "mtools",
        "the first boot reads the seed disk's FAT without mounting it",
    ),
    (
        "libcap2-bin",
        "capsh and getpcaps, to inspect the daemons' capabilities",
    ),
    ("procps", "ps, to look at the daemons"),
    (
        "adduser",
        "the package's postinst adds the robustifier user",
    ),
    ("ca-certificates", "TLS to back-ends and the manager"),
];

/// Where and what to build.
#[derive(Clone, Debug)]
pub struct Options {
    /// Work directory (`target/image`): the cache and the staging root live here.
    pub work: PathBuf,
    /// The disk image to write (raw GPT).
    pub out: PathBuf,
    /// The Robustifier .deb to install; none: an image without the product (the boot and
    /// the guest agent still work).
    pub deb: Option<PathBuf>,
    /// A seed to write next to the image as `<out>.seed.img`.
    pub seed: Option<PathBuf>,
}

/// The built image.
#[derive(Clone, Debug)]
pub struct Image {
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub seed: Option<PathBuf>,
}

/// The image's files from `packaging/image/`, with where they go in the root.
const FILES: &[(&str, &str, u32)] = &[
    (
        "robustifier-firstboot",
        "usr/libexec/robustifier/firstboot",
        0o755,
    ),
    (
        "robustifier-firstboot.service",
        "etc/systemd/system/robustifier-firstboot.service",
        0o644,
    ),
    (
        "dpkg-excludes",
        "etc/dpkg/dpkg.cfg.d/01-robustifier-image",
        0o644,
    ),
];

fn packaging_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/image")
}

/// The workspace's `target/image`.
pub fn default_work_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image")
}

/// The slow part of [`build`], alone: the tools checked and the cached debootstrap made
/// (download and unpack), so that a caller can start it early and overlap it with other
/// work. Returns the cached root.
pub fn prepare(work: &Path) -> anyhow::Result<PathBuf> {
    for tool in [
        "debootstrap",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
        "sfdisk",
        "grub-mkstandalone",
    ] {
        if crate::privileged::which(tool).is_none() {
            bail!("image: `{tool}` not found (run `cargo xtask setup`)");
        }
    }
    fs::create_dir_all(work)?;
    bootstrap(work)
}

/// Builds the image (see the module's description).
pub fn build(opts: &Options) -> anyhow::Result<Image> {
    let base = prepare(&opts.work)?;
    let root = opts.work.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).context("remove the previous staging root")?;
    }
    run(Command::new("cp").arg("-a").arg(&base).arg(&root))?;
    customize(&root, opts.deb.as_deref())?;
    let out_dir = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    fs::create_dir_all(&out_dir)?;
    let stem = opts
        .out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("robustifier")
        .to_owned();
    let kernel = out_dir.join(format!("{stem}.vmlinuz"));
    let initrd = out_dir.join(format!("{stem}.initrd"));
    let (k, i) = kernel_files(&root)?;
    fs::copy(&k, &kernel)?;
    fs::copy(&i, &initrd)?;
    disk(&opts.work, &root, &opts.out)?;
    fs::remove_dir_all(&root)?;
    let seed = match &opts.seed {
        Some(s) => {
            let path = out_dir.join(format!("{stem}.seed.img"));
            seed_disk(&fs::read_to_string(s)?, &path)?;
            Some(path)
        }
        None => None,
    };
    Ok(Image {
        disk: opts.out.clone(),
        kernel,
        initrd,
        seed,
    })
}

/// The cache key of the package list: FNV-1a over suite, mirror and names (stable across
/// toolchains, unlike std's hasher).
pub fn cache_key() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(SUITE);
    feed(MIRROR);
    feed(KERNEL.0);
    feed(KERNEL.1);
    for (p, _) in PACKAGES {
        feed(p);
    }
    format!("{h:016x}")
}

/// The debootstrap result for this package list, made once.
fn bootstrap(work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("cache").join(cache_key());
    let root = dir.join("root");
    let done = dir.join("done");
    if done.exists() {
        return Ok(root);
    }
    // A cache of another package list is stale: at most one is kept.
    if let Ok(entries) = fs::read_dir(work.join("cache")) {
        for e in entries.filter_map(Result::ok) {
            fs::remove_dir_all(e.path())?;
        }
    }
    fs::create_dir_all(&dir)?;
    let include: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    let log = dir.join("debootstrap.log");
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", "--include"])
        .arg(include.join(","))
        .arg(SUITE)
        .arg(&root)
        .arg(MIRROR)
        .stdout(fs::File::create(&log)?)
        .stderr(fs::File::options().append(true).open(&log)?)
        .status()
        .context("cannot start debootstrap")?;
    if !status.success() {
        bail!(
            "debootstrap failed ({status}); see {} (the end of {})",
            log.display(),
            root.join("debootstrap/debootstrap.log").display()
        );
    }
    let (kernel, suite) = KERNEL;
    write_mode(
        &root.join(format!("etc/apt/sources.list.d/{suite}.list")),
        &format!("deb {MIRROR} {suite} main\n"),
        0o644,
    )?;
    // Nothing is started: the chroot has no init, and policy-rc.d keeps it that way.
    let policy = root.join("usr/sbin/policy-rc.d");
    write_mode(&policy, "#!/bin/sh\nexit 101\n", 0o755)?;
    chroot(&root, &["apt-get", "-q", "update"])?;
    chroot(
        &root,
        &[
            "apt-get",
            "-q",
            "-y",
            "--no-install-recommends",
            "-t",
            suite,
            "install",
            kernel,
        ],
    )?;
    chroot(&root, &["apt-get", "clean"])?;
    fs::remove_file(&policy)?;
    fs::write(&done, "")?;
    Ok(root)
}

/// The appliance's own files and settings in `root`, and the package installed.
fn customize(root: &Path, deb: Option<&Path>) -> anyhow::Result<()> {
    // No service starts inside the chroot while packages are installed.
    let policy = root.join("usr/sbin/policy-rc.d");
    write_mode(&policy, "#!/bin/sh\nexit 101\n", 0o755)?;
    for (src, dst, mode) in FILES {
        let text = fs::read_to_string(packaging_dir().join(src))
            .with_context(|| format!("packaging/image/{src}"))?;
        write_mode(&root.join(dst), &text, *mode)?;
    }
    write_mode(&root.join("etc/hostname"), "robustifier\n", 0o644)?;
    write_mode(
        &root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
        0o644,
    )?;
    write_mode(
        &root.join("etc/fstab"),
        &format!("LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n"),
        0o644,
    )?;
    // A fresh machine id on each machine's first boot.
    write_mode(&root.join("etc/machine-id"), "", 0o444)?;
    if let Some(deb) = deb {
        fs::copy(deb, root.join("tmp/robustifier.deb"))
            .with_context(|| format!("copy {}", deb.display()))?;
        chroot(root, &["dpkg", "-i", "/tmp/robustifier.deb"])?;
        // The installed package, kept where `robustifier install-update` keeps it: a
        // member's first update that fails is rolled back to it.
        let kept = root.join("var/lib/robustifier/updates/installed.deb");
        fs::rename(root.join("tmp/robustifier.deb"), &kept)
            .with_context(|| format!("keep the package as {}", kept.display()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&kept, fs::Permissions::from_mode(0o640))?;
        }
    }
    chroot(
        root,
        &[
            "systemctl",
            "enable",
            "systemd-networkd.service",
            "robustifier-firstboot.service",
        ],
    )?;
    // No unit should wait for every link: the appliance serves on what it has.
    chroot(
        root,
        &["systemctl", "mask", "systemd-networkd-wait-online.service"],
    )?;
    fs::remove_file(&policy)?;
    slim(root)
}

/// Documentation, manuals, locales and apt's lists and caches out of the image.
fn slim(root: &Path) -> anyhow::Result<()> {
    for dir in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/lib/apt/lists",
        "var/cache/apt",
        "var/cache/debconf",
        "var/log",
    ] {
        let path = root.join(dir);
        if path.exists() {
            for entry in fs::read_dir(&path)? {
                let p = entry?.path();
                if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)?;
                } else {
                    fs::remove_file(&p)?;
                }
            }
        }
    }
    fs::create_dir_all(root.join("var/lib/apt/lists/partial"))?;
    fs::create_dir_all(root.join("var/cache/apt/archives/partial"))?;
    fs::create_dir_all(root.join("var/cache/debconf"))?;
    Ok(())
}

/// The newest kernel and its initrd in `root/boot`.
fn kernel_files(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let boot = root.join("boot");
    let mut kernels: Vec<PathBuf> = fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let kernel = kernels.pop().context("no kernel in the image's /boot")?;
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("kernel name")?
        .to_owned();
    let initrd = boot.join(format!("initrd.img-{version}"));
    anyhow::ensure!(initrd.is_file(), "no {} in the image", initrd.display());
    Ok((kernel, initrd))
}

const MIB: u64 = 1024 * 1024;
const ESP_MIB: u64 = 16;

/// The GPT disk at `out`: ESP (GRUB) and the root file system made from `root`.
fn disk(work: &Path, root: &Path, out: &Path) -> anyhow::Result<()> {
    let esp = work.join("esp.img");
    let rootfs = work.join("rootfs.img");
    let bootx64 = work.join("BOOTX64.EFI");
    let grub_cfg = work.join("grub.cfg");
    for f in [&esp, &rootfs, &bootx64] {
        if f.exists() {
            fs::remove_file(f)?;
        }
    }
    // GRUB finds the root file system by its label and boots the kernel's symlinks there.
    fs::write(
        &grub_cfg,
        format!(
            "set timeout=0\n\
             search --no-floppy --label {ROOT_LABEL} --set=root\n\
             linux /vmlinuz {CMDLINE}\n\
             initrd /initrd.img\n\
             boot\n"
        ),
    )?;
    run(Command::new("grub-mkstandalone")
        .args([
            "-O",
            "x86_64-efi",
            "--modules=part_gpt ext2 search_label linux normal",
            "--locales=",
            "--fonts=",
            "--themes=",
            "-o",
        ])
        .arg(&bootx64)
        .arg(format!("boot/grub/grub.cfg={}", grub_cfg.display())))?;
    run(Command::new("mkfs.vfat")
        .args(["-n", "ESP", "-C"])
        .arg(&esp)
        .arg((ESP_MIB * 1024).to_string()))?;
    run(Command::new("mmd")
        .arg("-i")
        .arg(&esp)
        .args(["::/EFI", "::/EFI/BOOT"]))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&esp)
        .arg(&bootx64)
        .arg("::/EFI/BOOT/BOOTX64.EFI"))?;

    // Room for the files plus a third, and at least 256 MiB free for logs and updates.
    let used = du_bytes(root)?;
    let root_mib = (used + used / 3) / MIB + 256;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", ROOT_LABEL, "-d"])
        .arg(root)
        .arg(&rootfs)
        .arg(format!("{root_mib}M")))?;

    let esp_start = MIB;
    let root_start = esp_start + ESP_MIB * MIB;
    let root_len = root_mib * MIB;
    let total = root_start + root_len + MIB;
    if out.exists() {
        fs::remove_file(out)?;
    }
    let file = fs::File::create(out)?;
    file.set_len(total)?;
    drop(file);
    let table = format!(
        "label: gpt\n\
         start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI system\"\n\
         start={}, size={}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"root\"\n",
        esp_start / 512,
        ESP_MIB * MIB / 512,
        root_start / 512,
        root_len / 512,
    );
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start sfdisk")?;
    child
        .stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(table.as_bytes())?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "sfdisk failed ({status})");
    place(out, &esp, esp_start)?;
    place(out, &rootfs, root_start)?;
    fs::remove_file(&esp)?;
    fs::remove_file(&rootfs)?;
    Ok(())
}

/// Copies `part` into `disk` at `offset`, leaving holes where `part` is zero.
fn place(disk: &Path, part: &Path, offset: u64) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut src = fs::File::open(part)?;
    let mut dst = fs::File::options().write(true).open(disk)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut at = offset;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(at))?;
            dst.write_all(&buf[..n])?;
        }
        at += n as u64;
    }
    Ok(())
}

fn du_bytes(root: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du")
        .args(["-s", "-B1", "--apparent-size"])
        .arg(root)
        .output()?;
    anyhow::ensure!(out.status.success(), "du {} failed", root.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du output")
}

/// A small FAT disk labelled RBSEED holding `seed.toml` (mtools: no mount).
pub fn seed_disk(seed_toml: &str, path: &Path) -> anyhow::Result<()> {
    seed_disk_with(seed_toml, &[], path)
}

/// [`seed_disk`] with more files beside `seed.toml`: (name on the disk, file), e.g. a
/// member's `ca.pem`, `member.pem` and `member.key`.
pub fn seed_disk_with(seed_toml: &str, files: &[(&str, &Path)], path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_file(path)?;
    }
    let text = path.with_extension("toml");
    fs::write(&text, seed_toml)?;
    run(Command::new("mkfs.vfat")
        .args(["-n", SEED_LABEL, "-C"])
        .arg(path)
        .arg("1440"))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(path)
        .arg(&text)
        .arg("::/seed.toml"))?;
    for (name, file) in files {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(path)
            .arg(file)
            .arg(format!("::/{name}")))?;
    }
    Ok(())
}

fn chroot(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("chroot")
        .arg(root)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
}

fn write_mode(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    if path.exists() {
        fs::remove_file(path)?;
    }
    fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A copy of the package `deb` in `dir` that says it is version `version` (unpacked and
/// packed again by dpkg-deb): the "rebuilt package with a bumped version" of an upgrade
/// test, the same files under a newer number.
pub fn with_version(deb: &Path, version: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    repack(deb, version, None, dir)
}

/// Writes a build id into a binary's bytes (`robustifier::release::stamp`, which the lab
/// library does not link).
pub type Stamp<'a> = &'a dyn Fn(&mut [u8], &str) -> anyhow::Result<()>;

/// A copy of the package `deb` in `dir` whose binary is stamped with the build id `id` (by
/// `stamp`) and whose version says so (`0.1.0-1` becomes `0.1.0+ID-1`): the release its front-end
/// then reports is the package's version, which is how the cluster manager tells that a
/// member runs it. Returns the package and its version.
pub fn with_release(
    deb: &Path,
    id: &str,
    stamp: Stamp<'_>,
    dir: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Version")
        .output()
        .context("cannot start dpkg-deb")?;
    anyhow::ensure!(out.status.success(), "dpkg-deb -f {}", deb.display());
    let old = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = match old.rsplit_once('-') {
        Some((upstream, revision)) => format!("{upstream}+{id}-{revision}"),
        None => format!("{old}+{id}"),
    };
    let out = repack(deb, &version, Some((stamp, id)), dir)?;
    Ok((out, version))
}

fn repack(
    deb: &Path,
    version: &str,
    stamp: Option<(Stamp<'_>, &str)>,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let tree = dir.join(format!("repack-{version}"));
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control)?;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("Version:") {
                format!("Version: {version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&control, text)?;
    if let Some((stamp, id)) = stamp {
        let bin = tree.join("usr/bin/robustifier");
        let mut bytes = fs::read(&bin)?;
        stamp(&mut bytes, id)?;
        // The file keeps its mode: only its bytes change.
        fs::write(&bin, bytes)?;
    }
    let out = dir.join(format!("robustifier_{version}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zgzip"])
        .arg(&tree)
        .arg(&out))?;
    fs::remove_dir_all(&tree)?;
    Ok(out)
}
