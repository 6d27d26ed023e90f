use std::{convert::Infallible, path::PathBuf, time::Duration};

use async_snmp::{NotificationReceiver, SecurityLevel};

use super::*;
use crate::{
    config::snmp::{Auth, Privacy, V3},
    events::Kind,
};

fn down() -> Kind {
    Kind::BackendDown {
        backend: "mx1".into(),
        pool: "mx".into(),
        reason: "connection refused".into(),
    }
}

fn up() -> Kind {
    Kind::BackendUp {
        backend: "mx1".into(),
        pool: "mx".into(),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::OctetString(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("octet string expected, got {other:?}"),
    }
}

#[test]
fn an_alarm_raised_and_cleared_carry_the_mibs_objects_and_other_events_nothing() {
    let events = Events::new("fe1", None);
    let raised = notification(&events.emit(down())).unwrap();
    assert_eq!(
        raised.trap_oid,
        Oid::from_slice(&[1, 3, 6, 1, 4, 1, 99999, 0, 1])
    );
    let oids: Vec<Oid> = raised.varbinds.iter().map(|v| v.oid.clone()).collect();
    let object = |n: u32| Oid::from_slice(&[1, 3, 6, 1, 4, 1, 99999, 1, n, 0]);
    assert_eq!(oids, (1..=6).map(object).collect::<Vec<_>>());
    let v: Vec<&Value> = raised.varbinds.iter().map(|v| &v.value).collect();
    assert_eq!(text_of(v[0]), "fe1");
    assert_eq!(text_of(v[1]), "backend_down:mx1");
    assert_eq!(v[2], &Value::Integer(3), "major");
    assert_eq!(v[3], &Value::Counter64(1));
    assert_eq!(
        text_of(v[4]),
        "back-end mx1 (pool mx) down: connection refused"
    );
    assert_eq!(text_of(v[5]), "backend_down");

    let cleared = notification(&events.emit(up())).unwrap();
    assert_eq!(
        cleared.trap_oid,
        Oid::from_slice(&[1, 3, 6, 1, 4, 1, 99999, 0, 2])
    );
    assert_eq!(text_of(&cleared.varbinds[1].value), "backend_down:mx1");
    assert_eq!(cleared.varbinds[2].value, Value::Integer(1), "info");
    assert_eq!(
        cleared.varbinds[5].value,
        Value::OctetString("backend_up".into())
    );

    // Neither raised nor cleared: nothing; an alarm raised again while active: nothing.
    let draining = events.emit(Kind::BackendDraining {
        backend: "mx1".into(),
        draining: true,
        by: "operator".into(),
    });
    assert!(notification(&draining).is_none());
    assert!(notification(&events.emit(down())).is_some());
    assert!(notification(&events.emit(down())).is_none());
}

#[test]
fn long_text_is_cut_to_255_octets_at_a_character_boundary() {
    let Value::OctetString(b) = text(&"é".repeat(200)) else {
        panic!("octet string expected");
    };
    assert_eq!(b.len(), 254);
    assert!(std::str::from_utf8(&b).is_ok());
}

#[test]
fn the_default_engine_id_is_the_enterprise_and_the_front_ends_name() {
    assert_eq!(
        default_engine_id("fe1"),
        [0x80, 0x01, 0x86, 0x9f, 0x04, b'f', b'e', b'1']
    );
    assert_eq!(default_engine_id(&"x".repeat(40)).len(), 32);
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "robustifier-snmp-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn snmp_engine_boots_go_up_by_one_at_each_start_and_are_kept_in_their_file() {
    let dir = scratch("boots");
    let file = dir.join("engine.boots");
    let id = default_engine_id("fe1");
    let first = engine(id.clone(), &file).unwrap();
    assert_eq!(first.engine_boots(), 1);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "1\n");
    let second = engine(id.clone(), &file).unwrap();
    assert_eq!(second.engine_boots(), 2);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "2\n");
    std::fs::write(&file, "many\n").unwrap();
    assert!(matches!(engine(id, &file), Err(SnmpError::Boots { .. })));
    let _ = std::fs::remove_dir_all(dir);
}

const USER: &str = "robustifier";
const AUTH_KEY: &str = "authpass123";
const PRIV_KEY: &str = "privpass123";

async fn receiver() -> NotificationReceiver {
    let engine =
        AuthoritativeEngine::install(b"receiver-engine".to_vec(), |_| Ok::<(), Infallible>(()))
            .unwrap();
    NotificationReceiver::builder()
        .bind("127.0.0.1:0")
        .community(b"public".to_vec())
        .authoritative_engine(engine)
        .usm_user(USER, |u| {
            u.auth_priv(AuthProtocol::Sha1, AUTH_KEY, PrivProtocol::Aes128, PRIV_KEY)
        })
        .unwrap()
        .accept_all_notifications()
        .build()
        .await
        .unwrap()
}

fn v3(dir: &Path, inform: bool) -> Security {
    std::fs::write(dir.join("auth.key"), format!("{AUTH_KEY}\n")).unwrap();
    std::fs::write(dir.join("priv.key"), format!("{PRIV_KEY}\n")).unwrap();
    Security::V3(V3 {
        user: USER.into(),
        auth: Auth::Sha1,
        auth_key_file: dir.join("auth.key"),
        privacy: Some(Privacy::Aes128 {
            key_file: dir.join("priv.key"),
        }),
        engine_id: None,
        engine_boots_file: (!inform).then(|| dir.join("engine.boots")),
    })
}

/// What the sender encodes, the crate's receiver decodes: v2c and v3 (authPriv) traps, and
/// a v3 inform (acknowledged).
#[tokio::test]
async fn v2c_and_v3_notifications_decode_to_what_was_sent() {
    let dir = scratch("wire");
    std::fs::write(dir.join("community"), "public\n").unwrap();
    let rx = receiver().await;
    let target = rx.local_addr();
    let events = Events::new("fe1", None);
    let n = notification(&events.emit(down())).unwrap();
    let cases = [
        (
            Security::V2c {
                community_file: dir.join("community"),
            },
            false,
            None,
        ),
        (v3(&dir, false), false, Some(SecurityLevel::AuthPriv)),
        (v3(&dir, true), true, Some(SecurityLevel::AuthPriv)),
    ];
    for (security, inform, level) in cases {
        let dest = Destination {
            target,
            inform,
            security,
        };
        let ready = Ready::new(&dest, "fe1").unwrap();
        let sender = Sender::open(&dest, ready).await.unwrap();
        let (sent, got) = tokio::join!(sender.send(n.clone(), 4321), rx.recv());
        sent.unwrap();
        let got = got.unwrap().notification;
        assert_eq!(got.trap_oid().unwrap(), n.trap_oid, "{dest}");
        assert_eq!(got.uptime(), 4321, "{dest}");
        assert!(
            got.varbinds().ends_with(&n.varbinds),
            "{dest}: {:?}",
            got.varbinds()
        );
        assert_eq!(got.security_level(), level, "{dest}");
        assert_eq!(got.is_confirmed(), inform, "{dest}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A destination whose queue is full loses the notification, counted; the event path
/// (`emit`) never waits.
#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let events = Events::new("fe1", None);
    let (tx, mut rx) = mpsc::channel(1);
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(relay(
        events.subscribe(),
        |e| e.alarm.is_some(),
        Arc::new(vec![("test".into(), tx)]),
        Arc::clone(&stats),
        stop.clone(),
    ));
    events.emit(down());
    events.emit(up());
    events.emit(down());
    for _ in 0..1000 {
        if stats.dropped.load(Ordering::Relaxed) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
    let first = rx.recv().await.unwrap();
    assert_eq!(first.trap_oid, alarm_raised());
    assert!(rx.try_recv().is_err());
    stop.cancel();
    relay.await.unwrap();
}
