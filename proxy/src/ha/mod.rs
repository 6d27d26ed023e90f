//! Virtual-IP failover at run time: the privileged half of VRRPv3 around the pure
//! [`crate::vrrp`] code.
//!
//! [`spawn`] starts one task per configured virtual router ([`router`]): raw protocol-112
//! sockets bound to the interface ([`socket`]), addresses added and removed over netlink
//! ([`link`]), gratuitous ARP and unsolicited NA after a takeover ([`announce`]), tracking
//! of the front-end's own health ([`health`]), drain-aware handoff ([`gate`]) and the
//! control socket for `robustifier ha` ([`control`]). [`Ha::shutdown`] resigns every
//! router with priority 0 after draining, so backups take over after Skew_Time.
//!
//! A reload changes the routers live, split like the reload itself: [`Ha::plan`] does what
//! can fail (interfaces, primary addresses, raw sockets of added routers, a new control
//! socket) and changes nothing; [`Ha::reconfigure`] cannot fail: routers added start as
//! at [`spawn`], removed ones resign as at a stop, the others take their new settings in
//! place without leaving their role, so only a change that asks for another master (a
//! priority that now loses, or now wins with preemption) moves it, once, through the
//! protocol.
//!
//! The data path needs no change on a takeover: the service table already lists the VIPs
//! and the steering program serves whatever local address a VIP is; adding the address to
//! the interface is what makes the kernel deliver its traffic here.
//!
//! Invariant: only a router in Master holds its virtual addresses, and each router's
//! timers run on the monotonic clock (a wall-clock jump never causes a failover).

pub(crate) mod announce;
pub mod control;
pub(crate) mod gate;
pub(crate) mod health;
pub(crate) mod hooks;
pub(crate) mod link;
pub mod router;
pub(crate) mod socket;

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

pub use control::{StatusReport, render, request};
pub use gate::{Admitted, Gate};
pub use health::Health;
pub use hooks::Hooks;
pub use router::RouterStatus;

use crate::{
    config::{Config, vrrp::VirtualRouter},
    vrrp::Router,
};
use router::{Command, RouterHandle, Task};

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("vrrp VRID {vrid} ({family}): interface {interface}: {reason}")]
    Interface {
        vrid: u8,
        family: &'static str,
        interface: String,
        reason: String,
    },
    #[error("vrrp VRID {vrid} ({family}) on {interface}: raw socket: {source}")]
    Socket {
        vrid: u8,
        family: &'static str,
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// The running HA side of a front-end.
pub struct Ha {
    routers: Vec<Running>,
    tasks: TaskTracker,
    stop_control: CancellationToken,
    control_socket: Option<PathBuf>,
    /// A duplicate of the control socket's listener: a reload that adds or removes routers
    /// serves it again with the new list, and the socket stays bound meanwhile.
    control_listener: Option<std::os::unix::net::UnixListener>,
    /// Stops the control server serving the current list (a child of `stop_control`).
    serving: CancellationToken,
    frontend: String,
    hooks: Hooks,
    drain_deadline: Duration,
}

/// A router task running, with what a reload needs to change it.
struct Running {
    handle: RouterHandle,
    cfg: VirtualRouter,
    ifindex: u32,
    primary: IpAddr,
    reconfigs: mpsc::UnboundedSender<router::Reconfig>,
}

impl Running {
    fn key(&self) -> (u8, bool, &str) {
        key(&self.cfg)
    }
}

/// What identifies a router across configurations; the configuration diff matches on it
/// too. A router whose interface changed is another router: removed, and one added.
fn key(r: &VirtualRouter) -> (u8, bool, &str) {
    (r.vrid.get(), r.ipv6(), r.interface.as_str())
}

/// A reload's changes to the HA side, with everything that can fail done
/// ([`Ha::plan`]); [`Ha::reconfigure`] puts it in force. Dropped unused, it leaves
/// nothing behind: its sockets close, and a control socket it bound is removed.
pub struct Reconfiguration {
    added: Vec<Prepared>,
    /// (position in the running list, new settings, a socket when the old one no longer
    /// fits).
    changed: Vec<(usize, VirtualRouter, Option<socket::VrrpSocket>)>,
    /// Positions in the running list, ascending.
    removed: Vec<usize>,
    drain_deadline: Duration,
    /// The control socket at a new path: bound, not yet served.
    control: Option<(PathBuf, std::os::unix::net::UnixListener)>,
}

impl Reconfiguration {
    /// Whether anything changes for the running routers or the control socket.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.control.is_none()
    }
}

impl Drop for Reconfiguration {
    fn drop(&mut self) {
        if let Some((path, _)) = self.control.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A router of a new configuration ready to start: everything that can fail is done.
struct Prepared {
    cfg: VirtualRouter,
    ifindex: u32,
    primary: IpAddr,
    router: Router,
    socket: socket::VrrpSocket,
    net: link::Netlink,
}

/// Starts a task per `[[vrrp]]` router of `cfg` and the control socket. With no routers
/// configured nothing starts. Call after the listeners run and the data path is attached:
/// tracking takes the listeners running now as the healthy number.
pub async fn spawn(cfg: &Config, hooks: Hooks) -> Result<Ha, HaError> {
    let tasks = TaskTracker::new();
    let stop_control = CancellationToken::new();
    let mut ha = Ha {
        routers: Vec::new(),
        tasks,
        serving: stop_control.child_token(),
        stop_control,
        control_socket: None,
        control_listener: None,
        frontend: cfg.frontend.name.clone(),
        hooks,
        drain_deadline: cfg.ha.drain_deadline,
    };
    if cfg.vrrp.is_empty() {
        return Ok(ha);
    }
    ha.hooks.health.arm();
    let net = link::Netlink::open()?;
    let all_vips: Vec<IpAddr> = cfg.vrrp.iter().flat_map(|r| r.addresses()).collect();
    let mut prepared = Vec::new();
    for r in &cfg.vrrp {
        prepared.push(prepare(&net, r, &all_vips).await?);
    }
    // The socket comes last so that a configuration error above leaves nothing behind.
    let listener = control::bind(&cfg.ha.control_socket)?;
    let listener = duplicate(listener, &cfg.ha.control_socket)?;
    for p in prepared {
        let running = ha.start(p);
        ha.routers.push(running);
    }
    ha.control_listener = Some(listener);
    ha.control_socket = Some(cfg.ha.control_socket.clone());
    ha.serve_control();
    info!(socket = %cfg.ha.control_socket.display(), "HA control socket ready");
    Ok(ha)
}

/// The control socket's listener as a std listener the [`Ha`] keeps, so that it can serve
/// it again (a tokio listener cannot be taken back from the task serving it).
fn duplicate(
    listener: tokio::net::UnixListener,
    path: &std::path::Path,
) -> Result<std::os::unix::net::UnixListener, HaError> {
    let io = |source| {
        HaError::Control(control::ControlError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let std = listener.into_std().map_err(io)?;
    std.set_nonblocking(true).map_err(io)?;
    Ok(std)
}

/// Everything that can fail in starting router `r`: its interface, a primary address to
/// send from (not one of `all_vips`), its raw socket and its netlink connection.
async fn prepare(
    net: &link::Netlink,
    r: &VirtualRouter,
    all_vips: &[IpAddr],
) -> Result<Prepared, HaError> {
    let (vrid, family) = (r.vrid.get(), r.family());
    let interface_error = |reason: String| HaError::Interface {
        vrid,
        family,
        interface: r.interface.clone(),
        reason,
    };
    let info = net
        .link(&r.interface)
        .await?
        .ok_or_else(|| interface_error("no such interface".into()))?;
    let on_link = net.addresses(info.index).await?;
    let primary = link::primary_address(r.ipv6(), &on_link, all_vips).ok_or_else(|| {
        interface_error(if r.ipv6() {
            "no link-local IPv6 address to send adverts from (RFC 5798 section 5.1.2.1)".into()
        } else {
            "no IPv4 address other than virtual ones to send adverts from".into()
        })
    })?;
    let router = Router::new(r.state_config(primary));
    let socket = open_socket(r, info.index, primary)
        .await
        .map_err(|source| HaError::Socket {
            vrid,
            family,
            interface: r.interface.clone(),
            source,
        })?;
    // A connection per router: the kernel refuses a second dump on a netlink socket
    // while one is running (EBUSY), and routers list addresses concurrently.
    let own_net = link::Netlink::open()?;
    Ok(Prepared {
        cfg: r.clone(),
        ifindex: info.index,
        primary,
        router,
        socket,
        net: own_net,
    })
}

/// Opens the router's socket. A link-local address that is still tentative (duplicate
/// address detection runs for about a second after an interface comes up) cannot be bound
/// yet: wait for it rather than fail a front-end started together with its interface.
async fn open_socket(
    r: &crate::config::vrrp::VirtualRouter,
    ifindex: u32,
    primary: IpAddr,
) -> std::io::Result<socket::VrrpSocket> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match socket::VrrpSocket::open(&r.interface, ifindex, primary, r.unicast_peers.is_empty()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    && tokio::time::Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

impl Ha {
    /// Starts a prepared router's task; cannot fail.
    fn start(&self, p: Prepared) -> Running {
        let Prepared {
            cfg: r,
            ifindex,
            primary,
            router,
            socket,
            net,
        } = p;
        let status = Arc::new(std::sync::Mutex::new(RouterStatus {
            vrid: r.vrid.get(),
            family: r.family().to_owned(),
            interface: r.interface.clone(),
            state: router.state().to_string(),
            priority: r.priority.get(),
            configured_priority: r.priority.get(),
            primary,
            master: None,
            vips: r.addresses(),
            advert_interval_cs: r.advert_interval.cs(),
            master_adver_interval_cs: r.advert_interval.cs(),
            discarded_not_a_peer: 0,
            discarded_other_addresses: 0,
            released: false,
            draining: false,
            failing: Vec::new(),
            last_transition: None,
        }));
        let (tx, rx) = mpsc::channel(4);
        let (reconfigs, reconfigs_rx) = mpsc::unbounded_channel();
        let handle = RouterHandle {
            vrid: r.vrid.get(),
            ipv6: r.ipv6(),
            status: status.clone(),
            commands: tx,
        };
        info!(vrid = r.vrid.get(), family = r.family(), interface = %r.interface, %primary, priority = r.priority.get(), interval_cs = r.advert_interval.cs(), max_master_interval_cs = r.max_advert_interval.cs(), vips = ?r.addresses(), "VRRP router starting");
        // A router owns its socket and command channel, so it is not restarted; a panic
        // shows in the status (`ready`, `tasks`) instead of passing unnoticed.
        let name = format!("vrrp router {} {}", r.vrid, r.family());
        self.tasks.spawn(
            self.hooks.tasks.watch(
                name,
                Task {
                    cfg: r.clone(),
                    ifindex,
                    primary,
                    router,
                    socket,
                    net,
                    hooks: self.hooks.clone(),
                    drain_deadline: self.drain_deadline,
                    status,
                    commands: rx,
                    reconfigs: reconfigs_rx,
                    garp: None,
                    last_error: None,
                    discard_logs: Default::default(),
                }
                .run(),
            ),
        );
        Running {
            handle,
            cfg: r,
            ifindex,
            primary,
            reconfigs,
        }
    }

    /// The plan half of a reload: everything that can fail in moving to `new`, changing
    /// nothing that runs. Routers to add are prepared as [`spawn`] prepares them
    /// (interface, primary address, raw socket); a router moving between multicast and
    /// unicast peers gets a new socket; a new control socket path is bound.
    pub async fn plan(&self, new: &Config) -> Result<Reconfiguration, HaError> {
        let mut plan = Reconfiguration {
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            drain_deadline: new.ha.drain_deadline,
            control: None,
        };
        let all_vips: Vec<IpAddr> = new.vrrp.iter().flat_map(|r| r.addresses()).collect();
        let mut kept = vec![false; self.routers.len()];
        let mut net = None;
        for r in &new.vrrp {
            let running = self
                .routers
                .iter()
                .position(|run| run.key() == key(r))
                // A primary address that the new configuration makes virtual can no longer
                // send adverts: that router starts over, choosing another.
                .filter(|&i| !all_vips.contains(&self.routers[i].primary));
            match running {
                Some(i) => {
                    kept[i] = true;
                    let run = &self.routers[i];
                    if run.cfg == *r && self.drain_deadline == new.ha.drain_deadline {
                        continue;
                    }
                    let socket =
                        if run.cfg.unicast_peers.is_empty() != r.unicast_peers.is_empty() {
                            Some(open_socket(r, run.ifindex, run.primary).await.map_err(
                                |source| HaError::Socket {
                                    vrid: r.vrid.get(),
                                    family: r.family(),
                                    interface: r.interface.clone(),
                                    source,
                                },
                            )?)
                        } else {
                            None
                        };
                    plan.changed.push((i, r.clone(), socket));
                }
                None => {
                    let net = match &mut net {
                        Some(net) => net,
                        None => net.insert(link::Netlink::open()?),
                    };
                    plan.added.push(prepare(net, r, &all_vips).await?);
                }
            }
        }
        plan.removed = (0..self.routers.len()).filter(|&i| !kept[i]).collect();
        // Bound last, like at the start, and only where `spawn` binds one.
        let wanted = self.control_socket.is_some() || !new.vrrp.is_empty();
        if wanted && self.control_socket.as_ref() != Some(&new.ha.control_socket) {
            let path = &new.ha.control_socket;
            let listener = duplicate(control::bind(path)?, path)?;
            plan.control = Some((path.clone(), listener));
        }
        Ok(plan)
    }

    /// The in-force half of a reload; cannot fail. Changed routers take their new
    /// settings in place ([`router::Reconfig`]); removed ones resign as at a stop (a
    /// master drains, sends priority 0 and removes its addresses); added ones start like
    /// at [`spawn`]. A new control socket is served, then the old one removed.
    pub fn reconfigure(&mut self, mut plan: Reconfiguration) {
        self.drain_deadline = plan.drain_deadline;
        let routers_before = self.routers.len();
        for (i, cfg, socket) in std::mem::take(&mut plan.changed) {
            let run = &mut self.routers[i];
            let _ = run.reconfigs.send(router::Reconfig {
                cfg: cfg.clone(),
                drain_deadline: plan.drain_deadline,
                socket,
            });
            run.cfg = cfg;
        }
        let removed = std::mem::take(&mut plan.removed);
        for &i in removed.iter().rev() {
            let gone = self.routers.remove(i);
            info!(vrid = gone.handle.vrid, family = gone.cfg.family(), interface = %gone.cfg.interface, "VRRP router removed by a reload: resigning");
            let (tx, _) = oneshot::channel();
            match gone.handle.commands.try_send(Command::Shutdown(tx)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    // A control request is queued ahead of it; the task takes the stop next.
                    let commands = gone.handle.commands.clone();
                    self.tasks.spawn(async move {
                        let _ = commands.send(cmd).await;
                    });
                }
                // The task has ended already.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        let added = std::mem::take(&mut plan.added);
        if routers_before == 0 && !added.is_empty() {
            self.hooks.health.arm();
        }
        let any_added = !added.is_empty();
        for p in added {
            let running = self.start(p);
            self.routers.push(running);
        }
        match plan.control.take() {
            Some((path, listener)) => {
                let old = self.control_socket.replace(path.clone());
                self.control_listener = Some(listener);
                self.serve_control();
                info!(socket = %path.display(), "HA control socket ready");
                if let Some(old) = old {
                    let _ = std::fs::remove_file(&old);
                    info!(socket = %old.display(), "HA control socket at the old path removed");
                }
            }
            None if any_added || !removed.is_empty() => self.serve_control(),
            None => {}
        }
    }

    /// Serves the control socket with the current routers, in place of whatever served it.
    fn serve_control(&mut self) {
        self.serving.cancel();
        self.serving = self.stop_control.child_token();
        let Some(kept) = &self.control_listener else {
            return;
        };
        let listener = match kept
            .try_clone()
            .and_then(tokio::net::UnixListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "control socket: cannot serve it again; `robustifier ha` answers no more until a restart");
                return;
            }
        };
        let routers = self.routers.iter().map(|r| r.handle.clone()).collect();
        self.tasks.spawn(control::serve(
            listener,
            self.frontend.clone(),
            routers,
            self.hooks.tasks.clone(),
            self.serving.clone(),
            self.tasks.clone(),
        ));
    }

    /// Graceful stop: every master drains its addresses (up to the drain deadline), then
    /// resigns with priority 0 and removes them; backups just stop.
    pub async fn shutdown(self) {
        if self.routers.is_empty() {
            return;
        }
        let mut waits = Vec::new();
        for r in &self.routers {
            let (tx, rx) = oneshot::channel();
            if r.handle.commands.send(Command::Shutdown(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            match rx.await {
                Ok(note) => info!("{note}"),
                Err(_) => warn!("a VRRP router task ended before it could resign"),
            }
        }
        self.stop_control.cancel();
        self.tasks.close();
        // Control connections in flight get a moment; router tasks have returned.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        if let Some(path) = self.control_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}
