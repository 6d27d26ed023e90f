//! A small timed SMTP client: one message per session, bounded by timeouts, and idle
//! sessions that only read the greeting.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

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

/// One session delivering `msg` (from [`message`]). Ok(elapsed) when the end of data got a
/// 2xx reply (the message was accepted), Err otherwise.
pub fn session(to: SocketAddr, msg: &[u8], t: Timeouts) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&to, t.connect)?;
    stream.set_read_timeout(Some(t.io))?;
    stream.set_write_timeout(Some(t.io))?;
    stream.set_nodelay(true)?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let expect = |code: u16, want: u16, what: &str| {
        anyhow::ensure!(code / 100 == want, "{what}: {code}");
        Ok(())
    };
    expect(reply(&mut r)?, 2, "greeting")?;
    for (cmd, want) in [
        (&b"EHLO client.invalid\r\n"[..], 2),
        (b"MAIL FROM:<bench@client.invalid>\r\n", 2),
        (b"RCPT TO:<rcpt@example.test>\r\n", 2),
        (b"DATA\r\n", 3),
    ] {
        w.write_all(cmd)?;
        expect(
            reply(&mut r)?,
            want,
            std::str::from_utf8(cmd).unwrap_or("?").trim(),
        )?;
    }
    w.write_all(msg)?;
    expect(reply(&mut r)?, 2, "end of data")?;
    let _ = w.write_all(b"QUIT\r\n");
    let _ = reply(&mut r);
    Ok(start.elapsed())
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
