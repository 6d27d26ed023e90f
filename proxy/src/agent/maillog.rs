//! The agent's MTA log follower: it reads the MTA's log file as it grows, keeps the lines
//! that carry a queue id of its MTA, and ships them to the cluster manager in batches.
//!
//! The manager answers each batch only once it has stored it, and keeps where the agent's
//! file stands (device, inode, offset after the last line stored); an agent that starts or
//! reconnects asks for that mark and goes on from it, so a restart of either side loses and
//! doubles nothing. A file replaced under the same name (rotation) is read to its end
//! before the new one is opened; a file cut shorter than the mark (truncation) is read
//! again from its start.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Mta;
use crate::manager::{
    client::Client,
    mta_log::{FileMark, MAX_BATCH, MAX_LINE, MtaLine},
    wire::Request,
};

/// Bytes read at a time; a line longer than this without an end is taken as it is (cut).
const READ_CHUNK: usize = 64 * 1024;
/// How often the file is looked at when nothing new was there.
const POLL: Duration = Duration::from_millis(250);
/// The longest wait between two attempts to reach the manager.
const MAX_RETRY: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the complete lines added to a file, across rotation and truncation.
pub struct Follower {
    path: PathBuf,
    mta: Mta,
    open: Option<(File, (u64, u64))>,
    /// The offset in the open file of the first byte not yet taken.
    offset: u64,
}

/// Lines of one file, from where the follower stood.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The file's device and inode.
    pub file: (u64, u64),
    pub lines: Vec<MtaLine>,
    /// The offset after the last byte taken (lines without a queue id included).
    pub end: u64,
}

impl Follower {
    pub fn new(path: &Path, mta: Mta) -> Follower {
        Follower {
            path: path.to_owned(),
            mta,
            open: None,
            offset: 0,
        }
    }

    /// Goes on from `mark` if the file under the path is the one it names, else from the
    /// start of the file there (the one of the mark was rotated away while nobody read).
    pub fn resume(&mut self, mark: FileMark) -> io::Result<()> {
        self.open = None;
        self.offset = 0;
        let Some((file, id)) = open(&self.path)? else {
            return Ok(());
        };
        if id == (mark.dev, mark.ino) && file.metadata()?.len() >= mark.offset {
            self.offset = mark.offset;
        }
        self.open = Some((file, id));
        Ok(())
    }

    /// The complete lines written since the last call (at most `max` with a queue id);
    /// an empty batch when there is nothing new.
    pub fn poll(&mut self, max: usize) -> io::Result<Batch> {
        if self.open.is_none() {
            match open(&self.path)? {
                Some(opened) => {
                    self.open = Some(opened);
                    self.offset = 0;
                }
                None => return Ok(Batch::default()),
            }
        }
        let before = self.offset;
        let batch = self.read(max)?;
        if !batch.lines.is_empty() || self.offset != before {
            return Ok(batch);
        }
        // Nothing more in this file: has the name moved on to another one, or was this
        // one cut?
        let id = self.open.as_ref().map(|(_, id)| *id);
        match std::fs::metadata(&self.path) {
            Ok(m) if Some((m.dev(), m.ino())) != id => {
                info!(file = %self.path.display(), "MTA log rotated: reading the new file");
                self.open = None;
                self.offset = 0;
                self.poll(max)
            }
            Ok(m) if m.len() < self.offset => {
                info!(file = %self.path.display(), "MTA log truncated: reading it from its start");
                self.offset = 0;
                self.read(max)
            }
            _ => Ok(batch),
        }
    }

    fn read(&mut self, max: usize) -> io::Result<Batch> {
        let Some((file, id)) = self.open.as_mut() else {
            return Ok(Batch::default());
        };
        let mut batch = Batch {
            file: *id,
            lines: Vec::new(),
            end: self.offset,
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = vec![0u8; READ_CHUNK];
        'file: while batch.lines.len() < max {
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read(&mut buf[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            let data = &buf[..filled];
            let mut start = 0;
            while let Some(nl) = data[start..].iter().position(|&b| b == b'\n') {
                let line = &data[start..start + nl];
                start += nl + 1;
                take(self.mta, line, self.offset + start as u64, &mut batch);
                if batch.lines.len() >= max {
                    break;
                }
            }
            if start == 0 {
                if filled < buf.len() {
                    // A line still being written: taken when it ends.
                    break 'file;
                }
                // A whole chunk without an end of line: taken, cut, as one line.
                start = filled;
                take(self.mta, data, self.offset + start as u64, &mut batch);
            }
            self.offset += start as u64;
            batch.end = self.offset;
            file.seek(SeekFrom::Start(self.offset))?;
            if filled < buf.len() {
                break;
            }
        }
        Ok(batch)
    }
}

/// Keeps `line` (ending at offset `end`) in `batch` if it carries a queue id of `mta`.
fn take(mta: Mta, line: &[u8], end: u64, batch: &mut Batch) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let Some(queue_id) = queue_id(text, mta) else {
        return;
    };
    let mut line = text.to_owned();
    if line.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    batch.lines.push(MtaLine {
        queue_id,
        end,
        line,
    });
}

fn open(path: &Path) -> io::Result<Option<(File, (u64, u64))>> {
    match File::open(path) {
        Ok(f) => {
            let m = f.metadata()?;
            Ok(Some((f, (m.dev(), m.ino()))))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The queue id a log line of `mta` is about, if any: Postfix
/// `postfix/smtp[123]: 4XyZ1k2Lmnz: to=<...>, status=sent`, Exim
/// `2026-11-30 08:00:00 1tAbCd-000Xyz-9Q <= a@b ...`, OpenSMTPD `... msgid=3f1a2b3c ...` or
/// `... evpid=3f1a2b3c00112233 ...` (the message id is the envelope id's first half; some
/// versions write it with `0x`).
pub fn queue_id(line: &str, mta: Mta) -> Option<String> {
    match mta {
        Mta::Postfix => postfix_queue_id(line),
        Mta::Exim => line
            .split_whitespace()
            .take(4)
            .find(|w| is_exim_id(w))
            .map(str::to_owned),
        Mta::Opensmtpd => opensmtpd_queue_id(line),
        Mta::Spool => None,
    }
}

fn postfix_queue_id(line: &str) -> Option<String> {
    let at = line.find("postfix")?;
    let rest = &line[at..];
    let rest = &rest[rest.find("]: ")? + 3..];
    let (id, _) = rest.split_once(':')?;
    // Short ids are upper-case hex; long ids use digits and consonants only, so words such
    // as `warning` or `NOQUEUE` never pass for one.
    let short = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    let long = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() && !b"AEIOUaeiou".contains(&b));
    ((6..=20).contains(&id.len()) && (short || long)).then(|| id.to_owned())
}

fn is_exim_id(w: &str) -> bool {
    let parts: Vec<&str> = w.split('-').collect();
    parts.len() == 3
        && parts[0].len() == 6
        && (6..=11).contains(&parts[1].len())
        && (2..=4).contains(&parts[2].len())
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn opensmtpd_queue_id(line: &str) -> Option<String> {
    let hex = |s: &str| -> String {
        s.chars()
            .take_while(char::is_ascii_hexdigit)
            .collect::<String>()
    };
    if let Some(i) = line.find("msgid=") {
        let id = hex(&line[i + 6..]);
        return (id.len() == 8).then_some(id);
    }
    if let Some(i) = line.find("evpid=") {
        let rest = &line[i + 6..];
        let id = hex(rest.strip_prefix("0x").unwrap_or(rest));
        return (id.len() == 16).then(|| id[..8].to_owned());
    }
    None
}

/// Where and how the agent ships its MTA's log.
#[derive(Debug, Clone)]
pub struct ShipOptions {
    pub manager: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub maillog: PathBuf,
    pub mta: Mta,
}

/// Ships the log until `stop`: connects, asks for the mark, follows the file from it; any
/// failure (the manager away, a refused batch) starts over from the mark after a pause.
pub async fn ship(o: ShipOptions, stop: CancellationToken) {
    let mut follower = Some(Follower::new(&o.maillog, o.mta));
    let mut retry = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let Some(f) = follower.take() else { return };
        let (f, result) = session(&o, f, &stop).await;
        follower = Some(f);
        if let Err(e) = result {
            warn!(manager = %o.manager, error = %e, "MTA log not shipped; trying again");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(MAX_RETRY);
        } else {
            retry = Duration::from_millis(100);
        }
    }
}

/// One connection's shipping; gives the follower back with how it ended.
async fn session(
    o: &ShipOptions,
    mut f: Follower,
    stop: &CancellationToken,
) -> (Follower, Result<(), String>) {
    let mut c = match Client::connect(&o.manager, &o.ca, &o.cert, &o.key).await {
        Ok(c) => c,
        Err(e) => return (f, Err(e.to_string())),
    };
    let mark: FileMark = match c.call(&Request::MtaMark, CALL_TIMEOUT).await {
        Ok(v) => match serde_json::from_value(v) {
            Ok(m) => m,
            Err(e) => return (f, Err(e.to_string())),
        },
        Err(e) => return (f, Err(e.to_string())),
    };
    let (back, resumed) = blocking(f, move |f| f.resume(mark)).await;
    f = back;
    if let Err(e) = resumed {
        return (f, Err(format!("{}: {e}", o.maillog.display())));
    }
    info!(manager = %o.manager, file = %o.maillog.display(), offset = mark.offset, "shipping the MTA log");
    loop {
        let (back, polled) = blocking(f, |f| f.poll(MAX_BATCH)).await;
        f = back;
        let batch = match polled {
            Ok(b) => b,
            Err(e) => return (f, Err(format!("{}: {e}", o.maillog.display()))),
        };
        if batch.lines.is_empty() {
            tokio::select! {
                () = stop.cancelled() => return (f, Ok(())),
                () = tokio::time::sleep(POLL) => continue,
            }
        }
        let request = Request::MtaLines {
            dev: batch.file.0,
            ino: batch.file.1,
            lines: batch.lines,
        };
        if let Err(e) = c.call(&request, CALL_TIMEOUT).await {
            // Not stored, or not known to be: the next connection resumes from the mark.
            return (f, Err(e.to_string()));
        }
    }
}

/// Runs `work` on the follower off the runtime's threads (it reads a file).
async fn blocking<T: Send + 'static>(
    mut f: Follower,
    work: impl FnOnce(&mut Follower) -> io::Result<T> + Send + 'static,
) -> (Follower, io::Result<T>) {
    let path = f.path.clone();
    let mta = f.mta;
    match tokio::task::spawn_blocking(move || {
        let r = work(&mut f);
        (f, r)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => (Follower::new(&path, mta), Err(io::Error::other(e))),
    }
}

#[cfg(test)]
mod tests;
