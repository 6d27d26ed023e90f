//! The members' statistics at the manager, in one redb file: each member's minutes (see
//! `crate::stats` for a minute's JSON), keyed by member and unix minute.
//!
//! A member that (re)connects is told the last minute stored for it and ships the minutes
//! after it; a minute already stored is not stored again. Minutes older than the days kept
//! (`robustifier manager --stats-days`, default 7) are dropped as new ones arrive.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::store::{StoreError, decode, encode, from_redb};
use crate::stats::Minute;

/// (member, unix minute) -> [`Minute`] as JSON.
const MINUTES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("minutes");

/// Days kept unless the manager is told otherwise.
pub const DEFAULT_DAYS: u64 = 7;
/// The JSON of the minutes one operator request returns at most: its reply stays well under
/// the protocol's line bound, and the operator asks again after the last minute for more.
pub const MAX_REPLY_BYTES: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("statistics {0}")]
    Store(#[from] StoreError),
}

from_redb!(StatsError);

pub struct StatsStore {
    db: Database,
}

impl StatsStore {
    pub fn open(path: &Path) -> Result<StatsStore, StatsError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(MINUTES)?;
        txn.commit()?;
        Ok(StatsStore { db })
    }

    /// The last minute stored for `member` (0: none).
    pub fn mark(&self, member: &str) -> Result<u64, StatsError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MINUTES)?;
        let last = t.range((member, 0)..=(member, u64::MAX))?.next_back();
        Ok(match last {
            Some(row) => row?.0.value().1,
            None => 0,
        })
    }

    /// Stores `member`'s minutes after its mark (as that member's, whatever name they
    /// carry), and drops its minutes before unix minute `keep_from`. Returns how many were
    /// new.
    pub fn store(
        &self,
        member: &str,
        minutes: &[Minute],
        keep_from: u64,
    ) -> Result<usize, StatsError> {
        let mark = self.mark(member)?;
        let txn = self.db.begin_write()?;
        let stored = {
            let mut t = txn.open_table(MINUTES)?;
            let mut stored = 0;
            for m in minutes
                .iter()
                .filter(|m| m.minute > mark && m.minute >= keep_from)
            {
                let m = Minute {
                    member: member.to_owned(),
                    ..m.clone()
                };
                t.insert((member, m.minute), encode(&m, "minute")?.as_slice())?;
                stored += 1;
            }
            t.retain_in((member, 0)..(member, keep_from), |_, _| false)?;
            stored
        };
        txn.commit()?;
        Ok(stored)
    }

    /// The minutes after `since` (all when `None`) of `member` (all when `None`), in time
    /// order then by member: the oldest, up to [`MAX_REPLY_BYTES`] of them and only whole
    /// minutes (every member's), so that asking again after the last one misses nothing.
    pub fn query(
        &self,
        member: Option<&str>,
        since: Option<u64>,
    ) -> Result<Vec<Minute>, StatsError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(MINUTES)?;
        let from = since.map_or(0, |s| s.saturating_add(1));
        let mut all: Vec<(Minute, usize)> = Vec::new();
        let rows: Box<dyn Iterator<Item = _>> = match member {
            Some(m) => Box::new(t.range((m, from)..=(m, u64::MAX))?),
            None => Box::new(t.iter()?),
        };
        for row in rows {
            let (k, v) = row?;
            if k.value().1 < from {
                continue;
            }
            let raw = v.value();
            all.push((decode::<Minute>(raw, "minute")?, raw.len()));
        }
        all.sort_by(|a, b| (a.0.minute, &a.0.member).cmp(&(b.0.minute, &b.0.member)));
        let mut size = 0;
        let mut cut = all.len();
        for (i, (m, len)) in all.iter().enumerate() {
            size += len;
            if size > MAX_REPLY_BYTES {
                // Back to the start of this minute, unless it is the first one.
                let first = all[0].0.minute;
                cut = if m.minute == first {
                    i.max(1)
                } else {
                    all.iter()
                        .position(|(x, _)| x.minute == m.minute)
                        .unwrap_or(i)
                };
                break;
            }
        }
        all.truncate(cut);
        Ok(all.into_iter().map(|(m, _)| m).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{manager::testing::TestDir, stats::Totals};

    fn minute(n: u64, sessions: u64) -> Minute {
        let mut m = Minute {
            member: "whatever".into(),
            minute: n,
            ..Minute::default()
        };
        m.services.insert(
            "smtp".into(),
            Totals {
                sessions,
                ..Totals::default()
            },
        );
        m
    }

    #[test]
    fn minutes_are_stored_once_resumed_by_the_mark_and_dropped_when_old() {
        let dir = TestDir::new("stats-once");
        let s = StatsStore::open(&dir.join("stats.redb")).unwrap();
        assert_eq!(s.mark("fe1").unwrap(), 0);
        let all: Vec<Minute> = (100..110).map(|n| minute(n, n)).collect();
        assert_eq!(s.store("fe1", &all[..4], 0).unwrap(), 4);
        assert_eq!(s.mark("fe1").unwrap(), 103);
        // Shipped again from before the mark: only the new ones count.
        assert_eq!(s.store("fe1", &all[2..6], 0).unwrap(), 2);
        s.store("fe2", &all[..1], 0).unwrap();
        let got = s.query(None, None).unwrap();
        assert_eq!(got.len(), 7);
        assert_eq!(got[0].minute, 100);
        assert_eq!(
            (got[0].member.as_str(), got[1].member.as_str()),
            ("fe1", "fe2"),
            "stored under the member's name, in time order"
        );
        let fe1: Vec<u64> = s
            .query(Some("fe1"), Some(103))
            .unwrap()
            .iter()
            .map(|m| m.minute)
            .collect();
        assert_eq!(fe1, [104, 105]);
        // Keeping from minute 105 on drops the older ones of that member.
        assert_eq!(s.store("fe1", &all[6..], 105).unwrap(), 4);
        let fe1: Vec<u64> = s
            .query(Some("fe1"), None)
            .unwrap()
            .iter()
            .map(|m| m.minute)
            .collect();
        assert_eq!(fe1, [105, 106, 107, 108, 109]);
        assert_eq!(s.query(Some("fe2"), None).unwrap().len(), 1);
    }
}
