//! Idle SMTP legs kept open between sessions, per back-end: opening a leg (connect,
//! greeting, EHLO, maybe STARTTLS) costs more than the session that uses it, so a leg
//! whose transaction finished cleanly (or was reset) is kept for the next session of
//! that back-end instead of closed.
//!
//! Invariants:
//! - A kept leg serves a new client only after XCLIENT has told the back-end every
//!   attribute of that client (`[UNAVAILABLE]` for what it lacks): nothing of the previous
//!   client, its address, HELO name or login, carries over. Legs that carried AUTH, or
//!   reach the back-end by PROXY v2 (one header per connection), are never kept.
//! - A kept leg is a connection to the back-end but not a session: it counts in the
//!   board's `idle` (its own gauge), not in `active`, and is kept only while the
//!   back-end's connections (sessions plus idle legs) stay within its session limit.
//! - A leg is kept at most `idle_leg_ms` (below the back-end's own idle timeout), and
//!   checked before use: one the back-end closed or wrote to meanwhile is closed, with
//!   no charge to the back-end's health, and the session opens a fresh one.
//! - Legs of a back-end that is down, draining (operator, agent, reload) or whose
//!   settings changed are closed within a sweep.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::time::timeout;
use tracing::{debug, info};

use super::{
    Candidate,
    lease::Lease,
    smtp::{ClientInfo, LegError, SmtpLeg},
};
use crate::{
    config::{Backend, BackendTls, Identity},
    health::board::{Board, IdleGuard},
};

/// How often kept legs are looked over.
const SWEEP: Duration = Duration::from_secs(1);
/// The RSET before a leg is kept: a back-end slower than this is not worth keeping for.
const RSET_WAIT: Duration = Duration::from_secs(5);

/// One kept leg, with what it was opened for.
struct Parked {
    leg: SmtpLeg,
    /// The back-end's settings when the leg was opened: a reload that changes them
    /// (address, identity) makes the leg unfit.
    backend: Arc<Backend>,
    /// The pool's back-end TLS when the leg was opened, likewise.
    tls: BackendTls,
    since: Instant,
    max_age: Duration,
    _place: IdleGuard,
}

/// The kept legs of every back-end, by back-end id. One per front-end, handed from one
/// pool set to the next on a reload.
pub struct IdleLegs {
    legs: Mutex<HashMap<u32, Vec<Parked>>>,
    /// Back-ends that refused to re-identify a kept leg (Postfix checks XCLIENT's
    /// authorisation against the address the previous XCLIENT set, so a second one on a
    /// connection is refused): their legs are not kept, so no session pays for a
    /// refused try. Forgotten when the back-end's settings change.
    refuse_reuse: Mutex<std::collections::HashSet<u32>>,
    board: Arc<Board>,
    sweeping: AtomicBool,
}

impl IdleLegs {
    pub fn new(board: Arc<Board>) -> Arc<IdleLegs> {
        Arc::new(IdleLegs {
            legs: Mutex::new(HashMap::new()),
            refuse_reuse: Mutex::new(std::collections::HashSet::new()),
            board,
            sweeping: AtomicBool::new(false),
        })
    }

    /// Whether legs to `c` may be kept at all.
    fn keeps(c: &Candidate) -> bool {
        c.pool.pool.idle_legs > 0 && c.backend.identity != Identity::ProxyV2
    }

    /// Whether legs to `c` are kept now: they may be, and its back-end has not refused
    /// to re-identify one.
    fn wanted(&self, c: &Candidate) -> bool {
        Self::keeps(c) && !crate::sync::lock(&self.refuse_reuse).contains(&c.backend.id)
    }

    /// How many legs are kept for back-end `id` now.
    pub fn count(&self, id: u32) -> usize {
        crate::sync::lock(&self.legs).get(&id).map_or(0, Vec::len)
    }

    /// The newest fit leg of `c`'s back-end; unfit ones met on the way are closed.
    fn take(&self, c: &Candidate) -> Option<SmtpLeg> {
        let tls = &c.pool.pool.tls;
        let max_age = c.pool.pool.idle_leg_age;
        let mut unfit = Vec::new();
        let found = {
            let mut legs = crate::sync::lock(&self.legs);
            let list = legs.get_mut(&c.backend.id)?;
            let mut found = None;
            while let Some(p) = list.pop() {
                if p.backend == c.backend
                    && p.tls == *tls
                    && p.since.elapsed() < p.max_age.min(max_age)
                    && p.leg.quiet()
                {
                    found = Some(p.leg);
                    break;
                }
                unfit.push(p);
            }
            found
        };
        close(unfit);
        found
    }

    /// A leg for `client`'s session on `c`: a kept one, re-identified, else a new one. A
    /// kept leg that fails on the way (the back-end closed it, or refused the new
    /// identity) is closed without a charge and the next is tried. Returns the leg and
    /// the back-end's response time (greeting, or re-identification).
    pub async fn reuse_or_open(
        &self,
        c: &Candidate,
        client: &ClientInfo,
        our_name: &str,
    ) -> Result<(SmtpLeg, Duration), LegError> {
        if self.wanted(c) {
            while let Some(mut leg) = self.take(c) {
                let started = Instant::now();
                // No longer than a new leg's connect and greeting may take.
                let wait = c.pool.pool.connect_timeout;
                match timeout(wait, leg.reidentify(c.backend.identity, client)).await {
                    Ok(Ok(())) => {
                        debug!(backend = %c.backend.name, session = %client.session_id, "idle back-end leg reused");
                        return Ok((leg, started.elapsed()));
                    }
                    Ok(Err(e @ LegError::Refused { .. })) => {
                        info!(backend = %c.backend.name, error = %e, "back-end refuses to re-identify a kept leg: its legs are no longer kept");
                        crate::sync::lock(&self.refuse_reuse).insert(c.backend.id);
                        self.close_backend_legs(c.backend.id);
                        break;
                    }
                    Ok(Err(e)) => {
                        debug!(backend = %c.backend.name, error = %e, "idle back-end leg failed to take the new client: closed")
                    }
                    Err(_) => {
                        debug!(backend = %c.backend.name, "idle back-end leg too slow to take the new client: closed")
                    }
                }
            }
        }
        let leg = SmtpLeg::open(c, client, our_name).await?;
        let greeting = leg.greeting_latency;
        Ok((leg, greeting))
    }

    /// Keeps `leg` (reset, of a session that still holds its slot on `c`'s back-end) if
    /// the back-end has room for it; gives it back otherwise.
    fn park(self: &Arc<Self>, c: &Candidate, leg: SmtpLeg) -> Option<SmtpLeg> {
        let pool = &c.pool.pool;
        let Some(place) =
            self.board
                .hold_idle(c.backend.id, pool.idle_legs, pool.thresholds.sessions)
        else {
            return Some(leg);
        };
        crate::sync::lock(&self.legs)
            .entry(c.backend.id)
            .or_default()
            .push(Parked {
                leg,
                backend: Arc::clone(&c.backend),
                tls: c.pool.pool.tls.clone(),
                since: Instant::now(),
                max_age: pool.idle_leg_age,
                _place: place,
            });
        self.sweep_from_now();
        None
    }

    /// Starts the sweeps (once): they stop when the legs are dropped.
    fn sweep_from_now(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP).await;
                let Some(legs) = me.upgrade() else {
                    return;
                };
                legs.sweep();
            }
        });
    }

    /// Closes the legs that aged, that the back-end closed or wrote to, and those of
    /// back-ends no longer taking sessions (down, draining, removed).
    pub fn sweep(&self) {
        let mut out = Vec::new();
        {
            let mut legs = crate::sync::lock(&self.legs);
            for (id, list) in legs.iter_mut() {
                let serving = self
                    .board
                    .record_for(*id, 0)
                    .is_some_and(|r| r.state == robustifier_common::BACKEND_UP);
                let (keep, gone): (Vec<Parked>, Vec<Parked>) = std::mem::take(list)
                    .into_iter()
                    .partition(|p| serving && p.since.elapsed() < p.max_age && p.leg.quiet());
                *list = keep;
                out.extend(gone);
            }
            legs.retain(|_, l| !l.is_empty());
        }
        close(out);
    }

    /// Closes every leg kept for back-end `id` (its settings changed, or it left); its
    /// legs may be kept again (a new back-end may re-identify them).
    pub fn close_backend(&self, id: u32) {
        crate::sync::lock(&self.refuse_reuse).remove(&id);
        self.close_backend_legs(id);
    }

    fn close_backend_legs(&self, id: u32) {
        let gone = crate::sync::lock(&self.legs).remove(&id);
        close(gone.unwrap_or_default());
    }
}

/// Closes kept legs: politely (QUIT) when the back-end still listens, else at once. They
/// stop counting as idle legs now.
fn close(legs: Vec<Parked>) {
    for p in legs {
        let Parked { leg, _place, .. } = p;
        drop(_place);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if leg.quiet() => {
                rt.spawn(leg.quit());
            }
            _ => drop(leg),
        }
    }
}

impl Lease<SmtpLeg> {
    /// Ends a session's use of its leg. A leg fit for another client (no login on it, no
    /// unclear transaction) of a back-end whose legs may be kept is kept, after RSET if
    /// a transaction is still open on it; any other is closed with QUIT. The slot is
    /// given up after, so a session waiting for it finds the kept leg.
    pub async fn release(mut self, idle: &Arc<IdleLegs>) {
        if !idle.wanted(&self.candidate) || self.leg.spoiled {
            self.quit().await;
            return;
        }
        // A leg whose last transaction ended (250 to its end of data) or that never began
        // one is where RSET would leave it: the round trip buys nothing.
        if self.leg.in_transaction {
            let reset = timeout(RSET_WAIT, self.command("RSET", "RSET")).await;
            if !matches!(reset, Ok(Ok(ref r)) if r.code == 250) || self.leg.spoiled {
                return;
            }
        }
        let c = self.candidate.clone();
        let (leg, hold) = self.into_parts();
        if let Some(leg) = idle.park(&c, leg) {
            leg.quit().await;
        }
        drop(hold);
    }
}

#[cfg(test)]
mod tests;
