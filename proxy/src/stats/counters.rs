//! The counters sessions increment: plain atomics, one set per service, back-end, pool and
//! user group, bumped with relaxed adds (a session never waits on a lock to count).

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Why a session was turned away or sent elsewhere instead of served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Every back-end of the route was over its thresholds for the session's group (after
    /// the admission wait, if any).
    Overload,
    /// No back-end of the route could be reached (down, draining, failing, or none).
    NoBackend,
    /// A limit of the front-end's own: the service's connection limit, the per-client
    /// limit, or a client's failed logins.
    Limit,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::Overload, Reason::NoBackend, Reason::Limit];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Overload => "overload",
            Reason::NoBackend => "no_backend",
            Reason::Limit => "limit",
        }
    }
}

/// Upper bounds of the latency histogram's buckets, in milliseconds; one more bucket holds
/// everything slower.
pub const LATENCY_BOUNDS_MS: [u64; 8] = [5, 10, 25, 50, 100, 250, 1000, 5000];

/// One key's counters since the front-end started.
#[derive(Debug, Default)]
pub struct Counters {
    sessions: AtomicU64,
    messages: AtomicU64,
    recipients: AtomicU64,
    bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
    deflected: [AtomicU64; Reason::ALL.len()],
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_us: AtomicU64,
}

impl Counters {
    pub fn session(&self) {
        self.sessions.fetch_add(1, Relaxed);
    }

    /// A message the back-end acknowledged, for `recipients` recipients.
    pub fn message(&self, recipients: u64) {
        self.messages.fetch_add(1, Relaxed);
        self.recipients.fetch_add(recipients, Relaxed);
    }

    pub fn bytes(&self, to_backend: u64, to_client: u64) {
        if to_backend > 0 {
            self.bytes_to_backend.fetch_add(to_backend, Relaxed);
        }
        if to_client > 0 {
            self.bytes_to_client.fetch_add(to_client, Relaxed);
        }
    }

    pub fn deflected(&self, why: Reason) {
        self.deflected[why as usize].fetch_add(1, Relaxed);
    }

    /// A back-end's connect and greeting time.
    pub fn latency(&self, d: Duration) {
        let ms = d.as_millis().min(u128::from(u64::MAX)) as u64;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_us
            .fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// What the counters hold now.
    pub fn totals(&self) -> Totals {
        let deflected = Reason::ALL
            .iter()
            .map(|r| {
                (
                    r.name().to_owned(),
                    self.deflected[*r as usize].load(Relaxed),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let buckets: Vec<u64> = self.latency.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = buckets.iter().sum();
        Totals {
            sessions: self.sessions.load(Relaxed),
            messages: self.messages.load(Relaxed),
            recipients: self.recipients.load(Relaxed),
            bytes_to_backend: self.bytes_to_backend.load(Relaxed),
            bytes_to_client: self.bytes_to_client.load(Relaxed),
            deflected,
            latency: (count > 0).then(|| Latency {
                count,
                sum_us: self.latency_us.load(Relaxed),
                buckets,
            }),
        }
    }
}

/// Counts of one key: since the start ([`Counters::totals`]) or over one minute.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(default)]
    pub sessions: u64,
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub recipients: u64,
    #[serde(default)]
    pub bytes_to_backend: u64,
    #[serde(default)]
    pub bytes_to_client: u64,
    /// Deflections by reason (`overload`, `no_backend`, `limit`); reasons with none left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deflected: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

/// Back-end connect and greeting times.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    /// Their sum, in microseconds.
    pub sum_us: u64,
    /// How many fell in each bucket of [`LATENCY_BOUNDS_MS`] (not cumulative), the last one
    /// over the highest bound.
    pub buckets: Vec<u64>,
}

impl Totals {
    /// The deflections of every reason.
    pub fn deflections(&self) -> u64 {
        self.deflected.values().sum()
    }

    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }

    /// What was added since `earlier` (counters only grow; a smaller figure counts as 0).
    pub fn since(&self, earlier: &Totals) -> Totals {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        let deflected = self
            .deflected
            .iter()
            .map(|(k, n)| {
                (
                    k.clone(),
                    d(*n, earlier.deflected.get(k).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let latency = match (&self.latency, &earlier.latency) {
            (Some(now), then) => {
                let zero = Latency::default();
                let then = then.as_ref().unwrap_or(&zero);
                let l = Latency {
                    count: d(now.count, then.count),
                    sum_us: d(now.sum_us, then.sum_us),
                    buckets: now
                        .buckets
                        .iter()
                        .enumerate()
                        .map(|(i, n)| d(*n, then.buckets.get(i).copied().unwrap_or(0)))
                        .collect(),
                };
                (l.count > 0).then_some(l)
            }
            (None, _) => None,
        };
        Totals {
            sessions: d(self.sessions, earlier.sessions),
            messages: d(self.messages, earlier.messages),
            recipients: d(self.recipients, earlier.recipients),
            bytes_to_backend: d(self.bytes_to_backend, earlier.bytes_to_backend),
            bytes_to_client: d(self.bytes_to_client, earlier.bytes_to_client),
            deflected,
            latency,
        }
    }
}
