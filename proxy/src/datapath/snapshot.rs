//! A point-in-time reading of the maps for people (`robustifier maps`) and for programs
//! (`robustifier maps --json`). Per-CPU counters are summed here.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use aya::maps::PerCpuValues;
use ipnet::IpNet;
use robustifier_common::{ServiceStats, XdpStats};
use serde::Serialize;

use super::{DataPathError, Tables};

#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    pub xdp: XdpCounters,
    pub syn_rate_per_sec: u32,
    pub syn_burst: u32,
    pub services: Vec<ServiceRow>,
    pub block: Vec<String>,
    pub priority: Vec<String>,
    pub backends: Vec<BackendRow>,
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct XdpCounters {
    pub packets: u64,
    pub non_ip: u64,
    pub malformed: u64,
    pub non_tcp: u64,
    pub no_service: u64,
    pub service: u64,
    pub dropped_blocklist: u64,
    pub dropped_syn_budget: u64,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct ServiceRow {
    pub id: u32,
    pub protocol: String,
    /// "vip:port" entries mapped to this id; "*:port" for the wildcard.
    pub addresses: Vec<String>,
    pub capacity: String,
    pub packets: u64,
    pub bytes: u64,
    pub syns: u64,
    pub passed: u64,
    pub dropped_blocklist: u64,
    pub dropped_syn_budget: u64,
    pub steered_normal: u64,
    pub steered_priority: u64,
    pub steered_shed: u64,
    pub steer_no_listener: u64,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct BackendRow {
    pub id: u32,
    pub address: String,
    pub pool_id: u32,
    pub state: String,
    pub weight: u32,
    pub response_us: u32,
    pub run_queue: f64,
    pub mail_queue: u32,
    pub disk_percent: f64,
    pub active_sessions: u32,
    pub updated_ns: u64,
}

fn sum<T: aya::Pod + Default + Copy>(v: &PerCpuValues<T>, add: impl Fn(&mut T, &T)) -> T {
    let mut total = T::default();
    for cpu in v.iter() {
        add(&mut total, cpu);
    }
    total
}

fn add_xdp(a: &mut XdpStats, b: &XdpStats) {
    a.packets += b.packets;
    a.non_ip += b.non_ip;
    a.malformed += b.malformed;
    a.non_tcp += b.non_tcp;
    a.no_service += b.no_service;
    a.service += b.service;
    a.dropped_blocklist += b.dropped_blocklist;
    a.dropped_syn_budget += b.dropped_syn_budget;
}

fn add_svc(a: &mut ServiceStats, b: &ServiceStats) {
    a.packets += b.packets;
    a.bytes += b.bytes;
    a.syns += b.syns;
    a.passed += b.passed;
    a.dropped_blocklist += b.dropped_blocklist;
    a.dropped_syn_budget += b.dropped_syn_budget;
    a.steered_normal += b.steered_normal;
    a.steered_priority += b.steered_priority;
    a.steered_shed += b.steered_shed;
    a.steer_no_listener += b.steer_no_listener;
}

/// Shows a map key address the way an operator wrote it: IPv4-mapped back to IPv4.
fn show_addr(bytes: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(bytes).to_canonical()
}

/// The prefixes held in an LPM trie, as an operator writes them.
fn prefixes<K, V>(
    trie: &aya::maps::LpmTrie<aya::maps::MapData, K, V>,
    name: &'static str,
) -> Result<Vec<String>, DataPathError>
where
    K: aya::Pod + Into<IpAddr>,
    V: aya::Pod,
{
    trie.keys()
        .map(|k| {
            let k = k.map_err(map_err(name))?;
            Ok(IpNet::new(k.data().into(), k.prefix_len() as u8)
                .map_or_else(|_| "?".into(), |n| n.to_string()))
        })
        .collect()
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataPathError {
    move |source| DataPathError::Map { name, source }
}

impl Snapshot {
    pub fn read(t: &Tables) -> Result<Snapshot, DataPathError> {
        use robustifier_common::*;
        let x = sum(
            &t.xdp_stats.get(&0, 0).map_err(map_err(MAP_XDP_STATS))?,
            add_xdp,
        );
        let cfg = t.config.get(&0, 0).map_err(map_err(MAP_CONFIG))?;
        let mut services: Vec<ServiceRow> = Vec::new();
        for entry in t.services.iter() {
            let (k, v) = entry.map_err(map_err(MAP_SERVICES))?;
            let port = u16::from_be(k.port_be);
            let addr = if k.addr_be == [0; 16] {
                format!("*:{port}")
            } else {
                SocketAddr::new(show_addr(k.addr_be), port).to_string()
            };
            match services.iter_mut().find(|r| r.id == v.service_id) {
                Some(row) => row.addresses.push(addr),
                None => services.push(ServiceRow {
                    id: v.service_id,
                    protocol: match v.protocol {
                        PROTO_SMTP => "smtp".into(),
                        PROTO_POP3 => "pop3".into(),
                        other => format!("?{other}"),
                    },
                    addresses: vec![addr],
                    ..Default::default()
                }),
            }
        }
        services.sort_by_key(|r| r.id);
        for row in &mut services {
            row.addresses.sort();
            if row.id >= MAX_SERVICES {
                continue;
            }
            let s = sum(
                &t.svc_stats
                    .get(&row.id, 0)
                    .map_err(map_err(MAP_SVC_STATS))?,
                add_svc,
            );
            let state = t
                .svc_state
                .get(&row.id, 0)
                .map_err(map_err(MAP_SVC_STATE))?;
            row.capacity = match state.capacity {
                CAPACITY_OK => "ok".into(),
                CAPACITY_PRIORITY_ONLY => "priority-only".into(),
                CAPACITY_EXHAUSTED => "exhausted".into(),
                other => format!("?{other}"),
            };
            row.packets = s.packets;
            row.bytes = s.bytes;
            row.syns = s.syns;
            row.passed = s.passed;
            row.dropped_blocklist = s.dropped_blocklist;
            row.dropped_syn_budget = s.dropped_syn_budget;
            row.steered_normal = s.steered_normal;
            row.steered_priority = s.steered_priority;
            row.steered_shed = s.steered_shed;
            row.steer_no_listener = s.steer_no_listener;
        }
        let mut block = prefixes(&t.block_v4, MAP_BLOCK_V4)?;
        block.extend(prefixes(&t.block_v6, MAP_BLOCK_V6)?);
        let mut priority = prefixes(&t.class_v4, MAP_CLASS_V4)?;
        priority.extend(prefixes(&t.class_v6, MAP_CLASS_V6)?);
        let mut backends = Vec::new();
        for (id, b) in t.backends.iter().enumerate() {
            let b = b.map_err(map_err(MAP_BACKENDS))?;
            if b.state == BACKEND_UNUSED {
                continue;
            }
            backends.push(BackendRow {
                id: id as u32,
                address: SocketAddr::new(show_addr(b.addr_be), u16::from_be(b.port_be)).to_string(),
                pool_id: b.pool_id,
                state: match b.state {
                    BACKEND_UP => "up".into(),
                    BACKEND_DOWN => "down".into(),
                    BACKEND_DRAINING => "draining".into(),
                    other => format!("?{other}"),
                },
                weight: b.weight,
                response_us: b.response_us,
                run_queue: f64::from(b.run_queue_milli) / 1000.0,
                mail_queue: b.mail_queue,
                disk_percent: f64::from(b.disk_permille) / 10.0,
                active_sessions: b.active_sessions,
                updated_ns: b.updated_ns,
            });
        }
        Ok(Snapshot {
            xdp: XdpCounters {
                packets: x.packets,
                non_ip: x.non_ip,
                malformed: x.malformed,
                non_tcp: x.non_tcp,
                no_service: x.no_service,
                service: x.service,
                dropped_blocklist: x.dropped_blocklist,
                dropped_syn_budget: x.dropped_syn_budget,
            },
            syn_rate_per_sec: cfg.syn_rate_per_sec,
            syn_burst: cfg.syn_burst,
            services,
            block,
            priority,
            backends,
        })
    }

    /// A plain-text report, one table per map family.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let x = &self.xdp;
        let _ = writeln!(
            o,
            "XDP  packets={} service={} no_service={} non_tcp={} non_ip={} malformed={} dropped_blocklist={} dropped_syn_budget={}",
            x.packets,
            x.service,
            x.no_service,
            x.non_tcp,
            x.non_ip,
            x.malformed,
            x.dropped_blocklist,
            x.dropped_syn_budget
        );
        let budget = if self.syn_rate_per_sec == 0 {
            "off".to_owned()
        } else {
            format!("{}/s burst {}", self.syn_rate_per_sec, self.syn_burst)
        };
        let _ = writeln!(o, "SYN budget per source: {budget}");
        let _ = writeln!(
            o,
            "block list: {}",
            if self.block.is_empty() {
                "-".into()
            } else {
                self.block.join(" ")
            }
        );
        let _ = writeln!(
            o,
            "priority class: {}",
            if self.priority.is_empty() {
                "-".into()
            } else {
                self.priority.join(" ")
            }
        );
        let _ = writeln!(o, "\nSERVICES");
        let _ = writeln!(
            o,
            "{:>3} {:<5} {:<13} {:>9} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  addresses",
            "id",
            "proto",
            "capacity",
            "packets",
            "bytes",
            "syns",
            "drop_bl",
            "drop_syn",
            "normal",
            "priority",
            "shed",
            "no_lsnr"
        );
        for s in &self.services {
            let _ = writeln!(
                o,
                "{:>3} {:<5} {:<13} {:>9} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {}",
                s.id,
                s.protocol,
                s.capacity,
                s.packets,
                s.bytes,
                s.syns,
                s.dropped_blocklist,
                s.dropped_syn_budget,
                s.steered_normal,
                s.steered_priority,
                s.steered_shed,
                s.steer_no_listener,
                s.addresses.join(" ")
            );
        }
        let _ = writeln!(o, "\nBACKENDS (load records)");
        let _ = writeln!(
            o,
            "{:>3} {:<28} {:>4} {:<8} {:>6} {:>9} {:>7} {:>7} {:>6} {:>7}",
            "id",
            "address",
            "pool",
            "state",
            "weight",
            "resp_us",
            "runq",
            "mailq",
            "disk%",
            "active"
        );
        for b in &self.backends {
            let _ = writeln!(
                o,
                "{:>3} {:<28} {:>4} {:<8} {:>6} {:>9} {:>7.2} {:>7} {:>6.1} {:>7}",
                b.id,
                b.address,
                b.pool_id,
                b.state,
                b.weight,
                b.response_us,
                b.run_queue,
                b.mail_queue,
                b.disk_percent,
                b.active_sessions
            );
        }
        o
    }
}
