//! The wire protocol of `robustifier agent` and the front-ends that poll it: the report
//! line, its parsing, and the keyed challenge and response around it. Both sides use it;
//! the poll itself (connect, time limit) is [`crate::health::agent_client`].
//!
//! With a shared key (the normal case) every poll is a fresh challenge and response, so a
//! recorded exchange is worth nothing later and only a holder of the key gets figures:
//!
//! ```text
//! agent -> front-end   robustifier-agent/2 challenge=<32 random octets, base64>
//! front-end -> agent   poll nonce=<32 random octets> mac=<HMAC(key, "poll", challenge, nonce)>
//! agent -> front-end   robustifier-agent/1 runq=.. mailq=.. .. mac=<HMAC(key, "report",
//!                      challenge, nonce, the line before " mac=")>
//! ```
//!
//! Instead of `poll`, the front-end may send a command; the reply is one JSON line of at
//! most [`MAX_REPLY`] octets, bound to the exchange and the command the same way:
//!
//! ```text
//! front-end -> agent   command nonce=<32 random octets> op=queue [arg=<base64 JSON>]
//!                      mac=<HMAC(key, "command", challenge, nonce, op, arg)>
//! agent -> front-end   {"ok":{..}} mac=<HMAC(key, "reply", challenge, nonce, op, the JSON)>
//! ```
//!
//! A wrong or missing MAC ends the connection without a report; the front-end likewise
//! refuses a report whose MAC does not match its nonce (a forged or replayed report). The
//! key is SHA-256 of a key file's content (surrounding whitespace trimmed, at least 16
//! octets), read by the agent (`--key-file`) and by the front-end (`agent_key_file`).
//!
//! Without a key (`agent --insecure-no-key`, `agent_insecure = true`) the agent writes
//! the report line at once, then reads one line for a moment: `command op=queue` gets the
//! JSON reply; anything else, or nothing, and it closes. A front-end with a key refuses
//! such a report. Commands that change the MTA's queue ([`Op::Move`]) need a key: an agent
//! without one refuses them.

use std::{net::SocketAddr, path::Path, time::Instant};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ring::{digest, hmac, rand::SecureRandom as _};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt as _};

use crate::lines::{Line, read_line};

/// What a back-end's agent last said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentReport {
    pub run_queue_milli: u32,
    pub mail_queue: u32,
    pub disk_permille: u32,
    /// Operator's weight, 0..=65535; `None` keeps the configured one.
    pub weight: Option<u32>,
    /// Operator asked for no new sessions.
    pub drain: bool,
    pub at: Instant,
}

/// First word of a report line.
pub const MAGIC: &str = "robustifier-agent/1";
/// First word of the agent's challenge line.
pub const CHALLENGE_MAGIC: &str = "robustifier-agent/2";
/// Octets of a challenge or a nonce.
pub const NONCE_LEN: usize = 32;
/// Longest protocol line either side reads.
pub const MAX_LINE: usize = 1024;
/// Longest reply to a command (one JSON line); an agent keeps its replies under it.
pub const MAX_REPLY: usize = 4 << 20;
/// Longest command line (its argument included) an agent reads.
pub const MAX_COMMAND: usize = 16 << 10;
const MIN_KEY_LEN: usize = 16;

/// The shared secret of an agent and its front-ends. Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AgentKey([u8; 32]);

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} holds {len} octets; a key needs at least {MIN_KEY_LEN} (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    Short { path: String, len: usize },
}

impl AgentKey {
    pub fn from_file(path: &Path) -> Result<AgentKey, KeyError> {
        let text = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_secret(&text).ok_or_else(|| KeyError::Short {
            path: path.display().to_string(),
            len: text.trim_ascii().len(),
        })
    }

    /// The key for `secret` (a key file's content), or `None` if it is too short.
    pub fn from_secret(secret: &[u8]) -> Option<AgentKey> {
        let s = secret.trim_ascii();
        if s.len() < MIN_KEY_LEN {
            return None;
        }
        let d = digest::digest(&digest::SHA256, s);
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        Some(AgentKey(k))
    }

    fn hmac(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }

    fn poll_mac(&self, challenge: &[u8], nonce: &[u8]) -> hmac::Tag {
        let mut c = hmac::Context::with_key(&self.hmac());
        for part in [b"poll\0".as_slice(), challenge, nonce] {
            c.update(part);
        }
        c.sign()
    }

    fn report_message(challenge: &[u8], nonce: &[u8], line: &str) -> Vec<u8> {
        [b"report\0".as_slice(), challenge, nonce, line.as_bytes()].concat()
    }

    /// The front-end's answer to `challenge`, with its own fresh `nonce`.
    pub fn answer(&self, challenge: &[u8], nonce: &[u8]) -> String {
        format!(
            "poll nonce={} mac={}\n",
            B64.encode(nonce),
            B64.encode(self.poll_mac(challenge, nonce))
        )
    }

    /// The agent's check of an answer line; returns the front-end's nonce if it is right.
    pub fn check_answer(&self, challenge: &[u8], answer: &str) -> Option<Vec<u8>> {
        let mut w = answer.split_ascii_whitespace();
        let (Some("poll"), Some(n), Some(m), None) = (w.next(), w.next(), w.next(), w.next())
        else {
            return None;
        };
        let nonce = B64.decode(n.strip_prefix("nonce=")?).ok()?;
        let mac = B64.decode(m.strip_prefix("mac=")?).ok()?;
        if nonce.len() != NONCE_LEN {
            return None;
        }
        let mut msg = b"poll\0".to_vec();
        msg.extend_from_slice(challenge);
        msg.extend_from_slice(&nonce);
        hmac::verify(&self.hmac(), &msg, &mac).ok()?;
        Some(nonce)
    }

    /// `line` (a report, without newline) with its MAC appended.
    pub fn seal(&self, challenge: &[u8], nonce: &[u8], line: &str) -> String {
        let tag = hmac::sign(&self.hmac(), &Self::report_message(challenge, nonce, line));
        format!("{line} mac={}\n", B64.encode(tag))
    }

    /// The report of a sealed line, if its MAC is right for this exchange.
    pub fn open<'a>(&self, challenge: &[u8], nonce: &[u8], sealed: &'a str) -> Option<&'a str> {
        let (line, mac) = sealed.rsplit_once(" mac=")?;
        let mac = B64.decode(mac.trim()).ok()?;
        hmac::verify(
            &self.hmac(),
            &Self::report_message(challenge, nonce, line),
            &mac,
        )
        .ok()?;
        Some(line)
    }
}

impl AgentKey {
    /// An empty `arg` signs as the commands without one always did.
    fn command_message(challenge: &[u8], nonce: &[u8], op: Op, arg: &[u8]) -> Vec<u8> {
        let mut m = [
            b"command\0".as_slice(),
            challenge,
            nonce,
            op.as_str().as_bytes(),
        ]
        .concat();
        if !arg.is_empty() {
            m.push(0);
            m.extend_from_slice(arg);
        }
        m
    }

    /// Binds a reply to the exchange and to the command it answers, so that neither a
    /// report nor another command's reply passes for it.
    fn reply_message(challenge: &[u8], nonce: &[u8], op: Op, json: &str) -> Vec<u8> {
        [
            b"reply\0".as_slice(),
            challenge,
            nonce,
            op.as_str().as_bytes(),
            b"\0",
            json.as_bytes(),
        ]
        .concat()
    }

    /// The front-end's command line in answer to `challenge`, with its own fresh `nonce`;
    /// `arg` (JSON, or empty) travels base64-encoded under the MAC.
    pub fn command(&self, challenge: &[u8], nonce: &[u8], op: Op, arg: &str) -> String {
        let tag = hmac::sign(
            &self.hmac(),
            &Self::command_message(challenge, nonce, op, arg.as_bytes()),
        );
        let arg = if arg.is_empty() {
            String::new()
        } else {
            format!(" arg={}", B64.encode(arg))
        };
        format!(
            "command nonce={} op={}{arg} mac={}\n",
            B64.encode(nonce),
            op.as_str(),
            B64.encode(tag)
        )
    }

    /// The agent's check of a command line: the front-end's nonce, the operation and its
    /// argument (empty if none) if its MAC is right for this challenge.
    pub fn check_command(&self, challenge: &[u8], line: &str) -> Option<Command> {
        let mut w = line.split_ascii_whitespace();
        let (Some("command"), Some(n), Some(o)) = (w.next(), w.next(), w.next()) else {
            return None;
        };
        let (arg, m) = match (w.next()?, w.next()) {
            (a, Some(m)) => (B64.decode(a.strip_prefix("arg=")?).ok()?, m),
            (m, None) => (Vec::new(), m),
        };
        if w.next().is_some() {
            return None;
        }
        let nonce = B64.decode(n.strip_prefix("nonce=")?).ok()?;
        let op = Op::parse(o.strip_prefix("op=")?)?;
        let mac = B64.decode(m.strip_prefix("mac=")?).ok()?;
        if nonce.len() != NONCE_LEN {
            return None;
        }
        hmac::verify(
            &self.hmac(),
            &Self::command_message(challenge, &nonce, op, &arg),
            &mac,
        )
        .ok()?;
        Some(Command {
            nonce,
            op,
            arg: String::from_utf8(arg).ok()?,
        })
    }

    /// `json` (one line) with its MAC appended.
    pub fn seal_reply(&self, challenge: &[u8], nonce: &[u8], op: Op, json: &str) -> String {
        let tag = hmac::sign(
            &self.hmac(),
            &Self::reply_message(challenge, nonce, op, json),
        );
        format!("{json} mac={}\n", B64.encode(tag))
    }

    /// The JSON of a sealed reply, if its MAC is right for this exchange and command.
    pub fn open_reply<'a>(
        &self,
        challenge: &[u8],
        nonce: &[u8],
        op: Op,
        sealed: &'a str,
    ) -> Option<&'a str> {
        let (json, mac) = sealed.rsplit_once(" mac=")?;
        let mac = B64.decode(mac.trim()).ok()?;
        hmac::verify(
            &self.hmac(),
            &Self::reply_message(challenge, nonce, op, json),
            &mac,
        )
        .ok()?;
        Some(json)
    }
}

/// A checked command: the front-end's nonce, what it asks and the argument (JSON or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub nonce: Vec<u8>,
    pub op: Op,
    pub arg: String,
}

/// What a front-end may ask an agent besides its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The mail queue per destination domain ([`QueueReply`]).
    Queue,
    /// Start (or report) moving a domain's queued mail to another pool: the argument is a
    /// [`MoveRequest`], the reply a [`MoveReply`]. Needs a key.
    Move,
    /// Whether this agent's MTA queues a message a move handed over (the duplicate check
    /// of an interrupted move): the argument is a [`FindRequest`], the reply a
    /// [`FindReply`]. Needs a key.
    Find,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Queue => "queue",
            Op::Move => "move",
            Op::Find => "find",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "queue" => Some(Op::Queue),
            "move" => Some(Op::Move),
            "find" => Some(Op::Find),
            _ => None,
        }
    }
}

/// Asks an agent to hand its queued mail for a domain over to a pool: each message with
/// recipients there is held in the MTA, re-submitted over SMTP with its original envelope
/// (those recipients only) to one of `targets`, and removed from the source only after the
/// target's 250. The same request again reports the move's progress; one with other
/// targets re-aims a move still running.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveRequest {
    /// A domain pattern as `[[domain_queue]]` writes it: `slow.example` (that domain) or
    /// `.slow.example` (its subdomains).
    pub domain: String,
    /// The pool taking the mail (named in logs and the status).
    pub pool: String,
    /// The pool's back-ends' SMTP addresses, tried in turn.
    pub targets: Vec<SocketAddr>,
    /// Report the domain's move (if any) without starting one.
    #[serde(default)]
    pub status_only: bool,
    /// The agents of the target back-ends (same key), asked whether they already have a
    /// message whose sending was interrupted (the duplicate check); empty: not asked.
    #[serde(default)]
    pub target_agents: Vec<SocketAddr>,
}

/// Where a move stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveState {
    /// Messages are still being handed over (or retried after a target failed).
    Running,
    /// A pass found nothing more to move (refused messages stay held at the source).
    Done,
    /// `status_only` asked about a domain this agent has no move for.
    None,
}

/// A message the target refused permanently: it stays held at the source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefusedMessage {
    pub queue_id: String,
    /// The target's reply.
    pub reply: String,
}

/// One agent's move of one domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveStatus {
    pub domain: String,
    pub pool: String,
    pub state: MoveState,
    /// Messages found with recipients in the domain, over all passes.
    pub found: u32,
    /// Of them, taken by a target and removed (or their recipients removed) at the source.
    pub moved: u32,
    /// Recipients handed over.
    pub recipients_moved: u32,
    /// Recipients of other domains in moved messages, left queued at the source.
    pub recipients_kept: u32,
    /// Messages re-submitted after an interruption whose target already had them (the
    /// duplicate check), so not sent again.
    pub already_there: u32,
    /// Refused permanently by the target (at most the first 100).
    pub refused: Vec<RefusedMessage>,
    /// The last failure (a target down, an MTA command that failed), while retrying.
    pub last_error: Option<String>,
    /// Unix seconds.
    pub started: i64,
    pub finished: Option<i64>,
}

/// An agent's reply to [`Op::Move`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveReply {
    Ok(MoveStatus),
    /// Refused or impossible (no key, no state directory, a bad request, an MTA without
    /// per-message commands).
    Error(String),
}

/// Asks a target's agent for a message a move handed over: queued, from `sender`, with
/// `X-Robustifier-Move: <token>` in its header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FindRequest {
    pub token: String,
    /// The envelope sender; empty for a bounce.
    pub sender: String,
}

/// An agent's reply to [`Op::Find`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FindReply {
    /// Queued here, under this queue id.
    Found(String),
    /// Not in this MTA's queue.
    Missing,
    /// The agent cannot tell (its MTA's make, a failed command, no key).
    Unknown(String),
}

/// One destination domain's mail in a back-end's queue. A message counts once per domain
/// among its undelivered recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DomainQueue {
    /// Lowercased; an internationalised name stays as the MTA wrote it.
    pub domain: String,
    pub queued: u32,
    /// Of them, deferred at least once; `None` where the MTA's listing does not say
    /// (Exim's `exim -bp`).
    pub deferred: Option<u32>,
    /// Age of the domain's oldest queued message.
    pub oldest_secs: u64,
    /// The MTA's reason for the domain's latest deferral (control characters removed,
    /// truncated); empty when it gave none or does not say.
    pub reason: String,
}

/// An agent's queue figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueReport {
    /// `postfix`, `exim`, `opensmtpd` or `spool`.
    pub mta: String,
    /// Messages read from the MTA's listing.
    pub messages: u32,
    /// The listing went past the agent's bounds (messages, domains or octets): the figures
    /// cover only its first part.
    pub truncated: bool,
    pub domains: Vec<DomainQueue>,
}

/// An agent's reply to [`Op::Queue`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueReply {
    Ok(QueueReport),
    /// The agent could not read its MTA's queue.
    Error(String),
}

/// Fresh random octets for a challenge or a nonce.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], PollError> {
    let mut n = [0u8; NONCE_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| PollError::Random)?;
    Ok(n)
}

/// Where a back-end's agent listens and the key it expects (`None`: an agent started
/// with `--insecure-no-key`, allowed by `agent_insecure = true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub key: Option<AgentKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("closed without a report")]
    NoReport,
    #[error("line too long")]
    TooLong,
    #[error("no challenge from the agent (an agent without a key? got {0:?})")]
    NoChallenge(String),
    #[error("the agent expects a key; set agent_key_file")]
    KeyExpected,
    #[error("this command needs an agent with a key (agent_key_file)")]
    KeyNeeded,
    #[error("the report's MAC does not match (wrong key, or not our exchange)")]
    BadMac,
    #[error("the front-end's answer is wrong (no key, or another key)")]
    BadAnswer,
    #[error("the front-end closed without answering")]
    NoAnswer,
    #[error("no random numbers")]
    Random,
    #[error("the reply's MAC does not match (wrong key, or not our exchange)")]
    BadReplyMac,
    #[error("the reply is not one: {0}")]
    BadReply(String),
    /// A well-formed reply in which the agent declines the command, with its reason: the
    /// reason is the operator's to read, not a sign of a broken exchange.
    #[error("the agent says: {0}")]
    Refused(String),
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// A report line that is not one: the agent's answer is ignored, never trusted in part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("not an agent report: {line:?}")]
    NotAReport { line: String },
    #[error("bad {key}={value}")]
    BadValue { key: String, value: String },
}

async fn line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, PollError> {
    line_of(r, MAX_LINE).await
}

async fn line_of<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> Result<String, PollError> {
    match read_line(r, max).await? {
        Line::Complete(l) => Ok(String::from_utf8_lossy(&l).into_owned()),
        Line::TooLong => Err(PollError::TooLong),
        Line::Eof => Err(PollError::NoReport),
    }
}

/// One poll over an open connection.
pub async fn exchange<S>(mut s: S, key: Option<AgentKey>) -> Result<AgentReport, PollError>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let first = line(&mut s).await?;
    let Some(key) = key else {
        if first.starts_with(CHALLENGE_MAGIC) {
            return Err(PollError::KeyExpected);
        }
        return parse(&first).map_err(PollError::Report);
    };
    let challenge = challenge_of(&first)?;
    let nonce = random_nonce()?;
    s.write_all(key.answer(&challenge, &nonce).as_bytes())
        .await?;
    s.flush().await?;
    let sealed = line(&mut s).await?;
    let report = key
        .open(&challenge, &nonce, &sealed)
        .ok_or(PollError::BadMac)?;
    parse(report).map_err(PollError::Report)
}

fn challenge_of(first: &str) -> Result<Vec<u8>, PollError> {
    match first.split_once(' ') {
        Some((CHALLENGE_MAGIC, rest)) => rest
            .trim()
            .strip_prefix("challenge=")
            .and_then(|c| B64.decode(c).ok())
            .filter(|c| c.len() == NONCE_LEN),
        _ => None,
    }
    .ok_or(PollError::NoChallenge(first.chars().take(64).collect()))
}

/// One command over an open connection: its reply's JSON, checked. Without a key the agent
/// writes its report first (old-style polls read only that), then reads the command.
pub async fn command<S>(
    mut s: S,
    key: Option<AgentKey>,
    op: Op,
    arg: &str,
) -> Result<String, PollError>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    let first = line(&mut s).await?;
    let Some(key) = key else {
        if first.starts_with(CHALLENGE_MAGIC) {
            return Err(PollError::KeyExpected);
        }
        parse(&first).map_err(PollError::Report)?;
        if !arg.is_empty() {
            return Err(PollError::KeyNeeded);
        }
        s.write_all(format!("command op={}\n", op.as_str()).as_bytes())
            .await?;
        s.flush().await?;
        return line_of(&mut s, MAX_REPLY).await;
    };
    let challenge = challenge_of(&first)?;
    let nonce = random_nonce()?;
    s.write_all(key.command(&challenge, &nonce, op, arg).as_bytes())
        .await?;
    s.flush().await?;
    let sealed = line_of(&mut s, MAX_REPLY).await?;
    key.open_reply(&challenge, &nonce, op, &sealed)
        .map(str::to_owned)
        .ok_or(PollError::BadReplyMac)
}

/// Parses a report line; unknown fields are ignored (newer agents may add some).
pub fn parse(line: &str) -> Result<AgentReport, ReportError> {
    let mut words = line.split_ascii_whitespace();
    if words.next() != Some(MAGIC) {
        return Err(ReportError::NotAReport {
            line: line.to_owned(),
        });
    }
    let mut r = AgentReport {
        run_queue_milli: 0,
        mail_queue: 0,
        disk_permille: 0,
        weight: None,
        drain: false,
        at: Instant::now(),
    };
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            continue;
        };
        let bad = || ReportError::BadValue {
            key: k.to_owned(),
            value: v.to_owned(),
        };
        let num = || v.parse::<u32>().map_err(|_| bad());
        match k {
            "runq" => {
                let q: f64 = v.parse().map_err(|_| bad())?;
                r.run_queue_milli = (q * 1000.0).round().clamp(0.0, u32::MAX as f64) as u32;
            }
            "mailq" => r.mail_queue = num()?,
            "disk_permille" => r.disk_permille = num()?.min(1000),
            "weight" => r.weight = Some(num()?.min(65535)),
            "drain" => r.drain = v == "1",
            _ => {}
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        let r = parse(
            "robustifier-agent/1 runq=0.52 mailq=12 disk_permille=431 weight=50 drain=1 future=x",
        )
        .unwrap();
        assert_eq!(
            (
                r.run_queue_milli,
                r.mail_queue,
                r.disk_permille,
                r.weight,
                r.drain
            ),
            (520, 12, 431, Some(50), true)
        );
        assert!(parse("HTTP/1.1 200 OK").is_err());
        assert!(parse("robustifier-agent/1 mailq=lots").is_err());
    }

    #[test]
    fn answers_and_reports_are_bound_to_key_and_exchange() {
        let k = AgentKey::from_secret(b"0123456789abcdef\n").unwrap();
        let other = AgentKey::from_secret(b"0123456789abcdeX").unwrap();
        assert!(AgentKey::from_secret(b"  short  ").is_none());
        let (c, n) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let a = k.answer(&c, &n);
        assert_eq!(k.check_answer(&c, &a), Some(n.to_vec()));
        assert_eq!(other.check_answer(&c, &a), None, "wrong key");
        assert_eq!(k.check_answer(&[3u8; NONCE_LEN], &a), None, "replayed");
        let sealed = k.seal(&c, &n, "robustifier-agent/1 mailq=3");
        assert_eq!(
            k.open(&c, &n, sealed.trim_end()),
            Some("robustifier-agent/1 mailq=3")
        );
        assert_eq!(other.open(&c, &n, sealed.trim_end()), None);
        assert_eq!(k.open(&c, &[9u8; NONCE_LEN], sealed.trim_end()), None);
        let forged = sealed.replace("mailq=3", "mailq=0");
        assert_eq!(k.open(&c, &n, forged.trim_end()), None);
        assert_eq!(format!("{k:?}"), "AgentKey(..)");
    }

    #[test]
    fn commands_and_replies_are_bound_to_key_exchange_and_op() {
        let k = AgentKey::from_secret(b"0123456789abcdef").unwrap();
        let other = AgentKey::from_secret(b"0123456789abcdeX").unwrap();
        let (c, n) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let cmd = k.command(&c, &n, Op::Queue, "");
        assert!(cmd.starts_with("command nonce=") && cmd.contains(" op=queue mac="));
        let queue = Command {
            nonce: n.to_vec(),
            op: Op::Queue,
            arg: String::new(),
        };
        assert_eq!(k.check_command(&c, &cmd), Some(queue));
        assert_eq!(other.check_command(&c, &cmd), None, "wrong key");
        assert_eq!(k.check_command(&[3u8; NONCE_LEN], &cmd), None, "replayed");
        let (head, _) = cmd.rsplit_once(" mac=").unwrap();
        assert_eq!(k.check_command(&c, head), None, "no MAC");
        assert_eq!(
            k.check_command(&c, &cmd.replace("op=queue", "op=drain")),
            None,
            "unknown op"
        );
        // An argument travels under the MAC: altered, dropped or moved to another op, it
        // fails.
        let arg = r#"{"domain":"slow.example","pool":"slowq","targets":["198.18.0.1:25"]}"#;
        let mv = k.command(&c, &n, Op::Move, arg);
        assert_eq!(
            k.check_command(&c, &mv),
            Some(Command {
                nonce: n.to_vec(),
                op: Op::Move,
                arg: arg.to_owned()
            })
        );
        let (head, mac) = mv.rsplit_once(" mac=").unwrap();
        let (start, _) = head.rsplit_once(" arg=").unwrap();
        let other_arg = B64.encode(arg.replace("198.18.0.1", "203.0.113.1"));
        assert_eq!(
            k.check_command(&c, &format!("{start} arg={other_arg} mac={mac}")),
            None
        );
        assert_eq!(k.check_command(&c, &format!("{start} mac={mac}")), None);
        assert_eq!(
            k.check_command(&c, &mv.replace("op=move", "op=queue")),
            None
        );
        // A poll's answer is not a command, nor a command a poll's answer.
        assert_eq!(k.check_command(&c, &k.answer(&c, &n)), None);
        assert_eq!(k.check_answer(&c, &cmd), None);

        let json = r#"{"ok":{"mta":"postfix","messages":1,"truncated":false,"domains":[]}}"#;
        let sealed = k.seal_reply(&c, &n, Op::Queue, json);
        let sealed = sealed.trim_end();
        assert_eq!(k.open_reply(&c, &n, Op::Queue, sealed), Some(json));
        assert_eq!(other.open_reply(&c, &n, Op::Queue, sealed), None, "forged");
        assert_eq!(
            k.open_reply(&[3u8; NONCE_LEN], &n, Op::Queue, sealed),
            None,
            "replayed into another exchange"
        );
        assert_eq!(k.open_reply(&c, &[9u8; NONCE_LEN], Op::Queue, sealed), None);
        assert_eq!(
            k.open_reply(
                &c,
                &n,
                Op::Queue,
                &sealed.replace("\"messages\":1", "\"messages\":0")
            ),
            None,
            "altered"
        );
        assert_eq!(k.open_reply(&c, &n, Op::Queue, json), None, "missing MAC");
        // A report sealed for the same exchange does not pass for a reply.
        let report = k.seal(&c, &n, json);
        assert_eq!(k.open_reply(&c, &n, Op::Queue, report.trim_end()), None);
    }
}
