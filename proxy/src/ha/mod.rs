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
use tracing::{info, warn};

pub use control::{StatusReport, render, request};
pub use gate::{Admitted, Gate};
pub use health::Health;
pub use hooks::Hooks;
pub use router::RouterStatus;

use crate::{config::Config, vrrp::Router};
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
    routers: Vec<RouterHandle>,
    tasks: TaskTracker,
    stop_control: CancellationToken,
    control_socket: Option<PathBuf>,
}

/// Starts a task per `[[vrrp]]` router of `cfg` and the control socket. With no routers
/// configured nothing starts. Call after the listeners run and the data path is attached:
/// tracking takes the listeners running now as the healthy number.
pub async fn spawn(cfg: &Config, hooks: Hooks) -> Result<Ha, HaError> {
    let tasks = TaskTracker::new();
    let stop_control = CancellationToken::new();
    if cfg.vrrp.is_empty() {
        return Ok(Ha {
            routers: Vec::new(),
            tasks,
            stop_control,
            control_socket: None,
        });
    }
    hooks.health.arm();
    let net = link::Netlink::open()?;
    let all_vips: Vec<IpAddr> = cfg.vrrp.iter().flat_map(|r| r.addresses()).collect();
    let mut prepared = Vec::new();
    for r in &cfg.vrrp {
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
        let primary = link::primary_address(r.ipv6(), &on_link, &all_vips).ok_or_else(|| {
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
        prepared.push((r.clone(), info.index, primary, router, socket));
    }
    // The socket comes last so that a configuration error above leaves nothing behind.
    let listener = control::bind(&cfg.ha.control_socket)?;

    let mut routers = Vec::new();
    for (r, ifindex, primary, router, socket) in prepared {
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
        routers.push(RouterHandle {
            vrid: r.vrid.get(),
            ipv6: r.ipv6(),
            status: status.clone(),
            commands: tx,
        });
        info!(vrid = r.vrid.get(), family = r.family(), interface = %r.interface, %primary, priority = r.priority.get(), interval_cs = r.advert_interval.cs(), max_master_interval_cs = r.max_advert_interval.cs(), vips = ?r.addresses(), "VRRP router starting");
        // A connection per router: the kernel refuses a second dump on a netlink socket
        // while one is running (EBUSY), and routers list addresses concurrently.
        let own_net = link::Netlink::open()?;
        // A router owns its socket and command channel, so it is not restarted; a panic
        // shows in the status (`ready`, `tasks`) instead of passing unnoticed.
        let name = format!("vrrp router {} {}", r.vrid, r.family());
        tasks.spawn(
            hooks.tasks.watch(
                name,
                Task {
                    cfg: r,
                    ifindex,
                    primary,
                    router,
                    socket,
                    net: own_net,
                    hooks: hooks.clone(),
                    drain_deadline: cfg.ha.drain_deadline,
                    status,
                    commands: rx,
                    garp: None,
                    last_error: None,
                    discard_logs: Default::default(),
                }
                .run(),
            ),
        );
    }
    tasks.spawn(control::serve(
        listener,
        cfg.frontend.name.clone(),
        routers.clone(),
        hooks.tasks.clone(),
        stop_control.clone(),
        tasks.clone(),
    ));
    info!(socket = %cfg.ha.control_socket.display(), "HA control socket ready");
    Ok(Ha {
        routers,
        tasks,
        stop_control,
        control_socket: Some(cfg.ha.control_socket.clone()),
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
    /// Graceful stop: every master drains its addresses (up to the drain deadline), then
    /// resigns with priority 0 and removes them; backups just stop.
    pub async fn shutdown(self) {
        if self.routers.is_empty() {
            return;
        }
        let mut waits = Vec::new();
        for r in &self.routers {
            let (tx, rx) = oneshot::channel();
            if r.commands.send(Command::Shutdown(tx)).await.is_ok() {
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
