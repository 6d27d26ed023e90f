//! `robustifier manager` on the network: mutual TLS, then an operator's requests or a
//! member's session.
//!
//! A member's session sends it the head version whenever it runs an older one, one at a
//! time: the next only after the member has reported on the last, so a member never
//! applies two versions at once, and one that was away gets the newest straight away,
//! never the ones in between. A member that is slow or gone holds up only its own session.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::control::http::Token;

use super::{
    core::Manager,
    pki::Role,
    tls,
    upgrade::{self, Upgrades},
    wire::{self, Reply, Request, ToMember, WireError},
};

/// A client has this long to finish the handshake and an operator this long between
/// requests; a member's session has no idle limit (it reports every few seconds).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATOR_IDLE: Duration = Duration::from_secs(300);
/// Bound on connections at once: members plus operators, with room to spare.
const MAX_CONNECTIONS: usize = 4096;

pub struct Options {
    pub listen: SocketAddr,
    /// The journal and the audit trail.
    pub state_dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Members' configurations are validated as files in this folder (relative paths in
    /// them resolve against it).
    pub render_dir: PathBuf,
    /// `/metrics` over HTTP at this address, with this bearer token (`None`: the operator
    /// said to serve it without one).
    pub metrics: Option<(SocketAddr, Option<Token>)>,
    /// The web interface (HTTPS with the manager's certificate) at this address.
    pub web: Option<SocketAddr>,
    /// Days of the members' statistics kept.
    pub stats_days: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Manager(#[from] super::core::ManagerError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("web interface: {0}")]
    Web(#[from] super::web::WebError),
    #[error("package updates: {0}")]
    Upgrade(#[from] upgrade::UpgradeError),
}

/// Binds, then serves until `stop`. `ready` receives the bound address.
pub async fn serve(
    o: Options,
    stop: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), ServeError> {
    let manager = Arc::new(Manager::open(&o.state_dir, &o.render_dir)?);
    manager.keep_stats_days(o.stats_days);
    let upgrades = Arc::new(Upgrades::open(&o.state_dir)?);
    let acceptor = TlsAcceptor::from(tls::server_config(&o.ca, &o.cert, &o.key)?);
    let listener = TcpListener::bind(o.listen)
        .await
        .map_err(|e| ServeError::Listen(o.listen, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServeError::Listen(o.listen, e))?;
    info!(address = %bound, head = *manager.watch_head().borrow(), "manager listening");
    if let Some(tx) = ready {
        let _ = tx.send(bound);
    }
    let tasks = TaskTracker::new();
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let name = tls::own_name(&o.cert)?;
        tasks.spawn(super::notify::run(
            manager.clone(),
            name,
            o.state_dir.clone(),
            stop.clone(),
            tx,
        ));
        let _ = rx.await;
    }
    if let Some((address, token)) = o.metrics {
        let metrics = TcpListener::bind(address)
            .await
            .map_err(|e| ServeError::Listen(address, e))?;
        info!(%address, "manager metrics endpoint: /metrics");
        tasks.spawn(serve_metrics(metrics, token, manager.clone(), stop.clone()));
    }
    if let Some(address) = o.web {
        let tls = super::web::tls_config(&o.cert, &o.key)?;
        let (listener, links) = super::web::bind(address).await?;
        let auth = links.auth.clone();
        manager.enable_web(Box::new(move |who| {
            links.login_link(who).map_err(|e| e.to_string())
        }));
        tasks.spawn(super::web::serve(
            listener,
            tls,
            manager.clone(),
            auth,
            stop.clone(),
        ));
    }
    {
        let (manager, stop) = (manager.clone(), stop.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => manager.expire(),
                }
            }
        });
    }
    tasks.spawn(upgrades.clone().drive(manager.clone(), stop.clone()));
    crate::notify::ready(&format!("manager listening on {bound}"));
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "manager accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, "too many manager connections; closing this one");
            continue;
        };
        let (manager, acceptor, stop) = (manager.clone(), acceptor.clone(), stop.clone());
        let upgrades = upgrades.clone();
        tasks.spawn(async move {
            let _permit = permit;
            connection(manager, upgrades, acceptor, tcp, peer, stop).await;
        });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn serve_metrics(
    listener: TcpListener,
    token: Option<Token>,
    manager: Arc<Manager>,
    stop: CancellationToken,
) {
    use axum::{extract::State, http::HeaderMap, response::IntoResponse as _};
    type Shared = (Arc<Manager>, Option<Token>);
    async fn metrics(
        State((m, token)): State<Shared>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        if token.as_ref().is_some_and(|t| !t.admits(&headers)) {
            return crate::control::http::unauthorized();
        }
        let text = super::metrics::render(&m.status(), super::store::now());
        (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::control::http::TEXT_FORMAT,
            )],
            text,
        )
            .into_response()
    }
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state((manager, token));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "manager metrics endpoint failed");
    }
}

async fn connection(
    manager: Arc<Manager>,
    upgrades: Arc<Upgrades>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // No certificate, or one of another cluster: the handshake fails here. Not in
            // the audit trail: anyone can cause this, and the trail is for who acted.
            warn!(%peer, error = %e, "manager: TLS handshake refused");
            return;
        }
        Err(_) => {
            warn!(%peer, "manager: TLS handshake timed out");
            return;
        }
    };
    let identity = match tls::peer_identity(stream.get_ref().1) {
        Ok(id) => id,
        Err(e) => {
            warn!(%peer, error = %e, "manager: client certificate refused");
            manager.audit_refusal(&format!("{peer}"), "connection", &e.to_string());
            return;
        }
    };
    match identity.role {
        Role::Operator => operator(&manager, &upgrades, &identity.name, stream, stop).await,
        Role::Member => member(manager, upgrades, identity.name, stream, stop).await,
        Role::Agent => agent(&manager, &identity.name, stream, stop).await,
        Role::Manager => {
            warn!(%peer, "manager: a manager certificate is not a client");
        }
    }
}

async fn operator<S: AsyncRead + AsyncWrite + Unpin>(
    manager: &Manager,
    upgrades: &Upgrades,
    name: &str,
    stream: S,
    stop: CancellationToken,
) {
    requests(stream, stop, |request| async move {
        match upgrades.operator(manager, name, &request) {
            Some(reply) => reply,
            None => manager.operator(name, request).await,
        }
    })
    .await;
}

/// Answers requests on `stream` one at a time with `answer` until the client goes, stays
/// idle for [`OPERATOR_IDLE`], or `stop`.
async fn requests<S, F, Fut>(stream: S, stop: CancellationToken, mut answer: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(OPERATOR_IDLE, wire::read::<Request, _>(&mut r)) => r,
        };
        let reply = match read {
            Err(_) | Ok(Err(WireError::Closed | WireError::Io(_))) => return,
            // A bad request gets a clear error and changes nothing; the connection stays
            // usable (the reader skipped the whole line).
            Ok(Err(e)) => Reply::error(e.to_string()),
            Ok(Ok(request)) => answer(request).await,
        };
        if wire::write(&mut w, &reply).await.is_err() {
            return;
        }
    }
}

async fn member<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    manager: Arc<Manager>,
    upgrades: Arc<Upgrades>,
    name: String,
    stream: S,
    stop: CancellationToken,
) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, wire::read::<Request, _>(&mut r)).await;
    let (applied, release) = match hello {
        Ok(Ok(Request::Hello { applied, release })) => (applied, release),
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            let _ = wire::write(
                &mut w,
                &ToMember::Refused {
                    error: "a member starts with hello".into(),
                },
            )
            .await;
            return;
        }
    };
    // Messages are read by a task of their own: a read cut off halfway by the select
    // below would lose the part of the line it had taken.
    let (in_tx, mut incoming) = mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let m = wire::read::<Request, _>(&mut r).await;
            let end = m.is_err();
            if in_tx.send(m).await.is_err() || end {
                break;
            }
        }
    });
    let (act_tx, mut actions) = mpsc::channel(16);
    let id = manager.connected(&name, applied, &release, act_tx);
    let mut orders = upgrades.attach(&name, id);
    // Where its events resume: after the last one stored, so none is lost or doubled.
    match manager.log_mark(&name) {
        Ok(mark) => {
            let resume = ToMember::Resume {
                boot: mark.boot,
                seq: mark.seq,
            };
            if let Err(e) = wire::write(&mut w, &resume).await {
                manager.disconnected(&name, id, &e.to_string());
                reader.abort();
                return;
            }
        }
        Err(e) => warn!(member = %name, error = %e, "event log unreadable: events not asked for"),
    }
    match manager.stats_mark(&name) {
        Ok(minute) => {
            if let Err(e) = wire::write(&mut w, &ToMember::ResumeStats { minute }).await {
                manager.disconnected(&name, id, &e.to_string());
                reader.abort();
                return;
            }
        }
        Err(e) => warn!(member = %name, error = %e, "statistics unreadable: not asked for"),
    }
    let mut head = manager.watch_head();
    let mut applied = applied;
    let mut in_flight: Option<u64> = None;
    let mut failed = 0;
    let why = loop {
        if in_flight.is_none() {
            let version = *head.borrow_and_update();
            if version > applied && version > failed {
                match manager.rendering(version, &name) {
                    Ok(Some(text)) => {
                        if let Err(e) =
                            wire::write(&mut w, &ToMember::Apply { version, text }).await
                        {
                            break e.to_string();
                        }
                        in_flight = Some(version);
                    }
                    Ok(None) => manager.note(
                        &name,
                        Some(format!("version {version} does not name this member")),
                    ),
                    Err(e) => manager.note(&name, Some(e)),
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break "manager stopping".to_owned(),
            r = head.changed() => if r.is_err() { break "manager stopping".to_owned() },
            a = actions.recv() => match a {
                Some((id, action)) => {
                    if let Err(e) = wire::write(&mut w, &ToMember::Act { id, action }).await {
                        break e.to_string();
                    }
                }
                None => break "replaced by a newer connection".to_owned(),
            },
            o = orders.recv() => match o {
                Some(order) => {
                    if let Err(e) = send_package(&mut w, &order).await {
                        upgrades.progress(&name, &order.sha256, wire::UpdateStage::Failed, &e);
                        break e;
                    }
                }
                None => break "replaced by a newer connection".to_owned(),
            },
            m = incoming.recv() => match m {
                Some(Ok(Request::Report { applied: now, tried, error, status })) => {
                    applied = now;
                    // Answered, or overtaken: the member already runs it or a newer one.
                    if in_flight.is_some_and(|v| v == tried || v <= now) {
                        in_flight = None;
                        if error.is_some() {
                            // Not sent again; the next version is.
                            failed = tried;
                        }
                    }
                    manager.report(&name, now, error, status);
                }
                Some(Ok(Request::Acted { id, ok, message })) => manager.acted(&name, id, ok, message),
                Some(Ok(Request::Events { boot, oldest, events })) => {
                    manager.store_events(&name, &boot, oldest, &events);
                }
                Some(Ok(Request::Stats { minutes })) => manager.store_stats(&name, &minutes),
                Some(Ok(Request::Update { sha256, stage, message })) => {
                    upgrades.progress(&name, &sha256, stage, &message);
                }
                Some(Ok(_)) => {
                    let error = "an operator's request on a member's connection".to_owned();
                    let _ = wire::write(&mut w, &ToMember::Refused { error: error.clone() }).await;
                    break error;
                }
                Some(Err(e)) => {
                    if !matches!(e, WireError::Closed) {
                        let _ = wire::write(&mut w, &ToMember::Refused { error: e.to_string() }).await;
                    }
                    break e.to_string();
                }
                None => break "closed".to_owned(),
            },
        }
    };
    reader.abort();
    upgrades.detach(&name, id);
    manager.disconnected(&name, id, &why);
}

/// Streams a package to a member in chunks, then asks it to install it.
async fn send_package<W: AsyncWrite + Unpin>(
    w: &mut W,
    order: &upgrade::Order,
) -> Result<(), String> {
    use base64::Engine as _;
    use tokio::io::AsyncReadExt as _;
    let path = order.path.display().to_string();
    let mut file = tokio::fs::File::open(&order.path)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let mut buf = vec![0u8; upgrade::CHUNK];
    let mut offset = 0u64;
    loop {
        // Whole chunks (a short read is topped up) so the member sees the sizes it expects.
        let mut n = 0;
        while n < buf.len() {
            let got = file
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            break;
        }
        let chunk = ToMember::PackageChunk {
            sha256: order.sha256.clone(),
            total: order.size,
            offset,
            data: base64::engine::general_purpose::STANDARD.encode(&buf[..n]),
        };
        wire::write(w, &chunk).await.map_err(|e| e.to_string())?;
        offset += n as u64;
    }
    let install = ToMember::Install {
        version: order.version.clone(),
        sha256: order.sha256.clone(),
        rollback: order.rollback,
    };
    wire::write(w, &install).await.map_err(|e| e.to_string())
}

/// What a rollout needs of the manager.
impl upgrade::Cluster for Manager {
    fn members(&self) -> Vec<upgrade::MemberView> {
        self.status()
            .members
            .into_iter()
            .filter(|m| m.configured)
            .map(|m| upgrade::MemberView {
                release: m
                    .frontend
                    .as_ref()
                    .map(|f| f.release.clone())
                    .unwrap_or_default(),
                ready: m.frontend.as_ref().is_some_and(|f| f.ready),
                name: m.name,
                connected: m.connected,
            })
            .collect()
    }

    fn audit(&self, who: &str, action: &str, what: &str, error: Option<&str>) {
        Manager::audit(self, who, action, what, error);
    }
}

/// A back-end host's agent: it asks where its MTA log lines resume and ships them, one
/// batch a request; nothing else is taken from it. Its certificate name is the host.
async fn agent<S: AsyncRead + AsyncWrite + Unpin>(
    manager: &Manager,
    name: &str,
    stream: S,
    stop: CancellationToken,
) {
    requests(stream, stop, |request| {
        std::future::ready(manager.agent(name, request))
    })
    .await;
}

#[cfg(test)]
mod tests;
