//! The journal of cluster configuration versions: append-only, in one redb file.
//!
//! Every change is one write transaction, fsync'd at commit (redb's default durability),
//! so after a crash at any point a version is either wholly there (record and text) or
//! absent. Versions are numbered 1, 2, ... and never rewritten or deleted: a rollback and
//! the revert of an unconfirmed commit are new versions carrying an older text.
//!
//! Two operators cannot overwrite each other: a commit names the version it was based on
//! and is refused unless that is still the head. The check and the write happen in the
//! same write transaction, which redb runs one at a time.
//!
//! A confirmed commit carries a deadline; until it is confirmed, [`Journal::expire`]
//! (called by the daemon's timer) puts the version before it back once the deadline has
//! passed, so a change that cut the operator off undoes itself.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    render::{self, RenderError},
    store::{StoreError, decode, encode, from_redb, now},
};
use crate::config::{Config, ConfigError, diff};

/// Version number -> [`VersionInfo`] as JSON. Kept apart from the texts so that the log
/// reads no configuration text.
const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("versions");
/// Version number -> the full configuration text.
const TEXTS: TableDefinition<u64, &str> = TableDefinition::new("texts");
/// Version number -> [`Confirmation`] as JSON, for confirmed commits that were confirmed.
const CONFIRMATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("confirmations");
/// Journal-wide state; one key, [`PENDING_KEY`], while a commit awaits confirmation.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const PENDING_KEY: &str = "pending";

/// The author of the version an expired confirmation puts back.
pub const TIMEOUT_AUTHOR: &str = "manager (confirm timeout)";

/// One version, without its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub number: u64,
    /// Who committed it (later the subject of the operator's certificate).
    pub author: String,
    /// Unix seconds.
    pub time: u64,
    pub comment: String,
    /// The head it was committed on; 0 for the first version.
    pub based_on: u64,
    /// What changed against `based_on`, in one line (`config::diff::summary`).
    pub summary: String,
    /// The deadline (unix seconds) of a confirmed commit.
    pub confirm_by: Option<u64>,
}

/// One version with its configuration text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub info: VersionInfo,
    pub text: String,
}

/// The commit awaiting confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: u64,
    /// Unix seconds; from then on [`Journal::expire`] reverts.
    pub deadline: u64,
    /// The version put back on expiry: the head before the first of a run of confirmed
    /// commits, so that a second confirmed commit on an unconfirmed one does not make
    /// the unconfirmed one the fallback.
    pub revert_to: u64,
}

/// Who confirmed a confirmed commit, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub author: String,
    pub time: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("configuration refused: {0}")]
    Invalid(#[from] ConfigError),
    #[error("configuration refused: {0}")]
    Refused(#[from] RenderError),
    #[error(
        "commit based on version {base}, but the head is version {head}: merge the changes since and commit on version {head}"
    )]
    Stale { base: u64, head: u64 },
    #[error("no version {0}")]
    NoSuchVersion(u64),
    #[error("no commit awaits confirmation")]
    NothingPending,
    #[error("the first version cannot be a confirmed commit: there is no version to go back to")]
    NothingToRevertTo,
    #[error("journal {0}")]
    Store(#[from] StoreError),
}

from_redb!(JournalError);

/// What a journal's texts are, and so how they are validated and compared.
#[derive(Debug, Clone)]
pub enum Texts {
    /// One front-end's configuration, validated as if it were this file: relative paths in
    /// it (certificates, keys, routing maps) resolve against its folder, and errors name it.
    Single(PathBuf),
    /// A cluster configuration ([`render`]): every member's rendering is validated as the
    /// file `NAME.toml` in this folder.
    Cluster(PathBuf),
}

/// The journal, open on its file.
pub struct Journal {
    db: Database,
    texts: Texts,
}

impl Journal {
    /// Opens the journal at `path`, creating it if absent. Texts are validated as if they
    /// were the file `config_file`.
    pub fn open(path: &Path, config_file: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(path, Texts::Single(config_file.to_owned()))
    }

    /// Opens the journal of a cluster's configurations at `path`, creating it if absent.
    pub fn open_cluster(path: &Path, dir: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(path, Texts::Cluster(dir.to_owned()))
    }

    fn open_with(path: &Path, texts: Texts) -> Result<Journal, JournalError> {
        let db = Database::create(path)?;
        // Every table exists from the start, so that readers never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(VERSIONS)?;
        txn.open_table(TEXTS)?;
        txn.open_table(CONFIRMATIONS)?;
        txn.open_table(STATE)?;
        txn.commit()?;
        Ok(Journal { db, texts })
    }

    /// Validates `text`: each member's configuration (one, unnamed, for a single front-end).
    pub fn validate(&self, text: &str) -> Result<Vec<(String, Config)>, JournalError> {
        Ok(match &self.texts {
            Texts::Single(file) => vec![(String::new(), Config::parse(file, text)?)],
            Texts::Cluster(dir) => render::check(text, dir)?
                .into_iter()
                .map(|r| (r.member, r.config))
                .collect(),
        })
    }

    /// Commits `text` as the next version, if `base` is still the head (0 on an empty
    /// journal). With `confirm_by`, the version must be confirmed by then or
    /// [`Journal::expire`] reverts it; without, it confirms a commit awaiting confirmation.
    pub fn commit(
        &self,
        base: u64,
        text: &str,
        author: &str,
        comment: &str,
        confirm_by: Option<u64>,
    ) -> Result<VersionInfo, JournalError> {
        let txn = self.db.begin_write()?;
        let info = self.append(&txn, base, text, author, comment, now(), confirm_by)?;
        txn.commit()?;
        Ok(info)
    }

    /// Commits version `to`'s text again as a new version on the head.
    pub fn rollback(&self, to: u64, author: &str) -> Result<VersionInfo, JournalError> {
        let txn = self.db.begin_write()?;
        let text = text_of(&txn.open_table(TEXTS)?, to)?;
        let head = head_number(&txn.open_table(VERSIONS)?)?;
        let comment = format!("rollback to version {to}");
        let info = self.append(&txn, head, &text, author, &comment, now(), None)?;
        txn.commit()?;
        Ok(info)
    }

    /// Confirms the commit awaiting confirmation; returns its number.
    pub fn confirm(&self, author: &str) -> Result<u64, JournalError> {
        let txn = self.db.begin_write()?;
        let pending = take_pending(&txn)?.ok_or(JournalError::NothingPending)?;
        let confirmation = Confirmation {
            author: author.to_owned(),
            time: now(),
        };
        txn.open_table(CONFIRMATIONS)?.insert(
            pending.version,
            encode(&confirmation, "confirmation")?.as_slice(),
        )?;
        txn.commit()?;
        Ok(pending.version)
    }

    /// When the commit awaiting confirmation has passed its deadline at `now`, commits the
    /// version before it again, as [`TIMEOUT_AUTHOR`], and returns that new version;
    /// otherwise does nothing.
    pub fn expire(&self, now: u64) -> Result<Option<VersionInfo>, JournalError> {
        let txn = self.db.begin_write()?;
        let pending = match take_pending(&txn)? {
            Some(p) if now >= p.deadline => p,
            // Dropping the transaction aborts it: the pending entry stays.
            _ => return Ok(None),
        };
        let text = text_of(&txn.open_table(TEXTS)?, pending.revert_to)?;
        let head = head_number(&txn.open_table(VERSIONS)?)?;
        let comment = format!(
            "version {} not confirmed by {}: version {} again",
            pending.version, pending.deadline, pending.revert_to
        );
        let info = self.append(&txn, head, &text, TIMEOUT_AUTHOR, &comment, now, None)?;
        txn.commit()?;
        Ok(Some(info))
    }

    /// The commit awaiting confirmation, if any.
    pub fn pending(&self) -> Result<Option<Pending>, JournalError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let Some(raw) = state.get(PENDING_KEY)? else {
            return Ok(None);
        };
        Ok(Some(decode(raw.value(), "pending")?))
    }

    /// Who confirmed version `n`, if it was a confirmed commit and was confirmed.
    pub fn confirmation(&self, n: u64) -> Result<Option<Confirmation>, JournalError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONFIRMATIONS)?;
        let Some(raw) = table.get(n)? else {
            return Ok(None);
        };
        Ok(Some(decode(raw.value(), &format!("confirmation {n}"))?))
    }

    /// The newest version, without its text; `None` on an empty journal.
    pub fn head(&self) -> Result<Option<VersionInfo>, JournalError> {
        let txn = self.db.begin_read()?;
        let versions = txn.open_table(VERSIONS)?;
        match versions.last()? {
            Some((k, v)) => Ok(Some(decode(v.value(), &format!("version {}", k.value()))?)),
            None => Ok(None),
        }
    }

    /// Version `n` with its text.
    pub fn get(&self, n: u64) -> Result<Version, JournalError> {
        let txn = self.db.begin_read()?;
        let versions = txn.open_table(VERSIONS)?;
        let raw = versions.get(n)?.ok_or(JournalError::NoSuchVersion(n))?;
        let info = decode(raw.value(), &format!("version {n}"))?;
        let text = text_of(&txn.open_table(TEXTS)?, n)?;
        Ok(Version { info, text })
    }

    /// The newest `limit` versions, newest first, without their texts.
    pub fn log(&self, limit: usize) -> Result<Vec<VersionInfo>, JournalError> {
        let txn = self.db.begin_read()?;
        let versions = txn.open_table(VERSIONS)?;
        let mut out = Vec::new();
        for entry in versions.iter()?.rev().take(limit) {
            let (k, v) = entry?;
            out.push(decode(v.value(), &format!("version {}", k.value()))?);
        }
        Ok(out)
    }

    /// What changes from version `a` to version `b`, one line each.
    pub fn diff(&self, a: u64, b: u64) -> Result<Vec<String>, JournalError> {
        let old = self.validate(&self.get(a)?.text)?;
        let new = self.validate(&self.get(b)?.text)?;
        Ok(member_changes(&old, &new))
    }

    /// Appends a version inside `txn`, after the checks; the caller commits.
    #[expect(
        clippy::too_many_arguments,
        reason = "one private helper behind commit, rollback and expire"
    )]
    fn append(
        &self,
        txn: &WriteTransaction,
        base: u64,
        text: &str,
        author: &str,
        comment: &str,
        time: u64,
        confirm_by: Option<u64>,
    ) -> Result<VersionInfo, JournalError> {
        let mut versions = txn.open_table(VERSIONS)?;
        let mut texts = txn.open_table(TEXTS)?;
        let head = head_number(&versions)?;
        if base != head {
            return Err(JournalError::Stale { base, head });
        }
        let new = self.validate(text)?;
        let summary = if head == 0 {
            "first version".to_owned()
        } else {
            // A parent that no longer validates (a file it names has gone) must not block
            // the commit that repairs it; the summary says why it has no diff.
            match self.validate(&text_of(&texts, head)?) {
                Ok(old) => summary(&member_changes(&old, &new)),
                Err(e) => format!("version {head} no longer validates ({e})"),
            }
        };
        let number = head + 1;
        let pending = take_pending(txn)?;
        if let Some(deadline) = confirm_by {
            if head == 0 {
                return Err(JournalError::NothingToRevertTo);
            }
            let next = Pending {
                version: number,
                deadline,
                revert_to: pending.map_or(head, |p| p.revert_to),
            };
            txn.open_table(STATE)?
                .insert(PENDING_KEY, encode(&next, "pending")?.as_slice())?;
        }
        // A plain commit on an unconfirmed one leaves the pending entry taken: the
        // operator is evidently still connected.
        let info = VersionInfo {
            number,
            author: author.to_owned(),
            time,
            comment: comment.to_owned(),
            based_on: head,
            summary,
            confirm_by,
        };
        versions.insert(number, encode(&info, "version")?.as_slice())?;
        texts.insert(number, text)?;
        Ok(info)
    }
}

/// The changes from `old` to `new`, one line each: those every member sees first, then
/// each member's own prefixed with its name, then members added and removed.
fn member_changes(old: &[(String, Config)], new: &[(String, Config)]) -> Vec<String> {
    let mut each: Vec<(&str, Vec<String>)> = Vec::new();
    let mut added = Vec::new();
    for (member, n) in new {
        match old.iter().find(|(m, _)| m == member) {
            Some((_, o)) => each.push((
                member,
                diff::changes(o, n).into_iter().map(|c| c.what).collect(),
            )),
            None => added.push(format!("member {member} added")),
        }
    }
    let common: Vec<String> = each.first().map_or_else(Vec::new, |(_, first)| {
        first
            .iter()
            .filter(|line| each.iter().all(|(_, lines)| lines.contains(line)))
            .cloned()
            .collect()
    });
    let mut out = common.clone();
    for (member, lines) in &each {
        out.extend(
            lines
                .iter()
                .filter(|l| !common.contains(l))
                .map(|l| format!("{member}: {l}")),
        );
    }
    out.extend(added);
    out.extend(
        old.iter()
            .filter(|(m, _)| !new.iter().any(|(n, _)| n == m))
            .map(|(m, _)| format!("member {m} removed")),
    );
    out
}

/// One line: "no change" or "N changes: a; b".
fn summary(lines: &[String]) -> String {
    match lines.len() {
        0 => "no change".to_owned(),
        1 => format!("1 change: {}", lines[0]),
        n => format!("{n} changes: {}", lines.join("; ")),
    }
}

fn head_number(versions: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, JournalError> {
    Ok(versions.last()?.map_or(0, |(k, _)| k.value()))
}

fn text_of(texts: &impl ReadableTable<u64, &'static str>, n: u64) -> Result<String, JournalError> {
    let raw = texts.get(n)?.ok_or(JournalError::NoSuchVersion(n))?;
    Ok(raw.value().to_owned())
}

/// Removes and returns the pending entry inside `txn` (aborting `txn` keeps it).
fn take_pending(txn: &WriteTransaction) -> Result<Option<Pending>, JournalError> {
    let mut state = txn.open_table(STATE)?;
    let Some(raw) = state.remove(PENDING_KEY)? else {
        return Ok(None);
    };
    Ok(Some(decode(raw.value(), "pending")?))
}

#[cfg(test)]
mod tests;
