//! MAIL and RCPT: the transaction, its route and the back-end leg that serves it. The
//! message itself (DATA, BDAT) is relayed in `message`.

use crate::stream::ClientStream;
use tracing::{info, warn};

use super::{Greeted, Leg, MAX_RECIPIENTS, Phase, Session, Transaction};
use crate::{
    backend::{
        lease::{Fault, Faulted as _, LeaseError},
        smtp::LegError,
    },
    route::{PoolNames, Route},
    service::Routed,
    smtp::{
        command::{Address, MailFrom},
        reply::Reply,
    },
};

pub(super) fn no_backend() -> Reply {
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

impl<'e, S: ClientStream> Session<'e, S> {
    /// MAIL. Returns false when the session must end (an authenticated session lost the
    /// back-end that holds its login).
    pub(super) async fn mail(&mut self, mail: MailFrom, line: &[u8]) -> bool {
        let esmtp = match self.greeted {
            Greeted::No => {
                self.say(503, (5, 5, 1), "Send EHLO or HELO first");
                return true;
            }
            Greeted::Helo => false,
            Greeted::Ehlo => true,
        };
        if self.tx.is_some() {
            self.say(503, (5, 5, 1), "Nested MAIL command");
            return true;
        }
        if self.svc().auth && self.client.login.is_none() {
            self.say(530, (5, 7, 0), "Authentication required");
            return true;
        }
        if !esmtp && (mail.size.is_some() || mail.body.is_some() || mail.smtputf8) {
            self.say(555, (5, 5, 4), "MAIL parameters need EHLO");
            return true;
        }
        if mail.size.is_some_and(|s| s > self.svc().max_message_size) {
            self.say(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            );
            return true;
        }
        if self.client.login.is_some() && self.leg.is_none() {
            self.say(
                421,
                (4, 4, 2),
                "Back-end connection lost, closing; please reconnect",
            );
            return false;
        }
        let mut tx = Box::new(Transaction::new(
            mail,
            String::from_utf8_lossy(line).into_owned(),
        ));
        // An authenticated session already has its leg: the back-end judges the sender.
        if self.client.login.is_some() {
            let route = self
                .leg
                .as_ref()
                .map(|l| l.route.clone())
                .unwrap_or_default();
            match self.send_mail(&mut tx).await {
                Ok(reply) if reply.is_positive() => {
                    tx.phase = Phase::Mail { route: Some(route) };
                    self.tx = Some(tx);
                    self.send(&reply);
                }
                Ok(reply) => {
                    self.send(&reply);
                }
                Err(e) => {
                    // The leg carried the login; the proxy keeps no password to replay it on
                    // another back-end, so the session ends cleanly and the client
                    // reconnects and authenticates again.
                    warn!(session = %self.client.session_id, error = %e, "back-end of an authenticated session failed at MAIL; closing");
                    self.leg = None;
                    self.say(
                        421,
                        (4, 4, 2),
                        "Back-end connection lost, closing; please reconnect",
                    );
                    return false;
                }
            }
            return true;
        }
        self.tx = Some(tx);
        self.say(250, (2, 1, 0), "Sender OK");
        true
    }

    /// Sends the transaction's MAIL to the current leg.
    async fn send_mail(&mut self, tx: &mut Transaction) -> Result<Reply, LegError> {
        let Some(leg) = self.leg.as_mut() else {
            return Ok(no_backend());
        };
        let reply = leg.lease.command(&tx.mail_line, "MAIL").await?;
        tx.mail_sent = reply.is_positive();
        Ok(reply)
    }

    /// RCPT. Returns false when the session must end (its own input made the back-end
    /// refuse: the client, not the back-end, pays for it).
    pub(super) async fn rcpt(&mut self, to: Address, line: &[u8]) -> bool {
        // The transaction is held here for the command's length, so what follows works on
        // it directly; it goes back unless the command ended it.
        let Some(mut tx) = self.tx.take() else {
            self.say(503, (5, 5, 1), "Need MAIL before RCPT");
            return true;
        };
        let (go_on, keep) = self.rcpt_in(&mut tx, to, line).await;
        if keep {
            self.tx = Some(tx);
        }
        go_on
    }

    /// RCPT within `tx`: whether the session goes on, and whether the transaction does.
    async fn rcpt_in(&mut self, tx: &mut Transaction, to: Address, line: &[u8]) -> (bool, bool) {
        if tx.rcpts().len() >= MAX_RECIPIENTS {
            self.say(452, (4, 5, 3), "Too many recipients");
            return (true, true);
        }
        if !to.is_ascii() && !tx.mail.smtputf8 {
            self.say(553, (5, 6, 7), "Non-ASCII recipient needs SMTPUTF8");
            return (true, true);
        }
        let line = String::from_utf8_lossy(line).into_owned();
        // Submission: the authenticated user's back-end takes every recipient (`None`);
        // otherwise the recipient's dedicated queue, route map or the service's pool.
        let (route, source) = match tx.route() {
            Some(r) if self.client.login.is_some() => (PoolNames::clone(r), None),
            _ => match self.env.route_recipient(&to).await {
                Routed::Unrouted => {
                    self.say(554, (5, 7, 1), "Relay access denied");
                    return (!self.error(), true);
                }
                Routed::Route(Route::Reject, _) => {
                    self.send(&Route::smtp_reject_reply());
                    return (!self.error(), true);
                }
                Routed::Route(Route::Pools(p), source) => (p, Some(source)),
                Routed::Unavailable(why) => {
                    // RFC 3463 X.3.0: the proxy's own system failed, not the address; the
                    // client retries later, and the error budget is not the client's.
                    warn!(session = %self.client.session_id, recipient = %to, error = %why, "no route for a recipient: the directory failed");
                    self.say(
                        451,
                        (4, 3, 0),
                        "Directory temporarily unavailable, try again later",
                    );
                    return (true, true);
                }
            },
        };
        if let Some(fixed) = tx.route()
            && **fixed != *route
        {
            // RFC 5321 4.5.3.1.10: the client sends the rest in a later transaction.
            self.say(
                452,
                (4, 5, 3),
                "Recipient routed elsewhere, send it in a new transaction",
            );
            return (true, true);
        }
        let needs_leg = self.leg.as_ref().is_none_or(|l| *l.route != *route);
        if needs_leg && self.env.offender(self.client.peer.ip()) {
            info!(session = %self.client.session_id, "client's sessions made back-ends refuse their input too often: refused");
            self.refused(
                "the client's sessions made back-ends refuse their input too often".into(),
            );
            self.say(421, (4, 7, 0), "Too many refused sessions, try again later");
            return (false, false);
        }
        // Borrowed from the service's groups (it outlives the session), not copied.
        let env = self.env;
        let (group, share) = env.groups.classify(self.client.peer.ip(), Some(&to));
        let reply = match self.rcpt_on_leg(tx, &route, &line, share, group).await {
            Ok(r) => r,
            Err(LeaseError::Busy) => {
                info!(session = %self.client.session_id, %group, route = ?route, "deflected: every back-end over its thresholds for this group");
                self.refused(format!(
                    "deflected: every back-end of {} over its thresholds for group {group}",
                    route.join(",")
                ));
                busy()
            }
            Err(LeaseError::Client(e)) => {
                warn!(session = %self.client.session_id, error = %e, "the back-end refused this client's own input; closing the session");
                self.refused(format!("the back-end refused the client's input: {e}"));
                self.env.offended(self.client.peer.ip());
                self.say(
                    421,
                    (4, 7, 0),
                    "Session refused by the back-end, closing connection",
                );
                return (false, false);
            }
            Err(e) => {
                warn!(session = %self.client.session_id, error = %e, "no back-end for recipient");
                no_backend()
            }
        };
        if reply.is_positive() {
            if tx.route_reason.is_none() {
                tx.route_reason = Some(self.route_reason(source.as_ref(), group));
            }
            tx.accept(route, line);
        }
        self.send(&reply);
        // A back-end's permanent refusal of a recipient counts in the session's error
        // budget, like Postfix's `smtpd_hard_error_limit`: guessing addresses one after
        // the other ends the session.
        (!(reply.is_permanent() && self.error()), true)
    }

    /// Sends RCPT to a leg for `route`, leasing (or replacing) the leg as needed and
    /// replaying MAIL and the recipients accepted so far on a new one.
    async fn rcpt_on_leg(
        &mut self,
        tx: &mut Transaction,
        route: &PoolNames,
        line: &str,
        share: f64,
        group: &str,
    ) -> Result<Reply, LeaseError<LegError>> {
        let mut last_err = None;
        let mut attempts = 0;
        while attempts < 3 {
            if self.leg.as_ref().is_none_or(|l| *l.route != **route) {
                self.lease_leg(route, share, group).await?;
                tx.mail_sent = false;
            }
            match self.replay_and_rcpt(tx, line).await {
                Ok(reply) => return Ok(reply),
                // The back-end closed a leg kept open between transactions: a fresh one,
                // with no charge and no attempt used.
                Err(e) if e.fault() == Fault::Stale && attempts == 0 && last_err.is_none() => {
                    info!(session = %self.client.session_id, error = %e, "idle back-end leg was closed; opening a new one");
                    self.leg = None;
                    last_err = Some(e);
                }
                // The leg broke before anything was committed: try another back-end.
                Err(e) => {
                    warn!(session = %self.client.session_id, attempts, error = %e, "back-end leg failed before DATA; failing over");
                    if let Some(l) = self.leg.take() {
                        self.env.pools.penalize(&l.lease.candidate);
                    }
                    last_err = Some(e);
                    attempts += 1;
                }
            }
        }
        Err(LeaseError::Unavailable(
            last_err.unwrap_or(LegError::Timeout { stage: "RCPT" }),
        ))
    }

    async fn replay_and_rcpt(
        &mut self,
        tx: &mut Transaction,
        line: &str,
    ) -> Result<Reply, LegError> {
        let leg = self.leg.as_mut().map(|l| &mut l.lease);
        if let Some(leg) =
            leg.filter(|l| !tx.mail_sent && tx.rcpts().is_empty() && l.leg.caps.pipelining)
        {
            // RFC 2920: MAIL and the first RCPT in one round trip. A refused MAIL is this
            // recipient's answer, as below.
            let (mail, rcpt) = leg.mail_and_rcpt(&tx.mail_line, line).await?;
            tx.mail_sent = mail.is_positive();
            return Ok(if tx.mail_sent { rcpt } else { mail });
        }
        if !tx.mail_sent {
            let reply = self.send_mail(tx).await?;
            if !reply.is_positive() {
                // The back-end refused the sender: that is this recipient's answer.
                return Ok(reply);
            }
            let leg = &mut self
                .leg
                .as_mut()
                .ok_or(LegError::Timeout { stage: "RCPT" })?
                .lease;
            let mut refused = false;
            for r in tx.rcpts() {
                if !leg.command(r, "RCPT replay").await?.is_positive() {
                    refused = true;
                    break;
                }
            }
            if refused {
                // A new back-end disagrees about an accepted recipient: the transaction
                // cannot be kept whole; DATA will get 451 and the client retries.
                tx.set_broken();
                return Ok(no_backend());
            }
        }
        let leg = &mut self
            .leg
            .as_mut()
            .ok_or(LegError::Timeout { stage: "RCPT" })?
            .lease;
        leg.command(line, "RCPT").await
    }

    /// Leases a leg to the best back-end of `route` with room for a session of `group`
    /// (`backend::lease`: the group's admission wait, failover, passive health), closing
    /// any other leg first: a leg of an earlier route would hold a slot while this one
    /// waits.
    pub(super) async fn lease_leg(
        &mut self,
        route: &PoolNames,
        share: f64,
        group: &str,
    ) -> Result<(), LeaseError<LegError>> {
        if let Some(old) = self.leg.take() {
            old.lease.release(&self.env.pools.idle).await;
        }
        let env = self.env;
        let closing = self.closing.clone();
        let quiet = self.io.buffer().is_empty();
        let (client, hostname) = (&self.client, &env.service.hostname);
        let session = client.session_id.as_str();
        let lease = env
            .lease(
                route,
                (group, share),
                session,
                &mut self.io,
                quiet,
                &closing,
                |c| async move { env.pools.idle.reuse_or_open(&c, client, hostname).await },
            )
            .await?;
        self.leg = Some(Box::new(Leg {
            lease,
            route: PoolNames::clone(route),
        }));
        Ok(())
    }

    /// Ends the transaction. A back-end that saw its MAIL still holds it open, so the leg
    /// is reset (RSET) or, if that fails, closed: its next MAIL must never meet
    /// `503 nested MAIL`.
    pub(super) async fn reset_transaction(&mut self) {
        if self.tx.take().is_some_and(|t| t.mail_sent) {
            self.reset_leg().await;
        }
    }

    /// RSETs the leg, closing it when the back-end does not answer 250.
    pub(super) async fn reset_leg(&mut self) {
        if let Some(l) = &mut self.leg
            && !l
                .lease
                .command("RSET", "RSET")
                .await
                .is_ok_and(|r| r.is_positive())
        {
            self.leg = None;
        }
    }
}

impl<S: ClientStream> Session<'_, S> {
    /// How a route was chosen, for the message's record: where the route came from, the
    /// session's group, and that the leg's back-end was the least loaded one with room.
    fn route_reason(&self, source: Option<&crate::service::RouteSource>, group: &str) -> String {
        use std::fmt::Write as _;
        const PICK: &str = "least loaded back-end with room";
        // Written into room enough for the usual reason: one allocation, not one per
        // growth step.
        let mut reason = String::with_capacity(128);
        let _ = match source {
            Some(s) if self.client.login.is_none() => write!(reason, "{s}, group {group}, {PICK}"),
            _ => write!(
                reason,
                "the authenticated user's back-end, group {group}, {PICK}"
            ),
        };
        reason
    }

    /// Records a message a back-end took: one event per message, built from what the
    /// transaction holds.
    pub(super) fn relayed(&self, tx: &mut Transaction, size: u64, reply: &Reply) {
        let Some(leg) = self.leg.as_ref() else {
            return;
        };
        let rcpts = tx.rcpts();
        let record = crate::events::Relayed {
            session: self.client.session_id.clone(),
            client: self.client.peer.to_string(),
            service: self.svc().name.clone(),
            helo: self.client.helo.clone(),
            mail_from: tx
                .mail
                .reverse_path
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            rcpt_count: rcpts.len(),
            rcpts: rcpts
                .iter()
                .take(crate::events::MAX_RCPTS_LISTED)
                .map(|l| rcpt_address(l))
                .collect(),
            pool: leg.lease.candidate.pool.pool.name.clone(),
            backend: leg.lease.backend().to_owned(),
            // The transaction ends with this record: what it holds moves into it.
            route_reason: tx.route_reason.take().unwrap_or_default(),
            size,
            message_id: tx.message_id.message_id(),
            queue_id: crate::smtp::trace::queue_id(&reply.joined()),
        };
        self.env
            .events
            .record(crate::events::Kind::MessageRelayed(Box::new(record)));
    }

    /// Records a session whose mail the proxy refused or deflected.
    fn refused(&self, reason: String) {
        self.env.events.emit(crate::events::Kind::SessionRefused {
            session: self.client.session_id.clone(),
            client: self.client.peer.to_string(),
            service: self.svc().name.clone(),
            reason,
        });
    }
}

/// The address of a kept RCPT line (`RCPT TO:<a@b> PARAMS`), or the line if it has none.
fn rcpt_address(line: &str) -> String {
    match (line.find('<'), line.find('>')) {
        (Some(a), Some(b)) if a < b => line[a + 1..b].to_owned(),
        _ => line.trim().to_owned(),
    }
}
