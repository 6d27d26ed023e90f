//! Protocol-level health probes, in process (no fork per check). The probe reads the
//! greeting and speaks the protocol it finds: SMTP (`220`: EHLO, QUIT) or POP3 (`+OK`:
//! CAPA, QUIT). A back-end that expects the PROXY protocol gets a LOCAL header first, so
//! the probe is not mistaken for a client. The result is the greeting latency.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::time::timeout;

use crate::{
    backend::conn::{Announce, BackendConn, ConnError, UpgradeTls},
    config::Identity,
    lines::{Line, read_line},
    smtp::reply::{Reply, ReplyError, read_reply},
};

const MAX_LINE: usize = 2048;

/// What a good probe learnt.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probed {
    /// From connect to greeting.
    pub latency: Duration,
    /// SMTP only: the EHLO reply offered CHUNKING.
    pub chunking: bool,
}

/// TLS for probing a pool whose legs use it: the pool's own, so the probe verifies the
/// name a leg verifies.
pub type ProbeTls = UpgradeTls;

/// Why a probe failed: the back-end counts as failing this check.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {limit:?}")]
    Timeout { limit: Duration },
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    /// A line that did not come, at a named step of the dialogue.
    #[error("{step}: {source}")]
    At {
        step: &'static str,
        source: Box<ProbeError>,
    },
    #[error("{step}: {source}")]
    Reply {
        step: &'static str,
        source: ReplyError,
    },
    #[error(transparent)]
    GreetingReply(ReplyError),
    #[error("greeting {0}")]
    BadGreetingReply(Reply),
    #[error("greeting {line:?}")]
    BadGreeting { line: String },
    #[error("{step} answered {code}")]
    Answered { step: &'static str, code: u16 },
    #[error("STLS refused")]
    StlsRefused,
    #[error("TLS twice")]
    TlsTwice,
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
}

impl ProbeError {
    fn at(step: &'static str) -> impl FnOnce(ProbeError) -> ProbeError {
        move |e| ProbeError::At {
            step,
            source: Box::new(e),
        }
    }

    fn reply(step: &'static str) -> impl FnOnce(ReplyError) -> ProbeError {
        move |source| ProbeError::Reply { step, source }
    }

    /// The connection's errors in the probe's terms; its waits are the probe's `limit`.
    fn conn(limit: Duration) -> impl Fn(ConnError) -> ProbeError {
        move |e| match e {
            ConnError::Connect { source, .. } => ProbeError::Connect(source),
            ConnError::Timeout { .. } => ProbeError::Timeout { limit },
            ConnError::Io { source, .. } => ProbeError::Io(source),
            ConnError::Handshake(e) => ProbeError::Tls(e),
            ConnError::TlsTwice { .. } => ProbeError::TlsTwice,
        }
    }
}

pub async fn probe(
    addr: SocketAddr,
    identity: Identity,
    tls: Option<&ProbeTls>,
    limit: Duration,
) -> Result<Probed, ProbeError> {
    timeout(limit, run(addr, identity, tls, limit))
        .await
        .map_err(|_| ProbeError::Timeout { limit })?
}

/// One probe's connection: every wait is bounded by the whole probe's `limit` (the probe
/// as a whole is too, so these never cut it shorter).
struct Probing {
    conn: BackendConn,
    limit: Duration,
}

impl Probing {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        self.conn
            .write(bytes, "probe", self.limit)
            .await
            .map_err(ProbeError::conn(self.limit))
    }

    async fn line(&mut self) -> Result<Vec<u8>, ProbeError> {
        let limit = self.limit;
        match self
            .conn
            .read("probe", limit, |io| read_line(io, MAX_LINE))
            .await
            .map_err(ProbeError::conn(limit))??
        {
            Line::Complete(l) => Ok(l),
            _ => Err(ProbeError::Closed),
        }
    }

    async fn reply(&mut self) -> Result<Result<Reply, ReplyError>, ProbeError> {
        let limit = self.limit;
        self.conn
            .read("probe", limit, |io| read_reply(io, MAX_LINE))
            .await
            .map_err(ProbeError::conn(limit))
    }

    /// The handshake after STARTTLS/STLS: verifies the back-end's certificate like a leg
    /// does, with the pool's name.
    async fn upgrade(self, tls: &ProbeTls, verb: &'static str) -> Result<Probing, ProbeError> {
        let limit = self.limit;
        Ok(Probing {
            conn: self
                .conn
                .upgrade(tls, verb, limit)
                .await
                .map_err(ProbeError::conn(limit))?,
            limit,
        })
    }

    async fn ehlo(&mut self) -> Result<Reply, ProbeError> {
        self.send(b"EHLO robustifier-probe\r\n").await?;
        let r = self.reply().await?.map_err(ProbeError::reply("EHLO"))?;
        if r.code != 250 {
            return Err(ProbeError::Answered {
                step: "EHLO",
                code: r.code,
            });
        }
        Ok(r)
    }
}

async fn run(
    addr: SocketAddr,
    identity: Identity,
    tls: Option<&ProbeTls>,
    limit: Duration,
) -> Result<Probed, ProbeError> {
    let start = Instant::now();
    let conn = BackendConn::connect(addr, identity, Announce::Local, limit)
        .await
        .map_err(ProbeError::conn(limit))?;
    let mut io = Probing { conn, limit };
    let first = io.line().await.map_err(ProbeError::at("greeting"))?;
    let latency = start.elapsed();
    let mut chunking = false;
    if first.starts_with(b"220") {
        if first.get(3) == Some(&b'-') {
            // A multi-line greeting: read the rest of it.
            let rest = io.reply().await?.map_err(ProbeError::GreetingReply)?;
            if rest.code != 220 {
                return Err(ProbeError::BadGreetingReply(rest));
            }
        }
        let mut caps = io.ehlo().await?;
        if let Some(tls) = tls {
            io.send(b"STARTTLS\r\n").await?;
            let r = io.reply().await?.map_err(ProbeError::reply("STARTTLS"))?;
            if r.code != 220 {
                return Err(ProbeError::Answered {
                    step: "STARTTLS",
                    code: r.code,
                });
            }
            io = io.upgrade(tls, "STARTTLS").await?;
            caps = io.ehlo().await?;
        }
        chunking = crate::smtp::reply::Capabilities::from_ehlo(&caps).chunking;
        let _ = io.send(b"QUIT\r\n").await;
    } else if first.starts_with(b"+OK") {
        if let Some(tls) = tls {
            io.send(b"STLS\r\n").await?;
            if !io.line().await?.starts_with(b"+OK") {
                return Err(ProbeError::StlsRefused);
            }
            io = io.upgrade(tls, "STLS").await?;
        }
        io.send(b"CAPA\r\n").await?;
        // The capability list ends with a lone dot; a server without CAPA says -ERR.
        for _ in 0..200 {
            let l = io.line().await.map_err(ProbeError::at("CAPA"))?;
            if l == b"." || l.starts_with(b"-ERR") {
                break;
            }
        }
        let _ = io.send(b"QUIT\r\n").await;
    } else {
        return Err(ProbeError::BadGreeting {
            line: String::from_utf8_lossy(&first).into_owned(),
        });
    }
    Ok(Probed { latency, chunking })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncBufReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    async fn server(greeting: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = tokio::io::BufReader::new(r);
                    let _ = w.write_all(greeting).await;
                    let mut line = String::new();
                    while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let reply: &[u8] = match line.trim_end() {
                            "EHLO robustifier-probe" => b"250-x\r\n250 PIPELINING\r\n",
                            "CAPA" => b"+OK\r\nUSER\r\n.\r\n",
                            _ => b"221 bye\r\n",
                        };
                        let _ = w.write_all(reply).await;
                        line.clear();
                    }
                });
            }
        });
        a
    }

    #[tokio::test]
    async fn smtp_pop3_and_refusing_servers() {
        let smtp = server(b"220 mx ESMTP\r\n").await;
        let pop = server(b"+OK ready\r\n").await;
        let busy = server(b"421 4.3.2 busy\r\n").await;
        let lim = Duration::from_secs(5);
        assert!(probe(smtp, Identity::None, None, lim).await.is_ok());
        assert!(probe(pop, Identity::None, None, lim).await.is_ok());
        assert!(
            probe(busy, Identity::None, None, lim)
                .await
                .unwrap_err()
                .to_string()
                .contains("421")
        );
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(
            probe(dead, Identity::None, None, lim)
                .await
                .unwrap_err()
                .to_string()
                .starts_with("connect")
        );
    }
}
