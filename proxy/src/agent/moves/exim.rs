//! Exim's per-message commands for a move, all through the `exim` binary (with `-C` when
//! the agent was given a configuration file):
//!
//! - list: `exim -bp`, read by [`parse_list`];
//! - hold and release: `-Mf` (freeze) and `-Mt` (thaw);
//! - content: `-Mvc`, the message as Exim would deliver it (RFC 5322: the `-H` spool
//!   file's headers without their sizes and flags, headers Exim marked deleted left out,
//!   and the `-D` file's body without its id line, as in `fixtures/exim-Mvc.txt`);
//! - remove: `-Mmd ID ADDR...` (the moved recipients marked delivered) then `-Mt`, or
//!   `-Mrm ID` when no recipient stays.
//!
//! Exim says why a per-message command failed on its standard output, so [`execute`]
//! keeps both streams; it is shared with the OpenSMTPD commands.

use std::{process::Stdio, time::Duration};

use tokio::{io::AsyncReadExt as _, process::Command};

use super::queued::{MtaError, Queued, Recipient};
use crate::agent::{
    Options,
    queue::{COMMAND_TIMEOUT, MAX_MESSAGES, MAX_OUTPUT, QueueError, run},
};

/// Largest message content read: a message the MTA accepted fits (Exim's default
/// `message_size_limit` is 50 MB), and a content cut short must never be moved.
pub const MAX_CONTENT: u64 = 64 << 20;
/// How much of a failed command's own words is kept for its error.
const MAX_SAID: usize = 4096;

fn exim(o: &Options) -> Command {
    let mut cmd = Command::new("exim");
    if let Some(c) = &o.mta_config {
        cmd.arg("-C").arg(c);
    }
    cmd
}

pub async fn list(o: &Options) -> Result<Vec<Queued>, MtaError> {
    let mut cmd = exim(o);
    cmd.arg("-bp");
    let (text, cut) = run(&mut cmd).await?;
    let mut messages = parse_list(&text).map_err(|detail| MtaError::Garbage {
        command: "exim -bp".into(),
        detail,
    })?;
    if cut {
        // The last message's recipients may be cut off: a move must see all of them.
        messages.pop();
    }
    Ok(messages)
}

pub async fn hold(o: &Options, m: &Queued) -> Result<(), MtaError> {
    let ran = per_message(o, "-Mf", m, &[]).await?;
    // Frozen before (by the operator, or by a move that was interrupted): held all the same.
    ran.ok_or_said(&m.id, &["is already frozen"])
}

pub async fn release(o: &Options, m: &Queued) -> Result<(), MtaError> {
    thaw(o, m).await
}

async fn thaw(o: &Options, m: &Queued) -> Result<(), MtaError> {
    let ran = per_message(o, "-Mt", m, &[]).await?;
    ran.ok_or_said(&m.id, &["is not frozen"])
}

pub async fn content(o: &Options, m: &Queued) -> Result<Vec<u8>, MtaError> {
    let mut cmd = exim(o);
    cmd.arg("-Mvc").arg(&m.id);
    let ran = execute(&mut cmd, MAX_CONTENT).await?;
    ran.ok_or_said(&m.id, &[])?;
    if ran.out.is_empty() {
        return Err(MtaError::Garbage {
            command: ran.command,
            detail: "no message".into(),
        });
    }
    Ok(ran.out)
}

pub async fn remove(
    o: &Options,
    m: &Queued,
    moved: &[Recipient],
    kept: &[Recipient],
) -> Result<(), MtaError> {
    if kept.is_empty() {
        let ran = per_message(o, "-Mrm", m, &[]).await?;
        return ran.ok_or_said(&m.id, &[]);
    }
    if !moved.is_empty() {
        // All at once: Exim updates the message for every address or for none.
        let addresses: Vec<&str> = moved.iter().map(|r| r.handle.as_str()).collect();
        let ran = per_message(o, "-Mmd", m, &addresses).await?;
        ran.ok_or_said(&m.id, &[])?;
    }
    // The kept recipients are delivered by the next queue run.
    thaw(o, m).await
}

async fn per_message(o: &Options, flag: &str, m: &Queued, args: &[&str]) -> Result<Ran, MtaError> {
    let mut cmd = exim(o);
    cmd.arg(flag).arg(&m.id).args(args);
    execute(&mut cmd, MAX_OUTPUT).await
}

/// `exim -bp`: per message a line with age, size, id, `<sender>` and perhaps
/// `*** frozen ***`, then its recipients indented, `D ` (or `+D `) before the delivered
/// ones, and a blank line. Messages without an undelivered recipient are left out; at most
/// [`MAX_MESSAGES`] are listed. `Err`: a line that is none of these.
pub fn parse_list(text: &str) -> Result<Vec<Queued>, String> {
    let mut out: Vec<Queued> = Vec::new();
    let mut current: Option<Queued> = None;
    let flush = |current: &mut Option<Queued>, out: &mut Vec<Queued>| {
        if let Some(m) = current.take()
            && !m.recipients.is_empty()
            && out.len() < MAX_MESSAGES
        {
            out.push(m);
        }
    };
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        if words.is_empty() {
            flush(&mut current, &mut out);
            continue;
        }
        if !line.starts_with(' ') || words.len() >= 4 && words[3].starts_with('<') {
            flush(&mut current, &mut out);
            current = Some(header(&words).ok_or_else(|| bad(n, line))?);
            continue;
        }
        let Some(m) = current.as_mut() else {
            return Err(bad(n, line));
        };
        match words.as_slice() {
            ["D" | "+D", _] => {}
            [address] => m.recipients.push(Recipient {
                address: (*address).to_owned(),
                handle: (*address).to_owned(),
            }),
            _ => return Err(bad(n, line)),
        }
    }
    flush(&mut current, &mut out);
    Ok(out)
}

/// A message's first line: `age size id <sender> [*** frozen ***]`.
fn header(words: &[&str]) -> Option<Queued> {
    let [age, _size, id, sender, rest @ ..] = words else {
        return None;
    };
    let age_ok = age.len() >= 2 && age[..age.len() - 1].bytes().all(|b| b.is_ascii_digit());
    let id_ok = id.len() >= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let sender = sender.strip_prefix('<')?.strip_suffix('>')?;
    let held = match rest {
        [] => false,
        ["***", "frozen", "***"] => true,
        _ => return None,
    };
    (age_ok && id_ok).then(|| Queued {
        id: (*id).to_owned(),
        sender: sender.to_owned(),
        recipients: Vec::new(),
        held,
    })
}

fn bad(n: usize, line: &str) -> String {
    let line: String = line.chars().take(120).collect();
    format!("line {}: {line:?}", n + 1)
}

/// What a command printed and whether it succeeded.
#[derive(Debug)]
pub(super) struct Ran {
    pub command: String,
    pub success: bool,
    pub out: Vec<u8>,
    /// The start of stdout and stderr, trimmed: where Exim and smtpctl say what went wrong.
    pub said: String,
}

impl Ran {
    /// `Ok` when the command succeeded or said one of `fine`; [`MtaError::Gone`] when it
    /// said the message (or envelope) is not in the queue; the command's error otherwise.
    pub fn ok_or_said(&self, id: &str, fine: &[&str]) -> Result<(), MtaError> {
        if self.success || fine.iter().any(|f| self.said.contains(f)) {
            return Ok(());
        }
        if gone(&self.said) {
            return Err(MtaError::Gone(id.to_owned()));
        }
        Err(MtaError::Command(QueueError::Failed {
            command: self.command.clone(),
            stderr: self.said.clone(),
        }))
    }
}

/// Words with which Exim and smtpctl say that a message is not (or no longer) queued.
fn gone(said: &str) -> bool {
    [
        // Exim: -Mf, -Mt, -Mvc, -Mmd
        "does not exist",
        // Exim: -Mrm
        "has been removed or did not exist",
        // smtpctl show message: the spool file
        "No such file or directory",
    ]
    .iter()
    .any(|w| said.contains(w))
}

/// Runs `cmd` to its end, its standard output read up to `limit` octets (more is
/// [`MtaError::Garbage`]: the command is killed) within [`COMMAND_TIMEOUT`]; a command that
/// ran and failed is not an error here, its [`Ran`] says what it said.
pub(super) async fn execute(cmd: &mut Command, limit: u64) -> Result<Ran, MtaError> {
    execute_within(cmd, limit, COMMAND_TIMEOUT).await
}

async fn execute_within(cmd: &mut Command, limit: u64, within: Duration) -> Result<Ran, MtaError> {
    let command = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn = |source| {
        MtaError::Command(QueueError::Spawn {
            command: command.clone(),
            source,
        })
    };
    let mut child = cmd.spawn().map_err(spawn)?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(MtaError::Command(QueueError::Failed {
            command,
            stderr: "no pipes".into(),
        }));
    };
    let work = async {
        let mut out = Vec::new();
        let mut stdout = stdout.take(limit + 1);
        // Stderr is drained alongside so that neither pipe blocks the command; only its
        // start is kept.
        let drain_err = async {
            let (mut err, mut chunk) = (Vec::new(), [0u8; 4096]);
            while let Ok(n) = stderr.read(&mut chunk).await
                && n > 0
            {
                let room = MAX_SAID.saturating_sub(err.len()).min(n);
                err.extend_from_slice(&chunk[..room]);
            }
            err
        };
        let (read, err) = tokio::join!(stdout.read_to_end(&mut out), drain_err);
        read.map_err(spawn)?;
        if out.len() as u64 > limit {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(MtaError::Garbage {
                command: command.clone(),
                detail: format!("more than {limit} octets"),
            });
        }
        let status = child.wait().await.map_err(spawn)?;
        let head = &out[..out.len().min(MAX_SAID)];
        let said = format!(
            "{}\n{}",
            String::from_utf8_lossy(head).trim(),
            String::from_utf8_lossy(&err).trim()
        )
        .trim()
        .to_owned();
        Ok(Ran {
            command: command.clone(),
            success: status.success(),
            out,
            said,
        })
    };
    tokio::time::timeout(within, work).await.map_err(|_| {
        MtaError::Command(QueueError::Timeout {
            command: command.clone(),
        })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(a: &str) -> Recipient {
        Recipient {
            address: a.into(),
            handle: a.into(),
        }
    }

    /// Captured from Exim 4.96 (`exim -bp`, the lab's build): a frozen message for a relayed and a
    /// local recipient, and a deferred one whose local recipient was delivered.
    #[test]
    fn listing_with_a_frozen_message_and_a_delivered_recipient() {
        let got = parse_list(include_str!("../fixtures/exim-bp-move.txt")).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].held, "{got:?}");
        assert_eq!(got[0].sender, "alice@example.test");
        assert_eq!(
            got[0].recipients,
            vec![rcpt("x@slow.example"), rcpt("alice@example.test")]
        );
        assert!(!got[1].held);
        assert_eq!(got[1].recipients, vec![rcpt("y@slow.example")]);
        assert!(got.iter().all(|m| m.id.len() == 16 && m.id.contains('-')));
    }

    #[test]
    fn bounces_hours_and_messages_all_delivered() {
        let text = " 3h  1.2K 1xXxcz-0004Cy-1V <> *** frozen ***\n          x@One.Example\n\n\
                    2d   481 1xXxcz-0004Dc-2l <a@b.example>\n        D y@one.example\n       +D z@two.example\n\n";
        let got = parse_list(text).unwrap();
        assert_eq!(got.len(), 1, "the delivered message is left out: {got:?}");
        assert_eq!(
            (got[0].id.as_str(), got[0].sender.as_str(), got[0].held),
            ("1xXxcz-0004Cy-1V", "", true)
        );
        assert_eq!(got[0].recipients, vec![rcpt("x@One.Example")]);
        assert!(parse_list("").unwrap().is_empty());
    }

    #[test]
    fn other_output_is_garbage() {
        for text in [
            "exim: permission denied\n",
            " 0m   334 1xXzad-0006z3-0q <a@b.example> *** thawed ***\n          x@y\n",
            "          x@y.example\n",
            " 0m   334 1xXzad-0006z3-0q <a@b.example>\n          x@y two words\n",
        ] {
            assert!(parse_list(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn at_most_max_messages_are_listed() {
        let one = " 0m   334 1xXzad-0006z3-0q <a@b.example>\n          x@y.example\n\n";
        let got = parse_list(&one.repeat(MAX_MESSAGES + 2)).unwrap();
        assert_eq!(got.len(), MAX_MESSAGES);
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn ran(success: bool, said: &str) -> Ran {
        Ran {
            command: "exim".into(),
            success,
            out: Vec::new(),
            said: said.into(),
        }
    }

    /// What Exim 4.96 prints (on stdout) when a message is not queued, when it is frozen
    /// already, and when it refuses.
    #[test]
    fn exims_words_are_told_apart() {
        let id = "1xXzad-0006z3-9q";
        assert!(matches!(
            ran(false, "Spool data file for 1xXzad-0006z3-9q does not exist").ok_or_said(id, &[]),
            Err(MtaError::Gone(g)) if g == id
        ));
        assert!(matches!(
            ran(
                false,
                "Message 1xXzad-0006z3-9q has been removed or did not exist"
            )
            .ok_or_said(id, &[]),
            Err(MtaError::Gone(_))
        ));
        assert!(
            ran(false, "Message 1xXzad-0006z3-0q is already frozen")
                .ok_or_said(id, &["is already frozen"])
                .is_ok()
        );
        let e = ran(
            false,
            "Message 1x - error while marking as delivered:\n  X@Y is not a recipient: message not updated",
        )
        .ok_or_said(id, &[])
        .unwrap_err();
        assert!(
            matches!(&e, MtaError::Command(QueueError::Failed { stderr, .. }) if stderr.contains("not a recipient")),
            "{e}"
        );
    }

    /// Both streams are kept for the error, the output is bounded, and so is the time.
    #[tokio::test]
    async fn commands_are_bounded() {
        let r = execute(&mut sh("echo out; echo err >&2; exit 1"), 100)
            .await
            .unwrap();
        assert_eq!((r.success, r.said.as_str()), (false, "out\nerr"));
        let r = execute(&mut sh("printf 'a\\0b'"), 3).await.unwrap();
        assert_eq!((r.success, r.out.as_slice()), (true, &b"a\0b"[..]));
        let e = execute(&mut sh("printf abcd"), 3).await.unwrap_err();
        assert!(matches!(e, MtaError::Garbage { .. }), "{e}");
        let e = execute_within(&mut sh("sleep 30"), 3, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            matches!(e, MtaError::Command(QueueError::Timeout { .. })),
            "{e}"
        );
    }
}
