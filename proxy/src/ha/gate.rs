//! The drain gate: which virtual addresses still take new sessions, and how many sessions
//! are running on each, so a planned handoff (`robustifier ha release`) can stop accepting on an
//! address, wait for its sessions, and only then give the address away.
//!
//! The accept loops ask [`Gate::admit`] with the connection's local address (the VIP the
//! client dialled: the steering program keeps it as the accepted socket's local address)
//! and hold the returned [`Admitted`] for the session's life.
//!
//! Invariant: the count for an address is exactly the number of live [`Admitted`] values
//! for it; a draining address admits nobody.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// After the drain deadline, how long sessions have to reach a boundary and say goodbye
/// (421 / -ERR) before they are cut.
pub const GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken whenever a session ends, for [`Gate::drained`].
    idle: Notify,
}

#[derive(Default)]
struct State {
    draining: HashSet<IpAddr>,
    active: HashMap<IpAddr, usize>,
    /// Cancelled when the drain deadline passes: the sessions still running must end.
    ended: HashMap<IpAddr, CancellationToken>,
    /// Cancelled when the drain starts: sessions should end at their next boundary.
    closing: HashMap<IpAddr, CancellationToken>,
}

/// One admitted session on `addr`; dropping it ends the count.
pub struct Admitted {
    gate: Gate,
    addr: IpAddr,
    ended: CancellationToken,
    closing: CancellationToken,
}

impl Admitted {
    /// Resolves when the session must end because its address is being handed over.
    pub fn ended(&self) -> WaitForCancellationFuture<'_> {
        self.ended.cancelled()
    }

    /// Fires when the drain deadline has passed: the session should end politely at its
    /// next boundary (SMTP 421 between transactions, POP3 -ERR before login) within
    /// [`GRACE`]; [`Admitted::ended`] cuts it after that.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        {
            let mut state = self.gate.lock();
            if let Some(n) = state.active.get_mut(&self.addr) {
                *n -= 1;
                if *n == 0 {
                    state.active.remove(&self.addr);
                }
            }
        }
        self.gate.inner.idle.notify_waiters();
    }
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counts half-updated (each
        // critical section is a single map operation), so a poisoned lock is still sound.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets a session to local address `addr` start, unless the address is draining.
    pub fn admit(&self, addr: IpAddr) -> Option<Admitted> {
        let addr = addr.to_canonical();
        let mut state = self.lock();
        if state.draining.contains(&addr) {
            return None;
        }
        *state.active.entry(addr).or_default() += 1;
        let ended = state.ended.entry(addr).or_default().clone();
        let closing = state.closing.entry(addr).or_default().clone();
        Some(Admitted {
            gate: self.clone(),
            addr,
            ended,
            closing,
        })
    }

    /// New sessions to `addrs` are refused from now on.
    pub fn drain(&self, addrs: &[IpAddr]) {
        let mut state = self.lock();
        state
            .draining
            .extend(addrs.iter().map(|a| a.to_canonical()));
    }

    /// New sessions to `addrs` are admitted again.
    pub fn reopen(&self, addrs: &[IpAddr]) {
        let mut state = self.lock();
        for a in addrs {
            state.draining.remove(&a.to_canonical());
        }
    }

    pub fn is_draining(&self, addr: IpAddr) -> bool {
        self.lock().draining.contains(&addr.to_canonical())
    }

    /// Sessions running on any of `addrs`.
    pub fn active(&self, addrs: &[IpAddr]) -> usize {
        let state = self.lock();
        addrs
            .iter()
            .map(|a| state.active.get(&a.to_canonical()).copied().unwrap_or(0))
            .sum()
    }

    /// Waits until no session runs on `addrs` or `deadline` passes; then tells the sessions
    /// still running to end ([`Admitted::ended`]) and returns how many there were.
    pub async fn drained(&self, addrs: &[IpAddr], deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            // Register for the wake-up before looking, so an end between the look and the
            // wait is not missed.
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active(addrs) == 0 {
                return 0;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                let left = self.active(addrs);
                self.close_politely(addrs, GRACE).await;
                self.end(addrs);
                return left;
            }
        }
    }

    /// Asks the sessions on `addrs` to end at their next boundary and waits up to `grace`
    /// for them; the sessions of a later reopen get fresh tokens.
    async fn close_politely(&self, addrs: &[IpAddr], grace: Duration) {
        {
            let mut state = self.lock();
            for a in addrs {
                if let Some(token) = state.closing.remove(&a.to_canonical()) {
                    token.cancel();
                }
            }
        }
        let until = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active(addrs) == 0 || tokio::time::timeout_at(until, notified).await.is_err() {
                return;
            }
        }
    }

    /// Tells every session on `addrs` to end now.
    pub fn end(&self, addrs: &[IpAddr]) {
        let mut state = self.lock();
        for a in addrs {
            if let Some(token) = state.ended.remove(&a.to_canonical()) {
                token.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_and_refuses_while_draining() {
        let gate = Gate::default();
        let vip = ip("198.18.0.25");
        let a = gate.admit(vip).unwrap();
        // An IPv4-mapped local address (IPv6 socket) counts for the IPv4 VIP.
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 18, 0, 25).to_ipv6_mapped());
        let b = gate.admit(mapped).unwrap();
        assert_eq!(gate.active(&[vip]), 2);
        gate.drain(&[vip]);
        assert!(gate.admit(vip).is_none());
        assert!(
            gate.admit(ip("198.18.0.110")).is_some(),
            "other VIPs are not affected"
        );
        drop(a);
        assert_eq!(gate.active(&[vip]), 1);
        drop(b);
        assert_eq!(gate.active(&[vip]), 0);
        gate.reopen(&[vip]);
        assert!(gate.admit(vip).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_sessions_then_ends_the_rest() {
        let gate = Gate::default();
        let vip = ip("198.18.0.25");
        let quick = gate.admit(vip).unwrap();
        let slow = gate.admit(vip).unwrap();
        gate.drain(&[vip]);
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.drained(&[vip], Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(quick);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        // At the deadline the slow session is told to end.
        let left = waiter.await.unwrap();
        assert_eq!(left, 1);
        slow.ended().await;
    }

    #[tokio::test(start_paused = true)]
    async fn drained_returns_at_once_when_idle_and_when_the_last_ends() {
        let gate = Gate::default();
        let vip = ip("2001:db8::25");
        assert_eq!(gate.drained(&[vip], Duration::from_secs(5)).await, 0);
        let s = gate.admit(vip).unwrap();
        let g = gate.clone();
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move { g.drained(&[vip], Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(s);
        assert_eq!(waiter.await.unwrap(), 0);
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
