//! A small timed SMTP client: one message per session, bounded by timeouts, and idle
//! sessions that only read the greeting.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// The recipient of every bench message.
pub const RCPT: &str = "rcpt@example.test";

/// A message of about `size` bytes (header, body lines of 78 characters), dot-terminated.
pub fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: bench@client.invalid\r\nTo: rcpt@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    let line = [b'x'; 76];
    while m.len() < size {
        let n = (size - m.len()).clamp(1, 76);
        m.extend_from_slice(&line[..n]);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// Reads one reply (all its lines); returns its code.
fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad reply {line:?}")));
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
}

impl Timeouts {
    pub const NORMAL: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        io: Duration::from_secs(30),
    };
}

/// How a session ended.
#[derive(Debug)]
pub enum Outcome {
    /// The end of data got a 2xx reply: the message was accepted.
    Delivered(Duration),
    /// A 4xx reply (a deflection) at some step.
    Deferred(u16),
    /// A 5xx reply.
    Rejected(u16),
    /// The connection could not be opened (refused, unreachable, or no answer to the SYN
    /// within the connect timeout): no session began.
    Refused(std::io::Error),
    /// The session began and ended without a reply: reset, closed or timed out.
    Failed(std::io::Error),
}

/// One session delivering `msg` (from [`message`]) to `rcpt`.
pub fn session_to(to: SocketAddr, rcpt: &str, msg: &[u8], t: Timeouts) -> Outcome {
    let start = Instant::now();
    let stream = match TcpStream::connect_timeout(&to, t.connect) {
        Ok(s) => s,
        Err(e) => return Outcome::Refused(e),
    };
    let run = || -> std::io::Result<Result<(), u16>> {
        stream.set_read_timeout(Some(t.io))?;
        stream.set_write_timeout(Some(t.io))?;
        stream.set_nodelay(true)?;
        let mut r = BufReader::new(stream.try_clone()?);
        let mut w = stream;
        let code = reply(&mut r)?;
        if code / 100 != 2 {
            return Ok(Err(code));
        }
        let rcpt_cmd = format!("RCPT TO:<{rcpt}>\r\n");
        for (cmd, want) in [
            (&b"EHLO client.invalid\r\n"[..], 2),
            (b"MAIL FROM:<bench@client.invalid>\r\n", 2),
            (rcpt_cmd.as_bytes(), 2),
            (b"DATA\r\n", 3),
        ] {
            w.write_all(cmd)?;
            let code = reply(&mut r)?;
            if code / 100 != want {
                return Ok(Err(code));
            }
        }
        w.write_all(msg)?;
        let code = reply(&mut r)?;
        if code / 100 != 2 {
            return Ok(Err(code));
        }
        let _ = w.write_all(b"QUIT\r\n");
        let _ = reply(&mut r);
        Ok(Ok(()))
    };
    match run() {
        Ok(Ok(())) => Outcome::Delivered(start.elapsed()),
        Ok(Err(code)) if code / 100 == 4 => Outcome::Deferred(code),
        Ok(Err(code)) => Outcome::Rejected(code),
        Err(e) => Outcome::Failed(e),
    }
}

/// One session delivering `msg` to a fixed recipient: its duration when delivered.
pub fn session(to: SocketAddr, msg: &[u8], t: Timeouts) -> anyhow::Result<Duration> {
    match session_to(to, RCPT, msg, t) {
        Outcome::Delivered(d) => Ok(d),
        other => anyhow::bail!("session to {to}: {other:?}"),
    }
}

/// Opens `n` sessions to `to` and reads each greeting; the sessions stay open while the
/// returned streams live. Stops at the first failure.
pub fn idle_sessions(to: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .map_err(|e| anyhow::anyhow!("idle session {i} of {n}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let code = reply(&mut r).map_err(|e| anyhow::anyhow!("idle session {i}: greeting: {e}"))?;
        anyhow::ensure!(code == 220, "idle session {i}: greeting {code}");
        out.push(s);
    }
    Ok(out)
}

/// Latency percentiles in milliseconds from session durations.
pub fn percentiles(samples: &[Duration], qs: &[f64]) -> Vec<f64> {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
        .expect("valid histogram bounds");
    for d in samples {
        let _ = h.record((d.as_micros() as u64).clamp(1, 120_000_000));
    }
    qs.iter()
        .map(|q| h.value_at_quantile(*q) as f64 / 1000.0)
        .collect()
}
