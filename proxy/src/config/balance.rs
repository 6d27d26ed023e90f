//! Configuration of health checks, load thresholds, balancing and user groups: the
//! `[pool.health]`, `[pool.thresholds]` tables of a pool, a back-end's `agent`, and the
//! `[[group]]` sections. Raw serde structs and their validation live together here.

use std::{path::Path, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use crate::agent_wire::{AgentKey, Endpoint};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Consecutive good probes before a down back-end is up again.
    pub rise: Option<u32>,
    /// Consecutive failures (probes or real sessions) before an up back-end is down.
    pub fall: Option<u32>,
    /// Seconds between polls of the back-ends' agents.
    pub agent_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    pub mail_queue: Option<u32>,
    pub disk_percent: Option<f64>,
    pub run_queue: Option<f64>,
    pub response_ms: Option<u32>,
    /// Sessions one back-end may have open from this front-end (a hard limit).
    pub sessions: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: String,
    /// Fraction of every threshold at which this group's new sessions are deflected:
    /// 1.0 is served until the hard limits, 0.5 is deflected at half of them.
    pub share: f64,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Client prefixes; they are also the kernel's priority class when `share` is 1.0.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Milliseconds a session of this group may wait for a back-end slot before it is
    /// deflected; absent: the service's `wait_ms`.
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub agent_interval: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(3),
            rise: 2,
            fall: 3,
            agent_interval: Duration::from_secs(2),
        }
    }
}

/// Load above which a back-end takes no new sessions (until it is back under 90 % of it).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub mail_queue: u32,
    pub disk_permille: u32,
    pub run_queue_milli: u32,
    pub response_us: u32,
    pub sessions: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            mail_queue: 5000,
            disk_permille: 900,
            run_queue_milli: 8000,
            response_us: 5_000_000,
            sessions: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub share: f64,
    pub domains: Vec<String>,
    pub recipients: Vec<String>,
    pub clients: Vec<IpNet>,
    /// How long a session may wait for a back-end slot; `None`: the service's wait.
    pub wait: Option<Duration>,
}

/// The longest admission wait: RFC 5321 4.5.3.2.3 has clients wait 5 minutes for a
/// RCPT reply.
pub const MAX_WAIT_MS: u64 = 300_000;

/// An admission wait (`wait_ms`) in milliseconds, 0 to [`MAX_WAIT_MS`].
pub fn wait(key: String, raw: Option<u64>) -> Result<Option<Duration>, Invalid> {
    match raw {
        None => Ok(None),
        Some(ms) if ms <= MAX_WAIT_MS => Ok(Some(Duration::from_millis(ms))),
        Some(_) => Err((
            key,
            format!("must be at most {MAX_WAIT_MS} ms (a client waits 5 minutes for a reply)"),
        )),
    }
}

pub type Invalid = (String, String);

pub fn health(key: &str, raw: Option<RawHealth>) -> Result<Health, Invalid> {
    let d = Health::default();
    let Some(r) = raw else { return Ok(d) };
    let ms = |k: &str, v: Option<u64>, dflt: Duration, min: u64| -> Result<Duration, Invalid> {
        match v {
            None => Ok(dflt),
            Some(v) if v >= min => Ok(Duration::from_millis(v)),
            Some(_) => Err((format!("{key}.{k}"), format!("must be at least {min} ms"))),
        }
    };
    let count = |k: &str, v: Option<u32>, dflt: u32| -> Result<u32, Invalid> {
        match v {
            None => Ok(dflt),
            Some(v) if (1..=100).contains(&v) => Ok(v),
            Some(_) => Err((format!("{key}.{k}"), "must be 1 to 100".into())),
        }
    };
    Ok(Health {
        interval: ms("interval_ms", r.interval_ms, d.interval, 100)?,
        timeout: ms("timeout_ms", r.timeout_ms, d.timeout, 50)?,
        rise: count("rise", r.rise, d.rise)?,
        fall: count("fall", r.fall, d.fall)?,
        agent_interval: ms(
            "agent_interval_ms",
            r.agent_interval_ms,
            d.agent_interval,
            100,
        )?,
    })
}

pub fn thresholds(key: &str, raw: Option<RawThresholds>) -> Result<Thresholds, Invalid> {
    let d = Thresholds::default();
    let Some(r) = raw else { return Ok(d) };
    let positive = |k: &str, v: Option<f64>| -> Result<Option<f64>, Invalid> {
        match v {
            Some(x) if !(x > 0.0 && x.is_finite()) => {
                Err((format!("{key}.{k}"), "must be a positive number".into()))
            }
            other => Ok(other),
        }
    };
    let disk = positive("disk_percent", r.disk_percent)?;
    if disk.is_some_and(|d| d > 100.0) {
        return Err((format!("{key}.disk_percent"), "must be at most 100".into()));
    }
    let runq = positive("run_queue", r.run_queue)?;
    let nonzero = |k: &str, v: Option<u32>, dflt: u32| -> Result<u32, Invalid> {
        match v {
            Some(0) => Err((format!("{key}.{k}"), "must be at least 1".into())),
            Some(v) => Ok(v),
            None => Ok(dflt),
        }
    };
    Ok(Thresholds {
        mail_queue: nonzero("mail_queue", r.mail_queue, d.mail_queue)?,
        disk_permille: disk.map_or(d.disk_permille, |p| (p * 10.0).round() as u32),
        run_queue_milli: runq.map_or(d.run_queue_milli, |q| (q * 1000.0).round() as u32),
        response_us: nonzero("response_ms", r.response_ms, d.response_us / 1000)?
            .saturating_mul(1000),
        sessions: nonzero("sessions", r.sessions, d.sessions)?,
    })
}

/// A back-end's agent: its address, and the key to poll it with. A key is required unless
/// `insecure` (the operator's explicit choice of an agent without one); both at once is
/// a contradiction and refused.
pub fn agent(
    key: &str,
    raw: Option<&str>,
    key_file: Option<(&str, &Path)>,
    insecure: bool,
) -> Result<Option<Endpoint>, Invalid> {
    let Some(a) = raw else {
        return Ok(None);
    };
    let address = a.parse().map_err(|_| {
        (
            key.to_owned(),
            format!("{a:?} is not host:port (IPv6 as [addr]:port)"),
        )
    })?;
    let key = match (key_file, insecure) {
        (Some((k, path)), false) => {
            Some(AgentKey::from_file(path).map_err(|e| (k.to_owned(), e.to_string()))?)
        }
        (None, true) => None,
        (Some((k, _)), true) => {
            return Err((
                k.to_owned(),
                "agent_key_file and agent_insecure = true contradict each other".into(),
            ));
        }
        (None, false) => {
            return Err((
                key.to_owned(),
                "an agent needs agent_key_file (on the pool or the back-end), or \
                 agent_insecure = true for an agent started with --insecure-no-key"
                    .into(),
            ));
        }
    };
    Ok(Some(Endpoint { address, key }))
}

pub fn groups(raw: Vec<RawGroup>) -> Result<Vec<Group>, Invalid> {
    let mut out: Vec<Group> = Vec::new();
    for (i, g) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("group[{i}].{k}");
        if g.name.trim().is_empty() {
            return Err((key("name"), "must not be empty".into()));
        }
        if out.iter().any(|o| o.name == g.name) {
            return Err((key("name"), format!("duplicate group {:?}", g.name)));
        }
        if !(g.share > 0.0 && g.share <= 1.0) {
            return Err((key("share"), "must be above 0 and at most 1".into()));
        }
        let mut clients = Vec::new();
        for (j, c) in g.clients.iter().enumerate() {
            let net: IpNet = c
                .parse()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    (
                        format!("group[{i}].clients[{j}]"),
                        format!("{c:?} is not a prefix"),
                    )
                })?;
            clients.push(net);
        }
        out.push(Group {
            name: g.name,
            share: g.share,
            domains: g.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            recipients: g
                .recipients
                .iter()
                .map(|r| r.to_ascii_lowercase())
                .collect(),
            clients,
            wait: wait(key("wait_ms"), g.wait_ms)?,
        });
    }
    Ok(out)
}
