//! A binary upgrade, seen from the front-end: what a running process passes on to its
//! successor, and how the successor starts from it.
//!
//! The running process offers ([`Frontend::offer`]) its listening sockets (duplicates of
//! them: it keeps accepting meanwhile), the ids its services and pools have in the kernel's
//! tables, and its XDP link pinned for taking. The successor builds itself on these (the
//! same sockets registered for its own steering program, the same ids, the link switched to
//! its program) and attaches; then the running process hands over: its routers stop without
//! a word (the successor continues each role, see `ha::Ha::hand_over`), its steering
//! detaches, its accept loops end, and its sessions finish as at a stop. The sockets'
//! queues are shared, so a connection waiting in one is accepted by whichever process is
//! accepting: none is refused. How the offer travels is the control socket's business.

use std::{collections::HashMap, net::SocketAddr, os::fd::OwnedFd, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{Frontend, KernelError};
use crate::{config::Config, front::accept::Role, ha::Succeeded};

/// What a running front-end offers its successor; the sockets travel beside it, in the
/// order of `listeners`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Offer {
    pub pid: u32,
    /// The configuration version in force.
    pub version: String,
    pub ids: Ids,
    pub listeners: Vec<PassedListener>,
    pub xdp: Option<XdpPassed>,
}

/// One listening socket passed on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PassedListener {
    pub service: String,
    pub role: Role,
    /// Where it is bound (for the log, and for a kernel side that serves by address).
    pub address: SocketAddr,
}

/// The XDP link pinned for the successor to take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct XdpPassed {
    pub interface: String,
    pub pin: PathBuf,
}

/// What the successor learns once the running process has handed over.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HandedOver {
    pub routers: Vec<Succeeded>,
}

/// Ids of services and pools by name: the keys of the kernel's tables, which a reload and
/// an upgrade keep for every service and pool that stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ids {
    pub services: HashMap<String, u32>,
    pub pools: HashMap<String, u32>,
    /// Pool ids no pool of the configuration has but back-ends still draining hold (their
    /// pool was removed by a reload): a new pool must not take one.
    #[serde(default)]
    pub retired_pools: Vec<u32>,
}

impl Ids {
    pub fn of(cfg: &Config) -> Ids {
        Ids {
            services: cfg
                .services
                .iter()
                .map(|s| (s.name.clone(), s.id))
                .collect(),
            pools: cfg.pools.iter().map(|p| (p.name.clone(), p.id)).collect(),
            retired_pools: Vec::new(),
        }
    }

    /// Gives `new`'s services and pools the ids these name; new ones get ids none of these
    /// holds, so a kernel entry of one service never serves another. Back-end ids are the
    /// board's (see `Board::reconcile`).
    pub fn give(&self, new: &mut Config) -> Result<(), IdsTaken> {
        use robustifier_common::MAX_SERVICES;
        let mut taken: std::collections::HashSet<u32> = self.services.values().copied().collect();
        for s in new.services.iter_mut() {
            if let Some(id) = self.services.get(&s.name) {
                s.id = *id;
            } else {
                let id = (0..MAX_SERVICES)
                    .find(|i| !taken.contains(i))
                    .ok_or_else(|| IdsTaken(s.name.clone()))?;
                taken.insert(id);
                s.id = id;
            }
        }
        let mut next = self
            .pools
            .values()
            .chain(&self.retired_pools)
            .map(|id| id + 1)
            .max()
            .unwrap_or(0);
        for p in new.pools.iter_mut() {
            if let Some(id) = self.pools.get(&p.name) {
                p.id = *id;
            } else {
                p.id = next;
                next += 1;
            }
        }
        Ok(())
    }
}

/// A configuration with more services than the kernel's tables have ids for.
#[derive(Debug, thiserror::Error)]
#[error("service {0}: all {max} service ids are taken", max = robustifier_common::MAX_SERVICES)]
pub struct IdsTaken(pub String);

/// An offer with its sockets.
pub struct Offered {
    pub offer: Offer,
    pub sockets: Vec<OwnedFd>,
}

impl Frontend {
    /// Prepares the hand-over to a successor: duplicates of every listening socket and the
    /// XDP link made takeable. Nothing changes for this process's sessions and listeners.
    pub(super) fn offer(&mut self) -> Result<Offered, KernelError> {
        let mut listeners = Vec::new();
        let mut sockets = Vec::new();
        for run in &self.services {
            for (socket, role) in &run.held {
                let dup = socket.try_clone().map_err(|source| KernelError::Listen {
                    service: run.service.name.clone(),
                    source,
                })?;
                let address = dup.local_addr().map_err(|source| KernelError::Listen {
                    service: run.service.name.clone(),
                    source,
                })?;
                listeners.push(PassedListener {
                    service: run.service.name.clone(),
                    role: *role,
                    address,
                });
                sockets.push(OwnedFd::from(dup));
            }
        }
        let xdp = self.kernel.pass_on()?;
        Ok(Offered {
            offer: Offer {
                pid: std::process::id(),
                version: self.cfg.version.clone(),
                ids: Ids::of(&self.cfg),
                listeners,
                xdp,
            },
            sockets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(std::path::Path::new("t.toml"), text).unwrap()
    }

    const ONE: &str = "[frontend]\nname='f'\n[[service]]\nname='smtp'\nprotocol='smtp'\nport=25\npool='p'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{name='a',address='198.18.1.11:25'}]\n";

    #[test]
    fn a_new_pool_never_takes_the_id_of_a_pool_still_draining() {
        let running = parse(ONE);
        let mut ids = Ids::of(&running);
        assert_eq!(ids.pools["p"], 0);
        // Pool p removed earlier: its back-ends still drain under pool id 0.
        ids.pools.clear();
        ids.retired_pools = vec![0];
        let mut new = parse(&ONE.replace("'p'", "'q'"));
        ids.give(&mut new).unwrap();
        assert_eq!(
            new.pools[0].id, 1,
            "pool q must not reuse the draining pool's id"
        );
        // Without draining back-ends the id is free again.
        ids.retired_pools.clear();
        let mut new = parse(&ONE.replace("'p'", "'q'"));
        ids.give(&mut new).unwrap();
        assert_eq!(new.pools[0].id, 0);
    }
}
