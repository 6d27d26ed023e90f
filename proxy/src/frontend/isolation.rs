//! Automatic isolation of troublesome domains (`[[domain_queue]]` with `auto = true`).
//!
//! Such a block's domains are routed as any other until one back-end outside the block's
//! pool holds too much of their mail: `deferred_alarm` deferred messages for one of them,
//! or a message older than `oldest_alarm_secs`. The monitor asks every agent's queue each
//! `isolation_interval_secs`; when a threshold is crossed it raises the
//! `domain_isolated` alarm, routes the block's domains to its pool (the shared table every
//! SMTP session reads without a lock) and asks for their queued mail to be moved there.
//! When the figures have stayed under the thresholds on every back-end for
//! `recover_secs`, the domains go back to their usual routes and the alarm clears. While
//! isolated, the pool's own back-ends count too: the domain's mail waits there now, so an
//! emptied source says nothing of the destination; the domain has recovered only when its
//! mail no longer piles up anywhere.
//!
//! Exim's agent gives no deferred count (its listing does not say): its queued count
//! stands in for it. A back-end whose agent gives no figures counts neither way.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::queue::{self, QueueStatus};
use crate::{
    config::{Config, DomainQueue},
    events::{Events, Kind},
    health::board::Board,
    route::DomainQueues,
};

/// Seconds between two looks at the queues when the block does not say.
pub const DEFAULT_INTERVAL_SECS: u64 = 60;
/// Seconds under the thresholds before an isolation ends when the block does not say.
pub const DEFAULT_RECOVER_SECS: u64 = 600;

/// The isolated blocks' routing, shared with every SMTP service's context.
pub type Isolated = Arc<ArcSwap<DomainQueues>>;

/// An `auto = true` block as the monitor needs it: the block and its pool's back-ends,
/// whose own queues do not count (the mail is meant to wait there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub queue: DomainQueue,
    pub pool_backends: BTreeSet<String>,
}

impl Block {
    /// The block's identity across reloads: its pool and patterns.
    fn key(&self) -> (String, String) {
        (self.queue.pool.clone(), self.domains())
    }

    /// The block's patterns, comma-separated (the alarm's subject).
    pub fn domains(&self) -> String {
        self.queue
            .domains
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The `auto = true` blocks of `cfg`.
pub fn blocks(cfg: &Config) -> Vec<Block> {
    cfg.domain_queues
        .iter()
        .filter(|q| q.auto)
        .map(|q| Block {
            queue: q.clone(),
            pool_backends: cfg
                .pools
                .iter()
                .filter(|p| p.name == q.pool)
                .flat_map(|p| p.backends.iter().map(|b| b.name.clone()))
                .collect(),
        })
        .collect()
}

/// Where a block stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockState {
    pub isolated: bool,
    /// While isolated: since when (unix seconds) every figure has been under the
    /// thresholds.
    pub below_since: Option<u64>,
}

/// What to do with a block after a look at the queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Route the block's domains to its pool (the reason names the figure).
    Isolate(String),
    /// Route them as usual again.
    Release(String),
    Stay,
}

/// The first figure over one of `block`'s thresholds, on a back-end outside its pool (on
/// any back-end with `with_pool`).
fn over(block: &Block, status: &QueueStatus, with_pool: bool) -> Option<String> {
    let q = &block.queue;
    status
        .backends
        .iter()
        .filter(|b| b.error.is_none() && (with_pool || !block.pool_backends.contains(&b.backend)))
        .flat_map(|b| b.domains.iter().map(move |d| (b, d)))
        .filter(|(_, d)| q.domains.iter().any(|p| p.matches(&d.domain)))
        .find_map(|(b, d)| {
            // Exim says nothing of deferrals: every queued message counts.
            let deferred = u64::from(d.deferred.unwrap_or(d.queued));
            if let Some(limit) = q.deferred_alarm
                && deferred >= limit
            {
                return Some(format!(
                    "{} holds {deferred} deferred message(s) for {} (threshold {limit})",
                    b.backend, d.domain
                ));
            }
            if let Some(limit) = q.oldest_alarm_secs
                && d.oldest_secs >= limit
            {
                return Some(format!(
                    "{} holds mail for {} queued {} s ago (threshold {limit} s)",
                    b.backend, d.domain, d.oldest_secs
                ));
            }
            None
        })
}

/// The decision for `block` in `state` given the agents' figures at unix second `now`,
/// and the state after it.
pub fn decide(
    block: &Block,
    state: BlockState,
    status: &QueueStatus,
    now: u64,
) -> (Decision, BlockState) {
    match (over(block, status, state.isolated), state.isolated) {
        (Some(reason), false) => (
            Decision::Isolate(reason),
            BlockState {
                isolated: true,
                below_since: None,
            },
        ),
        (Some(_), true) => (
            Decision::Stay,
            BlockState {
                isolated: true,
                below_since: None,
            },
        ),
        (None, false) => (Decision::Stay, BlockState::default()),
        (None, true) => {
            let since = state.below_since.unwrap_or(now);
            let recover = block.queue.recover_secs.unwrap_or(DEFAULT_RECOVER_SECS);
            if now.saturating_sub(since) >= recover {
                (
                    Decision::Release(format!("under the thresholds for {recover} s")),
                    BlockState::default(),
                )
            } else {
                (
                    Decision::Stay,
                    BlockState {
                        isolated: true,
                        below_since: Some(since),
                    },
                )
            }
        }
    }
}

/// The routing table of the isolated blocks.
fn table(blocks: &[Block], states: &BTreeMap<(String, String), BlockState>) -> DomainQueues {
    DomainQueues::new(
        blocks
            .iter()
            .filter(|b| states.get(&b.key()).is_some_and(|s| s.isolated))
            .flat_map(|b| {
                b.queue
                    .domains
                    .iter()
                    .map(move |d| (d, b.queue.pool.as_str()))
            }),
    )
}

/// A move the monitor wants started (by the serve loop, which knows whether this
/// front-end is the one to start it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveWanted {
    pub domain: String,
    pub pool: String,
    pub by: &'static str,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs until `stop`: looks at the queues for the blocks `config` holds (it follows
/// reloads), switches `isolated` and asks `moves` for the moves.
pub async fn run(
    board: Arc<Board>,
    mut config: watch::Receiver<Vec<Block>>,
    isolated: Isolated,
    events: Events,
    moves: mpsc::Sender<MoveWanted>,
    stop: CancellationToken,
) {
    let mut states: BTreeMap<(String, String), BlockState> = BTreeMap::new();
    loop {
        let blocks = config.borrow_and_update().clone();
        // Blocks a reload removed or changed end their isolation with them.
        let keys: BTreeSet<(String, String)> = blocks.iter().map(Block::key).collect();
        let gone: Vec<(String, String)> = states
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if states.remove(&key).is_some_and(|s| s.isolated) {
                let (pool, domains) = key;
                events.emit(Kind::DomainIsolated {
                    domains,
                    pool,
                    isolated: false,
                    reason: "the block changed in the configuration".to_owned(),
                });
            }
        }
        isolated.store(Arc::new(table(&blocks, &states)));
        let interval = blocks
            .iter()
            .map(|b| {
                b.queue
                    .isolation_interval_secs
                    .unwrap_or(DEFAULT_INTERVAL_SECS)
            })
            .min();
        let Some(interval) = interval else {
            // No block to watch: wait for a reload that brings one.
            tokio::select! {
                () = stop.cancelled() => return,
                changed = config.changed() => if changed.is_err() { return },
            }
            continue;
        };
        tokio::select! {
            () = stop.cancelled() => return,
            changed = config.changed() => {
                if changed.is_err() { return }
                continue;
            }
            () = tokio::time::sleep(Duration::from_secs(interval)) => {}
        }
        let status = queue::ask(&board, None).await;
        let now = unix_now();
        let mut changed = false;
        for block in &blocks {
            let state = states.get(&block.key()).copied().unwrap_or_default();
            let (decision, next) = decide(block, state, &status, now);
            states.insert(block.key(), next);
            match decision {
                Decision::Stay => {}
                Decision::Isolate(reason) => {
                    changed = true;
                    warn!(domains = %block.domains(), pool = %block.queue.pool, %reason, "domains isolated");
                    events.emit(Kind::DomainIsolated {
                        domains: block.domains(),
                        pool: block.queue.pool.clone(),
                        isolated: true,
                        reason,
                    });
                    for d in &block.queue.domains {
                        let wanted = MoveWanted {
                            domain: d.to_string(),
                            pool: block.queue.pool.clone(),
                            by: "isolation",
                        };
                        if moves.send(wanted).await.is_err() {
                            return;
                        }
                    }
                }
                Decision::Release(reason) => {
                    changed = true;
                    info!(domains = %block.domains(), pool = %block.queue.pool, %reason, "isolation ended");
                    events.emit(Kind::DomainIsolated {
                        domains: block.domains(),
                        pool: block.queue.pool.clone(),
                        isolated: false,
                        reason,
                    });
                }
            }
        }
        if changed {
            isolated.store(Arc::new(table(&blocks, &states)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        agent_wire::DomainQueue as Figures, frontend::queue::BackendQueue, route::DomainPattern,
    };

    fn block(deferred: Option<u64>, oldest: Option<u64>) -> Block {
        Block {
            queue: DomainQueue {
                domains: vec![
                    DomainPattern::parse("slow.example").unwrap(),
                    DomainPattern::parse(".slow.example").unwrap(),
                ],
                pool: "slowq".into(),
                deferred_alarm: deferred,
                oldest_alarm_secs: oldest,
                auto: true,
                recover_secs: Some(100),
                isolation_interval_secs: Some(1),
            },
            pool_backends: ["slow1".to_owned()].into(),
        }
    }

    fn status(rows: &[(&str, &str, u32, Option<u32>, u64)]) -> QueueStatus {
        QueueStatus {
            domain: None,
            backends: rows
                .iter()
                .map(
                    |&(backend, domain, queued, deferred, oldest_secs)| BackendQueue {
                        backend: backend.into(),
                        domains: vec![Figures {
                            domain: domain.into(),
                            queued,
                            deferred,
                            oldest_secs,
                            reason: String::new(),
                        }],
                        ..BackendQueue::default()
                    },
                )
                .collect(),
        }
    }

    #[test]
    fn a_back_end_over_a_threshold_isolates_and_the_pools_own_do_not() {
        let b = block(Some(10), None);
        let calm = BlockState::default();
        // The pool's own back-end holding the mail is what isolation is for.
        let own = status(&[("slow1", "slow.example", 500, Some(500), 9999)]);
        assert_eq!(decide(&b, calm, &own, 0).0, Decision::Stay);
        // Another domain, and one under the threshold, do not count.
        let other = status(&[
            ("mx1", "fast.example", 50, Some(50), 10),
            ("mx2", "slow.example", 9, Some(9), 10),
            ("mx3", "notslow.example", 99, Some(99), 10),
        ]);
        assert_eq!(decide(&b, calm, &other, 0).0, Decision::Stay);
        let hot = status(&[("mx2", "mx.slow.example", 12, Some(10), 10)]);
        let (d, s) = decide(&b, calm, &hot, 0);
        assert!(
            matches!(&d, Decision::Isolate(r) if r.starts_with("mx2 holds 10 deferred")),
            "{d:?}"
        );
        assert!(s.isolated);
        // An agent that gave an error counts neither way.
        let mut failed = hot.clone();
        failed.backends[0].error = Some("timed out".into());
        assert_eq!(decide(&b, calm, &failed, 0).0, Decision::Stay);
    }

    #[test]
    fn exim_counts_queued_and_age_isolates_too() {
        let b = block(Some(10), None);
        let exim = status(&[("mx1", "slow.example", 10, None, 5)]);
        assert!(matches!(
            decide(&b, BlockState::default(), &exim, 0).0,
            Decision::Isolate(_)
        ));
        let b = block(None, Some(3600));
        let young = status(&[("mx1", "slow.example", 1, Some(1), 3599)]);
        assert_eq!(
            decide(&b, BlockState::default(), &young, 0).0,
            Decision::Stay
        );
        let old = status(&[("mx1", "slow.example", 1, Some(1), 3600)]);
        assert!(matches!(
            decide(&b, BlockState::default(), &old, 0).0,
            Decision::Isolate(r) if r.contains("3600 s ago")
        ));
    }

    #[test]
    fn isolation_ends_after_recover_secs_under_the_thresholds() {
        let b = block(Some(10), None);
        let hot = status(&[("mx1", "slow.example", 20, Some(20), 5)]);
        let calm = status(&[("mx1", "slow.example", 2, Some(2), 5)]);
        let (_, s) = decide(&b, BlockState::default(), &hot, 1000);
        let (d, s) = decide(&b, s, &calm, 1010);
        assert_eq!(d, Decision::Stay);
        assert_eq!(s.below_since, Some(1010));
        // Over again: the count starts anew.
        let (d, s) = decide(&b, s, &hot, 1050);
        assert_eq!((d, s.below_since), (Decision::Stay, None));
        let (_, s) = decide(&b, s, &calm, 1060);
        let (d, s) = decide(&b, s, &calm, 1159);
        assert_eq!(d, Decision::Stay);
        assert!(s.isolated);
        let (d, s) = decide(&b, s, &calm, 1160);
        assert!(matches!(d, Decision::Release(_)), "{d:?}");
        assert_eq!(s, BlockState::default());
    }

    #[test]
    fn an_isolated_domain_stays_while_its_mail_piles_up_in_the_pool() {
        let b = block(Some(10), None);
        let hot = status(&[("mx1", "slow.example", 20, Some(20), 5)]);
        let (_, s) = decide(&b, BlockState::default(), &hot, 1000);
        // Moved: the sources are empty, but the pool's own back-end now holds the mail.
        let moved = status(&[
            ("mx1", "slow.example", 0, Some(0), 0),
            ("slow1", "slow.example", 20, Some(20), 5),
        ]);
        let (d, s) = decide(&b, s, &moved, 1010);
        assert_eq!((d, s.isolated, s.below_since), (Decision::Stay, true, None));
        let (d, s) = decide(&b, s, &moved, 99_999);
        assert_eq!((d, s.isolated), (Decision::Stay, true));
        // The destination took it: the pool drains, and the count towards recovery starts.
        let drained = status(&[("slow1", "slow.example", 1, Some(1), 5)]);
        let (d, s) = decide(&b, s, &drained, 100_000);
        assert_eq!((d, s.below_since), (Decision::Stay, Some(100_000)));
    }

    #[test]
    fn the_table_holds_the_isolated_blocks_only() {
        let a = block(Some(10), None);
        let mut other = block(Some(10), None);
        other.queue.domains = vec![DomainPattern::parse("other.example").unwrap()];
        let mut states = BTreeMap::new();
        states.insert(
            a.key(),
            BlockState {
                isolated: true,
                below_since: None,
            },
        );
        let t = table(&[a, other], &states);
        assert_eq!(t.lookup("mx.slow.example").map(|d| d.pool), Some("slowq"));
        assert!(t.lookup("other.example").is_none());
    }
}
