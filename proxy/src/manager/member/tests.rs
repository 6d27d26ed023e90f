//! The member's side of a session over an in-memory stream, with a fake front-end on a
//! control socket that records what it is asked.

use std::sync::Mutex;

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, DuplexStream, ReadHalf, WriteHalf},
    net::UnixListener,
};

use super::*;
use crate::manager::testing::{TestDir, single};

fn text(max: u32) -> String {
    single(u64::from(max))
}

/// A front-end on a control socket: answers status, and reloads unless told to refuse;
/// keeps every request line.
#[derive(Clone)]
struct FakeFrontend {
    requests: Arc<Mutex<Vec<String>>>,
    events: crate::events::Events,
    refuse: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeFrontend {
    fn serve(path: &Path) -> FakeFrontend {
        let listener = UnixListener::bind(path).unwrap();
        let fe = FakeFrontend {
            requests: Arc::default(),
            events: crate::events::Events::new("fe1", None),
            refuse: Arc::default(),
        };
        let me = fe.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let (r, mut w) = tokio::io::split(s);
                    let mut line = String::new();
                    BufReader::new(r).read_line(&mut line).await.unwrap();
                    let line = line.trim().to_owned();
                    me.requests.lock().unwrap().push(line.clone());
                    let reply = if line == "status" {
                        "ok {\"frontend\":\"fe1\",\"routers\":[]}".to_owned()
                    } else if let Some(since) = line.strip_prefix("events ") {
                        let since: u64 = since.parse().unwrap();
                        let kept = me.events.since(since, 200);
                        format!("ok {}", serde_json::to_string(&kept).unwrap())
                    } else if me.refuse.load(std::sync::atomic::Ordering::Relaxed) {
                        "error service smtp: port 25 is taken".to_owned()
                    } else {
                        "ok {\"version\":\"v\",\"summary\":\"1 change\",\"restart_needed\":[]}"
                            .to_owned()
                    };
                    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                });
            }
        });
        fe
    }

    fn reloads(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("reload"))
            .cloned()
            .collect()
    }
}

/// The manager's end of the session.
struct FakeManager {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
}

impl FakeManager {
    async fn next(&mut self) -> Request {
        tokio::time::timeout(Duration::from_secs(10), wire::read(&mut self.r))
            .await
            .expect("a message from the member")
            .unwrap()
    }

    /// The next report (skipping the status reports the member sends on its own).
    async fn report_on(&mut self, tried: u64) -> (u64, Option<String>) {
        loop {
            if let Request::Report {
                applied,
                tried: t,
                error,
                ..
            } = self.next().await
                && t == tried
            {
                return (applied, error);
            }
        }
    }

    async fn send(&mut self, m: &ToMember) {
        wire::write(&mut self.w, m).await.unwrap();
    }
}

fn options(dir: &Path) -> Arc<Options> {
    Arc::new(Options {
        manager: "unused".into(),
        ca: PathBuf::new(),
        cert: PathBuf::new(),
        key: PathBuf::new(),
        state_dir: dir.join("state"),
        control_socket: dir.join("control.sock"),
        max_retry: Duration::from_secs(1),
        alarm_after: Duration::from_secs(10),
    })
}

async fn start(o: &Arc<Options>, stop: &CancellationToken) -> FakeManager {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (o, stop) = (o.clone(), stop.clone());
    tokio::spawn(async move {
        let mut state = State::open(&o.state_dir).unwrap();
        session(&o, &mut state, theirs, &stop).await
    });
    let (r, w) = tokio::io::split(ours);
    FakeManager {
        r: BufReader::new(r),
        w,
    }
}

#[tokio::test]
async fn applies_live_keeps_the_file_and_never_goes_back() {
    let dir = TestDir::new("member-apply");
    let o = options(dir.path());
    let fe = FakeFrontend::serve(&o.control_socket);
    let stop = CancellationToken::new();
    let mut mgr = start(&o, &stop).await;
    assert!(matches!(
        mgr.next().await,
        Request::Hello { applied: 0, .. }
    ));

    mgr.send(&ToMember::Apply {
        version: 4,
        text: text(10),
    })
    .await;
    assert_eq!(mgr.report_on(4).await, (4, None));
    let config = std::fs::canonicalize(dir.join("state/config.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text(10));
    assert_eq!(fe.reloads(), [format!("reload {}", config.display())]);

    // An older version is not applied.
    mgr.send(&ToMember::Apply {
        version: 3,
        text: text(99),
    })
    .await;
    mgr.send(&ToMember::Apply {
        version: 5,
        text: text(20),
    })
    .await;
    assert_eq!(mgr.report_on(5).await, (5, None));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text(20));
    assert_eq!(
        fe.reloads().len(),
        2,
        "version 3 never reached the front-end"
    );

    // The version survives a restart of the member.
    stop.cancel();
    let stop = CancellationToken::new();
    let mut mgr = start(&o, &stop).await;
    assert!(matches!(
        mgr.next().await,
        Request::Hello { applied: 5, .. }
    ));
    stop.cancel();
}

#[tokio::test]
async fn a_refused_version_leaves_the_running_file_in_place() {
    let dir = TestDir::new("member-refused");
    let o = options(dir.path());
    let fe = FakeFrontend::serve(&o.control_socket);
    let stop = CancellationToken::new();
    let mut mgr = start(&o, &stop).await;
    mgr.next().await;
    mgr.send(&ToMember::Apply {
        version: 1,
        text: text(10),
    })
    .await;
    assert_eq!(mgr.report_on(1).await, (1, None));

    fe.refuse.store(true, std::sync::atomic::Ordering::Relaxed);
    mgr.send(&ToMember::Apply {
        version: 2,
        text: text(20),
    })
    .await;
    let (applied, error) = mgr.report_on(2).await;
    assert_eq!(applied, 1);
    assert!(error.unwrap().contains("port 25 is taken"));
    let config = dir.join("state/config.toml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        text(10),
        "put back"
    );

    // A text this member's own rules refuse never reaches the front-end.
    let reloads = fe.reloads().len();
    mgr.send(&ToMember::Apply {
        version: 3,
        text: "[frontend]\n".into(),
    })
    .await;
    let (applied, error) = mgr.report_on(3).await;
    assert_eq!(applied, 1);
    assert!(error.unwrap().starts_with("refused here"));
    assert_eq!(fe.reloads().len(), reloads);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text(10));
    stop.cancel();
}

#[tokio::test]
async fn without_a_running_front_end_the_version_is_what_it_starts_from() {
    let dir = TestDir::new("member-stopped");
    let o = options(dir.path());
    let stop = CancellationToken::new();
    let mut mgr = start(&o, &stop).await;
    mgr.next().await;
    mgr.send(&ToMember::Apply {
        version: 7,
        text: text(10),
    })
    .await;
    let (applied, error) = mgr.report_on(7).await;
    assert_eq!(applied, 7);
    assert!(error.unwrap().contains("not running"));
    assert_eq!(
        std::fs::read_to_string(dir.join("state/config.toml")).unwrap(),
        text(10)
    );
    stop.cancel();
}

#[tokio::test]
async fn actions_go_to_the_front_end_and_come_back() {
    let dir = TestDir::new("member-act");
    let o = options(dir.path());
    let fe = FakeFrontend::serve(&o.control_socket);
    let stop = CancellationToken::new();
    let mut mgr = start(&o, &stop).await;
    mgr.next().await;
    let action = Action::Undrain {
        backend: "mx1".into(),
    };
    mgr.send(&ToMember::Act { id: 9, action }).await;
    loop {
        if let Request::Acted { id, ok, .. } = mgr.next().await {
            assert_eq!((id, ok), (9, true));
            break;
        }
    }
    assert!(
        fe.requests
            .lock()
            .unwrap()
            .contains(&"undrain mx1".to_owned())
    );
    stop.cancel();
}

#[tokio::test]
async fn events_are_shipped_after_the_point_the_manager_names() {
    let dir = TestDir::new("member-events");
    let o = options(dir.path());
    let fe = FakeFrontend::serve(&o.control_socket);
    let emit = |i: u32| {
        fe.events.emit(crate::events::Kind::ReloadApplied {
            version: format!("v{i}"),
            summary: String::new(),
        })
    };
    for i in 0..5 {
        emit(i);
    }
    let boot = fe.events.since(0, 1).boot;
    let stop = CancellationToken::new();
    let mut mgr = start(&o, &stop).await;
    mgr.next().await;
    // The manager has up to 3 of this run.
    mgr.send(&ToMember::Resume {
        boot: boot.clone(),
        seq: 3,
    })
    .await;
    let shipped = loop {
        if let Request::Events {
            events, boot: b, ..
        } = mgr.next().await
        {
            assert_eq!(b, boot);
            break events;
        }
    };
    let seqs: Vec<u64> = shipped.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [4, 5]);
    emit(5);
    let next = loop {
        if let Request::Events { events, .. } = mgr.next().await {
            break events;
        }
    };
    assert_eq!(next.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
    stop.cancel();
}
