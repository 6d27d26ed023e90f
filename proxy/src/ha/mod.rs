//! Virtual-IP failover at run time: the privileged half of VRRPv3 around the pure
//! [`crate::vrrp`] code.
//!
//! [`spawn`] starts one task per configured virtual router ([`router`]): raw protocol-112
//! sockets bound to the interface ([`socket`]), addresses added and removed over netlink
//! ([`link`]), gratuitous ARP and unsolicited NA after a takeover ([`announce`]), tracking
//! of the front-end's own health ([`health`]) and drain-aware handoff ([`gate`]), asked
//! for over the front-end's control socket (`robustifier ha`). [`Ha::shutdown`] resigns
//! every router with priority 0 after draining, so backups take over after Skew_Time;
//! [`Ha::hand_over`] stops every router silently for a successor process that continues
//! each role (a binary upgrade).
//!
//! A reload changes the routers live, split like the reload itself: [`Ha::plan`] does what
//! can fail (interfaces, primary addresses, raw sockets of added routers) and changes
//! nothing; [`Ha::reconfigure`] cannot fail: routers added start as
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
pub(crate) mod gate;
pub(crate) mod health;
pub(crate) mod hooks;
pub(crate) mod link;
pub mod router;
pub(crate) mod socket;

use std::{net::IpAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

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
}

/// A router's role passed from a process to its successor (binary upgrade).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Succeeded {
    pub vrid: u8,
    pub ipv6: bool,
    pub master: bool,
}

/// The running HA side of a front-end.
pub struct Ha {
    routers: Vec<Running>,
    tasks: TaskTracker,
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
/// nothing behind: its sockets close.
pub struct Reconfiguration {
    added: Vec<Prepared>,
    /// (position in the running list, new settings, a socket when the old one no longer
    /// fits).
    changed: Vec<(usize, VirtualRouter, Option<socket::VrrpSocket>)>,
    /// Positions in the running list, ascending.
    removed: Vec<usize>,
    drain_deadline: Duration,
}

impl Reconfiguration {
    /// Whether anything changes for the running routers.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
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

/// Starts a task per `[[vrrp]]` router of `cfg`. With no routers configured nothing
/// starts. Call after the listeners run and the data path is attached: tracking takes the
/// listeners running now as the healthy number. Routers that `succeeded` names as master
/// start as master (see [`Ha::hand_over`]); the others as usual.
pub async fn spawn(cfg: &Config, hooks: Hooks, succeeded: &[Succeeded]) -> Result<Ha, HaError> {
    let mut ha = Ha {
        routers: Vec::new(),
        tasks: TaskTracker::new(),
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
    for p in prepared {
        let take_over = succeeded
            .iter()
            .any(|s| s.master && (s.vrid, s.ipv6) == (p.cfg.vrid.get(), p.cfg.ipv6()));
        let running = ha.start(p, take_over);
        ha.routers.push(running);
    }
    Ok(ha)
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
    /// Starts a prepared router's task (as master when it takes over a predecessor's
    /// mastership); cannot fail.
    fn start(&self, p: Prepared, take_over: bool) -> Running {
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
                    take_over,
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
    /// unicast peers gets a new socket.
    pub async fn plan(&self, new: &Config) -> Result<Reconfiguration, HaError> {
        let mut plan = Reconfiguration {
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            drain_deadline: new.ha.drain_deadline,
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
        Ok(plan)
    }

    /// The in-force half of a reload; cannot fail. Changed routers take their new
    /// settings in place ([`router::Reconfig`]); removed ones resign as at a stop (a
    /// master drains, sends priority 0 and removes its addresses); added ones start like
    /// at [`spawn`].
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
        for p in added {
            let running = self.start(p, false);
            self.routers.push(running);
        }
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
        self.tasks.close();
        // Router tasks have returned.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
    }

    /// Stops every router without a word on the link, masters keeping their addresses, and
    /// says what each was: the successor process starts the masters as master, so the
    /// peers see adverts continue (from the same address) and no transition.
    pub async fn hand_over(self) -> Vec<Succeeded> {
        let mut out = Vec::new();
        for r in self.routers.iter().map(|r| &r.handle) {
            let (tx, rx) = oneshot::channel();
            let master =
                r.commands.send(Command::HandOver(tx)).await.is_ok() && rx.await.unwrap_or(false);
            out.push(Succeeded {
                vrid: r.vrid,
                ipv6: r.ipv6,
                master,
            });
        }
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        out
    }

    /// The routers' status, for the control socket.
    pub fn status(&self) -> Vec<RouterStatus> {
        self.routers.iter().map(|r| r.handle.status()).collect()
    }

    /// A drain-aware release of VRID `vrid` (both families), or its undoing: the answer
    /// for the operator once every router of that number is done. Returns at once; the
    /// work runs on its own task, so a long drain holds nothing else up.
    pub fn handoff(&self, vrid: u8, release: bool) -> oneshot::Receiver<Result<String, String>> {
        let (done, answer) = oneshot::channel();
        let targets: Vec<RouterHandle> = self
            .routers
            .iter()
            .map(|r| &r.handle)
            .filter(|r| r.vrid == vrid)
            .cloned()
            .collect();
        tokio::spawn(async move {
            let _ = done.send(handoff(targets, vrid, release).await);
        });
        answer
    }
}

async fn handoff(targets: Vec<RouterHandle>, vrid: u8, release: bool) -> Result<String, String> {
    if targets.is_empty() {
        return Err(format!("no virtual router with VRID {vrid} here"));
    }
    let verb = if release { "release" } else { "resume" };
    info!(vrid, verb, "control request");
    // Both families at once: their drains overlap instead of adding up.
    let mut waits = Vec::new();
    for r in targets {
        let (tx, rx) = oneshot::channel();
        let cmd = if release {
            Command::Release(tx)
        } else {
            Command::Resume(tx)
        };
        if r.commands.send(cmd).await.is_err() {
            return Err(format!("VRID {vrid}: the router task has stopped"));
        }
        waits.push(rx);
    }
    let mut notes = Vec::new();
    for rx in waits {
        notes.push(rx.await.map_err(|_| {
            format!("VRID {vrid}: the router task stopped while handling the request")
        })?);
    }
    Ok(notes.join("; "))
}
