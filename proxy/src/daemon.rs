//! `robustifier run`: one front-end. Loads and attaches the data path, writes the config
//! into the maps, opens and registers the service listeners, switches to its unprivileged
//! user (see [`crate::privs`]), serves until SIGTERM/SIGINT, then stops in order: detach
//! the programs (no new connections), stop accepting, let sessions finish up to the drain
//! deadline, end the rest. Pinned maps stay.
//!
//! The privileged start runs before the tokio runtime exists, so that the switch of user
//! and capabilities covers every thread the daemon will ever run: credentials are per
//! thread, and new threads inherit them from the thread that starts them.

use std::{os::unix::fs::MetadataExt as _, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use robustifier_common::{
    MAP_BACKENDS, MAX_BACKENDS, PINNED_MAPS, PROG_STEER, PROG_XDP, SLOT_NORMAL, SLOT_PRIORITY,
    SLOT_SHED,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    backend::PoolSet,
    backend::groups::Groups,
    config::{self, Config},
    datapath::DataPath,
    datapath::MapView,
    front::{
        accept::{self, Context, Role},
        listeners::{SlotSockets, StdSlotSockets},
    },
    ha,
    health::{self, board::Board},
    load_writer, privs,
    smtp::session::ServiceContext,
    supervise::Supervisor,
    tls::ServerTls,
};

/// How long sessions may run on after a stop was asked for.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs a front-end to its end: the privileged start on this thread, the switch to the
/// daemon's user, then the runtime. Call before any other thread needing privilege exists.
pub fn main(cfg: Config) -> anyhow::Result<()> {
    let account = privs::account(cfg.frontend.user.as_deref())?;
    match &account {
        Some(_) => privs::restrict_inherited()?,
        None => warn!(
            "no user {:?} here: running as root with every capability (create it with `cargo xtask setup`, or set frontend.user)",
            privs::DEFAULT_USER
        ),
    }
    let start = Start::open(&cfg, account.as_ref())?;
    if let Some(account) = &account {
        privs::switch(account)?;
    }
    tokio::runtime::Runtime::new()?.block_on(serve(cfg, start))
}

/// Everything a front-end opens while privileged.
struct Start {
    dp: DataPath,
    pools: Arc<PoolSet>,
    board: Arc<Board>,
    envs: Vec<Arc<ServiceContext>>,
    hooks: ha::Hooks,
    listeners: Vec<(StdSlotSockets, Role, Context)>,
    xdp: String,
    stop: CancellationToken,
    abort: accept::Abort,
    closing: CancellationToken,
    sessions: TaskTracker,
}

impl Start {
    fn open(cfg: &Config, account: Option<&privs::Account>) -> anyhow::Result<Start> {
        let pin_dir = cfg.frontend.pin_dir.clone();
        let mut dp = DataPath::load(&pin_dir)?;
        dp.tables.apply(cfg)?;
        info!(pin_dir = %pin_dir.display(), "maps pinned and filled from {}", cfg.file.display());

        let stop = CancellationToken::new();
        let abort = accept::Abort::default();
        let closing = CancellationToken::new();
        let sessions = TaskTracker::new();
        let hooks = ha::Hooks::default();
        let board = Board::new(cfg);
        let view = Arc::new(MapView::open(&pin_dir)?);
        let pools = Arc::new(
            PoolSet::new(cfg, Arc::clone(&board), view)
                .map_err(|e| anyhow::anyhow!("back-end pools: {e}"))?,
        );
        let groups = Arc::new(Groups::new(cfg.groups.clone()));
        let mut envs = Vec::new();
        // Read while privileged: the key may be readable by root only.
        let tls = match &cfg.tls {
            Some(files) => Some(Arc::new(
                ServerTls::new(files).map_err(|e| anyhow::anyhow!("TLS: {e}"))?,
            )),
            None => None,
        };
        let mut listeners = Vec::new();
        for service in &cfg.services {
            let env = Arc::new(
                ServiceContext::new(
                    service,
                    Arc::clone(&pools),
                    tls.clone(),
                    Arc::clone(&groups),
                )
                .map_err(|e| anyhow::anyhow!("service {}: {e}", service.name))?,
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
            };
            for (slot, role) in [
                (SLOT_NORMAL, Role::Serve),
                (SLOT_PRIORITY, Role::Priority),
                (SLOT_SHED, Role::Shed),
            ] {
                let sockets = StdSlotSockets::bind()
                    .with_context(|| format!("listeners for service {}", service.name))?;
                for (family, socket) in sockets.by_family() {
                    dp.register_listener(service.id, slot, family, socket)?;
                }
                listeners.push((sockets, role, ctx.clone()));
            }
        }
        let xdp = match &cfg.frontend.interface {
            Some(iface) => {
                let mode = dp.attach_xdp(iface, cfg.frontend.xdp_mode)?;
                format!("{PROG_XDP} on {iface} ({mode} mode)")
            }
            None => format!("{PROG_XDP} not attached (no frontend.interface)"),
        };
        dp.attach_steering()?;
        if let Some(account) = account {
            hand_over(cfg, account)?;
        }
        Ok(Start {
            dp,
            pools,
            board,
            envs,
            hooks,
            listeners,
            xdp,
            stop,
            abort,
            closing,
            sessions,
        })
    }
}

/// What the daemon reopens or creates after the switch becomes its user's: the pinned maps
/// (the load writer reopens them when it restarts) and the control socket's directory (the
/// socket is created there, a stale one replaced and removed at the stop). A directory the
/// daemon does not own by its name (anything but `/run/robustifier/<name>` or one made now)
/// is left alone, and must be writable by the user.
fn hand_over(cfg: &Config, account: &privs::Account) -> anyhow::Result<()> {
    let pin_dir = &cfg.frontend.pin_dir;
    // The pin directory is the daemon's own unless it is the root of a bpffs mount (shared
    // with every other BPF user of the host): then only the map files are handed over.
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    if pin_dir.parent().is_some_and(is_bpffs) {
        privs::hand_over(pin_dir, account)?;
    } else {
        warn!(dir = %pin_dir.display(), "pin directory is a bpffs root: left to root");
    }
    for map in PINNED_MAPS {
        let path = pin_dir.join(map);
        if path.exists() {
            privs::hand_over(&path, account)?;
        }
    }
    if cfg.vrrp.is_empty() {
        return Ok(());
    }
    let Some(dir) = cfg.ha.control_socket.parent() else {
        return Ok(());
    };
    let control_root = Path::new(config::vrrp::CONTROL_DIR);
    let ours = dir.starts_with(control_root) && dir != control_root;
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("control socket directory {}", dir.display()))?;
    } else if !ours {
        let owner = std::fs::metadata(dir).map(|m| m.uid()).ok();
        if owner != Some(account.uid.as_raw()) {
            warn!(dir = %dir.display(), user = %account.name, "control socket directory left as it is: the daemon's user must be able to write it");
        }
        return Ok(());
    }
    privs::hand_over(dir, account)?;
    Ok(())
}

async fn serve(cfg: Config, start: Start) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let Start {
        mut dp,
        pools,
        board,
        envs,
        hooks,
        listeners,
        xdp,
        stop,
        abort,
        closing,
        sessions,
    } = start;
    let pin_dir = cfg.frontend.pin_dir.clone();
    warn_unreadable(&cfg);

    let accepting = TaskTracker::new();
    for (sockets, role, ctx) in listeners {
        let sockets = SlotSockets::from_std(sockets).context("listeners")?;
        accepting.spawn(accept::run(sockets.v4, role, ctx.clone()));
        accepting.spawn(accept::run(sockets.v6, role, ctx));
    }
    for service in &cfg.services {
        info!(service = %service.name, protocol = service.protocol.as_str(), port = service.port, "listening");
    }
    hooks.health.set_datapath_attached(true);
    // Health checks, agents and the load writer run until the stop, restarted if they die;
    // sessions stop last.
    let background = TaskTracker::new();
    let supervisor = Supervisor::new(background.clone(), stop.clone(), hooks.tasks.clone());
    load_writer::spawn(
        &pools,
        &board,
        envs,
        Some(pin_dir.clone()),
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
    println!("attached: {xdp}; {PROG_STEER} (sk_lookup) on this network namespace");
    println!(
        "maps pinned in {}: {}",
        pin_dir.display(),
        PINNED_MAPS.join(" ")
    );
    println!("serving: {}", services.join(", "));
    println!(
        "inspect: robustifier maps --pin-dir {0}   or   bpftool map dump pinned {0}/{MAP_BACKENDS}",
        pin_dir.display()
    );
    // Virtual routers last: a front-end claims addresses only once it can serve them.
    let ha = ha::spawn(&cfg, hooks.clone()).await?;
    info!(frontend = %cfg.frontend.name, "robustifier ready");

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => reload(&cfg, &pools, &mut dp.tables, &stop, &supervisor),
        }
    }
    // Hand the virtual addresses over first (drain, then priority 0), while the data path
    // still serves the sessions finishing on them.
    ha.shutdown().await;
    dp.detach();
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
    info!("stopped; maps stay pinned under {}", pin_dir.display());
    Ok(())
}

/// Names, once at the start, the files the daemon re-reads later (on SIGHUP, or when they
/// change) that its user cannot read: a reload would be refused, or a new certificate or
/// routing map ignored, long after the start that read them as root.
fn warn_unreadable(cfg: &Config) {
    let mut files = vec![cfg.file.clone()];
    if let Some(tls) = &cfg.tls {
        files.extend([tls.certificate.clone(), tls.key.clone()]);
    }
    files.extend(cfg.services.iter().filter_map(|s| s.routes.clone()));
    for file in files {
        if let Err(e) = std::fs::File::open(&file) {
            warn!(file = %file.display(), error = %e, "not readable by the daemon's user: reloads that need it will fail (give its group read access)");
        }
    }
}

/// SIGHUP: re-reads the configuration. Back-ends removed from it drain gracefully (no new
/// sessions, running ones finish) and come back if restored; back-ends it adds to a
/// running pool get the next load map ids, their probes and agent polls, and take new
/// sessions at once; routing maps and certificates reload on their own when their files
/// change. Other changes (new pools, services, settings) take a restart and are logged by
/// name; a bad file changes nothing.
fn reload(
    running: &Config,
    pools: &PoolSet,
    tables: &mut crate::datapath::Tables,
    stop: &CancellationToken,
    background: &Supervisor,
) {
    let new = match Config::load(&running.file) {
        Err(e) => {
            return tracing::error!(error = %e, "SIGHUP: configuration refused; nothing changed");
        }
        Ok(new) => new,
    };
    let board = &pools.board;
    let done = board.reconcile(&new);
    let now = load_writer::monotonic_ns();
    for slot in &done.added {
        // Its record now, so routing (which reads the map) need not wait for the writer.
        let id = slot.backend.id;
        if let Some(record) = board.record_for(id, now)
            && let Err(e) = tables.backends.set(id, record, 0)
        {
            tracing::error!(error = %e, backend = %slot.backend.name, "writing load record");
        }
        health::spawn_checks(pools, board, slot, stop, background);
    }
    if !done.added.is_empty() {
        let added: Vec<String> = done
            .added
            .iter()
            .map(|s| format!("{} (id {})", s.backend.name, s.backend.id))
            .collect();
        info!(backends = ?added, "SIGHUP: back-ends added");
    }
    if !done.overflow.is_empty() {
        tracing::warn!(backends = ?done.overflow, "SIGHUP: the load map is full ({MAX_BACKENDS} ids; removed back-ends keep theirs): these back-ends take a restart to be used");
    }
    for what in config::diff::restart_needed(running, &new) {
        tracing::warn!(change = %what, "SIGHUP: takes a restart");
    }
    info!("SIGHUP: configuration reloaded");
}
