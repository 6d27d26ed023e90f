//! Back-end health and load: probes at protocol level, polls of the back-ends' agents,
//! passive results from real sessions, all gathered on the [`board::Board`]; the load
//! writer ([`crate::load_writer`]) publishes them as load records in the pinned map and
//! derives each service's capacity for the kernel.
//!
//! States: up, down (after `fall` consecutive failures; back after `rise` good probes) and
//! draining (the operator asked through the agent: no new sessions, running ones finish).
//! A missing agent degrades to probe-only figures; it never marks a back-end down.

pub mod agent_client;
pub(crate) mod board;
pub(crate) mod probe;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use board::Board;

use crate::supervise::Supervisor;

/// Starts the probe loop of one back-end, and its agent polls if it has an agent: for
/// every back-end at startup, and for those a reload adds.
pub fn spawn_checks(
    pools: &crate::backend::PoolSet,
    board: &Arc<Board>,
    slot: &Arc<board::Slot>,
    stop: &CancellationToken,
    tasks: &Supervisor,
) {
    let (b, stop2) = (Arc::clone(board), stop.clone());
    let probe_slot = Arc::clone(slot);
    // Probes use TLS where the pool's legs do, verifying the certificate the same way.
    let tls: Option<probe::ProbeTls> = pools.pool(&slot.pool_name).and_then(|p| p.tls.clone());
    tasks.spawn(format!("probe {}", slot.backend.name), move || {
        let (b, stop2, slot, tls) = (Arc::clone(&b), stop2.clone(), Arc::clone(&probe_slot), tls.clone());
        async move {
        let h = slot.health.clone();
        loop {
            tokio::select! {
                _ = stop2.cancelled() => return,
                _ = tokio::time::sleep(h.interval) => {}
            }
            let r = probe::probe(slot.backend.address, slot.backend.identity, tls.as_ref(), h.timeout).await;
            match &r {
                Ok(p) => {
                    debug!(backend = %slot.backend.name, latency_us = p.latency.as_micros() as u64, "probe ok");
                    slot.chunking.store(p.chunking, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => debug!(backend = %slot.backend.name, error = %e, "probe failed"),
            }
            let why = r.as_ref().err().map(ToString::to_string).unwrap_or_default();
            b.record(slot.backend.id, r.is_ok(), r.ok().map(|p| p.latency), h.rise, h.fall, &why);
        }
        }
    });
    if let Some(agent) = slot.backend.agent {
        let (b, stop2, slot) = (Arc::clone(board), stop.clone(), Arc::clone(slot));
        tasks.spawn(format!("agent poll {}", slot.backend.name), move || {
            let (b, stop2, slot) = (Arc::clone(&b), stop2.clone(), Arc::clone(&slot));
            async move {
            let mut reachable = true;
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    _ = tokio::time::sleep(slot.health.agent_interval) => {}
                }
                match agent_client::poll(agent, slot.health.timeout).await {
                    Ok(r) => {
                        if !reachable {
                            info!(backend = %slot.backend.name, "agent reachable again");
                        }
                        reachable = true;
                        b.set_agent(slot.backend.id, Some(r));
                    }
                    Err(e) => {
                        if reachable {
                            info!(backend = %slot.backend.name, error = %e, "agent unreachable; using probe figures only");
                        }
                        reachable = false;
                        b.set_agent(slot.backend.id, None);
                    }
                }
            }
            }
        });
    }
}
