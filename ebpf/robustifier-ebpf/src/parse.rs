//! Header parsing for XDP: Ethernet (up to two VLAN tags), IPv4, IPv6, TCP.
//!
//! Every header is reached through [`header`], which checks it lies wholly before
//! `data_end` (the verifier insists, and a truncated packet must end in
//! [`Parsed::Malformed`], never in a wrong verdict). Fields are read in place from the
//! packet; addresses are copied out as IPv4-mapped or plain IPv6 bytes in network order,
//! the form map keys use.

use aya_ebpf::programs::XdpContext;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: [u8; 2],
}

#[repr(C)]
struct VlanHdr {
    tci: [u8; 2],
    proto: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    ver_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

#[repr(C)]
struct TcpHdr {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    off: u8,
    flags: u8,
    window: [u8; 2],
    check: [u8; 2],
    urg: [u8; 2],
}

/// What the parser found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6.
    NonIp,
    /// Cut short, or a length field that does not fit.
    Malformed,
    /// IP, but not a TCP segment with a readable header (includes non-first fragments).
    NonTcp,
    /// A TCP segment; the details are in the [`TcpPacket`] passed to [`parse`].
    Tcp,
}

#[derive(Default)]
pub struct TcpPacket {
    /// Source address, IPv4-mapped for IPv4; network byte order.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub is_v4: bool,
    pub dst_port_be: u16,
    /// A SYN without ACK: the first packet of a new connection.
    pub syn: bool,
}

/// A reference to a `T` at `offset`, if the packet is long enough to hold it.
#[inline(always)]
fn header<T>(ctx: &XdpContext, offset: usize) -> Option<&T> {
    let start = ctx.data() + offset;
    if start + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: start + size_of::<T>() <= data_end was checked above, so the whole T lies in
    // the packet buffer, which stays valid for the program's run; every header type is
    // byte-aligned plain data (any bit pattern is valid), and the reference is shared only.
    Some(unsafe { &*(start as *const T) })
}

/// Parses the packet in `ctx`, filling `pkt` when the result is [`Parsed::Tcp`].
#[inline(always)]
pub fn parse(ctx: &XdpContext, pkt: &mut TcpPacket) -> Parsed {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed;
    };
    let mut proto = u16::from_be_bytes(eth.proto);
    let mut l3 = ETH_HLEN;
    // Up to two tags (802.1ad outer, 802.1Q inner); unrolled for the verifier.
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(vlan) = header::<VlanHdr>(ctx, l3) else {
                return Parsed::Malformed;
            };
            proto = u16::from_be_bytes(vlan.proto);
            l3 += core::mem::size_of::<VlanHdr>();
        }
    }
    let l4 = match proto {
        ETH_P_IP => {
            let Some(ip) = header::<Ipv4Hdr>(ctx, l3) else {
                return Parsed::Malformed;
            };
            let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
            if ip.ver_ihl >> 4 != 4 || ihl < 20 {
                return Parsed::Malformed;
            }
            // A non-first fragment carries no TCP header; leave it to reassembly.
            let frag = u16::from_be_bytes(ip.frag_off) & 0x1fff;
            if ip.proto != IPPROTO_TCP || frag != 0 {
                return Parsed::NonTcp;
            }
            pkt.is_v4 = true;
            pkt.src[10] = 0xff;
            pkt.src[11] = 0xff;
            pkt.dst[10] = 0xff;
            pkt.dst[11] = 0xff;
            pkt.src[12..16].copy_from_slice(&ip.src);
            pkt.dst[12..16].copy_from_slice(&ip.dst);
            l3 + ihl
        }
        ETH_P_IPV6 => {
            let Some(ip) = header::<Ipv6Hdr>(ctx, l3) else {
                return Parsed::Malformed;
            };
            if ip.ver_tc_flow[0] >> 4 != 6 {
                return Parsed::Malformed;
            }
            // Extension headers before TCP are rare for mail; such packets go to the stack.
            if ip.next != IPPROTO_TCP {
                return Parsed::NonTcp;
            }
            pkt.is_v4 = false;
            pkt.src = ip.src;
            pkt.dst = ip.dst;
            l3 + core::mem::size_of::<Ipv6Hdr>()
        }
        _ => return Parsed::NonIp,
    };
    // The fixed 20-byte header must be there; options need not be.
    let Some(tcp) = header::<TcpHdr>(ctx, l4) else {
        return Parsed::Malformed;
    };
    if tcp.off >> 4 < 5 {
        return Parsed::Malformed;
    }
    pkt.dst_port_be = u16::from_ne_bytes(tcp.dst_port);
    pkt.syn = tcp.flags & TCP_FLAG_SYN != 0 && tcp.flags & TCP_FLAG_ACK == 0;
    Parsed::Tcp
}
