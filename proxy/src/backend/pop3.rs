//! The POP3 leg to one back-end (Dovecot or any RFC 1939 server): connect, PROXY v2 header
//! if configured, greeting, STLS if the pool says so, then the login exchange on the
//! session's behalf. After a successful login the session relays bytes and this type is
//! taken apart with [`Pop3Leg::into_stream`].

use tokio::{io::AsyncWriteExt as _, net::TcpStream, time::timeout};

use super::{
    Candidate,
    smtp::{COMMAND_TIMEOUT, ClientInfo, LegError},
};
use crate::{
    pop3::response::{BackendLine, Response, read_status_line},
    stream::{Buffered, Conn},
};

pub struct Pop3Leg {
    io: Buffered<Conn<TcpStream>>,
    pub name: String,
    pub greeting_latency: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Pop3LegError {
    #[error(transparent)]
    Leg(#[from] LegError),
    #[error("{stage}: back-end said {response}")]
    Refused {
        stage: &'static str,
        response: Response,
    },
    #[error("{stage}: {reason}")]
    Protocol { stage: &'static str, reason: String },
}

impl Pop3Leg {
    pub async fn open(c: &Candidate, client: &ClientInfo) -> Result<Pop3Leg, Pop3LegError> {
        let addr = c.backend.address;
        let dialed = super::dial(c, client).await?;
        let left = dialed.left();
        let mut leg = Pop3Leg {
            io: Buffered::new(Conn::Plain(dialed.tcp)),
            name: c.backend.name.clone(),
            greeting_latency: std::time::Duration::ZERO,
        };
        let greeting = leg.status("greeting", left).await?;
        leg.greeting_latency = dialed.started.elapsed();
        if !greeting.is_ok() {
            return Err(Pop3LegError::Refused {
                stage: "greeting",
                response: greeting,
            });
        }
        if let Some((connector, server_name)) = &c.pool.tls {
            let r = leg.command("STLS", "STLS").await?;
            if !r.is_ok() {
                return Err(Pop3LegError::Refused {
                    stage: "STLS",
                    response: r,
                });
            }
            let name = match server_name {
                Some(n) => rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| LegError::Tls(e.to_string()))?,
                None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            };
            let Conn::Plain(tcp) = leg.io.into_inner() else {
                return Err(LegError::Tls("STLS on a TLS connection".into()).into());
            };
            let tls = timeout(COMMAND_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| LegError::Timeout {
                    stage: "TLS handshake",
                })?
                .map_err(|e| LegError::Tls(e.to_string()))?;
            leg.io = Buffered::new(Conn::Client(Box::new(tls)));
        }
        Ok(leg)
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

    async fn status(
        &mut self,
        stage: &'static str,
        wait: std::time::Duration,
    ) -> Result<Response, Pop3LegError> {
        let line = timeout(wait, read_status_line(&mut self.io))
            .await
            .map_err(|_| LegError::Timeout { stage })?
            .map_err(|e| Pop3LegError::Protocol {
                stage,
                reason: e.to_string(),
            })?;
        match line {
            BackendLine::Status(r) => Ok(r),
            BackendLine::Continuation(_) => Err(Pop3LegError::Protocol {
                stage,
                reason: "unexpected SASL continuation".into(),
            }),
        }
    }

    pub async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<Response, Pop3LegError> {
        self.write(format!("{line}\r\n").as_bytes(), stage).await?;
        self.status(stage, COMMAND_TIMEOUT).await
    }

    /// The stream, for relaying after login, and anything the back-end sent early.
    pub fn into_stream(self) -> (Conn<TcpStream>, Vec<u8>) {
        let left = self.io.buffer().to_vec();
        (self.io.into_inner(), left)
    }
}

impl super::lease::Faulted for Pop3LegError {
    fn fault(&self) -> super::lease::Fault {
        match self {
            Pop3LegError::Leg(e) => e.fault(),
            // A refused greeting or STLS, or a reply that is not POP3: the back-end's.
            Pop3LegError::Refused { .. } | Pop3LegError::Protocol { .. } => {
                super::lease::Fault::Backend
            }
        }
    }
}

/// A session's login exchange on a leased POP3 leg, with passive health: transport
/// failures and timeouts are failed checks; `-ERR [SYS/TEMP]` (RFC 3206: the back-end's
/// own temporary trouble) feeds the refusal storm, a wrong password does not.
impl super::lease::Lease<Pop3Leg> {
    pub async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<Response, Pop3LegError> {
        let sent = std::time::Instant::now();
        let r = self.leg.command(line, stage).await;
        self.last_used = std::time::Instant::now();
        match &r {
            Err(e) => self.health.failure(e),
            Ok(resp) => {
                self.health.latency(sent.elapsed());
                let sick = resp.code == Some(crate::pop3::response::ResponseCode::SysTemp);
                if resp.is_ok() || sick {
                    self.health.reply(resp.is_ok(), sick);
                }
            }
        }
        r
    }
}
