//! An outbound relay cluster with real destinations: fast.example accepts, slow.example
//! answers 451 4.7.1. Mail for the slow domain piles up deferred on the relays, and
//! `robustifier queue status` shows it per relay with the destination's reply; once the
//! destination recovers and the relays are flushed, every message arrives exactly once.
//! Postfix relays behind the proxy, then Exim and OpenSMTPD relays. Privileged.

use std::time::Duration;

use robustifier::frontend::queue::QueueStatus;
use robustifier_lab::{
    mail::Make,
    relay_lab::{FAST, RelayLab, SLOW, exactly_once},
};

const WITHIN: Duration = Duration::from_secs(180);

fn status(r: &RelayLab, domain: &str) -> QueueStatus {
    serde_json::from_value(r.queue_status(domain).unwrap()).unwrap()
}

/// slow.example recovers and the relays are flushed: each of `to_slow` arrives there
/// exactly once, the relays' queues empty, and nothing more arrives.
fn recovered_exactly_once(r: &mut RelayLab, to_slow: &[String]) {
    r.slow.recover().unwrap();
    r.flush().unwrap();
    let got = r.slow.wait_for_ids(to_slow.len(), WITHIN).unwrap();
    RelayLab::eventually("the relays' queues empty", WITHIN, || {
        let s = status(r, SLOW);
        Ok(if s.backends.iter().all(|b| b.domains.is_empty()) {
            Ok(())
        } else {
            Err(s)
        })
    })
    .unwrap();
    exactly_once("slow.example", &got, to_slow);
    exactly_once("slow.example", &r.slow.message_ids(), to_slow);
}

#[test]
fn slow_domain_is_deferred_on_the_relays_and_delivered_once_when_it_recovers() {
    let Some(mut r) = RelayLab::privileged("qd", &[Make::Postfix, Make::Postfix]) else {
        return;
    };
    let (fast, slow) = (r.fast.rcpt(), r.slow.rcpt());
    let (mut to_fast, mut to_slow) = (Vec::new(), Vec::new());
    for i in 0..20 {
        if i % 2 == 0 {
            to_fast.extend(r.send(&[&fast], 1).unwrap());
        } else {
            to_slow.extend(r.send(&[&slow], 1).unwrap());
        }
    }
    let both = r.send(&[&fast, &slow], 2).unwrap();
    to_fast.extend(both.iter().cloned());
    to_slow.extend(both.iter().cloned());

    let got = r.fast.wait_for_ids(to_fast.len(), WITHIN).unwrap();
    exactly_once("fast.example", &got, &to_fast);
    assert_eq!(
        r.slow.message_ids(),
        Vec::<String>::new(),
        "slow.example refuses"
    );

    // Every relay of "mx" reports its share, deferred, with the destination's reply.
    let mx: Vec<String> = (0..r.mx).map(|i| r.relay_name(i)).collect();
    let s = RelayLab::eventually(
        "the slow domain's mail deferred on the relays",
        WITHIN,
        || {
            let s = status(&r, SLOW);
            let of_mx = s.backends.iter().filter(|b| mx.contains(&b.backend));
            let deferred: u32 = of_mx
                .clone()
                .flat_map(|b| &b.domains)
                .map(|d| d.deferred.unwrap_or(0))
                .sum();
            let with_reasons = of_mx
                .flat_map(|b| &b.domains)
                .all(|d| d.deferred.is_some_and(|n| n == d.queued) && d.reason.contains("451"));
            Ok(if deferred as usize == to_slow.len() && with_reasons {
                Ok(s)
            } else {
                Err(s)
            })
        },
    )
    .unwrap();
    assert_eq!(s.domain.as_deref(), Some(SLOW));
    for b in &s.backends {
        assert_eq!(
            (b.error.as_deref(), b.mta.as_str()),
            (None, "postfix"),
            "{b:?}"
        );
        for d in &b.domains {
            assert_eq!(d.domain, SLOW, "{b:?}");
            assert!(d.reason.contains("4.7.1"), "the destination's reply: {d:?}");
        }
    }
    let slowq = r.relay_name(r.mx);
    assert!(
        s.backends
            .iter()
            .any(|b| b.backend == slowq && b.domains.is_empty()),
        "{slowq} was not sent anything: {s:#?}"
    );
    // A relay marks a recipient done only after its destination's 250.
    RelayLab::eventually("fast.example's mail gone from the relays", WITHIN, || {
        let s = status(&r, FAST);
        Ok(if s.backends.iter().all(|b| b.domains.is_empty()) {
            Ok(())
        } else {
            Err(s)
        })
    })
    .unwrap();

    recovered_exactly_once(&mut r, &to_slow);
    exactly_once("fast.example", &r.fast.message_ids(), &to_fast);
    r.lab.down().unwrap();
}

#[test]
fn exim_and_opensmtpd_relays_defer_the_slow_domain_and_deliver_it_once_it_recovers() {
    let Some(mut r) = RelayLab::privileged("qx", &[Make::Exim, Make::OpenSmtpd]) else {
        return;
    };
    let (fast, slow) = (r.fast.rcpt(), r.slow.rcpt());
    // Straight to each relay, so that each make gets its share whatever the proxy's choice.
    let (mut to_fast, mut to_slow) = (Vec::new(), Vec::new());
    for i in 0..r.mx {
        to_slow.extend(r.send_via(i, &[&slow], 2).unwrap());
        to_fast.extend(r.send_via(i, &[&fast], 1).unwrap());
    }
    // And through the proxy.
    to_slow.extend(r.send(&[&slow], 2).unwrap());

    let got = r.fast.wait_for_ids(to_fast.len(), WITHIN).unwrap();
    exactly_once("fast.example", &got, &to_fast);

    let s = RelayLab::eventually(
        "the slow domain's mail queued on both relays",
        WITHIN,
        || {
            let s = status(&r, SLOW);
            let queued: u32 = s
                .backends
                .iter()
                .flat_map(|b| &b.domains)
                .map(|d| d.queued)
                .sum();
            // OpenSMTPD says why it deferred; Exim's listing does not say whether.
            let opensmtpd_deferred = s.backends.iter().any(|b| {
                b.mta == "opensmtpd"
                    && b.domains
                        .iter()
                        .any(|d| d.deferred.is_some_and(|n| n > 0) && d.reason.contains("451"))
            });
            let exim_queued = s
                .backends
                .iter()
                .any(|b| b.mta == "exim" && b.domains.iter().any(|d| d.queued >= 2));
            Ok(
                if queued as usize == to_slow.len() && opensmtpd_deferred && exim_queued {
                    Ok(s)
                } else {
                    Err(s)
                },
            )
        },
    )
    .unwrap();
    let exim = s.backends.iter().find(|b| b.mta == "exim").unwrap();
    assert_eq!(
        (exim.domains[0].deferred, exim.domains[0].reason.as_str()),
        (None, ""),
        "Exim's listing says neither whether nor why: {exim:?}"
    );
    // Exim did try, and was told 451.
    RelayLab::eventually("Exim's log of the 451", WITHIN, || {
        let log = r.relays[0].mta_log_text();
        Ok(if log.contains("451 4.7.1") {
            Ok(())
        } else {
            Err(log)
        })
    })
    .unwrap();
    assert_eq!(
        r.slow.message_ids(),
        Vec::<String>::new(),
        "slow.example refuses"
    );

    recovered_exactly_once(&mut r, &to_slow);
    r.lab.down().unwrap();
}
