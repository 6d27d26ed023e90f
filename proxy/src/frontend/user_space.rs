//! A front-end without a kernel side: each service listens on its own addresses and port
//! with plain sockets, and the load records are kept in memory. Nothing needs privileges
//! (a port under 1024 aside), so it serves to try a configuration on one host and to test
//! accept limits, sessions, reloads and the stop without root.
//!
//! What only the kernel does is absent: no flood drops or SYN budget before a socket is
//! spent, no connect-time shedding by class (every connection is served as the ordinary
//! class), no counters for `robustifier maps`.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    sync::{Arc, Mutex},
};

use robustifier_common::{BackendLoad, ServiceState};
use socket2::{Domain, Protocol, Socket, Type};

use super::{
    kernel::{KernelError, KernelSide},
    succession::XdpPassed,
};
use crate::{
    backend::LoadView,
    config::{Config, Service},
    datapath::DataPathError,
    front::{accept::Role, listeners::BACKLOG},
    load_writer::{LoadMaps, LoadTables},
    sync::lock,
};

/// Plain listeners on each service's addresses; see the module documentation.
#[derive(Default)]
pub struct UserSpace {
    loads: Arc<Memory>,
    /// Sockets handed in ready-made, by service name, instead of binding its addresses.
    given: HashMap<String, Vec<TcpListener>>,
    /// Sockets a predecessor process passed on, by service name: used while they are bound
    /// to the service's addresses and port.
    inherited: HashMap<String, Vec<TcpListener>>,
}

impl UserSpace {
    pub fn new() -> UserSpace {
        UserSpace::default()
    }

    /// Serves `service` on `listener` (already bound) instead of binding its configured
    /// addresses: a caller that binds port 0 learns the port without a race.
    pub fn with_listener(mut self, service: &str, listener: TcpListener) -> UserSpace {
        self.given
            .entry(service.to_owned())
            .or_default()
            .push(listener);
        self
    }
}

impl KernelSide for UserSpace {
    fn apply(&mut self, _cfg: &Config) -> Result<(), KernelError> {
        Ok(())
    }

    fn apply_live(&mut self, _cfg: &Config, _fresh: &HashSet<u32>) -> Result<(), KernelError> {
        Ok(())
    }

    /// Sockets handed in ready-made stay; bound ones fit while the addresses and port do.
    fn listeners_fit(&self, old: &Service, new: &Service) -> bool {
        (old.port, &old.vips) == (new.port, &new.vips)
    }

    fn listen(&mut self, service: &Service) -> Result<Vec<(TcpListener, Role)>, KernelError> {
        let err = |source| KernelError::Listen {
            service: service.name.clone(),
            source,
        };
        let sockets = match self.given.remove(&service.name) {
            Some(given) => {
                for s in &given {
                    s.set_nonblocking(true).map_err(err)?;
                }
                given
            }
            None => {
                let addrs: Vec<IpAddr> = if service.vips.is_empty() {
                    vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()]
                } else {
                    service.vips.clone()
                };
                let mut passed = self.inherited.remove(&service.name).unwrap_or_default();
                addrs
                    .into_iter()
                    .map(|a| {
                        let want = SocketAddr::new(a, service.port);
                        match passed
                            .iter()
                            .position(|l| l.local_addr().is_ok_and(|at| at == want))
                        {
                            Some(i) => Ok(passed.swap_remove(i)),
                            None => bind(want),
                        }
                    })
                    .collect::<Result<_, _>>()
                    .map_err(err)?
            }
        };
        Ok(sockets.into_iter().map(|s| (s, Role::Serve)).collect())
    }

    fn attach(&mut self, _cfg: &Config) -> Result<Vec<String>, KernelError> {
        Ok(vec![
            "no kernel side: plain listeners, no XDP, no steering, load records in memory"
                .to_owned(),
        ])
    }

    /// The accept loops end at the stop; nothing else takes connections.
    fn detach(&mut self) {}

    fn loads(&self) -> Arc<dyn LoadMaps> {
        Arc::clone(&self.loads) as Arc<dyn LoadMaps>
    }

    fn inherit(&mut self, service: &str, _role: Role, listener: TcpListener) {
        self.inherited
            .entry(service.to_owned())
            .or_default()
            .push(listener);
    }

    /// Nothing but the listeners to pass on.
    fn pass_on(&mut self) -> Result<Option<XdpPassed>, KernelError> {
        Ok(None)
    }

    fn keep(&mut self) {}

    fn passed(&mut self) {}

    fn take_on(&mut self, _xdp: Option<XdpPassed>) {}
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Each family gets its own socket, as with the kernel side.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Load records and service states in memory, shared by routing and the writer.
#[derive(Default)]
struct Memory {
    records: Arc<Records>,
}

#[derive(Default)]
struct Records {
    backends: Mutex<HashMap<u32, BackendLoad>>,
    services: Mutex<HashMap<u32, ServiceState>>,
}

impl LoadView for Records {
    fn load(&self, id: u32) -> Option<BackendLoad> {
        lock(&self.backends).get(&id).copied()
    }
}

impl LoadMaps for Memory {
    fn view(&self) -> Result<Arc<dyn LoadView>, DataPathError> {
        Ok(Arc::clone(&self.records) as Arc<dyn LoadView>)
    }

    fn tables(&self) -> Result<Box<dyn LoadTables>, DataPathError> {
        Ok(Box::new(Arc::clone(&self.records)))
    }
}

impl LoadTables for Arc<Records> {
    fn backend(&self, id: u32) -> Option<BackendLoad> {
        self.load(id)
    }

    fn set_backend(&mut self, id: u32, record: BackendLoad) -> Result<(), DataPathError> {
        lock(&self.backends).insert(id, record);
        Ok(())
    }

    fn set_service(&mut self, id: u32, state: ServiceState) -> Result<(), DataPathError> {
        lock(&self.services).insert(id, state);
        Ok(())
    }
}
