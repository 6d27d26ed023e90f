//! Supervised background tasks: the load writer, health probes and agent polls run until
//! the daemon stops. One that dies before that (panics, returns an error, or just returns)
//! is logged and started again after a backoff, so a bug in one back-end's probe cannot
//! silently freeze its load record. Each task's state is kept in a [`Registry`] that the
//! control socket reports (`tasks` in `robustifier ha status --json`).
//!
//! A task is given as a factory (`FnMut() -> Future`) because a dead future cannot be
//! resumed: each restart gets a fresh one, with fresh clones of what it shares.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::error;

/// How long to wait before restarting: doubling from `initial` up to `max`; a run that
/// lasted `reset_after` starts the doubling again.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// One supervised task as reported on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub name: String,
    /// False while it waits to be restarted.
    pub running: bool,
    pub restarts: u64,
    /// Why it died last, if it ever did.
    pub last_failure: Option<String>,
}

struct Entry {
    name: String,
    running: AtomicBool,
    restarts: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

/// Every supervised task of a daemon. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<Arc<Entry>>>>);

impl Registry {
    fn add(&self, name: String) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            name,
            running: AtomicBool::new(true),
            restarts: AtomicU64::new(0),
            last_failure: Mutex::new(None),
        });
        crate::sync::lock(&self.0).push(Arc::clone(&entry));
        entry
    }

    pub fn snapshot(&self) -> Vec<TaskStatus> {
        crate::sync::lock(&self.0)
            .iter()
            .map(|e| TaskStatus {
                name: e.name.clone(),
                running: e.running.load(Ordering::Relaxed),
                restarts: e.restarts.load(Ordering::Relaxed),
                last_failure: crate::sync::lock(&e.last_failure).clone(),
            })
            .collect()
    }

    /// Runs `fut` as a task of its own and records its death by panic, for a task that
    /// cannot simply be started again: it stays dead, and readiness shows it.
    pub fn watch<Fut>(
        &self,
        name: impl Into<String>,
        fut: Fut,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let entry = self.add(name.into());
        async move {
            let Err(e) = tokio::spawn(fut).await else {
                return;
            };
            entry.running.store(false, Ordering::Relaxed);
            let why = if e.is_panic() {
                format!("panicked: {}", panic_message(e))
            } else {
                format!("cancelled: {e}")
            };
            error!(task = %entry.name, reason = %why, "background task died; it is not restarted");
            *crate::sync::lock(&entry.last_failure) = Some(why);
        }
    }

    /// Every task is running (none is waiting for its restart).
    pub fn ready(&self) -> bool {
        self.snapshot().iter().all(|t| t.running)
    }
}

/// What a task's future ends with: `()` or a `Result` whose error says why it died.
pub trait Exit {
    fn failure(self) -> Option<String>;
}

impl Exit for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: std::fmt::Display> Exit for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| format!("error: {e}"))
    }
}

/// Starts tasks on a tracker and restarts those that die before `stop`.
#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    stop: CancellationToken,
    registry: Registry,
    backoff: Backoff,
}

impl Supervisor {
    /// Tasks run on `tracker` (so the daemon's orderly stop waits for them) and are not
    /// restarted once `stop` is cancelled; they must end by themselves on `stop`.
    pub fn new(tracker: TaskTracker, stop: CancellationToken, registry: Registry) -> Self {
        Supervisor {
            tracker,
            stop,
            registry,
            backoff: Backoff::default(),
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Runs `make()`'s future, and a new one each time the last died before the stop.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, mut make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Exit + Send + 'static,
    {
        let entry = self.registry.add(name.into());
        let (stop, backoff) = (self.stop.clone(), self.backoff);
        self.tracker.spawn(async move {
            let mut delay = backoff.initial;
            loop {
                entry.running.store(true, Ordering::Relaxed);
                let started = Instant::now();
                // A task of its own, so that a panic ends only this run.
                let outcome = tokio::spawn(make()).await;
                if stop.is_cancelled() {
                    return;
                }
                entry.running.store(false, Ordering::Relaxed);
                let why = match outcome {
                    Ok(exit) => exit.failure().unwrap_or_else(|| "returned".to_owned()),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e)),
                    Err(e) => format!("cancelled: {e}"),
                };
                if started.elapsed() >= backoff.reset_after {
                    delay = backoff.initial;
                }
                error!(task = %entry.name, reason = %why, restart_in = ?delay, "background task died; restarting");
                *crate::sync::lock(&entry.last_failure) = Some(why);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                entry.restarts.fetch_add(1, Ordering::Relaxed);
                delay = (delay * 2).min(backoff.max);
            }
        });
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn supervisor() -> (Supervisor, TaskTracker, CancellationToken) {
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        let s = Supervisor::new(tracker.clone(), stop.clone(), Registry::default());
        (s, tracker, stop)
    }

    /// Lets spawned tasks and (paused) timers run until `done` holds.
    async fn until(done: impl Fn() -> bool) {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_restarted_and_counted() {
        let (s, tracker, stop) = supervisor();
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let task_stop = stop.clone();
        s.spawn("flaky", move || {
            let (r, stop) = (Arc::clone(&r), task_stop.clone());
            async move {
                // The first two runs die; the third serves until the stop.
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("probe bug");
                }
                stop.cancelled().await;
            }
        });
        until(|| runs.load(Ordering::SeqCst) == 3).await;
        let status = s.registry().snapshot();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].name, "flaky");
        assert_eq!(status[0].restarts, 2);
        assert!(status[0].running);
        assert_eq!(
            status[0].last_failure.as_deref(),
            Some("panicked: probe bug")
        );
        assert!(s.registry().ready());
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no restart after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_is_reported_and_readiness_drops_until_the_restart() {
        let (s, tracker, stop) = supervisor();
        let s = s.with_backoff(Backoff {
            initial: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
            reset_after: Duration::from_secs(3600),
        });
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        s.spawn("writer", move || {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("cannot open the pinned maps")
            }
        });
        let registry = s.registry().clone();
        until(|| !registry.ready()).await;
        let status = registry.snapshot();
        assert!(!status[0].running);
        assert_eq!(status[0].restarts, 0);
        assert_eq!(
            status[0].last_failure.as_deref(),
            Some("error: cannot open the pinned maps")
        );
        // The stop ends the wait for the restart.
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_watched_task_that_panics_shows_in_readiness() {
        let registry = Registry::default();
        registry.watch("vrrp router 51 IPv4", async {}).await;
        assert!(registry.ready(), "a task that ends normally is no failure");
        registry
            .watch("vrrp router 52 IPv4", async { panic!("router bug") })
            .await;
        let status = registry.snapshot();
        assert!(!registry.ready());
        assert!(!status[1].running);
        assert_eq!(
            status[1].last_failure.as_deref(),
            Some("panicked: router bug")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_ended_by_the_stop_is_not_restarted() {
        let (s, tracker, stop) = supervisor();
        let runs = Arc::new(AtomicU32::new(0));
        let (r, task_stop) = (Arc::clone(&runs), stop.clone());
        s.spawn("probe", move || {
            let (r, stop) = (Arc::clone(&r), task_stop.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                stop.cancelled().await;
            }
        });
        until(|| runs.load(Ordering::SeqCst) == 1).await;
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        let status = s.registry().snapshot();
        assert_eq!(status[0].restarts, 0);
        assert_eq!(status[0].last_failure, None);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
