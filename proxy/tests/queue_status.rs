//! `robustifier queue status` without root: a front-end (`run --without-kernel`) asks its
//! back-ends' agents (the real binary, with the pool's key) for their mail queue per
//! domain. One agent reads a stand-in `postqueue` on its PATH that prints a listing
//! captured from the lab's Postfix; the other back-end's agent is not running and is
//! listed with its error. Then an operator asks the same through the cluster manager
//! (`cluster queue`), which asks the member's front-end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{
    os::unix::fs::PermissionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use support::{
    Daemon, PATIENCE, cluster::Cluster, config, free_port, robustifier, run_without_kernel, tempdir,
};

const BIN: &str = env!("CARGO_BIN_EXE_robustifier");

#[test]
fn the_front_end_lists_each_agents_queue_per_domain() {
    let dir = tempdir("queue-status");
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/fixtures/postqueue-j.txt");
    // The stand-in insists on the arguments the agent must pass.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let conf = dir.join("postfix-etc");
    let script = bin.join("postqueue");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1 $2 $3\" = \"-c {} -j\" ] || {{ echo \"unexpected: $*\" >&2; exit 64; }}\nexec cat '{}'\n",
            conf.display(),
            fixture.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = dir.join("agent.key");
    std::fs::write(&key, "the agents' shared key, long enough\n").unwrap();

    let agent_port = free_port();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let _agent = Daemon::spawn(
        Command::new(BIN)
            .arg("agent")
            .args(["--listen", &format!("127.0.0.1:{agent_port}")])
            .arg("--key-file")
            .arg(&key)
            .args(["--mta", "postfix", "--mta-config"])
            .arg(&conf)
            .arg("--spool")
            .arg(&dir)
            .env("PATH", path),
    );
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_err() {
        assert!(Instant::now() < deadline, "the agent never listened");
        std::thread::sleep(Duration::from_millis(50));
    }

    let socket = dir.join("control").join("fe.sock");
    let file = dir.join("robustifier.toml");
    std::fs::write(
        &file,
        config(&format!(
            "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = {}\nvips = [\"127.0.0.1\"]\npool = \"mx\"\n\
             [[pool]]\nname = \"mx\"\nidentity = \"none\"\nagent_key_file = \"{}\"\n\
             backend = [{{ name = \"mx1\", address = \"127.0.0.1:9\", agent = \"127.0.0.1:{agent_port}\" }},\n\
             {{ name = \"mx2\", address = \"127.0.0.1:9\", agent = \"127.0.0.1:{}\" }}]\n\
             [ha]\ncontrol_socket = \"{}\"\n",
            free_port(),
            key.display(),
            free_port(),
            socket.display()
        )),
    )
    .unwrap();
    let (frontend, _log) = run_without_kernel(&file);
    let _frontend = Daemon::new(frontend);

    let sock = socket.to_str().unwrap();
    let out = robustifier(&[
        "queue",
        "status",
        "--domain",
        "Nowhere.Invalid",
        "--json",
        "--socket",
        sock,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["domain"], "nowhere.invalid");
    let backends = status["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{status:#}");
    let mx1 = &backends[0];
    assert_eq!(mx1["backend"], "mx1");
    assert_eq!(mx1["error"], serde_json::Value::Null, "{status:#}");
    assert_eq!(mx1["mta"], "postfix");
    // The fixture: two deferred messages for nowhere.invalid, the second also for
    // other.invalid; only the domain asked for is listed.
    let domains = mx1["domains"].as_array().unwrap();
    assert_eq!(domains.len(), 1, "{status:#}");
    assert_eq!(domains[0]["domain"], "nowhere.invalid");
    assert_eq!(domains[0]["queued"], 2);
    assert_eq!(domains[0]["deferred"], 2);
    assert!(
        domains[0]["reason"].as_str().unwrap().starts_with(
            "Host or domain name not found. Name service error for name=nowhere.invalid"
        ),
        "{status:#}"
    );
    assert!(domains[0]["oldest_secs"].as_u64().unwrap() > 0);
    let mx2 = &backends[1];
    assert_eq!(mx2["backend"], "mx2");
    assert!(
        mx2["error"].as_str().unwrap().starts_with("connect"),
        "{status:#}"
    );

    // The table: both domains of mx1, the most deferred first, then mx2 with its error.
    let out = robustifier(&["queue", "status", "--socket", sock]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("domain"), "{table}");
    assert!(
        lines[1].starts_with("nowhere.invalid") && lines[1].contains("mx1"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("other.invalid") && lines[2].contains("mx1"),
        "{table}"
    );
    assert!(
        lines[3].contains("mx2") && lines[3].contains("error: connect"),
        "{table}"
    );

    // The same through the cluster manager: an operator asks, the member's front-end
    // answers.
    let mut c = Cluster::init(dir.join("cluster"), &["fe1"], &[], None).started();
    c.start_member_on("fe1", &socket, &[]);
    let cluster_queue = || {
        c.cli(&[
            "queue",
            "--member",
            "fe1",
            "--domain",
            "nowhere.invalid",
            "--json",
        ])
    };
    let deadline = Instant::now() + PATIENCE;
    let out = loop {
        // Until the manager runs and the member is connected.
        let out = cluster_queue();
        if out.status.success() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "cluster queue: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let by_member: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fe1 = &by_member["fe1"];
    assert_eq!(
        fe1["backends"][0]["domains"][0]["deferred"], 2,
        "{by_member:#}"
    );
    assert!(
        fe1["backends"][1]["error"]
            .as_str()
            .unwrap()
            .starts_with("connect"),
        "{by_member:#}"
    );
}
