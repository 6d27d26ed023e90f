//! Failover scripts for the state machine: single routers driven event by event, and small
//! LANs of routers whose adverts reach each other instantly, stepped from deadline to
//! deadline. Every time here is exact; nothing sleeps.

use std::{collections::VecDeque, net::IpAddr, time::Duration};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ns(n: u64) -> Duration {
    Duration::from_nanos(n)
}

const OWNER_PRIORITY: u8 = 255;

fn vip_for(primary: &str) -> IpAddr {
    ip(if primary.contains(':') {
        "2001:db8::25"
    } else {
        "198.18.0.25"
    })
}

fn config(primary: &str, priority: u8, interval_cs: u16) -> Config {
    let addresses = VirtualAddresses::new(vec![vip_for(primary)]).unwrap();
    Config {
        priority: Priority::new(priority).unwrap(),
        advert_interval: Interval::from_cs(interval_cs).unwrap(),
        ..Config::new(Vrid::new(51).unwrap(), ip(primary), addresses)
    }
}

fn router(primary: &str, priority: u8, interval_cs: u16) -> Router {
    Router::new(config(primary, priority, interval_cs))
}

fn transition(from: State, to: State, reason: Reason) -> Action {
    Action::Transition(Transition { from, to, reason })
}

fn advert(src: &str, priority: u8, max_adver_int_cs: u16) -> Event {
    Event::Advert {
        src: ip(src),
        priority,
        max_adver_int_cs,
    }
}

fn became_master(reason: Reason, from: State, priority: u8) -> Vec<Action> {
    vec![
        transition(from, State::Master, reason),
        Action::AddAddresses,
        Action::SendAdvert { priority },
        Action::SendGratuitous,
    ]
}

/// Routers on one segment. Adverts are delivered to every other live router at the instant
/// they are sent; a crashed router neither sends nor hears.
struct Lan {
    now: Duration,
    nodes: Vec<Router>,
    up: Vec<bool>,
    /// Adverts reach nobody (a cut link) while set.
    partitioned: bool,
    /// (time, router index, transition) in the order they happened.
    transitions: Vec<(Duration, usize, Transition)>,
    /// (time, sender index, priority) of every advert sent.
    adverts: Vec<(Duration, usize, u8)>,
}

impl Lan {
    fn new(nodes: Vec<Router>) -> Self {
        let up = vec![true; nodes.len()];
        Self {
            now: Duration::ZERO,
            nodes,
            up,
            partitioned: false,
            transitions: Vec::new(),
            adverts: Vec::new(),
        }
    }

    /// Delivers `event` to router `i` now, then every advert that causes, to quiescence.
    fn send(&mut self, i: usize, event: Event) {
        let mut queue = VecDeque::from([(i, event)]);
        let mut steps = 0;
        while let Some((to, event)) = queue.pop_front() {
            steps += 1;
            assert!(steps < 1000, "advert storm at {:?}", self.now);
            if !self.up[to] {
                continue;
            }
            let actions = self.nodes[to].handle(event, self.now);
            for action in actions {
                match action {
                    Action::Transition(t) => self.transitions.push((self.now, to, t)),
                    Action::SendAdvert { priority } => {
                        self.adverts.push((self.now, to, priority));
                        let cfg = self.nodes[to].config();
                        let heard = Event::Advert {
                            src: cfg.primary,
                            priority,
                            max_adver_int_cs: cfg.advert_interval.cs(),
                        };
                        if self.partitioned {
                            continue;
                        }
                        for peer in (0..self.nodes.len()).filter(|&p| p != to) {
                            queue.push_back((peer, heard));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Advances time deadline by deadline up to and including `end`.
    fn run_until(&mut self, end: Duration) {
        loop {
            let next = (0..self.nodes.len())
                .filter(|&i| self.up[i])
                .filter_map(|i| self.nodes[i].next_deadline().map(|d| (d, i)))
                .min();
            match next {
                Some((at, i)) if at <= end => {
                    assert!(at >= self.now, "deadline in the past");
                    self.now = at;
                    self.send(i, Event::Timer);
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn at(&mut self, t: Duration, i: usize, event: Event) {
        self.run_until(t);
        self.send(i, event);
    }

    fn crash(&mut self, i: usize) {
        self.up[i] = false;
    }

    fn state(&self, i: usize) -> State {
        self.nodes[i].state()
    }

    /// When router `i` last entered `to`.
    fn last_entered(&self, i: usize, to: State) -> Option<Duration> {
        self.transitions
            .iter()
            .rev()
            .find(|(_, r, t)| *r == i && t.to == to)
            .map(|(at, _, _)| *at)
    }

    fn last_advert_from(&self, i: usize, before: Duration) -> Option<(Duration, u8)> {
        self.adverts
            .iter()
            .rev()
            .find(|(at, r, _)| *r == i && *at <= before)
            .map(|(at, _, p)| (*at, *p))
    }

    fn masters(&self) -> usize {
        (0..self.nodes.len())
            .filter(|&i| self.up[i] && self.state(i) == State::Master)
            .count()
    }
}

// ---------------------------------------------------------------------------------------
// Timer arithmetic (RFC 5798 section 6.1)

#[test]
fn timer_formulas() {
    // Priority 100 at 1 s: skew 156/256 s; keepalived's 3.61 s Master_Down_Interval.
    assert_eq!(skew_time(100, 100), ms(609) + Duration::from_micros(375));
    assert_eq!(master_down_interval(100, 100), ns(3_609_375_000));
    // At 0.1 s: 0.36 s.
    assert_eq!(master_down_interval(100, 10), ns(360_937_500));
    // The owner's skew is the smallest, priority 1's the largest.
    assert_eq!(skew_time(255, 100), ns(3_906_250));
    assert_eq!(skew_time(1, 100), ns(996_093_750));
    // Largest interval: no overflow.
    assert_eq!(
        master_down_interval(1, 4095),
        ms(122_850) + ns(255 * 4095 * 10_000_000 / 256)
    );
    let r = router("198.18.0.1", 200, 100);
    assert_eq!(r.skew_time(), ns(218_750_000));
    assert_eq!(r.master_down_interval(), ns(3_218_750_000));
}

// ---------------------------------------------------------------------------------------
// Configuration

#[test]
fn advertisement_carries_own_interval_and_addresses() {
    let r = router("198.18.0.1", 150, 10);
    let adv = r.advertisement(0);
    assert_eq!(adv.vrid, 51);
    assert_eq!(adv.priority, 0);
    assert_eq!(adv.max_adver_int_cs, 10);
    assert_eq!(adv.addresses, vec![ip("198.18.0.25")]);
}

// ---------------------------------------------------------------------------------------
// Single router, event by event

#[test]
fn owner_startup_goes_master_at_once() {
    for cs in [100u16, 10] {
        let mut r = router("198.18.0.1", OWNER_PRIORITY, cs);
        let t0 = ms(5_000);
        assert_eq!(
            r.handle(Event::Startup, t0),
            became_master(Reason::AddressOwner, State::Initialize, 255)
        );
        assert_eq!(r.state(), State::Master);
        let period = ms(u64::from(cs) * 10);
        assert_eq!(r.next_deadline(), Some(t0 + period));
        // Adver_Timer: one advert per interval, each re-arming the next.
        for k in 1..=5 {
            let t = t0 + period * k;
            assert_eq!(
                r.handle(Event::Timer, t),
                vec![Action::SendAdvert { priority: 255 }]
            );
            assert_eq!(r.next_deadline(), Some(t + period));
        }
    }
}

#[test]
fn backup_becomes_master_after_master_down_interval_of_silence() {
    for (cs, mdi) in [(100u16, ns(3_609_375_000)), (10, ns(360_937_500))] {
        let mut r = router("198.18.0.2", 100, cs);
        let t0 = ms(1_000);
        assert_eq!(
            r.handle(Event::Startup, t0),
            vec![transition(
                State::Initialize,
                State::Backup,
                Reason::Startup
            )]
        );
        assert_eq!(r.next_deadline(), Some(t0 + mdi));
        // One nanosecond early: a spurious wake-up changes nothing.
        assert!(r.handle(Event::Timer, t0 + mdi - ns(1)).is_empty());
        assert_eq!(r.state(), State::Backup);
        assert_eq!(
            r.handle(Event::Timer, t0 + mdi),
            became_master(Reason::MasterDown, State::Backup, 100)
        );
        assert_eq!(r.next_deadline(), Some(t0 + mdi + ms(u64::from(cs) * 10)));
    }
}

#[test]
fn hearing_the_master_keeps_a_backup_backup() {
    for cs in [100u16, 10] {
        let period = ms(u64::from(cs) * 10);
        let mut r = router("198.18.0.2", 100, cs);
        r.handle(Event::Startup, Duration::ZERO);
        let mut t = Duration::ZERO;
        for _ in 0..100 {
            t += period;
            assert!(r.handle(advert("198.18.0.1", 200, cs), t).is_empty());
            assert_eq!(r.next_deadline(), Some(t + r.master_down_interval()));
            assert!(r.handle(Event::Timer, t + period).is_empty());
        }
        assert_eq!(r.state(), State::Backup);
    }
}

#[test]
fn equal_priority_master_is_accepted_by_a_backup() {
    // Section 6.4.2 accepts priority >= local: ties are settled between masters only.
    let mut r = router("198.18.0.200", 100, 100);
    r.handle(Event::Startup, Duration::ZERO);
    r.handle(advert("198.18.0.1", 100, 100), ms(1_000));
    assert_eq!(r.next_deadline(), Some(ms(1_000) + ns(3_609_375_000)));
}

#[test]
fn backup_learns_master_adver_interval() {
    let mut r = router("198.18.0.2", 100, 100);
    r.handle(Event::Startup, Duration::ZERO);
    assert_eq!(r.master_adver_interval_cs(), 100);
    // The master advertises every 0.5 s: 3 * 0.5 s + 156/256 * 0.5 s.
    r.handle(advert("198.18.0.1", 200, 50), ms(2_000));
    assert_eq!(r.master_adver_interval_cs(), 50);
    assert_eq!(r.next_deadline(), Some(ms(2_000) + ns(1_804_687_500)));
    // A master that slows down to 2 s is followed too.
    r.handle(advert("198.18.0.1", 200, 200), ms(2_500));
    assert_eq!(r.next_deadline(), Some(ms(2_500) + ns(7_218_750_000)));
    // Taking over, we advertise at our own interval, not the learned one.
    let at = r.next_deadline().unwrap();
    r.handle(Event::Timer, at);
    assert_eq!(r.state(), State::Master);
    assert_eq!(r.next_deadline(), Some(at + ms(1_000)));
    assert_eq!(r.advertisement(100).max_adver_int_cs, 100);
}

#[test]
fn backup_hearing_priority_zero_waits_only_skew_time() {
    for (cs, skew) in [(100u16, ns(609_375_000)), (10, ns(60_937_500))] {
        let mut r = router("198.18.0.2", 100, cs);
        r.handle(Event::Startup, Duration::ZERO);
        r.handle(advert("198.18.0.1", 200, cs), ms(500));
        let t = ms(700);
        assert!(r.handle(advert("198.18.0.1", 0, cs), t).is_empty());
        assert_eq!(r.next_deadline(), Some(t + skew));
        assert_eq!(
            r.handle(Event::Timer, t + skew),
            became_master(Reason::MasterResigned, State::Backup, 100)
        );
    }
}

#[test]
fn priority_zero_applies_even_without_preemption() {
    let mut c = config("198.18.0.2", 100, 100);
    c.preempt = false;
    let mut r = Router::new(c);
    r.handle(Event::Startup, Duration::ZERO);
    r.handle(advert("198.18.0.1", 0, 100), ms(100));
    assert_eq!(r.next_deadline(), Some(ms(100) + ns(609_375_000)));
}

#[test]
fn preempting_backup_discards_lower_priority_master() {
    let mut r = router("198.18.0.2", 200, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let deadline = r.next_deadline();
    for k in 1..=3 {
        assert!(
            r.handle(advert("198.18.0.1", 100, 100), ms(1_000 * k))
                .is_empty()
        );
        assert_eq!(
            r.next_deadline(),
            deadline,
            "a discarded advert must not reset the timer"
        );
    }
    assert_eq!(
        r.handle(Event::Timer, deadline.unwrap()),
        became_master(Reason::MasterDown, State::Backup, 200)
    );
}

#[test]
fn non_preempting_backup_follows_lower_priority_master() {
    let mut c = config("198.18.0.2", 200, 100);
    c.preempt = false;
    let mut r = Router::new(c);
    r.handle(Event::Startup, Duration::ZERO);
    for k in 1..=60 {
        let t = ms(1_000 * k);
        r.handle(advert("198.18.0.1", 100, 100), t);
        assert_eq!(r.next_deadline(), Some(t + ns(3_218_750_000)));
        r.handle(Event::Timer, t + ms(999));
    }
    assert_eq!(r.state(), State::Backup);
}

#[test]
fn master_answers_priority_zero_with_an_advert_at_once() {
    let mut r = router("198.18.0.1", OWNER_PRIORITY, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let t = ms(400);
    assert_eq!(
        r.handle(advert("198.18.0.2", 0, 100), t),
        vec![Action::SendAdvert { priority: 255 }]
    );
    assert_eq!(r.next_deadline(), Some(t + ms(1_000)));
    assert_eq!(r.state(), State::Master);
}

#[test]
fn master_reasserts_against_a_lower_priority_advert() {
    // RFC 9568 section 6.4.3: discard, and send an advert at once so the other steps down.
    let mut r = router("198.18.0.1", 200, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let at = r.next_deadline().unwrap();
    r.handle(Event::Timer, at);
    let due = r.next_deadline();
    assert_eq!(
        r.handle(advert("198.18.0.2", 100, 100), at + ms(10)),
        vec![Action::SendAdvert { priority: 200 }, Action::SendGratuitous]
    );
    assert_eq!(r.state(), State::Master);
    assert_eq!(r.next_deadline(), due, "the regular schedule is kept");
}

#[test]
fn master_yields_to_higher_priority() {
    let mut r = router("198.18.0.1", 200, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let at = r.next_deadline().unwrap();
    r.handle(Event::Timer, at);
    let t = at + ms(300);
    let src = ip("198.18.0.2");
    assert_eq!(
        r.handle(advert("198.18.0.2", 201, 50), t),
        vec![
            transition(
                State::Master,
                State::Backup,
                Reason::PeerPreferred { src, priority: 201 }
            ),
            Action::RemoveAddresses,
        ]
    );
    // Master_Down_Timer from the new master's interval (0.5 s) and our priority 200.
    assert_eq!(r.master_adver_interval_cs(), 50);
    assert_eq!(r.next_deadline(), Some(t + ms(1_500) + ns(109_375_000)));
}

#[test]
fn tie_break_by_primary_address_ipv4() {
    // 198.18.0.128 > 198.18.0.127 as unsigned integers; a signed byte compare says otherwise.
    let (low, high) = ("198.18.0.127", "198.18.0.128");
    let mut a = router(low, 100, 100);
    let mut b = router(high, 100, 100);
    for r in [&mut a, &mut b] {
        r.handle(Event::Startup, Duration::ZERO);
        let at = r.next_deadline().unwrap();
        r.handle(Event::Timer, at);
        assert_eq!(r.state(), State::Master);
    }
    // Partition heals: both hear each other's equal-priority adverts.
    let t = ms(10_000);
    assert_eq!(
        b.handle(advert(low, 100, 100), t),
        vec![Action::SendAdvert { priority: 100 }, Action::SendGratuitous]
    );
    assert_eq!(b.state(), State::Master);
    let actions = a.handle(advert(high, 100, 100), t);
    assert_eq!(actions[0], {
        let src = ip(high);
        transition(
            State::Master,
            State::Backup,
            Reason::PeerPreferred { src, priority: 100 },
        )
    });
    assert_eq!(a.state(), State::Backup);
}

#[test]
fn tie_break_by_primary_address_ipv6() {
    let (low, high) = ("fe80::7f", "fe80::80");
    let mut a = router(low, 150, 10);
    a.handle(Event::Startup, Duration::ZERO);
    let at = a.next_deadline().unwrap();
    a.handle(Event::Timer, at);
    assert_eq!(
        a.handle(advert("fe80::7e", 150, 10), at + ms(1)),
        vec![Action::SendAdvert { priority: 150 }, Action::SendGratuitous]
    );
    assert_eq!(a.state(), State::Master);
    a.handle(advert(high, 150, 10), at + ms(2));
    assert_eq!(a.state(), State::Backup);
    // Full 128-bit compare: a difference in the first group dominates.
    let mut b = router("fe80::ffff", 150, 10);
    b.handle(Event::Startup, Duration::ZERO);
    let at = b.next_deadline().unwrap();
    b.handle(Event::Timer, at);
    b.handle(advert("fe81::1", 150, 10), at + ms(1));
    assert_eq!(b.state(), State::Backup);
}

#[test]
fn own_echo_and_other_family_are_ignored() {
    let mut r = router("198.18.0.1", 100, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let at = r.next_deadline().unwrap();
    r.handle(Event::Timer, at);
    // Our own multicast advert looped back must not trigger another one.
    assert!(r.handle(advert("198.18.0.1", 100, 100), at).is_empty());
    // The IPv6 instance with the same VRID is another virtual router.
    assert!(r.handle(advert("fe80::1", 255, 100), at).is_empty());
    assert_eq!(r.state(), State::Master);
}

#[test]
fn malformed_advert_events_are_ignored() {
    let mut r = router("198.18.0.2", 100, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let deadline = r.next_deadline();
    assert!(r.handle(advert("198.18.0.1", 200, 0), ms(10)).is_empty());
    assert!(r.handle(advert("198.18.0.1", 200, 4096), ms(10)).is_empty());
    assert_eq!(r.next_deadline(), deadline);
}

#[test]
fn shutdown_from_each_state() {
    // Master: resign with priority 0 and give the addresses up.
    let mut r = router("198.18.0.1", OWNER_PRIORITY, 100);
    r.handle(Event::Startup, Duration::ZERO);
    assert_eq!(
        r.handle(Event::Shutdown, ms(10)),
        vec![
            transition(State::Master, State::Initialize, Reason::Shutdown),
            Action::SendAdvert { priority: 0 },
            Action::RemoveAddresses,
        ]
    );
    assert_eq!(r.next_deadline(), None);
    // A restart is a fresh startup.
    assert_eq!(r.handle(Event::Startup, ms(20))[0], {
        transition(State::Initialize, State::Master, Reason::AddressOwner)
    });

    // Backup: just stop.
    let mut r = router("198.18.0.2", 100, 100);
    r.handle(Event::Startup, Duration::ZERO);
    assert_eq!(
        r.handle(Event::Shutdown, ms(10)),
        vec![transition(
            State::Backup,
            State::Initialize,
            Reason::Shutdown
        )]
    );
    assert_eq!(r.next_deadline(), None);

    // Initialize: nothing to do, and nothing but Startup moves it.
    assert!(r.handle(Event::Shutdown, ms(20)).is_empty());
    assert!(r.handle(Event::Timer, ms(10_000)).is_empty());
    assert!(
        r.handle(advert("198.18.0.1", 0, 100), ms(10_000))
            .is_empty()
    );
    assert_eq!(r.state(), State::Initialize);
    // A second Startup while running is ignored.
    r.handle(Event::Startup, ms(30));
    assert!(r.handle(Event::Startup, ms(40)).is_empty());
    assert_eq!(r.next_deadline(), Some(ms(30) + ns(3_609_375_000)));
}

#[test]
fn priority_changes_are_clamped_and_owner_is_pinned() {
    let mut r = router("198.18.0.2", 100, 100);
    r.handle(Event::PriorityChanged(0), Duration::ZERO);
    assert_eq!(r.priority().get(), 1);
    r.handle(Event::PriorityChanged(255), Duration::ZERO);
    assert_eq!(r.priority().get(), 254);
    r.handle(Event::PriorityChanged(90), Duration::ZERO);
    assert_eq!(r.priority().get(), 90);
    // Skew follows the tracked priority.
    assert_eq!(r.skew_time(), skew_time(90, 100));

    let mut owner = router("198.18.0.1", OWNER_PRIORITY, 100);
    owner.handle(Event::PriorityChanged(10), Duration::ZERO);
    assert_eq!(owner.priority().get(), 255);
}

#[test]
fn preempt_delay_holds_off_takeover_after_startup() {
    let mut c = config("198.18.0.2", 200, 100);
    c.preempt_delay = ms(10_000);
    let mut r = Router::new(c);
    let t0 = ms(20_000);
    r.handle(Event::Startup, t0);
    // Within the delay, a lower-priority master is followed like with preemption off.
    for k in 1..=9 {
        let t = t0 + ms(1_000 * k);
        r.handle(advert("198.18.0.1", 100, 100), t);
        assert_eq!(r.next_deadline(), Some(t + ns(3_218_750_000)), "k={k}");
    }
    // From then on its adverts are discarded; the timer armed by the last followed one runs.
    let armed = r.next_deadline();
    r.handle(advert("198.18.0.1", 100, 100), t0 + ms(10_000));
    r.handle(advert("198.18.0.1", 100, 100), t0 + ms(11_000));
    assert_eq!(r.next_deadline(), armed);
    let actions = r.handle(Event::Timer, armed.unwrap());
    assert_eq!(
        actions,
        became_master(Reason::MasterDown, State::Backup, 200)
    );
}

// ---------------------------------------------------------------------------------------
// LAN scripts

const A: usize = 0;
const B: usize = 1;

#[test]
fn two_routers_elect_the_higher_priority_and_it_keeps_the_role() {
    for cs in [100u16, 10] {
        let mut lan = Lan::new(vec![
            router("198.18.0.1", 200, cs),
            router("198.18.0.2", 100, cs),
        ]);
        lan.send(A, Event::Startup);
        lan.send(B, Event::Startup);
        lan.run_until(ms(60_000));
        assert_eq!(lan.state(A), State::Master);
        assert_eq!(lan.state(B), State::Backup);
        // A's Master_Down_Interval ran out first (priority 200 has the shorter skew).
        assert_eq!(
            lan.last_entered(A, State::Master),
            Some(master_down_interval(200, cs))
        );
        assert_eq!(lan.transitions.len(), 3, "{:?}", lan.transitions);
    }
}

#[test]
fn master_crash_takeover_exactly_master_down_interval_after_last_advert() {
    for cs in [100u16, 10] {
        let mut lan = Lan::new(vec![
            router("198.18.0.1", 200, cs),
            router("198.18.0.2", 100, cs),
        ]);
        lan.send(A, Event::Startup);
        lan.send(B, Event::Startup);
        let crash = ms(u64::from(cs) * 100); // 10 intervals in
        lan.run_until(crash);
        lan.crash(A);
        lan.run_until(crash * 3);
        let (last, _) = lan.last_advert_from(A, crash).unwrap();
        let mdi = master_down_interval(100, cs);
        assert_eq!(lan.last_entered(B, State::Master), Some(last + mdi));
        assert_eq!(lan.masters(), 1);
        // 1 s adverts: 3.609 s of silence; 0.1 s adverts: 0.361 s.
        assert_eq!(
            mdi,
            if cs == 100 {
                ns(3_609_375_000)
            } else {
                ns(360_937_500)
            }
        );
    }
}

#[test]
fn master_shutdown_hands_over_after_skew_time() {
    for cs in [100u16, 10] {
        let mut lan = Lan::new(vec![
            router("198.18.0.1", 200, cs),
            router("198.18.0.2", 100, cs),
        ]);
        lan.send(A, Event::Startup);
        lan.send(B, Event::Startup);
        let t = ms(u64::from(cs) * 100) + ms(3);
        lan.at(t, A, Event::Shutdown);
        assert_eq!(lan.state(A), State::Initialize);
        assert_eq!(lan.last_advert_from(A, t), Some((t, 0)));
        lan.run_until(t * 2);
        assert_eq!(
            lan.last_entered(B, State::Master),
            Some(t + skew_time(100, cs))
        );
        let (_, _, why) = lan.transitions.last().copied().unwrap();
        assert_eq!(why.reason, Reason::MasterResigned);
    }
}

#[test]
fn higher_priority_router_preempts_a_running_master() {
    for cs in [100u16, 10] {
        let mut lan = Lan::new(vec![
            router("198.18.0.1", 200, cs),
            router("198.18.0.2", 100, cs),
        ]);
        // B alone becomes master; A joins later.
        lan.send(B, Event::Startup);
        let join = ms(u64::from(cs) * 200) + ms(1);
        lan.at(join, A, Event::Startup);
        lan.run_until(join * 2);
        // A discards B's lower adverts, so its own Master_Down_Timer from startup runs out;
        // B hears A's first advert as master and steps down in the same instant.
        let takeover = join + master_down_interval(200, cs);
        assert_eq!(lan.last_entered(A, State::Master), Some(takeover));
        assert_eq!(lan.last_entered(B, State::Backup), Some(takeover));
        assert_eq!(lan.masters(), 1);
        assert_eq!(lan.state(A), State::Master);
    }
}

#[test]
fn without_preemption_a_higher_priority_router_stays_backup() {
    let mut c = config("198.18.0.1", 200, 100);
    c.preempt = false;
    let mut lan = Lan::new(vec![Router::new(c), router("198.18.0.2", 100, 100)]);
    lan.send(B, Event::Startup);
    lan.at(ms(20_000), A, Event::Startup);
    lan.run_until(ms(300_000));
    assert_eq!(lan.state(A), State::Backup);
    assert_eq!(lan.state(B), State::Master);
    // ...until the master goes away.
    lan.at(ms(300_000), B, Event::Shutdown);
    lan.run_until(ms(301_000));
    assert_eq!(
        lan.last_entered(A, State::Master),
        Some(ms(300_000) + skew_time(200, 100))
    );
}

#[test]
fn lowering_master_priority_lets_a_preempting_peer_take_over() {
    for cs in [100u16, 10] {
        let period = ms(u64::from(cs) * 10);
        let mut lan = Lan::new(vec![
            router("198.18.0.1", 200, cs),
            router("198.18.0.2", 150, cs),
        ]);
        lan.send(A, Event::Startup);
        lan.send(B, Event::Startup);
        // A tracked check fails: A drops to 100, below B's 150.
        let drop = period * 10 + ms(1);
        lan.at(drop, A, Event::PriorityChanged(100));
        lan.run_until(drop + period * 10);
        // B accepted A's adverts up to the last one at 200, discards those at 100, and takes
        // over one Master_Down_Interval after the last accepted one.
        let (last_high, p) = lan
            .adverts
            .iter()
            .rev()
            .find(|(_, r, p)| *r == A && *p == 200)
            .copied()
            .map(|(t, _, p)| (t, p))
            .unwrap();
        assert_eq!(p, 200);
        assert!(last_high < drop);
        let takeover = last_high + master_down_interval(150, cs);
        assert_eq!(lan.last_entered(B, State::Master), Some(takeover));
        assert_eq!(lan.last_entered(A, State::Backup), Some(takeover));
        assert_eq!(lan.masters(), 1);
    }
}

#[test]
fn raising_a_backup_above_the_master_makes_it_preempt() {
    let mut lan = Lan::new(vec![
        router("198.18.0.1", 200, 100),
        router("198.18.0.2", 150, 100),
    ]);
    lan.send(A, Event::Startup);
    lan.send(B, Event::Startup);
    lan.at(ms(10_500), B, Event::PriorityChanged(250));
    lan.run_until(ms(30_000));
    assert_eq!(lan.state(B), State::Master);
    assert_eq!(lan.state(A), State::Backup);
    // The Master_Down_Timer armed by the last accepted advert (with the skew of priority
    // 150, current when it was armed) runs out; later adverts at 200 are discarded.
    let (last_accepted, _) = lan.last_advert_from(A, ms(10_500)).unwrap();
    assert_eq!(
        lan.last_entered(B, State::Master),
        Some(last_accepted + master_down_interval(150, 100))
    );
}

#[test]
fn three_routers_fail_over_in_priority_order() {
    let mut lan = Lan::new(vec![
        router("198.18.0.1", 200, 10),
        router("198.18.0.2", 150, 10),
        router("198.18.0.3", 100, 10),
    ]);
    for i in 0..3 {
        lan.send(i, Event::Startup);
    }
    lan.run_until(ms(5_000));
    assert_eq!(lan.state(0), State::Master);
    lan.crash(0);
    lan.run_until(ms(10_000));
    // The 150 router's shorter skew wins the race; the 100 router hears it and stays back.
    assert_eq!(lan.state(1), State::Master);
    assert_eq!(lan.state(2), State::Backup);
    assert_eq!(lan.masters(), 1);
}

#[test]
fn split_brain_heals_by_priority_then_address() {
    // Equal priorities started in isolation: both become master; when they meet, the one
    // with the higher address keeps the role.
    let mut lan = Lan::new(vec![
        router("198.18.0.200", 100, 100),
        router("198.18.0.100", 100, 100),
    ]);
    lan.partitioned = true;
    lan.send(A, Event::Startup);
    lan.send(B, Event::Startup);
    lan.run_until(ms(5_000));
    assert_eq!(lan.masters(), 2);
    lan.partitioned = false;
    lan.run_until(ms(10_000));
    assert_eq!(lan.masters(), 1);
    assert_eq!(lan.state(A), State::Master);
    assert_eq!(lan.state(B), State::Backup);
}

#[test]
fn master_address_is_known_in_each_state() {
    let mut r = router("198.18.0.1", 100, 100);
    assert_eq!(r.master(), None);
    r.handle(Event::Startup, Duration::ZERO);
    assert_eq!(r.master(), None, "a fresh backup has heard nobody");
    r.handle(advert("198.18.0.2", 150, 100), ms(100));
    assert_eq!(r.master(), Some(ip("198.18.0.2")));
    // A lower-priority advert that a preempting backup discards does not name a master.
    r.handle(advert("198.18.0.3", 50, 100), ms(200));
    assert_eq!(r.master(), Some(ip("198.18.0.2")));
    r.handle(advert("198.18.0.2", 0, 100), ms(300));
    assert_eq!(r.master(), None, "resigned");
    let at = r.next_deadline().unwrap();
    r.handle(Event::Timer, at);
    assert_eq!(r.state(), State::Master);
    assert_eq!(r.master(), Some(ip("198.18.0.1")));
    r.handle(advert("198.18.0.9", 200, 100), at + ms(10));
    assert_eq!(r.master(), Some(ip("198.18.0.9")));
    r.handle(Event::Shutdown, at + ms(20));
    assert_eq!(r.master(), None);
}

#[test]
fn split_brain_winner_announces_again() {
    // The loser of a split brain had announced the addresses too; the winner's answer to
    // its advert re-sends gratuitous ARP / NA so that caches point back at the winner.
    let mut lan = Lan::new(vec![
        router("198.18.0.200", 100, 100),
        router("198.18.0.100", 100, 100),
    ]);
    lan.partitioned = true;
    lan.send(A, Event::Startup);
    lan.send(B, Event::Startup);
    lan.run_until(ms(5_000));
    lan.partitioned = false;
    let t = lan.now;
    let actions = lan.nodes[A].handle(advert("198.18.0.100", 100, 100), t);
    assert!(actions.contains(&Action::SendGratuitous), "{actions:?}");
}

// ---------------------------------------------------------------------------------------
// Hardening on receipt: Router::receive

fn adv(priority: u8, cs: u16, addresses: &[&str]) -> Advertisement {
    Advertisement {
        vrid: 51,
        priority,
        max_adver_int_cs: cs,
        addresses: addresses.iter().map(|a| ip(a)).collect(),
    }
}

/// A router that is master at the returned time.
fn master(primary: &str, priority: u8) -> (Router, Duration) {
    let mut r = router(primary, priority, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let at = r.next_deadline().unwrap();
    r.handle(Event::Timer, at);
    assert_eq!(r.state(), State::Master);
    (r, at)
}

#[test]
fn advert_listing_other_addresses_is_discarded_and_counted() {
    // A backup: a higher-priority advert for another address list must not reset the
    // Master_Down_Timer, so the backup still takes over when the real master is silent.
    let mut r = router("198.18.0.2", 100, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let deadline = r.next_deadline();
    let lists: [&[&str]; 4] = [
        &["198.18.0.26"],
        &["198.18.0.25", "198.18.0.26"],
        &[],
        &["198.18.0.25", "198.18.0.25"],
    ];
    for (k, list) in lists.iter().enumerate() {
        let t = ms(1_000 * (k as u64 + 1));
        assert_eq!(
            r.receive(ip("198.18.0.1"), &adv(200, 100, list), t),
            Err(Discard::OtherAddresses),
            "{list:?}"
        );
        assert_eq!(r.next_deadline(), deadline);
        assert_eq!(r.master(), None);
    }
    assert_eq!(r.discards().other_addresses, 4);
    assert_eq!(r.discards().not_a_peer, 0);
    assert_eq!(
        r.handle(Event::Timer, deadline.unwrap()),
        became_master(Reason::MasterDown, State::Backup, 100)
    );

    // A master: a higher priority claiming other addresses does not make it step down.
    let (mut m, at) = master("198.18.0.1", 100);
    assert_eq!(
        m.receive(ip("198.18.0.9"), &adv(254, 100, &["198.18.0.99"]), at),
        Err(Discard::OtherAddresses)
    );
    assert_eq!(m.state(), State::Master);
    assert_eq!(m.discards().other_addresses, 1);
}

#[test]
fn advert_listing_our_addresses_in_another_order_is_heard() {
    let addresses = VirtualAddresses::new(vec![
        ip("198.18.0.25"),
        ip("198.18.0.26"),
        ip("198.18.0.27"),
    ])
    .unwrap();
    let mut r = Router::new(Config {
        addresses,
        ..config("198.18.0.2", 100, 100)
    });
    r.handle(Event::Startup, Duration::ZERO);
    let t = ms(1_000);
    let heard = adv(200, 100, &["198.18.0.27", "198.18.0.25", "198.18.0.26"]);
    assert_eq!(r.receive(ip("198.18.0.1"), &heard, t), Ok(Vec::new()));
    assert_eq!(r.master(), Some(ip("198.18.0.1")));
    assert_eq!(r.next_deadline(), Some(t + r.master_down_interval()));
    assert_eq!(r.discards(), Discards::default());
}

#[test]
fn only_unicast_peers_are_heard() {
    let mut r = Router::new(Config {
        peers: vec![ip("198.18.0.3")],
        ..config("198.18.0.2", 100, 100)
    });
    r.handle(Event::Startup, Duration::ZERO);
    let deadline = r.next_deadline();
    // An owner's advert from a host that is not a peer, then its resignation: neither
    // touches the timer (priority 0 would otherwise cut it to Skew_Time).
    for priority in [255, 0] {
        assert_eq!(
            r.receive(
                ip("198.18.0.1"),
                &adv(priority, 100, &["198.18.0.25"]),
                ms(500)
            ),
            Err(Discard::NotAPeer)
        );
        assert_eq!(r.next_deadline(), deadline);
    }
    assert_eq!(r.discards().not_a_peer, 2);
    // The peer is heard.
    let t = ms(1_000);
    assert_eq!(
        r.receive(ip("198.18.0.3"), &adv(200, 100, &["198.18.0.25"]), t),
        Ok(Vec::new())
    );
    assert_eq!(r.master(), Some(ip("198.18.0.3")));
    assert_eq!(r.next_deadline(), Some(t + r.master_down_interval()));

    // Without peers configured (multicast), any source on the link is heard.
    let mut any = router("198.18.0.2", 100, 100);
    any.handle(Event::Startup, Duration::ZERO);
    assert!(
        any.receive(ip("198.18.0.1"), &adv(200, 100, &["198.18.0.25"]), t)
            .is_ok()
    );
    assert_eq!(any.master(), Some(ip("198.18.0.1")));
}

#[test]
fn other_vrid_and_own_echo_are_not_counted() {
    let (mut m, at) = master("198.18.0.1", 100);
    let mut other = adv(200, 100, &["198.18.0.99"]);
    other.vrid = 52;
    assert_eq!(
        m.receive(ip("198.18.0.2"), &other, at),
        Err(Discard::OtherVrid)
    );
    // Our own advert looped back: no answer, no count.
    let own = m.advertisement(100);
    assert_eq!(m.receive(ip("198.18.0.1"), &own, at), Ok(Vec::new()));
    assert_eq!(m.discards(), Discards::default());
    assert_eq!(m.state(), State::Master);
}

#[test]
fn learned_interval_is_capped() {
    // A forged advert announcing 4095 cs (40.95 s), then silence: without the cap the
    // backup waits 3 * 40.95 s + skew, over two minutes, before taking over.
    let mut r = router("198.18.0.2", 100, 100);
    r.handle(Event::Startup, Duration::ZERO);
    let t = ms(1_000);
    r.receive(ip("198.18.0.1"), &adv(200, 4095, &["198.18.0.25"]), t)
        .unwrap();
    assert_eq!(r.master_adver_interval_cs(), 1_000);
    let takeover = t + master_down_interval(100, 1_000);
    assert_eq!(r.next_deadline(), Some(takeover));
    assert_eq!(takeover, t + ns(36_093_750_000));
    assert_eq!(
        r.handle(Event::Timer, takeover),
        became_master(Reason::MasterDown, State::Backup, 100)
    );

    // An interval up to the cap is adopted as advertised.
    let mut r = Router::new(Config {
        max_master_interval: Interval::from_cs(200).unwrap(),
        ..config("198.18.0.2", 100, 100)
    });
    r.handle(Event::Startup, Duration::ZERO);
    r.receive(ip("198.18.0.1"), &adv(200, 200, &["198.18.0.25"]), t)
        .unwrap();
    assert_eq!(r.master_adver_interval_cs(), 200);
    r.receive(ip("198.18.0.1"), &adv(200, 201, &["198.18.0.25"]), t)
        .unwrap();
    assert_eq!(r.master_adver_interval_cs(), 200);

    // A master yielding to a higher priority learns the capped interval too.
    let (mut m, at) = master("198.18.0.1", 100);
    let actions = m
        .receive(ip("198.18.0.9"), &adv(200, 4095, &["198.18.0.25"]), at)
        .unwrap();
    assert!(matches!(actions[0], Action::Transition(_)), "{actions:?}");
    assert_eq!(m.master_adver_interval_cs(), 1_000);
    assert_eq!(
        m.next_deadline(),
        Some(at + master_down_interval(100, 1_000))
    );
}

#[test]
fn restart_keeps_the_discard_counts() {
    let mut r = Router::new(Config {
        peers: vec![ip("198.18.0.3")],
        ..config("198.18.0.2", 200, 100)
    });
    r.handle(Event::Startup, Duration::ZERO);
    let _ = r.receive(ip("198.18.0.1"), &adv(255, 100, &["198.18.0.25"]), ms(1));
    let released = r.restarted_at(Priority::MIN);
    assert_eq!(released.state(), State::Initialize);
    assert_eq!(released.priority(), Priority::MIN);
    assert_eq!(released.discards().not_a_peer, 1);
    assert_eq!(released.config().peers, vec![ip("198.18.0.3")]);
}

// ---------------------------------------------------------------------------------------
// Reconfiguration of a running router (a reload)

impl Lan {
    /// Runs to `t`, then gives router `i` a new configuration at `priority`; its adverts
    /// reach the others like any other.
    fn reconfigure(&mut self, t: Duration, i: usize, config: Config, priority: u8) -> Vec<Action> {
        self.run_until(t);
        let actions = self.nodes[i].reconfigure(config, priority, self.now);
        for action in &actions {
            match *action {
                Action::Transition(tr) => self.transitions.push((self.now, i, tr)),
                Action::SendAdvert { priority } => {
                    self.adverts.push((self.now, i, priority));
                    let cfg = self.nodes[i].config();
                    let heard = Event::Advert {
                        src: cfg.primary,
                        priority,
                        max_adver_int_cs: cfg.advert_interval.cs(),
                    };
                    for peer in (0..self.nodes.len()).filter(|&p| p != i) {
                        self.send(peer, heard);
                    }
                }
                _ => {}
            }
        }
        actions
    }

    /// Transitions of router `i` after `since`.
    fn transitions_of(&self, i: usize, since: Duration) -> Vec<Transition> {
        self.transitions
            .iter()
            .filter(|(at, r, _)| *r == i && *at > since)
            .map(|(_, _, t)| *t)
            .collect()
    }
}

/// A (priority 150) master and B (priority 100, preempting) its backup, settled at 20 s.
fn settled_pair(cs: u16) -> (Lan, Duration) {
    let mut lan = Lan::new(vec![
        router("198.18.0.1", 150, cs),
        router("198.18.0.2", 100, cs),
    ]);
    lan.send(A, Event::Startup);
    lan.send(B, Event::Startup);
    let settled = ms(20_000) + ms(u64::from(cs));
    lan.run_until(settled);
    assert_eq!((lan.state(A), lan.state(B)), (State::Master, State::Backup));
    (lan, settled)
}

#[test]
fn reconfigure_with_nothing_advertised_changed_sends_nothing_and_moves_nothing() {
    let (mut lan, t) = settled_pair(100);
    let mut c = config("198.18.0.1", 150, 100);
    c.preempt = false;
    c.max_master_interval = Interval::from_cs(2_000).unwrap();
    c.peers = vec![ip("198.18.0.2")];
    let deadline = lan.nodes[A].next_deadline();
    assert_eq!(lan.reconfigure(t, A, c.clone(), 150), Vec::new());
    // The Adver_Timer runs on as it was.
    assert_eq!(lan.nodes[A].next_deadline(), deadline);
    assert_eq!(lan.nodes[A].config(), &c);
    lan.run_until(t + ms(60_000));
    assert_eq!(lan.transitions_of(A, t), Vec::new());
    assert_eq!(lan.transitions_of(B, t), Vec::new());
}

#[test]
fn master_priority_lowered_but_still_above_the_peer_moves_nothing() {
    let (mut lan, t) = settled_pair(100);
    let actions = lan.reconfigure(t, A, config("198.18.0.1", 120, 100), 120);
    assert_eq!(actions, vec![Action::SendAdvert { priority: 120 }]);
    assert_eq!(lan.nodes[A].priority().get(), 120);
    lan.run_until(t + ms(60_000));
    assert_eq!(lan.transitions_of(A, t), Vec::new());
    assert_eq!(lan.transitions_of(B, t), Vec::new());
    assert_eq!(
        lan.last_advert_from(A, t + ms(60_000)).map(|a| a.1),
        Some(120)
    );
}

#[test]
fn master_priority_lowered_below_a_preempting_peer_moves_the_master_once() {
    for cs in [100u16, 20] {
        let (mut lan, t) = settled_pair(cs);
        let actions = lan.reconfigure(t, A, config("198.18.0.1", 50, cs), 50);
        assert_eq!(actions, vec![Action::SendAdvert { priority: 50 }]);
        lan.run_until(t + ms(60_000));
        let a = lan.transitions_of(A, t);
        let b = lan.transitions_of(B, t);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!((a[0].from, a[0].to), (State::Master, State::Backup));
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!((b[0].from, b[0].to), (State::Backup, State::Master));
        assert_eq!(b[0].reason, Reason::MasterDown);
        assert_eq!(lan.masters(), 1);
        // B discarded the lower advert: its Master_Down_Timer from A's last advert at the
        // old priority ran out.
        let (last_150, _) = lan
            .adverts
            .iter()
            .rev()
            .find(|(_, r, p)| *r == A && *p == 150)
            .map(|(at, _, p)| (*at, *p))
            .unwrap();
        assert_eq!(
            lan.last_entered(B, State::Master),
            Some(last_150 + master_down_interval(100, cs))
        );
    }
}

#[test]
fn master_priority_lowered_below_a_peer_that_does_not_preempt_moves_nothing() {
    let mut cb = config("198.18.0.2", 100, 100);
    cb.preempt = false;
    let mut lan = Lan::new(vec![router("198.18.0.1", 150, 100), Router::new(cb)]);
    lan.send(A, Event::Startup);
    lan.send(B, Event::Startup);
    let t = ms(20_000);
    lan.run_until(t);
    lan.reconfigure(t, A, config("198.18.0.1", 50, 100), 50);
    lan.run_until(t + ms(60_000));
    assert_eq!(lan.transitions_of(A, t), Vec::new());
    assert_eq!(lan.transitions_of(B, t), Vec::new());
}

#[test]
fn backup_priority_raised_above_the_master_moves_it_once_only_with_preempt() {
    for preempt in [true, false] {
        let (mut lan, t) = settled_pair(100);
        let mut c = config("198.18.0.2", 200, 100);
        c.preempt = preempt;
        // A backup announces nothing on a reload.
        assert_eq!(lan.reconfigure(t, B, c, 200), Vec::new());
        lan.run_until(t + ms(60_000));
        let (a, b) = (lan.transitions_of(A, t), lan.transitions_of(B, t));
        if preempt {
            assert_eq!(b.len(), 1, "{b:?}");
            assert_eq!((b[0].from, b[0].to), (State::Backup, State::Master));
            assert_eq!(a.len(), 1, "{a:?}");
            assert_eq!((a[0].from, a[0].to), (State::Master, State::Backup));
        } else {
            assert_eq!((a, b), (Vec::new(), Vec::new()));
        }
        assert_eq!(lan.masters(), 1);
    }
}

#[test]
fn master_interval_change_advertises_at_once_and_rearms_at_the_new_interval() {
    let (mut lan, t) = settled_pair(100);
    let actions = lan.reconfigure(t, A, config("198.18.0.1", 150, 50), 150);
    assert_eq!(actions, vec![Action::SendAdvert { priority: 150 }]);
    assert_eq!(lan.nodes[A].next_deadline(), Some(t + ms(500)));
    // B follows the new interval from that advert on.
    assert_eq!(lan.nodes[B].master_adver_interval_cs(), 50);
    lan.run_until(t + ms(60_000));
    assert_eq!(lan.transitions_of(B, t), Vec::new());
}

#[test]
fn master_address_change_advertises_the_new_list() {
    let (mut lan, t) = settled_pair(100);
    let mut c = config("198.18.0.1", 150, 100);
    c.addresses = VirtualAddresses::new(vec![ip("198.18.0.25"), ip("198.18.0.26")]).unwrap();
    let actions = lan.nodes[A].reconfigure(c, 150, t);
    assert_eq!(actions, vec![Action::SendAdvert { priority: 150 }]);
    assert_eq!(
        lan.nodes[A].advertisement(150).addresses,
        vec![ip("198.18.0.25"), ip("198.18.0.26")]
    );
}

#[test]
fn backup_caps_the_learned_interval_at_once_and_owner_keeps_255() {
    let (mut lan, t) = settled_pair(300);
    assert_eq!(lan.nodes[B].master_adver_interval_cs(), 300);
    let mut c = config("198.18.0.2", 100, 100);
    c.max_master_interval = Interval::from_cs(200).unwrap();
    lan.reconfigure(t, B, c, 100);
    assert_eq!(lan.nodes[B].master_adver_interval_cs(), 200);

    // An owner runs at 255 whatever priority tracking would give it; the primary stays.
    let mut owner = router("198.18.0.1", 255, 100);
    owner.handle(Event::Startup, Duration::ZERO);
    let mut c = config("198.18.0.9", 255, 100);
    c.preempt = false;
    assert_eq!(owner.reconfigure(c, 90, ms(5)), Vec::new());
    assert_eq!(owner.priority(), Priority::OWNER);
    assert_eq!(owner.config().primary, ip("198.18.0.1"));
    assert_eq!(owner.state(), State::Master);
}
