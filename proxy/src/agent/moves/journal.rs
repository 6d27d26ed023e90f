//! A move's journal: one file per domain pattern in the agent's state directory, JSON
//! lines each written and fsynced before the step it records is taken (or, for `sent`,
//! right after the target's reply), so that an agent killed at any moment knows on restart
//! where each message stood.
//!
//! Bounded: the file is rewritten (written aside, fsynced, renamed over, directory
//! fsynced) with only what is still needed (the request, the figures, the messages not yet
//! done, the refused ones) at the start of every pass and whenever it has grown past
//! [`MAX_APPENDED`] lines since.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use super::mta::{Queued, Recipient};
use crate::agent_wire::MoveStatus;

/// Lines appended before the journal is compacted.
pub const MAX_APPENDED: usize = 10_000;
/// Longest journal line read back; a longer one (never written by us) ends the replay.
const MAX_RECORD: usize = 4 << 20;

/// Where the move sends mail; changed by a request with other targets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Aim {
    pub pool: String,
    pub targets: Vec<SocketAddr>,
    #[serde(default)]
    pub target_agents: Vec<SocketAddr>,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Record {
    /// First line: the move and where it sends mail.
    Start { domain: String, aim: Aim },
    /// The targets changed.
    Aim { aim: Aim },
    /// The figures so far and the messages already counted as found (written on
    /// compaction).
    Status {
        status: MoveStatus,
        seen: BTreeSet<String>,
    },
    /// About to hold the message.
    Holding { id: String },
    /// About to end DATA at `target`: from here the target may have the message.
    Sending {
        message: Queued,
        moved: Vec<Recipient>,
        kept: Vec<Recipient>,
        target: SocketAddr,
        token: String,
    },
    /// The target took it (its reply), or already had it (`already_there`).
    Sent {
        id: String,
        reply: String,
        #[serde(default)]
        already_there: bool,
    },
    /// Its moved recipients are off the source.
    Done { id: String },
    /// Gone from the source queue before it was sent (delivered, deleted by an operator).
    Gone { id: String },
    /// Refused permanently by the target; it stays held and is not tried again.
    Refused { id: String, reply: String },
    /// A pass found nothing left: the move is over.
    Finished { at: i64 },
}

/// Where one message stands, as the journal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// It may be held; not yet sent anywhere.
    Holding,
    /// The target may have it: look there before sending it again.
    Sending(Box<Sending>),
    /// The target has it: only its removal at the source is left.
    Sent(Box<Sending>),
}

/// What a `sending` record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sending {
    pub message: Queued,
    pub moved: Vec<Recipient>,
    pub kept: Vec<Recipient>,
    pub target: SocketAddr,
    pub token: String,
    pub already_there: bool,
}

/// A journal read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub domain: String,
    pub aim: Aim,
    pub status: Option<MoveStatus>,
    pub seen: BTreeSet<String>,
    pub pending: BTreeMap<String, Pending>,
    pub refused: BTreeMap<String, String>,
    /// Messages done since the last `status` record, with the figures they add.
    pub done: Vec<Done>,
    pub finished: Option<i64>,
}

/// A message done since the last `status` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub recipients_moved: u32,
    pub recipients_kept: u32,
    pub already_there: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path}: {detail}")]
    Bad { path: String, detail: String },
}

/// The journal of one move, open for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    appended: usize,
}

/// The journal's file for a domain pattern (as [`crate::route::domains::DomainPattern`]
/// prints it: letters, digits, dots and hyphens only).
pub fn path_for(state_dir: &Path, pattern: &str) -> PathBuf {
    state_dir.join(format!("move-{pattern}.jsonl"))
}

/// The journals in `state_dir`.
pub fn list(state_dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let io = |source| JournalError::Io {
        path: state_dir.display().to_string(),
        source,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(state_dir).map_err(io)? {
        let p = e.map_err(io)?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("move-") && name.ends_with(".jsonl") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

impl Journal {
    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// A new journal (replacing any old one at `path`) holding `records`.
    pub fn create(path: &Path, records: &[Record]) -> Result<Journal, JournalError> {
        write_aside(path, records)?;
        Self::open(path)
    }

    /// Opens an existing journal for appending.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| JournalError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            appended: 0,
        })
    }

    /// Appends `r` and waits until it is on disk.
    pub fn append(&mut self, r: &Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(r).map_err(|e| JournalError::Bad {
            path: self.path.display().to_string(),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        self.appended += 1;
        Ok(())
    }

    /// Whether the journal grew enough to be compacted.
    pub fn wants_compaction(&self) -> bool {
        self.appended >= MAX_APPENDED
    }

    /// Replaces the journal's content with `records` (atomically: a crash leaves the old
    /// or the new file, never a mix).
    pub fn compact(&mut self, records: &[Record]) -> Result<(), JournalError> {
        write_aside(&self.path, records)?;
        *self = Self::open(&self.path)?;
        Ok(())
    }
}

fn write_aside(path: &Path, records: &[Record]) -> Result<(), JournalError> {
    let io = |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("jsonl.new");
    let mut text = Vec::new();
    for r in records {
        serde_json::to_writer(&mut text, r).map_err(|e| JournalError::Bad {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        text.push(b'\n');
    }
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Reads a journal back. A last line cut short (the agent killed while writing it) is
/// ignored: its step had not been taken.
pub fn replay(path: &Path) -> Result<Replayed, JournalError> {
    let bad = |detail: String| JournalError::Bad {
        path: path.display().to_string(),
        detail,
    };
    let f = File::open(path).map_err(|source| JournalError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut records = Vec::new();
    let mut reader = BufReader::new(f);
    loop {
        let mut line = Vec::new();
        let n = std::io::Read::take(&mut reader, MAX_RECORD as u64)
            .read_until(b'\n', &mut line)
            .map_err(|source| JournalError::Io {
                path: path.display().to_string(),
                source,
            })?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(r) => records.push(r),
            Err(e) => return Err(bad(format!("line {}: {e}", records.len() + 1))),
        }
    }
    fold(records).map_err(bad)
}

/// What a sequence of records says.
pub fn fold(records: Vec<Record>) -> Result<Replayed, String> {
    let mut it = records.into_iter();
    let Some(Record::Start { domain, aim }) = it.next() else {
        return Err("does not start with the move's request".into());
    };
    let mut r = Replayed {
        domain,
        aim,
        status: None,
        seen: BTreeSet::new(),
        pending: BTreeMap::new(),
        refused: BTreeMap::new(),
        done: Vec::new(),
        finished: None,
    };
    for rec in it {
        match rec {
            Record::Start { .. } => return Err("a second start".into()),
            Record::Aim { aim } => r.aim = aim,
            Record::Status { status, seen } => {
                r.status = Some(status);
                r.seen = seen;
                r.done.clear();
            }
            Record::Holding { id } => {
                r.seen.insert(id.clone());
                r.pending.insert(id, Pending::Holding);
            }
            Record::Sending {
                message,
                moved,
                kept,
                target,
                token,
            } => {
                r.seen.insert(message.id.clone());
                r.pending.insert(
                    message.id.clone(),
                    Pending::Sending(Box::new(Sending {
                        message,
                        moved,
                        kept,
                        target,
                        token,
                        already_there: false,
                    })),
                );
            }
            Record::Sent {
                id, already_there, ..
            } => {
                if let Some(Pending::Sending(mut s)) = r.pending.remove(&id) {
                    s.already_there = already_there;
                    r.pending.insert(id, Pending::Sent(s));
                }
            }
            Record::Done { id } => {
                if let Some(Pending::Sent(s)) = r.pending.remove(&id) {
                    r.done.push(Done {
                        recipients_moved: s.moved.len() as u32,
                        recipients_kept: s.kept.len() as u32,
                        already_there: s.already_there,
                    });
                }
            }
            Record::Gone { id } => {
                r.pending.remove(&id);
            }
            Record::Refused { id, reply } => {
                r.pending.remove(&id);
                r.refused.insert(id, reply);
            }
            Record::Finished { at } => r.finished = Some(at),
        }
    }
    Ok(r)
}

/// The records a compacted journal holds for `pending` messages.
pub fn pending_records(id: &str, p: &Pending) -> Vec<Record> {
    let sending = |s: &Sending| Record::Sending {
        message: s.message.clone(),
        moved: s.moved.clone(),
        kept: s.kept.clone(),
        target: s.target,
        token: s.token.clone(),
    };
    match p {
        Pending::Holding => vec![Record::Holding { id: id.to_owned() }],
        Pending::Sending(s) => vec![sending(s)],
        Pending::Sent(s) => vec![
            sending(s),
            Record::Sent {
                id: id.to_owned(),
                reply: String::new(),
                already_there: s.already_there,
            },
        ],
    }
}
