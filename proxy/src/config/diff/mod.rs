//! Every difference between the running configuration and a new one, each named precisely
//! ("service smtp: port 25 -> 2525") and classified by what applying it touches
//! ([`ChangeKind`]), so that a reload can apply what it can live and name the rest.
//!
//! The comparison destructures every configuration struct without `..` (see `compare`):
//! a field added to the configuration does not compile until it is classified here.
//! Positions (service, pool and back-end ids) are not compared: they follow from the
//! order in the file, and moving a section is not a change by itself. Members of lists are
//! matched by name.

mod compare;
mod show;
#[cfg(test)]
mod tests;

use std::fmt;

use super::Config;

/// What a change touches, and so what applying it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// `[frontend]`: name, interface, xdp_mode, pin_dir, user, serve_loopback_clients,
    /// runtime, workers;
    /// `ha.control_socket`, the daemon's own socket, bound at its start; and `[monitor]`,
    /// the event log opened at start.
    Frontend,
    /// `[[service]]` added, removed, or any of its fields changed.
    Services,
    /// `[[pool]]` added, removed, or its settings changed (identity, tls, ca,
    /// server_name, shared_store, connect timeout, health, agent key settings).
    Pools,
    /// Back-ends of a pool added, removed, moved, re-weighted, re-ordered, identity or
    /// agent changed.
    Backends,
    /// Pool thresholds, `[[group]]`s and admission waits.
    Balance,
    /// `[flood]` (SYN budget, block list, client_prefix_v6) and priority classes.
    Kernel,
    /// `[tls]` certificate and key paths.
    Tls,
    /// `[ha]` settings.
    Ha,
    /// `[[vrrp]]` routers.
    Vrrp,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 9] = [
        ChangeKind::Frontend,
        ChangeKind::Services,
        ChangeKind::Pools,
        ChangeKind::Backends,
        ChangeKind::Balance,
        ChangeKind::Kernel,
        ChangeKind::Tls,
        ChangeKind::Ha,
        ChangeKind::Vrrp,
    ];

    /// Whether a running front-end applies this kind without a restart. The front-end
    /// section names the maps, interface and user set up before privileges are dropped.
    /// `[ha]` and `[[vrrp]]` changes reach the running virtual routers in place (see
    /// `Ha::reconfigure`).
    pub fn live(self) -> bool {
        !matches!(self, ChangeKind::Frontend)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Frontend => "frontend",
            ChangeKind::Services => "services",
            ChangeKind::Pools => "pools",
            ChangeKind::Backends => "backends",
            ChangeKind::Balance => "balance",
            ChangeKind::Kernel => "kernel",
            ChangeKind::Tls => "tls",
            ChangeKind::Ha => "ha",
            ChangeKind::Vrrp => "vrrp",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One difference: its kind, and what changed in the operator's words (old -> new for a
/// value, "added"/"removed" for a member of a list; never the content of a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub what: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

/// Every change from `running` to `new`, in the file's order of sections.
pub fn changes(running: &Config, new: &Config) -> Vec<Change> {
    compare::config(running, new)
}

/// One line for logs and the reload command: "3 changes: service smtp: port 25 -> 2525;
/// ..." or "no change".
pub fn summary(changes: &[Change]) -> String {
    match changes.len() {
        0 => "no change".to_owned(),
        n => {
            let whats: Vec<&str> = changes.iter().map(|c| c.what.as_str()).collect();
            let noun = if n == 1 { "change" } else { "changes" };
            format!("{n} {noun}: {}", whats.join("; "))
        }
    }
}

/// The changes a running front-end cannot apply (kind not [`ChangeKind::live`]), one
/// line each.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    changes(running, new)
        .into_iter()
        .filter(|c| !c.kind.live())
        .map(|c| c.what)
        .collect()
}
