//! Moving a domain's queued mail, and automatic isolation, without root: front-ends on
//! loopback whose back-ends' agents are played by this test (a listener speaking the
//! agent wire protocol with the pool's key, answering polls, `queue` and `move`).
//!
//! - `queue move` asks every back-end outside the target pool once, lists each one (no
//!   agent, a wrong key, no key) with its error, and is refused for a bad domain or pool;
//! - `robustifier queue move --wait` follows the move to its end, and fails naming the
//!   back-ends not done when the time is up;
//! - an `auto = true` block is routed to its pool only while a back-end outside it holds
//!   too much of its mail, with an alarm, a move, and a return when the figures fall.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use robustifier::{
    agent_wire::{
        AgentKey, CHALLENGE_MAGIC, DomainQueue, MoveReply, MoveRequest, MoveState, MoveStatus, Op,
        QueueReply, QueueReport, random_nonce,
    },
    events::Kind,
    frontend::{Command, queue_move::MoveReport},
};
use support::{
    Client, PATIENCE, Running, SmtpBackend, config, robustifier, run_without_kernel, tempdir,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    sync::oneshot,
};

const SECRET: &str = "the agents' shared key, long enough\n";
const REPORT: &str = "robustifier-agent/1 runq=0.10 mailq=0 disk_permille=100";

/// An agent played by the test: what it was asked to move, and the queue it reports.
#[derive(Clone)]
struct FakeAgent {
    addr: SocketAddr,
    /// Move requests whose MAC was right.
    moves: Arc<Mutex<Vec<MoveRequest>>>,
    queue: Arc<Mutex<Vec<DomainQueue>>>,
}

impl FakeAgent {
    /// Listens on loopback; with `key`, only exchanges sealed with it are answered.
    async fn start(key: Option<AgentKey>) -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = FakeAgent {
            addr: listener.local_addr().unwrap(),
            moves: Arc::default(),
            queue: Arc::default(),
        };
        let me = agent.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move { me.serve(tcp, key).await });
            }
        });
        agent
    }

    fn moves(&self) -> Vec<MoveRequest> {
        self.moves.lock().unwrap().clone()
    }

    fn set_queue(&self, domains: Vec<DomainQueue>) {
        *self.queue.lock().unwrap() = domains;
    }

    /// The reply's JSON to a checked command.
    fn answer(&self, op: Op, arg: &str) -> String {
        match op {
            Op::Queue => serde_json::to_string(&QueueReply::Ok(QueueReport {
                mta: "postfix".into(),
                messages: 0,
                truncated: false,
                domains: self.queue.lock().unwrap().clone(),
            }))
            .unwrap(),
            Op::Move => {
                let request: MoveRequest = serde_json::from_str(arg).unwrap();
                self.moves.lock().unwrap().push(request.clone());
                // Moving when started, done when asked again.
                let state = if request.status_only {
                    MoveState::Done
                } else {
                    MoveState::Running
                };
                serde_json::to_string(&MoveReply::Ok(MoveStatus {
                    domain: request.domain,
                    pool: request.pool,
                    state,
                    found: 2,
                    moved: 2,
                    recipients_moved: 3,
                    recipients_kept: 1,
                    already_there: 0,
                    refused: Vec::new(),
                    last_error: None,
                    started: 1,
                    finished: None,
                }))
                .unwrap()
            }
            // The duplicate check is the move engine's, not the front-end's.
            Op::Find => panic!("a front-end never asks find"),
        }
    }

    async fn serve(&self, tcp: tokio::net::TcpStream, key: Option<AgentKey>) {
        let (rd, mut wr) = tcp.into_split();
        let mut rd = BufReader::new(rd);
        let mut line = String::new();
        let Some(key) = key else {
            // Without a key: the report first, then one plain command.
            let _ = wr.write_all(format!("{REPORT}\n").as_bytes()).await;
            if rd.read_line(&mut line).await.is_ok() && line.trim() == "command op=queue" {
                let json = self.answer(Op::Queue, "");
                let _ = wr.write_all(format!("{json}\n").as_bytes()).await;
            }
            return;
        };
        let challenge = random_nonce().unwrap();
        let hello = format!("{CHALLENGE_MAGIC} challenge={}\n", B64.encode(challenge));
        if wr.write_all(hello.as_bytes()).await.is_err() || rd.read_line(&mut line).await.is_err() {
            return;
        }
        let reply = if line.starts_with("poll ") {
            key.check_answer(&challenge, &line)
                .map(|nonce| key.seal(&challenge, &nonce, REPORT))
        } else {
            key.check_command(&challenge, &line).map(|c| {
                let json = self.answer(c.op, &c.arg);
                key.seal_reply(&challenge, &c.nonce, c.op, &json)
            })
        };
        // A wrong MAC ends the connection without a word, as the real agent does.
        if let Some(reply) = reply {
            let _ = wr.write_all(reply.as_bytes()).await;
        }
    }
}

fn key() -> AgentKey {
    AgentKey::from_secret(SECRET.as_bytes()).unwrap()
}

async fn queue_move(
    fe: &Running,
    domain: &str,
    pool: &str,
    status_only: bool,
) -> Result<MoveReport, String> {
    let (done, answer) = oneshot::channel();
    fe.commands
        .send(Command::QueueMove {
            domain: domain.into(),
            pool: pool.into(),
            status_only,
            done,
        })
        .await
        .unwrap();
    answer.await.unwrap()
}

async fn events(fe: &Running) -> Vec<Kind> {
    let (done, events) = oneshot::channel();
    fe.commands
        .send(Command::Events { since: 0, done })
        .await
        .unwrap();
    events
        .await
        .unwrap()
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

async fn alarms(fe: &Running) -> Vec<String> {
    let (done, report) = oneshot::channel();
    fe.commands.send(Command::Alarms { done }).await.unwrap();
    report
        .await
        .unwrap()
        .alarms
        .into_iter()
        .map(|a| a.key)
        .collect()
}

/// Waits (at most [`PATIENCE`]) for an event `want` accepts.
async fn wait_for_event(fe: &Running, what: &str, want: impl Fn(&Kind) -> bool) -> Kind {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(k) = events(fe).await.into_iter().find(|k| want(k)) {
            return k;
        }
        assert!(Instant::now() < deadline, "no {what} event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_asks_every_other_back_end_once_and_lists_those_it_cannot() {
    let dir = tempdir("queue-move");
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, SECRET).unwrap();
    let mx1 = FakeAgent::start(Some(key())).await;
    let wrong = FakeAgent::start(Some(
        AgentKey::from_secret(b"another key altogether, long enough").unwrap(),
    ))
    .await;
    let insecure = FakeAgent::start(None).await;
    let slow1 = FakeAgent::start(Some(key())).await;
    let text = config(&format!(
        "[[service]]\nname = \"relay\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
         backend = [{{ name = \"mx1\", address = \"127.0.0.1:9\", agent = \"{}\" }},\n\
         {{ name = \"mx2\", address = \"127.0.0.1:9\", agent = \"{}\" }},\n\
         {{ name = \"mx3\", address = \"127.0.0.1:9\" }}]\n\
         [[pool]]\nname = \"legacy\"\nidentity = \"none\"\nagent_insecure = true\n\
         backend = [{{ name = \"old1\", address = \"127.0.0.1:9\", agent = \"{}\" }}]\n\
         [[pool]]\nname = \"slowq\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
         backend = [{{ name = \"slow1\", address = \"127.0.0.1:2525\", agent = \"{}\" }}]\n",
        mx1.addr,
        wrong.addr,
        insecure.addr,
        slow1.addr,
        k = key_file.display(),
    ));
    let fe = Running::start(&dir, &text);

    let r = queue_move(&fe, ".Slow.Example", "slowq", false)
        .await
        .unwrap();
    assert_eq!(
        (r.domain.as_str(), r.pool.as_str()),
        (".slow.example", "slowq")
    );
    let names: Vec<&str> = r.backends.iter().map(|b| b.backend.as_str()).collect();
    assert_eq!(names, ["mx1", "mx2", "mx3", "old1"], "{r:?}");
    let mx1_status = r.backends[0].status.as_ref().unwrap();
    assert_eq!(mx1_status.state, MoveState::Running);
    assert_eq!(r.backends[0].error, None);
    // The agent with another key never took the command.
    assert!(r.backends[1].error.is_some() && r.backends[1].status.is_none());
    assert!(wrong.moves().is_empty());
    assert_eq!(
        r.backends[2].error.as_deref(),
        Some("the back-end has no agent")
    );
    // A move changes the back-end's queue: never asked of an agent without a key.
    assert!(r.backends[3].error.is_some() && r.backends[3].status.is_none());
    // mx1's agent got the pattern, the pool and the pool's back-ends; the pool's own
    // agent was not asked.
    assert_eq!(
        mx1.moves(),
        [MoveRequest {
            domain: ".slow.example".into(),
            pool: "slowq".into(),
            targets: vec!["127.0.0.1:2525".parse().unwrap()],
            status_only: false,
            target_agents: vec![slow1.addr],
        }]
    );
    assert!(slow1.moves().is_empty());

    // The same again as a status request: mx1 is done.
    let r = queue_move(&fe, ".slow.example", "slowq", true)
        .await
        .unwrap();
    assert_eq!(
        r.backends[0].status.as_ref().unwrap().state,
        MoveState::Done
    );
    assert!(mx1.moves()[1].status_only);
    // `queue moves` without a pool takes the block's: there is none.
    assert_eq!(
        queue_move(&fe, ".slow.example", "", true)
            .await
            .unwrap_err(),
        "no [[domain_queue]] names .slow.example: say which pool"
    );

    assert_eq!(
        queue_move(&fe, "slow.example", "nowhere", false)
            .await
            .unwrap_err(),
        "no pool nowhere"
    );
    let bad = queue_move(&fe, "bad..example", "slowq", false)
        .await
        .unwrap_err();
    assert!(bad.contains("is not a domain pattern"), "{bad}");
    assert_eq!(mx1.moves().len(), 2, "refused moves ask nobody");
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_waits_for_the_move_and_names_who_is_not_done() {
    let dir = tempdir("queue-move-cli");
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, SECRET).unwrap();
    let mx1 = FakeAgent::start(Some(key())).await;
    let slow1 = FakeAgent::start(Some(key())).await;
    let socket = dir.join("control").join("fe.sock");
    let file = dir.join("robustifier.toml");
    std::fs::write(
        &file,
        config(&format!(
            "[[service]]\nname = \"relay\"\nprotocol = \"smtp\"\nport = {}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
             backend = [{{ name = \"mx1\", address = \"127.0.0.1:9\", agent = \"{}\" }}]\n\
             [[pool]]\nname = \"other\"\nidentity = \"none\"\n\
             backend = [{{ name = \"o1\", address = \"127.0.0.1:9\" }}]\n\
             [[pool]]\nname = \"slowq\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
             backend = [{{ name = \"slow1\", address = \"127.0.0.1:2525\", agent = \"{}\" }}]\n\
             [ha]\ncontrol_socket = \"{}\"\n",
            support::free_port(),
            mx1.addr,
            slow1.addr,
            socket.display(),
            k = key_file.display(),
        )),
    )
    .unwrap();
    let (frontend, _log) = run_without_kernel(&file);
    let _frontend = support::Daemon::new(frontend);
    let sock = socket.to_str().unwrap().to_owned();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            robustifier(&args)
        })
    };
    let args = |to: &str, wait: &str| -> Vec<String> {
        [
            "queue",
            "move",
            "--domain",
            "slow.example",
            "--to",
            to,
            "--wait",
            wait,
            "--json",
            "--socket",
            &sock,
        ]
        .map(str::to_owned)
        .to_vec()
    };

    // To "other": mx1 and slow1 move, and are done when asked again.
    let out = run(args("other", "60")).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: MoveReport = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<_> = report
        .backends
        .iter()
        .map(|b| (b.backend.as_str(), b.status.as_ref().map(|s| s.state)))
        .collect();
    assert_eq!(
        states,
        [
            ("mx1", Some(MoveState::Done)),
            ("slow1", Some(MoveState::Done))
        ]
    );
    assert!(!mx1.moves()[0].status_only && mx1.moves()[1].status_only);

    // To "slowq": o1 has no agent and is never done; the command says so and fails.
    let out = run(args("slowq", "2")).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the move of slow.example is not done on: o1"),
        "{stderr}"
    );

    // `queue moves` asks without starting anything.
    let before = slow1.moves().len();
    let out = run([
        "queue",
        "moves",
        "--domain",
        "slow.example",
        "--to",
        "other",
        "--socket",
        &sock,
    ]
    .map(str::to_owned)
    .to_vec())
    .await
    .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("slow1") && table.contains("done"), "{table}");
    assert!(slow1.moves()[before..].iter().all(|m| m.status_only));

    // The same through the cluster manager: an operator asks, the member's front-end
    // starts the move, and the manager's audit trail has it.
    let (d, s2) = (dir.clone(), sock.clone());
    tokio::task::spawn_blocking(move || cluster_move(&d, &s2))
        .await
        .unwrap();
    assert!(mx1.moves().iter().filter(|m| !m.status_only).count() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_block_is_isolated_while_a_back_end_holds_its_mail_and_returns() {
    let dir = tempdir("isolation");
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, SECRET).unwrap();
    let (mx, slowq) = (SmtpBackend::start().await, SmtpBackend::start().await);
    let mx_agent = FakeAgent::start(Some(key())).await;
    let slow_agent = FakeAgent::start(Some(key())).await;
    let text = config(&format!(
        "[[service]]\nname = \"relay\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
         backend = [{{ name = \"mx0\", address = \"{}\", agent = \"{}\" }}]\n\
         [[pool]]\nname = \"slowq\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
         backend = [{{ name = \"slowq0\", address = \"{}\", agent = \"{}\" }}]\n\
         [[domain_queue]]\ndomains = [\"slow.example\"]\npool = \"slowq\"\nauto = true\n\
         deferred_alarm = 5\nrecover_secs = 1\nisolation_interval_secs = 1\n",
        mx.addr,
        mx_agent.addr,
        slowq.addr,
        slow_agent.addr,
        k = key_file.display(),
    ));
    let fe = Running::start(&dir, &text);
    let send = |to: &'static str, marker: &'static str| {
        let addr = fe.addr("relay");
        async move {
            let mut c = Client::connect(addr).await;
            let reply = c.send_message(to, marker).await;
            assert!(reply.starts_with("250"), "{to}: {reply}");
        }
    };
    let got = |b: &SmtpBackend, marker: &str| b.messages().iter().any(|m| m.contains(marker));

    // Not isolated: the block's domain goes where the service sends everything.
    send("a@slow.example", "before").await;
    assert!(got(&mx, "before") && !got(&slowq, "before"));

    // The pool's own back-end holding the mail is no reason; mx0 holding it is.
    let slow = |deferred| DomainQueue {
        domain: "slow.example".into(),
        queued: deferred,
        deferred: Some(deferred),
        oldest_secs: 30,
        reason: "4.4.1 connect refused".into(),
    };
    slow_agent.set_queue(vec![slow(100)]);
    mx_agent.set_queue(vec![slow(7)]);
    let raised = wait_for_event(&fe, "domain_isolated", |k| {
        matches!(k, Kind::DomainIsolated { isolated: true, .. })
    })
    .await;
    let Kind::DomainIsolated {
        domains,
        pool,
        reason,
        ..
    } = raised
    else {
        unreachable!()
    };
    assert_eq!((domains.as_str(), pool.as_str()), ("slow.example", "slowq"));
    assert!(reason.starts_with("mx0 holds 7 deferred"), "{reason}");
    assert!(
        alarms(&fe)
            .await
            .contains(&"domain_isolated:slow.example".to_owned())
    );
    let isolated_now = |fe: &Running| {
        let commands = fe.commands.clone();
        async move {
            let (done, report) = oneshot::channel();
            commands.send(Command::Status { done }).await.unwrap();
            report.await.unwrap().domain_queues[0].isolated
        }
    };
    assert_eq!(isolated_now(&fe).await, Some(true));
    send("b@slow.example", "isolated").await;
    assert!(got(&slowq, "isolated") && !got(&mx, "isolated"));
    send("c@fast.example", "others").await;
    assert!(got(&mx, "others"));

    // The move of the domain's queued mail from mx0 (not from the pool's own back-end).
    wait_for_event(
        &fe,
        "queue_move_started",
        |k| matches!(k, Kind::QueueMoveStarted { by, .. } if by == "isolation"),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    while mx_agent.moves().is_empty() {
        assert!(
            Instant::now() < deadline,
            "mx0's agent was never asked to move"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mx_agent.moves()[0].domain, "slow.example");
    assert_eq!(mx_agent.moves()[0].targets, vec![slowq.addr]);
    assert!(slow_agent.moves().is_empty());

    // The sources emptied by the move: the domain's mail now waits in its pool, so it
    // stays isolated.
    mx_agent.set_queue(vec![slow(0)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !events(&fe).await.iter().any(|k| matches!(
            k,
            Kind::DomainIsolated {
                isolated: false,
                ..
            }
        )),
        "released while the pool still holds the domain's mail"
    );
    // The destination took it, everywhere under the threshold (and staying so for
    // recover_secs): back to normal.
    slow_agent.set_queue(vec![slow(2)]);
    mx_agent.set_queue(vec![slow(4)]);
    wait_for_event(&fe, "domain_isolated cleared", |k| {
        matches!(
            k,
            Kind::DomainIsolated {
                isolated: false,
                ..
            }
        )
    })
    .await;
    assert!(
        !alarms(&fe)
            .await
            .contains(&"domain_isolated:slow.example".to_owned())
    );
    assert_eq!(isolated_now(&fe).await, Some(false));
    send("d@slow.example", "after").await;
    assert!(got(&mx, "after") && !got(&slowq, "after"));
    fe.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_a_domain_queue_moves_its_mail_there() {
    let dir = tempdir("reload-move");
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, SECRET).unwrap();
    let mx1 = FakeAgent::start(Some(key())).await;
    let slow1 = FakeAgent::start(Some(key())).await;
    let base = config(&format!(
        "[[service]]\nname = \"relay\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
         backend = [{{ name = \"mx1\", address = \"127.0.0.1:9\", agent = \"{}\" }}]\n\
         [[pool]]\nname = \"slowq\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
         backend = [{{ name = \"slow1\", address = \"127.0.0.1:2525\", agent = \"{}\" }}]\n",
        mx1.addr,
        slow1.addr,
        k = key_file.display(),
    ));
    let fe = Running::start(&dir, &base);
    // An auto block is not moved by the reload: its isolation does that.
    fe.reload(&format!(
        "{base}[[domain_queue]]\ndomains = [\"auto.example\"]\npool = \"slowq\"\nauto = true\ndeferred_alarm = 1000\n"
    ))
    .await
    .unwrap();
    fe.reload(&format!(
        "{base}[[domain_queue]]\ndomains = [\"auto.example\"]\npool = \"slowq\"\nauto = true\ndeferred_alarm = 1000\n\
         [[domain_queue]]\ndomains = [\".slow.example\"]\npool = \"slowq\"\n"
    ))
    .await
    .unwrap();
    let started = wait_for_event(&fe, "queue_move_started", |k| {
        matches!(k, Kind::QueueMoveStarted { .. })
    })
    .await;
    assert_eq!(
        started,
        Kind::QueueMoveStarted {
            domain: ".slow.example".into(),
            pool: "slowq".into(),
            by: "reload".into(),
        }
    );
    // Followed until mx1 says it is done, with its counts.
    let finished = wait_for_event(&fe, "queue_move_finished", |k| {
        matches!(k, Kind::QueueMoveFinished { .. })
    })
    .await;
    assert_eq!(
        finished,
        Kind::QueueMoveFinished {
            domain: ".slow.example".into(),
            pool: "slowq".into(),
            moved: 2,
            recipients_moved: 3,
            refused: 0,
            failed: Vec::new(),
        }
    );
    let asked = mx1.moves();
    assert_eq!(asked[0].domain, ".slow.example");
    assert!(!asked[0].status_only && asked[1..].iter().all(|m| m.status_only));
    assert!(asked.iter().all(|m| m.domain != "auto.example"));
    assert!(slow1.moves().is_empty());
    fe.stop().await;
}

/// A manager and the member of the front-end on `socket`; `cluster queue move --wait`
/// through them, then the audit trail.
fn cluster_move(dir: &std::path::Path, socket: &str) {
    let mut c = support::cluster::Cluster::init(dir.join("cluster"), &["fe1"], &[], None).started();
    c.start_member_on("fe1", std::path::Path::new(socket), &[]);
    let cluster = |args: &[&str]| c.cli(args);
    let move_args = [
        "queue",
        "move",
        "--member",
        "fe1",
        "--domain",
        "slow.example",
        "--to",
        "other",
        "--wait",
        "30",
        "--json",
    ];
    let deadline = Instant::now() + PATIENCE;
    let out = loop {
        // Until the manager runs and the member is connected.
        let out = cluster(&move_args);
        if out.status.success() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "cluster queue move: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let by_member: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fe1 = &by_member["fe1"];
    assert_eq!(fe1["pool"], "other", "{by_member:#}");
    assert_eq!(fe1["backends"][0]["backend"], "mx1");
    assert_eq!(
        fe1["backends"][0]["status"]["state"], "done",
        "{by_member:#}"
    );
    // A bad pattern is refused by the manager before any member is asked.
    let out = cluster(&[
        "queue", "move", "--member", "fe1", "--domain", "a..b", "--to", "other",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is not a domain pattern"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let audit = cluster(&["audit", "--json"]);
    assert!(audit.status.success());
    let trail = String::from_utf8_lossy(&audit.stdout);
    assert!(
        trail.contains("queue move slow.example other on fe1"),
        "{trail}"
    );
}

/// Bad input through the command line: a pool without back-ends is refused before any
/// agent is asked, and a real agent started without `--state-dir` answers a move with a
/// clear error and touches nothing (its MTA's commands are stand-ins that note any call
/// but the listing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_an_empty_pool_or_through_an_agent_without_a_state_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    const BIN: &str = env!("CARGO_BIN_EXE_robustifier");
    let dir = tempdir("queue-move-bad");
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, SECRET).unwrap();
    // The agent's Postfix: `postqueue` lists a captured queue (two deferred messages for
    // nowhere.invalid); `postsuper`, `postcat` and `sendmail` (what a move runs) only note
    // that they were called.
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/fixtures/postqueue-j.txt");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("calls");
    let stand_in = |name: &str, body: String| {
        let script = bin.join(name);
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    stand_in("postqueue", format!("exec cat '{}'", fixture.display()));
    for name in ["postsuper", "postcat", "sendmail"] {
        stand_in(name, format!("echo \"{name} $*\" >> '{}'", calls.display()));
    }
    let agent_port = support::free_port();
    let _agent = support::Daemon::spawn(
        std::process::Command::new(BIN)
            .arg("agent")
            .args(["--listen", &format!("127.0.0.1:{agent_port}")])
            .arg("--key-file")
            .arg(&key_file)
            .args(["--mta", "postfix", "--mta-config"])
            .arg(dir.join("postfix-etc"))
            .arg("--spool")
            .arg(&dir)
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            ),
    );
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_err() {
        assert!(Instant::now() < deadline, "the agent never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let slowq = SmtpBackend::start().await;
    let socket = dir.join("control").join("fe.sock");
    let file = dir.join("robustifier.toml");
    std::fs::write(
        &file,
        config(&format!(
            "[[service]]\nname = \"relay\"\nprotocol = \"smtp\"\nport = {}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\nagent_key_file = \"{k}\"\n\
             backend = [{{ name = \"mx1\", address = \"127.0.0.1:9\", agent = \"127.0.0.1:{agent_port}\" }}]\n\
             [[pool]]\nname = \"empty\"\nidentity = \"none\"\nbackend = []\n\
             [[pool]]\nname = \"slowq\"\nidentity = \"none\"\n\
             backend = [{{ name = \"slow1\", address = \"{}\" }}]\n\
             [ha]\ncontrol_socket = \"{}\"\n",
            support::free_port(),
            slowq.addr,
            socket.display(),
            k = key_file.display(),
        )),
    )
    .unwrap();
    let (frontend, _log) = run_without_kernel(&file);
    let _frontend = support::Daemon::new(frontend);
    let sock = socket.to_str().unwrap().to_owned();
    let run = |to: &'static str| {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || {
            robustifier(&[
                "queue",
                "move",
                "--domain",
                "nowhere.invalid",
                "--to",
                to,
                "--json",
                "--socket",
                &sock,
            ])
        })
    };

    let out = run("empty").await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pool empty has no back-ends"), "{stderr}");

    let out = run("slowq").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: MoveReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.backends.len(), 1, "{report:?}");
    assert_eq!(report.backends[0].backend, "mx1");
    assert_eq!(
        report.backends[0].error.as_deref(),
        Some("the agent says: moves need --state-dir"),
        "{report:?}"
    );
    assert!(report.backends[0].status.is_none());
    // Nothing moved: no queue change, no submission, nothing at the target.
    assert!(
        !calls.exists(),
        "the agent ran: {}",
        std::fs::read_to_string(&calls).unwrap_or_default()
    );
    assert!(slowq.messages().is_empty());
}
