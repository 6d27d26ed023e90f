//! The front-end's state as Prometheus metrics (text exposition), built at each scrape
//! from what the front-end holds: the board's records, the virtual routers, the alarms
//! and event counts, and the kernel side's XDP counters.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

use robustifier_common::{BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP};

use super::{Frontend, load_writer};
use crate::ha::Ha;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    frontend: String,
    version: String,
    release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    pool: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouterLabels {
    vrid: u8,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabels {
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: String,
}

type Gauges<L> = Family<L, Gauge>;

fn gauges<L>(reg: &mut Registry, name: &str, help: &str) -> Gauges<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Gauges::<L>::default();
    reg.register(name, help, f.clone());
    f
}

/// The metrics in Prometheus's text format (`text/plain; version=0.0.4`).
pub fn render(fe: &Frontend, ha: &Ha) -> String {
    let mut reg = Registry::with_prefix("robustifier");
    // A gauge of 1 with the facts as labels: Prometheus's text format has no info type.
    let info = gauges::<InfoLabels>(
        &mut reg,
        "frontend_info",
        "The front-end, its configuration version and release",
    );
    info.get_or_create(&InfoLabels {
        frontend: fe.cfg.frontend.name.clone(),
        version: fe.cfg.version.clone(),
        release: env!("CARGO_PKG_VERSION").to_owned(),
    })
    .set(1);
    let ready = Gauge::<i64>::default();
    ready.set(i64::from(fe.shared.hooks.tasks.ready()));
    reg.register(
        "ready",
        "1 when every supervised background task runs",
        ready,
    );

    let up = gauges::<BackendLabels>(&mut reg, "backend_up", "1 up, 0 down");
    let draining = gauges::<BackendLabels>(
        &mut reg,
        "backend_draining",
        "1 while draining (agent, operator or removed by a reload)",
    );
    let overloaded = gauges::<BackendLabels>(
        &mut reg,
        "backend_overloaded",
        "1 while over a threshold (no new sessions)",
    );
    let active = gauges::<BackendLabels>(
        &mut reg,
        "backend_active_sessions",
        "Sessions this front-end has open to the back-end",
    );
    let weight = gauges::<BackendLabels>(&mut reg, "backend_weight", "Weight in force");
    let response = Family::<BackendLabels, Gauge<f64, AtomicU64>>::default();
    reg.register(
        "backend_response_seconds",
        "Response time (moving average of probes and sessions)",
        response.clone(),
    );
    let mail_queue = gauges::<BackendLabels>(
        &mut reg,
        "backend_mail_queue",
        "Messages in the back-end's queue (its agent's report)",
    );
    let now = load_writer::monotonic_ns();
    for slot in fe.board.slots().iter() {
        let Some(r) = fe.board.record_for(slot.id, now) else {
            continue;
        };
        let l = BackendLabels {
            pool: slot.pool_name.clone(),
            backend: slot.name.clone(),
        };
        up.get_or_create(&l).set(i64::from(
            r.state == BACKEND_UP || r.state == BACKEND_DRAINING,
        ));
        draining
            .get_or_create(&l)
            .set(i64::from(r.state == BACKEND_DRAINING));
        overloaded.get_or_create(&l).set(i64::from(
            slot.overloaded.load(std::sync::atomic::Ordering::Relaxed) && r.state != BACKEND_DOWN,
        ));
        active.get_or_create(&l).set(i64::from(r.active_sessions));
        weight.get_or_create(&l).set(i64::from(r.weight));
        response
            .get_or_create(&l)
            .set(f64::from(r.response_us) / 1e6);
        mail_queue.get_or_create(&l).set(i64::from(r.mail_queue));
    }

    let master = gauges::<RouterLabels>(&mut reg, "vrrp_master", "1 while master");
    let priority = gauges::<RouterLabels>(&mut reg, "vrrp_priority", "Priority in effect");
    for r in ha.status() {
        let l = RouterLabels {
            vrid: r.vrid,
            family: r.family.clone(),
        };
        master
            .get_or_create(&l)
            .set(i64::from(r.state.eq_ignore_ascii_case("master")));
        priority.get_or_create(&l).set(i64::from(r.priority));
    }

    let events = &fe.shared.hooks.events;
    let alarms = gauges::<SeverityLabels>(&mut reg, "alarms_active", "Active alarms");
    for a in events.alarms() {
        alarms
            .get_or_create(&SeverityLabels {
                severity: a.severity.to_string(),
            })
            .inc();
    }
    let counted = Family::<KindLabels, Counter>::default();
    reg.register("events", "Events by kind", counted.clone());
    for (kind, n) in events.counts() {
        counted
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }

    let snmp = Family::<OutcomeLabels, Counter>::default();
    reg.register(
        "snmp_notifications_lost",
        "Alarm notifications that did not reach an SNMP manager",
        snmp.clone(),
    );
    for (outcome, n) in [
        ("dropped", &fe.snmp_stats.dropped),
        ("failed", &fe.snmp_stats.failed),
    ] {
        snmp.get_or_create(&OutcomeLabels {
            outcome: outcome.to_owned(),
        })
        .inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
    }

    if let Some(x) = fe.kernel.xdp_counters() {
        let packets = Family::<VerdictLabels, Counter>::default();
        reg.register(
            "xdp_packets",
            "Packets the XDP program saw, by what it did with them",
            packets.clone(),
        );
        for (verdict, n) in [
            ("non_ip", x.non_ip),
            ("malformed", x.malformed),
            ("non_tcp", x.non_tcp),
            ("no_service", x.no_service),
            ("service", x.service),
            ("dropped_blocklist", x.dropped_blocklist),
            ("dropped_syn_budget", x.dropped_syn_budget),
        ] {
            packets
                .get_or_create(&VerdictLabels {
                    verdict: verdict.to_owned(),
                })
                .inc_by(n);
        }
    }

    crate::prometheus::text(&reg)
}
