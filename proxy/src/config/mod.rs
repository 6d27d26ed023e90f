//! Configuration: TOML read into `raw` structs, then validated once into the typed
//! [`Config`] the rest of the program uses. Every error names the file, the key and the
//! reason (`ConfigError`), and nothing downstream re-checks what was validated here.

pub mod balance;
pub mod diff;
pub mod directory;
mod error;
mod raw;
pub mod routes;
pub mod snmp;
pub mod vrrp;

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use robustifier_common::{MAX_BACKENDS, MAX_SERVICES, PIN_DIR};

pub use error::ConfigError;
use raw::{RawBackend, RawConfig, RawMonitor, RawPool, RawService};

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    /// The first 12 hex digits of the SHA-256 of the file's bytes as loaded: names the
    /// configuration a front-end runs (logs, the reload command) and tells two loads of
    /// the same bytes from a changed file.
    pub version: String,
    pub frontend: Frontend,
    pub tls: Option<TlsFiles>,
    pub flood: Flood,
    /// Client prefixes of the priority class (kernel steering, later user-group priority).
    pub priority_prefixes: Vec<IpNet>,
    pub services: Vec<Service>,
    pub pools: Vec<Pool>,
    /// User groups by priority under load; empty means everyone is one group.
    pub groups: Vec<balance::Group>,
    pub ha: vrrp::Ha,
    pub vrrp: Vec<vrrp::VirtualRouter>,
    pub monitor: Monitor,
    /// `[[domain_queue]]`s: recipient domains routed to a pool of their own, before the
    /// routing maps.
    pub domain_queues: Vec<DomainQueue>,
    /// `[[directory]]` routing sources, by name.
    pub directories: Vec<directory::Directory>,
}

/// `[monitor]`: the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    /// Folder of `events.jsonl`; none: events in memory only.
    pub event_log: Option<PathBuf>,
    pub event_log_max_bytes: u64,
    pub event_log_files: u32,
    /// The HTTP endpoint (`/metrics`, `/ready`), and how it authenticates.
    pub metrics: Option<MetricsEndpoint>,
    /// Where SNMP notifications of alarms go.
    pub snmp: Vec<snmp::Destination>,
    /// Events kept in memory (every relayed message is one).
    pub event_history: usize,
    /// The per-minute statistics: where they are logged and kept, and their alarms.
    pub stats: StatsSettings,
}

/// `[monitor] stats_*` and the statistics' alarm thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSettings {
    /// Folder of `stats.jsonl`; none: in memory only.
    pub log: Option<PathBuf>,
    pub log_max_bytes: u64,
    pub log_files: u32,
    /// Minutes kept in memory.
    pub minutes: u32,
    pub deflection_alarm_per_minute: Option<u64>,
    pub flood_drop_alarm_per_minute: Option<u64>,
    /// The roll-up's period (a minute, but in tests).
    pub period: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsEndpoint {
    pub listen: std::net::SocketAddr,
    /// The bearer token's file; `None` only when the operator said so
    /// (`metrics_insecure_no_auth`).
    pub token_file: Option<PathBuf>,
}

const DEFAULT_EVENT_LOG_BYTES: u64 = 10_000_000;
const DEFAULT_EVENT_LOG_FILES: u32 = 5;
const DEFAULT_STATS_MINUTES: u32 = 1440;

/// Where package updates are written by default: the folder `robustifier-update.path`
/// watches.
pub const UPDATE_DIR: &str = "/var/lib/robustifier/updates";

#[derive(Debug, Clone)]
pub struct Frontend {
    pub name: String,
    pub interface: Option<String>,
    pub xdp_mode: XdpMode,
    pub pin_dir: PathBuf,
    /// The user `robustifier run` switches to after the privileged start; `None`: the
    /// default user if it exists (see [`crate::privs`]).
    pub user: Option<String>,
    /// Clients on this host's loopback get sessions. Off by default: their address reaches
    /// the back-ends as the host's own, which back-ends commonly trust (Postfix's
    /// `mynetworks`); for a front-end without a kernel side tried on one host, and tests.
    pub serve_loopback_clients: bool,
    /// Where the member writes package updates (`incoming.deb`, `incoming.json`) for
    /// `robustifier install-update`; default [`UPDATE_DIR`].
    pub update_dir: PathBuf,
    /// How sessions are laid out on threads (see [`crate::front::workers`]); a change
    /// takes a restart.
    pub runtime: RuntimeLayout,
    /// Worker threads; `None`: one per CPU the process may run on.
    pub workers: Option<usize>,
}

/// `[frontend] runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeLayout {
    /// One single-threaded runtime per worker, each accepting on the shared listening
    /// sockets and running the sessions it accepted.
    #[default]
    PerCore,
    /// tokio's work-stealing runtime with `workers` threads.
    Multi,
}

/// The server certificate and key, checked readable at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Driver mode, falling back to generic (skb) mode where the driver lacks it.
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, Default)]
pub struct Flood {
    /// 0 disables the per-source SYN budget.
    pub syn_rate_per_sec: u32,
    pub syn_burst: u32,
    pub block: Vec<IpNet>,
    /// Length of the IPv6 prefix counted as one client (SYN budget, per-client limits).
    pub client_prefix_v6: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Pop3,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Pop3 => "pop3",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    /// Index into the kernel's per-service arrays; the position in the file.
    pub id: u32,
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Empty: every local address.
    pub vips: Vec<IpAddr>,
    pub hostname: String,
    pub max_connections: u32,
    pub max_per_client: u32,
    pub tls: ServiceTls,
    /// Submission: AUTH offered, and required before MAIL.
    pub auth: bool,
    /// Passwords accepted over a connection that is neither TLS nor from loopback.
    pub plaintext_auth: bool,
    /// IPv6 clients are one client per prefix of this length (`flood.client_prefix_v6`),
    /// for the per-client session limit and the AUTH failure limit.
    pub client_prefix_v6: u8,
    pub routes: Option<PathBuf>,
    /// The `[[directory]]` consulted after `routes`, before `pool`.
    pub directory: Option<String>,
    pub pool: Option<String>,
    pub max_message_size: u64,
    pub idle_timeout: std::time::Duration,
    /// Admission wait of sessions whose group sets none (`wait_ms`); zero: deflect at once.
    pub wait: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceTls {
    None,
    /// Offered with STARTTLS (SMTP) or STLS (POP3).
    StartTls,
    /// The handshake comes first (SMTP 465, RFC 8314; POP3 995).
    Implicit,
}

/// How a back-end learns the real client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    None,
    /// Postfix XCLIENT command after the greeting.
    Xclient,
    /// PROXY protocol v2 header before anything else.
    ProxyV2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTls {
    None,
    /// STARTTLS/STLS to the back-end, the certificate verified against `ca`.
    StartTls {
        ca: PathBuf,
        /// The name the certificate must carry, parsed here so that a bad one stops the
        /// configuration instead of every connection; `None` verifies the back-end's IP.
        server_name: Option<rustls::pki_types::ServerName<'static>>,
    },
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub id: u32,
    pub name: String,
    pub tls: BackendTls,
    pub shared_store: bool,
    /// How the pool's back-ends pass the client unless one says otherwise (`identity`);
    /// `None` when only the back-ends name theirs.
    pub identity: Option<Identity>,
    /// Connect plus greeting; a back-end slower than this is skipped for the next one.
    pub connect_timeout: std::time::Duration,
    /// Idle SMTP legs kept per back-end after a finished transaction, for the next
    /// session (`backend::idle`); 0 keeps none.
    pub idle_legs: u32,
    /// How long an idle leg is kept: below the back-end's own idle timeout, so the
    /// back-end seldom closes one the proxy still counts on.
    pub idle_leg_age: std::time::Duration,
    /// A message the client sends with DATA goes to a back-end that offered CHUNKING as
    /// one `BDAT <n> LAST` when it ends within the held size (`smtp::session::message`).
    pub data_as_bdat: bool,
    pub health: balance::Health,
    pub thresholds: balance::Thresholds,
    /// The pool's `agent_key_file` (resolved against the file's folder) and
    /// `agent_insecure`, kept so that a reload can name a change of them; the key each
    /// back-end's agent is polled with is in its `agent`.
    pub agent_key_file: Option<PathBuf>,
    pub agent_insecure: bool,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Index into the kernel's load map; unique across pools.
    pub id: u32,
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub identity: Identity,
    /// The agent's address and the key it expects.
    pub agent: Option<crate::agent_wire::Endpoint>,
}

const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_MAX_PER_CLIENT: u32 = 50;
/// 50 MiB, a common MTA default.
const DEFAULT_MAX_MESSAGE: u64 = 50 * 1024 * 1024;
/// RFC 5321 4.5.3.2.7: at least 5 minutes for the next command.
const DEFAULT_IDLE_SECS: u64 = 300;
const DEFAULT_WEIGHT: u32 = 100;
/// One IPv6 subscriber or host usually holds a /64 (RFC 6177), so counting per address would
/// let one host multiply every per-client limit by 2^64.
pub const DEFAULT_CLIENT_PREFIX_V6: u8 = 64;
const MAX_WEIGHT: u32 = 65_535;
/// Idle SMTP legs kept per back-end by default: enough for a steady stream of sessions to
/// find one, few enough that the back-end's process count barely notices.
const DEFAULT_IDLE_LEGS: u32 = 16;
const MAX_IDLE_LEGS: u32 = 1000;
/// Postfix's `smtpd_timeout` defaults to 300 s: an idle leg is never kept that long.
const MAX_IDLE_LEG_MS: u64 = 240_000;

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `file` (tests use this without touching disk).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |key: String, reason: String| ConfigError {
            file: file.to_owned(),
            key,
            reason,
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err(String::new(), syntax_reason(text, &e)))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // toml's message may span lines (it quotes the source); keep the first.
            let reason = inner
                .message()
                .lines()
                .next()
                .unwrap_or("invalid")
                .to_owned();
            err(if key == "." { String::new() } else { key }, reason)
        })?;
        let mut config = Config::from_raw(file, raw).map_err(|(key, reason)| err(key, reason))?;
        config.version = version(text.as_bytes());
        Ok(config)
    }

    fn from_raw(file: &Path, raw: RawConfig) -> Result<Config, (String, String)> {
        let fe = raw.frontend;
        if fe.name.trim().is_empty() {
            return Err(("frontend.name".into(), "must not be empty".into()));
        }
        if let Some(ifname) = &fe.interface
            && (ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']))
        {
            return Err((
                "frontend.interface".into(),
                format!("{ifname:?} is not a valid interface name (1 to 15 characters)"),
            ));
        }
        let xdp_mode = match fe.xdp_mode.as_deref().unwrap_or("auto") {
            "auto" => XdpMode::Auto,
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            other => {
                return Err((
                    "frontend.xdp_mode".into(),
                    format!("{other:?} is not one of \"auto\", \"native\", \"generic\""),
                ));
            }
        };
        let pin_dir = PathBuf::from(fe.pin_dir.unwrap_or_else(|| PIN_DIR.to_owned()));
        if !pin_dir.is_absolute() {
            return Err(("frontend.pin_dir".into(), "must be an absolute path".into()));
        }
        if let Some(user) = &fe.user
            && (user.is_empty() || user.contains([':', '/', '\n']) || user.trim() != user)
        {
            return Err((
                "frontend.user".into(),
                format!("{user:?} is not a valid user name"),
            ));
        }
        let update_dir = PathBuf::from(fe.update_dir.unwrap_or_else(|| UPDATE_DIR.to_owned()));
        if !update_dir.is_absolute() {
            return Err((
                "frontend.update_dir".into(),
                "must be an absolute path".into(),
            ));
        }
        let frontend = Frontend {
            name: fe.name,
            interface: fe.interface,
            xdp_mode,
            pin_dir,
            user: fe.user,
            serve_loopback_clients: fe.serve_loopback_clients,
            update_dir,
            runtime: fe.runtime,
            workers: fe.workers.filter(|n| *n > 0),
        };
        let base = file.parent().unwrap_or(Path::new("."));
        let tls = match raw.tls {
            None => None,
            Some(t) => Some(TlsFiles {
                certificate: readable(base, "tls.certificate", &t.certificate)?,
                key: readable(base, "tls.key", &t.key)?,
            }),
        };

        let syn_rate_per_sec = raw.flood.syn_rate_per_sec.unwrap_or(0);
        let syn_burst = match raw.flood.syn_burst {
            Some(0) => return Err(("flood.syn_burst".into(), "must be at least 1".into())),
            Some(b) => b,
            None => syn_rate_per_sec.max(1),
        };
        let client_prefix_v6 = raw
            .flood
            .client_prefix_v6
            .unwrap_or(DEFAULT_CLIENT_PREFIX_V6);
        if !(16..=128).contains(&client_prefix_v6) {
            return Err(("flood.client_prefix_v6".into(), "must be 16 to 128".into()));
        }
        let flood = Flood {
            syn_rate_per_sec,
            syn_burst,
            block: prefixes("flood.block", &raw.flood.block)?,
            client_prefix_v6,
        };
        let priority_prefixes = prefixes("classes.priority", &raw.classes.priority)?;

        if raw.services.len() > MAX_SERVICES as usize {
            return Err(("service".into(), format!("at most {MAX_SERVICES} services")));
        }
        let mut names = HashSet::new();
        let mut bound = HashSet::new();
        let mut services = Vec::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            let mut service = service(i, s, &frontend.name, base)?;
            service.client_prefix_v6 = flood.client_prefix_v6;
            if service.tls != ServiceTls::None && tls.is_none() {
                return Err((
                    format!("service[{i}].tls"),
                    "needs a [tls] section with certificate and key".into(),
                ));
            }
            if !names.insert(service.name.clone()) {
                return Err((
                    format!("service[{i}].name"),
                    format!("duplicate service {:?}", service.name),
                ));
            }
            let addrs: Vec<Option<IpAddr>> = if service.vips.is_empty() {
                vec![None]
            } else {
                service.vips.iter().copied().map(Some).collect()
            };
            for addr in addrs {
                if !bound.insert((addr, service.port)) {
                    let what = addr.map_or("any address".to_owned(), |a| a.to_string());
                    return Err((
                        format!("service[{i}]"),
                        format!(
                            "{what} port {} is already used by another service",
                            service.port
                        ),
                    ));
                }
            }
            services.push(service);
        }

        let mut pools = Vec::new();
        let mut pool_names: HashSet<String> = HashSet::new();
        let mut backend_names = HashSet::new();
        let mut next_backend = 0u32;
        for (i, p) in raw.pools.into_iter().enumerate() {
            let pool = pool(i, p, &mut next_backend, &mut backend_names, base)?;
            if !pool_names.insert(pool.name.clone()) {
                return Err((
                    format!("pool[{i}].name"),
                    format!("duplicate pool {:?}", pool.name),
                ));
            }
            pools.push(pool);
        }
        // Every pool a service can route to must exist and serve its protocol.
        for (i, s) in services.iter().enumerate() {
            if let Some(p) = &s.pool {
                routes::usable(&pools[..], p, s.protocol)
                    .map_err(|e| (format!("service[{i}].pool"), e.to_string()))?;
            }
            if let Some(path) = &s.routes {
                crate::route::RouteTable::load_for(path, s.protocol, &pools[..])
                    .map_err(|e| (format!("service[{i}].routes"), e.to_string()))?;
            }
        }
        let groups = balance::groups(raw.groups)?;
        let (ha, vrrp) = vrrp::validate(
            &frontend.name,
            frontend.interface.as_deref(),
            raw.ha,
            raw.vrrp,
        )?;
        let monitor = monitor(base, raw.monitor)?;
        let domain_queues = domain_queues(raw.domain_queues, &pools[..])?;
        let directories = directory::directories(raw.directories, base)?;
        for (i, s) in services.iter().enumerate() {
            if let Some(d) = &s.directory
                && !directories.iter().any(|x| &x.name == d)
            {
                return Err((
                    format!("service[{i}].directory"),
                    format!("no [[directory]] is called {d:?}"),
                ));
            }
        }
        Ok(Config {
            domain_queues,
            directories,
            ha,
            vrrp,
            monitor,
            file: file.to_owned(),
            version: String::new(),
            frontend,
            tls,
            groups,
            flood,
            priority_prefixes,
            services,
            pools,
        })
    }

    pub fn backends(&self) -> impl Iterator<Item = (&Pool, &Backend)> {
        self.pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
    }
}

fn service(
    i: usize,
    s: RawService,
    frontend: &str,
    base: &Path,
) -> Result<Service, (String, String)> {
    let key = |k: &str| format!("service[{i}].{k}");
    if s.name.trim().is_empty() {
        return Err((key("name"), "must not be empty".into()));
    }
    let protocol = match s.protocol.as_str() {
        "smtp" => Protocol::Smtp,
        "pop3" => Protocol::Pop3,
        other => {
            return Err((
                key("protocol"),
                format!("{other:?} is not one of \"smtp\", \"pop3\""),
            ));
        }
    };
    if s.port == 0 {
        return Err((key("port"), "must be 1 to 65535".into()));
    }
    let mut vips = Vec::new();
    for (j, v) in s.vips.iter().enumerate() {
        let addr: IpAddr = v.parse().map_err(|_| {
            (
                format!("service[{i}].vips[{j}]"),
                format!("{v:?} is not an IP address"),
            )
        })?;
        if addr.is_unspecified() {
            return Err((
                format!("service[{i}].vips[{j}]"),
                "use an empty list for every address, not the unspecified address".into(),
            ));
        }
        vips.push(addr);
    }
    let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err((key("max_connections"), "must be at least 1".into()));
    }
    let max_per_client = s.max_per_client.unwrap_or(DEFAULT_MAX_PER_CLIENT);
    if max_per_client == 0 {
        return Err((key("max_per_client"), "must be at least 1".into()));
    }
    let tls = match s.tls.as_deref().unwrap_or("none") {
        "none" => ServiceTls::None,
        "starttls" => ServiceTls::StartTls,
        "implicit" => ServiceTls::Implicit,
        other => {
            return Err((
                key("tls"),
                format!("{other:?} is not one of \"none\", \"starttls\", \"implicit\""),
            ));
        }
    };
    let auth = s.auth.unwrap_or(false);
    if auth && protocol != Protocol::Smtp {
        return Err((
            key("auth"),
            "only SMTP services take `auth` (POP3 always authenticates)".into(),
        ));
    }
    let plaintext_auth = s.plaintext_auth.unwrap_or(false);
    if auth && tls == ServiceTls::None && !plaintext_auth {
        return Err((
            key("auth"),
            "auth = true with tls = \"none\" takes passwords in clear from every client; \
             use tls = \"starttls\" or \"implicit\", or set plaintext_auth = true"
                .into(),
        ));
    }
    let routes = match &s.routes {
        Some(r) => Some(readable(base, &key("routes"), r)?),
        None => None,
    };
    let max_message_size = s.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE);
    if max_message_size < 1024 {
        return Err((
            key("max_message_size"),
            "must be at least 1024 octets".into(),
        ));
    }
    let idle = s.idle_timeout_secs.unwrap_or(DEFAULT_IDLE_SECS);
    if idle == 0 {
        return Err((key("idle_timeout_secs"), "must be at least 1".into()));
    }
    let wait = balance::wait(key("wait_ms"), s.wait_ms)?.unwrap_or_default();
    Ok(Service {
        id: i as u32,
        name: s.name,
        protocol,
        port: s.port,
        vips,
        hostname: s.hostname.unwrap_or_else(|| frontend.to_owned()),
        max_connections,
        max_per_client,
        tls,
        auth,
        plaintext_auth,
        client_prefix_v6: DEFAULT_CLIENT_PREFIX_V6,
        routes,
        directory: s.directory,
        pool: s.pool,
        max_message_size,
        idle_timeout: std::time::Duration::from_secs(idle),
        wait,
    })
}

fn monitor(base: &Path, raw: RawMonitor) -> Result<Monitor, (String, String)> {
    let stats = stats_settings(base, &raw)?;
    let event_log_max_bytes = raw.event_log_max_bytes.unwrap_or(DEFAULT_EVENT_LOG_BYTES);
    if event_log_max_bytes < crate::events::log::MIN_BYTES {
        return Err((
            "monitor.event_log_max_bytes".into(),
            format!("must be at least {}", crate::events::log::MIN_BYTES),
        ));
    }
    let event_log_files = raw.event_log_files.unwrap_or(DEFAULT_EVENT_LOG_FILES);
    if !(1..=100).contains(&event_log_files) {
        return Err((
            "monitor.event_log_files".into(),
            "must be between 1 and 100".into(),
        ));
    }
    let metrics = match raw.metrics_listen {
        None => {
            if raw.metrics_token_file.is_some() || raw.metrics_insecure_no_auth.is_some() {
                return Err((
                    "monitor.metrics_listen".into(),
                    "missing: the token settings are for the metrics endpoint".into(),
                ));
            }
            None
        }
        Some(listen) => {
            let listen = listen.parse().map_err(|_| {
                (
                    "monitor.metrics_listen".into(),
                    format!("{listen:?} is not an address:port"),
                )
            })?;
            let token_file = match (raw.metrics_token_file, raw.metrics_insecure_no_auth) {
                (Some(f), None | Some(false)) => {
                    Some(readable(base, "monitor.metrics_token_file", &f)?)
                }
                (None, Some(true)) => None,
                (Some(_), Some(true)) => {
                    return Err((
                        "monitor.metrics_insecure_no_auth".into(),
                        "conflicts with metrics_token_file".into(),
                    ));
                }
                (None, None | Some(false)) => {
                    return Err((
                        "monitor.metrics_token_file".into(),
                        "missing: the metrics endpoint needs a bearer token file (or metrics_insecure_no_auth = true)".into(),
                    ));
                }
            };
            Some(MetricsEndpoint { listen, token_file })
        }
    };
    let snmp = raw
        .snmp
        .into_iter()
        .enumerate()
        .map(|(i, d)| snmp::destination(base, i, d))
        .collect::<Result<_, _>>()?;
    let event_history = raw.event_history.unwrap_or(crate::events::DEFAULT_HISTORY);
    if !(100..=10_000_000).contains(&event_history) {
        return Err((
            "monitor.event_history".into(),
            "must be between 100 and 10000000".into(),
        ));
    }
    Ok(Monitor {
        event_history,
        stats,
        snmp,
        event_log: raw.event_log.map(|d| base.join(d)),
        event_log_max_bytes,
        event_log_files,
        metrics,
    })
}

fn stats_settings(base: &Path, raw: &RawMonitor) -> Result<StatsSettings, (String, String)> {
    let log_max_bytes = raw.stats_log_max_bytes.unwrap_or(DEFAULT_EVENT_LOG_BYTES);
    if log_max_bytes < crate::events::log::MIN_BYTES {
        return Err((
            "monitor.stats_log_max_bytes".into(),
            format!("must be at least {}", crate::events::log::MIN_BYTES),
        ));
    }
    let log_files = raw.stats_log_files.unwrap_or(DEFAULT_EVENT_LOG_FILES);
    if !(1..=100).contains(&log_files) {
        return Err((
            "monitor.stats_log_files".into(),
            "must be between 1 and 100".into(),
        ));
    }
    let minutes = raw.stats_minutes.unwrap_or(DEFAULT_STATS_MINUTES);
    if !(1..=10_080).contains(&minutes) {
        return Err((
            "monitor.stats_minutes".into(),
            "must be between 1 and 10080 (a week)".into(),
        ));
    }
    let period_ms = raw.stats_period_ms.unwrap_or(60_000);
    if !(10..=60_000).contains(&period_ms) {
        return Err((
            "monitor.stats_period_ms".into(),
            "must be between 10 and 60000".into(),
        ));
    }
    Ok(StatsSettings {
        log: raw.stats_log.as_ref().map(|d| base.join(d)),
        log_max_bytes,
        log_files,
        minutes,
        deflection_alarm_per_minute: raw.deflection_alarm_per_minute,
        flood_drop_alarm_per_minute: raw.flood_drop_alarm_per_minute,
        period: std::time::Duration::from_millis(period_ms),
    })
}

/// The configuration's version: 12 hex digits (48 bits) of the SHA-256 of its bytes, short
/// enough for a log line, long enough that the versions of one file do not collide.
fn version(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A back-end's identity when it names none: its pool's. There is no implicit default:
/// with none, a back-end sees the front-end's address for every client, and one that
/// trusts the front-end's network would trust every client; the operator says so
/// explicitly with `identity = "none"`.
fn pool_identity(i: usize, pool: Option<Identity>) -> Result<Identity, (String, String)> {
    pool.ok_or_else(|| {
        (
            format!("pool[{i}].identity"),
            "say how the client's address reaches the back-ends: \"xclient\", \"proxy\" \
             (PROXY protocol v2) or \"none\" (they see the front-end's address)"
                .into(),
        )
    })
}

fn identity_value(key: String, value: &str) -> Result<Identity, (String, String)> {
    match value {
        "none" => Ok(Identity::None),
        "xclient" => Ok(Identity::Xclient),
        "proxy" => Ok(Identity::ProxyV2),
        other => Err((
            key,
            format!("{other:?} is not one of \"none\", \"xclient\", \"proxy\""),
        )),
    }
}

/// A TOML syntax error in one line: where, then what. toml's own rendering quotes the
/// source over several lines, which would break the one-line error format.
fn syntax_reason(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().lines().next().unwrap_or("invalid TOML");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML syntax error at line {line}, column {column}: {what}")
        }
        None => format!("TOML syntax error: {what}"),
    }
}

/// `value` relative to `base`, checked to be a readable file.
pub(crate) fn readable(base: &Path, key: &str, value: &str) -> Result<PathBuf, (String, String)> {
    let path = base.join(value);
    std::fs::File::open(&path)
        .map(|_| path.clone())
        .map_err(|e| {
            (
                key.to_owned(),
                format!("cannot read {}: {e}", path.display()),
            )
        })
}

fn pool(
    i: usize,
    p: RawPool,
    next_backend: &mut u32,
    backend_names: &mut HashSet<String>,
    base: &Path,
) -> Result<Pool, (String, String)> {
    if p.name.trim().is_empty() {
        return Err((format!("pool[{i}].name"), "must not be empty".into()));
    }
    let identity_of_pool = p
        .identity
        .as_deref()
        .map(|v| identity_value(format!("pool[{i}].identity"), v))
        .transpose()?;
    let tls = match p.tls.as_deref().unwrap_or("none") {
        "none" => BackendTls::None,
        "starttls" => {
            let ca = p.ca.as_deref().ok_or_else(|| {
                (
                    format!("pool[{i}].ca"),
                    "tls = \"starttls\" needs a CA file to verify back-ends".to_owned(),
                )
            })?;
            BackendTls::StartTls {
                ca: readable(base, &format!("pool[{i}].ca"), ca)?,
                server_name: p
                    .server_name
                    .map(|n| {
                        rustls::pki_types::ServerName::try_from(n.clone()).map_err(|e| {
                            (
                                format!("pool[{i}].server_name"),
                                format!("{n:?} is not a DNS name or IP address ({e})"),
                            )
                        })
                    })
                    .transpose()?,
            }
        }
        other => {
            return Err((
                format!("pool[{i}].tls"),
                format!("{other:?} is not one of \"none\", \"starttls\""),
            ));
        }
    };
    let pool_key_file = p
        .agent_key_file
        .as_deref()
        .map(|f| (format!("pool[{i}].agent_key_file"), base.join(f)));
    let pool_insecure = p.agent_insecure.unwrap_or(false);
    let mut backends = Vec::new();
    for (j, b) in p.backends.into_iter().enumerate() {
        let RawBackend {
            name,
            address,
            weight,
            identity: backend_identity,
            agent,
            agent_key_file,
            agent_insecure,
        } = b;
        let key = |k: &str| format!("pool[{i}].backend[{j}].{k}");
        if *next_backend >= MAX_BACKENDS {
            return Err((
                key("name"),
                format!("at most {MAX_BACKENDS} back-ends in all"),
            ));
        }
        if !backend_names.insert(name.clone()) {
            return Err((key("name"), format!("duplicate back-end {name:?}")));
        }
        let address: SocketAddr = address.parse().map_err(|_| {
            (
                key("address"),
                format!("{address:?} is not host:port (IPv6 as [addr]:port)"),
            )
        })?;
        if address.port() == 0 {
            return Err((key("address"), "port must be 1 to 65535".into()));
        }
        let weight = weight.unwrap_or(DEFAULT_WEIGHT);
        if weight > MAX_WEIGHT {
            return Err((key("weight"), format!("must be 0 to {MAX_WEIGHT}")));
        }
        let identity = match backend_identity.as_deref() {
            Some(v) => identity_value(key("identity"), v)?,
            None => pool_identity(i, identity_of_pool)?,
        };
        // A back-end's own key file or insecure flag overrides the pool's.
        let (key_file, insecure) = match (agent_key_file, agent_insecure) {
            (Some(f), insecure) => (
                Some((key("agent_key_file"), base.join(f))),
                insecure.unwrap_or(false),
            ),
            (None, Some(true)) => (None, true),
            (None, Some(false)) => (pool_key_file.clone(), false),
            (None, None) => (pool_key_file.clone(), pool_insecure),
        };
        let agent = balance::agent(
            &key("agent"),
            agent.as_deref(),
            key_file.as_ref().map(|(k, p)| (k.as_str(), p.as_path())),
            insecure,
        )?;
        backends.push(Backend {
            id: *next_backend,
            name,
            address,
            weight,
            identity,
            agent,
        });
        *next_backend += 1;
    }
    Ok(Pool {
        id: i as u32,
        name: p.name,
        tls,
        shared_store: p.shared_store.unwrap_or(true),
        identity: identity_of_pool,
        connect_timeout: match p.connect_timeout_ms {
            Some(ms) if ms >= 100 => std::time::Duration::from_millis(ms),
            Some(_) => {
                return Err((
                    format!("pool[{i}].connect_timeout_ms"),
                    "must be at least 100".into(),
                ));
            }
            None => std::time::Duration::from_secs(10),
        },
        idle_legs: match p.idle_legs {
            Some(n) if n > MAX_IDLE_LEGS => {
                return Err((
                    format!("pool[{i}].idle_legs"),
                    format!("must be at most {MAX_IDLE_LEGS}"),
                ));
            }
            Some(n) => n,
            None => DEFAULT_IDLE_LEGS,
        },
        idle_leg_age: match p.idle_leg_ms {
            Some(ms) if (100..=MAX_IDLE_LEG_MS).contains(&ms) => {
                std::time::Duration::from_millis(ms)
            }
            Some(_) => {
                return Err((
                    format!("pool[{i}].idle_leg_ms"),
                    format!("must be from 100 to {MAX_IDLE_LEG_MS}"),
                ));
            }
            None => std::time::Duration::from_secs(10),
        },
        data_as_bdat: p.data_as_bdat.unwrap_or(true),
        health: balance::health(&format!("pool[{i}].health"), p.health)?,
        thresholds: balance::thresholds(&format!("pool[{i}].thresholds"), p.thresholds)?,
        agent_key_file: pool_key_file.map(|(_, path)| path),
        agent_insecure: pool_insecure,
        backends,
    })
}

/// Parses prefixes, refusing host bits so that `198.18.0.1/24` is not silently widened.
fn prefixes(key: &str, list: &[String]) -> Result<Vec<IpNet>, (String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let net: IpNet = s
                .parse()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    (
                        format!("{key}[{i}]"),
                        format!("{s:?} is not a prefix like 198.18.0.0/24"),
                    )
                })?;
            if net.trunc() != net {
                return Err((
                    format!("{key}[{i}]"),
                    format!("{s:?} has host bits set; did you mean {}?", net.trunc()),
                ));
            }
            Ok(net)
        })
        .collect()
}

/// One `[[domain_queue]]`: recipient domains that SMTP services send to `pool`, before
/// their routing map and default pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainQueue {
    /// Distinct patterns, in the file's order; none of them is in another block.
    pub domains: Vec<crate::route::DomainPattern>,
    /// Exists and serves SMTP.
    pub pool: String,
    /// The thresholds of automatic isolation (`auto`): a block with it is routed to its
    /// pool only while isolated (see `frontend::isolation`).
    pub deferred_alarm: Option<u64>,
    pub oldest_alarm_secs: Option<u64>,
    pub auto: bool,
    pub recover_secs: Option<u64>,
    /// How often an `auto` block's figures are asked for; none: the default.
    pub isolation_interval_secs: Option<u64>,
}

impl Config {
    /// The dedicated queues' lookup over every block routed always: an `auto = true`
    /// block's domains go to its pool only while isolated.
    pub fn domain_queue_table(&self) -> crate::route::DomainQueues {
        crate::route::DomainQueues::new(
            self.domain_queues
                .iter()
                .filter(|q| !q.auto)
                .flat_map(|q| q.domains.iter().map(|d| (d, q.pool.as_str()))),
        )
    }
}

fn domain_queues(
    raw: Vec<raw::RawDomainQueue>,
    pools: &[Pool],
) -> Result<Vec<DomainQueue>, (String, String)> {
    let mut seen: std::collections::HashMap<crate::route::DomainPattern, usize> =
        std::collections::HashMap::new();
    let mut out = Vec::new();
    for (i, q) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("domain_queue[{i}].{k}");
        if q.domains.is_empty() {
            return Err((key("domains"), "name at least one domain".into()));
        }
        let mut domains = Vec::new();
        for (j, d) in q.domains.iter().enumerate() {
            let pattern = crate::route::DomainPattern::parse(d)
                .map_err(|e| (format!("domain_queue[{i}].domains[{j}]"), e.to_string()))?;
            if let Some(first) = seen.insert(pattern.clone(), i) {
                let where_ = if first == i {
                    "twice in this block".to_owned()
                } else {
                    format!("already in domain_queue[{first}]")
                };
                return Err((
                    format!("domain_queue[{i}].domains[{j}]"),
                    format!("{pattern} is {where_}: a domain belongs to one block"),
                ));
            }
            domains.push(pattern);
        }
        routes::usable(pools, &q.pool, Protocol::Smtp).map_err(|e| (key("pool"), e.to_string()))?;
        for (name, value) in [
            ("deferred_alarm", q.deferred_alarm),
            ("oldest_alarm_secs", q.oldest_alarm_secs),
            ("recover_secs", q.recover_secs),
            ("isolation_interval_secs", q.isolation_interval_secs),
        ] {
            if value == Some(0) {
                return Err((key(name), "must be at least 1".into()));
            }
        }
        let auto = q.auto.unwrap_or(false);
        if auto && q.deferred_alarm.is_none() && q.oldest_alarm_secs.is_none() {
            return Err((
                key("auto"),
                "auto = true needs deferred_alarm or oldest_alarm_secs".into(),
            ));
        }
        out.push(DomainQueue {
            domains,
            pool: q.pool,
            deferred_alarm: q.deferred_alarm,
            oldest_alarm_secs: q.oldest_alarm_secs,
            auto,
            recover_secs: q.recover_secs,
            isolation_interval_secs: q.isolation_interval_secs,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
