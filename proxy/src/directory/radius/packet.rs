//! The RADIUS packet format, as far as a lookup needs it (RFC 2865 sections 3 to 5):
//! Access-Request encoding with User-Password hiding, reply decoding, the Response
//! Authenticator and the Message-Authenticator (RFC 3579 section 3.2, HMAC-MD5).
//!
//! Written here rather than taken from a crate: the `radius` crate neither computes nor
//! verifies Message-Authenticator, appends attributes at the end (a request's must come
//! first since the BlastRADIUS attack, CVE-2024-3596) and pulls in a tokio runtime with
//! every feature and a second `rand`; the codec itself is a few checks over MD5 and
//! HMAC-MD5 from RustCrypto.

use hmac::Mac as _;
use md5::{Digest as _, Md5};

pub const ACCESS_REQUEST: u8 = 1;
pub const ACCESS_ACCEPT: u8 = 2;
pub const ACCESS_REJECT: u8 = 3;
pub const ACCESS_CHALLENGE: u8 = 11;

pub const USER_NAME: u8 = 1;
pub const USER_PASSWORD: u8 = 2;
pub const NAS_IDENTIFIER: u8 = 32;
pub const MESSAGE_AUTHENTICATOR: u8 = 80;

/// Code, Identifier, Length and Authenticator.
pub const HEADER: usize = 20;
/// The largest packet RFC 2865 allows; a longer datagram is not a reply.
pub const MAX_PACKET: usize = 4096;
/// An attribute's value is at most 253 octets.
pub const MAX_VALUE: usize = 253;
/// RFC 2865 section 5.2 hides at most 128 octets of password.
pub const MAX_PASSWORD: usize = 128;

type HmacMd5 = hmac::Hmac<Md5>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{0} octets: shorter than a RADIUS header")]
    Short(usize),
    #[error("{0} octets: longer than 4096")]
    Long(usize),
    #[error("length field {field} does not fit the {got} octets received")]
    Length { field: usize, got: usize },
    #[error("attribute at offset {0} is malformed")]
    Attribute(usize),
    #[error("a value of {0} octets does not fit an attribute")]
    ValueTooLong(usize),
    #[error("identifier {got} answers no request of ours (sent {sent})")]
    Identifier { got: u8, sent: u8 },
    #[error("wrong Response Authenticator (a wrong secret, or a forged reply)")]
    ResponseAuthenticator,
    #[error("no Message-Authenticator")]
    NoMessageAuthenticator,
    #[error("wrong Message-Authenticator (a wrong secret, or a forged reply)")]
    MessageAuthenticator,
    #[error("unexpected code {0}")]
    Code(u8),
}

/// A decoded packet; attributes in their order, values borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub code: u8,
    pub identifier: u8,
    pub authenticator: [u8; 16],
    pub attributes: Vec<(u8, &'a [u8])>,
}

impl Packet<'_> {
    /// The values of every attribute of `kind`, in order.
    pub fn values(&self, kind: u8) -> impl Iterator<Item = &[u8]> {
        self.attributes
            .iter()
            .filter(move |(t, _)| *t == kind)
            .map(|(_, v)| *v)
    }
}

/// Checks a datagram's framing (length, attributes well formed) and splits it.
pub fn decode(datagram: &[u8]) -> Result<Packet<'_>, PacketError> {
    if datagram.len() > MAX_PACKET {
        return Err(PacketError::Long(datagram.len()));
    }
    if datagram.len() < HEADER {
        return Err(PacketError::Short(datagram.len()));
    }
    let field = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    // Octets past the length field are padding (RFC 2865 section 3); a shorter datagram
    // than the field says is truncated.
    if !(HEADER..=datagram.len()).contains(&field) {
        return Err(PacketError::Length {
            field,
            got: datagram.len(),
        });
    }
    let packet = &datagram[..field];
    let mut authenticator = [0; 16];
    authenticator.copy_from_slice(&packet[4..HEADER]);
    let mut attributes = Vec::new();
    let mut at = HEADER;
    while at < packet.len() {
        let (Some(&kind), Some(&len)) = (packet.get(at), packet.get(at + 1)) else {
            return Err(PacketError::Attribute(at));
        };
        let len = usize::from(len);
        let value = packet
            .get(at + 2..at + len)
            .filter(|_| len >= 2)
            .ok_or(PacketError::Attribute(at))?;
        attributes.push((kind, value));
        at += len;
    }
    Ok(Packet {
        code: packet[0],
        identifier: packet[1],
        authenticator,
        attributes,
    })
}

fn push_attribute(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Result<(), PacketError> {
    if value.len() > MAX_VALUE {
        return Err(PacketError::ValueTooLong(value.len()));
    }
    out.push(kind);
    out.push(value.len() as u8 + 2);
    out.extend_from_slice(value);
    Ok(())
}

/// Encodes a packet; `Length` is filled in. Fails on a value over 253 octets or a packet
/// over 4096.
pub fn encode(
    code: u8,
    identifier: u8,
    authenticator: &[u8; 16],
    attributes: &[(u8, &[u8])],
) -> Result<Vec<u8>, PacketError> {
    let mut out = vec![code, identifier, 0, 0];
    out.extend_from_slice(authenticator);
    for (kind, value) in attributes {
        push_attribute(&mut out, *kind, value)?;
    }
    if out.len() > MAX_PACKET {
        return Err(PacketError::Long(out.len()));
    }
    let len = (out.len() as u16).to_be_bytes();
    out[2..4].copy_from_slice(&len);
    Ok(out)
}

/// User-Password hidden as RFC 2865 section 5.2 says: padded with NULs to a multiple of
/// 16 octets (16 for an empty one), each block XORed with MD5(secret + the previous
/// block, the Request Authenticator for the first).
pub fn hide_password(
    password: &[u8],
    secret: &[u8],
    request_authenticator: &[u8; 16],
) -> Result<Vec<u8>, PacketError> {
    if password.len() > MAX_PASSWORD {
        return Err(PacketError::ValueTooLong(password.len()));
    }
    let blocks = password.len().div_ceil(16).max(1);
    let mut out = password.to_vec();
    out.resize(blocks * 16, 0);
    let mut previous: [u8; 16] = *request_authenticator;
    for block in out.chunks_mut(16) {
        let b = Md5::new()
            .chain_update(secret)
            .chain_update(previous)
            .finalize();
        for (p, k) in block.iter_mut().zip(b.iter()) {
            *p ^= k;
        }
        previous.copy_from_slice(block);
    }
    Ok(out)
}

/// HMAC-MD5 over `packet` keyed with the secret, as RFC 3579 section 3.2 computes a
/// Message-Authenticator (whose own value the caller has zeroed, and whose Authenticator
/// field holds the request's).
fn hmac_md5(secret: &[u8], packet: &[u8]) -> HmacMd5 {
    let mut mac =
        <HmacMd5 as hmac::KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable_hmac());
    mac.update(packet);
    mac
}

/// HMAC takes keys of any length; this is never reached.
#[cold]
fn unreachable_hmac() -> HmacMd5 {
    <HmacMd5 as hmac::KeyInit>::new(&Default::default())
}

/// An Access-Request: Message-Authenticator first (so that no attribute a server reads
/// can precede the proof of the secret), then `attributes`. `attributes` holds User-Name,
/// the hidden User-Password and NAS-Identifier as the caller built them.
pub fn access_request(
    identifier: u8,
    authenticator: &[u8; 16],
    secret: &[u8],
    attributes: &[(u8, &[u8])],
) -> Result<Vec<u8>, PacketError> {
    let mut all: Vec<(u8, &[u8])> = vec![(MESSAGE_AUTHENTICATOR, &[0; 16])];
    all.extend_from_slice(attributes);
    let mut out = encode(ACCESS_REQUEST, identifier, authenticator, &all)?;
    let mac = hmac_md5(secret, &out).finalize().into_bytes();
    // The Message-Authenticator's value follows the header and its type and length.
    out[HEADER + 2..HEADER + 18].copy_from_slice(&mac);
    Ok(out)
}

/// Whether `reply`'s Response Authenticator is MD5(Code + Identifier + Length + Request
/// Authenticator + Attributes + secret) (RFC 2865 section 3).
pub fn response_authenticator_ok(
    reply: &[u8],
    request_authenticator: &[u8; 16],
    secret: &[u8],
) -> bool {
    let Ok(p) = decode(reply) else {
        return false;
    };
    let len = usize::from(u16::from_be_bytes([reply[2], reply[3]]));
    let expected = Md5::new()
        .chain_update(&reply[..4])
        .chain_update(request_authenticator)
        .chain_update(&reply[HEADER..len])
        .chain_update(secret)
        .finalize();
    // Constant time: a forger learns nothing from how fast a guess is refused.
    expected
        .iter()
        .zip(p.authenticator.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Checks `reply`'s Message-Authenticator: present exactly once, 16 octets, and the
/// HMAC-MD5 of the reply with the Request Authenticator in its Authenticator field and
/// the Message-Authenticator zeroed (RFC 3579 section 3.2).
pub fn message_authenticator_ok(
    reply: &[u8],
    request_authenticator: &[u8; 16],
    secret: &[u8],
) -> Result<(), PacketError> {
    let p = decode(reply)?;
    let len = usize::from(u16::from_be_bytes([reply[2], reply[3]]));
    let mut found = None;
    let mut at = HEADER;
    for (kind, value) in &p.attributes {
        if *kind == MESSAGE_AUTHENTICATOR {
            if found.is_some() || value.len() != 16 {
                return Err(PacketError::MessageAuthenticator);
            }
            found = Some(at + 2);
        }
        at += 2 + value.len();
    }
    let at = found.ok_or(PacketError::NoMessageAuthenticator)?;
    let mut copy = reply[..len].to_vec();
    copy[4..HEADER].copy_from_slice(request_authenticator);
    copy[at..at + 16].fill(0);
    hmac_md5(secret, &copy)
        .verify_slice(&reply[at..at + 16])
        .map_err(|_| PacketError::MessageAuthenticator)
}

/// A reply to the request `identifier`/`request_authenticator`, trusted only when it
/// carries a valid Response Authenticator AND a valid Message-Authenticator: a reply
/// without one is refused, whatever else it proves (the BlastRADIUS fix). Its code is an
/// Access-Accept or an Access-Reject.
pub fn verify_reply<'a>(
    reply: &'a [u8],
    identifier: u8,
    request_authenticator: &[u8; 16],
    secret: &[u8],
) -> Result<Packet<'a>, PacketError> {
    let p = decode(reply)?;
    if p.identifier != identifier {
        return Err(PacketError::Identifier {
            got: p.identifier,
            sent: identifier,
        });
    }
    if !response_authenticator_ok(reply, request_authenticator, secret) {
        return Err(PacketError::ResponseAuthenticator);
    }
    message_authenticator_ok(reply, request_authenticator, secret)?;
    match p.code {
        ACCESS_ACCEPT | ACCESS_REJECT => Ok(p),
        other => Err(PacketError::Code(other)),
    }
}

/// A reply as a server signs it, with a Message-Authenticator (first) when
/// `with_message_authenticator`: for the tests and the lab's fake servers, which must
/// answer like a server does (and, on purpose, like a careless one).
pub fn signed_reply(
    code: u8,
    identifier: u8,
    request_authenticator: &[u8; 16],
    secret: &[u8],
    attributes: &[(u8, &[u8])],
    with_message_authenticator: bool,
) -> Vec<u8> {
    let mut all: Vec<(u8, &[u8])> = Vec::new();
    if with_message_authenticator {
        all.push((MESSAGE_AUTHENTICATOR, &[0; 16]));
    }
    all.extend_from_slice(attributes);
    let mut out = encode(code, identifier, request_authenticator, &all).unwrap_or_default();
    if with_message_authenticator {
        let mac = hmac_md5(secret, &out).finalize().into_bytes();
        out[HEADER + 2..HEADER + 18].copy_from_slice(&mac);
    }
    sign_response(&mut out, request_authenticator, secret);
    out
}

/// Sets `reply`'s Response Authenticator for the request's authenticator, over the reply
/// as it is (a test's fake server forges a Message-Authenticator and signs the rest).
pub fn sign_response(reply: &mut [u8], request_authenticator: &[u8; 16], secret: &[u8]) {
    if reply.len() < HEADER {
        return;
    }
    let response = Md5::new()
        .chain_update(&reply[..4])
        .chain_update(request_authenticator)
        .chain_update(&reply[HEADER..])
        .chain_update(secret)
        .finalize();
    reply[4..HEADER].copy_from_slice(&response);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 2865 section 7.1: nemo logs in with "arctangent"; secret "xyzzy5461".
    const REQUEST: &str = "01 00 00 38 0f 40 3f 94 73 97 80 57 bd 83 d5 cb
        98 f4 22 7a 01 06 6e 65 6d 6f 02 12 0d be 70 8d 93 d4 13 ce 31 96 e4 3f 78 2a 0a ee
        04 06 c0 a8 01 10 05 06 00 00 00 03";
    const ACCEPT: &str = "02 00 00 26 86 fe 22 0e 76 24 ba 2a 10 05 f6 bf
        9b 55 e0 b2 06 06 00 00 00 01 0f 06 00 00 00 00 0e 06 c0 a8 01 03";
    const SECRET: &[u8] = b"xyzzy5461";

    #[test]
    fn the_rfc_2865_example_encodes_and_decodes() {
        let request = hex(REQUEST);
        let ra: [u8; 16] = request[4..20].try_into().unwrap();
        let hidden = hide_password(b"arctangent", SECRET, &ra).unwrap();
        let built = encode(
            ACCESS_REQUEST,
            0,
            &ra,
            &[
                (USER_NAME, b"nemo"),
                (USER_PASSWORD, &hidden),
                (4, &[192, 168, 1, 16]),
                (5, &[0, 0, 0, 3]),
            ],
        )
        .unwrap();
        assert_eq!(built, request);
        let p = decode(&request).unwrap();
        assert_eq!((p.code, p.identifier), (ACCESS_REQUEST, 0));
        assert_eq!(p.values(USER_NAME).collect::<Vec<_>>(), [b"nemo"]);

        let accept = hex(ACCEPT);
        assert!(response_authenticator_ok(&accept, &ra, SECRET));
        assert!(!response_authenticator_ok(&accept, &ra, b"xyzzy5462"));
        let p = decode(&accept).unwrap();
        assert_eq!(p.code, ACCESS_ACCEPT);
        assert_eq!(
            p.attributes,
            [
                (6, &[0, 0, 0, 1][..]),
                (15, &[0, 0, 0, 0][..]),
                (14, &[192, 168, 1, 3][..])
            ]
        );
        // The example predates Message-Authenticator: it proves the secret, yet is refused.
        assert_eq!(
            verify_reply(&accept, 0, &ra, SECRET),
            Err(PacketError::NoMessageAuthenticator)
        );
    }

    #[test]
    fn long_passwords_chain_their_blocks() {
        let ra = [7; 16];
        let pw = b"a password longer than sixteen octets";
        let hidden = hide_password(pw, b"secret", &ra).unwrap();
        assert_eq!(hidden.len(), 48);
        // Undo the hiding: each block's key depends on the previous hidden block.
        let mut previous = ra.to_vec();
        let mut plain = Vec::new();
        for block in hidden.chunks(16) {
            let b = Md5::new()
                .chain_update(b"secret")
                .chain_update(&previous)
                .finalize();
            plain.extend(block.iter().zip(b.iter()).map(|(c, k)| c ^ k));
            previous = block.to_vec();
        }
        assert_eq!(&plain[..pw.len()], pw);
        assert!(plain[pw.len()..].iter().all(|&b| b == 0));
        assert_eq!(hide_password(b"", b"secret", &ra).unwrap().len(), 16);
        assert!(hide_password(&[b'x'; 129], b"secret", &ra).is_err());
    }

    #[test]
    fn requests_carry_a_message_authenticator_first() {
        let ra = [0x42; 16];
        let req = access_request(
            9,
            &ra,
            b"s3cret",
            &[(USER_NAME, b"alice"), (NAS_IDENTIFIER, b"rb")],
        )
        .unwrap();
        let p = decode(&req).unwrap();
        assert_eq!(p.attributes[0].0, MESSAGE_AUTHENTICATOR);
        assert_eq!(p.attributes[1], (USER_NAME, &b"alice"[..]));
        // A request's HMAC is over itself as sent (its own Request Authenticator).
        message_authenticator_ok(&req, &ra, b"s3cret").unwrap();
        assert_eq!(
            message_authenticator_ok(&req, &ra, b"other"),
            Err(PacketError::MessageAuthenticator)
        );
        // Known answer: HMAC-MD5 over these bytes with the value zeroed, from Python's
        // hmac module.
        assert_eq!(&req[22..38], &hex("1d9244970a9c2848eee712fa62f9d61d")[..]);
    }

    #[test]
    fn replies_need_both_authenticators() {
        let ra = [3; 16];
        let attrs: &[(u8, &[u8])] = &[(18, b"be1")];
        let good = signed_reply(ACCESS_ACCEPT, 5, &ra, b"s", attrs, true);
        let p = verify_reply(&good, 5, &ra, b"s").unwrap();
        assert_eq!(p.values(18).collect::<Vec<_>>(), [b"be1"]);
        assert!(matches!(
            verify_reply(&good, 6, &ra, b"s"),
            Err(PacketError::Identifier { .. })
        ));
        assert_eq!(
            verify_reply(&good, 5, &[4; 16], b"s"),
            Err(PacketError::ResponseAuthenticator)
        );
        // Without a Message-Authenticator: refused though the Response Authenticator holds.
        let bare = signed_reply(ACCESS_ACCEPT, 5, &ra, b"s", attrs, false);
        assert!(response_authenticator_ok(&bare, &ra, b"s"));
        assert_eq!(
            verify_reply(&bare, 5, &ra, b"s"),
            Err(PacketError::NoMessageAuthenticator)
        );
        // A forged Message-Authenticator with a valid Response Authenticator over it.
        let mut forged = good.clone();
        forged[HEADER + 2] ^= 1;
        sign_response(&mut forged, &ra, b"s");
        assert!(response_authenticator_ok(&forged, &ra, b"s"));
        assert_eq!(
            verify_reply(&forged, 5, &ra, b"s"),
            Err(PacketError::MessageAuthenticator)
        );
        // Signed with another secret.
        let other = signed_reply(ACCESS_ACCEPT, 5, &ra, b"t", attrs, true);
        assert_eq!(
            verify_reply(&other, 5, &ra, b"s"),
            Err(PacketError::ResponseAuthenticator)
        );
        // A challenge is no answer for a lookup.
        let challenge = signed_reply(ACCESS_CHALLENGE, 5, &ra, b"s", attrs, true);
        assert_eq!(
            verify_reply(&challenge, 5, &ra, b"s"),
            Err(PacketError::Code(ACCESS_CHALLENGE))
        );
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let ra = [3; 16];
        let good = signed_reply(ACCESS_ACCEPT, 5, &ra, b"s", &[(18, b"be1")], true);
        assert_eq!(decode(&good[..19]), Err(PacketError::Short(19)));
        assert!(matches!(
            decode(&good[..30]),
            Err(PacketError::Length { .. })
        ));
        let mut big = good.clone();
        big.resize(4097, 0);
        assert_eq!(decode(&big), Err(PacketError::Long(4097)));
        // Padding past the length field is ignored.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 10]);
        assert!(verify_reply(&padded, 5, &ra, b"s").is_ok());
        // An attribute whose length runs past the packet, or is below 2.
        for bad_len in [0u8, 1, 60] {
            let mut bad = good.clone();
            bad[HEADER + 19] = bad_len;
            assert!(
                matches!(decode(&bad), Err(PacketError::Attribute(_))),
                "length {bad_len}"
            );
        }
        // A lone type octet at the end.
        let mut bad = good.clone();
        bad.push(18);
        let len = (bad.len() as u16).to_be_bytes();
        bad[2..4].copy_from_slice(&len);
        assert!(matches!(decode(&bad), Err(PacketError::Attribute(_))));
        // Two Message-Authenticators.
        let twice = signed_reply(
            ACCESS_ACCEPT,
            5,
            &ra,
            b"s",
            &[(MESSAGE_AUTHENTICATOR, &[0; 16])],
            true,
        );
        assert_eq!(
            message_authenticator_ok(&twice, &ra, b"s"),
            Err(PacketError::MessageAuthenticator)
        );
    }
}
