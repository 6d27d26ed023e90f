//! Raw sockets on IP protocol 112 for one virtual router (RFC 5798 section 5.1), bound to
//! its interface.
//!
//! - IPv4: the socket delivers whole datagrams, IP header included, so the TTL is read from
//!   the header itself (what `IP_RECVTTL` would report) and checked by
//!   [`vrrp::decode_ipv4_packet`]. Sends carry our own header (`IP_HDRINCL`, built by
//!   [`vrrp::encode_ipv4_packet`]) with TTL 255 and the primary address as source, so the
//!   checksum's pseudo-header and the wire agree.
//! - IPv6: the kernel strips the header; `IPV6_RECVHOPLIMIT` and `IPV6_RECVPKTINFO` bring
//!   the hop limit and the destination (both needed: the GTSM check and the checksum's
//!   pseudo-header). Sends go from the link-local primary (the socket is bound to it) with
//!   hop limit 255 set for unicast and multicast alike.
//!
//! The socket is driven through tokio's `UdpSocket`, which only needs a datagram socket's
//! readiness and plain `recv`/`sendto` calls (the port in its addresses is ignored for raw
//! sockets); that keeps the crate free of `unsafe` fd registration.
//!
//! Multicast loopback is off: a router must not hear itself (the state machine would ignore
//! the echo anyway, by source address).
//!
//! Invariant: nothing read from the socket reaches the state machine unless it passed the
//! TTL / hop-limit check and the decoder.

use std::{
    io::{self, IoSliceMut},
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::AsRawFd as _,
};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, setsockopt, sockopt};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::{io::Interest, net::UdpSocket};

use crate::vrrp::{self, Advertisement, DecodeError, GROUP_V4, GROUP_V6, PROTOCOL, Received, TTL};

/// Largest advert: 8 bytes + 255 IPv6 addresses, plus an IPv4 header with options.
const RECV_BUFFER: usize = 8 + 255 * 16 + 60;

pub struct VrrpSocket {
    fd: UdpSocket,
    ifindex: u32,
    /// The primary address: advert source and checksum pseudo-header source.
    src: IpAddr,
}

impl VrrpSocket {
    /// Opens the socket for a router whose primary address on `interface` (index
    /// `ifindex`) is `src`; joins the VRRP group unless the router only uses unicast peers.
    pub fn open(interface: &str, ifindex: u32, src: IpAddr, join_group: bool) -> io::Result<Self> {
        let domain = if src.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = Socket::new(
            domain,
            Type::RAW.cloexec(),
            Some(Protocol::from(i32::from(PROTOCOL))),
        )?;
        // Only this link's adverts, and ours leave through it (RFC 5798 section 5.1: VRRP is
        // link-local).
        socket.bind_device(Some(interface.as_bytes()))?;
        if let IpAddr::V6(v6) = src {
            socket.bind(&SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, ifindex)).into())?;
            socket.set_multicast_hops_v6(u32::from(TTL))?;
            socket.set_unicast_hops_v6(u32::from(TTL))?;
            socket.set_multicast_if_v6(ifindex)?;
            socket.set_multicast_loop_v6(false)?;
            if join_group {
                socket.join_multicast_v6(&GROUP_V6, ifindex)?;
            }
            setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true).map_err(io::Error::from)?;
            setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true).map_err(io::Error::from)?;
        } else {
            socket.set_header_included_v4(true)?;
            socket.set_multicast_loop_v4(false)?;
            if join_group {
                socket.join_multicast_v4_n(&GROUP_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
            }
        }
        socket.set_nonblocking(true)?;
        Ok(VrrpSocket {
            fd: UdpSocket::from_std(std::net::UdpSocket::from(socket))?,
            ifindex,
            src,
        })
    }

    /// The next VRRP packet on the link: decoded and TTL-checked, or why it was dropped.
    pub async fn recv(&self) -> io::Result<Result<Received, DecodeError>> {
        let mut buf = vec![0u8; RECV_BUFFER];
        if self.src.is_ipv4() {
            let n = self.fd.recv(&mut buf).await?;
            return Ok(vrrp::decode_ipv4_packet(&buf[..n]));
        }
        loop {
            self.fd.readable().await?;
            match self
                .fd
                .try_io(Interest::READABLE, || self.recv_v6(&mut buf))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    fn recv_v6(&self, buf: &mut [u8]) -> io::Result<Result<Received, DecodeError>> {
        let mut cmsg = nix::cmsg_space!(libc::c_int, libc::in6_pktinfo);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrIn6>(
            self.fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let n = msg.bytes;
        let (src, hop_limit, dst) = {
            let src = msg.address.map_or(Ipv6Addr::UNSPECIFIED, |a| a.ip());
            let mut hop_limit = None;
            let mut dst = None;
            for c in msg.cmsgs().map_err(io::Error::from)? {
                match c {
                    ControlMessageOwned::Ipv6HopLimit(h) => hop_limit = u8::try_from(h).ok(),
                    ControlMessageOwned::Ipv6PacketInfo(info) => {
                        dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            (src, hop_limit, dst)
        };
        let src = IpAddr::V6(src);
        // Without the hop limit the GTSM check cannot be made: treat it as failed.
        let hop_limit = hop_limit.unwrap_or(0);
        let dst = IpAddr::V6(dst.unwrap_or(GROUP_V6));
        Ok(
            vrrp::receive(hop_limit, &buf[..n], src, dst).map(|advert| Received {
                src,
                dst,
                advert,
            }),
        )
    }

    /// Sends `adv` to `dst` (the group or a unicast peer).
    pub fn send(&self, adv: &Advertisement, dst: IpAddr) -> Result<(), SendError> {
        let (bytes, to) = match (self.src, dst) {
            (IpAddr::V4(src), IpAddr::V4(d)) => (
                vrrp::encode_ipv4_packet(adv, src, d)?,
                SocketAddr::new(dst, 0),
            ),
            (IpAddr::V6(_), IpAddr::V6(d)) => {
                // A link-local or multicast destination needs the interface as scope.
                let scope = if d.is_multicast() || d.is_unicast_link_local() {
                    self.ifindex
                } else {
                    0
                };
                (
                    vrrp::encode(adv, self.src, dst)?,
                    SocketAddr::V6(SocketAddrV6::new(d, 0, 0, scope)),
                )
            }
            _ => return Err(SendError::Family { dst }),
        };
        self.fd
            .try_send_to(&bytes, to)
            .map_err(|source| SendError::Io { dst, source })?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Encode(#[from] vrrp::EncodeError),
    #[error("{dst} is not of the router's address family")]
    Family { dst: IpAddr },
    #[error("sending to {dst}: {source}")]
    Io {
        dst: IpAddr,
        #[source]
        source: io::Error,
    },
}
