//! `robustifier run`: one front-end. Loads and attaches the data path, writes the config
//! into the maps, opens and registers the service listeners, serves until SIGTERM/SIGINT,
//! then stops in order: detach the programs (no new connections), stop accepting, let
//! sessions finish up to the drain deadline, end the rest. Pinned maps stay.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use robustifier_common::{
    MAP_BACKENDS, PINNED_MAPS, PROG_STEER, PROG_XDP, SLOT_NORMAL, SLOT_PRIORITY, SLOT_SHED,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::info;

use crate::{
    config::Config,
    datapath::DataPath,
    front::{
        accept::{self, Context, Role},
        listeners::SlotSockets,
    },
    ha,
};

/// How long sessions may run on after a stop was asked for.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let pin_dir = cfg.frontend.pin_dir.clone();
    let mut dp = DataPath::load(&pin_dir)?;
    dp.tables.apply(&cfg)?;
    info!(pin_dir = %pin_dir.display(), "maps pinned and filled from {}", cfg.file.display());

    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let sessions = TaskTracker::new();
    let accepting = TaskTracker::new();
    let hooks = ha::Hooks::default();
    for service in &cfg.services {
        let ctx = Context {
            service: Arc::new(service.clone()),
            limit: Arc::new(Semaphore::new(service.max_connections as usize)),
            stop: stop.clone(),
            abort: abort.clone(),
            sessions: sessions.clone(),
            ha: hooks.clone(),
        };
        for (slot, role) in [
            (SLOT_NORMAL, Role::Serve),
            (SLOT_PRIORITY, Role::Serve),
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

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: stopping"),
        _ = sigint.recv() => info!("SIGINT: stopping"),
    }
    // Hand the virtual addresses over first (drain, then priority 0), while the data path
    // still serves the sessions finishing on them.
    ha.shutdown().await;
    dp.detach();
    stop.cancel();
    accepting.close();
    accepting.wait().await;
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
