//! The RADIUS source: one Access-Request per lookup (RFC 2865), signed with a
//! Message-Authenticator (RFC 3579) placed first among its attributes; the reply is
//! trusted only with a valid Response Authenticator AND a valid Message-Authenticator.
//!
//! - User-Name: the `user_name` template filled with the key's parts as plain text
//!   (RADIUS has no query syntax to escape; a server's user list matches it as a
//!   literal). A name RADIUS cannot carry (empty, over 253 octets, holding a NUL, which
//!   servers read as its end: FreeRADIUS 3.2 accepts `alice@example.test\0x` as alice)
//!   is no user of the directory: [`Found::NotFound`] without a request.
//! - User-Password: the configured lookup password or an empty one, always hidden with
//!   the secret (RFC 2865 section 5.2). RFC 2865 wants every Access-Request to carry a
//!   password (or CHAP-Password or State); the server is expected to accept known names
//!   without checking it (FreeRADIUS: `Auth-Type := Accept` in its users file).
//! - Access-Accept: the values of the configured attribute, in order. An Access-Accept
//!   without it is `Found::Values(vec![])`, as an LDAP entry without the attribute is:
//!   [`super::answer`] reads no route from it, and the session gets a temporary reply
//!   while the directory's error is counted, never a route by default.
//! - Access-Reject: [`Found::NotFound`].
//! - Every other datagram (a wrong Identifier, a failed authenticator, a missing
//!   Message-Authenticator, more than 4096 octets, malformed attributes, another code)
//!   is dropped and logged; if no valid reply follows, the lookup fails with
//!   [`SourceError::Invalid`].
//!
//! Each server gets `attempts` transmissions of the same request, each waiting an equal
//! share (over attempts x servers) of nine tenths of the directory's timeout, then the
//! next server gets a fresh request. A server that refuses the datagram (ICMP port unreachable) is left at
//! once. Each lookup has its own UDP socket, connected to the server, so only that
//! server's address reaches it and dropping the lookup (its timeout) closes it.

pub mod packet;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::{net::UdpSocket, time::Instant};

use super::{
    Found, Key, LookupFuture, Source, SourceError,
    template::{self, Part},
};
use crate::config::directory::radius::Radius;

pub struct RadiusSource {
    servers: Vec<SocketAddr>,
    secret: Vec<u8>,
    user_name: Vec<Part>,
    attribute: u8,
    nas_identifier: String,
    password: Vec<u8>,
    attempts: u32,
    /// How long one transmission waits for its reply.
    per_try: Duration,
    rng: SystemRandom,
}

/// A RADIUS source for `config`, whose lookups the caller bounds with `timeout`.
pub fn open(config: &Radius, timeout: Duration) -> Result<Arc<dyn Source>, SourceError> {
    let user_name = template::parse(&config.user_name)
        .map_err(|e| SourceError::Config(format!("user_name: {e}")))?;
    if config.servers.is_empty() {
        return Err(SourceError::Config("no RADIUS server".into()));
    }
    let attempts = config.attempts.max(1);
    let tries = u32::try_from(config.servers.len())
        .unwrap_or(u32::MAX)
        .saturating_mul(attempts);
    // Nine tenths of the lookup's time are shared out, so that when every try goes
    // unanswered the source's own error (which servers, why) reaches the caller before
    // its timeout does.
    let per_try = (timeout * 9 / 10 / tries).max(Duration::from_millis(1));
    Ok(Arc::new(RadiusSource {
        servers: config.servers.clone(),
        secret: config.secret.0.clone(),
        user_name,
        attribute: config.attribute_type,
        nas_identifier: config.nas_identifier.clone(),
        password: config.password.0.clone(),
        attempts,
        per_try,
        rng: SystemRandom::new(),
    }))
}

/// Why one server gave no answer.
enum Failure {
    /// Nothing (valid or not) came back, or the socket failed.
    Unavailable(String),
    /// Only replies that could not be trusted came back.
    Invalid(String),
    /// The request cannot be built.
    Config(String),
}

impl Source for RadiusSource {
    fn kind(&self) -> &'static str {
        "radius"
    }

    fn lookup<'a>(&'a self, key: &'a Key) -> LookupFuture<'a> {
        Box::pin(self.ask(key))
    }
}

impl RadiusSource {
    fn user_name(&self, key: &Key) -> String {
        self.user_name
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                other => other.value(key).unwrap_or_default(),
            })
            .collect()
    }

    async fn ask(&self, key: &Key) -> Result<Found, SourceError> {
        let name = self.user_name(key);
        if name.is_empty() || name.len() > packet::MAX_VALUE || name.contains('\0') {
            return Ok(Found::NotFound);
        }
        let mut failures = Vec::new();
        let mut invalid = false;
        for &server in &self.servers {
            match self.ask_server(server, &name).await {
                Ok(found) => return Ok(found),
                Err(Failure::Config(e)) => return Err(SourceError::Config(e)),
                Err(Failure::Invalid(e)) => {
                    invalid = true;
                    failures.push(format!("{server}: {e}"));
                }
                Err(Failure::Unavailable(e)) => failures.push(format!("{server}: {e}")),
            }
        }
        let why = failures.join("; ");
        Err(if invalid {
            SourceError::Invalid(why)
        } else {
            SourceError::Unavailable(why)
        })
    }

    async fn ask_server(&self, server: SocketAddr, name: &str) -> Result<Found, Failure> {
        let unavailable = |e: std::io::Error| Failure::Unavailable(e.to_string());
        let local: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(unavailable)?;
        socket.connect(server).await.map_err(unavailable)?;
        let mut random = [0u8; 17];
        self.rng
            .fill(&mut random)
            .map_err(|_| Failure::Unavailable("no randomness for the authenticator".into()))?;
        let identifier = random[0];
        let mut authenticator = [0u8; 16];
        authenticator.copy_from_slice(&random[1..]);
        let config = |e: packet::PacketError| Failure::Config(e.to_string());
        let hidden =
            packet::hide_password(&self.password, &self.secret, &authenticator).map_err(config)?;
        let request = packet::access_request(
            identifier,
            &authenticator,
            &self.secret,
            &[
                (packet::USER_NAME, name.as_bytes()),
                (packet::USER_PASSWORD, &hidden),
                (packet::NAS_IDENTIFIER, self.nas_identifier.as_bytes()),
            ],
        )
        .map_err(config)?;
        // One octet more than a reply may have, so that a longer one shows as too long.
        let mut buf = vec![0u8; packet::MAX_PACKET + 1];
        let mut refused: Option<packet::PacketError> = None;
        for _ in 0..self.attempts {
            socket.send(&request).await.map_err(unavailable)?;
            let deadline = Instant::now() + self.per_try;
            loop {
                let (n, from) =
                    match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                        // This transmission's time is up: send again, or give up on the server.
                        Err(_) => break,
                        // Typically ECONNREFUSED: nothing listens there.
                        Ok(Err(e)) => return Err(unavailable(e)),
                        Ok(Ok(got)) => got,
                    };
                if from != server {
                    continue;
                }
                match packet::verify_reply(&buf[..n], identifier, &authenticator, &self.secret) {
                    Ok(reply) => return self.answer(&reply),
                    Err(e) => {
                        tracing::warn!(%server, error = %e, "RADIUS reply dropped");
                        refused = Some(e);
                    }
                }
            }
        }
        Err(match refused {
            Some(e) => Failure::Invalid(e.to_string()),
            None => Failure::Unavailable(format!(
                "no reply to {} transmission(s) of {} ms",
                self.attempts,
                self.per_try.as_millis()
            )),
        })
    }

    fn answer(&self, reply: &packet::Packet<'_>) -> Result<Found, Failure> {
        if reply.code == packet::ACCESS_REJECT {
            return Ok(Found::NotFound);
        }
        reply
            .values(self.attribute)
            .map(|v| {
                String::from_utf8(v.to_vec())
                    .map_err(|_| Failure::Invalid("a reply attribute is not UTF-8 text".into()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Found::Values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::directory::radius::Secret;

    fn config(servers: Vec<SocketAddr>, user_name: &str) -> Radius {
        Radius {
            servers,
            secret_file: "unused".into(),
            secret: Secret(b"lab-secret".to_vec()),
            user_name: user_name.into(),
            attribute: "Reply-Message".into(),
            attribute_type: 18,
            nas_identifier: "robustifier".into(),
            attempts: 2,
            password: Secret(Vec::new()),
        }
    }

    /// A loopback server that answers each request with `reply(request) -> datagrams`.
    async fn server(
        reply: impl Fn(&packet::Packet<'_>, &[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(Ok((n, from))) =
                tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf)).await
            {
                let req = buf[..n].to_vec();
                seen.push(req.clone());
                let p = packet::decode(&req).unwrap();
                for d in reply(&p, &req) {
                    s.send_to(&d, from).await.unwrap();
                }
            }
            seen
        });
        (addr, task)
    }

    fn accept(p: &packet::Packet<'_>, attrs: &[(u8, &[u8])], ma: bool) -> Vec<u8> {
        packet::signed_reply(
            packet::ACCESS_ACCEPT,
            p.identifier,
            &p.authenticator,
            b"lab-secret",
            attrs,
            ma,
        )
    }

    #[tokio::test]
    async fn a_lookup_sends_a_signed_request_and_reads_the_attribute() {
        let (addr, task) =
            server(|p, _| vec![accept(p, &[(18, b"be1"), (18, b"be2")], true)]).await;
        let src = open(&config(vec![addr], "%u"), Duration::from_secs(1)).unwrap();
        let got = src.lookup(&Key::recipient("alice@example.test")).await;
        assert_eq!(got, Ok(Found::Values(vec!["be1".into(), "be2".into()])));
        drop(src);
        let seen = task.await.unwrap();
        let p = packet::decode(&seen[0]).unwrap();
        assert_eq!(p.code, packet::ACCESS_REQUEST);
        assert_eq!(p.attributes[0].0, packet::MESSAGE_AUTHENTICATOR);
        assert_eq!(p.values(packet::USER_NAME).collect::<Vec<_>>(), [b"alice"]);
        assert_eq!(
            p.values(packet::USER_PASSWORD).next().map(<[u8]>::len),
            Some(16)
        );
        assert_eq!(
            p.values(packet::NAS_IDENTIFIER).collect::<Vec<_>>(),
            [b"robustifier"]
        );
        packet::message_authenticator_ok(&seen[0], &p.authenticator, b"lab-secret").unwrap();
    }

    #[tokio::test]
    async fn untrusted_replies_are_dropped_and_a_later_valid_one_taken() {
        let (addr, _task) = server(|p, _| {
            vec![
                accept(p, &[(18, b"evil")], false),
                packet::signed_reply(
                    2,
                    p.identifier,
                    &p.authenticator,
                    b"wrong",
                    &[(18, b"evil")],
                    true,
                ),
                accept(p, &[(18, b"be1")], true),
            ]
        })
        .await;
        let src = open(&config(vec![addr], "%s"), Duration::from_secs(1)).unwrap();
        let got = src.lookup(&Key::recipient("a@b")).await;
        assert_eq!(got, Ok(Found::Values(vec!["be1".into()])));
    }

    #[tokio::test]
    async fn only_untrusted_replies_make_an_invalid_answer() {
        let (addr, task) = server(|p, _| vec![accept(p, &[(18, b"evil")], false)]).await;
        let src = open(&config(vec![addr], "%s"), Duration::from_millis(400)).unwrap();
        let got = src.lookup(&Key::recipient("a@b")).await;
        assert!(matches!(got, Err(SourceError::Invalid(_))), "{got:?}");
        drop(src);
        assert_eq!(task.await.unwrap().len(), 2, "both attempts were sent");
    }

    #[tokio::test]
    async fn reject_is_not_found_and_an_accept_without_the_attribute_has_no_values() {
        let (addr, _task) = server(|p, _| {
            let user = p.values(packet::USER_NAME).next().unwrap_or_default();
            if user == b"known" {
                vec![accept(p, &[(11, b"other-attribute")], true)]
            } else {
                vec![packet::signed_reply(
                    3,
                    p.identifier,
                    &p.authenticator,
                    b"lab-secret",
                    &[],
                    true,
                )]
            }
        })
        .await;
        let src = open(&config(vec![addr], "%s"), Duration::from_secs(1)).unwrap();
        assert_eq!(src.lookup(&Key::user("nobody")).await, Ok(Found::NotFound));
        assert_eq!(
            src.lookup(&Key::user("known")).await,
            Ok(Found::Values(vec![]))
        );
    }

    #[tokio::test]
    async fn names_radius_cannot_carry_are_unknown_without_asking() {
        let (addr, task) = server(|p, _| vec![accept(p, &[(18, b"be1")], true)]).await;
        let src = open(&config(vec![addr], "%s"), Duration::from_secs(1)).unwrap();
        for k in [
            "alice@example.test\0x".to_owned(),
            "a".repeat(254),
            String::new(),
        ] {
            assert_eq!(src.lookup(&Key::user(k)).await, Ok(Found::NotFound));
        }
        drop(src);
        assert!(task.await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refusing_server_is_left_for_the_next() {
        // A bound socket that is closed again: its port refuses datagrams.
        let dead = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (addr, _task) = server(|p, _| vec![accept(p, &[(18, b"be2")], true)]).await;
        let src = open(&config(vec![dead, addr], "%s"), Duration::from_secs(1)).unwrap();
        let got = src.lookup(&Key::user("carol")).await;
        assert_eq!(got, Ok(Found::Values(vec!["be2".into()])));
        let src = open(&config(vec![dead], "%s"), Duration::from_secs(1)).unwrap();
        let got = src.lookup(&Key::user("carol")).await;
        assert!(matches!(got, Err(SourceError::Unavailable(_))), "{got:?}");
    }
}
