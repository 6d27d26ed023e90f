//! The manager's protocol: one JSON object per line, over mutual TLS.
//!
//! An operator sends requests and gets one [`Reply`] each. A member starts with
//! [`Request::Hello`]; from then on the manager sends it [`ToMember`] messages (the version
//! to apply, operator actions) and the member sends [`Request::Report`] and
//! [`Request::Acted`]. Who may send what follows from the certificate, not from the message.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt as _};

use crate::{
    events::Event,
    frontend::StatusReport,
    lines::{Line, read_line},
};

/// The longest line: a full cluster configuration with its routes fits many times over.
pub const MAX_LINE: usize = 8 << 20;

/// What an operator or a member sends the manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A new version on version `base`; with `confirm_secs`, reverted unless confirmed.
    Commit {
        base: u64,
        text: String,
        #[serde(default)]
        comment: String,
        #[serde(default)]
        confirm_secs: Option<u64>,
    },
    Log {
        limit: usize,
    },
    /// A version's text (the head without `version`); with `member`, that member's rendering.
    Show {
        #[serde(default)]
        version: Option<u64>,
        #[serde(default)]
        member: Option<String>,
    },
    Diff {
        a: u64,
        b: u64,
    },
    Rollback {
        to: u64,
    },
    Confirm,
    Status,
    Audit {
        verify: bool,
        since: u64,
        limit: usize,
    },
    /// The members' events merged: those that arrived after `after`, of one member or all,
    /// from `since_ms` on, at most `limit`, in time order.
    Logs {
        after: u64,
        #[serde(default)]
        member: Option<String>,
        since_ms: u64,
        limit: usize,
        /// Only the events of this mail session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// An operator action carried out on one member's front-end.
    Action {
        member: String,
        action: Action,
    },
    /// A member's first message: the version it runs and its release.
    Hello {
        applied: u64,
        release: String,
    },
    /// A member's state: the version it runs, the result of the last one it tried, and its
    /// front-end's status (none when the front-end does not answer).
    Report {
        applied: u64,
        tried: u64,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        status: Option<StatusReport>,
    },
    /// A member's front-end's events, in order, from its run `boot`; `oldest` is the oldest
    /// sequence number the front-end still kept.
    Events {
        boot: String,
        oldest: u64,
        events: Vec<Event>,
    },
    /// The result of an action the manager asked for.
    Acted {
        id: u64,
        ok: bool,
        message: String,
    },
    /// A one-time link that logs the operator into the web interface.
    WebLogin,
    /// An operator's (or the web interface's) trace of a message: `id` is a session id, a
    /// Message-ID or a queue id. The answer is a [`super::mta_log::Trace`].
    Trace {
        id: String,
    },
    /// An agent asks where its MTA log lines resume: the answer is a
    /// [`super::mta_log::FileMark`].
    MtaMark,
    /// An agent's MTA log lines, in file order, of the file with this device and inode.
    MtaLines {
        dev: u64,
        ino: u64,
        lines: Vec<super::mta_log::MtaLine>,
    },
    /// A member's front-end's minutes of statistics, oldest first.
    Stats {
        minutes: Vec<crate::stats::Minute>,
    },
    /// The operator's question: the stored minutes after unix minute `since` (all when
    /// none) of one member (all when none).
    StatsOf {
        #[serde(default)]
        member: Option<String>,
        #[serde(default)]
        since: Option<u64>,
    },
    /// An operator's package upload, in order: base64 `data` at `offset` of a package of
    /// `total` bytes whose SHA-256 is `sha256` (see [`super::upgrade`]).
    PackageChunk {
        sha256: String,
        total: u64,
        offset: u64,
        data: String,
    },
    /// Roll the uploaded package `sha256` over the members, one at a time, each within
    /// `timeout_secs` of being sent it.
    Upgrade {
        sha256: String,
        timeout_secs: u64,
    },
    /// The rollout's state and the members' releases.
    UpgradeStatus,
    /// A member's progress with a package the manager sent it.
    Update {
        sha256: String,
        stage: UpdateStage,
        #[serde(default)]
        message: String,
    },
}

/// Where a member is with a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStage {
    /// `incoming.deb` and `incoming.json` are written: the installer's turn.
    Written,
    /// The installer says it installed it.
    Installed,
    /// Not installed: a bad transfer or hash, or the installer failed.
    Failed,
}

/// An operator action on a front-end: its virtual routers, or one of its back-ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Release {
        vrid: u8,
    },
    Resume {
        vrid: u8,
    },
    Drain {
        backend: String,
    },
    Undrain {
        backend: String,
    },
    /// The back-ends' mail queues per destination domain, as the front-end's agents say
    /// (one domain's, or all); the reply is the front-end's `queue` reply.
    Queue {
        #[serde(default)]
        domain: Option<String>,
    },
    /// Hand a domain pattern's queued mail over to a pool, or (`status_only`) report the
    /// move; the reply is the front-end's `queue move` reply. An empty `pool` with
    /// `status_only` is the pattern's `[[domain_queue]]` pool.
    QueueMove {
        domain: String,
        #[serde(default)]
        pool: String,
        #[serde(default)]
        status_only: bool,
    },
}

impl Action {
    /// The front-end's control request carrying it out.
    pub fn control_line(&self) -> String {
        match self {
            Action::Release { vrid } => format!("release {vrid}"),
            Action::Resume { vrid } => format!("resume {vrid}"),
            Action::Drain { backend } => format!("drain {backend}"),
            Action::Undrain { backend } => format!("undrain {backend}"),
            Action::Queue { domain: None } => "queue".to_owned(),
            Action::Queue {
                domain: Some(domain),
            } => format!("queue {domain}"),
            Action::QueueMove {
                domain,
                pool,
                status_only: true,
            } if pool.is_empty() => format!("queue moves {domain}"),
            Action::QueueMove {
                domain,
                pool,
                status_only,
            } => format!(
                "queue move {domain} {pool}{}",
                if *status_only { " status" } else { "" }
            ),
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.control_line())
    }
}

/// What the manager sends a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToMember {
    /// Apply this version: the member's own configuration text.
    Apply { version: u64, text: String },
    /// Ship the front-end's events after this point (the last one the manager stored).
    Resume { boot: String, seq: u64 },
    /// Carry out an action and answer with [`Request::Acted`] and this id.
    Act { id: u64, action: Action },
    /// Ship the front-end's minutes of statistics after this unix minute (the last one
    /// the manager stored; 0: none).
    ResumeStats { minute: u64 },
    /// A part of a package, in order (base64 `data` at `offset` of `total` bytes).
    PackageChunk {
        sha256: String,
        total: u64,
        offset: u64,
        data: String,
    },
    /// The package whose chunks came is whole: hand it to the installer.
    Install {
        version: String,
        sha256: String,
        rollback: bool,
    },
    /// The manager refuses the member (not in the configuration, a bad message); it
    /// closes the connection after this.
    Refused { error: String },
}

/// The manager's answer to an operator's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default)]
    pub value: serde_json::Value,
}

impl Reply {
    pub fn ok(value: impl Serialize) -> Reply {
        match serde_json::to_value(value) {
            Ok(value) => Reply {
                ok: true,
                error: String::new(),
                value,
            },
            Err(e) => Reply::error(format!("reply not encodable: {e}")),
        }
    }

    pub fn error(error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: error.into(),
            value: serde_json::Value::Null,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("message longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Reads one message; a line that is too long or not the expected JSON is an error (the
/// caller answers it and decides whether to go on).
pub async fn read<T, R>(r: &mut R) -> Result<T, WireError>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncBufRead + Unpin,
{
    match read_line(r, MAX_LINE).await? {
        Line::Complete(bytes) => Ok(serde_json::from_slice(&bytes)?),
        Line::TooLong => Err(WireError::TooLong),
        Line::Eof => Err(WireError::Closed),
    }
}

/// Writes one message and flushes it.
pub async fn write<T, W>(w: &mut W, message: &T) -> Result<(), WireError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let mut bytes = serde_json::to_vec(message)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_one_per_line() {
        let msgs = vec![
            Request::Commit {
                base: 3,
                text: "a\nb = \"c\"\n".into(),
                comment: "multi\nline".into(),
                confirm_secs: Some(60),
            },
            Request::Action {
                member: "fe1".into(),
                action: Action::Drain {
                    backend: "mx1".into(),
                },
            },
            Request::Confirm,
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            write(&mut buf, m).await.unwrap();
        }
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), msgs.len());
        let mut r = &buf[..];
        for m in &msgs {
            let got: Request = read(&mut r).await.unwrap();
            assert_eq!(&got, m);
        }
        assert!(matches!(
            read::<Request, _>(&mut r).await,
            Err(WireError::Closed)
        ));
    }

    #[tokio::test]
    async fn unknown_fields_and_ops_are_malformed() {
        for line in [
            "{\"op\":\"commit\",\"base\":1,\"text\":\"\",\"sneaky\":1}\n",
            "{\"op\":\"format_disk\"}\n",
            "not json\n",
            "{\"op\":\"action\",\"member\":\"fe1\",\"action\":{\"kind\":\"release\",\"vrid\":300}}\n",
        ] {
            let mut r = line.as_bytes();
            let got = read::<Request, _>(&mut r).await;
            assert!(
                matches!(got, Err(WireError::Malformed(_))),
                "{line}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_line_is_refused_without_holding_it() {
        let mut line = vec![b'x'; MAX_LINE + 10];
        line.push(b'\n');
        line.extend_from_slice(b"{\"op\":\"confirm\"}\n");
        let mut r = &line[..];
        assert!(matches!(
            read::<Request, _>(&mut r).await,
            Err(WireError::TooLong)
        ));
        let next: Request = read(&mut r).await.unwrap();
        assert_eq!(next, Request::Confirm, "the stream stays usable");
    }

    #[test]
    fn actions_become_control_requests() {
        assert_eq!(Action::Release { vrid: 51 }.control_line(), "release 51");
        assert_eq!(
            Action::Undrain {
                backend: "mx1".into()
            }
            .control_line(),
            "undrain mx1"
        );
        assert_eq!(Action::Queue { domain: None }.control_line(), "queue");
        let q: Action =
            serde_json::from_str(r#"{"kind":"queue","domain":"nowhere.example"}"#).unwrap();
        assert_eq!(q.control_line(), "queue nowhere.example");
        let all: Action = serde_json::from_str(r#"{"kind":"queue"}"#).unwrap();
        assert_eq!(all, Action::Queue { domain: None });
        let m: Action = serde_json::from_str(
            r#"{"kind":"queue_move","domain":".slow.example","pool":"slowq"}"#,
        )
        .unwrap();
        assert_eq!(m.control_line(), "queue move .slow.example slowq");
        let s: Action = serde_json::from_str(
            r#"{"kind":"queue_move","domain":"a.example","status_only":true}"#,
        )
        .unwrap();
        assert_eq!(s.control_line(), "queue moves a.example");
        let s = Action::QueueMove {
            domain: "a.example".into(),
            pool: "slowq".into(),
            status_only: true,
        };
        assert_eq!(s.control_line(), "queue move a.example slowq status");
    }
}
