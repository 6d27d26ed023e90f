//! The bad-input catalogue: what the proxy answers to malformed input, table by table, at
//! the parsers that see it first (SMTP and POP3 command lines, a back-end agent's report,
//! VRRP packets). Pure functions only: no namespace, no privilege. The fuzz targets in
//! `fuzz/` look for inputs nobody thought of; this file pins down the answers to the ones
//! we did.

use std::net::{IpAddr, Ipv4Addr};

use robustifier::agent_wire;
use robustifier::pop3;
use robustifier::smtp::command::Command as SmtpCommand;
use robustifier::vrrp::packet::{self, Advertisement, DecodeError};

/// `(line, code, enhanced code)` of the reply to each refused SMTP command line.
const SMTP: &[(&str, u16, &str)] = &[
    ("NOOP\0", 500, "5.5.2"),
    ("HELO a\rb", 500, "5.5.2"),
    ("HELO a\nb", 500, "5.5.2"),
    ("HELO a\u{1b}b", 500, "5.5.2"),
    ("HELO a\u{85}b", 500, "5.5.2"),
    ("FOO bar", 500, "5.5.2"),
    ("XCLIENT ADDR=198.18.0.1", 502, "5.5.1"),
    ("XFORWARD ADDR=198.18.0.1", 502, "5.5.1"),
    ("ETRN example.org", 502, "5.5.1"),
    ("EHLO", 501, "5.5.4"),
    ("MAIL FROM:alice@example.org", 501, "5.1.3"),
    ("MAIL FROM:<alice>", 501, "5.1.3"),
    ("MAIL FROM:<a..b@example.org>", 501, "5.1.3"),
    ("MAIL FROM:<a@-example.org>", 501, "5.1.3"),
    ("MAIL FROM:<a@example.org> SIZE=ten", 501, "5.5.4"),
    ("MAIL FROM:<a@example.org> BODY=BINARYMIME", 501, "5.5.4"),
    ("MAIL FROM:<a@example.org> SIZE=1 SIZE=2", 501, "5.5.4"),
    ("MAIL FROM:<a@example.org> FOO=1", 555, "5.5.4"),
    ("MAIL FROM:<j\u{f6}rg@example.org>", 553, "5.6.7"),
    ("RCPT TO:<>", 501, "5.1.3"),
    ("RCPT TO:<a@[300.1.1.1]>", 501, "5.1.3"),
    ("RCPT TO:<a@example.org> NOTIFY=SOMETIMES", 501, "5.5.4"),
];

#[test]
fn smtp_command_lines() {
    for &(line, code, enhanced) in SMTP {
        let reply = match SmtpCommand::parse(line.as_bytes()) {
            Ok(c) => panic!("{line:?} was accepted as {c:?}"),
            Err(e) => e.reply(),
        };
        let got = reply.enhanced.map(|(c, s, d)| format!("{c}.{s}.{d}"));
        assert_eq!(
            (reply.code, got.as_deref()),
            (code, Some(enhanced)),
            "{line:?}"
        );
    }
}

#[test]
fn smtp_address_bounds() {
    let long_local = format!("RCPT TO:<{}@example.org>", "a".repeat(65));
    let long_label = format!("RCPT TO:<a@{}.org>", "a".repeat(64));
    let long_literal = format!("RCPT TO:<a@[tag:{}]>", "o".repeat(260));
    for line in [long_local, long_label, long_literal] {
        let e = SmtpCommand::parse(line.as_bytes()).expect_err(&line);
        assert_eq!(e.reply().code, 501, "{line}");
    }
}

/// `(line, the -ERR response's text)` for each refused POP3 command line.
const POP3: &[(&str, &str)] = &[
    ("USER", "-ERR Bad arguments: expected USER name\r\n"),
    ("USER a b", "-ERR Bad arguments: expected USER name\r\n"),
    ("PASS", "-ERR Bad arguments: PASS requires a password\r\n"),
    (
        "APOP mrose c4c9334bac560ecc979e58001b3e22fb",
        "-ERR [AUTH] APOP is not supported, use USER/PASS or AUTH\r\n",
    ),
    (
        "USER a\0b",
        "-ERR Syntax error: NUL character in command\r\n",
    ),
    ("PASS a\rb", "-ERR Syntax error: bare CR in command\r\n"),
    (
        "PASS a\u{85}b",
        "-ERR Syntax error: control character in command\r\n",
    ),
    ("XTND XMIT", "-ERR Unknown command\r\n"),
    (
        "STAT 1",
        "-ERR Bad arguments: wrong number of arguments\r\n",
    ),
];

#[test]
fn pop3_command_lines() {
    for &(line, response) in POP3 {
        let got = match pop3::Command::parse(line.as_bytes()) {
            Ok(c) => panic!("{line:?} was accepted as {c:?}"),
            Err(e) => e.response().to_string(),
        };
        assert_eq!(got, response, "{line:?}");
    }
    let long = format!("USER {}", "a".repeat(250));
    assert_eq!(
        pop3::Command::parse(long.as_bytes()).map_err(|e| e.response().to_string()),
        Err("-ERR Command line too long\r\n".to_owned())
    );
    for line in ["RETR 0", "RETR -1", "DELE x", "TOP 1 x", "LIST 99999999999"] {
        let e = pop3::Command::parse(line.as_bytes()).expect_err(line);
        assert!(
            e.response().to_string().starts_with("-ERR Bad arguments"),
            "{line}"
        );
    }
}

#[test]
fn agent_reports() {
    for bad in [
        "",
        "HTTP/1.1 200 OK",
        "robustifier-agent/2 mailq=1",
        "robustifier-agent/1 mailq=lots",
        "robustifier-agent/1 mailq=-1",
        "robustifier-agent/1 runq=fast",
        "robustifier-agent/1 weight=1.5",
    ] {
        assert!(agent_wire::parse(bad).is_err(), "{bad:?} was accepted");
    }
    // Out-of-range figures are clamped, unknown fields and words without `=` ignored.
    let r = agent_wire::parse(
        "robustifier-agent/1 runq=-3 disk_permille=5000 weight=99999 drain=yes later=1 word",
    )
    .expect("clamped, not refused");
    assert_eq!(
        (r.run_queue_milli, r.disk_permille, r.weight, r.drain),
        (0, 1000, Some(65535), false)
    );
}

const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
const DST: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18));

fn advert() -> Vec<u8> {
    let adv = Advertisement {
        vrid: 51,
        priority: 150,
        max_adver_int_cs: 100,
        addresses: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 25))],
    };
    packet::encode(&adv, SRC, DST).expect("a valid advert")
}

/// The RFC 5798 checksum over the IPv4 pseudo-header and `msg`, written into `msg`.
fn fix_checksum(msg: &mut [u8]) {
    msg[6] = 0;
    msg[7] = 0;
    let mut words = vec![198, 18, 0, 1, 224, 0, 0, 18, 0, 112];
    words.extend_from_slice(&u16::try_from(msg.len()).unwrap().to_be_bytes());
    words.extend_from_slice(msg);
    if words.len() % 2 == 1 {
        words.push(0);
    }
    let mut sum: u32 = words
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    msg[6..8].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[test]
fn vrrp_adverts() {
    assert!(packet::decode(&advert(), SRC, DST).is_ok());
    type Mutation = fn(&mut Vec<u8>);
    type Expected = fn(&DecodeError) -> bool;
    let cases: &[(&str, Mutation, Expected)] = &[
        (
            "truncated",
            |m| m.truncate(7),
            |e| matches!(e, DecodeError::Truncated { len: 7, .. }),
        ),
        (
            "VRRPv2",
            |m| m[0] = 0x21,
            |e| matches!(e, DecodeError::BadVersion { version: 2, .. }),
        ),
        (
            "type 2",
            |m| m[0] = 0x32,
            |e| matches!(e, DecodeError::BadType { kind: 2, .. }),
        ),
        (
            "trailing byte",
            |m| m.push(0),
            |e| {
                matches!(
                    e,
                    DecodeError::BadLength {
                        expected: 12,
                        len: 13,
                        ..
                    }
                )
            },
        ),
        (
            "count says two",
            |m| m[3] = 2,
            |e| matches!(e, DecodeError::BadLength { count: 2, .. }),
        ),
        (
            "checksum",
            |m| m[7] ^= 1,
            |e| matches!(e, DecodeError::BadChecksum { .. }),
        ),
        (
            "no addresses",
            |m| {
                m.truncate(8);
                m[3] = 0;
                fix_checksum(m);
            },
            |e| matches!(e, DecodeError::NoAddresses { .. }),
        ),
        (
            "interval 0",
            |m| {
                m[4] = 0xf0; // reserved bits only
                m[5] = 0;
                fix_checksum(m);
            },
            |e| matches!(e, DecodeError::ZeroInterval { .. }),
        ),
    ];
    for (name, mutate, expected) in cases {
        let mut m = advert();
        mutate(&mut m);
        let e = packet::decode(&m, SRC, DST).expect_err(name);
        assert!(expected(&e), "{name}: {e:?}");
    }
    let v6 = "2001:db8::1".parse().unwrap();
    assert!(matches!(
        packet::decode(&advert(), SRC, v6),
        Err(DecodeError::MixedFamilies { .. })
    ));
    assert!(matches!(
        packet::receive(64, &advert(), SRC, DST),
        Err(DecodeError::BadTtl { ttl: 64, .. })
    ));
}

#[test]
fn vrrp_ipv4_datagrams() {
    let adv = Advertisement {
        vrid: 51,
        priority: 150,
        max_adver_int_cs: 100,
        addresses: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 25))],
    };
    let good = packet::encode_ipv4_packet(
        &adv,
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(224, 0, 0, 18),
    )
    .expect("a valid advert");
    assert_eq!(packet::decode_ipv4_packet(&good).map(|r| r.advert), Ok(adv));
    let header = |e: DecodeError| match e {
        DecodeError::BadIpv4Header { reason } => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        header(packet::decode_ipv4_packet(&good[..19]).unwrap_err()),
        "shorter than 20 bytes"
    );
    let mut v6 = good.clone();
    v6[0] = 0x65;
    assert_eq!(
        header(packet::decode_ipv4_packet(&v6).unwrap_err()),
        "version is not 4"
    );
    let mut long = good.clone();
    long[3] += 1;
    assert_eq!(
        header(packet::decode_ipv4_packet(&long).unwrap_err()),
        "total length out of range"
    );
    let mut fragment = good.clone();
    fragment[6] = 0x20; // more fragments
    assert_eq!(
        header(packet::decode_ipv4_packet(&fragment).unwrap_err()),
        "fragment"
    );
    let mut sum = good.clone();
    sum[10] ^= 1;
    assert_eq!(
        header(packet::decode_ipv4_packet(&sum).unwrap_err()),
        "header checksum"
    );
    // Padding past the total length (short Ethernet frames) is ignored.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 6]);
    assert!(packet::decode_ipv4_packet(&padded).is_ok());
}

/// Live heap bytes allocated by the current thread and their high-water mark since the
/// last reset: what a hostile input makes the proxy's readers hold, measured rather than
/// assumed. Per thread, so that tests running at the same time do not count each other.
mod meter {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
    };

    pub struct Meter;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        // `try_with`: a thread being torn down has no counters any more.
        let _ = LIVE.try_with(|live| {
            live.set(live.get() + n);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
        });
    }

    // SAFETY: every call is passed on to the system allocator unchanged; the counters are
    // const-initialised thread-locals, which never allocate.
    unsafe impl GlobalAlloc for Meter {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            // SAFETY: the caller's contract for `alloc` is the system allocator's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            // SAFETY: `ptr` came from `alloc` above, that is from the system allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// Runs `f` on this thread and returns the most it held on the heap above what was
    /// live before.
    pub fn peak_of(f: impl FnOnce()) -> usize {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        f();
        (PEAK.with(Cell::get) - base).max(0) as usize
    }
}

#[global_allocator]
static METER: meter::Meter = meter::Meter;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client line of 4 MiB without an end, and 100 000 empty lines: the line reader says
/// `TooLong` and holds no more than its bound plus one read chunk.
#[test]
fn hostile_lines_are_read_within_a_bound() {
    use robustifier::lines::{Line, read_line};
    use robustifier::stream::{Buffered, READ_CHUNK};
    let rt = runtime();
    let huge = vec![b'A'; 4 << 20];
    let mut input = huge.clone();
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let mut seen = Vec::new();
    let peak = meter::peak_of(|| {
        rt.block_on(async {
            let mut r = Buffered::new(&input[..]);
            seen.push(read_line(&mut r, 1000).await.unwrap());
            seen.push(read_line(&mut r, 1000).await.unwrap());
        })
    });
    assert!(matches!(seen[0], Line::TooLong), "{:?}", &seen[0]);
    assert!(matches!(&seen[1], Line::Complete(l) if l == b"NOOP"));
    assert!(
        peak <= 1000 + 2 * READ_CHUNK + 4096,
        "a 4 MiB line held {peak} bytes"
    );
    drop(huge);
}

/// 4 MiB of message data made of bare LFs and dots (smuggling attempts): the DATA scanner
/// refuses it and never holds more than a few bytes of carry-over.
#[test]
fn hostile_message_data_is_scanned_within_a_bound() {
    use robustifier::smtp::data::DataScanner;
    let junk: Vec<u8> = b"\n.\n\r.\r\n.\r"
        .iter()
        .copied()
        .cycle()
        .take(4 << 20)
        .collect();
    let mut outcome = None;
    let peak = meter::peak_of(|| {
        let mut s = DataScanner::new(10 << 20);
        for chunk in junk.chunks(8192) {
            let step = s.feed(chunk);
            if step.outcome.is_some() {
                outcome = step.outcome;
                break;
            }
        }
    });
    assert!(
        outcome.is_some(),
        "bare LF before a dot line ends the message refused"
    );
    assert!(peak <= 4096, "the scanner held {peak} bytes");
}

/// The bounds above mean something only if the meter sees what a reader holds.
#[test]
fn the_meter_sees_a_held_buffer() {
    let peak = meter::peak_of(|| {
        let held = std::hint::black_box(vec![1u8; 1 << 20]);
        drop(held);
    });
    assert!(peak >= 1 << 20, "{peak}");
}
