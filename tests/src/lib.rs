//! The Robustifier lab: a small network of namespaces on bridges, with the processes run
//! inside them, built and torn down by code so that tests, the demo and `cargo xtask lab`
//! share one topology.
//!
//! Invariant: everything the lab creates carries its run's prefix and is removed by
//! [`Lab::down`], which also runs on drop (a failing test unwinds through it).
//! Addresses come from 198.18.0.0/15 and 2001:db8::/32 only; nothing is routed off the
//! machine (no namespace has a route to the host or beyond).

pub mod cli;
pub mod client;
pub mod cluster;
pub mod directory;
pub mod frontend_config;
pub mod image;
pub mod mail;
pub mod manager;
pub mod maps;
pub mod monitor;
pub mod netns;
pub mod privileged;
pub mod process;
pub mod relay_lab;
pub mod sink;
pub mod topology;
pub mod vm;
pub mod vrrp;
pub mod web;

pub use netns::Netns;
pub use process::Daemon;
pub use topology::{Host, Lab, Plan};

/// The workspace's `target` directory, where `cargo xtask` puts the binaries the lab runs.
pub fn robustifier_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ROBUSTIFIER_BIN") {
        return p.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/robustifier")
}

/// The key the lab's agents and front-ends share (`agent --key-file`, `agent_key_file`):
/// written once into `dir` (a lab's log directory), new for every lab.
pub fn agent_key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("agent.key");
    if !path.exists() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let key = format!("lab-agent-key-{}-{}", unique_prefix("k"), now.as_nanos());
        std::fs::write(&path, key).expect("write the lab's agent key");
    }
    path
}

/// A name prefix unique to this process and call, for namespaces and pin directories:
/// `rbt<pid>-<tag><n>`, so that a sweep can tell a live run's labs from a dead run's.
pub fn unique_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "rbt{}-{}{}",
        std::process::id(),
        tag,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The pid in a name made by [`unique_prefix`] (or any `<letters><pid>-...` name).
pub fn owner_pid(name: &str) -> Option<u32> {
    let digits: String = name
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Whether the process that created `name` is gone (or the name carries no pid).
pub fn orphaned(name: &str) -> bool {
    owner_pid(name).is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Waits until something listens on `addr` inside `ns` (at most 20 s).
pub fn wait_port(ns: &Netns, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ok = ns.enter(move || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300))
                .is_ok()
        })?;
        if ok {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr} in {}",
            ns.name
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A lab for a privileged test: `None` (with the reason printed, or a panic under
/// `cargo xtask test`) when the preconditions are missing; the lab otherwise, under a
/// unique prefix.
pub fn privileged_lab(tag: &str, plan: Plan) -> Option<Lab> {
    if !privileged::check(tag) {
        return None;
    }
    Some(Lab::up(&unique_prefix(tag), plan).expect("lab up"))
}
