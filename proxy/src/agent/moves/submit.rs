//! Plain SMTP submission of one moved message to a target back-end: EHLO, MAIL FROM with
//! the original sender (and SIZE when offered), RCPT TO each moved recipient, DATA with
//! CRLF line ends and dot-stuffing. The final dot is sent separately
//! ([`Session::finish`]) so that the caller can journal the step just before it.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncBufRead, AsyncWrite, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    time::timeout,
};

use crate::lines::{Line, read_line};

/// The header added to each re-submitted copy, its value the move token: `<agent
/// host>/<source queue id>`.
pub const TOKEN_HEADER: &str = "X-Robustifier-Move";
/// Time to connect to a target.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for each reply (the final one after DATA included: it follows a queue write).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest reply line read.
const MAX_REPLY_LINE: usize = 2048;
/// Most lines of one multi-line reply.
const MAX_REPLY_LINES: usize = 64;

/// Why a submission failed for now: the message stays held and is tried again later.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{target}: connect: {source}")]
    Connect {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: {source}")]
    Io {
        target: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: no reply within {}s", REPLY_TIMEOUT.as_secs())]
    Timeout { target: SocketAddr },
    #[error("{target}: closed the connection")]
    Closed { target: SocketAddr },
    #[error("{target}: not an SMTP reply: {line:?}")]
    Garbage { target: SocketAddr, line: String },
    #[error("{target} replied {reply:?}")]
    Transient { target: SocketAddr, reply: String },
}

/// What the target said of the message once it could say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx after the final dot (the reply).
    Accepted(String),
    /// 5xx to a recipient, DATA or the final dot: the message is refused.
    Refused(String),
}

/// One SMTP reply: code and text (lines joined by " / ").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

/// An SMTP connection to a target, after EHLO.
pub struct Session<S> {
    s: S,
    target: SocketAddr,
    size: bool,
    eightbit: bool,
}

/// Opens a session with `target` as `helo`.
pub async fn connect(
    target: SocketAddr,
    helo: &str,
) -> Result<Session<BufReader<TcpStream>>, SubmitError> {
    let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| SubmitError::Connect {
            target,
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| SubmitError::Connect { target, source })?;
    Session::start(BufReader::new(tcp), target, helo).await
}

impl<S: AsyncBufRead + AsyncWrite + Unpin> Session<S> {
    /// Reads the greeting and says EHLO (HELO if EHLO is refused).
    pub async fn start(s: S, target: SocketAddr, helo: &str) -> Result<Session<S>, SubmitError> {
        let mut me = Session {
            s,
            target,
            size: false,
            eightbit: false,
        };
        me.expect_2xx(None).await?;
        let ehlo = me.command(&format!("EHLO {helo}")).await?;
        if ehlo.code / 100 == 2 {
            for l in ehlo.lines.iter().skip(1) {
                let kw = l.split_ascii_whitespace().next().unwrap_or_default();
                me.size |= kw.eq_ignore_ascii_case("SIZE");
                me.eightbit |= kw.eq_ignore_ascii_case("8BITMIME");
            }
        } else {
            me.expect_2xx(Some(&format!("HELO {helo}"))).await?;
        }
        Ok(me)
    }

    fn transient(&self, r: &Reply) -> SubmitError {
        SubmitError::Transient {
            target: self.target,
            reply: r.text(),
        }
    }

    async fn expect_2xx(&mut self, cmd: Option<&str>) -> Result<Reply, SubmitError> {
        let r = match cmd {
            Some(c) => self.command(c).await?,
            None => self.reply().await?,
        };
        if r.code / 100 == 2 {
            Ok(r)
        } else {
            Err(self.transient(&r))
        }
    }

    async fn command(&mut self, line: &str) -> Result<Reply, SubmitError> {
        let target = self.target;
        self.s
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|source| SubmitError::Io { target, source })?;
        self.s
            .flush()
            .await
            .map_err(|source| SubmitError::Io { target, source })?;
        self.reply().await
    }

    async fn reply(&mut self) -> Result<Reply, SubmitError> {
        let target = self.target;
        let mut r = Reply {
            code: 0,
            lines: Vec::new(),
        };
        loop {
            let line = match timeout(REPLY_TIMEOUT, read_line(&mut self.s, MAX_REPLY_LINE)).await {
                Err(_) => return Err(SubmitError::Timeout { target }),
                Ok(Err(source)) => return Err(SubmitError::Io { target, source }),
                Ok(Ok(Line::Eof)) => return Err(SubmitError::Closed { target }),
                Ok(Ok(Line::TooLong)) => {
                    return Err(SubmitError::Garbage {
                        target,
                        line: "a reply line too long".into(),
                    });
                }
                Ok(Ok(Line::Complete(l))) => String::from_utf8_lossy(&l).into_owned(),
            };
            let line = line.trim_end_matches(['\r', '\n']);
            let garbage = || SubmitError::Garbage {
                target,
                line: line.chars().take(200).collect(),
            };
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(garbage)?;
            if r.code != 0 && r.code != code {
                return Err(garbage());
            }
            r.code = code;
            let (more, text) = match line.as_bytes().get(3) {
                Some(b'-') => (true, &line[4..]),
                Some(b' ') => (false, &line[4..]),
                None => (false, ""),
                _ => return Err(garbage()),
            };
            r.lines.push(text.to_owned());
            if !more {
                return Ok(r);
            }
            if r.lines.len() >= MAX_REPLY_LINES {
                return Err(garbage());
            }
        }
    }

    /// MAIL FROM, RCPT TO each recipient, DATA, the message; everything but the final
    /// dot. `Ok(Some(refusal))`: a 5xx to one of them (the session is then over).
    pub async fn envelope_and_body(
        &mut self,
        sender: &str,
        recipients: &[String],
        data: &[u8],
    ) -> Result<Option<String>, SubmitError> {
        let mut mail = format!("MAIL FROM:<{sender}>");
        if self.size {
            mail.push_str(&format!(" SIZE={}", data.len()));
        }
        if self.eightbit && data.iter().any(|&b| b >= 0x80) {
            mail.push_str(" BODY=8BITMIME");
        }
        let mut commands = vec![mail];
        commands.extend(recipients.iter().map(|r| format!("RCPT TO:<{r}>")));
        for c in commands {
            let r = self.command(&c).await?;
            match r.code / 100 {
                2 => {}
                5 => return Ok(Some(r.text())),
                _ => return Err(self.transient(&r)),
            }
        }
        let r = self.command("DATA").await?;
        match r.code {
            354 => {}
            c if c / 100 == 5 => return Ok(Some(r.text())),
            _ => return Err(self.transient(&r)),
        }
        let target = self.target;
        self.s
            .write_all(data)
            .await
            .map_err(|source| SubmitError::Io { target, source })?;
        Ok(None)
    }

    /// The final dot and the target's verdict; then QUIT (its reply is not awaited).
    pub async fn finish(mut self) -> Result<Outcome, SubmitError> {
        let r = self.command(".").await?;
        let outcome = match r.code / 100 {
            2 => Outcome::Accepted(r.text()),
            5 => Outcome::Refused(r.text()),
            _ => return Err(self.transient(&r)),
        };
        let _ = self.s.write_all(b"QUIT\r\n").await;
        let _ = self.s.flush().await;
        Ok(outcome)
    }
}

/// The message as sent in DATA, without the final dot: `header` first, every line ending
/// in CRLF (a bare LF or CR becomes CRLF), a leading dot doubled, and a last line ended.
pub fn data(header: &str, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 32 + header.len() + 4);
    let mut push_line = |line: &[u8]| {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    };
    push_line(header.as_bytes());
    let mut rest = content;
    while !rest.is_empty() {
        let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        push_line(&rest[..end]);
        let skip = match rest.get(end..end + 2) {
            Some(b"\r\n") => 2,
            Some(_) => 1,
            None => rest.len() - end,
        };
        rest = &rest[(end + skip).min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt as _;
    use tokio::net::TcpListener;

    #[test]
    fn data_stuffs_dots_and_ends_lines_in_crlf() {
        let d = data(
            "X-Robustifier-Move: h/ID",
            b"Subject: x\n\n.hidden\r\n..two\rbare cr\nlast",
        );
        assert_eq!(
            d,
            b"X-Robustifier-Move: h/ID\r\nSubject: x\r\n\r\n..hidden\r\n...two\r\nbare cr\r\nlast\r\n"
                .to_vec()
        );
        // A lone dot line would end DATA early; stuffed it is ".." and no line is lost.
        assert_eq!(data("H: v", b".\n"), b"H: v\r\n..\r\n".to_vec());
        assert_eq!(data("H: v", b"a\n\n"), b"H: v\r\na\r\n\r\n".to_vec());
    }

    /// What the fake server does at each step.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Script {
        Accept,
        /// 451 after the final dot.
        TempFail,
        /// 550 to the second recipient.
        RejectRcpt,
        /// Closes the connection in the middle of the message.
        DropInData,
    }

    /// A one-connection SMTP server on loopback; returns its address and, once the
    /// session is over, every line it read.
    async fn fake(script: Script) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut s = BufReader::new(tcp);
            let mut seen = Vec::new();
            s.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if s.read_line(&mut line).await.unwrap() == 0 {
                    return seen;
                }
                seen.push(line.clone());
                let l = line.trim_end();
                if in_data {
                    if script == Script::DropInData && seen.len() > 8 {
                        return seen;
                    }
                    if l == "." {
                        in_data = false;
                        let r: &[u8] = match script {
                            Script::TempFail => b"451 4.3.0 try later\r\n",
                            _ => b"250 2.0.0 Ok: queued as TARGET1\r\n",
                        };
                        s.write_all(r).await.unwrap();
                    }
                    continue;
                }
                let reply: &[u8] = if l.starts_with("EHLO") {
                    b"250-fake\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"
                } else if l.starts_with("RCPT") && l.contains("b@") && script == Script::RejectRcpt
                {
                    b"550 5.1.1 no such user\r\n"
                } else if l == "DATA" {
                    in_data = true;
                    b"354 go ahead\r\n"
                } else if l == "QUIT" {
                    s.write_all(b"221 bye\r\n").await.unwrap();
                    return seen;
                } else {
                    b"250 ok\r\n"
                };
                s.write_all(reply).await.unwrap();
            }
        });
        (addr, h)
    }

    async fn run(script: Script) -> (Result<Outcome, SubmitError>, Vec<String>) {
        let (addr, server) = fake(script).await;
        let body = data("X-Robustifier-Move: h/ID", b"Subject: t\n\n.dot\nbody\n");
        let rcpts = vec!["a@slow.example".to_owned(), "b@slow.example".to_owned()];
        let outcome = async {
            let mut s = connect(addr, "agent.test").await?;
            if let Some(refused) = s.envelope_and_body("s@example.test", &rcpts, &body).await? {
                return Ok(Outcome::Refused(refused));
            }
            s.finish().await
        }
        .await;
        (outcome, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_250_after_the_dot_is_accepted_with_the_whole_envelope() {
        let (outcome, seen) = run(Script::Accept).await;
        assert_eq!(
            outcome.unwrap(),
            Outcome::Accepted("250 2.0.0 Ok: queued as TARGET1".into())
        );
        let body = data("X-Robustifier-Move: h/ID", b"Subject: t\n\n.dot\nbody\n").len();
        let expected = [
            "EHLO agent.test\r\n".to_owned(),
            format!("MAIL FROM:<s@example.test> SIZE={body}\r\n"),
            "RCPT TO:<a@slow.example>\r\n".into(),
            "RCPT TO:<b@slow.example>\r\n".into(),
            "DATA\r\n".into(),
            "X-Robustifier-Move: h/ID\r\n".into(),
            "Subject: t\r\n".into(),
            "\r\n".into(),
            "..dot\r\n".into(),
            "body\r\n".into(),
            ".\r\n".into(),
            "QUIT\r\n".into(),
        ];
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn a_451_after_the_dot_is_transient() {
        let (outcome, _) = run(Script::TempFail).await;
        assert!(
            matches!(&outcome, Err(SubmitError::Transient { reply, .. }) if reply.starts_with("451")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_550_to_a_recipient_refuses_the_message_before_data() {
        let (outcome, seen) = run(Script::RejectRcpt).await;
        assert_eq!(
            outcome.unwrap(),
            Outcome::Refused("550 5.1.1 no such user".into())
        );
        assert!(!seen.iter().any(|l| l == "DATA\r\n"), "{seen:?}");
    }

    #[tokio::test]
    async fn a_connection_dropped_in_data_is_transient() {
        let (outcome, _) = run(Script::DropInData).await;
        assert!(
            matches!(
                &outcome,
                Err(SubmitError::Closed { .. } | SubmitError::Io { .. })
            ),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = connect(addr, "agent.test").await.err().unwrap();
        assert!(matches!(e, SubmitError::Connect { .. }), "{e}");
    }
}
