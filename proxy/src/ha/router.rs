//! One task per virtual router: it feeds the pure state machine ([`vrrp::Router`]) with
//! received adverts, its own timer and tracking, in real (monotonic) time, and carries out
//! the actions it returns: adverts on the raw socket, addresses over netlink, gratuitous
//! ARP / unsolicited NA, transitions in the log and in the status.
//!
//! Planned handoffs (`ha release`, shutdown) drain first: the gate stops admitting
//! sessions on the router's addresses, the task keeps advertising while they finish (up to
//! the drain deadline), and only then resigns with priority 0 (RFC 5798 section 6.4.3) so
//! the backup takes over after Skew_Time.
//!
//! Invariant: the addresses are on the interface only while the machine is in Master (or
//! draining in Master); startup removes leftovers of a previous run first, because a
//! front-end killed with SIGKILL leaves its addresses behind.

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tracing::{debug, error, info, warn};

use super::{
    Hooks, announce,
    health::{Checks, tracked_priority},
    link::Netlink,
    socket::VrrpSocket,
};
use crate::{
    config::vrrp::VirtualRouter,
    vrrp::{self, Action, DecodeError, Discard, Event, Priority, Router, State, Transition},
};

/// How often tracking looks at the front-end's health and the tracked interfaces.
const TRACK_PERIOD: Duration = Duration::from_millis(250);
/// Priority of a released router: it stays a backup (so it can still take over if the
/// peer dies) but never preempts.
const RELEASED_PRIORITY: Priority = Priority::MIN;
/// At most one warning per this long for each kind of discarded advert, so a flood of
/// forged adverts cannot fill the log; the next warning says how many were not logged.
const DISCARD_LOG_PERIOD: Duration = Duration::from_secs(10);

/// What `ha status` shows for one router.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouterStatus {
    pub vrid: u8,
    pub family: String,
    pub interface: String,
    pub state: String,
    /// In effect now (after tracking or a release).
    pub priority: u8,
    pub configured_priority: u8,
    pub primary: IpAddr,
    pub master: Option<IpAddr>,
    pub vips: Vec<IpAddr>,
    pub advert_interval_cs: u16,
    pub master_adver_interval_cs: u16,
    /// Adverts discarded because their source is not a configured unicast peer.
    #[serde(default)]
    pub discarded_not_a_peer: u64,
    /// Adverts discarded because they list other virtual addresses than ours.
    #[serde(default)]
    pub discarded_other_addresses: u64,
    pub released: bool,
    pub draining: bool,
    /// Tracking checks failing now.
    pub failing: Vec<String>,
    pub last_transition: Option<TransitionRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransitionRecord {
    pub from: String,
    pub to: String,
    pub reason: String,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

pub enum Command {
    /// Drain, resign, stay backup at the lowest priority until resumed.
    Release(oneshot::Sender<String>),
    /// Back to the configured priority (preempting if that is higher than the master's).
    Resume(oneshot::Sender<String>),
    /// Drain, resign, stop the task.
    Shutdown(oneshot::Sender<String>),
    /// Stop the task at once without a word on the link, keeping the addresses: a
    /// successor process (binary upgrade) continues the role. The answer says whether this
    /// router was master.
    HandOver(oneshot::Sender<bool>),
}

/// A reload's new settings for a running router (same VRID, family and interface),
/// applied in place without a restart of the router (see [`vrrp::Router::reconfigure`]).
pub struct Reconfig {
    pub cfg: VirtualRouter,
    pub drain_deadline: Duration,
    /// A socket opened for the new settings, when the old one no longer fits them (the
    /// router moved between multicast and unicast peers).
    pub socket: Option<VrrpSocket>,
}

/// The control side's view of a running router.
#[derive(Clone)]
pub struct RouterHandle {
    pub vrid: u8,
    pub ipv6: bool,
    pub status: Arc<Mutex<RouterStatus>>,
    pub commands: mpsc::Sender<Command>,
}

impl RouterHandle {
    pub fn status(&self) -> RouterStatus {
        lock(&self.status).clone()
    }
}

fn lock(m: &Mutex<RouterStatus>) -> std::sync::MutexGuard<'_, RouterStatus> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything the task owns.
pub struct Task {
    pub cfg: VirtualRouter,
    pub ifindex: u32,
    pub primary: IpAddr,
    pub router: Router,
    pub socket: VrrpSocket,
    pub net: Netlink,
    pub hooks: Hooks,
    pub drain_deadline: Duration,
    pub status: Arc<Mutex<RouterStatus>>,
    pub commands: mpsc::Receiver<Command>,
    /// New settings from reloads, in order. Unbounded: a reload must never wait for a
    /// router that is draining.
    pub reconfigs: mpsc::UnboundedReceiver<Reconfig>,
    /// Gratuitous announcements still to send: (when the next is due, how many are left,
    /// for which addresses).
    pub garp: Option<(Instant, u32, Vec<IpAddr>)>,
    /// The last socket error logged, so a link that stays down logs once, not per advert.
    pub last_error: Option<String>,
    /// Rate limits for the warnings about discarded adverts: (not a peer, other addresses).
    pub discard_logs: [Throttle; 2],
    /// Start as master: the process this one succeeds was master of this router.
    pub take_over: bool,
}

/// Lets one log line through per period and counts what it held back, so a flood of the
/// same event costs a line per period, not a line per packet.
#[derive(Debug, Default)]
pub struct Throttle {
    next: Option<Duration>,
    held_back: u64,
}

impl Throttle {
    /// At `now` (any monotonic epoch): `Some(n)` if a line may be logged, `n` being how many
    /// were held back since the last one; `None` to stay quiet.
    pub fn admit(&mut self, now: Duration, period: Duration) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.held_back += 1;
                None
            }
            _ => {
                self.next = Some(now.saturating_add(period));
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

type Drain = Pin<Box<dyn Future<Output = usize> + Send>>;

enum Pending {
    Release(oneshot::Sender<String>),
    Shutdown(oneshot::Sender<String>),
}

impl Task {
    pub async fn run(mut self) {
        let epoch = Instant::now();
        let mut vips = self.cfg.addresses();
        // A previous run killed without a chance to resign leaves its addresses on the
        // interface; we are not master yet, so they must go (invariant above). A successor
        // of a master keeps them: it is master from its first step.
        for &vip in vips.iter().filter(|_| !self.take_over) {
            match self.net.remove(self.ifindex, vip).await {
                Ok(true) => {
                    info!(vrid = %self.cfg.vrid, %vip, "removed a virtual address left by an earlier run")
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(vrid = %self.cfg.vrid, error = %e, "could not clear a stale virtual address")
                }
            }
        }
        let mut released = false;
        let mut failing: Vec<String> = Vec::new();
        let start = if self.take_over {
            Event::TakeOver
        } else {
            Event::Startup
        };
        self.step(start, epoch.elapsed()).await;

        let mut track = tokio::time::interval(TRACK_PERIOD);
        track.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain: Option<(Drain, Pending)> = None;
        let mut commands_open = true;
        let mut reconfigs_open = true;
        loop {
            let deadline = self.router.next_deadline().map(|d| epoch + d);
            let garp_at = self.garp.as_ref().map(|(at, _, _)| *at);
            tokio::select! {
                heard = self.socket.recv() => match heard {
                    Ok(Ok(rx)) => self.heard(rx, epoch.elapsed()).await,
                    Ok(Err(e)) => self.dropped(&e),
                    Err(e) => {
                        self.socket_error(format!("receiving: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = sleep_until(deadline) => {
                    let actions = self.router.handle(Event::Timer, epoch.elapsed());
                    self.execute(actions).await;
                }
                () = sleep_until(garp_at) => {
                    if let Some((_, left, addrs)) = self.garp.take() {
                        self.announce(&addrs);
                        self.garp = (left > 1).then(|| (Instant::now() + self.cfg.garp_interval, left - 1, addrs));
                    }
                }
                _ = track.tick() => {
                    if !released {
                        let (priority, now_failing) = self.tracked().await;
                        if now_failing != failing {
                            if now_failing.is_empty() {
                                info!(vrid = %self.cfg.vrid, priority, "tracking: healthy again");
                            } else {
                                warn!(vrid = %self.cfg.vrid, priority, failing = ?now_failing, "tracking: lowering priority");
                            }
                            failing = now_failing;
                            lock(&self.status).failing = failing.clone();
                        }
                        if priority != self.router.priority().get() {
                            self.step(Event::PriorityChanged(priority), epoch.elapsed()).await;
                        }
                    }
                }
                // Held while a drain runs: the drain's addresses are the ones it started with.
                re = self.reconfigs.recv(), if reconfigs_open && drain.is_none() => match re {
                    None => reconfigs_open = false,
                    Some(re) => {
                        self.reconfigure(re, released, epoch.elapsed()).await;
                        vips = self.cfg.addresses();
                    }
                },
                cmd = self.commands.recv(), if commands_open && drain.is_none() => match cmd {
                    None => {
                        // Every handle is gone: nobody can ask for a graceful stop any more.
                        commands_open = false;
                    }
                    Some(Command::Release(reply)) => {
                        if self.router.state() == State::Master {
                            drain = Some((self.start_drain(&vips), Pending::Release(reply)));
                        } else {
                            released = true;
                            self.rebuild(RELEASED_PRIORITY, epoch.elapsed()).await;
                            self.set_released(true);
                            let _ = reply.send(format!("VRID {} ({}): not master; released (stays backup at priority {RELEASED_PRIORITY})", self.cfg.vrid, self.cfg.family()));
                        }
                    }
                    Some(Command::Resume(reply)) => {
                        if released {
                            released = false;
                            self.rebuild(self.cfg.priority, epoch.elapsed()).await;
                            self.set_released(false);
                            let _ = reply.send(format!("VRID {} ({}): resumed at priority {}", self.cfg.vrid, self.cfg.family(), self.cfg.priority));
                        } else {
                            let _ = reply.send(format!("VRID {} ({}): was not released", self.cfg.vrid, self.cfg.family()));
                        }
                    }
                    Some(Command::HandOver(reply)) => {
                        let master = self.router.state() == State::Master;
                        info!(vrid = %self.cfg.vrid, family = self.cfg.family(), master, "handed over to the successor process; this router says nothing more");
                        let _ = reply.send(master);
                        return;
                    }
                    Some(Command::Shutdown(reply)) => {
                        if self.router.state() == State::Master {
                            drain = Some((self.start_drain(&vips), Pending::Shutdown(reply)));
                        } else {
                            self.step(Event::Shutdown, epoch.elapsed()).await;
                            let _ = reply.send(format!("VRID {} ({}): stopped", self.cfg.vrid, self.cfg.family()));
                            return;
                        }
                    }
                },
                ended = async { match drain.as_mut() { Some((d, _)) => d.await, None => std::future::pending().await } } => {
                    let Some((_, pending)) = drain.take() else { continue };
                    lock(&self.status).draining = false;
                    let note = if ended == 0 {
                        "every session finished".to_owned()
                    } else {
                        format!("{ended} sessions told to end at the drain deadline")
                    };
                    match pending {
                        Pending::Release(reply) => {
                            released = true;
                            // Shutdown sends priority 0 and gives the addresses up; the
                            // rebuilt router then waits as a backup that never preempts.
                            self.rebuild(RELEASED_PRIORITY, epoch.elapsed()).await;
                            self.hooks.gate.reopen(&vips);
                            self.set_released(true);
                            let _ = reply.send(format!("VRID {} ({}): released after drain ({note}); priority 0 sent", self.cfg.vrid, self.cfg.family()));
                        }
                        Pending::Shutdown(reply) => {
                            self.step(Event::Shutdown, epoch.elapsed()).await;
                            self.hooks.gate.reopen(&vips);
                            let _ = reply.send(format!("VRID {} ({}): resigned after drain ({note}); priority 0 sent", self.cfg.vrid, self.cfg.family()));
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Applies a reload's settings in place. A master first changes the addresses on the
    /// link (removed ones go, added ones come and are announced), then advertises what
    /// changed; the role changes only through the protocol afterwards.
    async fn reconfigure(&mut self, re: Reconfig, released: bool, now: Duration) {
        let Reconfig {
            cfg,
            drain_deadline,
            socket,
        } = re;
        self.drain_deadline = drain_deadline;
        let new_socket = socket.is_some();
        if let Some(socket) = socket {
            self.socket = socket;
            self.last_error = None;
        }
        if cfg == self.cfg && !new_socket {
            return;
        }
        let old = std::mem::replace(&mut self.cfg, cfg);
        info!(vrid = %self.cfg.vrid, family = self.cfg.family(), interface = %self.cfg.interface, priority = self.cfg.priority.get(), interval_cs = self.cfg.advert_interval.cs(), max_master_interval_cs = self.cfg.max_advert_interval.cs(), preempt = self.cfg.preempt, vips = ?self.cfg.addresses(), unicast_peers = ?self.cfg.unicast_peers, new_socket, "VRRP router reconfigured by a reload");
        let mut state_cfg = self.cfg.state_config(self.primary);
        // A released router stays released, as `restarted_at` keeps it.
        let priority = if released {
            state_cfg.priority = RELEASED_PRIORITY;
            RELEASED_PRIORITY.get()
        } else {
            self.tracked().await.0
        };
        if self.router.state() == State::Master {
            let (gone, added) = address_changes(&old.vips, &self.cfg.vips);
            // Removed before added: an address whose prefix length changed is both.
            for vip in gone {
                if let Err(e) = self.net.remove(self.ifindex, vip.addr()).await {
                    error!(vrid = %self.cfg.vrid, %vip, error = %e, "cannot remove virtual address");
                }
            }
            for vip in &added {
                if let Err(e) = self.net.add(self.ifindex, *vip).await {
                    error!(vrid = %self.cfg.vrid, %vip, error = %e, "cannot add virtual address");
                }
            }
            if !added.is_empty() {
                let addrs: Vec<IpAddr> = added.iter().map(IpNet::addr).collect();
                self.hooks.gate.reopen(&addrs);
                self.start_announcing(addrs);
            }
        }
        let actions = self.router.reconfigure(state_cfg, priority, now);
        self.execute(actions).await;
        let mut st = lock(&self.status);
        st.configured_priority = self.cfg.priority.get();
        st.vips = self.cfg.addresses();
        st.advert_interval_cs = self.cfg.advert_interval.cs();
    }

    /// Announces `addrs` now, and again `garp_count - 1` times `garp_interval` apart.
    fn start_announcing(&mut self, addrs: Vec<IpAddr>) {
        self.announce(&addrs);
        self.garp = (self.cfg.garp_count > 1).then(|| {
            (
                Instant::now() + self.cfg.garp_interval,
                self.cfg.garp_count - 1,
                addrs,
            )
        });
    }

    fn start_drain(&self, vips: &[IpAddr]) -> Drain {
        info!(vrid = %self.cfg.vrid, deadline = ?self.drain_deadline, "draining before handoff: new sessions on the virtual addresses are refused");
        self.hooks.gate.drain(vips);
        lock(&self.status).draining = true;
        let gate = self.hooks.gate.clone();
        let vips = vips.to_vec();
        let deadline = self.drain_deadline;
        Box::pin(async move { gate.drained(&vips, deadline).await })
    }

    fn set_released(&self, released: bool) {
        let mut st = lock(&self.status);
        st.released = released;
        st.priority = self.router.priority().get();
    }

    /// Leaves the current role (a master resigns with priority 0) and starts over as a
    /// backup at `priority`: how release and resume move a router, the address owner
    /// included, whose priority the state machine otherwise pins.
    async fn rebuild(&mut self, priority: Priority, now: Duration) {
        let actions = self.router.handle(Event::Shutdown, now);
        self.execute(actions).await;
        self.router = self.router.restarted_at(priority);
        self.step(Event::Startup, now).await;
    }

    async fn step(&mut self, event: Event, now: Duration) {
        let actions = self.router.handle(event, now);
        self.execute(actions).await;
    }

    async fn heard(&mut self, rx: vrrp::Received, now: Duration) {
        let actions = match self.router.receive(rx.src, &rx.advert, now) {
            Ok(actions) => actions,
            // Other virtual routers share the link and the group: not ours, not news.
            Err(Discard::OtherVrid) => return,
            Err(why) => {
                let throttle = match why {
                    Discard::NotAPeer => &mut self.discard_logs[0],
                    _ => &mut self.discard_logs[1],
                };
                // A misconfigured peer or a forger on the link: worth a warning, but one
                // per period, whatever the packet rate.
                if let Some(held_back) = throttle.admit(now, DISCARD_LOG_PERIOD) {
                    warn!(vrid = %self.cfg.vrid, src = %rx.src, priority = rx.advert.priority, theirs = ?rx.advert.addresses, ours = ?self.cfg.addresses(), held_back, "discarded a VRRP advert: {why}");
                }
                self.publish_discards();
                return;
            }
        };
        self.execute(actions).await;
    }

    fn publish_discards(&self) {
        let d = self.router.discards();
        let mut st = lock(&self.status);
        st.discarded_not_a_peer = d.not_a_peer;
        st.discarded_other_addresses = d.other_addresses;
    }

    fn dropped(&self, e: &DecodeError) {
        // Other VRRP versions, wrong TTLs and bad checksums are expected on shared links;
        // they are logged at debug level only, so a flood cannot fill the log.
        debug!(vrid = %self.cfg.vrid, error = %e, "dropped a VRRP packet");
    }

    async fn tracked(&self) -> (u8, Vec<String>) {
        let track = &self.cfg.track;
        if track.is_empty() {
            return (self.cfg.priority.get(), Vec::new());
        }
        let mut interfaces_down = Vec::new();
        for (name, _) in &track.interfaces {
            match self.net.link(name).await {
                Ok(Some(l)) if l.up => {}
                Ok(_) => interfaces_down.push(name.clone()),
                Err(e) => {
                    warn!(interface = %name, error = %e, "tracking: cannot read interface state");
                    interfaces_down.push(name.clone());
                }
            }
        }
        let checks = Checks {
            listeners_ok: self.hooks.health.listeners_ok(),
            datapath_ok: self.hooks.health.datapath_ok(),
            backends_ok: self.hooks.health.backends_ok(),
            interfaces_down,
        };
        tracked_priority(self.cfg.priority.get(), track, &checks)
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Transition(t) => self.transition(t),
                Action::SendAdvert { priority } => self.advertise(priority),
                Action::AddAddresses => {
                    for vip in &self.cfg.vips {
                        match self.net.add(self.ifindex, *vip).await {
                            Ok(_) => {}
                            Err(e) => {
                                error!(vrid = %self.cfg.vrid, error = %e, "cannot add virtual address")
                            }
                        }
                    }
                    self.hooks.gate.reopen(&self.cfg.addresses());
                }
                Action::RemoveAddresses => {
                    self.garp = None;
                    for vip in self.cfg.addresses() {
                        if let Err(e) = self.net.remove(self.ifindex, vip).await {
                            error!(vrid = %self.cfg.vrid, error = %e, "cannot remove virtual address");
                        }
                    }
                }
                Action::SendGratuitous => {
                    // The first at once, the rest spread out (keepalived's repeats), so a
                    // cache or switch that missed one still learns the new master.
                    self.start_announcing(self.cfg.addresses());
                }
            }
        }
        let mut st = lock(&self.status);
        st.state = self.router.state().to_string();
        st.priority = self.router.priority().get();
        st.master = self.router.master();
        st.master_adver_interval_cs = self.router.master_adver_interval_cs();
    }

    fn transition(&self, t: Transition) {
        info!(
            vrid = %self.cfg.vrid,
            family = self.cfg.family(),
            interface = %self.cfg.interface,
            from = %t.from,
            to = %t.to,
            reason = ?t.reason,
            priority = self.router.priority().get(),
            "VRRP transition"
        );
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.hooks.events.emit(crate::events::Kind::VrrpTransition {
            vrid: self.cfg.vrid.get(),
            family: self.cfg.family().to_owned(),
            from: t.from.to_string(),
            to: t.to.to_string(),
            reason: format!("{:?}", t.reason),
        });
        lock(&self.status).last_transition = Some(TransitionRecord {
            from: t.from.to_string(),
            to: t.to.to_string(),
            reason: format!("{:?}", t.reason),
            at_unix_ms,
        });
    }

    fn socket_error(&mut self, what: String) {
        if self.last_error.as_ref() != Some(&what) {
            error!(vrid = %self.cfg.vrid, interface = %self.cfg.interface, error = %what, "VRRP socket failing (logged once until it changes)");
            self.last_error = Some(what);
        }
    }

    fn advertise(&mut self, priority: u8) {
        let adv = self.router.advertisement(priority);
        let group = [vrrp::group(self.cfg.ipv6())];
        let targets: &[IpAddr] = if self.cfg.unicast_peers.is_empty() {
            &group
        } else {
            &self.cfg.unicast_peers
        };
        let mut failed = None;
        for &dst in targets {
            if let Err(e) = self.socket.send(&adv, dst) {
                failed = Some(format!("sending: {e}"));
            }
        }
        match failed {
            Some(what) => self.socket_error(what),
            None => {
                if self.last_error.take().is_some() {
                    info!(vrid = %self.cfg.vrid, "VRRP socket working again");
                }
            }
        }
    }

    fn announce(&self, addrs: &[IpAddr]) {
        match announce::announce(&self.cfg.interface, self.ifindex, addrs) {
            Ok(n) => debug!(
                vrid = %self.cfg.vrid,
                sent = n,
                "announced virtual addresses"
            ),
            Err(e) => warn!(vrid = %self.cfg.vrid, error = %e, "cannot announce virtual addresses"),
        }
    }
}

/// What moves from `old` to `new` on the link: (to remove, to add). An address whose
/// prefix length changed is in both.
fn address_changes(old: &[IpNet], new: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let gone = old.iter().filter(|v| !new.contains(v)).copied().collect();
    let added = new.iter().filter(|v| !old.contains(v)).copied().collect();
    (gone, added)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discard_warnings_are_rate_limited_and_count_what_they_held_back() {
        let mut t = Throttle::default();
        let period = Duration::from_secs(10);
        let s = Duration::from_secs;
        assert_eq!(t.admit(s(100), period), Some(0));
        // A flood within the period: quiet, but counted.
        for k in 0..1_000u64 {
            assert_eq!(t.admit(s(100) + Duration::from_millis(k), period), None);
        }
        assert_eq!(t.admit(s(109), period), None);
        assert_eq!(t.admit(s(110), period), Some(1_001));
        assert_eq!(t.admit(s(125), period), Some(0));
    }

    #[test]
    fn address_changes_name_what_goes_and_what_comes() {
        let nets = |l: &[&str]| -> Vec<IpNet> { l.iter().map(|s| s.parse().unwrap()).collect() };
        let old = nets(&["198.18.0.25/32", "198.18.0.26/32", "198.18.0.27/32"]);
        let new = nets(&["198.18.0.25/32", "198.18.0.26/24", "198.18.0.28/32"]);
        assert_eq!(
            address_changes(&old, &new),
            (
                nets(&["198.18.0.26/32", "198.18.0.27/32"]),
                nets(&["198.18.0.26/24", "198.18.0.28/32"])
            )
        );
        assert_eq!(address_changes(&old, &old), (Vec::new(), Vec::new()));
    }
}
