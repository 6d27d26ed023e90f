//! VRRPv3 (RFC 5798, obsoleted and clarified by RFC 9568) for IPv4 and IPv6, as pure code.
//!
//! Front-ends decide who owns each virtual IP with VRRPv3, interoperable with keepalived. This
//! module is the part of that which needs no privileges: [`packet`] turns advertisements into
//! bytes and back, [`state`] is the RFC 5798 section 6.4 state machine. Neither opens a
//! socket, touches an address or reads a clock: the daemon feeds them received bytes, the
//! receive TTL and the current time, and carries out the [`state::Action`]s they return. That
//! is what lets failover be tested as deterministic scripts, without root and without
//! waiting.
//!
//! Invariants:
//! - Nothing derived from the network can make these functions panic; a malformed packet is a
//!   [`packet::DecodeError`] naming what was wrong.
//! - A [`state::Router`] is built from [`types`] that were checked once, where the
//!   configuration was parsed (VRID 1..=255, priority 1..=255, interval 1..=4095
//!   centiseconds, 1..=255 addresses of one family), so building one cannot fail; its time
//!   only moves through the `now` the caller passes in.

pub mod packet;
pub mod state;
pub mod types;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use packet::{
    Advertisement, DecodeError, EncodeError, Ipv4Checksum, Received, check_ttl, decode,
    decode_ipv4_packet, encode, encode_ipv4_packet, encode_with, receive,
};
pub use state::{Action, Config, Discard, Discards, Event, Reason, Router, State, Transition};
pub use types::{AddressesError, Interval, Priority, VirtualAddresses, Vrid};

/// IP protocol number of VRRP (RFC 5798 section 5.1.1.4 / 5.1.2.4).
pub const PROTOCOL: u8 = 112;

/// The only TTL / hop limit a VRRP packet may be sent or accepted with (RFC 5798 sections
/// 5.1.1.3 and 5.1.2.3, the GTSM rule of RFC 5082): anything else came from off-link.
pub const TTL: u8 = 255;

/// IPv4 multicast group adverts are sent to (RFC 5798 section 5.1.1.2).
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// IPv6 multicast group adverts are sent to (RFC 5798 section 5.1.2.2).
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// The multicast group for adverts of the given address family.
pub fn group(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(GROUP_V6)
    } else {
        IpAddr::V4(GROUP_V4)
    }
}

/// Virtual router MAC address (RFC 5798 section 7.3): `00:00:5e:00:01:VRID` for IPv4,
/// `00:00:5e:00:02:VRID` for IPv6, so the two families of one VRID never share a MAC.
pub fn virtual_mac(vrid: u8, ipv6: bool) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, if ipv6 { 0x02 } else { 0x01 }, vrid]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_mac_follows_rfc_7_3() {
        assert_eq!(virtual_mac(51, false), [0, 0, 0x5e, 0, 1, 51]);
        assert_eq!(virtual_mac(51, true), [0, 0, 0x5e, 0, 2, 51]);
    }

    #[test]
    fn groups() {
        assert_eq!(group(false).to_string(), "224.0.0.18");
        assert_eq!(group(true).to_string(), "ff02::12");
    }
}
