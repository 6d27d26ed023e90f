//! Postfix's per-message commands for a move, all with `-c DIR` / `-C DIR` of the agent's
//! `--mta-config`:
//!
//! - list: `postqueue -j` (one JSON object per message; its `recipients` are the
//!   undelivered ones; `queue_name` `hold` is a held message);
//! - hold / release: `postsuper -h ID` / `postsuper -H ID`;
//! - content: `postcat -bh -q ID` (header and body only). Postfix 3.7 prints no marker
//!   lines with `-bh`; older or other builds print `*** MESSAGE CONTENTS <file> ***` before
//!   and `*** HEADER EXTRACTED <file> ***`, `*** MESSAGE FILE END <file> ***` after the
//!   message, so exactly those lines naming the message's own queue file are dropped, at
//!   the start and at the end only;
//! - remove: Postfix cannot drop one recipient of a queued message, so with recipients to
//!   keep the message is first re-injected for them (`sendmail -G -i -f SENDER -- KEPT..`,
//!   the content on standard input; a new queue id), then the original deleted
//!   (`postsuper -d ID`).

use std::{process::Stdio, time::Duration};

use tokio::{io::AsyncWriteExt as _, process::Command};

use super::queued::{MtaError, Queued, Recipient};
use crate::agent::{
    Options,
    queue::{QueueError, run},
};

/// Time for `sendmail` to take a re-injected message.
const SENDMAIL_TIMEOUT: Duration = Duration::from_secs(60);

fn command(o: &Options, program: &str) -> Command {
    let mut cmd = Command::new(program);
    if let Some(dir) = &o.mta_config {
        // sendmail names the configuration directory -C, the others -c.
        cmd.arg(if program == "sendmail" { "-C" } else { "-c" })
            .arg(dir);
    }
    cmd
}

pub async fn list(o: &Options) -> Result<Vec<Queued>, MtaError> {
    let mut cmd = command(o, "postqueue");
    cmd.arg("-j");
    let (text, _) = run(&mut cmd).await?;
    Ok(parse_list(&text))
}

/// `postqueue -j`'s messages; lines that are not one are skipped.
pub fn parse_list(text: &str) -> Vec<Queued> {
    #[derive(serde::Deserialize)]
    struct Message {
        #[serde(default)]
        queue_name: String,
        queue_id: String,
        #[serde(default)]
        sender: String,
        #[serde(default)]
        recipients: Vec<Rcpt>,
    }
    #[derive(serde::Deserialize)]
    struct Rcpt {
        address: String,
    }
    text.lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Message>(l).ok())
        .map(|m| Queued {
            held: m.queue_name == "hold",
            id: m.queue_id,
            sender: m.sender,
            recipients: m
                .recipients
                .into_iter()
                .map(|r| Recipient {
                    handle: r.address.clone(),
                    address: r.address,
                })
                .collect(),
        })
        .collect()
}

/// A queue id as Postfix writes them (short hex or long base-52 ids): anything else is
/// never passed to a command.
fn checked_id(m: &Queued) -> Result<&str, MtaError> {
    if !m.id.is_empty() && m.id.len() <= 32 && m.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(&m.id)
    } else {
        Err(MtaError::Garbage {
            command: "postqueue -j".into(),
            detail: format!("queue id {:?}", m.id),
        })
    }
}

/// Runs `postsuper FLAG ID`. An id no longer queued is no failure for postsuper; the
/// next listing no longer has it.
async fn postsuper(o: &Options, flag: &str, m: &Queued) -> Result<(), MtaError> {
    let id = checked_id(m)?;
    let mut cmd = command(o, "postsuper");
    cmd.arg(flag).arg(id);
    run(&mut cmd).await?;
    Ok(())
}

pub async fn hold(o: &Options, m: &Queued) -> Result<(), MtaError> {
    postsuper(o, "-h", m).await
}

pub async fn release(o: &Options, m: &Queued) -> Result<(), MtaError> {
    postsuper(o, "-H", m).await
}

pub async fn content(o: &Options, m: &Queued) -> Result<Vec<u8>, MtaError> {
    let id = checked_id(m)?;
    let mut cmd = command(o, "postcat");
    cmd.args(["-bh", "-q"]).arg(id);
    let (text, cut) = match run(&mut cmd).await {
        Ok(t) => t,
        Err(QueueError::Failed { stderr, .. }) if stderr.contains("No such file") => {
            return Err(MtaError::Gone(m.id.clone()));
        }
        Err(e) => return Err(e.into()),
    };
    if cut {
        return Err(MtaError::Garbage {
            command: format!("postcat -bh -q {id}"),
            detail: "longer than the agent reads".into(),
        });
    }
    Ok(strip_markers(&text, id).into_bytes())
}

/// `postcat`'s output without its marker lines for queue file `id` (see the module
/// docs); nothing else is touched.
pub fn strip_markers(text: &str, id: &str) -> String {
    let is_marker = |line: &str, kinds: &[&str]| {
        line.strip_prefix("*** ")
            .and_then(|l| l.strip_suffix(" ***"))
            .is_some_and(|l| {
                kinds.iter().any(|k| {
                    l.strip_prefix(k)
                        .and_then(|p| p.strip_prefix(' '))
                        .is_some_and(|path| path == id || path.ends_with(&format!("/{id}")))
                })
            })
    };
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    while lines
        .first()
        .is_some_and(|l| is_marker(l.trim_end(), &["ENVELOPE RECORDS", "MESSAGE CONTENTS"]))
    {
        lines.remove(0);
    }
    while lines
        .last()
        .is_some_and(|l| is_marker(l.trim_end(), &["HEADER EXTRACTED", "MESSAGE FILE END"]))
    {
        lines.pop();
    }
    lines.concat()
}

pub async fn remove(
    o: &Options,
    m: &Queued,
    moved: &[Recipient],
    kept: &[Recipient],
) -> Result<(), MtaError> {
    // Everything not kept goes with the message: `moved` needs no command of its own.
    let _ = moved;
    checked_id(m)?;
    if !kept.is_empty() {
        let body = content(o, m).await?;
        reinject(o, &m.sender, kept, &body).await?;
    }
    postsuper(o, "-d", m).await
}

/// `sendmail -G -i -f SENDER -- KEPT..` with `body` on standard input, bounded in time.
async fn reinject(
    o: &Options,
    sender: &str,
    kept: &[Recipient],
    body: &[u8],
) -> Result<(), MtaError> {
    let mut cmd = command(o, "sendmail");
    let sender = if sender.is_empty() { "<>" } else { sender };
    cmd.args(["-G", "-i", "-f", sender, "--"])
        .args(kept.iter().map(|r| r.address.as_str()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let command = format!("{:?}", cmd.as_std());
    let failed = |stderr: String| {
        MtaError::Command(QueueError::Failed {
            command: command.clone(),
            stderr,
        })
    };
    let mut child = cmd.spawn().map_err(|source| {
        MtaError::Command(QueueError::Spawn {
            command: command.clone(),
            source,
        })
    })?;
    let work = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(body)
                .await
                .map_err(|e| failed(e.to_string()))?;
            // Closing standard input ends the message.
            drop(stdin);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(failed(err.chars().take(4096).collect::<String>()))
        }
    };
    tokio::time::timeout(SENDMAIL_TIMEOUT, work)
        .await
        .map_err(|_| MtaError::Command(QueueError::Timeout { command }))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_messages_with_held_ones() {
        let text = include_str!("../fixtures/postqueue-j.txt");
        let l = parse_list(text);
        assert!(!l.is_empty());
        assert_eq!(l[0].id, "E9D03CF6244");
        assert_eq!(l[0].sender, "alice@example.test");
        assert!(!l[0].held);
        assert_eq!(l[1].recipients.len(), 2);
        assert_eq!(l[1].recipients[1].address, "c@other.invalid");
        let held = parse_list(
            r#"{"queue_name": "hold", "queue_id": "4F1A2", "sender": "", "recipients": [{"address": "x@slow.example"}]}
not json
{"queue_name": "active", "queue_id": "4F1A3", "sender": "s@e.test", "recipients": []}"#,
        );
        assert_eq!(held.len(), 2);
        assert!(held[0].held && !held[1].held);
        assert_eq!(held[0].sender, "");
    }

    #[test]
    fn strips_exactly_postcats_own_markers() {
        let id = "4F1A2B3C";
        let with = format!(
            "*** MESSAGE CONTENTS deferred/4/{id} ***\nSubject: a\n\n*** MESSAGE FILE END x ***\nbody\n\
             *** HEADER EXTRACTED deferred/4/{id} ***\n*** MESSAGE FILE END deferred/4/{id} ***\n"
        );
        assert_eq!(
            strip_markers(&with, id),
            "Subject: a\n\n*** MESSAGE FILE END x ***\nbody\n"
        );
        // Postfix 3.7's -bh output has none: nothing is removed, not even a body's last
        // line that looks like a marker of another file.
        let without = "Subject: a\n\nbody\n*** MESSAGE FILE END deferred/4/OTHER ***\n";
        assert_eq!(strip_markers(without, id), without);
    }

    #[test]
    fn refuses_ids_that_are_not_postfixs() {
        let m = |id: &str| Queued {
            id: id.into(),
            sender: String::new(),
            recipients: vec![],
            held: false,
        };
        assert!(checked_id(&m("4F1A2B3C")).is_ok());
        assert!(checked_id(&m("-d ALL")).is_err());
        assert!(checked_id(&m("")).is_err());
    }
}
