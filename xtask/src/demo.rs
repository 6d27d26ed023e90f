//! `cargo xtask demo`: the main job, end to end, in a lab of network namespaces.
//!
//! 1. A cluster: a client, two front-ends running Robustifier (XDP, steering, SMTP/POP3
//!    proxy, VRRPv3: A is master of the SMTP address, B of the POP3 address) and three
//!    back-ends of mixed makes (Postfix, Postfix, OpenSMTPD, each with Dovecot and an agent).
//! 2. Mail for three domains through the SMTP VIP with swaks, fetched back through the POP3
//!    VIP with Python's poplib; where each message went.
//! 3. The load records in the kernel map (`bpftool map dump`).
//! 4. A back-end drained by its operator and readmitted.
//! 5. A burst on a small back-end: premium mail keeps flowing, regular mail is deflected.
//! 6. Front-end A killed while mail flows: B takes the SMTP address; A comes back and takes
//!    it back; every message acknowledged is in a mailbox.
//! 7. The cluster manager: both front-ends take a commit live; B stops during two more
//!    commits while mail flows through A; B restarts from its member's file and catches up.
//! 8. Monitoring: a commit gives both front-ends a metrics endpoint and SNMP traps to a
//!    station running snmptrapd; be1's Postfix stops and starts while mail flows to the
//!    other back-ends: the alarm, the traps, the manager's merged log and the metrics.
//! 9. Message trace: be1's agent ships Postfix's log to the manager; a message through the
//!    SMTP address traced by its Message-ID to Postfix's `status=sent`, and its session.
//! 10. The manager's web interface: its address in the switch namespace, a login link, and
//!     a screenshot of the overview from a headless chromium (`target/demo/`).
//! 11. Statistics: fe-a's last minutes as its member shipped them to the manager.
//! 12. A slow domain piles up: in a relay lab of its own, mail for a destination answering
//!     451 stays deferred on the relays (`queue status`); the operator gives the domain a
//!     queue of its own and reloads, the front-end moves that mail there (`queue moves`),
//!     new mail follows, and once the destination recovers every message arrives once.
//!     `cargo xtask demo --only slow-domain` runs this step alone.
//! 13. Mailbox placement in LDAP: a cluster of its own whose services route by OpenLDAP;
//!     `robustifier route lookup` shows where answers come from; slapd stops (cached
//!     recipients flow on stale answers, a new one gets 451 4.3.0) and comes back.
//!     `cargo xtask demo --only directory` runs this step alone.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use robustifier_lab::{
    cli::Successor,
    client,
    cluster::Cluster,
    mail::clients::{self, message},
    manager::ClusterManager,
    topology::{VIP_POP, VIP_POP_V6, VIP_SMTP, VIP_SMTP_V6},
    vrrp::{eventually, owns},
};

use crate::{lab, setup, util::cargo};

/// Advertisement interval: 0.5 s, so a failover takes under two seconds.
const ADVERT_CS: u16 = 50;

pub(crate) fn vrrp(cluster: &Cluster, i: usize, smtp_prio: u8, pop_prio: u8) -> String {
    // A directory of its own (the daemon hands it to its unprivileged user), where the
    // lab's commands look for it.
    let sock = robustifier_lab::vrrp::control_socket(&cluster.lab, i);
    let mut s = format!("[ha]\ncontrol_socket = \"{}\"\n", sock.display());
    for (vrid, prio, vip) in [
        (51, smtp_prio, IpAddr::V4(VIP_SMTP)),
        (52, pop_prio, IpAddr::V4(VIP_POP)),
        (51, smtp_prio, IpAddr::V6(VIP_SMTP_V6)),
        (52, pop_prio, IpAddr::V6(VIP_POP_V6)),
    ] {
        s.push_str(&format!(
            "\n[[vrrp]]\nvrid = {vrid}\npriority = {prio}\nadvert_interval_cs = {ADVERT_CS}\nvips = [\"{vip}\"]\ngarp_interval_ms = 200\n"
        ));
    }
    s
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn indent(text: &str) {
    for l in text.lines() {
        println!("   {l}");
    }
}

/// The whole demo, or with `only` (`slow-domain`, `directory`) that step alone.
pub fn run(only: Option<&str>) -> anyhow::Result<()> {
    setup::run()?;
    cargo(&["build", "-p", "robustifier"])?;
    crate::scratch::tidy();
    // The labs' files (logs, Maildirs, databases) go to a directory of this run's, removed
    // when the demo succeeds.
    let scratch = crate::scratch::Scratch::new("demo")?;
    // SAFETY: no other thread runs yet; the labs make their directories under it.
    #[expect(
        clippy::disallowed_methods,
        reason = "set once before any thread starts; the lab crate makes its directories under TMPDIR"
    )]
    unsafe {
        std::env::set_var("TMPDIR", scratch.path());
    };
    let shown = steps(only);
    let said = scratch.finish(shown.is_ok());
    if !said.is_empty() {
        println!("demo: {said}");
    }
    shown
}

fn steps(only: Option<&str>) -> anyhow::Result<()> {
    // A demo interrupted earlier may have left its lab behind.
    lab::down("rbdemo");
    let prefix = format!("rbdemo{}", std::process::id());
    if only == Some("directory") {
        step(DIRECTORY_TITLE);
        return match directory_step(&format!("{prefix}d"))? {
            Some(why) => anyhow::bail!("the directory step failed: {why}"),
            None => Ok(()),
        };
    }
    if only == Some("slow-domain") {
        step(SLOW_DOMAIN_TITLE);
        return match slow_domain_step(&format!("{prefix}r"))? {
            Some(why) => anyhow::bail!("the slow domain step failed: {why}"),
            None => Ok(()),
        };
    }

    step(&format!(
        "lab {prefix}: client, fe-a, fe-b, be1 (Postfix), be2 (Postfix), be3 (OpenSMTPD); Dovecot on each back-end"
    ));
    let mut c = Cluster::up(&prefix, 2)?;
    c.start_agents()?;
    c.set_extra(0, &vrrp(&c, 0, 150, 100));
    c.set_extra(1, &vrrp(&c, 1, 100, 150));
    c.start_frontend(0)?;
    c.start_frontend(1)?;
    let (a, b) = (c.lab.frontends[0].ns.clone(), c.lab.frontends[1].ns.clone());
    eventually("fe-a owns the SMTP VIP", Duration::from_secs(30), || {
        owns(&a, "pub0", VIP_SMTP.into())
    })?;
    eventually("fe-b owns the POP3 VIP", Duration::from_secs(30), || {
        owns(&b, "pub0", VIP_POP.into())
    })?;
    println!(
        "   VRRP: fe-a is master of {VIP_SMTP} (SMTP), fe-b of {VIP_POP} (POP3); each backs up the other"
    );
    for line in c
        .lab
        .daemons()
        .iter()
        .filter(|d| d.name.starts_with("robustifier"))
        .flat_map(|d| {
            d.log_text()
                .lines()
                .filter(|l| l.starts_with("attached"))
                .map(|l| format!("{}: {l}", d.name))
                .collect::<Vec<_>>()
        })
    {
        println!("   {line}");
    }

    step("mail for three domains through the SMTP VIP (swaks from the client)");
    let mut sent = Vec::new();
    for (to, tag, port, extra) in [
        ("alice@example.test", "demo-1", 25, vec![]),
        ("carol@example.net", "demo-2", 25, vec!["--tls"]),
        ("erin@example.org", "demo-3", 465, vec!["--tlsc"]),
    ] {
        let msg = message(tag, to);
        let data = clients::data_file(&c.lab.log_dir, tag, &msg);
        let server = format!("{VIP_SMTP}:{port}");
        let mut args = vec![
            "--server",
            server.as_str(),
            "--from",
            "sender@client.example.org",
            "--to",
            to,
            "--data",
            &data,
        ];
        args.extend(extra.iter().copied());
        let out = clients::swaks(&c.lab.client.ns, "client.robustifier.test", &args);
        let t = clients::text(&out);
        let last = t
            .lines()
            .filter(|l| l.contains("<- ") || l.contains("<~ "))
            .rev()
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_owned();
        println!(
            "   swaks --server {server} --to {to} {}: {last}",
            extra.join(" ")
        );
        sent.push((to, tag));
    }
    for (to, tag) in &sent {
        let host = c.host_of(to);
        clients::delivered(host, to, tag);
        println!(
            "   {tag} -> {} ({:?}) Maildir {}",
            host.name(),
            host.make,
            host.maildir(to).display()
        );
    }

    step("fetched back through the POP3 VIP (Python poplib; STLS, POP3S; no password in clear)");
    let ca = c.ca();
    for (user, port, mode) in [
        ("alice@example.test", 110, "stls"),
        ("carol@example.net", 110, "stls"),
        ("erin@example.org", 995, "pop3s"),
    ] {
        let got = clients::poplib(
            &c.lab.client.ns,
            SocketAddr::new(VIP_POP.into(), port),
            mode,
            user,
            &c.password(user),
            &ca,
        );
        let n = got["list"].as_array().map_or(0, Vec::len);
        println!(
            "   {user} over {mode}: {} -> {n} message(s) retrieved",
            got["welcome"].as_str().unwrap_or("?")
        );
    }

    let pin = c.lab.pin_dir(0);
    let robustifier = robustifier_lab::robustifier_bin();
    let maps = || -> anyhow::Result<String> {
        let out = Command::new(&robustifier)
            .args(["maps", "--pin-dir"])
            .arg(&pin)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    step(&format!(
        "load records in the kernel: robustifier maps --pin-dir {}",
        pin.display()
    ));
    indent(&maps()?);
    step(&format!(
        "bpftool map lookup pinned {}/rb_backends key 1 0 0 0 (be2)",
        pin.display()
    ));
    let dump = Command::new("bpftool")
        .args(["map", "lookup", "pinned"])
        .arg(pin.join("rb_backends"))
        .args(["key", "1", "0", "0", "0"])
        .output()?;
    indent(&String::from_utf8_lossy(&dump.stdout));

    step("be1's operator asks for a drain (agent state file: drain=1)");
    std::fs::write(c.agent_state(0), "drain=1\n")?;
    let state = |want: &str| {
        let want = want.to_owned();
        let m = maps().unwrap_or_default();
        m.lines()
            .any(|l| l.contains("198.18.1.11:25") && l.contains(&want))
    };
    let took = eventually("be1 draining", Duration::from_secs(30), || {
        state("draining")
    })?;
    println!("   load map shows be1 draining after {took:.1?}");
    let r = send(&c, "alice@example.test", "demo-drained");
    println!(
        "   new mail for alice@example.test (owned by be1): {}",
        r.last().cloned().unwrap_or_default()
    );
    std::fs::write(c.agent_state(0), "")?;
    let took = eventually("be1 readmitted", Duration::from_secs(30), || state(" up "))?;
    println!("   drain lifted: be1 up again after {took:.1?}");
    let r = send(&c, "alice@example.test", "demo-readmitted");
    println!("   new mail for alice@example.test: {}", end_of_data(&r));

    step(
        "burst: 24 sessions at once to be2 (4 sessions at most); carol is premium (waits for a slot), dave regular",
    );
    let results = burst(&c);
    let tally = Burst::of(&results);
    println!(
        "   premium (carol): {} of {} delivered, {} deflected",
        tally.premium_delivered, tally.premium, tally.premium_deflected
    );
    println!(
        "   regular (dave):  {} of {} deflected with 451 4.3.2, {} delivered",
        tally.regular_deflected, tally.regular, tally.regular_delivered
    );
    if let Some(line) = results
        .iter()
        .flat_map(|(_, r)| r.iter())
        .find(|l| l.starts_with("451 4.3.2"))
    {
        println!("   a deflected session was told: {line}");
    }
    let burst_failure = tally.failure();
    if let Some(why) = &burst_failure {
        println!("   !! BURST STEP FAILED: {why}");
        for (who, r) in &results {
            println!("   !! {who}: {}", r.join(" | "));
        }
    }

    step("failover: fe-a killed (SIGKILL) while a client sends a message every 200 ms");
    let flow = MailFlow::start(&c, "flow");
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    if let Some(d) = c
        .lab
        .daemons()
        .iter_mut()
        .find(|d| d.name == "robustifier on fea")
    {
        d.stop_with(
            robustifier_lab::process::Signal::SIGKILL,
            Duration::from_secs(5),
        )?;
    }
    let took = eventually("fe-b owns the SMTP VIP", Duration::from_secs(30), || {
        owns(&b, "pub0", VIP_SMTP.into())
    })?;
    // RFC 5798 6.1: Master_Down_Interval = 3 * interval + (256 - priority) * interval / 256.
    let interval = f64::from(ADVERT_CS) / 100.0;
    let mdi = 3.0 * interval + (256.0 - 100.0) * interval / 256.0;
    println!(
        "   fe-b took {VIP_SMTP} {took:.2?} after the kill (its Master_Down_Interval: {mdi:.2} s)"
    );
    std::thread::sleep(Duration::from_secs(3));
    step("failback: fe-a restarts and preempts");
    c.start_frontend(0)?;
    let took = eventually(
        "fe-a owns the SMTP VIP again",
        Duration::from_secs(30),
        || owns(&a, "pub0", VIP_SMTP.into()),
    )?;
    println!(
        "   fe-a took {VIP_SMTP} back {took:.2?} after its restart ({:.1?} after the kill)",
        killed.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (acked, failed) = flow.stop();
    let missing = missing_at_bob(&c, &acked);
    println!(
        "   during the failover: {} messages acknowledged with 250, {} refused or cut (the client retries those), {missing} acknowledged but missing",
        acked.len(),
        failed
    );

    step(
        "upgrade: fe-a's process replaced (robustifier upgrade) while a client sends a message every 200 ms",
    );
    let flow = MailFlow::start(&c, "upgrade");
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let successor = robustifier_lab::cli::upgrade(&c.lab, 0);
    println!(
        "   fe-a serves from pid {} {:.2?} after `robustifier upgrade` started; the old process drains and exits",
        successor.pid,
        started.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let owns_still = owns(&a, "pub0", VIP_SMTP.into());
    let (acked_up, failed_up) = flow.stop();
    let missing_up = missing_at_bob(&c, &acked_up);
    println!(
        "   during the upgrade: {} messages acknowledged, {failed_up} refused or cut, {missing_up} acknowledged but missing; fe-a {} the SMTP VIP",
        acked_up.len(),
        if owns_still { "still holds" } else { "LOST" }
    );

    step(
        "cluster manager: a commit to both front-ends, fe-b stopped, two more commits, fe-b back and catching up",
    );
    let (manager, manager_failure) = manager_step(&mut c)?;

    step(
        "monitoring: be1 stopped and started; the alarm, the SNMP trap, the merged log and the metrics",
    );
    let monitoring_failure = monitoring_step(&mut c, &manager, successor)?;

    step("message trace: be1's agent ships Postfix's log; a message traced by its Message-ID");
    let trace_failure = trace_step(&mut c, &manager)?;

    step("web interface: the manager's overview in a headless chromium");
    let web_failure = web_step(&manager)?;

    step("statistics per minute, as the members shipped them to the manager");
    let stats_failure = stats_step(&manager)?;

    step("where the messages are");
    for (i, h) in c.hosts.iter().enumerate() {
        let users: Vec<String> = h
            .users
            .iter()
            .map(|u| format!("{}={}", u.address, h.messages(&u.address).len()))
            .collect();
        println!("   be{} ({:?}): {}", i + 1, h.make, users.join(", "));
    }
    c.lab.down()?;
    step(&format!("lab {prefix} removed"));

    step(SLOW_DOMAIN_TITLE);
    let slow_failure = slow_domain_step(&format!("{prefix}r"))?;
    step(DIRECTORY_TITLE);
    let directory_failure = directory_step(&format!("{prefix}d"))?;
    anyhow::ensure!(missing == 0, "{missing} acknowledged messages are missing");
    anyhow::ensure!(
        missing_up == 0 && failed_up == 0 && owns_still,
        "the upgrade step: {failed_up} sessions failed, {missing_up} acknowledged messages missing, VIP kept: {owns_still}"
    );
    if let Some(why) = manager_failure {
        anyhow::bail!("the cluster manager step failed: {why}");
    }
    if let Some(why) = monitoring_failure {
        anyhow::bail!("the monitoring step failed: {why}");
    }
    if let Some(why) = trace_failure {
        anyhow::bail!("the message trace step failed: {why}");
    }
    if let Some(why) = web_failure {
        anyhow::bail!("the web interface step failed: {why}");
    }
    if let Some(why) = stats_failure {
        anyhow::bail!("the statistics step failed: {why}");
    }
    if let Some(why) = slow_failure {
        anyhow::bail!("the slow domain step failed: {why}");
    }
    if let Some(why) = directory_failure {
        anyhow::bail!("the directory step failed: {why}");
    }
    if let Some(why) = burst_failure {
        anyhow::bail!("the burst step failed: {why}");
    }
    Ok(())
}

/// The directory step's title, for the whole demo and for `--only directory`.
const DIRECTORY_TITLE: &str = "mailbox placement in LDAP: every service routes by the lab's slapd; slapd stops and comes back";

/// A cluster of its own with one front-end whose services route recipients and users by
/// OpenLDAP (`robustifier_lab::directory::ldap`) instead of text maps. The lab goes down
/// whatever the story shows; the failure, if any, for the end of the demo.
fn directory_step(prefix: &str) -> anyhow::Result<Option<String>> {
    use robustifier_lab::directory::ldap::{Slapd, lab_mailboxes};
    let mut c = Cluster::up(prefix, 1)?;
    let be1 = &c.lab.backends[0];
    let mut slapd = Slapd::start(&c.lab.log_dir, &be1.ns, "ldap", IpAddr::V4(be1.v4))?;
    slapd.add(&lab_mailboxes())?;
    println!(
        "   lab {prefix}: slapd on {} (LDAPS, StartTLS; entries: one per mailbox, naming its SMTP, submission and POP3 pools)",
        be1.v4
    );
    // Short lifetimes so that the answers are stale by the time slapd stops.
    let common =
        "timeout_ms = 1000\ncache_ttl_secs = 2\nnegative_ttl_secs = 2\nnot_found = \"reject\"";
    let sock = robustifier_lab::vrrp::control_socket(&c.lab, 0);
    c.set_extra(
        0,
        &format!("[ha]\ncontrol_socket = \"{}\"\n", sock.display()),
    );
    c.use_directories(slapd.lab_directories(common));
    c.start_frontend(0)?;
    c.add_vips(0)?;
    let failure = directory_story(&c, &mut slapd, &sock);
    drop(slapd);
    c.lab.down()?;
    step(&format!("lab {prefix} removed"));
    failure
}

/// What an operator sees: mail and POP3 logins routed by slapd's entries, `route lookup`
/// showing where an answer came from, slapd stopped (cached keys flow on stale answers,
/// a key never asked gets 451 4.3.0), slapd back (fresh answers), and the counters.
fn directory_story(
    c: &Cluster,
    slapd: &mut robustifier_lab::directory::ldap::Slapd,
    sock: &std::path::Path,
) -> anyhow::Result<Option<String>> {
    let smtp = SocketAddr::new(VIP_SMTP.into(), 25);
    let deliver = |to: &str, tag: &str| {
        let (ns, dir) = (&c.lab.client.ns, &c.lab.log_dir);
        clients::swaks_deliver(ns, "client.robustifier.test", dir, smtp, to, tag, &[]);
        let host = c.host_of(to);
        clients::delivered(host, to, tag);
        println!("   {tag} to {to} -> {} ({:?})", host.name(), host.make);
    };
    let rcpt_reply = |to: &str| {
        let out = clients::swaks(
            &c.lab.client.ns,
            "client.robustifier.test",
            &["--server", &smtp.to_string(), "--to", to],
        );
        clients::text(&out)
            .lines()
            .find(|l| l.contains("<** ") || l.contains("<-  250 2.1.5"))
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let route = |key: &str, service: &str, extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "route".as_ref(),
            "lookup".as_ref(),
            key.as_ref(),
            "--service".as_ref(),
            service.as_ref(),
            "--socket".as_ref(),
            sock.as_os_str(),
        ];
        args.extend(extra.iter().map(|e| std::ffi::OsStr::new(*e)));
        let out = robustifier_lab::cli::run(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        indent(&text);
        text
    };
    for (to, tag) in [
        ("alice@example.test", "dir-1"),
        ("carol@example.net", "dir-2"),
        ("erin@example.org", "dir-3"),
    ] {
        deliver(to, tag);
    }
    let got = clients::poplib(
        &c.lab.client.ns,
        SocketAddr::new(VIP_POP.into(), 995),
        "pop3s",
        "carol@example.net",
        &c.password("carol@example.net"),
        &c.ca(),
    );
    println!(
        "   carol@example.net over POP3S (routed by slapd): {} message(s)",
        got["list"].as_array().map_or(0, Vec::len)
    );
    println!(
        "   nobody@example.org (no entry): {}",
        rcpt_reply("nobody@example.org")
    );
    println!("   robustifier route lookup (an operator debugging a route):");
    route("carol@example.net", "smtp", &[]);
    route("erin@example.org", "pop3", &["--user", "--fresh"]);

    slapd.stop()?;
    println!("   slapd stopped");
    std::thread::sleep(Duration::from_millis(2500));
    deliver("alice@example.test", "dir-stale");
    let bob = rcpt_reply("bob@example.test");
    println!("   bob@example.test (never asked, nothing cached): {bob}");
    let lookup = route("alice@example.test", "smtp", &[]);
    slapd.restart()?;
    println!("   slapd restarted");
    deliver("bob@example.test", "dir-fresh");
    let out = robustifier_lab::cli::run([
        "route".as_ref(),
        "directories".as_ref(),
        "--socket".as_ref(),
        sock.as_os_str(),
    ]);
    let stats = String::from_utf8_lossy(&out.stdout).into_owned();
    indent(&stats);
    if !bob.contains("451 4.3.0") {
        return Ok(Some(format!(
            "an uncached recipient during the outage got {bob:?}, not 451 4.3.0"
        )));
    }
    if !lookup.contains("stale cache") {
        return Ok(Some(format!(
            "route lookup during the outage did not answer from the stale cache: {lookup}"
        )));
    }
    if !stats.contains("ldap-smtp") {
        return Ok(Some(format!(
            "route directories lists no ldap-smtp: {stats}"
        )));
    }
    Ok(None)
}

/// The slow domain step's title, for the whole demo and for `--only slow-domain`.
const SLOW_DOMAIN_TITLE: &str = "a slow domain piles up: an outbound relay cluster whose destination slow.example answers 451; the operator gives it a queue of its own";

/// A relay cluster of its own (`robustifier_lab::relay_lab`): two Postfix relays in pool
/// "mx", an idle one in "slowq", destinations fast.example (accepting) and slow.example
/// (451 4.7.1). The lab goes down whatever the story shows; the failure, if any, for the
/// end of the demo.
fn slow_domain_step(prefix: &str) -> anyhow::Result<Option<String>> {
    use robustifier_lab::{Lab, mail::Make, relay_lab::RelayLab};
    let lab = Lab::up(prefix, RelayLab::plan(2))?;
    let mut r = RelayLab::start(lab, &[Make::Postfix, Make::Postfix])?;
    println!(
        "   lab {prefix}: be1, be2 (Postfix relays, pool mx), be3 (Postfix, pool slowq, idle), be4 fast.example, be5 slow.example"
    );
    let failure = slow_domain_story(&mut r);
    r.lab.down()?;
    step(&format!("lab {prefix} removed"));
    failure
}

/// What an operator sees: slow.example's mail deferred on the "mx" relays (`queue
/// status`); a `[[domain_queue]]` for it added and reloaded, and the front-end moving that
/// mail to "slowq" by itself (`queue moves`) until it is there only; new mail for it
/// queued there too; the destination recovered, "slowq" flushed, and every message
/// delivered exactly once, counted by Message-ID.
fn slow_domain_story(
    r: &mut robustifier_lab::relay_lab::RelayLab,
) -> anyhow::Result<Option<String>> {
    use robustifier_lab::relay_lab::{RelayLab, SLOW};
    let (fast, slow) = (r.fast.rcpt(), r.slow.rcpt());
    let slowq = r.relay_name(r.mx);
    let mx: Vec<String> = (0..r.mx).map(|i| r.relay_name(i)).collect();
    let within = Duration::from_secs(120);
    let mut shed = 0;
    let mut to_slow = Vec::new();
    for _ in 0..6 {
        send_retrying(r, &fast, &mut shed)?;
        to_slow.extend(send_retrying(r, &slow, &mut shed)?);
    }
    println!("   6 messages to {fast} and 6 to {slow} through {VIP_SMTP}:25");
    if let Err(e) = r.fast.wait_for_ids(6, within) {
        return Ok(Some(format!("fast.example did not get its mail: {e}")));
    }
    println!("   {fast}: {} delivered", r.fast.message_ids().len());
    let piled = RelayLab::eventually("slow.example's mail deferred", within, || {
        let status = r.queue_status(SLOW)?;
        let deferred: u64 = slow_queued(&status).values().map(|q| q.deferred).sum();
        Ok(if deferred == to_slow.len() as u64 {
            Ok(())
        } else {
            Err(status)
        })
    });
    println!(
        "   {SLOW}'s mail deferred on the mx relays ({}), robustifier queue status:",
        mx.join(", ")
    );
    indent(&r.queue_table()?);
    if let Err(e) = piled {
        return Ok(Some(e.to_string()));
    }

    // The operator's change: a queue of its own for the domain, and a reload. The
    // front-end starts the move itself; nobody types `queue move`.
    let block = format!("[[domain_queue]]\ndomains = [\"{SLOW}\"]\npool = \"slowq\"\n");
    let config = r.config_path();
    std::fs::write(&config, r.frontend_config(&block))?;
    let reload = robustifier_lab::cli::run(["reload".as_ref(), "-c".as_ref(), config.as_os_str()]);
    if !reload.status.success() {
        return Ok(Some(format!(
            "the reload adding the domain queue was refused: {}",
            String::from_utf8_lossy(&reload.stderr)
        )));
    }
    println!(
        "   the operator adds `[[domain_queue]] domains = [\"{SLOW}\"] pool = \"slowq\"` to {} and runs robustifier reload: {}",
        config.display(),
        String::from_utf8_lossy(&reload.stdout).trim()
    );
    let moves = || -> anyhow::Result<(String, serde_json::Value)> {
        let socket = r.control_socket();
        let ask = |json: bool| {
            let mut args = vec!["queue".as_ref(), "moves".as_ref(), "--domain".as_ref()];
            args.extend([SLOW.as_ref(), "--socket".as_ref(), socket.as_os_str()]);
            if json {
                args.push("--json".as_ref());
            }
            robustifier_lab::cli::run(args)
        };
        let (text, json) = (ask(false), ask(true));
        anyhow::ensure!(
            json.status.success(),
            "queue moves: {}",
            String::from_utf8_lossy(&json.stderr)
        );
        Ok((
            String::from_utf8_lossy(&text.stdout).into_owned(),
            serde_json::from_slice(&json.stdout)?,
        ))
    };
    let deadline = Instant::now() + within;
    let mut shown = String::new();
    let moved = loop {
        let (text, report) = moves()?;
        if text != shown {
            println!("   robustifier queue moves --domain {SLOW}:");
            indent(&text);
            shown = text;
        }
        if move_done(&report, &mx) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    if !moved {
        return Ok(Some(format!(
            "the move the reload started was not done on {} within {within:?}",
            mx.join(", ")
        )));
    }
    let log = r
        .lab
        .frontend_daemon(0)
        .map(|d| d.log_text())
        .unwrap_or_default();
    if let Some(line) = log.lines().find(|l| l.contains("queue move started")) {
        println!("   fea's log: {}", line.trim());
    }
    let on_slowq_only = |want: u64| {
        RelayLab::eventually(
            &format!("{SLOW}'s {want} messages on {slowq} only"),
            within,
            || {
                let status = r.queue_status(SLOW)?;
                let q = slow_queued(&status);
                let there = q.get(&slowq).is_some_and(|q| q.queued == want)
                    && mx.iter().all(|b| q.get(b).is_some_and(|q| q.queued == 0));
                Ok(if there { Ok(()) } else { Err(status) })
            },
        )
    };
    let settled = on_slowq_only(to_slow.len() as u64);
    println!(
        "   the move the reload started took {SLOW}'s mail from the mx relays to {slowq} (pool slowq), robustifier queue status:"
    );
    indent(&r.queue_table()?);
    if let Err(e) = settled {
        return Ok(Some(e.to_string()));
    }

    to_slow.extend(send_retrying(r, &slow, &mut shed)?);
    if let Err(e) = on_slowq_only(to_slow.len() as u64) {
        return Ok(Some(format!("new mail for {SLOW}: {e}")));
    }
    println!(
        "   a new message to {slow} through {VIP_SMTP}:25 is queued on {slowq} (pool slowq): {} there, none on the mx relays",
        to_slow.len()
    );

    r.slow.recover()?;
    r.flush()?;
    if let Err(e) = r.slow.wait_for_ids(to_slow.len(), within) {
        return Ok(Some(format!("after recovery: {e}")));
    }
    // A late copy could still be on its way while some relay holds mail for the domain:
    // count only once every queue is empty of it.
    let drained = RelayLab::eventually(&format!("no relay holds {SLOW}'s mail"), within, || {
        let status = r.queue_status(SLOW)?;
        let q = slow_queued(&status);
        let empty = q.len() == r.relays.len() && q.values().all(|q| q.queued == 0);
        Ok(if empty { Ok(()) } else { Err(status) })
    });
    if let Err(e) = drained {
        return Ok(Some(e.to_string()));
    }
    let got = r.slow.message_ids();
    let failure = exactly_once(&to_slow, &got);
    println!(
        "   {SLOW} recovered (postfix reload), relays flushed: {} delivered to {slow} for {} sent, {} distinct Message-IDs: {}",
        got.len(),
        to_slow.len(),
        distinct(&got),
        if failure.is_none() {
            "every message exactly once"
        } else {
            "NOT every message exactly once"
        }
    );
    if shed > 0 {
        println!(
            "   ({shed} sessions were shed with 421 4.3.2 while the machine's load put the relays over their run-queue threshold, and sent again)"
        );
    }
    Ok(failure)
}

/// Whether a failed send's transcript is the front-end's shed reply at the greeting.
fn is_shed(transcript: &str) -> bool {
    transcript
        .lines()
        .any(|l| l.starts_with("<** 421 4.3.2") && l.contains("Service temporarily overloaded"))
}

/// Sends one message to `to` through the SMTP VIP, sending it again (at most a minute) when
/// the front-end sheds the session with `421 4.3.2`, as a mail client would: the relays'
/// run-queue figure is the machine's load, which other work on it can push over the
/// threshold for a few seconds. A shed session took no message, so nothing is sent twice.
fn send_retrying(
    r: &robustifier_lab::relay_lab::RelayLab,
    to: &str,
    shed: &mut usize,
) -> anyhow::Result<Vec<String>> {
    let mut tries = 0;
    loop {
        match r.send(&[to], 1) {
            Err(e) if tries < 60 && is_shed(&e.to_string()) => {
                tries += 1;
                *shed += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            result => return result,
        }
    }
}

/// One relay's figures for the domain asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Queued {
    queued: u64,
    deferred: u64,
}

/// `queue status --domain D --json`'s figures per back-end (zero where the domain is not
/// queued); a back-end whose agent did not answer is left out, so that nothing is taken
/// for empty that was not seen.
fn slow_queued(status: &serde_json::Value) -> std::collections::BTreeMap<String, Queued> {
    status["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["error"].is_null())
        .filter_map(|b| {
            let name = b["backend"].as_str()?.to_owned();
            let q =
                b["domains"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .fold(Queued::default(), |q, d| Queued {
                        queued: q.queued + d["queued"].as_u64().unwrap_or(0),
                        deferred: q.deferred + d["deferred"].as_u64().unwrap_or(0),
                    });
            Some((name, q))
        })
        .collect()
}

/// Whether `queue moves --json` says every one of `sources` has finished its move.
fn move_done(report: &serde_json::Value, sources: &[String]) -> bool {
    sources.iter().all(|name| {
        report["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["backend"].as_str() == Some(name.as_str()) && b["status"]["state"] == "done")
    })
}

fn distinct(ids: &[String]) -> usize {
    ids.iter().collect::<std::collections::BTreeSet<_>>().len()
}

/// Why the delivered Message-IDs `got` are not each of `sent` exactly once.
fn exactly_once(sent: &[String], got: &[String]) -> Option<String> {
    let mut count = std::collections::BTreeMap::<&str, usize>::new();
    for id in got {
        *count.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = sent
        .iter()
        .filter(|id| !count.contains_key(id.as_str()))
        .collect();
    let twice: Vec<(&&str, &usize)> = count.iter().filter(|(_, n)| **n > 1).collect();
    let unknown: Vec<&&str> = count
        .keys()
        .filter(|id| !sent.iter().any(|s| s == **id))
        .collect();
    if missing.is_empty() && twice.is_empty() && unknown.is_empty() {
        None
    } else {
        Some(format!(
            "{SLOW_DOMAIN}: missing {missing:?}, delivered more than once {twice:?}, not sent {unknown:?}"
        ))
    }
}

/// The relay lab's tempfailing destination, in the failure's words.
const SLOW_DOMAIN: &str = robustifier_lab::relay_lab::SLOW;

/// What the burst showed, per group.
#[derive(Debug, Default, PartialEq, Eq)]
struct Burst {
    premium: usize,
    premium_delivered: usize,
    premium_deflected: usize,
    regular: usize,
    regular_delivered: usize,
    regular_deflected: usize,
}

impl Burst {
    fn of(results: &[(String, Vec<String>)]) -> Burst {
        let mut t = Burst::default();
        for (who, r) in results {
            let delivered = end_of_data(r).starts_with("250");
            let deflected = r.iter().any(|l| l.starts_with("451 4.3.2"));
            if who == "carol" {
                t.premium += 1;
                t.premium_delivered += usize::from(delivered);
                t.premium_deflected += usize::from(deflected);
            } else {
                t.regular += 1;
                t.regular_delivered += usize::from(delivered);
                t.regular_deflected += usize::from(deflected);
            }
        }
        t
    }

    /// Why the burst did not show what it is for: premium mail ahead of regular mail, and
    /// regular mail deflected with 451 4.3.2.
    fn failure(&self) -> Option<String> {
        if self.premium_delivered <= self.regular_delivered {
            Some(format!(
                "premium is not ahead: {} premium delivered, {} regular delivered",
                self.premium_delivered, self.regular_delivered
            ))
        } else if self.regular_deflected == 0 {
            Some("no regular session was deflected with 451 4.3.2".into())
        } else {
            None
        }
    }
}

fn send(c: &Cluster, to: &str, tag: &str) -> Vec<String> {
    let body = message(tag, to);
    let to = to.to_owned();
    c.lab
        .client
        .ns
        .enter(move || {
            client::send_mail(
                SocketAddr::new(VIP_SMTP.into(), 25),
                None,
                "sender@client.example.org",
                &[&to],
                &body,
            )
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| vec!["connection failed".into()])
}

fn end_of_data(r: &[String]) -> String {
    r.iter()
        .position(|l| l.starts_with("354"))
        .and_then(|i| r.get(i + 1))
        .or(r.last())
        .cloned()
        .unwrap_or_default()
}

fn burst(c: &Cluster) -> Vec<(String, Vec<String>)> {
    c.lab
        .client
        .ns
        .enter(|| {
            let handles: Vec<_> = (0..24)
                .map(|i| {
                    std::thread::spawn(move || {
                        let who = if i % 2 == 0 { "carol" } else { "dave" };
                        let to = format!("{who}@example.net");
                        let body = message(&format!("burst-{i}"), &to);
                        let r = client::send_mail(
                            SocketAddr::new(VIP_SMTP.into(), 25),
                            None,
                            "bulk@client.example.org",
                            &[&to],
                            &body,
                        )
                        .unwrap_or_else(|e| vec![format!("error {e}")]);
                        (who.to_owned(), r)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        })
        .unwrap_or_default()
}

/// The manager on the back-end segment, a member beside each front-end: the members
/// apply version 1 (the front-ends' configuration as one cluster text) live; fe-b and its
/// member stop while two commits (be3's session limit) are made and mail flows through
/// fe-a; fe-b restarts from the file its member last wrote, and its member catches up.
/// The manager, still running with both members, and the failure, if any, for the end
/// of the demo.
fn manager_step(c: &mut Cluster) -> anyhow::Result<(ClusterManager, Option<String>)> {
    use robustifier_lab::manager::{
        Traffic, check_delivered, cluster_config, member_priorities, runs_head,
    };
    let m = ClusterManager::up(&mut c.lab)?;
    for i in [0, 1] {
        m.start_member(&mut c.lab, i)?;
    }
    let own = [member_priorities(0), member_priorities(1)];
    let (v, said) = m.commit_wait(&cluster_config(c, &own), "the demo's cluster", 60)?;
    println!("   version {v} committed: {said}");
    let flow = Traffic::start(
        &c.lab,
        VIP_SMTP.into(),
        "manager",
        &["bob@example.test"],
        Duration::from_millis(100),
        2000,
    )?;
    if let Some(d) = c.frontend_daemon(1) {
        d.stop()?;
    }
    m.stop_member(&mut c.lab, 1, robustifier_lab::process::Signal::SIGTERM)?;
    println!("   fe-b and its member stopped");
    for sessions in [30, 40] {
        c.set_pool_extra(2, vec![], &format!("sessions = {sessions}"));
        let v = m.commit(&cluster_config(c, &own), "be3's session limit")?;
        println!("   version {v} committed (be3: {sessions} sessions) while fe-b is away");
    }
    eventually("fe-a runs the head", Duration::from_secs(60), || {
        m.status().is_ok_and(|s| runs_head(&s, "fea"))
    })?;
    let head = m.head()?;
    m.start_frontend(&mut c.lab, 1)?;
    let restarted = Instant::now();
    m.start_member(&mut c.lab, 1)?;
    eventually("fe-b runs the head", Duration::from_secs(60), || {
        m.status().is_ok_and(|s| runs_head(&s, "feb"))
    })?;
    let caught_up = restarted.elapsed();
    println!(
        "   fe-b restarted from the file of version {v}; its member applied version {head} {caught_up:.2?} after its restart"
    );
    indent(&m.cli_ok(&["status"])?);
    std::thread::sleep(Duration::from_secs(1));
    let sent = flow.finish();
    let expected: Vec<(String, usize, String)> = sent
        .accepted
        .iter()
        .map(|(t, to)| (t.clone(), 0, to.clone()))
        .collect();
    let delivered = check_delivered(c, &expected, Duration::from_secs(60));
    println!(
        "   meanwhile: {} messages acknowledged through fe-a, {} refused or cut, {}",
        sent.accepted.len(),
        sent.refused.len(),
        match &delivered {
            Ok(()) => "every acknowledged one delivered once".to_owned(),
            Err(e) => e.to_string(),
        }
    );
    let failure = match delivered {
        Err(e) => Some(e.to_string()),
        Ok(()) if !sent.refused.is_empty() => Some(format!("refused: {:?}", sent.refused)),
        Ok(()) => None,
    };
    Ok((m, failure))
}

/// A monitoring station (snmptrapd with ROBUSTIFIER-MIB, a Prometheus scraper) on the
/// back-end bridge. The front-ends are their members' at this point, so `[monitor]` (the
/// metrics endpoint, SNMPv2c traps to the station) comes as a manager commit; it takes a
/// restart, so each front-end then restarts from its member's file, fe-b first, so that
/// the SMTP address moves only for fe-a's restart. Then, while mail flows to be2 and be3
/// through the SMTP address, be1's Postfix stops and starts: fe-a's alarm, the station's
/// traps, the manager's merged log and the metrics, down and up again.
/// The failure, if any, for the end of the demo.
fn monitoring_step(
    c: &mut Cluster,
    m: &ClusterManager,
    successor: Successor,
) -> anyhow::Result<Option<String>> {
    use anyhow::Context as _;
    use robustifier_lab::{
        manager::{Traffic, check_delivered, cluster_config, member_priorities},
        monitor::{self, METRICS_PORT, Station},
    };
    const KEY: &str = "backend_down:be1";
    const BE1: &str = "backend=\"be1\"";
    const UP: &str = "robustifier_backend_up";
    let mut failures = Vec::new();
    let station = Station::start(&c.lab)?;
    println!(
        "   station in the switch namespace: snmptrapd (net-snmp, ROBUSTIFIER-MIB, v2c community from a file) on {}, logging to {}",
        station.target,
        station.trap_log.display()
    );
    let own = [member_priorities(0), member_priorities(1)];
    let text = format!("{}\n{}", cluster_config(c, &own), station.monitor_toml());
    let (v, said) = m.commit_wait(&text, "monitoring: metrics and SNMP traps", 60)?;
    println!(
        "   version {v} committed: [monitor] metrics_listen 0.0.0.0:{METRICS_PORT} with a token file, [[monitor.snmp]] v2c to {}; {said}",
        station.target
    );
    let fea_log = std::fs::read_to_string(c.lab.log_dir.join("fea-successor.log"))?;
    let feb_log = c
        .frontend_daemon(1)
        .map(|d| d.log_text())
        .unwrap_or_default();
    for (fe, log) in [("fe-a", &fea_log), ("fe-b", &feb_log)] {
        let n = log
            .lines()
            .filter(|l| l.contains("takes a restart"))
            .count();
        println!(
            "   {fe} applied it live and logged {n} change(s) that take a restart ([monitor])"
        );
    }
    if let Some(d) = c.frontend_daemon(1) {
        d.stop()?;
    }
    m.start_frontend(&mut c.lab, 1)?;
    let b = c.lab.frontends[1].ns.clone();
    eventually(
        "fe-b owns the POP3 VIP again",
        Duration::from_secs(30),
        || owns(&b, "pub0", VIP_POP.into()),
    )?;
    drop(successor);
    m.start_frontend(&mut c.lab, 0)?;
    let a = c.lab.frontends[0].ns.clone();
    eventually(
        "fe-a owns the SMTP VIP again",
        Duration::from_secs(30),
        || owns(&a, "pub0", VIP_SMTP.into()),
    )?;
    let fea = SocketAddr::new(
        c.lab.frontends[0]
            .internal_v4
            .context("fe-a has no back-end address")?
            .into(),
        METRICS_PORT,
    );
    eventually("fe-a's metrics endpoint", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        station.metrics(fea).is_ok()
    })?;
    println!(
        "   fe-b, then fe-a restarted from their members' files; fe-a holds {VIP_SMTP} again and serves http://{fea}/metrics"
    );

    let flow = Traffic::start(
        &c.lab,
        VIP_SMTP.into(),
        "monitoring",
        &["dave@example.net", "erin@example.org"],
        Duration::from_millis(200),
        2000,
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let began = Instant::now();
    c.hosts[0].stop_smtp(&mut c.lab);
    println!(
        "   be1's Postfix stopped (Dovecot still runs); mail for dave (be2) and erin (be3) keeps flowing through {VIP_SMTP}"
    );
    let lab = &c.lab;
    let took = eventually(
        &format!("{KEY} in fe-a's alarms"),
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_millis(200));
            monitor::alarms(lab, 0).is_ok_and(|r| monitor::active(&r, KEY).is_some())
        },
    )?;
    let report = monitor::alarms(lab, 0)?;
    if let Some(a) = monitor::active(&report, KEY) {
        println!(
            "   robustifier alarms --json on fe-a, {took:.1?} after the stop: {} {} \"{}\" (event #{})",
            a["key"].as_str().unwrap_or("?"),
            a["severity"].as_str().unwrap_or("?"),
            a["message"].as_str().unwrap_or("?"),
            a["seq"]
        );
    }
    if !show_traps(&station, "robustifierAlarmRaised", KEY) {
        failures.push(format!("no robustifierAlarmRaised trap for {KEY} from fea"));
    }
    let logged = show_merged_log(m, began, "[alarm raised]", 0);
    show_metric(&station, fea, UP, BE1, " 0", &mut failures);

    c.hosts[0].restart_smtp(&mut c.lab)?;
    println!("   be1's Postfix started again");
    let lab = &c.lab;
    let took = eventually(
        &format!("{KEY} cleared in fe-a's alarms"),
        Duration::from_secs(60),
        || {
            std::thread::sleep(Duration::from_millis(200));
            monitor::alarms(lab, 0).is_ok_and(|r| monitor::active(&r, KEY).is_none())
        },
    )?;
    let report = monitor::alarms(lab, 0)?;
    let cleared = report["events"].as_array().and_then(|e| {
        e.iter().rev().find(|e| {
            e["alarm"] == "cleared"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("back-end be1 "))
        })
    });
    println!(
        "   robustifier alarms --json on fe-a, {took:.1?} after the start: {KEY} no longer active (active: {:?}){}",
        report["alarms"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|a| a["key"].as_str())
                .collect::<Vec<_>>())
            .unwrap_or_default(),
        cleared.map_or(String::new(), |e| format!(
            "; event #{}: \"{}\" (alarm cleared)",
            e["seq"],
            e["message"].as_str().unwrap_or("?")
        ))
    );
    if !show_traps(&station, "robustifierAlarmCleared", KEY) {
        failures.push(format!(
            "no robustifierAlarmCleared trap for {KEY} from fea"
        ));
    }
    show_merged_log(m, began, "[alarm cleared]", logged);
    show_metric(&station, fea, UP, BE1, " 1", &mut failures);

    std::thread::sleep(Duration::from_secs(1));
    let sent = flow.finish();
    let expected: Vec<(String, usize, String)> = sent
        .accepted
        .iter()
        .filter_map(|(t, to)| {
            let j = c.hosts.iter().position(|h| h.users.get(to).is_some())?;
            Some((t.clone(), j, to.clone()))
        })
        .collect();
    let delivered = check_delivered(c, &expected, Duration::from_secs(60));
    println!(
        "   meanwhile: {} messages acknowledged through {VIP_SMTP}, {} refused or cut, {}",
        sent.accepted.len(),
        sent.refused.len(),
        match &delivered {
            Ok(()) => "every acknowledged one delivered once".to_owned(),
            Err(e) => e.to_string(),
        }
    );
    if let Err(e) = delivered {
        failures.push(e.to_string());
    }
    if !sent.refused.is_empty() {
        failures.push(format!("refused: {:?}", sent.refused));
    }
    let (pid, dir) = (station.pid(), station.dir.clone());
    drop(station);
    println!(
        "   snmptrapd (pid {}) stopped, {} removed",
        pid.map_or("?".into(), |p| p.to_string()),
        dir.display()
    );
    Ok((!failures.is_empty()).then(|| failures.join("; ")))
}

/// The message trace: be1's agent (restarted with an agent certificate named `be1`) ships
/// Postfix's log to the manager; a message for alice (be1) with a known Message-ID goes
/// through the SMTP address, and `cluster trace` shows it once Postfix's `status=sent`
/// line is in it (at most a minute), then `cluster logs --session` its session. The
/// failure, if any, for the end of the demo.
fn trace_step(c: &mut Cluster, m: &ClusterManager) -> anyhow::Result<Option<String>> {
    const TO: &str = "alice@example.test";
    m.ship_maillog(c, 0)?;
    println!(
        "   cluster issue --dir {} --agent be1; be1's agent restarted with --maillog {} --manager {}",
        m.pki.display(),
        robustifier_lab::mail::postfix::maillog(&c.hosts[0].layout).display(),
        m.addr
    );
    let tag = format!("demo-trace-{}", std::process::id());
    let id = format!("<{tag}@client.example.org>");
    let r = send(c, TO, &tag);
    println!(
        "   message {id} for {TO} through {VIP_SMTP}: {}",
        end_of_data(&r)
    );
    if !end_of_data(&r).starts_with("250") {
        return Ok(Some(format!("{id} was not accepted: {}", r.join(" | "))));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut trace = serde_json::Value::Null;
    let sent = loop {
        if let Ok(out) = m.cli_ok(&["trace", &id, "--json"]) {
            trace = serde_json::from_str(&out).unwrap_or_default();
        }
        let sent = trace["messages"][0]["mta"].as_array().is_some_and(|l| {
            l.iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains("status=sent")))
        });
        if sent || Instant::now() > deadline {
            break sent;
        }
        // The member and the agent ship every few hundred milliseconds.
        std::thread::sleep(Duration::from_millis(300));
    };
    if !sent {
        println!("   !! no status=sent line in the trace of {id} within 60 s: {trace:#}");
        return Ok(Some(format!(
            "the trace of {id} has no status=sent line from be1's Postfix"
        )));
    }
    println!("   robustifier cluster trace '{id}':");
    for l in m.cli_ok(&["trace", &id])?.lines() {
        println!("       {l}");
    }
    let Some(session) = trace["messages"][0]["record"]["session"].as_str() else {
        return Ok(Some(format!(
            "the trace of {id} names no session: {trace:#}"
        )));
    };
    let logs = m.cli_ok(&["logs", "--session", session])?;
    println!("   robustifier cluster logs --session {session}:");
    for l in logs.lines() {
        println!("       {l}");
    }
    if !logs.contains(session) {
        return Ok(Some(format!(
            "cluster logs --session {session} shows nothing of it"
        )));
    }
    Ok(None)
}

/// The web interface: where it is, a login link for a person, and a headless chromium in
/// the switch namespace that logs in with another link and takes the overview. The
/// failure, if any, for the end of the demo.
fn web_step(m: &ClusterManager) -> anyhow::Result<Option<String>> {
    use robustifier_lab::manager::{OPERATOR, member_row};
    let ns = &m.ns.name;
    println!(
        "   robustifier manager ... --web-listen {}: https://{}/ in the lab's switch namespace {ns}",
        m.web, m.web
    );
    println!("   robustifier cluster web: {}", m.login_link()?);
    println!(
        "   (one use, within a minute; while the demo runs, open it with `sudo ip netns exec {ns} chromium --no-sandbox --ignore-certificate-errors --user-data-dir=/tmp/rb-web LINK`, or forward a port: `sudo socat TCP-LISTEN:8443,bind=127.0.0.1,fork,reuseaddr EXEC:'ip netns exec {ns} socat STDIO TCP:{}'` and `ssh -L 8443:127.0.0.1:8443 THIS-HOST`)",
        m.web
    );
    let png = crate::util::root().join("target/demo/web-overview.png");
    let link = m.login_link()?;
    let shown = match robustifier_lab::web::screenshot_overview(
        &m.ns,
        &link,
        &png,
        Duration::from_secs(30),
    ) {
        Ok(shown) => shown,
        Err(e) => {
            println!("   !! headless chromium in {ns}: {e:#}");
            return Ok(Some(format!("the web interface's overview: {e:#}")));
        }
    };
    let status = m.status()?;
    println!(
        "   headless chromium in {ns} opened a fresh link: logged in as {}, the overview shows {}; screenshot {}",
        shown.who,
        shown
            .members
            .iter()
            .map(|(name, applied)| format!("{name} runs version {applied}"))
            .collect::<Vec<_>>()
            .join(", "),
        png.display()
    );
    if shown.who != OPERATOR {
        return Ok(Some(format!(
            "the web interface logged in as {:?}, not {OPERATOR}",
            shown.who
        )));
    }
    // The page shows what `cluster status` says (no commit happens meanwhile).
    for name in &m.members {
        let applied = member_row(&status, name).map(|r| r["applied"].to_string());
        let row = shown.members.iter().find(|(n, _)| n == name);
        if applied.is_none() || row.map(|(_, a)| a) != applied.as_ref() {
            return Ok(Some(format!(
                "the overview's row of {name} is {row:?}; cluster status says version {applied:?}"
            )));
        }
    }
    Ok(None)
}

/// The statistics: the members ship their front-ends' minutes to the manager; once a
/// minute of fe-a's with messages is there (it is, mail has flowed for minutes; at most
/// 75 s for one to close otherwise), `cluster stats` for fe-a's last minutes. The failure,
/// if any, for the end of the demo.
fn stats_step(m: &ClusterManager) -> anyhow::Result<Option<String>> {
    let fea = m.members[0].as_str();
    let now_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        / 60;
    // The minutes after this one: the last three, the current one once it closes.
    let since = (now_minute - 3).to_string();
    let started = Instant::now();
    let found = loop {
        let text = m
            .cli_ok(&["stats", "--member", fea, "--since", &since, "--json"])
            .unwrap_or_default();
        let n = minutes_with_messages(&text);
        if n > 0 || started.elapsed() > Duration::from_secs(75) {
            break n;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    println!(
        "   robustifier cluster stats --member {fea} --since {since} (minutes fe-a's member shipped to the manager; {found} with messages):"
    );
    for l in m
        .cli_ok(&["stats", "--member", fea, "--since", &since])?
        .lines()
    {
        println!("       {l}");
    }
    if found == 0 {
        return Ok(Some(format!(
            "no minute of {fea}'s with messages at the manager after {:.0?}",
            started.elapsed()
        )));
    }
    Ok(None)
}

/// How many of the minutes in `cluster stats --json`'s output (one a line) count a
/// message in some service.
fn minutes_with_messages(text: &str) -> usize {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["services"].as_object().is_some_and(|s| {
                s.values()
                    .any(|t| t["messages"].as_u64().is_some_and(|n| n > 0))
            })
        })
        .count()
}

/// Prints fe-a's notifications `trap` about `key` from the station's log, object by
/// object, and how many fe-b sent; whether fe-a sent one (within 30 s).
fn show_traps(station: &robustifier_lab::monitor::Station, trap: &str, key: &str) -> bool {
    let from_a = station.wait_notification(trap, key, "fea", Duration::from_secs(30));
    for line in &from_a {
        let mut parts = line.split('\t').filter(|p| !p.trim().is_empty());
        println!("   snmptrapd: {}", parts.next().unwrap_or_default().trim());
        for object in parts {
            println!("       {}", object.trim());
        }
    }
    let from_b = station
        .notifications(trap, key)
        .iter()
        .filter(|n| robustifier_lab::monitor::from_frontend(n, "feb"))
        .count();
    if from_a.is_empty() {
        println!("   !! snmptrapd logged no {trap} about {key} from fea");
    }
    println!("   (and {from_b} {trap} about {key} from feb, which probes be1 too)");
    !from_a.is_empty()
}

/// Prints the merged log's lines about back-end be1 since `since` after the first
/// `printed`, once fe-a's line holding `want` is there (waiting up to 30 s); how many
/// lines there are.
fn show_merged_log(m: &ClusterManager, since: Instant, want: &str, printed: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let secs = (since.elapsed().as_secs() + 2).to_string();
    let lines = loop {
        let lines: Vec<String> = m
            .cli_ok(&["logs", "--since", &secs])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("back-end be1 "))
            .map(str::to_owned)
            .collect();
        let there = lines
            .iter()
            .any(|l| l.split_whitespace().nth(2) == Some("fea") && l.contains(want));
        if there || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    println!(
        "   robustifier cluster logs --since {secs} (the manager and both members still run; be1's lines):"
    );
    for l in lines.iter().skip(printed) {
        println!("       {l}");
    }
    if !lines.iter().any(|l| l.contains(want)) {
        println!("   (no line with {want:?} from fea within 30 s)");
    }
    lines.len()
}

/// Prints the `/metrics` sample of `metric` with `label` once it ends with `value`
/// (waiting up to 30 s); a failure otherwise.
fn show_metric(
    station: &robustifier_lab::monitor::Station,
    at: SocketAddr,
    metric: &str,
    label: &str,
    value: &str,
    failures: &mut Vec<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = station.metrics(at).unwrap_or_default();
        let found = robustifier_lab::monitor::samples(&text, metric, label);
        if let Some(line) = found.iter().find(|l| l.ends_with(value)) {
            println!("   curl -H 'Authorization: Bearer <token>' http://{at}/metrics: {line}");
            return;
        }
        if Instant::now() > deadline {
            println!("   !! /metrics at {at}: {found:?}, not{value}");
            failures.push(format!("{metric}{{{label}}} never{value}"));
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// How many of the `acked` tags are not (yet, after a minute) in bob's Maildir.
fn missing_at_bob(c: &Cluster, acked: &[String]) -> usize {
    let host = c.host_of("bob@example.test");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: Vec<String> = host
            .messages("bob@example.test")
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect();
        let missing = acked
            .iter()
            .filter(|t| {
                !stored
                    .iter()
                    .any(|m| m.contains(&format!("Message-ID: <{t}@")))
            })
            .count();
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client sending to bob every 200 ms, recording what was acknowledged.
struct MailFlow {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(Vec<String>, usize)>,
}

impl MailFlow {
    /// Messages tagged `<name>-<n>`, unique per flow.
    fn start(c: &Cluster, name: &'static str) -> MailFlow {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = c.lab.client.ns.clone();
        let s2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            ns.enter(move || {
                let (mut acked, mut failed) = (Vec::new(), 0);
                let mut n = 0;
                while !s2.load(Ordering::Relaxed) && n < 500 {
                    n += 1;
                    let tag = format!("{name}-{n}");
                    let body = message(&tag, "bob@example.test");
                    let r = client::send_mail(
                        SocketAddr::new(VIP_SMTP.into(), 25),
                        None,
                        "sender@client.example.org",
                        &["bob@example.test"],
                        &body,
                    );
                    match r {
                        Ok(r) if end_of_data(&r).starts_with("250") => acked.push(tag),
                        _ => failed += 1,
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                (acked, failed)
            })
            .unwrap_or_default()
        });
        MailFlow { stop, handle }
    }

    fn stop(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(premium: (usize, usize), regular: (usize, usize)) -> Vec<(String, Vec<String>)> {
        let accepted = || vec!["354 go".to_owned(), "250 2.0.0 queued".to_owned()];
        let deflected = || vec!["451 4.3.2 try again later".to_owned()];
        let mut out = Vec::new();
        for (who, (ok, no)) in [("carol", premium), ("dave", regular)] {
            out.extend((0..ok).map(|_| (who.to_owned(), accepted())));
            out.extend((0..no).map(|_| (who.to_owned(), deflected())));
        }
        out
    }

    #[test]
    fn only_the_shed_greeting_is_sent_again() {
        let shed = "=== Connected to 198.18.0.25.\n<** 421 4.3.2 fea Service temporarily overloaded, try again later\n -> QUIT";
        assert!(is_shed(shed));
        // Refused later in the transaction: the message may have been taken, or is refused.
        assert!(!is_shed(
            "<-  250 ok\n<** 451 4.3.2 try again later\n -> QUIT"
        ));
        assert!(!is_shed("<** 421 4.4.2 fea idle too long"));
    }

    #[test]
    fn each_message_must_arrive_exactly_once() {
        let ids = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let sent = ids(&["a@x", "b@x", "c@x"]);
        assert_eq!(exactly_once(&sent, &ids(&["a@x", "b@x", "c@x"])), None);
        // The same count of deliveries as sent, but one twice and one never.
        let why = exactly_once(&sent, &ids(&["a@x", "a@x", "c@x"])).unwrap();
        assert!(why.contains(r#"missing ["b@x"]"#), "{why}");
        assert!(why.contains(r#"more than once [("a@x", 2)]"#), "{why}");
        let why = exactly_once(&sent, &ids(&["a@x", "b@x", "c@x", "d@x"])).unwrap();
        assert!(why.contains(r#"not sent ["d@x"]"#), "{why}");
        assert_eq!(distinct(&ids(&["a@x", "b@x", "a@x"])), 2);
    }

    #[test]
    fn queue_figures_per_relay_leave_out_relays_without_an_answer() {
        let status = serde_json::json!({"domain": "slow.example", "backends": [
            {"backend": "be1", "agent": "a", "error": null, "domains": [
                {"domain": "slow.example", "queued": 4, "deferred": 3, "oldest_secs": 9, "reason": "451"}]},
            {"backend": "be2", "agent": "a", "error": null, "domains": []},
            {"backend": "be3", "agent": "a", "error": "connect: refused", "domains": []}]});
        let q = slow_queued(&status);
        assert_eq!(q.len(), 2, "{q:?}");
        assert_eq!(
            q["be1"],
            Queued {
                queued: 4,
                deferred: 3
            }
        );
        assert_eq!(q["be2"], Queued::default());
    }

    #[test]
    fn a_move_is_done_only_when_every_source_says_so() {
        let report = |s1: &str, s2: &str| {
            serde_json::json!({"domain": "slow.example", "pool": "slowq", "backends": [
                {"backend": "be1", "agent": "a", "error": null, "status": {"state": s1}},
                {"backend": "be2", "agent": "a", "error": null, "status": {"state": s2}}]})
        };
        let mx = ["be1".to_owned(), "be2".to_owned()];
        assert!(move_done(&report("done", "done"), &mx));
        assert!(!move_done(&report("done", "running"), &mx));
        // Before the front-end's request reaches an agent, it has no move.
        assert!(!move_done(&report("none", "done"), &mx));
        let unanswered = serde_json::json!({"backends": [
            {"backend": "be1", "error": "timed out", "status": null}]});
        assert!(!move_done(&unanswered, &mx[..1]));
    }

    #[test]
    fn only_minutes_with_messages_count() {
        let idle = r#"{"member":"fea","minute":1,"services":{"smtp":{"sessions":2}}}"#;
        let empty = r#"{"member":"fea","minute":2}"#;
        let mail = r#"{"member":"fea","minute":3,"services":{"pop3":{"sessions":1},"smtp":{"sessions":2,"messages":2}}}"#;
        assert_eq!(minutes_with_messages(""), 0);
        assert_eq!(minutes_with_messages(&format!("{idle}\n{empty}\n")), 0);
        assert_eq!(
            minutes_with_messages(&format!("{idle}\n{mail}\n{empty}")),
            1
        );
    }

    #[test]
    fn burst_fails_unless_premium_is_ahead_and_regular_deflected() {
        // What a cluster without a premium wait showed: both groups alike.
        let even = Burst::of(&results((2, 10), (2, 10)));
        assert_eq!((even.premium_delivered, even.regular_deflected), (2, 10));
        assert!(even.failure().unwrap().contains("premium is not ahead"));
        assert!(
            Burst::of(&results((12, 0), (12, 0)))
                .failure()
                .unwrap()
                .contains("not ahead")
        );
        assert!(
            Burst::of(&results((12, 0), (0, 0)))
                .failure()
                .unwrap()
                .contains("451 4.3.2")
        );
        assert_eq!(Burst::of(&results((12, 0), (2, 10))).failure(), None);
    }
}
