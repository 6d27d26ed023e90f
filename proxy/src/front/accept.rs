//! Accept loops. Each service has a connection limit (a semaphore): a connection beyond it
//! gets the shed reply instead of a session, so a flood cannot exhaust the proxy's memory.
//!
//! Two tokens order a graceful stop: `stop` ends the accept loops, `abort` ends the
//! sessions still running once the drain deadline has passed.

use std::sync::Arc;

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{greeting, shed};
use crate::{config::Service, ha};

/// Which answer a listener gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Serve,
    Shed,
}

#[derive(Clone)]
pub struct Context {
    pub service: Arc<Service>,
    pub limit: Arc<Semaphore>,
    pub stop: CancellationToken,
    pub abort: CancellationToken,
    pub sessions: TaskTracker,
    /// Drain gate and health reporting shared with the HA side.
    pub ha: ha::Hooks,
}

/// Accepts until `ctx.stop` fires. The loop counts as running for HA tracking from the
/// moment it is created, not first polled, so the count is right as soon as it is spawned.
pub fn run(listener: TcpListener, role: Role, ctx: Context) -> impl Future<Output = ()> {
    let alive = ctx.ha.health.listener_alive();
    async move {
        let _alive = alive;
        accept_loop(listener, role, ctx).await;
    }
}

async fn accept_loop(listener: TcpListener, role: Role, ctx: Context) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(service = %ctx.service.name, error = %e, "accept failed");
                    continue;
                }
            },
        };
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let svc = ctx.service.clone();
        // With steering, the local address is the VIP the client dialled; one being handed
        // over to another front-end takes no new sessions (they get the shed reply).
        let local = stream.local_addr().ok().map(|a| a.ip().to_canonical());
        let admitted = local.and_then(|a| ctx.ha.gate.admit(a));
        let draining = local.is_some() && admitted.is_none();
        let permit = match role {
            Role::Serve if !draining => ctx.limit.clone().try_acquire_owned().ok(),
            _ => None,
        };
        debug!(service = %svc.name, %peer, ?role, "connection");
        let abort = ctx.abort.clone();
        ctx.sessions.spawn(async move {
            match (role, permit) {
                (Role::Serve, Some(_permit)) => {
                    let session =
                        greeting::session(stream, svc.protocol, &svc.hostname, greeting::IDLE_TIMEOUT);
                    tokio::select! {
                        r = session => if let Err(e) = r {
                            debug!(service = %svc.name, %peer, error = %e, "session ended with an error");
                        },
                        _ = abort.cancelled() => {}
                        _ = async { match &admitted { Some(a) => a.ended().await, None => std::future::pending().await } } => {}
                    }
                }
                (Role::Serve, None) if draining => {
                    debug!(service = %svc.name, %peer, "address draining for handoff; shedding");
                    shed::answer(stream, svc.protocol, &svc.hostname).await;
                }
                (Role::Serve, None) => {
                    info!(service = %svc.name, %peer, "connection limit reached; shedding");
                    shed::answer(stream, svc.protocol, &svc.hostname).await;
                }
                (Role::Shed, _) => shed::answer(stream, svc.protocol, &svc.hostname).await,
            }
        });
    }
}
