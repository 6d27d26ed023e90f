//! AUTH on submission services (RFC 4954): PLAIN and LOGIN are collected from the client,
//! the user's route picks the back-end, and the back-end's verdict is the client's verdict.
//! The proxy keeps no password: it only carries the exchange to the back-end that owns the
//! user, then that back-end serves the rest of the session.

use crate::stream::ClientStream;
use tracing::{info, warn};

use super::{Greeted, Session, SessionError};
use crate::{
    backend::lease::LeaseError,
    route::Route,
    sasl::{self, Credentials},
    session_core::{Next, next_line},
    smtp::reply::Reply,
};

/// RFC 4954 4: a server must accept AUTH lines of at least 12288 octets.
const MAX_AUTH_LINE: usize = 12288;

enum Step {
    Got(String),
    Cancelled,
    Bad,
}

impl<'e, S: ClientStream> Session<'e, S> {
    pub(super) async fn auth(
        &mut self,
        mechanism: String,
        initial: Option<String>,
    ) -> Result<bool, SessionError> {
        if !self.svc().auth {
            self.say(502, (5, 5, 1), "AUTH not available on this service");
            return Ok(!self.error());
        }
        if self.greeted == Greeted::No {
            self.say(503, (5, 5, 1), "Send EHLO first");
            return Ok(true);
        }
        if self.client.login.is_some() {
            self.say(503, (5, 5, 1), "Already authenticated");
            return Ok(true);
        }
        if self.tx.is_some() {
            self.say(503, (5, 5, 1), "AUTH not allowed during a mail transaction");
            return Ok(true);
        }
        if !self.auth_allowed() {
            self.say(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            );
            return Ok(!self.error());
        }
        // Checked before anything is read or sent on: a client guessing passwords costs
        // the back-ends nothing once it is refused.
        if self.env.login_refused(self.client.peer.ip()) {
            info!(session = %self.client.session_id, "AUTH refused: too many failed attempts from this client");
            self.say(
                421,
                (4, 7, 0),
                "Too many failed authentication attempts, try again later",
            );
            return Ok(false);
        }
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(r) => Step::Got(r),
                    None => self.challenge("").await?,
                };
                match response {
                    Step::Got(r) => sasl::decode_plain(&r).ok(),
                    Step::Cancelled => return self.cancelled(),
                    Step::Bad => None,
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => Step::Got(r),
                    None => self.challenge("VXNlcm5hbWU6").await?, // "Username:"
                };
                let user = match user {
                    Step::Got(u) => sasl::decode_field(&u).ok(),
                    Step::Cancelled => return self.cancelled(),
                    Step::Bad => None,
                };
                match (user, self.challenge("UGFzc3dvcmQ6").await?) {
                    (Some(user), Step::Got(p)) => sasl::decode_field(&p)
                        .ok()
                        .filter(|_| !user.is_empty())
                        .map(|password| Credentials { user, password }),
                    (_, Step::Cancelled) => return self.cancelled(),
                    _ => None,
                }
            }
            _ => {
                self.say(504, (5, 5, 4), "Unrecognized authentication type");
                return Ok(!self.error());
            }
        };
        let Some(credentials) = credentials else {
            self.say(501, (5, 5, 2), "Cannot decode the AUTH response");
            self.env.login_failed(self.client.peer.ip());
            return Ok(!self.error());
        };
        let reply_at = self.out.len();
        self.relay_auth(credentials).await;
        // A permanent refusal (535: wrong password or unknown user) is a failed attempt; a
        // temporary one (454: no back-end) is the cluster's fault, not the client's.
        if self.client.login.is_none() && self.out.get(reply_at) == Some(&b'5') {
            self.env.login_failed(self.client.peer.ip());
            return Ok(!self.error());
        }
        Ok(true)
    }

    /// Whether AUTH may be offered and used on this connection: a password never crosses
    /// the network in clear unless the service says so (`plaintext_auth`).
    pub(super) fn auth_allowed(&self) -> bool {
        self.env
            .password_allowed(self.client.peer.ip(), self.io.get_ref().is_tls())
    }

    fn cancelled(&mut self) -> Result<bool, SessionError> {
        self.say(501, (5, 0, 0), "Authentication cancelled");
        Ok(true)
    }

    /// Sends a `334` challenge and reads the client's response line.
    async fn challenge(&mut self, text: &str) -> Result<Step, SessionError> {
        self.send(&Reply::new(334, None, text));
        self.flush().await?;
        let idle = self.svc().idle_timeout;
        Ok(
            match next_line(&mut self.io, MAX_AUTH_LINE, idle, None).await? {
                Next::Line(l) if l == b"*" => Step::Cancelled,
                Next::Line(l) => Step::Got(String::from_utf8_lossy(&l).into_owned()),
                Next::TooLong | Next::Eof | Next::Idle | Next::Closing => Step::Bad,
            },
        )
    }

    async fn relay_auth(&mut self, credentials: Credentials) {
        let user = credentials.user.clone();
        let route = match self.env.route_user(&user).await {
            crate::service::Routed::Route(Route::Pools(route), _) => route,
            crate::service::Routed::Unavailable(why) => {
                warn!(session = %self.client.session_id, %user, error = %why, "no route for AUTH: the directory failed");
                return self.say(454, (4, 7, 0), "Temporary authentication failure");
            }
            _ => {
                // Unknown users fail like wrong passwords: nothing tells which names exist.
                info!(session = %self.client.session_id, %user, "AUTH for a user with no route");
                return self.say(535, (5, 7, 8), "Authentication credentials invalid");
            }
        };
        // The user's group, as a recipient or a POP3 login of that user would get.
        let user_addr = crate::smtp::command::Address::parse_user(&user);
        let (group, share) = self
            .env
            .groups
            .classify(self.client.peer.ip(), user_addr.as_ref());
        let group = group.to_owned();
        match self.lease_leg(&route, share, &group).await {
            Ok(()) => {}
            Err(LeaseError::Busy) => {
                info!(session = %self.client.session_id, %user, %group, "AUTH deflected: every back-end over its thresholds for this group");
                return self.say(454, (4, 3, 2), "System busy, try again later");
            }
            Err(e) => {
                warn!(session = %self.client.session_id, error = %e, "no back-end for AUTH");
                return self.say(454, (4, 7, 0), "Temporary authentication failure");
            }
        }
        let Some(leg) = self.leg.as_mut().map(|l| &mut l.lease) else {
            return self.say(454, (4, 7, 0), "Temporary authentication failure");
        };
        if !leg.leg.caps.auth.iter().any(|m| m == "PLAIN") {
            warn!(session = %self.client.session_id, backend = %leg.backend(), "back-end offers no AUTH PLAIN");
            self.leg = None;
            return self.say(454, (4, 7, 0), "Temporary authentication failure");
        }
        let token = sasl::encode_plain(&credentials);
        match leg.command(&format!("AUTH PLAIN {token}"), "AUTH").await {
            Ok(reply) if reply.code == 235 => {
                info!(session = %self.client.session_id, %user, backend = %leg.backend(), "authenticated by back-end");
                self.client.login = Some(user);
                self.send(&reply);
            }
            Ok(reply) => {
                info!(session = %self.client.session_id, %user, code = reply.code, "back-end refused AUTH");
                self.leg = None;
                self.send(&reply);
            }
            Err(e) => {
                warn!(session = %self.client.session_id, error = %e, "back-end failed during AUTH");
                self.leg = None;
                self.say(454, (4, 7, 0), "Temporary authentication failure");
            }
        }
    }
}
