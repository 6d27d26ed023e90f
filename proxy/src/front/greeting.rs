//! What the normal and priority listeners say until the protocol-aware sessions (SMTP and
//! POP3 proxying) are in place: the service's greeting, NOOP and QUIT, and the protocol's
//! "not implemented" reply for every other command. It proves a steered connection reached
//! the right service and speaks its protocol; it relays no mail.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};

use super::lines::{Line, MAX_LINE, read_line};
use crate::config::Protocol;

/// RFC 5321 4.5.3.2.7: the server waits at least 5 minutes for the next command.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

struct Replies {
    greeting: String,
    ok: &'static str,
    bye: &'static str,
    too_long: &'static str,
    unknown: &'static str,
    idle: &'static str,
}

fn replies(protocol: Protocol, hostname: &str) -> Replies {
    match protocol {
        Protocol::Smtp => Replies {
            greeting: format!("220 {hostname} ESMTP Robustifier\r\n"),
            ok: "250 2.0.0 OK\r\n",
            bye: "221 2.0.0 Bye\r\n",
            too_long: "500 5.5.6 Line too long\r\n",
            unknown: "502 5.5.1 Command not implemented\r\n",
            idle: "421 4.4.2 Idle timeout, closing connection\r\n",
        },
        Protocol::Pop3 => Replies {
            greeting: "+OK Robustifier POP3 ready\r\n".into(),
            ok: "+OK\r\n",
            bye: "+OK Bye\r\n",
            too_long: "-ERR Line too long\r\n",
            unknown: "-ERR Command not implemented\r\n",
            idle: "-ERR Idle timeout\r\n",
        },
    }
}

pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    protocol: Protocol,
    hostname: &str,
    idle: Duration,
) -> std::io::Result<()> {
    let r = replies(protocol, hostname);
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(r.greeting.as_bytes()).await?;
    loop {
        let line = match tokio::time::timeout(idle, read_line(&mut stream, MAX_LINE)).await {
            Ok(line) => line?,
            Err(_) => {
                stream.get_mut().write_all(r.idle.as_bytes()).await?;
                return Ok(());
            }
        };
        let reply = match line {
            Line::Eof => return Ok(()),
            Line::TooLong => r.too_long,
            Line::Complete(cmd) => {
                let verb = cmd.split(|&b| b == b' ').next().unwrap_or_default();
                if verb.eq_ignore_ascii_case(b"QUIT") {
                    stream.get_mut().write_all(r.bye.as_bytes()).await?;
                    return Ok(());
                } else if verb.eq_ignore_ascii_case(b"NOOP") {
                    r.ok
                } else {
                    r.unknown
                }
            }
        };
        stream.get_mut().write_all(reply.as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    async fn dialogue(protocol: Protocol, input: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(input).await.unwrap();
        session(server, protocol, "fe.example", IDLE_TIMEOUT)
            .await
            .unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn smtp_greets_and_quits() {
        let out = dialogue(Protocol::Smtp, b"NOOP\r\nVRFY x\r\nquit\r\nNOOP\r\n").await;
        assert_eq!(
            out,
            "220 fe.example ESMTP Robustifier\r\n250 2.0.0 OK\r\n502 5.5.1 Command not implemented\r\n221 2.0.0 Bye\r\n"
        );
    }

    #[tokio::test]
    async fn pop3_greets_and_quits() {
        let out = dialogue(Protocol::Pop3, b"QUIT\r\n").await;
        assert_eq!(out, "+OK Robustifier POP3 ready\r\n+OK Bye\r\n");
    }

    #[tokio::test]
    async fn overlong_line_gets_500_and_session_continues() {
        let mut input = vec![b'x'; 4000];
        input.extend_from_slice(b"\r\nQUIT\r\n");
        let out = dialogue(Protocol::Smtp, &input).await;
        assert!(
            out.contains("500 5.5.6 Line too long\r\n221 2.0.0 Bye"),
            "{out}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_client_is_closed_with_421() {
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(session(server, Protocol::Smtp, "fe", IDLE_TIMEOUT));
        task.await.unwrap().unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert!(
            out.ends_with("421 4.4.2 Idle timeout, closing connection\r\n"),
            "{out}"
        );
    }
}
