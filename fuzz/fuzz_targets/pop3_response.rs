//! Back-end POP3 responses (`pop3::response`): a status line parses without panicking and,
//! formatted as the proxy relays it, is one line that reads back the same (control
//! characters blanked); the multi-line scanner finds the same end however the bytes are
//! chunked, and the same end as the line reader; the line reader keeps its bounds.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use robustifier::pop3::response::{
    BackendLine, MAX_STATUS_LINE, MultilineScanner, Response, parse_status_line, read_multiline,
    read_status_line,
};
use robustifier_fuzz::{assert_one_line, ready};

#[derive(Debug, Arbitrary)]
struct Input {
    max_line: u8,
    max_lines: u8,
    cuts: Vec<u8>,
    data: Vec<u8>,
}

fn check_status(r: &Response) {
    let wire = r.to_bytes();
    assert_one_line(&wire);
    assert!(wire.len() <= MAX_STATUS_LINE + 2);
    let mut rest = &wire[..];
    let again = ready(read_status_line(&mut rest)).expect("a formatted response reads back");
    if wire.len() < MAX_STATUS_LINE {
        let blanked: String = r
            .text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let expected = Response {
            text: blanked,
            ..r.clone()
        };
        assert_eq!(again, BackendLine::Status(expected), "{wire:?}");
    }
}

fuzz_target!(|input: Input| {
    let data = &input.data[..];
    for line in data.split(|&b| b == b'\n') {
        if let Ok(BackendLine::Status(r)) = parse_status_line(line) {
            check_status(&r);
        }
    }

    // The scanner: one shot versus the fuzzer's chunks.
    let mut whole = MultilineScanner::new();
    let (n_whole, done_whole) = whole.feed(data);
    let mut chunked = MultilineScanner::new();
    let (mut n, mut done) = (0, false);
    let mut rest = data;
    let mut cuts = input.cuts.iter().copied();
    while !rest.is_empty() && !done {
        let k = usize::from(cuts.next().unwrap_or(u8::MAX)).clamp(1, rest.len());
        let (used, d) = chunked.feed(&rest[..k]);
        assert!(used <= k);
        n += used;
        done = d;
        rest = &rest[k..];
    }
    assert_eq!((n, done), (n_whole, done_whole), "chunking changed the end");
    if done {
        assert!(
            data[..n].ends_with(b"\r\n.\r\n") || &data[..n] == b".\r\n",
            "ended without a terminator"
        );
    }

    // The line reader over the same bytes (it also takes a bare LF as a line end).
    let max_line = usize::from(input.max_line) + 1;
    let max_lines = usize::from(input.max_lines);
    let mut rest = data;
    if let Ok(lines) = ready(read_multiline(&mut rest, max_line, max_lines)) {
        assert!(lines.len() <= max_lines);
        for l in &lines {
            assert!(l.len() <= max_line * 3, "line over the limit: {l:?}");
        }
    }
});
