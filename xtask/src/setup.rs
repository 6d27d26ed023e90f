//! `cargo xtask setup`: idempotent; every step checks before it acts, and a prerequisite
//! that cannot be had is one clear line, not a compiler backtrace.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use anyhow::{Context as _, bail};

use robustifier_lab::mail::{exim, opensmtpd};

use crate::util::{exec, output};

/// bpf-linker that loads the image nightly's own LLVM.
const BPF_LINKER_VERSION: &str = "0.10.4";

/// cargo-fuzz for `cargo xtask fuzz` and the fuzz step of `cargo xtask test`; this version
/// builds with the installed stable toolchain.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages the tests and the demo use, with why.
const PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "map inspection in tests and docs"),
    ("iproute2", "lab namespaces, veths, bridges"),
    ("util-linux", "nsenter, to run lab processes in a namespace"),
    ("procps", "process inspection"),
    ("swaks", "SMTP client in the demo and the mail tests"),
    // swaks only recommends these, and setup installs without recommends.
    ("libnet-ssleay-perl", "STARTTLS in swaks"),
    ("libio-socket-inet6-perl", "IPv6 in swaks"),
    // Lab back-ends (tests/src/mail): Postfix is the packaged MTA (one instance per
    // back-end with its own config and spool, plus smtp-sink for faulty back-ends), Dovecot
    // serves POP3 and SASL; OpenSMTPD and Exim are unpacked privately (see `private_mtas`
    // below) since the MTAs conflict, so only their libraries come from apt.
    ("postfix", "back-end MTA and smtp-sink in the mail lab"),
    (
        "dovecot-core",
        "back-end POP3 server and SASL for Postfix in the mail lab",
    ),
    ("dovecot-pop3d", "POP3 for the Dovecot back-ends"),
    ("python3", "poplib, the POP3 client of the mail tests"),
    (
        "mount",
        "bind mounts giving each OpenSMTPD and Exim its own paths",
    ),
    ("libidn12", "library of the unpacked Exim"),
    ("libgnutls-dane0", "library of the unpacked Exim"),
    ("libgnutls30", "library of the unpacked Exim"),
    ("libidn2-0", "library of the unpacked Exim"),
    ("libnsl2", "library of the unpacked Exim"),
    ("libpcre2-8-0", "library of the unpacked Exim"),
    ("libevent-2.1-7", "library of the unpacked OpenSMTPD"),
    ("libdb5.3", "library of the unpacked OpenSMTPD and Exim"),
    ("libpam0g", "library of the unpacked OpenSMTPD"),
    ("libssl3", "library of the unpacked OpenSMTPD"),
    ("libcrypt1", "library of the unpacked OpenSMTPD and Exim"),
    ("zlib1g", "library of the unpacked OpenSMTPD"),
    ("keepalived", "VRRP interoperability peer in the HA tests"),
    (
        "prometheus",
        "promtool checks the front-end's /metrics output in the tests",
    ),
    (
        "snmptrapd",
        "net-snmp's trap receiver: the SNMP notification tests send to it",
    ),
    ("snmp", "snmptranslate loads ROBUSTIFIER-MIB in the tests"),
    (
        "chromium",
        "the headless browser that drives the manager's web interface in proxy/tests/web.rs",
    ),
    ("smitools", "smilint checks ROBUSTIFIER-MIB in the tests"),
    (
        "erlang-snmp",
        "the IETF base MIB modules (SNMPv2-SMI, -TC, -CONF) ROBUSTIFIER-MIB imports: Debian ships them only there",
    ),
    ("tshark", "decodes our VRRP adverts in the HA tests"),
    ("haproxy", "TCP-mode rival in cargo xtask bench"),
    ("nginx", "mail-proxy rival in cargo xtask bench"),
    (
        "libnginx-mod-mail",
        "nginx's mail module for the bench rival",
    ),
    (
        "nftables",
        "the nftables drop rule the bench compares XDP against",
    ),
    // Its postinst would start the host's radiusd: the policy-rc.d above keeps it down.
    (
        "freeradius",
        "the RADIUS server of the directory tests (a lab process with its own config)",
    ),
    (
        "freeradius-utils",
        "radclient, to ask the lab's FreeRADIUS by hand when a directory test fails",
    ),
    (
        "slapd",
        "OpenLDAP server: the lab's LDAP directory in the directory routing tests",
    ),
    ("ldap-utils", "ldapadd: loads the lab slapd's entries"),
    (
        "postgresql",
        "PostgreSQL server of the SQL directory tests (run as a lab process, never the host's service)",
    ),
    (
        "mariadb-server",
        "MariaDB server of the SQL directory tests (run as a lab process, never the host's service)",
    ),
    (
        "sqlite3",
        "writes the SQLite files of the SQL directory tests",
    ),
    (
        "binutils",
        "objcopy: the cluster upgrade test ships the built binary without its debug sections",
    ),
    (
        "lintian",
        "checks the Debian package (tests/tests/package.rs)",
    ),
    (
        "systemd",
        "systemd-analyze verify checks the units in tests/tests/package.rs (not PID 1 here)",
    ),
    (
        "debootstrap",
        "cargo xtask image: the appliance's Debian system",
    ),
    (
        "mtools",
        "cargo xtask image: the EFI partition and the seed disk without mounting",
    ),
    (
        "dosfstools",
        "cargo xtask image: mkfs.vfat for the EFI partition and the seed disk",
    ),
    (
        "e2fsprogs",
        "cargo xtask image: mkfs.ext4 -d makes the root file system from a folder",
    ),
    (
        "fdisk",
        "cargo xtask image: sfdisk partitions the disk file (GPT)",
    ),
    (
        "grub-efi-amd64-bin",
        "cargo xtask image: grub-mkstandalone, the image's UEFI boot loader",
    ),
    // Bookworm's QEMU 7.2 crashes the appliance's kernel under TCG; the backport's does not.
    (
        "qemu-system-x86/bookworm-backports",
        "the appliance VM test boots the image (TCG)",
    ),
    // The backport's own dependencies, named with their release: apt does not always
    // pick them from backports by itself, and bookworm's builds do not satisfy it.
    (
        "qemu-system-common/bookworm-backports",
        "the backported QEMU's shared parts",
    ),
    (
        "qemu-system-data/bookworm-backports",
        "the backported QEMU's firmware and keymaps",
    ),
    (
        "seabios/bookworm-backports",
        "the BIOS the backported QEMU needs",
    ),
    (
        "ovmf",
        "UEFI firmware: the VM test boots the disk as hardware would",
    ),
    (
        "qemu-utils/bookworm-backports",
        "qemu-img: the VM test's throw-away overlays of the image",
    ),
    (
        "valgrind",
        "bench/perf-session.sh counts instructions per session with callgrind (VMs often lack hardware counters)",
    ),
    (
        "linux-perf",
        "bench/perf-session.sh: perf stat (system calls and task-clock per session)",
    ),
];

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    packages()?;
    private_mtas()?;
    bpffs()?;
    // `robustifier run` switches to this user once its data path is attached.
    system_user(
        "robustifier",
        "/nonexistent",
        "the front-end daemon's unprivileged user",
    )?;
    // `cargo xtask package` and its test build the Debian package with it.
    crate::package::ensure_cargo_deb()?;
    println!("setup: ready");
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .context("setup: rustup or its nightly toolchain is missing (the machine image provides both; do not run `rustup update`)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    println!("setup: adding nightly rust-src (the BPF target builds core from source)");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("setup: could not add nightly rust-src")
}

fn bpf_linker() -> anyhow::Result<()> {
    let have = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} (links the eBPF object; about a minute)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    exec(Command::new(cargo).args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]))
    .context("setup: could not install bpf-linker")
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let have = output(Command::new(&cargo).args(["fuzz", "--version"])).unwrap_or_default();
    if have.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (runs the fuzz targets)");
    exec(Command::new(cargo).args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
    .context("setup: could not install cargo-fuzz")
}

fn installed(package: &str) -> bool {
    // `name/release` is installed when `name` is (in whichever build).
    let package = package.split('/').next().unwrap_or(package);
    output(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Status}", package]))
        .is_some_and(|s| s.trim() == "installed")
}

fn apt(args: &[&str]) -> anyhow::Result<()> {
    exec(
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(p, _)| !installed(p))
        .map(|(p, why)| {
            println!("setup: installing Debian package {p} ({why})");
            *p
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    backports_source()?;
    apt(&["update", "-q"]).context("setup: apt-get update failed")?;
    // Postfix and Dovecot would start their default instances on the host (ports 25, 110,
    // 143) from their maintainer scripts; the lab starts its own instances in namespaces, so
    // keep services from starting while we install (the policy-rc.d convention), unless the
    // machine already has a policy.
    let _policy = NoServiceStarts::install()?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    // Packages pinned to a release go along with every install, so that what is installed
    // now agrees with them.
    args.extend(PACKAGES.iter().map(|(p, _)| *p).filter(|p| p.contains('/')));
    apt(&args).with_context(|| format!("setup: could not install {}", missing.join(" ")))
}

/// Debian's bookworm-backports among apt's sources (for `name/bookworm-backports` entries
/// of [`PACKAGES`]), unless some source names it already.
fn backports_source() -> anyhow::Result<()> {
    let named = |dir: &str| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("bookworm-backports"))
            })
    };
    if named("/etc/apt/sources.list.d")
        || std::fs::read_to_string("/etc/apt/sources.list")
            .is_ok_and(|t| t.contains("bookworm-backports"))
    {
        return Ok(());
    }
    println!("setup: adding bookworm-backports to apt's sources (QEMU for the VM test)");
    std::fs::write(
        "/etc/apt/sources.list.d/robustifier-backports.list",
        "deb http://deb.debian.org/debian bookworm-backports main\n",
    )
    .context("setup: cannot write apt's sources (are you root?)")
}

/// A `/usr/sbin/policy-rc.d` that denies service starts, removed again on drop; does nothing
/// when the machine has its own.
struct NoServiceStarts(Option<&'static Path>);

impl NoServiceStarts {
    fn install() -> anyhow::Result<NoServiceStarts> {
        let path = Path::new("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(NoServiceStarts(None));
        }
        std::fs::write(
            path,
            "#!/bin/sh\n# cargo xtask setup: no service starts while installing\nexit 101\n",
        )
        .context("setup: cannot write /usr/sbin/policy-rc.d (are you root?)")?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        Ok(NoServiceStarts(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Debian's package `package` unpacked into `root` (not installed), unless `check` (relative
/// to `root`) is there already. For MTAs that conflict with the installed one.
fn unpack_private(package: &str, root: &Path, check: &str, why: &str) -> anyhow::Result<()> {
    if root.join(check).is_file() {
        return Ok(());
    }
    println!(
        "setup: unpacking Debian's {package} into {} ({why})",
        root.display()
    );
    let tmp = std::env::temp_dir().join(format!(
        "robustifier-setup-{}-{package}",
        std::process::id()
    ));
    std::fs::create_dir_all(&tmp)?;
    let download = || {
        exec(Command::new("apt-get").current_dir(&tmp).args([
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "download",
            package,
        ]))
    };
    if download().is_err() {
        // A machine whose packages were all there may never have fetched the lists.
        apt(&["update", "-q"]).context("setup: apt-get update failed")?;
        download().with_context(|| format!("setup: could not download Debian's {package}"))?;
    }
    let deb = std::fs::read_dir(&tmp)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("setup: apt-get download left no {package} .deb"))?;
    std::fs::create_dir_all(root)?;
    exec(Command::new("dpkg").arg("-x").arg(&deb).arg(root))
        .with_context(|| format!("setup: could not unpack {package}"))?;
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// A system user with a group of its own, as the package's maintainer scripts would add.
fn system_user(user: &str, home: &str, why: &str) -> anyhow::Result<()> {
    if output(Command::new("getent").args(["passwd", user])).is_some() {
        return Ok(());
    }
    println!("setup: adding system user {user} ({why})");
    exec(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        home,
        "--shell",
        "/usr/sbin/nologin",
        user,
    ]))
    .with_context(|| format!("setup: could not add system user {user}"))
}

/// Creates `dir` with `mode` unless it exists.
fn directory(dir: &str, mode: u32, why: &str) -> anyhow::Result<()> {
    let dir = Path::new(dir);
    if dir.is_dir() {
        return Ok(());
    }
    println!("setup: creating {} ({why})", dir.display());
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The lab's other makes of MTA conflict with Postfix as packages: unpack Debian's packages
/// into private folders (their libraries come from `PACKAGES`) and create what their
/// maintainer scripts would have: system users, OpenSMTPD's chroot, and mount points for
/// compiled-in paths (each lab instance binds its own directories there, in a mount
/// namespace of its own).
fn private_mtas() -> anyhow::Result<()> {
    unpack_private(
        "opensmtpd",
        Path::new(opensmtpd::PRIVATE_ROOT),
        opensmtpd::SMTPD,
        "private MTA for a lab back-end",
    )?;
    for user in opensmtpd::USERS {
        system_user(user, opensmtpd::CHROOT, "OpenSMTPD's privilege separation")?;
    }
    directory(opensmtpd::CHROOT, 0o755, "OpenSMTPD's chroot")?;
    directory(
        opensmtpd::SPOOL,
        0o711,
        "mount point for each OpenSMTPD's own spool",
    )?;
    directory(
        opensmtpd::LIBEXEC_MOUNT,
        0o755,
        "mount point for OpenSMTPD's private delivery helpers",
    )?;

    unpack_private(
        "exim4-daemon-light",
        Path::new(exim::PRIVATE_ROOT),
        exim::EXIM,
        "private MTA for a lab back-end",
    )?;
    system_user(exim::USER, "/var/spool/exim4", "Exim's unprivileged user")?;
    directory(
        exim::CONFIG_MOUNT,
        0o755,
        "mount point for each Exim's own configuration",
    )?;
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.split(' ').nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf (pinned maps live there)");
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()?;
    if !status.success() {
        bail!("setup: could not mount bpffs at /sys/fs/bpf (are you root?)");
    }
    Ok(())
}
