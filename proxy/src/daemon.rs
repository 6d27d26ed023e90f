//! `robustifier run`: one front-end as a process. Builds the front-end (see
//! [`crate::frontend`]) on the eBPF data path, or without a kernel side when asked, during
//! a privileged start; switches to its unprivileged user (see [`crate::privs`]); then
//! serves, turning SIGHUP into a reload, SIGTERM/SIGINT into the orderly stop, and the
//! control socket's requests ([`crate::control`]) into commands.
//!
//! With `take_over`, the process succeeds the one serving the same configuration (a binary
//! upgrade, see [`crate::control::handover`]): it takes that process's listening sockets
//! and XDP link before its own start, and serves once the predecessor has handed over.
//!
//! The privileged start runs before the tokio runtime exists, so that the switch of user
//! and capabilities covers every thread the daemon will ever run: credentials are per
//! thread, and new threads inherit them from the thread that starts them.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use anyhow::Context as _;
use robustifier_common::PINNED_MAPS;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    config::{self, Config},
    control, front,
    frontend::{Command, Frontend, HandedOver, Kernel, KernelSide, UserSpace},
    notify, privs,
};

/// Which kernel side `robustifier run` builds the front-end on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The eBPF data path (needs root).
    Kernel,
    /// Plain listeners on the services' own addresses; see [`UserSpace`].
    UserSpace,
}

/// Runs a front-end to its end: the privileged start on this thread, the switch to the
/// daemon's user, then the runtime. Call before any other thread needing privilege exists.
pub fn main(mut cfg: Config, mode: Mode, take_over: bool) -> anyhow::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let account = if root {
        privs::account(cfg.frontend.user.as_deref())?
    } else {
        info!(uid = %nix::unistd::geteuid(), "not started as root: no switch of user");
        None
    };
    match (&account, root) {
        (Some(_), _) => privs::restrict_inherited()?,
        (None, true) => warn!(
            "no user {:?} here: running as root with every capability (create it with `cargo xtask setup`, or set frontend.user)",
            privs::DEFAULT_USER
        ),
        (None, false) => {}
    }
    if take_over {
        notify::succeed();
    }
    let mut taken = if take_over {
        let taken = control::handover::take_over(&cfg.ha.control_socket)
            .context("taking over from the running front-end")?;
        info!(from_pid = taken.offer.pid, version = %taken.offer.version, listeners = taken.listeners.len(), "upgrade: taking over");
        Some(taken)
    } else {
        None
    };
    let mut kernel: Box<dyn KernelSide> = match mode {
        Mode::Kernel => Box::new(Kernel::load(&cfg)?),
        Mode::UserSpace => Box::new(UserSpace::new()),
    };
    let retired = match &mut taken {
        Some(t) => {
            let listeners = std::mem::take(&mut t.listeners);
            crate::frontend::adopt(&t.offer, listeners, kernel.as_mut(), &mut cfg)?
        }
        None => Vec::new(),
    };
    let mut frontend = Frontend::open_with(cfg.clone(), kernel, &retired)?;
    // Bound and read now: the port may be privileged, the token file root's.
    let endpoint = open_endpoint(&cfg)?;
    // Serving (our steering attached, the XDP link ours): the predecessor may stop. If it
    // cannot say how its routers stood, ours start as after any restart.
    if let Some(t) = taken {
        let handed = t.release().unwrap_or_else(|e| {
            warn!(error = %e, "upgrade: the predecessor did not confirm the hand-over; virtual routers start as backups");
            HandedOver::default()
        });
        info!(routers = ?handed.routers, "upgrade: the predecessor handed over");
        frontend = frontend.succeeding(handed.routers);
    }
    if let Some(account) = &account {
        if mode == Mode::Kernel {
            hand_over_pins(&cfg, account)?;
        }
        hand_over_control(&cfg, account)?;
        hand_over_event_log(&cfg, account)?;
        if let Some(dir) = &cfg.monitor.stats.log {
            hand_over_log(dir, "stats.jsonl", account)?;
        }
        privs::switch(account)?;
    }
    // After the switch: every thread of the runtimes runs as the daemon's user.
    let (layout, workers) = (
        cfg.frontend.runtime,
        front::workers::count(cfg.frontend.workers),
    );
    let runtime = front::workers::runtime(layout, workers)?;
    let _workers = match layout {
        config::RuntimeLayout::PerCore => Some(front::workers::Workers::start(workers)?),
        config::RuntimeLayout::Multi => None,
    };
    info!(runtime = ?layout, workers, "runtime");
    runtime.block_on(serve(frontend, &cfg, root, endpoint))
}

/// The metrics endpoint's listener (SO_REUSEPORT: during a binary upgrade both processes
/// hold the port) and its token.
fn open_endpoint(
    cfg: &Config,
) -> anyhow::Result<Option<(std::net::TcpListener, Option<control::http::Token>)>> {
    let Some(m) = &cfg.monitor.metrics else {
        return Ok(None);
    };
    let token = match &m.token_file {
        Some(f) => Some(
            control::http::Token::from_file(f)
                .with_context(|| format!("monitor.metrics_token_file {}", f.display()))?,
        ),
        None => {
            warn!(address = %m.listen, "metrics endpoint without authentication (metrics_insecure_no_auth)");
            None
        }
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(m.listen),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket
        .bind(&m.listen.into())
        .with_context(|| format!("monitor.metrics_listen {}", m.listen))?;
    socket.listen(64)?;
    info!(address = %m.listen, "metrics endpoint: /metrics, /ready");
    Ok(Some((socket.into(), token)))
}

async fn serve(
    frontend: Frontend,
    cfg: &Config,
    root: bool,
    endpoint: Option<(std::net::TcpListener, Option<control::http::Token>)>,
) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let (tx, rx) = mpsc::channel(4);
    let signals = tx.clone();
    tokio::spawn(async move {
        loop {
            let command = tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); Command::Stop }
                _ = sigint.recv() => { info!("SIGINT: stopping"); Command::Stop }
                _ = sighup.recv() => { info!("SIGHUP: reloading"); Command::Reload { file: None, done: None } }
            };
            if signals.send(command).await.is_err() {
                return;
            }
        }
    });
    let path = &cfg.ha.control_socket;
    let stop_control = tokio_util::sync::CancellationToken::new();
    let control_tasks = tokio_util::task::TaskTracker::new();
    if let Some((listener, token)) = endpoint {
        control_tasks.spawn(control::http::serve(
            listener,
            token,
            tx.clone(),
            stop_control.clone(),
        ));
    }
    match control::bind(path) {
        Ok(listener) => {
            control_tasks.spawn(control::serve(
                listener,
                path.clone(),
                tx,
                stop_control.clone(),
                control_tasks.clone(),
            ));
            info!(socket = %path.display(), "control socket ready");
        }
        // Trying a configuration without root (`--without-kernel`) should not need a
        // directory under /run: without one named in the configuration, go without.
        Err(e) if !root && *path == config::vrrp::default_control_socket(&cfg.frontend.name) => {
            warn!(error = %e, "no control socket (set ha.control_socket to a writable place): `robustifier reload`, `ha` and `upgrade` cannot reach this front-end");
            drop(tx);
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(interval) = notify::watchdog() {
        info!(
            ?interval,
            "systemd watchdog: fed while the accept loops and the load writer run"
        );
        control_tasks.spawn(notify::feed_watchdog(interval, stop_control.clone()));
    }
    let served = frontend.serve(rx).await;
    stop_control.cancel();
    control_tasks.close();
    // Control connections in flight get a moment.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), control_tasks.wait()).await;
    served
}

/// What the daemon reopens or creates after the switch becomes its user's: the pinned maps
/// (the load writer reopens them when it restarts) and the control socket's directory (the
/// socket is created there, a stale one replaced and removed at the stop). A directory the
/// daemon does not own by its name (anything but `/run/robustifier/<name>` or one made now)
/// is left alone, and must be writable by the user.
fn hand_over_pins(cfg: &Config, account: &privs::Account) -> anyhow::Result<()> {
    let pin_dir = &cfg.frontend.pin_dir;
    // The pin directory is the daemon's own unless it is the root of a bpffs mount (shared
    // with every other BPF user of the host): then only the map files are handed over.
    let is_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
    };
    if pin_dir.parent().is_some_and(is_bpffs) {
        // The user must pass through every bpffs directory above its own.
        for dir in pin_dir.ancestors().skip(1).take_while(|p| is_bpffs(p)) {
            privs::allow_search(dir)?;
        }
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
    Ok(())
}

/// The event log's folder and files become the daemon user's: it rotates them after
/// the switch (renames and creates files there).
fn hand_over_event_log(cfg: &Config, account: &privs::Account) -> anyhow::Result<()> {
    let Some(dir) = &cfg.monitor.event_log else {
        return Ok(());
    };
    hand_over_log(dir, "events.jsonl", account)
}

/// A JSON-lines log's folder and its files named `name` (and rotated from it) become the
/// daemon user's.
fn hand_over_log(dir: &Path, name: &str, account: &privs::Account) -> anyhow::Result<()> {
    if !dir.is_dir() {
        // Not opened (said at open): the records stay in memory.
        return Ok(());
    }
    privs::hand_over(dir, account)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("log {}", dir.display()))? {
        let path = entry?.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(name));
        if ours {
            privs::hand_over(&path, account)?;
        }
    }
    Ok(())
}

fn hand_over_control(cfg: &Config, account: &privs::Account) -> anyhow::Result<()> {
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
