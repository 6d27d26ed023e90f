//! The manager's own metrics: the head version, and each member's reach and drift, so
//! that Prometheus can alert on a member that stopped following.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use super::core::ClusterStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

/// `status` in Prometheus's text format.
pub fn render(status: &ClusterStatus, now: u64) -> String {
    let mut reg = Registry::with_prefix("robustifier_manager");
    let head = Gauge::<i64>::default();
    head.set(i64::try_from(status.head).unwrap_or(i64::MAX));
    reg.register("head_version", "The newest configuration version", head);
    let pending = Gauge::<i64>::default();
    pending.set(i64::from(status.pending.is_some()));
    reg.register(
        "confirm_pending",
        "1 while a commit awaits confirmation",
        pending,
    );
    let family = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<MemberLabels, Gauge>::default();
        reg.register(name, help, f.clone());
        f
    };
    let connected = family(&mut reg, "member_connected", "1 while connected");
    let applied = family(
        &mut reg,
        "member_applied_version",
        "The version the member runs",
    );
    let drift = family(
        &mut reg,
        "member_drift",
        "1 while a configured member does not run the head version",
    );
    let seen = family(
        &mut reg,
        "member_last_seen_seconds",
        "Seconds since the member's last message (-1: never)",
    );
    let error = family(
        &mut reg,
        "member_error",
        "1 while the member reports an error",
    );
    for m in &status.members {
        let l = MemberLabels {
            member: m.name.clone(),
        };
        connected.get_or_create(&l).set(i64::from(m.connected));
        applied
            .get_or_create(&l)
            .set(i64::try_from(m.applied).unwrap_or(i64::MAX));
        drift
            .get_or_create(&l)
            .set(i64::from(m.configured && m.applied != m.desired));
        seen.get_or_create(&l).set(if m.last_seen == 0 {
            -1
        } else {
            i64::try_from(now.saturating_sub(m.last_seen)).unwrap_or(i64::MAX)
        });
        error
            .get_or_create(&l)
            .set(i64::from(m.last_error.is_some()));
    }
    crate::prometheus::text(&reg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::core::MemberRow;

    #[test]
    fn members_and_their_drift() {
        let status = ClusterStatus {
            head: 5,
            head_ms: 0,
            pending: None,
            members: vec![
                MemberRow {
                    name: "fe1".into(),
                    configured: true,
                    connected: true,
                    last_seen: 90,
                    desired: 5,
                    applied: 5,
                    ..MemberRow::default()
                },
                MemberRow {
                    name: "fe2".into(),
                    configured: true,
                    desired: 5,
                    applied: 3,
                    ..MemberRow::default()
                },
            ],
        };
        let text = render(&status, 100);
        for line in [
            "robustifier_manager_head_version 5",
            "robustifier_manager_member_drift{member=\"fe1\"} 0",
            "robustifier_manager_member_drift{member=\"fe2\"} 1",
            "robustifier_manager_member_connected{member=\"fe2\"} 0",
            "robustifier_manager_member_last_seen_seconds{member=\"fe1\"} 10",
            "robustifier_manager_member_last_seen_seconds{member=\"fe2\"} -1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
