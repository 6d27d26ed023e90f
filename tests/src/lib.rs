//! The Robustifier lab: a small network of namespaces on bridges, with the processes run
//! inside them, built and torn down by code so that tests, the demo and `cargo xtask lab`
//! share one topology.
//!
//! Invariant: everything the lab creates carries its run's prefix and is removed by
//! [`Lab::down`], which also runs on drop (a failing test unwinds through it).
//! Addresses come from 198.18.0.0/15 and 2001:db8::/32 only; nothing is routed off the
//! machine (no namespace has a route to the host or beyond).

pub mod client;
pub mod mail;
pub mod netns;
pub mod privileged;
pub mod process;
pub mod topology;

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

/// A name prefix unique to this process and call, for namespaces and pin directories.
pub fn unique_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "rbt{}{}{}",
        std::process::id() % 100_000,
        tag,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
