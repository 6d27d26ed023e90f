//! A member's session against the manager, over an in-memory stream (the TLS around it is
//! `tls`'s to test).

use tokio::io::{BufReader, DuplexStream, ReadHalf, WriteHalf};

use super::*;
use crate::manager::testing::{TestDir, cluster};
use crate::manager::wire::Action;

/// The cluster of fe1 and fe2 whose SMTP service admits `max` connections.
fn text(max: u32) -> String {
    cluster(u64::from(max), "eth2")
}

async fn commit(m: &Manager, base: u64, max: u32) -> u64 {
    let r = m
        .operator(
            "alice",
            Request::Commit {
                base,
                text: text(max),
                comment: String::new(),
                confirm_secs: None,
            },
        )
        .await;
    assert!(r.ok, "{}", r.error);
    r.value["number"].as_u64().unwrap()
}

/// The member's end of a session.
struct FakeMember {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
}

impl FakeMember {
    async fn start(m: &Arc<Manager>, name: &str, applied: u64, stop: &CancellationToken) -> Self {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(member(
            m.clone(),
            upgrades(),
            name.to_owned(),
            theirs,
            stop.clone(),
        ));
        let (r, mut w) = tokio::io::split(ours);
        let hello = Request::Hello {
            applied,
            release: "test".into(),
        };
        wire::write(&mut w, &hello).await.unwrap();
        let mut me = FakeMember {
            r: BufReader::new(r),
            w,
        };
        // First, where its events resume.
        assert!(matches!(me.next().await, ToMember::Resume { .. }));
        // And where its statistics do.
        assert!(matches!(me.next().await, ToMember::ResumeStats { .. }));
        me
    }

    async fn next(&mut self) -> ToMember {
        tokio::time::timeout(Duration::from_secs(10), wire::read(&mut self.r))
            .await
            .expect("a message from the manager")
            .unwrap()
    }

    /// Nothing arrives for a while (a short wait: it only has to see nothing was queued).
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(
            Duration::from_millis(300),
            wire::read::<ToMember, _>(&mut self.r),
        )
        .await;
        assert!(got.is_err(), "unexpected message: {got:?}");
    }

    async fn report(&mut self, applied: u64, tried: u64, error: Option<&str>) {
        let r = Request::Report {
            applied,
            tried,
            error: error.map(str::to_owned),
            status: None,
        };
        wire::write(&mut self.w, &r).await.unwrap();
    }
}

fn applied(m: &Manager, name: &str) -> u64 {
    m.status()
        .members
        .iter()
        .find(|r| r.name == name)
        .map_or(0, |r| r.applied)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test]
async fn a_member_gets_the_newest_version_one_at_a_time() {
    let dir = TestDir::new("server-newest");
    let m = Arc::new(Manager::open(&dir.join("state"), dir.path()).unwrap());
    let stop = CancellationToken::new();
    for (base, max) in [(0, 10), (1, 20), (2, 30)] {
        commit(&m, base, max).await;
    }
    // Away during three commits: it gets version 3 only, rendered for it.
    let mut fe1 = FakeMember::start(&m, "fe1", 0, &stop).await;
    let ToMember::Apply { version, text } = fe1.next().await else {
        panic!("not an apply");
    };
    assert_eq!(version, 3);
    assert!(text.contains("name = \"fe1\""), "{text}");
    assert!(text.contains("max_connections = 30"), "{text}");
    assert!(!text.contains("members"), "{text}");

    // While it applies, two more commits: nothing more is sent until it reports, and then
    // only the newest.
    commit(&m, 3, 40).await;
    commit(&m, 4, 50).await;
    fe1.quiet().await;
    fe1.report(3, 3, None).await;
    let ToMember::Apply { version, text } = fe1.next().await else {
        panic!("not an apply");
    };
    assert_eq!(version, 5);
    assert!(text.contains("max_connections = 50"), "{text}");
    fe1.report(5, 5, None).await;
    until("fe1 on version 5", || applied(&m, "fe1") == 5).await;

    let status = m.status();
    assert_eq!(status.head, 5);
    let row = |n: &str| status.members.iter().find(|r| r.name == n).unwrap().clone();
    assert!(row("fe1").connected && row("fe1").configured);
    assert_eq!((row("fe1").desired, row("fe1").applied), (5, 5));
    assert!(!row("fe2").connected, "never connected, but configured");
    assert_eq!((row("fe2").desired, row("fe2").applied), (5, 0));
    stop.cancel();
}

#[tokio::test]
async fn a_refused_version_is_not_sent_again_but_the_next_is() {
    let dir = TestDir::new("server-refused");
    let m = Arc::new(Manager::open(&dir.join("state"), dir.path()).unwrap());
    let stop = CancellationToken::new();
    commit(&m, 0, 10).await;
    let mut fe2 = FakeMember::start(&m, "fe2", 0, &stop).await;
    assert!(matches!(
        fe2.next().await,
        ToMember::Apply { version: 1, .. }
    ));
    fe2.report(0, 1, Some("the front-end refused it")).await;
    fe2.quiet().await;
    until("the error shown", || {
        m.status()
            .members
            .iter()
            .any(|r| r.name == "fe2" && r.last_error.is_some())
    })
    .await;
    commit(&m, 1, 20).await;
    assert!(matches!(
        fe2.next().await,
        ToMember::Apply { version: 2, .. }
    ));
    stop.cancel();
}

#[tokio::test]
async fn a_member_already_on_the_head_gets_nothing_and_actions_reach_it() {
    let dir = TestDir::new("server-actions");
    let m = Arc::new(Manager::open(&dir.join("state"), dir.path()).unwrap());
    let stop = CancellationToken::new();
    commit(&m, 0, 10).await;
    let mut fe1 = FakeMember::start(&m, "fe1", 1, &stop).await;
    fe1.quiet().await;

    let asked = {
        let m = m.clone();
        tokio::spawn(async move {
            m.operator(
                "bob",
                Request::Action {
                    member: "fe1".into(),
                    action: Action::Drain {
                        backend: "mx1".into(),
                    },
                },
            )
            .await
        })
    };
    let ToMember::Act { id, action } = fe1.next().await else {
        panic!("not an action");
    };
    assert_eq!(
        action,
        Action::Drain {
            backend: "mx1".into()
        }
    );
    let acted = Request::Acted {
        id,
        ok: true,
        message: "{\"backend\":\"mx1\",\"draining\":true}".into(),
    };
    wire::write(&mut fe1.w, &acted).await.unwrap();
    let reply = asked.await.unwrap();
    assert!(reply.ok, "{}", reply.error);

    // Not connected: refused at once, and audited either way.
    let reply = m
        .operator(
            "bob",
            Request::Action {
                member: "fe2".into(),
                action: Action::Release { vrid: 51 },
            },
        )
        .await;
    assert!(
        !reply.ok && reply.error.contains("not connected"),
        "{reply:?}"
    );
    let trail = m
        .operator(
            "bob",
            Request::Audit {
                verify: false,
                since: 1,
                limit: 100,
            },
        )
        .await;
    let entries: Vec<super::super::audit::Entry> = serde_json::from_value(trail.value).unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e.action == "action")
        .map(|e| (e.what.as_str(), e.result.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("drain mx1 on fe1", "ok"),
            ("release 51 on fe2", "member fe2 is not connected")
        ]
    );
    assert!(entries.iter().all(|e| e.who.starts_with("operator ")));
    stop.cancel();
}

#[tokio::test]
async fn a_member_not_in_the_configuration_gets_nothing() {
    let dir = TestDir::new("server-stranger");
    let m = Arc::new(Manager::open(&dir.join("state"), dir.path()).unwrap());
    let stop = CancellationToken::new();
    commit(&m, 0, 10).await;
    let mut fe9 = FakeMember::start(&m, "fe9", 0, &stop).await;
    fe9.quiet().await;
    let status = m.status();
    let row = status.members.iter().find(|r| r.name == "fe9").unwrap();
    assert!(!row.configured);
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .contains("does not name")
    );
    stop.cancel();
}

#[tokio::test]
async fn an_operator_message_on_a_member_connection_ends_it() {
    let dir = TestDir::new("server-confused");
    let m = Arc::new(Manager::open(&dir.join("state"), dir.path()).unwrap());
    let stop = CancellationToken::new();
    commit(&m, 0, 10).await;
    let mut fe1 = FakeMember::start(&m, "fe1", 1, &stop).await;
    until("fe1 connected", || {
        m.status()
            .members
            .iter()
            .any(|r| r.name == "fe1" && r.connected)
    })
    .await;
    wire::write(&mut fe1.w, &Request::Confirm).await.unwrap();
    assert!(matches!(fe1.next().await, ToMember::Refused { .. }));
    until("fe1 disconnected", || {
        m.status()
            .members
            .iter()
            .any(|r| r.name == "fe1" && !r.connected)
    })
    .await;
    stop.cancel();
}

/// Waits until the manager holds `n` log entries (and never more).
async fn until_stored(m: &Manager, n: usize) {
    for _ in 0..500 {
        let r = m
            .operator(
                "alice",
                Request::Logs {
                    after: 0,
                    member: None,
                    since_ms: 0,
                    limit: 100,
                    session: None,
                },
            )
            .await;
        let stored = r.value["entries"].as_array().unwrap().len();
        assert!(stored <= n, "{stored} entries stored, expected {n}");
        if stored == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never {n} entries");
}

#[tokio::test]
async fn events_are_stored_once_and_a_reconnecting_member_resumes_after_them() {
    let dir = TestDir::new("server-events");
    let m = Arc::new(Manager::open(&dir.join("state"), dir.path()).unwrap());
    let stop = CancellationToken::new();
    commit(&m, 0, 10).await;
    let ev = crate::events::Events::new("fe1", None);
    let all: Vec<_> = (0..6)
        .map(|i| {
            ev.emit(crate::events::Kind::ReloadApplied {
                version: format!("v{i}"),
                summary: String::new(),
            })
        })
        .collect();
    let ship = |events: &[crate::events::Event]| Request::Events {
        boot: "run1".into(),
        oldest: 1,
        events: events.to_vec(),
    };
    let mut fe1 = FakeMember::start(&m, "fe1", 1, &stop).await;
    wire::write(&mut fe1.w, &ship(&all[..4])).await.unwrap();
    until_stored(&m, 4).await;
    drop(fe1);

    // Back: told to resume after 4; it sends 3..6 again (it could not know), 5 and 6 count.
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    tokio::spawn(member(
        m.clone(),
        upgrades(),
        "fe1".to_owned(),
        theirs,
        stop.clone(),
    ));
    let (r, mut w) = tokio::io::split(ours);
    let hello = Request::Hello {
        applied: 1,
        release: "test".into(),
    };
    wire::write(&mut w, &hello).await.unwrap();
    let mut r = BufReader::new(r);
    let resume: ToMember = wire::read(&mut r).await.unwrap();
    assert_eq!(
        resume,
        ToMember::Resume {
            boot: "run1".into(),
            seq: 4
        }
    );
    wire::write(&mut w, &ship(&all[2..])).await.unwrap();
    until_stored(&m, 6).await;
    let r = m
        .operator(
            "alice",
            Request::Logs {
                after: 0,
                member: Some("fe1".into()),
                since_ms: 0,
                limit: 100,
                session: None,
            },
        )
        .await;
    let seqs: Vec<u64> = r.value["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    stop.cancel();
}

#[tokio::test]
async fn the_manager_notifies_new_alarm_events_its_front_end_did_not_once() {
    let dir = TestDir::new("server-notify");
    let m = Arc::new(Manager::open(&dir.join("state"), dir.path()).unwrap());
    let mut alarms = m.subscribe_alarms();
    let ev = crate::events::Events::new("fe1", None);
    let down = |b: &str| crate::events::Kind::BackendDown {
        backend: b.into(),
        pool: "mx".into(),
        reason: "test".into(),
    };
    let mut all = vec![ev.emit(down("mx1"))];
    all.push(ev.emit(crate::events::Kind::BackendDraining {
        backend: "mx1".into(),
        draining: true,
        by: "operator".into(),
    }));
    ev.set_notifies(true);
    all.push(ev.emit(down("mx2")));
    assert!(all[2].notified);
    all.push(ev.emit(down("mx3")));
    m.store_events("fe1", "run1", 1, &all[..2]);
    // Sent again with more after a reconnect: only what is new counts.
    m.store_events("fe1", "run1", 1, &all);
    let mut got = Vec::new();
    while let Ok(e) = alarms.try_recv() {
        got.push(e.seq);
    }
    assert_eq!(
        got,
        [1],
        "mx1's raise once; not the drain, nor what fe1 sent itself"
    );
    // A new run of the front-end numbers from 1 again: its events are new.
    let ev = crate::events::Events::new("fe1", None);
    m.store_events("fe1", "run2", 1, &[ev.emit(down("mx1"))]);
    assert_eq!(alarms.try_recv().unwrap().seq, 1);
}

#[tokio::test]
async fn an_agent_may_only_ship_lines_and_an_operator_may_not() {
    use crate::manager::mta_log::MtaLine;
    let dir = TestDir::new("server-agent-only");
    let m = Manager::open(&dir.join("state"), dir.path()).unwrap();
    let refused = m.agent("mx1", Request::Status);
    assert!(!refused.ok, "{refused:?}");
    let lines = Request::MtaLines {
        dev: 1,
        ino: 2,
        lines: vec![MtaLine {
            queue_id: "ABC123".into(),
            end: 40,
            line: "x postfix/smtp[1]: ABC123: status=sent".into(),
        }],
    };
    let stored = m.agent("mx1", lines.clone());
    assert!(stored.ok && stored.value == 1, "{stored:?}");
    let mark = m.agent("mx1", Request::MtaMark);
    assert_eq!(mark.value["offset"], 40);
    // An operator cannot write an agent's lines.
    let by_operator = m.operator("alice", lines).await;
    assert!(!by_operator.ok, "{by_operator:?}");
    let trace = m
        .operator(
            "alice",
            Request::Trace {
                id: "ABC123".into(),
            },
        )
        .await;
    assert!(trace.ok, "{trace:?}");
    assert_eq!(trace.value["messages"], serde_json::json!([]));
    assert_eq!(trace.value["mta_only"][0]["host"], "mx1");
}

/// The minutes of statistics the manager answers an operator with, as (member, minute).
async fn stored_minutes(m: &Manager, member: Option<&str>) -> Vec<(String, u64)> {
    let r = m
        .operator(
            "alice",
            Request::StatsOf {
                member: member.map(str::to_owned),
                since: None,
            },
        )
        .await;
    assert!(r.ok, "{}", r.error);
    let minutes: Vec<crate::stats::Minute> = serde_json::from_value(r.value).unwrap();
    minutes.into_iter().map(|m| (m.member, m.minute)).collect()
}

#[tokio::test]
async fn statistics_are_stored_per_member_and_a_reconnecting_member_resumes_after_them() {
    let dir = TestDir::new("server-stats");
    let m = Arc::new(Manager::open(&dir.join("state"), dir.path()).unwrap());
    let stop = CancellationToken::new();
    commit(&m, 0, 10).await;
    let now = crate::manager::store::now() / 60;
    let minutes = |from: u64, to: u64| Request::Stats {
        minutes: (from..to)
            .map(|n| crate::stats::Minute {
                // Whatever the front-end calls itself, the certificate's name counts.
                member: "fe-a".into(),
                minute: now - 10 + n,
                ..Default::default()
            })
            .collect(),
    };
    let mut fe1 = FakeMember::start(&m, "fe1", 1, &stop).await;
    wire::write(&mut fe1.w, &minutes(0, 3)).await.unwrap();
    let want: Vec<(String, u64)> = (0..3).map(|n| ("fe1".to_owned(), now - 10 + n)).collect();
    for _ in 0..500 {
        if stored_minutes(&m, None).await.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored_minutes(&m, None).await, want);
    drop(fe1);

    // Back: told the last minute stored; minutes sent again are not stored twice.
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    tokio::spawn(member(
        m.clone(),
        upgrades(),
        "fe1".to_owned(),
        theirs,
        stop.clone(),
    ));
    let (r, mut w) = tokio::io::split(ours);
    let hello = Request::Hello {
        applied: 1,
        release: "test".into(),
    };
    wire::write(&mut w, &hello).await.unwrap();
    let mut r = BufReader::new(r);
    let _events: ToMember = wire::read(&mut r).await.unwrap();
    let resume: ToMember = wire::read(&mut r).await.unwrap();
    assert_eq!(resume, ToMember::ResumeStats { minute: now - 8 });
    wire::write(&mut w, &minutes(1, 5)).await.unwrap();
    for _ in 0..500 {
        if stored_minutes(&m, None).await.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = stored_minutes(&m, Some("fe1")).await;
    assert_eq!(
        got.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        (0..5).map(|n| now - 10 + n).collect::<Vec<_>>()
    );
    assert!(stored_minutes(&m, Some("fe2")).await.is_empty());
    stop.cancel();
}

/// A member session's package rollouts, on a folder of their own (unused by these tests).
fn upgrades() -> Arc<Upgrades> {
    let dir = std::env::temp_dir().join(format!("rb-server-upgrades-{}", std::process::id()));
    Arc::new(Upgrades::open(&dir).unwrap())
}
