//! The SMTP leg to one back-end: connect, pass the client's identity (PROXY v2 before the
//! greeting, or XCLIENT after it), EHLO, optional STARTTLS verified against the pool's CA,
//! then commands and the message relay on the session's behalf.
//!
//! Every wait has a deadline (RFC 5321 4.5.3.2 gives the upper bounds; we fail over much
//! sooner while nothing is committed), and every failure is a [`LegError`] that says at
//! which stage it happened, so the session can pick the next back-end or answer 4xx.

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream, time::timeout};
use tracing::debug;

use super::Candidate;
use crate::{
    config::Identity,
    smtp::reply::{Capabilities, Reply, ReplyError, read_reply},
    stream::{Buffered, Conn},
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
    /// Every candidate is over its thresholds or session limit for the session's group.
    #[error("every back-end is busy")]
    Busy,
}

/// Who the client is, for the back-end.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub helo: Option<String>,
    pub login: Option<String>,
    pub session_id: String,
}

pub struct SmtpLeg {
    io: Buffered<Conn<TcpStream>>,
    pub caps: Capabilities,
    pub name: String,
    pub addr: SocketAddr,
    /// From connect to greeting: the back-end's response time as a session sees it.
    pub greeting_latency: Duration,
    /// The session's hold on the back-end's session count; released with the leg.
    pub guard: Option<crate::health::board::SessionGuard>,
    /// Where this leg reports what it sees of the back-end's health (passive checks).
    pub reporter: Option<Reporter>,
}

/// Passive health: a leg that meets a `421` or a dead connection after it was opened
/// tells the board, as a failed probe would.
pub struct Reporter {
    pub board: std::sync::Arc<crate::health::board::Board>,
    pub id: u32,
    pub rise: u32,
    pub fall: u32,
}

impl Reporter {
    fn failure(&self, why: &str) {
        self.board
            .record(self.id, false, None, self.rise, self.fall, why);
    }
}

impl SmtpLeg {
    /// Opens a leg ready for MAIL: greeted, identified, EHLO done (over TLS if the pool
    /// says so).
    pub async fn open(
        c: &Candidate,
        client: &ClientInfo,
        our_name: &str,
    ) -> Result<SmtpLeg, LegError> {
        let dialed = super::dial(c, client).await?;
        let left = dialed.left();
        let mut leg = SmtpLeg {
            io: Buffered::new(Conn::Plain(dialed.tcp)),
            caps: Capabilities::default(),
            name: c.backend.name.clone(),
            addr: c.backend.address,
            greeting_latency: Duration::ZERO,
            guard: None,
            reporter: None,
        };
        let greeting = leg.reply("greeting", left).await?;
        leg.greeting_latency = dialed.started.elapsed();
        if greeting.code != 220 {
            return Err(LegError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        leg.ehlo(our_name).await?;
        if let Some((connector, server_name)) = &c.pool.tls {
            leg = leg.starttls(connector, server_name.as_deref()).await?;
            leg.ehlo(our_name).await?;
        }
        if c.backend.identity == Identity::Xclient && !leg.caps.xclient.is_empty() {
            leg.xclient(client).await?;
            let helo = client.helo.as_deref().unwrap_or(our_name);
            leg.ehlo(helo).await?;
        }
        debug!(backend = %leg.name, addr = %leg.addr, "back-end leg open");
        Ok(leg)
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

    async fn starttls(
        mut self,
        connector: &tokio_rustls::TlsConnector,
        server_name: Option<&str>,
    ) -> Result<SmtpLeg, LegError> {
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
        let name = match server_name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned())
                .map_err(|e| LegError::Tls(e.to_string()))?,
            None => rustls::pki_types::ServerName::IpAddress(self.addr.ip().into()),
        };
        // Anything the back-end sent after its 220 would be a protocol violation: the
        // buffer is dropped with the plain-text reader.
        let Conn::Plain(tcp) = self.io.into_inner() else {
            return Err(LegError::Tls("STARTTLS on a TLS connection".into()));
        };
        let tls = timeout(COMMAND_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| LegError::Timeout {
                stage: "TLS handshake",
            })?
            .map_err(|e| LegError::Tls(e.to_string()))?;
        Ok(SmtpLeg {
            io: Buffered::new(Conn::Client(Box::new(tls))),
            caps: Capabilities::default(),
            name: self.name,
            addr: self.addr,
            greeting_latency: self.greeting_latency,
            guard: self.guard,
            reporter: self.reporter,
        })
    }

    /// Postfix XCLIENT (the real client's address, port, HELO name, login), only the
    /// attributes the back-end announced. The back-end answers with a fresh 220 greeting.
    async fn xclient(&mut self, client: &ClientInfo) -> Result<(), LegError> {
        let peer_ip = client.peer.ip().to_canonical();
        let addr = match peer_ip {
            std::net::IpAddr::V4(a) => a.to_string(),
            std::net::IpAddr::V6(a) => format!("IPV6:{a}"),
        };
        let mut attrs: Vec<(&str, String)> = vec![
            ("ADDR", addr),
            ("PORT", client.peer.port().to_string()),
            ("NAME", "[UNAVAILABLE]".into()),
            ("PROTO", "ESMTP".into()),
        ];
        if let Some(h) = &client.helo {
            attrs.push(("HELO", xtext(h)));
        }
        if let Some(l) = &client.login {
            attrs.push(("LOGIN", xtext(l)));
        }
        let offered: Vec<String> = self.caps.xclient.clone();
        let line = attrs
            .iter()
            .filter(|(k, _)| offered.iter().any(|o| o == k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
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
        let io = self.io.get_mut();
        timeout(COMMAND_TIMEOUT, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| LegError::Timeout { stage })?
        .map_err(|source| LegError::Io { stage, source })
    }

    pub async fn reply(&mut self, stage: &'static str, wait: Duration) -> Result<Reply, LegError> {
        let r = timeout(wait, read_reply(&mut self.io, MAX_REPLY_LINE))
            .await
            .map_err(|_| LegError::Timeout { stage })
            .and_then(|r| r.map_err(|source| LegError::Reply { stage, source }))
            // A 421 is the back-end closing the connection (RFC 5321 3.8): a leg failure,
            // never a reply to pass on, since to the client 421 would mean the proxy closes.
            .and_then(|reply| match reply.code {
                421 => Err(LegError::Refused { stage, reply }),
                _ => Ok(reply),
            });
        if let Some(rep) = &self.reporter {
            match &r {
                Err(e) => rep.failure(&e.to_string()),
                Ok(reply) if matches!(stage, "MAIL" | "RCPT" | "end of data") => {
                    rep.board.reply_seen(rep.id, reply.code, rep.rise, rep.fall)
                }
                Ok(_) => {}
            }
        }
        r
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, line: &str, stage: &'static str) -> Result<Reply, LegError> {
        let sent = std::time::Instant::now();
        self.write(format!("{line}\r\n").as_bytes(), stage).await?;
        let r = self.reply(stage, COMMAND_TIMEOUT).await;
        // MAIL and RCPT answers are how fast the back-end is for sessions right now: they
        // join probes and greetings in the response-time average.
        if let (Some(rep), Ok(_), "MAIL" | "RCPT") = (&self.reporter, &r, stage) {
            rep.board.sample_latency(rep.id, sent.elapsed());
        }
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

/// RFC 3461 4 xtext: `+`, `=`, controls and non-ASCII as `+HH`.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_encodes_specials() {
        assert_eq!(xtext("mx.example"), "mx.example");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
