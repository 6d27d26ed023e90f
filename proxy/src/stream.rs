//! A connection that may turn into TLS halfway (STARTTLS, STLS) or start with it (465,
//! 995), on either side of the proxy. One type so that sessions hold one kind of stream.
//! [`Buffered`] reads it line by line without holding a buffer while the peer is quiet.

use std::{
    future::Future as _,
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

pub enum Conn<S> {
    Plain(S),
    /// We are the TLS server (client-facing side).
    Server(Box<tokio_rustls::server::TlsStream<S>>),
    /// We are the TLS client (back-end side).
    Client(Box<tokio_rustls::client::TlsStream<S>>),
    /// Stands in for a moment while the stream is moved into a TLS handshake; any I/O on
    /// it fails.
    Detached,
}

impl<S> Conn<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Server(_) | Conn::Client(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Server(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Client(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Server(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Client(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Server(s) => Pin::new(s).poll_flush(cx),
            Conn::Client(s) => Pin::new(s).poll_flush(cx),
            Conn::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Server(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Client(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Detached => Poll::Ready(Ok(())),
        }
    }
}

/// A stream that can send its last bytes and its end (the FIN) in one segment.
///
/// A session's last reply (221, 421) is followed by the close at once. Written as usual,
/// the reply and the FIN leave as two segments, and each costs the front-end a pass
/// through the network stack (on loopback or a veth, the peer's receive side too).
pub trait LastWords {
    /// Sends as much of `bytes` as the socket takes now, held back (`MSG_MORE`); when it
    /// took all of them, ends the sending side, which sends them with the FIN. Returns how
    /// many octets it took: the caller writes the rest as usual. Streams that cannot
    /// take none.
    fn send_last(&self, bytes: &[u8]) -> usize {
        let _ = bytes;
        0
    }
}

/// What a client session runs over: a TCP stream, or an in-memory one in tests.
pub trait ClientStream: AsyncRead + AsyncWrite + LastWords + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + LastWords + Unpin + Send> ClientStream for S {}

impl LastWords for tokio::net::TcpStream {
    fn send_last(&self, bytes: &[u8]) -> usize {
        let sock = socket2::SockRef::from(self);
        // Sent directly, not through tokio's readiness, which a connection accepted a
        // moment ago does not have yet: a full buffer (EAGAIN) takes nothing, and the
        // caller's write learns it again.
        match sock.send_with_flags(bytes, libc::MSG_MORE | libc::MSG_NOSIGNAL) {
            // A shutdown, not the close alone, sends the FIN: a close with unread input
            // (a client that sent more after QUIT) would reset the connection and drop
            // the reply unsent.
            Ok(n) if n == bytes.len() => {
                let _ = sock.shutdown(std::net::Shutdown::Write);
                n
            }
            Ok(n) => n,
            Err(_) => 0,
        }
    }
}

impl LastWords for tokio::io::DuplexStream {}

impl<S: LastWords> LastWords for Conn<S> {
    /// Plain connections only: TLS ends with its close_notify alert.
    fn send_last(&self, bytes: &[u8]) -> usize {
        match self {
            Conn::Plain(s) => s.send_last(bytes),
            _ => 0,
        }
    }
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream detached for a TLS handshake",
    )
}

/// The most a [`Buffered`] reads at once, as `tokio::io::BufReader`'s default buffer.
pub const READ_CHUNK: usize = 8 * 1024;

/// The read buffer a waiting [`Buffered`] keeps: a command line's worth, so that reading
/// command after command reuses one allocation; a larger one (a message's data) is let go.
pub const KEEP_WAITING: usize = 512;

/// The most a [`Buffered`] holding a message ([`Buffered::hold`]) reads at once: a 100 KiB
/// message in two reads rather than thirteen (and as many writes to the back-end).
pub const HOLD_MAX: usize = 64 * 1024;

/// A buffered reader that holds no buffer while it waits for input.
///
/// `tokio::io::BufReader` allocates (and zeroes) its 8 KiB buffer up front and keeps it for
/// the life of the stream, so every idle session held 8 KiB for nothing. This one reads
/// into a buffer on the stack of the poll and keeps only what arrived, and only until it
/// is consumed: a session waiting for its client's next command holds at most
/// [`KEEP_WAITING`] octets of read buffer (none before its first input), and a busy one at
/// most [`READ_CHUNK`] octets, as before. While it holds a message ([`Buffered::hold`]) it
/// reads straight into a buffer it keeps, growing to [`HOLD_MAX`].
pub struct Buffered<R> {
    inner: R,
    /// Unread input is `buf[pos..end]`.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    hold: bool,
}

impl<R> Buffered<R> {
    pub fn new(inner: R) -> Self {
        Buffered {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            hold: false,
        }
    }

    /// Set while a message's data streams through: the buffer is kept across waits and
    /// read into directly (no copy from the stack), starting at [`READ_CHUNK`] and doubling
    /// up to [`HOLD_MAX`] while reads fill it. Cleared, a large buffer goes at the next
    /// wait, as ever.
    pub fn hold(&mut self, hold: bool) {
        self.hold = hold;
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream; whatever was buffered and not consumed is dropped.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Input read and not yet consumed.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for Buffered<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.end && this.hold {
            return this.fill_held(cx);
        }
        if this.pos >= this.end {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Waiting with nothing buffered: let the memory go until input comes,
                    // unless it is a command line's worth, reused for the next one.
                    if this.buf.capacity() > KEEP_WAITING {
                        this.buf = Vec::new();
                    } else {
                        this.buf.clear();
                    }
                    this.pos = 0;
                    this.end = 0;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let got = rb.filled();
            this.buf.clear();
            this.pos = 0;
            // Exact, so that a busy stream's buffer never grows past READ_CHUNK; a kept buffer
            // takes a command line without growing.
            this.buf
                .reserve_exact(got.len().max(KEEP_WAITING.min(READ_CHUNK)));
            this.buf.extend_from_slice(got);
            this.end = this.buf.len();
        }
        Poll::Ready(Ok(&this.buf[this.pos..this.end]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.end);
    }
}

impl<R: AsyncRead + Unpin> Buffered<R> {
    /// [`AsyncBufRead::poll_fill_buf`] with nothing buffered, holding a message: read into
    /// the buffer's spare room (neither zeroed first nor copied after).
    fn fill_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        // A full last read says more is waiting: twice the room this time. A new buffer,
        // not a grown one, as there is nothing in it to keep.
        let room = match self.buf.capacity() {
            c if c < READ_CHUNK => READ_CHUNK,
            c if self.end == c => (c * 2).min(HOLD_MAX),
            c => c,
        };
        if room > self.buf.capacity() {
            self.buf = Vec::with_capacity(room);
        }
        self.buf.clear();
        self.pos = 0;
        self.end = 0;
        let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => n,
        };
        self.end = n;
        Poll::Ready(Ok(&self.buf[..n]))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Buffered<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos >= this.end {
            // Nothing buffered: read straight into the caller's buffer.
            if !this.hold {
                this.buf = Vec::new();
            }
            this.pos = 0;
            this.end = 0;
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let n = out.remaining().min(this.end - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Relays between `a` and `b` both ways until both directions are done, as
/// `tokio::io::copy_bidirectional` does: an end of input on one side is passed on as a
/// shutdown of the other's writing half, and the first error ends the relay. Unlike it,
/// this holds no buffer for the life of the relay (that one allocates two of 8 KiB up
/// front): each direction reads through a [`Buffered`], which holds only what is in
/// flight. Returns the octets copied from `a` to `b` and from `b` to `a`.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_inner(a, b, None, false).await
}

/// [`relay`] that ends with a `TimedOut` error once no octet has moved either way for
/// `idle`: a peer that neither sends nor reads (its receive window full) then holds the
/// relay no longer than that.
pub async fn relay_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_inner(a, b, Some(idle), false).await
}

/// [`relay_idle`] for a protocol where the server's close ends the session (POP3 after
/// QUIT, RFC 1939 6): once `b` has closed and all it sent is written to `a`, the relay
/// ends, without waiting for `a` to close its side too.
pub async fn relay_idle_until_b_closes<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_inner(a, b, Some(idle), true).await
}

async fn relay_inner<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Option<Duration>,
    b_ends: bool,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = Buffered::new(a);
    let mut b = Buffered::new(b);
    let mut a_to_b = OneWay::default();
    let mut b_to_a = OneWay::default();
    // Boxed: only a relay with a deadline holds a timer.
    let mut deadline = idle.map(|d| Box::pin(tokio::time::sleep(d)));
    let mut moved = (0, 0);
    std::future::poll_fn(|cx| {
        let ab = a_to_b.poll(cx, &mut a, b.get_mut())?;
        let ba = b_to_a.poll(cx, &mut b, a.get_mut())?;
        match (ab, ba) {
            (Poll::Ready(ab), Poll::Ready(ba)) => return Poll::Ready(Ok((ab, ba))),
            (_, Poll::Ready(ba)) if b_ends => return Poll::Ready(Ok((a_to_b.copied, ba))),
            _ => {}
        }
        if let (Some(sleep), Some(idle)) = (deadline.as_mut(), idle) {
            let now = (a_to_b.copied, b_to_a.copied);
            if now != moved {
                moved = now;
                sleep.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "relay idle: no data either way",
                )));
            }
        }
        Poll::Pending
    })
    .await
}

/// A stream that remembers the first I/O error on it, so that after a [`relay`] (which
/// reports one error for both sides) the caller can tell whether this side broke; and
/// counts the octets written to it and read from it, which a relay that ends in an error
/// does not report.
pub struct Watched<S> {
    inner: S,
    error: Option<io::Error>,
    written: u64,
    read: u64,
}

impl<S> Watched<S> {
    pub fn new(inner: S) -> Self {
        Watched {
            inner,
            error: None,
            written: 0,
            read: 0,
        }
    }

    /// The octets written to this side and read from it so far.
    pub fn moved(&self) -> (u64, u64) {
        (self.written, self.read)
    }

    /// The first error seen on this side, if any.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    fn note<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r
            && self.error.is_none()
        {
            self.error = Some(io::Error::new(e.kind(), e.to_string()));
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        this.note(r)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, b);
        if let Poll::Ready(Ok(n)) = &r {
            this.written += *n as u64;
        }
        this.note(r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.note(r)
    }
}

/// One direction of [`relay`].
#[derive(Default)]
struct OneWay {
    copied: u64,
    /// Written since the last flush: flushed before waiting for more input, so that what
    /// a TLS writer holds goes out.
    unflushed: bool,
    /// The input has ended; the output is being shut down.
    ending: bool,
    done: bool,
}

impl OneWay {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Buffered<R>,
        to: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while !self.done {
            if self.ending {
                if self.unflushed {
                    std::task::ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    self.unflushed = false;
                }
                std::task::ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                break;
            }
            let chunk = match Pin::new(&mut *from).poll_fill_buf(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    if self.unflushed {
                        std::task::ready!(Pin::new(&mut *to).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            };
            if chunk.is_empty() {
                self.ending = true;
                continue;
            }
            let n = std::task::ready!(Pin::new(&mut *to).poll_write(cx, chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *from).consume(n);
            self.copied += n as u64;
            self.unflushed = true;
        }
        Poll::Ready(Ok(self.copied))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::lines::{Line, read_line};

    /// Segments `s` has sent, as `ss` reports them (TCP_INFO's `tcpi_segs_out`).
    fn segments_out(s: &tokio::net::TcpStream) -> u32 {
        let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
        let out = std::process::Command::new("ss")
            .args(["-tinH", "src", &local.to_string(), "dst", &peer.to_string()])
            .output()
            .expect("ss (iproute2)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&local.to_string()),
            "no socket {local} -> {peer}: {text:?}"
        );
        // `ss` leaves the figure out while it is 0.
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("segs_out:"))
            .map_or(0, |n| n.parse().unwrap())
    }

    #[tokio::test]
    async fn last_words_leave_with_the_fin_in_one_segment() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        // Just accepted: tokio has not seen it writable yet.
        let (server, _) = listener.accept().await.unwrap();
        let before = segments_out(&server);
        let bye = b"221 2.0.0 Bye\r\n";
        assert_eq!(server.send_last(bye), bye.len());
        let mut got = Vec::new();
        // The end of the stream is the FIN.
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, bye);
        assert_eq!(
            segments_out(&server) - before,
            1,
            "the reply and the FIN in one segment"
        );
        // A stream without sockets takes nothing: the caller writes as usual.
        let (a, _b) = tokio::io::duplex(64);
        assert_eq!(Conn::Plain(a).send_last(bye), 0);
    }

    /// Polls `fill_buf` once; true when it is waiting for input.
    fn waits<R: AsyncRead + Unpin>(r: &mut Buffered<R>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(r).poll_fill_buf(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn a_relay_that_the_server_ends_does_not_wait_for_the_client() {
        let (mut client, mut client_side) = tokio::io::duplex(1024);
        let (mut server, mut server_side) = tokio::io::duplex(1024);
        let relaying = tokio::spawn(async move {
            relay_idle_until_b_closes(
                &mut client_side,
                &mut server_side,
                std::time::Duration::from_secs(600),
            )
            .await
        });
        server.write_all(b"+OK bye\r\n").await.unwrap();
        drop(server);
        // The client keeps its side open; the relay ends anyway, all of it delivered.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"+OK bye\r\n");
        let (_, to_client) = tokio::time::timeout(std::time::Duration::from_secs(30), relaying)
            .await
            .expect("the relay ended with the server")
            .unwrap()
            .unwrap();
        assert_eq!(to_client, 9);
        // The plain relay, by contrast, waits for the client's side.
        let (_client, mut client_side) = tokio::io::duplex(1024);
        let (server, mut server_side) = tokio::io::duplex(1024);
        drop(server);
        let plain = relay(&mut client_side, &mut server_side);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), plain)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn holds_no_buffer_while_waiting() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut r = Buffered::new(server);
        assert!(waits(&mut r));
        assert_eq!(r.buf.capacity(), 0);
        client.write_all(b"EHLO a\r\nNOOP\r\n").await.unwrap();
        assert_eq!(
            read_line(&mut r, 100).await.unwrap(),
            Line::Complete(b"EHLO a".to_vec())
        );
        assert_eq!(r.buffer(), b"NOOP\r\n", "pipelined input is kept");
        assert_eq!(
            read_line(&mut r, 100).await.unwrap(),
            Line::Complete(b"NOOP".to_vec())
        );
        assert!(waits(&mut r));
        let kept = r.buf.capacity();
        assert!(
            kept <= KEEP_WAITING,
            "an idle reader keeps a command line's worth at most: {kept}"
        );
        // The next command is read into the same allocation.
        client.write_all(b"QUIT\r\n").await.unwrap();
        assert_eq!(
            read_line(&mut r, 100).await.unwrap(),
            Line::Complete(b"QUIT".to_vec())
        );
        assert_eq!(r.buf.capacity(), kept);
        // Message data fills a larger buffer: waiting, the reader lets it go.
        client.write_all(&[b'x'; 4000]).await.unwrap();
        assert_eq!(r.fill_buf().await.unwrap().len(), 4000);
        r.consume(4000);
        assert!(waits(&mut r));
        assert_eq!(r.buf.capacity(), 0, "an idle reader lets a large buffer go");
        drop(client);
        assert_eq!(read_line(&mut r, 100).await.unwrap(), Line::Eof);
    }

    #[tokio::test]
    async fn reads_at_most_a_chunk_at_a_time() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut r = Buffered::new(server);
        let input: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        loop {
            let chunk = r.fill_buf().await.unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= READ_CHUNK);
            // Consume in odd steps so refills meet partly consumed buffers.
            let n = chunk.len().min(3000);
            got.extend_from_slice(&chunk[..n]);
            r.consume(n);
            assert!(r.buf.capacity() <= READ_CHUNK);
        }
        assert_eq!(got, input);
    }

    #[tokio::test]
    async fn holding_a_message_reads_in_growing_chunks_and_keeps_the_buffer() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let mut r = Buffered::new(server);
        r.hold(true);
        let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&input).await.unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while got.len() < input.len() {
            let chunk = r.fill_buf().await.unwrap();
            sizes.push(chunk.len());
            got.extend_from_slice(chunk);
            let n = chunk.len();
            r.consume(n);
        }
        assert_eq!(got, input);
        // Each full read doubles the next, up to HOLD_MAX.
        assert_eq!(
            &sizes[..5],
            &[
                READ_CHUNK,
                2 * READ_CHUNK,
                4 * READ_CHUNK,
                HOLD_MAX,
                HOLD_MAX
            ]
        );
        assert!(sizes.iter().all(|&s| s <= HOLD_MAX), "{sizes:?}");
        assert!(waits(&mut r));
        assert!(r.buf.capacity() >= HOLD_MAX, "kept while the message lasts");
        // Pipelined input after the message is read as before once the hold ends.
        client.write_all(b"QUIT\r\n").await.unwrap();
        r.hold(false);
        assert_eq!(
            read_line(&mut r, 100).await.unwrap(),
            Line::Complete(b"QUIT".to_vec())
        );
        assert!(waits(&mut r));
        assert!(
            r.buf.capacity() <= KEEP_WAITING,
            "let go once the hold ends"
        );
    }

    #[tokio::test]
    async fn read_drains_the_buffer_first() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut r = Buffered::new(server);
        client.write_all(b"abc").await.unwrap();
        assert_eq!(r.fill_buf().await.unwrap(), b"abc");
        r.consume(1);
        client.write_all(b"def").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"bcdef");
    }

    #[tokio::test]
    async fn relay_copies_both_ways_and_passes_on_the_ends() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_backend, mut backend) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(&mut proxy_client, &mut proxy_backend).await });
        let up: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..70_000u32).map(|i| (i % 241) as u8).collect();
        let (u, d) = (up.clone(), down.clone());
        let c = tokio::spawn(async move {
            client.write_all(&u).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let b = tokio::spawn(async move {
            let mut got = Vec::new();
            // The client's end of input reaches the back-end as an end of input.
            backend.read_to_end(&mut got).await.unwrap();
            backend.write_all(&d).await.unwrap();
            backend.shutdown().await.unwrap();
            got
        });
        assert_eq!(b.await.unwrap(), up);
        assert_eq!(c.await.unwrap(), down);
        assert_eq!(
            relay.await.unwrap().unwrap(),
            (up.len() as u64, down.len() as u64)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn relay_idle_ends_a_relay_where_nothing_moves() {
        let (mut client, mut proxy_client) = tokio::io::duplex(64);
        let (mut proxy_backend, mut backend) = tokio::io::duplex(64);
        let idle = Duration::from_secs(600);
        let relay =
            tokio::spawn(
                async move { relay_idle(&mut proxy_client, &mut proxy_backend, idle).await },
            );
        // Traffic keeps it going past the idle time in all.
        for _ in 0..3 {
            tokio::time::sleep(idle / 2).await;
            client.write_all(b"NOOP\r\n").await.unwrap();
            let mut line = [0u8; 6];
            backend.read_exact(&mut line).await.unwrap();
        }
        assert!(!relay.is_finished());
        // The back-end sends more than the client reads: the write blocks, nothing moves.
        let big = vec![b'x'; 4096];
        tokio::spawn(async move {
            let _ = backend.write_all(&big).await;
            std::future::pending::<()>().await
        });
        let err = tokio::time::timeout(idle * 2, relay)
            .await
            .expect("an idle relay ends")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn relay_flushes_a_buffering_writer_while_it_waits() {
        // A writer that sends nothing until flushed, as a TLS stream may hold a record.
        let (mut client, proxy_client) = tokio::io::duplex(1024);
        let (proxy_backend, mut backend) = tokio::io::duplex(1024);
        let mut proxy_client = tokio::io::BufWriter::new(proxy_client);
        let mut proxy_backend = tokio::io::BufWriter::new(proxy_backend);
        tokio::spawn(async move { relay(&mut proxy_client, &mut proxy_backend).await });
        let wait = std::time::Duration::from_secs(5);
        client.write_all(b"STAT\r\n").await.unwrap();
        let mut line = [0u8; 6];
        tokio::time::timeout(wait, backend.read_exact(&mut line))
            .await
            .expect("the command was flushed")
            .unwrap();
        assert_eq!(&line, b"STAT\r\n");
        backend.write_all(b"+OK 0 0\r\n").await.unwrap();
        let mut reply = [0u8; 9];
        tokio::time::timeout(wait, client.read_exact(&mut reply))
            .await
            .expect("the reply was flushed")
            .unwrap();
        assert_eq!(&reply, b"+OK 0 0\r\n");
    }
}
