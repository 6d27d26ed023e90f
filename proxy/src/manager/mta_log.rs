//! The back-end MTAs' log lines, shipped by their agents and kept at the manager in one
//! redb file, indexed by (host, queue id) for `cluster trace`.
//!
//! The host is the agent's certificate name, which is the back-end's `name` in the
//! configuration. Each agent follows one file; the manager keeps, per agent, the file's
//! identity and the byte offset after the last line stored, and stores only lines past it,
//! in the same transaction as the new mark: an agent that ships a batch again (the reply
//! was lost, the agent restarted) doubles nothing, and one that (re)connects asks where to
//! go on.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::store::{StoreError, decode, encode, from_redb};

/// (host, queue id, arrival number) -> the line.
const LINES: TableDefinition<(&str, &str, u64), &str> = TableDefinition::new("lines");
/// Host -> [`FileMark`] as JSON.
const MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("marks");
/// Lines kept; past it, a new batch is refused until the operator makes room (a trace
/// store that silently forgot would mislead).
pub const KEEP: u64 = 10_000_000;
/// The longest line stored (longer ones are cut by the agent).
pub const MAX_LINE: usize = 4096;
/// The most lines in one batch.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum MtaLogError {
    #[error("MTA log {0}")]
    Store(#[from] StoreError),
    #[error("a batch of {0} lines; at most {MAX_BATCH}")]
    Batch(usize),
    #[error("a line of {0} octets; at most {MAX_LINE}")]
    Line(usize),
    #[error("the MTA log holds {KEEP} lines: no more are taken")]
    Full,
}

from_redb!(MtaLogError);

/// Which file an agent follows (device and inode) and how far the manager has stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileMark {
    pub dev: u64,
    pub ino: u64,
    /// The byte offset after the last line stored.
    pub offset: u64,
}

/// One line of the MTA's log with its queue id, and the offset just after it in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtaLine {
    pub queue_id: String,
    pub end: u64,
    pub line: String,
}

pub struct MtaLog {
    db: Database,
}

impl MtaLog {
    pub fn open(path: &Path) -> Result<MtaLog, MtaLogError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LINES)?;
        txn.open_table(MARKS)?;
        txn.commit()?;
        Ok(MtaLog { db })
    }

    /// Where `host`'s agent goes on.
    pub fn mark(&self, host: &str) -> Result<FileMark, MtaLogError> {
        let txn = self.db.begin_read()?;
        let marks = txn.open_table(MARKS)?;
        Ok(match marks.get(host)? {
            Some(raw) => decode(raw.value(), "mark")?,
            None => FileMark::default(),
        })
    }

    /// Stores the `lines` of `host`'s file `(dev, ino)` (in file order) that lie past the
    /// mark; a file of another identity starts again from its beginning. Returns how many
    /// were new.
    pub fn store(
        &self,
        host: &str,
        (dev, ino): (u64, u64),
        lines: &[MtaLine],
    ) -> Result<usize, MtaLogError> {
        if lines.len() > MAX_BATCH {
            return Err(MtaLogError::Batch(lines.len()));
        }
        if let Some(l) = lines.iter().find(|l| l.line.len() > MAX_LINE) {
            return Err(MtaLogError::Line(l.line.len()));
        }
        let txn = self.db.begin_write()?;
        let stored = {
            let mut marks = txn.open_table(MARKS)?;
            let mut table = txn.open_table(LINES)?;
            let mut mark: FileMark = match marks.get(host)? {
                Some(raw) => decode(raw.value(), "mark")?,
                None => FileMark::default(),
            };
            if (mark.dev, mark.ino) != (dev, ino) {
                mark = FileMark {
                    dev,
                    ino,
                    offset: 0,
                };
            }
            if table.len()? + lines.len() as u64 > KEEP {
                return Err(MtaLogError::Full);
            }
            let first = next_number(&table)?;
            let from = mark.offset;
            let mut stored = 0;
            for (n, l) in (first..).zip(lines.iter().filter(|l| l.end > from)) {
                table.insert((host, l.queue_id.as_str(), n), l.line.as_str())?;
                mark.offset = l.end;
                stored += 1;
            }
            marks.insert(host, encode(&mark, "mark")?.as_slice())?;
            stored
        };
        txn.commit()?;
        Ok(stored)
    }

    /// `host`'s lines of queue id `queue_id`, in the order they were stored.
    pub fn lines(&self, host: &str, queue_id: &str) -> Result<Vec<String>, MtaLogError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LINES)?;
        let mut out = Vec::new();
        for row in table.range((host, queue_id, 0)..=(host, queue_id, u64::MAX))? {
            let (_, v) = row?;
            out.push(v.value().to_owned());
        }
        Ok(out)
    }

    /// Every host whose lines of `queue_id` are kept, with the lines (a queue id given
    /// without its back-end).
    pub fn find(&self, queue_id: &str) -> Result<Vec<(String, Vec<String>)>, MtaLogError> {
        let hosts: Vec<String> = {
            let txn = self.db.begin_read()?;
            let marks = txn.open_table(MARKS)?;
            marks
                .iter()?
                .map(|r| r.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for h in hosts {
            let lines = self.lines(&h, queue_id)?;
            if !lines.is_empty() {
                out.push((h, lines));
            }
        }
        Ok(out)
    }
}

/// The next arrival number, kept in the key so lines of one queue id stay in their order:
/// nothing is ever deleted, so the count plus one was never used before.
fn next_number(
    table: &redb::Table<'_, (&'static str, &'static str, u64), &'static str>,
) -> Result<u64, MtaLogError> {
    Ok(table.len()? + 1)
}

/// What `cluster trace ID` answers (and the web interface reads): the messages whose
/// record matches ID (its session, Message-ID or queue id), each with its back-end MTA's
/// lines of its queue id; the other events of their sessions; and, when no record matched,
/// the MTA lines of ID taken as a queue id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub id: String,
    pub messages: Vec<TracedMessage>,
    /// The sessions' other events (refusals, deflections), in time order.
    pub session_events: Vec<super::logs::Entry>,
    /// MTA lines of ID as a queue id, by host, when no message record named it.
    pub mta_only: Vec<HostLines>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracedMessage {
    /// The member (front-end) that relayed it.
    pub member: String,
    pub time_ms: u64,
    pub record: crate::events::Relayed,
    /// The back-end's agent's lines of the queue id (none when its agent shipped none).
    pub mta: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostLines {
    pub host: String,
    pub lines: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::testing::TestDir;

    fn line(q: &str, end: u64, text: &str) -> MtaLine {
        MtaLine {
            queue_id: q.into(),
            end,
            line: text.into(),
        }
    }

    #[test]
    fn a_batch_sent_again_is_stored_once_and_the_mark_moves() {
        let dir = TestDir::new("mta-once");
        let log = MtaLog::open(&dir.join("mta.redb")).unwrap();
        let batch = [
            line("ABC", 10, "a ABC: one"),
            line("DEF", 20, "b DEF: x"),
            line("ABC", 30, "c ABC: two"),
        ];
        assert_eq!(log.store("mx1", (1, 2), &batch[..2]).unwrap(), 2);
        // The reply was lost: the agent sends from its own mark again.
        assert_eq!(log.store("mx1", (1, 2), &batch).unwrap(), 1);
        assert_eq!(
            log.mark("mx1").unwrap(),
            FileMark {
                dev: 1,
                ino: 2,
                offset: 30
            }
        );
        assert_eq!(
            log.lines("mx1", "ABC").unwrap(),
            ["a ABC: one", "c ABC: two"]
        );
        assert!(log.lines("mx2", "ABC").unwrap().is_empty());
        assert_eq!(
            log.find("DEF").unwrap(),
            [("mx1".into(), vec!["b DEF: x".into()])]
        );
        // A new file (rotated) starts from its beginning.
        assert_eq!(
            log.store("mx1", (1, 3), &[line("ABC", 5, "d ABC: three")])
                .unwrap(),
            1
        );
        assert_eq!(log.lines("mx1", "ABC").unwrap().len(), 3);
    }

    #[test]
    fn the_mark_survives_a_reopen_and_bounds_are_kept() {
        let dir = TestDir::new("mta-reopen");
        let path = dir.join("mta.redb");
        {
            let log = MtaLog::open(&path).unwrap();
            log.store("mx1", (7, 8), &[line("Q1", 42, "Q1: x")])
                .unwrap();
        }
        let log = MtaLog::open(&path).unwrap();
        assert_eq!(log.mark("mx1").unwrap().offset, 42);
        assert_eq!(
            log.store("mx1", (7, 8), &[line("Q1", 42, "Q1: x")])
                .unwrap(),
            0
        );
        let long = "x".repeat(MAX_LINE + 1);
        assert!(matches!(
            log.store("mx1", (7, 8), &[line("Q1", 99, &long)]),
            Err(MtaLogError::Line(_))
        ));
        let many: Vec<MtaLine> = (0..=MAX_BATCH as u64)
            .map(|i| line("Q", i + 100, "Q: y"))
            .collect();
        assert!(matches!(
            log.store("mx1", (7, 8), &many),
            Err(MtaLogError::Batch(_))
        ));
    }
}
