//! Moving a domain's queued mail between two Postfix back-ends with their agents: be1
//! cannot deliver slow.example (nothing resolves in the lab) and hands it over to be2,
//! which accepts it and keeps it queued (relayed to an address where nothing listens).
//! Every message arrives exactly once, its other recipients stay at be1, and an agent
//! killed again and again during a move loses and duplicates nothing. Privileged.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use robustifier::{
    agent_wire::{AgentKey, Endpoint, MoveRequest, MoveState, MoveStatus},
    health::agent_client::move_domain,
};
use robustifier_lab::{
    Lab, Plan,
    mail::{MailHost, Make, Users, clients, postfix},
    process::Signal,
    topology::internal_v4,
};

const SLOW: &str = "slow.example";
/// Deferred at be1 too (nothing resolves): the recipient kept at the source.
const OTHER: &str = "other.invalid";

fn agent_addr(i: usize) -> SocketAddr {
    SocketAddr::new(internal_v4(11 + i as u8).into(), 7025)
}

/// Starts the agent of back-end `i` with a state directory; returns its daemon's index
/// in the lab's list (for SIGKILL by pid).
fn start_agent(lab: &mut Lab, i: usize, host: &MailHost) -> i32 {
    let (bin, key, conf, state) = (
        robustifier_lab::robustifier_bin().display().to_string(),
        robustifier_lab::agent_key_file(&lab.log_dir)
            .display()
            .to_string(),
        postfix::config_dir(&host.layout).display().to_string(),
        lab.log_dir.join(format!("agent-state-{i}")),
    );
    std::fs::create_dir_all(&state).unwrap();
    let listen = agent_addr(i).to_string();
    let spool = host.layout.dir.display().to_string();
    let state = state.display().to_string();
    let argv = [
        bin.as_str(),
        "agent",
        "--listen",
        &listen,
        "--key-file",
        &key,
        "--mta",
        "postfix",
        "--mta-config",
        &conf,
        "--spool",
        &spool,
        "--state-dir",
        &state,
    ];
    let ns = lab.backends[i].ns.clone();
    let pid = lab
        .spawn(&ns, &format!("agent-be{}", i + 1), &argv)
        .unwrap()
        .pid()
        .as_raw();
    robustifier_lab::wait_port(&ns, agent_addr(i)).unwrap();
    pid
}

/// Kills the agent of pid `pid` with SIGKILL and waits until it is gone.
fn kill_agent(lab: &mut Lab, pid: i32) {
    let d = lab
        .daemons()
        .iter_mut()
        .find(|d| d.pid().as_raw() == pid)
        .unwrap();
    d.stop_with(Signal::SIGKILL, Duration::from_secs(10))
        .unwrap();
}

/// Submits a message with `message_id` from alice to `to` (comma-separated) on be1's
/// submission port.
fn submit(lab: &Lab, host: &MailHost, to: &str, message_id: &str) {
    let server = host.submission_addr().unwrap().to_string();
    let header = format!("Message-Id: <{message_id}>");
    let args = [
        "--server",
        &server,
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice@example.test",
        "--auth-password",
        "alice-pw",
        "--from",
        "alice@example.test",
        "--to",
        to,
        "--header",
        &header,
    ];
    let out = clients::swaks(&lab.frontend(0).ns, "fea.robustifier.test", &args);
    assert!(out.status.success(), "{}", clients::text(&out));
}

/// A queued message: id, queue, recipients, Message-ID.
#[derive(Debug, Clone)]
struct InQueue {
    queue: String,
    recipients: Vec<String>,
    message_id: String,
}

/// `host`'s queue, with each message's Message-ID read from its header.
fn queue_of(host: &MailHost) -> BTreeMap<String, InQueue> {
    let conf = postfix::config_dir(&host.layout);
    let out = host
        .layout
        .ns
        .command("postqueue")
        .arg("-c")
        .arg(&conf)
        .arg("-j")
        .output()
        .unwrap();
    let mut q = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let id = v["queue_id"].as_str().unwrap().to_owned();
        let header = host
            .layout
            .ns
            .command("postcat")
            .arg("-c")
            .arg(&conf)
            .args(["-h", "-q", &id])
            .output()
            .unwrap();
        let header = String::from_utf8_lossy(&header.stdout);
        let message_id = header
            .lines()
            .find_map(|l| {
                l.strip_prefix("Message-Id:")
                    .or_else(|| l.strip_prefix("Message-ID:"))
            })
            .map(|m| m.trim().trim_matches(['<', '>']).to_owned())
            .unwrap_or_default();
        let recipients = v["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["address"].as_str().unwrap().to_owned())
            .collect();
        q.insert(
            id,
            InQueue {
                queue: v["queue_name"].as_str().unwrap().to_owned(),
                recipients,
                message_id,
            },
        );
    }
    q
}

fn with_slow(q: &BTreeMap<String, InQueue>) -> Vec<&InQueue> {
    q.values()
        .filter(|m| {
            m.recipients
                .iter()
                .any(|r| r.ends_with(&format!("@{SLOW}")))
        })
        .collect()
}

/// Waits until be1 holds `n` messages for slow.example, all deferred (tried once).
fn wait_deferred(host: &MailHost, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let q = queue_of(host);
        let slow = with_slow(&q);
        if slow.len() == n && slow.iter().all(|m| m.queue == "deferred") {
            return;
        }
        assert!(Instant::now() < deadline, "never {n} deferred: {q:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn request(status_only: bool) -> MoveRequest {
    MoveRequest {
        domain: SLOW.into(),
        pool: "slowq".into(),
        targets: vec![SocketAddr::new(internal_v4(12).into(), 25)],
        status_only,
        target_agents: vec![agent_addr(1)],
    }
}

fn ask(lab: &Lab, status_only: bool) -> Result<MoveStatus, String> {
    let key = AgentKey::from_file(&robustifier_lab::agent_key_file(&lab.log_dir)).unwrap();
    let agent = Endpoint {
        address: agent_addr(0),
        key: Some(key),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let req = request(status_only);
    // From be1's own namespace: the agent listens on its internal address only.
    lab.backends[0]
        .ns
        .enter(move || rt.block_on(move_domain(agent, &req, Duration::from_secs(30))))
        .unwrap()
        .map_err(|e| e.to_string())
}

/// Polls be1's move until it is done.
fn wait_done(lab: &Lab) -> MoveStatus {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match ask(lab, true) {
            Ok(s) if s.state == MoveState::Done => return s,
            Ok(s) => assert!(Instant::now() < deadline, "never done: {s:#?}"),
            Err(e) => assert!(Instant::now() < deadline, "no status: {e}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// How many times each Message-ID is queued at be2 for slow.example.
fn copies_at_target(be2: &MailHost) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for m in with_slow(&queue_of(be2)) {
        *n.entry(m.message_id.clone()).or_insert(0) += 1;
    }
    n
}

#[test]
fn queued_mail_moves_once_and_survives_a_killed_agent() {
    let Some(mut lab) = robustifier_lab::privileged_lab("qmove", Plan::new(1, 2)) else {
        return;
    };
    let users = Users::new()
        .with("alice@example.test", "alice-pw")
        .with("bob@example.test", "bob-pw");
    let be1 = MailHost::start(&mut lab, 0, Make::Postfix, &users).unwrap();
    let be2 = MailHost::start(&mut lab, 1, Make::Postfix, &users).unwrap();
    // be2 takes slow.example and keeps it: its relay is an address where nothing listens.
    postfix::relay_domain(
        &be2.layout,
        SLOW,
        SocketAddr::new(internal_v4(12).into(), 2525),
    )
    .unwrap();
    let mut agent1 = start_agent(&mut lab, 0, &be1);
    start_agent(&mut lab, 1, &be2);

    // Without a move, status_only reports none.
    assert_eq!(ask(&lab, true).unwrap().state, MoveState::None);

    // One message for slow.example only, one also for bob (delivered at once on be1) and
    // for other.invalid (deferred on be1 like slow.example).
    submit(&lab, &be1, &format!("x1@{SLOW}"), "m1@lab.test");
    submit(
        &lab,
        &be1,
        &format!("x2@{SLOW},bob@example.test,c@{OTHER}"),
        "m2@lab.test",
    );
    wait_deferred(&be1, 2);
    assert_eq!(
        be1.wait_for_messages("bob@example.test", 1).unwrap().len(),
        1
    );

    let started = ask(&lab, false).unwrap();
    assert_eq!(started.state, MoveState::Running, "{started:?}");
    let s = wait_done(&lab);
    assert_eq!(
        (s.found, s.moved, s.recipients_moved, s.recipients_kept),
        (2, 2, 2, 1),
        "{s:#?}"
    );
    assert!(s.refused.is_empty() && s.last_error.is_none(), "{s:#?}");

    let q1 = queue_of(&be1);
    assert!(
        with_slow(&q1).is_empty(),
        "nothing for {SLOW} left: {q1:#?}"
    );
    // m2's other.invalid recipient stays queued at be1, and only it.
    let kept: Vec<&InQueue> = q1
        .values()
        .filter(|m| m.message_id == "m2@lab.test")
        .collect();
    assert_eq!(kept.len(), 1, "{q1:#?}");
    assert_eq!(kept[0].recipients, [format!("c@{OTHER}")]);
    assert_eq!(
        be1.messages("bob@example.test").len(),
        1,
        "bob's copy was delivered once, not again by the move"
    );
    let at2 = copies_at_target(&be2);
    assert_eq!(
        at2,
        BTreeMap::from([("m1@lab.test".into(), 1), ("m2@lab.test".into(), 1)])
    );
    let q2 = queue_of(&be2);
    let m2 = q2.values().find(|m| m.message_id == "m2@lab.test").unwrap();
    assert_eq!(m2.recipients, [format!("x2@{SLOW}")], "only the moved one");

    // Forty messages, the agent killed twenty times while moving them.
    const N: usize = 40;
    for i in 0..N {
        submit(
            &lab,
            &be1,
            &format!("k{i}@{SLOW}"),
            &format!("k{i}@lab.test"),
        );
    }
    wait_deferred(&be1, N);
    let s = ask(&lab, false).unwrap();
    assert_eq!(s.state, MoveState::Running, "a new move: {s:?}");
    let random = std::hash::RandomState::new();
    for kill in 0..20u32 {
        // A random moment: hashing with a fresh random state.
        let pause = std::hash::BuildHasher::hash_one(&random, kill) % 400;
        std::thread::sleep(Duration::from_millis(pause));
        kill_agent(&mut lab, agent1);
        agent1 = start_agent(&mut lab, 0, &be1);
    }
    let s = wait_done(&lab);
    let q1 = queue_of(&be1);
    assert!(
        with_slow(&q1).is_empty(),
        "nothing for {SLOW} left: {q1:#?}"
    );
    let at2 = copies_at_target(&be2);
    let missing: Vec<usize> = (0..N)
        .filter(|i| !at2.contains_key(&format!("k{i}@lab.test")))
        .collect();
    let twice: Vec<(&String, &usize)> = at2.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "lost: {missing:?} ({s:#?})");
    assert!(twice.is_empty(), "duplicated: {twice:?} ({s:#?})");
    assert_eq!(at2.len(), N + 2);
    // The figures survive the kills too: each message found and moved once.
    assert_eq!((s.found, s.moved), (N as u32, N as u32), "{s:#?}");
    eprintln!(
        "after 20 kills: moved {} (already there {}) of {} found",
        s.moved, s.already_there, s.found
    );
}
