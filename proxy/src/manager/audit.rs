//! The manager's audit trail: who did what, when, with what result; append-only, in its
//! own redb file, each entry chained to the one before by SHA-256.
//!
//! Every append is one write transaction, fsync'd at commit (redb's default durability,
//! as the journal), so after a crash an entry is either wholly there or absent.
//!
//! # The chain
//!
//! Entries are numbered 1, 2, ... Each carries `prev`, the `hash` of the entry before
//! (64 `0`s for entry 1), and its own `hash`:
//!
//! ```text
//! hash = lowercase hex of SHA-256( lp(prev) || be64(seq) || be64(time)
//!                                  || lp(who) || lp(action) || lp(what) || lp(result) )
//! be64(n) = n as 8 bytes, big-endian
//! lp(s)   = be64(number of bytes of s) || the UTF-8 bytes of s   (prev as its 64 hex digits)
//! ```
//!
//! These bytes do not depend on how the record is stored (JSON, field order, escaping), so
//! an auditor can re-check an export of the trail with any SHA-256 tool. The length prefixes
//! keep one field's end from being moved into the next (`who = "a", action = "bc"` and
//! `who = "ab", action = "c"` hash differently).
//!
//! The newest entry's `(seq, hash)` is also kept in a second table, written in the same
//! transaction as the entry. [`Audit::verify`] walks every entry (each seq present, each
//! `prev` equal to the hash before, each hash recomputed) and compares the last one with
//! that head, so that an edited, removed or inserted entry, and newest entries dropped,
//! are all found.
//!
//! What the chain cannot find: someone with write access who rewrites the whole file
//! consistently (every hash after the change recomputed, the head too). The remedy is to
//! keep the head hash somewhere else: [`Audit::verify`] returns it for the manager to
//! print, and a head exported earlier must still be found in the trail later, with the
//! same seq.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::store::{StoreError, decode, encode, from_redb, now};

/// Seq -> [`Entry`] as JSON.
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// One key, [`HEAD_KEY`]: the newest entry's [`Head`] as JSON.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const HEAD_KEY: &str = "head";

/// The `prev` of entry 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// 1, 2, ...
    pub seq: u64,
    /// Unix seconds.
    pub time: u64,
    /// Who acted: "operator alice", "member fe1", "manager".
    pub who: String,
    /// What kind of action: "commit", "rollback", "confirm", "refused commit", "drain backend".
    pub action: String,
    /// Its details: version numbers, member, key and reason.
    pub what: String,
    /// "ok" or the error.
    pub result: String,
    /// The previous entry's `hash`; [`GENESIS`] for entry 1.
    pub prev: String,
    /// Lowercase hex SHA-256 over `prev` and the fields above (see the module doc).
    pub hash: String,
}

impl Entry {
    /// The hash this entry's fields and `prev` give, whatever its `hash` field says.
    pub fn compute_hash(&self) -> String {
        fn field(ctx: &mut ring::digest::Context, bytes: &[u8]) {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        field(&mut ctx, self.prev.as_bytes());
        ctx.update(&self.seq.to_be_bytes());
        ctx.update(&self.time.to_be_bytes());
        for s in [&self.who, &self.action, &self.what, &self.result] {
            field(&mut ctx, s.as_bytes());
        }
        hex(ctx.finish().as_ref())
    }
}

/// The newest entry, as recorded beside the entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// A trail that checked out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    /// How many entries it holds.
    pub entries: u64,
    /// The newest entry's hash ([`GENESIS`] when empty): export it to detect a later
    /// consistent rewrite.
    pub head: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The first problem [`Audit::verify`] found.
    #[error("audit trail broken: {reason}")]
    Broken { seq: u64, reason: String },
    #[error("audit {0}")]
    Store(#[from] StoreError),
}

from_redb!(AuditError);

/// The audit trail, open on its file.
pub struct Audit {
    db: Database,
}

impl Audit {
    /// Opens the trail at `path`, creating it if absent.
    pub fn open(path: &Path) -> Result<Audit, AuditError> {
        let db = Database::create(path)?;
        // Both tables exist from the start, so that readers never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(STATE)?;
        txn.commit()?;
        Ok(Audit { db })
    }

    /// Appends an entry stamped with the current time; returns it.
    pub fn append(
        &self,
        who: &str,
        action: &str,
        what: &str,
        result: &str,
    ) -> Result<Entry, AuditError> {
        self.append_at(now(), who, action, what, result)
    }

    fn append_at(
        &self,
        time: u64,
        who: &str,
        action: &str,
        what: &str,
        result: &str,
    ) -> Result<Entry, AuditError> {
        let txn = self.db.begin_write()?;
        let entry = {
            let mut state = txn.open_table(STATE)?;
            // The recorded head, not the last entry found: after a newest entry was
            // removed, the next one still follows the removed one, and verify keeps
            // reporting the gap instead of the chain healing over it.
            let head = match state.get(HEAD_KEY)? {
                Some(raw) => decode::<Head>(raw.value(), "head")?,
                None => Head {
                    seq: 0,
                    hash: GENESIS.to_owned(),
                },
            };
            let mut entry = Entry {
                seq: head.seq + 1,
                time,
                who: who.to_owned(),
                action: action.to_owned(),
                what: what.to_owned(),
                result: result.to_owned(),
                prev: head.hash,
                hash: String::new(),
            };
            entry.hash = entry.compute_hash();
            let next = Head {
                seq: entry.seq,
                hash: entry.hash.clone(),
            };
            txn.open_table(ENTRIES)?
                .insert(entry.seq, encode(&entry, "entry")?.as_slice())?;
            state.insert(HEAD_KEY, encode(&next, "head")?.as_slice())?;
            entry
        };
        txn.commit()?;
        Ok(entry)
    }

    /// Up to `limit` entries from seq `since_seq` on, oldest first. Reads records as
    /// stored; [`Audit::verify`] says whether they can be trusted.
    pub fn list(&self, since_seq: u64, limit: usize) -> Result<Vec<Entry>, AuditError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for item in entries.range(since_seq..)?.take(limit) {
            let (k, v) = item?;
            out.push(decode(v.value(), &format!("entry {}", k.value()))?);
        }
        Ok(out)
    }

    /// Walks the whole chain: every seq present, each `prev` the hash before, each hash
    /// recomputed, the last entry the recorded head. Returns the first problem found.
    pub fn verify(&self) -> Result<Verified, AuditError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut expected = 1u64;
        let mut prev = GENESIS.to_owned();
        for item in entries.iter()? {
            let (k, v) = item?;
            let seq = k.value();
            if seq != expected {
                return Err(broken(expected, format!("entry {expected} missing")));
            }
            let entry: Entry = match serde_json::from_slice(v.value()) {
                Ok(e) => e,
                Err(e) => {
                    return Err(broken(
                        seq,
                        format!("entry {seq} was edited (record unreadable: {e})"),
                    ));
                }
            };
            if entry.seq != seq {
                return Err(broken(
                    seq,
                    format!("entry {seq} was edited (it says it is entry {})", entry.seq),
                ));
            }
            if entry.compute_hash() != entry.hash {
                return Err(broken(
                    seq,
                    format!("entry {seq} was edited (hash mismatch)"),
                ));
            }
            if entry.prev != prev {
                let reason = if seq == 1 {
                    "entry 1 does not start the chain (chain broken)".to_owned()
                } else {
                    format!(
                        "entry {seq} does not follow entry {} (chain broken)",
                        seq - 1
                    )
                };
                return Err(broken(seq, reason));
            }
            prev = entry.hash;
            expected += 1;
        }
        let last = expected - 1;
        let state = txn.open_table(STATE)?;
        let head = match state.get(HEAD_KEY)? {
            Some(raw) => Some(decode::<Head>(raw.value(), "head")?),
            None => None,
        };
        match head {
            None if last == 0 => {}
            None => {
                return Err(broken(
                    1,
                    format!("the head record is missing, {last} entries found"),
                ));
            }
            Some(h) if h.seq > last => {
                return Err(broken(
                    last + 1,
                    format!(
                        "entry {} missing (the head is entry {}: newest entries removed)",
                        last + 1,
                        h.seq
                    ),
                ));
            }
            Some(h) if h.seq < last => {
                return Err(broken(
                    h.seq + 1,
                    format!(
                        "entry {} is past the head (entry {}): entries added outside the trail",
                        h.seq + 1,
                        h.seq
                    ),
                ));
            }
            Some(h) if h.hash != prev => {
                return Err(broken(
                    last,
                    format!("entry {last} is not the recorded head (hash mismatch)"),
                ));
            }
            Some(_) => {}
        }
        Ok(Verified {
            entries: last,
            head: prev,
        })
    }
}

fn broken(seq: u64, reason: String) -> AuditError {
    AuditError::Broken { seq, reason }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
