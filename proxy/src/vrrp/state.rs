//! The VRRPv3 state machine of RFC 5798 section 6.4 (RFC 9568 section 6.4), as a pure
//! function of (state, event, now).
//!
//! [`Router::handle`] takes one [`Event`] and the current time and returns the [`Action`]s the
//! caller must carry out, in order: send an advert, add or remove the virtual addresses,
//! announce them, and a [`Transition`] record to log. Time is a [`Duration`] since any epoch
//! the caller likes (a monotonic clock's start); the machine never reads a clock. After each
//! call the caller arms one timer for [`Router::next_deadline`] and, when it passes, calls
//! `handle(Event::Timer, now)`. A timer event that arrives early or after the deadline was
//! replaced is ignored, so the caller needs no timer cancellation.
//!
//! The two RFC timers map onto that single deadline: in Master it is the Adver_Timer, in
//! Backup the Master_Down_Timer, in Initialize there is none.
//!
//! Hardening on receipt ([`Router::receive`]): with unicast peers configured only they are
//! heard, an advert must list exactly our virtual addresses (keepalived's `vrrp_strict`),
//! and the interval a backup learns from a master is capped by
//! [`Config::max_master_interval`], so a forged advert announcing 40.95 s cannot stretch
//! Master_Down_Interval to two minutes.
//!
//! Invariant: the router's priority is 255 exactly when it is configured as address owner,
//! otherwise 1..=254 (RFC 5798 section 5.2.4); tracking can move it only within that range.
//! A [`Router`] is built from typed values ([`super::types`]), so building one cannot fail.

use std::{fmt, net::IpAddr, time::Duration};

use super::{
    packet::Advertisement,
    types::{Interval, Priority, VirtualAddresses, Vrid},
};

/// One virtual router of one address family (section 6.1 parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub vrid: Vrid,
    /// [`Priority::OWNER`] makes this router the address owner; backups use 1..=254.
    pub priority: Priority,
    /// Advertisement_Interval: how often this router advertises as master.
    pub advert_interval: Interval,
    /// The largest Master_Adver_Interval a backup adopts from a master's adverts; a larger
    /// advertised interval is taken as this one. RFC 5798 has a backup learn the master's
    /// interval, and VRRPv3 adverts are not authenticated: without a cap, one forged advert
    /// of 4095 cs followed by silence keeps the backups waiting over two minutes.
    pub max_master_interval: Interval,
    /// Preempt_Mode: whether a higher-priority backup takes over from a lower-priority master.
    /// The address owner always preempts (section 6.1).
    pub preempt: bool,
    /// After startup, behave as if `preempt` were false for this long (keepalived's
    /// `preempt_delay`): a restarted front-end first learns who is master before taking over.
    pub preempt_delay: Duration,
    /// This router's primary address on the link: the advert source and the tie-breaker. Of
    /// the family of `addresses` (the caller picks it by that family).
    pub primary: IpAddr,
    /// The virtual addresses.
    pub addresses: VirtualAddresses,
    /// When not empty, the only sources whose adverts are heard (unicast VRRP).
    pub peers: Vec<IpAddr>,
}

impl Config {
    /// A backup with the RFC defaults: priority 100, 1 s adverts, preemption on, no delay,
    /// learned intervals capped at 10 s, multicast (any peer).
    pub fn new(vrid: Vrid, primary: IpAddr, addresses: VirtualAddresses) -> Self {
        Self {
            vrid,
            priority: Priority::DEFAULT,
            advert_interval: Interval::DEFAULT,
            max_master_interval: DEFAULT_MAX_MASTER_INTERVAL,
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary,
            addresses,
            peers: Vec::new(),
        }
    }
}

/// Default cap on a learned Master_Adver_Interval: 10 s, ten times the RFC's default
/// interval, so any sane master is followed as it advertises while a forged 40.95 s is not.
pub const DEFAULT_MAX_MASTER_INTERVAL: Interval = match Interval::from_cs(1000) {
    Some(i) => i,
    None => Interval::MAX,
};

/// Why [`Router::receive`] did not act on an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    #[error("advert for another VRID")]
    OtherVrid,
    #[error("advert from a host that is not a configured unicast peer")]
    NotAPeer,
    #[error("advert lists other virtual addresses than ours")]
    OtherAddresses,
}

/// How many adverts [`Router::receive`] discarded, by reason (other VRIDs are normal on a
/// shared link and not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discards {
    pub not_a_peer: u64,
    pub other_addresses: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Initialize,
    Backup,
    Master,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initialize => "Initialize",
            State::Backup => "Backup",
            State::Master => "Master",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The virtual router is enabled (section 6.4.1).
    Startup,
    /// The virtual router is disabled; a master resigns with a priority 0 advert.
    Shutdown,
    /// Enabled in a process that succeeds a master of this router on the same host (a
    /// binary upgrade): master at once, with the addresses it already holds, advertising
    /// now, so that no backup's Master_Down_Timer runs out in between.
    TakeOver,
    /// A valid advert for this VRID (decoded and TTL-checked by [`super::packet`]).
    Advert {
        /// Source address of the advert's IP header: the sender's primary address.
        src: IpAddr,
        priority: u8,
        max_adver_int_cs: u16,
    },
    /// The deadline from [`Router::next_deadline`] has passed.
    Timer,
    /// Tracking moved this router's priority (clamped to 1..=254; ignored by an owner).
    PriorityChanged(u8),
}

impl Event {
    /// The event for a decoded advert that came from `src`.
    pub fn advert(src: IpAddr, adv: &Advertisement) -> Self {
        Event::Advert {
            src,
            priority: adv.priority,
            max_adver_int_cs: adv.max_adver_int_cs,
        }
    }
}

/// Why a transition happened, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Enabled as a non-owner: wait for a master (section 6.4.1).
    Startup,
    /// Enabled as the address owner (priority 255): master at once.
    AddressOwner,
    /// No advert for Master_Down_Interval: the master is gone (or is lower and we preempt).
    MasterDown,
    /// The master resigned with priority 0 and Skew_Time passed.
    MasterResigned,
    /// A peer's advert outranks us: higher priority, or equal priority and higher address.
    PeerPreferred {
        src: IpAddr,
        priority: u8,
    },
    Shutdown,
    /// A successor process continues this host's mastership (see [`Event::TakeOver`]).
    TakenOver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} ({:?})", self.from, self.to, self.reason)
    }
}

/// What the caller must do, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Record for the log (comes first in the list it is part of).
    Transition(Transition),
    /// Send an advert with this priority; [`Router::advertisement`] builds it.
    SendAdvert { priority: u8 },
    /// Take the virtual addresses (and start answering ARP / ND for them).
    AddAddresses,
    /// Give the virtual addresses up.
    RemoveAddresses,
    /// Gratuitous ARP (IPv4) or unsolicited Neighbor Advertisement (IPv6) for each virtual
    /// address, so the LAN's caches and switches learn the new master (section 6.4.2).
    SendGratuitous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Master: next advert is due.
    Adver(Duration),
    /// Backup: the master is presumed down; `resigned` if it said so with priority 0.
    MasterDown { at: Duration, resigned: bool },
}

/// One virtual router's protocol state. Create with [`Router::new`], drive with
/// [`Router::receive`] for adverts from the network and [`Router::handle`] for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    config: Config,
    priority: Priority,
    state: State,
    /// Master_Adver_Interval: the current master's interval, learned from its adverts
    /// (capped by `config.max_master_interval`).
    master_adver_interval: Interval,
    timer: Option<Timer>,
    /// Preemption is held off until then (set at startup from `preempt_delay`).
    preempt_after: Duration,
    /// Who is master as far as this router knows: itself in Master, the sender of the last
    /// advert that reset the Master_Down_Timer in Backup, nobody after a resignation.
    master: Option<IpAddr>,
    discards: Discards,
}

impl Router {
    /// A router in Initialize; every value of `config` was checked when it was parsed.
    pub fn new(config: Config) -> Self {
        Self {
            priority: config.priority,
            master_adver_interval: config.advert_interval,
            config,
            state: State::Initialize,
            timer: None,
            preempt_after: Duration::ZERO,
            master: None,
            discards: Discards::default(),
        }
    }

    /// A router in Initialize with this one's configuration at `priority`, keeping the
    /// discard counts (they describe the link, not the role): how a release or a resume
    /// starts a router over, the address owner included.
    pub fn restarted_at(&self, priority: Priority) -> Self {
        let mut config = self.config.clone();
        config.priority = priority;
        Self {
            discards: self.discards,
            ..Self::new(config)
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The current priority (the configured one, moved by [`Event::PriorityChanged`]).
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The current master's primary address, if known (for status displays).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// Master_Adver_Interval: the interval learned from the master's adverts in Backup.
    pub fn master_adver_interval_cs(&self) -> u16 {
        self.master_adver_interval.cs()
    }

    /// Adverts discarded by [`Router::receive`] so far.
    pub fn discards(&self) -> Discards {
        self.discards
    }

    /// Skew_Time for the current priority and learned interval.
    pub fn skew_time(&self) -> Duration {
        skew_time(self.priority.get(), self.master_adver_interval.cs())
    }

    /// Master_Down_Interval for the current priority and learned interval.
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.priority.get(), self.master_adver_interval.cs())
    }

    /// When the caller must next deliver [`Event::Timer`]; `None` in Initialize.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.timer.map(|t| match t {
            Timer::Adver(at) | Timer::MasterDown { at, .. } => at,
        })
    }

    /// The advert to send for [`Action::SendAdvert`]: our VRID, own interval and addresses.
    pub fn advertisement(&self, priority: u8) -> Advertisement {
        Advertisement {
            vrid: self.config.vrid.get(),
            priority,
            max_adver_int_cs: self.config.advert_interval.cs(),
            addresses: self.config.addresses.to_vec(),
        }
    }

    /// An advert decoded (and TTL-checked) from `src`: checked against the configuration
    /// (VRID, unicast peers, address list), then handled as [`Event::Advert`]. A discarded
    /// advert changes nothing but the [`Router::discards`] count; the caller logs it.
    pub fn receive(
        &mut self,
        src: IpAddr,
        adv: &Advertisement,
        now: Duration,
    ) -> Result<Vec<Action>, Discard> {
        if adv.vrid != self.config.vrid.get() {
            return Err(Discard::OtherVrid);
        }
        // Our own advert looped back, or the other family's router of this VRID: neither is
        // a peer, nor a discard worth counting (handle ignores both too).
        if src == self.config.primary || src.is_ipv6() != self.config.primary.is_ipv6() {
            return Ok(Vec::new());
        }
        if !self.config.peers.is_empty() && !self.config.peers.contains(&src) {
            self.discards.not_a_peer += 1;
            return Err(Discard::NotAPeer);
        }
        // A master whose list differs would leave some of our addresses served by nobody
        // (or claim ones we do not carry), so its adverts are ignored, as keepalived's
        // `vrrp_strict` does; RFC 5798 section 7.1 leaves the check to the implementation.
        if !self.config.addresses.same_set(&adv.addresses) {
            self.discards.other_addresses += 1;
            return Err(Discard::OtherAddresses);
        }
        Ok(self.handle(Event::advert(src, adv), now))
    }

    /// Applies one event at time `now` and returns what to do about it.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        match event {
            Event::Startup => self.startup(now),
            Event::TakeOver => self.take_over(now),
            Event::Shutdown => self.shutdown(),
            Event::Advert {
                src,
                priority,
                max_adver_int_cs,
            } => self.advert(src, priority, max_adver_int_cs, now),
            Event::Timer => self.timer(now),
            Event::PriorityChanged(priority) => {
                // The owner's 255 is what makes it the owner (section 5.2.4); tracking
                // cannot make a backup an owner or a resigning master either.
                if !self.config.priority.is_owner() {
                    self.priority = Priority::backup_clamped(priority);
                }
                // The new value takes effect through the next advert sent or received: a
                // master's lower priority lets a preempting backup's Master_Down_Timer run
                // out, a backup's higher one makes it discard the master's adverts.
                Vec::new()
            }
        }
    }

    /// A reload's new configuration for this running router, which keeps its state: no
    /// transition happens here, so a change that should not move the master moves nothing.
    /// `priority` is the one to run at now (the configured one after tracking, or a
    /// release's); the address owner runs at 255 whatever it says. The primary address is
    /// the router's own and stays.
    ///
    /// A master sends an advert at once when what it advertises changed (priority,
    /// interval, addresses) and starts its Adver_Timer over at the new interval: a peer
    /// that now outranks it and preempts learns of it without waiting, and takes over
    /// through its own Master_Down_Timer (the one transition a lower priority asks for).
    /// A backup whose priority now exceeds the master's takes over the same way when it
    /// preempts: it discards the master's next adverts. A backup caps the interval it
    /// learned by the new bound at once. `preempt_delay` holds off preemption after a
    /// start, so a new value counts from the router's next start.
    ///
    /// The caller adds and removes the addresses that changed while in Master: only it
    /// knows their prefixes and the link.
    pub fn reconfigure(&mut self, config: Config, priority: u8, now: Duration) -> Vec<Action> {
        let old = std::mem::replace(&mut self.config, config);
        self.config.primary = old.primary;
        let priority = if self.config.priority.is_owner() {
            Priority::OWNER
        } else {
            Priority::backup_clamped(priority)
        };
        let priority_changed = priority != self.priority;
        self.priority = priority;
        match self.state {
            State::Initialize => {
                self.master_adver_interval = self.config.advert_interval;
                Vec::new()
            }
            State::Backup => {
                self.master_adver_interval = self
                    .master_adver_interval
                    .min(self.config.max_master_interval);
                Vec::new()
            }
            State::Master => {
                self.master_adver_interval = self.config.advert_interval;
                let advertised_changed = priority_changed
                    || old.advert_interval != self.config.advert_interval
                    || old.addresses != self.config.addresses;
                if !advertised_changed {
                    return Vec::new();
                }
                self.timer = Some(Timer::Adver(self.advert_due(now)));
                vec![Action::SendAdvert {
                    priority: self.priority.get(),
                }]
            }
        }
    }

    /// Section 6.4.1.
    fn startup(&mut self, now: Duration) -> Vec<Action> {
        if self.state != State::Initialize {
            return Vec::new();
        }
        self.preempt_after = now.saturating_add(self.config.preempt_delay);
        if self.priority.is_owner() {
            return self.become_master(now, Reason::AddressOwner);
        }
        self.master_adver_interval = self.config.advert_interval;
        self.master = None;
        self.arm_master_down(now, self.master_down_interval(), false);
        vec![self.enter(State::Backup, Reason::Startup)]
    }

    /// [`Event::TakeOver`]: the predecessor's mastership continues. No gratuitous ARP: the
    /// addresses stay on the same interface and answer from the same link-layer address.
    fn take_over(&mut self, now: Duration) -> Vec<Action> {
        if self.state != State::Initialize {
            return Vec::new();
        }
        self.preempt_after = now;
        self.timer = Some(Timer::Adver(self.advert_due(now)));
        self.master = Some(self.config.primary);
        vec![
            self.enter(State::Master, Reason::TakenOver),
            Action::AddAddresses,
            Action::SendAdvert {
                priority: self.priority.get(),
            },
        ]
    }

    /// Sections 6.4.2 and 6.4.3, Shutdown.
    fn shutdown(&mut self) -> Vec<Action> {
        match self.state {
            State::Initialize => Vec::new(),
            State::Backup => {
                self.timer = None;
                self.master = None;
                vec![self.enter(State::Initialize, Reason::Shutdown)]
            }
            State::Master => {
                self.timer = None;
                self.master = None;
                // Priority 0 tells the backups to take over after Skew_Time rather than a
                // whole Master_Down_Interval.
                vec![
                    self.enter(State::Initialize, Reason::Shutdown),
                    Action::SendAdvert { priority: 0 },
                    Action::RemoveAddresses,
                ]
            }
        }
    }

    fn timer(&mut self, now: Duration) -> Vec<Action> {
        let Some(timer) = self.timer else {
            return Vec::new();
        };
        match timer {
            Timer::Adver(at) if now >= at => {
                self.timer = Some(Timer::Adver(self.advert_due(now)));
                vec![Action::SendAdvert {
                    priority: self.priority.get(),
                }]
            }
            Timer::MasterDown { at, resigned } if now >= at => {
                let reason = if resigned {
                    Reason::MasterResigned
                } else {
                    Reason::MasterDown
                };
                self.become_master(now, reason)
            }
            // Early: a stale or spurious wake-up.
            _ => Vec::new(),
        }
    }

    fn advert(
        &mut self,
        src: IpAddr,
        priority: u8,
        interval_cs: u16,
        now: Duration,
    ) -> Vec<Action> {
        let primary = self.config.primary;
        // Our own advert looped back, or an advert of the other family's virtual router of
        // the same VRID (the families are separate instances, section 1): neither is a peer.
        // Without the first check a master would answer its own echo with another advert.
        if src == primary || src.is_ipv6() != primary.is_ipv6() {
            return Vec::new();
        }
        // The decoder rejects these; an event built by hand must not break the timers.
        let Some(advertised) = Interval::from_cs(interval_cs) else {
            return Vec::new();
        };
        // What a backup adopts as Master_Adver_Interval: the advertised one up to the cap
        // (see `Config::max_master_interval`). A master advertising slower than the cap is
        // still followed while its adverts come within 3 capped intervals plus skew.
        let learned = advertised.min(self.config.max_master_interval);
        let ours = self.priority.get();
        match self.state {
            State::Initialize => Vec::new(),
            State::Backup => {
                if priority == 0 {
                    self.master = None;
                    self.arm_master_down(now, self.skew_time(), true);
                } else if !self.preempts(now) || priority >= ours {
                    self.master = Some(src);
                    self.master_adver_interval = learned;
                    self.arm_master_down(now, self.master_down_interval(), false);
                }
                // Otherwise a lower-priority master while we preempt: discard it, so our
                // Master_Down_Timer runs out and we take over.
                Vec::new()
            }
            State::Master => {
                if priority == 0 {
                    // Another master resigned; make sure the backups hear a live one now.
                    self.timer = Some(Timer::Adver(self.advert_due(now)));
                    vec![Action::SendAdvert { priority: ours }]
                } else if priority > ours || (priority == ours && outranks(src, primary)) {
                    self.master = Some(src);
                    self.master_adver_interval = learned;
                    self.arm_master_down(now, self.master_down_interval(), false);
                    vec![
                        self.enter(State::Backup, Reason::PeerPreferred { src, priority }),
                        Action::RemoveAddresses,
                    ]
                } else {
                    // RFC 9568 section 6.4.3: discard, but assert mastership at once so the
                    // sender steps down and learning bridges relearn our port. The other
                    // master announced the addresses too (split brain), so hosts' ARP / ND
                    // caches may point at it: announce them again.
                    vec![
                        Action::SendAdvert {
                            priority: self.priority.get(),
                        },
                        Action::SendGratuitous,
                    ]
                }
            }
        }
    }

    /// Section 6.4.2, Master_Down_Timer fired (and 6.4.1 for the owner).
    fn become_master(&mut self, now: Duration, reason: Reason) -> Vec<Action> {
        self.timer = Some(Timer::Adver(self.advert_due(now)));
        self.master = Some(self.config.primary);
        // Addresses first so that by the time the announcements reach the LAN we answer
        // for them.
        vec![
            self.enter(State::Master, reason),
            Action::AddAddresses,
            Action::SendAdvert {
                priority: self.priority.get(),
            },
            Action::SendGratuitous,
        ]
    }

    fn enter(&mut self, to: State, reason: Reason) -> Action {
        let from = self.state;
        self.state = to;
        Action::Transition(Transition { from, to, reason })
    }

    fn arm_master_down(&mut self, now: Duration, after: Duration, resigned: bool) {
        self.timer = Some(Timer::MasterDown {
            at: now.saturating_add(after),
            resigned,
        });
    }

    fn advert_due(&self, now: Duration) -> Duration {
        now.saturating_add(self.config.advert_interval.duration())
    }

    /// Preempt_Mode, held off for `preempt_delay` after startup; the owner always preempts.
    fn preempts(&self, now: Duration) -> bool {
        self.priority.is_owner() || (self.config.preempt && now >= self.preempt_after)
    }
}

/// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256 (RFC 5798 section 6.1).
///
/// Computed in nanoseconds, not truncated to centiseconds: at priority 100 and 1 s adverts
/// it is 0.609375 s, and keepalived's 3.61 s failover (Master_Down_Interval at priority 100) depends on that
/// precision.
pub fn skew_time(priority: u8, master_adver_interval_cs: u16) -> Duration {
    let weight = 256 - u64::from(priority);
    Duration::from_nanos(weight * u64::from(master_adver_interval_cs) * 10_000_000 / 256)
}

/// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time (RFC 5798 section 6.1).
pub fn master_down_interval(priority: u8, master_adver_interval_cs: u16) -> Duration {
    centiseconds(master_adver_interval_cs) * 3 + skew_time(priority, master_adver_interval_cs)
}

fn centiseconds(cs: u16) -> Duration {
    Duration::from_millis(u64::from(cs) * 10)
}

/// Whether `peer` wins a priority tie against `ours`: the addresses compared as unsigned
/// integers in network byte order (RFC 5798 section 6.4.3). Callers pass one family.
fn outranks(peer: IpAddr, ours: IpAddr) -> bool {
    match (peer, ours) {
        (IpAddr::V4(p), IpAddr::V4(o)) => p.to_bits() > o.to_bits(),
        (IpAddr::V6(p), IpAddr::V6(o)) => p.to_bits() > o.to_bits(),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
