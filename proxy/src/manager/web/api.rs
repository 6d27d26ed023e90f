//! The web interface's routes: the pages, and the JSON API under `/api/`.
//!
//! Every answer goes through [`Manager::operator`], as the operator's commands do, with
//! the session's operator named "NAME (web)": the journal and the audit trail say who
//! changed what, and that it came from the web. Everything but the login page and its
//! script and style sheet needs a session; every POST but the login also needs the
//! session's CSRF header.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Instant,
};

use axum::{
    Extension, Json, Router,
    extract::{Query, Request as HttpRequest, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    assets,
    auth::{self, Auth, AuthError, Operator},
};
use crate::{
    events::Severity,
    manager::{
        core::{Manager, now_ms},
        logs::Entry,
        wire::{Reply, Request},
    },
};

/// The most events one `/api/logs` answer carries (the manager's own bound as well).
const MAX_EVENTS: usize = 10_000;

/// No script, style or frame but this server's own files; no form posts anywhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub struct Web {
    manager: Arc<Manager>,
    auth: Arc<Auth>,
    alarms: tokio::sync::Mutex<AlarmBook>,
}

impl Web {
    pub fn new(manager: Arc<Manager>, auth: Arc<Auth>) -> Web {
        Web {
            manager,
            auth,
            alarms: tokio::sync::Mutex::new(AlarmBook::default()),
        }
    }

    async fn ask(&self, op: &Operator, request: Request) -> Reply {
        self.manager
            .operator(&format!("{} (web)", op.name), request)
            .await
    }
}

type Shared = Arc<Web>;

pub fn router(web: Shared) -> Router {
    let private = Router::new()
        .route("/", get(|| async { assets::page(assets::INDEX_HTML) }))
        .route("/app.js", get(|| async { assets::script(assets::APP_JS) }))
        .route("/api/session", get(session))
        .route("/api/logout", post(logout))
        .route("/api/status", get(status))
        .route("/api/alarms", get(alarms))
        .route("/api/logs", get(logs))
        .route("/api/journal", get(journal))
        .route("/api/show", get(show))
        .route("/api/diff", get(diff))
        .route("/api/commit", post(commit))
        .route("/api/confirm", post(confirm))
        .route("/api/rollback", post(rollback))
        .route("/api/trace", get(trace))
        .route("/api/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(web.clone(), require_session));
    Router::new()
        .merge(private)
        .route("/login", get(|| async { assets::page(assets::LOGIN_HTML) }))
        .route(
            "/login.js",
            get(|| async { assets::script(assets::LOGIN_JS) }),
        )
        .route("/style.css", get(|| async { assets::style() }))
        .route("/favicon.svg", get(|| async { assets::icon() }))
        .route("/api/login", post(login))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::from_fn(security_headers))
        .with_state(web)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, Json(json!({ "error": message }))).into_response()
}

/// The manager's answer: its value, or its refusal as 409 (nothing changed).
fn answer(reply: Reply) -> Response {
    if reply.ok {
        Json(reply.value).into_response()
    } else {
        error(StatusCode::CONFLICT, reply.error)
    }
}

async fn security_headers(req: HttpRequest, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Nothing the interface shows may outlive the session in a cache.
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    // Other sites may neither embed these answers nor keep a handle on the window.
    for (name, value) in [
        ("cross-origin-resource-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| auth::cookie(h, auth::COOKIE))
}

async fn require_session(State(web): State<Shared>, mut req: HttpRequest, next: Next) -> Response {
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let csrf = (!reads).then(|| {
        req.headers()
            .get(auth::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
    });
    let checked = web
        .auth
        .check(session_cookie(req.headers()), csrf, Instant::now());
    match checked {
        Ok(op) => {
            req.extensions_mut().insert(op);
            next.run(req).await
        }
        Err(AuthError::Csrf) => error(StatusCode::FORBIDDEN, AuthError::Csrf.to_string()),
        Err(_) if req.uri().path() == "/" => Redirect::to("/login").into_response(),
        Err(e) => error(StatusCode::UNAUTHORIZED, e.to_string()),
    }
}

#[derive(Deserialize)]
struct LoginBody {
    token: String,
}

/// The login link's token for a session. The JSON body (a type no form can send) keeps
/// other sites from posting it.
async fn login(State(web): State<Shared>, Json(body): Json<LoginBody>) -> Response {
    match web.auth.exchange(&body.token, Instant::now()) {
        Ok(s) => {
            tracing::info!(operator = %s.operator.name, "web interface: logged in");
            (
                [(header::SET_COOKIE, auth::set_cookie(&s.cookie))],
                Json(json!({ "name": s.operator.name, "csrf": s.operator.csrf })),
            )
                .into_response()
        }
        Err(e @ AuthError::Full(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::UNAUTHORIZED, e.to_string()),
    }
}

async fn session(Extension(op): Extension<Operator>) -> Response {
    Json(json!({ "name": op.name, "csrf": op.csrf })).into_response()
}

async fn logout(State(web): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(c) = session_cookie(&headers) {
        web.auth.logout(c);
    }
    (
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Max-Age=0; HttpOnly; Secure; SameSite=Strict; Path=/",
                auth::COOKIE
            ),
        )],
        Json(json!({})),
    )
        .into_response()
}

async fn status(State(web): State<Shared>, Extension(op): Extension<Operator>) -> Response {
    answer(web.ask(&op, Request::Status).await)
}

#[derive(Deserialize)]
struct LogsQuery {
    after: Option<u64>,
    member: Option<String>,
    /// Only events of the last this many seconds.
    since: Option<u64>,
    /// Only events of this kind (`backend_down`, ...).
    kind: Option<String>,
    /// Only events whose message holds this text (any case).
    text: Option<String>,
    /// Only the events of this mail session.
    session: Option<String>,
    limit: Option<usize>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// An event's kind as its JSON names it.
fn kind_of(e: &Entry) -> Option<String> {
    let ev = e.event.as_ref()?;
    serde_json::to_value(&ev.kind)
        .ok()?
        .get("kind")?
        .as_str()
        .map(str::to_owned)
}

async fn logs(
    State(web): State<Shared>,
    Extension(op): Extension<Operator>,
    Query(q): Query<LogsQuery>,
) -> Response {
    let request = Request::Logs {
        after: q.after.unwrap_or(0),
        member: nonempty(q.member),
        since_ms: q
            .since
            .map_or(0, |s| now_ms().saturating_sub(s.saturating_mul(1000))),
        limit: q.limit.unwrap_or(1000).min(MAX_EVENTS),
        session: nonempty(q.session),
    };
    let reply = web.ask(&op, request).await;
    if !reply.ok {
        return answer(reply);
    }
    let (entries, last) = match parse_logs(reply.value) {
        Ok(x) => x,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let kind = nonempty(q.kind);
    let text = nonempty(q.text).map(|t| t.to_lowercase());
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| kind.is_none() || kind_of(e) == kind)
        .filter(|e| {
            text.as_ref().is_none_or(|t| {
                e.event
                    .as_ref()
                    .is_some_and(|ev| ev.message.to_lowercase().contains(t))
            })
        })
        .collect();
    Json(json!({ "entries": entries, "last": last })).into_response()
}

fn parse_logs(value: serde_json::Value) -> Result<(Vec<Entry>, u64), String> {
    let last = value["last"].as_u64().unwrap_or(0);
    let entries = serde_json::from_value(value["entries"].clone()).map_err(|e| e.to_string())?;
    Ok((entries, last))
}

/// An alarm that holds on a member, as its last raising event said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveAlarm {
    pub member: String,
    pub key: String,
    pub severity: Severity,
    pub since_ms: u64,
    pub seq: u64,
    pub message: String,
}

/// The members' active alarms, folded from the merged events' raises and clears as they
/// arrive (each event is read once).
#[derive(Default)]
pub struct AlarmBook {
    after: u64,
    boots: HashMap<String, String>,
    active: BTreeMap<(String, String), ActiveAlarm>,
}

impl AlarmBook {
    pub fn apply(&mut self, e: &Entry) {
        self.after = self.after.max(e.n);
        // A front-end's new run starts without alarms: it raises again what still holds.
        if self.boots.get(&e.member) != Some(&e.boot) {
            self.boots.insert(e.member.clone(), e.boot.clone());
            self.active.retain(|(m, _), _| m != &e.member);
        }
        let Some(ev) = &e.event else { return };
        let Some(key) = ev.kind.alarm_key() else {
            return;
        };
        let k = (e.member.clone(), key.clone());
        match ev.alarm.as_deref() {
            Some("raised") => {
                self.active.insert(
                    k,
                    ActiveAlarm {
                        member: e.member.clone(),
                        key,
                        severity: ev.severity,
                        since_ms: ev.time_ms,
                        seq: ev.seq,
                        message: ev.message.clone(),
                    },
                );
            }
            Some("cleared") => {
                self.active.remove(&k);
            }
            _ => {}
        }
    }

    pub fn active(&self) -> Vec<ActiveAlarm> {
        self.active.values().cloned().collect()
    }
}

async fn alarms(State(web): State<Shared>, Extension(op): Extension<Operator>) -> Response {
    let mut book = web.alarms.lock().await;
    loop {
        let request = Request::Logs {
            after: book.after,
            member: None,
            since_ms: 0,
            limit: MAX_EVENTS,
            session: None,
        };
        let reply = web.ask(&op, request).await;
        if !reply.ok {
            return answer(reply);
        }
        let (entries, _) = match parse_logs(reply.value) {
            Ok(x) => x,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        for e in &entries {
            book.apply(e);
        }
        if entries.len() < MAX_EVENTS {
            break;
        }
    }
    Json(book.active()).into_response()
}

#[derive(Deserialize)]
struct JournalQuery {
    limit: Option<usize>,
}

async fn journal(
    State(web): State<Shared>,
    Extension(op): Extension<Operator>,
    Query(q): Query<JournalQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(50);
    answer(web.ask(&op, Request::Log { limit }).await)
}

#[derive(Deserialize)]
struct ShowQuery {
    version: Option<u64>,
    member: Option<String>,
}

async fn show(
    State(web): State<Shared>,
    Extension(op): Extension<Operator>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let request = Request::Show {
        version: q.version,
        member: nonempty(q.member),
    };
    answer(web.ask(&op, request).await)
}

#[derive(Deserialize)]
struct DiffQuery {
    a: u64,
    b: u64,
}

async fn diff(
    State(web): State<Shared>,
    Extension(op): Extension<Operator>,
    Query(q): Query<DiffQuery>,
) -> Response {
    answer(web.ask(&op, Request::Diff { a: q.a, b: q.b }).await)
}

#[derive(Deserialize)]
struct CommitBody {
    base: u64,
    text: String,
    #[serde(default)]
    comment: String,
    /// Reverted unless confirmed within this many minutes.
    #[serde(default)]
    confirm_minutes: Option<u64>,
}

async fn commit(
    State(web): State<Shared>,
    Extension(op): Extension<Operator>,
    Json(b): Json<CommitBody>,
) -> Response {
    let confirm_secs = match b.confirm_minutes.map(|m| m.checked_mul(60)) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => return error(StatusCode::BAD_REQUEST, "confirm: too many minutes"),
    };
    let request = Request::Commit {
        base: b.base,
        text: b.text,
        comment: b.comment,
        confirm_secs,
    };
    answer(web.ask(&op, request).await)
}

async fn confirm(State(web): State<Shared>, Extension(op): Extension<Operator>) -> Response {
    answer(web.ask(&op, Request::Confirm).await)
}

#[derive(Deserialize)]
struct RollbackBody {
    to: u64,
}

async fn rollback(
    State(web): State<Shared>,
    Extension(op): Extension<Operator>,
    Json(b): Json<RollbackBody>,
) -> Response {
    answer(web.ask(&op, Request::Rollback { to: b.to }).await)
}

#[derive(Deserialize)]
struct TraceQuery {
    id: String,
}

/// `Request::Trace { id }`: a message's path through the cluster.
async fn trace(
    State(web): State<Shared>,
    Extension(op): Extension<Operator>,
    Query(q): Query<TraceQuery>,
) -> Response {
    let id = q.id.trim().to_owned();
    if id.is_empty() || id.len() > 998 {
        return error(
            StatusCode::BAD_REQUEST,
            "a trace needs a session id, a Message-ID or a queue id".to_owned(),
        );
    }
    answer(web.ask(&op, Request::Trace { id }).await)
}

#[derive(Deserialize)]
struct StatsQuery {
    member: Option<String>,
    /// Seconds back from now (default an hour, at most the manager's whole store).
    since: Option<u64>,
}

/// Batches of minutes asked for at most: the manager answers a bounded batch each time.
const MAX_STATS_BATCHES: usize = 16;

/// `Request::StatsOf`: the members' per-minute statistics of the last `since` seconds, in
/// one array, oldest first.
async fn stats(
    State(web): State<Shared>,
    Extension(op): Extension<Operator>,
    Query(q): Query<StatsQuery>,
) -> Response {
    let back = q.since.unwrap_or(3600);
    let mut since = Some((now_ms() / 1000).saturating_sub(back) / 60);
    let member = nonempty(q.member);
    let mut minutes: Vec<serde_json::Value> = Vec::new();
    for _ in 0..MAX_STATS_BATCHES {
        let reply = web
            .ask(
                &op,
                Request::StatsOf {
                    member: member.clone(),
                    since,
                },
            )
            .await;
        if !reply.ok {
            return answer(reply);
        }
        let serde_json::Value::Array(batch) = reply.value else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "statistics: not a list of minutes".to_owned(),
            );
        };
        let Some(last) = batch.last().and_then(|m| m["minute"].as_u64()) else {
            break;
        };
        since = Some(last);
        minutes.extend(batch);
    }
    Json(serde_json::Value::Array(minutes)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Kind};

    fn entry(n: u64, member: &str, boot: &str, kind: Kind, alarm: Option<&str>) -> Entry {
        Entry {
            n,
            member: member.into(),
            boot: boot.into(),
            gap: None,
            event: Some(Event {
                seq: n,
                time_ms: n * 1000,
                frontend: member.into(),
                severity: kind.severity(),
                message: format!("event {n}"),
                alarm: alarm.map(str::to_owned),
                notified: false,
                kind,
            }),
        }
    }

    fn down(b: &str) -> Kind {
        Kind::BackendDown {
            backend: b.into(),
            pool: "mx".into(),
            reason: "test".into(),
        }
    }

    fn up(b: &str) -> Kind {
        Kind::BackendUp {
            backend: b.into(),
            pool: "mx".into(),
        }
    }

    #[test]
    fn alarms_are_raised_and_cleared_per_member() {
        let mut book = AlarmBook::default();
        book.apply(&entry(1, "fe1", "b1", down("mx1"), Some("raised")));
        book.apply(&entry(2, "fe2", "b2", down("mx1"), Some("raised")));
        book.apply(&entry(3, "fe1", "b1", up("mx1"), Some("cleared")));
        let active = book.active();
        assert_eq!(active.len(), 1, "{active:?}");
        assert_eq!(
            (active[0].member.as_str(), active[0].key.as_str()),
            ("fe2", "backend_down:mx1")
        );
        assert_eq!(book.after, 3);
    }

    #[test]
    fn a_front_ends_new_run_drops_its_old_alarms() {
        let mut book = AlarmBook::default();
        book.apply(&entry(1, "fe1", "b1", down("mx1"), Some("raised")));
        book.apply(&entry(2, "fe1", "b2", up("mx2"), None));
        assert!(book.active().is_empty());
    }
}
