//! OpenSMTPD's per-message commands for a move, all through `smtpctl`. OpenSMTPD keeps one
//! envelope per recipient (a 16-hex-digit id whose first 8 digits are the message's), and
//! acts on envelopes one by one:
//!
//! - list: `smtpctl show queue`, read by [`parse_list`] and grouped by message;
//! - hold and release: `pause envelope ID` and `resume envelope ID` for the moving
//!   recipients only (the others are delivered meanwhile);
//! - content: `show message ID` of any envelope: the message file as stored (the
//!   `Received` header OpenSMTPD added, then what the client sent, as in
//!   `fixtures/smtpctl-show-message.txt`), which is what it would deliver; that file
//!   outlives the message's last envelope for a while, so a message no longer listed is
//!   gone whatever the file says;
//! - remove: `remove ID` for each moved envelope; when none stays, OpenSMTPD drops the
//!   message file itself.
//!
//! `pause`, `resume` and `remove` answer `N envelope paused` (resumed, removed): 0 when the
//! envelope is not queued, and also when it is paused (resumed) already. A 0 is told apart
//! by looking for the envelope in the queue.

use std::collections::BTreeMap;

use tokio::process::Command;

use super::{
    exim::{MAX_CONTENT, execute},
    queued::{MtaError, Queued, Recipient},
};
use crate::agent::{
    Options,
    queue::{MAX_MESSAGES, MAX_OUTPUT, QueueError, run},
};

fn smtpctl(args: &[&str]) -> Command {
    let mut cmd = Command::new("smtpctl");
    cmd.args(args);
    cmd
}

/// `smtpctl show queue` as text, with whether it was cut at the bound.
async fn show_queue() -> Result<(String, bool), MtaError> {
    Ok(run(&mut smtpctl(&["show", "queue"])).await?)
}

pub async fn list(o: &Options) -> Result<Vec<Queued>, MtaError> {
    let _ = o;
    let (text, cut) = show_queue().await?;
    let messages = parse_list(&text).map_err(|detail| MtaError::Garbage {
        command: "smtpctl show queue".into(),
        detail,
    })?;
    if cut {
        // Envelopes are listed in no particular order: past the bound, any message may
        // miss some of its recipients, and a move must see all of them.
        return Err(MtaError::Garbage {
            command: "smtpctl show queue".into(),
            detail: format!("more than {MAX_OUTPUT} octets"),
        });
    }
    Ok(messages)
}

/// Pauses the envelopes of `moving`. [`MtaError::Gone`] when one of them is no longer
/// queued (delivered meanwhile): the move must look at the message again.
pub async fn hold(o: &Options, moving: &[Recipient]) -> Result<(), MtaError> {
    let _ = o;
    for r in moving {
        per_envelope(&["pause", "envelope"], "paused", r).await?;
    }
    Ok(())
}

pub async fn release(o: &Options, moving: &[Recipient]) -> Result<(), MtaError> {
    let _ = o;
    for r in moving {
        per_envelope(&["resume", "envelope"], "resumed", r).await?;
    }
    Ok(())
}

pub async fn content(o: &Options, m: &Queued) -> Result<Vec<u8>, MtaError> {
    let _ = o;
    let Some(r) = m.recipients.first() else {
        return Err(MtaError::Gone(m.id.clone()));
    };
    let mut cmd = smtpctl(&["show", "message", &r.handle]);
    let ran = execute(&mut cmd, MAX_CONTENT).await?;
    ran.ok_or_said(&m.id, &[])?;
    if ran.out.is_empty() {
        return Err(MtaError::Garbage {
            command: ran.command,
            detail: "no message".into(),
        });
    }
    // The message file outlives its last envelope for a while: the content counts only
    // while an envelope of the message is still queued.
    if !queued(|evpid| evpid.starts_with(m.id.as_str())).await? {
        return Err(MtaError::Gone(m.id.clone()));
    }
    Ok(ran.out)
}

/// Whether `smtpctl show queue` lists an envelope whose id `pick`s.
async fn queued(pick: impl Fn(&str) -> bool) -> Result<bool, MtaError> {
    let (text, cut) = show_queue().await?;
    let found = text
        .lines()
        .filter_map(|l| l.split('|').next())
        .any(|evpid| evpid.len() == 16 && pick(evpid));
    if cut && !found {
        // Perhaps past the bound: not knowing is not "gone".
        return Err(MtaError::Garbage {
            command: "smtpctl show queue".into(),
            detail: format!("more than {MAX_OUTPUT} octets"),
        });
    }
    Ok(found)
}

pub async fn remove(
    o: &Options,
    m: &Queued,
    moved: &[Recipient],
    kept: &[Recipient],
) -> Result<(), MtaError> {
    // The kept envelopes are not touched: OpenSMTPD goes on delivering them.
    let _ = (o, m, kept);
    for r in moved {
        per_envelope(&["remove"], "removed", r).await?;
    }
    Ok(())
}

/// `smtpctl <words> <envelope id>`, which answers `N envelope <done>`.
async fn per_envelope(words: &[&str], done: &str, r: &Recipient) -> Result<(), MtaError> {
    let id = message_id(&r.handle).ok_or_else(|| MtaError::Garbage {
        command: "smtpctl".into(),
        detail: format!("not an envelope id: {:?}", r.handle),
    })?;
    let mut args = words.to_vec();
    args.push(&r.handle);
    let mut cmd = smtpctl(&args);
    let ran = execute(&mut cmd, MAX_OUTPUT).await?;
    if !ran.success {
        return Err(MtaError::Command(QueueError::Failed {
            command: ran.command,
            stderr: ran.said,
        }));
    }
    match count(&ran.said, done) {
        Some(0) => {
            // Paused (resumed) before, or not queued any more: the queue says which.
            if done != "removed" && queued(|evpid| evpid == r.handle).await? {
                Ok(())
            } else {
                Err(MtaError::Gone(id.to_owned()))
            }
        }
        Some(_) => Ok(()),
        None => Err(MtaError::Garbage {
            command: ran.command,
            detail: ran.said,
        }),
    }
}

/// `N envelope <done>` (or `envelopes`) -> N.
fn count(said: &str, done: &str) -> Option<u64> {
    let mut words = said.split_ascii_whitespace();
    let n = words.next()?.parse().ok()?;
    let noun = words.next()?;
    (matches!(noun, "envelope" | "envelopes") && words.next() == Some(done)).then_some(n)
}

/// The message id of an envelope id: its first 8 of 16 hex digits.
fn message_id(evpid: &str) -> Option<&str> {
    (evpid.len() == 16 && evpid.bytes().all(|b| b.is_ascii_hexdigit())).then(|| &evpid[..8])
}

/// `smtpctl show queue`: one envelope per line, `|`-separated: id, origin, type, flags,
/// sender, recipient, destination, creation, expiry, last try, retries, run state (two
/// fields) and the last error (which may itself hold `|`). Grouped by message in the
/// order first seen; a message is held when one of its envelopes is (flags `suspend` or
/// `hold`). Bounce envelopes are left out: their stored message is the one that bounced,
/// not the report OpenSMTPD writes when delivering them, so they cannot be moved. At most
/// [`MAX_MESSAGES`] messages. `Err`: a line that is not an envelope.
pub fn parse_list(text: &str) -> Result<Vec<Queued>, String> {
    let mut order: Vec<String> = Vec::new();
    let mut messages: BTreeMap<String, Queued> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || {
            let line: String = line.chars().take(120).collect();
            format!("line {}: {line:?}", n + 1)
        };
        let f: Vec<&str> = line.splitn(14, '|').collect();
        if f.len() < 14 || f[7].parse::<i64>().is_err() {
            return Err(bad());
        }
        let id = message_id(f[0]).ok_or_else(bad)?;
        if f[2] == "bounce" || f[3].split(',').any(|flag| flag == "bounce") {
            continue;
        }
        if f[6].is_empty() {
            return Err(bad());
        }
        let held = f[3]
            .split(',')
            .any(|flag| flag == "suspend" || flag == "hold");
        if !messages.contains_key(id) {
            if messages.len() >= MAX_MESSAGES {
                continue;
            }
            order.push(id.to_owned());
        }
        let m = messages.entry(id.to_owned()).or_insert_with(|| Queued {
            id: id.to_owned(),
            sender: f[4].to_owned(),
            recipients: Vec::new(),
            held: false,
        });
        m.held |= held;
        m.recipients.push(Recipient {
            address: f[6].to_owned(),
            handle: f[0].to_owned(),
        });
    }
    Ok(order.iter().filter_map(|id| messages.remove(id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(address: &str, handle: &str) -> Recipient {
        Recipient {
            address: address.into(),
            handle: handle.into(),
        }
    }

    /// Captured from OpenSMTPD 6.8.0p2 (`smtpctl show queue`, the lab's build): a message
    /// to a relayed recipient (its envelope paused) and a local one (local deliveries
    /// paused), and a message to another relayed recipient.
    #[test]
    fn listing_with_a_paused_envelope() {
        let got = parse_list(include_str!("../fixtures/smtpctl-show-queue-move.txt")).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0].id.as_str(), got[0].sender.as_str(), got[0].held),
            ("2b2d1b28", "alice@example.test", true)
        );
        assert_eq!(
            got[0].recipients,
            vec![
                rcpt("x@slow.example", "2b2d1b28204ecb9b"),
                rcpt("alice@example.test", "2b2d1b289aeeb8e2"),
            ]
        );
        assert_eq!((got[1].id.as_str(), got[1].held), ("9e57c793", false));
        assert_eq!(
            got[1].recipients,
            vec![rcpt("y@slow.example", "9e57c7937c15f2cb")]
        );
        // The status listing's fixture reads the same way.
        let got = parse_list(include_str!("../fixtures/smtpctl-show-queue.txt")).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|m| !m.held && m.recipients.len() == 1));
    }

    #[test]
    fn bounces_errors_with_bars_and_garbage() {
        let text = "\
0000000100000001|inet4|mta|hold|s@x.example|a@x.example|A@x.example|100|200|0|1|pending|10|421 a|b\n\
0000000200000001|local|bounce||||s@x.example|150|250|0|0|inflight|1|\n\
0000000100000002|inet4|mta||s@x.example|b@y.example|b@y.example|100|200|0|1|pending|10|\n";
        let got = parse_list(text).unwrap();
        assert_eq!(got.len(), 1, "the bounce is left out: {got:?}");
        assert!(got[0].held);
        assert_eq!(
            got[0].recipients,
            vec![
                rcpt("A@x.example", "0000000100000001"),
                rcpt("b@y.example", "0000000100000002")
            ]
        );
        for bad in [
            "smtpctl: connect: /run/smtpd.sock: No such file or directory\n",
            "00000001|inet4|mta||s@x|a@x|a@x|100|200|0|1|pending|10|\n",
            "0000000100000001|inet4|mta||s@x|a@x|a@x|soon|200|0|1|pending|10|\n",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
        assert!(parse_list("").unwrap().is_empty());
    }

    #[test]
    fn smtpctl_counts() {
        assert_eq!(count("1 envelope paused", "paused"), Some(1));
        assert_eq!(count("0 envelope removed", "removed"), Some(0));
        assert_eq!(count("2 envelopes resumed", "resumed"), Some(2));
        assert_eq!(count("command failed", "paused"), None);
        assert_eq!(count("1 envelope resumed", "paused"), None);
        assert_eq!(message_id("2b2d1b28204ecb9b"), Some("2b2d1b28"));
        assert_eq!(message_id("2b2d1b28"), None);
        assert_eq!(message_id("2b2d1b28204ecb9g"), None);
    }
}
