//! PROXY protocol version 2 headers (the binary form HAProxy defines), for tests that talk
//! to a back-end's PROXY listener directly, the way a front-end does.

use std::net::SocketAddr;

/// The 12-byte signature every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

const VERSION_2: u8 = 0x20;
const CMD_LOCAL: u8 = 0x00;
const CMD_PROXY: u8 = 0x01;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;

/// A PROXY header saying the connection came from `src` to `dst` over TCP. Mixed families
/// are sent as IPv6 (IPv4 addresses mapped).
pub fn proxy(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(VERSION_2 | CMD_PROXY);
    let mut body = Vec::with_capacity(36);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(TCP_OVER_IPV4);
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
        }
        (s, d) => {
            out.push(TCP_OVER_IPV6);
            for a in [s.ip(), d.ip()] {
                let v6 = match a {
                    std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    std::net::IpAddr::V6(v6) => v6,
                };
                body.extend_from_slice(&v6.octets());
            }
        }
    }
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A LOCAL header (health checks): the receiver keeps the connection's own addresses.
pub fn local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[VERSION_2 | CMD_LOCAL, 0x00, 0x00, 0x00]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_layout() {
        let h = proxy(
            "198.18.0.77:40000".parse().unwrap(),
            "198.18.0.25:25".parse().unwrap(),
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[198, 18, 0, 77]);
        assert_eq!(&h[20..24], &[198, 18, 0, 25]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
        assert_eq!(&h[26..28], &25u16.to_be_bytes());
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn ipv6_and_local_layout() {
        let h = proxy(
            "[2001:db8:0:1::100]:1234".parse().unwrap(),
            "198.18.0.25:110".parse().unwrap(),
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[32 + 10..32 + 16], &[0xff, 0xff, 198, 18, 0, 25]);
        assert_eq!(local(), [&SIGNATURE[..], &[0x20, 0, 0, 0]].concat());
    }
}
