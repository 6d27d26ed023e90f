//! The maps, declared BTF-style so that `bpftool map dump` prints field names. Names and
//! value types come from `robustifier-common`; user space pins all but the sockmap.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockMap},
    macros::btf_map,
};
use robustifier_common::{
    BackendLoad, BlockRule, ClientClass, DataPathConfig, MAX_BACKENDS, MAX_LISTENERS, MAX_PREFIXES,
    MAX_SERVICE_ADDRS, MAX_SERVICES, MAX_SYN_SOURCES, ServiceKey, ServiceState, ServiceStats,
    ServiceValue, SynBucket, XdpStats,
};

const SERVICES: usize = MAX_SERVICES as usize;
const PREFIXES: usize = MAX_PREFIXES as usize;

#[btf_map(name = "rb_services")]
pub static SERVICES_MAP: HashMap<ServiceKey, ServiceValue, { MAX_SERVICE_ADDRS as usize }> =
    HashMap::new();

#[btf_map(name = "rb_svc_stats")]
pub static SVC_STATS: PerCpuArray<ServiceStats, SERVICES> = PerCpuArray::new();

#[btf_map(name = "rb_xdp_stats")]
pub static XDP_STATS: PerCpuArray<XdpStats, 1> = PerCpuArray::new();

#[btf_map(name = "rb_block_v4")]
pub static BLOCK_V4: LpmTrie<[u8; 4], BlockRule, PREFIXES> = LpmTrie::new();

#[btf_map(name = "rb_block_v6")]
pub static BLOCK_V6: LpmTrie<[u8; 16], BlockRule, PREFIXES> = LpmTrie::new();

#[btf_map(name = "rb_class_v4")]
pub static CLASS_V4: LpmTrie<[u8; 4], ClientClass, PREFIXES> = LpmTrie::new();

#[btf_map(name = "rb_class_v6")]
pub static CLASS_V6: LpmTrie<[u8; 16], ClientClass, PREFIXES> = LpmTrie::new();

#[btf_map(name = "rb_syn_bucket")]
pub static SYN_BUCKET: LruHashMap<[u8; 16], SynBucket, { MAX_SYN_SOURCES as usize }> =
    LruHashMap::new();

#[btf_map(name = "rb_config")]
pub static CONFIG: Array<DataPathConfig, 1> = Array::new();

#[btf_map(name = "rb_svc_state")]
pub static SVC_STATE: Array<ServiceState, SERVICES> = Array::new();

#[btf_map(name = "rb_listeners")]
pub static LISTENERS: SockMap<{ MAX_LISTENERS as usize }> = SockMap::new();

#[btf_map(name = "rb_backends")]
pub static BACKENDS: Array<BackendLoad, { MAX_BACKENDS as usize }> = Array::new();

/// The service a (local address, port) belongs to: the exact address first, then the
/// wildcard entry for the port.
#[inline(always)]
pub fn service_for(addr_be: [u8; 16], port_be: u16) -> Option<ServiceValue> {
    let mut key = ServiceKey {
        addr_be,
        port_be,
        _pad: [0; 2],
    };
    if let Some(v) = SERVICES_MAP.get_ptr(key) {
        // SAFETY: a successful lookup returns a non-null pointer to a live, aligned value of
        // the map's value type; it is copied out at once, before the program could yield, and
        // user space replaces entries whole, so the copy is never torn into another entry.
        return Some(unsafe { *v });
    }
    key.addr_be = [0; 16];
    // SAFETY: as for the exact-address lookup above.
    SERVICES_MAP.get_ptr(key).map(|v| unsafe { *v })
}

/// This CPU's counters for a service.
#[inline(always)]
pub fn svc_stats(service_id: u32) -> Option<&'static mut ServiceStats> {
    SVC_STATS
        .get_ptr_mut(service_id)
        // SAFETY: a successful lookup of a per-CPU array returns a non-null, aligned pointer
        // to this CPU's slot; programs are not preempted on their CPU, so no other reference
        // to the slot exists while this one is used, and array slots are never freed.
        .map(|p| unsafe { &mut *p })
}
