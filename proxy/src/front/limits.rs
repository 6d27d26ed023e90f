//! Per-client limits. A client is an IPv4 address or an IPv6 prefix ([`client_key`]):
//! one IPv6 host usually holds a whole /64, and counting it per address would let it
//! multiply every limit by the size of its prefix.
//!
//! - [`PerClient`]: a client may hold at most `max_per_client` sessions of a service at
//!   once; the rest get the protocol's temporary failure. The count drops when the
//!   session's [`ClientSlot`] is dropped, however the session ends.
//! - [`Strikes`]: after [`AUTH_FAILURES_MAX`] strikes within [`AUTH_FAILURE_WINDOW`], a
//!   client's further attempts get a temporary refusal without reaching a back-end. One
//!   table counts failed logins (password guessing costs the guesser time and the
//!   back-ends nothing), another the sessions whose own input a back-end refused (a
//!   client probing for inputs that upset back-ends is the one slowed down). Memory is
//!   bounded by [`AUTH_FAILURES_TRACKED`] entries each.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Failed logins a client may make within [`AUTH_FAILURE_WINDOW`] before it is refused.
pub const AUTH_FAILURES_MAX: u32 = 5;
/// How long failures are remembered, counted from a client's first failure; a refused
/// client may try again once it has passed.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Clients tracked at once (about 64 octets each with the table's overhead: ~1 MiB). When
/// the table is full the entry whose window started first makes room.
pub const AUTH_FAILURES_TRACKED: usize = 16 * 1024;

/// The key a client is counted under: an IPv4 address as it is, an IPv6 address masked to
/// its first `prefix_v6` bits. IPv4-mapped IPv6 addresses count as IPv4.
pub fn client_key(addr: IpAddr, prefix_v6: u8) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => {
            let bits = u32::from(prefix_v6.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

#[derive(Default)]
pub struct PerClient {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

pub struct ClientSlot {
    table: Arc<PerClient>,
    addr: IpAddr,
}

impl PerClient {
    /// A slot for the client at `addr` (IPv6: its `prefix_v6` prefix), or `None` when it
    /// already holds `max` sessions.
    pub fn acquire(self: &Arc<Self>, addr: IpAddr, prefix_v6: u8, max: u32) -> Option<ClientSlot> {
        let addr = client_key(addr, prefix_v6);
        let mut counts = crate::sync::lock(&self.counts);
        let n = counts.entry(addr).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: Arc::clone(self),
            addr,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = crate::sync::lock(&self.table.counts);
        if let Some(n) = counts.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

/// Strikes per client (failed logins, or refusals its input caused), shared by the
/// sessions of a service.
pub struct Strikes {
    table: Mutex<HashMap<IpAddr, Failures>>,
    max: u32,
    window: Duration,
    capacity: usize,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

impl Default for Strikes {
    fn default() -> Self {
        Strikes::new(
            AUTH_FAILURES_MAX,
            AUTH_FAILURE_WINDOW,
            AUTH_FAILURES_TRACKED,
        )
    }
}

impl Strikes {
    pub fn new(max: u32, window: Duration, capacity: usize) -> Self {
        Strikes {
            table: Mutex::new(HashMap::new()),
            max,
            window,
            capacity: capacity.max(1),
        }
    }

    /// Whether `client` (a [`client_key`]) has used up its failures for now.
    pub fn refused(&self, client: IpAddr) -> bool {
        self.refused_at(client, Instant::now())
    }

    /// Counts a failed login of `client` (a [`client_key`]).
    pub fn failed(&self, client: IpAddr) {
        self.failed_at(client, Instant::now());
    }

    fn refused_at(&self, client: IpAddr, now: Instant) -> bool {
        let table = crate::sync::lock(&self.table);
        table
            .get(&client)
            .is_some_and(|f| f.count >= self.max && now.duration_since(f.since) < self.window)
    }

    fn failed_at(&self, client: IpAddr, now: Instant) {
        let mut table = crate::sync::lock(&self.table);
        let window = self.window;
        let live = |f: &Failures| now.duration_since(f.since) < window;
        if let Some(f) = table.get_mut(&client) {
            if live(f) {
                f.count = f.count.saturating_add(1);
            } else {
                *f = Failures {
                    count: 1,
                    since: now,
                };
            }
            return;
        }
        if table.len() >= self.capacity {
            table.retain(|_, f| live(f));
        }
        if table.len() >= self.capacity
            && let Some(oldest) = table.iter().min_by_key(|(_, f)| f.since).map(|(k, _)| *k)
        {
            table.remove(&oldest);
        }
        table.insert(
            client,
            Failures {
                count: 1,
                since: now,
            },
        );
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_released_on_drop() {
        let t = Arc::new(PerClient::default());
        let a: IpAddr = "198.18.0.100".parse().unwrap();
        let b: IpAddr = "198.18.0.101".parse().unwrap();
        let s1 = t.acquire(a, 64, 2).unwrap();
        let _s2 = t.acquire(a, 64, 2).unwrap();
        assert!(t.acquire(a, 64, 2).is_none());
        assert!(
            t.acquire(b, 64, 2).is_some(),
            "another address has its own count"
        );
        drop(s1);
        assert!(t.acquire(a, 64, 2).is_some());
    }

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        let t = Arc::new(PerClient::default());
        let a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let same64: IpAddr = "2001:db8:1:2:ffff::99".parse().unwrap();
        let other64: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        let _s1 = t.acquire(a, 64, 1).unwrap();
        assert!(
            t.acquire(same64, 64, 1).is_none(),
            "another address of the same /64 is the same client"
        );
        assert!(t.acquire(other64, 64, 1).is_some());
        assert!(
            t.acquire(same64, 128, 1).is_some(),
            "with /128 every address is a client"
        );
    }

    #[test]
    fn client_keys() {
        let k = |s: &str, p| client_key(s.parse().unwrap(), p).to_string();
        assert_eq!(k("2001:db8:1:2:3:4:5:6", 64), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:3:4:5:6", 48), "2001:db8:1::");
        assert_eq!(k("2001:db8:1:2:3:4:5:6", 128), "2001:db8:1:2:3:4:5:6");
        assert_eq!(k("::ffff:198.18.0.1", 64), "198.18.0.1");
        assert_eq!(k("198.18.0.1", 16), "198.18.0.1");
    }

    #[test]
    fn failures_refuse_a_client_until_its_window_passes() {
        let f = Strikes::new(3, Duration::from_secs(60), 100);
        let a: IpAddr = "198.18.0.100".parse().unwrap();
        let b: IpAddr = "198.18.0.101".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..2 {
            f.failed_at(a, t0);
        }
        assert!(!f.refused_at(a, t0));
        f.failed_at(a, t0 + Duration::from_secs(1));
        assert!(f.refused_at(a, t0 + Duration::from_secs(1)));
        assert!(!f.refused_at(b, t0), "another client is not refused");
        assert!(
            !f.refused_at(a, t0 + Duration::from_secs(61)),
            "the window has passed"
        );
        f.failed_at(a, t0 + Duration::from_secs(61));
        assert!(
            !f.refused_at(a, t0 + Duration::from_secs(61)),
            "a new window starts from one failure"
        );
    }

    #[test]
    fn a_poisoned_slot_table_still_admits_counts_and_releases() {
        let t = Arc::new(PerClient::default());
        let a: IpAddr = "198.18.0.100".parse().unwrap();
        crate::sync::poison(&t.counts);
        let s = t
            .acquire(a, 64, 1)
            .expect("a panic elsewhere must not refuse every client");
        assert!(t.acquire(a, 64, 1).is_none(), "the limit still holds");
        drop(s);
        assert!(t.acquire(a, 64, 1).is_some(), "the slot was released");
    }

    #[test]
    fn a_poisoned_strike_table_still_counts() {
        let f = Strikes::new(1, Duration::from_secs(60), 100);
        let a: IpAddr = "198.18.0.100".parse().unwrap();
        crate::sync::poison(&f.table);
        let t0 = Instant::now();
        f.failed_at(a, t0);
        assert!(f.refused_at(a, t0));
    }

    #[test]
    fn failure_table_is_bounded() {
        let f = Strikes::new(1, Duration::from_secs(60), 4);
        let t0 = Instant::now();
        for i in 0..10u8 {
            let c = IpAddr::from([198, 18, 1, i]);
            f.failed_at(c, t0 + Duration::from_millis(u64::from(i)));
            assert!(f.tracked() <= 4);
        }
        // The newest clients are the ones remembered.
        assert!(f.refused_at(IpAddr::from([198, 18, 1, 9]), t0));
        assert!(!f.refused_at(IpAddr::from([198, 18, 1, 0]), t0));
    }
}
