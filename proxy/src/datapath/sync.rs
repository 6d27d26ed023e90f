//! Writes the configuration into the maps. Each table is made equal to what the config
//! says (stale entries removed, new ones added), so a reload or a restart with another
//! config leaves nothing behind; live figures in the load records survive when the
//! back-end in a slot is still the same.

use std::{collections::HashSet, net::IpAddr};

use aya::maps::{
    MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::IpNet;
use robustifier_common::{
    BACKEND_UP, BackendLoad, BlockRule, CAPACITY_OK, CLASS_PRIORITY, ClientClass, DataPathConfig,
    MAP_BACKENDS, MAP_BLOCK_V4, MAP_BLOCK_V6, MAP_CLASS_V4, MAP_CLASS_V6, MAP_CONFIG, MAP_SERVICES,
    MAP_SVC_STATE, MAX_BACKENDS, PROTO_POP3, PROTO_SMTP, ServiceKey, ServiceState, ServiceValue,
};

use super::{DataPathError, Tables};
use crate::config::{Config, Protocol};

/// Network-order 16-byte form of an address, IPv4 mapped, as map keys hold it.
pub fn addr_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A back-end address as the load map stores it.
pub fn backend_address(addr: std::net::SocketAddr) -> ([u8; 16], u16) {
    (addr_key(addr.ip()), addr.port().to_be())
}

pub fn service_key(addr: Option<IpAddr>, port: u16) -> ServiceKey {
    ServiceKey {
        addr_be: addr.map_or([0; 16], addr_key),
        port_be: port.to_be(),
        _pad: [0; 2],
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataPathError {
    move |source| DataPathError::Map { name, source }
}

impl Tables {
    /// Everything from `cfg`, at the start: every service starts with capacity for every
    /// class, back-ends get their configured ids.
    pub fn apply(&mut self, cfg: &Config) -> Result<(), DataPathError> {
        let all: HashSet<u32> = cfg.services.iter().map(|s| s.id).collect();
        self.apply_live(cfg, &all)?;
        self.apply_backends(cfg)
    }

    /// What a reload changes in place: the services (`fresh` are the ids a reload brings
    /// in, which start with capacity for every class; the others keep what the load
    /// writer derived), the flood settings, the block list and the client classes. The
    /// back-ends' records are the board's (see `load_writer::publish`). Each map is
    /// updated entry by entry, so no lookup meanwhile finds it empty.
    pub fn apply_live(&mut self, cfg: &Config, fresh: &HashSet<u32>) -> Result<(), DataPathError> {
        self.apply_services(cfg, fresh)?;
        self.config
            .set(
                0,
                DataPathConfig {
                    syn_rate_per_sec: cfg.flood.syn_rate_per_sec,
                    syn_burst: cfg.flood.syn_burst,
                    client_prefix_v6: u32::from(cfg.flood.client_prefix_v6),
                },
                0,
            )
            .map_err(map_err(MAP_CONFIG))?;
        let blocks: Vec<(IpNet, u32)> = cfg
            .flood
            .block
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, i as u32))
            .collect();
        sync_prefixes(
            &mut self.block_v4,
            &mut self.block_v6,
            &blocks,
            |rule_id| BlockRule { rule_id },
            (MAP_BLOCK_V4, MAP_BLOCK_V6),
        )?;
        // The kernel's priority class: the configured prefixes and the client prefixes of
        // the groups served to the hard limits (share 1.0).
        let mut classes: Vec<(IpNet, u32)> = cfg
            .priority_prefixes
            .iter()
            .map(|n| (*n, CLASS_PRIORITY))
            .collect();
        for g in cfg.groups.iter().filter(|g| g.share >= 1.0) {
            for n in &g.clients {
                if !classes.iter().any(|(c, _)| c == n) {
                    classes.push((*n, CLASS_PRIORITY));
                }
            }
        }
        sync_prefixes(
            &mut self.class_v4,
            &mut self.class_v6,
            &classes,
            |class| ClientClass { class },
            (MAP_CLASS_V4, MAP_CLASS_V6),
        )
    }

    fn apply_services(&mut self, cfg: &Config, fresh: &HashSet<u32>) -> Result<(), DataPathError> {
        let mut wanted = Vec::new();
        for s in &cfg.services {
            let value = ServiceValue {
                service_id: s.id,
                protocol: match s.protocol {
                    Protocol::Smtp => PROTO_SMTP,
                    Protocol::Pop3 => PROTO_POP3,
                },
            };
            if s.vips.is_empty() {
                wanted.push((service_key(None, s.port), value));
            }
            for vip in &s.vips {
                wanted.push((service_key(Some(*vip), s.port), value));
            }
            if !fresh.contains(&s.id) {
                continue;
            }
            // A fresh service serves every class; the load writer tightens this from
            // back-end load.
            self.svc_state
                .set(
                    s.id,
                    ServiceState {
                        capacity: CAPACITY_OK,
                        _pad: 0,
                    },
                    0,
                )
                .map_err(map_err(MAP_SVC_STATE))?;
        }
        let keep: HashSet<ServiceKey> = wanted.iter().map(|(k, _)| *k).collect();
        let stale: Vec<ServiceKey> = self
            .services
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep.contains(k))
            .collect();
        for k in stale {
            self.services.remove(&k).map_err(map_err(MAP_SERVICES))?;
        }
        for (k, v) in wanted {
            self.services
                .insert(k, v, 0)
                .map_err(map_err(MAP_SERVICES))?;
        }
        Ok(())
    }

    fn apply_backends(&mut self, cfg: &Config) -> Result<(), DataPathError> {
        let mut used = vec![false; MAX_BACKENDS as usize];
        for (pool, b) in cfg.backends() {
            used[b.id as usize] = true;
            let addr_be = addr_key(b.address.ip());
            let port_be = b.address.port().to_be();
            let old = self.backends.get(&b.id, 0).map_err(map_err(MAP_BACKENDS))?;
            let same = old.state != 0 && old.addr_be == addr_be && old.port_be == port_be;
            let record = BackendLoad {
                addr_be,
                port_be,
                state: if same { old.state } else { BACKEND_UP },
                weight: b.weight,
                pool_id: pool.id,
                ..if same { old } else { BackendLoad::default() }
            };
            self.backends
                .set(b.id, record, 0)
                .map_err(map_err(MAP_BACKENDS))?;
        }
        for (id, used) in used.iter().enumerate() {
            if !used {
                let id = id as u32;
                if self
                    .backends
                    .get(&id, 0)
                    .map_err(map_err(MAP_BACKENDS))?
                    .state
                    != 0
                {
                    self.backends
                        .set(id, BackendLoad::default(), 0)
                        .map_err(map_err(MAP_BACKENDS))?;
                }
            }
        }
        Ok(())
    }
}

/// Makes a pair of LPM tries (v4, v6) hold exactly `wanted`: stale prefixes are removed,
/// the rest overwritten in place, so a reload never opens a window without the list.
fn sync_prefixes<V: aya::Pod>(
    v4: &mut LpmTrie<MapData, [u8; 4], V>,
    v6: &mut LpmTrie<MapData, [u8; 16], V>,
    wanted: &[(IpNet, u32)],
    value: impl Fn(u32) -> V,
    names: (&'static str, &'static str),
) -> Result<(), DataPathError> {
    let keep4: HashSet<(u32, [u8; 4])> = wanted
        .iter()
        .filter_map(|(n, _)| match n {
            IpNet::V4(n) => Some((n.prefix_len().into(), n.network().octets())),
            IpNet::V6(_) => None,
        })
        .collect();
    let keep6: HashSet<(u32, [u8; 16])> = wanted
        .iter()
        .filter_map(|(n, _)| match n {
            IpNet::V6(n) => Some((n.prefix_len().into(), n.network().octets())),
            IpNet::V4(_) => None,
        })
        .collect();
    let stale4: Vec<Key<[u8; 4]>> = v4
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep4.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in stale4 {
        v4.remove(&k).map_err(map_err(names.0))?;
    }
    let stale6: Vec<Key<[u8; 16]>> = v6
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep6.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in stale6 {
        v6.remove(&k).map_err(map_err(names.1))?;
    }
    for (net, v) in wanted {
        match net {
            IpNet::V4(n) => v4
                .insert(
                    &Key::new(n.prefix_len().into(), n.network().octets()),
                    value(*v),
                    0,
                )
                .map_err(map_err(names.0))?,
            IpNet::V6(n) => v6
                .insert(
                    &Key::new(n.prefix_len().into(), n.network().octets()),
                    value(*v),
                    0,
                )
                .map_err(map_err(names.1))?,
        }
    }
    Ok(())
}
