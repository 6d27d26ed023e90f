//! What a relayed message's record needs from the SMTP stream: the Message-ID header, read
//! as the message passes without holding it, and the queue id the back-end named in its
//! reply to the end of data.

/// The longest Message-ID kept; RFC 5322 lines are at most 998 octets, real ids far less.
pub const MAX_MESSAGE_ID: usize = 255;
/// The longest queue id taken from a reply; the MTAs' ids are 6 to 23 characters.
const MAX_QUEUE_ID: usize = 64;

const HEADER: &[u8] = b"message-id:";

/// Reads the Message-ID from a message's header section as its bytes pass, chunk by chunk
/// in any cut: at most [`MAX_MESSAGE_ID`] octets of the field are held, nothing else, and
/// nothing is allocated until the field is met. Folded fields (RFC 5322 2.2.3) are
/// unfolded; the first blank line ends the search.
#[derive(Debug, Default)]
pub struct MessageIdScanner {
    state: State,
    /// The field's value so far, while it is read.
    value: Vec<u8>,
    found: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a header line.
    #[default]
    LineStart,
    /// Within a field name; the count of `message-id:` matched so far.
    Name(usize),
    /// In a line of no interest.
    Skip,
    /// In the Message-ID field's value (or a folded continuation of it).
    Value,
    /// The value's line ended: a continuation (space or tab) or the next field follows.
    ValueEnd,
    /// The header section is over, or the field was read.
    Done,
}

impl MessageIdScanner {
    pub fn new() -> MessageIdScanner {
        MessageIdScanner::default()
    }

    /// Takes the next octets of the message (as relayed, with dot-stuffing: a header line
    /// never starts with a dot, so that changes nothing here).
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&b, rest)) = bytes.split_first() {
            match self.state {
                State::Done => return,
                // The rest of a field of no interest is skipped to its line end at once,
                // not octet by octet.
                State::Skip => match memchr::memchr(b'\n', bytes) {
                    Some(i) => {
                        self.state = State::LineStart;
                        bytes = &bytes[i + 1..];
                    }
                    None => return,
                },
                _ => {
                    self.step(b);
                    bytes = rest;
                }
            }
        }
    }

    fn step(&mut self, b: u8) {
        if b == b'\r' {
            // Line ends are judged by LF alone; a CR inside the value is dropped.
            return;
        }
        self.state = match self.state {
            State::Done => State::Done,
            State::LineStart => match b {
                // A blank line: the body starts, no Message-ID.
                b'\n' => State::Done,
                _ => self.name(0, b),
            },
            State::Name(n) => self.name(n, b),
            State::Skip => {
                if b == b'\n' {
                    State::LineStart
                } else {
                    State::Skip
                }
            }
            State::Value => {
                if b == b'\n' {
                    State::ValueEnd
                } else {
                    self.push(b);
                    State::Value
                }
            }
            State::ValueEnd => match b {
                b' ' | b'\t' => {
                    self.push(b' ');
                    State::Value
                }
                _ => {
                    self.finish();
                    State::Done
                }
            },
        };
    }

    fn name(&mut self, n: usize, b: u8) -> State {
        if b == b'\n' {
            return State::LineStart;
        }
        if HEADER.get(n) == Some(&b.to_ascii_lowercase()) {
            if n + 1 == HEADER.len() {
                self.value = Vec::with_capacity(64);
                State::Value
            } else {
                State::Name(n + 1)
            }
        } else {
            State::Skip
        }
    }

    fn push(&mut self, b: u8) {
        if self.value.len() < MAX_MESSAGE_ID {
            self.value.push(b);
        }
    }

    fn finish(&mut self) {
        let value = String::from_utf8_lossy(&self.value);
        let value = value.trim();
        // The id proper is within angle brackets; comments or junk around it go.
        let id = match (value.find('<'), value.find('>')) {
            (Some(a), Some(b)) if a < b => &value[a..=b],
            _ => value,
        };
        if !id.is_empty() {
            self.found = Some(id.to_owned());
        }
        self.value = Vec::new();
    }

    /// The Message-ID, once the header section has been read (or the message ended: a
    /// message of headers only ends without a blank line). Given away: asked once, for the
    /// message's record.
    pub fn message_id(&mut self) -> Option<String> {
        if matches!(self.state, State::Value | State::ValueEnd) {
            self.finish();
            self.state = State::Done;
        }
        self.found.take()
    }
}

/// The queue id in a back-end's reply to the end of data, in the forms of the MTAs we
/// front: Postfix `250 2.0.0 Ok: queued as 4XyZ1k2Lmnz`, Exim `250 OK id=1tAbCd-000Xyz-9Q`,
/// OpenSMTPD `250 2.0.0 3f1a2b3c Message accepted for delivery`. `None` for any other.
pub fn queue_id(text: &str) -> Option<String> {
    let token = |rest: &str| {
        let t: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(MAX_QUEUE_ID)
            .collect();
        (!t.is_empty()).then_some(t)
    };
    if let Some(i) = text.find("queued as ") {
        return token(&text[i + "queued as ".len()..]);
    }
    if let Some(i) = text.find("id=") {
        return token(&text[i + 3..]);
    }
    let mut words = text.split_whitespace();
    let first = words.next()?;
    if words.next() == Some("Message") && first.len() == 8 && is_hex(first) {
        return Some(first.to_owned());
    }
    None
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(message: &[u8], cut: usize) -> Option<String> {
        let mut s = MessageIdScanner::new();
        for piece in message.chunks(cut) {
            s.feed(piece);
        }
        s.message_id()
    }

    #[test]
    fn the_message_id_is_found_whatever_the_chunks() {
        let m = b"Received: from x\r\n by y\r\nSubject: hi\r\nMessage-ID: <abc.123@example.org>\r\nFrom: a@b\r\n\r\nMessage-ID: <not@this>\r\n.\r\n";
        for cut in 1..m.len() {
            assert_eq!(
                scan_in_pieces(m, cut).as_deref(),
                Some("<abc.123@example.org>"),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_folded_field_and_any_case_are_read() {
        let m = b"message-id:\r\n   <folded@example.org>\r\nTo: x\r\n\r\nbody\r\n";
        assert_eq!(
            scan_in_pieces(m, 3).as_deref(),
            Some("<folded@example.org>")
        );
        let m = b"MESSAGE-ID: <up@x> (comment)\r\n\r\n";
        assert_eq!(scan_in_pieces(m, 100).as_deref(), Some("<up@x>"));
    }

    #[test]
    fn no_message_id_in_the_headers_is_none() {
        let m = b"Subject: x\r\nX-Message-ID: <no@x>\r\n\r\nMessage-ID: <body@x>\r\n.\r\n";
        assert_eq!(scan_in_pieces(m, 7), None);
        assert_eq!(scan_in_pieces(b"\r\n", 1), None);
    }

    #[test]
    fn a_headers_only_message_and_a_huge_id_are_bounded() {
        assert_eq!(
            scan_in_pieces(b"Message-ID: <end@x>\r\n.\r\n", 5).as_deref(),
            Some("<end@x>")
        );
        let mut m = b"Message-ID: ".to_vec();
        m.extend(std::iter::repeat_n(b'a', 10_000));
        let mut s = MessageIdScanner::new();
        s.feed(&m);
        assert!(s.value.capacity() < 1024, "the value is bounded");
        s.feed(b"\r\n\r\n");
        // The space after the colon was the first octet kept, and is trimmed.
        assert_eq!(s.message_id().map(|v| v.len()), Some(MAX_MESSAGE_ID - 1));
    }

    #[test]
    fn queue_ids_of_postfix_exim_and_opensmtpd() {
        assert_eq!(queue_id("Ok: queued as ABC123").as_deref(), Some("ABC123"));
        assert_eq!(
            queue_id("Ok: queued as 4XyZ1k2Lmnz9").as_deref(),
            Some("4XyZ1k2Lmnz9")
        );
        assert_eq!(
            queue_id("OK id=1tAbCd-000Xyz-9Q").as_deref(),
            Some("1tAbCd-000Xyz-9Q")
        );
        assert_eq!(
            queue_id("3f1a2b3c Message accepted for delivery").as_deref(),
            Some("3f1a2b3c")
        );
        assert_eq!(queue_id("Ok"), None);
        assert_eq!(queue_id("Message accepted"), None);
        assert_eq!(queue_id("zzzzzzzz Message accepted"), None);
    }
}
