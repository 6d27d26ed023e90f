//! The per-make commands of a queue move (`robustifier::agent::moves::mta`) against real
//! Exim and OpenSMTPD back-ends, driven through the library: list, hold, content and the
//! removal of the moved recipients, after which the recipients that stay are delivered.
//! Privileged.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use robustifier::agent::{
    Mta, Options,
    moves::mta::{self, MtaError, Queued, Recipient},
};
use robustifier_lab::{
    Lab, Plan,
    mail::{MailHost, Make, Users, clients, exim, opensmtpd},
    topology::internal_v4,
};

/// Relayed to a port where nothing listens: its mail stays queued.
const SLOW: &str = "slow.example";
const LOCAL: &str = "alice@example.test";

fn options(make: Make, host: &MailHost) -> Options {
    Options {
        mta: match make {
            Make::Exim => Mta::Exim,
            _ => Mta::Opensmtpd,
        },
        mta_config: None,
        spool: host.layout.dir.clone(),
        state_file: None,
        key: None,
        state_dir: None,
    }
}

/// Sends the lab's message `tag` (with `extra` headers on top) from alice to `to` on
/// port 25 of `host`, from the front-end's namespace; returns the message as sent.
fn submit(lab: &Lab, host: &MailHost, to: &[&str], tag: &str, extra: &str) -> String {
    let msg = format!("{extra}{}", clients::message(tag, to[0]));
    let data = clients::data_file(&lab.log_dir, tag, &msg);
    let server = host.smtp_addr().to_string();
    let to = to.join(",");
    let args = [
        "--server", &server, "--from", LOCAL, "--to", &to, "--data", &data,
    ];
    let out = clients::swaks(&lab.frontend(0).ns, "fea.robustifier.test", &args);
    assert!(out.status.success(), "{}", clients::text(&out));
    msg
}

/// Lists until `found` picks a message (OpenSMTPD lists an envelope once it is committed).
fn wait_listed(
    rt: &tokio::runtime::Runtime,
    o: &Options,
    host: &MailHost,
    found: impl Fn(&Queued) -> bool,
) -> Queued {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed = rt.block_on(mta::list(o)).unwrap();
        if let Some(m) = listed.into_iter().find(&found) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "message never listed:\n{}",
            host.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn recipient<'a>(m: &'a Queued, domain: &str) -> &'a Recipient {
    m.recipients
        .iter()
        .find(|r| r.address.ends_with(&format!("@{domain}")))
        .unwrap_or_else(|| panic!("no recipient in {domain}: {m:?}"))
}

fn addresses(m: &Queued) -> Vec<String> {
    let mut a: Vec<String> = m.recipients.iter().map(|r| r.address.clone()).collect();
    a.sort();
    a
}

/// The Subject, Message-ID and body as sent, below the trace header the MTA added.
fn check_content(content: &[u8], sent: &str) {
    let added = clients::check_delivered(content, sent);
    assert!(added.starts_with("Received: "), "{added}");
}

fn smtpctl(bin_dir: &Path, host: &MailHost, args: &[&str]) {
    let out = host
        .layout
        .ns
        .command(bin_dir.join("smtpctl"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", clients::text(&out));
}

/// One make's whole run: a message to a slow and a local recipient, and one to a slow
/// recipient only.
fn exercise(lab: &Lab, rt: &tokio::runtime::Runtime, bin_dir: &Path, host: &MailHost) {
    let make = host.make;
    let o = options(make, host);
    let tag = format!("move-{make:?}").to_lowercase();
    let slow = format!("x@{SLOW}");
    // Queued as a whole: Exim freezes a message with the lab's header on arrival;
    // OpenSMTPD's local deliveries are paused meanwhile.
    let extra = match make {
        Make::Exim => format!("{}: yes\r\n", exim::FREEZE_HEADER),
        _ => {
            smtpctl(bin_dir, host, &["pause", "mda"]);
            String::new()
        }
    };
    let sent = submit(lab, host, &[&slow, LOCAL], &tag, &extra);
    let m = wait_listed(rt, &o, host, |m| m.recipients.len() == 2);
    assert_eq!(addresses(&m), [LOCAL.to_owned(), slow.clone()], "{m:?}");
    assert_eq!(m.sender, LOCAL);
    assert_eq!(m.held, make == Make::Exim, "frozen on arrival: {m:?}");
    let (moved, kept) = (
        vec![recipient(&m, SLOW).clone()],
        vec![recipient(&m, "example.test").clone()],
    );

    rt.block_on(mta::hold(&o, &m, &moved)).unwrap();
    // Twice: held already is held.
    rt.block_on(mta::hold(&o, &m, &moved)).unwrap();
    let listed = rt.block_on(mta::list(&o)).unwrap();
    let again = listed.iter().find(|q| q.id == m.id).unwrap();
    assert!(again.held, "{again:?}");
    assert_eq!(addresses(again), addresses(&m));

    let content = rt.block_on(mta::content(&o, &m)).unwrap();
    check_content(&content, &sent);

    rt.block_on(mta::remove(&o, &m, &moved, &kept)).unwrap();
    let listed = rt.block_on(mta::list(&o)).unwrap();
    if let Some(after) = listed.iter().find(|q| q.id == m.id) {
        assert_eq!(
            after.recipients, kept,
            "the moved recipient is gone: {after:?}"
        );
    }
    if make == Make::OpenSmtpd {
        smtpctl(bin_dir, host, &["resume", "mda"]);
    }
    // The kept recipient gets the message (Exim: at its next queue run, thawed).
    let needle = format!("Message-ID: <{tag}@");
    let deadline = Instant::now() + Duration::from_secs(120);
    let delivered = loop {
        let got = host.messages(LOCAL);
        if got
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains(&needle))
        {
            break clients::find(&got, &tag).to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "{tag} never reached {LOCAL}:\n{}",
            host.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    clients::check_delivered(&delivered, &sent);
    while rt
        .block_on(mta::list(&o))
        .unwrap()
        .iter()
        .any(|q| q.id == m.id)
    {
        assert!(Instant::now() < deadline, "{} still queued", m.id);
        std::thread::sleep(Duration::from_millis(200));
    }

    // A message to the slow recipient only: deferred, not held; removed as a whole.
    let tag = format!("{tag}-single");
    let sent = submit(lab, host, &[&slow], &tag, "");
    let m = wait_listed(rt, &o, host, |m| m.recipients.len() == 1);
    assert!(!m.held, "{m:?}");
    if make == Make::Exim {
        // Exim refuses to freeze a message while it is being delivered: wait for the first
        // attempt's end (the next is a queue run a minute later).
        let log = exim::main_log(&host.layout);
        let needle = format!("{} == {slow}", m.id);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&needle)) {
            assert!(Instant::now() < deadline, "{needle:?} never logged");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let moved = m.recipients.clone();
    rt.block_on(mta::hold(&o, &m, &moved)).unwrap();
    let content = rt.block_on(mta::content(&o, &m)).unwrap();
    check_content(&content, &sent);
    rt.block_on(mta::remove(&o, &m, &moved, &[])).unwrap();
    let listed = rt.block_on(mta::list(&o)).unwrap();
    assert!(!listed.iter().any(|q| q.id == m.id), "{listed:?}");
    // Not queued any more: the MTA says so.
    let e = rt.block_on(mta::content(&o, &m)).unwrap_err();
    assert!(matches!(&e, MtaError::Gone(id) if *id == m.id), "{e}");
    let e = rt.block_on(mta::hold(&o, &m, &moved)).unwrap_err();
    assert!(matches!(&e, MtaError::Gone(id) if *id == m.id), "{e}");
}

#[test]
fn exim_and_opensmtpd_list_hold_give_and_remove_moved_recipients() {
    // The library finds `exim` and `smtpctl` on PATH, as the agent does: the lab's
    // stand-ins, written below, which reach each instance's spool (neither command uses
    // the network).
    let bin_dir = std::env::temp_dir().join(format!("robustifier-qmv-bin-{}", std::process::id()));
    std::fs::create_dir_all(&bin_dir).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    // SAFETY: before the lab and the runtime start threads; this test is its file's only
    // one, and libtest's main thread only waits for it.
    #[expect(
        clippy::disallowed_methods,
        reason = "set once before any other thread of this binary runs; the library under test, like the agent, takes its commands from PATH"
    )]
    unsafe {
        std::env::set_var("PATH", path)
    };
    let Some(mut lab) = robustifier_lab::privileged_lab("qmv", Plan::new(1, 2)) else {
        return;
    };
    let mut hosts = Vec::new();
    for (i, make) in [Make::Exim, Make::OpenSmtpd].into_iter().enumerate() {
        let dead_end = std::net::SocketAddr::new(internal_v4(11 + i as u8).into(), 2525);
        let users = Users::new()
            .with(LOCAL, "alice-pw")
            .relaying(SLOW, dead_end);
        let host = MailHost::start(&mut lab, i, make, &users).unwrap();
        match make {
            Make::Exim => exim::command_wrapper(&host.layout, &bin_dir).unwrap(),
            _ => opensmtpd::command_wrapper(&host.layout, &bin_dir).unwrap(),
        }
        hosts.push(host);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for host in &hosts {
        exercise(&lab, &rt, &bin_dir, host);
    }
    let _ = std::fs::remove_dir_all(&bin_dir);
}
