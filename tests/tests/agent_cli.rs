//! `robustifier agent` as a process on loopback: it refuses to start without a key unless
//! told `--insecure-no-key`, serves a poll with the right key and nothing to a wrong one,
//! and logs in JSON with `--log-format json`. No root needed.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, ChildStderr, Command, Stdio},
    time::Duration,
};

use robustifier::{
    agent_wire::{AgentKey, Endpoint, PollError},
    health::agent_client::poll,
};

fn bin() -> PathBuf {
    let bin = robustifier_lab::robustifier_bin();
    assert!(
        bin.is_file(),
        "{} missing: build it with `cargo build -p robustifier`",
        bin.display()
    );
    bin
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(robustifier_lab::unique_prefix(tag));
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    std::fs::write(dir.join("spool/queued"), "x").unwrap();
    dir
}

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Kills the agent when the test ends, passing or not. Its stderr stays open, so that
/// its logging never meets a closed pipe.
struct Agent {
    child: Child,
    _stderr: Option<BufReader<ChildStderr>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts an agent on `listen` and returns it with its stderr, after its first log line
/// (written once it listens), parsed as JSON.
fn start(dir: &std::path::Path, listen: SocketAddr, key: &[&str]) -> (Agent, serde_json::Value) {
    let mut child = Command::new(bin())
        .args([
            "--log-format",
            "json",
            "agent",
            "--listen",
            &listen.to_string(),
        ])
        .args(["--mta", "spool", "--spool"])
        .arg(dir.join("spool"))
        .args(key)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr: ChildStderr = child.stderr.take().unwrap();
    let mut stderr = BufReader::new(stderr);
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let agent = Agent {
        child,
        _stderr: Some(stderr),
    };
    let v: serde_json::Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("not one JSON object per line: {first:?}: {e}"));
    (agent, v)
}

#[test]
fn agent_refuses_to_start_without_a_key() {
    let dir = scratch("agk");
    let out = Command::new(bin())
        .args(["agent", "--listen", &free_port().to_string()])
        .args(["--mta", "spool", "--spool"])
        .arg(dir.join("spool"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--key-file"), "{err}");

    std::fs::write(dir.join("short.key"), "short\n").unwrap();
    let out = Command::new(bin())
        .args(["agent", "--listen", &free_port().to_string(), "--key-file"])
        .arg(dir.join("short.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16"), "{err}");
    assert!(!err.contains('\x1b'), "no colours on a pipe: {err:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn agent_process_serves_the_right_key_only_and_logs_json() {
    let dir = scratch("agp");
    let key_file = dir.join("agent.key");
    std::fs::write(&key_file, "a key shared by agent and front-end\n").unwrap();
    let listen = free_port();
    let (_agent, first) = start(&dir, listen, &["--key-file", key_file.to_str().unwrap()]);
    assert_eq!(first["fields"]["message"], "agent listening", "{first}");
    assert_eq!(first["fields"]["authenticated"], true, "{first}");

    let limit = Duration::from_secs(10);
    let right = Endpoint {
        address: listen,
        key: Some(AgentKey::from_file(&key_file).unwrap()),
    };
    assert_eq!(poll(right, limit).await.unwrap().mail_queue, 1);
    let wrong = Endpoint {
        address: listen,
        key: AgentKey::from_secret(b"some other sixteen octets"),
    };
    let e = poll(wrong, limit).await.unwrap_err();
    assert!(matches!(e, PollError::NoReport), "{e}");
    let none = Endpoint {
        address: listen,
        key: None,
    };
    let e = poll(none, limit).await.unwrap_err();
    assert!(matches!(e, PollError::KeyExpected), "{e}");
    assert_eq!(
        poll(right, limit).await.unwrap().mail_queue,
        1,
        "still serving"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Whoever reads the agent's logs may be gone (a pipe to a collector that stopped): the
/// agent's log lines cannot be written, and it serves all the same.
#[tokio::test]
async fn agent_outlives_the_reader_of_its_logs() {
    let dir = scratch("agl");
    let listen = free_port();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let child = Command::new(bin())
        .args([
            "agent",
            "--insecure-no-key",
            "--listen",
            &listen.to_string(),
        ])
        .args(["--mta", "spool", "--spool"])
        .arg(dir.join("spool"))
        .stderr(Stdio::from(write))
        .spawn()
        .unwrap();
    let mut agent = Agent {
        child,
        _stderr: None,
    };
    let ep = Endpoint {
        address: listen,
        key: None,
    };
    // Nothing on stderr tells when it listens: ask until it answers or exits.
    let r = loop {
        match poll(ep, Duration::from_secs(10)).await {
            Ok(r) => break r,
            Err(PollError::Connect(_)) => {
                if let Some(status) = agent.child.try_wait().unwrap() {
                    panic!("the agent exited with {status} when it could not log");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(r.mail_queue, 1);
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent is running"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn insecure_agent_must_be_asked_for() {
    let dir = scratch("agi");
    let listen = free_port();
    let (_agent, first) = start(&dir, listen, &["--insecure-no-key"]);
    assert_eq!(first["fields"]["authenticated"], false, "{first}");
    let r = poll(
        Endpoint {
            address: listen,
            key: None,
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(r.mail_queue, 1);
    std::fs::remove_dir_all(dir).unwrap();
}
