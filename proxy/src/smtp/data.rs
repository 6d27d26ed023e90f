//! The DATA-phase scanner: consumes the client's message in whatever chunks the socket
//! delivers, says which octets may be forwarded to the back-end at once, and finds the end
//! of data, which is `<CRLF>.<CRLF>` and nothing else (RFC 5321 4.1.1.4, 4.5.2).
//!
//! # Policy: bare CR and bare LF are rejected, not normalised
//!
//! SMTP smuggling works when two hops disagree about where a message ends: a client hides
//! `<LF>.<LF>` (or `<CR>.<CR>`, `<LF>.<CRLF>`...) in a message, the hop in front sees no end
//! there, the hop behind does, and the rest of the "message" is read as new commands in a
//! forged transaction. RFC 5321 2.3.8 only allows CR and LF together as CRLF. Following
//! Postfix's `smtpd_forbid_bare_newline` in its rejecting mode, any bare CR or bare LF in
//! the data makes the whole message fail: the scanner stops forwarding just before the bare
//! octet, keeps consuming up to the real `<CRLF>.<CRLF>`, and reports
//! [`Outcome::BareLineEnding`]; the session then abandons the back-end leg (closing it, so
//! the back-end never sees an end of data) and answers the client with
//! [`Outcome::reply`]. Rejecting rather than rewriting bare LF to CRLF was chosen because
//! rewriting changes the message (breaking signatures over binary-ish bodies) and because a
//! proxy that "repairs" input silently hides broken or hostile clients; modern back-ends
//! (Postfix ≥ 3.9, Exim ≥ 4.97) refuse such input too, so nothing legitimate is lost.
//!
//! # Invariants
//!
//! - Everything the scanner lets through (the `replay` and `forward` of each
//!   [`DataStep`]) is a prefix of the client's data in which every CR is followed by LF and
//!   every LF is preceded by CR; a CR at the end of a chunk is held back until the next
//!   octet proves it part of a CRLF. So whatever rule a back-end uses to find the end of
//!   data, it can find one only where this scanner did.
//! - The result (forwarded octets, consumed octets, outcome) does not depend on how the
//!   input is split into chunks; the property tests check exactly that.
//! - Dot-stuffing (RFC 5321 4.5.2) is passed through unchanged: the back-end removes it,
//!   or [`unstuff`] does when the message goes on as BDAT.

use super::reply::Reply;

/// How the data phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A clean message, all of it forwarded including the final `.CRLF`. `size` counts
    /// the octets before the final `.CRLF`, dot-stuffing included.
    Complete { size: u64 },
    /// A CR or LF not part of a CRLF, at `offset` octets into the data. Takes precedence
    /// over [`Outcome::TooBig`] because it is the one that matters for security.
    BareLineEnding { kind: Bare, offset: u64 },
    /// The message grew beyond the limit (RFC 1870 6.3).
    TooBig { size: u64, limit: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bare {
    Cr,
    Lf,
}

impl Outcome {
    /// The reply for the client, or `None` when the back-end's reply is to be relayed.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Self::Complete { .. } => None,
            // RFC 3463 X.6.0 "other or undefined media error": the content itself is
            // malformed. 550 is among the end-of-data replies of RFC 5321 4.3.2.
            Self::BareLineEnding { .. } => Some(Reply::new(
                550,
                Some((5, 6, 0)),
                "Message rejected: bare CR or LF found, lines must end in CRLF (RFC 5321 2.3.8)",
            )),
            // RFC 1870 6.3 and RFC 3463 X.3.4.
            Self::TooBig { .. } => Some(Reply::new(
                552,
                Some((5, 3, 4)),
                "Message size exceeds fixed maximum message size",
            )),
        }
    }
}

/// What one chunk contributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataStep {
    /// Octets held back from the previous chunk, now safe: send them first. Either empty
    /// or a single CR.
    pub replay: &'static [u8],
    /// `chunk[..forward]` may be sent to the back-end after `replay`.
    pub forward: usize,
    /// `chunk[..consumed]` belonged to the data phase. When `outcome` is set,
    /// `chunk[consumed..]` is whatever the client pipelined after the end of data.
    pub consumed: usize,
    /// Set once the end of data has been seen.
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After a CRLF, or at the very start: a `.` here may begin the terminator.
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
    /// After `.` at the start of a line (not yet counted as message).
    Dot,
    /// After `.` CR at the start of a line (neither counted yet).
    DotCr,
}

/// The incremental scanner; one per DATA command.
#[derive(Debug, Clone)]
pub struct DataScanner {
    state: State,
    limit: u64,
    /// Octets known to belong to the message.
    size: u64,
    /// Octets consumed before the current chunk.
    offset: u64,
    bare: Option<(Bare, u64)>,
    too_big: bool,
    /// Still forwarding: no bare octet and not too big so far.
    forwarding: bool,
    /// The last chunk ended in a CR that was not forwarded yet.
    held_cr: bool,
    done: Option<Outcome>,
}

impl DataScanner {
    /// A scanner for a message of at most `limit` octets (`u64::MAX`: no limit).
    pub fn new(limit: u64) -> Self {
        Self {
            state: State::LineStart,
            limit,
            size: 0,
            offset: 0,
            bare: None,
            too_big: false,
            forwarding: true,
            held_cr: false,
            done: None,
        }
    }

    /// The outcome, once the end of data has been consumed.
    pub fn outcome(&self) -> Option<Outcome> {
        self.done
    }

    /// Whether everything so far may still be forwarded. A session that prefers to drop
    /// a misbehaving client at once, rather than read to the end, can watch this.
    pub fn is_forwarding(&self) -> bool {
        self.forwarding
    }

    /// Consumes a chunk of client data.
    pub fn feed(&mut self, chunk: &[u8]) -> DataStep {
        if let Some(outcome) = self.done {
            return DataStep {
                replay: b"",
                forward: 0,
                consumed: 0,
                outcome: Some(outcome),
            };
        }
        if chunk.is_empty() {
            // Nothing to decide; in particular a held CR stays held.
            return DataStep {
                replay: b"",
                forward: 0,
                consumed: 0,
                outcome: None,
            };
        }
        let was_forwarding = self.forwarding;
        let held_at_start = std::mem::take(&mut self.held_cr);
        // Index in `chunk` where forwarding stopped, if it stopped in this chunk.
        let mut stop: Option<usize> = None;
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::Text if b != b'\r' && b != b'\n' => {
                    // Fast path: the run of ordinary octets up to the next CR or LF.
                    let rest = &chunk[i..];
                    let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    if rest.get(run) == Some(&b'\r') && rest.get(run + 1) == Some(&b'\n') {
                        // The common line end, CRLF, in this chunk: the line and its end
                        // are counted at once (`count` stops at the same octet as it
                        // would one by one), and a next line that starts with an
                        // ordinary octet goes on as text, without a step per octet.
                        self.count(run + 2, i, &mut stop);
                        i += run + 2;
                        self.state = match chunk.get(i) {
                            Some(b'.' | b'\r' | b'\n') | None => State::LineStart,
                            Some(_) => State::Text,
                        };
                    } else {
                        self.count(run, i, &mut stop);
                        i += run;
                    }
                    continue;
                }
                State::LineStart if b == b'.' => self.state = State::Dot,
                // An ordinary first octet: the line is text, counted with its run.
                State::LineStart if b != b'\r' && b != b'\n' => {
                    self.state = State::Text;
                    continue;
                }
                State::LineStart | State::Text => {
                    self.count(1, i, &mut stop);
                    match b {
                        b'\r' => self.state = State::Cr,
                        b'\n' => {
                            self.mark_bare(Bare::Lf, i, &mut stop);
                            self.state = State::Text;
                        }
                        _ => self.state = State::Text,
                    }
                }
                State::Cr if b == b'\n' => {
                    self.count(1, i, &mut stop);
                    self.state = State::LineStart;
                }
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    b'\n' => {
                        self.count(1, i, &mut stop);
                        self.count(1, i, &mut stop);
                        self.mark_bare(Bare::Lf, i, &mut stop);
                        self.state = State::Text;
                    }
                    _ => {
                        // A dot-stuffed or ordinary line starting with ".": message after
                        // all. Counted one by one so that the limit stops at this octet.
                        self.count(1, i, &mut stop);
                        self.count(1, i, &mut stop);
                        self.state = State::Text;
                    }
                },
                State::DotCr if b == b'\n' => {
                    let consumed = i + 1;
                    let outcome = self.finish();
                    self.offset += consumed as u64;
                    return self.step(
                        chunk,
                        was_forwarding,
                        held_at_start,
                        stop,
                        consumed,
                        Some(outcome),
                    );
                }
                State::Cr | State::DotCr => {
                    // The CR before this octet is bare. Report it, then look at this octet
                    // afresh: it may itself be a CR starting a real CRLF.
                    self.mark_bare(Bare::Cr, i, &mut stop);
                    if self.state == State::DotCr {
                        self.count(2, i, &mut stop);
                    }
                    self.state = State::Text;
                    continue;
                }
            }
            i += 1;
        }
        self.offset += chunk.len() as u64;
        self.step(
            chunk,
            was_forwarding,
            held_at_start,
            stop,
            chunk.len(),
            None,
        )
    }

    /// Adds the `n` octets starting at chunk index `at` to the message size, and stops
    /// forwarding at the first of them beyond the limit.
    fn count(&mut self, n: usize, at: usize, stop: &mut Option<usize>) {
        let before = self.size;
        self.size = self.size.saturating_add(n as u64);
        if !self.too_big && self.size > self.limit {
            self.too_big = true;
            // Within a run, stop exactly at the first octet beyond the limit.
            let within = usize::try_from(self.limit.saturating_sub(before)).unwrap_or(usize::MAX);
            self.stop_forwarding(at.saturating_add(within.min(n.saturating_sub(1))), stop);
        }
    }

    /// Records a bare CR or LF. For LF, `at` is its index; for CR, `at` is the index just
    /// after it (the CR may even be the held octet of the previous chunk).
    fn mark_bare(&mut self, kind: Bare, at: usize, stop: &mut Option<usize>) {
        let (index, offset) = match kind {
            Bare::Lf => (at, self.offset + at as u64),
            Bare::Cr => (
                at.saturating_sub(1),
                (self.offset + at as u64).saturating_sub(1),
            ),
        };
        if self.bare.is_none() {
            self.bare = Some((kind, offset));
        }
        self.stop_forwarding(index, stop);
    }

    fn stop_forwarding(&mut self, at: usize, stop: &mut Option<usize>) {
        if self.forwarding {
            self.forwarding = false;
            *stop = Some(at);
        }
    }

    fn finish(&mut self) -> Outcome {
        let outcome = match self.bare {
            Some((kind, offset)) => Outcome::BareLineEnding { kind, offset },
            None if self.too_big => Outcome::TooBig {
                size: self.size,
                limit: self.limit,
            },
            None => Outcome::Complete { size: self.size },
        };
        self.done = Some(outcome);
        outcome
    }

    fn step(
        &mut self,
        chunk: &[u8],
        was_forwarding: bool,
        held_at_start: bool,
        stop: Option<usize>,
        consumed: usize,
        outcome: Option<Outcome>,
    ) -> DataStep {
        if !was_forwarding {
            return DataStep {
                replay: b"",
                forward: 0,
                consumed,
                outcome,
            };
        }
        let mut forward = stop.unwrap_or(consumed);
        // Never let a CR out without the LF after it: a chunk-final CR might yet turn out
        // bare (hold it for the next chunk), and a CR before the octet where forwarding
        // stopped has no LF following it in what the back-end gets.
        if forward.checked_sub(1).and_then(|j| chunk.get(j)) == Some(&b'\r') {
            forward -= 1;
            self.held_cr = stop.is_none();
        }
        // The held CR goes out only together with the LF that proved it, i.e. only if this
        // chunk's first octet is forwarded too.
        let replay: &'static [u8] = if held_at_start && forward > 0 {
            b"\r"
        } else {
            b""
        };
        DataStep {
            replay,
            forward,
            consumed,
            outcome,
        }
    }
}

/// Removes dot-stuffing (RFC 5321 4.5.2) in place from `message`, the octets of a clean
/// message as the client sent them up to (not including) the final `.CRLF`: a line that
/// begins with a period loses that period. Returns the message's length without it.
///
/// A message relayed with BDAT travels as it is meant to be read (RFC 3030 2), so the
/// stuffing the client added for DATA comes off first. Lines are found by LF alone: in a
/// clean message (see the invariants above) every LF ends a CRLF.
pub fn unstuff(message: &mut [u8]) -> usize {
    // Only the stretches between stuffed periods move, each once: a message without a
    // line that begins with a period (the usual one) is scanned and left as it is.
    let finder = memchr::memmem::Finder::new(b"\n.");
    let mut read = usize::from(message.first() == Some(&b'.'));
    let mut write = 0;
    loop {
        // The next period to drop: the one after an LF.
        let dot = finder.find(&message[read..]).map(|i| read + i + 1);
        let end = dot.unwrap_or(message.len());
        if write != read {
            message.copy_within(read..end, write);
        }
        write += end - read;
        match dot {
            Some(dot) => read = dot + 1,
            None => return write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` split at `cuts`; returns forwarded octets, consumed count, outcome.
    fn run(input: &[u8], cuts: &[usize], limit: u64) -> (Vec<u8>, usize, Option<Outcome>) {
        let mut s = DataScanner::new(limit);
        let mut forwarded = Vec::new();
        let mut consumed = 0;
        let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        bounds.push(0);
        bounds.push(input.len());
        bounds.sort_unstable();
        for w in bounds.windows(2) {
            let chunk = &input[w[0]..w[1]];
            let step = s.feed(chunk);
            forwarded.extend_from_slice(step.replay);
            forwarded.extend_from_slice(&chunk[..step.forward]);
            consumed += step.consumed;
            if let Some(outcome) = step.outcome {
                return (forwarded, consumed, Some(outcome));
            }
        }
        (forwarded, consumed, None)
    }

    /// The definition, written the slow and obvious way: the data ends at the first
    /// `CRLF.CRLF`, counting a virtual CRLF before the first octet.
    fn oracle(input: &[u8], limit: u64) -> Option<(usize, Outcome)> {
        let mut v = b"\r\n".to_vec();
        v.extend_from_slice(input);
        let end = v.windows(5).position(|w| w == b"\r\n.\r\n")? + 3;
        let bare = (0..end).find_map(|j| {
            match input[j] {
                b'\n' if j == 0 || input[j - 1] != b'\r' => Some(Bare::Lf),
                b'\r' if input.get(j + 1) != Some(&b'\n') => Some(Bare::Cr),
                _ => None,
            }
            .map(|kind| (kind, j))
        });
        let size = (end - 3) as u64;
        let outcome = match bare {
            Some((kind, j)) => Outcome::BareLineEnding {
                kind,
                offset: j as u64,
            },
            None if size > limit => Outcome::TooBig { size, limit },
            None => Outcome::Complete { size },
        };
        Some((end, outcome))
    }

    fn is_clean_prefix(forwarded: &[u8]) -> bool {
        forwarded.last() != Some(&b'\r')
            && forwarded.iter().enumerate().all(|(j, &b)| match b {
                b'\n' => j > 0 && forwarded[j - 1] == b'\r',
                b'\r' => forwarded.get(j + 1) == Some(&b'\n'),
                _ => true,
            })
    }

    #[test]
    fn plain_message_and_pipelined_rest() {
        let input = b"Subject: hi\r\n\r\nbody\r\n..stuffed\r\n.\r\nQUIT\r\n";
        let (fwd, consumed, outcome) = run(input, &[], u64::MAX);
        let end = input.len() - b"QUIT\r\n".len();
        assert_eq!(consumed, end);
        assert_eq!(fwd, &input[..end]);
        assert_eq!(
            outcome,
            Some(Outcome::Complete {
                size: (end - 3) as u64
            })
        );
        assert_eq!(outcome.and_then(|o| o.reply()), None);
    }

    #[test]
    fn unstuffing_removes_the_period_dot_stuffing_added() {
        let mut m = b"..a\r\nb.\r\n...\r\n\r\n".to_vec();
        let n = unstuff(&mut m);
        assert_eq!(&m[..n], b".a\r\nb.\r\n..\r\n\r\n");
        let mut empty: [u8; 0] = [];
        assert_eq!(unstuff(&mut empty), 0);
        let mut plain = b"no dots\r\n".to_vec();
        assert_eq!(unstuff(&mut plain), plain.len());
    }

    #[test]
    fn empty_message() {
        assert_eq!(run(b".\r\n", &[], 0).2, Some(Outcome::Complete { size: 0 }));
        assert_eq!(
            run(b"\r\n.\r\n", &[], 10).2,
            Some(Outcome::Complete { size: 2 })
        );
    }

    #[test]
    fn smuggling_terminators_are_not_the_end() {
        for fake in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r.\r\n",
        ] {
            let mut input = b"Subject: x\r\n\r\nhi".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            // Without a real terminator the data phase simply has not ended.
            let (fwd, consumed, outcome) = run(&input, &[], u64::MAX);
            assert_eq!(outcome, None, "{fake:?}");
            assert_eq!(consumed, input.len());
            assert!(is_clean_prefix(&fwd));
            assert!(!fwd.windows(4).any(|w| w == b"MAIL"));
            // With one, the message is rejected and ends only there.
            input.extend_from_slice(b"\r\n.\r\n");
            let (fwd, consumed, outcome) = run(&input, &[], u64::MAX);
            assert_eq!(consumed, input.len(), "{fake:?}");
            assert_eq!(outcome, oracle(&input, u64::MAX).map(|(_, o)| o));
            assert!(
                matches!(
                    outcome,
                    Some(Outcome::BareLineEnding {
                        offset: 16..=19,
                        ..
                    })
                ),
                "{fake:?} {outcome:?}"
            );
            assert!(fwd.starts_with(b"Subject: x\r\n\r\nhi") && fwd.len() <= 19);
            assert!(is_clean_prefix(&fwd));
            assert_eq!(outcome.and_then(|o| o.reply()).map(|r| r.code), Some(550));
        }
    }

    #[test]
    fn terminator_split_at_every_point() {
        let input = b"a\r\n.\r\nNEXT";
        for cut in 0..=input.len() {
            for cut2 in cut..=input.len() {
                let (fwd, consumed, outcome) = run(input, &[cut, cut2], u64::MAX);
                assert_eq!(fwd, b"a\r\n.\r\n", "cuts {cut} {cut2}");
                assert_eq!(consumed, 6);
                assert_eq!(outcome, Some(Outcome::Complete { size: 3 }));
            }
        }
    }

    #[test]
    fn chunk_final_cr_is_held_then_replayed() {
        let mut s = DataScanner::new(u64::MAX);
        let step = s.feed(b"abc\r");
        assert_eq!((step.replay, step.forward), (&b""[..], 3));
        let step = s.feed(b"\nxyz");
        assert_eq!((step.replay, step.forward), (&b"\r"[..], 4));
        // A held CR followed by something else is bare and never sent.
        let step = s.feed(b"\r");
        assert_eq!(step.forward, 0);
        let step = s.feed(b"x");
        assert_eq!((step.replay, step.forward, step.consumed), (&b""[..], 0, 1));
        assert!(!s.is_forwarding());
        let step = s.feed(b"\r\n.\r\n");
        assert_eq!(
            step.outcome,
            Some(Outcome::BareLineEnding {
                kind: Bare::Cr,
                offset: 8
            })
        );
        // After the end the scanner consumes nothing more.
        assert_eq!(s.feed(b"RSET\r\n").consumed, 0);
        assert_eq!(s.outcome(), step.outcome);
    }

    #[test]
    fn size_limit() {
        let body = b"12345678\r\n.\r\n";
        assert_eq!(run(body, &[], 10).2, Some(Outcome::Complete { size: 10 }));
        let (fwd, consumed, outcome) = run(body, &[3], 9);
        assert_eq!(outcome, Some(Outcome::TooBig { size: 10, limit: 9 }));
        assert_eq!(consumed, body.len());
        assert_eq!(fwd, b"12345678");
        assert_eq!(
            outcome.and_then(|o| o.reply()).map(|r| r.to_string()),
            Some("552 5.3.4 Message size exceeds fixed maximum message size\r\n".into())
        );
        // The size of a long message is still counted to the end.
        let big = [vec![b'x'; 5000], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(
            run(&big, &[100, 4000], 1000).2,
            Some(Outcome::TooBig {
                size: 5002,
                limit: 1000
            })
        );
    }

    #[test]
    fn bare_lf_wins_over_too_big() {
        let (_, _, outcome) = run(b"xxxxxxxxxx\nyy\r\n.\r\n", &[], 3);
        assert_eq!(
            outcome,
            Some(Outcome::BareLineEnding {
                kind: Bare::Lf,
                offset: 10
            })
        );
    }

    fn data_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                4 => Just(b'a'),
                3 => Just(b'.'),
                3 => Just(b'\r'),
                3 => Just(b'\n'),
            ],
            0..120,
        )
    }

    /// Mostly well-formed messages (CRLF lines, stuffed dots) with a terminator, so the
    /// clean path is exercised as often as the hostile one.
    fn clean_message() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::collection::vec(prop_oneof![Just(b'a'), Just(b'.')], 0..6),
            0..12,
        )
        .prop_map(|lines| {
            let mut out = Vec::new();
            for l in lines {
                if l.first() == Some(&b'.') {
                    out.push(b'.');
                }
                out.extend_from_slice(&l);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\nQUIT\r\n");
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_split_gives_the_same_result(
            input in prop_oneof![data_bytes(), clean_message()],
            cuts in prop::collection::vec(0usize..130, 0..8),
            limit in prop_oneof![Just(u64::MAX), 0u64..100],
        ) {
            let whole = run(&input, &[], limit);
            let split = run(&input, &cuts, limit);
            prop_assert_eq!(&whole, &split);
            let bytewise: Vec<usize> = (1..input.len()).collect();
            prop_assert_eq!(&whole, &run(&input, &bytewise, limit));

            let (fwd, consumed, outcome) = whole;
            prop_assert!(input.starts_with(&fwd));
            prop_assert!(is_clean_prefix(&fwd));
            match oracle(&input, limit) {
                None => {
                    prop_assert_eq!(outcome, None);
                    prop_assert_eq!(consumed, input.len());
                }
                Some((end, expected)) => {
                    prop_assert_eq!(outcome, Some(expected));
                    prop_assert_eq!(consumed, end);
                    match expected {
                        Outcome::Complete { .. } => prop_assert_eq!(&fwd[..], &input[..end]),
                        Outcome::BareLineEnding { offset, .. } => prop_assert!(fwd.len() as u64 <= offset),
                        Outcome::TooBig { .. } => prop_assert!(fwd.len() as u64 <= limit + 2),
                    }
                }
            }
        }

        #[test]
        fn unstuffing_gives_back_what_was_stuffed(
            lines in prop::collection::vec(
                prop::collection::vec(prop_oneof![Just(b'a'), Just(b'.'), Just(b' ')], 0..6),
                0..12,
            ),
        ) {
            let mut original = Vec::new();
            let mut stuffed = Vec::new();
            for l in &lines {
                if l.first() == Some(&b'.') {
                    stuffed.push(b'.');
                }
                stuffed.extend_from_slice(l);
                stuffed.extend_from_slice(b"\r\n");
                original.extend_from_slice(l);
                original.extend_from_slice(b"\r\n");
            }
            let n = unstuff(&mut stuffed);
            prop_assert_eq!(&stuffed[..n], &original[..]);
        }

        #[test]
        fn unstuffing_drops_the_period_that_begins_each_line(input in data_bytes()) {
            let expected: Vec<u8> = input
                .split_inclusive(|&b| b == b'\n')
                .flat_map(|line| line.strip_prefix(b".").unwrap_or(line).iter().copied())
                .collect();
            let mut m = input.clone();
            let n = unstuff(&mut m);
            prop_assert_eq!(&m[..n], &expected[..]);
        }

        #[test]
        fn clean_messages_are_forwarded_whole(input in clean_message(), cuts in prop::collection::vec(0usize..100, 0..6)) {
            let (fwd, consumed, outcome) = run(&input, &cuts, u64::MAX);
            prop_assert!(matches!(outcome, Some(Outcome::Complete { .. })), "{:?}", outcome);
            prop_assert_eq!(consumed, input.len() - b"QUIT\r\n".len());
            prop_assert_eq!(&fwd[..], &input[..consumed]);
        }
    }
}
