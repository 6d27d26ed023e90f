//! Protocol-level health probes, in process (no fork per check). The probe reads the
//! greeting and speaks the protocol it finds: SMTP (`220`: EHLO, QUIT) or POP3 (`+OK`:
//! CAPA, QUIT). A back-end that expects the PROXY protocol gets a LOCAL header first, so
//! the probe is not mistaken for a client. The result is the greeting latency.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    net::TcpStream,
    time::timeout,
};

use crate::{
    backend::proxy_v2,
    config::Identity,
    front::lines::{Line, read_line},
    smtp::reply::read_reply,
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

pub async fn probe(
    addr: SocketAddr,
    identity: Identity,
    limit: Duration,
) -> Result<Probed, String> {
    timeout(limit, run(addr, identity))
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}

async fn run(addr: SocketAddr, identity: Identity) -> Result<Probed, String> {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut io = BufReader::new(tcp);
    if identity == Identity::ProxyV2 {
        io.get_mut()
            .write_all(&proxy_v2::local())
            .await
            .map_err(|e| e.to_string())?;
    }
    let first = match read_line(&mut io, MAX_LINE)
        .await
        .map_err(|e| e.to_string())?
    {
        Line::Complete(l) => l,
        _ => return Err("no greeting".into()),
    };
    let latency = start.elapsed();
    let mut chunking = false;
    if first.starts_with(b"220") {
        if first.get(3) == Some(&b'-') {
            // A multi-line greeting: read the rest of it.
            let rest = read_reply(&mut io, MAX_LINE)
                .await
                .map_err(|e| e.to_string())?;
            if rest.code != 220 {
                return Err(format!("greeting {rest}"));
            }
        }
        io.get_mut()
            .write_all(b"EHLO robustifier-probe\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let ehlo = read_reply(&mut io, MAX_LINE)
            .await
            .map_err(|e| format!("EHLO: {e}"))?;
        let _ = io.get_mut().write_all(b"QUIT\r\n").await;
        if ehlo.code != 250 {
            return Err(format!("EHLO answered {}", ehlo.code));
        }
        chunking = crate::smtp::reply::Capabilities::from_ehlo(&ehlo).chunking;
    } else if first.starts_with(b"+OK") {
        io.get_mut()
            .write_all(b"CAPA\r\n")
            .await
            .map_err(|e| e.to_string())?;
        // The capability list ends with a lone dot; a server without CAPA says -ERR.
        for _ in 0..200 {
            match read_line(&mut io, MAX_LINE)
                .await
                .map_err(|e| e.to_string())?
            {
                Line::Complete(l) if l == b"." || l.starts_with(b"-ERR") => break,
                Line::Complete(_) => continue,
                _ => return Err("CAPA cut short".into()),
            }
        }
        let _ = io.get_mut().write_all(b"QUIT\r\n").await;
    } else {
        return Err(format!("greeting {:?}", String::from_utf8_lossy(&first)));
    }
    Ok(Probed { latency, chunking })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncBufReadExt as _, net::TcpListener};

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
        assert!(probe(smtp, Identity::None, lim).await.is_ok());
        assert!(probe(pop, Identity::None, lim).await.is_ok());
        assert!(
            probe(busy, Identity::None, lim)
                .await
                .unwrap_err()
                .contains("421")
        );
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(
            probe(dead, Identity::None, lim)
                .await
                .unwrap_err()
                .starts_with("connect")
        );
    }
}
