//! Accept loops. Each service has a connection limit (a semaphore) and a per-client-address
//! limit: a connection beyond either gets the shed reply instead of a session, so a flood
//! cannot exhaust the proxy's memory.
//!
//! Two tokens order a graceful stop: `stop` ends the accept loops, `abort` ends the
//! sessions still running once the drain deadline has passed.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{net::TcpListener, net::TcpStream, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, debug, debug_span, info, warn};

use super::{limits::PerClient, shed};
use crate::{
    config::{Protocol, ServiceTls},
    ha::hooks::Hooks,
    service::ServiceContext,
    smtp::session::Session,
    stream::Conn,
};

/// Which answer a listener gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Serve,
    /// The kernel's priority class: served like `Serve`, and when the service's connection
    /// limit is reached it may still use a reserve of a tenth of it.
    Priority,
    Shed,
}

/// What a service's new connections get; a reload swaps in a new one (see [`Current`]),
/// and each session keeps the one it was accepted with.
#[derive(Clone)]
pub struct Context {
    pub env: Arc<ServiceContext>,
    pub limit: Arc<Semaphore>,
    /// The priority class's reserve beyond `limit`.
    pub reserve: Arc<Semaphore>,
    pub per_client: Arc<PerClient>,
    pub abort: Abort,
    /// Asks every session to end politely at its next boundary (the stop has begun).
    pub closing: CancellationToken,
    pub sessions: TaskTracker,
    /// Drain gate and health reporting shared with the HA side.
    pub ha: Hooks,
    /// `frontend.serve_loopback_clients`: loopback clients get sessions.
    pub serve_loopback: bool,
}

/// How a stop ends the sessions still running at its deadlines: `sessions` ends them at
/// the daemon's drain deadline, except an SMTP session waiting for a back-end's reply to
/// an end of data, which `commits` ends at the configured drain deadline (RFC 5321
/// 4.5.3.2.6 gives that reply 10 minutes): cut, its client would never learn that the
/// back-end took the message and would send it again.
#[derive(Clone, Default)]
pub struct Abort {
    pub sessions: CancellationToken,
    pub commits: CancellationToken,
}

/// A short id for one session, carried in every log line and to the back-ends.
pub fn session_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    format!("{start:x}.{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A service's context in force: read at each accept.
pub type Current = Arc<arc_swap::ArcSwap<Context>>;

/// Accepts until `stop` fires (the front-end stops, or a reload retires the listener).
/// The loop counts as running for HA tracking from the moment it is created, not first
/// polled, so the count is right as soon as it is spawned.
pub fn run(
    listener: TcpListener,
    role: Role,
    current: Current,
    stop: CancellationToken,
) -> impl Future<Output = ()> {
    let alive = current.load().ha.health.listener_alive();
    async move {
        let _alive = alive;
        accept_loop(listener, role, current, stop).await;
    }
}

async fn accept_loop(listener: TcpListener, role: Role, current: Current, stop: CancellationToken) {
    // Proves to the watchdog that this loop runs, also while no client connects.
    let mut pulse = crate::notify::Pulse::new("accept loop");
    let nodelay = Nodelay::on_listener(&listener);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            () = pulse.beat() => continue,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => match accept_error(&e) {
                    AcceptError::OneConnection => continue,
                    AcceptError::Exhausted => {
                        warn!(service = %current.load().env.service.name, error = %e, "accept failed, out of resources; pausing");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                    AcceptError::ListenerDead => {
                        // The loop ends, so VRRP tracking sees a listener gone and the
                        // front-end hands its addresses to a peer that can serve them.
                        tracing::error!(service = %current.load().env.service.name, error = %e, "listener failed; it takes no more connections");
                        return;
                    }
                },
            },
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let ctx = current.load_full();
        ctx.sessions
            .clone()
            .spawn(serve(stream, peer, role, nodelay, ctx));
    }
}

/// Whether an accepted connection already has TCP_NODELAY (replies and commands are
/// small writes that must not wait for the previous one's ACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nodelay {
    Inherited,
    PerConnection,
}

impl Nodelay {
    /// Set once on the listener, TCP_NODELAY is inherited by every connection it accepts
    /// (Linux copies the listener's TCP options into the new socket): a system call per
    /// connection saved. Where that fails, each connection gets it after accept.
    fn on_listener(listener: &TcpListener) -> Nodelay {
        match socket2::SockRef::from(listener).set_tcp_nodelay(true) {
            Ok(()) => Nodelay::Inherited,
            Err(_) => Nodelay::PerConnection,
        }
    }
}

enum AcceptError {
    /// Only the connection being accepted failed (it was reset before accept, say).
    OneConnection,
    /// Out of descriptors or memory: wait a little instead of spinning.
    Exhausted,
    /// The listening socket itself is gone (closed, destroyed with `ss -K`).
    ListenerDead,
}

fn accept_error(e: &std::io::Error) -> AcceptError {
    use nix::libc;
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptError::Exhausted,
        Some(
            libc::ECONNABORTED
            | libc::EPROTO
            | libc::EPERM
            | libc::EINTR
            | libc::EAGAIN
            | libc::ETIMEDOUT,
        ) => AcceptError::OneConnection,
        _ => AcceptError::ListenerDead,
    }
}

/// One connection, from the limits to the end of its session.
///
/// Steered connections carry the client network's addresses. One from this host's
/// loopback (a local user on the listener's own port, or on 127.0.0.1 of a service without
/// VIPs) would be passed to back-ends as a trusted local address, so it gets no session.
fn from_client_network(peer: SocketAddr, local: SocketAddr) -> bool {
    !(peer.ip().to_canonical().is_loopback() || local.ip().to_canonical().is_loopback())
}

/// Not an `async fn`, which would keep its arguments twice in the future (as arguments and
/// as the locals they are moved into) for as long as the session lasts.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    nodelay: Nodelay,
    ctx: Arc<Context>,
) -> impl Future<Output = ()> {
    async move {
        let svc = Arc::clone(&ctx.env.service);
        // With steering, the local address is the VIP the client connected to.
        let local = stream
            .local_addr()
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
            .unwrap_or(peer);
        if nodelay == Nodelay::PerConnection {
            let _ = stream.set_nodelay(true);
        }
        if !ctx.serve_loopback && !from_client_network(peer, local) {
            info!(service = %svc.name, %peer, %local, "connection from this host's loopback refused");
            return shed::refuse_local(stream, svc.protocol, &svc.hostname).await;
        }
        if role == Role::Shed {
            return shed::answer(stream, svc.protocol, &svc.hostname).await;
        }
        // An address being handed over to another front-end takes no new sessions: they get
        // the shed reply and retry, reaching the new owner.
        let Some(admitted) = ctx.ha.gate.admit(local.ip()) else {
            debug!(service = %svc.name, %peer, "address draining for handoff; shedding");
            return shed::answer(stream, svc.protocol, &svc.hostname).await;
        };
        let permit = ctx
            .limit
            .clone()
            .try_acquire_owned()
            .or_else(|e| match role {
                Role::Priority => ctx.reserve.clone().try_acquire_owned(),
                _ => Err(e),
            });
        let counters = ctx.env.counters();
        let Ok(_permit) = permit else {
            if let Some(c) = counters {
                c.deflected(crate::stats::Reason::Limit);
            }
            info!(service = %svc.name, %peer, "connection limit reached; shedding");
            return shed::answer(stream, svc.protocol, &svc.hostname).await;
        };
        let Some(_slot) =
            ctx.per_client
                .acquire(peer.ip(), svc.client_prefix_v6, svc.max_per_client)
        else {
            if let Some(c) = counters {
                c.deflected(crate::stats::Reason::Limit);
            }
            info!(service = %svc.name, %peer, "per-client limit reached; shedding");
            return shed::answer(stream, svc.protocol, &svc.hostname).await;
        };
        if let Some(c) = counters {
            c.session();
        }
        // The session ends politely at its next boundary when the front-end stops or the
        // address starts draining for a handoff; it is cut at the deadlines after that.
        let closing = ctx.closing.child_token();
        let drained = admitted.closing();
        let closing_watch = {
            let closing = closing.clone();
            async move {
                drained.cancelled().await;
                closing.cancel();
                std::future::pending::<()>().await
            }
        };
        let id = session_id();
        let committing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A span is entered and left at every poll of the session: it exists only when
        // debug lines are wanted (at other levels `debug_span!` gives a disabled span,
        // whose enter does nothing). Warnings and errors name the session themselves
        // (`session = id`), so they carry the id at any level.
        let span = debug_span!("session", id = %id, service = %svc.name, %peer);
        let session = async {
            debug!(session = %id, "session start");
            let conn = if svc.tls == ServiceTls::Implicit {
                let Some(tls) = &ctx.env.tls else { return };
                // Boxed: a handshake's state is over a kilobyte and is gone once it is done.
                match Box::pin(tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    tls.acceptor().accept(stream),
                ))
                .await
                {
                    Ok(Ok(s)) => Conn::Server(Box::new(s)),
                    Ok(Err(e)) => return debug!(session = %id, error = %e, "TLS handshake failed"),
                    Err(_) => return debug!(session = %id, "TLS handshake timed out"),
                }
            } else {
                Conn::Plain(stream)
            };
            // Each protocol's session is boxed, so that a session holds its own protocol's
            // state and not room for the larger of the two.
            let result = match svc.protocol {
                Protocol::Smtp => Box::pin(
                    Session::new(conn, &ctx.env, peer, local, id.clone())
                        .closing_on(closing.clone())
                        .committing_on(Arc::clone(&committing))
                        .run(),
                )
                .await
                .map_err(|e| e.to_string()),
                Protocol::Pop3 => Box::pin(
                    crate::pop3::session::Session::new(conn, &ctx.env, peer, local, id.clone())
                        .closing_on(closing.clone())
                        .run(),
                )
                .await
                .map_err(|e| e.to_string()),
            };
            match result {
                Ok(()) => debug!(session = %id, "session end"),
                Err(e) => debug!(session = %id, error = %e, "session ended with an error"),
            }
        }
        .instrument(span);
        let mut session = std::pin::pin!(session);
        tokio::select! {
            _ = &mut session => {}
            _ = closing_watch => {}
            _ = ctx.abort.sessions.cancelled() => {
                if committing.load(std::sync::atomic::Ordering::Acquire) {
                    tokio::select! {
                        _ = &mut session => {}
                        _ = ctx.abort.commits.cancelled() => {}
                    }
                }
            }
            _ = admitted.ended() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_inherit_tcp_nodelay_from_the_listener() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let listener = TcpListener::bind(addr).await.unwrap();
            assert_eq!(Nodelay::on_listener(&listener), Nodelay::Inherited);
            let client = TcpStream::connect(listener.local_addr().unwrap());
            let (accepted, _) = tokio::join!(listener.accept(), client);
            let (accepted, _) = accepted.unwrap();
            assert!(
                accepted.nodelay().unwrap(),
                "{addr}: accepted without TCP_NODELAY"
            );
        }
        // Without it on the listener, a connection has none: the check above means it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, _) = tokio::join!(listener.accept(), client);
        assert!(!accepted.unwrap().0.nodelay().unwrap());
    }

    #[test]
    fn only_steered_client_connections_get_a_session() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(from_client_network(
            a("198.18.0.100:40000"),
            a("198.18.0.25:25")
        ));
        assert!(from_client_network(
            a("[2001:db8::5]:40000"),
            a("[2001:db8::25]:25")
        ));
        // A local user on the listener's own port, or on 127.0.0.1 of a service without
        // VIPs: its address would reach back-ends as a trusted local one.
        assert!(!from_client_network(
            a("127.0.0.1:40000"),
            a("127.0.0.1:35000")
        ));
        assert!(!from_client_network(
            a("198.18.0.100:40000"),
            a("127.0.0.1:25")
        ));
        assert!(!from_client_network(a("[::1]:40000"), a("[::1]:35000")));
        assert!(!from_client_network(
            a("[::ffff:127.0.0.1]:4"),
            a("[::ffff:127.0.0.1]:25")
        ));
    }
}
