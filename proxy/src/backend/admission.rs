//! Bounded admission wait: a session whose route has no back-end under its group's
//! thresholds may wait a short, configured time (`wait_ms`) for a slot instead of being
//! deflected at once.
//!
//! Why: deflecting (`451 4.3.2`, `-ERR [SYS/TEMP]`) is right for regular traffic in a
//! flood, but in a short burst it also turns away premium mail that a back-end could take
//! a second later. So a session whose group has a wait queues here, and the freed slot
//! goes to the best waiter: the highest priority (the group's share) first, first come
//! first served within it. Only the head of a route's queue re-runs the choice, so a
//! regular waiter never takes a slot a premium one is waiting for. The queue of a route
//! is bounded (see [`Admission::join`]); over it a session is deflected at once, so a
//! flood cannot pile up sessions. A wait ends with the deadline, and its place is given
//! up when the session drops it (client gone, shutdown, idle timeout).
//!
//! Wake-ups: every change that may free capacity (a session's back-end slot released, a
//! load record rewritten) bumps a counter on the board; waiters watch it, and poll every
//! [`POLL`] as a fallback.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _},
    sync::watch,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// A waiter at the head re-runs the choice at least this often, even without a signal.
pub const POLL: Duration = Duration::from_millis(250);

/// Waiters a route may have per session its back-ends can hold.
pub const WAITERS_PER_SESSION: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Waiter {
    seq: u64,
    priority: f64,
}

#[derive(Default)]
struct Queues {
    next: u64,
    /// Per route (the pools it lists, in order), kept in serving order: highest priority
    /// first, then by arrival; the head is the first.
    routes: HashMap<Vec<String>, Vec<Waiter>>,
}

pub struct Admission {
    queues: Mutex<Queues>,
    /// Bumped whenever capacity may have been freed (see [`Admission::signal`]).
    freed: Arc<watch::Sender<u64>>,
}

/// A session's place in a route's queue; dropping it gives the place up.
pub struct Place {
    admission: Arc<Admission>,
    route: Vec<String>,
    seq: u64,
    rx: watch::Receiver<u64>,
    /// Something changed since the last attempt (starts true: a slot may have been freed
    /// between the failed attempt and joining).
    dirty: bool,
}

impl Admission {
    pub fn new(freed: Arc<watch::Sender<u64>>) -> Arc<Admission> {
        Arc::new(Admission {
            queues: Mutex::new(Queues::default()),
            freed,
        })
    }

    /// A standalone admission with its own signal, for tests.
    pub fn standalone() -> Arc<Admission> {
        Admission::new(Arc::new(watch::channel(0).0))
    }

    /// Capacity may have been freed: waiters look again.
    pub fn signal(&self) {
        crate::health::board::wake(&self.freed);
    }

    /// Queues a session of `priority` for `route`, or `None` when the route already has
    /// `bound` waiters (the session is deflected at once).
    pub fn join(self: &Arc<Self>, route: &[String], priority: f64, bound: usize) -> Option<Place> {
        let mut q = crate::sync::lock(&self.queues);
        let seq = q.next;
        let waiters = q.routes.entry(route.to_vec()).or_default();
        if waiters.len() >= bound {
            return None;
        }
        // After every waiter of at least this priority: FIFO within a priority.
        let at = waiters.partition_point(|w| w.priority >= priority);
        waiters.insert(at, Waiter { seq, priority });
        q.next += 1;
        Some(Place {
            admission: Arc::clone(self),
            route: route.to_vec(),
            seq,
            rx: self.freed.subscribe(),
            dirty: true,
        })
    }

    /// Whether `route` has a waiter of at least `priority`: a new session of that
    /// priority that may wait queues behind it rather than take a slot first.
    pub fn ahead(&self, route: &[String], priority: f64) -> bool {
        crate::sync::lock(&self.queues)
            .routes
            .get(route)
            .and_then(|w| w.first())
            .is_some_and(|w| w.priority >= priority)
    }

    /// Sessions waiting for `route`.
    pub fn waiting(&self, route: &[String]) -> usize {
        crate::sync::lock(&self.queues)
            .routes
            .get(route)
            .map_or(0, Vec::len)
    }

    fn head(&self, route: &[String]) -> Option<u64> {
        let q = crate::sync::lock(&self.queues);
        q.routes.get(route)?.first().map(|w| w.seq)
    }
}

impl Place {
    /// Waits until this place is the head of its queue and capacity may have been freed
    /// since the last attempt: true means "run the choice again", false that `deadline`
    /// has passed. Cancel-safe: dropping the future keeps the place.
    pub async fn turn(&mut self, deadline: Instant) -> bool {
        loop {
            if Instant::now() >= deadline {
                return false;
            }
            if self.dirty && self.admission.head(&self.route) == Some(self.seq) {
                self.dirty = false;
                return true;
            }
            let poll = Instant::now() + POLL;
            tokio::select! {
                r = self.rx.changed() => {
                    if r.is_err() {
                        tokio::time::sleep_until(poll.min(deadline)).await;
                    }
                    self.dirty = true;
                }
                () = tokio::time::sleep_until(poll) => self.dirty = true,
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }
}

impl Place {
    /// [`Place::turn`] for a session: also ends the wait, with the reason to log, when the
    /// client hangs up (watched only while `watch_client`, i.e. nothing of the client's is
    /// buffered; data from it stops the watching, as it is the next command's) or the
    /// front-end shuts down.
    pub async fn session_turn<R: AsyncBufRead + Unpin>(
        &mut self,
        deadline: Instant,
        client: &mut R,
        watch_client: &mut bool,
        closing: &CancellationToken,
    ) -> Result<(), &'static str> {
        loop {
            tokio::select! {
                turn = self.turn(deadline) => {
                    return if turn { Ok(()) } else { Err("wait over") };
                }
                r = client.fill_buf(), if *watch_client => {
                    if !matches!(r, Ok(b) if !b.is_empty()) {
                        return Err("client left");
                    }
                    *watch_client = false;
                }
                () = closing.cancelled() => return Err("front-end shutting down"),
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        {
            let mut q = crate::sync::lock(&self.admission.queues);
            if let Some(w) = q.routes.get_mut(&self.route) {
                w.retain(|w| w.seq != self.seq);
                if w.is_empty() {
                    q.routes.remove(&self.route);
                }
            }
        }
        // The next waiter may now be the head.
        self.admission.signal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Vec<String> {
        vec!["p".to_owned()]
    }

    /// A simulated pool of `slots` sessions whose releases signal `adm`.
    struct Slots {
        free: Mutex<u32>,
        adm: Arc<Admission>,
    }

    impl Slots {
        fn take(&self) -> bool {
            let mut f = self.free.lock().unwrap();
            if *f == 0 {
                return false;
            }
            *f -= 1;
            true
        }
        fn release(&self) {
            *self.free.lock().unwrap() += 1;
            self.adm.signal();
        }
    }

    /// Waits like a session: the choice, then turns until it succeeds or the deadline.
    async fn wait_for(slots: &Slots, mut place: Place, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while place.turn(deadline).await {
            if slots.take() {
                return true;
            }
        }
        false
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_a_freed_slot() {
        let adm = Admission::standalone();
        let slots = Arc::new(Slots {
            free: Mutex::new(0),
            adm: Arc::clone(&adm),
        });
        let place = adm.join(&route(), 1.0, 8).unwrap();
        let s = Arc::clone(&slots);
        let waiter = tokio::spawn(async move { wait_for(&s, place, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(adm.waiting(&route()), 1);
        slots.release();
        assert!(waiter.await.unwrap(), "the freed slot went to the waiter");
        assert_eq!(adm.waiting(&route()), 0, "the place is given up");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_times_out() {
        let adm = Admission::standalone();
        let slots = Slots {
            free: Mutex::new(0),
            adm: Arc::clone(&adm),
        };
        let place = adm.join(&route(), 1.0, 8).unwrap();
        let t = Instant::now();
        assert!(!wait_for(&slots, place, Duration::from_secs(2)).await);
        assert!(t.elapsed() >= Duration::from_secs(2));
        assert_eq!(adm.waiting(&route()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn premium_is_served_before_an_earlier_regular_waiter() {
        let adm = Admission::standalone();
        let slots = Arc::new(Slots {
            free: Mutex::new(0),
            adm: Arc::clone(&adm),
        });
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in [("regular", 0.5), ("premium", 1.0)] {
            let place = adm.join(&route(), priority, 8).unwrap();
            let (s, o) = (Arc::clone(&slots), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                if wait_for(&s, place, Duration::from_secs(10)).await {
                    o.lock().unwrap().push(name);
                }
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(adm.ahead(&route(), 1.0) && adm.ahead(&route(), 0.5));
        tokio::time::sleep(Duration::from_secs(1)).await;
        slots.release();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*order.lock().unwrap(), ["premium"]);
        slots.release();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["premium", "regular"]);
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_within_a_priority() {
        let adm = Admission::standalone();
        let a = adm.join(&route(), 1.0, 8).unwrap();
        let r = adm.join(&route(), 0.5, 8).unwrap();
        let b = adm.join(&route(), 1.0, 8).unwrap();
        assert_eq!(adm.head(&route()), Some(a.seq));
        drop(a);
        assert_eq!(adm.head(&route()), Some(b.seq));
        drop(b);
        assert_eq!(adm.head(&route()), Some(r.seq));
    }

    #[test]
    fn over_the_bound_a_session_is_deflected_at_once() {
        let adm = Admission::standalone();
        let places: Vec<_> = (0..3)
            .map(|_| adm.join(&route(), 1.0, 3).unwrap())
            .collect();
        assert!(adm.join(&route(), 1.0, 3).is_none());
        assert!(
            adm.join(&["other".to_owned()], 1.0, 3).is_some(),
            "another route has its own queue"
        );
        drop(places);
        assert!(adm.join(&route(), 1.0, 3).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_releases_its_place() {
        let adm = Admission::standalone();
        let slots = Arc::new(Slots {
            free: Mutex::new(0),
            adm: Arc::clone(&adm),
        });
        // The premium waiter's client goes away while it waits (its task is aborted).
        let first = adm.join(&route(), 1.0, 2).unwrap();
        let s = Arc::clone(&slots);
        let gone = tokio::spawn(async move { wait_for(&s, first, Duration::from_secs(10)).await });
        let second = adm.join(&route(), 0.5, 2).unwrap();
        assert!(adm.join(&route(), 0.5, 2).is_none(), "full");
        tokio::time::sleep(Duration::from_millis(100)).await;
        gone.abort();
        let _ = gone.await;
        assert_eq!(adm.waiting(&route()), 1);
        slots.release();
        assert!(
            wait_for(&slots, second, Duration::from_secs(5)).await,
            "the next waiter is the head now and gets the slot"
        );
        assert_eq!(adm.waiting(&route()), 0);
    }
}
