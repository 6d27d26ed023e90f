//! Reloads on the kernel path, under traffic: a client sends a message every 50 ms through
//! the VIP while the front-end takes a service added (a new port answers through
//! steering), a back-end added and another removed, a block list, a new session threshold,
//! a refused file, and the service removed again; then a binary upgrade (`robustifier
//! upgrade`: a new process takes the listeners and the XDP link) and a reload of the new
//! process over its control socket (`robustifier reload`). No connection is refused or
//! reset and every acknowledged message is at a back-end. Privileged.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use robustifier::datapath::{Snapshot, Tables};
use robustifier_lab::{
    Lab, Plan,
    client::{self, accepted},
    frontend_config::{Backend, FrontendConfig, Pool, Service},
    sink::Sink,
    topology::{VIP_SMTP, internal_v4},
};

fn backend(j: usize) -> Backend {
    Backend::new(
        &format!("be{}", j + 1),
        format!("{}:25", internal_v4(11 + j as u8)),
    )
}

/// The front-end: service "smtp" on the VIP's port 25 and, with `submission`, a second
/// one on port 587; pool "mx" over `backends`, with `extra` TOML at the end.
fn config(
    pin_dir: &std::path::Path,
    submission: bool,
    backends: &[usize],
    pool_extra: &str,
    extra: &str,
) -> String {
    let mut c = FrontendConfig::new("fea", pin_dir).service(
        Service::new("smtp", "smtp", 25)
            .vips(&[VIP_SMTP.into()])
            .line("pool = \"mx\""),
    );
    if submission {
        c = c.service(
            Service::new("submission", "smtp", 587)
                .vips(&[VIP_SMTP.into()])
                .line("pool = \"mx\""),
        );
    }
    c.pool(
        Pool::new("mx", "none")
            .backends(backends.iter().map(|j| backend(*j)))
            .table(pool_extra)
            .health("interval_ms = 200\ntimeout_ms = 3000\nrise = 2\nfall = 2"),
    )
    .toml(extra)
    .build()
}

fn snapshot(lab: &Lab) -> Snapshot {
    Snapshot::read(&Tables::from_pins(&lab.pin_dir(0)).unwrap()).unwrap()
}

/// What the client saw: messages acknowledged, sessions that ended otherwise (with the
/// first lines of each), connections that failed.
#[derive(Default, Debug)]
struct Seen {
    accepted: usize,
    not_accepted: Vec<String>,
    failed: Vec<String>,
}

fn reload(lab: &mut Lab, text: &str, n: usize, applied: bool) {
    robustifier_lab::cli::reload_by_signal(lab, 0, text, n, applied);
}

#[test]
fn reloads_of_every_kind_under_traffic_refuse_no_connection_and_lose_no_message() {
    let Some(mut lab) = robustifier_lab::privileged_lab("lr", Plan::new(1, 2)) else {
        return;
    };
    let be1 = Sink::start(&mut lab, 0, &[]).unwrap();
    let be2 = Sink::start(&mut lab, 1, &[]).unwrap();
    let pin = lab.pin_dir(0);
    lab.start_frontend(0, &config(&pin, false, &[0], "", ""))
        .unwrap();
    lab.frontend(0)
        .ns
        .add_address("pub0", VIP_SMTP.into())
        .unwrap();
    let smtp = SocketAddr::new(VIP_SMTP.into(), 25);
    let submission = SocketAddr::new(VIP_SMTP.into(), 587);

    // The traffic: a message every 50 ms from the client's namespace, bounded in count.
    let stop = Arc::new(AtomicBool::new(false));
    let ns = std::fs::File::open(lab.client.ns.path()).unwrap();
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut seen = Seen::default();
            for _ in 0..4000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client::send_mail(
                    smtp,
                    None,
                    "s@client.example",
                    &["u@example.org"],
                    "Subject: t\n\nlive\n",
                ) {
                    Ok(r) if accepted(&r) => seen.accepted += 1,
                    Ok(r) => seen.not_accepted.push(r.join(" | ")),
                    Err(e) => seen.failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };
    let in_ns = |lab: &Lab, to: SocketAddr| {
        lab.client
            .ns
            .enter(move || {
                client::send_mail(
                    to,
                    None,
                    "s@client.example",
                    &["v@example.org"],
                    "Subject: p\n\nport\n",
                )
            })
            .unwrap()
    };
    let settle = || std::thread::sleep(Duration::from_millis(500));
    settle();

    // 1. A service added: port 587 answers through steering.
    reload(&mut lab, &config(&pin, true, &[0], "", ""), 1, true);
    let r = in_ns(&lab, submission).expect("port 587 answers");
    assert!(accepted(&r), "{r:?}");
    // 2. A back-end added: it takes sessions.
    reload(&mut lab, &config(&pin, true, &[0, 1], "", ""), 2, true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while be2.count() == 0 {
        assert!(Instant::now() < deadline, "be2 never took a message");
        std::thread::sleep(Duration::from_millis(100));
    }
    // 3. The first back-end removed: it drains and receives nothing new.
    reload(&mut lab, &config(&pin, true, &[1], "", ""), 3, true);
    settle();
    let be1_then = be1.count();
    // 4. A block list (of a network that is not the client's) into the kernel's map.
    let blocked = "[flood]\nblock = [\"198.19.99.0/24\"]\n";
    reload(&mut lab, &config(&pin, true, &[1], "", blocked), 4, true);
    assert_eq!(snapshot(&lab).block, ["198.19.99.0/24"]);
    // 5. A session threshold changed.
    reload(
        &mut lab,
        &config(
            &pin,
            true,
            &[1],
            "[pool.thresholds]\nsessions = 50\n",
            blocked,
        ),
        5,
        true,
    );
    // 6. A file that does not validate: refused, nothing changes.
    reload(
        &mut lab,
        "[frontend]\nname = \"fea\"\n[[service]]\nport = \"x\"\n",
        1,
        false,
    );
    assert_eq!(snapshot(&lab).block, ["198.19.99.0/24"]);
    // 7. The block list emptied, the second service removed: 587 no longer answers.
    reload(
        &mut lab,
        &config(&pin, false, &[1], "[pool.thresholds]\nsessions = 50\n", ""),
        6,
        true,
    );
    assert!(snapshot(&lab).block.is_empty());
    let gone = in_ns(&lab, submission);
    assert!(gone.is_err(), "port 587 still answers: {gone:?}");
    settle();
    // 8. A binary upgrade: a new process serves, the old one drains and exits (status 0),
    // the interface keeps its XDP program (the link now runs the new process's).
    let old_pid = lab.frontend_daemon(0).expect("the front-end runs").pid();
    // Each back-end's id (its load record) is the same in both processes.
    let ids = |lab: &Lab| -> Vec<(u32, String, String)> {
        snapshot(lab)
            .backends
            .iter()
            .map(|b| (b.id, b.address.clone(), b.state.clone()))
            .collect()
    };
    let before = ids(&lab);
    let successor = robustifier_lab::cli::upgrade(&lab, 0);
    assert_ne!(successor.pid, old_pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    let old = lab
        .daemons()
        .iter_mut()
        .find(|d| d.pid() == old_pid)
        .expect("the old process is the lab's");
    let exit = loop {
        if let Some(exit) = old.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "the old process ends cleanly: {exit}");
    let after = ids(&lab);
    assert_eq!(after, before, "back-end ids and states across the upgrade");
    let link = lab
        .frontend(0)
        .ns
        .command("ip")
        .args(["link", "show", "pub0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("xdp"),
        "XDP is attached after the upgrade: {link}"
    );
    // 9. The new process reloads over its control socket: a threshold changed.
    let file = lab.log_dir.join("fea-2.toml");
    let text = config(&pin, false, &[1], "[pool.thresholds]\nsessions = 60\n", "");
    std::fs::write(&file, lab.with_control_socket(0, &text)).unwrap();
    let said = robustifier_lab::cli::ok([
        "reload".as_ref(),
        "--socket".as_ref(),
        robustifier_lab::vrrp::control_socket(&lab, 0).as_os_str(),
        "--config".as_ref(),
        file.as_os_str(),
    ]);
    assert!(
        said.contains("sessions 50 -> 60") && !said.contains("restart"),
        "{said}"
    );
    settle();

    stop.store(true, Ordering::Relaxed);
    let seen = sender.join().unwrap();
    assert!(
        seen.failed.is_empty(),
        "connections failed during reloads: {:?}",
        seen.failed
    );
    assert!(
        seen.not_accepted.is_empty(),
        "sessions not accepted: {:?}",
        seen.not_accepted
    );
    assert!(
        seen.accepted >= 20,
        "too little traffic to mean anything: {seen:?}"
    );
    assert_eq!(
        be1.count(),
        be1_then,
        "the removed back-end received new mail"
    );
    // Every acknowledged message (and the one sent to 587) is at a back-end.
    let deadline = Instant::now() + Duration::from_secs(30);
    while be1.count() + be2.count() < seen.accepted + 1 {
        assert!(
            Instant::now() < deadline,
            "acknowledged {} + 1, back-ends have {} + {}",
            seen.accepted,
            be1.count(),
            be2.count()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(be1.count() + be2.count(), seen.accepted + 1);
    drop(successor);
}
