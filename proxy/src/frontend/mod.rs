//! One front-end, built from its configuration and a kernel side: the services' contexts,
//! the pools and their board, the listeners and accept loops, health checks and the load
//! writer, VRRP, and the orderly stop. What the kernel does (steering connections to the
//! listeners, dropping floods, keeping the load maps) comes through [`KernelSide`], so the
//! same front-end runs on the eBPF data path ([`Kernel`]) or, for trials and tests, on
//! plain sockets without privileges ([`UserSpace`]).
//!
//! [`Frontend::open`] does everything that may need privileges (maps, listeners, the
//! private key) and runs before any runtime exists; [`Frontend::serve`] runs it until
//! told to stop, taking [`Command`]s (the daemon turns signals into them).

mod apply;
mod kernel;
mod user_space;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

pub use kernel::{Kernel, KernelError, KernelSide};
pub use user_space::UserSpace;

use crate::{
    backend::{PoolSet, groups::Groups},
    config::{Config, ConfigError},
    front::accept::{self, Context, Role},
    ha,
    health::board::Board,
    load_writer::{self, LoadMaps},
    service::ServiceContext,
    supervise::Supervisor,
    tls::ServerTls,
};

/// How long sessions may run on after a stop was asked for.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// What a running front-end can be told.
#[derive(Debug)]
pub enum Command {
    /// Re-read the configuration file and apply what can change while running; the
    /// outcome goes to `done` when one is given.
    Reload {
        done: Option<oneshot::Sender<Result<(), ConfigError>>>,
    },
    /// Stop in order: hand addresses over, stop accepting, drain, end the rest.
    Stop,
}

/// Why a front-end could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("back-end pools: {0}")]
    Pools(crate::tls::TlsError),
    #[error("TLS: {0}")]
    Tls(crate::tls::TlsError),
    #[error("service {service}: {source}")]
    Service {
        service: String,
        source: crate::route::RouteError,
    },
}

/// A front-end opened and ready to serve.
pub struct Frontend {
    cfg: Config,
    kernel: Box<dyn KernelSide>,
    maps: Arc<dyn LoadMaps>,
    pools: Arc<PoolSet>,
    board: Arc<Board>,
    envs: Vec<Arc<ServiceContext>>,
    hooks: ha::Hooks,
    listeners: Vec<(std::net::TcpListener, Role, Context)>,
    attached: Vec<String>,
    stop: CancellationToken,
    abort: accept::Abort,
    closing: CancellationToken,
    sessions: TaskTracker,
}

impl Frontend {
    /// Fills the kernel's tables, reads the certificate, builds every service and opens its
    /// listeners, and attaches the kernel side. Call before the runtime starts when the
    /// process will drop privileges after this.
    pub fn open(cfg: Config, mut kernel: Box<dyn KernelSide>) -> Result<Frontend, OpenError> {
        kernel.apply(&cfg)?;
        let maps = kernel.loads();
        let stop = CancellationToken::new();
        let abort = accept::Abort::default();
        let closing = CancellationToken::new();
        let sessions = TaskTracker::new();
        let hooks = ha::Hooks::default();
        let board = Board::new(&cfg);
        let view = maps.view().map_err(KernelError::from)?;
        let pools =
            Arc::new(PoolSet::new(&cfg, Arc::clone(&board), view).map_err(OpenError::Pools)?);
        let groups = Arc::new(Groups::new(cfg.groups.clone()));
        // Read now: the key may be readable by root only.
        let tls = match &cfg.tls {
            Some(files) => Some(Arc::new(ServerTls::new(files).map_err(OpenError::Tls)?)),
            None => None,
        };
        let mut envs = Vec::new();
        let mut listeners = Vec::new();
        for service in &cfg.services {
            let env = Arc::new(
                ServiceContext::new(
                    service,
                    Arc::clone(&pools),
                    tls.clone(),
                    Arc::clone(&groups),
                )
                .map_err(|source| OpenError::Service {
                    service: service.name.clone(),
                    source,
                })?,
            );
            envs.push(Arc::clone(&env));
            let ctx = Context {
                env,
                limit: Arc::new(Semaphore::new(service.max_connections as usize)),
                reserve: Arc::new(Semaphore::new(
                    (service.max_connections as usize / 10).max(1),
                )),
                per_client: Arc::default(),
                stop: stop.clone(),
                abort: abort.clone(),
                closing: closing.clone(),
                sessions: sessions.clone(),
                ha: hooks.clone(),
                serve_loopback: cfg.frontend.serve_loopback_clients,
            };
            for (socket, role) in kernel.listen(service)? {
                listeners.push((socket, role, ctx.clone()));
            }
        }
        // The board's first records, where the kernel side has none yet (the maps keep
        // records across restarts; memory starts empty): routing need not wait for the
        // load writer's first round.
        let mut tables = maps.tables().map_err(KernelError::from)?;
        let now = load_writer::monotonic_ns();
        for slot in board.slots() {
            let id = slot.backend.id;
            if tables.backend(id).is_none()
                && let Some(record) = board.record_for(id, now)
            {
                tables.set_backend(id, record).map_err(KernelError::from)?;
            }
        }
        let attached = kernel.attach(&cfg)?;
        Ok(Frontend {
            cfg,
            kernel,
            maps,
            pools,
            board,
            envs,
            hooks,
            listeners,
            attached,
            stop,
            abort,
            closing,
            sessions,
        })
    }

    /// Where each service's sessions are accepted, by service name. With the kernel side
    /// these are the loopback sockets connections are steered to, not the addresses
    /// clients dial.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter(|(_, role, _)| *role == Role::Serve)
            .filter_map(|(l, _, ctx)| Some((ctx.env.service.name.clone(), l.local_addr().ok()?)))
            .collect()
    }

    /// Serves until a [`Command::Stop`] arrives or the sender is dropped, then stops in
    /// order: the virtual addresses are handed over, the kernel side detached (no new
    /// connections), idle sessions told goodbye, the rest drained up to the deadlines.
    pub async fn serve(self, mut commands: mpsc::Receiver<Command>) -> anyhow::Result<()> {
        let Frontend {
            cfg,
            mut kernel,
            maps,
            pools,
            board,
            envs,
            hooks,
            listeners,
            attached,
            stop,
            abort,
            closing,
            sessions,
        } = self;
        warn_unreadable(&cfg);
        let accepting = TaskTracker::new();
        for (socket, role, ctx) in listeners {
            let socket = tokio::net::TcpListener::from_std(socket)?;
            accepting.spawn(accept::run(socket, role, ctx));
        }
        for service in &cfg.services {
            info!(service = %service.name, protocol = service.protocol.as_str(), port = service.port, "listening");
        }
        hooks.health.set_datapath_attached(true);
        // Health checks, agents and the load writer run until the stop, restarted if they
        // die; sessions stop last.
        let background = TaskTracker::new();
        let supervisor = Supervisor::new(background.clone(), stop.clone(), hooks.tasks.clone());
        load_writer::spawn(
            &pools,
            &board,
            envs,
            Arc::clone(&maps),
            hooks.health.clone(),
            &stop,
            &supervisor,
        );
        // A summary for the operator on stdout; logs go to stderr.
        let services: Vec<String> = cfg
            .services
            .iter()
            .map(|s| format!("{} ({} port {})", s.name, s.protocol.as_str(), s.port))
            .collect();
        for line in &attached {
            println!("{line}");
        }
        println!("serving: {}", services.join(", "));
        // Virtual routers last: a front-end claims addresses only once it can serve them.
        let ha = ha::spawn(&cfg, hooks.clone()).await?;
        info!(frontend = %cfg.frontend.name, "robustifier ready");

        // A stop, or the sender gone, ends the loop.
        while let Some(Command::Reload { done }) = commands.recv().await {
            let outcome = apply::reload(&cfg, &pools, maps.as_ref(), &stop, &supervisor);
            if let Some(done) = done {
                let _ = done.send(outcome);
            }
        }
        // Hand the virtual addresses over first (drain, then priority 0), while the data
        // path still serves the sessions finishing on them.
        ha.shutdown().await;
        kernel.detach();
        stop.cancel();
        // Idle sessions say goodbye now (421 / -ERR); busy ones at their next boundary.
        closing.cancel();
        accepting.close();
        accepting.wait().await;
        background.close();
        background.wait().await;
        sessions.close();
        if tokio::time::timeout(DRAIN_DEADLINE, sessions.wait())
            .await
            .is_err()
        {
            info!(
                left = sessions.len(),
                "drain deadline passed; ending remaining sessions"
            );
            abort.sessions.cancel();
            // Sessions waiting for a back-end's reply to an end of data get until the
            // configured drain deadline (at most RFC 5321's 10 minutes for that reply).
            let commits = cfg
                .ha
                .drain_deadline
                .min(crate::backend::smtp::DATA_END_TIMEOUT)
                .saturating_sub(DRAIN_DEADLINE);
            if tokio::time::timeout(commits, sessions.wait())
                .await
                .is_err()
            {
                info!(
                    left = sessions.len(),
                    "ending sessions still waiting for a reply to their end of data"
                );
                abort.commits.cancel();
                sessions.wait().await;
            }
        }
        info!("stopped");
        Ok(())
    }
}

/// Names, once at the start, the files the front-end re-reads later (on reload, or when
/// they change) that it cannot read: a reload would be refused, or a new certificate or
/// routing map ignored, long after the start that read them as root.
fn warn_unreadable(cfg: &Config) {
    let mut files = vec![cfg.file.clone()];
    if let Some(tls) = &cfg.tls {
        files.extend([tls.certificate.clone(), tls.key.clone()]);
    }
    files.extend(cfg.services.iter().filter_map(|s| s.routes.clone()));
    for file in files {
        if let Err(e) = std::fs::File::open(&file) {
            warn!(file = %file.display(), error = %e, "not readable by the front-end's user: reloads that need it will fail (give its group read access)");
        }
    }
}
