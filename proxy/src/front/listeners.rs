//! Listening sockets for steering. Each (service, slot) has an IPv4 socket bound to
//! `127.0.0.1:0` and an IPv6 socket bound to `[::1]:0`: they bind no VIP, and nothing off
//! the host can reach them except through the steering program. (A dual-stack socket
//! would have to bind the wildcard address, since binding `::1` makes a socket IPv6-only,
//! and the kernel refuses to hand a lookup of one family to a socket of the other.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use robustifier_common::{FAMILY_V4, FAMILY_V6};
use socket2::{Domain, Protocol as SockProto, Socket, Type};
use tokio::net::TcpListener;

pub const BACKLOG: i32 = 1024;

/// One socket per address family for one listener slot.
pub struct SlotSockets {
    pub v4: TcpListener,
    pub v6: TcpListener,
}

impl SlotSockets {
    pub fn new() -> std::io::Result<SlotSockets> {
        SlotSockets::from_std(StdSlotSockets::bind()?)
    }

    /// Sockets bound before the runtime started, now driven by it.
    pub fn from_std(s: StdSlotSockets) -> std::io::Result<SlotSockets> {
        Ok(SlotSockets {
            v4: TcpListener::from_std(s.v4)?,
            v6: TcpListener::from_std(s.v6)?,
        })
    }

    /// The sockets with the family index the steering program uses for them.
    pub fn by_family(&self) -> [(u32, &TcpListener); 2] {
        [(FAMILY_V4, &self.v4), (FAMILY_V6, &self.v6)]
    }
}

/// A slot's sockets bound and listening outside any runtime: the daemon binds and
/// registers them during its privileged start, before its runtime's threads exist.
pub struct StdSlotSockets {
    pub v4: std::net::TcpListener,
    pub v6: std::net::TcpListener,
}

impl StdSlotSockets {
    pub fn bind() -> std::io::Result<StdSlotSockets> {
        Ok(StdSlotSockets {
            v4: loopback_listener(Ipv4Addr::LOCALHOST.into())?,
            v6: loopback_listener(Ipv6Addr::LOCALHOST.into())?,
        })
    }

    /// The sockets with the family index the steering program uses for them.
    pub fn by_family(&self) -> [(u32, &std::net::TcpListener); 2] {
        [(FAMILY_V4, &self.v4), (FAMILY_V6, &self.v6)]
    }
}

fn loopback_listener(addr: IpAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(SockProto::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(addr, 0).into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
