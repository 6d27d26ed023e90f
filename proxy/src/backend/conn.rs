//! One TCP connection to a back-end, as the SMTP and POP3 legs and the health probes all
//! open it: connect within a deadline, the PROXY v2 header (the client's for a leg, LOCAL
//! for a probe), writes and reads that each have a deadline, and the TLS upgrade after
//! STARTTLS/STLS verified against the pool's CA and name. Keeping this in one place is
//! what makes a probe judge a back-end the way a leg would: same name, same certificate
//! check. The protocol files keep only their dialogue.

use std::{future::Future, net::SocketAddr, time::Duration};

use rustls::pki_types::ServerName;
use tokio::{
    io::AsyncWriteExt as _,
    net::TcpStream,
    time::{Instant, timeout, timeout_at},
};
use tokio_rustls::TlsConnector;

use super::proxy_v2;
use crate::{
    config::Identity,
    stream::{Buffered, Conn},
};

/// The buffered stream the dialogues read lines from.
pub type Io = Buffered<Conn<TcpStream>>;

/// Who the client is, for the back-end.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub helo: Option<String>,
    pub login: Option<String>,
    pub session_id: String,
}

/// A pool's back-end TLS as the configuration gave it, built once per pool: legs and
/// probes hold the same value, so they verify the same name.
#[derive(Clone)]
pub struct UpgradeTls {
    pub connector: TlsConnector,
    /// Parsed when the configuration was read; `None` verifies the back-end's IP address.
    pub server_name: Option<ServerName<'static>>,
}

impl UpgradeTls {
    /// The name the back-end's certificate must carry: the configured one, else its address.
    pub fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(addr.ip().into()),
        }
    }
}

/// What goes before the first byte of the dialogue to a back-end that wants PROXY v2.
#[derive(Debug, Clone, Copy)]
pub enum Announce<'a> {
    /// A session's leg: the client's addresses and the session id.
    Client(&'a ClientInfo),
    /// A probe: a LOCAL header, so the probe is not mistaken for a client.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{stage}: timed out")]
    Timeout { stage: &'static str },
    #[error("{stage}: {source}")]
    Io {
        stage: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Handshake(#[source] std::io::Error),
    /// STARTTLS/STLS (the verb) on a connection already upgraded.
    #[error("{verb} on a TLS connection")]
    TlsTwice { verb: &'static str },
}

/// An open connection to one back-end.
pub struct BackendConn {
    io: Io,
    pub addr: SocketAddr,
    /// Connect and greeting share one deadline: a back-end that accepts but never greets
    /// is skipped as fast as one that refuses.
    pub deadline: Instant,
    /// When the connect began, for the greeting latency.
    pub started: std::time::Instant,
}

impl BackendConn {
    /// Connects within `limit` and, when the back-end takes PROXY v2, sends the header
    /// within the same deadline.
    pub async fn connect(
        addr: SocketAddr,
        identity: Identity,
        announce: Announce<'_>,
        limit: Duration,
    ) -> Result<BackendConn, ConnError> {
        let started = std::time::Instant::now();
        let deadline = Instant::now() + limit;
        let tcp = timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnError::Timeout { stage: "connect" })?
            .map_err(|source| ConnError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let mut conn = BackendConn {
            io: Buffered::new(Conn::Plain(tcp)),
            addr,
            deadline,
            started,
        };
        if identity == Identity::ProxyV2 {
            let header = match announce {
                Announce::Client(c) => proxy_v2::header(c.peer, c.local, Some(&c.session_id)),
                Announce::Local => proxy_v2::local(),
            };
            conn.write_until(&header, "PROXY header", deadline).await?;
        }
        Ok(conn)
    }

    /// What is left of the connect deadline, for the greeting.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Writes and flushes `bytes` within `wait`.
    pub async fn write(
        &mut self,
        bytes: &[u8],
        stage: &'static str,
        wait: Duration,
    ) -> Result<(), ConnError> {
        // Most writes fit the socket's buffer at once: no timer for those.
        let done = crate::wait::within(wait, write_flush(self.io.get_mut(), bytes)).await;
        settle(done, stage)
    }

    async fn write_until(
        &mut self,
        bytes: &[u8],
        stage: &'static str,
        deadline: Instant,
    ) -> Result<(), ConnError> {
        // Once per leg (the PROXY header), with the connect's deadline: a plain timer.
        let done = timeout_at(deadline, write_flush(self.io.get_mut(), bytes)).await;
        settle(done, stage)
    }

    /// Runs one of the protocol's line readers on the stream within `wait`; what the
    /// reader returns (its own parse errors included) is the dialogue's to judge.
    pub async fn read<'a, T, F>(
        &'a mut self,
        stage: &'static str,
        wait: Duration,
        reader: impl FnOnce(&'a mut Io) -> F,
    ) -> Result<T, ConnError>
    where
        F: Future<Output = T> + 'a,
    {
        timeout(wait, reader(&mut self.io))
            .await
            .map_err(|_| ConnError::Timeout { stage })
    }

    /// The TLS handshake after the back-end accepted STARTTLS/STLS (`verb`), within
    /// `wait`, verifying the certificate against the pool's CA and name. Anything the
    /// back-end sent after accepting would be a protocol violation: the buffer is dropped
    /// with the plain-text reader.
    pub async fn upgrade(
        self,
        tls: &UpgradeTls,
        verb: &'static str,
        wait: Duration,
    ) -> Result<BackendConn, ConnError> {
        let Conn::Plain(tcp) = self.io.into_inner() else {
            return Err(ConnError::TlsTwice { verb });
        };
        let s = timeout(wait, tls.connector.connect(tls.name_for(self.addr), tcp))
            .await
            .map_err(|_| ConnError::Timeout {
                stage: "TLS handshake",
            })?
            .map_err(ConnError::Handshake)?;
        Ok(BackendConn {
            io: Buffered::new(Conn::Client(Box::new(s))),
            ..self
        })
    }

    /// Whether an idle connection is still quiet: nothing buffered, and a non-blocking
    /// peek at the socket finds neither data nor the back-end's close. A back-end sends
    /// nothing unasked between commands, so anything there (a 421, a close) means the
    /// connection cannot be trusted with a session.
    pub fn quiet(&self) -> bool {
        if !self.io.buffer().is_empty() {
            return false;
        }
        let tcp = match self.io.get_ref() {
            Conn::Plain(t) => t,
            Conn::Client(t) => t.get_ref().0,
            Conn::Server(_) | Conn::Detached => return false,
        };
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking (tokio's): no data is `WouldBlock`.
        match socket2::SockRef::from(tcp).peek(&mut byte) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    /// The stream and anything the back-end sent that was not read yet.
    pub fn into_stream(self) -> (Conn<TcpStream>, Vec<u8>) {
        let left = self.io.buffer().to_vec();
        (self.io.into_inner(), left)
    }
}

/// RFC 1035 2.3.4 / Postfix's `VALID_HOSTNAME_LEN`: the longest name XCLIENT HELO carries.
const MAX_HELO: usize = 255;

/// The client's HELO name as the back-end may see it: printable ASCII without spaces and
/// at most `MAX_HELO` (255) octets, else the client's address literal (RFC 5321 4.1.3), so a
/// name the back-end would refuse never turns into a refused leg.
pub fn helo_for_backend(client: &ClientInfo) -> String {
    match &client.helo {
        Some(h)
            if !h.is_empty() && h.len() <= MAX_HELO && h.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            h.clone()
        }
        _ => match client.peer.ip().to_canonical() {
            std::net::IpAddr::V4(a) => format!("[{a}]"),
            std::net::IpAddr::V6(a) => format!("[IPv6:{a}]"),
        },
    }
}

/// Postfix XCLIENT attributes (the real client's address and port, HELO name, login, and
/// the address it connected to), only those the back-end announced (`offered`), as the
/// command's argument. Every attribute is always sent, `[UNAVAILABLE]` when the client has
/// none: on a reused leg an attribute left out would keep the previous client's value.
pub fn xclient_attributes(client: &ClientInfo, offered: &[String]) -> String {
    let addr = |a: std::net::IpAddr| match a.to_canonical() {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("IPV6:{a}"),
    };
    let attrs: [(&str, String); 8] = [
        ("ADDR", addr(client.peer.ip())),
        ("PORT", client.peer.port().to_string()),
        ("NAME", UNAVAILABLE.into()),
        ("PROTO", "ESMTP".into()),
        ("HELO", xtext(&helo_for_backend(client))),
        // A login longer than any back-end takes is not passed (the back-end judged it).
        (
            "LOGIN",
            client
                .login
                .as_ref()
                .filter(|l| l.len() <= MAX_HELO)
                .map_or_else(|| UNAVAILABLE.into(), |l| xtext(l)),
        ),
        ("DESTADDR", addr(client.local.ip())),
        ("DESTPORT", client.local.port().to_string()),
    ];
    attrs
        .iter()
        .filter(|(k, _)| offered.iter().any(|o| o == k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Postfix's XCLIENT value for an attribute the client does not have.
const UNAVAILABLE: &str = "[UNAVAILABLE]";

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

async fn write_flush(io: &mut Conn<TcpStream>, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// A timed write's outcome as the leg's error, named by its stage.
fn settle(
    done: Result<std::io::Result<()>, tokio::time::error::Elapsed>,
    stage: &'static str,
) -> Result<(), ConnError> {
    done.map_err(|_| ConnError::Timeout { stage })?
        .map_err(|source| ConnError::Io { stage, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_encodes_specials() {
        assert_eq!(xtext("mx.example"), "mx.example");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn xclient_passes_only_offered_attributes() {
        let client = ClientInfo {
            peer: "[2001:db8::7]:4000".parse().unwrap(),
            local: "[2001:db8::25]:25".parse().unwrap(),
            helo: Some("bad helo".into()),
            login: Some("a+b".into()),
            session_id: "s".into(),
        };
        let offered = ["ADDR", "HELO", "LOGIN"].map(String::from);
        assert_eq!(
            xclient_attributes(&client, &offered),
            "ADDR=IPV6:2001:db8::7 HELO=[IPv6:2001:db8::7] LOGIN=a+2Bb"
        );
    }

    /// A back-end speaking SMTP with STARTTLS, its certificate for `be.example` only.
    async fn tls_backend(dir: &std::path::Path) -> SocketAddr {
        use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, BufReader};
        async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(s: &mut BufReader<S>) -> bool {
            let mut line = String::new();
            loop {
                line.clear();
                if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return false;
                }
                let reply: &[u8] = match line.trim_end() {
                    l if l.starts_with("EHLO") => b"250-be.example\r\n250 STARTTLS\r\n",
                    "STARTTLS" => b"220 go ahead\r\n",
                    _ => b"221 bye\r\n",
                };
                let _ = s.get_mut().write_all(reply).await;
                if line.trim_end() == "STARTTLS" {
                    return true;
                }
            }
        }
        let cert = rcgen::generate_simple_self_signed(vec!["be.example".to_owned()]).unwrap();
        let files = crate::config::TlsFiles {
            certificate: dir.join("be.pem"),
            key: dir.join("be.key"),
        };
        std::fs::write(&files.certificate, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        let acceptor = crate::tls::ServerTls::new(&files).unwrap().acceptor();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut s = BufReader::new(s);
                    let _ = s.get_mut().write_all(b"220 be.example ESMTP\r\n").await;
                    if dialogue(&mut s).await
                        && let Ok(tls) = acceptor.accept(s.into_inner()).await
                    {
                        dialogue(&mut BufReader::new(tls)).await;
                    }
                });
            }
        });
        a
    }

    /// A leg and a probe of a pool whose `server_name` is `name`: their TLS errors, if any.
    async fn leg_and_probe(name: Option<&str>) -> (Option<String>, Option<String>) {
        let dir = std::env::temp_dir().join(format!(
            "rb-conn-{}-{}",
            std::process::id(),
            name.unwrap_or("none")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let addr = tls_backend(&dir).await;
        let name = name
            .map(|n| format!("server_name = {n:?}\n"))
            .unwrap_or_default();
        let text = format!(
            "[frontend]\nname = \"fe\"\ninterface = \"lo\"\n\n\
             [[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\n\n\
             [[pool]]\nname = \"store\"\nidentity = \"none\"\ntls = \"starttls\"\n\
             ca = \"be.pem\"\n{name}backend = [{{ name = \"be\", address = \"{addr}\" }}]\n"
        );
        let cfg = crate::config::Config::parse(&dir.join("test.toml"), &text).unwrap();
        let pools = super::super::PoolSet::standalone(&cfg).unwrap();
        let pool = std::sync::Arc::clone(pools.pool("store").unwrap());
        let c = super::super::Candidate {
            pool: std::sync::Arc::clone(&pool),
            backend: std::sync::Arc::new(cfg.pools[0].backends[0].clone()),
        };
        let client = ClientInfo {
            peer: "198.18.0.7:4000".parse().unwrap(),
            local: "198.18.0.25:25".parse().unwrap(),
            helo: None,
            login: None,
            session_id: "s".into(),
        };
        let leg = match super::super::smtp::SmtpLeg::open(&c, &client, "fe.example").await {
            Ok(_) => None,
            Err(super::super::smtp::LegError::Tls(e)) => Some(e),
            Err(e) => panic!("leg failed before TLS: {e}"),
        };
        let limit = Duration::from_secs(30);
        let probe =
            match crate::health::probe::probe(addr, Identity::None, pool.tls.as_ref(), limit).await
            {
                Ok(_) => None,
                Err(crate::health::probe::ProbeError::Tls(e)) => Some(e.to_string()),
                Err(e) => panic!("probe failed before TLS: {e}"),
            };
        let _ = std::fs::remove_dir_all(&dir);
        (leg, probe)
    }

    #[tokio::test]
    async fn probe_and_leg_verify_the_same_parsed_name() {
        // The configured name matches the certificate: both get through.
        assert_eq!(leg_and_probe(Some("be.example")).await, (None, None));
        // A name the certificate does not carry: both refuse it, for the same reason.
        let (leg, probe) = leg_and_probe(Some("other.example")).await;
        let leg = leg.expect("leg must refuse a certificate for another name");
        assert!(leg.contains("other.example"), "{leg}");
        assert_eq!(Some(leg), probe);
        // No name: both verify the address, which the certificate does not carry.
        let (leg, probe) = leg_and_probe(None).await;
        let leg = leg.expect("leg must refuse a certificate without its address");
        assert!(leg.contains("127.0.0.1"), "{leg}");
        assert_eq!(Some(leg), probe);
    }
}
