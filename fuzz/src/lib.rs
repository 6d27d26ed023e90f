//! What the fuzz targets share: driving the proxy's async readers over in-memory input,
//! and the checks every target applies to text the proxy would send on.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a future that reads only from an in-memory buffer. Such a reader never waits, so
/// the future must finish on its first poll; one that does not is a bug worth a crash.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a reader over an in-memory buffer returned Pending"),
    }
}

/// Whether `s` holds a character that could end or split a protocol line (or confuse a
/// log) if it were written to a peer: the C0 and C1 controls and DEL.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Checks that `wire` is exactly one CRLF-terminated line with no other CR or LF.
pub fn assert_one_line(wire: &[u8]) {
    assert!(wire.ends_with(b"\r\n"), "not CRLF-terminated: {wire:?}");
    let body = &wire[..wire.len() - 2];
    assert!(
        !body.iter().any(|&b| b == b'\r' || b == b'\n'),
        "more than one line: {wire:?}"
    );
}
