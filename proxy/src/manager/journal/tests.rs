use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use super::*;
use crate::manager::testing::{TestDir, cluster as cluster_text, single as text};

/// A folder for one test's journal, removed when dropped.
struct Dir(TestDir);

impl Dir {
    fn new(test: &str) -> Dir {
        Dir(TestDir::new(&format!("journal-{test}")))
    }

    fn db(&self) -> PathBuf {
        self.0.join("journal.redb")
    }

    fn config_file(&self) -> PathBuf {
        self.0.join("robustifier.toml")
    }

    fn open(&self) -> Journal {
        Journal::open(&self.db(), &self.config_file()).unwrap()
    }
}

#[test]
fn commit_log_get() {
    let dir = Dir::new("commit");
    let j = dir.open();
    assert_eq!(j.head().unwrap(), None);
    let v1 = j.commit(0, &text(100), "alice", "first", None).unwrap();
    assert_eq!((v1.number, v1.based_on), (1, 0));
    assert_eq!(v1.summary, "first version");
    let v2 = j.commit(1, &text(200), "bob", "more", None).unwrap();
    assert_eq!((v2.number, v2.based_on), (2, 1));
    assert_eq!(v2.author, "bob");
    assert!(v2.summary.starts_with("1 change: "), "{}", v2.summary);
    assert!(v2.summary.contains("100 -> 200"), "{}", v2.summary);

    assert_eq!(j.head().unwrap(), Some(v2.clone()));
    let log = j.log(10).unwrap();
    assert_eq!(log, [v2.clone(), v1.clone()], "newest first");
    assert_eq!(j.log(1).unwrap(), std::slice::from_ref(&v2));
    let got = j.get(1).unwrap();
    assert_eq!(got.info, v1);
    assert_eq!(got.text, text(100));
    assert!(matches!(j.get(3), Err(JournalError::NoSuchVersion(3))));
}

#[test]
fn stale_base_is_refused_and_nothing_written() {
    let dir = Dir::new("stale");
    let j = dir.open();
    j.commit(0, &text(100), "alice", "first", None).unwrap();
    j.commit(1, &text(200), "alice", "second", None).unwrap();
    // Bob edited version 1 while Alice committed version 2.
    match j.commit(1, &text(300), "bob", "mine", None) {
        Err(JournalError::Stale { base: 1, head: 2 }) => {}
        other => panic!("expected a stale base, got {other:?}"),
    }
    assert_eq!(j.head().unwrap().unwrap().number, 2);
    assert_eq!(j.log(10).unwrap().len(), 2);
    assert_eq!(j.get(2).unwrap().text, text(200));
}

#[test]
fn invalid_text_is_refused_with_the_key() {
    let dir = Dir::new("invalid");
    let j = dir.open();
    j.commit(0, &text(100), "alice", "first", None).unwrap();
    let bad = text(100).replace("port = 25", "port = 0");
    match j.commit(1, &bad, "alice", "broken", None) {
        Err(JournalError::Invalid(e)) => {
            assert_eq!(e.file, dir.config_file());
            assert_eq!(e.key, "service[0].port", "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(j.head().unwrap().unwrap().number, 1, "nothing written");
}

#[test]
fn rollback_is_a_new_version_with_the_old_text() {
    let dir = Dir::new("rollback");
    let j = dir.open();
    j.commit(0, &text(100), "alice", "first", None).unwrap();
    j.commit(1, &text(200), "alice", "second", None).unwrap();
    let v3 = j.rollback(1, "bob").unwrap();
    assert_eq!((v3.number, v3.based_on), (3, 2));
    assert_eq!(v3.author, "bob");
    assert_eq!(v3.comment, "rollback to version 1");
    assert!(v3.summary.contains("200 -> 100"), "{}", v3.summary);
    assert_eq!(j.get(3).unwrap().text, j.get(1).unwrap().text);
    // The history is kept.
    assert_eq!(j.get(2).unwrap().text, text(200));
    assert!(matches!(
        j.rollback(9, "bob"),
        Err(JournalError::NoSuchVersion(9))
    ));
}

#[test]
fn confirm_keeps_a_confirmed_commit() {
    let dir = Dir::new("confirm");
    let j = dir.open();
    assert!(matches!(
        j.commit(0, &text(100), "alice", "first", Some(1000)),
        Err(JournalError::NothingToRevertTo)
    ));
    j.commit(0, &text(100), "alice", "first", None).unwrap();
    assert!(matches!(
        j.confirm("alice"),
        Err(JournalError::NothingPending)
    ));
    j.commit(1, &text(200), "alice", "try", Some(1000)).unwrap();
    assert_eq!(
        j.pending().unwrap(),
        Some(Pending {
            version: 2,
            deadline: 1000,
            revert_to: 1
        })
    );
    assert_eq!(j.confirm("alice").unwrap(), 2);
    assert_eq!(j.pending().unwrap(), None);
    assert_eq!(j.confirmation(2).unwrap().unwrap().author, "alice");
    assert_eq!(j.expire(5000).unwrap(), None, "a confirmed commit stays");
    assert_eq!(j.head().unwrap().unwrap().number, 2);
}

#[test]
fn expire_reverts_once_after_the_deadline() {
    let dir = Dir::new("expire");
    let j = dir.open();
    j.commit(0, &text(100), "alice", "first", None).unwrap();
    j.commit(1, &text(200), "alice", "try", Some(1000)).unwrap();
    assert_eq!(j.expire(999).unwrap(), None, "before the deadline");
    assert_eq!(j.head().unwrap().unwrap().number, 2);
    assert!(j.pending().unwrap().is_some());

    let v3 = j.expire(1000).unwrap().expect("the deadline has passed");
    assert_eq!((v3.number, v3.based_on), (3, 2));
    assert_eq!(v3.author, TIMEOUT_AUTHOR);
    assert_eq!(v3.time, 1000);
    assert_eq!(j.get(3).unwrap().text, text(100));
    assert_eq!(j.pending().unwrap(), None);

    assert_eq!(j.expire(2000).unwrap(), None, "reverts once");
    assert_eq!(j.head().unwrap().unwrap().number, 3);
    assert!(matches!(
        j.confirm("alice"),
        Err(JournalError::NothingPending)
    ));
}

#[test]
fn second_confirmed_commit_reverts_to_the_last_confirmed() {
    let dir = Dir::new("chain");
    let j = dir.open();
    j.commit(0, &text(100), "alice", "first", None).unwrap();
    j.commit(1, &text(200), "alice", "try", Some(1000)).unwrap();
    j.commit(2, &text(300), "alice", "try more", Some(2000))
        .unwrap();
    let p = j.pending().unwrap().unwrap();
    assert_eq!((p.version, p.deadline, p.revert_to), (3, 2000, 1));
    let v4 = j.expire(2000).unwrap().unwrap();
    assert_eq!(j.get(v4.number).unwrap().text, text(100));
}

#[test]
fn plain_commit_ends_a_pending_confirmation() {
    let dir = Dir::new("plain");
    let j = dir.open();
    j.commit(0, &text(100), "alice", "first", None).unwrap();
    j.commit(1, &text(200), "alice", "try", Some(1000)).unwrap();
    j.commit(2, &text(300), "alice", "keep going", None)
        .unwrap();
    assert_eq!(j.pending().unwrap(), None);
    assert_eq!(j.expire(5000).unwrap(), None);
    assert_eq!(j.head().unwrap().unwrap().number, 3);
}

#[test]
fn reopened_journal_has_everything() {
    let dir = Dir::new("reopen");
    {
        let j = dir.open();
        j.commit(0, &text(100), "alice", "first", None).unwrap();
        j.commit(1, &text(200), "bob", "second", None).unwrap();
        j.commit(2, &text(300), "bob", "try", Some(1000)).unwrap();
    }
    let j = dir.open();
    let log = j.log(10).unwrap();
    let numbers: Vec<u64> = log.iter().map(|v| v.number).collect();
    assert_eq!(numbers, [3, 2, 1]);
    assert_eq!(log[1].author, "bob");
    assert_eq!(j.get(2).unwrap().text, text(200));
    assert_eq!(j.pending().unwrap().unwrap().version, 3);
    j.commit(3, &text(400), "alice", "after the restart", None)
        .unwrap();
}

#[test]
fn diff_names_the_changed_key() {
    let dir = Dir::new("diff");
    let j = dir.open();
    j.commit(0, &text(100), "alice", "first", None).unwrap();
    j.commit(1, &text(200), "alice", "second", None).unwrap();
    let lines = j.diff(1, 2).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("max_connections"), "{lines:?}");
    assert!(lines[0].contains("100 -> 200"), "{lines:?}");
    assert!(j.diff(2, 2).unwrap().is_empty());
}

const CRASH_DB: &str = "ROBUSTIFIER_JOURNAL_CRASH_DB";

/// The child of `killed_mid_commit_leaves_a_consistent_journal`: commits version after
/// version on the journal the parent names, printing each number once its commit returned.
#[test]
#[ignore = "run by killed_mid_commit_leaves_a_consistent_journal as its child process"]
fn crash_child() {
    let db = PathBuf::from(std::env::var(CRASH_DB).unwrap());
    let j = Journal::open(&db, &db.with_file_name("robustifier.toml")).unwrap();
    loop {
        let head = j.head().unwrap().map_or(0, |v| v.number);
        let v = j
            .commit(head, &text(head + 1), "child", "crash loop", None)
            .unwrap();
        println!("committed {}", v.number);
    }
}

#[test]
fn killed_mid_commit_leaves_a_consistent_journal() {
    let dir = Dir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged = 0;
    for round in 0..8u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "manager::journal::tests::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DB, dir.db())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Let a different number of commits through each round, then kill the child
        // with SIGKILL wherever it is in the next one.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen <= round % 4 {
            let line = lines.next().expect("the child stopped early").unwrap();
            if let Some(n) = line.strip_prefix("committed ") {
                acknowledged = n.parse().unwrap();
                seen += 1;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();

        let j = dir.open();
        let head = j.head().unwrap().expect("acknowledged commits are kept");
        assert!(
            head.number == acknowledged || head.number == acknowledged + 1,
            "head {} after the child acknowledged {acknowledged}",
            head.number
        );
        let numbers: Vec<u64> = j
            .log(usize::MAX)
            .unwrap()
            .iter()
            .map(|v| v.number)
            .collect();
        let expected: Vec<u64> = (1..=head.number).rev().collect();
        assert_eq!(numbers, expected, "no gap, nothing half-written");
        for n in 1..=head.number {
            let v = j.get(n).unwrap();
            assert_eq!(v.info.based_on, n - 1);
            assert_eq!(v.text, text(n), "version {n}'s text");
        }
        acknowledged = head.number;
    }
    assert!(acknowledged >= 8);
}

#[test]
fn cluster_texts_are_checked_per_member_and_diffed_with_their_names() {
    let dir = Dir::new("cluster");
    let j = Journal::open_cluster(&dir.db(), dir.0.path()).unwrap();
    j.commit(0, &cluster_text(10, "eth2"), "alice", "", None)
        .unwrap();
    // fe2's interface name is too long for it: refused for all, naming fe2.
    let err = j
        .commit(
            1,
            &cluster_text(10, "an-interface-name-too-long"),
            "alice",
            "",
            None,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("member fe2 refuses it")
            && err.to_string().contains("frontend.interface"),
        "{err}"
    );
    assert_eq!(j.head().unwrap().unwrap().number, 1, "nothing committed");

    let v2 = j
        .commit(1, &cluster_text(20, "eth3"), "alice", "", None)
        .unwrap();
    assert_eq!(
        j.diff(1, 2).unwrap(),
        [
            "service smtp: max_connections 10 -> 20".to_owned(),
            "fe2: frontend: interface eth2 -> eth3".to_owned()
        ],
        "a change every member sees once, a member's own with its name"
    );
    assert!(v2.summary.starts_with("2 changes: "), "{}", v2.summary);
    // A plain front-end configuration is no cluster configuration.
    let err = j.commit(2, &text(5), "alice", "", None).unwrap_err();
    assert!(err.to_string().contains("members"), "{err}");
}
