//! PROXY protocol version 2 headers (haproxy's proxy-protocol.txt, section 2.2): how a
//! back-end that cannot take XCLIENT (Dovecot, OpenSMTPD, Postfix's
//! `smtpd_upstream_proxy_protocol`) learns the real client address. The receiver reads the
//! header before it sends its greeting.

use std::net::{IpAddr, SocketAddr};

/// The 12-octet signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, PROXY command.
const CMD_PROXY: u8 = 0x21;
/// Version 2, LOCAL command: a connection of the proxy's own (health checks).
const CMD_LOCAL: u8 = 0x20;
const AF_INET_STREAM: u8 = 0x11;
const AF_INET6_STREAM: u8 = 0x21;
/// PP2_TYPE_UNIQUE_ID: an opaque connection id, at most 128 octets.
pub const TLV_UNIQUE_ID: u8 = 0x05;

/// A PROXY header for a client connection from `src` to `dst`; `unique_id` (the session id)
/// travels as a PP2_TYPE_UNIQUE_ID TLV.
pub fn header(src: SocketAddr, dst: SocketAddr, unique_id: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(48);
    let family = match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            AF_INET_STREAM
        }
        // Mixed families are carried as IPv6, IPv4 mapped.
        (s, d) => {
            body.extend_from_slice(&v6(s));
            body.extend_from_slice(&v6(d));
            AF_INET6_STREAM
        }
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(id) = unique_id {
        let id = &id.as_bytes()[..id.len().min(128)];
        body.push(TLV_UNIQUE_ID);
        body.extend_from_slice(&(id.len() as u16).to_be_bytes());
        body.extend_from_slice(id);
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(CMD_PROXY);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The LOCAL header: "this connection is the proxy's own", no addresses.
pub fn local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[CMD_LOCAL, 0x00, 0x00, 0x00]);
    out
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_layout() {
        let h = header(
            "198.18.0.100:40000".parse().unwrap(),
            "198.18.0.25:25".parse().unwrap(),
            None,
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[198, 18, 0, 100]);
        assert_eq!(&h[20..24], &[198, 18, 0, 25]);
        assert_eq!(&h[24..28], &[0x9c, 0x40, 0, 25]);
        assert_eq!(h.len(), 28);
    }

    #[test]
    fn ipv6_header_with_session_id_tlv() {
        let h = header(
            "[2001:db8::100]:1234".parse().unwrap(),
            "[2001:db8::25]:110".parse().unwrap(),
            Some("abc"),
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]) as usize, 36 + 3 + 3);
        assert_eq!(&h[16 + 36..], &[TLV_UNIQUE_ID, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let h = header(
            "198.18.0.100:1".parse().unwrap(),
            "[2001:db8::25]:25".parse().unwrap(),
            None,
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(
            &h[16..32],
            &std::net::Ipv4Addr::new(198, 18, 0, 100)
                .to_ipv6_mapped()
                .octets()
        );
    }

    #[test]
    fn local_header_has_no_addresses() {
        assert_eq!(local().len(), 16);
        assert_eq!(local()[12], 0x20);
    }
}
