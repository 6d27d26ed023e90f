//! Which counters a session counts into, found by index: a service by its position in the
//! configuration, a back-end and a pool by their ids, a user group by its position (the
//! sessions that match no group last). A [`Table`] is built each time a configuration is
//! applied; the counters behind it belong to the front-end's [`Stats`] and are kept by
//! name across reloads, so a reload neither resets nor doubles a count.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    counters::{Counters, Reason, Totals},
    record::Minute,
};
use crate::sync::lock;

/// What a set of counters is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Service,
    Backend,
    Pool,
    Group,
}

/// The name of the sessions that match no user group.
pub const DEFAULT_GROUP: &str = "default";

/// The front-end's counters, by scope and name, for its whole life; and its recent minutes.
pub struct Stats {
    all: Mutex<BTreeMap<(Scope, String), Arc<Counters>>>,
    minutes: Mutex<VecDeque<Minute>>,
    /// Minutes kept in memory.
    keep: usize,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new(1)
    }
}

impl Stats {
    /// Keeps the newest `keep` minutes (at least one).
    pub fn new(keep: usize) -> Stats {
        Stats {
            all: Mutex::default(),
            minutes: Mutex::default(),
            keep: keep.max(1),
        }
    }

    fn counters(&self, scope: Scope, name: &str) -> Arc<Counters> {
        Arc::clone(lock(&self.all).entry((scope, name.to_owned())).or_default())
    }

    /// The table of a configuration: its services in order, its back-ends and pools by id,
    /// its groups in order (the default group is added after them).
    pub fn table<'a>(
        &self,
        services: impl IntoIterator<Item = &'a str>,
        backends: impl IntoIterator<Item = (u32, &'a str)>,
        pools: impl IntoIterator<Item = (u32, &'a str)>,
        groups: impl IntoIterator<Item = &'a str>,
    ) -> Arc<Table> {
        let by_id = |scope, items: &mut dyn Iterator<Item = (u32, &'a str)>| {
            let mut v: Vec<Option<Arc<Counters>>> = Vec::new();
            for (id, name) in items {
                let i = id as usize;
                if v.len() <= i {
                    v.resize(i + 1, None);
                }
                v[i] = Some(self.counters(scope, name));
            }
            v
        };
        let mut groups: Vec<Arc<Counters>> = groups
            .into_iter()
            .map(|g| self.counters(Scope::Group, g))
            .collect();
        groups.push(self.counters(Scope::Group, DEFAULT_GROUP));
        Arc::new(Table {
            services: services
                .into_iter()
                .map(|s| self.counters(Scope::Service, s))
                .collect(),
            backends: by_id(Scope::Backend, &mut backends.into_iter()),
            pools: by_id(Scope::Pool, &mut pools.into_iter()),
            groups,
        })
    }

    /// Every key's totals since the start.
    pub fn totals(&self) -> BTreeMap<(Scope, String), Totals> {
        lock(&self.all)
            .iter()
            .map(|(k, c)| (k.clone(), c.totals()))
            .collect()
    }

    /// Keeps `minute`, dropping the oldest beyond the bound.
    pub fn keep(&self, minute: Minute) {
        let mut m = lock(&self.minutes);
        while m.len() >= self.keep {
            m.pop_front();
        }
        m.push_back(minute);
    }

    /// Up to `limit` kept minutes after minute `since` (none: from the oldest), oldest first.
    pub fn since(&self, since: Option<u64>, limit: usize) -> Vec<Minute> {
        lock(&self.minutes)
            .iter()
            .filter(|m| since.is_none_or(|s| m.minute > s))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// One configuration's counters, by index.
#[derive(Debug, Default)]
pub struct Table {
    services: Vec<Arc<Counters>>,
    backends: Vec<Option<Arc<Counters>>>,
    pools: Vec<Option<Arc<Counters>>>,
    /// The configured groups in order, then [`DEFAULT_GROUP`].
    groups: Vec<Arc<Counters>>,
}

impl Table {
    pub fn service(&self, index: usize) -> Option<&Arc<Counters>> {
        self.services.get(index)
    }

    pub fn backend(&self, id: u32) -> Option<&Arc<Counters>> {
        self.backends.get(id as usize)?.as_ref()
    }

    pub fn pool(&self, id: u32) -> Option<&Arc<Counters>> {
        self.pools.get(id as usize)?.as_ref()
    }

    /// Group `index` in the configuration's order; past the end, the default group.
    pub fn group(&self, index: usize) -> Option<&Arc<Counters>> {
        self.groups.get(index).or_else(|| self.groups.last())
    }
}

/// What one session's exchanges with a back-end count into: its service, its group, and
/// the back-end and pool it got. Empty (counting nothing) where no table is at hand.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The back-end and the pool, which are timed and count the session.
    backend: Vec<Arc<Counters>>,
    /// The service (which counts its client sessions itself, at accept).
    service: Option<Arc<Counters>>,
    group: Option<Arc<Counters>>,
}

impl Tally {
    pub fn new(
        backend: Option<&Arc<Counters>>,
        pool: Option<&Arc<Counters>>,
        service: Option<&Arc<Counters>>,
        group: Option<&Arc<Counters>>,
    ) -> Tally {
        Tally {
            backend: [backend, pool].into_iter().flatten().cloned().collect(),
            service: service.cloned(),
            group: group.cloned(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Counters>> {
        self.backend
            .iter()
            .chain(self.service.as_ref())
            .chain(self.group.as_ref())
    }

    /// A session got a back-end, which took `greeting` to connect and greet.
    pub fn session(&self, greeting: Option<Duration>) {
        for k in &self.backend {
            k.session();
            if let Some(g) = greeting {
                k.latency(g);
            }
        }
        if let Some(g) = &self.group {
            g.session();
        }
    }

    pub fn message(&self, recipients: u64) {
        self.all().for_each(|k| k.message(recipients));
    }

    pub fn bytes(&self, to_backend: u64, to_client: u64) {
        self.all().for_each(|k| k.bytes(to_backend, to_client));
    }

    pub fn deflected(&self, why: Reason) {
        self.all().for_each(|k| k.deflected(why));
    }
}
