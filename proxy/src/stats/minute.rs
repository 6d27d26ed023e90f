//! The minute roll-up: every minute the counters' growth becomes one [`Minute`], kept in
//! memory, appended to `stats.jsonl`, and checked against the alarm thresholds.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

pub use super::record::Minute;
use super::{
    counters::Totals,
    table::{Scope, Stats},
};
use crate::events::{Events, Kind, log::JsonLog};

/// XDP verdicts that are packets dropped as a flood.
pub const FLOOD_VERDICTS: [&str; 2] = ["dropped_blocklist", "dropped_syn_budget"];

/// Thresholds of the alarms the roll-up raises; none: no alarm.
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    /// Deflections per minute of one pool or group.
    pub deflections: Option<u64>,
    /// XDP flood drops per minute.
    pub flood_drops: Option<u64>,
}

/// Turns the counters into minutes.
pub struct Roller {
    frontend: String,
    stats: Arc<Stats>,
    log: Option<JsonLog>,
    thresholds: Thresholds,
    previous: BTreeMap<(Scope, String), Totals>,
    previous_xdp: Option<BTreeMap<String, u64>>,
    last: Option<u64>,
    /// Pools and groups over the deflection threshold (`pool:NAME`, `group:NAME`).
    deflecting: BTreeSet<String>,
    flooded: bool,
}

impl Roller {
    /// Starts from zero, as the counters do: sessions counted before the roll-up starts
    /// (the listeners accept first) fall in the first minute.
    pub fn new(
        frontend: &str,
        stats: Arc<Stats>,
        log: Option<JsonLog>,
        thresholds: Thresholds,
    ) -> Roller {
        Roller {
            frontend: frontend.to_owned(),
            stats,
            log,
            thresholds,
            previous: BTreeMap::new(),
            previous_xdp: None,
            last: None,
            deflecting: BTreeSet::new(),
            flooded: false,
        }
    }

    /// Rolls up unix minute `minute` (moved on past the last one if it is not after it),
    /// with the XDP counters' totals now: keeps it, logs it, raises and clears alarms.
    pub fn roll(
        &mut self,
        minute: u64,
        xdp: Option<BTreeMap<String, u64>>,
        events: &Events,
    ) -> Minute {
        let minute = match self.last {
            Some(l) if minute <= l => l + 1,
            _ => minute,
        };
        self.last = Some(minute);
        let now = self.stats.totals();
        let mut m = Minute {
            member: self.frontend.clone(),
            minute,
            ..Minute::default()
        };
        for ((scope, name), t) in &now {
            let zero = Totals::default();
            let before = self.previous.get(&(*scope, name.clone())).unwrap_or(&zero);
            let d = t.since(before);
            if d.is_zero() {
                continue;
            }
            let into = match scope {
                Scope::Service => &mut m.services,
                Scope::Backend => &mut m.backends,
                Scope::Pool => &mut m.pools,
                Scope::Group => &mut m.groups,
            };
            into.insert(name.clone(), d);
        }
        self.previous = now;
        if let Some(x) = xdp {
            // The first reading has nothing to compare with: counting from the program's
            // load would put hours into one minute.
            if let Some(before) = &self.previous_xdp {
                m.xdp = x
                    .iter()
                    .map(|(k, n)| (k.clone(), n.saturating_sub(*before.get(k).unwrap_or(&0))))
                    .filter(|(_, n)| *n > 0)
                    .collect();
            }
            self.previous_xdp = Some(x);
        }
        self.alarms(&m, events);
        if let Some(log) = &mut self.log {
            log.write(&m);
        }
        self.stats.keep(m.clone());
        m
    }

    fn alarms(&mut self, m: &Minute, events: &Events) {
        if let Some(limit) = self.thresholds.deflections {
            let seen = m
                .pools
                .iter()
                .map(|(n, t)| ("pool", n, t))
                .chain(m.groups.iter().map(|(n, t)| ("group", n, t)));
            let mut over = BTreeSet::new();
            for (scope, name, t) in seen {
                let n = t.deflections();
                let key = format!("{scope}:{name}");
                if n > limit {
                    if !self.deflecting.contains(&key) {
                        events.emit(Kind::Deflecting {
                            scope: scope.to_owned(),
                            name: name.clone(),
                            per_minute: n,
                            over: true,
                        });
                    }
                    over.insert(key);
                }
            }
            for key in self.deflecting.difference(&over) {
                if let Some((scope, name)) = key.split_once(':') {
                    let during = if scope == "pool" { &m.pools } else { &m.groups };
                    events.emit(Kind::Deflecting {
                        scope: scope.to_owned(),
                        name: name.to_owned(),
                        per_minute: during.get(name).map_or(0, Totals::deflections),
                        over: false,
                    });
                }
            }
            self.deflecting = over;
        }
        if let Some(limit) = self.thresholds.flood_drops {
            let n: u64 = FLOOD_VERDICTS.iter().filter_map(|v| m.xdp.get(*v)).sum();
            let over = n > limit;
            if over != self.flooded {
                events.emit(Kind::FloodDrops {
                    per_minute: n,
                    over,
                });
                self.flooded = over;
            }
        }
    }
}

/// When the next roll-up is due after unix time `now_ms`, for a roll-up every `period`: on
/// the wall clock's minute when the period is a minute, else `period` from now (tests).
/// Returns the wait and the unix minute the roll-up then covers.
pub fn next(now_ms: u64, period: Duration) -> (Duration, u64) {
    let minute_ms = 60_000;
    if period == Duration::from_secs(60) {
        let boundary = (now_ms / minute_ms + 1) * minute_ms;
        (
            Duration::from_millis(boundary - now_ms),
            boundary / minute_ms - 1,
        )
    } else {
        (period, now_ms / minute_ms)
    }
}

#[cfg(test)]
mod tests;
