//! One module per scenario; each builds its own lab and records into the [`crate::Ctx`].

pub mod bulk;
pub mod bulk_pop3;
pub mod cost;
pub mod drop_path;
pub mod failover;
pub mod lookups;
pub mod memory;
pub mod overload;
pub mod propagation;
pub mod queues;
pub mod reload;
pub mod slow;

use robustifier_lab::{Lab, Plan, unique_prefix};

/// A lab with one front-end (two for failover) and `backends` back-ends, its TCP tuned
/// for many short sessions from one client address (in its own namespaces only).
pub fn lab(tag: &str, frontends: usize, backends: usize) -> anyhow::Result<Lab> {
    let lab = Lab::up(
        &unique_prefix(tag),
        Plan {
            frontends,
            backends,
        },
    )?;
    let hosts = std::iter::once(&lab.client)
        .chain(&lab.frontends)
        .chain(&lab.backends);
    for h in hosts {
        h.ns.sh(
            "sysctl",
            &[
                "-q",
                "-w",
                "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=1024 65000",
                "net.core.somaxconn=8192",
                "net.ipv4.tcp_max_syn_backlog=8192",
            ],
        )?;
    }
    Ok(lab)
}

/// `items` in a random order (each repetition shuffles the systems anew).
pub fn shuffled<T: Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    fastrand::shuffle(&mut v);
    v
}
