//! Events and alarms: one typed record of what happened on this front-end.
//!
//! Every part that notices a change (the health board, the load writer, the VRRP routers,
//! reloads) emits an [`Event`]. Each has a sequence number, a time and a severity; some
//! raise or clear an [`Alarm`], which stays active until the event that ends its condition
//! (a back-end down until it is up again). Events go to a bounded in-memory history (the
//! control socket's `alarms` request), to the JSON-lines log when one is configured
//! ([`log`]), and to subscribers.
//!
//! The handle is cheap to clone; the default one keeps history and alarms but writes no
//! file (tests, and front-ends without `[monitor]`).

pub mod log;

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::sync::lock;

/// Events kept in memory for `robustifier alarms --events` and for the member to ship,
/// unless `[monitor] event_history` says otherwise.
pub const DEFAULT_HISTORY: usize = 10_000;
/// Recipients named in a [`Kind::MessageRelayed`]; the count has them all.
pub const MAX_RCPTS_LISTED: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Major,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Major => "major",
            Severity::Critical => "critical",
        })
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    BackendDown {
        backend: String,
        pool: String,
        reason: String,
    },
    BackendUp {
        backend: String,
        pool: String,
    },
    /// Drained or undrained, by its agent (`drain=1`) or the operator.
    BackendDraining {
        backend: String,
        draining: bool,
        by: String,
    },
    /// Over a threshold (no new sessions), or under it again.
    BackendOverloaded {
        backend: String,
        pool: String,
        overloaded: bool,
    },
    /// Every back-end of the pool is over a threshold or down: its mail is deflected.
    PoolOverloaded {
        pool: String,
        overloaded: bool,
    },
    AgentUnreachable {
        backend: String,
        error: String,
    },
    AgentReachable {
        backend: String,
    },
    VrrpTransition {
        vrid: u8,
        family: String,
        from: String,
        to: String,
        reason: String,
    },
    ReloadApplied {
        version: String,
        summary: String,
    },
    ReloadRefused {
        error: String,
    },
    /// The server certificate ends within [`CERTIFICATE_WARNING_DAYS`] (or has ended).
    CertificateExpiring {
        file: String,
        days_left: i64,
    },
    /// The server certificate is valid for longer again (a new one was installed).
    CertificateValid {
        file: String,
    },
    /// The front-end's member cannot reach the cluster manager (it says so here).
    ManagerUnreachable {
        error: String,
    },
    ManagerReachable,
    /// A pool's or a user group's deflections in the last minute went over
    /// `[monitor] deflection_alarm_per_minute`, or (`over: false`) under it again.
    Deflecting {
        /// `pool` or `group`.
        scope: String,
        name: String,
        per_minute: u64,
        over: bool,
    },
    /// The XDP program's flood drops in the last minute went over
    /// `[monitor] flood_drop_alarm_per_minute`, or under it again.
    FloodDrops {
        per_minute: u64,
        over: bool,
    },
    /// A back-end took a message (its 250 to the end of data): one record per message.
    MessageRelayed(Box<Relayed>),
    /// The proxy refused or deflected a session's mail (busy back-ends, a client whose
    /// sessions offended too often, a back-end that refused the client's input).
    SessionRefused {
        session: String,
        client: String,
        service: String,
        reason: String,
    },
    /// The front-end asked the back-ends' agents to hand a domain pattern's queued mail
    /// over to a pool (a reload or an isolation did; an operator's move is audited by the
    /// manager instead).
    QueueMoveStarted {
        domain: String,
        pool: String,
        /// `reload` or `isolation`.
        by: String,
    },
    /// Every source of the move said it was done (or could not be asked).
    QueueMoveFinished {
        domain: String,
        pool: String,
        moved: u32,
        recipients_moved: u32,
        refused: u32,
        /// Back-ends that could not be asked or did not finish, with why.
        #[serde(default)]
        failed: Vec<String>,
    },
    /// A `[[domain_queue]]` with `auto = true`: a back-end outside its pool held its
    /// domains' mail over a threshold, so they go to the pool (`isolated: true`), or the
    /// figures stayed under the thresholds for `recover_secs` and they go back.
    DomainIsolated {
        /// The block's patterns, comma-separated.
        domains: String,
        pool: String,
        isolated: bool,
        reason: String,
    },
}

/// What a relayed message's record says. Boxed in [`Kind`], which stays small for the
/// other kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relayed {
    pub session: String,
    /// The client's address and port.
    pub client: String,
    pub service: String,
    #[serde(default)]
    pub helo: Option<String>,
    pub mail_from: String,
    pub rcpt_count: usize,
    /// The first [`MAX_RCPTS_LISTED`] recipients.
    pub rcpts: Vec<String>,
    pub pool: String,
    pub backend: String,
    /// How the back-end was chosen: where the route came from, the session's group, and
    /// the pick among the route's back-ends.
    pub route_reason: String,
    pub size: u64,
    #[serde(default)]
    pub message_id: Option<String>,
    /// The back-end's queue id, from its reply to the end of data.
    #[serde(default)]
    pub queue_id: Option<String>,
}

/// A certificate ending within this many days raises an alarm; within a week it is major.
pub const CERTIFICATE_WARNING_DAYS: i64 = 30;

/// An alarm's identity: its condition and what it is about.
type AlarmKey = String;

/// What an event does to the alarms: raise one, clear one, or nothing.
enum Effect {
    Raise(AlarmKey, Severity),
    Clear(AlarmKey),
    None,
}

impl Kind {
    /// The kind's name, as in the JSON `kind` field.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::BackendDown { .. } => "backend_down",
            Kind::BackendUp { .. } => "backend_up",
            Kind::BackendDraining { .. } => "backend_draining",
            Kind::BackendOverloaded { .. } => "backend_overloaded",
            Kind::PoolOverloaded { .. } => "pool_overloaded",
            Kind::AgentUnreachable { .. } => "agent_unreachable",
            Kind::AgentReachable { .. } => "agent_reachable",
            Kind::VrrpTransition { .. } => "vrrp_transition",
            Kind::ReloadApplied { .. } => "reload_applied",
            Kind::ReloadRefused { .. } => "reload_refused",
            Kind::CertificateExpiring { .. } => "certificate_expiring",
            Kind::CertificateValid { .. } => "certificate_valid",
            Kind::ManagerUnreachable { .. } => "manager_unreachable",
            Kind::ManagerReachable => "manager_reachable",
            Kind::Deflecting { .. } => "deflecting",
            Kind::FloodDrops { .. } => "flood_drops",
            Kind::MessageRelayed(_) => "message_relayed",
            Kind::SessionRefused { .. } => "session_refused",
            Kind::QueueMoveStarted { .. } => "queue_move_started",
            Kind::QueueMoveFinished { .. } => "queue_move_finished",
            Kind::DomainIsolated { .. } => "domain_isolated",
        }
    }

    /// The mail session the event is about, for kinds that are about one.
    pub fn session(&self) -> Option<&str> {
        match self {
            Kind::MessageRelayed(r) => Some(&r.session),
            Kind::SessionRefused { session, .. } => Some(session),
            _ => None,
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Kind::BackendDown { .. }
            | Kind::PoolOverloaded {
                overloaded: true, ..
            } => Severity::Major,
            Kind::CertificateExpiring { days_left, .. } if *days_left <= 7 => Severity::Major,
            Kind::CertificateExpiring { .. } | Kind::ManagerUnreachable { .. } => Severity::Warning,
            Kind::BackendOverloaded {
                overloaded: true, ..
            }
            | Kind::AgentUnreachable { .. }
            | Kind::ReloadRefused { .. }
            | Kind::Deflecting { over: true, .. }
            | Kind::FloodDrops { over: true, .. }
            | Kind::DomainIsolated { isolated: true, .. } => Severity::Warning,
            _ => Severity::Info,
        }
    }

    /// The key of the alarm this kind raises or clears, if it does either.
    pub fn alarm_key(&self) -> Option<String> {
        match self.effect() {
            Effect::Raise(key, _) | Effect::Clear(key) => Some(key),
            Effect::None => None,
        }
    }

    fn effect(&self) -> Effect {
        let raise = |key: String| Effect::Raise(key, self.severity());
        match self {
            Kind::BackendDown { backend, .. } => raise(format!("backend_down:{backend}")),
            Kind::BackendUp { backend, .. } => Effect::Clear(format!("backend_down:{backend}")),
            Kind::BackendOverloaded {
                backend,
                overloaded,
                ..
            } => toggle(format!("backend_overloaded:{backend}"), *overloaded, self),
            Kind::PoolOverloaded { pool, overloaded } => {
                toggle(format!("pool_overloaded:{pool}"), *overloaded, self)
            }
            Kind::AgentUnreachable { backend, .. } => raise(format!("agent_unreachable:{backend}")),
            Kind::AgentReachable { backend } => {
                Effect::Clear(format!("agent_unreachable:{backend}"))
            }
            Kind::ReloadRefused { .. } => raise("reload_refused".into()),
            Kind::ReloadApplied { .. } => Effect::Clear("reload_refused".into()),
            Kind::CertificateExpiring { file, .. } => raise(format!("certificate_expiring:{file}")),
            Kind::CertificateValid { file } => {
                Effect::Clear(format!("certificate_expiring:{file}"))
            }
            Kind::ManagerUnreachable { .. } => raise("manager_unreachable".into()),
            Kind::ManagerReachable => Effect::Clear("manager_unreachable".into()),
            Kind::Deflecting {
                scope, name, over, ..
            } => toggle(format!("deflecting:{scope}:{name}"), *over, self),
            Kind::FloodDrops { over, .. } => toggle("flood_drops".into(), *over, self),
            Kind::DomainIsolated {
                domains, isolated, ..
            } => toggle(format!("domain_isolated:{domains}"), *isolated, self),
            Kind::QueueMoveStarted { .. } | Kind::QueueMoveFinished { .. } => Effect::None,
            Kind::BackendDraining { .. }
            | Kind::VrrpTransition { .. }
            | Kind::MessageRelayed(_)
            | Kind::SessionRefused { .. } => Effect::None,
        }
    }
}

fn toggle(key: String, on: bool, kind: &Kind) -> Effect {
    if on {
        Effect::Raise(key, kind.severity())
    } else {
        Effect::Clear(key)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::BackendDown {
                backend,
                pool,
                reason,
            } => write!(f, "back-end {backend} (pool {pool}) down: {reason}"),
            Kind::BackendUp { backend, pool } => write!(f, "back-end {backend} (pool {pool}) up"),
            Kind::BackendDraining {
                backend,
                draining,
                by,
            } => {
                let what = if *draining {
                    "draining"
                } else {
                    "no longer draining"
                };
                write!(f, "back-end {backend} {what} (by the {by})")
            }
            Kind::BackendOverloaded {
                backend,
                pool,
                overloaded,
            } => {
                let what = if *overloaded {
                    "over a threshold: no new sessions"
                } else {
                    "under its thresholds again"
                };
                write!(f, "back-end {backend} (pool {pool}) {what}")
            }
            Kind::PoolOverloaded { pool, overloaded } => {
                let what = if *overloaded {
                    "has no back-end under its thresholds: its mail is deflected"
                } else {
                    "has a back-end under its thresholds again"
                };
                write!(f, "pool {pool} {what}")
            }
            Kind::AgentUnreachable { backend, error } => {
                write!(f, "agent of back-end {backend} unreachable: {error}")
            }
            Kind::AgentReachable { backend } => {
                write!(f, "agent of back-end {backend} reachable again")
            }
            Kind::VrrpTransition {
                vrid,
                family,
                from,
                to,
                reason,
            } => write!(f, "VRRP {vrid}/{family}: {from} -> {to} ({reason})"),
            Kind::ReloadApplied { version, summary } => {
                write!(f, "configuration {version} applied: {summary}")
            }
            Kind::ReloadRefused { error } => write!(f, "configuration refused: {error}"),
            Kind::CertificateExpiring { file, days_left } if *days_left < 0 => {
                write!(f, "certificate {file} expired {} days ago", -days_left)
            }
            Kind::CertificateExpiring { file, days_left } => {
                write!(f, "certificate {file} expires in {days_left} days")
            }
            Kind::CertificateValid { file } => {
                write!(
                    f,
                    "certificate {file} valid for more than {CERTIFICATE_WARNING_DAYS} days"
                )
            }
            Kind::ManagerUnreachable { error } => {
                write!(f, "cluster manager unreachable: {error}")
            }
            Kind::ManagerReachable => f.write_str("cluster manager reachable again"),
            Kind::MessageRelayed(r) => write!(
                f,
                "session {} from {}: message {} from <{}> to {} recipient(s) relayed to {} (pool {}, {}), {} octets, queue id {}",
                r.session,
                r.client,
                r.message_id.as_deref().unwrap_or("(no Message-ID)"),
                r.mail_from,
                r.rcpt_count,
                r.backend,
                r.pool,
                r.route_reason,
                r.size,
                r.queue_id.as_deref().unwrap_or("unknown"),
            ),
            Kind::SessionRefused {
                session,
                client,
                service,
                reason,
            } => write!(
                f,
                "session {session} from {client} ({service}) refused: {reason}"
            ),
            Kind::Deflecting {
                scope,
                name,
                per_minute,
                over,
            } => {
                let what = if *over { "over" } else { "under" };
                write!(
                    f,
                    "{scope} {name}: {per_minute} sessions deflected in the last minute, {what} the alarm threshold"
                )
            }
            Kind::FloodDrops { per_minute, over } => {
                let what = if *over { "over" } else { "under" };
                write!(
                    f,
                    "XDP dropped {per_minute} flood packets in the last minute, {what} the alarm threshold"
                )
            }
            Kind::QueueMoveStarted { domain, pool, by } => {
                write!(
                    f,
                    "queued mail for {domain} moving to pool {pool} (by the {by})"
                )
            }
            Kind::QueueMoveFinished {
                domain,
                pool,
                moved,
                recipients_moved,
                refused,
                failed,
            } => {
                write!(
                    f,
                    "queued mail for {domain} moved to pool {pool}: {moved} message(s), {recipients_moved} recipient(s), {refused} refused"
                )?;
                if !failed.is_empty() {
                    write!(f, "; not moved from {}", failed.join(", "))?;
                }
                Ok(())
            }
            Kind::DomainIsolated {
                domains,
                pool,
                isolated: true,
                reason,
            } => write!(f, "{domains} isolated to pool {pool}: {reason}"),
            Kind::DomainIsolated {
                domains,
                pool,
                reason,
                ..
            } => write!(f, "{domains} no longer isolated to pool {pool}: {reason}"),
        }
    }
}

/// One event as logged and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub frontend: String,
    pub severity: Severity,
    pub message: String,
    /// `raised` or `cleared` when the event did that to an alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// The front-end sends this alarm's SNMP notification itself: it has destinations and
    /// no cluster manager was reachable to send it. The manager sends the others once the
    /// event reaches it, so each is sent once, by one of the two.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notified: bool,
    #[serde(flatten)]
    pub kind: Kind,
}

/// A condition that holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    pub key: String,
    pub severity: Severity,
    /// When it was raised (unix milliseconds) and by which event.
    pub since_ms: u64,
    pub seq: u64,
    pub message: String,
}

/// What `events SINCE` reports: the events after a sequence number that are still kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    /// This process's run: sequence numbers start again at 1 in every run.
    pub boot: String,
    /// The oldest sequence number still kept (events before it are gone from memory).
    pub oldest: u64,
    pub events: Vec<Event>,
}

/// What `alarms` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub frontend: String,
    pub alarms: Vec<Alarm>,
    pub events: Vec<Event>,
}

#[derive(Clone)]
pub struct Events(Arc<Inner>);

struct Inner {
    frontend: String,
    boot: String,
    seq: AtomicU64,
    alarms: Mutex<BTreeMap<AlarmKey, Alarm>>,
    /// Shared with [`Events::record`]'s caller: a kept event is not copied to be kept.
    history: Mutex<VecDeque<Arc<Event>>>,
    /// Events so far, by kind.
    counts: Mutex<BTreeMap<&'static str, u64>>,
    log: Option<Mutex<log::JsonLog>>,
    tx: broadcast::Sender<Event>,
    /// This front-end has SNMP destinations (its notification sender runs).
    notifies: AtomicBool,
    /// Its member said the cluster manager is reachable: the manager notifies.
    manager_notifies: AtomicBool,
    /// Events kept in `history`.
    keep: usize,
}

impl Default for Events {
    fn default() -> Events {
        Events::new("", None)
    }
}

impl Events {
    /// Events of front-end `frontend`, also written to `log` when given.
    pub fn new(frontend: &str, log: Option<log::JsonLog>) -> Events {
        Events::with_history(frontend, log, DEFAULT_HISTORY)
    }

    /// [`Events::new`], keeping the newest `keep` events in memory (at least one).
    pub fn with_history(frontend: &str, log: Option<log::JsonLog>, keep: usize) -> Events {
        let (tx, _) = broadcast::channel(256);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Events(Arc::new(Inner {
            frontend: frontend.to_owned(),
            boot: format!("{}-{started}", std::process::id()),
            seq: AtomicU64::new(0),
            alarms: Mutex::default(),
            history: Mutex::default(),
            counts: Mutex::default(),
            log: log.map(Mutex::new),
            tx,
            notifies: AtomicBool::new(false),
            manager_notifies: AtomicBool::new(false),
            keep: keep.max(1),
        }))
    }

    /// Whether this front-end sends SNMP notifications (it has destinations).
    pub fn set_notifies(&self, on: bool) {
        self.0.notifies.store(on, Ordering::SeqCst);
    }

    /// Whether the cluster manager is reachable, and so sends the alarms' notifications.
    pub fn set_manager_reachable(&self, reachable: bool) {
        self.0.manager_notifies.store(reachable, Ordering::SeqCst);
    }

    /// Records `kind`: numbered, applied to the alarms, kept, logged and sent on.
    pub fn emit(&self, kind: Kind) -> Event {
        Event::clone(&self.record(kind))
    }

    /// [`Events::emit`] without a copy of the event for the caller: the one the history
    /// keeps is shared (a message's record is some twenty strings, and one is made per
    /// relayed message).
    pub fn record(&self, kind: Kind) -> Arc<Event> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Written into room for a message's record (the longest common event, some 200
        // octets), not grown step by step from empty.
        let mut message = String::with_capacity(256);
        let _ = fmt::Write::write_fmt(&mut message, format_args!("{kind}"));
        // The number is taken under the alarms' lock, so events and alarm changes are
        // numbered in the order they took effect.
        let mut alarms = lock(&self.0.alarms);
        let seq = self.0.seq.fetch_add(1, Ordering::Relaxed) + 1;
        *lock(&self.0.counts).entry(kind.name()).or_default() += 1;
        let alarm = match kind.effect() {
            Effect::Raise(key, severity) => {
                let fresh = !alarms.contains_key(&key);
                alarms.entry(key.clone()).or_insert(Alarm {
                    key,
                    severity,
                    since_ms: time_ms,
                    seq,
                    message: message.clone(),
                });
                fresh.then(|| "raised".to_owned())
            }
            Effect::Clear(key) => alarms.remove(&key).map(|_| "cleared".to_owned()),
            Effect::None => None,
        };
        let notified = alarm.is_some()
            && self.0.notifies.load(Ordering::SeqCst)
            && !self.0.manager_notifies.load(Ordering::SeqCst);
        let event = Arc::new(Event {
            seq,
            time_ms,
            frontend: self.0.frontend.clone(),
            severity: kind.severity(),
            message,
            alarm,
            notified,
            kind,
        });
        {
            let mut history = lock(&self.0.history);
            while history.len() >= self.0.keep {
                history.pop_front();
            }
            history.push_back(Arc::clone(&event));
        }
        drop(alarms);
        if let Some(log) = &self.0.log {
            lock(log).write(&event);
        }
        // Subscribers (the SNMP notifier) want alarms; a record per message would only
        // crowd the channel, and a subscriber busy with an inform would lag behind and lose
        // the alarm events among them.
        if event.kind.session().is_none() {
            let _ = self.0.tx.send(Event::clone(&event));
        }
        event
    }

    /// The alarms active now, oldest first.
    pub fn alarms(&self) -> Vec<Alarm> {
        let mut all: Vec<Alarm> = lock(&self.0.alarms).values().cloned().collect();
        all.sort_by_key(|a| a.seq);
        all
    }

    /// How many events of each kind there were, by kind name.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.0.counts).clone()
    }

    /// The newest `limit` events kept in memory, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        let history = lock(&self.0.history);
        history
            .iter()
            .skip(history.len().saturating_sub(limit))
            .map(|e| Event::clone(e))
            .collect()
    }

    /// Up to `limit` kept events after `seq`, oldest first.
    pub fn since(&self, seq: u64, limit: usize) -> Since {
        let history = lock(&self.0.history);
        Since {
            boot: self.0.boot.clone(),
            oldest: history
                .front()
                .map_or(self.0.seq.load(Ordering::Relaxed) + 1, |e| e.seq),
            events: history
                .iter()
                .filter(|e| e.seq > seq)
                .take(limit)
                .map(|e| Event::clone(e))
                .collect(),
        }
    }

    pub fn report(&self, events: usize) -> Report {
        Report {
            frontend: self.0.frontend.clone(),
            alarms: self.alarms(),
            events: self.recent(events),
        }
    }

    /// Every event from now on but the mail sessions' records (a subscriber too slow loses
    /// the oldest, and is told so).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.tx.subscribe()
    }
}

/// `alarms` as a table for an operator.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "front-end {}: {} active alarm{}\n",
        report.frontend,
        report.alarms.len(),
        if report.alarms.len() == 1 { "" } else { "s" }
    );
    for a in &report.alarms {
        out.push_str(&format!(
            "  {:<8} {:<36} {}\n",
            a.severity, a.key, a.message
        ));
    }
    if !report.events.is_empty() {
        out.push_str("recent events:\n");
        for e in &report.events {
            let mark = e
                .alarm
                .as_deref()
                .map_or(String::new(), |a| format!(" [{a}]"));
            out.push_str(&format!(
                "  #{:<6} {:<8} {}{mark}\n",
                e.seq, e.severity, e.message
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
