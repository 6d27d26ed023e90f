//! SMTP replies (RFC 5321 4.2): the replies the proxy writes itself, the reader for the
//! replies a back-end sends, and the EHLO capability list (RFC 5321 4.1.1.1).
//!
//! Invariant: a formatted [`Reply`] is always one well-formed reply, however its text was
//! built: every line carries the same code, only the last uses `SP`, and no line can contain
//! CR or LF, so no text (ours or a back-end's) can inject a second reply into the stream.
//! The reader accepts a back-end reply only when every line has the same valid code and the
//! whole reply fits in a bounded number of bounded lines.

use std::fmt;

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

use crate::lines::{Line, read_line};

/// An RFC 3463 enhanced status code `class.subject.detail`.
pub type Enhanced = (u8, u16, u16);

/// Upper bound on the lines of one back-end reply. EHLO replies are the longest seen in
/// practice (about 15 lines for Postfix and Exim); anything far beyond is a broken peer.
pub const MAX_REPLY_LINES: usize = 128;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code, 200..=599 (RFC 5321 4.2.1).
    pub code: u16,
    /// The enhanced status code (RFC 2034, RFC 3463), written at the start of every line.
    pub enhanced: Option<Enhanced>,
    /// The text of each line without code, separator or enhanced code, the lines joined
    /// by LF (which no line's text can hold): one allocation per reply, however many
    /// lines it has. Empty means a single line carrying only the code.
    text: String,
}

impl Reply {
    /// About the octets the reply takes on the wire (the enhanced code counted as up to
    /// 10), without writing it out: for the statistics.
    pub fn wire_len(&self) -> u64 {
        let per_line = 4 + 2 + if self.enhanced.is_some() { 10 } else { 0 };
        let lines = self.line_count();
        (lines * per_line + self.text.len() + 1 - lines) as u64
    }

    /// A single-line reply. A line break in `text` is blanked out, as every control
    /// character is when the reply is written.
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<String>) -> Self {
        let mut text = text.into();
        if text.contains('\n') {
            text = text.replace('\n', " ");
        }
        Self {
            code,
            enhanced,
            text,
        }
    }

    /// A multi-line reply, e.g. to EHLO.
    pub fn multiline(code: u16, enhanced: Option<Enhanced>, lines: Vec<String>) -> Self {
        let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            text.extend(line.chars().map(|c| if c == '\n' { ' ' } else { c }));
        }
        Self {
            code,
            enhanced,
            text,
        }
    }

    /// The text of each line, in order (at least one, maybe empty).
    pub fn lines(&self) -> std::str::Split<'_, char> {
        self.text.split('\n')
    }

    /// The lines' texts joined by a space: a multi-line reply as one line.
    pub fn joined(&self) -> std::borrow::Cow<'_, str> {
        if self.text.contains('\n') {
            self.text.replace('\n', " ").into()
        } else {
            self.text.as_str().into()
        }
    }

    fn line_count(&self) -> usize {
        1 + memchr::memchr_iter(b'\n', self.text.as_bytes()).count()
    }

    /// The first digit: 2 success, 3 intermediate, 4 transient, 5 permanent (RFC 5321 4.2.1).
    pub fn class(&self) -> u8 {
        u8::try_from(self.code / 100).unwrap_or(u8::MAX)
    }

    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    pub fn is_intermediate(&self) -> bool {
        self.class() == 3
    }

    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }

    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// A temporary failure of the mail system itself (RFC 3463 `4.3.x` mail system or
    /// `4.4.x` network status; without an enhanced code, RFC 5321's 451 "local error" and
    /// 452 "insufficient storage"), as opposed to one about the client's addresses,
    /// content or policy, which says nothing about the server's health.
    pub fn says_system_failure(&self) -> bool {
        match (self.class(), self.enhanced) {
            (4, Some((_, subject, _))) => matches!(subject, 3 | 4),
            (4, None) => matches!(self.code, 451 | 452),
            _ => false,
        }
    }

    /// The wire form, every line ending in CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Appends the wire form to `out`: the same octets as [`fmt::Display`], without the
    /// formatter (a session writes every reply through here).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.lines().peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { b'-' } else { b' ' };
            write_line(out, self.code, self.enhanced, sep, line);
        }
    }
}

/// Appends one reply line: `code`, `sep` (`-` for all but the last line, `SP` for the
/// last), the enhanced code and `text` with its control characters blanked out, so that
/// no text can end the line early.
pub fn write_line(out: &mut Vec<u8>, code: u16, enhanced: Option<Enhanced>, sep: u8, text: &str) {
    push_number(out, code, 3);
    // RFC 5321 4.2: `Reply-code [ SP textstring ] CRLF`; no dangling space.
    if sep == b' ' && text.is_empty() && enhanced.is_none() {
        out.extend_from_slice(b"\r\n");
        return;
    }
    out.push(sep);
    if let Some((c, s, d)) = enhanced {
        push_number(out, u16::from(c), 1);
        out.push(b'.');
        push_number(out, s, 1);
        out.push(b'.');
        push_number(out, d, 1);
        if !text.is_empty() {
            out.push(b' ');
        }
    }
    if text.chars().any(char::is_control) {
        for ch in text.chars() {
            let ch = if ch.is_control() { ' ' } else { ch };
            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
        }
    } else {
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, zero-padded to at least `width` digits (as `{:0width$}`).
fn push_number(out: &mut Vec<u8>, n: u16, width: usize) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 && digits.len() - i >= width {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let write_line = |f: &mut fmt::Formatter<'_>, sep: char, text: &str| -> fmt::Result {
            // RFC 5321 4.2: `Reply-code [ SP textstring ] CRLF`; no dangling space.
            if sep == ' ' && text.is_empty() && self.enhanced.is_none() {
                return write!(f, "{:03}\r\n", self.code);
            }
            write!(f, "{:03}{sep}", self.code)?;
            if let Some((c, s, d)) = self.enhanced {
                write!(f, "{c}.{s}.{d}")?;
                if !text.is_empty() {
                    f.write_str(" ")?;
                }
            }
            // Control characters would let a text end the line early: blank them out.
            for ch in text.chars() {
                let ch = if ch.is_control() { ' ' } else { ch };
                write!(f, "{ch}")?;
            }
            f.write_str("\r\n")
        };
        let mut lines = self.lines().peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            write_line(f, sep, line)?;
        }
        Ok(())
    }
}

/// Why a back-end reply was not accepted. Each one ends the back-end leg: after it, the
/// proxy no longer knows where the next reply starts.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("reading the reply: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before a complete reply")]
    Eof,
    #[error("reply line longer than {max} octets")]
    LineTooLong { max: usize },
    #[error("reply longer than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line: {0}")]
    Malformed(&'static str),
    #[error("reply code changed from {first} to {then} inside a multi-line reply")]
    CodeChanged { first: u16, then: u16 },
}

/// Assembles a reply from lines as they arrive, so that pipelined replies (RFC 2920) can
/// be read one after another from the same buffer.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    enhanced: Option<Enhanced>,
    /// The lines so far, joined by LF (as [`Reply`] keeps them), and their count.
    text: String,
    lines: usize,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line (without CRLF). Returns the reply when this was its last line; the
    /// parser is then ready for the next reply.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let (code, last, text) = split_reply_line(line)?;
        let lead = leading_enhanced(code, text);
        match self.code {
            None => {
                self.code = Some(code);
                self.enhanced = lead.map(|(e, _)| e);
            }
            Some(first) if first != code => {
                return Err(ReplyError::CodeChanged { first, then: code });
            }
            Some(_) => {}
        }
        if self.lines >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        // RFC 2034 4: the enhanced code is repeated on each line; keep it once.
        let text = match (self.enhanced, lead) {
            (Some(first), Some((this, rest))) if first == this => rest,
            _ => text,
        };
        if self.lines > 0 {
            self.text.push('\n');
        }
        self.lines += 1;
        match std::str::from_utf8(text) {
            Ok(t) => self.text.push_str(t),
            Err(_) => self.text.push_str(&String::from_utf8_lossy(text)),
        }
        if !last {
            return Ok(None);
        }
        let reply = Reply {
            code,
            enhanced: self.enhanced.take(),
            text: std::mem::take(&mut self.text),
        };
        self.code = None;
        self.lines = 0;
        Ok(Some(reply))
    }
}

/// Reads one complete reply from a back-end, no line longer than `max_line` octets.
pub async fn read_reply<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max_line: usize,
) -> Result<Reply, ReplyError> {
    let mut parser = ReplyParser::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(ReplyError::Eof);
        }
        // The common case, a whole line already in the buffer: parsed where it lies, not
        // copied out first. The limits are `read_line`'s: LF ends a line, a CR before it is
        // dropped, and a line is too long by its length without them.
        if let Some(i) = memchr::memchr(b'\n', buf) {
            let line = &buf[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let parsed = if line.len() > max_line {
                Err(ReplyError::LineTooLong { max: max_line })
            } else {
                parser.push_line(line)
            };
            r.consume(i + 1);
            if let Some(reply) = parsed? {
                return Ok(reply);
            }
            continue;
        }
        // A line cut across reads: gathered by the line reader.
        match read_line(r, max_line).await? {
            Line::Complete(line) => {
                if let Some(reply) = parser.push_line(&line)? {
                    return Ok(reply);
                }
            }
            Line::TooLong => return Err(ReplyError::LineTooLong { max: max_line }),
            Line::Eof => return Err(ReplyError::Eof),
        }
    }
}

/// Splits `Reply-code [ SP / "-" textstring ]` (RFC 5321 4.2) into code, is-last and text.
fn split_reply_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let digits = line
        .get(..3)
        .ok_or(ReplyError::Malformed("shorter than a reply code"))?;
    // RFC 5321 4.2: first digit 2..5, second 0..5, third 0..9.
    let ok = matches!(digits[0], b'2'..=b'5')
        && matches!(digits[1], b'0'..=b'5')
        && digits[2].is_ascii_digit();
    if !ok {
        return Err(ReplyError::Malformed("invalid reply code"));
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let (last, text) = match line.get(3) {
        None => (true, &line[3..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => {
            return Err(ReplyError::Malformed(
                "code not followed by space or hyphen",
            ));
        }
    };
    // textstring is HT / SP / VCHAR (RFC 5321 4.2, UTF-8 under RFC 6531): no other controls.
    if text.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ReplyError::Malformed("control character in reply text"));
    }
    Ok((code, last, text))
}

/// An enhanced status code at the start of `text` whose class matches the reply code
/// (RFC 3463 2: class is 2, 4 or 5; subject and detail 1..3 digits), and the text after it.
fn leading_enhanced(code: u16, text: &[u8]) -> Option<(Enhanced, &[u8])> {
    // Bytes, not text: every line of every back-end reply passes here.
    let end = memchr::memchr(b' ', text).unwrap_or(text.len());
    let mut parts = text[..end].split(|&b| b == b'.');
    let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let number = |p: &[u8], max_len: usize| {
        (!p.is_empty() && p.len() <= max_len && p.iter().all(u8::is_ascii_digit))
            .then(|| p.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0')))
    };
    let class = number(c, 1)?;
    if !matches!(class, 2 | 4 | 5) || class != code / 100 {
        return None;
    }
    let rest = text.get(end + 1..).unwrap_or(&[]);
    Some((
        (u8::try_from(class).ok()?, number(s, 3)?, number(d, 3)?),
        rest,
    ))
}

/// What a back-end offers in its EHLO reply (RFC 5321 4.1.1.1 and the extensions named).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870 SIZE: `Some(0)` when advertised without a fixed limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3030 CHUNKING (BDAT).
    pub chunking: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 3461 DSN (the RET, ENVID, NOTIFY and ORCPT parameters).
    pub dsn: bool,
    /// RFC 4954 SASL mechanisms, upper-cased, without duplicates, in advertised order.
    pub auth: Vec<String>,
    /// Postfix XCLIENT attributes (NAME, ADDR, PORT, PROTO, HELO, LOGIN, DESTADDR, ...),
    /// upper-cased; empty when XCLIENT is not offered.
    pub xclient: Vec<String>,
}

impl Capabilities {
    /// Reads the capability lines of a positive EHLO reply. The first line is the
    /// server's greeting, not a capability. A non-2xx reply offers nothing.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self::default();
        if !reply.is_positive() {
            return caps;
        }
        for line in reply.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            // Some servers still send the pre-standard "AUTH=LOGIN PLAIN" form for old
            // Outlook clients; its mechanisms count the same.
            if let Some(first) = keyword.strip_prefix("AUTH=") {
                let first = (!first.is_empty()).then_some(first.to_owned());
                caps.add_auth(first.into_iter().chain(words.map(str::to_owned)));
                continue;
            }
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => match words.next() {
                    None => caps.size = Some(0),
                    Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => {
                        // RFC 1870 allows up to 20 digits; beyond u64 is "no useful limit".
                        caps.size = Some(n.parse().unwrap_or(u64::MAX));
                    }
                    // A garbled limit cannot be honoured: do not claim SIZE at all.
                    Some(_) => {}
                },
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "DSN" => caps.dsn = true,
                "AUTH" => caps.add_auth(words.map(str::to_owned)),
                "XCLIENT" => {
                    for attr in words {
                        let attr = attr.to_ascii_uppercase();
                        if !caps.xclient.contains(&attr) {
                            caps.xclient.push(attr);
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }

    fn add_auth(&mut self, mechanisms: impl Iterator<Item = String>) {
        for m in mechanisms {
            let m = m.to_ascii_uppercase();
            if !self.auth.contains(&m) {
                self.auth.push(m);
            }
        }
    }

    /// The capability lines to advertise (after the greeting line), in a stable order.
    /// XCLIENT is never included: it is for the proxy's own use towards back-ends.
    pub fn to_ehlo_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if self.pipelining {
            out.push("PIPELINING".to_owned());
        }
        match self.size {
            Some(0) => out.push("SIZE".to_owned()),
            Some(n) => out.push(format!("SIZE {n}")),
            None => {}
        }
        let flags = [
            (self.eight_bit_mime, "8BITMIME"),
            (self.smtputf8, "SMTPUTF8"),
            (self.chunking, "CHUNKING"),
            (self.starttls, "STARTTLS"),
            (self.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
            (self.dsn, "DSN"),
        ];
        out.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| (*n).to_owned()),
        );
        if !self.auth.is_empty() {
            out.push(format!("AUTH {}", self.auth.join(" ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The session writes replies with `write_to`; logs and tests read them through
        /// `Display`: both must give the same octets, control characters blanked alike.
        #[test]
        fn write_to_gives_the_octets_of_display(
            code in 0u16..1000,
            enhanced in proptest::option::of((0u8..10, 0u16..1000, 0u16..1000)),
            lines in proptest::collection::vec("(\\PC|[\\r\\n\\t\\x00\\u{85}\\u{9f}]){0,12}", 0..4),
        ) {
            let reply = Reply::multiline(code, enhanced, lines);
            proptest::prop_assert_eq!(reply.to_bytes(), reply.to_string().into_bytes());
        }
    }

    #[test]
    fn only_mail_system_failures_say_a_server_is_sick() {
        let sick = [
            Reply::new(452, Some((4, 3, 1)), "Insufficient system storage"),
            Reply::new(451, Some((4, 3, 0)), "queue file write error"),
            Reply::new(451, Some((4, 4, 1)), "no answer from host"),
            Reply::new(451, None, "local error"),
        ];
        let client = [
            Reply::new(450, Some((4, 1, 2)), "Domain not found"),
            Reply::new(450, Some((4, 7, 1)), "greylisted"),
            Reply::new(452, Some((4, 5, 3)), "Too many recipients"),
            Reply::new(550, Some((5, 1, 1)), "no such user"),
            Reply::new(554, Some((5, 3, 0)), "content rejected"),
            Reply::new(450, None, "mailbox unavailable"),
            Reply::new(250, Some((2, 0, 0)), "ok"),
        ];
        assert!(sick.iter().all(Reply::says_system_failure));
        assert!(!client.iter().any(Reply::says_system_failure));
    }

    #[test]
    fn formats_single_and_multiline() {
        let r = Reply::new(250, Some((2, 1, 0)), "Sender OK");
        assert_eq!(r.to_string(), "250 2.1.0 Sender OK\r\n");
        let r = Reply::multiline(
            250,
            None,
            vec![
                "mx.example.org".into(),
                "PIPELINING".into(),
                "SIZE 10".into(),
            ],
        );
        assert_eq!(
            r.to_string(),
            "250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        let r = Reply::multiline(550, Some((5, 7, 1)), vec!["a".into(), "b".into()]);
        assert_eq!(r.to_string(), "550-5.7.1 a\r\n550 5.7.1 b\r\n");
    }

    #[test]
    fn formats_code_only_replies() {
        assert_eq!(Reply::multiline(250, None, vec![]).to_string(), "250\r\n");
        assert_eq!(
            Reply::multiline(421, Some((4, 3, 2)), vec![]).to_string(),
            "421 4.3.2\r\n"
        );
    }

    #[test]
    fn text_cannot_inject_a_second_reply() {
        let r = Reply::new(250, None, "ok\r\n250 injected");
        assert_eq!(r.to_string(), "250 ok  250 injected\r\n");
    }

    #[test]
    fn classes() {
        let r = |c| Reply::new(c, None, "");
        assert!(r(250).is_positive());
        assert!(r(354).is_intermediate());
        assert!(r(451).is_transient());
        assert!(r(554).is_permanent());
    }

    fn parse_all(lines: &[&[u8]]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        let mut out = Vec::new();
        for l in lines {
            if let Some(r) = p.push_line(l)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    #[test]
    fn parses_multiline_with_enhanced_codes() {
        let got = parse_all(&[b"550-5.1.1 No such user", b"550 5.1.1 here"]).unwrap();
        assert_eq!(
            got,
            [Reply::multiline(
                550,
                Some((5, 1, 1)),
                vec!["No such user".into(), "here".into()]
            )]
        );
    }

    #[test]
    fn parses_pipelined_replies_in_sequence() {
        let got = parse_all(&[b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"354 End data with"]).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].enhanced, Some((2, 1, 5)));
        assert_eq!(got[2].code, 354);
        assert_eq!(got[2].enhanced, None);
        assert_eq!(got[2].lines().collect::<Vec<_>>(), ["End data with"]);
    }

    #[test]
    fn code_only_and_mismatched_class_enhanced() {
        let got = parse_all(&[b"250", b"250 4.0.0 not enhanced", b"250 2.0"]).unwrap();
        assert_eq!(got[0].lines().collect::<Vec<_>>(), [""]);
        assert_eq!(got[0].to_string(), "250\r\n");
        assert_eq!(got[1].enhanced, None);
        assert_eq!(got[1].lines().collect::<Vec<_>>(), ["4.0.0 not enhanced"]);
        assert_eq!(got[2].enhanced, None);
    }

    #[test]
    fn enhanced_codes_are_class_subject_detail_of_bounded_digits() {
        fn e(t: &[u8]) -> Option<(Enhanced, &[u8])> {
            leading_enhanced(250, t)
        }
        assert_eq!(e(b"2.1.5 Ok"), Some(((2, 1, 5), &b"Ok"[..])));
        assert_eq!(e(b"2.999.999"), Some(((2, 999, 999), &b""[..])));
        assert_eq!(
            leading_enhanced(451, b"4.3.0 later"),
            Some(((4, 3, 0), &b"later"[..]))
        );
        for bad in [
            &b"2.1000.0 x"[..],
            b"2.1.1000",
            b"22.1.0",
            b"2.1",
            b"2.1.0.1",
            b"2..0",
            b"2.1.+5",
            b"2.1.\xff5",
            b"5.1.1 wrong class",
            b"3.1.1",
            b"",
        ] {
            assert_eq!(e(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            &b""[..],
            b"25",
            b"2x0 ok",
            b"150 ok",
            b"260 ok",
            b"250ok",
            b"250\tok",
            b"250 a\x00b",
            b"250 a\rb",
        ] {
            assert!(
                matches!(parse_all(&[bad]), Err(ReplyError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_all(&[b"250-a", b"251 b"]),
            Err(ReplyError::CodeChanged {
                first: 250,
                then: 251
            })
        ));
    }

    #[test]
    fn too_many_lines_is_refused() {
        let mut p = ReplyParser::new();
        let mut result = Ok(None);
        for _ in 0..=MAX_REPLY_LINES {
            result = p.push_line(b"250-x");
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ReplyError::TooManyLines)));
    }

    #[tokio::test]
    async fn reads_replies_from_a_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            client
                .write_all(b"250-mx.example.org\r\n250-SIZE 1000\r\n250 8BITMIME\r\n221 Bye\r\n")
                .await
                .unwrap();
        });
        let mut r = tokio::io::BufReader::new(server);
        let ehlo = read_reply(&mut r, 512).await.unwrap();
        assert_eq!(ehlo.lines().count(), 3);
        let bye = read_reply(&mut r, 512).await.unwrap();
        assert_eq!(bye.code, 221);
        writer.await.unwrap();
        assert!(matches!(
            read_reply(&mut r, 512).await,
            Err(ReplyError::Eof)
        ));
    }

    #[tokio::test]
    async fn stream_errors() {
        let mut r: &[u8] = b"250-partial\r\n";
        assert!(matches!(
            read_reply(&mut r, 512).await,
            Err(ReplyError::Eof)
        ));
        let long = format!("250 {}\r\n", "x".repeat(600));
        let mut r = long.as_bytes();
        assert!(matches!(
            read_reply(&mut r, 512).await,
            Err(ReplyError::LineTooLong { max: 512 })
        ));
    }

    #[test]
    fn capabilities_from_postfix_ehlo() {
        let lines = [
            "mx.example.org",
            "PIPELINING",
            "SIZE 10240000",
            "VRFY",
            "ETRN",
            "STARTTLS",
            "AUTH PLAIN LOGIN",
            "AUTH=PLAIN LOGIN CRAM-MD5",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "CHUNKING",
            "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT",
        ];
        let reply = Reply::multiline(250, None, lines.iter().map(|s| s.to_string()).collect());
        let caps = Capabilities::from_ehlo(&reply);
        assert!(caps.pipelining && caps.starttls && caps.enhanced_status_codes);
        assert!(caps.eight_bit_mime && caps.dsn && caps.smtputf8 && caps.chunking);
        assert_eq!(caps.size, Some(10_240_000));
        assert_eq!(caps.auth, ["PLAIN", "LOGIN", "CRAM-MD5"]);
        assert_eq!(caps.xclient[..3], ["NAME", "ADDR", "PROTO"]);
        let advertised = caps.to_ehlo_lines();
        assert!(advertised.iter().all(|l| !l.starts_with("XCLIENT")));
        let again = Capabilities::from_ehlo(&Reply::multiline(
            250,
            None,
            std::iter::once("x".to_owned()).chain(advertised).collect(),
        ));
        assert_eq!(
            again,
            Capabilities {
                xclient: vec![],
                ..caps
            }
        );
    }

    #[test]
    fn capabilities_edge_cases() {
        let ehlo = |lines: &[&str]| {
            Capabilities::from_ehlo(&Reply::multiline(
                250,
                None,
                lines.iter().map(|s| s.to_string()).collect(),
            ))
        };
        // The greeting line is never a capability.
        assert_eq!(ehlo(&["PIPELINING"]), Capabilities::default());
        assert_eq!(ehlo(&["x", "size"]).size, Some(0));
        assert_eq!(ehlo(&["x", "SIZE lots"]).size, None);
        assert_eq!(
            ehlo(&["x", "SIZE 99999999999999999999"]).size,
            Some(u64::MAX)
        );
        assert!(ehlo(&["x", "pipelining", ""]).pipelining);
        let refused = Reply::multiline(554, None, vec!["x".into(), "PIPELINING".into()]);
        assert_eq!(Capabilities::from_ehlo(&refused), Capabilities::default());
    }
}
