//! What the SMTP and POP3 client sessions share: their error type, the upgrade of a plain
//! connection to TLS (STARTTLS, STLS), reading the next command line under the idle
//! deadline and the front-end's closing token, and the budget of refused commands.
//!
//! The replies stay each protocol's own: this module reports what happened and the
//! session answers in its protocol.

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::timeout,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    lines::{Line, read_line_into},
    stream::{Buffered, Conn},
    tls::ServerTls,
};

/// How long a client may take over a TLS handshake it asked for.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a session ended early (logged, never shown to the client beyond its reply).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(String),
    #[error("client idle in a SASL exchange")]
    Timeout,
}

/// The error of a write to the client that missed its deadline.
pub(crate) fn write_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client did not read its replies in time",
    )
}

/// What waiting for the client's next command line ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A complete line without its line end.
    Line(Vec<u8>),
    /// A line over the bound; it has been read and dropped.
    TooLong,
    /// The client closed the connection.
    Eof,
    /// Nothing came within the idle timeout.
    Idle,
    /// The front-end asked the session to end.
    Closing,
}

/// Reads the client's next line of at most `max` octets, giving up after `idle` or when
/// `closing` (if any) fires, whichever comes first.
pub async fn next_line<R>(
    io: &mut R,
    max: usize,
    idle: Duration,
    closing: Option<&CancellationToken>,
) -> std::io::Result<Next>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    next_line_into(io, max, idle, closing, Vec::new()).await
}

/// [`next_line`] into `spare`, a line the caller is done with (see
/// [`crate::lines::read_line_into`]).
pub async fn next_line_into<R>(
    io: &mut R,
    max: usize,
    idle: Duration,
    closing: Option<&CancellationToken>,
    spare: Vec<u8>,
) -> std::io::Result<Next>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let closed = async {
        match closing {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    };
    // Closing first: a client that keeps a line buffered must not hold off the close.
    tokio::select! {
        biased;
        () = closed => Ok(Next::Closing),
        r = timeout(idle, read_line_into(io, max, spare)) => Ok(match r {
            Err(_) => Next::Idle,
            Ok(line) => match line? {
                Line::Complete(l) => Next::Line(l),
                Line::TooLong => Next::TooLong,
                Line::Eof => Next::Eof,
            },
        }),
    }
}

/// Turns the session's plain connection into TLS, after the reply that invited the
/// handshake has been written.
///
/// Whatever the client sent before the handshake is dropped unread (RFC 3207 4.2,
/// RFC 2595 4, CVE-2011-0411): commands pipelined in clear must not run as if they came
/// over TLS. On an error the connection is gone and the session must end.
pub async fn upgrade_tls<S>(
    io: &mut Buffered<Conn<S>>,
    tls: &ServerTls,
    command: &str,
    session_id: &str,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let pipelined = io.buffer().len();
    if pipelined > 0 {
        warn!(session = %session_id, octets = pipelined, "discarding commands pipelined before the TLS handshake");
    }
    // Taking the stream out of its reader drops whatever the reader had buffered.
    let reader = std::mem::replace(io, Buffered::new(Conn::Detached));
    let Conn::Plain(plain) = reader.into_inner() else {
        return Err(SessionError::Tls(format!(
            "{command} on a stream that is not plain"
        )));
    };
    let accepted = timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(plain))
        .await
        .map_err(|_| SessionError::Tls("handshake timed out".into()))?
        .map_err(|e| SessionError::Tls(e.to_string()))?;
    *io = Buffered::new(Conn::Server(Box::new(accepted)));
    Ok(())
}

/// Refused commands a client may send before the session is closed.
#[derive(Debug)]
pub struct ErrorBudget {
    count: u32,
    limit: u32,
}

impl ErrorBudget {
    pub const fn new(limit: u32) -> Self {
        ErrorBudget { count: 0, limit }
    }

    /// Counts one refused command; true when the budget is now spent.
    pub fn charge(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.spent()
    }

    /// Whether the client has used up its allowance (the session then ends).
    pub fn spent(&self) -> bool {
        self.count >= self.limit
    }

    /// Refused commands so far.
    pub fn count(&self) -> u32 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt as _, BufReader};

    use super::*;

    #[tokio::test]
    async fn next_line_reports_lines_overlong_lines_and_eof() {
        let (mut client, server) = tokio::io::duplex(256);
        client
            .write_all(b"NOOP\r\nxxxxxxxxxx\r\nQUIT\r\n")
            .await
            .unwrap();
        drop(client);
        let mut r = BufReader::new(server);
        let idle = Duration::from_secs(3600);
        let mut got = Vec::new();
        loop {
            let n = next_line(&mut r, 5, idle, None).await.unwrap();
            let eof = n == Next::Eof;
            got.push(n);
            if eof {
                break;
            }
        }
        assert_eq!(
            got,
            [
                Next::Line(b"NOOP".to_vec()),
                Next::TooLong,
                Next::Line(b"QUIT".to_vec()),
                Next::Eof
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn next_line_reports_an_idle_client() {
        let (_client, server) = tokio::io::duplex(64);
        let mut r = BufReader::new(server);
        let token = CancellationToken::new();
        let n = next_line(&mut r, 100, Duration::from_secs(300), Some(&token))
            .await
            .unwrap();
        assert_eq!(n, Next::Idle);
    }

    #[tokio::test]
    async fn next_line_reports_closing_while_the_client_is_quiet() {
        let (_client, server) = tokio::io::duplex(64);
        let mut r = BufReader::new(server);
        let token = CancellationToken::new();
        token.cancel();
        let n = next_line(&mut r, 100, Duration::from_secs(3600), Some(&token))
            .await
            .unwrap();
        assert_eq!(n, Next::Closing);
    }

    #[test]
    fn the_budget_is_spent_at_its_limit() {
        let mut b = ErrorBudget::new(3);
        assert!(!b.spent());
        assert!(!b.charge());
        assert!(!b.charge());
        assert!(b.charge());
        assert!(b.spent());
        assert_eq!(b.count(), 3);
    }
}
