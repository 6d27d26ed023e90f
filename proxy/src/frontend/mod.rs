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
mod certificates;
mod directories;
pub mod isolation;
mod kernel;
mod metrics;
pub mod queue;
pub mod queue_move;
pub mod route_lookup;
mod status;
mod succession;
mod user_space;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

pub use apply::{ReloadError, Reloaded};
pub use kernel::{Kernel, KernelError, KernelSide};
pub use status::{BackendState, DomainQueueStatus, StatusReport, render};
pub use succession::{
    HandedOver, Ids, IdsTaken, Offer, Offered, PassedListener, XdpPassed, adopt, give_backend_ids,
};
pub use user_space::UserSpace;

use crate::{
    backend::{LoadView, PoolSet, groups::Groups},
    config::{Config, Service},
    events::{Events, log::JsonLog},
    front::accept::{self, Context, Current, Role},
    ha,
    health::board::Board,
    load_writer::{self, LoadMaps, Services},
    service::ServiceContext,
    stats::Stats,
    supervise::Supervisor,
    tls::ServerTls,
};

/// Events `alarms` reports besides the active alarms.
const RECENT_EVENTS: usize = 50;
/// Events one `events` request returns: one reply line stays well under its reader's
/// bound, and a member asks again for the rest.
pub const EVENTS_PER_REQUEST: usize = 200;

/// How long sessions may run on after a stop was asked for.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// What a running front-end can be told.
pub enum Command {
    /// Re-read the configuration file (or read `file`, which becomes the configuration file)
    /// and apply it; the outcome goes to `done` when one is given.
    Reload {
        file: Option<PathBuf>,
        done: Option<oneshot::Sender<Result<Reloaded, ReloadError>>>,
    },
    /// Report the front-end's state.
    Status { done: oneshot::Sender<StatusReport> },
    /// Report the active alarms and the recent events.
    Alarms {
        done: oneshot::Sender<crate::events::Report>,
    },
    /// The kept events after sequence number `since` (at most [`EVENTS_PER_REQUEST`]).
    Events {
        since: u64,
        done: oneshot::Sender<crate::events::Since>,
    },
    /// The kept minutes of statistics after unix minute `since` (none: from the oldest), at
    /// most [`crate::stats::MINUTES_PER_REQUEST`].
    Stats {
        since: Option<u64>,
        done: oneshot::Sender<Vec<crate::stats::Minute>>,
    },
    /// The member says whether it reaches the cluster manager (`down`: why not).
    ManagerReachable { down: Option<String> },
    /// The front-end's metrics, in Prometheus's text format.
    Metrics { done: oneshot::Sender<String> },
    /// Release virtual router `vrid` after draining (`release`), or resume it; answers
    /// when done, without holding other commands up meanwhile.
    Handoff {
        vrid: u8,
        release: bool,
        done: oneshot::Sender<Result<String, String>>,
    },
    /// The operator's drain (`drain: true`) or undrain of back-end `backend`, in every
    /// pool that has it; refused for a name the configuration does not have.
    Drain {
        backend: String,
        drain: bool,
        done: oneshot::Sender<Result<Drained, String>>,
    },
    /// The mail queue per destination domain from every back-end's agent (one domain's, or
    /// all); answers when the agents did or the time ran out, without holding other
    /// commands up meanwhile.
    Queue {
        domain: Option<String>,
        done: oneshot::Sender<queue::QueueStatus>,
    },
    /// Start (or, `status_only`, report) moving a domain pattern's queued mail from every
    /// back-end outside `pool` to `pool`; answers when the agents did or the time ran out.
    QueueMove {
        domain: String,
        pool: String,
        status_only: bool,
        done: oneshot::Sender<Result<queue_move::MoveReport, String>>,
    },
    /// How service `service` routes `key` now (`user`: a login name), the directory
    /// asked afresh when `fresh`; answers without holding other commands up meanwhile.
    RouteLookup {
        service: String,
        key: String,
        user: bool,
        fresh: bool,
        done: oneshot::Sender<Result<route_lookup::RouteAnswer, String>>,
    },
    /// Empty the cache of directory `directory` (or of every one): the names flushed.
    RouteFlush {
        directory: Option<String>,
        done: oneshot::Sender<Result<Vec<String>, String>>,
    },
    /// Each directory's counters.
    Directories {
        done: oneshot::Sender<Vec<route_lookup::DirectoryStats>>,
    },
    /// A binary upgrade's first step: offer the listeners and the XDP link to a successor.
    Offer {
        done: oneshot::Sender<Result<Offered, KernelError>>,
    },
    /// The successor gave up: keep what was offered.
    Withdraw,
    /// The successor runs: stop every router silently (saying what each was), stop
    /// accepting, let the sessions finish, and end.
    HandOver { done: oneshot::Sender<HandedOver> },
    /// Stop in order: hand addresses over, stop accepting, drain, end the rest.
    Stop,
}

/// The control socket's reply to `drain` and `undrain`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drained {
    pub backend: String,
    pub draining: bool,
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
    #[error("directory {name}: {source}")]
    Directory {
        name: String,
        source: crate::directory::SourceError,
    },
}

/// A front-end opened and ready to serve.
pub struct Frontend {
    cfg: Config,
    kernel: Box<dyn KernelSide>,
    maps: Arc<dyn LoadMaps>,
    view: Arc<dyn LoadView>,
    pools: Arc<ArcSwap<PoolSet>>,
    board: Arc<Board>,
    tls: Option<Arc<ServerTls>>,
    services: Vec<ServiceRun>,
    envs: Services,
    shared: Shared,
    attached: Vec<String>,
    /// The server certificate's end, watched for an alarm.
    certificates: certificates::Watch,
    /// The roles of the process this one succeeds (binary upgrade).
    succeeded: Vec<ha::Succeeded>,
    /// SNMP destinations with their secrets, read while still root.
    snmp: Vec<crate::snmp::Prepared>,
    /// What did not reach the SNMP managers (from the serve's start).
    snmp_stats: Arc<crate::snmp::Stats>,
    /// The sessions' counters and the minutes rolled up from them.
    stats: Arc<Stats>,
    /// `stats.jsonl`, opened while still root; the roll-up takes it at the serve's start.
    stats_log: Option<JsonLog>,
    /// The `auto = true` blocks isolated now, read by every SMTP service's context.
    isolated: isolation::Isolated,
    /// The `auto = true` blocks of the configuration in force, for the isolation monitor.
    blocks: tokio::sync::watch::Sender<Vec<isolation::Block>>,
    /// One resolver per `[[directory]]` in force (see [`directories`]).
    directories: Vec<Arc<crate::directory::resolver::Resolver>>,
}

/// What every service's contexts share for the front-end's life.
#[derive(Clone)]
struct Shared {
    stop: CancellationToken,
    abort: accept::Abort,
    closing: CancellationToken,
    sessions: TaskTracker,
    hooks: ha::Hooks,
}

/// One service as it runs: its settings, the context its new connections get, and its
/// listeners (opened, then accepting until `listening` is cancelled).
struct ServiceRun {
    service: Service,
    current: Current,
    listening: CancellationToken,
    opened: Vec<(std::net::TcpListener, Role)>,
    /// Duplicates of the listeners, to pass on to a successor process.
    held: Vec<(std::net::TcpListener, Role)>,
}

/// Duplicates of `opened` (the same sockets under a second descriptor each).
fn hold(opened: &[(std::net::TcpListener, Role)]) -> Vec<(std::net::TcpListener, Role)> {
    opened
        .iter()
        .filter_map(|(l, role)| match l.try_clone() {
            Ok(dup) => Some((dup, *role)),
            Err(e) => {
                warn!(error = %e, "cannot keep a listener for an upgrade");
                None
            }
        })
        .collect()
}

impl Shared {
    fn context(&self, cfg: &Config, env: Arc<ServiceContext>) -> Context {
        let max = env.service.max_connections as usize;
        Context {
            env,
            limit: Arc::new(Semaphore::new(max)),
            reserve: Arc::new(Semaphore::new(reserve_for(max))),
            per_client: Arc::default(),
            abort: self.abort.clone(),
            closing: self.closing.clone(),
            sessions: self.sessions.clone(),
            ha: self.hooks.clone(),
            serve_loopback: cfg.frontend.serve_loopback_clients,
        }
    }
}

/// The front-end's events, logged where `[monitor]` says; a log that cannot be opened is
/// said once and events stay in memory (`robustifier alarms` still has them).
fn open_events(cfg: &Config) -> Events {
    let m = &cfg.monitor;
    let log = m.event_log.as_ref().and_then(|dir| {
        match JsonLog::open(dir, m.event_log_max_bytes, m.event_log_files) {
            Ok(log) => {
                info!(file = %log.path().display(), "event log");
                Some(log)
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "event log not opened: events are kept in memory only");
                None
            }
        }
    });
    Events::with_history(&cfg.frontend.name, log, m.event_history)
}

/// `stats.jsonl` where `[monitor] stats_log` says; one that cannot be opened is said once
/// and the minutes stay in memory (`robustifier stats` still has them).
fn open_stats_log(cfg: &Config) -> Option<JsonLog> {
    let s = &cfg.monitor.stats;
    let dir = s.log.as_ref()?;
    match JsonLog::open_named(dir, "stats.jsonl", s.log_max_bytes, s.log_files) {
        Ok(log) => {
            info!(file = %log.path().display(), "statistics log");
            Some(log)
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "statistics log not opened: minutes are kept in memory only");
            None
        }
    }
}

/// The XDP program's counters by verdict name (as in `/metrics`).
fn xdp_verdicts(x: &crate::datapath::XdpCounters) -> Vec<(&'static str, u64)> {
    vec![
        ("non_ip", x.non_ip),
        ("malformed", x.malformed),
        ("non_tcp", x.non_tcp),
        ("no_service", x.no_service),
        ("service", x.service),
        ("dropped_blocklist", x.dropped_blocklist),
        ("dropped_syn_budget", x.dropped_syn_budget),
    ]
}

/// The priority class's reserve beyond a service's connection limit: a tenth of it.
fn reserve_for(max_connections: usize) -> usize {
    (max_connections / 10).max(1)
}

/// Each service's context, built against `pools`: its routing map is read and resolved now.
fn service_contexts(
    cfg: &Config,
    pools: &Arc<PoolSet>,
    tls: &Option<Arc<ServerTls>>,
    events: &Events,
    stats: &Stats,
    isolated: &isolation::Isolated,
    resolvers: &[Arc<crate::directory::resolver::Resolver>],
) -> Result<Vec<Arc<ServiceContext>>, OpenError> {
    let groups = Arc::new(Groups::new(cfg.groups.clone()));
    let domain_queues = Arc::new(cfg.domain_queue_table());
    let table = stats.table(
        cfg.services.iter().map(|s| s.name.as_str()),
        cfg.pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| (b.id, b.name.as_str()))),
        cfg.pools.iter().map(|p| (p.id, p.name.as_str())),
        cfg.groups.iter().map(|g| g.name.as_str()),
    );
    cfg.services
        .iter()
        .enumerate()
        .map(|(index, service)| {
            ServiceContext::new(service, Arc::clone(pools), tls.clone(), Arc::clone(&groups))
                .map(|env| {
                    Arc::new(
                        env.with_events(events.clone())
                            .counting(Arc::clone(&table), index)
                            .with_domain_queues(Arc::clone(&domain_queues))
                            .with_isolated(Arc::clone(isolated))
                            .with_directory(directories::named(
                                resolvers,
                                service.directory.as_deref(),
                            )),
                    )
                })
                .map_err(|source| OpenError::Service {
                    service: service.name.clone(),
                    source,
                })
        })
        .collect()
}

impl Frontend {
    /// Fills the kernel's tables, reads the certificate, builds every service and opens its
    /// listeners, and attaches the kernel side. Call before the runtime starts when the
    /// process will drop privileges after this.
    pub fn open(cfg: Config, kernel: Box<dyn KernelSide>) -> Result<Frontend, OpenError> {
        Frontend::open_with(cfg, kernel, &[])
    }

    /// [`Frontend::open`] for a successor (binary upgrade): the back-ends the predecessor
    /// still drains keep their ids taken (see [`give_backend_ids`]).
    pub fn open_with(
        cfg: Config,
        mut kernel: Box<dyn KernelSide>,
        retired: &[crate::health::board::Entry],
    ) -> Result<Frontend, OpenError> {
        kernel.apply(&cfg)?;
        let maps = kernel.loads();
        let events = open_events(&cfg);
        let shared = Shared {
            stop: CancellationToken::new(),
            abort: accept::Abort::default(),
            closing: CancellationToken::new(),
            sessions: TaskTracker::new(),
            hooks: ha::Hooks {
                events: events.clone(),
                ..ha::Hooks::default()
            },
        };
        let board = Board::with_retired(&cfg, retired);
        board.set_events(events.clone());
        let certificates = certificates::Watch::new(
            cfg.tls.as_ref().map(|t| t.certificate.clone()),
            events.clone(),
        );
        let view = maps.view().map_err(KernelError::from)?;
        let pools = Arc::new(
            PoolSet::new(&cfg, Arc::clone(&board), Arc::clone(&view)).map_err(OpenError::Pools)?,
        );
        // Read now: the key may be readable by root only.
        let tls = match &cfg.tls {
            Some(files) => Some(Arc::new(ServerTls::new(files).map_err(OpenError::Tls)?)),
            None => None,
        };
        // Read now too: the secrets and the boots file may be root's only.
        let snmp = crate::snmp::prepare(&cfg.frontend.name, &cfg.monitor.snmp);
        let stats = Arc::new(Stats::new(cfg.monitor.stats.minutes as usize));
        let isolated = isolation::Isolated::default();
        // Opened now: a secret file may be root's only.
        let resolvers = directories::resolvers(&cfg, &[])?;
        let envs = service_contexts(&cfg, &pools, &tls, &events, &stats, &isolated, &resolvers)?;
        let stats_log = open_stats_log(&cfg);
        let mut services = Vec::new();
        for (service, env) in cfg.services.iter().zip(&envs) {
            let opened = kernel.listen(service)?;
            services.push(ServiceRun {
                service: service.clone(),
                current: Arc::new(ArcSwap::from_pointee(shared.context(&cfg, Arc::clone(env)))),
                listening: shared.stop.child_token(),
                held: hold(&opened),
                opened,
            });
        }
        // The board's first records, where the kernel side has none yet (the maps keep
        // records across restarts; memory starts empty): routing need not wait for the
        // load writer's first round.
        let mut tables = maps.tables().map_err(KernelError::from)?;
        let now = load_writer::monotonic_ns();
        for slot in board.slots() {
            // Back-ends a predecessor still drains: the tables were just filled from the
            // configuration, which no longer has them; their records say "draining" again.
            let retired = slot.removed.load(std::sync::atomic::Ordering::Relaxed);
            if retired || tables.backend(slot.id).is_none() {
                load_writer::publish(tables.as_mut(), &board, &slot, now);
            }
        }
        let attached = kernel.attach(&cfg)?;
        let (blocks, _) = tokio::sync::watch::channel(isolation::blocks(&cfg));
        Ok(Frontend {
            directories: resolvers,
            isolated,
            blocks,
            cfg,
            kernel,
            maps,
            view,
            pools: Arc::new(ArcSwap::new(pools)),
            board,
            tls,
            services,
            envs: Arc::new(ArcSwap::from_pointee(envs)),
            shared,
            attached,
            certificates,
            succeeded: Vec::new(),
            snmp,
            snmp_stats: Arc::default(),
            stats_log,
            stats,
        })
    }

    /// Starts the virtual routers in the roles `routers` had in the process this one
    /// succeeds, instead of as backups (see `ha::Ha::hand_over`).
    pub fn succeeding(mut self, routers: Vec<ha::Succeeded>) -> Frontend {
        self.succeeded = routers;
        self
    }

    fn status(&self, ha: &ha::Ha) -> StatusReport {
        StatusReport {
            frontend: self.cfg.frontend.name.clone(),
            pid: std::process::id(),
            version: self.cfg.version.clone(),
            routers: ha.status(),
            ready: self.shared.hooks.tasks.ready(),
            tasks: self.shared.hooks.tasks.snapshot(),
            drained: self.board.drained(),
            backends: self.backend_states(),
            domain_queues: {
                let isolated = self.isolated.load();
                let mut blocks = status::DomainQueueStatus::of(&self.cfg);
                for b in &mut blocks {
                    if b.isolated.is_some() {
                        // A block is isolated as a whole: its first pattern says (a
                        // subdomain pattern looked up with a name under it).
                        let first = b.domains.first().map(String::as_str).unwrap_or_default();
                        let domain = first
                            .strip_prefix('.')
                            .map_or(first.to_owned(), |parent| format!("x.{parent}"));
                        b.isolated = Some(
                            isolated
                                .lookup(&domain)
                                .is_some_and(|d| d.pattern.to_string() == first),
                        );
                    }
                }
                blocks
            },
            release: crate::release::release(),
        }
    }

    /// Whether this front-end starts the moves a reload or an isolation calls for: the
    /// master of a virtual router (any of its routers in Master), or the front-end alone
    /// when it runs none. A pair of front-ends applies the same configuration and sees
    /// the same queues; only the one holding the addresses asks the agents.
    fn starts_moves(ha: &ha::Ha) -> bool {
        starts_moves(ha.status().iter().map(|r| r.state.as_str()))
    }

    /// Starts (and follows, on a task of its own) the move of `domain`'s queued mail to
    /// `pool` that a reload or an isolation calls for, if this front-end is the one to.
    fn start_move(&self, ha: &ha::Ha, domain: &str, pool: &str, by: &'static str) {
        if !Self::starts_moves(ha) {
            info!(domain, pool, by, "queue move left to the master front-end");
            return;
        }
        match queue_move::plan(&self.cfg, domain, pool, false) {
            Ok(plan) => {
                let events = self.shared.hooks.events.clone();
                tokio::spawn(queue_move::follow(
                    plan,
                    by,
                    events,
                    queue_move::FOLLOW_EVERY,
                ));
            }
            Err(e) => warn!(domain, pool, by, error = %e, "queue move not started"),
        }
    }

    /// The board's load records, by pool and back-end.
    fn backend_states(&self) -> Vec<status::BackendState> {
        let now = load_writer::monotonic_ns();
        self.board
            .slots()
            .iter()
            .filter_map(|slot| {
                let r = self.board.record_for(slot.id, now)?;
                let state = match r.state {
                    robustifier_common::BACKEND_UP => "up",
                    robustifier_common::BACKEND_DRAINING => "draining",
                    _ => "down",
                };
                Some(status::BackendState {
                    pool: slot.pool_name.clone(),
                    name: slot.name.clone(),
                    state: state.to_owned(),
                    overloaded: slot.overloaded.load(std::sync::atomic::Ordering::Relaxed)
                        && r.state != robustifier_common::BACKEND_DOWN,
                    weight: r.weight,
                    active_sessions: r.active_sessions,
                    idle_legs: slot.idle.load(std::sync::atomic::Ordering::Relaxed),
                    response_us: r.response_us,
                    run_queue_milli: r.run_queue_milli,
                    mail_queue: r.mail_queue,
                    disk_permille: r.disk_permille,
                })
            })
            .collect()
    }

    /// Drains or undrains back-end `name` and publishes its records at once, so that
    /// routing stops (or starts) picking it before the load writer's next round.
    fn drain(&self, name: &str, drain: bool) -> Result<Drained, String> {
        let changed = self
            .board
            .set_drained(name, drain)
            .ok_or_else(|| format!("no back-end {name:?} in the configuration"))?;
        if drain {
            for slot in &changed {
                self.pools.load().idle.close_backend(slot.id);
            }
        }
        let now = load_writer::monotonic_ns();
        match self.maps.tables() {
            Ok(mut tables) => {
                for slot in &changed {
                    load_writer::publish(tables.as_mut(), &self.board, slot, now);
                }
            }
            Err(e) => {
                warn!(error = %e, "drain: cannot open the load maps; the writer's next round publishes the records")
            }
        }
        if !drain {
            // Sessions waiting for capacity may now have it.
            self.board.nudge();
        }
        Ok(Drained {
            backend: name.to_owned(),
            draining: drain,
        })
    }

    /// Where each service's sessions are accepted, by service name. With the kernel side
    /// these are the loopback sockets connections are steered to, not the addresses
    /// clients dial.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.services
            .iter()
            .flat_map(|s| {
                s.opened
                    .iter()
                    .filter(|(_, role)| *role == Role::Serve)
                    .filter_map(|(l, _)| Some((s.service.name.clone(), l.local_addr().ok()?)))
            })
            .collect()
    }

    /// Serves until a [`Command::Stop`] arrives or the sender is dropped, then stops in
    /// order: the virtual addresses are handed over, the kernel side detached (no new
    /// connections), idle sessions told goodbye, the rest drained up to the deadlines.
    pub async fn serve(mut self, mut commands: mpsc::Receiver<Command>) -> anyhow::Result<()> {
        warn_unreadable(&self.cfg);
        let accepting = TaskTracker::new();
        for run in &mut self.services {
            run.start_accepting(&accepting)?;
        }
        for service in &self.cfg.services {
            info!(service = %service.name, protocol = service.protocol.as_str(), port = service.port, "listening");
        }
        let shared = self.shared.clone();
        shared.hooks.health.set_datapath_attached(true);
        // Health checks, agents and the load writer run until the stop, restarted if they
        // die; sessions stop last.
        let background = TaskTracker::new();
        let supervisor = Supervisor::new(
            background.clone(),
            shared.stop.clone(),
            shared.hooks.tasks.clone(),
        );
        // Before the health checks, so that the alarms they raise first are sent too.
        self.snmp_stats = crate::snmp::spawn(&self.snmp, &shared.hooks.events, &supervisor);
        load_writer::spawn(
            &self.pools,
            &self.board,
            Arc::clone(&self.envs),
            Arc::clone(&self.maps),
            shared.hooks.health.clone(),
            &shared.stop,
            &supervisor,
        );
        self.certificates.spawn(&supervisor, &shared.stop);
        // The isolation monitor asks for moves here, where it is known whether this
        // front-end is the one to start them.
        let (wanted_tx, mut wanted) = mpsc::channel::<isolation::MoveWanted>(64);
        {
            let (board, isolated, events, stop) = (
                Arc::clone(&self.board),
                Arc::clone(&self.isolated),
                shared.hooks.events.clone(),
                shared.stop.clone(),
            );
            let blocks = self.blocks.subscribe();
            supervisor.spawn("isolation monitor", move || {
                isolation::run(
                    Arc::clone(&board),
                    blocks.clone(),
                    Arc::clone(&isolated),
                    events.clone(),
                    wanted_tx.clone(),
                    stop.clone(),
                )
            });
        }
        // A summary for the operator on stdout; logs go to stderr.
        let services: Vec<String> = self
            .cfg
            .services
            .iter()
            .map(|s| format!("{} ({} port {})", s.name, s.protocol.as_str(), s.port))
            .collect();
        for line in &self.attached {
            println!("{line}");
        }
        println!("serving: {}", services.join(", "));
        println!("configuration version {}", self.cfg.version);
        // Virtual routers last: a front-end claims addresses only once it can serve them.
        let succeeded = std::mem::take(&mut self.succeeded);
        let mut ha = ha::spawn(&self.cfg, shared.hooks.clone(), &succeeded).await?;
        info!(frontend = %self.cfg.frontend.name, version = %self.cfg.version, "robustifier ready");
        crate::notify::ready(&format!(
            "serving, configuration version {}",
            self.cfg.version
        ));

        // The minutes roll up on this loop, which holds the kernel side's XDP counters.
        let st = &self.cfg.monitor.stats;
        let mut roller = crate::stats::Roller::new(
            &self.cfg.frontend.name,
            Arc::clone(&self.stats),
            self.stats_log.take(),
            crate::stats::Thresholds {
                deflections: st.deflection_alarm_per_minute,
                flood_drops: st.flood_drop_alarm_per_minute,
            },
        );
        let period = st.period;
        let mut due = next_roll(period);

        // A stop, a hand-over, or the sender gone, ends the loop.
        let mut successor = None;
        loop {
            let command = tokio::select! {
                c = commands.recv() => match c {
                    Some(c) => c,
                    None => break,
                },
                Some(w) = wanted.recv() => {
                    self.start_move(&ha, &w.domain, &w.pool, w.by);
                    continue;
                }
                () = tokio::time::sleep_until(due.0) => {
                    let xdp = self.kernel.xdp_counters().map(|x| {
                        xdp_verdicts(&x)
                            .into_iter()
                            .map(|(k, n)| (k.to_owned(), n))
                            .collect()
                    });
                    roller.roll(due.1, xdp, &self.shared.hooks.events);
                    due = next_roll(period);
                    continue;
                }
            };
            match command {
                Command::Reload { file, done } => {
                    let before = self.cfg.clone();
                    crate::notify::reloading();
                    let outcome = self.reload(file, &accepting, &supervisor, &mut ha).await;
                    // Applied or refused, the front-end serves (a refusal changes nothing).
                    crate::notify::ready(&format!(
                        "serving, configuration version {}",
                        self.cfg.version
                    ));
                    if outcome.is_ok() {
                        self.blocks.send_replace(isolation::blocks(&self.cfg));
                        for (domain, pool) in queue_move::moves_for_reload(&before, &self.cfg) {
                            self.start_move(&ha, &domain, &pool, "reload");
                        }
                    }
                    if let Some(done) = done {
                        let _ = done.send(outcome);
                    }
                }
                Command::Status { done } => {
                    let _ = done.send(self.status(&ha));
                }
                Command::Alarms { done } => {
                    let _ = done.send(self.shared.hooks.events.report(RECENT_EVENTS));
                }
                Command::Stats { since, done } => {
                    let _ = done.send(self.stats.since(since, crate::stats::MINUTES_PER_REQUEST));
                }
                Command::Events { since, done } => {
                    let _ = done.send(self.shared.hooks.events.since(since, EVENTS_PER_REQUEST));
                }
                Command::ManagerReachable { down } => {
                    let events = &self.shared.hooks.events;
                    let raised = events
                        .alarms()
                        .iter()
                        .any(|a| a.key == "manager_unreachable");
                    // While the manager is out of reach this front-end sends its alarms'
                    // notifications itself, this one's raise and clear included.
                    if down.is_some() {
                        events.set_manager_reachable(false);
                    }
                    match &down {
                        Some(error) if !raised => {
                            events.emit(crate::events::Kind::ManagerUnreachable {
                                error: error.clone(),
                            });
                        }
                        None if raised => {
                            events.emit(crate::events::Kind::ManagerReachable);
                        }
                        _ => {}
                    }
                    if down.is_none() {
                        events.set_manager_reachable(true);
                    }
                }
                Command::Metrics { done } => {
                    let _ = done.send(metrics::render(&self, &ha));
                }
                Command::Drain {
                    backend,
                    drain,
                    done,
                } => {
                    let _ = done.send(self.drain(&backend, drain));
                }
                Command::Queue { domain, done } => {
                    let asked = queue::ask(&self.board, domain);
                    tokio::spawn(async move {
                        let _ = done.send(asked.await);
                    });
                }
                Command::QueueMove {
                    domain,
                    pool,
                    status_only,
                    done,
                } => match queue_move::plan(&self.cfg, &domain, &pool, status_only) {
                    Ok(plan) => {
                        if !status_only {
                            info!(domain = %plan.request.domain, pool = %pool, "queue move asked for");
                        }
                        let asked = queue_move::ask(plan, queue_move::ASK_TIMEOUT);
                        tokio::spawn(async move {
                            let _ = done.send(Ok(asked.await));
                        });
                    }
                    Err(e) => {
                        let _ = done.send(Err(e.to_string()));
                    }
                },
                Command::RouteLookup {
                    service,
                    key,
                    user,
                    fresh,
                    done,
                } => {
                    let envs = self.envs.load_full();
                    tokio::spawn(async move {
                        let answer = route_lookup::lookup(&envs, &service, &key, user, fresh);
                        let _ = done.send(answer.await);
                    });
                }
                Command::RouteFlush { directory, done } => {
                    let envs = self.envs.load();
                    let _ = done.send(route_lookup::flush(&envs, directory.as_deref()));
                }
                Command::Directories { done } => {
                    let _ = done.send(route_lookup::stats(&self.envs.load()));
                }
                Command::Handoff {
                    vrid,
                    release,
                    done,
                } => {
                    let answer = ha.handoff(vrid, release);
                    tokio::spawn(async move {
                        let outcome = answer
                            .await
                            .unwrap_or_else(|_| Err("the front-end is stopping".to_owned()));
                        let _ = done.send(outcome);
                    });
                }
                Command::Offer { done } => {
                    let offered = self.offer();
                    match &offered {
                        Ok(o) => {
                            info!(listeners = o.offer.listeners.len(), xdp = ?o.offer.xdp, "upgrade: offered to a successor")
                        }
                        Err(e) => warn!(error = %e, "upgrade: cannot offer to a successor"),
                    }
                    let _ = done.send(offered);
                }
                Command::Withdraw => {
                    info!("upgrade: the successor gave up; serving on");
                    self.kernel.keep();
                }
                Command::HandOver { done } => {
                    // The successor speaks for the service from now on.
                    crate::notify::retire();
                    successor = Some(done);
                    break;
                }
                Command::Stop => break,
            }
        }
        // Silent after a hand-over (the process is retired): the service goes on.
        crate::notify::stopping();
        // The listeners close with the accept loops (a successor holds its own descriptors).
        for run in &mut self.services {
            run.held.clear();
        }
        let handed_over = successor.is_some();
        if let Some(done) = successor {
            // The successor serves already: it continues every router's role, so these
            // stop without a word, and the steering of this process goes.
            let routers = ha.hand_over().await;
            self.kernel.detach();
            self.kernel.passed();
            info!(?routers, "upgrade: handed over to the successor; draining");
            let _ = done.send(HandedOver { routers });
        } else {
            // Hand the virtual addresses over first (drain, then priority 0), while the
            // data path still serves the sessions finishing on them.
            ha.shutdown().await;
            self.kernel.detach();
        }
        shared.stop.cancel();
        accepting.close();
        accepting.wait().await;
        // Health checks and the load writer end with the stop token: after a hand-over the
        // successor's writer alone keeps the load records.
        background.close();
        background.wait().await;
        let sessions = &shared.sessions;
        sessions.close();
        if handed_over {
            // Nothing is stopping but this process: its clients' sessions run to their own
            // end for as long as a planned handoff allows, and only then are told to go.
            let _ = tokio::time::timeout(self.cfg.ha.drain_deadline, sessions.wait()).await;
        }
        // Idle sessions say goodbye now (421 / -ERR); busy ones at their next boundary.
        shared.closing.cancel();
        if tokio::time::timeout(DRAIN_DEADLINE, sessions.wait())
            .await
            .is_err()
        {
            info!(
                left = sessions.len(),
                "drain deadline passed; ending remaining sessions"
            );
            shared.abort.sessions.cancel();
            // Sessions waiting for a back-end's reply to an end of data get until the
            // configured drain deadline (at most RFC 5321's 10 minutes for that reply).
            let commits = self
                .cfg
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
                shared.abort.commits.cancel();
                sessions.wait().await;
            }
        }
        info!("stopped");
        Ok(())
    }
}

/// The rule of [`Frontend::starts_moves`] over the virtual routers' states.
fn starts_moves<'a>(states: impl IntoIterator<Item = &'a str>) -> bool {
    let mut none = true;
    for state in states {
        if state == "Master" {
            return true;
        }
        none = false;
    }
    none
}

/// When the next roll-up is due (on the runtime's clock) and the unix minute it covers.
fn next_roll(period: Duration) -> (tokio::time::Instant, u64) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (wait, minute) = crate::stats::minute::next(now_ms, period);
    (tokio::time::Instant::now() + wait, minute)
}

impl ServiceRun {
    /// Spawns the accept loops of the listeners opened and not yet accepting: one on this
    /// runtime, and one on each further worker of a `per-core` front-end (see
    /// [`crate::front::workers`]), each on its own registration of the same socket.
    fn start_accepting(&mut self, accepting: &TaskTracker) -> std::io::Result<()> {
        for (socket, role) in self.opened.drain(..) {
            for worker in crate::front::workers::extra() {
                let copy = socket.try_clone()?;
                let copy = {
                    let _on = worker.enter();
                    tokio::net::TcpListener::from_std(copy)?
                };
                accepting.spawn_on(
                    accept::run(
                        copy,
                        role,
                        Arc::clone(&self.current),
                        self.listening.clone(),
                    ),
                    worker,
                );
            }
            let socket = tokio::net::TcpListener::from_std(socket)?;
            accepting.spawn(accept::run(
                socket,
                role,
                Arc::clone(&self.current),
                self.listening.clone(),
            ));
        }
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

#[cfg(test)]
mod tests {
    #[test]
    fn moves_are_started_by_a_master_or_a_front_end_without_routers() {
        assert!(super::starts_moves([]));
        assert!(!super::starts_moves(["Backup"]));
        assert!(!super::starts_moves(["Initialize", "Backup"]));
        assert!(super::starts_moves(["Backup", "Master"]));
    }
}
