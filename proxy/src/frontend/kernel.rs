//! The kernel side of a front-end: what the daemon needs from the eBPF data path, as a
//! trait, and the implementation on it. The XDP program drops floods before they cost a
//! socket; the steering program hands each connection to the listener of its service and
//! class (served, priority, shed), and the load maps are pinned for the kernel, routing
//! and `bpftool` alike.

use std::{
    collections::{HashMap, HashSet},
    net::TcpListener,
    path::PathBuf,
    sync::Arc,
};

use robustifier_common::{
    MAP_BACKENDS, PINNED_MAPS, PROG_STEER, PROG_XDP, SLOT_NORMAL, SLOT_PRIORITY, SLOT_SHED,
};
use tracing::info;

use super::succession::XdpPassed;
use crate::{
    backend::LoadView,
    config::{Config, Service},
    datapath::{DataPath, DataPathError, MapView, Tables, XDP_LINK_PIN, clear_stale_pin},
    front::{accept::Role, listeners::StdSlotSockets},
    load_writer::{LoadMaps, LoadTables, Mirror},
};

/// What a front-end needs of the kernel. Called in this order: [`apply`](Self::apply),
/// [`listen`](Self::listen) for each service, [`attach`](Self::attach); then, at the stop,
/// [`detach`](Self::detach).
pub trait KernelSide: Send {
    /// Writes the configuration into the kernel's tables (services, classes, flood limits).
    fn apply(&mut self, cfg: &Config) -> Result<(), KernelError>;
    /// A reload's changes to those tables, in place; `fresh` are the services it adds.
    fn apply_live(&mut self, cfg: &Config, fresh: &HashSet<u32>) -> Result<(), KernelError>;
    /// Whether the listeners opened for `old` still serve `new` (same service id): with
    /// steering they do whatever the addresses and port; plain sockets are bound to them.
    fn listeners_fit(&self, old: &Service, new: &Service) -> bool;
    /// Opens one service's listening sockets (non-blocking, listening), each with the
    /// answer its connections get.
    fn listen(&mut self, service: &Service) -> Result<Vec<(TcpListener, Role)>, KernelError>;
    /// Starts sending connections to the listeners; returns lines for the operator saying
    /// what was attached where.
    fn attach(&mut self, cfg: &Config) -> Result<Vec<String>, KernelError>;
    /// No new connection reaches the listeners from now on (the first step of a stop).
    fn detach(&mut self);
    /// Where the back-ends' load records are kept.
    fn loads(&self) -> Arc<dyn LoadMaps>;

    // A binary upgrade: the running process passes its attachments on to a successor.

    /// A listening socket the predecessor passed on: [`listen`](Self::listen) uses it for
    /// `service`'s `role` instead of opening one, where it fits.
    fn inherit(&mut self, service: &str, role: Role, listener: TcpListener);
    /// Makes the XDP attachment takeable by a successor (see [`XdpPassed`]).
    fn pass_on(&mut self) -> Result<Option<XdpPassed>, KernelError>;
    /// The successor gave up: what [`pass_on`](Self::pass_on) offered stays here.
    fn keep(&mut self);
    /// The successor took over: what was passed on is its alone.
    fn passed(&mut self);
    /// Take the predecessor's XDP attachment at [`attach`](Self::attach).
    fn take_on(&mut self, xdp: Option<XdpPassed>);
    /// The XDP program's counters, when there is one.
    fn xdp_counters(&self) -> Option<crate::datapath::XdpCounters> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    DataPath(#[from] DataPathError),
    #[error("listeners for service {service}: {source}")]
    Listen {
        service: String,
        source: std::io::Error,
    },
}

/// The eBPF data path: maps pinned under `frontend.pin_dir`, XDP on `frontend.interface`
/// (if set), steering on this network namespace. Needs CAP_BPF, CAP_NET_ADMIN (root).
pub struct Kernel {
    dp: DataPath,
    pin_dir: PathBuf,
    /// Listening sockets of the predecessor, by service name, class and IPv6-ness.
    inherited: HashMap<(String, Role, bool), TcpListener>,
    /// The predecessor's XDP link, to take at attach.
    xdp_from: Option<XdpPassed>,
    /// The load records written by this process, read by routing (see [`Mirror`]).
    mirror: Arc<Mirror>,
}

impl Kernel {
    /// Loads the programs and opens (or creates and pins) the maps; nothing is attached.
    pub fn load(cfg: &Config) -> Result<Kernel, KernelError> {
        let pin_dir = cfg.frontend.pin_dir.clone();
        Ok(Kernel {
            dp: DataPath::load(&pin_dir)?,
            pin_dir,
            inherited: HashMap::new(),
            xdp_from: None,
            mirror: Arc::default(),
        })
    }
}

impl KernelSide for Kernel {
    fn apply(&mut self, cfg: &Config) -> Result<(), KernelError> {
        self.dp.tables.apply(cfg)?;
        info!(pin_dir = %self.pin_dir.display(), "maps pinned and filled from {}", cfg.file.display());
        Ok(())
    }

    fn apply_live(&mut self, cfg: &Config, fresh: &HashSet<u32>) -> Result<(), KernelError> {
        Ok(self.dp.tables.apply_live(cfg, fresh)?)
    }

    /// Listeners are found by service id and class, not by address: the service map
    /// (address and port to id) is what a reload changes.
    fn listeners_fit(&self, _old: &Service, _new: &Service) -> bool {
        true
    }

    /// A socket per class and address family, bound to loopback ephemeral ports and
    /// registered in the steering map: nothing reaches them but steered connections.
    fn listen(&mut self, service: &Service) -> Result<Vec<(TcpListener, Role)>, KernelError> {
        let mut out = Vec::new();
        for (slot, role) in [
            (SLOT_NORMAL, Role::Serve),
            (SLOT_PRIORITY, Role::Priority),
            (SLOT_SHED, Role::Shed),
        ] {
            let passed = (
                self.inherited.remove(&(service.name.clone(), role, false)),
                self.inherited.remove(&(service.name.clone(), role, true)),
            );
            let sockets = match passed {
                (Some(v4), Some(v6)) => StdSlotSockets { v4, v6 },
                _ => StdSlotSockets::bind().map_err(|source| KernelError::Listen {
                    service: service.name.clone(),
                    source,
                })?,
            };
            for (family, socket) in sockets.by_family() {
                self.dp
                    .register_listener(service.id, slot, family, socket)?;
            }
            out.extend([(sockets.v4, role), (sockets.v6, role)]);
        }
        Ok(out)
    }

    fn attach(&mut self, cfg: &Config) -> Result<Vec<String>, KernelError> {
        let passed = self.xdp_from.take();
        let xdp = match (&cfg.frontend.interface, passed) {
            (Some(iface), Some(p)) if p.interface == *iface => {
                self.dp.take_xdp(iface, &p.pin)?;
                format!("{PROG_XDP} on {iface} (the predecessor's link, now running this program)")
            }
            (Some(iface), _) => {
                clear_stale_pin(&self.pin_dir.join(XDP_LINK_PIN));
                let mode = self.dp.attach_xdp(iface, cfg.frontend.xdp_mode)?;
                format!("{PROG_XDP} on {iface} ({mode} mode)")
            }
            (None, _) => format!("{PROG_XDP} not attached (no frontend.interface)"),
        };
        self.dp.attach_steering()?;
        let dir = self.pin_dir.display();
        Ok(vec![
            format!("attached: {xdp}; {PROG_STEER} (sk_lookup) on this network namespace"),
            format!("maps pinned in {dir}: {}", PINNED_MAPS.join(" ")),
            format!(
                "inspect: robustifier maps --pin-dir {dir}   or   bpftool map dump pinned {dir}/{MAP_BACKENDS}"
            ),
        ])
    }

    fn detach(&mut self) {
        self.dp.detach();
        info!(pin_dir = %self.pin_dir.display(), "detached; the maps stay pinned");
    }

    fn loads(&self) -> Arc<dyn LoadMaps> {
        Arc::new(Pinned {
            dir: self.pin_dir.clone(),
            mirror: Arc::clone(&self.mirror),
        })
    }

    fn inherit(&mut self, service: &str, role: Role, listener: TcpListener) {
        let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
        self.inherited
            .insert((service.to_owned(), role, v6), listener);
    }

    fn pass_on(&mut self) -> Result<Option<XdpPassed>, KernelError> {
        let pin = self.pin_dir.join(XDP_LINK_PIN);
        Ok(self
            .dp
            .pass_xdp(&pin)?
            .map(|interface| XdpPassed { interface, pin }))
    }

    fn keep(&mut self) {
        if let Err(e) = self.dp.keep_xdp() {
            tracing::error!(error = %e, "taking the XDP link back failed");
        }
    }

    fn passed(&mut self) {
        self.dp.xdp_taken();
    }

    fn xdp_counters(&self) -> Option<crate::datapath::XdpCounters> {
        crate::datapath::Tables::from_pins(&self.pin_dir)
            .and_then(|t| crate::datapath::Snapshot::read(&t))
            .map(|s| s.xdp)
            .ok()
    }

    fn take_on(&mut self, xdp: Option<XdpPassed>) {
        self.xdp_from = xdp;
    }
}

/// The pinned load map, opened anew by each reader and writer (a handle each, so a
/// restarted writer does not depend on the one that died); routing reads the records
/// through the process's [`Mirror`] of them, without a map lookup per session.
struct Pinned {
    dir: PathBuf,
    mirror: Arc<Mirror>,
}

impl LoadMaps for Pinned {
    fn view(&self) -> Result<Arc<dyn LoadView>, DataPathError> {
        Ok(self.mirror.view(Arc::new(MapView::open(&self.dir)?)))
    }

    fn tables(&self) -> Result<Box<dyn LoadTables>, DataPathError> {
        Ok(self.mirror.tables(Box::new(Tables::from_pins(&self.dir)?)))
    }
}
