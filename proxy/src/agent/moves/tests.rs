//! The move engine against an MTA held in memory and an SMTP target on loopback.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
};

use super::{
    journal::{self, Aim, Record},
    mta::{MtaError, Queued, Recipient},
    runner::{self, Host, RunState},
    *,
};

fn rcpt(a: &str) -> Recipient {
    Recipient {
        address: a.into(),
        handle: a.into(),
    }
}

fn queued(id: &str, rcpts: &[&str]) -> Queued {
    Queued {
        id: id.into(),
        sender: "s@example.test".into(),
        recipients: rcpts.iter().map(|r| rcpt(r)).collect(),
        held: false,
    }
}

/// A message removed: its id, the moved and the kept recipients.
type Removal = (String, Vec<String>, Vec<String>);

/// An MTA in memory: its queue, and what was asked of it.
#[derive(Default)]
struct Fake {
    queue: Mutex<BTreeMap<String, Queued>>,
    removed: Mutex<Vec<Removal>>,
    released: Mutex<Vec<String>>,
    /// The duplicate check's answer.
    there: Option<bool>,
}

impl Fake {
    fn with(msgs: &[Queued], there: Option<bool>) -> Arc<Fake> {
        Arc::new(Fake {
            queue: Mutex::new(msgs.iter().map(|m| (m.id.clone(), m.clone())).collect()),
            there,
            ..Fake::default()
        })
    }
    fn held(&self, id: &str) -> bool {
        self.queue.lock().unwrap().get(id).is_some_and(|m| m.held)
    }
}

impl Host for Arc<Fake> {
    async fn list(&self) -> Result<Vec<Queued>, MtaError> {
        Ok(self.queue.lock().unwrap().values().cloned().collect())
    }
    async fn hold(&self, m: &Queued, _: &[Recipient]) -> Result<(), MtaError> {
        match self.queue.lock().unwrap().get_mut(&m.id) {
            Some(q) => {
                q.held = true;
                Ok(())
            }
            None => Err(MtaError::Gone(m.id.clone())),
        }
    }
    async fn release(&self, m: &Queued, _: &[Recipient]) -> Result<(), MtaError> {
        self.released.lock().unwrap().push(m.id.clone());
        if let Some(q) = self.queue.lock().unwrap().get_mut(&m.id) {
            q.held = false;
        }
        Ok(())
    }
    async fn content(&self, m: &Queued) -> Result<Vec<u8>, MtaError> {
        Ok(format!("Message-ID: <{}@src>\nSubject: t\n\n.body\n", m.id).into_bytes())
    }
    async fn remove(
        &self,
        m: &Queued,
        moved: &[Recipient],
        kept: &[Recipient],
    ) -> Result<(), MtaError> {
        self.queue.lock().unwrap().remove(&m.id);
        let names = |r: &[Recipient]| r.iter().map(|r| r.address.clone()).collect();
        self.removed
            .lock()
            .unwrap()
            .push((m.id.clone(), names(moved), names(kept)));
        Ok(())
    }
    async fn already_there(&self, _: &Aim, _: &str, _: &str) -> Option<bool> {
        self.there
    }
    fn name(&self) -> String {
        "agent.test".into()
    }
}

/// A message as the target took it: recipients and data.
type Got = (Vec<String>, String);

/// An SMTP target on loopback taking every message, refusing recipients starting with
/// `refuse` with 550.
async fn target(refuse: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Got>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                let mut s = BufReader::new(tcp);
                s.write_all(b"220 target\r\n").await.unwrap();
                let (mut rcpts, mut data, mut in_data) = (Vec::new(), String::new(), false);
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            g.lock()
                                .unwrap()
                                .push((std::mem::take(&mut rcpts), std::mem::take(&mut data)));
                            s.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            data.push_str(&line);
                        }
                        continue;
                    }
                    let reply: &[u8] = if let Some(a) = line.strip_prefix("RCPT TO:<") {
                        let a = a.trim_end().trim_end_matches('>');
                        if !refuse.is_empty() && a.starts_with(refuse) {
                            b"550 5.1.1 unknown\r\n"
                        } else {
                            rcpts.push(a.to_owned());
                            b"250 ok\r\n"
                        }
                    } else if line == "DATA\r\n" {
                        in_data = true;
                        b"354 go\r\n"
                    } else if line == "QUIT\r\n" {
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    s.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, got)
}

/// An address where nothing listens.
async fn dead() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn state_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rb-moves-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A job for `slow.example` aimed at `targets`, its journal holding `records` after the
/// start.
fn new_job(dir: &Path, targets: Vec<SocketAddr>, records: &[Record]) -> (Arc<Job>, RunState) {
    let aim = Aim {
        pool: "slowq".into(),
        targets,
        target_agents: vec![],
    };
    let path = journal::path_for(dir, "slow.example");
    let mut all = vec![Record::Start {
        domain: "slow.example".into(),
        aim: aim.clone(),
    }];
    all.extend_from_slice(records);
    let j = Journal::create(&path, &all).unwrap();
    let r = journal::replay(&path).unwrap();
    let job = Arc::new(Job {
        pattern: DomainPattern::parse("slow.example").unwrap(),
        state: Mutex::new(Shared {
            status: fresh_status("slow.example", "slowq", MoveState::Running),
            aim,
        }),
        journal: Mutex::new(j),
        wake: Notify::new(),
    });
    let st = RunState {
        pending: r.pending,
        seen: r.seen,
        refused: r.refused,
    };
    (job, st)
}

fn replayed(dir: &Path) -> journal::Replayed {
    journal::replay(&journal::path_for(dir, "slow.example")).unwrap()
}

#[tokio::test]
async fn a_move_takes_the_domains_recipients_and_leaves_the_rest() {
    let dir = state_dir("all");
    let (addr, got) = target("").await;
    let fake = Fake::with(
        &[
            queued("A1", &["a@slow.example"]),
            queued("B2", &["b@Slow.Example", "c@example.test"]),
            queued("C3", &["d@example.test"]),
            queued("D4", &["e@notslow.example"]),
        ],
        None,
    );
    let (job, st) = new_job(&dir, vec![dead().await, addr], &[]);
    runner::run(Arc::clone(&fake), Arc::clone(&job), st).await;

    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, vec!["a@slow.example"]);
    assert!(
        got[0]
            .1
            .starts_with("X-Robustifier-Move: agent.test/A1\r\nMessage-ID: <A1@src>\r\n"),
        "{:?}",
        got[0].1
    );
    assert!(
        got[0].1.ends_with("\r\n..body\r\n"),
        "dot-stuffed: {:?}",
        got[0].1
    );
    assert_eq!(got[1].0, vec!["b@Slow.Example"]);
    let removed = fake.removed.lock().unwrap().clone();
    assert_eq!(
        removed,
        vec![
            ("A1".into(), vec!["a@slow.example".into()], vec![]),
            (
                "B2".into(),
                vec!["b@Slow.Example".into()],
                vec!["c@example.test".into()]
            ),
        ]
    );
    let queue: Vec<String> = fake.queue.lock().unwrap().keys().cloned().collect();
    assert_eq!(queue, ["C3", "D4"]);
    let s = job.status();
    assert_eq!(s.state, MoveState::Done);
    assert_eq!(
        (s.found, s.moved, s.recipients_moved, s.recipients_kept),
        (2, 2, 2, 1)
    );
    assert!(s.finished.is_some() && s.refused.is_empty());
    let r = replayed(&dir);
    assert!(r.finished.is_some() && r.pending.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_refused_message_stays_held_reported_and_is_not_retried() {
    let dir = state_dir("refused");
    let (addr, got) = target("nobody@").await;
    let fake = Fake::with(
        &[
            queued("A1", &["a@slow.example"]),
            queued("R9", &["nobody@slow.example"]),
        ],
        None,
    );
    let (job, st) = new_job(&dir, vec![addr], &[]);
    runner::run(Arc::clone(&fake), Arc::clone(&job), st).await;
    assert_eq!(got.lock().unwrap().len(), 1);
    assert!(fake.held("R9"), "refused: held at the source");
    assert!(fake.released.lock().unwrap().is_empty());
    let s = job.status();
    assert_eq!((s.state, s.moved), (MoveState::Done, 1));
    assert_eq!(s.refused.len(), 1);
    assert_eq!(s.refused[0].queue_id, "R9");
    assert!(s.refused[0].reply.starts_with("550"), "{:?}", s.refused);
    assert_eq!(replayed(&dir).refused.len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn with_every_target_down_the_message_stays_held_until_one_takes_it() {
    let dir = state_dir("down");
    let fake = Fake::with(&[queued("A1", &["a@slow.example"])], None);
    let (job, mut st) = new_job(&dir, vec![dead().await], &[]);
    let e = runner::pass(&fake, &job, &mut st).await.unwrap_err();
    assert!(e.to_string().contains("connect"), "{e}");
    assert!(fake.held("A1") && fake.removed.lock().unwrap().is_empty());
    assert!(matches!(
        replayed(&dir).pending.get("A1"),
        Some(journal::Pending::Holding)
    ));
    // Re-aimed at a target that takes it: the next pass moves it, the one after finds
    // nothing.
    let (addr, got) = target("").await;
    job.reaim(Aim {
        pool: "slowq".into(),
        targets: vec![addr],
        target_agents: vec![],
    })
    .unwrap();
    assert_eq!(runner::pass(&fake, &job, &mut st).await.unwrap(), 1);
    assert_eq!(runner::pass(&fake, &job, &mut st).await.unwrap(), 0);
    assert_eq!(got.lock().unwrap().len(), 1);
    assert_eq!(fake.removed.lock().unwrap().len(), 1);
    assert_eq!(replayed(&dir).aim.targets, vec![addr]);
    std::fs::remove_dir_all(dir).unwrap();
}

fn sending(m: &Queued, target: SocketAddr) -> Record {
    Record::Sending {
        message: m.clone(),
        moved: vec![m.recipients[0].clone()],
        kept: m.recipients[1..].to_vec(),
        target,
        token: format!("agent.test/{}", m.id),
    }
}

/// Each state a killed agent may leave a message in, taken up by the next pass.
#[tokio::test]
async fn a_journal_resumes_each_message_from_where_it_stood() {
    let (addr, got) = target("").await;
    let m = queued("A1", &["a@slow.example", "k@example.test"]);
    let mut held = m.clone();
    held.held = true;

    // holding: held (or not) but not sent: sent once now.
    let dir = state_dir("holding");
    let fake = Fake::with(&[held.clone()], None);
    let (job, mut st) = new_job(&dir, vec![addr], &[Record::Holding { id: "A1".into() }]);
    assert_eq!(runner::pass(&fake, &job, &mut st).await.unwrap(), 1);
    assert_eq!(got.lock().unwrap().len(), 1);
    assert_eq!(fake.removed.lock().unwrap().len(), 1);

    // holding, but nothing of it left for the domain: released.
    let dir = state_dir("holding-nothing");
    let fake = Fake::with(&[queued("A1", &["k@example.test"])], None);
    let (job, mut st) = new_job(&dir, vec![addr], &[Record::Holding { id: "A1".into() }]);
    assert_eq!(runner::pass(&fake, &job, &mut st).await.unwrap(), 0);
    assert_eq!(*fake.released.lock().unwrap(), ["A1"]);
    assert!(st.pending.is_empty());
    assert_eq!(got.lock().unwrap().len(), 1, "nothing sent");

    // sending, and the target has it: not sent again, removed, counted.
    let dir = state_dir("sending-there");
    let fake = Fake::with(&[held.clone()], Some(true));
    let (job, mut st) = new_job(&dir, vec![addr], &[sending(&m, addr)]);
    runner::pass(&fake, &job, &mut st).await.unwrap();
    assert_eq!(got.lock().unwrap().len(), 1, "not sent again");
    assert_eq!(
        *fake.removed.lock().unwrap(),
        [(
            "A1".to_owned(),
            vec!["a@slow.example".to_owned()],
            vec!["k@example.test".to_owned()]
        )]
    );
    assert_eq!((job.status().already_there, job.status().moved), (1, 1));

    // sending, the target does not have it or cannot say: sent again.
    for there in [Some(false), None] {
        let dir = state_dir("sending-not-there");
        let fake = Fake::with(&[held.clone()], there);
        let before = got.lock().unwrap().len();
        let (job, mut st) = new_job(&dir, vec![addr], &[sending(&m, addr)]);
        runner::pass(&fake, &job, &mut st).await.unwrap();
        assert_eq!(got.lock().unwrap().len(), before + 1, "{there:?}");
        assert_eq!(got.lock().unwrap()[before].0, vec!["a@slow.example"]);
        assert_eq!(job.status().already_there, 0);
        assert_eq!(fake.removed.lock().unwrap().len(), 1);
    }

    // sent: straight to removal.
    let dir = state_dir("sent");
    let fake = Fake::with(&[held.clone()], None);
    let before = got.lock().unwrap().len();
    let (job, mut st) = new_job(
        &dir,
        vec![addr],
        &[
            sending(&m, addr),
            Record::Sent {
                id: "A1".into(),
                reply: "250 queued".into(),
                already_there: false,
            },
        ],
    );
    runner::pass(&fake, &job, &mut st).await.unwrap();
    assert_eq!(got.lock().unwrap().len(), before, "not sent again");
    assert_eq!(fake.removed.lock().unwrap().len(), 1);
    assert_eq!(job.status().moved, 1);

    // sending, but gone from the queue meanwhile: dropped.
    let dir = state_dir("gone");
    let fake = Fake::with(&[], None);
    let (job, mut st) = new_job(&dir, vec![addr], &[sending(&m, addr)]);
    assert_eq!(runner::pass(&fake, &job, &mut st).await.unwrap(), 0);
    assert!(st.pending.is_empty());
    assert_eq!(got.lock().unwrap().len(), before);

    // done: nothing left.
    let dir = state_dir("done");
    let (_, st) = new_job(
        &dir,
        vec![addr],
        &[
            sending(&m, addr),
            Record::Sent {
                id: "A1".into(),
                reply: "250".into(),
                already_there: false,
            },
            Record::Done { id: "A1".into() },
        ],
    );
    assert!(st.pending.is_empty());
    assert_eq!(replayed(&dir).done.len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_journal_cut_in_its_last_line_replays_without_it() {
    let dir = state_dir("cut");
    let path = journal::path_for(&dir, "slow.example");
    let aim = Aim {
        pool: "p".into(),
        targets: vec![],
        target_agents: vec![],
    };
    Journal::create(
        &path,
        &[
            Record::Start {
                domain: "slow.example".into(),
                aim,
            },
            Record::Holding { id: "A1".into() },
        ],
    )
    .unwrap();
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(br#"{"t":"holding","id":"B"#);
    std::fs::write(&path, text).unwrap();
    let r = journal::replay(&path).unwrap();
    assert_eq!(r.pending.keys().collect::<Vec<_>>(), ["A1"]);
    std::fs::remove_dir_all(dir).unwrap();
}

fn options(state_dir: Option<PathBuf>) -> Options {
    Options {
        mta: Mta::Postfix,
        mta_config: None,
        spool: std::env::temp_dir(),
        state_file: None,
        key: None,
        state_dir,
    }
}

fn error_of(r: MoveReply) -> String {
    match r {
        MoveReply::Error(e) => e,
        MoveReply::Ok(s) => panic!("accepted: {s:?}"),
    }
}

#[tokio::test]
async fn requests_are_checked_before_anything_starts() {
    let dir = state_dir("requests");
    let o = options(Some(dir.clone()));
    let req = |domain: &str, targets: &str, status_only: bool| {
        format!(
            r#"{{"domain":"{domain}","pool":"slowq","targets":[{targets}],"status_only":{status_only}}}"#
        )
    };
    assert!(error_of(command(&o, "{").await).starts_with("not a move request"));
    assert!(
        error_of(command(&o, &req("bad domain!", "\"127.0.0.1:25\"", false)).await)
            .contains("bad domain!")
    );
    assert_eq!(
        error_of(command(&o, &req("slow.example", "", false)).await),
        "the pool has no back-ends"
    );
    assert_eq!(
        error_of(
            command(
                &options(None),
                &req("slow.example", "\"127.0.0.1:25\"", false)
            )
            .await
        ),
        "moves need --state-dir"
    );
    let mut spool = options(Some(dir.clone()));
    spool.mta = Mta::Spool;
    assert!(
        error_of(command(&spool, &req("slow.example", "\"127.0.0.1:25\"", false)).await)
            .contains("cannot move")
    );
    // Asking about a domain without a move starts none.
    match command(&o, &req(".quiet.example", "", true)).await {
        MoveReply::Ok(s) => assert_eq!(
            (s.state, s.domain.as_str()),
            (MoveState::None, ".quiet.example")
        ),
        e => panic!("{e:?}"),
    }
    assert!(
        journal::list(&dir).unwrap().is_empty(),
        "nothing journalled"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A finished move read back at start answers status requests, and its journal, cut in
/// its last line by the stop, is whole again before anything is appended to it.
#[tokio::test]
async fn a_finished_move_resumes_as_done_with_a_whole_journal() {
    let dir = state_dir("resume-done");
    let path = journal::path_for(&dir, "slow.example");
    let aim = Aim {
        pool: "slowq".into(),
        targets: vec!["127.0.0.1:25".parse().unwrap()],
        target_agents: vec![],
    };
    let m = queued("A1", &["a@slow.example"]);
    Journal::create(
        &path,
        &[
            Record::Start {
                domain: "slow.example".into(),
                aim: aim.clone(),
            },
            Record::Holding { id: "A1".into() },
            sending(&m, aim.targets[0]),
            Record::Sent {
                id: "A1".into(),
                reply: "250".into(),
                already_there: true,
            },
            Record::Done { id: "A1".into() },
            Record::Refused {
                id: "R9".into(),
                reply: "550 no".into(),
            },
            Record::Finished { at: 7 },
        ],
    )
    .unwrap();
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(br#"{"t":"aim","ai"#);
    std::fs::write(&path, text).unwrap();

    let o = options(Some(dir.clone()));
    resume(&o);
    let req = r#"{"domain":"slow.example","pool":"slowq","targets":[],"status_only":true}"#;
    let s = match command(&o, req).await {
        MoveReply::Ok(s) => s,
        e => panic!("{e:?}"),
    };
    assert_eq!(s.state, MoveState::Done);
    assert_eq!(
        (s.found, s.moved, s.already_there, s.finished),
        (1, 1, 1, Some(7))
    );
    assert_eq!(s.refused.len(), 1);
    // Whole lines only, and the figures kept.
    let r = journal::replay(&path).unwrap();
    assert!(std::fs::read(&path).unwrap().ends_with(b"\n"));
    assert_eq!(r.status.unwrap().moved, 1);
    assert_eq!(r.finished, Some(7));
    std::fs::remove_dir_all(dir).unwrap();
}
