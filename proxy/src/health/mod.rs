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

use crate::{events::Kind, supervise::Supervisor};

/// Starts the probe loop of one back-end, and its agent polls if it has an agent: for
/// every back-end at startup, and for those a reload adds.
pub fn spawn_checks(
    pools: &Arc<arc_swap::ArcSwap<crate::backend::PoolSet>>,
    board: &Arc<Board>,
    slot: &Arc<board::Slot>,
    stop: &CancellationToken,
    tasks: &Supervisor,
) {
    let (b, stop2) = (Arc::clone(board), stop.clone());
    let probe_slot = Arc::clone(slot);
    let pools = Arc::clone(pools);
    tasks.spawn(format!("probe {}", slot.name), move || {
        let (b, stop2, slot, pools) = (Arc::clone(&b), stop2.clone(), Arc::clone(&probe_slot), Arc::clone(&pools));
        async move {
        loop {
            // Read each round: a reload may change them. Probes use TLS where the pool's
            // legs do, verifying the certificate the same way.
            let settings = slot.settings();
            let tls: Option<probe::ProbeTls> =
                pools.load().pool(&slot.pool_name).and_then(|p| p.tls.clone());
            let h = &settings.health;
            tokio::select! {
                _ = stop2.cancelled() => return,
                _ = tokio::time::sleep(h.interval) => {}
            }
            // A back-end a reload removed takes no new session whatever its state: probing
            // it would only cost it an SMTP session a round. Probes resume if it comes back.
            if slot.removed.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            let r = probe::probe(slot.address, settings.backend.identity, tls.as_ref(), h.timeout).await;
            match &r {
                Ok(p) => {
                    debug!(backend = %slot.name, latency_us = p.latency.as_micros() as u64, "probe ok");
                    slot.chunking.store(p.chunking, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => debug!(backend = %slot.name, error = %e, "probe failed"),
            }
            let why = r.as_ref().err().map(ToString::to_string).unwrap_or_default();
            b.record(slot.id, r.is_ok(), r.ok().map(|p| p.latency), h.rise, h.fall, &why);
        }
        }
    });
    // Polls run for every back-end: a reload may give one an agent, or take it away.
    {
        let (b, stop2, slot) = (Arc::clone(board), stop.clone(), Arc::clone(slot));
        tasks.spawn(format!("agent poll {}", slot.name), move || {
            let (b, stop2, slot) = (Arc::clone(&b), stop2.clone(), Arc::clone(&slot));
            async move {
            let mut reachable = true;
            loop {
                let settings = slot.settings();
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    _ = tokio::time::sleep(settings.health.agent_interval) => {}
                }
                let Some(agent) = settings.backend.agent else {
                    b.set_agent(slot.id, None);
                    continue;
                };
                match agent_client::poll(agent, settings.health.timeout).await {
                    Ok(r) => {
                        if !reachable {
                            info!(backend = %slot.name, "agent reachable again");
                            b.emit(Kind::AgentReachable { backend: slot.name.clone() });
                        }
                        reachable = true;
                        b.set_agent(slot.id, Some(r));
                    }
                    Err(e) => {
                        if reachable {
                            info!(backend = %slot.name, error = %e, "agent unreachable; using probe figures only");
                            b.emit(Kind::AgentUnreachable {
                                backend: slot.name.clone(),
                                error: e.to_string(),
                            });
                        }
                        reachable = false;
                        b.set_agent(slot.id, None);
                    }
                }
            }
            }
        });
    }
}
