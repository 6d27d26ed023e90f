//! The appliance image in two VMs: a front-end pair (one VRRP virtual address between
//! them) on the lab's bridges, configured only by their seed disks, with a client
//! namespace and two back-end namespaces running the lab's Postfix. Checks that mail
//! flows through the virtual address; that powering off the master while a client sends
//! every 200 ms loses no acknowledged message; that the front-end in the VM runs as user
//! robustifier with only the capabilities its unit promises, under an active unit that
//! said READY; that both appliances, seeded as members of a cluster manager (the host's
//! binary in the lab's switch namespace, PKI made here), take its configuration and are
//! upgraded by `cluster upgrade` one at a time through robustifier-update.path while the
//! client sends, refusing no connection; that `dpkg -i` of a package with a bumped version
//! in the new master refuses no connection while the client sends; and (one VM booting
//! through OVMF) that the disk boots by UEFI on its own. Privileged: namespaces, taps,
//! qemu (TCG).
//!
//! The image and package come from `ROBUSTIFIER_IMAGE` and `ROBUSTIFIER_DEB` (what
//! `cargo xtask test` builds) or are built here by the same builder and `cargo xtask
//! package`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use robustifier_lab::{
    Lab, Plan, client,
    image::{self, Image},
    mail::{MailHost, Make, Users},
    manager::{ClusterManager, MANAGER_PORT, MANAGER_V4, member_row, runs_head},
    topology::VIP_SMTP,
    vm::{self, Boot, Nic, Spec, Vm},
    vrrp::eventually,
};

const RCPT: &str = "alice@example.test";
/// Boot under TCG on a loaded 2-core machine: generous, nothing is judged by it.
const BOOT: Duration = Duration::from_secs(600);
const GENEROUS: Duration = Duration::from_secs(120);
/// VRRP's advertisement interval in the VMs: VRRP's default, one second. Emulated guests
/// on a loaded 2-core machine miss timers by more than the 0.7 s a 200 ms interval
/// tolerates (the backup then takes the address for a moment with no upgrade running,
/// resetting the client's connections); 3.6 s of silence is what a backup waits for here.
const ADVERT_CS: u16 = 100;

fn mac(vm: u8, nic: u8) -> String {
    format!("52:54:00:52:{vm:02x}:{nic:02x}")
}

fn seed(name: &str, n: u8, role: &str) -> String {
    format!(
        "hostname = \"{name}\"\n\n\
         [public]\nmac = \"{}\"\naddresses = [\"198.18.0.{n}/24\"]\n\n\
         [internal]\nmac = \"{}\"\naddresses = [\"198.18.1.{n}/24\"]\n\n\
         [vrrp]\nvrid = 51\nvip = \"{VIP_SMTP}\"\nrole = \"{role}\"\nadvert_interval_cs = {ADVERT_CS}\n\n\
         [backends]\nsmtp = [\"198.18.1.11:25\", \"198.18.1.12:25\"]\nidentity = \"none\"\n\n\
         [manager]\naddress = \"{MANAGER_V4}:{MANAGER_PORT}\"\n",
        mac(n, 0),
        mac(n, 1)
    )
}

/// The cluster configuration the manager gives both appliances: what their seeds made
/// (the first boot's file), shared, and the VRRP priority each seed's role gave.
fn cluster_config() -> String {
    format!(
        "[frontend]\ninterface = \"pub0\"\n\n\
         [[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\nvips = [\"{VIP_SMTP}\"]\npool = \"mx\"\n\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\nbackend = [\n\
           {{ name = \"be1\", address = \"198.18.1.11:25\" }},\n\
           {{ name = \"be2\", address = \"198.18.1.12:25\" }},\n]\n\n\
         [[vrrp]]\nvrid = 51\npriority = 100\nadvert_interval_cs = {ADVERT_CS}\nvips = [\"{VIP_SMTP}\"]\n\n\
         [members.fea]\nvrrp = {{ 51 = {{ priority = 150 }} }}\n\n\
         [members.feb]\nvrrp = {{ 51 = {{ priority = 100 }} }}\n"
    )
}

fn target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image/test")
}

/// The package under test: `ROBUSTIFIER_DEB` (what `cargo xtask test` built), or
/// `cargo xtask package --profile dev` run now.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("ROBUSTIFIER_DEB") {
        return deb.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["xtask", "package", "--profile", "dev"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run cargo xtask package");
    assert!(out.status.success(), "cargo xtask package failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("package: "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("cargo xtask package named no package:\n{stdout}"))
}

/// The image to boot: `ROBUSTIFIER_IMAGE`'s (with its `.vmlinuz`/`.initrd` beside it), or
/// one built now with `deb`.
fn appliance(deb: &Path) -> Image {
    if let Some(disk) = std::env::var_os("ROBUSTIFIER_IMAGE") {
        let disk = PathBuf::from(disk);
        let stem = disk.file_stem().unwrap().to_str().unwrap().to_owned();
        let dir = disk.parent().unwrap().to_owned();
        return Image {
            kernel: dir.join(format!("{stem}.vmlinuz")),
            initrd: dir.join(format!("{stem}.initrd")),
            disk,
            seed: None,
        };
    }
    std::fs::create_dir_all(target()).unwrap();
    let start = Instant::now();
    let built = image::build(&image::Options {
        work: image::default_work_dir(),
        out: target().join("appliance.img"),
        deb: Some(deb.to_owned()),
        seed: None,
    })
    .unwrap();
    println!("image built in {:.0}s", start.elapsed().as_secs_f64());
    built
}

/// VM `name` of `img`, its seed making it a member of `m` (its credentials beside the
/// seed, as `cluster init --member` made them).
fn boot(
    lab: &mut Lab,
    m: &ClusterManager,
    img: &Image,
    (name, n, role): (&str, u8, &str),
    how: Boot,
) -> Vm {
    let seed_img = lab.log_dir.join(format!("{name}-seed.img"));
    let (ca, cert, key) = (
        m.pki.join("ca.pem"),
        m.pki.join(format!("members/{name}.pem")),
        m.pki.join(format!("members/{name}.key")),
    );
    image::seed_disk_with(
        &seed(name, n, role),
        &[("ca.pem", &ca), ("member.pem", &cert), ("member.key", &key)],
        &seed_img,
    )
    .unwrap();
    vm::start(
        lab,
        img,
        &Spec {
            name: name.into(),
            nics: vec![
                Nic {
                    bridge: "br0".into(),
                    mac: mac(n, 0),
                },
                Nic {
                    bridge: "br1".into(),
                    mac: mac(n, 1),
                },
            ],
            seed: Some(seed_img),
            memory_mib: 512,
            boot: how,
        },
    )
    .unwrap()
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP_SMTP.into(), 25)
}

/// Every 200 ms one message with a unique subject through the virtual address, until
/// `stop`; returns the subjects acknowledged with 250 and the sessions that failed to
/// connect or were not greeted with 220.
fn sender(
    lab: &Lab,
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, Vec<String>)> {
    let ns = lab.client.ns.clone();
    std::thread::spawn(move || {
        ns.enter(|| {
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let subject = format!("{tag}-{i}");
                let body = format!("Subject: {subject}\n\n{subject}\n");
                match client::send_mail(vip(), None, "sender@client.test", &[RCPT], &body) {
                    Ok(r) if client::accepted(&r) => acked.push(subject),
                    Ok(r) if !r.first().is_some_and(|g| g.starts_with("220")) => {
                        refused.push(format!("{subject} at {}: {r:?}", now()))
                    }
                    Ok(_) => {}
                    Err(e) => refused.push(format!("{subject} at {}: {e}", now())),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (acked, refused)
        })
        .unwrap()
    })
}

/// The wall clock (UTC, to the millisecond), to find a refusal in the VMs' journals.
fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = t.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The front-end's log lines of VRRP and upgrades in `v`, with times: what explains a
/// refused connection.
fn frontend_journal(v: &Vm) -> String {
    v.exec(
        "journalctl -b --no-pager -o short-precise -u robustifier.service \
         | grep -i -E 'vrrp|router|master|backup|upgrade|hand|drain|error|warn' | tail -n 40",
        GENEROUS,
    )
    .map(|e| format!("{}:\n{}", v.name, e.stdout))
    .unwrap_or_default()
}

/// The subjects delivered to RCPT on both back-ends.
fn delivered(hosts: &[MailHost]) -> BTreeSet<String> {
    hosts
        .iter()
        .flat_map(|h| h.messages(RCPT))
        .filter_map(|m| {
            String::from_utf8_lossy(&m)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect()
}

fn wait_delivered(hosts: &[MailHost], want: &[String]) {
    let got = eventually("every acknowledged message delivered", GENEROUS, || {
        let have = delivered(hosts);
        want.iter().all(|s| have.contains(s))
    });
    if got.is_err() {
        let have = delivered(hosts);
        let lost: Vec<&String> = want.iter().filter(|s| !have.contains(*s)).collect();
        panic!("acknowledged but not delivered: {lost:?}");
    }
}

fn greeting(lab: &Lab) -> String {
    client::greeting(&lab.client.ns, vip())
}

#[test]
fn appliance_pair_serves_fails_over_and_upgrades() {
    let test = "appliance_vm";
    if !robustifier_lab::privileged::check(test) {
        return;
    }
    if let Some(why) = vm::unmet() {
        robustifier_lab::privileged::unmet(test, &why);
        return;
    }
    let started = Instant::now();
    let deb = package();
    let img = appliance(&deb);
    let prefix = robustifier_lab::unique_prefix("avm");
    let mut lab = Lab::up(&prefix, Plan::new(0, 2)).unwrap();
    let users = Users::lab_default();
    let hosts: Vec<MailHost> = (0..2)
        .map(|i| MailHost::start(&mut lab, i, Make::Postfix, &users).unwrap())
        .collect();

    // fea boots the image's kernel directly (quicker under emulation); feb boots the disk
    // by itself through UEFI firmware (OVMF, GRUB on the EFI partition), as hardware would.
    // The cluster manager on the back-end bridge, which the VMs' int0 reach; its PKI
    // names both appliances as members.
    let m = ClusterManager::up_for(&mut lab, vec!["fea".into(), "feb".into()]).unwrap();
    let fea = boot(&mut lab, &m, &img, ("fea", 1, "master"), Boot::Direct);
    let feb = boot(&mut lab, &m, &img, ("feb", 2, "backup"), Boot::Uefi);
    for v in [&fea, &feb] {
        let took = v.wait_agent(BOOT).unwrap();
        println!("{}: guest agent after {:.0}s", v.name, took.as_secs_f64());
    }
    for v in [&fea, &feb] {
        // First boot applied the seed: the host name, and the front-end enabled and up.
        eventually(&format!("{} front-end active", v.name), BOOT, || {
            v.sh("systemctl is-active robustifier.service").is_ok()
        })
        .unwrap_or_else(|e| {
            let status = v
                .exec(
                    "systemctl status --no-pager robustifier-firstboot robustifier; \
                     journalctl -b --no-pager -n 60",
                    GENEROUS,
                )
                .map(|e| e.stdout)
                .unwrap_or_default();
            panic!("{e}\n{status}\nconsole:\n{}", v.console())
        });
        assert_eq!(v.sh("hostname").unwrap().trim(), v.name);
    }
    assert!(
        feb.sh("test -d /sys/firmware/efi && cat /proc/cmdline")
            .is_ok(),
        "feb did not boot by UEFI"
    );
    assert!(fea.sh("test -d /sys/firmware/efi").is_err());
    eventually("fea answers on the virtual address", GENEROUS, || {
        greeting(&lab) == "220 fea ESMTP Robustifier"
    })
    .unwrap_or_else(|e| panic!("{e}: {}", greeting(&lab)));

    // (a) Mail flows through the virtual address to the back-ends.
    let mut sent = Vec::new();
    for i in 0..6 {
        let subject = format!("flow-{i}");
        let r = client::send_mail_in(
            &lab.client.ns,
            vip(),
            "sender@client.test",
            &[RCPT],
            &format!("Subject: {subject}\n\n{subject}\n"),
        );
        assert!(client::accepted(&r), "{r:?}");
        sent.push(subject);
    }
    wait_delivered(&hosts, &sent);

    // (d) The daemon runs as user robustifier, keeping only some capabilities, under an
    // active unit.
    for v in [&fea, &feb] {
        let uid = v.sh("id -u robustifier").unwrap();
        let show = v
            .sh("systemctl show -p ActiveState,SubState,StatusText,MainPID robustifier.service")
            .unwrap();
        assert!(show.contains("ActiveState=active"), "{}: {show}", v.name);
        let status = v
            .sh("cat /proc/$(systemctl show -p MainPID --value robustifier.service)/status")
            .unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|s| s.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let uids = field("Uid:");
        assert!(
            !uids.is_empty() && uids.iter().all(|u| *u == uid.trim()),
            "{}: the front-end's uids {uids:?}, robustifier is {uid}",
            v.name
        );
        // The unit's promise: after the privileged start only CAP_NET_ADMIN and
        // CAP_NET_RAW stay (VRRP).
        let cap_eff = field("CapEff:").first().copied().unwrap_or("").to_owned();
        let decoded = v.sh(&format!("capsh --decode={cap_eff}")).unwrap();
        println!("{}: {show} CapEff {decoded}", v.name);
        assert_eq!(
            decoded.trim().rsplit('=').next().unwrap_or(""),
            "cap_net_admin,cap_net_raw",
            "{}: CapEff {cap_eff}",
            v.name
        );
        // Type=notify: active means the daemon said READY=1, with a status line.
        let status_text = show
            .lines()
            .find_map(|l| l.strip_prefix("StatusText="))
            .unwrap_or("");
        assert!(
            !status_text.is_empty(),
            "{}: no status line: {show}",
            v.name
        );
        // Under the unit's sandbox the unprivileged daemon still reaches its pinned maps
        // (systemd mounts /sys/fs/bpf with mode 0700): no error since the start.
        let errors = v
            .sh("journalctl -b --no-pager -o cat -u robustifier.service | grep -E ' ERROR ' || true")
            .unwrap();
        assert!(
            errors.trim().is_empty(),
            "{}: errors in the front-end's journal:\n{errors}",
            v.name
        );
    }

    // (e) Both appliances are members: the manager's configuration reaches them, then a
    // package rolls over them one at a time while the client sends.
    rollout(&lab, &m, &hosts, &deb, [&fea, &feb]);

    // (b) The master VM loses power while a client sends every 200 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let during = sender(&lab, "failover", stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    fea.power_off(&mut lab);
    let moved = eventually("feb answers on the virtual address", GENEROUS, || {
        greeting(&lab) == "220 feb ESMTP Robustifier"
    })
    .unwrap();
    println!("failover to feb: {moved:?} after power-off");
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (acked, _) = during.join().unwrap();
    assert!(
        acked.len() >= 10,
        "too few messages went through: {acked:?}"
    );
    wait_delivered(&hosts, &acked);
    println!(
        "failover: {} messages acknowledged, all delivered",
        acked.len()
    );

    // (c) dpkg -i of a package with a bumped version in the new master refuses no
    // connection while the client sends.
    std::fs::create_dir_all(target()).unwrap();
    let old_version = feb.sh("dpkg-query -W -f '${Version}' robustifier").unwrap();
    let new_version = format!("{old_version}+vmtest1");
    let bumped = image::with_version(&deb, &new_version, &target()).unwrap();
    feb.write_file("/tmp/robustifier.deb", &std::fs::read(&bumped).unwrap())
        .unwrap();
    let pid_before = feb
        .sh("systemctl show -p MainPID --value robustifier.service")
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let during = sender(&lab, "upgrade", stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let out = feb
        .exec(
            "DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/robustifier.deb",
            GENEROUS,
        )
        .unwrap();
    if out.code != 0 {
        let journal = feb
            .exec(
                "journalctl -b --no-pager -u robustifier.service | tail -n 40",
                GENEROUS,
            )
            .map(|e| e.stdout)
            .unwrap_or_default();
        panic!(
            "dpkg -i exited {}: {}{}\njournal:\n{journal}",
            out.code, out.stdout, out.stderr
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (acked, refused) = during.join().unwrap();
    assert!(
        refused.is_empty(),
        "refused during the upgrade: {refused:?}"
    );
    assert_eq!(
        feb.sh("dpkg-query -W -f '${Version}' robustifier").unwrap(),
        new_version
    );
    let pid_after = feb
        .sh("systemctl show -p MainPID --value robustifier.service")
        .unwrap();
    let procs = feb.sh("pgrep -x robustifier || true").unwrap();
    assert!(
        pid_after != pid_before || !procs.lines().any(|p| p.trim() == pid_before.trim()),
        "the front-end process was not replaced (main pid {pid_before} before and {pid_after} after; running: {procs})"
    );
    // systemd gives the watchdog interval to the main process only: the upgrade's new
    // main process got it passed on, or systemd would restart the unit once it expired.
    let environ = feb
        .sh(&format!(
            "tr '\\0' '\\n' < /proc/{}/environ",
            pid_after.trim()
        ))
        .unwrap();
    assert!(
        environ.lines().any(|l| l.starts_with("WATCHDOG_USEC=")),
        "the new main process has no watchdog interval: {environ}"
    );
    wait_delivered(&hosts, &acked);
    println!(
        "upgrade: {} messages acknowledged during dpkg -i, none refused",
        acked.len()
    );
    assert_eq!(greeting(&lab), "220 feb ESMTP Robustifier");
    println!(
        "appliance_vm: {:.0}s in all",
        started.elapsed().as_secs_f64()
    );
}

/// The journals that explain a member's or an update's failure in `v`.
fn member_journals(v: &Vm) -> String {
    v.exec(
        "systemctl status --no-pager robustifier-member robustifier-update.path \
         robustifier-update; journalctl -b --no-pager -o cat -u robustifier-member \
         -u robustifier-update -u robustifier-firstboot | tail -n 60; \
         cat /var/lib/robustifier/updates/result.json",
        GENEROUS,
    )
    .map(|e| format!("{}:\n{}{}", v.name, e.stdout, e.stderr))
    .unwrap_or_default()
}

/// (e): the seeds made both VMs members (credentials kept from other users, the
/// front-end running the member's file), the manager's configuration reaches them, and
/// `cluster upgrade --wait` of a package stamped with a further release upgrades both,
/// one after the other, while the client sends through the virtual address: nothing
/// refused, every acknowledged message delivered.
fn rollout(lab: &Lab, m: &ClusterManager, hosts: &[MailHost], deb: &Path, vms: [&Vm; 2]) {
    for v in vms {
        eventually(&format!("{} member active", v.name), GENEROUS, || {
            v.sh("systemctl is-active robustifier-member.service")
                .is_ok()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", member_journals(v)));
        let modes = v
            .sh("stat -c '%n %a %U:%G' /etc/robustifier/cluster/member.key \
                 /etc/robustifier/cluster/member.pem /etc/robustifier/member.env; \
                 readlink /etc/robustifier/robustifier.toml")
            .unwrap();
        for want in [
            "/etc/robustifier/cluster/member.key 640 root:robustifier",
            "/etc/robustifier/member.env 640 root:robustifier",
            "/var/lib/robustifier/member/config.toml",
        ] {
            assert!(modes.contains(want), "{}: {want} not in:\n{modes}", v.name);
        }
    }
    // Who owns what the front-end, the member and the updates share.
    for v in vms {
        println!(
            "{}: {}",
            v.name,
            v.sh(
                "ls -ld /etc/robustifier /etc/robustifier/cluster /var/lib/robustifier \
                  /var/lib/robustifier/member /var/lib/robustifier/updates \
                  /var/lib/robustifier/member/config.toml /var/lib/robustifier/updates/*; \
                  setpriv --reuid=robustifier --regid=robustifier --init-groups \
                  head -c 60 /etc/robustifier/robustifier.toml"
            )
            .unwrap_or_else(|e| e.to_string())
        );
    }
    let (version, line) = m
        .commit_wait(&cluster_config(), "the appliances' configuration", 120)
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n{}",
                member_journals(vms[0]),
                member_journals(vms[1])
            )
        });
    println!("manager: version {version} committed; {line}");
    let st = m.status().unwrap();
    for v in vms {
        assert!(runs_head(&st, &v.name), "{}: {st:#}", v.name);
    }
    eventually("fea answers on the virtual address", GENEROUS, || {
        greeting(lab) == "220 fea ESMTP Robustifier"
    })
    .unwrap_or_else(|e| panic!("{e}: {}", greeting(lab)));

    std::fs::create_dir_all(target()).unwrap();
    let (package, release) = image::with_release(
        deb,
        "vmroll1",
        &|bytes, id| Ok(robustifier::release::stamp(bytes, id)?),
        &target(),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let during = sender(lab, "rollout", stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let out = m.cli(&[
        "upgrade",
        &package.display().to_string(),
        "--wait",
        "--timeout",
        "400",
    ]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (acked, refused) = during.join().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cluster upgrade: {said}\n{}\n{}",
        member_journals(vms[0]),
        member_journals(vms[1])
    );
    println!("rollout of {release}: {took:.0?}; {said}");
    assert!(
        refused.is_empty(),
        "refused during the rollout: {refused:?}\n{}\n{}",
        frontend_journal(vms[0]),
        frontend_journal(vms[1])
    );

    // The manager's record: done, each member in its turn, the second sent the package
    // only once the first ran it.
    let status: serde_json::Value =
        serde_json::from_str(&m.cli_ok(&["upgrade", "--status", "--json"]).unwrap()).unwrap();
    let rollout = &status["rollout"];
    assert_eq!(rollout["state"], "done", "{status:#}");
    assert_eq!(rollout["version"], release.as_str(), "{status:#}");
    let steps = rollout["steps"].as_array().cloned().unwrap_or_default();
    let order: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| {
            (
                s["member"].as_str().unwrap_or(""),
                s["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(order, [("fea", "done"), ("feb", "done")], "{status:#}");
    let ms = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    assert!(
        ms(&steps[0], "started_ms") > 0
            && ms(&steps[0], "finished_ms") <= ms(&steps[1], "started_ms"),
        "the second member was sent the package before the first ran it: {status:#}"
    );
    // The front-end reports the release its binary was stamped with: the package's
    // version without its Debian revision.
    let upstream = release
        .rsplit_once('-')
        .map_or(release.as_str(), |(u, _)| u);
    let st = m.status().unwrap();
    for v in vms {
        let row = member_row(&st, &v.name).cloned().unwrap_or_default();
        assert_eq!(row["frontend"]["release"], upstream, "{}: {st:#}", v.name);
        // The front-end, as its user, re-reads its file through the link to the member's.
        let reload = v
            .exec("systemctl reload robustifier.service", GENEROUS)
            .unwrap();
        assert_eq!(
            reload.code,
            0,
            "{}: systemctl reload: {}{}\n{}",
            v.name,
            reload.stdout,
            reload.stderr,
            frontend_journal(v)
        );
        assert_eq!(
            v.sh("dpkg-query -W -f '${Version}' robustifier").unwrap(),
            release,
            "{}",
            v.name
        );
    }
    let audit = m.cli_ok(&["audit"]).unwrap();
    let at = |needle: String| {
        audit
            .find(&needle)
            .unwrap_or_else(|| panic!("{needle} not in the audit trail:\n{audit}"))
    };
    assert!(
        at(format!("member fea runs {release}")) < at(format!("member feb runs {release}")),
        "{audit}"
    );
    wait_delivered(hosts, &acked);
    println!(
        "rollout: {} messages acknowledged through the VIP, none refused, all delivered",
        acked.len()
    );
}
