//! `robustifier run`: one front-end. Loads and attaches the data path, writes the config
//! into the maps, opens and registers the service listeners, serves until SIGTERM/SIGINT,
//! then stops in order: detach the programs (no new connections), stop accepting, let
//! sessions finish up to the drain deadline, end the rest. Pinned maps stay.

use std::{sync::Arc, time::Duration};

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
use tracing::info;

use crate::{
    backend::PoolSet,
    config::{self, Config},
    datapath::DataPath,
    datapath::MapView,
    front::groups::Groups,
    front::{
        accept::{self, Context, Role},
        listeners::SlotSockets,
    },
    ha,
    health::{self, board::Board},
    smtp::session::Env,
    tls::ServerTls,
};

/// How long sessions may run on after a stop was asked for.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;

    let pin_dir = cfg.frontend.pin_dir.clone();
    let mut dp = DataPath::load(&pin_dir)?;
    dp.tables.apply(&cfg)?;
    info!(pin_dir = %pin_dir.display(), "maps pinned and filled from {}", cfg.file.display());

    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let closing = CancellationToken::new();
    let sessions = TaskTracker::new();
    let accepting = TaskTracker::new();
    let hooks = ha::Hooks::default();
    let board = Board::new(&cfg);
    let view = Arc::new(MapView::open(&pin_dir)?);
    let pools = Arc::new(
        PoolSet::new(&cfg, Arc::clone(&board), view)
            .map_err(|e| anyhow::anyhow!("back-end pools: {e}"))?,
    );
    let groups = Arc::new(Groups::new(cfg.groups.clone()));
    let mut envs = Vec::new();
    let tls = match &cfg.tls {
        Some(files) => Some(Arc::new(
            ServerTls::new(files).map_err(|e| anyhow::anyhow!("TLS: {e}"))?,
        )),
        None => None,
    };
    for service in &cfg.services {
        let env = Arc::new(
            Env::new(
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
            let sockets = SlotSockets::new()
                .with_context(|| format!("listeners for service {}", service.name))?;
            for (family, socket) in sockets.by_family() {
                dp.register_listener(service.id, slot, family, socket)?;
            }
            accepting.spawn(accept::run(sockets.v4, role, ctx.clone()));
            accepting.spawn(accept::run(sockets.v6, role, ctx.clone()));
        }
        info!(service = %service.name, protocol = service.protocol.as_str(), port = service.port, "listening");
    }
    let xdp = match &cfg.frontend.interface {
        Some(iface) => {
            let mode = dp.attach_xdp(iface, cfg.frontend.xdp_mode)?;
            format!("{PROG_XDP} on {iface} ({mode} mode)")
        }
        None => format!("{PROG_XDP} not attached (no frontend.interface)"),
    };
    dp.attach_steering()?;
    hooks.health.set_datapath_attached(true);
    // Health checks, agents and the load writer run until the stop; sessions stop last.
    let background = TaskTracker::new();
    health::spawn(
        &pools,
        &board,
        envs,
        Some(pin_dir.clone()),
        hooks.health.clone(),
        &stop,
        &background,
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
            _ = sighup.recv() => reload(&cfg, &pools, &mut dp.tables, &stop, &background),
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
        abort.cancel();
        sessions.wait().await;
    }
    info!("stopped; maps stay pinned under {}", pin_dir.display());
    Ok(())
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
    background: &TaskTracker,
) {
    let new = match Config::load(&running.file) {
        Err(e) => {
            return tracing::error!(error = %e, "SIGHUP: configuration refused; nothing changed");
        }
        Ok(new) => new,
    };
    let board = &pools.board;
    let done = board.reconcile(&new);
    let now = health::writer::monotonic_ns();
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
