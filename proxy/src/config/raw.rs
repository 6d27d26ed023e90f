//! The configuration file as written: serde structs that mirror the TOML one to one.
//! Unknown keys are refused (`deny_unknown_fields`), so a typo never goes unnoticed.
//! Nothing here is trusted; [`super::Config::from_raw`] validates it into typed values.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub frontend: RawFrontend,
    #[serde(default)]
    pub flood: RawFlood,
    #[serde(default)]
    pub classes: RawClasses,
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<RawPool>,
    #[serde(default)]
    pub ha: super::vrrp::RawHa,
    #[serde(default)]
    pub vrrp: Vec<super::vrrp::RawVrrp>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: String,
    #[serde(default, rename = "backend")]
    pub backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    /// "host:port", IPv6 as "[addr]:port".
    pub address: String,
    pub weight: Option<u32>,
}
