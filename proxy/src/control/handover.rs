//! The hand-over dialogue of a binary upgrade, over the control socket: the running
//! process ("predecessor") passes its listening sockets to a new one ("successor") with
//! `SCM_RIGHTS`, and stops once the successor says it serves.
//!
//! ```text
//! successor                      predecessor
//! handover\n             ->
//!                        <-      ok {Offer as JSON}\n      (or: error <why>\n)
//!                        <-      F + sockets (SCM_RIGHTS), in batches, in the offer's order
//!   (loads, takes the sockets and the XDP link, attaches its steering)
//! release\n              ->      (any other line, or the connection closing: withdraw)
//!                        <-      ok {HandedOver as JSON}\n  (its routers stopped silently,
//!                                 its control socket file removed: bind yours)
//! ```
//!
//! Until `release`, the predecessor serves on; after it, it drains and ends.

use std::{
    io::{IoSlice, IoSliceMut, Write as _},
    mem::MaybeUninit,
    net::TcpListener,
    os::{fd::OwnedFd, unix::net::UnixStream as StdUnixStream},
    path::Path,
    time::Duration,
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, Interest},
    net::UnixStream,
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ControlError;
use crate::frontend::{Command, HandedOver, Offer, PassedListener};

/// Sockets per message: below the kernel's limit of 253 descriptors per `SCM_RIGHTS`.
const FDS_PER_MESSAGE: usize = 200;
/// How long the predecessor waits for the successor's decision: it loads and verifies
/// its programs meanwhile.
const DECISION_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest offer line accepted (64 services with six sockets each fit many times).
const MAX_OFFER: usize = 1 << 20;

/// The predecessor's side: offer, pass the sockets, then hand over or withdraw.
pub(super) async fn offer(
    mut stream: UnixStream,
    commands: &mpsc::Sender<Command>,
    path: &Path,
    handed_over: &CancellationToken,
) -> std::io::Result<()> {
    let gone = || std::io::Error::other("the front-end is stopping");
    let (done, answer) = oneshot::channel();
    commands
        .send(Command::Offer { done })
        .await
        .map_err(|_| gone())?;
    let offered = match answer.await.map_err(|_| gone())? {
        Ok(o) => o,
        Err(e) => {
            let line = format!("error cannot offer: {}\n", e.to_string().replace('\n', " "));
            stream.write_all(line.as_bytes()).await?;
            return stream.shutdown().await;
        }
    };
    info!(
        listeners = offered.offer.listeners.len(),
        "upgrade: a successor asks to take over"
    );
    let decided = async {
        let json = serde_json::to_string(&offered.offer).map_err(std::io::Error::other)?;
        stream.write_all(format!("ok {json}\n").as_bytes()).await?;
        for batch in offered.sockets.chunks(FDS_PER_MESSAGE) {
            send_sockets(&stream, batch).await?;
        }
        let mut line = String::new();
        let (rd, _) = stream.split();
        let mut reader = tokio::io::BufReader::new(rd.take(64));
        tokio::time::timeout(DECISION_TIMEOUT, reader.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("no decision from the successor"))??;
        Ok::<bool, std::io::Error>(line == "release\n")
    }
    .await;
    drop(offered.sockets);
    match decided {
        Ok(true) => {
            let (done, answer) = oneshot::channel();
            commands
                .send(Command::HandOver { done })
                .await
                .map_err(|_| gone())?;
            let handed = answer.await.map_err(|_| gone())?;
            // The successor binds the control socket once it reads the answer.
            handed_over.cancel();
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "cannot remove the control socket for the successor");
            }
            let json = serde_json::to_string(&handed).map_err(std::io::Error::other)?;
            stream.write_all(format!("ok {json}\n").as_bytes()).await?;
            stream.shutdown().await
        }
        Ok(false) | Err(_) => {
            if let Err(e) = &decided {
                warn!(error = %e, "upgrade: the successor went away");
            }
            commands.send(Command::Withdraw).await.map_err(|_| gone())?;
            Ok(())
        }
    }
}

async fn send_sockets(stream: &UnixStream, sockets: &[OwnedFd]) -> std::io::Result<()> {
    use std::os::fd::AsFd as _;
    let borrowed: Vec<_> = sockets.iter().map(|s| s.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
                return Err(std::io::Error::other("too many sockets for one message"));
            }
            rustix::net::sendmsg(
                stream,
                &[IoSlice::new(b"F")],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The successor's side, taken over from the predecessor until it says `release`.
pub struct Taken {
    pub offer: Offer,
    /// The listening sockets, each with what the offer says of it.
    pub listeners: Vec<(PassedListener, TcpListener)>,
    stream: StdUnixStream,
    path: std::path::PathBuf,
}

/// Asks the front-end serving the control socket at `path` for its sockets. Blocking: a
/// successor does this during its privileged start, before any runtime exists.
pub fn take_over(path: &Path) -> Result<Taken, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let refused = |reason: String| ControlError::Reply {
        path: path.to_owned(),
        reason,
    };
    let mut stream = StdUnixStream::connect(path).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    stream.write_all(b"handover\n").map_err(io)?;
    let mut bytes = Vec::new();
    let mut sockets: Vec<OwnedFd> = Vec::new();
    let mut offer: Option<Offer> = None;
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    loop {
        if offer.is_none()
            && let Some(end) = bytes.iter().position(|b| *b == b'\n')
        {
            let line = String::from_utf8_lossy(&bytes[..end]).into_owned();
            bytes.drain(..=end);
            match line.strip_prefix("ok ") {
                Some(json) => {
                    offer = Some(
                        serde_json::from_str(json)
                            .map_err(|e| refused(format!("unreadable offer: {e}")))?,
                    )
                }
                None => {
                    return Err(refused(
                        line.strip_prefix("error ").unwrap_or(&line).to_owned(),
                    ));
                }
            }
        }
        if let Some(o) = &offer
            && sockets.len() >= o.listeners.len()
        {
            break;
        }
        let mut buf = [0u8; 4096];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| io(e.into()))?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                sockets.extend(fds);
            }
        }
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(refused("sockets lost in transit (control data cut)".into()));
        }
        if got.bytes == 0 {
            return Err(refused("the front-end closed the connection".into()));
        }
        bytes.extend_from_slice(&buf[..got.bytes]);
        if bytes.len() > MAX_OFFER {
            return Err(refused("offer too long".into()));
        }
    }
    let Some(offer) = offer else {
        return Err(refused("no offer".into()));
    };
    if sockets.len() != offer.listeners.len() {
        return Err(refused(format!(
            "{} sockets for {} listeners",
            sockets.len(),
            offer.listeners.len()
        )));
    }
    let listeners = offer
        .listeners
        .iter()
        .cloned()
        .zip(sockets.into_iter().map(TcpListener::from))
        .collect();
    Ok(Taken {
        offer,
        listeners,
        stream,
        path: path.to_owned(),
    })
}

impl Taken {
    /// Tells the predecessor this process serves: it stops its routers, removes its control
    /// socket file and answers with what each router was. Dropping a [`Taken`] instead
    /// makes the predecessor serve on.
    pub fn release(mut self) -> Result<HandedOver, ControlError> {
        let io = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        self.stream.write_all(b"release\n").map_err(io)?;
        // Its routers stop at once; draining comes after the answer.
        self.stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&self.stream), &mut line)
            .map_err(io)?;
        match line.trim_end().strip_prefix("ok ") {
            Some(json) => serde_json::from_str(json).map_err(|e| ControlError::Reply {
                path: self.path.clone(),
                reason: format!("unreadable answer: {e}"),
            }),
            None => Err(ControlError::Reply {
                path: self.path.clone(),
                reason: format!("no hand-over: {}", line.trim_end()),
            }),
        }
    }
}
