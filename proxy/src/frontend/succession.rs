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
use crate::{config::Config, front::accept::Role, ha::Succeeded, health::board::Entry};

/// What a running front-end offers its successor; the sockets travel beside it, in the
/// order of `listeners`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Offer {
    pub pid: u32,
    /// The configuration version in force.
    pub version: String,
    pub ids: Ids,
    /// Every back-end of its board, removed ones (still draining) included.
    #[serde(default)]
    pub backends: Vec<Entry>,
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

/// What a successor takes from `offer` before it opens: the predecessor's `listeners` for
/// its kernel side to use, the XDP attachment, and the ids of services, pools and
/// back-ends written into `cfg`. Returns the back-ends the predecessor still drains, for
/// [`Frontend::open_with`].
pub fn adopt(
    offer: &Offer,
    listeners: Vec<(PassedListener, std::net::TcpListener)>,
    kernel: &mut dyn super::KernelSide,
    cfg: &mut Config,
) -> Result<Vec<Entry>, IdsTaken> {
    for (passed, listener) in listeners {
        kernel.inherit(&passed.service, passed.role, listener);
    }
    kernel.take_on(offer.xdp.clone());
    offer.ids.give(cfg)?;
    Ok(give_backend_ids(cfg, &offer.backends))
}

/// Gives `cfg`'s back-ends the ids the predecessor's board has for them (same pool, name and
/// address) and the others the ids after its last, so that the two processes, which share
/// the load map while the predecessor drains, mean the same back-end by each id. Returns
/// the predecessor's back-ends `cfg` no longer has: the successor keeps their ids taken
/// (see `Board::with_retired`). When that would need more ids than the load map holds,
/// `cfg` keeps its own ids and none is returned.
pub fn give_backend_ids(cfg: &mut Config, predecessor: &[Entry]) -> Vec<Entry> {
    let mut next = predecessor.iter().map(|e| e.id + 1).max().unwrap_or(0);
    let mut taken = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for (pool, b) in cfg.backends() {
        let id = predecessor
            .iter()
            .find(|e| {
                e.pool == pool.name
                    && e.name == b.name
                    && e.address == b.address
                    && !taken.contains(&e.id)
            })
            .map_or_else(
                || {
                    next += 1;
                    next - 1
                },
                |e| e.id,
            );
        taken.insert(id);
        ids.push(id);
    }
    if next > robustifier_common::MAX_BACKENDS {
        tracing::warn!(
            "upgrade: the back-ends of both processes need more ids than the load map holds; ids follow the configuration"
        );
        return Vec::new();
    }
    let mut ids = ids.into_iter();
    for b in cfg.pools.iter_mut().flat_map(|p| p.backends.iter_mut()) {
        if let Some(id) = ids.next() {
            b.id = id;
        }
    }
    predecessor
        .iter()
        .filter(|e| !taken.contains(&e.id))
        .cloned()
        .collect()
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
                backends: self.board.entries(),
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
    use crate::health::board::Board;

    #[test]
    fn a_successor_gives_each_backend_the_predecessors_id() {
        let two = ONE.replace(
            "backend=[{name='a',address='198.18.1.11:25'}]",
            "backend=[{name='b',address='198.18.1.12:25'},{name='c',address='198.18.1.13:25'}]",
        );
        // The predecessor had a (removed by a reload, draining) at 0 and b at 1.
        let entry = |id: u32, name: &str, last: u8| Entry {
            id,
            pool: "p".into(),
            pool_id: 0,
            name: name.into(),
            address: format!("198.18.1.{last}:25").parse().unwrap(),
        };
        let predecessor = [entry(0, "a", 11), entry(1, "b", 12)];
        let mut cfg = parse(&two);
        let positional: Vec<u32> = cfg.backends().map(|(_, b)| b.id).collect();
        assert_eq!(positional, [0, 1]);
        let retired = give_backend_ids(&mut cfg, &predecessor);
        let ids: Vec<(String, u32)> = cfg
            .backends()
            .map(|(_, b)| (b.name.clone(), b.id))
            .collect();
        assert_eq!(ids, [("b".to_owned(), 1), ("c".to_owned(), 2)]);
        assert_eq!(retired, [entry(0, "a", 11)]);
        let board = Board::with_retired(&cfg, &retired);
        let names: Vec<(u32, String, bool)> = board
            .slots()
            .iter()
            .map(|s| {
                (
                    s.id,
                    s.name.clone(),
                    s.removed.load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (0, "a".into(), true),
                (1, "b".into(), false),
                (2, "c".into(), false)
            ]
        );
        for (i, s) in board.slots().iter().enumerate() {
            assert_eq!(
                board.slot(s.id).map(|x| x.name.clone()),
                Some(s.name.clone()),
                "slot {i}"
            );
        }
    }

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
