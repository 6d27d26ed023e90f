//! What `robustifier ha status` (and the control socket's `status`) reports about a
//! running front-end, and its rendering for an operator.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{ha::RouterStatus, supervise::TaskStatus};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub frontend: String,
    /// The process serving (it changes with a binary upgrade).
    #[serde(default)]
    pub pid: u32,
    /// The configuration version in force (a content hash; see `Config::version`).
    #[serde(default)]
    pub version: String,
    pub routers: Vec<RouterStatus>,
    /// Every supervised background task is running (none waits for a restart).
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub tasks: Vec<TaskStatus>,
    /// The back-ends the operator drained over the control socket (`drain`), by name.
    #[serde(default)]
    pub drained: Vec<String>,
    /// Every back-end's load record as this front-end holds it now.
    #[serde(default)]
    pub backends: Vec<BackendState>,
    /// The dedicated queues in force (`[[domain_queue]]`), in the file's order.
    #[serde(default)]
    pub domain_queues: Vec<DomainQueueStatus>,
    /// The release of the binary serving (see [`crate::release`]): it changes with a
    /// package update, and tells the manager which package a member runs.
    #[serde(default)]
    pub release: String,
}

/// One back-end's load record, for operators (the manager's overview).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendState {
    pub pool: String,
    pub name: String,
    /// `up`, `down` or `draining`.
    pub state: String,
    /// Over one of its thresholds: no new sessions.
    pub overloaded: bool,
    pub weight: u32,
    pub active_sessions: u32,
    /// SMTP legs kept open for the next session: connections, not sessions.
    #[serde(default)]
    pub idle_legs: u32,
    pub response_us: u32,
    /// Its agent's figures (zero without an agent).
    pub run_queue_milli: u32,
    pub mail_queue: u32,
    pub disk_permille: u32,
}

/// One `[[domain_queue]]` as the front-end routes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DomainQueueStatus {
    /// Normalised patterns: `slow.example`, `.slow.example` (every subdomain).
    pub domains: Vec<String>,
    pub pool: String,
    /// For an `auto = true` block only: whether it is isolated now (routed to its pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated: Option<bool>,
}

impl DomainQueueStatus {
    /// The blocks of `cfg`.
    pub fn of(cfg: &crate::config::Config) -> Vec<DomainQueueStatus> {
        cfg.domain_queues
            .iter()
            .map(|q| DomainQueueStatus {
                domains: q.domains.iter().map(ToString::to_string).collect(),
                pool: q.pool.clone(),
                isolated: q.auto.then_some(false),
            })
            .collect()
    }
}

/// The status as a table for an operator.
pub fn render(report: &StatusReport) -> String {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = format!(
        "front-end {} (pid {}), configuration version {}\n",
        report.frontend, report.pid, report.version
    );
    out.push_str(&format!(
        "{:<5} {:<6} {:<10} {:<11} {:>4}/{:<4} {:<26} {:<28} {}\n",
        "VRID", "FAMILY", "INTERFACE", "STATE", "PRIO", "CONF", "MASTER", "VIPS", "LAST TRANSITION"
    ));
    for r in &report.routers {
        let mut state = r.state.clone();
        if r.draining {
            state.push_str(" drain");
        } else if r.released {
            state.push_str(" rel");
        }
        let master = r.master.map_or("-".to_owned(), |m| {
            if m == r.primary {
                format!("{m} (self)")
            } else {
                m.to_string()
            }
        });
        let vips: Vec<String> = r.vips.iter().map(ToString::to_string).collect();
        let last = r.last_transition.as_ref().map_or("-".to_owned(), |t| {
            let ago = now_ms.saturating_sub(t.at_unix_ms) as f64 / 1000.0;
            format!("{} -> {} ({}) {ago:.1} s ago", t.from, t.to, t.reason)
        });
        out.push_str(&format!(
            "{:<5} {:<6} {:<10} {:<11} {:>4}/{:<4} {:<26} {:<28} {}\n",
            r.vrid,
            r.family,
            r.interface,
            state,
            r.priority,
            r.configured_priority,
            master,
            vips.join(","),
            last
        ));
        if !r.failing.is_empty() {
            out.push_str(&format!(
                "      tracking failing: {}\n",
                r.failing.join(", ")
            ));
        }
    }
    let restarted: Vec<String> = report
        .tasks
        .iter()
        .filter(|t| t.restarts > 0 || !t.running)
        .map(|t| {
            let state = if t.running { "running" } else { "restarting" };
            let why = t.last_failure.as_deref().unwrap_or("-");
            format!("{} ({state}, {} restarts, last: {why})", t.name, t.restarts)
        })
        .collect();
    out.push_str(&format!(
        "tasks: {} supervised, {}{}\n",
        report.tasks.len(),
        if report.ready {
            "all running"
        } else {
            "NOT all running"
        },
        if restarted.is_empty() {
            String::new()
        } else {
            format!("; {}", restarted.join("; "))
        }
    ));
    if !report.drained.is_empty() {
        out.push_str(&format!(
            "back-ends drained by the operator: {}\n",
            report.drained.join(", ")
        ));
    }
    for q in &report.domain_queues {
        let auto = match q.isolated {
            None => "",
            Some(true) => " (auto: isolated)",
            Some(false) => " (auto: not isolated)",
        };
        out.push_str(&format!(
            "dedicated queue: {} -> pool {}{auto}\n",
            q.domains.join(", "),
            q.pool
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedicated_queues_are_listed_in_json_and_text() {
        let cfg = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname = \"fe\"\n\
             [[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\nbackend = [{ name = \"m\", address = \"198.18.1.1:25\" }]\n\
             [[pool]]\nname = \"slowq\"\nidentity = \"none\"\nbackend = [{ name = \"s\", address = \"198.18.1.2:25\" }]\n\
             [[domain_queue]]\ndomains = [\"Slow.Example.\", \".slow.example\"]\npool = \"slowq\"\n",
        )
        .unwrap();
        let report = StatusReport {
            frontend: "fe".into(),
            pid: 1,
            version: "v".into(),
            routers: Vec::new(),
            ready: true,
            tasks: Vec::new(),
            drained: Vec::new(),
            backends: Vec::new(),
            domain_queues: DomainQueueStatus::of(&cfg),
            release: String::new(),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["domain_queues"],
            serde_json::json!([{ "domains": ["slow.example", ".slow.example"], "pool": "slowq" }])
        );
        assert!(
            render(&report)
                .contains("dedicated queue: slow.example, .slow.example -> pool slowq\n"),
            "{}",
            render(&report)
        );
        // A report from a front-end that predates the field still reads.
        let mut old = json;
        old.as_object_mut().unwrap().remove("domain_queues");
        let back: StatusReport = serde_json::from_value(old).unwrap();
        assert!(back.domain_queues.is_empty());
    }
}
