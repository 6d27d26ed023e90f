//! `robustifier queue status` against real MTAs in the lab: mail for a domain the
//! back-ends cannot deliver piles up in their queues, and the front-end shows it per
//! domain and back-end with the MTA's reason, asking each back-end's agent with the key;
//! a back-end whose agent does not answer is listed with its error. Privileged.

use std::time::{Duration, Instant};

use robustifier::frontend::queue::QueueStatus;
use robustifier_lab::{
    Lab, Plan, cli,
    frontend_config::{Backend, FrontendConfig, Pool, Service},
    mail::{MailHost, Make, Users, clients, postfix},
    relay_lab,
    topology::{VIP_SMTP, internal_v4},
    vrrp,
};

/// Relayed by every host to a port where nothing listens: deferred ("Connection refused").
const NOWHERE: &str = "nowhere.invalid";
/// Not relayed, and nothing resolves in the lab: Postfix defers mail for it ("Host or
/// domain name not found ... try again").
const OTHER: &str = "other.invalid";

fn backend(j: usize) -> Backend {
    let at = internal_v4(11 + j as u8);
    Backend::new(&format!("be{}", j + 1), format!("{at}:25")).agent(format!("{at}:7025"))
}

fn start_frontend(lab: &mut Lab, n: usize) {
    let key = robustifier_lab::agent_key_file(&lab.log_dir);
    let cfg = FrontendConfig::new("fea", &lab.pin_dir(0))
        .service(
            Service::new("smtp", "smtp", 25)
                .vips(&[VIP_SMTP.into()])
                .line("pool = \"mx\""),
        )
        .pool(
            Pool::new("mx", "none")
                .line(&format!("agent_key_file = \"{}\"", key.display()))
                .backends((0..n).map(backend))
                .health("interval_ms = 500\ntimeout_ms = 3000\nagent_interval_ms = 500"),
        )
        .toml(&format!(
            "[ha]\ncontrol_socket = \"{}\"",
            vrrp::control_socket(lab, 0).display()
        ))
        .build();
    lab.start_frontend(0, &cfg).unwrap();
}

fn queue_status(lab: &Lab, domain: &str) -> QueueStatus {
    let socket = vrrp::control_socket(lab, 0);
    let text = cli::ok([
        "queue",
        "status",
        "--domain",
        domain,
        "--json",
        "--socket",
        socket.to_str().unwrap(),
    ]);
    serde_json::from_str(&text).unwrap()
}

/// Submits a message from alice to `to` on `host`: on the submission port with AUTH where
/// the make has one, else on port 25; from the front-end's namespace (the lab's trusted
/// client).
fn submit(lab: &Lab, host: &MailHost, to: &str) {
    let mut args: Vec<String> = match host.submission_addr() {
        Some(a) => [
            "--server",
            &a.to_string(),
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-pw",
        ]
        .map(str::to_owned)
        .to_vec(),
        None => vec!["--server".into(), host.smtp_addr().to_string()],
    };
    args.extend(["--from", "alice@example.test", "--to", to].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = clients::swaks(&lab.frontend(0).ns, "fea.robustifier.test", &args);
    assert!(out.status.success(), "{}", clients::text(&out));
}

/// The raw listing of `host`'s MTA, as its agent reads it, kept with the lab's logs (the
/// parsers' fixtures were taken this way).
fn keep_listing(lab: &Lab, i: usize, host: &MailHost) {
    let bin_dir = lab.log_dir.join(format!("agent-bin-{i}"));
    let conf = postfix::config_dir(&host.layout).display().to_string();
    let (cmd, args): (String, Vec<&str>) = match host.make {
        Make::Postfix => ("postqueue".into(), vec!["-c", &conf, "-j"]),
        Make::Exim => (bin_dir.join("exim").display().to_string(), vec!["-bp"]),
        Make::OpenSmtpd => (
            bin_dir.join("smtpctl").display().to_string(),
            vec!["show", "queue"],
        ),
    };
    let out = host.layout.ns.command(&cmd).args(&args).output().unwrap();
    std::fs::write(
        lab.log_dir.join(format!("listing-{:?}.txt", host.make)),
        &out.stdout,
    )
    .unwrap();
}

#[test]
fn deferred_mail_shows_per_domain_and_backend_with_the_mta_reason() {
    let Some(mut lab) = robustifier_lab::privileged_lab("qs", Plan::new(1, 4)) else {
        return;
    };
    let makes = [Make::Postfix, Make::Exim, Make::OpenSmtpd];
    let mut hosts = Vec::new();
    for (i, make) in makes.into_iter().enumerate() {
        // Relayed to this host's own address, on a port where nothing listens.
        let dead_end = std::net::SocketAddr::new(internal_v4(11 + i as u8).into(), 2525);
        let users = Users::new()
            .with("alice@example.test", "alice-pw")
            .relaying(NOWHERE, dead_end);
        let host = MailHost::start(&mut lab, i, make, &users).unwrap();
        relay_lab::start_agent(&mut lab, i, &host).unwrap();
        hosts.push(host);
    }
    // be4 is configured with an agent, but none runs there.
    start_frontend(&mut lab, 4);

    // On each host two messages for the undeliverable domain, one of them also to a
    // second recipient: on Postfix in another undeliverable domain, on the others a local
    // mailbox (delivered at once, so only its undelivered recipient keeps it queued).
    for host in &hosts {
        submit(&lab, host, &format!("a@{NOWHERE}"));
        let second = match host.make {
            Make::Postfix => format!("c@{OTHER}"),
            _ => "alice@example.test".to_owned(),
        };
        submit(&lab, host, &format!("b@{NOWHERE},{second}"));
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let settled = |s: &QueueStatus| {
        ["be1", "be2", "be3"].iter().all(|name| {
            s.backends.iter().any(|b| {
                b.backend == *name
                    && b.domains.first().is_some_and(|d| {
                        d.queued == 2
                            && d.deferred.is_none_or(|n| n == 2)
                            && (d.deferred.is_none() || !d.reason.is_empty())
                    })
            })
        })
    };
    let status = loop {
        let s = queue_status(&lab, NOWHERE);
        if settled(&s) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "never two deferred messages for {NOWHERE} on each host: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for (i, host) in hosts.iter().enumerate() {
        keep_listing(&lab, i, host);
    }

    assert_eq!(status.domain.as_deref(), Some(NOWHERE));
    let of = |name: &str| status.backends.iter().find(|b| b.backend == name).unwrap();
    for (name, mta) in [("be1", "postfix"), ("be2", "exim"), ("be3", "opensmtpd")] {
        let b = of(name);
        assert_eq!((b.error.as_deref(), b.mta.as_str()), (None, mta), "{b:?}");
        assert_eq!(b.domains.len(), 1, "only the domain asked for: {b:?}");
        assert_eq!(b.domains[0].domain, NOWHERE);
    }
    // Postfix: the relay's dead end.
    let postfix_reason = &of("be1").domains[0].reason;
    assert!(postfix_reason.contains(":2525"), "{postfix_reason:?}");
    // Exim's listing does not say whether nor why a message was deferred.
    assert_eq!(of("be2").domains[0].deferred, None);
    assert_eq!(of("be2").domains[0].reason, "");
    // OpenSMTPD: the relay's dead end.
    assert_eq!(of("be3").domains[0].deferred, Some(2));
    assert!(!of("be3").domains[0].reason.is_empty());
    assert!(
        of("be4")
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("connect")),
        "be4's silent agent is listed with its error: {:?}",
        of("be4")
    );

    // All domains, as the operator reads them: the most deferred first, be4 named last.
    let socket = vrrp::control_socket(&lab, 0);
    let table = cli::ok(["queue", "status", "--socket", socket.to_str().unwrap()]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[1].starts_with(NOWHERE), "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(OTHER) && l.contains("be1")),
        "{table}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("example.test")),
        "delivered recipients are not queued: {table}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("be4") && l.contains("error: connect")),
        "{table}"
    );
}
