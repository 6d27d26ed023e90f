//! Destinations for an outbound relay cluster: a real Postfix instance on a lab host that
//! receives the mail of one domain (`fast.example`, `slow.example`) into maildirs, the way
//! a remote provider's MX would. The back-ends under test relay that domain to it
//! ([`super::Users::relaying`]).
//!
//! A destination in [`Mode::Tempfail`] answers `451 4.7.1` to every RCPT for its domain:
//! its senders keep the mail in their queues as deferred, with that reply as the reason
//! (what a slow or throttling provider does). [`Destination::recover`] makes it accept
//! again; the senders deliver when they retry (or are flushed).
//!
//! [`Destination::message_ids`] reads every maildir of the host, so that a test can count
//! each message's deliveries (exactly once, even when mail moved between senders).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{MailHost, Make, Users};
use crate::Lab;

/// How a destination answers its senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accepts every message for its domain.
    Healthy,
    /// `451 4.7.1` to every RCPT for its domain.
    Tempfail,
}

/// The mailboxes every destination has (`inbox@<domain>`, `second@<domain>`).
pub const MAILBOXES: [&str; 2] = ["inbox", "second"];

/// A running destination; its processes belong to the lab.
#[derive(Debug)]
pub struct Destination {
    pub domain: String,
    pub host: MailHost,
    mode: Mode,
}

impl Destination {
    /// Starts Postfix (and the Dovecot every lab mail host has) on back-end `ns_index`
    /// (0 = be1), accepting mail for `domain` into `inbox@` and `second@`, in `mode`.
    pub fn start(lab: &mut Lab, ns_index: usize, domain: &str, mode: Mode) -> anyhow::Result<Self> {
        let host = MailHost::start(lab, ns_index, Make::Postfix, &users(domain, mode))
            .with_context(|| format!("destination {domain}"))?;
        Ok(Destination {
            domain: domain.to_owned(),
            host,
            mode,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Where senders deliver to: port 25 of the host.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.host.smtp_addr()
    }

    /// `inbox@<domain>`.
    pub fn rcpt(&self) -> String {
        format!("{}@{}", MAILBOXES[0], self.domain)
    }

    /// `second@<domain>`.
    pub fn second_rcpt(&self) -> String {
        format!("{}@{}", MAILBOXES[1], self.domain)
    }

    /// A tempfailing destination accepts again: its configuration is rewritten and Postfix
    /// reloaded, so new sessions from the senders are accepted.
    pub fn recover(&mut self) -> anyhow::Result<()> {
        self.set_mode(Mode::Healthy)
    }

    /// Switches the destination to `mode` live (`postfix reload`).
    pub fn set_mode(&mut self, mode: Mode) -> anyhow::Result<()> {
        self.host.reconfigure(&users(&self.domain, mode))?;
        self.mode = mode;
        Ok(())
    }

    /// The Message-ID of every message delivered to any mailbox of the host (one entry per
    /// delivered copy; `<` and `>` stripped), sorted.
    pub fn message_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = MAILBOXES
            .iter()
            .flat_map(|local| self.host.messages(&format!("{local}@{}", self.domain)))
            .filter_map(|m| message_id(&m))
            .collect();
        ids.sort();
        ids
    }

    /// Waits until at least `count` messages were delivered, and returns
    /// [`Destination::message_ids`].
    pub fn wait_for_ids(&self, count: usize, within: Duration) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + within;
        loop {
            let ids = self.message_ids();
            if ids.len() >= count {
                return Ok(ids);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {} messages delivered, expected {count}: {ids:?}",
                    self.domain,
                    ids.len()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn users(domain: &str, mode: Mode) -> Users {
    let mut users = Users::new();
    for local in MAILBOXES {
        users = users.with(&format!("{local}@{domain}"), "destination-pw");
    }
    match mode {
        Mode::Healthy => users,
        Mode::Tempfail => users.tempfailing(domain),
    }
}

/// The Message-ID header of a raw message (its header section only), without `<>`.
pub fn message_id(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let header = text
        .split("\r\n\r\n")
        .next()
        .and_then(|h| h.split("\n\n").next())
        .unwrap_or("");
    header.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("message-id").then(|| {
            value
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::message_id;

    #[test]
    fn message_id_is_read_from_the_header_only() {
        let raw = b"Received: from x\r\nMessage-Id: <a1@b.example>\r\nSubject: s\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(raw).as_deref(), Some("a1@b.example"));
        assert_eq!(message_id(b"Subject: s\n\nMessage-ID: <x@y>\n"), None);
    }
}
