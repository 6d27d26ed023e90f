//! Virtual machines of the appliance image in a lab: qemu-system-x86_64 runs inside the
//! lab's switch namespace with one tap per network card on the lab's bridges (`br0`
//! public, `br1` back-end side), the image as a throw-away qcow2 overlay, a seed disk, and
//! the QEMU guest agent on a virtio-serial socket through which the test runs commands in
//! the guest (the image has no SSH). Powering off is killing qemu by its pid.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{Lab, image::Image};

/// How a VM boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// qemu loads the image's kernel and initrd itself (fast under TCG).
    Direct,
    /// Firmware (OVMF) boots the disk's EFI system partition, as real hardware would.
    Uefi,
}

/// One card of a VM: on which lab bridge, with which MAC address.
#[derive(Clone, Debug)]
pub struct Nic {
    pub bridge: String,
    pub mac: String,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Short name (taps and files carry it).
    pub name: String,
    pub nics: Vec<Nic>,
    /// The seed disk (see [`crate::image::seed_disk`]).
    pub seed: Option<PathBuf>,
    pub memory_mib: u32,
    pub boot: Boot,
}

/// The OVMF firmware code the UEFI boot uses.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Why a VM cannot start on this machine, if it cannot: one line.
pub fn unmet() -> Option<String> {
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (the VMs' network cards are taps)".into());
    }
    for tool in ["qemu-system-x86_64", "qemu-img"] {
        if crate::privileged::which(tool).is_none() {
            return Some(format!("`{tool}` not found (run `cargo xtask setup`)"));
        }
    }
    None
}

/// A running VM. Dropping it kills qemu (the lab also ends it when it goes down).
pub struct Vm {
    pub name: String,
    pub dir: PathBuf,
    qga: PathBuf,
    pid: nix::unistd::Pid,
}

/// `lab`'s VM `spec` of `image`: taps in the switch namespace, files under the lab's log
/// directory (`<name>.console` is the serial console).
pub fn start(lab: &mut Lab, image: &Image, spec: &Spec) -> anyhow::Result<Vm> {
    if let Some(why) = unmet() {
        bail!("cannot start a VM: {why}");
    }
    let dir = lab.log_dir.join(format!("vm-{}", spec.name));
    std::fs::create_dir_all(&dir)?;
    let overlay = dir.join("disk.qcow2");
    let _ = std::fs::remove_file(&overlay);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(std::fs::canonicalize(&image.disk)?)
        .arg(&overlay)
        .output()
        .context("qemu-img")?;
    anyhow::ensure!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let qga = dir.join("qga.sock");
    let _ = std::fs::remove_file(&qga);
    let mut args: Vec<String> = vec![
        "qemu-system-x86_64".into(),
        "-accel".into(),
        accel().into(),
        // TCG's default CPU model lacks instructions (CMPXCHG16B) the kernel needs.
        "-cpu".into(),
        if accel() == "kvm" { "host" } else { "max" }.into(),
        "-m".into(),
        spec.memory_mib.to_string(),
        "-smp".into(),
        "1".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", dir.join("console.log").display()),
        "-no-reboot".into(),
        "-drive".into(),
        format!("file={},if=virtio,format=qcow2", overlay.display()),
        "-chardev".into(),
        format!("socket,id=qga0,path={},server=on,wait=off", qga.display()),
        "-device".into(),
        "virtio-serial".into(),
        "-device".into(),
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
    ];
    match spec.boot {
        Boot::Direct => args.extend([
            "-kernel".into(),
            image.kernel.display().to_string(),
            "-initrd".into(),
            image.initrd.display().to_string(),
            "-append".into(),
            crate::image::CMDLINE.into(),
        ]),
        Boot::Uefi => {
            let vars = dir.join("OVMF_VARS.fd");
            std::fs::copy(OVMF_VARS, &vars).context("OVMF variables (install ovmf)")?;
            args.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                "-drive".into(),
                format!("if=pflash,format=raw,file={}", vars.display()),
            ]);
        }
    }
    if let Some(seed) = &spec.seed {
        args.extend([
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", seed.display()),
        ]);
    }
    for (k, nic) in spec.nics.iter().enumerate() {
        // Interface names are at most 15 bytes: the switch namespace is the lab's own,
        // so a short name is unique.
        let tap = format!("{}-t{k}", spec.name);
        lab.switch
            .ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        lab.switch
            .ip(&["link", "set", &tap, "master", &nic.bridge, "up"])?;
        args.extend([
            "-netdev".into(),
            format!("tap,id=n{k},ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n{k},mac={}", nic.mac),
        ]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let switch = lab.switch.clone();
    let daemon = lab.spawn(&switch, &format!("qemu-{}", spec.name), &argv)?;
    let pid = daemon.pid();
    Ok(Vm {
        name: spec.name.clone(),
        dir,
        qga,
        pid,
    })
}

/// TCG unless `ROBUSTIFIER_VM_KVM=1` asks for KVM (which hangs in early boot on some
/// nested hosts).
fn accel() -> &'static str {
    if std::env::var_os("ROBUSTIFIER_VM_KVM").is_some_and(|v| v == "1")
        && Path::new("/dev/kvm").exists()
    {
        "kvm"
    } else {
        "tcg"
    }
}

/// What a command in the guest did.
#[derive(Clone, Debug)]
pub struct Exec {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Vm {
    /// The serial console so far (boot messages).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// Whether qemu still runs.
    pub fn running(&self) -> bool {
        nix::sys::signal::kill(self.pid, None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// Waits until the guest agent answers (the guest has booted into systemd).
    pub fn wait_agent(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.request("guest-ping", json!({})).is_ok() {
                return Ok(start.elapsed());
            }
            if !self.running() {
                bail!(
                    "VM {} exited; console:\n{}",
                    self.name,
                    tail(&self.console())
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "VM {}: no guest agent within {timeout:?}; console:\n{}",
                    self.name,
                    tail(&self.console())
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// One guest-agent command and its `return` value (a fresh connection each time,
    /// synchronised first so a late answer to an earlier one is not taken for this one's).
    pub fn request(&self, command: &str, arguments: Value) -> anyhow::Result<Value> {
        let stream = UnixStream::connect(&self.qga)
            .with_context(|| format!("guest agent socket {}", self.qga.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut w = stream.try_clone()?;
        let mut r = BufReader::new(stream);
        let id = std::process::id() as u64 * 1000 + fastish_counter();
        // 0xFF makes the agent drop any partial input left by an earlier client.
        w.write_all(&[0xff])?;
        w.write_all(
            format!(
                "{}\n",
                json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
            )
            .as_bytes(),
        )?;
        loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line)?;
            anyhow::ensure!(!line.is_empty(), "guest agent closed the connection");
            let text: Vec<u8> = line.into_iter().filter(|&b| b != 0xff).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&text)
                && v["return"].as_u64() == Some(id)
            {
                break;
            }
        }
        w.write_all(
            format!("{}\n", json!({"execute": command, "arguments": arguments})).as_bytes(),
        )?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("guest agent answer to {command}: {line:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("guest agent {command}: {e}");
        }
        Ok(v["return"].clone())
    }

    /// Runs `sh -c script` in the guest (as root) and waits for it.
    pub fn exec(&self, script: &str, timeout: Duration) -> anyhow::Result<Exec> {
        let ret = self.request(
            "guest-exec",
            json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}),
        )?;
        let pid = ret["pid"].as_i64().context("guest-exec pid")?;
        let start = Instant::now();
        loop {
            let st = self.request("guest-exec-status", json!({"pid": pid}))?;
            if st["exited"].as_bool() == Some(true) {
                let text = |k: &str| {
                    st[k]
                        .as_str()
                        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                return Ok(Exec {
                    code: st["exitcode"]
                        .as_i64()
                        .or_else(|| st["signal"].as_i64().map(|s| 128 + s))
                        .unwrap_or(-1),
                    stdout: text("out-data"),
                    stderr: text("err-data"),
                });
            }
            if start.elapsed() > timeout {
                bail!(
                    "VM {}: `{script}` did not finish within {timeout:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`Vm::exec`] that must exit 0; its stdout.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        let e = self.exec(script, Duration::from_secs(120))?;
        anyhow::ensure!(
            e.code == 0,
            "VM {}: `{script}` exited {}: {}{}",
            self.name,
            e.code,
            e.stdout,
            e.stderr
        );
        Ok(e.stdout)
    }

    /// Writes `data` to `path` in the guest (guest-file-open/write/close).
    pub fn write_file(&self, path: &str, data: &[u8]) -> anyhow::Result<()> {
        let handle = self.request("guest-file-open", json!({"path": path, "mode": "w"}))?;
        let handle = handle.as_i64().context("guest-file-open handle")?;
        // The agent takes at most a few MiB per message: write in chunks.
        for chunk in data.chunks(1 << 20) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
            self.request(
                "guest-file-write",
                json!({"handle": handle, "buf-b64": b64}),
            )?;
        }
        self.request("guest-file-close", json!({"handle": handle}))?;
        Ok(())
    }

    /// Pulls the plug: kills qemu by its pid (SIGKILL), no shutdown in the guest.
    pub fn power_off(&self, lab: &mut Lab) {
        let name = format!("qemu-{}", self.name);
        if let Some(d) = lab
            .daemons()
            .iter_mut()
            .find(|d| d.name == name && d.pid() == self.pid)
        {
            let _ = d.stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        }
    }
}

fn fastish_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
