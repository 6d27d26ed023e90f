use std::path::PathBuf;

use super::*;
use crate::manager::testing::TestDir;

/// A folder for one test's trail, removed when dropped.
struct Dir(TestDir);

impl Dir {
    fn new(test: &str) -> Dir {
        Dir(TestDir::new(&format!("audit-{test}")))
    }

    fn db(&self) -> PathBuf {
        self.0.join("audit.redb")
    }

    fn open(&self) -> Audit {
        Audit::open(&self.db()).unwrap()
    }
}

/// A trail of `n` entries, closed again so that the test can open the file with redb.
fn trail(dir: &Dir, n: u64) -> Vec<Entry> {
    let audit = dir.open();
    (1..=n)
        .map(|i| {
            audit
                .append("operator alice", "commit", &format!("version {i}"), "ok")
                .unwrap()
        })
        .collect()
}

/// Edits the stored trail behind the `Audit`'s back, as someone with the file would.
fn tamper(dir: &Dir, edit: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(dir.db()).unwrap();
    let txn = db.begin_write().unwrap();
    edit(&txn);
    txn.commit().unwrap();
}

fn read_entry(txn: &redb::WriteTransaction, seq: u64) -> Entry {
    let table = txn.open_table(ENTRIES).unwrap();
    let raw = table.get(seq).unwrap().unwrap();
    serde_json::from_slice(raw.value()).unwrap()
}

fn write_entry(txn: &redb::WriteTransaction, e: &Entry) {
    txn.open_table(ENTRIES)
        .unwrap()
        .insert(e.seq, serde_json::to_vec(e).unwrap().as_slice())
        .unwrap();
}

fn remove_entry(txn: &redb::WriteTransaction, seq: u64) {
    txn.open_table(ENTRIES).unwrap().remove(seq).unwrap();
}

fn expect_broken(audit: &Audit, seq: u64, reason: &str) {
    match audit.verify() {
        Err(AuditError::Broken { seq: s, reason: r }) => {
            assert_eq!(s, seq, "{r}");
            assert!(r.contains(reason), "{r:?} should say {reason:?}");
        }
        other => panic!("expected a broken chain at {seq}, got {other:?}"),
    }
}

#[test]
fn append_list_and_verify() {
    let dir = Dir::new("append");
    let audit = dir.open();
    assert_eq!(
        audit.verify().unwrap(),
        Verified {
            entries: 0,
            head: GENESIS.to_owned()
        }
    );
    let e1 = audit
        .append("operator alice", "commit", "version 1", "ok")
        .unwrap();
    let e2 = audit
        .append(
            "operator bob",
            "refused commit",
            "based on 0, head 1",
            "stale",
        )
        .unwrap();
    let e3 = audit
        .append("member fe1", "drain backend", "mx1", "ok")
        .unwrap();
    assert_eq!((e1.seq, e2.seq, e3.seq), (1, 2, 3));
    assert_eq!(e1.prev, GENESIS);
    assert_eq!(e2.prev, e1.hash);
    assert_eq!(e3.prev, e2.hash);
    assert_eq!(e2.who, "operator bob");
    assert_eq!(e2.result, "stale");
    assert_eq!(e1.hash.len(), 64);

    assert_eq!(
        audit.list(0, 10).unwrap(),
        [e1.clone(), e2.clone(), e3.clone()]
    );
    assert_eq!(audit.list(2, 10).unwrap(), [e2.clone(), e3.clone()]);
    assert_eq!(audit.list(1, 1).unwrap(), std::slice::from_ref(&e1));
    assert_eq!(audit.list(4, 10).unwrap(), []);

    assert_eq!(
        audit.verify().unwrap(),
        Verified {
            entries: 3,
            head: e3.hash.clone()
        }
    );
}

/// The hash is the documented bytes, built here by hand, so that another tool can
/// re-check it.
#[test]
fn hash_is_the_documented_canonical_bytes() {
    let dir = Dir::new("canonical");
    let audit = dir.open();
    let e = audit
        .append_at(1_700_000_000, "manager", "confirm", "version 7", "ok")
        .unwrap();
    let mut bytes = Vec::new();
    let lp = |bytes: &mut Vec<u8>, s: &str| {
        bytes.extend_from_slice(&(s.len() as u64).to_be_bytes());
        bytes.extend_from_slice(s.as_bytes());
    };
    lp(&mut bytes, GENESIS);
    bytes.extend_from_slice(&1u64.to_be_bytes());
    bytes.extend_from_slice(&1_700_000_000u64.to_be_bytes());
    for s in ["manager", "confirm", "version 7", "ok"] {
        lp(&mut bytes, s);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    assert_eq!(e.hash, hex(digest.as_ref()));

    // Moving a byte from one field into the next changes the hash.
    let shifted = Entry {
        who: "manage".to_owned(),
        action: "rconfirm".to_owned(),
        ..e.clone()
    };
    assert_ne!(shifted.compute_hash(), e.hash);
}

#[test]
fn edited_entry_is_found_with_its_seq() {
    let dir = Dir::new("edited");
    trail(&dir, 5);
    tamper(&dir, |txn| {
        let mut e = read_entry(txn, 3);
        e.what = "version 99".to_owned();
        write_entry(txn, &e);
    });
    let audit = dir.open();
    expect_broken(&audit, 3, "entry 3 was edited (hash mismatch)");
    // The record reads as edited: only verify says it cannot be trusted.
    assert_eq!(audit.list(3, 1).unwrap()[0].what, "version 99");
}

#[test]
fn edited_entry_with_its_hash_recomputed_breaks_the_chain() {
    let dir = Dir::new("rehashed");
    trail(&dir, 5);
    tamper(&dir, |txn| {
        let mut e = read_entry(txn, 3);
        e.result = "ok".to_owned();
        e.what = "version 99".to_owned();
        e.hash = e.compute_hash();
        write_entry(txn, &e);
    });
    expect_broken(
        &dir.open(),
        4,
        "entry 4 does not follow entry 3 (chain broken)",
    );
}

#[test]
fn removed_middle_entry_is_found() {
    let dir = Dir::new("middle");
    trail(&dir, 5);
    tamper(&dir, |txn| remove_entry(txn, 3));
    expect_broken(&dir.open(), 3, "entry 3 missing");
}

#[test]
fn inserted_entry_is_found() {
    let dir = Dir::new("inserted");
    trail(&dir, 3);
    // An entry slipped in as 2, the old 2 and 3 renumbered 3 and 4: every record is
    // self-consistent, but the old 3 no longer follows the new one.
    tamper(&dir, |txn| {
        let old2 = read_entry(txn, 2);
        let old3 = read_entry(txn, 3);
        let mut fake = Entry {
            seq: 2,
            what: "version 42".to_owned(),
            ..old2.clone()
        };
        fake.hash = fake.compute_hash();
        let mut moved2 = Entry { seq: 3, ..old2 };
        moved2.hash = moved2.compute_hash();
        let mut moved3 = Entry { seq: 4, ..old3 };
        moved3.hash = moved3.compute_hash();
        for e in [&fake, &moved2, &moved3] {
            write_entry(txn, e);
        }
    });
    expect_broken(
        &dir.open(),
        3,
        "entry 3 does not follow entry 2 (chain broken)",
    );
}

#[test]
fn removed_newest_entry_is_found() {
    let dir = Dir::new("newest");
    trail(&dir, 5);
    tamper(&dir, |txn| remove_entry(txn, 5));
    let audit = dir.open();
    expect_broken(&audit, 5, "entry 5 missing");
    // Appending does not heal the gap.
    let e = audit
        .append("manager", "commit", "version 6", "ok")
        .unwrap();
    assert_eq!(e.seq, 6);
    expect_broken(&audit, 5, "entry 5 missing");
}

#[test]
fn removed_newest_entries_with_the_head_rewritten_consistently_change_the_head() {
    // The documented limit: a consistent rewrite passes verify, and only a head
    // exported before shows it.
    let dir = Dir::new("rewrite");
    let entries = trail(&dir, 5);
    let exported = dir.open().verify().unwrap().head;
    assert_eq!(exported, entries[4].hash);
    tamper(&dir, |txn| {
        remove_entry(txn, 5);
        let head = Head {
            seq: 4,
            hash: entries[3].hash.clone(),
        };
        txn.open_table(STATE)
            .unwrap()
            .insert(HEAD_KEY, serde_json::to_vec(&head).unwrap().as_slice())
            .unwrap();
    });
    let v = dir.open().verify().unwrap();
    assert_eq!(v.entries, 4);
    assert_ne!(v.head, exported, "the exported head is gone from the trail");
}

#[test]
fn entry_added_past_the_head_is_found() {
    let dir = Dir::new("past");
    let entries = trail(&dir, 2);
    tamper(&dir, |txn| {
        let mut extra = Entry {
            seq: 3,
            prev: entries[1].hash.clone(),
            ..entries[1].clone()
        };
        extra.hash = extra.compute_hash();
        write_entry(txn, &extra);
    });
    expect_broken(&dir.open(), 3, "entry 3 is past the head");
}

#[test]
fn reopen_keeps_the_chain() {
    let dir = Dir::new("reopen");
    let first = trail(&dir, 2);
    let audit = dir.open();
    assert_eq!(audit.verify().unwrap().entries, 2);
    let e3 = audit
        .append("manager", "rollback", "to version 1", "ok")
        .unwrap();
    assert_eq!(e3.seq, 3);
    assert_eq!(e3.prev, first[1].hash);
    drop(audit);
    let audit = dir.open();
    assert_eq!(
        audit.verify().unwrap(),
        Verified {
            entries: 3,
            head: e3.hash.clone()
        }
    );
    assert_eq!(audit.list(0, 10).unwrap()[..2], first[..]);
}
