//! Drain-aware handoff: `robustifier ha release VRID` on the master stops
//! new sessions on the address (they get the shed reply), lets the running ones finish (up
//! to the drain deadline, then ends them), and only then advertises priority 0 so the backup
//! takes over after Skew_Time; `ha resume` lets the front-end preempt again. Privileged.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

use robustifier_lab::{
    Lab, Plan,
    cli::ha,
    client,
    mail::clients::text,
    topology::VIP_SMTP,
    vrrp::{Vr, eventually, frontend_config, owns, start_pair},
};

const FEA: usize = 0;
const FEB: usize = 1;
const GENEROUS: Duration = Duration::from_secs(20);

fn smtp() -> SocketAddr {
    SocketAddr::new(VIP_SMTP.into(), 25)
}

fn greeting(lab: &Lab) -> String {
    client::greeting(&lab.client.ns, smtp())
}

#[test]
fn release_drains_then_hands_over_and_resume_takes_back() {
    let Some(mut lab) = robustifier_lab::privileged_lab("har", Plan::new(2, 0)) else {
        return;
    };
    let cfg_a = frontend_config(
        &lab,
        FEA,
        &[Vr::new(51, 150, VIP_SMTP, 20)],
        "drain_deadline_s = 3",
    );
    let cfg_b = frontend_config(&lab, FEB, &[Vr::new(51, 120, VIP_SMTP, 20)], "");
    let (a, b) = start_pair(&mut lab, &cfg_a, &cfg_b).unwrap();
    eventually("fea owns the SMTP VIP", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    assert_eq!(greeting(&lab), "220 fea ESMTP Robustifier");

    // 1. A session that finishes during the drain: the handoff waits for it, no longer.
    let client_ns = lab.client.ns.clone();
    std::thread::scope(|s| {
        let session = s.spawn(|| {
            client_ns
                .enter(|| {
                    let stream = client::connect(smtp(), None, Duration::from_secs(2)).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut w = stream;
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    assert!(line.starts_with("220 fea"), "{line}");
                    // Held open across the start of the release.
                    std::thread::sleep(Duration::from_millis(1200));
                    w.write_all(b"NOOP\r\n").unwrap();
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    assert!(
                        line.starts_with("250"),
                        "the running session is served during the drain: {line}"
                    );
                    w.write_all(b"QUIT\r\n").unwrap();
                })
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        let release = s.spawn(|| ha(&lab, FEA, &["release", "51"]));
        std::thread::sleep(Duration::from_millis(400));
        // Draining: new sessions on the address get the temporary failure, and the address
        // has not moved yet.
        let during = greeting(&lab);
        assert!(during.starts_with("421 4.3.2 fea "), "{during}");
        assert!(owns(&a, "pub0", VIP_SMTP.into()) && !owns(&b, "pub0", VIP_SMTP.into()));
        session.join().unwrap();
        let out = release.join().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("every session finished") && text(&out).contains("priority 0 sent"),
            "{}",
            text(&out)
        );
        // "every session finished" says the drain ended with the session, not at the
        // deadline; no wall-clock bound, so a loaded CI machine cannot fail it.
    });
    let took = eventually("feb takes over after the release", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP.into()) && !owns(&a, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    println!("release -> feb owns the address: {took:?} after the release returned");
    eventually("the address answers from feb", GENEROUS, || {
        greeting(&lab) == "220 feb ESMTP Robustifier"
    })
    .unwrap();
    let st = text(&ha(&lab, FEA, &["status"]));
    assert!(
        st.contains("Backup rel") && st.contains("   1/150 "),
        "{st}"
    );
    // Released means no preemption, however long we wait.
    std::thread::sleep(Duration::from_secs(1));
    assert!(owns(&b, "pub0", VIP_SMTP.into()));

    // 2. Resume: fea preempts again.
    let out = ha(&lab, FEA, &["resume", "51"]);
    assert!(
        out.status.success() && text(&out).contains("resumed at priority 150"),
        "{}",
        text(&out)
    );
    eventually("fea preempts after resume", GENEROUS, || {
        owns(&a, "pub0", VIP_SMTP.into()) && !owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();
    eventually("the address answers from fea", GENEROUS, || {
        greeting(&lab) == "220 fea ESMTP Robustifier"
    })
    .unwrap();

    // 3. A session that outlives the drain deadline is ended, then the address moves.
    let stream = lab
        .client
        .ns
        .enter(|| client::connect(smtp(), None, Duration::from_secs(2)).unwrap())
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 fea"), "{line}");
    let started = Instant::now();
    let out = ha(&lab, FEA, &["release", "51"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 sessions told to end at the drain deadline"),
        "{}",
        text(&out)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    // Ended politely: SMTP's 421 at a transaction boundary, then the close.
    line.clear();
    reader.read_line(&mut line).unwrap_or(0);
    assert!(
        line.starts_with("421 4.3.2 fea "),
        "the session was ended politely: {line}"
    );
    line.clear();
    let n = reader.read_line(&mut line).unwrap_or(0);
    assert_eq!(n, 0, "and closed: {line}");
    eventually("feb takes over after the second release", GENEROUS, || {
        owns(&b, "pub0", VIP_SMTP.into())
    })
    .unwrap();

    // Errors name the problem.
    let out = ha(&lab, FEA, &["release", "99"]);
    assert!(
        !out.status.success() && text(&out).contains("no virtual router with VRID 99"),
        "{}",
        text(&out)
    );
}
