//! A reload: the configuration file read again and applied while the front-end runs.
//!
//! Everything that can fail is done first, into a plan that nothing uses yet: the file is
//! validated, ids are kept stable, pools (with their TLS connectors), the certificate,
//! every service's context (with its routing map), the listeners of new services and the
//! virtual routers' plan ([`Ha::plan`]) are built. A failure there drops the plan and
//! changes nothing. Then the plan is put in force: the kernel's tables updated in place,
//! the board reconciled, pools and contexts swapped, new listeners accepting, retired ones
//! closed, and the virtual routers changed in place, added or resigned
//! ([`Ha::reconfigure`]). Sessions keep the context they started with; new connections get
//! the new one.

use std::{collections::HashSet, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::{
    Frontend, Ids, KernelError, OpenError, ServiceRun, hold, reserve_for, service_contexts,
};
use crate::{
    backend::PoolSet,
    config::{self, Config, ConfigError, Service},
    events::Kind,
    front::accept::{Context, Role},
    ha::{self, Ha},
    health, load_writer,
    supervise::Supervisor,
    tls::ServerTls,
};

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The configuration version now in force.
    pub version: String,
    /// One line naming what changed.
    pub summary: String,
    /// Changes this process applies only at its next start.
    pub restart_needed: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ids(#[from] super::IdsTaken),
    #[error(transparent)]
    Build(#[from] OpenError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Ha(#[from] ha::HaError),
}

/// A service of the new configuration, ready to be put in force.
struct Planned {
    service: Service,
    env: Arc<crate::service::ServiceContext>,
    /// Listeners opened for it (a new service, or one whose listeners no longer fit).
    opened: Option<Vec<(std::net::TcpListener, Role)>>,
}

impl Frontend {
    /// Re-reads the configuration file (or reads `file`, which becomes the configuration
    /// file from then on) and applies it whole, or not at all.
    pub(super) async fn reload(
        &mut self,
        file: Option<PathBuf>,
        accepting: &TaskTracker,
        background: &Supervisor,
        ha: &mut Ha,
    ) -> Result<Reloaded, ReloadError> {
        let started = std::time::Instant::now();
        let outcome = self.try_reload(file, accepting, background, ha).await;
        // How long the runtime thread was busy with it: sessions on that thread wait meanwhile.
        let took_us = started.elapsed().as_micros();
        match &outcome {
            Ok(r) => {
                info!(version = %r.version, changes = %r.summary, took_us, "reload: configuration applied");
                for what in &r.restart_needed {
                    warn!(change = %what, "reload: takes a restart");
                }
                self.shared.hooks.events.emit(Kind::ReloadApplied {
                    version: r.version.clone(),
                    summary: r.summary.clone(),
                });
                self.certificates
                    .set(self.cfg.tls.as_ref().map(|t| t.certificate.clone()));
            }
            Err(e) => {
                error!(error = %e, "reload: refused; nothing changed");
                self.shared.hooks.events.emit(Kind::ReloadRefused {
                    error: e.to_string(),
                });
            }
        }
        outcome
    }

    async fn try_reload(
        &mut self,
        file: Option<PathBuf>,
        accepting: &TaskTracker,
        background: &Supervisor,
        ha: &mut Ha,
    ) -> Result<Reloaded, ReloadError> {
        let mut new = Config::load(file.as_ref().unwrap_or(&self.cfg.file))?;
        let mut ids = Ids::of(&self.cfg);
        ids.retired_pools = self
            .board
            .slots()
            .iter()
            .filter(|s| !ids.pools.values().any(|id| *id == s.pool_id))
            .map(|s| s.pool_id)
            .collect();
        ids.give(&mut new)?;
        let summary = config::diff::summary(&config::diff::changes(&self.cfg, &new));
        let restart_needed = config::diff::restart_needed(&self.cfg, &new);

        // The plan: everything that can fail, before anything changes.
        let pools = Arc::new(
            PoolSet::new(&new, Arc::clone(&self.board), Arc::clone(&self.view))
                .map_err(OpenError::Pools)?
                .keeping_idle(&self.pools.load()),
        );
        let tls = match (&new.tls, &self.cfg.tls) {
            // The same files: the running store, which follows their changes itself.
            (Some(files), Some(old)) if files == old => self.tls.clone(),
            (Some(files), _) => Some(Arc::new(ServerTls::new(files).map_err(OpenError::Tls)?)),
            (None, _) => None,
        };
        let resolvers = super::directories::resolvers(&new, &self.directories)?;
        let envs = service_contexts(
            &new,
            &pools,
            &tls,
            &self.shared.hooks.events,
            &self.stats,
            &self.isolated,
            &resolvers,
        )?;
        let mut planned = Vec::new();
        for (service, env) in new.services.iter().zip(&envs) {
            let fits = self
                .services
                .iter()
                .find(|r| r.service.name == service.name)
                .is_some_and(|r| self.kernel.listeners_fit(&r.service, service));
            let opened = if fits {
                None
            } else {
                Some(self.kernel.listen(service)?)
            };
            planned.push(Planned {
                service: service.clone(),
                env: Arc::clone(env),
                opened,
            });
        }
        // The virtual routers' plan (raw sockets, interfaces, a new control socket) before
        // the kernel's tables change: a refused router leaves them as they are.
        let ha_plan = ha.plan(&new).await?;
        let fresh: HashSet<u32> = new
            .services
            .iter()
            .filter(|s| !self.cfg.services.iter().any(|r| r.name == s.name))
            .map(|s| s.id)
            .collect();
        if let Err(e) = self.kernel.apply_live(&new, &fresh) {
            // Put back what the running configuration wrote; the kernel may have taken
            // part of the new one.
            if let Err(again) = self.kernel.apply_live(&self.cfg, &HashSet::new()) {
                error!(error = %again, "reload: restoring the kernel's tables failed too");
            }
            return Err(e.into());
        }

        // In force from here; nothing below fails.
        let done = self.board.reconcile(&new);
        let now = load_writer::monotonic_ns();
        match self.maps.tables() {
            Ok(mut tables) => {
                for slot in done.added.iter().chain(&done.changed).chain(&done.updated) {
                    load_writer::publish(tables.as_mut(), &self.board, slot, now);
                }
            }
            Err(e) => {
                error!(error = %e, "reload: cannot open the load maps; the writer's next round publishes the records")
            }
        }
        // Kept SMTP legs of back-ends removed, readmitted or changed are closed.
        for slot in done.changed.iter().chain(&done.updated) {
            pools.idle.close_backend(slot.id);
        }
        self.pools.store(Arc::clone(&pools));
        self.directories = resolvers;
        for slot in &done.added {
            health::spawn_checks(
                &self.pools,
                &self.board,
                slot,
                &self.shared.stop,
                background,
            );
        }
        if !done.overflow.is_empty() {
            warn!(backends = ?done.overflow, "reload: the load map is full ({} ids; removed back-ends keep theirs): these back-ends take a restart to be used", robustifier_common::MAX_BACKENDS);
        }
        let mut running: Vec<ServiceRun> = std::mem::take(&mut self.services);
        let mut next = Vec::new();
        for plan in planned {
            let old = running
                .iter()
                .position(|r| r.service.name == plan.service.name)
                .map(|i| running.swap_remove(i));
            let mut run = match old {
                Some(mut run) => {
                    let ctx = self.resized(&run.current.load(), plan.env);
                    run.current.store(Arc::new(ctx));
                    run.service = plan.service;
                    run
                }
                None => {
                    info!(service = %plan.service.name, port = plan.service.port, "reload: service added");
                    ServiceRun {
                        current: Arc::new(arc_swap::ArcSwap::from_pointee(
                            self.shared.context(&new, plan.env),
                        )),
                        service: plan.service,
                        listening: self.shared.stop.child_token(),
                        opened: Vec::new(),
                        held: Vec::new(),
                    }
                }
            };
            if let Some(opened) = plan.opened {
                // New listeners first, then the old ones retire: no moment without one.
                let retiring =
                    std::mem::replace(&mut run.listening, self.shared.stop.child_token());
                run.held = hold(&opened);
                run.opened = opened;
                if let Err(e) = run.start_accepting(accepting) {
                    error!(service = %run.service.name, error = %e, "reload: listener not taken up by the runtime");
                }
                retiring.cancel();
            }
            next.push(run);
        }
        for gone in running {
            info!(service = %gone.service.name, "reload: service removed; its sessions finish");
            gone.listening.cancel();
        }
        self.services = next;
        self.envs.store(Arc::new(envs));
        self.tls = tls;
        // Virtual routers last, as at the start: an added router claims its addresses
        // only once the services above serve them.
        ha.reconfigure(ha_plan);
        self.cfg = new;
        Ok(Reloaded {
            version: self.cfg.version.clone(),
            summary,
            restart_needed,
        })
    }

    /// The context for a running service's new connections: the new settings, the same
    /// limit semaphores and per-client table, resized to the new connection limit.
    fn resized(&self, old: &Context, env: Arc<crate::service::ServiceContext>) -> Context {
        let (was, now) = (
            old.env.service.max_connections as usize,
            env.service.max_connections as usize,
        );
        resize(&old.limit, was, now, &self.shared);
        resize(
            &old.reserve,
            reserve_for(was),
            reserve_for(now),
            &self.shared,
        );
        Context { env, ..old.clone() }
    }
}

/// Moves a semaphore's size from `was` to `now` permits. Growing is immediate; shrinking
/// takes the free permits now and the rest as sessions end (a task holds them for good).
fn resize(sem: &Arc<Semaphore>, was: usize, now: usize, shared: &super::Shared) {
    if now >= was {
        sem.add_permits(now - was);
        return;
    }
    let cut = was - now;
    let taken = sem.forget_permits(cut);
    let rest = cut - taken;
    if rest == 0 {
        return;
    }
    let (sem, stop) = (Arc::clone(sem), shared.stop.clone());
    let Ok(rest) = u32::try_from(rest) else {
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            permits = sem.acquire_many_owned(rest) => {
                if let Ok(p) = permits {
                    p.forget();
                }
            }
        }
    });
}
