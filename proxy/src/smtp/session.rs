//! The client-facing SMTP session (RFC 5321): greeting, EHLO, STARTTLS, AUTH, and
//! transactions whose recipients are routed, one route per transaction, to back-end legs.
//!
//! Invariants:
//! - The client gets 250 for a message only when a back-end said 250 to its end of data;
//!   any failure before that is a 4xx, so the client keeps the message and retries.
//! - A transaction has one route, fixed by its first accepted recipient; a recipient of
//!   another route gets `452 4.5.3` and is sent again by the client in a new transaction.
//! - Input is bounded: command lines by [`MAX_LINE`], messages by the service's size limit,
//!   waits by the RFC 5321 4.5.3.2 timeouts; the proxy never holds a whole message.
//! - After STARTTLS nothing read before the handshake is used (RFC 3207 4.2,
//!   CVE-2011-0411), and the session starts over.

mod auth;
mod message;
mod transaction;

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncWriteExt as _, time::timeout};
use tokio_util::sync::CancellationToken;

use super::{
    command::{Command, MailFrom},
    reply::Reply,
};
use crate::{
    backend::{
        lease::Lease,
        smtp::{ClientInfo, SmtpLeg},
    },
    config::{Service, ServiceTls},
    route::PoolNames,
    session_core::{ErrorBudget, Next, next_line_into, upgrade_tls},
    stream::{Buffered, ClientStream, Conn, LastWords},
};
pub use crate::{service::ServiceContext, session_core::SessionError};

/// RFC 5321 4.5.3.1.4 allows 512 octets for a command line; we take up to 1000, the text
/// line limit, because long MAIL/RCPT parameter lists exist in the wild.
pub const MAX_LINE: usize = 1000;
/// RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted.
///
/// This bounds what one session holds for its transaction: the accepted RCPT lines are
/// kept to be replayed on a new leg, at most `MAX_RECIPIENTS` lines of at most
/// [`MAX_LINE`] octets (up to three times that where invalid UTF-8 is replaced), so about
/// 1 MB, up to 3 MB; they are replayed from where they are kept, not copied. A client that
/// sends more gets `452 4.5.3` for each extra recipient and nothing more is kept.
pub const MAX_RECIPIENTS: usize = 1000;
/// RFC 5321 4.5.3.2.5: a data block may take 3 minutes.
pub const DATA_BLOCK_TIMEOUT: Duration = Duration::from_secs(180);
/// Syntax errors and refused commands before the session is closed.
pub const MAX_ERRORS: u32 = 20;

/// Whether the client has said hello, and how: MAIL parameters need EHLO.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Greeted {
    No,
    Helo,
    Ehlo,
}

/// A leased back-end leg and the route it serves.
struct Leg {
    lease: Lease<SmtpLeg>,
    route: PoolNames,
}

struct Transaction {
    mail: MailFrom,
    /// The MAIL command as the client sent it, replayed to the back-end.
    mail_line: String,
    /// Whether MAIL went to the current leg.
    mail_sent: bool,
    phase: Phase,
    /// How the route was chosen, said when its first recipient was accepted.
    route_reason: Option<String>,
    /// The message's Message-ID, read as it is relayed.
    message_id: super::trace::MessageIdScanner,
}

/// How far a transaction has come; each phase holds only what exists in it, so no
/// command has to trust that a field was filled in by an earlier one.
enum Phase {
    /// MAIL given, no recipient accepted yet. An authenticated session's route is its
    /// leg's, known from MAIL on; otherwise the first recipient fixes it.
    Mail { route: Option<PoolNames> },
    /// Recipients accepted: the route is fixed.
    Recipients(Accepted),
    /// A BDAT chunk was sent (RFC 3030): DATA is refused from here on (RFC 3030 2).
    Bdat {
        accepted: Accepted,
        /// Octets sent in BDAT chunks so far.
        size: u64,
    },
}

/// What a transaction with recipients holds.
struct Accepted {
    route: PoolNames,
    /// Accepted RCPT lines, replayed if the leg has to be replaced before DATA.
    rcpts: Vec<String>,
    /// The leg failed and could not be replaced: DATA gets 451.
    broken: bool,
}

impl Transaction {
    fn new(mail: MailFrom, mail_line: String) -> Self {
        Transaction {
            mail,
            mail_line,
            mail_sent: false,
            phase: Phase::Mail { route: None },
            route_reason: None,
            message_id: super::trace::MessageIdScanner::new(),
        }
    }

    fn accepted(&self) -> Option<&Accepted> {
        match &self.phase {
            Phase::Mail { .. } => None,
            Phase::Recipients(a) | Phase::Bdat { accepted: a, .. } => Some(a),
        }
    }

    /// The route, once fixed (by MAIL of an authenticated session or the first recipient).
    fn route(&self) -> Option<&PoolNames> {
        match &self.phase {
            Phase::Mail { route } => route.as_ref(),
            Phase::Recipients(a) | Phase::Bdat { accepted: a, .. } => Some(&a.route),
        }
    }

    fn rcpts(&self) -> &[String] {
        self.accepted().map_or(&[], |a| &a.rcpts)
    }

    fn broken(&self) -> bool {
        self.accepted().is_some_and(|a| a.broken)
    }

    fn bdat_used(&self) -> bool {
        matches!(self.phase, Phase::Bdat { .. })
    }

    fn bdat_size(&self) -> u64 {
        match self.phase {
            Phase::Bdat { size, .. } => size,
            _ => 0,
        }
    }

    /// Records an accepted recipient of `route` (the caller has checked it is the
    /// transaction's route).
    fn accept(&mut self, route: PoolNames, line: String) {
        match &mut self.phase {
            Phase::Mail { .. } => {
                self.phase = Phase::Recipients(Accepted {
                    route,
                    rcpts: vec![line],
                    broken: false,
                });
            }
            Phase::Recipients(a) | Phase::Bdat { accepted: a, .. } => a.rcpts.push(line),
        }
    }

    /// The leg was replaced and the new one refused a recipient the client was told was
    /// accepted.
    fn set_broken(&mut self) {
        if let Phase::Recipients(a) | Phase::Bdat { accepted: a, .. } = &mut self.phase {
            a.broken = true;
        }
    }

    /// A BDAT chunk goes to the back-end. Only a transaction with recipients gets here;
    /// one without stays as it is.
    fn start_bdat(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Mail { route: None });
        self.phase = match phase {
            Phase::Recipients(accepted) => Phase::Bdat { accepted, size: 0 },
            other => other,
        };
    }

    /// A BDAT chunk of `n` octets was taken by the back-end.
    fn add_bdat(&mut self, n: u64) {
        if let Phase::Bdat { size, .. } = &mut self.phase {
            *size += n;
        }
    }
}

pub struct Session<'e, S> {
    io: Buffered<Conn<S>>,
    out: Vec<u8>,
    /// The last command line, given back to read the next one into: one allocation for
    /// the session's lines, not one per line.
    spare_line: Vec<u8>,
    env: &'e ServiceContext,
    client: ClientInfo,
    greeted: Greeted,
    /// Boxed, like `tx`: a session that has neither (one waiting for its client, the
    /// common case under a flood) holds a pointer for each, not their bodies.
    leg: Option<Box<Leg>>,
    tx: Option<Box<Transaction>>,
    errors: ErrorBudget,
    /// Fires when the front-end wants the session to end (shutdown, address handoff): the
    /// session then says 421 at the next transaction boundary.
    closing: CancellationToken,
    /// Set while a back-end's reply to an end of data is awaited: a stopping front-end
    /// lets such a session finish (up to the drain deadline) rather than cut it, or the
    /// client, never told of a message the back-end took, would send it again.
    committing: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Marks a session as committing a message for as long as it lives.
struct Commit<'a>(Option<&'a std::sync::atomic::AtomicBool>);

impl<'a> Commit<'a> {
    fn begin(flag: &'a Option<std::sync::Arc<std::sync::atomic::AtomicBool>>) -> Self {
        let flag = flag.as_deref();
        if let Some(f) = flag {
            f.store(true, std::sync::atomic::Ordering::Release);
        }
        Commit(flag)
    }
}

impl Drop for Commit<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            f.store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

impl<'e, S: ClientStream> Session<'e, S> {
    pub fn new(
        stream: Conn<S>,
        env: &'e ServiceContext,
        peer: SocketAddr,
        local: SocketAddr,
        session_id: String,
    ) -> Self {
        Session {
            io: Buffered::new(stream),
            // Room for the usual replies (the EHLO list is the longest), so that the buffer
            // is allocated once rather than grown reply by reply.
            out: Vec::with_capacity(256),
            spare_line: Vec::new(),
            env,
            client: ClientInfo {
                peer,
                local,
                helo: None,
                login: None,
                session_id,
            },
            greeted: Greeted::No,
            leg: None,
            tx: None,
            errors: ErrorBudget::new(MAX_ERRORS),
            closing: CancellationToken::new(),
            committing: None,
        }
    }

    /// Ends the session politely (421 at the next transaction boundary) once `token` fires.
    /// Sets `flag` while the session waits for a back-end's reply to an end of data.
    pub fn committing_on(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.committing = Some(flag);
        self
    }

    pub fn closing_on(mut self, token: CancellationToken) -> Self {
        self.closing = token;
        self
    }

    fn svc(&self) -> &Service {
        &self.env.service
    }

    fn send(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// A reply of the proxy's own, written straight into the output buffer.
    fn say(&mut self, code: u16, enhanced: (u8, u16, u16), text: &str) {
        super::reply::write_line(&mut self.out, code, Some(enhanced), b' ', text);
    }

    /// Writes queued replies. Called before waiting on the client with an empty input
    /// buffer, so pipelined commands get their replies in one batch (RFC 2920 3.2).
    ///
    /// A client that stops reading would otherwise hold the session (and any back-end
    /// leg) forever once the socket's buffers are full: the write has the idle timeout as
    /// its deadline, and missing it ends the session.
    async fn flush(&mut self) -> std::io::Result<()> {
        // The buffer is cleared, not taken: its allocation serves every later reply.
        let out = &mut self.out;
        let io = self.io.get_mut();
        let write = async {
            if !out.is_empty() {
                io.write_all(out).await?;
                out.clear();
            }
            io.flush().await
        };
        // A reply fits the socket's buffer at once but for a client that stopped reading:
        // the timer is taken only then.
        crate::wait::within(self.env.service.idle_timeout, write)
            .await
            .map_err(|_| crate::session_core::write_timed_out())?
    }

    /// Runs the session to its end. Errors are logged by the caller.
    ///
    /// Not an `async fn`: that would keep `self` twice in the future (the argument and the
    /// local it is moved into), and every waiting session would carry the copy.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    pub fn run(mut self) -> impl Future<Output = Result<(), SessionError>> {
        async move {
            let host = self.svc().hostname.clone();
            self.say_greeting(&host);
            loop {
                if self.io.buffer().is_empty() {
                    self.flush().await?;
                }
                // Between transactions the session may be asked to end (RFC 5321 3.8: 421 at
                // any time; at a boundary nothing of the client's is half done).
                let closing = self.tx.is_none().then_some(&self.closing);
                let idle = self.env.service.idle_timeout;
                let spare = std::mem::take(&mut self.spare_line);
                let line =
                    match next_line_into(&mut self.io, MAX_LINE, idle, closing, spare).await? {
                        Next::Line(l) => l,
                        Next::Eof => break,
                        Next::Idle => {
                            self.say(
                                421,
                                (4, 4, 2),
                                &format!("{host} Idle timeout, closing connection"),
                            );
                            break;
                        }
                        Next::Closing => {
                            self.say(
                                421,
                                (4, 3, 2),
                                &format!("{host} Service shutting down, closing connection"),
                            );
                            break;
                        }
                        Next::TooLong => {
                            self.say(500, (5, 5, 6), "Line too long");
                            if self.error() {
                                break;
                            }
                            continue;
                        }
                    };
                let cmd = match Command::parse(&line) {
                    Ok(c) => c,
                    Err(e) => {
                        self.send(&e.reply());
                        if self.error() {
                            break;
                        }
                        continue;
                    }
                };
                // Boxed: the state of a command's exchange with a back-end or a TLS
                // handshake is kilobytes, and only exists while the command runs. Inline,
                // every session would carry it while it waits for its client.
                let go_on = Box::pin(self.command(cmd, &line)).await?;
                self.spare_line = line;
                if !go_on {
                    break;
                }
            }
            // The last reply leaves with the FIN, in one segment (plain connections).
            let taken = self.io.get_ref().send_last(&self.out);
            self.out.drain(..taken);
            let _ = self.flush().await;
            // TLS sends close_notify, so the client can tell an end from a cut; a client
            // that does not read gets no longer for it than for a reply. Plain TCP needs no
            // shutdown: closing the socket sends the same FIN, and a shutdown mostly failed
            // with ENOTCONN there, the client having closed after its QUIT already.
            if self.io.get_ref().is_tls() {
                let idle = self.svc().idle_timeout;
                let _ = timeout(idle, self.io.get_mut().shutdown()).await;
            }
            let leg = self.leg.take();
            let pools = self.env.pools.clone();
            // The client's socket closes now, not after the back-end's RSET or QUIT below.
            drop(self);
            if let Some(l) = leg {
                Box::pin(l.lease.release(&pools.idle)).await;
            }
            Ok(())
        }
    }

    fn say_greeting(&mut self, host: &str) {
        self.say_plain(220, &format!("{host} ESMTP Robustifier"));
    }

    fn say_plain(&mut self, code: u16, text: &str) {
        super::reply::write_line(&mut self.out, code, None, b' ', text);
    }

    /// Counts a refused command; true when the client has used up its allowance.
    fn error(&mut self) -> bool {
        if self.errors.charge() {
            self.say(421, (4, 7, 0), "Too many errors, closing connection");
            return true;
        }
        false
    }

    /// Handles one command; false ends the session.
    async fn command(&mut self, cmd: Command, line: &[u8]) -> Result<bool, SessionError> {
        match cmd {
            Command::Ehlo(name) => {
                // RFC 5321 4.1.4: EHLO/HELO resets any transaction, on the back-end too.
                self.reset_transaction().await;
                self.hello(name, true)
            }
            Command::Helo(name) => {
                self.reset_transaction().await;
                self.hello(name, false)
            }
            Command::Noop => self.say(250, (2, 0, 0), "OK"),
            Command::Help(_) => self.say(
                214,
                (2, 0, 0),
                "See RFC 5321; https://www.rfc-editor.org/rfc/rfc5321",
            ),
            Command::Vrfy(_) => self.say(
                252,
                (2, 1, 5),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::Expn(_) => self.say(502, (5, 5, 1), "EXPN not available"),
            Command::Rset => {
                self.reset_transaction().await;
                self.say(250, (2, 0, 0), "OK");
            }
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Auth {
                mechanism,
                initial_response,
            } => {
                return self.auth(mechanism, initial_response).await;
            }
            Command::Mail(mail) => return Ok(self.mail(mail, line).await),
            Command::Rcpt(rcpt) => return Ok(self.rcpt(rcpt.forward_path, line).await),
            Command::Data => return self.data().await,
            Command::Quit => {
                self.say(221, (2, 0, 0), "Bye");
                return Ok(false);
            }
            // A refused STARTTLS leaves the session as it was; an accepted one starts it
            // over on TLS. Either way it goes on.
            Command::StartTls => {
                Box::pin(self.starttls()).await?;
            }
        }
        Ok(true)
    }

    fn hello(&mut self, name: String, esmtp: bool) {
        self.client.helo = Some(name);
        self.greeted = if esmtp { Greeted::Ehlo } else { Greeted::Helo };
        let env = self.env;
        let host = &env.service.hostname;
        if !esmtp {
            super::reply::write_line(&mut self.out, 250, None, b' ', host);
            return;
        }
        // Written line by line into the output buffer: no list of strings per EHLO.
        let mut size_buf = [0u8; 32];
        let size = {
            use std::io::Write as _;
            let mut w = &mut size_buf[..];
            let _ = write!(w, "SIZE {}", env.service.max_message_size);
            let n = 32 - w.len();
            std::str::from_utf8(&size_buf[..n]).unwrap_or("SIZE")
        };
        let mut lines: [&str; 9] = [""; 9];
        let fixed = [
            host.as_str(),
            "PIPELINING",
            size,
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ];
        lines[..fixed.len()].copy_from_slice(&fixed);
        let mut n = fixed.len();
        let optional = [
            (env.chunking(), "CHUNKING"),
            (self.starttls_offered(), "STARTTLS"),
            (
                env.service.auth && self.client.login.is_none() && self.auth_allowed(),
                "AUTH PLAIN LOGIN",
            ),
        ];
        for (offered, line) in optional {
            if offered {
                lines[n] = line;
                n += 1;
            }
        }
        let (last, rest) = (lines[n - 1], &lines[..n - 1]);
        for line in rest {
            super::reply::write_line(&mut self.out, 250, None, b'-', line);
        }
        super::reply::write_line(&mut self.out, 250, None, b' ', last);
    }

    fn starttls_offered(&self) -> bool {
        self.svc().tls == ServiceTls::StartTls
            && self.env.tls.is_some()
            && !self.io.get_ref().is_tls()
    }

    /// RFC 3207. A refused STARTTLS leaves the session as it is.
    async fn starttls(&mut self) -> Result<(), SessionError> {
        if !self.starttls_offered() {
            let (code, e, text) = if self.io.get_ref().is_tls() {
                (503, (5, 5, 1), "TLS already active")
            } else {
                (502, (5, 5, 1), "STARTTLS not available")
            };
            self.say(code, e, text);
            return Ok(());
        }
        let Some(tls) = self.env.tls.clone() else {
            return Ok(());
        };
        self.say(220, (2, 0, 0), "Ready to start TLS");
        self.flush().await?;
        upgrade_tls(&mut self.io, &tls, "STARTTLS", &self.client.session_id).await?;
        // RFC 3207 4.2: forget everything learnt before TLS.
        self.greeted = Greeted::No;
        self.client.helo = None;
        self.tx = None;
        Ok(())
    }
}
#[cfg(test)]
mod tests;
