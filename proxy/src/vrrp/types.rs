//! The values a virtual router is configured with, each checked once where it is parsed
//! (the config layer) and carried as a type that cannot hold anything else: a VRID
//! ([`Vrid`], 1..=255), a configured priority ([`Priority`], 1..=254, or 255 for the address
//! owner), an advertisement interval ([`Interval`], 1..=4095 centiseconds) and the list of
//! virtual addresses ([`VirtualAddresses`], 1..=255 of one family, no duplicates).
//!
//! That is what lets [`super::Router::new`] be infallible. Wire values stay plain integers
//! where the protocol allows more than configuration does: an advert's priority 0 (a master
//! resigning) has no [`Priority`], and a received interval is checked where it is used.

use std::{
    collections::BTreeSet,
    fmt,
    net::IpAddr,
    num::{NonZeroU8, NonZeroU16},
    time::Duration,
};

/// Virtual Router Identifier, 1..=255 (RFC 5798 section 5.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vrid(NonZeroU8);

impl Vrid {
    /// `None` for 0, which no virtual router may use.
    pub const fn new(vrid: u8) -> Option<Self> {
        match NonZeroU8::new(vrid) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    pub const fn get(self) -> u8 {
        self.0.get()
    }
}

impl fmt::Display for Vrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A router's own priority: 1..=254 for a backup, 255 for the address owner (RFC 5798
/// section 5.2.4). Priority 0 exists only on the wire, in the advert of a master resigning,
/// so it has no value of this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Priority(NonZeroU8);

impl Priority {
    /// The address owner's priority.
    pub const OWNER: Self = Self(NonZeroU8::MAX);
    /// The lowest priority a router can run at.
    pub const MIN: Self = Self(NonZeroU8::MIN);
    /// The highest priority of a router that does not own the addresses.
    pub const MAX_BACKUP: Self = match NonZeroU8::new(254) {
        Some(p) => Self(p),
        None => Self::MIN,
    };
    /// The default backup priority (section 6.1).
    pub const DEFAULT: Self = match NonZeroU8::new(100) {
        Some(p) => Self(p),
        None => Self::MIN,
    };

    /// `None` for 0, which means "resigning" on the wire and cannot be configured.
    pub const fn new(priority: u8) -> Option<Self> {
        match NonZeroU8::new(priority) {
            Some(p) => Some(Self(p)),
            None => None,
        }
    }

    /// A non-owner priority from any number (tracking's arithmetic): clamped to 1..=254,
    /// so tracking can neither make a backup an owner nor silence it with 0.
    pub fn backup_clamped(priority: u8) -> Self {
        let p = priority.clamp(Self::MIN.get(), Self::MAX_BACKUP.get());
        Self::new(p).unwrap_or(Self::MIN)
    }

    pub const fn get(self) -> u8 {
        self.0.get()
    }

    pub fn is_owner(self) -> bool {
        self == Self::OWNER
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An advertisement interval in centiseconds, 1..=4095: the 12-bit Max Adver Int field of
/// RFC 5798 section 5.2.7, never 0 (RFC 9568 erratum 8301).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interval(NonZeroU16);

impl Interval {
    /// The largest value the 12-bit field holds (40.95 s).
    pub const MAX: Self = match NonZeroU16::new(0x0fff) {
        Some(i) => Self(i),
        None => Self(NonZeroU16::MIN),
    };
    /// The RFC default, 1 s (section 6.1).
    pub const DEFAULT: Self = match NonZeroU16::new(100) {
        Some(i) => Self(i),
        None => Self(NonZeroU16::MIN),
    };

    /// `None` outside 1..=4095.
    pub const fn from_cs(cs: u16) -> Option<Self> {
        if cs > Self::MAX.cs() {
            return None;
        }
        match NonZeroU16::new(cs) {
            Some(i) => Some(Self(i)),
            None => None,
        }
    }

    pub const fn cs(self) -> u16 {
        self.0.get()
    }

    pub fn duration(self) -> Duration {
        Duration::from_millis(u64::from(self.cs()) * 10)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cs", self.0)
    }
}

/// Why a list cannot be a router's virtual addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressesError {
    #[error("no virtual addresses")]
    Empty,
    #[error("{0} virtual addresses, an advert carries at most 255")]
    TooMany(usize),
    #[error("{addr} is not of the family of {first}; one virtual router carries one family")]
    MixedFamilies { addr: IpAddr, first: IpAddr },
    #[error("{0} is listed twice")]
    Duplicate(IpAddr),
}

/// The virtual addresses of one router, in configured order (the order adverts list them):
/// 1..=255 of them, all of one family, none twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualAddresses(Vec<IpAddr>);

impl VirtualAddresses {
    pub fn new(addresses: Vec<IpAddr>) -> Result<Self, AddressesError> {
        let Some(&first) = addresses.first() else {
            return Err(AddressesError::Empty);
        };
        if addresses.len() > 255 {
            return Err(AddressesError::TooMany(addresses.len()));
        }
        let mut seen = BTreeSet::new();
        for &addr in &addresses {
            if addr.is_ipv6() != first.is_ipv6() {
                return Err(AddressesError::MixedFamilies { addr, first });
            }
            if !seen.insert(addr) {
                return Err(AddressesError::Duplicate(addr));
            }
        }
        Ok(Self(addresses))
    }

    pub fn as_slice(&self) -> &[IpAddr] {
        &self.0
    }

    pub fn to_vec(&self) -> Vec<IpAddr> {
        self.0.clone()
    }

    pub fn is_ipv6(&self) -> bool {
        self.0.first().is_some_and(IpAddr::is_ipv6)
    }

    /// Whether `listed` (an advert's addresses) is this set: same addresses, any order, as
    /// peers may list them in their own configured order.
    pub fn same_set(&self, listed: &[IpAddr]) -> bool {
        if listed.len() != self.0.len() {
            return false;
        }
        let ours: BTreeSet<&IpAddr> = self.0.iter().collect();
        let theirs: BTreeSet<&IpAddr> = listed.iter().collect();
        ours == theirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        assert_eq!(Vrid::new(0), None);
        assert_eq!(Vrid::new(1).map(Vrid::get), Some(1));
        assert_eq!(Vrid::new(255).map(Vrid::get), Some(255));

        assert_eq!(Priority::new(0), None);
        assert_eq!(Priority::new(255), Some(Priority::OWNER));
        assert!(Priority::OWNER.is_owner());
        assert!(!Priority::MAX_BACKUP.is_owner());
        assert_eq!(Priority::DEFAULT.get(), 100);
        assert_eq!(Priority::backup_clamped(0), Priority::MIN);
        assert_eq!(Priority::backup_clamped(255).get(), 254);
        assert_eq!(Priority::backup_clamped(90).get(), 90);

        assert_eq!(Interval::from_cs(0), None);
        assert_eq!(Interval::from_cs(4096), None);
        assert_eq!(Interval::from_cs(u16::MAX), None);
        assert_eq!(Interval::from_cs(4095), Some(Interval::MAX));
        assert_eq!(Interval::from_cs(1).map(Interval::cs), Some(1));
        assert_eq!(Interval::DEFAULT.duration(), Duration::from_secs(1));
    }

    #[test]
    fn virtual_addresses() {
        assert_eq!(VirtualAddresses::new(vec![]), Err(AddressesError::Empty));
        let many = (0..256u32).map(|i| IpAddr::from(i.to_be_bytes())).collect();
        assert_eq!(
            VirtualAddresses::new(many),
            Err(AddressesError::TooMany(256))
        );
        assert!(matches!(
            VirtualAddresses::new(vec![ip("198.18.0.25"), ip("2001:db8::25")]),
            Err(AddressesError::MixedFamilies { .. })
        ));
        assert_eq!(
            VirtualAddresses::new(vec![ip("198.18.0.25"), ip("198.18.0.25")]),
            Err(AddressesError::Duplicate(ip("198.18.0.25")))
        );
        let v = VirtualAddresses::new(vec![ip("198.18.0.25"), ip("198.18.0.26")]).unwrap();
        assert!(!v.is_ipv6());
        assert!(v.same_set(&[ip("198.18.0.26"), ip("198.18.0.25")]));
        assert!(!v.same_set(&[ip("198.18.0.25")]));
        assert!(!v.same_set(&[ip("198.18.0.25"), ip("198.18.0.25")]));
        assert!(!v.same_set(&[ip("198.18.0.25"), ip("198.18.0.26"), ip("198.18.0.27")]));
        assert!(!v.same_set(&[ip("198.18.0.25"), ip("198.18.0.99")]));
    }
}
