//! `[[directory]]`: a routing map kept in LDAP, SQL (PostgreSQL, MariaDB/MySQL, SQLite) or
//! RADIUS, and what every source shares: the per-lookup timeout, the positive and negative
//! caches, stale answers while the source fails, and what an unknown key means.
//!
//! A service names one with `directory = "NAME"`; its recipients (SMTP) or users (POP3,
//! SMTP AUTH) are looked up there after the text routing map (which can override single
//! keys) and before the service's `pool`. Each source kind's own keys live in a sub-table
//! (`[directory.ldap]`, `[directory.sql]`, `[directory.radius]`), validated by its module.

pub mod ldap;
pub mod radius;
pub mod sql;

use std::{path::Path, time::Duration};

use serde::Deserialize;

use super::balance::Invalid;

pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_CACHE_TTL_SECS: u64 = 300;
pub const DEFAULT_NEGATIVE_TTL_SECS: u64 = 60;
pub const DEFAULT_CACHE_SIZE: usize = 100_000;
pub const DEFAULT_STALE_MAX_SECS: u64 = 86_400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    /// The name services use in `directory = "..."`.
    pub name: String,
    /// Milliseconds one lookup may take, retries and failover included (default 1000).
    pub timeout_ms: Option<u64>,
    /// Seconds a found key is answered from the cache (default 300).
    pub cache_ttl_secs: Option<u64>,
    /// Seconds a key the source does not know is answered from the cache (default 60).
    pub negative_ttl_secs: Option<u64>,
    /// Keys cached at most, found and unknown together (default 100000).
    pub cache_size: Option<usize>,
    /// While the source fails, answer keys whose cached answer expired with it (default true).
    pub stale: Option<bool>,
    /// How long after its expiry a cached answer may still be served stale (default 86400).
    pub stale_max_secs: Option<u64>,
    /// A key the source does not know: "pool" (the service's `pool` takes it, as a text map
    /// without the key) or "reject" (550 5.1.1 for a recipient, a failed login for a user).
    pub not_found: Option<String>,
    pub ldap: Option<ldap::RawLdap>,
    pub sql: Option<sql::RawSql>,
    pub radius: Option<radius::RawRadius>,
}

/// A validated `[[directory]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Directory {
    pub name: String,
    pub timeout: Duration,
    pub cache: CachePolicy,
    pub not_found: NotFound,
    pub source: SourceConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePolicy {
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub size: usize,
    /// `None`: stale answers are never served.
    pub stale_max: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFound {
    /// Fall through to the service's `pool`.
    Pool,
    /// The key is unknown: refuse it.
    Reject,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    Ldap(ldap::Ldap),
    Sql(sql::Sql),
    Radius(radius::Radius),
}

impl SourceConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Ldap(_) => "ldap",
            SourceConfig::Sql(s) => s.engine.name(),
            SourceConfig::Radius(_) => "radius",
        }
    }
}

/// Validates every `[[directory]]`; names are unique. `base` is the configuration file's
/// folder, against which relative file names are read.
pub fn directories(raw: Vec<RawDirectory>, base: &Path) -> Result<Vec<Directory>, Invalid> {
    let mut out: Vec<Directory> = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("directory[{i}].{k}");
        let name = d.name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err((
                key("name"),
                "use letters, digits, _ - . (and at least one)".into(),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err((key("name"), format!("duplicate directory {name:?}")));
        }
        let at_least_one = |k: &str, v: Option<u64>, dflt: u64| -> Result<u64, Invalid> {
            match v {
                Some(0) => Err((key(k), "must be at least 1".into())),
                Some(v) => Ok(v),
                None => Ok(dflt),
            }
        };
        let timeout = at_least_one("timeout_ms", d.timeout_ms, DEFAULT_TIMEOUT_MS)?;
        let positive_ttl =
            at_least_one("cache_ttl_secs", d.cache_ttl_secs, DEFAULT_CACHE_TTL_SECS)?;
        let negative_ttl = at_least_one(
            "negative_ttl_secs",
            d.negative_ttl_secs,
            DEFAULT_NEGATIVE_TTL_SECS,
        )?;
        let stale_max = at_least_one("stale_max_secs", d.stale_max_secs, DEFAULT_STALE_MAX_SECS)?;
        let size = d.cache_size.unwrap_or(DEFAULT_CACHE_SIZE);
        if size == 0 {
            return Err((key("cache_size"), "must be at least 1".into()));
        }
        let not_found = match d.not_found.as_deref().unwrap_or("pool") {
            "pool" => NotFound::Pool,
            "reject" => NotFound::Reject,
            other => {
                return Err((
                    key("not_found"),
                    format!("{other:?} is not one of \"pool\", \"reject\""),
                ));
            }
        };
        let source = match (d.ldap, d.sql, d.radius) {
            (Some(l), None, None) => SourceConfig::Ldap(ldap::validate(&key("ldap"), l, base)?),
            (None, Some(s), None) => SourceConfig::Sql(sql::validate(&key("sql"), s, base)?),
            (None, None, Some(r)) => {
                SourceConfig::Radius(radius::validate(&key("radius"), r, base)?)
            }
            _ => {
                return Err((
                    key("name"),
                    "give exactly one of [directory.ldap], [directory.sql], [directory.radius]"
                        .into(),
                ));
            }
        };
        out.push(Directory {
            name: name.to_owned(),
            timeout: Duration::from_millis(timeout),
            cache: CachePolicy {
                positive_ttl: Duration::from_secs(positive_ttl),
                negative_ttl: Duration::from_secs(negative_ttl),
                size,
                stale_max: d
                    .stale
                    .unwrap_or(true)
                    .then(|| Duration::from_secs(stale_max)),
            },
            not_found,
            source,
        });
    }
    Ok(out)
}
