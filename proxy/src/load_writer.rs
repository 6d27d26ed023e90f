//! The load writer: copies the board into the pinned load map (the one source of truth
//! that routing, the kernel and `bpftool` read), keeps the overloaded marks with their
//! hysteresis, and derives each service's capacity state for the kernel's steering.

use std::{collections::HashMap, sync::Arc, time::Duration};

use robustifier_common::{
    BackendLoad, CAPACITY_EXHAUSTED, CAPACITY_OK, CAPACITY_PRIORITY_ONLY, ServiceState,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    backend::{LoadView, select},
    datapath::{DataPathError, Tables},
    health::board::{Board, Slot},
    service::ServiceContext,
    supervise::Supervisor,
};

/// The tables the writer fills: the pinned BPF maps in a front-end with a kernel side,
/// memory in one without.
pub trait LoadTables: Send {
    fn backend(&self, id: u32) -> Option<BackendLoad>;
    fn set_backend(&mut self, id: u32, record: BackendLoad) -> Result<(), DataPathError>;
    fn set_service(&mut self, id: u32, state: ServiceState) -> Result<(), DataPathError>;
    /// Makes what was set since the last call visible to readers that do not read the
    /// tables themselves (see [`Mirrored`]); the tables themselves need nothing.
    fn commit(&mut self) {}
}

/// The load records this process has written to the pinned map, kept in user space: routing
/// reads a back-end's record for every session, and a read here is an atomic load where the
/// map would take a `bpf(2)` call. The map stays the source of truth for the kernel, other
/// processes and `bpftool`; a record this process has not written (none yet after a start
/// or an upgrade) is read from the map.
#[derive(Default)]
pub struct Mirror {
    records: arc_swap::ArcSwap<HashMap<u32, BackendLoad>>,
}

impl Mirror {
    /// A view reading this mirror first and `map` for the ids not written here.
    pub fn view(self: &Arc<Self>, map: Arc<dyn LoadView>) -> Arc<dyn LoadView> {
        Arc::new(MirrorView {
            mirror: Arc::clone(self),
            map,
        })
    }

    /// `tables` writing through to this mirror; see [`Mirrored`].
    pub fn tables(self: &Arc<Self>, tables: Box<dyn LoadTables>) -> Box<dyn LoadTables> {
        Box::new(Mirrored {
            tables,
            mirror: Arc::clone(self),
            pending: HashMap::new(),
        })
    }

    fn get(&self, id: u32) -> Option<BackendLoad> {
        self.records.load().get(&id).copied()
    }
}

struct MirrorView {
    mirror: Arc<Mirror>,
    map: Arc<dyn LoadView>,
}

impl LoadView for MirrorView {
    fn load(&self, id: u32) -> Option<BackendLoad> {
        self.mirror.get(id).or_else(|| self.map.load(id))
    }
}

/// Tables whose back-end records, once written, also go to a [`Mirror`]: at each
/// [`LoadTables::commit`] (the writer's round) and when dropped (a reload's writes), as one
/// new copy for the whole batch rather than one per record.
struct Mirrored {
    tables: Box<dyn LoadTables>,
    mirror: Arc<Mirror>,
    /// Written to the map since the last commit.
    pending: HashMap<u32, BackendLoad>,
}

impl LoadTables for Mirrored {
    fn backend(&self, id: u32) -> Option<BackendLoad> {
        self.tables.backend(id)
    }

    fn set_backend(&mut self, id: u32, record: BackendLoad) -> Result<(), DataPathError> {
        self.tables.set_backend(id, record)?;
        self.pending.insert(id, record);
        Ok(())
    }

    fn set_service(&mut self, id: u32, state: ServiceState) -> Result<(), DataPathError> {
        self.tables.set_service(id, state)
    }

    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        // Merged into the copy in force, so that a reload's writes and the writer's round,
        // each committing their own, never undo one another.
        self.mirror.records.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.extend(pending.iter().map(|(id, r)| (*id, *r)));
            next
        });
    }
}

impl Drop for Mirrored {
    fn drop(&mut self) {
        self.commit();
    }
}

/// Where the load records live: routing reads them through [`LoadMaps::view`], the writer
/// (reopened each time it restarts) and reloads write them through [`LoadMaps::tables`].
pub trait LoadMaps: Send + Sync {
    fn view(&self) -> Result<Arc<dyn LoadView>, DataPathError>;
    fn tables(&self) -> Result<Box<dyn LoadTables>, DataPathError>;
}

impl LoadTables for Tables {
    fn backend(&self, id: u32) -> Option<BackendLoad> {
        self.backends.get(&id, 0).ok()
    }

    fn set_backend(&mut self, id: u32, record: BackendLoad) -> Result<(), DataPathError> {
        self.backends
            .set(id, record, 0)
            .map_err(|source| DataPathError::Map {
                name: robustifier_common::MAP_BACKENDS,
                source,
            })
    }

    fn set_service(&mut self, id: u32, state: ServiceState) -> Result<(), DataPathError> {
        self.svc_state
            .set(id, state, 0)
            .map_err(|source| DataPathError::Map {
                name: robustifier_common::MAP_SVC_STATE,
                source,
            })
    }
}

/// Starts the probe and agent loops for every back-end, and the load writer.
pub fn spawn(
    pools: &Arc<arc_swap::ArcSwap<crate::backend::PoolSet>>,
    board: &Arc<Board>,
    envs: Services,
    maps: Arc<dyn LoadMaps>,
    ha_health: crate::ha::Health,
    stop: &CancellationToken,
    tasks: &Supervisor,
) {
    for slot in board.slots() {
        crate::health::spawn_checks(pools, board, &slot, stop, tasks);
    }
    let (b, stop) = (Arc::clone(board), stop.clone());
    tasks.spawn("load writer", move || {
        let (maps, b, envs, ha_health, stop) = (
            Arc::clone(&maps),
            Arc::clone(&b),
            Arc::clone(&envs),
            ha_health.clone(),
            stop.clone(),
        );
        async move { run(maps.as_ref(), b, envs, ha_health, stop).await }
    });
}

pub const PERIOD: Duration = Duration::from_millis(500);

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The services in force, which a reload replaces.
pub type Services = Arc<arc_swap::ArcSwap<Vec<Arc<ServiceContext>>>>;

pub async fn run(
    maps: &dyn LoadMaps,
    board: Arc<Board>,
    envs: Services,
    ha_health: crate::ha::Health,
    stop: CancellationToken,
) {
    let mut tables = match maps.tables() {
        Ok(t) => t,
        Err(e) => return error!(error = %e, "load writer cannot open the load maps"),
    };
    let mut capacity: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    // The watchdog is fed only while this loop runs its rounds.
    let heart = crate::notify::heartbeat("load writer");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
        if let Some(h) = &heart {
            h.beat();
        }
        write_records(tables.as_mut(), &board);
        // A back-end's load may have dropped: sessions waiting for a slot look again.
        board.nudge();
        let mut exhausted = false;
        for env in envs.load().iter() {
            let c = service_capacity(env, &board, |id| tables.backend(id));
            exhausted |= c == CAPACITY_EXHAUSTED;
            let was = capacity.insert(env.service.id, c).unwrap_or(CAPACITY_OK);
            if c != was {
                let name = ["ok", "priority-only", "exhausted"]
                    .get(c as usize)
                    .copied()
                    .unwrap_or("?");
                warn!(service = %env.service.name, capacity = name, "service capacity changed");
            }
            if let Err(e) = tables.set_service(
                env.service.id,
                ServiceState {
                    capacity: c,
                    _pad: 0,
                },
            ) {
                error!(error = %e, "writing service state");
            }
        }
        // VRRP tracking: a front-end whose service has no back-end cannot serve it.
        ha_health.set_backends_exhausted(exhausted);
    }
}

fn write_records(tables: &mut dyn LoadTables, board: &Board) {
    let now = monotonic_ns();
    for slot in board.slots() {
        publish(tables, board, &slot, now);
    }
    tables.commit();
}

/// Writes one back-end's record as of `now`, with the overloaded mark and its hysteresis
/// applied: the writer's round, and a reload for the back-ends it changed.
pub fn publish(tables: &mut dyn LoadTables, board: &Board, slot: &Slot, now: u64) {
    let id = slot.id;
    let Some(mut record) = board.record_for(id, now) else {
        return;
    };
    // Hysteresis on the raw figures: over at the threshold, clear under 90 % of it.
    let overloaded = slot.overloaded.load(std::sync::atomic::Ordering::Relaxed);
    let settings = slot.settings();
    let t = &settings.thresholds;
    let now_over = if overloaded {
        !select::clear(&record, t)
    } else {
        select::over(&record, t)
    };
    if now_over != overloaded {
        slot.overloaded
            .store(now_over, std::sync::atomic::Ordering::Relaxed);
        if now_over {
            warn!(backend = %slot.name, mail_queue = record.mail_queue, disk_permille = record.disk_permille,
                run_queue_milli = record.run_queue_milli, response_us = record.response_us, "back-end over a threshold: no new sessions");
        } else {
            info!(backend = %slot.name, "back-end under its thresholds again");
        }
        board.overload_changed(slot, now_over);
    }
    if !now_over && overloaded {
        // The record was built while still marked: give the weight back.
        record.weight = board.weight_of(id);
    }
    if now_over {
        record.weight = 0;
    }
    if let Err(e) = tables.set_backend(id, record) {
        error!(error = %e, backend = %slot.name, "writing load record");
    }
}

/// OK when the default group can be served somewhere; priority-only when only the full
/// share can (and connect-time shedding is safe for the configured groups); exhausted
/// when nothing can.
/// `load` reads a back-end's record (the pinned map in the daemon). Every slot of the board
/// counts, so back-ends a reload adds count for VRRP tracking too.
fn service_capacity(
    env: &ServiceContext,
    board: &Board,
    load: impl Fn(u32) -> Option<BackendLoad>,
) -> u32 {
    let pools = env.pool_names();
    let can_serve = |share: f64| {
        board.slots().iter().any(|s| {
            if !pools.contains(&s.pool_name) {
                return false;
            }
            let Some(load) = load(s.id) else {
                return false;
            };
            let active = s.active.load(std::sync::atomic::Ordering::Acquire);
            let over = s.overloaded.load(std::sync::atomic::Ordering::Relaxed);
            select::eligible(&load, &s.settings().thresholds, share, active, over)
        })
    };
    if pools.is_empty() || can_serve(env.groups.default_share) {
        CAPACITY_OK
    } else if can_serve(1.0) {
        if env.groups.connect_shedding_safe() {
            CAPACITY_PRIORITY_ONLY
        } else {
            CAPACITY_OK
        }
    } else {
        CAPACITY_EXHAUSTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::PoolSet, backend::groups::Groups, config::Config};

    fn cfg(backends: &str) -> Config {
        Config::parse(
            std::path::Path::new("t.toml"),
            &format!(
                "[frontend]\nname='f'\n[[service]]\nname='smtp'\nprotocol='smtp'\nport=25\npool='p'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{backends}]\n"
            ),
        )
        .unwrap()
    }

    /// A pinned map stand-in that counts the lookups routing makes in it.
    #[derive(Clone, Default)]
    struct Map {
        records: Arc<std::sync::Mutex<HashMap<u32, BackendLoad>>>,
        lookups: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl LoadView for Map {
        fn load(&self, id: u32) -> Option<BackendLoad> {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.records.lock().unwrap().get(&id).copied()
        }
    }

    impl LoadTables for Map {
        fn backend(&self, id: u32) -> Option<BackendLoad> {
            self.records.lock().unwrap().get(&id).copied()
        }
        fn set_backend(&mut self, id: u32, record: BackendLoad) -> Result<(), DataPathError> {
            self.records.lock().unwrap().insert(id, record);
            Ok(())
        }
        fn set_service(&mut self, _: u32, _: ServiceState) -> Result<(), DataPathError> {
            Ok(())
        }
    }

    fn record(weight: u32) -> BackendLoad {
        BackendLoad {
            weight,
            ..BackendLoad::default()
        }
    }

    #[test]
    fn routing_reads_written_records_from_the_mirror_not_the_map() {
        let map = Map::default();
        // Written before this process (a predecessor's record): only the map has it.
        map.records.lock().unwrap().insert(7, record(3));
        let mirror = Arc::new(Mirror::default());
        let view = mirror.view(Arc::new(map.clone()));
        let mut tables = mirror.tables(Box::new(map.clone()));
        assert_eq!(view.load(7).map(|r| r.weight), Some(3), "read from the map");
        let lookups = || map.lookups.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(lookups(), 1);
        tables.set_backend(1, record(5)).unwrap();
        tables.set_backend(7, record(9)).unwrap();
        // Not committed yet (the writer's round is not over): read through to the map.
        assert_eq!(view.load(1).map(|r| r.weight), Some(5));
        assert_eq!(lookups(), 2);
        tables.commit();
        let before = lookups();
        for _ in 0..100 {
            assert_eq!(view.load(1).map(|r| r.weight), Some(5));
            assert_eq!(view.load(7).map(|r| r.weight), Some(9));
        }
        assert_eq!(lookups(), before, "no map lookup for a record written here");
        assert_eq!(
            map.backend(7).map(|r| r.weight),
            Some(9),
            "the map written too"
        );
        // A reload's tables, dropped after its writes, commit them without undoing the
        // writer's.
        {
            let mut reload = mirror.tables(Box::new(map.clone()));
            reload.set_backend(2, record(4)).unwrap();
        }
        assert_eq!(view.load(2).map(|r| r.weight), Some(4));
        assert_eq!(view.load(1).map(|r| r.weight), Some(5));
        assert_eq!(lookups(), before);
    }

    #[test]
    fn a_backend_added_on_reload_counts_for_capacity_and_tracking() {
        let first = cfg("{name='a',address='198.18.1.11:25'}");
        let pools = Arc::new(PoolSet::standalone(&first).unwrap());
        let board = Arc::clone(&pools.board);
        let groups = Arc::new(Groups::new(first.groups.clone()));
        let env = ServiceContext::new(&first.services[0], pools, None, groups).unwrap();
        let load = |id| board.record_for(id, 0);
        assert_eq!(service_capacity(&env, &board, load), CAPACITY_OK);
        // a goes, b comes: a drains, b serves.
        board.reconcile(&cfg("{name='b',address='198.18.1.12:25'}"));
        assert_eq!(service_capacity(&env, &board, load), CAPACITY_OK);
        for _ in 0..3 {
            board.record(1, false, None, 2, 3, "test");
        }
        assert_eq!(
            service_capacity(&env, &board, load),
            CAPACITY_EXHAUSTED,
            "a draining, b down"
        );
    }
}
