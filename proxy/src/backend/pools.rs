//! Pools at run time: the configured back-ends, their load as the pinned map shows it, and
//! the choice of back-ends for a session: power of two choices over the load score for
//! pools with a shared message store, configured order (owner first) otherwise. Back-ends
//! that just failed a connection are tried last for a short penalty.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use robustifier_common::BackendLoad;

use super::{admission::Admission, select};
use crate::{
    config::{Backend, BackendTls, Config, Pool},
    health::board::{Board, SessionGuard, Settings},
};

/// How long a back-end that refused or dropped a connection is tried last.
pub const PENALTY: Duration = Duration::from_secs(10);

/// A route entry split into its pool and, for `pool/backend` (a directory pinning one
/// back-end), that back-end: the pool limited to it.
pub fn split_entry(entry: &str) -> (&str, Option<&str>) {
    match entry.split_once('/') {
        Some((pool, backend)) => (pool, Some(backend)),
        None => (entry, None),
    }
}

/// Where routing reads back-end load records: the pinned BPF map in the daemon, the
/// board itself in tests.
pub trait LoadView: Send + Sync {
    fn load(&self, id: u32) -> Option<BackendLoad>;
}

/// After the start, routing maps are checked against the running pools (a reload cannot
/// add pools).
impl crate::config::routes::Pools for PoolSet {
    fn pool(&self, name: &str) -> Option<&Pool> {
        PoolSet::pool(self, name).map(|rt| &rt.pool)
    }

    /// The board's slots, not the pools' lists at startup: a reload may have added the
    /// back-end (a removed one is draining and takes no pinned route).
    fn backend_pool(&self, name: &str) -> Option<&Pool> {
        let slots = self.board.slots();
        let slot = slots
            .iter()
            .find(|s| s.name == name && !s.removed.load(std::sync::atomic::Ordering::Relaxed))?;
        PoolSet::pool(self, &slot.pool_name).map(|rt| &rt.pool)
    }
}

/// Selection reads the published records when the maps are pinned; the data path below
/// knows nothing of selection.
impl LoadView for crate::datapath::MapView {
    fn load(&self, id: u32) -> Option<BackendLoad> {
        self.record(id)
    }
}

impl LoadView for Board {
    fn load(&self, id: u32) -> Option<BackendLoad> {
        self.record_for(id, 0)
    }
}

pub struct PoolRuntime {
    /// The pool's settings as started; its back-ends are the board's slots of this pool,
    /// which a reload may add to (`pool.backends` is the list at startup).
    pub pool: Pool,
    pub tls: Option<super::conn::UpgradeTls>,
    failed: Mutex<HashMap<u32, Instant>>,
}

/// One back-end to try, with its pool.
#[derive(Clone)]
pub struct Candidate {
    pub pool: Arc<PoolRuntime>,
    pub backend: Arc<Backend>,
}

/// Why a route has no candidate.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Excluded {
    /// Up, but over a threshold for the session's group or at the session limit.
    pub busy: usize,
    /// Down or draining.
    pub down: usize,
}

pub struct PoolSet {
    pools: HashMap<String, Arc<PoolRuntime>>,
    pub board: Arc<Board>,
    view: Arc<dyn LoadView>,
    /// Sessions waiting for a slot (groups with `wait_ms`).
    pub admission: Arc<Admission>,
    /// SMTP legs kept open between sessions.
    pub idle: Arc<super::idle::IdleLegs>,
}

impl PoolSet {
    pub fn new(
        cfg: &Config,
        board: Arc<Board>,
        view: Arc<dyn LoadView>,
    ) -> Result<PoolSet, crate::tls::TlsError> {
        let mut pools = HashMap::new();
        for p in &cfg.pools {
            let tls = match &p.tls {
                BackendTls::None => None,
                BackendTls::StartTls { ca, server_name } => Some(super::conn::UpgradeTls {
                    connector: crate::tls::connector(ca)?,
                    server_name: server_name.clone(),
                }),
            };
            pools.insert(
                p.name.clone(),
                Arc::new(PoolRuntime {
                    pool: p.clone(),
                    tls,
                    failed: Mutex::new(HashMap::new()),
                }),
            );
        }
        let admission = Admission::new(Arc::clone(&board.freed));
        let idle = super::idle::IdleLegs::new(Arc::clone(&board));
        Ok(PoolSet {
            pools,
            board,
            view,
            admission,
            idle,
        })
    }

    /// This pool set with `running`'s kept legs: a reload keeps the legs of back-ends it
    /// leaves as they were (the caller closes those of the others).
    pub fn keeping_idle(mut self, running: &PoolSet) -> PoolSet {
        self.idle = Arc::clone(&running.idle);
        self
    }

    /// A pool set whose load view is its own board (no kernel maps), for tests and tools.
    pub fn standalone(cfg: &Config) -> Result<PoolSet, crate::tls::TlsError> {
        let board = Board::new(cfg);
        PoolSet::new(cfg, Arc::clone(&board), board)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<PoolRuntime>> {
        self.pools.get(name)
    }

    /// The pool of a route entry (`pool` or `pool/backend`).
    pub fn entry_pool(&self, entry: &str) -> Option<&Arc<PoolRuntime>> {
        self.pools.get(split_entry(entry).0)
    }

    /// Every pool's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// The back-ends to try for a route and a group's `share`, best first: for each pool
    /// of the route (primary, then alternates), its eligible back-ends; an entry
    /// `pool/backend` stands for that back-end alone. A back-end named twice (its pool
    /// and itself) is tried once.
    pub fn candidates(&self, route: &[String], share: f64) -> (Vec<Candidate>, Excluded) {
        let mut fresh = Vec::new();
        let mut penalised = Vec::new();
        let mut excluded = Excluded::default();
        let mut seen: Vec<u32> = Vec::new();
        let slots = self.board.slots();
        for entry in route {
            let (name, pinned) = split_entry(entry);
            let Some(rt) = self.pools.get(name) else {
                continue;
            };
            let t = &rt.pool.thresholds;
            let mut scored: Vec<(f64, Arc<Settings>)> = Vec::new();
            // The board's slots, not the pool's configured list: a reload may add some. A
            // removed one drains for good whatever its record says (after a binary upgrade
            // the successor's records may give its id to another back-end).
            let members = slots
                .iter()
                .filter(|s| s.pool_id == rt.pool.id && pinned.is_none_or(|b| s.name == b));
            for slot in members {
                if seen.contains(&slot.id) {
                    continue;
                }
                seen.push(slot.id);
                let Some(load) = self.view.load(slot.id) else {
                    continue;
                };
                if slot.removed.load(std::sync::atomic::Ordering::Relaxed) {
                    excluded.down += 1;
                    continue;
                }
                let active = slot.active.load(std::sync::atomic::Ordering::Acquire);
                let overloaded = slot.overloaded.load(std::sync::atomic::Ordering::Relaxed);
                if load.state != robustifier_common::BACKEND_UP {
                    excluded.down += 1;
                } else if select::eligible(&load, t, share, active, overloaded) {
                    scored.push((select::score(&load, t, active), slot.settings()));
                } else {
                    excluded.busy += 1;
                }
            }
            if rt.pool.shared_store {
                power_of_two(&mut scored);
            }
            let failed = crate::sync::lock(&rt.failed).clone();
            for (_, settings) in scored {
                let b = &settings.backend;
                let c = Candidate {
                    pool: Arc::clone(rt),
                    backend: Arc::clone(b),
                };
                match failed.get(&b.id) {
                    Some(t) if t.elapsed() < PENALTY => penalised.push(c),
                    _ => fresh.push(c),
                }
            }
        }
        fresh.extend(penalised);
        (fresh, excluded)
    }

    /// How many sessions may wait for a slot on `route`: a small multiple of the sessions
    /// its back-ends can hold, so a flood cannot pile up waiting sessions. A pinned entry
    /// (`pool/backend`) counts that back-end alone.
    pub fn wait_bound(&self, route: &[String]) -> usize {
        // The board's back-ends (a reload may have added some), less those draining out.
        let slots = self.board.slots();
        let capacity: usize = route
            .iter()
            .map(|e| split_entry(e))
            .filter_map(|(n, pinned)| self.pools.get(n).map(|rt| (rt, pinned)))
            .map(|(rt, pinned)| {
                let live = slots
                    .iter()
                    .filter(|s| {
                        s.pool_id == rt.pool.id
                            && pinned.is_none_or(|b| s.name == b)
                            && !s.removed.load(std::sync::atomic::Ordering::Relaxed)
                    })
                    .count();
                live * rt.pool.thresholds.sessions as usize
            })
            .sum();
        capacity.saturating_mul(super::admission::WAITERS_PER_SESSION)
    }

    /// Holds a session slot on the candidate, within its pool's limit for `share`.
    pub fn acquire(&self, c: &Candidate, share: f64) -> Option<SessionGuard> {
        let limit = (share * f64::from(c.pool.pool.thresholds.sessions))
            .ceil()
            .max(1.0) as u32;
        self.board.acquire(c.backend.id, limit)
    }

    /// Tries `c` last for a while (it failed this session), without counting a health
    /// failure (the leg's reporter has done that).
    pub fn penalize(&self, c: &Candidate) {
        crate::sync::lock(&c.pool.failed).insert(c.backend.id, Instant::now());
    }

    /// A connection or greeting failure: passive health input and a short penalty.
    pub fn mark_failed(&self, c: &Candidate, why: &str) {
        crate::sync::lock(&c.pool.failed).insert(c.backend.id, Instant::now());
        let h = &c.pool.pool.health;
        self.board
            .record(c.backend.id, false, None, h.rise, h.fall, why);
    }

    /// A session opened a leg: the penalty ends and the greeting latency counts; it is not
    /// a good check (only probes are), so failures after the greeting still add up.
    pub fn mark_ok(&self, c: &Candidate, greeting: Option<Duration>) {
        crate::sync::lock(&c.pool.failed).remove(&c.backend.id);
        if let Some(g) = greeting {
            self.board.sample_latency(c.backend.id, g);
        }
    }
}

/// Orders `scored` by the power of two choices (Mitzenmacher): of two random candidates
/// the better goes first, which spreads load without herding onto one "best" back-end;
/// the rest follow by score, for failover.
fn power_of_two<T>(scored: &mut Vec<(f64, T)>) {
    if scored.len() < 2 {
        return;
    }
    let i = fastrand::usize(..scored.len());
    let mut j = fastrand::usize(..scored.len() - 1);
    if j >= i {
        j += 1;
    }
    let first = if scored[i].0 <= scored[j].0 { i } else { j };
    let chosen = scored.swap_remove(first);
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    scored.insert(0, chosen);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(extra: &str) -> PoolSet {
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            &format!(
                "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{{name='a',address='198.18.1.11:25'}},{{name='b',address='198.18.1.12:25'}},{{name='c',address='198.18.1.13:25'}}]\n{extra}\n"
            ),
        )
        .unwrap();
        PoolSet::standalone(&cfg).unwrap()
    }

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.backend.name.as_str()).collect()
    }

    #[test]
    fn down_and_busy_backends_are_left_out() {
        let s = set("shared_store = false\n[pool.thresholds]\nsessions = 2");
        for _ in 0..3 {
            s.board.record(1, false, None, 2, 3, "test");
        }
        let (_g1, _g2) = (
            s.board.acquire(2, 2).unwrap(),
            s.board.acquire(2, 2).unwrap(),
        );
        let (c, ex) = s.candidates(&["p".into()], 1.0);
        assert_eq!(names(&c), ["a"]);
        assert_eq!(ex, Excluded { busy: 1, down: 1 });
    }

    #[test]
    fn mailbox_owned_pools_keep_the_configured_order() {
        let s = set("shared_store = false");
        let (c, _) = s.candidates(&["p".into()], 1.0);
        assert_eq!(names(&c), ["a", "b", "c"]);
    }

    #[test]
    fn power_of_two_choices_avoids_the_loaded_backend() {
        let s = set("");
        // Load b heavily: it may only come first if both random picks were b, impossible.
        let guards: Vec<_> = (0..500)
            .map(|_| s.board.acquire(1, 1000).unwrap())
            .collect();
        for _ in 0..200 {
            let (c, _) = s.candidates(&["p".into()], 1.0);
            assert_ne!(c[0].backend.name, "b");
            assert_eq!(c.len(), 3);
        }
        drop(guards);
    }

    #[test]
    fn a_pinned_entry_is_its_backend_alone() {
        let s = set("shared_store = false\n[pool.thresholds]\nsessions = 2");
        let (c, ex) = s.candidates(&["p/b".into()], 1.0);
        assert_eq!(names(&c), ["b"]);
        assert_eq!(ex, Excluded::default());
        // The pinned back-end first, then the rest of its pool, each once.
        let (c, _) = s.candidates(&["p/c".into(), "p".into()], 1.0);
        assert_eq!(names(&c), ["c", "a", "b"]);
        // Down: nothing else of the pool stands in for it.
        for _ in 0..3 {
            s.board.record(1, false, None, 2, 3, "test");
        }
        let (c, ex) = s.candidates(&["p/b".into()], 1.0);
        assert!(c.is_empty());
        assert_eq!(ex, Excluded { busy: 0, down: 1 });
        assert!(s.candidates(&["p/nope".into()], 1.0).0.is_empty());
        // Room for waiters: one back-end's sessions, not the pool's.
        assert_eq!(
            s.wait_bound(&["p/a".into()]) * 3,
            s.wait_bound(&["p".into()])
        );
        assert_eq!(s.entry_pool("p/a").map(|p| p.pool.name.as_str()), Some("p"));
        use crate::config::routes::Pools as _;
        assert_eq!(s.backend_pool("c").map(|p| p.name.as_str()), Some("p"));
        assert!(s.backend_pool("p").is_none());
    }

    #[test]
    fn a_backend_added_on_reload_is_a_candidate_at_once() {
        let s = set("shared_store = false");
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nshared_store = false\nbackend=[{name='a',address='198.18.1.11:25'},{name='c',address='198.18.1.13:25'},{name='d',address='198.18.1.14:25'}]\n",
        )
        .unwrap();
        let r = s.board.reconcile(&cfg);
        assert_eq!(r.added[0].id, 3);
        let (c, ex) = s.candidates(&["p".into()], 1.0);
        assert_eq!(names(&c), ["a", "c", "d"]);
        assert_eq!(ex, Excluded { busy: 0, down: 1 }, "b drains");
        let d = c.into_iter().find(|c| c.backend.name == "d").unwrap();
        let _g = s.acquire(&d, 1.0).unwrap();
        assert_eq!(s.board.record_for(3, 0).unwrap().active_sessions, 1);
    }
}
