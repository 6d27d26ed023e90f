//! Names and sizes both sides must agree on: programs, maps, pin directory, limits.
//!
//! Kernel object names are at most 15 bytes (BPF_OBJ_NAME_LEN - 1), so every map and
//! program name here fits; the same string names the pin file under [`PIN_DIR`].

/// Where the daemon pins its maps, so they outlive a restart and `bpftool` can find them.
pub const PIN_DIR: &str = "/sys/fs/bpf/robustifier";

/// XDP program: parse, classify, count, drop floods.
pub const PROG_XDP: &str = "rb_xdp";
/// sk_lookup program: hand a new connection to the proxy socket of its service.
pub const PROG_STEER: &str = "rb_steer";

/// (VIP, port) -> service id. [`ServiceKey`](crate::ServiceKey) -> [`ServiceValue`](crate::ServiceValue).
pub const MAP_SERVICES: &str = "rb_services";
/// Per-CPU counters per service id. index -> [`ServiceStats`](crate::ServiceStats).
pub const MAP_SVC_STATS: &str = "rb_svc_stats";
/// Per-CPU counters of the XDP program as a whole. index 0 -> [`XdpStats`](crate::XdpStats).
pub const MAP_XDP_STATS: &str = "rb_xdp_stats";
/// Block-listed IPv4 prefixes (LPM trie). prefix -> [`BlockRule`](crate::BlockRule).
pub const MAP_BLOCK_V4: &str = "rb_block_v4";
/// Block-listed IPv6 prefixes (LPM trie). prefix -> [`BlockRule`](crate::BlockRule).
pub const MAP_BLOCK_V6: &str = "rb_block_v6";
/// Client class by IPv4 prefix (LPM trie). prefix -> [`ClientClass`](crate::ClientClass).
pub const MAP_CLASS_V4: &str = "rb_class_v4";
/// Client class by IPv6 prefix (LPM trie). prefix -> [`ClientClass`](crate::ClientClass).
pub const MAP_CLASS_V6: &str = "rb_class_v6";
/// Per-source SYN token buckets (LRU). source address -> [`SynBucket`](crate::SynBucket).
pub const MAP_SYN_BUCKET: &str = "rb_syn_bucket";
/// Data-path settings written by user space. index 0 -> [`DataPathConfig`](crate::DataPathConfig).
pub const MAP_CONFIG: &str = "rb_config";
/// Per-service capacity state written by user space. service id -> [`ServiceState`](crate::ServiceState).
pub const MAP_SVC_STATE: &str = "rb_svc_state";
/// Proxy listening sockets (sockmap). [`listener_slot`](crate::listener_slot) -> socket.
pub const MAP_LISTENERS: &str = "rb_listeners";
/// One load record per back-end. back-end id -> [`BackendLoad`](crate::BackendLoad).
pub const MAP_BACKENDS: &str = "rb_backends";

/// Maps that are pinned and so survive a daemon restart. The sockmap is not among them:
/// it holds the sockets of one daemon process and is rebuilt by the next.
pub const PINNED_MAPS: [&str; 11] = [
    MAP_SERVICES,
    MAP_SVC_STATS,
    MAP_XDP_STATS,
    MAP_BLOCK_V4,
    MAP_BLOCK_V6,
    MAP_CLASS_V4,
    MAP_CLASS_V6,
    MAP_SYN_BUCKET,
    MAP_CONFIG,
    MAP_SVC_STATE,
    MAP_BACKENDS,
];

/// Service ids are indices into per-service arrays: 0..MAX_SERVICES.
pub const MAX_SERVICES: u32 = 64;
/// (VIP, port) entries; several VIPs may share a service id.
pub const MAX_SERVICE_ADDRS: u32 = 1024;
/// Back-end ids are indices into [`MAP_BACKENDS`]: 0..MAX_BACKENDS.
pub const MAX_BACKENDS: u32 = 256;
/// Prefixes per block list and per class map.
pub const MAX_PREFIXES: u32 = 16384;
/// Sources tracked by the SYN budget; the least recently seen are evicted.
pub const MAX_SYN_SOURCES: u32 = 65536;
