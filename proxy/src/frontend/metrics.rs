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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    scope: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    scope: String,
    name: String,
    reason: String,
}

/// A histogram's sum, count, and buckets as upper bound and count (not cumulative).
type Buckets = (f64, u64, Vec<(f64, u64)>);

/// A histogram whose buckets were counted elsewhere (the statistics' atomics), set once
/// per scrape.
#[derive(Debug, Default)]
struct Counted(std::sync::OnceLock<Buckets>);

impl prometheus_client::metrics::TypedMetric for Counted {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for Counted {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.0.get().cloned().unwrap_or_default();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
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
    let idle_legs = gauges::<BackendLabels>(
        &mut reg,
        "backend_idle_legs",
        "SMTP legs kept open to the back-end for the next session (not sessions)",
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
        idle_legs.get_or_create(&l).set(i64::from(
            slot.idle.load(std::sync::atomic::Ordering::Relaxed),
        ));
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
        for (verdict, n) in super::xdp_verdicts(&x) {
            packets
                .get_or_create(&VerdictLabels {
                    verdict: verdict.to_owned(),
                })
                .inc_by(n);
        }
    }

    directories(&mut reg, &super::route_lookup::stats(&fe.envs.load()));
    statistics(&mut reg, &fe.stats.totals());
    crate::prometheus::text(&reg)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectoryLabels {
    directory: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectoryOutcomeLabels {
    directory: String,
    kind: String,
    outcome: String,
}

/// Each directory's lookups by outcome, the source's answer time, and its cache's size.
fn directories(reg: &mut Registry, stats: &[super::route_lookup::DirectoryStats]) {
    let lookups = Family::<DirectoryLabels, Counter>::default();
    reg.register(
        "directory_lookups",
        "Routing lookups asked of a directory (cache included)",
        lookups.clone(),
    );
    let outcomes = Family::<DirectoryOutcomeLabels, Counter>::default();
    reg.register(
        "directory_outcomes",
        "Directory lookups by outcome: hit (cache), miss (asked the source), stale (an expired answer served while the source failed), error (no answer; timeouts included), timeout",
        outcomes.clone(),
    );
    let seconds = Family::<DirectoryLabels, Counter<f64, AtomicU64>>::default();
    reg.register(
        "directory_source_seconds",
        "Time the source took over all its answers (divide by the misses for the mean)",
        seconds.clone(),
    );
    let slowest = Family::<DirectoryLabels, Gauge<f64, AtomicU64>>::default();
    reg.register(
        "directory_source_max_seconds",
        "The source's slowest answer",
        slowest.clone(),
    );
    let cached = gauges::<DirectoryLabels>(reg, "directory_cached_keys", "Keys in the cache");
    for d in stats {
        let c = &d.counters;
        let l = DirectoryLabels {
            directory: d.name.clone(),
            kind: d.kind.clone(),
        };
        lookups.get_or_create(&l).inc_by(c.lookups);
        for (outcome, n) in [
            ("hit", c.hits),
            ("miss", c.misses),
            ("stale", c.stale),
            ("error", c.errors),
            ("timeout", c.timeouts),
        ] {
            outcomes
                .get_or_create(&DirectoryOutcomeLabels {
                    directory: d.name.clone(),
                    kind: d.kind.clone(),
                    outcome: outcome.to_owned(),
                })
                .inc_by(n);
        }
        seconds
            .get_or_create(&l)
            .inc_by(c.source_us_total as f64 / 1e6);
        slowest.get_or_create(&l).set(c.source_us_max as f64 / 1e6);
        cached
            .get_or_create(&l)
            .set(i64::try_from(c.cached).unwrap_or(i64::MAX));
    }
}

/// The statistics' counters since the start, per service, back-end, pool and group.
fn statistics(
    reg: &mut Registry,
    totals: &std::collections::BTreeMap<(crate::stats::Scope, String), crate::stats::Totals>,
) {
    use crate::stats::{Scope, counters::LATENCY_BOUNDS_MS};
    let counters = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<KeyLabels, Counter>::default();
        reg.register(name, help, f.clone());
        f
    };
    let sessions = counters(
        reg,
        "sessions",
        "Client sessions (service) or sessions given a back-end (back-end, pool, group)",
    );
    let messages = counters(reg, "messages", "Messages a back-end acknowledged");
    let recipients = counters(reg, "recipients", "Recipients of the messages acknowledged");
    let to_backend = counters(reg, "bytes_to_backend", "Octets from clients to back-ends");
    let to_client = counters(reg, "bytes_to_client", "Octets from back-ends to clients");
    let deflections = Family::<ReasonLabels, Counter>::default();
    reg.register(
        "deflections",
        "Sessions deflected: overload, no_backend or limit",
        deflections.clone(),
    );
    let greeting = Family::<KeyLabels, Counted>::default();
    reg.register(
        "backend_greeting_seconds",
        "Back-ends' connect and greeting time for sessions",
        greeting.clone(),
    );
    for ((scope, name), t) in totals {
        let scope = match scope {
            Scope::Service => "service",
            Scope::Backend => "backend",
            Scope::Pool => "pool",
            Scope::Group => "group",
        };
        let l = KeyLabels {
            scope: scope.to_owned(),
            name: name.clone(),
        };
        sessions.get_or_create(&l).inc_by(t.sessions);
        messages.get_or_create(&l).inc_by(t.messages);
        recipients.get_or_create(&l).inc_by(t.recipients);
        to_backend.get_or_create(&l).inc_by(t.bytes_to_backend);
        to_client.get_or_create(&l).inc_by(t.bytes_to_client);
        for (reason, n) in &t.deflected {
            deflections
                .get_or_create(&ReasonLabels {
                    scope: scope.to_owned(),
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
        if let Some(lat) = &t.latency {
            let bounds = LATENCY_BOUNDS_MS
                .iter()
                .map(|ms| *ms as f64 / 1000.0)
                .chain([f64::MAX]);
            let buckets = bounds.zip(lat.buckets.iter().copied()).collect();
            let _ = greeting
                .get_or_create(&l)
                .0
                .set((lat.sum_us as f64 / 1e6, lat.count, buckets));
        }
    }
}
