//! PROXY v2 headers (`backend::proxy_v2`) for any client and local address and any session
//! id: the header a back-end reads back says exactly what the proxy meant (family,
//! addresses as the back-end sees them, ports, the id cut to the TLV's 128 octets), and its
//! length field covers exactly the rest.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use robustifier::backend::proxy_v2::{SIGNATURE, TLV_UNIQUE_ID, header, local};

#[derive(Debug, Arbitrary)]
struct Input {
    src: SocketAddr,
    dst: SocketAddr,
    unique_id: Option<String>,
}

/// The address as a PROXY v2 receiver of the header's family rebuilds it.
fn seen(ip: IpAddr, v4: bool) -> IpAddr {
    match (ip.to_canonical(), v4) {
        (IpAddr::V4(a), false) => IpAddr::V6(a.to_ipv6_mapped()),
        (a, _) => a,
    }
}

fuzz_target!(|input: Input| {
    let h = header(input.src, input.dst, input.unique_id.as_deref());
    assert_eq!(h[..12], SIGNATURE);
    assert_eq!(h[12], 0x21, "version 2, PROXY");
    let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
    assert_eq!(h.len(), 16 + len, "length field");
    let body = &h[16..];
    let (src, dst, ports) = match h[13] {
        0x11 => {
            let a = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[o],
                    body[o + 1],
                    body[o + 2],
                    body[o + 3],
                ))
            };
            (a(0), a(4), 8)
        }
        0x21 => {
            let a = |o: usize| {
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&body[o..o + 16]).unwrap(),
                ))
            };
            (a(0), a(16), 32)
        }
        f => panic!("family {f:#x}"),
    };
    let v4 = h[13] == 0x11;
    assert_eq!(src, seen(input.src.ip(), v4));
    assert_eq!(dst, seen(input.dst.ip(), v4));
    assert_eq!(
        u16::from_be_bytes([body[ports], body[ports + 1]]),
        input.src.port()
    );
    assert_eq!(
        u16::from_be_bytes([body[ports + 2], body[ports + 3]]),
        input.dst.port()
    );
    let tlvs = &body[ports + 4..];
    match input.unique_id.as_deref() {
        None => assert!(tlvs.is_empty()),
        Some(id) => {
            assert_eq!(tlvs[0], TLV_UNIQUE_ID);
            let n = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
            assert!(n <= 128, "PP2_TYPE_UNIQUE_ID is at most 128 octets");
            assert_eq!(tlvs.len(), 3 + n);
            assert_eq!(&tlvs[3..], &id.as_bytes()[..id.len().min(128)]);
        }
    }
    assert_eq!(local()[..12], SIGNATURE);
});
