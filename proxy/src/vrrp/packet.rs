//! VRRPv3 advertisements on the wire (RFC 5798 / RFC 9568 section 5), as pure functions.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 IPvX Address(es), 4 or 16 bytes each          |
//! ```
//!
//! The payload functions ([`encode`], [`decode`], [`receive`]) work on the VRRP message
//! alone, which is what an IPv6 raw socket delivers and takes; the `*_ipv4_packet` functions
//! add or strip the IPv4 header, which an IPv4 raw socket delivers (and takes with
//! `IP_HDRINCL`).
//!
//! The checksum (section 5.2.8) is where the two RFCs part. RFC 5798 prepends a pseudo-header
//! for both families; RFC 9568 keeps it for IPv6 but sums the IPv4 message alone. The deployed
//! base, keepalived 2.2.7 included (its captured adverts are the test vectors below), sends
//! and requires the pseudo-header form for IPv4, so that is what [`encode`] writes. [`decode`]
//! accepts either form for IPv4, so RFC 9568-strict peers are heard too; IPv6 has one form.
//!
//! Invariant: no input makes these functions panic; every rejection is a [`DecodeError`]
//! that says what was wrong and, once the header is readable, which VRID and sender.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{PROTOCOL, TTL};

/// VRRP version this module speaks (RFC 5798 section 5.2.1).
pub const VERSION: u8 = 3;
/// The only packet type VRRPv3 defines (section 5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Fixed part of the message, before the addresses.
pub const HEADER_LEN: usize = 8;
/// Max Adver Int is a 12-bit field of centiseconds (section 5.2.7).
pub const MAX_ADVER_INT_CS: u16 = 0x0fff;

const IPV4_HEADER_LEN: usize = 20;
/// Precedence 6 (internetwork control), as routing protocols and keepalived send it.
const IPV4_TOS: u8 = 0xc0;

/// One VRRPv3 ADVERTISEMENT (version 3 and type 1 are implied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub vrid: u8,
    /// 255 = address owner, 1..=254 = backup, 0 = the master is resigning (section 5.2.4).
    pub priority: u8,
    /// Sender's advertisement interval in centiseconds, 1..=4095.
    pub max_adver_int_cs: u16,
    /// Virtual addresses, all of the family of the IP header that carries the advert.
    pub addresses: Vec<IpAddr>,
}

/// How the IPv4 checksum is computed; IPv6 always includes its pseudo-header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ipv4Checksum {
    /// RFC 5798: pseudo-header (src, dst, 0, 112, length) plus message. What keepalived and
    /// FRR (by default) send and require.
    #[default]
    PseudoHeader,
    /// RFC 9568 section 5.2.8: the message alone.
    MessageOnly,
}

/// A decoded IPv4 VRRP packet with the addresses from its IP header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender's primary address: what the tie-break of RFC 5798 section 6.4.3 compares.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub advert: Advertisement,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("VRID {vrid}: an advertisement needs at least one address")]
    NoAddresses { vrid: u8 },
    #[error("VRID {vrid}: {count} addresses do not fit the 8-bit count field")]
    TooManyAddresses { vrid: u8, count: usize },
    #[error("VRID {vrid}: interval {cs} cs is outside 1..=4095")]
    BadInterval { vrid: u8, cs: u16 },
    #[error("VRID {vrid}: {what} {addr} is not of the family of source {src}")]
    FamilyMismatch {
        vrid: u8,
        what: &'static str,
        addr: IpAddr,
        src: IpAddr,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("from {src}: TTL/hop limit {ttl} is not 255, so it was not sent on this link")]
    BadTtl { src: IpAddr, ttl: u8 },
    #[error("from {src}: {len} bytes is shorter than the 8-byte VRRP header")]
    Truncated { src: IpAddr, len: usize },
    #[error("from {src}: VRRP version {version}, this speaks 3")]
    BadVersion { src: IpAddr, version: u8 },
    #[error("from {src}: VRRP packet type {kind}, only 1 (ADVERTISEMENT) exists")]
    BadType { src: IpAddr, kind: u8 },
    #[error("from {src}: destination {dst} is of another address family")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    #[error("from {src}, VRID {vrid}: {len} bytes where {count} addresses need exactly {expected}")]
    BadLength {
        src: IpAddr,
        vrid: u8,
        count: u8,
        expected: usize,
        len: usize,
    },
    #[error("from {src}, VRID {vrid}: checksum {found:#06x}, expected {expected:#06x}")]
    BadChecksum {
        src: IpAddr,
        vrid: u8,
        found: u16,
        expected: u16,
    },
    #[error("from {src}, VRID {vrid}: address count is 0")]
    NoAddresses { src: IpAddr, vrid: u8 },
    #[error("from {src}, VRID {vrid}: Max Adver Int is 0")]
    ZeroInterval { src: IpAddr, vrid: u8 },
    #[error("IPv4 header: {reason}")]
    BadIpv4Header { reason: &'static str },
    #[error("from {src}: IP protocol {protocol}, VRRP is 112")]
    BadProtocol { src: IpAddr, protocol: u8 },
}

/// Encodes `adv` as a VRRP message sent from `src` to `dst`, with the checksum the deployed
/// base expects (see the module docs). Fails only on an advert that cannot be represented.
pub fn encode(adv: &Advertisement, src: IpAddr, dst: IpAddr) -> Result<Vec<u8>, EncodeError> {
    encode_with(adv, src, dst, Ipv4Checksum::PseudoHeader)
}

/// [`encode`] with a choice of IPv4 checksum form, for a peer that insists on RFC 9568's.
pub fn encode_with(
    adv: &Advertisement,
    src: IpAddr,
    dst: IpAddr,
    form: Ipv4Checksum,
) -> Result<Vec<u8>, EncodeError> {
    let vrid = adv.vrid;
    if adv.addresses.is_empty() {
        return Err(EncodeError::NoAddresses { vrid });
    }
    let count = u8::try_from(adv.addresses.len()).map_err(|_| EncodeError::TooManyAddresses {
        vrid,
        count: adv.addresses.len(),
    })?;
    if adv.max_adver_int_cs == 0 || adv.max_adver_int_cs > MAX_ADVER_INT_CS {
        return Err(EncodeError::BadInterval {
            vrid,
            cs: adv.max_adver_int_cs,
        });
    }
    let family_error = |what, addr| EncodeError::FamilyMismatch {
        vrid,
        what,
        addr,
        src,
    };
    if src.is_ipv6() != dst.is_ipv6() {
        return Err(family_error("destination", dst));
    }
    if let Some(addr) = adv.addresses.iter().find(|a| a.is_ipv6() != src.is_ipv6()) {
        return Err(family_error("virtual address", *addr));
    }

    let mut out = Vec::with_capacity(HEADER_LEN + adv.addresses.len() * address_len(src));
    out.push((VERSION << 4) | TYPE_ADVERTISEMENT);
    out.push(vrid);
    out.push(adv.priority);
    out.push(count);
    // The 4 reserved bits above the interval stay zero (section 5.2.6).
    out.extend_from_slice(&adv.max_adver_int_cs.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    for addr in &adv.addresses {
        match addr {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    let sum = checksum(&out, src, dst, form);
    out[6..8].copy_from_slice(&sum.to_be_bytes());
    Ok(out)
}

/// The receive path for a message whose TTL (IPv4) or hop limit (IPv6, from
/// `IPV6_RECVHOPLIMIT`) the caller read: drops anything not sent with 255 (RFC 5798
/// sections 5.1.1.3 / 5.1.2.3), then [`decode`]s.
pub fn receive(
    ttl_or_hop_limit: u8,
    payload: &[u8],
    src: IpAddr,
    dst: IpAddr,
) -> Result<Advertisement, DecodeError> {
    check_ttl(ttl_or_hop_limit, src)?;
    decode(payload, src, dst)
}

/// Rejects a TTL / hop limit other than 255: such a packet crossed a router, so it is not
/// from a peer on this link (the GTSM rule, RFC 5082).
pub fn check_ttl(ttl_or_hop_limit: u8, src: IpAddr) -> Result<(), DecodeError> {
    if ttl_or_hop_limit == TTL {
        Ok(())
    } else {
        Err(DecodeError::BadTtl {
            src,
            ttl: ttl_or_hop_limit,
        })
    }
}

/// Decodes and verifies a VRRP message received from `src` for `dst` (the checks of RFC 5798
/// section 7.1 that need no configuration: version, type, completeness, checksum, plus the
/// RFC 9568 errata that a count or interval of zero is discarded). Whether the VRID is one of
/// ours is the caller's question; the TTL is checked by [`receive`].
///
/// The message must be exactly as long as its address count says: the caller cuts it at the
/// IP payload length, so extra bytes mean a malformed packet, not padding.
///
/// Not checked: RFC 9568 erratum 8300's rule that an IPv6 advert lists a link-local address
/// first. keepalived 2.2.7 only warns about it and sends global addresses first (the IPv6
/// vector below), so enforcing it would cut us off from the interoperability peer.
pub fn decode(payload: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advertisement, DecodeError> {
    let [
        first,
        vrid,
        priority,
        count,
        int_hi,
        int_lo,
        sum_hi,
        sum_lo,
        ..,
    ] = *payload
    else {
        return Err(DecodeError::Truncated {
            src,
            len: payload.len(),
        });
    };
    let version = first >> 4;
    if version != VERSION {
        return Err(DecodeError::BadVersion { src, version });
    }
    let kind = first & 0x0f;
    if kind != TYPE_ADVERTISEMENT {
        return Err(DecodeError::BadType { src, kind });
    }
    if src.is_ipv6() != dst.is_ipv6() {
        return Err(DecodeError::MixedFamilies { src, dst });
    }
    let size = address_len(src);
    let expected = HEADER_LEN + usize::from(count) * size;
    if payload.len() != expected {
        return Err(DecodeError::BadLength {
            src,
            vrid,
            count,
            expected,
            len: payload.len(),
        });
    }
    let found = u16::from_be_bytes([sum_hi, sum_lo]);
    let pseudo = checksum(payload, src, dst, Ipv4Checksum::PseudoHeader);
    // Recompute and compare (rather than sum with the field and test for zero) so the error
    // can say what was expected.
    let ok = found == pseudo
        || (src.is_ipv4() && found == checksum(payload, src, dst, Ipv4Checksum::MessageOnly));
    if !ok {
        return Err(DecodeError::BadChecksum {
            src,
            vrid,
            found,
            expected: pseudo,
        });
    }
    if count == 0 {
        return Err(DecodeError::NoAddresses { src, vrid });
    }
    // Reserved bits are ignored on receipt (section 5.2.6).
    let max_adver_int_cs = u16::from_be_bytes([int_hi, int_lo]) & MAX_ADVER_INT_CS;
    if max_adver_int_cs == 0 {
        return Err(DecodeError::ZeroInterval { src, vrid });
    }
    let addresses = payload[HEADER_LEN..]
        .chunks_exact(size)
        .map(|chunk| match <[u8; 16]>::try_from(chunk) {
            Ok(v6) => IpAddr::V6(Ipv6Addr::from(v6)),
            // Lengths were checked above, so a non-16-byte chunk is an IPv4 address.
            Err(_) => IpAddr::V4(Ipv4Addr::new(chunk[0], chunk[1], chunk[2], chunk[3])),
        })
        .collect();
    Ok(Advertisement {
        vrid,
        priority,
        max_adver_int_cs,
        addresses,
    })
}

/// Parses what an IPv4 raw socket for protocol 112 delivers (IP header included): checks the
/// header, the protocol and the TTL, then [`decode`]s the payload against the header's
/// addresses. Bytes past the header's total length (link-layer padding) are ignored.
pub fn decode_ipv4_packet(packet: &[u8]) -> Result<Received, DecodeError> {
    let bad = |reason| DecodeError::BadIpv4Header { reason };
    if packet.len() < IPV4_HEADER_LEN {
        return Err(bad("shorter than 20 bytes"));
    }
    if packet[0] >> 4 != 4 {
        return Err(bad("version is not 4"));
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if header_len < IPV4_HEADER_LEN || header_len > packet.len() {
        return Err(bad("header length out of range"));
    }
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total_len < header_len || total_len > packet.len() {
        return Err(bad("total length out of range"));
    }
    // A fragment cannot hold a whole advert; raw sockets see reassembled datagrams, so a
    // fragment here is forged or broken.
    if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
        return Err(bad("fragment"));
    }
    if fold(sum_words(0, &packet[..header_len])) != 0xffff {
        return Err(bad("header checksum"));
    }
    let src = IpAddr::V4(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ));
    let protocol = packet[9];
    if protocol != PROTOCOL {
        return Err(DecodeError::BadProtocol { src, protocol });
    }
    let advert = receive(packet[8], &packet[header_len..total_len], src, dst)?;
    Ok(Received { src, dst, advert })
}

/// Builds the whole IPv4 datagram for a raw socket with `IP_HDRINCL`: TTL 255, protocol 112,
/// no options. The identification is left 0 for the kernel to fill in, as it does for
/// `IP_HDRINCL` packets.
pub fn encode_ipv4_packet(
    adv: &Advertisement,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<Vec<u8>, EncodeError> {
    let payload = encode(adv, IpAddr::V4(src), IpAddr::V4(dst))?;
    // At most 8 + 255 * 4 bytes of payload, so the total always fits 16 bits.
    let total = u16::try_from(IPV4_HEADER_LEN + payload.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(usize::from(total));
    out.extend_from_slice(&[0x45, IPV4_TOS]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, TTL, PROTOCOL, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let sum = !fold(sum_words(0, &out));
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn address_len(family_of: IpAddr) -> usize {
    if family_of.is_ipv6() { 16 } else { 4 }
}

/// Checksum of `message` (whose checksum field is skipped, so it may hold anything) for the
/// given addresses, per RFC 5798 / RFC 9568 section 5.2.8 and RFC 1071.
fn checksum(message: &[u8], src: IpAddr, dst: IpAddr, form: Ipv4Checksum) -> u16 {
    // The length fits: callers pass at most 8 + 255 * 16 bytes.
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) if form == Ipv4Checksum::PseudoHeader => {
            let acc = sum_words(0, &s.octets());
            let acc = sum_words(acc, &d.octets());
            sum_words(acc, &[0, PROTOCOL, (len >> 8) as u8, len as u8])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // RFC 8200 section 8.1: src, dst, 32-bit upper-layer length, 3 zero bytes, next
            // header.
            let acc = sum_words(0, &s.octets());
            let acc = sum_words(acc, &d.octets());
            let acc = sum_words(acc, &len.to_be_bytes());
            sum_words(acc, &[0, 0, 0, PROTOCOL])
        }
        _ => 0,
    };
    acc = sum_words(acc, message.get(..6).unwrap_or(message));
    acc = sum_words(acc, message.get(8..).unwrap_or(&[]));
    !fold(acc)
}

/// Adds `bytes` as big-endian 16-bit words (an odd last byte padded with zero) to `acc`.
/// A u64 cannot overflow on anything shorter than 2^48 bytes.
fn sum_words(acc: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    let mut acc = acc;
    for pair in &mut chunks {
        acc += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds the carries back in: the one's complement sum of RFC 1071.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn advert(vrid: u8, priority: u8, cs: u16, addresses: &[&str]) -> Advertisement {
        Advertisement {
            vrid,
            priority,
            max_adver_int_cs: cs,
            addresses: addresses.iter().map(|a| ip(a)).collect(),
        }
    }

    // The IPv4 vector, checked by hand and then against the wire.
    //
    // VRID 51, priority 100, interval 100 cs (1 s), one address 198.18.0.25, sent from
    // 198.18.0.1 to 224.0.0.18. The message is
    //     31 33 | 64 01 | 00 64 | CK CK | c6 12 | 00 19
    // (version 3 / type 1, VRID 0x33; priority 0x64, count 1; interval 0x064; checksum;
    // address). The pseudo-header words are
    //     c612 0001 (src) e000 0012 (dst) 0070 (zero, protocol 112) 000c (length 12).
    // Message words with the checksum field as zero, carries folded as they appear:
    //     3133 + 6401 = 9534; + 0064 = 9598; + c612 = 1_5baa -> 5bab; + 0019 = 5bc4.
    // Pseudo-header words:
    //     c612 + e000 = 1_a612 -> a613; + 0001 + 0012 + 0070 + 000c = a6a2.
    // Together: 5bc4 + a6a2 = 1_0266 -> 0267, so the checksum is !0267 = fd98.
    // keepalived 2.2.7 (vrrp_version 3, same settings, captured with tshark in a private
    // network namespace) sent exactly these bytes, IP header included, which settles that it
    // uses the RFC 5798 pseudo-header for IPv4. Without the pseudo-header (RFC 9568) the sum
    // would be !5bc4 = a43b.
    const V4_MESSAGE: &str = "31 33 64 01 00 64 fd 98 c6 12 00 19";
    const V4_MESSAGE_ONLY: &str = "31 33 64 01 00 64 a4 3b c6 12 00 19";
    // keepalived's whole datagram: TOS 0xc0, id 1, TTL 255, protocol 112.
    const V4_DATAGRAM: &str = "45 c0 00 20 00 01 00 00 ff 70 14 87 c6 12 00 01 e0 00 00 12
                               31 33 64 01 00 64 fd 98 c6 12 00 19";
    // keepalived's IPv6 advert from the same capture: VRID 52, priority 100, 100 cs, address
    // 2001:db8::25, from the veth's link-local fe80::cc46:7aff:fe51:e2cf to ff02::12. The
    // checksum 0x1602 covers the RFC 8200 pseudo-header (length 24, next header 112); an
    // independent Python sum gave the same value.
    const V6_MESSAGE: &str = "31 34 64 01 00 64 16 02
                              20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 25";
    const V6_SRC: &str = "fe80::cc46:7aff:fe51:e2cf";

    #[test]
    fn ipv4_known_good_vector_encodes_and_decodes() {
        let adv = advert(51, 100, 100, &["198.18.0.25"]);
        let (src, dst) = (ip("198.18.0.1"), ip("224.0.0.18"));
        assert_eq!(encode(&adv, src, dst).unwrap(), hex(V4_MESSAGE));
        assert_eq!(decode(&hex(V4_MESSAGE), src, dst).unwrap(), adv);
    }

    #[test]
    fn ipv4_message_only_checksum_is_rfc_9568_and_accepted() {
        let adv = advert(51, 100, 100, &["198.18.0.25"]);
        let (src, dst) = (ip("198.18.0.1"), ip("224.0.0.18"));
        let bytes = encode_with(&adv, src, dst, Ipv4Checksum::MessageOnly).unwrap();
        assert_eq!(bytes, hex(V4_MESSAGE_ONLY));
        assert_eq!(decode(&bytes, src, dst).unwrap(), adv);
    }

    #[test]
    fn ipv6_known_good_vector_encodes_and_decodes() {
        let adv = advert(52, 100, 100, &["2001:db8::25"]);
        let (src, dst) = (ip(V6_SRC), ip("ff02::12"));
        assert_eq!(encode(&adv, src, dst).unwrap(), hex(V6_MESSAGE));
        assert_eq!(decode(&hex(V6_MESSAGE), src, dst).unwrap(), adv);
    }

    #[test]
    fn ipv6_has_no_message_only_form() {
        let adv = advert(52, 100, 100, &["2001:db8::25"]);
        let (src, dst) = (ip(V6_SRC), ip("ff02::12"));
        // Asking for the IPv4 message-only form changes nothing for IPv6.
        let bytes = encode_with(&adv, src, dst, Ipv4Checksum::MessageOnly).unwrap();
        assert_eq!(bytes, hex(V6_MESSAGE));
        // A message-only sum over IPv6 is refused.
        let mut forged = bytes.clone();
        let sum = !fold(sum_words(sum_words(0, &forged[..6]), &forged[8..]));
        forged[6..8].copy_from_slice(&sum.to_be_bytes());
        assert!(matches!(
            decode(&forged, src, dst),
            Err(DecodeError::BadChecksum { .. })
        ));
    }

    #[test]
    fn round_trips_both_families_many_addresses() {
        let cases = [
            (
                advert(
                    1,
                    255,
                    1,
                    &["198.18.0.25", "198.18.0.110", "198.19.255.255"],
                ),
                ip("198.18.0.2"),
                ip("224.0.0.18"),
            ),
            (
                advert(255, 1, 4095, &["fe80::1", "2001:db8::25", "2001:db8::110"]),
                ip("fe80::2"),
                ip("ff02::12"),
            ),
            // Priority 0 (resigning) is a valid advert.
            (
                advert(7, 0, 10, &["198.18.0.25"]),
                ip("198.18.0.2"),
                ip("198.18.0.3"),
            ),
        ];
        for (adv, src, dst) in cases {
            let bytes = encode(&adv, src, dst).unwrap();
            assert_eq!(
                bytes.len(),
                HEADER_LEN + adv.addresses.len() * address_len(src)
            );
            assert_eq!(decode(&bytes, src, dst).unwrap(), adv, "{adv:?}");
        }
    }

    #[test]
    fn round_trip_255_addresses() {
        let addresses = (0..255u32)
            .map(|i| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i))))
            .collect();
        let adv = Advertisement {
            vrid: 9,
            priority: 200,
            max_adver_int_cs: 100,
            addresses,
        };
        let (src, dst) = (ip("fe80::2"), ip("ff02::12"));
        let bytes = encode(&adv, src, dst).unwrap();
        assert_eq!(decode(&bytes, src, dst).unwrap(), adv);
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        let (src, dst) = (ip("198.18.0.1"), ip("224.0.0.18"));
        let mut bytes = hex(V4_MESSAGE);
        bytes[4] |= 0xf0;
        // Keep the checksum right: the reserved bits are part of the summed message.
        let fresh = checksum(&bytes, src, dst, Ipv4Checksum::PseudoHeader);
        bytes[6..8].copy_from_slice(&fresh.to_be_bytes());
        assert_eq!(decode(&bytes, src, dst).unwrap().max_adver_int_cs, 100);
    }

    /// Rewrites the checksum after a test has altered a field, so the test sees the check it
    /// is aimed at rather than the checksum failure.
    fn resum(mut bytes: Vec<u8>, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        if bytes.len() >= HEADER_LEN {
            let sum = checksum(&bytes, src, dst, Ipv4Checksum::PseudoHeader);
            bytes[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn rejects_what_rfc_7_1_says_to_discard() {
        let (src, dst) = (ip("198.18.0.1"), ip("224.0.0.18"));
        let good = hex(V4_MESSAGE);
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            resum(b, src, dst)
        };

        let err = decode(&good[..7], src, dst).unwrap_err();
        assert_eq!(err, DecodeError::Truncated { src, len: 7 });

        // Version 2 (VRRPv2) and version 4.
        for first in [0x21, 0x41] {
            let err = decode(&with(&|b| b[0] = first), src, dst).unwrap_err();
            assert!(
                matches!(err, DecodeError::BadVersion { version, .. } if version == first >> 4)
            );
        }

        let err = decode(&with(&|b| b[0] = 0x32), src, dst).unwrap_err();
        assert!(matches!(err, DecodeError::BadType { kind: 2, .. }));

        // Count says 2 addresses but 1 is present; and a stray byte after the address.
        let err = decode(&with(&|b| b[3] = 2), src, dst).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::BadLength {
                count: 2,
                expected: 16,
                len: 12,
                ..
            }
        ));
        let err = decode(&with(&|b| b.push(0)), src, dst).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::BadLength {
                expected: 12,
                len: 13,
                ..
            }
        ));

        // Count 0 with no addresses is complete but must be ignored (RFC 9568 erratum 8299).
        let err = decode(
            &with(&|b| {
                b[3] = 0;
                b.truncate(HEADER_LEN)
            }),
            src,
            dst,
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::NoAddresses { vrid: 51, .. }));

        // Interval 0 (RFC 9568 erratum 8301), also with only reserved bits set.
        for hi in [0x00, 0xf0] {
            let err = decode(
                &with(&|b| {
                    b[4] = hi;
                    b[5] = 0
                }),
                src,
                dst,
            )
            .unwrap_err();
            assert!(matches!(err, DecodeError::ZeroInterval { vrid: 51, .. }));
        }

        // One bit flipped anywhere in the message breaks the checksum.
        for i in 0..good.len() {
            if (6..8).contains(&i) {
                continue;
            }
            let mut b = good.clone();
            b[i] ^= 0x01;
            match decode(&b, src, dst) {
                Err(DecodeError::BadChecksum {
                    found, expected, ..
                }) => {
                    assert_eq!(found, 0xfd98, "byte {i}");
                    assert_ne!(expected, found);
                }
                // Flipping the version or type bits is caught before the checksum.
                Err(DecodeError::BadVersion { .. } | DecodeError::BadType { .. }) if i == 0 => {}
                Err(DecodeError::BadLength { .. }) if i == 3 => {}
                other => panic!("byte {i}: {other:?}"),
            }
        }
        let mut b = good.clone();
        b[7] ^= 0x80;
        assert!(matches!(
            decode(&b, src, dst),
            Err(DecodeError::BadChecksum {
                expected: 0xfd98,
                ..
            })
        ));

        // Same bytes, different sender: the pseudo-header catches a spoofed source.
        assert!(matches!(
            decode(&good, ip("198.18.0.9"), dst),
            Err(DecodeError::BadChecksum { .. })
        ));
    }

    #[test]
    fn rejects_family_confusion() {
        let v4 = hex(V4_MESSAGE);
        let err = decode(&v4, ip("198.18.0.1"), ip("ff02::12")).unwrap_err();
        assert!(matches!(err, DecodeError::MixedFamilies { .. }));
        // An IPv4 advert under an IPv6 header has the wrong length for its count.
        let err = decode(&v4, ip("fe80::1"), ip("ff02::12")).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::BadLength {
                expected: 24,
                len: 12,
                ..
            }
        ));
        let v6 = hex(V6_MESSAGE);
        let err = decode(&v6, ip("198.18.0.1"), ip("224.0.0.18")).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::BadLength {
                expected: 12,
                len: 24,
                ..
            }
        ));
    }

    #[test]
    fn ttl_other_than_255_is_dropped() {
        let (src, dst) = (ip("198.18.0.1"), ip("224.0.0.18"));
        let bytes = hex(V4_MESSAGE);
        assert!(receive(255, &bytes, src, dst).is_ok());
        for ttl in [0, 1, 64, 254] {
            assert_eq!(
                receive(ttl, &bytes, src, dst).unwrap_err(),
                DecodeError::BadTtl { src, ttl }
            );
        }
        let (src6, dst6) = (ip(V6_SRC), ip("ff02::12"));
        assert!(receive(255, &hex(V6_MESSAGE), src6, dst6).is_ok());
        assert!(matches!(
            receive(254, &hex(V6_MESSAGE), src6, dst6),
            Err(DecodeError::BadTtl { ttl: 254, .. })
        ));
    }

    /// Recomputes an IPv4 header checksum after a test edited the header.
    fn reheader(mut p: Vec<u8>) -> Vec<u8> {
        p[10..12].fill(0);
        let sum = !fold(sum_words(0, &p[..20]));
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    #[test]
    fn ipv4_datagram_from_keepalived_decodes() {
        let got = decode_ipv4_packet(&hex(V4_DATAGRAM)).unwrap();
        assert_eq!(got.src, ip("198.18.0.1"));
        assert_eq!(got.dst, ip("224.0.0.18"));
        assert_eq!(got.advert, advert(51, 100, 100, &["198.18.0.25"]));
        // Ethernet pads short frames; bytes past the total length are not the advert's.
        let mut padded = hex(V4_DATAGRAM);
        padded.extend_from_slice(&[0; 14]);
        assert_eq!(decode_ipv4_packet(&padded).unwrap(), got);
    }

    #[test]
    fn ipv4_datagram_encodes_like_keepalived() {
        let adv = advert(51, 100, 100, &["198.18.0.25"]);
        let got =
            encode_ipv4_packet(&adv, Ipv4Addr::new(198, 18, 0, 1), super::super::GROUP_V4).unwrap();
        // keepalived's datagram with identification 1 -> 0: the header checksum rises by 1
        // (0x1487 -> 0x1488) since one's complement sum dropped by 1.
        let mut want = hex(V4_DATAGRAM);
        want[5] = 0;
        want[10..12].copy_from_slice(&[0x14, 0x88]);
        assert_eq!(got, want);
        assert_eq!(decode_ipv4_packet(&got).unwrap().advert, adv);
    }

    #[test]
    fn ipv4_datagram_rejections() {
        let good = hex(V4_DATAGRAM);
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            reheader(p)
        };
        let src = ip("198.18.0.1");

        let err = decode_ipv4_packet(&edit(&|p| p[8] = 64)).unwrap_err();
        assert_eq!(err, DecodeError::BadTtl { src, ttl: 64 });
        let err = decode_ipv4_packet(&edit(&|p| p[9] = 6)).unwrap_err();
        assert_eq!(err, DecodeError::BadProtocol { src, protocol: 6 });
        let err = decode_ipv4_packet(&edit(&|p| p[6] = 0x20)).unwrap_err();
        assert_eq!(err, DecodeError::BadIpv4Header { reason: "fragment" });
        let err = decode_ipv4_packet(&edit(&|p| p[0] = 0x65)).unwrap_err();
        assert!(matches!(err, DecodeError::BadIpv4Header { .. }));
        let err = decode_ipv4_packet(&edit(&|p| p[0] = 0x44)).unwrap_err();
        assert!(matches!(err, DecodeError::BadIpv4Header { .. }));
        let err = decode_ipv4_packet(&edit(&|p| p[3] = 0x40)).unwrap_err();
        assert!(matches!(err, DecodeError::BadIpv4Header { .. }));
        let err = decode_ipv4_packet(&edit(&|p| p[3] = 0x10)).unwrap_err();
        assert!(matches!(err, DecodeError::BadIpv4Header { .. }));
        let mut p = good.clone();
        p[11] ^= 1;
        let err = decode_ipv4_packet(&p).unwrap_err();
        assert_eq!(
            err,
            DecodeError::BadIpv4Header {
                reason: "header checksum"
            }
        );
        // Total length cutting into the advert: the VRRP length check notices.
        let err = decode_ipv4_packet(&edit(&|p| p[3] = 0x1f)).unwrap_err();
        assert!(matches!(err, DecodeError::BadLength { len: 11, .. }));
        // DF set is fine (a not-fragmented datagram).
        assert!(decode_ipv4_packet(&edit(&|p| p[6] = 0x40)).is_ok());
    }

    #[test]
    fn encode_refuses_what_cannot_be_sent() {
        let (src, dst) = (ip("198.18.0.1"), ip("224.0.0.18"));
        let err = encode(&advert(5, 100, 100, &[]), src, dst).unwrap_err();
        assert_eq!(err, EncodeError::NoAddresses { vrid: 5 });
        for cs in [0, 4096, u16::MAX] {
            let err = encode(&advert(5, 100, cs, &["198.18.0.25"]), src, dst).unwrap_err();
            assert_eq!(err, EncodeError::BadInterval { vrid: 5, cs });
        }
        let err = encode(&advert(5, 100, 100, &["2001:db8::1"]), src, dst).unwrap_err();
        assert!(matches!(
            err,
            EncodeError::FamilyMismatch {
                what: "virtual address",
                ..
            }
        ));
        let err = encode(&advert(5, 100, 100, &["198.18.0.25"]), src, ip("ff02::12")).unwrap_err();
        assert!(matches!(
            err,
            EncodeError::FamilyMismatch {
                what: "destination",
                ..
            }
        ));
        let many = Advertisement {
            vrid: 5,
            priority: 100,
            max_adver_int_cs: 100,
            addresses: (0..256u32).map(|i| IpAddr::V4(Ipv4Addr::from(i))).collect(),
        };
        let err = encode(&many, src, dst).unwrap_err();
        assert_eq!(
            err,
            EncodeError::TooManyAddresses {
                vrid: 5,
                count: 256
            }
        );
    }

    /// No byte string makes decoding panic: every prefix of valid packets, and a few
    /// thousand pseudo-random buffers with a plausible first byte.
    #[test]
    fn decode_never_panics() {
        let (src, dst) = (ip("198.18.0.1"), ip("224.0.0.18"));
        let (src6, dst6) = (ip(V6_SRC), ip("ff02::12"));
        for packet in [hex(V4_MESSAGE), hex(V6_MESSAGE)] {
            for n in 0..=packet.len() {
                let _ = decode(&packet[..n], src, dst);
                let _ = decode(&packet[..n], src6, dst6);
            }
        }
        let datagram = hex(V4_DATAGRAM);
        for n in 0..=datagram.len() {
            let _ = decode_ipv4_packet(&datagram[..n]);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            // xorshift64: deterministic, dependency-free noise.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let len = (next() % 80) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first = if next() % 2 == 0 { 0x31 } else { 0x45 };
            }
            let _ = decode(&buf, src, dst);
            let _ = decode(&buf, src6, dst6);
            let _ = decode_ipv4_packet(&buf);
        }
    }
}
