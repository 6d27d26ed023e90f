//! POP3 responses: `+OK` / `-ERR` status lines with RFC 2449 8 response codes, the parser
//! for a back-end's status lines (and RFC 5034 SASL continuations), and the two readers of
//! dot-terminated multi-line responses (RFC 1939 3): a byte scanner for relaying RETR/TOP
//! without buffering, and a line reader for the small lists the proxy reads itself.
//!
//! Invariants: a formatted [`Response`] is one line of at most 512 octets including CRLF
//! (RFC 2449 4) with no control characters in its text; a multi-line response ends at
//! `<CRLF>.<CRLF>` only, the same rule the back-ends use when they write one, so a message
//! body can never make the proxy take its remainder for the next response.

use std::fmt;

use tokio::io::AsyncBufRead;

use crate::lines::{Line, read_line};

/// RFC 2449 4: the first line of a response is at most 512 octets including CRLF.
pub const MAX_STATUS_LINE: usize = 510;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Err,
}

/// RFC 2449 8 extended response codes, with RFC 3206's additions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseCode {
    /// RFC 2449 8.1.1: the mailbox is locked by another session.
    InUse,
    /// RFC 2449 8.1.2: logged in too recently.
    LoginDelay,
    /// RFC 3206 4: a temporary system problem; retrying later may work.
    SysTemp,
    /// RFC 3206 4: a permanent system problem.
    SysPerm,
    /// RFC 3206 5: the credentials were wrong.
    Auth,
    /// Any other code, upper-cased, e.g. `UTF8` or a vendor's.
    Other(String),
}

impl ResponseCode {
    fn as_str(&self) -> &str {
        match self {
            Self::InUse => "IN-USE",
            Self::LoginDelay => "LOGIN-DELAY",
            Self::SysTemp => "SYS/TEMP",
            Self::SysPerm => "SYS/PERM",
            Self::Auth => "AUTH",
            Self::Other(s) => s,
        }
    }

    /// RFC 2449 8: `resp-level *("/" resp-level)`, resp-level = 1*rchar where rchar is
    /// `%x21-2E / %x30-5C / %x5E-7F`; codes are matched case-insensitively.
    fn parse(s: &str) -> Option<Self> {
        let valid = s.split('/').all(|level| {
            !level.is_empty()
                && level
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b'/' && b != b']')
        });
        if !valid {
            return None;
        }
        let upper = s.to_ascii_uppercase();
        Some(match upper.as_str() {
            "IN-USE" => Self::InUse,
            "LOGIN-DELAY" => Self::LoginDelay,
            "SYS/TEMP" => Self::SysTemp,
            "SYS/PERM" => Self::SysPerm,
            "AUTH" => Self::Auth,
            _ => Self::Other(upper),
        })
    }
}

/// One status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub code: Option<ResponseCode>,
    pub text: String,
}

impl Response {
    pub fn ok(text: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            code: None,
            text: text.into(),
        }
    }

    pub fn err(code: Option<ResponseCode>, text: impl Into<String>) -> Self {
        Self {
            status: Status::Err,
            code,
            text: text.into(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::from(match self.status {
            Status::Ok => "+OK",
            Status::Err => "-ERR",
        });
        if let Some(code) = &self.code {
            line.push_str(" [");
            line.push_str(code.as_str());
            line.push(']');
        }
        if !self.text.is_empty() {
            line.push(' ');
            line.extend(
                self.text
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c }),
            );
        }
        // RFC 2449 4: cut an overlong text at a character boundary.
        let mut end = line.len().min(MAX_STATUS_LINE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}\r\n", &line[..end])
    }
}

/// A line a back-end sends where a status line is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendLine {
    Status(Response),
    /// RFC 5034 4: `+ [base64]`, a SASL server challenge.
    Continuation(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("reading the response: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before a complete response")]
    Eof,
    #[error("response line longer than {max} octets")]
    LineTooLong { max: usize },
    #[error("multi-line response longer than {max} lines")]
    TooManyLines { max: usize },
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Parses a back-end status line (without CRLF).
pub fn parse_status_line(line: &[u8]) -> Result<BackendLine, ResponseError> {
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ResponseError::Malformed("control character in status line"));
    }
    let line = String::from_utf8_lossy(line);
    let (indicator, rest) = line.split_once(' ').unwrap_or((&line, ""));
    let status = if indicator.eq_ignore_ascii_case("+OK") {
        Status::Ok
    } else if indicator.eq_ignore_ascii_case("-ERR") {
        Status::Err
    } else if indicator == "+" {
        return Ok(BackendLine::Continuation(rest.to_owned()));
    } else {
        return Err(ResponseError::Malformed("status is neither +OK nor -ERR"));
    };
    // RFC 2449 8: a response code, if any, comes first in brackets.
    let (code, text) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((code, text)) => match ResponseCode::parse(code) {
            Some(code) => (Some(code), text.strip_prefix(' ').unwrap_or(text)),
            None => (None, rest),
        },
        None => (None, rest),
    };
    Ok(BackendLine::Status(Response {
        status,
        code,
        text: text.to_owned(),
    }))
}

/// Finds the end of a multi-line response in relayed bytes, fed after its status line.
/// Lines are passed through with their dot-stuffing; only `<CRLF>.<CRLF>` ends it (the
/// status line's CRLF counts as the first CRLF). Bare CR and LF are ordinary octets here:
/// the back-end is the one that stuffed and terminated the response, with this very rule.
#[derive(Debug, Clone)]
pub struct MultilineScanner {
    state: ScanState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    LineStart,
    Text,
    Cr,
    Dot,
    DotCr,
    Done,
}

impl Default for MultilineScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl MultilineScanner {
    pub fn new() -> Self {
        Self {
            state: ScanState::LineStart,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ScanState::Done
    }

    /// Consumes a chunk; returns how many octets belong to the response (all of them
    /// unless the end was found inside the chunk) and whether the response is complete.
    pub fn feed(&mut self, chunk: &[u8]) -> (usize, bool) {
        for (i, &b) in chunk.iter().enumerate() {
            self.state = match (self.state, b) {
                (ScanState::Done, _) => return (i, true),
                (ScanState::DotCr, b'\n') => {
                    self.state = ScanState::Done;
                    return (i + 1, true);
                }
                (ScanState::LineStart, b'.') => ScanState::Dot,
                (ScanState::Dot, b'\r') => ScanState::DotCr,
                (_, b'\r') => ScanState::Cr,
                (ScanState::Cr, b'\n') => ScanState::LineStart,
                _ => ScanState::Text,
            };
        }
        (chunk.len(), self.is_done())
    }
}

/// Reads the lines of a multi-line response after its `+OK` (CAPA, LIST, UIDL), removing
/// the dot-stuffing. For small responses the proxy interprets itself; message bodies go
/// through [`MultilineScanner`] instead.
pub async fn read_multiline<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max_line: usize,
    max_lines: usize,
) -> Result<Vec<String>, ResponseError> {
    let mut lines = Vec::new();
    loop {
        let line = match read_line(r, max_line).await? {
            Line::Complete(line) => line,
            Line::TooLong => return Err(ResponseError::LineTooLong { max: max_line }),
            Line::Eof => return Err(ResponseError::Eof),
        };
        if line == b"." {
            return Ok(lines);
        }
        if lines.len() >= max_lines {
            return Err(ResponseError::TooManyLines { max: max_lines });
        }
        // RFC 1939 3: a line starting with "." had one more prepended.
        let line = line.strip_prefix(b".").unwrap_or(&line);
        lines.push(String::from_utf8_lossy(line).into_owned());
    }
}

/// Reads one status line from a back-end.
pub async fn read_status_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<BackendLine, ResponseError> {
    match read_line(r, MAX_STATUS_LINE).await? {
        Line::Complete(line) => parse_status_line(&line),
        Line::TooLong => Err(ResponseError::LineTooLong {
            max: MAX_STATUS_LINE,
        }),
        Line::Eof => Err(ResponseError::Eof),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_responses() {
        assert_eq!(Response::ok("").to_string(), "+OK\r\n");
        assert_eq!(Response::ok("2 320").to_string(), "+OK 2 320\r\n");
        let r = Response::err(Some(ResponseCode::InUse), "Mailbox locked");
        assert_eq!(r.to_string(), "-ERR [IN-USE] Mailbox locked\r\n");
        let r = Response::err(Some(ResponseCode::SysTemp), "Back-end unavailable");
        assert_eq!(r.to_string(), "-ERR [SYS/TEMP] Back-end unavailable\r\n");
        let r = Response::err(Some(ResponseCode::LoginDelay), "");
        assert_eq!(r.to_string(), "-ERR [LOGIN-DELAY]\r\n");
        let r = Response::err(None, "a\r\n+OK injected");
        assert_eq!(r.to_string(), "-ERR a  +OK injected\r\n");
        let long = Response::ok("é".repeat(400)).to_string();
        assert!(long.len() <= 512 && long.ends_with("\r\n"));
    }

    #[test]
    fn parses_backend_status_lines() {
        let st = |l: &str| parse_status_line(l.as_bytes()).unwrap();
        assert_eq!(st("+OK"), BackendLine::Status(Response::ok("")));
        assert_eq!(
            st("+OK Dovecot ready."),
            BackendLine::Status(Response::ok("Dovecot ready."))
        );
        assert_eq!(
            st("-ERR [AUTH] Authentication failed."),
            BackendLine::Status(Response::err(
                Some(ResponseCode::Auth),
                "Authentication failed."
            ))
        );
        assert_eq!(
            st("-ERR [in-use] locked"),
            BackendLine::Status(Response::err(Some(ResponseCode::InUse), "locked"))
        );
        assert_eq!(
            st("-ERR [SYS/TEMP]"),
            BackendLine::Status(Response::err(Some(ResponseCode::SysTemp), ""))
        );
        assert_eq!(
            st("-ERR [X-VENDOR/THING] odd"),
            BackendLine::Status(Response::err(
                Some(ResponseCode::Other("X-VENDOR/THING".into())),
                "odd"
            ))
        );
        // Not a valid code: kept as text.
        assert_eq!(
            st("-ERR [a//b] x"),
            BackendLine::Status(Response::err(None, "[a//b] x"))
        );
        assert_eq!(st("+ "), BackendLine::Continuation(String::new()));
        assert_eq!(
            st("+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+"),
            BackendLine::Continuation("PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+".into())
        );
        for bad in [&b""[..], b"OK", b"+OKAY", b"-ER", b"+OK a\0", b"+OK a\rb"] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn reads_status_and_multiline_over_a_duplex() {
        let (mut backend, proxy) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            backend
                .write_all(b"+OK Capability list follows\r\nTOP\r\nUIDL\r\n..dotted\r\n.\r\n-ERR [SYS/PERM] no\r\n")
                .await
                .unwrap();
        });
        let mut r = tokio::io::BufReader::new(proxy);
        assert!(
            matches!(read_status_line(&mut r).await.unwrap(), BackendLine::Status(s) if s.is_ok())
        );
        assert_eq!(
            read_multiline(&mut r, 512, 10).await.unwrap(),
            ["TOP", "UIDL", ".dotted"]
        );
        assert!(matches!(
            read_status_line(&mut r).await.unwrap(),
            BackendLine::Status(Response {
                status: Status::Err,
                code: Some(ResponseCode::SysPerm),
                ..
            })
        ));
        writer.await.unwrap();
        assert!(matches!(
            read_status_line(&mut r).await,
            Err(ResponseError::Eof)
        ));
    }

    #[tokio::test]
    async fn multiline_limits() {
        let mut r: &[u8] = b"a\r\nb\r\nc\r\n.\r\n";
        assert!(matches!(
            read_multiline(&mut r, 100, 2).await,
            Err(ResponseError::TooManyLines { max: 2 })
        ));
        let mut r: &[u8] = b"a\r\nb\r\n";
        assert!(matches!(
            read_multiline(&mut r, 100, 10).await,
            Err(ResponseError::Eof)
        ));
        let long = format!("{}\r\n.\r\n", "x".repeat(101));
        let mut r = long.as_bytes();
        assert!(matches!(
            read_multiline(&mut r, 100, 10).await,
            Err(ResponseError::LineTooLong { max: 100 })
        ));
        let mut r: &[u8] = b".\r\n";
        assert!(read_multiline(&mut r, 100, 10).await.unwrap().is_empty());
    }

    #[test]
    fn scanner_finds_only_crlf_dot_crlf() {
        let body = b"Subject: x\r\n\r\nhi\n.\nstill\r.\r\n..\r\n.\r\n+OK next";
        let mut s = MultilineScanner::new();
        let (n, done) = s.feed(body);
        assert!(done);
        assert_eq!(&body[n..], b"+OK next");
        // Nothing more is consumed after the end.
        assert_eq!(s.feed(b"more"), (0, true));
        let mut empty = MultilineScanner::new();
        assert_eq!(empty.feed(b".\r\n"), (3, true));
    }

    proptest! {
        #[test]
        fn scanner_is_split_invariant(
            input in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'.'), Just(b'\r'), Just(b'\n')], 0..80),
            cut in 0usize..80,
        ) {
            let mut whole = MultilineScanner::new();
            let (n_whole, done_whole) = whole.feed(&input);
            let cut = cut.min(input.len());
            let mut split = MultilineScanner::new();
            let (a, done_a) = split.feed(&input[..cut]);
            let (n_split, done_split) = if done_a { (a, true) } else {
                let (b, d) = split.feed(&input[cut..]);
                (a + b, d)
            };
            prop_assert_eq!((n_whole, done_whole), (n_split, done_split));
            let mut v = b"\r\n".to_vec();
            v.extend_from_slice(&input);
            let expected = v.windows(5).position(|w| w == b"\r\n.\r\n").map(|i| i + 3);
            prop_assert_eq!(expected, done_whole.then_some(n_whole));
        }
    }
}
