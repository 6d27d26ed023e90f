//! The POP3 leg to one back-end (Dovecot or any RFC 1939 server): connect, PROXY v2 header
//! if configured, greeting, STLS if the pool says so, then the login exchange on the
//! session's behalf. After a successful login the session relays bytes and this type is
//! taken apart with [`Pop3Leg::into_stream`].

use tokio::net::TcpStream;

use super::{
    Candidate,
    conn::{Announce, BackendConn},
    smtp::{COMMAND_TIMEOUT, ClientInfo, LegError},
};
use crate::{
    pop3::response::{BackendLine, Response, read_status_line},
    stream::Conn,
};

pub struct Pop3Leg {
    conn: BackendConn,
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
        let conn = BackendConn::connect(
            c.backend.address,
            c.backend.identity,
            Announce::Client(client),
            c.pool.pool.connect_timeout,
        )
        .await
        .map_err(LegError::from)?;
        let left = conn.left();
        let started = conn.started;
        let mut leg = Pop3Leg {
            conn,
            name: c.backend.name.clone(),
            greeting_latency: std::time::Duration::ZERO,
        };
        let greeting = leg.status("greeting", left).await?;
        leg.greeting_latency = started.elapsed();
        if !greeting.is_ok() {
            return Err(Pop3LegError::Refused {
                stage: "greeting",
                response: greeting,
            });
        }
        if let Some(tls) = &c.pool.tls {
            let r = leg.command("STLS", "STLS").await?;
            if !r.is_ok() {
                return Err(Pop3LegError::Refused {
                    stage: "STLS",
                    response: r,
                });
            }
            leg.conn = leg
                .conn
                .upgrade(tls, "STLS", COMMAND_TIMEOUT)
                .await
                .map_err(LegError::from)?;
        }
        Ok(leg)
    }

    async fn write(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), LegError> {
        Ok(self.conn.write(bytes, stage, COMMAND_TIMEOUT).await?)
    }

    async fn status(
        &mut self,
        stage: &'static str,
        wait: std::time::Duration,
    ) -> Result<Response, Pop3LegError> {
        let line = self
            .conn
            .read(stage, wait, read_status_line)
            .await
            .map_err(LegError::from)?
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
        self.conn.into_stream()
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
        // Only the login's few exchanges come here: rendering the answer to count it is cheap.
        self.tally.bytes(
            line.len() as u64 + 2,
            r.as_ref()
                .map_or(0, |resp| resp.to_string().len() as u64 + 2),
        );
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
