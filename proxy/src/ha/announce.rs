//! Announcing a virtual address after taking it over (RFC 5798 section 6.4.2, "for each
//! IPv4 address ... broadcast a gratuitous ARP request"; "for each IPv6 address ... send an
//! Unsolicited ND Neighbor Advertisement with the Router Flag (R) set [when a router]"), so
//! hosts and switches on the link move the address to this front-end at once instead of
//! when their caches expire.
//!
//! - IPv4: an ARP announcement (RFC 5227 section 2.3: an ARP request with sender and target
//!   protocol address both the VIP) broadcast through an `AF_PACKET` socket. The socket is
//!   opened with protocol 0, so it receives nothing.
//! - IPv6: an unsolicited Neighbor Advertisement (RFC 4861 section 7.2.6: to all-nodes,
//!   Override set, Solicited clear, target link-layer address option) on a raw ICMPv6
//!   socket; the kernel fills in the ICMPv6 checksum. The front-end is a host, not a
//!   router, for the services' addresses, so the Router flag stays clear.
//!
//! The frame and message builders are pure; only [`announce`] touches the network.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::AsRawFd as _,
};

use nix::{
    ifaddrs::getifaddrs,
    sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, sendto, socket},
};
use socket2::{Domain, Protocol, Socket, Type};

/// Ethernet minimum frame without the FCS: shorter ARP frames are padded to it.
const MIN_FRAME: usize = 60;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARP_REQUEST: u16 = 1;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// All-nodes, the destination of unsolicited advertisements (RFC 4861 section 7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A broadcast ARP announcement of `ip` at `mac`, Ethernet header included.
pub fn arp_announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; MIN_FRAME] {
    let mut f = [0u8; MIN_FRAME];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP: Ethernet hardware (1), IPv4 protocol, 6-byte and 4-byte addresses, request.
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero (RFC 5227: ignored in an announcement).
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited Neighbor Advertisement for `target` at `mac`: the ICMPv6 message only,
/// checksum zero (the kernel computes it for raw ICMPv6 sockets).
pub fn neighbor_advertisement(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = ICMPV6_NEIGHBOR_ADVERT;
    // Code 0, checksum 0; flags: Override only.
    m[4] = 0x20;
    m[8..24].copy_from_slice(&target.octets());
    m[24] = ND_OPT_TARGET_LL_ADDR;
    // Option length in units of 8 bytes.
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    m
}

/// Sends one announcement for each of `addrs` on `interface`; returns how many went out.
pub fn announce(interface: &str, ifindex: u32, addrs: &[IpAddr]) -> io::Result<usize> {
    let link = link_address(interface)?;
    let mac = link
        .addr()
        .ok_or_else(|| io::Error::other(format!("{interface} has no hardware address")))?;
    let mut sent = 0;
    let v4: Vec<Ipv4Addr> = addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Addr> = addrs
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v) => Some(*v),
            IpAddr::V4(_) => None,
        })
        .collect();
    if !v4.is_empty() {
        // Protocol 0: a send-only packet socket (it is never handed received frames).
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        for ip in v4 {
            sendto(
                fd.as_raw_fd(),
                &arp_announcement(mac, ip),
                &link,
                MsgFlags::empty(),
            )
            .map_err(io::Error::from)?;
            sent += 1;
        }
    }
    if !v6.is_empty() {
        let socket = Socket::new(Domain::IPV6, Type::RAW.cloexec(), Some(Protocol::ICMPV6))?;
        socket.bind_device(Some(interface.as_bytes()))?;
        // RFC 4861 section 7.1.2: receivers drop ND messages with another hop limit.
        socket.set_multicast_hops_v6(255)?;
        socket.set_multicast_if_v6(ifindex)?;
        let to = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
        for target in v6 {
            socket.send_to(&neighbor_advertisement(mac, target), &to.into())?;
            sent += 1;
        }
    }
    Ok(sent)
}

/// The interface's link-layer socket address (index and MAC), as `AF_PACKET` sends need
/// it. The kernel lists it among the interface's addresses; taking it from there spares
/// building a `sockaddr_ll` by hand.
fn link_address(interface: &str) -> io::Result<LinkAddr> {
    getifaddrs()
        .map_err(io::Error::from)?
        .filter(|ifa| ifa.interface_name == interface)
        .find_map(|ifa| ifa.address.and_then(|a| a.as_link_addr().copied()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{interface} has no link-layer address"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn arp_announcement_layout() {
        let f = arp_announcement(MAC, Ipv4Addr::new(198, 18, 0, 25));
        let want_head: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, // from us
            0x08, 0x06, // ARP
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // Ethernet/IPv4 request
            0x02, 0x00, 0x5e, 0x10, 0x20, 0x30, 198, 18, 0, 25, // sender
            0, 0, 0, 0, 0, 0, 198, 18, 0, 25, // target
        ];
        assert_eq!(f[..42], want_head);
        assert!(f[42..].iter().all(|&b| b == 0), "padding");
    }

    #[test]
    fn neighbor_advertisement_layout() {
        let target: Ipv6Addr = "2001:db8:0:1::25".parse().unwrap();
        let m = neighbor_advertisement(MAC, target);
        assert_eq!(m[0], 136);
        assert_eq!(m[1], 0, "code");
        assert_eq!(&m[2..4], &[0, 0], "checksum left to the kernel");
        assert_eq!(m[4], 0x20, "Override, not Solicited, not Router");
        assert_eq!(&m[5..8], &[0, 0, 0]);
        assert_eq!(&m[8..24], &target.octets());
        assert_eq!(
            &m[24..26],
            &[2, 1],
            "target link-layer address option, 8 bytes"
        );
        assert_eq!(&m[26..32], &MAC);
    }
}
