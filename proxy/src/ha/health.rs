//! The front-end's own health as tracking sees it: whether the proxy's
//! accept loops run and the data path is attached, reported by the daemon, plus interface
//! state read by the router tasks; and the pure rule that turns failing checks into a
//! lower priority, so a front-end that cannot serve hands its addresses over.
//!
//! "No healthy back-end" is reported by the load writer: when a service of this front-end
//! has no back-end left that can take a session, the front-end cannot serve it either.
//!
//! Invariant: the tracked priority of a non-owner stays within 1..=254 whatever fails; an
//! address owner is never tracked (config refuses it).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use crate::config::vrrp::Track;

/// Shared between the daemon (which reports) and the router tasks (which read).
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    listeners_live: AtomicUsize,
    /// How many accept loops ran when HA started; fewer later means one stopped.
    listeners_expected: AtomicUsize,
    datapath_attached: AtomicBool,
    /// Some service has no back-end that can take a session (set by the load writer).
    backends_exhausted: AtomicBool,
}

/// Held by an accept loop for as long as it runs.
pub struct ListenerAlive(Health);

impl Drop for ListenerAlive {
    fn drop(&mut self) {
        self.0.inner.listeners_live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Health {
    /// Called at the top of an accept loop; the loop counts as running while the value lives.
    pub fn listener_alive(&self) -> ListenerAlive {
        self.inner.listeners_live.fetch_add(1, Ordering::AcqRel);
        ListenerAlive(self.clone())
    }

    pub fn set_datapath_attached(&self, attached: bool) {
        self.inner
            .datapath_attached
            .store(attached, Ordering::Release);
    }

    /// Takes the number of running accept loops as the healthy number.
    pub(crate) fn arm(&self) {
        let live = self.inner.listeners_live.load(Ordering::Acquire);
        self.inner.listeners_expected.store(live, Ordering::Release);
    }

    pub fn listeners_ok(&self) -> bool {
        self.inner.listeners_live.load(Ordering::Acquire)
            >= self.inner.listeners_expected.load(Ordering::Acquire)
    }

    pub fn set_backends_exhausted(&self, exhausted: bool) {
        self.inner
            .backends_exhausted
            .store(exhausted, Ordering::Release);
    }

    pub fn backends_ok(&self) -> bool {
        !self.inner.backends_exhausted.load(Ordering::Acquire)
    }

    pub fn datapath_ok(&self) -> bool {
        self.inner.datapath_attached.load(Ordering::Acquire)
    }
}

/// The results of one round of checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    pub listeners_ok: bool,
    pub datapath_ok: bool,
    pub backends_ok: bool,
    /// Tracked interfaces that are not up and running.
    pub interfaces_down: Vec<String>,
}

/// Priority after subtracting the weights of failing checks (keepalived's `weight`
/// semantics), clamped to 1 so the router stays a backup candidate rather than a resigning
/// master; and the names of what failed, for status and logs.
pub fn tracked_priority(configured: u8, track: &Track, checks: &Checks) -> (u8, Vec<String>) {
    let mut penalty = 0u32;
    let mut failing = Vec::new();
    if track.listeners > 0 && !checks.listeners_ok {
        penalty += u32::from(track.listeners);
        failing.push("listeners".to_owned());
    }
    if track.datapath > 0 && !checks.datapath_ok {
        penalty += u32::from(track.datapath);
        failing.push("datapath".to_owned());
    }
    if track.backends > 0 && !checks.backends_ok {
        penalty += u32::from(track.backends);
        failing.push("back-ends".to_owned());
    }
    for (name, weight) in &track.interfaces {
        if checks.interfaces_down.contains(name) {
            penalty += u32::from(*weight);
            failing.push(format!("interface {name}"));
        }
    }
    let priority = u32::from(configured).saturating_sub(penalty).max(1);
    (priority as u8, failing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track() -> Track {
        Track {
            listeners: 50,
            datapath: 60,
            backends: 0,
            interfaces: vec![("int0".into(), 70), ("int1".into(), 10)],
        }
    }

    fn ok() -> Checks {
        Checks {
            listeners_ok: true,
            datapath_ok: true,
            backends_ok: true,
            interfaces_down: Vec::new(),
        }
    }

    #[test]
    fn a_service_without_back_ends_lowers_the_priority() {
        let t = Track {
            backends: 80,
            ..Track::default()
        };
        let checks = Checks {
            backends_ok: false,
            ..ok()
        };
        assert_eq!(
            tracked_priority(150, &t, &checks),
            (70, vec!["back-ends".to_owned()])
        );
        assert_eq!(tracked_priority(150, &t, &ok()).0, 150);
    }

    #[test]
    fn weights_add_up_and_clamp_at_one() {
        assert_eq!(tracked_priority(150, &track(), &ok()), (150, vec![]));
        let c = Checks {
            listeners_ok: false,
            ..ok()
        };
        assert_eq!(
            tracked_priority(150, &track(), &c),
            (100, vec!["listeners".to_owned()])
        );
        let c = Checks {
            interfaces_down: vec!["int0".into(), "other".into()],
            ..ok()
        };
        assert_eq!(
            tracked_priority(150, &track(), &c),
            (80, vec!["interface int0".to_owned()])
        );
        let all = Checks {
            listeners_ok: false,
            datapath_ok: false,
            backends_ok: false,
            interfaces_down: vec!["int0".into(), "int1".into()],
        };
        assert_eq!(tracked_priority(150, &track(), &all).0, 1);
    }

    #[test]
    fn untracked_checks_do_not_count() {
        let c = Checks {
            listeners_ok: false,
            datapath_ok: false,
            backends_ok: false,
            interfaces_down: vec!["int0".into()],
        };
        assert_eq!(tracked_priority(100, &Track::default(), &c), (100, vec![]));
    }

    #[test]
    fn listener_liveness() {
        let h = Health::default();
        let a = h.listener_alive();
        let b = h.listener_alive();
        h.arm();
        assert!(h.listeners_ok());
        drop(a);
        assert!(!h.listeners_ok());
        let _c = h.listener_alive();
        assert!(h.listeners_ok());
        drop(b);
        assert!(!h.datapath_ok());
        h.set_datapath_attached(true);
        assert!(h.datapath_ok());
    }
}
