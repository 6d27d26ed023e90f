//! The configuration file as written: serde structs that mirror the TOML one to one.
//! Unknown keys are refused (`deny_unknown_fields`), so a typo never goes unnoticed.
//! Nothing here is trusted; [`super::Config::from_raw`] validates it into typed values.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub frontend: RawFrontend,
    /// Server certificate for STARTTLS/STLS and implicit-TLS services.
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub flood: RawFlood,
    #[serde(default)]
    pub classes: RawClasses,
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<RawPool>,
    #[serde(default, rename = "group")]
    pub groups: Vec<super::balance::RawGroup>,
    #[serde(default)]
    pub ha: super::vrrp::RawHa,
    #[serde(default)]
    pub vrrp: Vec<super::vrrp::RawVrrp>,
    #[serde(default)]
    pub monitor: RawMonitor,
    #[serde(default, rename = "domain_queue")]
    pub domain_queues: Vec<RawDomainQueue>,
    #[serde(default, rename = "directory")]
    pub directories: Vec<super::directory::RawDirectory>,
}

/// Events and alarms: where the JSON-lines event log goes and how much of it is kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    /// Folder of `events.jsonl` (and its rotated files); none: events are kept in memory only.
    pub event_log: Option<String>,
    /// Size at which the file is rotated (default 10 MB).
    pub event_log_max_bytes: Option<u64>,
    /// Files kept, the current one included (default 5).
    pub event_log_files: Option<u32>,
    /// Address of the HTTP endpoint with `/metrics` (Prometheus) and `/ready`.
    pub metrics_listen: Option<String>,
    /// File holding the bearer token every request must carry.
    pub metrics_token_file: Option<String>,
    /// Serve the endpoint to anyone who connects, without a token.
    pub metrics_insecure_no_auth: Option<bool>,
    /// SNMP managers that get a notification for every alarm raised and cleared.
    #[serde(default)]
    pub snmp: Vec<super::snmp::RawSnmp>,
    /// Events kept in memory for `alarms` and for the cluster member (default 10000).
    pub event_history: Option<usize>,
    /// Folder of `stats.jsonl`, one line per minute (and its rotated files); none: the
    /// minutes are kept in memory only.
    pub stats_log: Option<String>,
    /// Size at which `stats.jsonl` is rotated (default 10 MB).
    pub stats_log_max_bytes: Option<u64>,
    /// `stats.jsonl` files kept, the current one included (default 5).
    pub stats_log_files: Option<u32>,
    /// Minutes kept in memory for `robustifier stats` and the member (default 1440).
    pub stats_minutes: Option<u32>,
    /// Raise an alarm when a pool or group deflects more sessions than this in a minute.
    pub deflection_alarm_per_minute: Option<u64>,
    /// Raise an alarm when XDP drops more flood packets than this in a minute.
    pub flood_drop_alarm_per_minute: Option<u64>,
    /// The roll-up's period in milliseconds, for tests only: any other value than the
    /// default 60000 numbers its records as consecutive minutes from the current one.
    pub stats_period_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrontend {
    pub name: String,
    /// Interface the XDP program attaches to; none means no XDP (steering still works).
    pub interface: Option<String>,
    /// "auto" (native, falling back to generic), "native" or "generic".
    pub xdp_mode: Option<String>,
    /// Directory under bpffs where the maps are pinned.
    pub pin_dir: Option<String>,
    /// Unprivileged user the daemon switches to once the data path is attached.
    pub user: Option<String>,
    /// Serve clients connecting from this host's loopback (refused by default).
    #[serde(default)]
    pub serve_loopback_clients: bool,
    /// Where the member writes package updates for `robustifier install-update`.
    pub update_dir: Option<String>,
    /// "per-core" (the default) or "multi"; see `front::workers`.
    #[serde(default)]
    pub runtime: super::RuntimeLayout,
    /// Worker threads; absent or 0: one per CPU the process may run on.
    pub workers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first. Re-read when the file changes.
    pub certificate: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlood {
    /// SYNs per second per source address to any service; 0 or absent disables the budget.
    pub syn_rate_per_sec: Option<u32>,
    pub syn_burst: Option<u32>,
    /// Prefixes whose traffic to the services is dropped in XDP.
    #[serde(default)]
    pub block: Vec<String>,
    /// IPv6 clients are counted per prefix of this length (SYN budget, per-client limits,
    /// AUTH failures): one host usually holds a whole /64. IPv4 clients count per address.
    pub client_prefix_v6: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClasses {
    /// Client prefixes steered to the services' priority listeners.
    #[serde(default)]
    pub priority: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    /// "smtp" or "pop3".
    pub protocol: String,
    pub port: u16,
    /// Virtual IPs of the service; empty means every local address (wildcard).
    #[serde(default)]
    pub vips: Vec<String>,
    /// Greeting host name; defaults to the front-end's name.
    pub hostname: Option<String>,
    /// Concurrent sessions the service accepts.
    pub max_connections: Option<u32>,
    /// Concurrent sessions one client address may hold.
    pub max_per_client: Option<u32>,
    /// "none", "starttls" (STARTTLS/STLS offered) or "implicit" (ports 465/995).
    pub tls: Option<String>,
    /// SMTP submission: AUTH offered and required before MAIL.
    pub auth: Option<bool>,
    /// Allows passwords over a connection that is neither TLS nor from loopback
    /// (Postfix `smtpd_tls_auth_only = no`, Dovecot `disable_plaintext_auth = no`).
    pub plaintext_auth: Option<bool>,
    /// Routing map file (relative to the config file's folder).
    pub routes: Option<String>,
    /// `[[directory]]` whose answers route the keys the routing map does not match.
    pub directory: Option<String>,
    /// Pool for keys the routing map does not match (or for every session, without a map).
    pub pool: Option<String>,
    /// Largest message accepted, octets (SMTP SIZE).
    pub max_message_size: Option<u64>,
    /// Seconds a session may wait for the client's next command.
    pub idle_timeout_secs: Option<u64>,
    /// Milliseconds a session may wait for a back-end slot when every back-end of its
    /// route is over its group's thresholds, unless its group sets its own; 0: none.
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: String,
    /// How the client's identity reaches the back-ends: "none", "xclient" or "proxy".
    pub identity: Option<String>,
    /// Back-end TLS: "none" or "starttls".
    pub tls: Option<String>,
    /// PEM CA bundle that back-end certificates must chain to (with tls = "starttls").
    pub ca: Option<String>,
    /// Name checked in the back-ends' certificates; defaults to each back-end's address.
    pub server_name: Option<String>,
    /// Back-ends share one message store: balance by load. Otherwise a route's back-ends
    /// are tried in the configured order (the mailbox's owner first).
    pub shared_store: Option<bool>,
    /// Connect plus greeting, after which a session tries the next back-end.
    pub connect_timeout_ms: Option<u64>,
    /// Idle SMTP legs kept open per back-end for the next session (0: none kept).
    pub idle_legs: Option<u32>,
    /// How long an idle SMTP leg is kept, well below the back-end's own idle timeout.
    pub idle_leg_ms: Option<u64>,
    /// A message sent with DATA goes to a back-end that offers CHUNKING as one BDAT
    /// (default true); false relays DATA as DATA.
    pub data_as_bdat: Option<bool>,
    pub health: Option<super::balance::RawHealth>,
    pub thresholds: Option<super::balance::RawThresholds>,
    /// File with the key shared with the back-ends' agents (a back-end may name its own).
    pub agent_key_file: Option<String>,
    /// Poll agents that run without a key (`agent --insecure-no-key`).
    pub agent_insecure: Option<bool>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    /// `host:port`, IPv6 as `[addr]:port`.
    pub address: String,
    pub weight: Option<u32>,
    /// Overrides the pool's `identity` for this back-end.
    pub identity: Option<String>,
    /// "host:port" of the back-end's `robustifier agent`.
    pub agent: Option<String>,
    /// Overrides the pool's `agent_key_file` for this back-end.
    pub agent_key_file: Option<String>,
    /// Overrides the pool's `agent_insecure` for this back-end.
    pub agent_insecure: Option<bool>,
}

/// `[[domain_queue]]`: recipient domains sent to a pool of their own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomainQueue {
    /// `slow.example` (that domain) or `.slow.example` (every subdomain).
    pub domains: Vec<String>,
    /// The SMTP pool that queues them.
    pub pool: String,
    /// Deferred messages for these domains on one back-end outside the pool that call for
    /// isolation (`auto = true`; Exim's agent gives no deferred count: its queued count
    /// stands in).
    pub deferred_alarm: Option<u64>,
    /// Age in seconds of the domains' oldest queued message on one back-end outside the
    /// pool that calls for isolation.
    pub oldest_alarm_secs: Option<u64>,
    /// Route these domains to the pool only while isolated: when a threshold is crossed,
    /// until the figures stay under them for `recover_secs`.
    pub auto: Option<bool>,
    /// Seconds under the thresholds before an automatic isolation ends (default 600).
    pub recover_secs: Option<u64>,
    /// Seconds between two looks at the agents' queues of an `auto = true` block
    /// (default 60).
    pub isolation_interval_secs: Option<u64>,
}
