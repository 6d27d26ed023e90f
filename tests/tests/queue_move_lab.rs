//! Moving a slow domain's queued mail through the front-end, on the relay lab
//! (`robustifier_lab::relay_lab`): slow.example answers 451 until recovered, so its mail
//! piles up deferred on the "mx" relays; the front-end hands it to pool "slowq" when a
//! reload adds a `[[domain_queue]]` for it, when the operator says `queue move`, and when
//! automatic isolation finds too much of it on a relay. Each time no slow.example
//! recipient stays on the mx relays, new slow.example mail goes to slowq, and once the
//! destination recovers every message arrives exactly once (by Message-ID). Privileged.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use robustifier::{
    agent::moves::{exim, opensmtpd, postfix, queued::Queued},
    agent_wire::MoveState,
    events::{Event, Kind},
    frontend::queue_move::MoveReport,
};
use robustifier_lab::{
    mail::Make,
    relay_lab::{RelayLab, SLOW, exactly_once},
};

const WITHIN: Duration = Duration::from_secs(240);

fn alarms(r: &RelayLab) -> robustifier::events::Report {
    serde_json::from_value(r.alarms().unwrap()).unwrap()
}

fn moves(v: serde_json::Value) -> MoveReport {
    serde_json::from_value(v).unwrap()
}

/// Relay `i`'s messages as its MTA lists them, each with its undelivered recipients (read
/// by the agent's own parsers, which are checked against captured listings).
fn queued(r: &RelayLab, i: usize) -> Vec<Queued> {
    let text = r.queue_listing(i).unwrap();
    match r.relays[i].make {
        Make::Postfix => postfix::parse_list(&text),
        Make::Exim => exim::parse_list(&text).unwrap(),
        Make::OpenSmtpd => opensmtpd::parse_list(&text).unwrap(),
    }
}

/// Messages by id, each with some of its recipients.
type ByMessage = Vec<(String, Vec<String>)>;

/// Relay `i`'s undelivered recipients in `domain`, by message id.
fn queued_in(r: &RelayLab, i: usize, domain: &str) -> ByMessage {
    let at = format!("@{domain}");
    queued(r, i)
        .into_iter()
        .filter_map(|m| {
            let rcpts: Vec<String> = m
                .recipients
                .into_iter()
                .map(|r| r.address)
                .filter(|a| a.to_ascii_lowercase().ends_with(&at))
                .collect();
            (!rcpts.is_empty()).then_some((m.id, rcpts))
        })
        .collect()
}

/// The front-end's events seen so far, by sequence number: `alarms --json` carries only
/// the recent ones, so each look adds to what earlier looks saw.
#[derive(Default)]
struct Seen(BTreeMap<u64, Event>);

impl Seen {
    fn look(&mut self, r: &RelayLab) -> &Self {
        for e in alarms(r).events {
            self.0.insert(e.seq, e);
        }
        self
    }

    fn kinds(&self) -> impl Iterator<Item = &Kind> {
        self.0.values().map(|e| &e.kind)
    }

    /// Waits for an event `want` picks.
    fn wait(&mut self, r: &RelayLab, what: &str, want: impl Fn(&Kind) -> bool) -> Kind {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(k) = self.look(r).kinds().find(|k| want(k)) {
                return k.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event: {:#?}",
                self.0.values().map(|e| &e.message).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The proxy's record of the message `message_id`.
    fn relayed(&mut self, r: &RelayLab, message_id: &str) -> robustifier::events::Relayed {
        let want = |k: &Kind| matches!(k, Kind::MessageRelayed(m) if m.message_id.as_deref().is_some_and(|id| id.trim_matches(['<', '>']) == message_id));
        match self.wait(r, &format!("message_relayed {message_id}"), want) {
            Kind::MessageRelayed(m) => *m,
            _ => unreachable!(),
        }
    }
}

/// Polls `queue moves --domain <domain>` until every source back-end is done; the report.
fn wait_moved(r: &RelayLab, domain: &str) -> MoveReport {
    RelayLab::eventually("every source of the move done", WITHIN, || {
        let m = moves(r.queue_moves(domain)?);
        let done = !m.backends.is_empty()
            && m.backends.iter().all(|b| {
                b.status
                    .as_ref()
                    .is_some_and(|s| s.state == MoveState::Done)
            });
        Ok(if done { Ok(m) } else { Err(m) })
    })
    .unwrap()
}

/// Every source back-end of `report` answered, is done, refused nothing and moved `n`
/// recipients in all.
fn check_report(report: &MoveReport, n: u32) {
    let mut moved = 0;
    for b in &report.backends {
        assert_eq!(b.error, None, "{report:#?}");
        let s = b.status.as_ref().unwrap();
        assert_eq!(s.state, MoveState::Done, "{report:#?}");
        assert!(
            s.refused.is_empty() && s.last_error.is_none(),
            "{report:#?}"
        );
        moved += s.recipients_moved;
    }
    assert_eq!(moved, n, "recipients moved: {report:#?}");
}

/// The mx relays' undelivered slow.example recipients (none once the mail moved).
fn slow_on_mx(r: &RelayLab) -> Vec<(usize, ByMessage)> {
    (0..r.mx)
        .map(|i| (i, queued_in(r, i, SLOW)))
        .filter(|(_, q)| !q.is_empty())
        .collect()
}

/// slow.example recipients queued on the slowq relay.
fn slow_on_slowq(r: &RelayLab) -> usize {
    queued_in(r, r.mx, SLOW)
        .iter()
        .map(|(_, rcpts)| rcpts.len())
        .sum()
}

/// Waits until the mx relays hold `n` slow.example messages, each deferred (tried and
/// told 451) on a Postfix relay. The listings of Exim and OpenSMTPD are not waited for
/// that: Exim's does not say, and OpenSMTPD tries a new envelope on a route that
/// tempfailed only when the route's delay ends.
fn wait_piled_up(r: &RelayLab, n: usize) {
    let mx: Vec<String> = (0..r.mx).map(|i| r.relay_name(i)).collect();
    RelayLab::eventually(
        "the slow domain's mail deferred on the mx relays",
        WITHIN,
        || {
            let s: robustifier::frontend::queue::QueueStatus =
                serde_json::from_value(r.queue_status(SLOW)?)?;
            let on_mx = s.backends.iter().filter(|b| mx.contains(&b.backend));
            let queued: u32 = on_mx
                .clone()
                .flat_map(|b| &b.domains)
                .map(|d| d.queued)
                .sum();
            let settled = on_mx
                .filter(|b| b.mta == "postfix")
                .flat_map(|b| &b.domains)
                .all(|d| d.deferred == Some(d.queued) && d.reason.contains("451"));
            Ok(if queued as usize == n && settled {
                Ok(())
            } else {
                Err(s)
            })
        },
    )
    .unwrap();
}

/// The relays' queues hold nothing for slow.example any more.
fn wait_relays_empty(r: &RelayLab) {
    RelayLab::eventually("no slow.example mail on any relay", WITHIN, || {
        let left: Vec<_> = (0..r.relays.len()).map(|i| queued_in(r, i, SLOW)).collect();
        Ok(if left.iter().all(Vec::is_empty) {
            Ok(())
        } else {
            Err(left)
        })
    })
    .unwrap();
}

#[test]
fn a_reload_that_adds_a_domain_queue_moves_the_deferred_mail_of_postfix_relays() {
    let Some(mut r) = RelayLab::privileged("qml", &[Make::Postfix, Make::Postfix]) else {
        return;
    };
    let (fast, slow) = (r.fast.rcpt(), r.slow.rcpt());
    let mut to_slow = r.send(&[&slow], 10).unwrap();
    let mut to_fast = r.send(&[&fast], 4).unwrap();
    let mixed = r.send(&[&fast, &slow], 2).unwrap();
    to_slow.extend(mixed.iter().cloned());
    to_fast.extend(mixed.iter().cloned());
    let got = r.fast.wait_for_ids(to_fast.len(), WITHIN).unwrap();
    exactly_once("fast.example", &got, &to_fast);
    wait_piled_up(&r, to_slow.len());
    assert_eq!(slow_on_slowq(&r), 0, "nothing was sent to slowq yet");

    let mut seen = Seen::default();
    seen.look(&r);
    let out = r
        .reload("[[domain_queue]]\ndomains = [\"slow.example\"]\npool = \"slowq\"\n")
        .unwrap();
    assert!(out.contains("applied"), "{out}");
    // The front-end starts the move by itself, and follows it to its end.
    let started = seen.wait(&r, "queue_move_started", |k| {
        matches!(k, Kind::QueueMoveStarted { .. })
    });
    assert_eq!(
        started,
        Kind::QueueMoveStarted {
            domain: SLOW.into(),
            pool: "slowq".into(),
            by: "reload".into(),
        }
    );
    let report = wait_moved(&r, SLOW);
    assert_eq!(report.pool, "slowq");
    let names: Vec<&str> = report.backends.iter().map(|b| b.backend.as_str()).collect();
    assert_eq!(
        names,
        ["be1", "be2"],
        "the mx relays, not slowq's: {report:#?}"
    );
    check_report(&report, to_slow.len() as u32);
    let finished = seen.wait(&r, "queue_move_finished", |k| {
        matches!(k, Kind::QueueMoveFinished { .. })
    });
    assert_eq!(
        finished,
        Kind::QueueMoveFinished {
            domain: SLOW.into(),
            pool: "slowq".into(),
            moved: to_slow.len() as u32,
            recipients_moved: to_slow.len() as u32,
            refused: 0,
            failed: Vec::new(),
        }
    );

    assert_eq!(
        slow_on_mx(&r),
        Vec::new(),
        "slow.example left on the mx relays"
    );
    assert_eq!(
        slow_on_slowq(&r),
        to_slow.len(),
        "every one queued at slowq"
    );
    // The mixed messages' fast.example recipients were not sent again by the move.
    exactly_once("fast.example", &r.fast.message_ids(), &to_fast);

    // New mail for slow.example goes to slowq now; the mx relays get none of it.
    let later = r.send(&[&slow], 3).unwrap();
    for id in &later {
        let m = seen.relayed(&r, id);
        assert_eq!(m.pool, "slowq", "{m:?}");
    }
    to_slow.extend(later);
    RelayLab::eventually("the new mail queued at slowq", WITHIN, || {
        let n = slow_on_slowq(&r);
        Ok(if n == to_slow.len() { Ok(()) } else { Err(n) })
    })
    .unwrap();
    assert_eq!(slow_on_mx(&r), Vec::new());

    r.slow.recover().unwrap();
    r.flush().unwrap();
    let got = r.slow.wait_for_ids(to_slow.len(), WITHIN).unwrap();
    wait_relays_empty(&r);
    exactly_once("slow.example", &got, &to_slow);
    exactly_once("slow.example", &r.slow.message_ids(), &to_slow);
    exactly_once("fast.example", &r.fast.message_ids(), &to_fast);
    r.lab.down().unwrap();
}

#[test]
fn queue_move_empties_exim_and_opensmtpd_relays() {
    let Some(mut r) = RelayLab::privileged("qmx", &[Make::Exim, Make::OpenSmtpd]) else {
        return;
    };
    let (fast, slow) = (r.fast.rcpt(), r.slow.rcpt());
    // Straight to each relay, so that each make gets its share whatever the proxy's choice,
    // and through the proxy.
    let (mut to_fast, mut to_slow) = (Vec::new(), Vec::new());
    for i in 0..r.mx {
        to_slow.extend(r.send_via(i, &[&slow], 3).unwrap());
        to_fast.extend(r.send_via(i, &[&fast], 1).unwrap());
        let mixed = r.send_via(i, &[&fast, &slow], 1).unwrap();
        to_slow.extend(mixed.iter().cloned());
        to_fast.extend(mixed);
    }
    to_slow.extend(r.send(&[&slow], 2).unwrap());
    let got = r.fast.wait_for_ids(to_fast.len(), WITHIN).unwrap();
    exactly_once("fast.example", &got, &to_fast);
    wait_piled_up(&r, to_slow.len());
    // Exim cannot hold a message while delivering it: each tried once, and told 451.
    let exim_share = (0..r.mx)
        .filter(|i| r.relays[*i].make == Make::Exim)
        .map(|i| queued_in(&r, i, SLOW).len())
        .sum::<usize>();
    RelayLab::eventually("Exim's 451 for each of its messages", WITHIN, || {
        let log = r.relays[0].mta_log_text();
        let n = log.matches("451 4.7.1").count();
        Ok(if n >= exim_share { Ok(()) } else { Err(n) })
    })
    .unwrap();

    // The explicit command: no [[domain_queue]] is configured.
    let report = moves(r.queue_move(SLOW, "slowq", 180).unwrap());
    assert_eq!(
        (report.domain.as_str(), report.pool.as_str()),
        (SLOW, "slowq")
    );
    let names: Vec<&str> = report.backends.iter().map(|b| b.backend.as_str()).collect();
    assert_eq!(names, ["be1", "be2"], "{report:#?}");
    check_report(&report, to_slow.len() as u32);
    assert_eq!(
        slow_on_mx(&r),
        Vec::new(),
        "slow.example left on the mx relays"
    );
    assert_eq!(
        slow_on_slowq(&r),
        to_slow.len(),
        "every one queued at slowq"
    );
    exactly_once("fast.example", &r.fast.message_ids(), &to_fast);

    r.slow.recover().unwrap();
    r.flush().unwrap();
    let got = r.slow.wait_for_ids(to_slow.len(), WITHIN).unwrap();
    wait_relays_empty(&r);
    exactly_once("slow.example", &got, &to_slow);
    exactly_once("slow.example", &r.slow.message_ids(), &to_slow);
    exactly_once("fast.example", &r.fast.message_ids(), &to_fast);
    r.lab.down().unwrap();
}

/// The isolation's block: at 3 deferred messages on an mx relay slow.example goes to slowq,
/// and returns once under that for `recover_secs`. The relays are asked every second.
///
/// `recover_secs` is the time between the mx relays' queues emptying (the isolation's move)
/// and the end of the isolation; the test sends its mail during the isolation right after
/// seeing the alarm, so it is long enough for that send on a loaded machine.
const AUTO: &str = "[[domain_queue]]\ndomains = [\"slow.example\"]\npool = \"slowq\"\n\
    auto = true\ndeferred_alarm = 3\nrecover_secs = 15\nisolation_interval_secs = 1\n";

const ALARM: &str = "domain_isolated:slow.example";

#[test]
fn automatic_isolation_moves_a_slow_domain_and_returns_it() {
    let Some(mut r) = RelayLab::privileged("qmi", &[Make::Postfix, Make::Postfix]) else {
        return;
    };
    let slow = r.slow.rcpt();
    let mut seen = Seen::default();
    // Mail piles up first, before the block exists (an isolation found while the messages
    // are still being sent would route the last of them to slowq already).
    let mut to_slow = r.send(&[&slow], 8).unwrap();
    for id in &to_slow {
        let m = seen.relayed(&r, id);
        assert_eq!(m.pool, "mx", "{m:?}");
    }
    wait_piled_up(&r, to_slow.len());
    // An auto block is not moved by the reload that adds it; its isolation moves. 8 on
    // two relays: one holds 3 at least, and the alarm is raised.
    r.reload(AUTO).unwrap();
    RelayLab::eventually("the domain_isolated alarm", WITHIN, || {
        let report = alarms(&r);
        Ok(if report.alarms.iter().any(|a| a.key == ALARM) {
            Ok(())
        } else {
            Err(report.alarms)
        })
    })
    .unwrap();
    // New mail goes to slowq while isolated.
    let during = r.send(&[&slow], 2).unwrap();
    for id in &during {
        let m = seen.relayed(&r, id);
        assert_eq!(m.pool, "slowq", "{m:?}");
        assert!(m.route_reason.contains("(isolated)"), "{m:?}");
    }
    to_slow.extend(during);
    let raised = seen.wait(&r, "domain_isolated raised", |k| {
        matches!(k, Kind::DomainIsolated { isolated: true, .. })
    });
    let Kind::DomainIsolated { pool, reason, .. } = raised else {
        unreachable!()
    };
    assert_eq!(pool, "slowq");
    assert!(
        reason.contains("deferred message(s) for slow.example"),
        "{reason}"
    );
    // The isolation moves what the mx relays hold (the reload adding the block did not).
    seen.wait(
        &r,
        "queue_move_started by isolation",
        |k| matches!(k, Kind::QueueMoveStarted { by, .. } if by == "isolation"),
    );
    assert!(
        !seen
            .kinds()
            .any(|k| matches!(k, Kind::QueueMoveStarted { by, .. } if by == "reload")),
        "an auto block's reload moves nothing"
    );
    let report = wait_moved(&r, SLOW);
    check_report(&report, 8);
    assert_eq!(
        slow_on_mx(&r),
        Vec::new(),
        "slow.example left on the mx relays"
    );
    RelayLab::eventually("all the slow mail queued at slowq", WITHIN, || {
        let n = slow_on_slowq(&r);
        Ok(if n == to_slow.len() { Ok(()) } else { Err(n) })
    })
    .unwrap();

    // The destination recovers; slowq delivers.
    r.slow.recover().unwrap();
    r.flush().unwrap();
    let got = r.slow.wait_for_ids(to_slow.len(), WITHIN).unwrap();
    exactly_once("slow.example", &got, &to_slow);
    // Under the threshold for recover_secs: the alarm clears, slow.example goes to mx.
    seen.wait(&r, "domain_isolated cleared", |k| {
        matches!(
            k,
            Kind::DomainIsolated {
                isolated: false,
                ..
            }
        )
    });
    let report = alarms(&r);
    assert!(
        !report.alarms.iter().any(|a| a.key == ALARM),
        "{:#?}",
        report.alarms
    );
    let after = r.send(&[&slow], 2).unwrap();
    for id in &after {
        let m = seen.relayed(&r, id);
        assert_eq!(m.pool, "mx", "{m:?}");
    }
    to_slow.extend(after);
    let got = r.slow.wait_for_ids(to_slow.len(), WITHIN).unwrap();
    wait_relays_empty(&r);
    exactly_once("slow.example", &got, &to_slow);
    exactly_once("slow.example", &r.slow.message_ids(), &to_slow);
    r.lab.down().unwrap();
}
