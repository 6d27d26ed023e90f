//! Back-end SMTP replies (`smtp::reply`): the line reader never returns a line over its
//! limit; the reply reader never panics and accepts only replies with a valid code and at
//! most `MAX_REPLY_LINES` lines; an accepted reply, formatted as the proxy relays it, is
//! one reply that reads back as itself (control characters blanked); the EHLO capabilities
//! the proxy advertises from it read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use robustifier::lines::{Line, read_line};
use robustifier::smtp::reply::{Capabilities, MAX_REPLY_LINES, Reply, read_reply};
use robustifier_fuzz::ready;

fn blank_controls(r: &Reply) -> Reply {
    let lines = r
        .lines()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        })
        .collect();
    Reply::multiline(r.code, r.enhanced, lines)
}

fn check(reply: &Reply) {
    assert!((200..=599).contains(&reply.code), "{reply:?}");
    assert!(reply.lines().count() <= MAX_REPLY_LINES, "{reply:?}");
    let wire = reply.to_bytes();
    let mut rest = &wire[..];
    // Long enough for any line the formatter writes.
    let max = wire.len();
    let again = ready(read_reply(&mut rest, max)).expect("a formatted reply reads back");
    assert!(rest.is_empty(), "{wire:?} holds more than one reply");
    // Read back, it is the same reply: same code, same number of lines, and the same text
    // unless blanking a control character moved the enhanced code (`5.1.1<TAB>` is text,
    // `5.1.1<SP>` an enhanced code); from then on formatting is stable.
    assert_eq!(again.code, reply.code, "{wire:?}");
    assert_eq!(again.lines().count(), reply.lines().count(), "{wire:?}");
    if again.enhanced == reply.enhanced {
        assert_eq!(again, blank_controls(reply), "{wire:?}");
    }
    let wire2 = again.to_bytes();
    let mut rest = &wire2[..];
    let again2 = ready(read_reply(&mut rest, wire2.len())).expect("reads back");
    assert_eq!(again2.to_bytes(), wire2, "{again:?}");

    let caps = Capabilities::from_ehlo(reply);
    let mut lines = vec!["greeting".to_owned()];
    lines.extend(caps.to_ehlo_lines());
    let advertised = Capabilities::from_ehlo(&Reply::multiline(250, None, lines));
    let expected = Capabilities {
        xclient: Vec::new(),
        ..caps
    };
    assert_eq!(advertised, expected);
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], input)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes([a, b]) % 1100) + 4;

    let mut rest = input;
    loop {
        match ready(read_line(&mut rest, max)).expect("in-memory reads cannot fail") {
            Line::Complete(line) => assert!(line.len() <= max, "{} > {max}", line.len()),
            Line::TooLong => {}
            Line::Eof => break,
        }
    }

    let mut rest = input;
    while let Ok(reply) = ready(read_reply(&mut rest, max)) {
        check(&reply);
    }
});
