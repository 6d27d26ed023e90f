//! VRRPv3 decoding (`vrrp::packet`): neither `decode` (what the IPv6 socket delivers) nor
//! `decode_ipv4_packet` (the IPv4 raw socket, IP header included) panics; an accepted
//! advert respects the limits the state machine relies on (addresses of the carrier's
//! family, at least one, interval 1..=4095) and survives being encoded and decoded again.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use robustifier::vrrp::packet::{
    Advertisement, MAX_ADVER_INT_CS, decode, decode_ipv4_packet, encode,
};

#[derive(Debug, Arbitrary)]
struct Input {
    src: IpAddr,
    dst: IpAddr,
    /// When set, the payload gets a correct checksum so the fuzzer reaches what follows.
    fix_checksum: bool,
    payload: Vec<u8>,
}

fn check(adv: &Advertisement, src: IpAddr, dst: IpAddr) {
    assert!(!adv.addresses.is_empty());
    assert!(adv.addresses.len() <= 255);
    assert!((1..=MAX_ADVER_INT_CS).contains(&adv.max_adver_int_cs));
    assert!(adv.addresses.iter().all(|a| a.is_ipv6() == src.is_ipv6()));
    let wire = encode(adv, src, dst).expect("a decoded advert encodes");
    assert_eq!(decode(&wire, src, dst).as_ref(), Ok(adv));
}

fuzz_target!(|input: Input| {
    let Input {
        src,
        dst,
        fix_checksum,
        mut payload,
    } = input;
    if let Ok(r) = decode_ipv4_packet(&payload) {
        check(&r.advert, r.src, r.dst);
    }
    if fix_checksum && payload.len() >= 8 {
        // Encode what the header claims, then put the fuzzer's bytes back around it.
        let count = usize::from(payload[3]);
        let size = if src.is_ipv6() { 16 } else { 4 };
        let addresses: Vec<IpAddr> = payload[8..]
            .chunks_exact(size)
            .take(count)
            .map(|c| match <[u8; 16]>::try_from(c) {
                Ok(v6) => IpAddr::from(v6),
                Err(_) => IpAddr::from([c[0], c[1], c[2], c[3]]),
            })
            .collect();
        let adv = Advertisement {
            vrid: payload[1],
            priority: payload[2],
            max_adver_int_cs: u16::from_be_bytes([payload[4], payload[5]]) & MAX_ADVER_INT_CS,
            addresses,
        };
        if let Ok(wire) = encode(&adv, src, dst) {
            payload[6..8].copy_from_slice(&wire[6..8]);
        }
    }
    if let Ok(adv) = decode(&payload, src, dst) {
        check(&adv, src, dst);
    }
});
