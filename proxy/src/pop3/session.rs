//! The client-facing POP3 session (RFC 1939, 2449, 2595, 5034). The proxy owns the
//! AUTHORIZATION state: greeting, CAPA, STLS, USER/PASS and AUTH PLAIN. The user's route
//! picks the back-end that owns the mailbox; the login is replayed there, and the back-end's
//! answer is the client's answer, response codes (`[IN-USE]`, `[SYS/TEMP]`, ...) included.
//! After a successful login the proxy relays bytes both ways until either side closes.
//!
//! Invariants: a session that ends without QUIT reaches the back-end as a closed connection
//! without QUIT, so nothing is deleted (RFC 1939 6); nothing read before an STLS handshake
//! is used after it (RFC 2595 4); command lines are bounded (RFC 2449 4).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    time::timeout,
};
use tracing::{info, warn};

use super::{
    command::{Command, MAX_COMMAND_LINE},
    response::{Response, ResponseCode},
};
use crate::{
    backend::{
        lease::{Lease, LeaseError},
        pop3::{Pop3Leg, Pop3LegError},
        smtp::{ClientInfo, LegError},
    },
    config::ServiceTls,
    route::Route,
    service::ServiceContext,
    session_core::{ErrorBudget, Next as Read, next_line, upgrade_tls, write_timed_out},
    smtp::command::Address,
    stream::{Buffered, Conn},
};

/// The session's error: the one both client sessions share.
pub use crate::session_core::SessionError as Pop3Error;

/// RFC 1939 3: an autologout timer of at least 10 minutes. A logged-in session that moves
/// no byte either way for this long is ended (without QUIT, so nothing is deleted).
pub const AUTOLOGOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Refused commands before the session is closed.
const MAX_ERRORS: u32 = 20;
/// RFC 5034 4: SASL lines may be longer than commands.
const MAX_AUTH_LINE: usize = 12288;

pub struct Session<'e, S> {
    io: Buffered<Conn<S>>,
    env: &'e ServiceContext,
    client: ClientInfo,
    user: Option<String>,
    errors: ErrorBudget,
    /// Fires when the front-end wants the session to end (shutdown, address handoff).
    closing: tokio_util::sync::CancellationToken,
}

/// What the AUTHORIZATION phase ended with.
enum Next {
    Close,
    /// Boxed: the session's future would otherwise carry a lease's size while it waits.
    Relay(Box<Lease<Pop3Leg>>),
}

impl<'e, S: AsyncRead + AsyncWrite + Unpin + Send> Session<'e, S> {
    pub fn new(
        stream: Conn<S>,
        env: &'e ServiceContext,
        peer: SocketAddr,
        local: SocketAddr,
        session_id: String,
    ) -> Self {
        Session {
            io: Buffered::new(stream),
            env,
            client: ClientInfo {
                peer,
                local,
                helo: None,
                login: None,
                session_id,
            },
            user: None,
            errors: ErrorBudget::new(MAX_ERRORS),
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Ends the session with `-ERR [SYS/TEMP]` while it waits for a login command once
    /// `token` fires. A session already relaying belongs to its back-end until it ends.
    pub fn closing_on(mut self, token: tokio_util::sync::CancellationToken) -> Self {
        self.closing = token;
        self
    }

    async fn send(&mut self, r: Response) -> std::io::Result<()> {
        self.send_raw(&r.to_bytes()).await
    }

    /// Writes to the client with the idle timeout as deadline: a client that stops reading
    /// must not hold the session once the socket's buffers are full.
    async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let idle = self.env.service.idle_timeout;
        let io = self.io.get_mut();
        let write = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        timeout(idle, write).await.map_err(|_| write_timed_out())?
    }

    /// Whether a password may be sent on this connection (TLS, loopback, or the service's
    /// `plaintext_auth`); elsewhere it would cross the network in clear.
    fn password_allowed(&self) -> bool {
        self.env
            .password_allowed(self.client.peer.ip(), self.io.get_ref().is_tls())
    }

    /// Refuses a login command sent where no password may be; true when it was refused.
    async fn refuse_plaintext(&mut self) -> std::io::Result<bool> {
        if self.password_allowed() {
            return Ok(false);
        }
        self.refuse(Response::err(
            Some(ResponseCode::Auth),
            "Plaintext authentication disallowed on non-secure (SSL/TLS) connections",
        ))
        .await?;
        Ok(true)
    }

    /// Refuses a login of a client that failed too often lately, before any back-end is
    /// asked; true when it was refused (the session then ends).
    async fn refuse_throttled(&mut self) -> std::io::Result<bool> {
        if !self.env.login_refused(self.client.peer.ip()) {
            return Ok(false);
        }
        info!(session = %self.client.session_id, "login refused: too many failed attempts from this client");
        self.send(Response::err(
            Some(ResponseCode::LoginDelay),
            "Too many failed logins, try again later",
        ))
        .await?;
        Ok(true)
    }

    /// [`Self::login`], counting a refused login (it counts in the session's errors)
    /// against the client.
    async fn login_counted(
        &mut self,
        user: String,
        pass: String,
    ) -> Result<Option<Lease<Pop3Leg>>, Pop3Error> {
        let errors = self.errors.count();
        let leg = Box::pin(self.login(user, pass)).await?;
        if leg.is_none() && self.errors.count() > errors {
            self.env.login_failed(self.client.peer.ip());
        }
        Ok(leg)
    }

    /// Runs the session to its end. Errors are logged by the caller.
    ///
    /// Not an `async fn`: that would keep `self` twice in the future (the argument and the
    /// local it is moved into), and every waiting session would carry the copy.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    pub fn run(mut self) -> impl Future<Output = Result<(), Pop3Error>> {
        async move {
            let host = self.env.service.hostname.clone();
            self.send(Response::ok(format!("{host} POP3 Robustifier ready")))
                .await?;
            match self.authorization().await? {
                Next::Close => {
                    // For TLS this sends close_notify.
                    let idle = self.env.service.idle_timeout;
                    let _ = timeout(idle, self.io.get_mut().shutdown()).await;
                    Ok(())
                }
                // Boxed, like the login exchanges below: state that a session waiting for its
                // client's next command should not carry.
                Next::Relay(leg) => Box::pin(self.relay(*leg)).await,
            }
        }
    }

    fn stls_offered(&self) -> bool {
        self.env.service.tls == ServiceTls::StartTls
            && self.env.tls.is_some()
            && !self.io.get_ref().is_tls()
    }

    async fn authorization(&mut self) -> Result<Next, Pop3Error> {
        loop {
            let idle = self.env.service.idle_timeout;
            let read = next_line(&mut self.io, MAX_COMMAND_LINE, idle, Some(&self.closing));
            let line = match read.await? {
                Read::Line(l) => l,
                Read::Eof => return Ok(Next::Close),
                Read::Idle => {
                    self.send(Response::err(None, "Idle timeout, closing connection"))
                        .await?;
                    return Ok(Next::Close);
                }
                Read::Closing => {
                    self.send(Response::err(
                        Some(ResponseCode::SysTemp),
                        "Server shutting down, try again",
                    ))
                    .await?;
                    return Ok(Next::Close);
                }
                Read::TooLong => {
                    self.refuse(Response::err(None, "Command line too long"))
                        .await?;
                    if self.errors.spent() {
                        return Ok(Next::Close);
                    }
                    continue;
                }
            };
            let cmd = match Command::parse(&line) {
                Ok(c) => c,
                Err(e) => {
                    self.refuse(e.response()).await?;
                    if self.errors.spent() {
                        return Ok(Next::Close);
                    }
                    continue;
                }
            };
            if matches!(
                cmd,
                Command::User(_) | Command::Pass(_) | Command::Auth { .. }
            ) && self.refuse_plaintext().await?
            {
                if self.errors.spent() {
                    return Ok(Next::Close);
                }
                continue;
            }
            if matches!(cmd, Command::Pass(_) | Command::Auth { .. })
                && self.refuse_throttled().await?
            {
                return Ok(Next::Close);
            }
            match cmd {
                Command::Quit => {
                    self.send(Response::ok("Bye")).await?;
                    return Ok(Next::Close);
                }
                Command::Capa => self.capa().await?,
                Command::Noop => self.send(Response::ok("")).await?,
                Command::Stls => Box::pin(self.stls()).await?,
                Command::User(u) => {
                    self.user = Some(u);
                    self.send(Response::ok("Send PASS")).await?;
                }
                Command::Pass(p) => {
                    let Some(user) = self.user.take() else {
                        self.refuse(Response::err(None, "USER first")).await?;
                        continue;
                    };
                    if let Some(leg) = self.login_counted(user, p).await? {
                        return Ok(Next::Relay(Box::new(leg)));
                    }
                }
                Command::Auth {
                    mechanism,
                    initial_response,
                } => {
                    if let Some(leg) = Box::pin(self.auth(mechanism, initial_response)).await? {
                        return Ok(Next::Relay(Box::new(leg)));
                    }
                }
                _ => {
                    self.refuse(Response::err(None, "Not authenticated yet"))
                        .await?
                }
            }
            if self.errors.spent() {
                return Ok(Next::Close);
            }
        }
    }

    async fn refuse(&mut self, r: Response) -> std::io::Result<()> {
        self.errors.charge();
        self.send(r).await
    }

    /// RFC 2449 5: the capabilities of the AUTHORIZATION state.
    async fn capa(&mut self) -> std::io::Result<()> {
        let mut caps = String::from("+OK Capability list follows\r\n");
        // RFC 2595 4: no login mechanism is listed where it could not be used.
        if self.password_allowed() {
            caps.push_str("USER\r\nSASL PLAIN\r\n");
        }
        caps.push_str("RESP-CODES\r\nAUTH-RESP-CODE\r\nTOP\r\nUIDL\r\n");
        if self.stls_offered() {
            caps.push_str("STLS\r\n");
        }
        caps.push_str("IMPLEMENTATION Robustifier\r\n.\r\n");
        self.send_raw(caps.as_bytes()).await
    }

    /// RFC 2595 4.
    async fn stls(&mut self) -> Result<(), Pop3Error> {
        if !self.stls_offered() {
            self.refuse(Response::err(None, "STLS not available"))
                .await?;
            return Ok(());
        }
        let Some(tls) = self.env.tls.clone() else {
            return Ok(());
        };
        self.send(Response::ok("Begin TLS negotiation")).await?;
        upgrade_tls(&mut self.io, &tls, "STLS", &self.client.session_id).await?;
        self.user = None;
        Ok(())
    }

    /// RFC 5034: AUTH PLAIN, with or without an initial response.
    async fn auth(
        &mut self,
        mechanism: String,
        initial: Option<String>,
    ) -> Result<Option<Lease<Pop3Leg>>, Pop3Error> {
        if mechanism != "PLAIN" {
            self.refuse(Response::err(None, "Unsupported authentication mechanism"))
                .await?;
            return Ok(None);
        }
        let response = match initial {
            Some(r) => r,
            None => {
                self.send_raw(b"+ \r\n").await?;
                // The continuation waits no longer than a command would.
                let idle = self.env.service.idle_timeout;
                match next_line(&mut self.io, MAX_AUTH_LINE, idle, None).await? {
                    Read::Line(l) => String::from_utf8_lossy(&l).into_owned(),
                    Read::TooLong | Read::Eof | Read::Closing => return Ok(None),
                    Read::Idle => {
                        self.send(Response::err(None, "Idle timeout, closing connection"))
                            .await?;
                        return Err(Pop3Error::Timeout);
                    }
                }
            }
        };
        if response == "*" {
            self.send(Response::err(None, "Authentication cancelled"))
                .await?;
            return Ok(None);
        }
        match crate::sasl::decode_plain(&response) {
            Ok(c) => self.login_counted(c.user, c.password).await,
            Err(e) => {
                info!(session = %self.client.session_id, error = %e, "AUTH PLAIN response refused");
                self.env.login_failed(self.client.peer.ip());
                self.refuse(Response::err(None, "Cannot decode the AUTH response"))
                    .await?;
                Ok(None)
            }
        }
    }

    /// Finds the user's back-end, replays the login there and relays the verdict.
    async fn login(
        &mut self,
        user: String,
        pass: String,
    ) -> Result<Option<Lease<Pop3Leg>>, Pop3Error> {
        let route = match self.env.route_user(&user).await {
            crate::service::Routed::Route(Route::Pools(route), _) => route,
            crate::service::Routed::Unavailable(why) => {
                // RFC 3206 4: SYS/TEMP, the system failed, the client tries again later
                // (and the failure is not counted against the client's logins).
                warn!(session = %self.client.session_id, %user, error = %why, "no route for a login: the directory failed");
                self.send(Response::err(
                    Some(ResponseCode::SysTemp),
                    "Directory temporarily unavailable",
                ))
                .await?;
                return Ok(None);
            }
            _ => {
                info!(session = %self.client.session_id, %user, "login for a user with no route");
                self.refuse(Route::pop3_reject_response()).await?;
                return Ok(None);
            }
        };
        let user_addr = Address::parse_user(&user);
        let (group, share) = self
            .env
            .groups
            .classify(self.client.peer.ip(), user_addr.as_ref());
        let env = self.env;
        let closing = self.closing.clone();
        let quiet = self.io.buffer().is_empty();
        let client = &self.client;
        let session = client.session_id.as_str();
        let leased = env
            .lease(
                &route,
                (group, share),
                session,
                &mut self.io,
                quiet,
                &closing,
                |c| async move {
                    let leg = Pop3Leg::open(&c, client).await?;
                    let greeting = leg.greeting_latency;
                    Ok::<_, Pop3LegError>((leg, greeting))
                },
            )
            .await;
        let mut leg = match leased {
            Ok(l) => l,
            Err(LeaseError::Busy) => {
                info!(session = %self.client.session_id, %user, %group, "deflected: every back-end over its thresholds for this group");
                self.send(Response::err(
                    Some(ResponseCode::SysTemp),
                    "System busy, try again later",
                ))
                .await?;
                return Ok(None);
            }
            Err(e) => {
                warn!(session = %self.client.session_id, %user, error = %e, "no back-end for login");
                self.send(temp_failure()).await?;
                return Ok(None);
            }
        };
        let result = async {
            let r = leg.command(&format!("USER {user}"), "USER").await?;
            if !r.is_ok() {
                return Ok(r);
            }
            leg.command(&format!("PASS {pass}"), "PASS").await
        }
        .await;
        match result {
            Ok(r) if r.is_ok() => {
                info!(session = %self.client.session_id, %user, backend = %leg.backend(), "logged in; relaying");
                self.send(r).await?;
                Ok(Some(leg))
            }
            Ok(r) => {
                info!(session = %self.client.session_id, %user, backend = %leg.backend(), response = %r.to_string().trim_end(), "back-end refused the login");
                self.refuse(r).await?;
                Ok(None)
            }
            Err(e) => {
                warn!(session = %self.client.session_id, backend = %leg.backend(), error = %e, "back-end failed during login");
                self.send(temp_failure()).await?;
                Ok(None)
            }
        }
    }

    /// TRANSACTION and UPDATE states belong to the back-end: relay until either side closes.
    /// The lease's slot is held until the relay ends; a back-end that breaks the
    /// connection meanwhile (a reset, an I/O error on its side) counts as a failed check.
    async fn relay(self, leg: Lease<Pop3Leg>) -> Result<(), Pop3Error> {
        let pipelined = self.io.buffer().to_vec();
        let mut client = self.io.into_inner();
        let (leg, hold) = leg.into_parts();
        let (backend, early) = leg.into_stream();
        let mut backend = crate::stream::Watched::new(backend);
        let idle = AUTOLOGOUT.max(self.env.service.idle_timeout);
        if !early.is_empty() {
            timeout(idle, client.write_all(&early))
                .await
                .map_err(|_| write_timed_out())??;
        }
        if !pipelined.is_empty()
            && let Err(e) = backend.write_all(&pipelined).await
        {
            hold.health.failure(&LegError::Io {
                stage: "relay",
                source: e,
            });
            return Ok(());
        }
        // Not tokio's copy_bidirectional, which holds two 8 KiB buffers for as long as the
        // user stays logged in; this holds only what is in flight.
        // The store's close ends the session (after QUIT, or its autologout timer).
        if let Err(e) =
            crate::stream::relay_idle_until_b_closes(&mut client, &mut backend, idle).await
        {
            info!(session = %self.client.session_id, error = %e, "relay ended");
        }
        // Counted on the back-end's side, which also knows a relay that ended in an error.
        let (to_backend, to_client) = backend.moved();
        hold.tally.bytes(to_backend, to_client + early.len() as u64);
        if let Some(source) = backend.take_error() {
            hold.health.failure(&LegError::Io {
                stage: "relay",
                source,
            });
        }
        Ok(())
    }
}

fn temp_failure() -> Response {
    Response::err(
        Some(ResponseCode::SysTemp),
        "No back-end available, try again later",
    )
}

#[cfg(test)]
mod tests;
