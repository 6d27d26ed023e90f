use std::collections::BTreeMap;

use super::*;
use crate::stats::{Reason, Table, Tally, table::DEFAULT_GROUP};

/// A front-end's stats with service "smtp", back-ends mx1 (id 0) and mx2 (id 3) of pool
/// "mx" (id 1), and group "premium".
fn setup(keep: usize) -> (Arc<Stats>, Arc<Table>) {
    let stats = Arc::new(Stats::new(keep));
    let table = stats.table(["smtp"], [(0, "mx1"), (3, "mx2")], [(1, "mx")], ["premium"]);
    (stats, table)
}

fn tally(t: &Table, backend: u32, group: usize) -> Tally {
    Tally::new(t.backend(backend), t.pool(1), t.service(0), t.group(group))
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rb-stats-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_minute_holds_what_each_key_added_during_it() {
    let (stats, t) = setup(10);
    let events = Events::default();
    // Counted before the roll-up starts: in the first minute.
    t.service(0).unwrap().session();
    let mut r = Roller::new("fe", Arc::clone(&stats), None, Thresholds::default());
    let a = tally(&t, 0, 0);
    a.session(Some(Duration::from_millis(7)));
    a.message(3);
    a.bytes(1000, 40);
    let m = r.roll(100, None, &events);
    assert_eq!((m.member.as_str(), m.minute), ("fe", 100));
    let smtp = &m.services["smtp"];
    assert_eq!(
        (smtp.sessions, smtp.messages, smtp.recipients),
        (1, 1, 3),
        "the service counts its client sessions and the messages"
    );
    assert_eq!((smtp.bytes_to_backend, smtp.bytes_to_client), (1000, 40));
    assert_eq!(m.backends["mx1"].sessions, 1);
    assert_eq!(m.pools["mx"].recipients, 3);
    assert_eq!(m.groups["premium"].messages, 1);
    let lat = m.backends["mx1"].latency.as_ref().unwrap();
    assert_eq!((lat.count, lat.sum_us), (1, 7000));
    assert_eq!(lat.buckets[1], 1, "7 ms is in the 5..=10 ms bucket");
    assert!(
        smtp.latency.is_none(),
        "the service does not time back-ends"
    );
    assert!(
        !m.backends.contains_key("mx2"),
        "a key with nothing is left out"
    );

    // The next minute has only what came after.
    tally(&t, 3, 9).message(2);
    let m = r.roll(101, None, &events);
    assert_eq!(m.services["smtp"].messages, 1);
    assert_eq!(m.services["smtp"].sessions, 0);
    assert_eq!(m.backends.keys().collect::<Vec<_>>(), ["mx2"]);
    assert_eq!(
        m.groups.keys().collect::<Vec<_>>(),
        [DEFAULT_GROUP],
        "past the configured groups is the default group"
    );
    assert!(r.roll(102, None, &events).services.is_empty());
    assert_eq!(
        stats
            .since(Some(100), 10)
            .iter()
            .map(|m| m.minute)
            .collect::<Vec<_>>(),
        [101, 102]
    );
}

#[test]
fn a_reload_keeps_counting_into_the_same_keys() {
    let (stats, t) = setup(10);
    let events = Events::default();
    let mut r = Roller::new("fe", Arc::clone(&stats), None, Thresholds::default());
    tally(&t, 0, 0).message(1);
    r.roll(1, None, &events);
    // The reload moves mx1 to id 5 and removes mx2; sessions on the old table go on.
    let t2 = stats.table(["smtp"], [(5, "mx1")], [(1, "mx")], []);
    Tally::new(t2.backend(5), None, None, None).message(1);
    tally(&t, 3, 0).message(1);
    let m = r.roll(2, None, &events);
    assert_eq!(m.backends["mx1"].messages, 1, "not reset, not doubled");
    assert_eq!(m.backends["mx2"].messages, 1);
}

#[test]
fn minutes_move_on_and_memory_keeps_the_newest() {
    let (stats, _) = setup(3);
    let events = Events::default();
    let mut r = Roller::new("fe", Arc::clone(&stats), None, Thresholds::default());
    for minute in [50, 50, 49, 60, 61] {
        r.roll(minute, None, &events);
    }
    let kept: Vec<u64> = stats.since(None, 100).iter().map(|m| m.minute).collect();
    assert_eq!(
        kept,
        [52, 60, 61],
        "never the same minute twice; the 3 newest kept"
    );
}

#[test]
fn the_stats_log_stays_under_its_bound_however_many_minutes() {
    let d = tmp("log");
    let (max, files) = (crate::events::log::MIN_BYTES, 3);
    let log = JsonLog::open_named(&d, "stats.jsonl", max, files).unwrap();
    let (stats, t) = setup(5);
    let events = Events::default();
    let mut r = Roller::new("fe", Arc::clone(&stats), Some(log), Thresholds::default());
    for minute in 0..2000 {
        let a = tally(&t, 0, 0);
        a.session(Some(Duration::from_millis(minute % 300)));
        a.message(minute);
        r.roll(minute, None, &events);
    }
    let mut total = 0;
    let mut names = Vec::new();
    for e in std::fs::read_dir(&d).unwrap() {
        let e = e.unwrap();
        total += e.metadata().unwrap().len();
        names.push(e.file_name().into_string().unwrap());
    }
    names.sort();
    assert_eq!(names, ["stats.jsonl", "stats.jsonl.1", "stats.jsonl.2"]);
    assert!(total <= max * u64::from(files), "{total} bytes");
    // The newest line is the last minute, readable as a record.
    let text = std::fs::read_to_string(d.join("stats.jsonl")).unwrap();
    let last: Minute = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last.minute, 1999);
    assert_eq!(last.services["smtp"].recipients, 1999);
    std::fs::remove_dir_all(d).unwrap();
}

fn active(events: &Events) -> Vec<String> {
    events.alarms().into_iter().map(|a| a.key).collect()
}

#[test]
fn deflections_over_the_threshold_raise_an_alarm_cleared_on_the_first_minute_under() {
    let (stats, t) = setup(10);
    let events = Events::default();
    let thresholds = Thresholds {
        deflections: Some(2),
        flood_drops: None,
    };
    let mut r = Roller::new("fe", Arc::clone(&stats), None, thresholds);
    let deflect = |n: usize| {
        for _ in 0..n {
            // As a session of group "premium" turned away from pool "mx".
            t.pool(1).unwrap().deflected(Reason::Overload);
            Tally::new(None, None, t.service(0), t.group(0)).deflected(Reason::Overload);
        }
    };
    deflect(2);
    r.roll(1, None, &events);
    assert!(
        active(&events).is_empty(),
        "at the threshold is not over it"
    );
    deflect(3);
    r.roll(2, None, &events);
    assert_eq!(
        active(&events),
        ["deflecting:pool:mx", "deflecting:group:premium"]
    );
    deflect(5);
    r.roll(3, None, &events);
    let raised = events
        .recent(100)
        .iter()
        .filter(|e| e.alarm.as_deref() == Some("raised"))
        .count();
    assert_eq!(raised, 2, "still over: not raised again");
    deflect(1);
    r.roll(4, None, &events);
    assert!(active(&events).is_empty());
    let last = events.recent(1).remove(0);
    assert_eq!(last.alarm.as_deref(), Some("cleared"));
    assert_eq!(last.kind.name(), "deflecting");
}

#[test]
fn no_deflection_alarm_without_a_threshold() {
    let (stats, t) = setup(10);
    let events = Events::default();
    let mut r = Roller::new("fe", Arc::clone(&stats), None, Thresholds::default());
    for _ in 0..1000 {
        t.pool(1).unwrap().deflected(Reason::NoBackend);
    }
    let m = r.roll(1, None, &events);
    assert_eq!(m.pools["mx"].deflected["no_backend"], 1000);
    assert!(active(&events).is_empty());
}

#[test]
fn xdp_flood_drops_per_minute_raise_and_clear_their_alarm() {
    let (stats, _) = setup(10);
    let events = Events::default();
    let thresholds = Thresholds {
        deflections: None,
        flood_drops: Some(5),
    };
    let mut r = Roller::new("fe", Arc::clone(&stats), None, thresholds);
    let xdp = |drops: u64, service: u64| {
        Some(BTreeMap::from([
            ("dropped_syn_budget".to_owned(), drops),
            ("service".to_owned(), service),
        ]))
    };
    // The first reading is the base: drops before it are not this minute's.
    let m = r.roll(1, xdp(1_000_000, 10), &events);
    assert!(m.xdp.is_empty());
    assert!(active(&events).is_empty());
    let m = r.roll(2, xdp(1_000_006, 30), &events);
    assert_eq!(
        m.xdp,
        BTreeMap::from([
            ("dropped_syn_budget".to_owned(), 6),
            ("service".to_owned(), 20)
        ])
    );
    assert_eq!(active(&events), ["flood_drops"]);
    r.roll(3, xdp(1_000_011, 30), &events);
    assert!(active(&events).is_empty(), "5 in the minute is not over 5");
    assert_eq!(events.recent(1)[0].alarm.as_deref(), Some("cleared"));
}

#[test]
fn the_roll_up_is_due_on_the_wall_clocks_minute() {
    let now = 100 * 60_000 + 1_500;
    assert_eq!(
        next(now, Duration::from_secs(60)),
        (Duration::from_millis(58_500), 100)
    );
    assert_eq!(
        next(now, Duration::from_millis(200)),
        (Duration::from_millis(200), 100)
    );
}
