//! A small timed POP3 client for bulk retrieval: greeting, USER/PASS, RETR of some
//! messages (counting the bytes until the terminating CRLF.CRLF, not keeping them), QUIT.
//! Never DELE: the mailbox is the same for the next session.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
};

use anyhow::Context as _;

use crate::smtp::Timeouts;

/// Bytes read per call while a message streams in.
const CHUNK: usize = 256 * 1024;
/// A status line longer than this is an error (RFC 2449 4: 512 octets).
const MAX_LINE: usize = 4096;

struct Conn {
    s: TcpStream,
    /// Read but not yet used (after a status line, the start of a multi-line body).
    pending: Vec<u8>,
    chunk: Vec<u8>,
}

impl Conn {
    fn fill(&mut self) -> anyhow::Result<usize> {
        let n = self.s.read(&mut self.chunk)?;
        anyhow::ensure!(n > 0, "connection closed");
        Ok(n)
    }

    /// One status line (without CRLF); fails unless it starts with `+OK`.
    fn ok(&mut self, what: &str) -> anyhow::Result<String> {
        loop {
            if let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending[..i]).into_owned();
                self.pending.drain(..i + 2);
                anyhow::ensure!(line.starts_with("+OK"), "{what}: {line:?}");
                return Ok(line);
            }
            anyhow::ensure!(
                self.pending.len() < MAX_LINE,
                "{what}: status line too long"
            );
            let n = self.fill()?;
            self.pending.extend_from_slice(&self.chunk[..n]);
        }
    }

    /// The rest of a multi-line response after its status line: bytes up to and including
    /// the terminating `.CRLF`. The server sends nothing after it until the next command,
    /// and dot-stuffing keeps CRLF.CRLF out of the body, so only a read's end can hold it.
    fn body(&mut self) -> anyhow::Result<u64> {
        // The status line's CRLF, then everything read since.
        let mut tail = b"\r\n".to_vec();
        let push = |tail: &mut Vec<u8>, data: &[u8]| {
            tail.extend_from_slice(&data[data.len().saturating_sub(5)..]);
            let cut = tail.len().saturating_sub(5);
            tail.drain(..cut);
            tail.ends_with(b"\r\n.\r\n")
        };
        let mut bytes = self.pending.len() as u64;
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() && push(&mut tail, &pending) {
            return Ok(bytes);
        }
        loop {
            let n = self.fill()?;
            bytes += n as u64;
            let chunk = std::mem::take(&mut self.chunk);
            let done = push(&mut tail, &chunk[..n]);
            self.chunk = chunk;
            if done {
                return Ok(bytes);
            }
        }
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.s.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// One session as `user`: logs in with USER/PASS, RETRs messages 1 to `count`, QUITs.
/// Returns the bytes of the RETR responses' bodies (on the wire, dot-stuffed, CRLF).
pub fn retr_session(
    to: SocketAddr,
    user: &str,
    password: &str,
    count: usize,
    t: Timeouts,
) -> anyhow::Result<u64> {
    let s = TcpStream::connect_timeout(&to, t.connect).with_context(|| format!("connect {to}"))?;
    s.set_read_timeout(Some(t.io))?;
    s.set_write_timeout(Some(t.io))?;
    s.set_nodelay(true)?;
    let mut c = Conn {
        s,
        pending: Vec::new(),
        chunk: vec![0; CHUNK],
    };
    c.ok("greeting")?;
    c.send(&format!("USER {user}\r\n"))?;
    c.ok("USER")?;
    c.send(&format!("PASS {password}\r\n"))?;
    c.ok("PASS")?;
    let mut bytes = 0;
    for i in 1..=count {
        c.send(&format!("RETR {i}\r\n"))?;
        c.ok("RETR")?;
        bytes += c.body().with_context(|| format!("RETR {i}"))?;
    }
    c.send("QUIT\r\n")?;
    c.ok("QUIT")?;
    Ok(bytes)
}
