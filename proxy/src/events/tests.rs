use super::*;

fn down(b: &str) -> Kind {
    Kind::BackendDown {
        backend: b.into(),
        pool: "mx".into(),
        reason: "connection refused".into(),
    }
}

fn up(b: &str) -> Kind {
    Kind::BackendUp {
        backend: b.into(),
        pool: "mx".into(),
    }
}

#[test]
fn an_alarm_stays_until_its_condition_ends() {
    let ev = Events::new("fe-a", None);
    let e1 = ev.emit(down("mx1"));
    assert_eq!((e1.seq, e1.alarm.as_deref()), (1, Some("raised")));
    assert_eq!(e1.severity, Severity::Major);
    // The same condition again: an event, not a second alarm.
    let e2 = ev.emit(down("mx1"));
    assert_eq!(e2.alarm, None);
    ev.emit(down("mx2"));
    let keys: Vec<String> = ev.alarms().into_iter().map(|a| a.key).collect();
    assert_eq!(keys, ["backend_down:mx1", "backend_down:mx2"]);
    assert_eq!(ev.alarms()[0].seq, 1, "raised by the first event");

    let e4 = ev.emit(up("mx1"));
    assert_eq!(e4.alarm.as_deref(), Some("cleared"));
    let keys: Vec<String> = ev.alarms().into_iter().map(|a| a.key).collect();
    assert_eq!(keys, ["backend_down:mx2"]);
    // Clearing what is not raised changes nothing.
    assert_eq!(ev.emit(up("mx1")).alarm, None);
    // Events without an alarm are kept all the same.
    ev.emit(Kind::VrrpTransition {
        vrid: 51,
        family: "IPv4".into(),
        from: "Backup".into(),
        to: "Master".into(),
        reason: "MasterDown".into(),
    });
    let seqs: Vec<u64> = ev.recent(100).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(ev.recent(2).len(), 2);
}

#[test]
fn toggles_raise_and_clear_one_alarm() {
    let ev = Events::default();
    ev.emit(Kind::PoolOverloaded {
        pool: "mx".into(),
        overloaded: true,
    });
    ev.emit(Kind::ReloadRefused {
        error: "service smtp: bad".into(),
    });
    assert_eq!(ev.alarms().len(), 2);
    ev.emit(Kind::PoolOverloaded {
        pool: "mx".into(),
        overloaded: false,
    });
    ev.emit(Kind::ReloadApplied {
        version: "abc".into(),
        summary: "no change".into(),
    });
    assert!(ev.alarms().is_empty());
}

#[test]
fn subscribers_see_every_event_in_order() {
    let ev = Events::default();
    let mut rx = ev.subscribe();
    ev.emit(down("a"));
    ev.emit(up("a"));
    assert_eq!(rx.try_recv().unwrap().seq, 1);
    assert_eq!(rx.try_recv().unwrap().seq, 2);
}

#[test]
fn kind_names_are_the_json_tags() {
    let ev = Events::default();
    for kind in [
        down("a"),
        up("a"),
        Kind::AgentUnreachable {
            backend: "a".into(),
            error: "x".into(),
        },
        Kind::ReloadRefused { error: "x".into() },
    ] {
        let name = kind.name();
        let e = ev.emit(kind);
        assert_eq!(serde_json::to_value(&e).unwrap()["kind"], name);
    }
    assert_eq!(ev.counts()["backend_down"], 1);
}

#[test]
fn events_are_json_lines_with_their_kind() {
    let ev = Events::new("fe-a", None);
    let e = ev.emit(down("mx1"));
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v["kind"], "backend_down");
    assert_eq!(v["backend"], "mx1");
    assert_eq!(v["frontend"], "fe-a");
    assert_eq!(v["alarm"], "raised");
    let back: Event = serde_json::from_value(v).unwrap();
    assert_eq!(back, e);
}

#[test]
fn the_log_stays_within_its_bound_under_a_flood() {
    let dir = std::env::temp_dir().join(format!("robustifier-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = log::JsonLog::open(&dir, 8192, 3).unwrap();
    let ev = Events::new("fe-a", Some(log));
    for i in 0..5000 {
        ev.emit(if i % 2 == 0 { down("mx1") } else { up("mx1") });
    }
    let mut total = 0;
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let len = e.metadata().unwrap().len();
            assert!(len <= 8192, "{:?}: {len} bytes", e.path());
            total += len;
            e.file_name().to_string_lossy().into_owned()
        })
        .collect();
    files.sort();
    assert_eq!(files, ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]);
    assert!(total <= 3 * 8192);
    // The newest file ends with the newest event, every line whole JSON.
    let text = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let last: Event = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last.seq, 5000);
    for l in text.lines() {
        serde_json::from_str::<Event>(l).unwrap();
    }
    // And the files follow one another: .1's last event is just before the current's first.
    let older = std::fs::read_to_string(dir.join("events.jsonl.1")).unwrap();
    let older_last: Event = serde_json::from_str(older.lines().last().unwrap()).unwrap();
    let first: Event = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(older_last.seq + 1, first.seq);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_alarm_is_notified_here_only_with_destinations_and_no_manager_in_reach() {
    let ev = Events::new("fe-a", None);
    assert!(
        !ev.emit(down("mx1")).notified,
        "no destination: nobody here sends"
    );
    ev.set_notifies(true);
    assert!(
        ev.emit(up("mx1")).notified,
        "no manager: this front-end sends"
    );
    let drain = Kind::BackendDraining {
        backend: "mx1".into(),
        draining: true,
        by: "operator".into(),
    };
    assert!(!ev.emit(drain).notified, "not an alarm: nothing to send");
    ev.set_manager_reachable(true);
    assert!(!ev.emit(down("mx1")).notified, "the manager sends");
    ev.set_manager_reachable(false);
    assert!(ev.emit(up("mx1")).notified);
    // Old records without the field read as not notified.
    let e: Event = serde_json::from_str(
        r#"{"seq":1,"time_ms":1,"frontend":"fe","severity":"info","message":"m","alarm":"cleared","kind":"backend_up","backend":"mx1","pool":"mx"}"#,
    )
    .unwrap();
    assert!(!e.notified);
}

#[test]
fn the_history_keeps_as_many_events_as_configured_and_sessions_are_named() {
    let ev = Events::with_history("fe1", None, 3);
    for i in 0..5 {
        ev.emit(Kind::SessionRefused {
            session: format!("s{i}"),
            client: "198.18.0.1:1000".into(),
            service: "smtp".into(),
            reason: "deflected".into(),
        });
    }
    let kept = ev.recent(100);
    let sessions: Vec<&str> = kept.iter().filter_map(|e| e.kind.session()).collect();
    assert_eq!(sessions, ["s2", "s3", "s4"]);
    assert_eq!(ev.since(0, 100).oldest, 3);
    assert_eq!(kept[0].severity, Severity::Info);
    assert!(kept[0].alarm.is_none());
    let json = serde_json::to_value(&kept[0]).unwrap();
    assert_eq!(json["kind"], "session_refused");
    assert_eq!(json["session"], "s2");
    assert_eq!(Kind::ManagerReachable.session(), None);
}

#[tokio::test]
async fn subscribers_get_no_mail_session_records() {
    let ev = Events::new("fe1", None);
    let mut rx = ev.subscribe();
    ev.emit(Kind::SessionRefused {
        session: "s1".into(),
        client: "198.18.0.1:1000".into(),
        service: "smtp".into(),
        reason: "deflected".into(),
    });
    ev.emit(down("mx1"));
    assert!(matches!(
        rx.recv().await.unwrap().kind,
        Kind::BackendDown { .. }
    ));
    assert!(rx.try_recv().is_err());
    assert_eq!(ev.recent(10).len(), 2, "both kept in the history");
}
