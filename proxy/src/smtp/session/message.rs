//! DATA and BDAT: the message relay. A client's BDAT chunks go to a back-end that
//! offered CHUNKING as they arrive. To a back-end that offered CHUNKING (RFC 3030) the proxy says
//! 354 itself and holds the message; one that ends within [`HELD_MESSAGE`] octets goes on
//! as a single `BDAT n LAST`, the back-end's one reply answering the end of data. That
//! saves DATA's round trip to the back-end (DATA, 354) for the usual message. A longer
//! message, or any message to a back-end without CHUNKING, goes on as DATA, streamed as it
//! arrives.
//!
//! A back-end that refuses the transaction at BDAT (or at the DATA a long message falls
//! back to) gives its refusal at the end of data instead of before the message: a reply
//! RFC 5321 4.3.2 allows there, and the client's octets are read to their end either way,
//! never taken for commands.

use std::{
    io::Write as _,
    sync::{Arc, atomic::AtomicBool},
};

use tokio::io::AsyncBufReadExt as _;

use crate::stream::ClientStream;
use tracing::{debug, info, warn};

use super::{
    Commit, DATA_BLOCK_TIMEOUT, Session, SessionError, Transaction, transaction::no_backend,
};
use crate::{
    backend::{
        lease::Lease,
        smtp::{DATA_END_TIMEOUT, LegError, SmtpLeg},
    },
    smtp::{
        data::{DataScanner, Outcome, unstuff},
        reply::Reply,
    },
};

/// How much of a message the proxy holds, waiting for its end, to send it as one BDAT.
/// Once more has arrived without the end, the message streams as DATA; so a session holds
/// at most this much and one read of a message (a message that arrives whole in that
/// read still goes as BDAT).
pub const HELD_MESSAGE: usize = 64 * 1024;

/// Room kept before a held message for its `BDAT <size> LAST` line, so that command and
/// message leave in one write: the longest line, with a 20-digit size, is 32 octets.
const BDAT_ROOM: usize = 32;

/// Where the client's octets go.
enum Relay {
    /// The back-end said 354: octets go on as they arrive.
    Streaming,
    /// The proxy said 354 and keeps the message (after [`BDAT_ROOM`]), stuffed as sent.
    Held(Vec<u8>),
    /// The back-end refused (or failed at) the DATA a long held message fell back to,
    /// after the proxy had said 354: the rest of the message is read and dropped, and this
    /// is the client's reply.
    Refused(Reply),
}

impl<'e, S: ClientStream> Session<'e, S> {
    /// DATA (RFC 5321 4.1.1.4): the back-end's reply to the end of data (or to the BDAT
    /// that carried the message) is the client's reply. Returns false when the client
    /// went away.
    pub(super) async fn data(&mut self) -> Result<bool, SessionError> {
        let Some(tx) = &self.tx else {
            self.say(503, (5, 5, 1), "Need MAIL command");
            return Ok(true);
        };
        if tx.bdat_used() {
            // RFC 3030 2: DATA and BDAT cannot be mixed in one transaction.
            self.say(503, (5, 5, 1), "DATA not allowed after BDAT");
            return Ok(true);
        }
        if tx.rcpts().is_empty() {
            self.say(554, (5, 5, 1), "No valid recipients");
            return Ok(true);
        }
        let broken = tx.broken();
        // What the log line of a relayed message says, taken while the transaction is
        // at hand (only built when that debug line is written).
        let from = if tracing::enabled!(tracing::Level::DEBUG) {
            tx.mail
                .reverse_path
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        } else {
            String::new()
        };
        let rcpts = tx.rcpts().len();
        let Some(leg) = self.leg.as_ref().filter(|_| !broken) else {
            self.reset_transaction().await;
            self.send(&no_backend());
            return Ok(true);
        };
        let mut relay = if leg.lease.leg.caps.chunking && leg.lease.candidate.pool.pool.data_as_bdat
        {
            self.say_plain(354, "End data with <CR><LF>.<CR><LF>");
            Relay::Held(Vec::new())
        } else {
            match self.start_data().await {
                Ok(reply) if reply.code == 354 => {
                    self.send(&reply);
                    Relay::Streaming
                }
                Ok(reply) => {
                    // The back-end refused DATA but still holds MAIL and RCPT.
                    self.reset_transaction().await;
                    self.send(&reply);
                    return Ok(true);
                }
                Err(()) => {
                    self.tx = None;
                    self.send(&no_backend());
                    return Ok(true);
                }
            }
        };
        self.flush().await?;

        let mut scanner = DataScanner::new(self.svc().max_message_size);
        let mut leg_failed: Option<LegError> = None;
        // The message streams through in reads as large as it comes (fewer reads, and
        // as few writes to the back-end), into a buffer kept until its end.
        self.io.hold(true);
        let outcome = loop {
            let chunk = match tokio::time::timeout(DATA_BLOCK_TIMEOUT, self.io.fill_buf()).await {
                Ok(Ok(c)) if !c.is_empty() => c,
                Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                    // The client is gone or stalled: the back-end must not see an end of
                    // data, so the leg is dropped unfinished.
                    self.leg = None;
                    self.tx = None;
                    return Ok(false);
                }
            };
            let step = scanner.feed(chunk);
            if let Some(tx) = self.tx.as_mut() {
                tx.message_id.feed(step.replay);
                tx.message_id.feed(&chunk[..step.forward]);
            }
            match &mut relay {
                Relay::Held(held) => {
                    if held.is_empty() {
                        // Sized by the first read, which holds all of the usual message:
                        // one allocation.
                        held.reserve_exact(BDAT_ROOM + step.replay.len() + step.forward);
                        held.resize(BDAT_ROOM, 0);
                    }
                    held.extend_from_slice(step.replay);
                    held.extend_from_slice(&chunk[..step.forward]);
                }
                Relay::Streaming => {
                    if leg_failed.is_none()
                        && (step.forward > 0 || !step.replay.is_empty())
                        && let Some(l) = self.leg.as_mut()
                    {
                        // Held-back octets (a line end the scanner was not sure of) go
                        // first; the common chunk has none and goes as it is, without a
                        // copy.
                        let sent = if step.replay.is_empty() {
                            l.lease.data(&chunk[..step.forward]).await
                        } else {
                            let mut bytes = Vec::with_capacity(step.replay.len() + step.forward);
                            bytes.extend_from_slice(step.replay);
                            bytes.extend_from_slice(&chunk[..step.forward]);
                            l.lease.data(&bytes).await
                        };
                        if let Err(e) = sent {
                            leg_failed = Some(e);
                        }
                    }
                }
                Relay::Refused(_) => {}
            }
            self.io.consume(step.consumed);
            if let Some(o) = step.outcome {
                break o;
            }
            if let Relay::Held(held) = &mut relay
                && held.len().saturating_sub(BDAT_ROOM) > HELD_MESSAGE
            {
                relay = self.stream_held(std::mem::take(held)).await;
            }
        };
        self.io.hold(false);
        let mut done = self.tx.take();
        let reply = match (outcome, relay) {
            (Outcome::Complete { size }, Relay::Held(held)) => {
                let reply = match self.leg.as_mut() {
                    Some(leg) => {
                        Some(send_held(&mut leg.lease, &self.committing, held, size).await)
                    }
                    None => None,
                };
                let reply = self.message_end(reply, done.as_deref_mut(), size, rcpts, &from);
                if !reply.is_positive() {
                    // Servers end the transaction at the last chunk whatever its reply, as
                    // at an end of data; RFC 3030 does not say so, so RSET makes sure.
                    self.reset_leg().await;
                }
                reply
            }
            (Outcome::Complete { size }, Relay::Streaming) if leg_failed.is_none() => {
                let reply = match self.leg.as_mut() {
                    Some(leg) => {
                        let _commit = Commit::begin(&self.committing);
                        Some(leg.lease.reply("end of data", DATA_END_TIMEOUT).await)
                    }
                    None => None,
                };
                self.message_end(reply, done.as_deref_mut(), size, rcpts, &from)
            }
            (Outcome::Complete { .. }, Relay::Streaming) => {
                warn!(session = %self.client.session_id, error = ?leg_failed.map(|e| e.to_string()), "back-end failed during DATA; message not acknowledged");
                self.leg = None;
                no_backend()
            }
            (_, Relay::Refused(reply)) => {
                // The back-end never took DATA: it still holds MAIL and RCPT.
                self.reset_leg().await;
                reply
            }
            (bad, relay) => {
                info!(session = %self.client.session_id, outcome = ?bad, "message refused");
                if matches!(relay, Relay::Held(_)) {
                    // The back-end saw MAIL and RCPT only.
                    self.reset_leg().await;
                } else {
                    // The back-end saw no end of data; closing the leg abandons its
                    // transaction.
                    self.leg = None;
                }
                bad.reply().unwrap_or_else(no_backend)
            }
        };
        self.send(&reply);
        Ok(true)
    }

    /// Sends DATA to the leg. A leg that fails is dropped (`Err`); its reply otherwise,
    /// which is 354 when the message may follow.
    async fn start_data(&mut self) -> Result<Reply, ()> {
        let Some(leg) = self.leg.as_mut() else {
            return Err(());
        };
        match leg.lease.command("DATA", "DATA").await {
            Ok(r) => Ok(r),
            Err(e) => {
                warn!(session = %self.client.session_id, error = %e, "back-end failed at DATA");
                self.leg = None;
                Err(())
            }
        }
    }

    /// A held message outgrew [`HELD_MESSAGE`]: it goes on as DATA, what is held first.
    async fn stream_held(&mut self, held: Vec<u8>) -> Relay {
        match self.start_data().await {
            Ok(reply) if reply.code == 354 => {
                let sent = match self.leg.as_mut() {
                    Some(l) => l.lease.data(&held[BDAT_ROOM..]).await.is_ok(),
                    None => false,
                };
                if !sent {
                    self.leg = None;
                    return Relay::Refused(no_backend());
                }
                Relay::Streaming
            }
            Ok(reply) => Relay::Refused(reply),
            Err(()) => Relay::Refused(no_backend()),
        }
    }

    /// The back-end's answer to a whole message (`None`: no leg was left to ask) becomes
    /// the client's reply; a message it took is counted and recorded.
    fn message_end(
        &mut self,
        reply: Option<Result<Reply, LegError>>,
        done: Option<&mut Transaction>,
        size: u64,
        rcpts: usize,
        from: &str,
    ) -> Reply {
        let reply = match reply {
            Some(Ok(reply)) => reply,
            Some(Err(e)) => {
                warn!(session = %self.client.session_id, error = %e, "back-end failed after the end of data; message not acknowledged");
                self.leg = None;
                return no_backend();
            }
            None => return no_backend(),
        };
        let Some(leg) = self.leg.as_ref() else {
            return no_backend();
        };
        if reply.is_positive() {
            leg.lease.tally.message(rcpts as u64);
        }
        // Counted per back-end (`tally.message`, the statistics); a line per message only
        // at debug level, where its write costs nothing by default.
        debug!(session = %self.client.session_id, backend = %leg.lease.backend(), size,
            from = %from, rcpts, code = reply.code, "message relayed");
        if reply.is_positive()
            && let Some(tx) = done
        {
            self.relayed(tx, size, &reply);
        }
        reply
    }

    /// BDAT (RFC 3030): the chunk of exactly `size` octets that follows the command is
    /// relayed as it arrives, to a back-end that offered CHUNKING; the back-end's reply is
    /// the client's. A refused chunk is still read to its end, so its octets are never
    /// taken for commands. Returns false when the client went away.
    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Result<bool, SessionError> {
        let max = self.svc().max_message_size;
        let refuse = match &self.tx {
            None => Some(Reply::new(503, Some((5, 5, 1)), "Need MAIL command")),
            Some(tx) if tx.rcpts().is_empty() => {
                Some(Reply::new(554, Some((5, 5, 1)), "No valid recipients"))
            }
            Some(tx) if tx.broken() => Some(no_backend()),
            Some(tx) if tx.bdat_size().saturating_add(size) > max => Some(Reply::new(
                552,
                Some((5, 3, 4)),
                "Message size exceeds fixed maximum message size",
            )),
            Some(_) => match &self.leg {
                None => Some(no_backend()),
                Some(l) if !l.lease.leg.caps.chunking => Some(Reply::new(
                    451,
                    Some((4, 5, 3)),
                    "Back-end does not take BDAT now, use DATA",
                )),
                Some(_) => None,
            },
        };
        if let Some(reply) = refuse {
            if !self.relay_chunk(size, false).await? {
                return Ok(false);
            }
            // RFC 3030 2: a refused chunk fails the transaction. A leg that took part of
            // the message is closed; one that only saw MAIL and RCPT is reset.
            if self.tx.as_ref().is_some_and(|t| t.bdat_size() > 0) {
                self.tx = None;
                self.leg = None;
            } else {
                self.reset_transaction().await;
            }
            self.send(&reply);
            return Ok(true);
        }
        if let Some(tx) = &mut self.tx {
            tx.start_bdat();
        }
        let line = if last {
            format!("BDAT {size} LAST\r\n")
        } else {
            format!("BDAT {size}\r\n")
        };
        let sent = match self.leg.as_mut() {
            Some(l) => l.lease.data(line.as_bytes()).await.is_ok(),
            None => false,
        };
        // A write failure ends the leg at once: waiting for its reply would only time out.
        if !self.relay_chunk(size, sent).await? {
            return Ok(false);
        }
        let wait = if last {
            DATA_END_TIMEOUT
        } else {
            DATA_BLOCK_TIMEOUT
        };
        let commit = Commit::begin(if last { &self.committing } else { &None });
        let reply = match self.leg.as_mut() {
            Some(l) => match l
                .lease
                .reply(if last { "BDAT LAST" } else { "BDAT" }, wait)
                .await
            {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(session = %self.client.session_id, error = %e, "back-end failed during BDAT; message not acknowledged");
                    None
                }
            },
            None => None,
        };
        drop(commit);
        match reply {
            Some(r) => {
                if let Some(tx) = &mut self.tx {
                    tx.add_bdat(size);
                }
                if last {
                    let mut tx = self.tx.take();
                    let (total, rcpts) = tx
                        .as_ref()
                        .map_or((0, 0), |t| (t.bdat_size(), t.rcpts().len()));
                    if r.is_positive()
                        && let Some(l) = &self.leg
                    {
                        l.lease.tally.message(rcpts as u64);
                    }
                    debug!(session = %self.client.session_id, size = total, rcpts, code = r.code, "message relayed (BDAT)");
                    if r.is_positive()
                        && let Some(tx) = tx.as_deref_mut()
                    {
                        self.relayed(tx, total, &r);
                    }
                } else if !r.is_positive() {
                    // RFC 3030 2: the transaction failed; the back-end may hold part of
                    // the message, so the leg is closed rather than trusted to reset.
                    self.tx = None;
                    self.leg = None;
                }
                self.send(&r);
            }
            None => {
                self.tx = None;
                self.leg = None;
                self.send(&no_backend());
            }
        }
        Ok(true)
    }

    /// Reads exactly `size` octets of chunk from the client, writing them to the leg when
    /// `forward`. A leg write that fails drops the leg at once. Returns false when the
    /// client went away first.
    async fn relay_chunk(&mut self, size: u64, mut forward: bool) -> Result<bool, SessionError> {
        let mut left = size;
        while left > 0 {
            let chunk = match tokio::time::timeout(DATA_BLOCK_TIMEOUT, self.io.fill_buf()).await {
                Ok(Ok(c)) if !c.is_empty() => c,
                _ => return Ok(false),
            };
            let take = chunk.len().min(left.min(usize::MAX as u64) as usize);
            if forward && let Some(tx) = self.tx.as_mut() {
                tx.message_id.feed(&chunk[..take]);
            }
            if forward
                && let Some(l) = self.leg.as_mut()
                && l.lease.data(&chunk[..take]).await.is_err()
            {
                forward = false;
                self.leg = None;
            }
            self.io.consume(take);
            left -= take as u64;
        }
        if !forward && size > 0 && self.tx.as_ref().is_some_and(|t| t.bdat_used()) {
            // The chunk never fully reached the back-end.
            self.leg = None;
        }
        Ok(true)
    }
}

/// Sends a held message of `size` octets (stuffed, before the final `.CRLF`) as one
/// `BDAT <n> LAST` in a single write, and reads the back-end's reply, the session marked
/// as committing meanwhile.
async fn send_held(
    leg: &mut Lease<SmtpLeg>,
    committing: &Option<Arc<AtomicBool>>,
    mut held: Vec<u8>,
    size: u64,
) -> Result<Reply, LegError> {
    let end = BDAT_ROOM + size as usize;
    debug_assert_eq!(held.len(), end + 3, "a held message ends in .CRLF");
    let len = unstuff(&mut held[BDAT_ROOM..end]);
    let mut line = [0u8; BDAT_ROOM];
    let mut cursor = std::io::Cursor::new(&mut line[..]);
    let _ = write!(cursor, "BDAT {len} LAST\r\n");
    let line_len = cursor.position() as usize;
    let start = BDAT_ROOM - line_len;
    held[start..BDAT_ROOM].copy_from_slice(&line[..line_len]);
    leg.data(&held[start..BDAT_ROOM + len]).await?;
    let _commit = Commit::begin(committing);
    leg.reply("BDAT LAST", DATA_END_TIMEOUT).await
}
