//! The members' events, merged at the manager in one redb file.
//!
//! Each member ships its front-end's events in order; the manager keeps, per member, the
//! run (`boot`) and sequence number of the last one stored, and tells a member that
//! (re)connects where to resume. An event at or before that mark is not stored again, so
//! a member that was cut off sends what it missed and nothing is doubled; a run's events
//! the front-end no longer kept when the member asked are recorded as a gap, not hidden.
//! The newest [`KEEP`] entries are kept.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::store::{StoreError, decode, encode, from_redb};
use crate::events::Event;

/// Arrival number -> [`Entry`] as JSON.
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// Member -> [`Mark`] as JSON.
const MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("marks");
/// Entries kept; older ones are dropped as new ones arrive.
pub const KEEP: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("event log {0}")]
    Store(#[from] StoreError),
}

from_redb!(LogsError);

/// One stored event, with the member it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Arrival order at the manager (`cluster logs --follow` resumes after it).
    pub n: u64,
    pub member: String,
    pub boot: String,
    /// Events of this run the front-end had dropped before the member asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<(u64, u64)>,
    pub event: Option<Event>,
}

/// Where a member's events stand: its front-end's run and the last sequence number stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mark {
    pub boot: String,
    pub seq: u64,
}

pub struct Logs {
    db: Database,
}

impl Logs {
    pub fn open(path: &Path) -> Result<Logs, LogsError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(MARKS)?;
        txn.commit()?;
        Ok(Logs { db })
    }

    /// Where `member`'s events stand.
    pub fn mark(&self, member: &str) -> Result<Mark, LogsError> {
        let txn = self.db.begin_read()?;
        let marks = txn.open_table(MARKS)?;
        Ok(match marks.get(member)? {
            Some(raw) => decode(raw.value(), "mark")?,
            None => Mark::default(),
        })
    }

    /// Stores `events` of `member`'s run `boot` (in sequence order), skipping those at or
    /// before its mark; `oldest` is the oldest sequence number its front-end still had, so
    /// a hole between the mark and the first event is recorded. Returns how many were new.
    pub fn store(
        &self,
        member: &str,
        boot: &str,
        oldest: u64,
        events: &[Event],
    ) -> Result<usize, LogsError> {
        let txn = self.db.begin_write()?;
        let stored = {
            let mut marks = txn.open_table(MARKS)?;
            let mut entries = txn.open_table(ENTRIES)?;
            let mut mark: Mark = match marks.get(member)? {
                Some(raw) => decode(raw.value(), "mark")?,
                None => Mark::default(),
            };
            if mark.boot != boot {
                mark = Mark {
                    boot: boot.to_owned(),
                    seq: 0,
                };
            }
            let mut next = entries.last()?.map_or(1, |(k, _)| k.value() + 1);
            let mut push = |entry: Entry| -> Result<(), LogsError> {
                entries.insert(entry.n, encode(&entry, "entry")?.as_slice())?;
                Ok(())
            };
            // Events between the mark and the oldest the front-end still had are gone.
            if oldest > mark.seq + 1 {
                push(Entry {
                    n: next,
                    member: member.to_owned(),
                    boot: boot.to_owned(),
                    gap: Some((mark.seq + 1, oldest - 1)),
                    event: None,
                })?;
                next += 1;
                mark.seq = oldest - 1;
            }
            let mut stored = 0;
            let from = mark.seq;
            for e in events.iter().filter(|e| e.seq > from) {
                push(Entry {
                    n: next,
                    member: member.to_owned(),
                    boot: boot.to_owned(),
                    gap: None,
                    event: Some(e.clone()),
                })?;
                next += 1;
                mark.seq = e.seq;
                stored += 1;
            }
            marks.insert(member, encode(&mark, "mark")?.as_slice())?;
            // Bounded: the oldest entries go.
            let len = entries.len()?;
            if len > KEEP {
                let cut = next.saturating_sub(KEEP);
                entries.retain_in(..cut, |_, _| false)?;
            }
            stored
        };
        txn.commit()?;
        Ok(stored)
    }

    /// Entries after arrival number `after`, of `member` (all when `None`), whose event is
    /// at or after `since_ms`, at most `limit`, in time order (member and sequence number
    /// breaking ties); with the highest arrival number seen.
    pub fn query(
        &self,
        after: u64,
        member: Option<&str>,
        since_ms: u64,
        limit: usize,
    ) -> Result<(Vec<Entry>, u64), LogsError> {
        self.query_session(after, member, since_ms, limit, None)
    }

    /// [`Logs::query`], of one mail session's events only when `session` is given.
    pub fn query_session(
        &self,
        after: u64,
        member: Option<&str>,
        since_ms: u64,
        limit: usize,
        session: Option<&str>,
    ) -> Result<(Vec<Entry>, u64), LogsError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        let mut last = after;
        for row in entries.range(after + 1..)? {
            let (k, v) = row?;
            last = k.value();
            let e: Entry = decode(v.value(), "entry")?;
            let time = e.event.as_ref().map_or(u64::MAX, |ev| ev.time_ms);
            if member.is_some_and(|m| m != e.member) || (time != u64::MAX && time < since_ms) {
                continue;
            }
            if session.is_some() && e.event.as_ref().and_then(|ev| ev.kind.session()) != session {
                continue;
            }
            out.push(e);
        }
        out.sort_by(|a, b| {
            let key = |e: &Entry| {
                (
                    e.event.as_ref().map_or(0, |ev| ev.time_ms),
                    e.member.clone(),
                    e.event.as_ref().map_or(0, |ev| ev.seq),
                )
            };
            key(a).cmp(&key(b))
        });
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok((out, last))
    }
}

impl Logs {
    /// Every stored entry `keep` accepts, oldest first, at most `limit` (the newest).
    /// A scan of the whole file: for `cluster trace`, an operator's occasional question.
    pub fn scan(
        &self,
        keep: impl Fn(&Entry) -> bool,
        limit: usize,
    ) -> Result<Vec<Entry>, LogsError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut out = std::collections::VecDeque::new();
        for row in entries.iter()? {
            let (_, v) = row?;
            let e: Entry = decode(v.value(), "entry")?;
            if keep(&e) {
                if out.len() == limit {
                    out.pop_front();
                }
                out.push_back(e);
            }
        }
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{Events, Kind},
        manager::testing::TestDir,
    };

    fn events(n: usize) -> Vec<Event> {
        let ev = Events::new("fe1", None);
        (0..n)
            .map(|i| {
                ev.emit(Kind::ReloadApplied {
                    version: format!("v{i}"),
                    summary: String::new(),
                })
            })
            .collect()
    }

    fn seqs(entries: &[Entry]) -> Vec<u64> {
        entries
            .iter()
            .filter_map(|e| e.event.as_ref().map(|ev| ev.seq))
            .collect()
    }

    #[test]
    fn resent_events_are_stored_once_and_resume_at_the_mark() {
        let dir = TestDir::new("logs-once");
        let logs = Logs::open(&dir.join("logs.redb")).unwrap();
        let all = events(10);
        assert_eq!(logs.store("fe1", "b1", 1, &all[..4]).unwrap(), 4);
        // Cut off: the member sends again from before what the manager has.
        assert_eq!(logs.store("fe1", "b1", 1, &all[2..7]).unwrap(), 3);
        assert_eq!(
            logs.mark("fe1").unwrap(),
            Mark {
                boot: "b1".into(),
                seq: 7
            }
        );
        assert_eq!(logs.store("fe1", "b1", 1, &all[7..]).unwrap(), 3);
        let (got, last) = logs.query(0, None, 0, 100).unwrap();
        assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
        assert_eq!(last, 10);
        assert!(got.iter().all(|e| e.gap.is_none()));
        // Following: nothing new after the last arrival.
        assert!(logs.query(last, None, 0, 100).unwrap().0.is_empty());
    }

    #[test]
    fn a_new_run_starts_again_and_a_hole_is_recorded() {
        let dir = TestDir::new("logs-gap");
        let logs = Logs::open(&dir.join("logs.redb")).unwrap();
        let all = events(10);
        logs.store("fe1", "b1", 1, &all[..3]).unwrap();
        // The front-end dropped 4..=6 before the member asked.
        logs.store("fe1", "b1", 7, &all[6..8]).unwrap();
        let (got, _) = logs.query(0, None, 0, 100).unwrap();
        let gaps: Vec<(u64, u64)> = got.iter().filter_map(|e| e.gap).collect();
        assert_eq!(gaps, [(4, 6)]);
        // A restarted front-end numbers from 1 again.
        let again = events(2);
        assert_eq!(logs.store("fe1", "b2", 1, &again).unwrap(), 2);
        assert_eq!(
            logs.mark("fe1").unwrap(),
            Mark {
                boot: "b2".into(),
                seq: 2
            }
        );
        // Filters.
        logs.store("fe2", "c1", 1, &events(1)).unwrap();
        let (fe2, _) = logs.query(0, Some("fe2"), 0, 100).unwrap();
        assert_eq!(fe2.len(), 1);
        let (none, _) = logs.query(0, None, u64::MAX - 1, 100).unwrap();
        assert!(
            logs.query_session(0, None, 0, 100, Some("s1"))
                .unwrap()
                .0
                .is_empty(),
            "no event of a session"
        );
        assert!(
            none.iter().all(|e| e.event.is_none()),
            "only the gap has no time"
        );
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;
    use crate::{
        events::{Events, Kind},
        manager::testing::TestDir,
    };

    #[test]
    fn a_session_filter_keeps_that_sessions_events_only() {
        let dir = TestDir::new("logs-session");
        let logs = Logs::open(&dir.join("logs.redb")).unwrap();
        let ev = Events::new("fe1", None);
        let refused = |s: &str| Kind::SessionRefused {
            session: s.into(),
            client: "198.18.0.9:1000".into(),
            service: "smtp".into(),
            reason: "deflected".into(),
        };
        let all = vec![
            ev.emit(refused("s1")),
            ev.emit(Kind::ManagerReachable),
            ev.emit(refused("s2")),
            ev.emit(refused("s1")),
        ];
        logs.store("fe1", "b1", 1, &all).unwrap();
        let (got, _) = logs.query_session(0, None, 0, 100, Some("s1")).unwrap();
        let seqs: Vec<u64> = got
            .iter()
            .filter_map(|e| e.event.as_ref())
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 4]);
        assert_eq!(
            logs.query_session(0, None, 0, 100, None).unwrap().0.len(),
            4
        );
        let found = logs
            .scan(
                |e| e.event.as_ref().and_then(|ev| ev.kind.session()) == Some("s2"),
                10,
            )
            .unwrap();
        assert_eq!(found.len(), 1);
    }
}
