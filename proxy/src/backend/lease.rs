//! Leasing a back-end: the one way every protocol's session gets a connection to a
//! back-end for a route and a user group.
//!
//! [`lease`] folds together what each protocol would otherwise wire itself: the bounded
//! admission wait (`wait_ms`, premium first), the candidate order (power of two choices for
//! shared stores, owner first otherwise), the session slot, failover to the next candidate
//! and passive health. The [`Lease`] it returns owns the connection and the slot; dropping
//! it releases the slot (waiters look again).
//!
//! Invariant: only failures that say something about the back-end count against its
//! health ([`Fault::Backend`]): connect, greeting, timeouts, a 421, a broken transport. A
//! failure the client's own input caused ([`Fault::Client`]) ends that client's attempt
//! and is never charged to the back-end nor tried on the others, so one client cannot take
//! a route out of service; a leg that idled long enough for the back-end to close it
//! ([`Fault::Stale`]) is replaced without a charge.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::io::AsyncBufRead;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Candidate, PoolSet};
use crate::health::board::{Board, SessionGuard};

/// Whose fault a failed back-end exchange was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The back-end is unreachable, slow, closing or broken: counts as a failed check.
    Backend,
    /// A value from the client made the back-end refuse (a name its identity protocol
    /// cannot carry): the client's attempt ends; the back-end is not charged.
    Client,
    /// An idle leg the back-end had closed: replaced without a charge.
    Stale,
}

/// An error that can say whose fault it was.
pub trait Faulted: std::fmt::Display {
    fn fault(&self) -> Fault;
}

/// What a session asks for.
pub struct Ask<'a> {
    pub route: &'a [String],
    /// The group's share of each back-end's session limit (1.0 for premium).
    pub share: f64,
    pub group: &'a str,
    /// How long the group may wait for a slot (zero: deflect at once).
    pub wait: Duration,
    pub session: &'a str,
}

/// The session's side of an admission wait: its client, read to notice a hang-up while
/// nothing of the client's is buffered, and the front-end's closing signal.
pub struct Waiting<'a, R> {
    pub client: &'a mut R,
    /// Nothing of the client's is buffered (pipelined input is the next command's, so
    /// only a quiet client is watched for a hang-up).
    pub quiet: bool,
    pub closing: &'a CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError<E> {
    /// Every back-end of the route is over its thresholds for the group (after the wait,
    /// if the group may wait).
    #[error("every back-end is busy for this group")]
    Busy,
    /// No back-end of the route could be reached (down, draining, or failing now).
    #[error("no back-end available: {0}")]
    Unavailable(E),
    /// The route has no back-end at all.
    #[error("no back-end in the route")]
    Empty,
    /// The client's own input was refused by the back-end.
    #[error("refused because of the client's input: {0}")]
    Client(E),
}

/// A session's connection to a back-end, with its slot and passive health.
pub struct Lease<L> {
    pub leg: L,
    pub candidate: Candidate,
    pub health: Passive,
    /// When the leg was last used: a failure after a long idle is [`Fault::Stale`].
    pub last_used: Instant,
    /// How long the back-end took to connect and greet.
    pub greeting: Duration,
    /// The statistics the leg's exchanges count into (set by the session's service).
    pub tally: crate::stats::Tally,
    _slot: SessionGuard,
}

impl<L> Lease<L> {
    /// How long the leg has been idle.
    pub fn idle(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// The back-end's name, for logs.
    pub fn backend(&self) -> &str {
        &self.candidate.backend.name
    }

    /// Takes the leg apart from its slot and health, for a relay that outlives this type.
    pub fn into_parts(self) -> (L, Hold) {
        (
            self.leg,
            Hold {
                health: self.health,
                tally: self.tally,
                _slot: self._slot,
            },
        )
    }
}

/// What stays of a lease while its leg is relayed: the slot and passive health.
pub struct Hold {
    pub health: Passive,
    pub tally: crate::stats::Tally,
    _slot: SessionGuard,
}

/// Replies that a failing exchange was just the leg idling out: the back-end closed a
/// connection the session kept open between transactions.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Passive health: what a session's exchanges tell about its back-end.
pub struct Passive {
    board: Arc<Board>,
    id: u32,
    rise: u32,
    fall: u32,
    /// A lease adds at most one reply to the board's refusal storm, so a storm needs many
    /// sessions, not one client's many recipients.
    storm_counted: bool,
}

impl Passive {
    fn new(board: Arc<Board>, c: &Candidate) -> Passive {
        let h = &c.pool.pool.health;
        Passive {
            board,
            id: c.backend.id,
            rise: h.rise,
            fall: h.fall,
            storm_counted: false,
        }
    }

    /// A failed exchange: a failed check when it was the back-end's fault.
    pub fn failure(&self, e: &impl Faulted) {
        if e.fault() == Fault::Backend {
            self.board
                .record(self.id, false, None, self.rise, self.fall, &e.to_string());
        }
    }

    /// A reply to a transaction command: `sick` when it says the back-end cannot work
    /// (a 4xx of the mail system, not of the address or the policy).
    pub fn reply(&mut self, positive: bool, sick: bool) {
        if positive {
            self.board.reply_seen(self.id, true);
        } else if sick && !self.storm_counted {
            self.storm_counted = true;
            self.board.reply_seen(self.id, false);
        }
    }

    /// A response time seen by a session.
    pub fn latency(&self, d: Duration) {
        self.board.sample_latency(self.id, d);
    }
}

/// Leases a back-end of `ask.route` for a session, opening its leg with `open` (which
/// returns the leg and its greeting latency). Waits for a slot when the group may; tries
/// the candidates best first; charges only back-end faults.
pub async fn lease<L, E, R, F, Fut>(
    pools: &PoolSet,
    ask: &Ask<'_>,
    waiting: Waiting<'_, R>,
    mut open: F,
) -> Result<Lease<L>, LeaseError<E>>
where
    E: Faulted,
    R: AsyncBufRead + Unpin,
    F: FnMut(Candidate) -> Fut,
    Fut: Future<Output = Result<(L, Duration), E>>,
{
    if ask.wait.is_zero() {
        return attempt(pools, ask, &mut open).await;
    }
    let admission = &pools.admission;
    // Sessions already waiting with at least this priority get the next slot first.
    if !admission.ahead(ask.route, ask.share) {
        match attempt(pools, ask, &mut open).await {
            Err(LeaseError::Busy) => {}
            other => return other,
        }
    }
    let (session, group, route) = (ask.session, ask.group, ask.route);
    let Some(mut place) = admission.join(route, ask.share, pools.wait_bound(route)) else {
        info!(%session, %group, ?route, "wait queue full: deflected at once");
        return Err(LeaseError::Busy);
    };
    info!(%session, %group, ?route, wait_ms = ask.wait.as_millis() as u64, "every back-end busy for this group: waiting for a slot");
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + ask.wait;
    // With no pipelined input, a read tells whether the client hangs up meanwhile.
    let mut watch_client = waiting.quiet;
    let why = loop {
        let turn = place.session_turn(
            deadline,
            &mut *waiting.client,
            &mut watch_client,
            waiting.closing,
        );
        if let Err(why) = turn.await {
            break why;
        }
        // The place is kept until the slot is held, so the next waiter does not race
        // this session for it.
        match attempt(pools, ask, &mut open).await {
            Err(LeaseError::Busy) => continue,
            other => {
                let waited_ms = started.elapsed().as_millis() as u64;
                match &other {
                    Ok(_) => info!(%session, %group, waited_ms, "admitted after waiting"),
                    Err(e) => {
                        warn!(%session, %group, waited_ms, error = %e, "no back-end after waiting")
                    }
                }
                return other;
            }
        }
    };
    drop(place);
    info!(%session, %group, ?route, waited_ms = started.elapsed().as_millis() as u64, outcome = why, "deflected after waiting for a slot");
    Err(LeaseError::Busy)
}

/// One pass over the candidates, best first.
async fn attempt<L, E, F, Fut>(
    pools: &PoolSet,
    ask: &Ask<'_>,
    open: &mut F,
) -> Result<Lease<L>, LeaseError<E>>
where
    E: Faulted,
    F: FnMut(Candidate) -> Fut,
    Fut: Future<Output = Result<(L, Duration), E>>,
{
    let (candidates, excluded) = pools.candidates(ask.route, ask.share);
    if candidates.is_empty() && excluded.busy > 0 {
        return Err(LeaseError::Busy);
    }
    let mut last = LeaseError::Empty;
    for c in candidates {
        let Some(slot) = pools.acquire(&c, ask.share) else {
            if matches!(last, LeaseError::Empty) {
                last = LeaseError::Busy;
            }
            continue;
        };
        match open(c.clone()).await {
            Ok((leg, greeting)) => {
                pools.mark_ok(&c, Some(greeting));
                let health = Passive::new(Arc::clone(&pools.board), &c);
                return Ok(Lease {
                    leg,
                    candidate: c,
                    health,
                    last_used: Instant::now(),
                    greeting,
                    tally: crate::stats::Tally::default(),
                    _slot: slot,
                });
            }
            Err(e) => match e.fault() {
                Fault::Client => {
                    warn!(session = %ask.session, backend = %c.backend.name, error = %e, "back-end refused the client's input; not tried elsewhere");
                    return Err(LeaseError::Client(e));
                }
                Fault::Backend | Fault::Stale => {
                    warn!(session = %ask.session, backend = %c.backend.name, error = %e, "back-end unavailable, trying the next");
                    pools.mark_failed(&c, &e.to_string());
                    last = LeaseError::Unavailable(e);
                }
            },
        }
    }
    Err(last)
}
