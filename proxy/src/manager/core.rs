//! The manager's state and its answers to operators: the journal, the audit trail, the
//! head version members follow, and what each member last said.
//!
//! Everything an operator changes goes through here and is audited with the operator's
//! name from its certificate, whether it succeeded or was refused.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{
    audit::Audit,
    journal::{Journal, JournalError, Pending, VersionInfo},
    logs::{Logs, LogsError, Mark},
    render::ClusterConfig,
    store::now,
    wire::{Action, Reply, Request},
};
use crate::{frontend::StatusReport, sync::lock};

/// The longest an operator waits for a member to carry out an action (a release drains
/// sessions first, up to the front-end's drain deadline).
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Confirmed commits: from one second (tests) to a day.
const MAX_CONFIRM_SECS: u64 = 86_400;
const MAX_LOG: usize = 10_000;

/// One member as `cluster status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberRow {
    pub name: String,
    /// Named in the head version's `[members]`.
    pub configured: bool,
    pub connected: bool,
    /// Unix seconds of its last message (0: never heard).
    pub last_seen: u64,
    /// The version it should run (the head, when configured).
    pub desired: u64,
    /// The version it runs.
    pub applied: u64,
    /// Unix milliseconds when the manager heard it reach `applied`.
    pub applied_ms: u64,
    pub last_error: Option<String>,
    /// The member's `robustifier` release.
    pub release: String,
    /// Its front-end's own status (process, version hash, virtual routers); none when the
    /// front-end did not answer the member.
    pub frontend: Option<StatusReport>,
}

/// `cluster status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub head: u64,
    /// Unix milliseconds of the head's commit.
    pub head_ms: u64,
    pub pending: Option<Pending>,
    pub members: Vec<MemberRow>,
}

/// A member's live connection, as the manager holds it.
struct Connection {
    id: u64,
    actions: mpsc::Sender<(u64, Action)>,
}

#[derive(Default)]
struct MemberState {
    row: MemberRow,
    connection: Option<Connection>,
}

/// An action sent to a member: the member, and the operator's request awaiting its result
/// (whether it succeeded, and the member's message).
type Waiting = (String, oneshot::Sender<(bool, String)>);

pub struct Manager {
    journal: Journal,
    audit: Audit,
    logs: Logs,
    mta: super::mta_log::MtaLog,
    stats: super::stats::StatsStore,
    /// Days of statistics kept.
    stats_days: AtomicU64,
    head: watch::Sender<u64>,
    head_ms: AtomicU64,
    members: Mutex<BTreeMap<String, MemberState>>,
    /// Actions sent and not answered, by id.
    actions: Mutex<HashMap<u64, Waiting>>,
    next_id: AtomicU64,
    /// See [`Manager::subscribe_alarms`].
    alarms: broadcast::Sender<crate::events::Event>,
    /// The web interface's login links, once it serves.
    web: std::sync::OnceLock<LinkIssuer>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Audit(#[from] super::audit::AuditError),
    #[error(transparent)]
    Logs(#[from] LogsError),
    #[error(transparent)]
    MtaLog(#[from] super::mta_log::MtaLogError),
    #[error(transparent)]
    Stats(#[from] super::stats::StatsError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl Manager {
    /// Opens the journal and audit trail in `state_dir` (created if absent).
    pub fn open(state_dir: &Path, render_dir: &Path) -> Result<Manager, ManagerError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| ManagerError::Io(state_dir.display().to_string(), e))?;
        let journal = Journal::open_cluster(&state_dir.join("journal.redb"), render_dir)?;
        let audit = Audit::open(&state_dir.join("audit.redb"))?;
        let logs = Logs::open(&state_dir.join("logs.redb"))?;
        let mta = super::mta_log::MtaLog::open(&state_dir.join("mta_log.redb"))?;
        let stats = super::stats::StatsStore::open(&state_dir.join("stats.redb"))?;
        let head = journal.head()?;
        let (tx, _) = watch::channel(head.as_ref().map_or(0, |h| h.number));
        Ok(Manager {
            journal,
            audit,
            logs,
            mta,
            stats,
            stats_days: AtomicU64::new(super::stats::DEFAULT_DAYS),
            head: tx,
            head_ms: AtomicU64::new(head.map_or(0, |h| h.time * 1000)),
            members: Mutex::new(BTreeMap::new()),
            actions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            alarms: broadcast::channel(1024).0,
            web: std::sync::OnceLock::new(),
        })
    }

    /// The head version number, changing with every commit.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// `member`'s configuration text of `version`; `None` when that version does not name
    /// the member.
    pub fn rendering(&self, version: u64, member: &str) -> Result<Option<String>, String> {
        let text = self.journal.get(version).map_err(|e| e.to_string())?.text;
        let cluster = ClusterConfig::parse(&text).map_err(|e| e.to_string())?;
        if !cluster.members().any(|m| m == member) {
            return Ok(None);
        }
        cluster.render(member).map(Some).map_err(|e| e.to_string())
    }

    /// Answers one operator request; `who` is the operator's name from its certificate.
    pub async fn operator(&self, who: &str, request: Request) -> Reply {
        let by = format!("operator {who}");
        match request {
            Request::Commit {
                base,
                text,
                comment,
                confirm_secs,
            } => {
                let deadline = match confirm_secs {
                    None => None,
                    Some(s) if (1..=MAX_CONFIRM_SECS).contains(&s) => Some(now() + s),
                    Some(s) => {
                        return Reply::error(format!(
                            "confirm: {s} s is not between 1 s and {MAX_CONFIRM_SECS} s"
                        ));
                    }
                };
                let r = self.journal.commit(base, &text, who, &comment, deadline);
                let what = match &r {
                    Ok(v) => format!(
                        "version {} on {base}{}: {}",
                        v.number,
                        deadline.map_or(String::new(), |d| format!(", confirm by {d}")),
                        v.summary
                    ),
                    Err(_) => format!("on version {base}"),
                };
                self.record(&by, "commit", &what, r.as_ref().err());
                self.new_version(r)
            }
            Request::Rollback { to } => {
                let r = self.journal.rollback(to, who);
                let what = match &r {
                    Ok(v) => format!("to version {to} as version {}", v.number),
                    Err(_) => format!("to version {to}"),
                };
                self.record(&by, "rollback", &what, r.as_ref().err());
                self.new_version(r)
            }
            Request::Confirm => {
                let r = self.journal.confirm(who);
                let what = match &r {
                    Ok(n) => format!("version {n}"),
                    Err(_) => String::new(),
                };
                self.record(&by, "confirm", &what, r.as_ref().err());
                match r {
                    Ok(n) => Reply::ok(n),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            Request::Log { limit } => reply(self.journal.log(limit.min(MAX_LOG))),
            Request::Show { version, member } => self.show(version, member),
            Request::Diff { a, b } => reply(self.journal.diff(a, b)),
            Request::Status => Reply::ok(self.status()),
            Request::Audit {
                verify,
                since,
                limit,
            } => {
                if verify {
                    reply(self.audit.verify())
                } else {
                    reply(self.audit.list(since, limit.min(MAX_LOG)))
                }
            }
            Request::Logs {
                after,
                member,
                since_ms,
                limit,
                session,
            } => match self.logs.query_session(
                after,
                member.as_deref(),
                since_ms,
                limit.min(MAX_LOG),
                session.as_deref(),
            ) {
                Ok((entries, last)) => {
                    Reply::ok(serde_json::json!({ "entries": entries, "last": last }))
                }
                Err(e) => Reply::error(e.to_string()),
            },
            Request::Action { member, action } => self.act(&by, &member, action).await,
            Request::WebLogin => self.web_login(&by, who),
            Request::Trace { id } => reply(self.trace(&id)),
            Request::StatsOf { member, since } => reply(self.stats.query(member.as_deref(), since)),
            Request::Hello { .. }
            | Request::Report { .. }
            | Request::Events { .. }
            | Request::Stats { .. }
            | Request::Acted { .. } => {
                Reply::error("a member's message; this certificate is an operator's")
            }
            Request::MtaMark | Request::MtaLines { .. } => {
                Reply::error("an agent's message; this certificate is an operator's")
            }
            Request::Update { .. } => {
                Reply::error("a member's message; this certificate is an operator's")
            }
            // The server hands these to the rollouts (`super::upgrade`) before the core.
            Request::PackageChunk { .. } | Request::Upgrade { .. } | Request::UpgradeStatus => {
                Reply::error("package updates are not served here")
            }
        }
    }

    fn show(&self, version: Option<u64>, member: Option<String>) -> Reply {
        let version = match version {
            Some(v) => v,
            None => match self.journal.head() {
                Ok(Some(h)) => h.number,
                Ok(None) => return Reply::error("no version committed yet"),
                Err(e) => return Reply::error(e.to_string()),
            },
        };
        match member {
            None => match self.journal.get(version) {
                Ok(v) => Reply::ok(serde_json::json!({ "info": v.info, "text": v.text })),
                Err(e) => Reply::error(e.to_string()),
            },
            Some(m) => match self.rendering(version, &m) {
                Ok(Some(text)) => {
                    Reply::ok(serde_json::json!({ "version": version, "member": m, "text": text }))
                }
                Ok(None) => Reply::error(format!("version {version} names no member {m:?}")),
                Err(e) => Reply::error(e),
            },
        }
    }

    /// A version committed (or not): members hear of it, the operator gets its record.
    fn new_version(&self, r: Result<VersionInfo, JournalError>) -> Reply {
        match r {
            Ok(v) => {
                self.head_ms.store(now_ms(), Ordering::Relaxed);
                self.head.send_replace(v.number);
                tracing::info!(version = v.number, author = %v.author, summary = %v.summary, "new configuration version");
                Reply::ok(v)
            }
            Err(e) => Reply::error(e.to_string()),
        }
    }

    /// Reverts an unconfirmed commit whose deadline has passed (the daemon calls this
    /// every second).
    pub fn expire(&self) {
        // A read first: the write transaction is only for a deadline that has passed.
        let now = now();
        if !matches!(self.journal.pending(), Ok(Some(p)) if now >= p.deadline) {
            return;
        }
        match self.journal.expire(now) {
            Ok(Some(v)) => {
                self.record(
                    "manager",
                    "confirm timeout",
                    &format!("{} as version {}", v.comment, v.number),
                    None::<&String>,
                );
                let _ = self.new_version(Ok(v));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "confirm timeout check failed"),
        }
    }

    /// Appends to the audit trail; a trail that cannot be written is logged loudly (the
    /// action itself has already happened and is in the journal).
    fn record(&self, who: &str, action: &str, what: &str, error: Option<&impl ToString>) {
        let result = error.map_or_else(|| "ok".to_owned(), ToString::to_string);
        if let Err(e) = self.audit.append(who, action, what, &result) {
            tracing::error!(error = %e, who, action, what, "audit trail not written");
        }
    }

    async fn act(&self, by: &str, member: &str, action: Action) -> Reply {
        if let Action::Drain { backend } | Action::Undrain { backend } = &action
            && (backend.is_empty()
                || backend.len() > 200
                || backend.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Reply::error(format!("{backend:?} is not a back-end name"));
        }
        // The front-end checks it too; refused here, it never reaches a member.
        if let Action::Queue {
            domain: Some(domain),
        } = &action
            && (domain.is_empty()
                || domain.len() > 255
                || domain
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '@'))
        {
            return Reply::error(format!("{domain:?} is not a domain"));
        }
        if let Action::QueueMove {
            domain,
            pool,
            status_only,
        } = &action
        {
            if let Err(e) = crate::route::DomainPattern::parse(domain) {
                return Reply::error(format!("{domain:?} is not a domain pattern: {e}"));
            }
            if (pool.is_empty() && !status_only)
                || pool.len() > 200
                || pool.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Reply::error(format!("{pool:?} is not a pool name"));
            }
        }
        let what = format!("{action} on {member}");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let sender = {
            let members = lock(&self.members);
            members
                .get(member)
                .and_then(|m| m.connection.as_ref())
                .map(|c| c.actions.clone())
        };
        let Some(sender) = sender else {
            let e = format!("member {member} is not connected");
            self.record(by, "action", &what, Some(&e));
            return Reply::error(e);
        };
        lock(&self.actions).insert(id, (member.to_owned(), tx));
        let result = if sender.send((id, action)).await.is_err() {
            Err(format!("member {member} disconnected"))
        } else {
            match tokio::time::timeout(ACTION_TIMEOUT, rx).await {
                Ok(Ok((true, message))) => Ok(message),
                Ok(Ok((false, message))) => Err(message),
                Ok(Err(_)) => Err(format!("member {member} disconnected before it answered")),
                Err(_) => Err(format!("member {member} did not answer in time")),
            }
        };
        lock(&self.actions).remove(&id);
        self.record(by, "action", &what, result.as_ref().err());
        match result {
            Ok(message) => Reply::ok(message),
            Err(e) => Reply::error(e),
        }
    }

    /// A member connected (replacing an older connection of it); returns the connection id.
    pub fn connected(
        &self,
        name: &str,
        applied: u64,
        release: &str,
        actions: mpsc::Sender<(u64, Action)>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut members = lock(&self.members);
        let m = members.entry(name.to_owned()).or_default();
        m.row.name = name.to_owned();
        m.row.connected = true;
        m.row.last_seen = now();
        if m.row.applied != applied {
            m.row.applied = applied;
            m.row.applied_ms = now_ms();
        }
        m.row.release = release.to_owned();
        m.connection = Some(Connection { id, actions });
        tracing::info!(member = name, applied, release, "member connected");
        id
    }

    /// The connection `id` of `name` ended (unless a newer one replaced it).
    pub fn disconnected(&self, name: &str, id: u64, why: &str) {
        let mut members = lock(&self.members);
        if let Some(m) = members.get_mut(name)
            && m.connection.as_ref().is_some_and(|c| c.id == id)
        {
            m.connection = None;
            m.row.connected = false;
            tracing::info!(member = name, reason = why, "member disconnected");
            // Actions it will never answer: their operators hear so now.
            lock(&self.actions).retain(|_, (member, _)| member != name);
        }
    }

    /// A member's report.
    pub fn report(
        &self,
        name: &str,
        applied: u64,
        error: Option<String>,
        status: Option<StatusReport>,
    ) {
        let mut members = lock(&self.members);
        let m = members.entry(name.to_owned()).or_default();
        m.row.last_seen = now();
        if m.row.applied != applied {
            m.row.applied = applied;
            m.row.applied_ms = now_ms();
            tracing::info!(member = name, applied, "member applied");
        }
        if let Some(e) = &error {
            tracing::warn!(member = name, error = %e, "member could not apply");
        }
        m.row.last_error = error;
        m.row.frontend = status;
    }

    /// Notes (or clears) a problem the manager sees with a member, such as a version that
    /// does not name it; shown as its last error.
    pub fn note(&self, name: &str, error: Option<String>) {
        let mut members = lock(&self.members);
        if let Some(m) = members.get_mut(name) {
            m.row.last_error = error;
        }
    }

    /// Where `member`'s events stand (a member resumes shipping after it).
    pub fn log_mark(&self, member: &str) -> Result<Mark, String> {
        self.logs.mark(member).map_err(|e| e.to_string())
    }

    /// A batch of `member`'s events.
    pub fn store_events(
        &self,
        member: &str,
        boot: &str,
        oldest: u64,
        events: &[crate::events::Event],
    ) {
        // What the log had of this run: the events after it are new, and only those
        // are notified (a batch sent again after a reconnect is not notified twice).
        let from = match self.logs.mark(member) {
            Ok(m) if m.boot == boot => m.seq,
            Ok(_) => 0,
            Err(e) => {
                tracing::error!(member, error = %e, "events not stored");
                return;
            }
        };
        if let Err(e) = self.logs.store(member, boot, oldest, events) {
            tracing::error!(member, error = %e, "events not stored");
            return;
        }
        for e in events.iter().filter(|e| e.seq > from) {
            if e.alarm.is_some() && !e.notified {
                // No receiver (no SNMP destination) is not an error.
                let _ = self.alarms.send(e.clone());
            }
        }
    }

    /// The members' alarm events that their front-ends did not notify themselves, as they
    /// are stored (the SNMP notifier sends them).
    pub fn subscribe_alarms(&self) -> broadcast::Receiver<crate::events::Event> {
        self.alarms.subscribe()
    }

    /// The SNMP destinations of the head version (the same for every member), and the
    /// head's number; none before the first commit.
    pub fn snmp_destinations(
        &self,
    ) -> Result<(u64, Vec<crate::config::snmp::Destination>), String> {
        let Some(head) = self.journal.head().map_err(|e| e.to_string())? else {
            return Ok((0, Vec::new()));
        };
        let text = self
            .journal
            .get(head.number)
            .map_err(|e| e.to_string())?
            .text;
        let configs = self.journal.validate(&text).map_err(|e| e.to_string())?;
        Ok((
            head.number,
            configs
                .into_iter()
                .next()
                .map(|(_, c)| c.monitor.snmp)
                .unwrap_or_default(),
        ))
    }

    /// Keeps the members' statistics `days` days (at least one).
    pub fn keep_stats_days(&self, days: u64) {
        self.stats_days.store(days.max(1), Ordering::Relaxed);
    }

    /// The last minute of `member`'s statistics stored (it resumes after it).
    pub fn stats_mark(&self, member: &str) -> Result<u64, String> {
        self.stats.mark(member).map_err(|e| e.to_string())
    }

    /// A batch of `member`'s minutes of statistics.
    pub fn store_stats(&self, member: &str, minutes: &[crate::stats::Minute]) {
        let days = self.stats_days.load(Ordering::Relaxed);
        let keep_from = (now() / 60).saturating_sub(days.saturating_mul(1440));
        if let Err(e) = self.stats.store(member, minutes, keep_from) {
            tracing::error!(member, error = %e, "statistics not stored");
        }
    }

    /// An action's result, from the member it was sent to.
    pub fn acted(&self, name: &str, id: u64, ok: bool, message: String) {
        let mut actions = lock(&self.actions);
        if actions.get(&id).is_some_and(|(m, _)| m == name)
            && let Some((_, tx)) = actions.remove(&id)
        {
            let _ = tx.send((ok, message));
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let head = *self.head.borrow();
        let configured: Vec<String> = self
            .journal
            .get(head)
            .ok()
            .and_then(|v| ClusterConfig::parse(&v.text).ok())
            .map(|c| c.members().map(str::to_owned).collect())
            .unwrap_or_default();
        let members = lock(&self.members);
        let mut rows: BTreeMap<String, MemberRow> = members
            .iter()
            .map(|(n, m)| (n.clone(), m.row.clone()))
            .collect();
        for name in &configured {
            rows.entry(name.clone()).or_insert_with(|| MemberRow {
                name: name.clone(),
                ..MemberRow::default()
            });
        }
        for row in rows.values_mut() {
            row.configured = configured.contains(&row.name);
            row.desired = if row.configured { head } else { 0 };
        }
        ClusterStatus {
            head,
            head_ms: self.head_ms.load(Ordering::Relaxed),
            pending: self.journal.pending().ok().flatten(),
            members: rows.into_values().collect(),
        }
    }

    /// Appends an entry of someone else's doing (a rollout's steps) to the audit trail.
    pub fn audit(&self, who: &str, action: &str, what: &str, error: Option<&str>) {
        self.record(who, action, what, error.as_ref());
    }

    /// Notes a member's connection in the audit trail (who was refused, mostly).
    pub fn audit_refusal(&self, who: &str, what: &str, reason: &str) {
        self.record(who, "refused", what, Some(&reason));
    }
}

/// Issues a one-time web login link for an operator. A function, so that the core needs
/// nothing of the web interface (which is built on the core).
pub type LinkIssuer = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

impl Manager {
    /// Hands out login links from now on (the web interface serves).
    pub fn enable_web(&self, issuer: LinkIssuer) {
        let _ = self.web.set(issuer);
    }

    /// `cluster web`: a one-time login link for the operator, audited.
    fn web_login(&self, by: &str, who: &str) -> Reply {
        let Some(issue) = self.web.get() else {
            return Reply::error(
                "the web interface is off (start the manager with --web-listen ADDR)",
            );
        };
        let r = issue(who);
        self.record(by, "web login", "one-time link issued", r.as_ref().err());
        reply(r)
    }
}

fn reply<T: Serialize, E: ToString>(r: Result<T, E>) -> Reply {
    match r {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::error(e.to_string()),
    }
}

/// Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Records and MTA lines of `cluster trace`, at most this many messages.
const MAX_TRACED: usize = 100;

impl Manager {
    /// An agent's request: where its lines resume, or a batch of them. `host` is the
    /// agent's certificate name, the back-end's name.
    pub fn agent(&self, host: &str, request: Request) -> Reply {
        match request {
            Request::MtaMark => reply(self.mta.mark(host)),
            Request::MtaLines { dev, ino, lines } => {
                reply(self.mta.store(host, (dev, ino), &lines))
            }
            _ => Reply::error("an agent sends its MTA's log lines only"),
        }
    }

    /// `cluster trace ID`: see [`super::mta_log::Trace`].
    pub fn trace(&self, id: &str) -> Result<super::mta_log::Trace, String> {
        use crate::events::Kind;
        let id = id.trim();
        let bracketed = format!("<{}>", id.trim_start_matches('<').trim_end_matches('>'));
        let relayed = self
            .logs
            .scan(
                |e| match e.event.as_ref().map(|ev| &ev.kind) {
                    Some(Kind::MessageRelayed(r)) => {
                        r.session == id
                            || r.queue_id.as_deref() == Some(id)
                            || r.message_id.as_deref() == Some(bracketed.as_str())
                    }
                    _ => false,
                },
                MAX_TRACED,
            )
            .map_err(|e| e.to_string())?;
        let mut sessions: Vec<String> = vec![id.to_owned()];
        let mut messages = Vec::new();
        for e in relayed {
            let Some(ev) = e.event else { continue };
            let Kind::MessageRelayed(r) = ev.kind else {
                continue;
            };
            if !sessions.contains(&r.session) {
                sessions.push(r.session.clone());
            }
            let mta = match &r.queue_id {
                Some(q) => self.mta.lines(&r.backend, q).map_err(|e| e.to_string())?,
                None => Vec::new(),
            };
            messages.push(super::mta_log::TracedMessage {
                member: e.member,
                time_ms: ev.time_ms,
                record: *r,
                mta,
            });
        }
        let session_events = self
            .logs
            .scan(
                |e| {
                    e.event.as_ref().is_some_and(|ev| {
                        !matches!(ev.kind, Kind::MessageRelayed(_))
                            && ev
                                .kind
                                .session()
                                .is_some_and(|s| sessions.iter().any(|x| x == s))
                    })
                },
                MAX_LOG,
            )
            .map_err(|e| e.to_string())?;
        let mta_only = if messages.is_empty() {
            self.mta
                .find(id)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(host, lines)| super::mta_log::HostLines { host, lines })
                .collect()
        } else {
            Vec::new()
        };
        Ok(super::mta_log::Trace {
            id: id.to_owned(),
            messages,
            session_events,
            mta_only,
        })
    }
}
