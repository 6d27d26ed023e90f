//! The board: what this front-end knows about each back-end right now, from probes,
//! agents and its own sessions. The writer copies it into the pinned load map, which is
//! what routing and the kernel read; only the session count is also read from here,
//! because admission against the hard session limit must be exact, not a second late.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, Guard};
use robustifier_common::{BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP, BackendLoad, MAX_BACKENDS};
use tracing::{info, warn};

use crate::agent_wire::AgentReport;
use crate::config::{
    Backend, Config, Pool,
    balance::{Health, Thresholds},
};
use crate::events::{Events, Kind};

/// Bumps the board's "capacity may have been freed" counter that every waiter watches.
/// The board owns this signal (it sees sessions end and records change); admission only
/// watches it.
pub fn wake(freed: &tokio::sync::watch::Sender<u64>) {
    freed.send_modify(|v| *v = v.wrapping_add(1));
}

pub struct Slot {
    /// Who the back-end is: its id, pool, name and address never change (a back-end that
    /// moves is a removal and an addition).
    pub id: u32,
    pub pool_id: u32,
    pub pool_name: String,
    pub name: String,
    pub address: std::net::SocketAddr,
    /// Its settings, which a reload may change: read anew by each check and each session.
    settings: ArcSwap<Settings>,
    state: AtomicU8,
    /// Consecutive good (positive) or failed (negative) checks.
    streak: Mutex<i32>,
    response_us: AtomicU32,
    pub active: AtomicU32,
    /// Idle SMTP legs kept open for the next session: connections to the back-end, but
    /// not sessions (`backend::idle`).
    pub idle: AtomicU32,
    agent: Mutex<Option<AgentReport>>,
    /// Over a threshold; cleared only when every figure is back under 90 % of it.
    pub overloaded: AtomicBool,
    /// The back-end's last EHLO offered CHUNKING (RFC 3030).
    pub chunking: AtomicBool,
    /// Removed from the configuration by a reload: draining for good.
    pub removed: AtomicBool,
    /// Drained by the operator over the control socket: no new session until undrained.
    pub drained: AtomicBool,
    /// Consecutive 4xx/5xx replies to MAIL, RCPT and the end of data, across sessions.
    errors_in_a_row: AtomicU32,
}

/// A back-end's settings and its pool's health and threshold settings, as configured now.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Shared with every session's candidate of this back-end: a selection copies a
    /// pointer, not the back-end's strings.
    pub backend: Arc<Backend>,
    pub health: Health,
    pub thresholds: Thresholds,
}

/// A session's hold on a back-end: counted in `active` until dropped.
pub struct SessionGuard {
    slot: Arc<Slot>,
    freed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.slot.active.fetch_sub(1, Ordering::AcqRel);
        // Sessions waiting for a slot look again (backend::admission).
        wake(&self.freed);
    }
}

/// An idle leg's place on a back-end: counted in `idle` until dropped.
pub struct IdleGuard {
    slot: Arc<Slot>,
}

impl Drop for IdleGuard {
    fn drop(&mut self) {
        self.slot.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Board {
    /// Indexed by back-end id. Append-only: an id indexes the pinned load map for the
    /// process's life, so a removed back-end keeps its slot (draining, or readmitted if
    /// restored) and one a reload adds gets the next free id. Readers load the list
    /// without locking; a reload swaps in a longer one.
    slots: ArcSwap<Vec<Arc<Slot>>>,
    /// Serialises reloads, the only writers of `slots`.
    reloading: Mutex<()>,
    /// The back-end names the operator drained: by name, so that a slot a reload adds
    /// under a drained name (its address changed) is drained too. Runtime state only: a
    /// restart or a binary upgrade starts with none.
    drained: Mutex<std::collections::BTreeSet<String>>,
    /// Where state changes are recorded as events (set once by the front-end).
    events: std::sync::OnceLock<Events>,
    /// The pools none of whose back-ends takes new sessions, as last reported.
    pools_out: Mutex<std::collections::BTreeSet<String>>,
    /// Bumped whenever capacity may have been freed: a session slot released, the load
    /// records rewritten. Admission waiters watch it.
    pub freed: Arc<tokio::sync::watch::Sender<u64>>,
}

/// The slots at one moment: a slice of them, or owned handles when iterated by value.
pub struct Slots(Guard<Arc<Vec<Arc<Slot>>>>);

impl std::ops::Deref for Slots {
    type Target = [Arc<Slot>];
    fn deref(&self) -> &[Arc<Slot>] {
        &self.0
    }
}

impl IntoIterator for Slots {
    type Item = Arc<Slot>;
    type IntoIter = std::vec::IntoIter<Arc<Slot>>;
    fn into_iter(self) -> Self::IntoIter {
        let owned: Vec<Arc<Slot>> = self.0.iter().cloned().collect();
        owned.into_iter()
    }
}

/// What a reload did to the board's back-ends.
#[derive(Default)]
pub struct Reconciled {
    /// Back-ends the configuration adds to a running pool, with their new ids: routing
    /// sees them at once; their probes and agent polls are the caller's to start.
    pub added: Vec<Arc<Slot>>,
    /// Back-ends the configuration removed (now draining) or restored (readmitted):
    /// their records change, which routing should see at once.
    pub changed: Vec<Arc<Slot>>,
    /// Back-ends whose own or whose pool's settings changed (weight, identity, agent,
    /// health checks, thresholds): in force for their next check and next session.
    pub updated: Vec<Arc<Slot>>,
    /// Back-ends refused because every id of the load map is taken, by name.
    pub overflow: Vec<String>,
}

impl Slot {
    fn new(backend: Backend, pool: &Pool) -> Slot {
        Slot {
            id: backend.id,
            pool_id: pool.id,
            pool_name: pool.name.clone(),
            name: backend.name.clone(),
            address: backend.address,
            settings: ArcSwap::from_pointee(Settings::of(backend, pool)),
            // Up until proven otherwise: a fresh front-end (or back-end) must serve at once;
            // probes and passive checks take it down if it cannot.
            state: AtomicU8::new(BACKEND_UP),
            streak: Mutex::new(0),
            response_us: AtomicU32::new(0),
            active: AtomicU32::new(0),
            idle: AtomicU32::new(0),
            agent: Mutex::new(None),
            overloaded: AtomicBool::new(false),
            chunking: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            errors_in_a_row: AtomicU32::new(0),
        }
    }

    fn is(&self, pool: &str, b: &Backend) -> bool {
        self.pool_name == pool && self.name == b.name && self.address == b.address
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }
}

impl Settings {
    fn of(backend: Backend, pool: &Pool) -> Settings {
        Settings {
            backend: Arc::new(backend),
            health: pool.health.clone(),
            thresholds: pool.thresholds.clone(),
        }
    }
}

/// Refusals in a row that count as one failed check.
pub const ERROR_STORM: u32 = 20;

/// Weight of the newest response-time sample in the moving average.
const EWMA_NEW: f64 = 0.3;
/// An agent report older than this no longer counts (the agent is gone).
pub const AGENT_STALE: Duration = Duration::from_secs(30);

/// Who a slot's back-end is: what a process passes to its successor (binary upgrade) so that
/// both give each back-end the same id, and so the same load record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub id: u32,
    pub pool: String,
    pub pool_id: u32,
    pub name: String,
    pub address: std::net::SocketAddr,
}

impl Board {
    /// The back-ends of `cfg`, whose ids are their positions.
    pub fn new(cfg: &Config) -> Arc<Board> {
        Board::with_retired(cfg, &[])
    }

    /// A successor's board: `cfg`'s back-ends at the ids they were given, and in the ids
    /// between them the back-ends `retired` names, which the predecessor still drained:
    /// removed here for good, so that no id means another back-end to the two processes.
    /// Together they must number the ids from 0 without a gap.
    pub fn with_retired(cfg: &Config, retired: &[Entry]) -> Arc<Board> {
        let mut by_id: std::collections::BTreeMap<u32, Arc<Slot>> = cfg
            .backends()
            .map(|(p, b)| (b.id, Arc::new(Slot::new(b.clone(), p))))
            .collect();
        // A retired back-end's settings are never used (it takes no session): any
        // configured back-end's serve as a template.
        if let Some((pool, backend)) = cfg.backends().next() {
            for r in retired {
                if by_id.contains_key(&r.id) {
                    continue;
                }
                let pool = Pool {
                    id: r.pool_id,
                    name: r.pool.clone(),
                    ..pool.clone()
                };
                let backend = Backend {
                    id: r.id,
                    name: r.name.clone(),
                    address: r.address,
                    ..backend.clone()
                };
                let slot = Slot::new(backend, &pool);
                slot.removed.store(true, Ordering::Relaxed);
                by_id.insert(r.id, Arc::new(slot));
            }
        }
        let slots: Vec<Arc<Slot>> = by_id.into_values().collect();
        Arc::new(Board {
            slots: ArcSwap::from_pointee(slots),
            reloading: Mutex::new(()),
            drained: Mutex::default(),
            freed: Arc::new(tokio::sync::watch::channel(0).0),
            events: std::sync::OnceLock::new(),
            pools_out: Mutex::default(),
        })
    }

    /// Every slot's identity, by id.
    pub fn entries(&self) -> Vec<Entry> {
        self.slots
            .load()
            .iter()
            .map(|s| Entry {
                id: s.id,
                pool: s.pool_name.clone(),
                pool_id: s.pool_id,
                name: s.name.clone(),
                address: s.address,
            })
            .collect()
    }

    /// A handle on back-end `id`'s slot (methods taking an id read in place instead).
    pub fn slot(&self, id: u32) -> Option<Arc<Slot>> {
        self.slots.load().get(id as usize).cloned()
    }

    pub fn slots(&self) -> Slots {
        Slots(self.slots.load())
    }

    /// A configuration reload: back-ends no longer in `cfg` (same pool, name and address)
    /// drain, those back again are readmitted, those whose settings changed take the new
    /// ones, and those it adds get the next free ids. A changed address is a removal and an
    /// addition. `cfg`'s pool ids must be the running ones for running pools (see
    /// `frontend`'s renumbering); back-ends past the load map's [`MAX_BACKENDS`] ids are
    /// named, not added.
    pub fn reconcile(&self, cfg: &Config) -> Reconciled {
        let _one = crate::sync::lock(&self.reloading);
        let current = self.slots.load_full();
        let mut out = Reconciled::default();
        for s in current.iter() {
            let found = cfg.backends().find(|(p, b)| s.is(&p.name, b));
            let keep = found.is_some();
            if s.removed.swap(!keep, Ordering::Relaxed) == keep {
                out.changed.push(Arc::clone(s));
                if keep {
                    info!(backend = %s.name, id = s.id, "back in the configuration: readmitted");
                } else {
                    info!(backend = %s.name, id = s.id, "removed from the configuration: draining (running sessions finish)");
                }
            }
            if let Some((p, b)) = found {
                let new = Settings::of(
                    Backend {
                        id: s.id,
                        ..b.clone()
                    },
                    p,
                );
                if *s.settings.load_full() != new {
                    info!(backend = %s.name, id = s.id, "settings changed");
                    s.settings.store(Arc::new(new));
                    out.updated.push(Arc::clone(s));
                }
            }
        }
        let mut slots: Vec<Arc<Slot>> = current.to_vec();
        for (p, b) in cfg.backends() {
            if slots.iter().any(|s| s.is(&p.name, b)) {
                continue;
            }
            if slots.len() >= MAX_BACKENDS as usize {
                warn!(backend = %b.name, pool = %p.name, "not added: all {MAX_BACKENDS} load map ids are taken (removed back-ends keep theirs until a restart)");
                out.overflow.push(b.name.clone());
                continue;
            }
            let id = slots.len() as u32;
            let slot = Arc::new(Slot::new(Backend { id, ..b.clone() }, p));
            if crate::sync::lock(&self.drained).contains(&b.name) {
                slot.drained.store(true, Ordering::Relaxed);
            }
            info!(backend = %b.name, pool = %p.name, id, address = %b.address, "added by the configuration");
            slots.push(Arc::clone(&slot));
            out.added.push(slot);
        }
        if !out.added.is_empty() {
            self.slots.store(Arc::new(slots));
        }
        out
    }

    /// The operator's drain (`on`) or undrain of back-end `name`, in every pool that has
    /// it; returns the slots whose record changes, or `None` when no back-end of the
    /// configuration has that name. The caller publishes the records.
    pub fn set_drained(&self, name: &str, on: bool) -> Option<Vec<Arc<Slot>>> {
        // One at a time with reloads, so that a slot added meanwhile sees the name.
        let _one = crate::sync::lock(&self.reloading);
        let slots = self.slots.load();
        if !slots
            .iter()
            .any(|s| s.name == name && !s.removed.load(Ordering::Relaxed))
        {
            return None;
        }
        {
            let mut names = crate::sync::lock(&self.drained);
            if on {
                names.insert(name.to_owned());
            } else {
                names.remove(name);
            }
        }
        let mut changed = Vec::new();
        for s in slots.iter().filter(|s| s.name == name) {
            if s.drained.swap(on, Ordering::Relaxed) != on {
                changed.push(Arc::clone(s));
            }
        }
        info!(backend = %name, draining = on, "operator drain changed");
        if !changed.is_empty() {
            self.emit(Kind::BackendDraining {
                backend: name.to_owned(),
                draining: on,
                by: "operator".into(),
            });
        }
        Some(changed)
    }

    /// Records state changes in `events` from now on (the first call counts).
    pub fn set_events(&self, events: Events) {
        let _ = self.events.set(events);
    }

    /// Records an event, when the board has somewhere to record it.
    pub fn emit(&self, kind: Kind) {
        if let Some(e) = self.events.get() {
            e.emit(kind);
        }
    }

    /// `slot`'s overload mark changed (the load writer's hysteresis): its event, and its
    /// pool's when the pool as a whole changed.
    pub fn overload_changed(&self, slot: &Slot, overloaded: bool) {
        self.emit(Kind::BackendOverloaded {
            backend: slot.name.clone(),
            pool: slot.pool_name.clone(),
            overloaded,
        });
        self.check_pool(slot);
    }

    /// Whether `slot`'s pool still has a back-end taking new sessions (up, not over a
    /// threshold); an event when that changed.
    fn check_pool(&self, slot: &Slot) {
        let slots = self.slots.load();
        let mut members = slots
            .iter()
            .filter(|s| s.pool_id == slot.pool_id && !s.removed.load(Ordering::Relaxed))
            .peekable();
        let any = members.peek().is_some();
        let out = any
            && members.all(|s| {
                s.overloaded.load(Ordering::Relaxed)
                    || s.state.load(Ordering::Acquire) == BACKEND_DOWN
            });
        let mut pools = crate::sync::lock(&self.pools_out);
        let was = pools.contains(&slot.pool_name);
        if out != was {
            if out {
                pools.insert(slot.pool_name.clone());
            } else {
                pools.remove(&slot.pool_name);
            }
            drop(pools);
            self.emit(Kind::PoolOverloaded {
                pool: slot.pool_name.clone(),
                overloaded: out,
            });
        }
    }

    /// The back-end names the operator drained, sorted.
    pub fn drained(&self) -> Vec<String> {
        crate::sync::lock(&self.drained).iter().cloned().collect()
    }

    /// Whether every back-end of `pools` has offered CHUNKING in its last EHLO.
    pub fn chunking(&self, pools: &[String]) -> bool {
        let mut any = false;
        for s in self
            .slots
            .load()
            .iter()
            .filter(|s| pools.contains(&s.pool_name))
        {
            any = true;
            if !s.chunking.load(Ordering::Relaxed) {
                return false;
            }
        }
        any
    }

    /// A session slot on back-end `id` if it has fewer than `limit` sessions.
    pub fn acquire(&self, id: u32, limit: u32) -> Option<SessionGuard> {
        let slots = self.slots.load();
        let slot = slots.get(id as usize)?;
        slot.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(SessionGuard {
            slot: Arc::clone(slot),
            freed: Arc::clone(&self.freed),
        })
    }

    /// A place for one more idle leg on back-end `id`, asked by a session that still holds
    /// its slot and is about to give it up: at most `max` idle legs, and the back-end's
    /// connections (sessions plus idle legs) stay within `limit`, its session limit.
    pub fn hold_idle(&self, id: u32, max: u32, limit: u32) -> Option<IdleGuard> {
        let slots = self.slots.load();
        let slot = slots.get(id as usize)?;
        slot.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                // The asking session's own connection becomes the idle one: `active`
                // counts it now and will not once its slot is dropped.
                let active = slot.active.load(Ordering::Acquire);
                (n < max && active + n <= limit).then_some(n + 1)
            })
            .ok()?;
        Some(IdleGuard {
            slot: Arc::clone(slot),
        })
    }

    /// Capacity may have been freed (the load records were rewritten): waiters look again.
    pub fn nudge(&self) {
        wake(&self.freed);
    }

    /// A session's reply to MAIL, RCPT or the end of data, or its login: `ok` for a
    /// success, else a refusal that says the mail system cannot work (the session's
    /// lease reports at most one). A storm of those with no success in between
    /// ([`ERROR_STORM`] in a row) counts as one failed check: a back-end that refuses
    /// everything (full disk, broken delivery) is sick even if it greets well.
    pub fn reply_seen(&self, id: u32, ok: bool) {
        let slots = self.slots.load();
        let Some(slot) = slots.get(id as usize) else {
            return;
        };
        if ok {
            slot.errors_in_a_row.store(0, Ordering::Relaxed);
            return;
        }
        if slot.errors_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= ERROR_STORM {
            slot.errors_in_a_row.store(0, Ordering::Relaxed);
            let health = &slot.settings().health;
            let (rise, fall) = (health.rise, health.fall);
            self.record(
                id,
                false,
                None,
                rise,
                fall,
                "a storm of refusals from the mail system",
            );
        }
    }

    /// A real session's greeting latency: feeds the response time only. Only probes count
    /// as good checks, so a back-end that greets well but fails what follows still falls.
    pub fn sample_latency(&self, id: u32, latency: Duration) {
        let slots = self.slots.load();
        if let Some(slot) = slots.get(id as usize) {
            let sample = latency.as_micros().min(u32::MAX as u128) as f64;
            let old = slot.response_us.load(Ordering::Relaxed) as f64;
            let new = if old == 0.0 {
                sample
            } else {
                old * (1.0 - EWMA_NEW) + sample * EWMA_NEW
            };
            slot.response_us.store(new as u32, Ordering::Relaxed);
        }
    }

    /// A probe or a real session's outcome; `rise`/`fall` consecutive results flip the state.
    pub fn record(
        &self,
        id: u32,
        ok: bool,
        latency: Option<Duration>,
        rise: u32,
        fall: u32,
        why: &str,
    ) {
        if let Some(l) = latency {
            self.sample_latency(id, l);
        }
        let slots = self.slots.load();
        let Some(slot) = slots.get(id as usize) else {
            return;
        };
        let mut streak = crate::sync::lock(&slot.streak);
        *streak = match (ok, *streak) {
            (true, s) if s >= 0 => s + 1,
            (true, _) => 1,
            (false, s) if s <= 0 => s - 1,
            (false, _) => -1,
        };
        let state = slot.state.load(Ordering::Acquire);
        if state == BACKEND_DOWN && *streak >= rise as i32 {
            slot.state.store(BACKEND_UP, Ordering::Release);
            drop(streak);
            info!(backend = %slot.name, "back-end up ({rise} good checks)");
            self.emit(Kind::BackendUp {
                backend: slot.name.clone(),
                pool: slot.pool_name.clone(),
            });
            self.check_pool(slot);
        } else if state == BACKEND_UP && *streak <= -(fall as i32) {
            slot.state.store(BACKEND_DOWN, Ordering::Release);
            drop(streak);
            warn!(backend = %slot.name, reason = why, "back-end down ({fall} failures)");
            self.emit(Kind::BackendDown {
                backend: slot.name.clone(),
                pool: slot.pool_name.clone(),
                reason: why.to_owned(),
            });
            self.check_pool(slot);
        }
    }

    pub fn set_agent(&self, id: u32, report: Option<AgentReport>) {
        let slots = self.slots.load();
        if let Some(slot) = slots.get(id as usize) {
            let mut a = crate::sync::lock(&slot.agent);
            let was_draining = a.is_some_and(|r| r.drain);
            let draining = report.is_some_and(|r| r.drain);
            *a = report;
            drop(a);
            if was_draining != draining {
                info!(backend = %slot.name, draining, "operator drain request changed");
                self.emit(Kind::BackendDraining {
                    backend: slot.name.clone(),
                    draining,
                    by: "agent".into(),
                });
            }
        }
    }

    /// The weight in force: the agent's, else the configured one.
    pub fn weight_of(&self, id: u32) -> u32 {
        let slots = self.slots.load();
        let Some(slot) = slots.get(id as usize) else {
            return 0;
        };
        let agent = (*crate::sync::lock(&slot.agent)).filter(|a| a.at.elapsed() < AGENT_STALE);
        agent
            .and_then(|a| a.weight)
            .unwrap_or(slot.settings().backend.weight)
    }

    /// The load record for the map.
    pub fn record_for(&self, id: u32, now_ns: u64) -> Option<BackendLoad> {
        let slots = self.slots.load();
        let slot = slots.get(id as usize)?;
        let agent = (*crate::sync::lock(&slot.agent)).filter(|a| a.at.elapsed() < AGENT_STALE);
        let mut state = slot.state.load(Ordering::Acquire);
        if state == BACKEND_UP
            && (agent.is_some_and(|a| a.drain)
                || slot.removed.load(Ordering::Relaxed)
                || slot.drained.load(Ordering::Relaxed))
        {
            state = BACKEND_DRAINING;
        }
        let (addr_be, port_be) = crate::datapath::backend_address(slot.address);
        let weight = agent
            .and_then(|a| a.weight)
            .unwrap_or(slot.settings().backend.weight);
        Some(BackendLoad {
            addr_be,
            port_be,
            state,
            _pad: 0,
            weight: if slot.overloaded.load(Ordering::Relaxed) {
                0
            } else {
                weight
            },
            response_us: slot.response_us.load(Ordering::Relaxed),
            run_queue_milli: agent.map_or(0, |a| a.run_queue_milli),
            mail_queue: agent.map_or(0, |a| a.mail_queue),
            disk_permille: agent.map_or(0, |a| a.disk_permille),
            active_sessions: slot.active.load(Ordering::Relaxed),
            pool_id: slot.pool_id,
            updated_ns: now_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> Arc<Board> {
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{name='a',address='198.18.1.11:25'}]\n",
        )
        .unwrap();
        Board::new(&cfg)
    }

    #[test]
    fn fall_and_rise_flip_the_state() {
        let b = board();
        for _ in 0..2 {
            b.record(0, false, None, 2, 3, "test");
        }
        assert_eq!(
            b.record_for(0, 0).unwrap().state,
            BACKEND_UP,
            "two failures of three"
        );
        b.record(0, false, None, 2, 3, "test");
        assert_eq!(b.record_for(0, 0).unwrap().state, BACKEND_DOWN);
        b.record(0, true, None, 2, 3, "test");
        assert_eq!(
            b.record_for(0, 0).unwrap().state,
            BACKEND_DOWN,
            "one good check of two"
        );
        b.record(0, true, Some(Duration::from_millis(4)), 2, 3, "test");
        let r = b.record_for(0, 0).unwrap();
        assert_eq!((r.state, r.response_us), (BACKEND_UP, 4000));
    }

    #[test]
    fn a_storm_of_refusals_is_a_failed_check() {
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nhealth={fall=1}\nbackend=[{name='a',address='198.18.1.11:25'}]\n",
        )
        .unwrap();
        let b = Board::new(&cfg);
        for _ in 0..ERROR_STORM - 1 {
            b.reply_seen(0, false);
        }
        b.reply_seen(0, true);
        for _ in 0..ERROR_STORM - 1 {
            b.reply_seen(0, false);
        }
        assert_eq!(
            b.record_for(0, 0).unwrap().state,
            BACKEND_UP,
            "a success broke the first run"
        );
        b.reply_seen(0, false);
        assert_eq!(b.record_for(0, 0).unwrap().state, BACKEND_DOWN);
    }

    fn cfg(backends: &str) -> Config {
        Config::parse(
            std::path::Path::new("t.toml"),
            &format!(
                "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{backends}]\n"
            ),
        )
        .unwrap()
    }

    #[test]
    fn transitions_are_events_and_a_pool_without_a_backend_is_an_alarm() {
        let b = Board::new(&cfg(
            "{name='a',address='198.19.0.1:25'},{name='b',address='198.19.0.2:25'}",
        ));
        let ev = Events::new("f", None);
        b.set_events(ev.clone());
        let keys = || -> Vec<String> { ev.alarms().into_iter().map(|a| a.key).collect() };
        b.record(0, false, None, 2, 1, "refused");
        assert_eq!(keys(), ["backend_down:a"], "b still serves the pool");
        b.record(0, false, None, 2, 1, "refused");
        assert_eq!(ev.recent(10).len(), 1, "no new event while it stays down");
        b.record(1, false, None, 2, 1, "timeout");
        assert_eq!(
            keys(),
            ["backend_down:a", "backend_down:b", "pool_overloaded:p"]
        );
        // One good check of two: not up yet.
        b.record(1, true, None, 2, 1, "");
        assert_eq!(keys().len(), 3);
        b.record(1, true, None, 2, 1, "");
        assert_eq!(keys(), ["backend_down:a"]);
        // An overloaded back-end counts as out for its pool too.
        b.slots()[1].overloaded.store(true, Ordering::Relaxed);
        b.overload_changed(&b.slots()[1], true);
        assert_eq!(
            keys(),
            [
                "backend_down:a",
                "backend_overloaded:b",
                "pool_overloaded:p"
            ]
        );
        b.set_drained("a", true).unwrap();
        let last = ev.recent(1).pop().unwrap();
        assert_eq!(
            last.kind,
            Kind::BackendDraining {
                backend: "a".into(),
                draining: true,
                by: "operator".into()
            }
        );
    }

    fn names(b: &Board) -> Vec<(u32, String, bool)> {
        b.slots()
            .iter()
            .map(|s| (s.id, s.name.clone(), s.removed.load(Ordering::Relaxed)))
            .collect()
    }

    #[test]
    fn reload_drains_removed_backends_and_readmits_them() {
        let b = board();
        let r = b.reconcile(&cfg("{name='z',address='198.18.1.19:25'}"));
        assert_eq!(r.added.len(), 1);
        assert_eq!(b.record_for(0, 0).unwrap().state, BACKEND_DRAINING);
        assert_eq!(b.record_for(1, 0).unwrap().state, BACKEND_UP);
        let r = b.reconcile(&cfg("{name='a',address='198.18.1.11:25'}"));
        assert!(r.added.is_empty());
        assert_eq!(b.record_for(0, 0).unwrap().state, BACKEND_UP);
        assert_eq!(b.record_for(1, 0).unwrap().state, BACKEND_DRAINING);
    }

    #[test]
    fn reload_adds_a_backend_with_the_next_id() {
        let b = board();
        let r = b.reconcile(&cfg(
            "{name='n',address='198.18.1.12:25',weight=7,agent='198.18.1.12:7025',agent_insecure=true},{name='a',address='198.18.1.11:25'}",
        ));
        assert_eq!(r.added.len(), 1);
        assert!(r.overflow.is_empty());
        let s = &r.added[0];
        assert_eq!((s.id, s.name.as_str(), s.pool_id), (1, "n", 0));
        assert_eq!(
            s.settings().backend.agent.map(|a| a.address),
            Some("198.18.1.12:7025".parse().unwrap())
        );
        assert!(Arc::ptr_eq(s, &b.slot(1).unwrap()));
        let rec = b.record_for(1, 0).unwrap();
        assert_eq!((rec.state, rec.weight, rec.pool_id), (BACKEND_UP, 7, 0));
        assert!(b.acquire(1, 1).is_some(), "sessions can hold it");
        // The same configuration again adds nothing.
        assert!(
            b.reconcile(&cfg(
                "{name='n',address='198.18.1.12:25'},{name='a',address='198.18.1.11:25'}"
            ))
            .added
            .is_empty()
        );
        assert_eq!(names(&b).len(), 2);
    }

    #[test]
    fn a_changed_address_drains_the_old_and_adds_the_new_then_back() {
        let b = board();
        let moved = cfg("{name='a',address='198.18.1.21:25'}");
        assert_eq!(b.reconcile(&moved).added.len(), 1);
        assert_eq!(
            names(&b),
            [(0, "a".to_owned(), true), (1, "a".to_owned(), false)]
        );
        // Moved back: the first slot is readmitted, nothing new, the second drains.
        assert!(
            b.reconcile(&cfg("{name='a',address='198.18.1.11:25'}"))
                .added
                .is_empty()
        );
        assert_eq!(
            names(&b),
            [(0, "a".to_owned(), false), (1, "a".to_owned(), true)]
        );
        // Removed, then re-added: the same slots, no new id.
        b.reconcile(&cfg("{name='x',address='198.18.1.30:25'}"));
        assert!(b.reconcile(&moved).added.is_empty());
        assert_eq!(
            names(&b),
            [
                (0, "a".to_owned(), true),
                (1, "a".to_owned(), false),
                (2, "x".to_owned(), true)
            ]
        );
    }

    #[test]
    fn backends_of_a_new_pool_are_added_with_its_settings() {
        let b = board();
        let two = Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{name='a',address='198.18.1.11:25'}]\n[[pool]]\nname='q'\nidentity='none'\nbackend=[{name='q1',address='198.18.2.11:25'}]\n",
        )
        .unwrap();
        let r = b.reconcile(&two);
        assert_eq!(r.added.len(), 1);
        assert_eq!((r.added[0].name.as_str(), r.added[0].pool_id), ("q1", 1));
        assert_eq!(b.slots().len(), 2);
    }

    #[test]
    fn changed_settings_are_in_force_for_the_same_slot() {
        let b = board();
        let before = b.slot(0).unwrap();
        let r = b.reconcile(&Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\n[pool.thresholds]\nmail_queue=7\n[pool.health]\nrise=5\n\
             [[pool.backend]]\nname='a'\naddress='198.18.1.11:25'\nweight=9\n",
        )
        .unwrap());
        assert!(r.added.is_empty() && r.changed.is_empty());
        assert_eq!(r.updated.len(), 1);
        let after = b.slot(0).unwrap();
        assert!(
            Arc::ptr_eq(&before, &after),
            "the same back-end, its state kept"
        );
        let s = after.settings();
        assert_eq!(
            (s.backend.weight, s.thresholds.mail_queue, s.health.rise),
            (9, 7, 5)
        );
        assert_eq!(b.weight_of(0), 9);
        assert_eq!(b.record_for(0, 0).unwrap().weight, 9);
        // The same again changes nothing.
        assert!(b.reconcile(&Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\n[pool.thresholds]\nmail_queue=7\n[pool.health]\nrise=5\n\
             [[pool.backend]]\nname='a'\naddress='198.18.1.11:25'\nweight=9\n",
        )
        .unwrap()).updated.is_empty());
    }

    #[test]
    fn the_load_map_never_overflows() {
        let list = |range: std::ops::Range<u32>| {
            range
                .map(|i| {
                    format!(
                        "{{name='b{i}',address='198.18.{}.{}:25'}}",
                        i / 200,
                        1 + i % 200
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let b = Board::new(&cfg(&list(0..MAX_BACKENDS)));
        // One removed (it keeps its id while draining), one new: no id is free.
        let r = b.reconcile(&cfg(&list(1..MAX_BACKENDS + 1)));
        assert!(r.added.is_empty());
        assert_eq!(r.overflow, [format!("b{MAX_BACKENDS}")]);
        assert_eq!(b.slots().len(), MAX_BACKENDS as usize);
        assert_eq!(b.record_for(0, 0).unwrap().state, BACKEND_DRAINING);
    }

    #[test]
    fn session_limit_is_exact_and_released() {
        let b = board();
        let g1 = b.acquire(0, 2).unwrap();
        let _g2 = b.acquire(0, 2).unwrap();
        assert!(b.acquire(0, 2).is_none());
        assert_eq!(b.record_for(0, 0).unwrap().active_sessions, 2);
        drop(g1);
        assert!(b.acquire(0, 2).is_some());
    }

    #[test]
    fn operator_drain_excludes_from_selection_until_undrained_and_survives_a_reload() {
        use crate::backend::select::eligible;
        let two = |a: &str| {
            Config::parse(
                std::path::Path::new("t.toml"),
                &format!(
                    "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{{name='a',address='{a}'}},{{name='b',address='198.18.1.12:25'}}]\n\
                     [[pool]]\nname='q'\nidentity='none'\nbackend=[{{name='c',address='198.18.2.11:25'}}]\n"
                ),
            )
            .unwrap()
        };
        let cfg = two("198.18.1.11:25");
        let b = Board::new(&cfg);
        let t = Thresholds::default();
        let selectable = |id: u32| eligible(&b.record_for(id, 0).unwrap(), &t, 1.0, 0, false);
        assert!((0..3).all(selectable));

        assert!(b.set_drained("nobody", true).is_none(), "unknown name");
        let changed = b.set_drained("a", true).unwrap();
        let ids: Vec<u32> = changed.iter().map(|s| s.id).collect();
        assert_eq!(ids, [0]);
        assert_eq!(b.record_for(0, 0).unwrap().state, BACKEND_DRAINING);
        assert!(!selectable(0));
        assert!(
            selectable(1) && selectable(2),
            "the others take the sessions"
        );
        assert_eq!(b.drained(), ["a"]);
        assert!(
            b.set_drained("a", true).unwrap().is_empty(),
            "draining again changes nothing"
        );

        // A reload of the same back-ends keeps the drain; one that moves `a` gives it a
        // new slot, drained as well.
        b.reconcile(&cfg);
        assert!(!selectable(0) && selectable(2));
        let moved = b.reconcile(&two("198.18.1.21:25"));
        assert_eq!(moved.added.len(), 1);
        let new_id = moved.added[0].id;
        assert!(!selectable(new_id), "a back-end added under a drained name");
        assert!(selectable(1));

        let changed = b.set_drained("a", false).unwrap();
        assert_eq!(changed.len(), 2, "the removed slot and the new one");
        assert!(selectable(new_id));
        assert_eq!(
            b.record_for(0, 0).unwrap().state,
            BACKEND_DRAINING,
            "removed by the reload"
        );
        assert!(b.drained().is_empty());
        // A name only a removed slot has is unknown to the configuration.
        b.reconcile(&Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname='f'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{name='b',address='198.18.1.12:25'}]\n",
        )
        .unwrap());
        assert!(b.set_drained("a", true).is_none());
    }

    #[test]
    fn agent_drain_and_weight_show_in_the_record() {
        let b = board();
        b.set_agent(
            0,
            Some(AgentReport {
                run_queue_milli: 1500,
                mail_queue: 7,
                disk_permille: 420,
                weight: Some(10),
                drain: true,
                at: std::time::Instant::now(),
            }),
        );
        let r = b.record_for(0, 0).unwrap();
        assert_eq!(
            (
                r.state,
                r.weight,
                r.mail_queue,
                r.run_queue_milli,
                r.disk_permille
            ),
            (BACKEND_DRAINING, 10, 7, 1500, 420)
        );
    }
}
