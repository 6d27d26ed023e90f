//! MAIL, RCPT and DATA: the transaction, its route, the back-end leg that serves it and
//! the message relay.

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::{DATA_BLOCK_TIMEOUT, Leg, MAX_RECIPIENTS, Session, SessionError, Transaction};
use crate::{
    backend::smtp::{DATA_END_TIMEOUT, LegError, SmtpLeg},
    route::Route,
    smtp::{
        command::{Address, MailFrom},
        data::{DataScanner, Outcome},
        reply::Reply,
    },
};

fn no_backend() -> Reply {
    Reply::new(
        451,
        Some((4, 4, 1)),
        "No back-end available, try again later",
    )
}

/// Every back-end of the route is up but too loaded for this recipient's group.
fn busy() -> Reply {
    Reply::new(451, Some((4, 3, 2)), "System busy, try again later")
}

impl<'e, S: AsyncRead + AsyncWrite + Unpin + Send> Session<'e, S> {
    pub(super) async fn mail(&mut self, mail: MailFrom, line: &[u8]) {
        let Some((_, esmtp)) = self.helo else {
            return self.say(503, (5, 5, 1), "Send EHLO or HELO first");
        };
        if self.tx.is_some() {
            return self.say(503, (5, 5, 1), "Nested MAIL command");
        }
        if self.svc().auth && self.client.login.is_none() {
            return self.say(530, (5, 7, 0), "Authentication required");
        }
        if !esmtp && (mail.size.is_some() || mail.body.is_some() || mail.smtputf8) {
            return self.say(555, (5, 5, 4), "MAIL parameters need EHLO");
        }
        if mail.size.is_some_and(|s| s > self.svc().max_message_size) {
            return self.say(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            );
        }
        self.tx = Some(Box::new(Transaction {
            mail,
            mail_line: String::from_utf8_lossy(line).into_owned(),
            ..Transaction::default()
        }));
        // An authenticated session already has its leg: the back-end judges the sender.
        if self.client.login.is_some() {
            let route = self
                .leg
                .as_ref()
                .map(|l| l.route.clone())
                .unwrap_or_default();
            match self.send_mail().await {
                Ok(reply) if reply.is_positive() => {
                    if let Some(tx) = &mut self.tx {
                        tx.route = Some(route);
                    }
                    self.send(&reply);
                }
                Ok(reply) => {
                    self.tx = None;
                    self.send(&reply);
                }
                Err(e) => {
                    warn!(session = %self.client.session_id, error = %e, "back-end failed at MAIL");
                    self.tx = None;
                    self.leg = None;
                    self.send(&no_backend());
                }
            }
            return;
        }
        self.say(250, (2, 1, 0), "Sender OK");
    }

    /// Sends the transaction's MAIL to the current leg.
    async fn send_mail(&mut self) -> Result<Reply, LegError> {
        let (Some(tx), Some(leg)) = (self.tx.as_mut(), self.leg.as_mut()) else {
            return Ok(no_backend());
        };
        let reply = leg.leg.command(&tx.mail_line, "MAIL").await?;
        tx.mail_sent = reply.is_positive();
        Ok(reply)
    }

    pub(super) async fn rcpt(&mut self, to: Address, line: &[u8]) {
        let Some(tx) = &self.tx else {
            return self.say(503, (5, 5, 1), "Need MAIL before RCPT");
        };
        if tx.rcpts.len() >= MAX_RECIPIENTS {
            return self.say(452, (4, 5, 3), "Too many recipients");
        }
        if !to.is_ascii() && !tx.mail.smtputf8 {
            return self.say(553, (5, 6, 7), "Non-ASCII recipient needs SMTPUTF8");
        }
        let line = String::from_utf8_lossy(line).into_owned();
        let route = match &tx.route {
            // Submission: the authenticated user's back-end takes every recipient.
            Some(r) if self.client.login.is_some() => r.clone(),
            _ => match self.env.route(|t| t.lookup(&to).cloned()) {
                None => return self.say(554, (5, 7, 1), "Relay access denied"),
                Some(Route::Reject) => return self.send(&Route::smtp_reject_reply()),
                Some(Route::Pools(p)) => p,
            },
        };
        if let Some(fixed) = &tx.route
            && *fixed != route
        {
            // RFC 5321 4.5.3.1.10: the client sends the rest in a later transaction.
            return self.say(
                452,
                (4, 5, 3),
                "Recipient routed elsewhere, send it in a new transaction",
            );
        }
        let (group, share) = self.env.groups.classify(self.client.peer.ip(), Some(&to));
        let group = group.to_owned();
        let reply = match self.rcpt_on_leg(&route, &line, share, &group).await {
            Ok(r) => r,
            Err(LegError::Busy) => {
                info!(session = %self.client.session_id, %group, route = ?route, "deflected: every back-end over its thresholds for this group");
                busy()
            }
            Err(e) => {
                warn!(session = %self.client.session_id, error = %e, "no back-end for recipient");
                no_backend()
            }
        };
        if reply.is_positive()
            && let Some(tx) = &mut self.tx
        {
            tx.route = Some(route);
            tx.rcpts.push(line);
        }
        self.send(&reply);
    }

    /// Sends RCPT to a leg for `route`, opening (or replacing) the leg as needed and
    /// replaying MAIL and the recipients accepted so far on a new one.
    async fn rcpt_on_leg(
        &mut self,
        route: &[String],
        line: &str,
        share: f64,
        group: &str,
    ) -> Result<Reply, LegError> {
        let mut last_err = None;
        for attempt in 0..3 {
            if self.leg.as_ref().is_none_or(|l| l.route != route) {
                self.open_leg_admitted(route, share, group).await?;
                if let Some(tx) = &mut self.tx {
                    tx.mail_sent = false;
                }
            }
            match self.replay_and_rcpt(line).await {
                Ok(reply) => return Ok(reply),
                // The leg broke before anything was committed: try another back-end.
                Err(e) => {
                    warn!(session = %self.client.session_id, attempt, error = %e, "back-end leg failed before DATA; failing over");
                    if let Some(l) = self.leg.take() {
                        self.env.pools.penalize(&l.candidate);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(LegError::Timeout { stage: "RCPT" }))
    }

    async fn replay_and_rcpt(&mut self, line: &str) -> Result<Reply, LegError> {
        let needs_mail = self.tx.as_ref().is_some_and(|t| !t.mail_sent);
        if needs_mail {
            let reply = self.send_mail().await?;
            if !reply.is_positive() {
                // The back-end refused the sender: that is this recipient's answer.
                return Ok(reply);
            }
            let replay: Vec<String> = self
                .tx
                .as_ref()
                .map(|t| t.rcpts.clone())
                .unwrap_or_default();
            for r in replay {
                let leg = &mut self
                    .leg
                    .as_mut()
                    .ok_or(LegError::Timeout { stage: "RCPT" })?
                    .leg;
                let reply = leg.command(&r, "RCPT replay").await?;
                if !reply.is_positive() {
                    // A new back-end disagrees about an accepted recipient: the transaction
                    // cannot be kept whole; DATA will get 451 and the client retries.
                    if let Some(tx) = &mut self.tx {
                        tx.broken = true;
                    }
                    return Ok(no_backend());
                }
            }
        }
        let leg = &mut self
            .leg
            .as_mut()
            .ok_or(LegError::Timeout { stage: "RCPT" })?
            .leg;
        leg.command(line, "RCPT").await
    }

    /// [`Session::open_leg`] for a recipient of `group`: when every back-end of the route
    /// is over the group's thresholds and the group may wait (`wait_ms`), the session
    /// queues for a slot (`backend::admission`) and tries again as slots free, premium
    /// first; the RCPT reply just comes later. Still busy at the end of the wait, or the
    /// queue full, the client going away or the front-end shutting down: `Busy` (451 4.3.2).
    async fn open_leg_admitted(
        &mut self,
        route: &[String],
        share: f64,
        group: &str,
    ) -> Result<(), LegError> {
        let env = self.env;
        let wait = env.admission_wait(group);
        if wait.is_zero() {
            return self.open_leg(route, share).await;
        }
        let admission = &env.pools.admission;
        // Sessions already waiting with at least this priority get the next slot first.
        if !admission.ahead(route, share) {
            match self.open_leg(route, share).await {
                Err(LegError::Busy) => {}
                other => return other,
            }
        }
        let session = self.client.session_id.clone();
        let Some(mut place) = admission.join(route, share, env.pools.wait_bound(route)) else {
            info!(%session, %group, route = ?route, "wait queue full: deflected at once");
            return Err(LegError::Busy);
        };
        info!(%session, %group, route = ?route, wait_ms = wait.as_millis() as u64, "every back-end busy for this group: waiting for a slot");
        // A leg of an earlier transaction's route would hold a slot while we wait.
        if let Some(old) = self.leg.take() {
            old.leg.quit().await;
        }
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        let closing = self.closing.clone();
        // With no pipelined input, a read tells whether the client hangs up meanwhile.
        let mut watch_client = self.io.buffer().is_empty();
        let why = loop {
            let turn = place.session_turn(deadline, &mut self.io, &mut watch_client, &closing);
            if let Err(why) = turn.await {
                break why;
            }
            match self.open_leg(route, share).await {
                Err(LegError::Busy) => continue,
                other => {
                    let waited_ms = started.elapsed().as_millis() as u64;
                    match &other {
                        Ok(()) => info!(%session, %group, waited_ms, "admitted after waiting"),
                        Err(e) => {
                            warn!(%session, %group, waited_ms, error = %e, "no back-end after waiting")
                        }
                    }
                    return other;
                }
            }
        };
        drop(place);
        info!(%session, %group, route = ?route, waited_ms = started.elapsed().as_millis() as u64, outcome = why, "deflected after waiting for a slot");
        Err(LegError::Busy)
    }

    /// Opens a leg to the best back-end of `route` that answers and has room for a
    /// session of a group with `share`, closing any other leg.
    pub(super) async fn open_leg(&mut self, route: &[String], share: f64) -> Result<(), LegError> {
        if let Some(old) = self.leg.take() {
            old.leg.quit().await;
        }
        let (candidates, excluded) = self.env.pools.candidates(route, share);
        if candidates.is_empty() && excluded.busy > 0 {
            return Err(LegError::Busy);
        }
        let mut last = LegError::Timeout {
            stage: "no back-end in route",
        };
        for c in candidates {
            let Some(guard) = self.env.pools.acquire(&c, share) else {
                last = LegError::Busy;
                continue;
            };
            match SmtpLeg::open(&c, &self.client, &self.svc().hostname).await {
                Ok(mut leg) => {
                    leg.guard = Some(guard);
                    let h = &c.pool.pool.health;
                    leg.reporter = Some(crate::backend::smtp::Reporter {
                        board: std::sync::Arc::clone(&self.env.pools.board),
                        id: c.backend.id,
                        rise: h.rise,
                        fall: h.fall,
                    });
                    self.env.pools.mark_ok(&c, Some(leg.greeting_latency));
                    self.leg = Some(Box::new(Leg {
                        leg,
                        route: route.to_vec(),
                        candidate: c.clone(),
                    }));
                    return Ok(());
                }
                Err(e) => {
                    warn!(session = %self.client.session_id, backend = %c.backend.name, error = %e, "back-end unavailable, trying the next");
                    self.env.pools.mark_failed(&c, &e.to_string());
                    last = e;
                }
            }
        }
        Err(last)
    }

    pub(super) async fn reset_transaction(&mut self) {
        if self.tx.take().is_some_and(|t| t.mail_sent)
            && let Some(l) = &mut self.leg
            && l.leg.command("RSET", "RSET").await.is_err()
        {
            self.leg = None;
        }
    }

    /// DATA (RFC 5321 4.1.1.4): relayed chunk by chunk; the back-end's reply to the end
    /// of data is the client's reply. Returns false when the client went away.
    pub(super) async fn data(&mut self) -> Result<bool, SessionError> {
        let Some(tx) = &self.tx else {
            self.say(503, (5, 5, 1), "Need MAIL command");
            return Ok(true);
        };
        if tx.rcpts.is_empty() {
            self.say(554, (5, 5, 1), "No valid recipients");
            return Ok(true);
        }
        if tx.broken || self.leg.is_none() {
            self.tx = None;
            self.send(&no_backend());
            return Ok(true);
        }
        let leg = &mut self.leg.as_mut().expect("checked above").leg;
        let reply = match leg.command("DATA", "DATA").await {
            Ok(r) => r,
            Err(e) => {
                warn!(session = %self.client.session_id, error = %e, "back-end failed at DATA");
                self.leg = None;
                self.tx = None;
                self.send(&no_backend());
                return Ok(true);
            }
        };
        if reply.code != 354 {
            self.tx = None;
            self.send(&reply);
            return Ok(true);
        }
        self.send(&reply);
        self.flush().await?;

        let mut scanner = DataScanner::new(self.svc().max_message_size);
        let mut leg_failed: Option<LegError> = None;
        let outcome = loop {
            let chunk = match tokio::time::timeout(DATA_BLOCK_TIMEOUT, self.io.fill_buf()).await {
                Ok(Ok(c)) if !c.is_empty() => c,
                Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                    // The client is gone or stalled: the back-end must not see an end of
                    // data, so the leg is dropped unfinished.
                    self.leg = None;
                    self.tx = None;
                    return Ok(false);
                }
            };
            let step = scanner.feed(chunk);
            if leg_failed.is_none()
                && (step.forward > 0 || !step.replay.is_empty())
                && let Some(l) = self.leg.as_mut()
            {
                let mut bytes = Vec::with_capacity(step.replay.len() + step.forward);
                bytes.extend_from_slice(step.replay);
                bytes.extend_from_slice(&chunk[..step.forward]);
                if let Err(e) = l.leg.data(&bytes).await {
                    leg_failed = Some(e);
                }
            }
            self.io.consume(step.consumed);
            if let Some(o) = step.outcome {
                break o;
            }
        };
        let tx = self.tx.take().unwrap_or_default();
        let reply = match (outcome, leg_failed) {
            (Outcome::Complete { size }, None) => {
                let leg = &mut self.leg.as_mut().expect("leg present").leg;
                match leg.reply("end of data", DATA_END_TIMEOUT).await {
                    Ok(reply) => {
                        info!(session = %self.client.session_id, backend = %leg.name, size,
                            from = %tx.mail.reverse_path.as_ref().map(ToString::to_string).unwrap_or_default(),
                            rcpts = tx.rcpts.len(), code = reply.code, "message relayed");
                        reply
                    }
                    Err(e) => {
                        warn!(session = %self.client.session_id, error = %e, "back-end failed after the end of data; message not acknowledged");
                        self.leg = None;
                        no_backend()
                    }
                }
            }
            (Outcome::Complete { .. }, Some(e)) => {
                warn!(session = %self.client.session_id, error = %e, "back-end failed during DATA; message not acknowledged");
                self.leg = None;
                no_backend()
            }
            (bad, _) => {
                info!(session = %self.client.session_id, outcome = ?bad, "message refused");
                // The back-end saw no end of data; closing the leg abandons its transaction.
                self.leg = None;
                bad.reply().unwrap_or_else(no_backend)
            }
        };
        self.send(&reply);
        Ok(true)
    }
}

impl<'e, S: AsyncRead + AsyncWrite + Unpin + Send> Session<'e, S> {
    /// BDAT (RFC 3030): the chunk of exactly `size` octets that follows the command is
    /// relayed as it arrives, to a back-end that offered CHUNKING; the back-end's reply is
    /// the client's. A refused chunk is still read to its end, so its octets are never
    /// taken for commands. Returns false when the client went away.
    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Result<bool, SessionError> {
        let max = self.svc().max_message_size;
        let refuse = match &self.tx {
            None => Some(Reply::new(503, Some((5, 5, 1)), "Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => {
                Some(Reply::new(554, Some((5, 5, 1)), "No valid recipients"))
            }
            Some(tx) if tx.broken => Some(no_backend()),
            Some(tx) if tx.bdat_size.saturating_add(size) > max => Some(Reply::new(
                552,
                Some((5, 3, 4)),
                "Message size exceeds fixed maximum message size",
            )),
            Some(_) => match &self.leg {
                None => Some(no_backend()),
                Some(l) if !l.leg.caps.chunking => Some(Reply::new(
                    451,
                    Some((4, 5, 3)),
                    "Back-end does not take BDAT now, use DATA",
                )),
                Some(_) => None,
            },
        };
        if let Some(reply) = refuse {
            if !self.relay_chunk(size, None).await? {
                return Ok(false);
            }
            // RFC 3030 2: a refused chunk fails the transaction; the leg may hold part of it.
            if self.tx.take().is_some_and(|t| t.bdat_size > 0) {
                self.leg = None;
            }
            self.send(&reply);
            return Ok(true);
        }
        let line = if last {
            format!("BDAT {size} LAST\r\n")
        } else {
            format!("BDAT {size}\r\n")
        };
        let mut failed = match self.leg.as_mut() {
            Some(l) => l.leg.data(line.as_bytes()).await.err(),
            None => None,
        };
        let mut leg = self.leg.take();
        if !self
            .relay_chunk(
                size,
                leg.as_mut()
                    .filter(|_| failed.is_none())
                    .map(|l| &mut l.leg),
            )
            .await?
        {
            return Ok(false);
        }
        let reply = match (&mut leg, failed.take()) {
            (Some(l), None) => match l
                .leg
                .reply(
                    "BDAT",
                    if last {
                        DATA_END_TIMEOUT
                    } else {
                        super::DATA_BLOCK_TIMEOUT
                    },
                )
                .await
            {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(session = %self.client.session_id, error = %e, "back-end failed during BDAT; message not acknowledged");
                    None
                }
            },
            (_, Some(e)) => {
                warn!(session = %self.client.session_id, error = %e, "back-end failed during BDAT; message not acknowledged");
                None
            }
            (None, None) => None,
        };
        match reply {
            Some(r) => {
                self.leg = leg;
                if let Some(tx) = &mut self.tx {
                    tx.bdat_size += size;
                }
                if !r.is_positive() || last {
                    let tx = self.tx.take().unwrap_or_default();
                    if last {
                        info!(session = %self.client.session_id, size = tx.bdat_size, rcpts = tx.rcpts.len(), code = r.code, "message relayed (BDAT)");
                    }
                }
                self.send(&r);
            }
            None => {
                self.tx = None;
                self.send(&no_backend());
            }
        }
        Ok(true)
    }

    /// Reads exactly `size` octets of chunk from the client, writing them to `leg` if
    /// given. Returns false when the client went away first.
    async fn relay_chunk(
        &mut self,
        size: u64,
        mut leg: Option<&mut SmtpLeg>,
    ) -> Result<bool, SessionError> {
        let mut left = size;
        while left > 0 {
            let chunk = match tokio::time::timeout(DATA_BLOCK_TIMEOUT, self.io.fill_buf()).await {
                Ok(Ok(c)) if !c.is_empty() => c,
                _ => return Ok(false),
            };
            let take = chunk.len().min(left.min(usize::MAX as u64) as usize);
            if let Some(l) = leg.as_deref_mut()
                && l.data(&chunk[..take]).await.is_err()
            {
                leg = None;
            }
            self.io.consume(take);
            left -= take as u64;
        }
        Ok(true)
    }
}
