//! The SMTP leg to one back-end: connect, pass the client's identity (PROXY v2 before the
//! greeting, or XCLIENT after it), EHLO, optional STARTTLS verified against the pool's CA,
//! then commands and the message relay on the session's behalf.
//!
//! Every wait has a deadline (RFC 5321 4.5.3.2 gives the upper bounds; we fail over much
//! sooner while nothing is committed), and every failure is a [`LegError`] that says at
//! which stage it happened, so the session can pick the next back-end or answer 4xx.

use std::{net::SocketAddr, time::Duration};

use tokio::time::timeout;
use tracing::debug;

pub use super::conn::{ClientInfo, helo_for_backend};
use super::{
    Candidate,
    conn::{Announce, BackendConn, ConnError, xclient_attributes},
};
use crate::{
    config::Identity,
    smtp::reply::{Capabilities, Reply, ReplyError, read_reply},
};

/// Commands (RFC 5321 4.5.3.2.2-4 allow 5 minutes; a stuck back-end is a failure sooner).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// RFC 5321 4.5.3.2.6: the reply to the end of data may take 10 minutes.
pub const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
/// Back-end reply lines are bounded like client lines.
const MAX_REPLY_LINE: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum LegError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{stage}: timed out")]
    Timeout { stage: &'static str },
    #[error("{stage}: back-end replied {reply}")]
    Refused { stage: &'static str, reply: Reply },
    #[error("{stage}: {source}")]
    Reply {
        stage: &'static str,
        source: ReplyError,
    },
    #[error("{stage}: {source}")]
    Io {
        stage: &'static str,
        source: std::io::Error,
    },
    #[error("TLS to back-end: {0}")]
    Tls(String),
    /// The back-end cannot take the client identity its pool is configured to pass.
    #[error("identity: {0}")]
    Identity(&'static str),
    /// A leg that idled between transactions failed: the back-end had closed it.
    #[error("idle leg closed by the back-end ({0})")]
    Stale(Box<LegError>),
    /// Every candidate is over its thresholds or session limit for the session's group.
    #[error("every back-end is busy")]
    Busy,
}

impl From<ConnError> for LegError {
    fn from(e: ConnError) -> LegError {
        match e {
            ConnError::Connect { addr, source } => LegError::Connect { addr, source },
            ConnError::Timeout { stage } => LegError::Timeout { stage },
            ConnError::Io { stage, source } => LegError::Io { stage, source },
            e @ (ConnError::Handshake(_) | ConnError::TlsTwice { .. }) => {
                LegError::Tls(e.to_string())
            }
        }
    }
}

impl super::lease::Faulted for LegError {
    fn fault(&self) -> super::lease::Fault {
        use super::lease::Fault;
        match self {
            // Syntax refusals of what the client told us (its HELO name, its login),
            // passed on by XCLIENT or as the EHLO name: the same value fails everywhere.
            LegError::Refused {
                stage: "XCLIENT" | "EHLO as client",
                reply,
            } if reply.code == 501 || reply.enhanced.is_some_and(|(_, s, _)| s == 5) => {
                Fault::Client
            }
            LegError::Stale(_) => Fault::Stale,
            _ => Fault::Backend,
        }
    }
}

pub struct SmtpLeg {
    conn: BackendConn,
    pub caps: Capabilities,
    pub name: String,
    pub addr: SocketAddr,
    /// From connect to greeting: the back-end's response time as a session sees it.
    pub greeting_latency: Duration,
    /// The XCLIENT attributes the back-end offered to the proxy's own EHLO: a reused leg
    /// is re-identified with them (what it offers after a client's EHLO may differ).
    xclient_offered: Vec<String>,
    /// The leg must not serve another session: it carried a login (AUTH), its last
    /// transaction ended unclearly, or an exchange failed.
    pub spoiled: bool,
    /// The back-end may hold a transaction open: MAIL went to it and no end of that
    /// transaction (a 250 to the end of data or to the last chunk, RSET, a new EHLO or
    /// XCLIENT) has been heard since. Only such a leg needs RSET before it is kept.
    pub in_transaction: bool,
    /// The command lines being written, kept for the leg's life: a command costs no
    /// allocation of its own.
    lines: Vec<u8>,
}

impl SmtpLeg {
    /// Opens a leg ready for MAIL: greeted, identified, EHLO done (over TLS if the pool
    /// says so).
    pub async fn open(
        c: &Candidate,
        client: &ClientInfo,
        our_name: &str,
    ) -> Result<SmtpLeg, LegError> {
        let conn = BackendConn::connect(
            c.backend.address,
            c.backend.identity,
            Announce::Client(client),
            c.pool.pool.connect_timeout,
        )
        .await?;
        let left = conn.left();
        let started = conn.started;
        let mut leg = SmtpLeg {
            conn,
            caps: Capabilities::default(),
            name: c.backend.name.clone(),
            addr: c.backend.address,
            greeting_latency: Duration::ZERO,
            xclient_offered: Vec::new(),
            spoiled: false,
            in_transaction: false,
            lines: Vec::new(),
        };
        let greeting = leg.reply("greeting", left).await?;
        leg.greeting_latency = started.elapsed();
        if greeting.code != 220 {
            return Err(LegError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        leg.ehlo(our_name).await?;
        if let Some(tls) = &c.pool.tls {
            leg = leg.starttls(tls).await?;
            leg.ehlo(our_name).await?;
        }
        if c.backend.identity == Identity::Xclient {
            // Fail closed: without XCLIENT ADDR the back-end would take the proxy's address
            // for the client's and trust it.
            if !leg.caps.xclient.iter().any(|a| a == "ADDR") {
                return Err(LegError::Identity("back-end does not offer XCLIENT ADDR"));
            }
            leg.xclient_offered = leg.caps.xclient.clone();
            leg.identify(client).await?;
        }
        debug!(backend = %leg.name, addr = %leg.addr, "back-end leg open");
        Ok(leg)
    }

    /// Tells the back-end who the client is (XCLIENT, answered by a new greeting) and
    /// says hello with the client's name, as the back-end then expects.
    async fn identify(&mut self, client: &ClientInfo) -> Result<(), LegError> {
        self.xclient(client).await?;
        let helo = helo_for_backend(client);
        let reply = self
            .command(&format!("EHLO {helo}"), "EHLO as client")
            .await?;
        if reply.code != 250 {
            return Err(LegError::Refused {
                stage: "EHLO as client",
                reply,
            });
        }
        self.caps = Capabilities::from_ehlo(&reply);
        Ok(())
    }

    /// Makes an idle leg (reset, and kept since its last session) the leg of `client`'s
    /// session. A back-end told the client by XCLIENT hears every attribute again, so
    /// nothing of the previous client (its address, HELO name or login) carries over;
    /// one told nothing (identity "none") knows only the proxy, and one told by PROXY v2
    /// is never given an idle leg (the header is once per connection).
    pub async fn reidentify(
        &mut self,
        identity: Identity,
        client: &ClientInfo,
    ) -> Result<(), LegError> {
        match identity {
            Identity::Xclient => self.identify(client).await,
            Identity::None => Ok(()),
            Identity::ProxyV2 => Err(LegError::Identity("a PROXY v2 leg serves one client")),
        }
    }

    /// Whether the idle leg is still quiet: nothing from the back-end since its last
    /// reply (a close or a 421 would be).
    pub fn quiet(&self) -> bool {
        !self.spoiled && self.conn.quiet()
    }

    async fn ehlo(&mut self, name: &str) -> Result<(), LegError> {
        let reply = self.command(&format!("EHLO {name}"), "EHLO").await?;
        if reply.code != 250 {
            return Err(LegError::Refused {
                stage: "EHLO",
                reply,
            });
        }
        self.caps = Capabilities::from_ehlo(&reply);
        Ok(())
    }

    async fn starttls(mut self, tls: &super::conn::UpgradeTls) -> Result<SmtpLeg, LegError> {
        if !self.caps.starttls {
            return Err(LegError::Tls("back-end does not offer STARTTLS".into()));
        }
        let reply = self.command("STARTTLS", "STARTTLS").await?;
        if reply.code != 220 {
            return Err(LegError::Refused {
                stage: "STARTTLS",
                reply,
            });
        }
        Ok(SmtpLeg {
            conn: self.conn.upgrade(tls, "STARTTLS", COMMAND_TIMEOUT).await?,
            caps: Capabilities::default(),
            ..self
        })
    }

    /// Postfix XCLIENT, only the attributes the back-end announced. The back-end answers
    /// with a fresh 220 greeting.
    async fn xclient(&mut self, client: &ClientInfo) -> Result<(), LegError> {
        let line = xclient_attributes(client, &self.xclient_offered);
        let reply = self.command(&format!("XCLIENT {line}"), "XCLIENT").await?;
        if reply.code != 220 {
            return Err(LegError::Refused {
                stage: "XCLIENT",
                reply,
            });
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), LegError> {
        let r = self.conn.write(bytes, stage, COMMAND_TIMEOUT).await;
        self.spoiled |= r.is_err();
        Ok(r?)
    }

    pub async fn reply(&mut self, stage: &'static str, wait: Duration) -> Result<Reply, LegError> {
        let r = self.read_reply(stage, wait).await;
        // A failed read leaves the dialogue out of step; a refused message or chunk leaves
        // the back-end's transaction in a state the proxy does not know for sure.
        self.spoiled |= match &r {
            Err(_) => true,
            Ok(reply) => {
                matches!(stage, "end of data" | "BDAT" | "BDAT LAST") && !reply.is_positive()
            }
        };
        if let Ok(reply) = &r
            && reply.is_positive()
            && ends_transaction(stage)
        {
            self.in_transaction = false;
        }
        r
    }

    async fn read_reply(&mut self, stage: &'static str, wait: Duration) -> Result<Reply, LegError> {
        self.conn
            .read(stage, wait, |io| read_reply(io, MAX_REPLY_LINE))
            .await
            .map_err(LegError::from)
            .and_then(|r| r.map_err(|source| LegError::Reply { stage, source }))
            // A 421 is the back-end closing the connection (RFC 5321 3.8): a leg failure,
            // never a reply to pass on, since to the client 421 would mean the proxy closes.
            .and_then(|reply| match reply.code {
                421 => Err(LegError::Refused { stage, reply }),
                _ => Ok(reply),
            })
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, line: &str, stage: &'static str) -> Result<Reply, LegError> {
        // The back-end holds the user's login for the connection's life: such a leg
        // never serves another client.
        self.spoiled |= stage == "AUTH";
        self.write_lines(&[line], stage).await?;
        self.reply(stage, COMMAND_TIMEOUT).await
    }

    /// Writes `lines`, each ending in CRLF, in one write (pipelined commands go out
    /// together), through the leg's kept buffer.
    async fn write_lines(&mut self, lines: &[&str], stage: &'static str) -> Result<(), LegError> {
        self.in_transaction |= stage == "MAIL";
        let mut buf = std::mem::take(&mut self.lines);
        buf.clear();
        for line in lines {
            buf.extend_from_slice(line.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let r = self.write(&buf, stage).await;
        self.lines = buf;
        r
    }

    /// Message octets, already checked by the DATA scanner.
    pub async fn data(&mut self, bytes: &[u8]) -> Result<(), LegError> {
        self.write(bytes, "DATA").await
    }

    /// Ends the leg politely; errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(5), self.command("QUIT", "QUIT")).await;
    }
}

/// A session's exchanges on a leased SMTP leg, with passive health: failures that are the
/// back-end's count as failed checks, a failure after the leg idled is [`LegError::Stale`]
/// (not charged), replies to the transaction feed the refusal storm and the response time.
impl super::lease::Lease<SmtpLeg> {
    pub async fn command(&mut self, line: &str, stage: &'static str) -> Result<Reply, LegError> {
        let idle = self.idle();
        let sent = std::time::Instant::now();
        let r = self.leg.command(line, stage).await;
        self.last_used = std::time::Instant::now();
        self.tally
            .bytes(line.len() as u64 + 2, r.as_ref().map_or(0, Reply::wire_len));
        let r = self.judge(r, idle, stage);
        if r.is_ok() && matches!(stage, "MAIL" | "RCPT") {
            // MAIL and RCPT answers are how fast the back-end is for sessions right now.
            self.health.latency(sent.elapsed());
        }
        r
    }

    /// MAIL and the first RCPT in one write (RFC 2920), for a back-end that offered
    /// PIPELINING: both replies, in order. When MAIL is refused the back-end refuses the
    /// RCPT too (no transaction); its reply is read, to keep the dialogue in step, and
    /// the caller gives the client the MAIL refusal.
    pub async fn mail_and_rcpt(
        &mut self,
        mail: &str,
        rcpt: &str,
    ) -> Result<(Reply, Reply), LegError> {
        let idle = self.idle();
        let sent = std::time::Instant::now();
        let r = self.leg.write_lines(&[mail, rcpt], "MAIL").await;
        self.last_used = std::time::Instant::now();
        self.tally.bytes((mail.len() + rcpt.len() + 4) as u64, 0);
        if let Err(e) = r {
            return Err(self.charge(e, idle));
        }
        let mail_reply = self.reply_to("MAIL", idle).await?;
        self.health.latency(sent.elapsed());
        let rcpt_reply = self.reply_to("RCPT", idle).await?;
        Ok((mail_reply, rcpt_reply))
    }

    /// The reply to a pipelined command.
    async fn reply_to(&mut self, stage: &'static str, idle: Duration) -> Result<Reply, LegError> {
        let r = self.leg.reply(stage, COMMAND_TIMEOUT).await;
        self.last_used = std::time::Instant::now();
        self.tally.bytes(0, r.as_ref().map_or(0, Reply::wire_len));
        self.judge(r, idle, stage)
    }

    pub async fn reply(&mut self, stage: &'static str, wait: Duration) -> Result<Reply, LegError> {
        let idle = self.idle();
        let r = self.leg.reply(stage, wait).await;
        self.last_used = std::time::Instant::now();
        self.tally.bytes(0, r.as_ref().map_or(0, Reply::wire_len));
        self.judge(r, idle, stage)
    }

    /// Message octets; a failure is the back-end's (the client's octets were checked).
    pub async fn data(&mut self, bytes: &[u8]) -> Result<(), LegError> {
        let r = self.leg.data(bytes).await;
        self.last_used = std::time::Instant::now();
        if r.is_ok() {
            self.tally.bytes(bytes.len() as u64, 0);
        }
        if let Err(e) = &r {
            self.health.failure(e);
        }
        r
    }

    fn judge(
        &mut self,
        r: Result<Reply, LegError>,
        idle: Duration,
        stage: &'static str,
    ) -> Result<Reply, LegError> {
        match r {
            Err(e) => Err(self.charge(e, idle)),
            Ok(reply) => {
                if matches!(
                    stage,
                    "MAIL" | "RCPT" | "end of data" | "BDAT" | "BDAT LAST"
                ) {
                    self.health
                        .reply(reply.is_positive(), reply.says_system_failure());
                }
                Ok(reply)
            }
        }
    }

    /// A failed exchange: stale after a long idle (not charged), else the back-end's
    /// failure when it is its fault.
    fn charge(&mut self, e: LegError, idle: Duration) -> LegError {
        if idle >= super::lease::STALE_AFTER && closed(&e) {
            return LegError::Stale(Box::new(e));
        }
        self.health.failure(&e);
        e
    }

    /// Ends the leg politely; errors do not matter any more.
    pub async fn quit(self) {
        self.leg.quit().await;
    }
}

/// Whether a positive reply at `stage` leaves the back-end outside any transaction
/// (RFC 5321 4.1.1.4, 4.1.1.5, 4.1.4; RFC 3030 2; XCLIENT starts the session over).
fn ends_transaction(stage: &str) -> bool {
    matches!(
        stage,
        "end of data" | "BDAT LAST" | "RSET" | "EHLO" | "EHLO as client" | "XCLIENT"
    )
}

/// Whether a failure looks like the back-end having closed the connection.
fn closed(e: &LegError) -> bool {
    match e {
        LegError::Io { .. } | LegError::Reply { .. } => true,
        LegError::Refused { reply, .. } => reply.code == 421,
        _ => false,
    }
}
