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
//! Invariant: the router's priority is 255 exactly when it is configured as address owner,
//! otherwise 1..=254 (RFC 5798 section 5.2.4); tracking can move it only within that range.

use std::{fmt, net::IpAddr, time::Duration};

use super::packet::{Advertisement, MAX_ADVER_INT_CS};

/// Priority of the router that owns the virtual addresses (section 5.2.4).
pub const OWNER_PRIORITY: u8 = 255;
/// Default priority of a backup (section 5.2.4 / 6.1).
pub const DEFAULT_PRIORITY: u8 = 100;
/// Default Advertisement_Interval: 1 s (section 6.1).
pub const DEFAULT_INTERVAL_CS: u16 = 100;

/// One virtual router of one address family (section 6.1 parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// VRID, 1..=255.
    pub vrid: u8,
    /// 255 makes this router the address owner; backups use 1..=254.
    pub priority: u8,
    /// Advertisement_Interval in centiseconds, 1..=4095.
    pub advert_interval_cs: u16,
    /// Preempt_Mode: whether a higher-priority backup takes over from a lower-priority master.
    /// The address owner always preempts (section 6.1).
    pub preempt: bool,
    /// After startup, behave as if `preempt` were false for this long (keepalived's
    /// `preempt_delay`): a restarted front-end first learns who is master before taking over.
    pub preempt_delay: Duration,
    /// This router's primary address on the link: the advert source and the tie-breaker.
    pub primary: IpAddr,
    /// The virtual addresses, all of the primary's family.
    pub addresses: Vec<IpAddr>,
}

impl Config {
    /// A backup with the RFC defaults: priority 100, 1 s adverts, preemption on, no delay.
    pub fn new(vrid: u8, primary: IpAddr, addresses: Vec<IpAddr>) -> Self {
        Self {
            vrid,
            priority: DEFAULT_PRIORITY,
            advert_interval_cs: DEFAULT_INTERVAL_CS,
            preempt: true,
            preempt_delay: Duration::ZERO,
            primary,
            addresses,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("VRID 0 is not valid; use 1..=255")]
    ZeroVrid,
    #[error("VRID {vrid}: priority 0 means a master resigning; use 1..=254, or 255 for the owner")]
    ZeroPriority { vrid: u8 },
    #[error("VRID {vrid}: advert interval {cs} cs is outside 1..=4095")]
    BadInterval { vrid: u8, cs: u16 },
    #[error("VRID {vrid}: no virtual addresses")]
    NoAddresses { vrid: u8 },
    #[error("VRID {vrid}: {count} virtual addresses, an advert carries at most 255")]
    TooManyAddresses { vrid: u8, count: usize },
    #[error("VRID {vrid}: virtual address {addr} is not of the family of primary {primary}")]
    FamilyMismatch {
        vrid: u8,
        addr: IpAddr,
        primary: IpAddr,
    },
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
/// [`Router::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    config: Config,
    priority: u8,
    state: State,
    /// Master_Adver_Interval: the current master's interval, learned from its adverts.
    master_adver_interval_cs: u16,
    timer: Option<Timer>,
    /// Preemption is held off until then (set at startup from `preempt_delay`).
    preempt_after: Duration,
    /// Who is master as far as this router knows: itself in Master, the sender of the last
    /// advert that reset the Master_Down_Timer in Backup, nobody after a resignation.
    master: Option<IpAddr>,
}

impl Router {
    /// Validates `config` and returns a router in Initialize.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let vrid = config.vrid;
        if vrid == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if config.priority == 0 {
            return Err(ConfigError::ZeroPriority { vrid });
        }
        let cs = config.advert_interval_cs;
        if cs == 0 || cs > MAX_ADVER_INT_CS {
            return Err(ConfigError::BadInterval { vrid, cs });
        }
        if config.addresses.is_empty() {
            return Err(ConfigError::NoAddresses { vrid });
        }
        if config.addresses.len() > 255 {
            return Err(ConfigError::TooManyAddresses {
                vrid,
                count: config.addresses.len(),
            });
        }
        let primary = config.primary;
        if let Some(&addr) = config
            .addresses
            .iter()
            .find(|a| a.is_ipv6() != primary.is_ipv6())
        {
            return Err(ConfigError::FamilyMismatch {
                vrid,
                addr,
                primary,
            });
        }
        Ok(Self {
            priority: config.priority,
            master_adver_interval_cs: cs,
            config,
            state: State::Initialize,
            timer: None,
            preempt_after: Duration::ZERO,
            master: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The current priority (the configured one, moved by [`Event::PriorityChanged`]).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The current master's primary address, if known (for status displays).
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// Master_Adver_Interval: the interval learned from the master's adverts in Backup.
    pub fn master_adver_interval_cs(&self) -> u16 {
        self.master_adver_interval_cs
    }

    /// Skew_Time for the current priority and learned interval.
    pub fn skew_time(&self) -> Duration {
        skew_time(self.priority, self.master_adver_interval_cs)
    }

    /// Master_Down_Interval for the current priority and learned interval.
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.priority, self.master_adver_interval_cs)
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
            vrid: self.config.vrid,
            priority,
            max_adver_int_cs: self.config.advert_interval_cs,
            addresses: self.config.addresses.clone(),
        }
    }

    /// Applies one event at time `now` and returns what to do about it.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        match event {
            Event::Startup => self.startup(now),
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
                if self.config.priority != OWNER_PRIORITY {
                    self.priority = priority.clamp(1, OWNER_PRIORITY - 1);
                }
                // The new value takes effect through the next advert sent or received: a
                // master's lower priority lets a preempting backup's Master_Down_Timer run
                // out, a backup's higher one makes it discard the master's adverts.
                Vec::new()
            }
        }
    }

    /// Section 6.4.1.
    fn startup(&mut self, now: Duration) -> Vec<Action> {
        if self.state != State::Initialize {
            return Vec::new();
        }
        self.preempt_after = now.saturating_add(self.config.preempt_delay);
        if self.priority == OWNER_PRIORITY {
            return self.become_master(now, Reason::AddressOwner);
        }
        self.master_adver_interval_cs = self.config.advert_interval_cs;
        self.master = None;
        self.arm_master_down(now, self.master_down_interval(), false);
        vec![self.enter(State::Backup, Reason::Startup)]
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
                    priority: self.priority,
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
        if interval_cs == 0 || interval_cs > MAX_ADVER_INT_CS {
            return Vec::new();
        }
        match self.state {
            State::Initialize => Vec::new(),
            State::Backup => {
                if priority == 0 {
                    self.master = None;
                    self.arm_master_down(now, self.skew_time(), true);
                } else if !self.preempts(now) || priority >= self.priority {
                    self.master = Some(src);
                    self.master_adver_interval_cs = interval_cs;
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
                    vec![Action::SendAdvert {
                        priority: self.priority,
                    }]
                } else if priority > self.priority
                    || (priority == self.priority && outranks(src, primary))
                {
                    self.master = Some(src);
                    self.master_adver_interval_cs = interval_cs;
                    self.arm_master_down(now, self.master_down_interval(), false);
                    vec![
                        self.enter(State::Backup, Reason::PeerPreferred { src, priority }),
                        Action::RemoveAddresses,
                    ]
                } else {
                    // RFC 9568 section 6.4.3: discard, but assert mastership at once so the
                    // sender steps down and learning bridges relearn our port. The other
                    // master announced the addresses too (split brain), so hosts' ARP / ND
                    // caches may point at it: announce them again (issue 5, item 5).
                    vec![
                        Action::SendAdvert {
                            priority: self.priority,
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
                priority: self.priority,
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
        now.saturating_add(centiseconds(self.config.advert_interval_cs))
    }

    /// Preempt_Mode, held off for `preempt_delay` after startup; the owner always preempts.
    fn preempts(&self, now: Duration) -> bool {
        self.priority == OWNER_PRIORITY || (self.config.preempt && now >= self.preempt_after)
    }
}

/// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256 (RFC 5798 section 6.1).
///
/// Computed in nanoseconds, not truncated to centiseconds: at priority 100 and 1 s adverts
/// it is 0.609375 s, and keepalived's 3.61 s failover (DESIGN.md section 5) depends on that
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
