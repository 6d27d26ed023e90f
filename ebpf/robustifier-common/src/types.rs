//! Map keys and values. Field order is chosen so that no implicit padding exists; every
//! remaining gap is an explicit `_pad` field, and each type's size is asserted below.

/// Key of [`MAP_SERVICES`](crate::MAP_SERVICES): a virtual IP and TCP port.
///
/// An all-zero address is a wildcard: it matches any local address for that port, so a
/// service can be reached on every address the front-end owns without listing them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv6 address, or IPv4-mapped IPv6 address, network byte order.
    pub addr_be: [u8; 16],
    /// TCP port, network byte order.
    pub port_be: u16,
    pub _pad: [u8; 2],
}

/// Value of [`MAP_SERVICES`](crate::MAP_SERVICES).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into the per-service arrays, below [`MAX_SERVICES`](crate::MAX_SERVICES).
    pub service_id: u32,
    /// [`PROTO_SMTP`] or [`PROTO_POP3`]; informational for operators and the shed listener.
    pub protocol: u32,
}

pub const PROTO_SMTP: u32 = 1;
pub const PROTO_POP3: u32 = 2;

/// Per-CPU counters of one service, value of [`MAP_SVC_STATS`](crate::MAP_SVC_STATS).
/// XDP fills the packet counters, the steering program the connection counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    pub syns: u64,
    pub passed: u64,
    pub dropped_blocklist: u64,
    pub dropped_syn_budget: u64,
    /// New connections handed to the normal listener.
    pub steered_normal: u64,
    /// New connections handed to the priority listener.
    pub steered_priority: u64,
    /// New connections handed to the shed listener (service out of capacity).
    pub steered_shed: u64,
    /// New connections for which no listener was registered (left to the normal stack).
    pub steer_no_listener: u64,
}

/// Per-CPU counters of the XDP program as a whole, index 0 of
/// [`MAP_XDP_STATS`](crate::MAP_XDP_STATS): one counter per verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStats {
    pub packets: u64,
    /// Neither IPv4 nor IPv6 (ARP, LLDP, ...): passed.
    pub non_ip: u64,
    /// A header was cut short or inconsistent: passed, the stack decides.
    pub malformed: u64,
    /// IP but not TCP (ICMP, UDP, VRRP, ...): passed.
    pub non_tcp: u64,
    /// TCP to an address and port that is not a service: passed.
    pub no_service: u64,
    /// TCP to a service: counted per service too.
    pub service: u64,
    pub dropped_blocklist: u64,
    pub dropped_syn_budget: u64,
}

/// Value of the block-list LPM tries: which configured rule matched, for counters and logs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockRule {
    pub rule_id: u32,
}

/// Value of the client-class LPM tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientClass {
    /// [`CLASS_NORMAL`] or [`CLASS_PRIORITY`].
    pub class: u32,
}

pub const CLASS_NORMAL: u32 = 0;
pub const CLASS_PRIORITY: u32 = 1;

/// One source's SYN budget, value of [`MAP_SYN_BUCKET`](crate::MAP_SYN_BUCKET).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynBucket {
    /// Tokens left, in thousandths of a SYN (so slow rates refill smoothly).
    pub tokens_milli: u64,
    /// `bpf_ktime_get_ns` at the last refill.
    pub last_ns: u64,
}

/// Data-path settings, index 0 of [`MAP_CONFIG`](crate::MAP_CONFIG).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataPathConfig {
    /// SYNs per second each source may send to services; 0 disables the budget.
    pub syn_rate_per_sec: u32,
    /// Bucket depth: SYNs a source may send at once after being idle.
    pub syn_burst: u32,
    /// IPv6 sources share one bucket per prefix of this length (IPv4: one per address), so
    /// that a host cannot multiply its budget by the addresses of its /64. 0 (a daemon that
    /// does not set it) means 128: one bucket per address.
    pub client_prefix_v6: u32,
}

/// Capacity state of one service, value of [`MAP_SVC_STATE`](crate::MAP_SVC_STATE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// [`CAPACITY_OK`], [`CAPACITY_PRIORITY_ONLY`] or [`CAPACITY_EXHAUSTED`].
    pub capacity: u32,
    pub _pad: u32,
}

/// Every class is served by its listener.
pub const CAPACITY_OK: u32 = 0;
/// Normal clients go to the shed listener; the priority class is still served.
pub const CAPACITY_PRIORITY_ONLY: u32 = 1;
/// Every new connection goes to the shed listener.
pub const CAPACITY_EXHAUSTED: u32 = 2;

/// Listener slots per service in [`MAP_LISTENERS`](crate::MAP_LISTENERS); each slot has an
/// IPv4 and an IPv6 socket, because a socket bound to a loopback address of one family
/// cannot take connections of the other.
pub const LISTENER_SLOTS: u32 = 4;
pub const FAMILY_V4: u32 = 0;
pub const FAMILY_V6: u32 = 1;
pub const SLOT_NORMAL: u32 = 0;
pub const SLOT_PRIORITY: u32 = 1;
pub const SLOT_SHED: u32 = 2;
/// Size of the sockmap.
pub const MAX_LISTENERS: u32 = crate::MAX_SERVICES * LISTENER_SLOTS * 2;

/// Index of a listener in [`MAP_LISTENERS`](crate::MAP_LISTENERS); `family` is
/// [`FAMILY_V4`] or [`FAMILY_V6`].
#[inline(always)]
pub const fn listener_slot(service_id: u32, slot: u32, family: u32) -> u32 {
    (service_id * LISTENER_SLOTS + slot) * 2 + family
}

/// The per-back-end load record, value of [`MAP_BACKENDS`](crate::MAP_BACKENDS).
///
/// User space (health checks, agents, the proxy's own sessions) writes it; the proxy's
/// routing and the kernel's capacity decisions read it; `bpftool map dump` shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// IPv6 or IPv4-mapped address of the back-end, network byte order.
    pub addr_be: [u8; 16],
    /// Back-end port, network byte order.
    pub port_be: u16,
    /// [`BACKEND_UNUSED`], [`BACKEND_UP`], [`BACKEND_DOWN`] or [`BACKEND_DRAINING`].
    pub state: u8,
    pub _pad: u8,
    /// Effective weight after thresholds and operator requests (0 = no new sessions).
    pub weight: u32,
    /// Response time (EWMA of probes and real sessions), microseconds.
    pub response_us: u32,
    /// One-minute run queue (load average) times 1000.
    pub run_queue_milli: u32,
    /// Messages in the back-end's mail queue.
    pub mail_queue: u32,
    /// Spool file system use, per mille.
    pub disk_permille: u32,
    /// Sessions this front-end has open to the back-end.
    pub active_sessions: u32,
    /// Index of the back-end's pool in the configuration.
    pub pool_id: u32,
    /// When the record was last written, `CLOCK_MONOTONIC` (= `bpf_ktime_get_ns`) nanoseconds.
    pub updated_ns: u64,
}

pub const BACKEND_UNUSED: u8 = 0;
pub const BACKEND_UP: u8 = 1;
pub const BACKEND_DOWN: u8 = 2;
pub const BACKEND_DRAINING: u8 = 3;

/// `addr` as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), the form keys use for IPv4.
#[inline(always)]
pub const fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

// Layouts are part of the contract: a change here must be a deliberate change on both sides.
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 80);
const _: () = assert!(core::mem::size_of::<XdpStats>() == 64);
const _: () = assert!(core::mem::size_of::<BlockRule>() == 4);
const _: () = assert!(core::mem::size_of::<ClientClass>() == 4);
const _: () = assert!(core::mem::size_of::<SynBucket>() == 16);
const _: () = assert!(core::mem::size_of::<DataPathConfig>() == 12);
const _: () = assert!(core::mem::size_of::<ServiceState>() == 8);
const _: () = assert!(core::mem::size_of::<BackendLoad>() == 56);

#[cfg(feature = "user")]
mod pod {
    //! Lets aya's user-space maps read and write these types. Sound because every type is
    //! `repr(C)`, `Copy`, made of integers only and free of implicit padding (asserted above).
    #![allow(unsafe_code)]
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for XdpStats {}
    unsafe impl aya::Pod for BlockRule {}
    unsafe impl aya::Pod for ClientClass {}
    unsafe impl aya::Pod for SynBucket {}
    unsafe impl aya::Pod for DataPathConfig {}
    unsafe impl aya::Pod for ServiceState {}
    unsafe impl aya::Pod for BackendLoad {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of};

    #[test]
    fn service_key_has_no_hidden_padding() {
        assert_eq!(offset_of!(ServiceKey, port_be), 16);
        assert_eq!(offset_of!(ServiceKey, _pad), 18);
        assert_eq!(align_of::<ServiceKey>(), 2);
    }

    #[test]
    fn backend_load_layout_is_stable() {
        assert_eq!(offset_of!(BackendLoad, port_be), 16);
        assert_eq!(offset_of!(BackendLoad, state), 18);
        assert_eq!(offset_of!(BackendLoad, weight), 20);
        assert_eq!(offset_of!(BackendLoad, pool_id), 44);
        assert_eq!(offset_of!(BackendLoad, updated_ns), 48);
    }

    #[test]
    fn ports_and_addresses_are_network_order() {
        let key = ServiceKey {
            addr_be: v4_mapped([198, 18, 0, 25]),
            port_be: 25u16.to_be(),
            _pad: [0; 2],
        };
        assert_eq!(key.addr_be[10..], [0xff, 0xff, 198, 18, 0, 25]);
        // On the wire, port 25 is the bytes 0x00 0x19, whatever the host order.
        assert_eq!(key.port_be.to_ne_bytes(), [0x00, 0x19]);
    }

    #[test]
    fn listener_slots_do_not_overlap() {
        assert_eq!(listener_slot(0, SLOT_SHED, FAMILY_V4), 4);
        assert_eq!(listener_slot(0, SLOT_SHED, FAMILY_V6), 5);
        assert_eq!(listener_slot(1, SLOT_NORMAL, FAMILY_V4), LISTENER_SLOTS * 2);
        let last = listener_slot(crate::MAX_SERVICES - 1, LISTENER_SLOTS - 1, FAMILY_V6);
        assert_eq!(last, MAX_LISTENERS - 1);
    }
}
