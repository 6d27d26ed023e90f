//! systemd's service notification protocol, for the daemons' units (`Type=notify`).
//!
//! - Readiness: `READY=1` once a daemon serves (the front-end: data path attached,
//!   configuration applied, listeners accepting; the agent and the manager: listening),
//!   `RELOADING=1` … `READY=1` around a live reload, `STOPPING=1` at an orderly stop.
//! - A binary upgrade's new process is not the one systemd started: it announces itself
//!   with `MAINPID=` before its `READY=1` (the unit's `NotifyAccess=all` lets systemd take
//!   it), and the old process, once it has handed over, says nothing more: a `STOPPING=1`
//!   from it would stop the service.
//! - The watchdog: with `WATCHDOG_USEC` set, `WATCHDOG=1` every half interval, but only
//!   while every registered [`Heartbeat`] (each accept loop, the load writer) has beaten
//!   within the interval. A wedged loop starves the watchdog and systemd restarts the
//!   daemon; a wedged runtime starves it as well, since the feeder runs on it.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every message is a no-op.

use std::{
    sync::{
        Arc, LazyLock, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// How often a registered loop beats; well below any useful watchdog interval.
pub const BEAT_PERIOD: Duration = Duration::from_millis(500);

/// Set once this process has handed over to a successor: it speaks no more.
static RETIRED: AtomicBool = AtomicBool::new(false);
/// Set for a binary upgrade's new process: its readiness also names it the main process.
static SUCCESSOR: AtomicBool = AtomicBool::new(false);

/// The process's heartbeats, read by the watchdog feeder.
static HEARTS: LazyLock<Registry> = LazyLock::new(Registry::default);
/// The watchdog interval, read once from the environment.
static WATCHDOG: LazyLock<Option<Duration>> = LazyLock::new(|| {
    watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
});
/// The clock of the heartbeats: milliseconds since the first use.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC`, unless `WATCHDOG_PID` names
/// another process (the variables were inherited, not meant for us). A binary upgrade
/// passes `WATCHDOG_USEC` on without `WATCHDOG_PID`, so its new process feeds too.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        None => Some(Duration::from_micros(usec)),
        Some(Ok(p)) if p == own => Some(Duration::from_micros(usec)),
        Some(_) => None,
    }
}

/// The watchdog interval in force for this process, if any.
pub fn watchdog() -> Option<Duration> {
    *WATCHDOG
}

fn send(states: &[NotifyState<'_>]) {
    if RETIRED.load(Ordering::Relaxed) {
        return;
    }
    // A lost notification is systemd's to time out; the daemon serves on.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// This process succeeds a running front-end (a binary upgrade): its `READY=1` comes with
/// `MAINPID=`.
pub fn succeed() {
    SUCCESSOR.store(true, Ordering::Relaxed);
}

/// Serving: `READY=1`, with `MAINPID=` for a successor, and a status line.
pub fn ready(status: &str) {
    let status = NotifyState::Status(status);
    if SUCCESSOR.load(Ordering::Relaxed) {
        // systemd follows the new main process before it takes the readiness.
        send(&[NotifyState::MainPid(std::process::id())]);
    }
    send(&[NotifyState::Ready, status]);
}

/// A live reload begins; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(t) => send(&[NotifyState::Reloading, t, NotifyState::Status("reloading")]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

/// An orderly stop begins.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// This process has handed over to its successor: from now on the successor speaks for
/// the service.
pub fn retire() {
    RETIRED.store(true, Ordering::Relaxed);
}

/// One loop's proof of life: the time of its last beat. Beating is one relaxed store.
#[derive(Debug)]
pub struct Heartbeat {
    name: &'static str,
    last_ms: AtomicU64,
}

impl Heartbeat {
    fn beat_at(&self, ms: u64) {
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub fn beat(&self) {
        self.beat_at(now_ms());
    }
}

/// The heartbeats of the loops alive now; a loop's heartbeat leaves with the loop.
#[derive(Debug, Default)]
pub struct Registry {
    hearts: Mutex<Vec<Weak<Heartbeat>>>,
}

impl Registry {
    fn register_at(&self, name: &'static str, ms: u64) -> Arc<Heartbeat> {
        let heart = Arc::new(Heartbeat {
            name,
            last_ms: AtomicU64::new(ms),
        });
        let mut hearts = self.hearts.lock().unwrap_or_else(PoisonError::into_inner);
        hearts.retain(|h| h.strong_count() > 0);
        hearts.push(Arc::downgrade(&heart));
        heart
    }

    /// The first live loop that has not beaten within `interval` of `now_ms`, if any.
    fn stalled(&self, now_ms: u64, interval: Duration) -> Option<&'static str> {
        let limit = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        let mut hearts = self.hearts.lock().unwrap_or_else(PoisonError::into_inner);
        hearts.retain(|h| h.strong_count() > 0);
        hearts.iter().filter_map(Weak::upgrade).find_map(|h| {
            let last = h.last_ms.load(Ordering::Relaxed);
            (now_ms.saturating_sub(last) > limit).then_some(h.name)
        })
    }
}

/// A heartbeat for a loop that beats from its own work (the load writer, once per
/// round); `None` without a watchdog.
pub fn heartbeat(name: &'static str) -> Option<Arc<Heartbeat>> {
    watchdog().map(|_| HEARTS.register_at(name, now_ms()))
}

/// A loop's pulse: with the watchdog on, a heartbeat and the tick to beat it by; without,
/// nothing (the tick never fires).
pub struct Pulse {
    beat: Option<(Arc<Heartbeat>, tokio::time::Interval)>,
}

impl Pulse {
    /// A pulse for the loop `name` (as logged when it stalls).
    pub fn new(name: &'static str) -> Pulse {
        Pulse {
            beat: watchdog().map(|_| {
                let mut tick = tokio::time::interval(BEAT_PERIOD);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                (HEARTS.register_at(name, now_ms()), tick)
            }),
        }
    }

    /// Waits for the next beat and beats; pending forever without a watchdog. Select on it
    /// beside the loop's own work: a loop stuck elsewhere does not beat.
    pub async fn beat(&mut self) {
        match &mut self.beat {
            Some((heart, tick)) => {
                tick.tick().await;
                heart.beat();
            }
            None => std::future::pending().await,
        }
    }
}

/// Feeds the watchdog every half `interval` while every registered loop beats, until
/// `stop`. A stalled loop is logged once per stall.
pub async fn feed_watchdog(interval: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut starving = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match HEARTS.stalled(now_ms(), interval) {
            None => {
                starving = false;
                send(&[NotifyState::Watchdog]);
            }
            Some(name) => {
                if !starving {
                    warn!(
                        loop_name = name,
                        "a loop has not run within the watchdog interval: not feeding the watchdog (systemd restarts the daemon)"
                    );
                }
                starving = true;
            }
        }
        debug!(starving, "watchdog round");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_ours_unless_another_pid_is_named() {
        let i = |u, p| watchdog_interval(u, p, 42);
        assert_eq!(i(Some("2000000"), None), Some(Duration::from_secs(2)));
        assert_eq!(i(Some("2000000"), Some("42")), Some(Duration::from_secs(2)));
        assert_eq!(i(Some("2000000"), Some("7")), None);
        assert_eq!(i(Some("0"), None), None);
        assert_eq!(i(Some("soon"), None), None);
        assert_eq!(i(None, Some("42")), None);
    }

    /// Fault injection by a mock clock: two loops beat, then one stops beating; the feeder's
    /// check names it once its last beat is older than the interval, and is content again
    /// when it beats or its loop is gone.
    #[test]
    fn a_stalled_heartbeat_stops_the_feeding() {
        let r = Registry::default();
        let interval = Duration::from_secs(2);
        let accept = r.register_at("accept", 0);
        let writer = r.register_at("load writer", 0);
        assert_eq!(r.stalled(1_000, interval), None);
        for t in (500..=6_000).step_by(500) {
            writer.beat_at(t);
            let stalled = r.stalled(t, interval);
            if t <= 2_000 {
                assert_eq!(
                    stalled, None,
                    "at {t} ms the accept loop is within the interval"
                );
            } else {
                assert_eq!(stalled, Some("accept"), "at {t} ms");
            }
        }
        accept.beat_at(6_000);
        assert_eq!(r.stalled(6_000, interval), None);
        // A loop that ended (a reload retired its listener) is no longer waited for.
        drop(accept);
        assert_eq!(r.stalled(60_000, interval), Some("load writer"));
        drop(writer);
        assert_eq!(r.stalled(60_000, interval), None);
    }
}
