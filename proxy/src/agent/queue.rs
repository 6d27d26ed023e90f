//! The mail queue per destination domain, for the front-ends' `queue` command: asked of
//! the MTA its own way and read by pure parsers.
//!
//! - Postfix: `postqueue -j`, one JSON object per message; its `recipients` are the
//!   undelivered ones, each with its `delay_reason` once deferred.
//! - Exim: `exim -bp`; the listing says neither whether a message was deferred nor why
//!   (that is in each message's log, a file per message), so for Exim `deferred` is
//!   unknown and the reason empty.
//! - OpenSMTPD: `smtpctl show queue`, one line per envelope (one recipient): id, origin,
//!   type, flags, sender, recipient, destination, creation, expiry, last try, retries, run
//!   state and the last error.
//!
//! Bounded: the command's output is read up to [`MAX_OUTPUT`] octets within
//! [`COMMAND_TIMEOUT`], at most [`MAX_MESSAGES`] messages are counted and at most
//! [`MAX_DOMAINS`] domains reported (those with the most deferred mail first); past a
//! bound the report says `truncated`.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use tokio::{io::AsyncReadExt as _, process::Command};

use super::{Mta, Options};
use crate::agent_wire::{DomainQueue, QueueReport};

pub const MAX_MESSAGES: usize = 100_000;
pub const MAX_DOMAINS: usize = 5_000;
/// Enough for [`MAX_MESSAGES`] messages of Postfix's JSON with a few recipients each.
pub const MAX_OUTPUT: u64 = 64 << 20;
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest reason kept, in characters.
pub const MAX_REASON: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command}: no answer within {}s", COMMAND_TIMEOUT.as_secs())]
    Timeout { command: String },
    #[error("{command}: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("the spool agent knows no destinations; use --mta postfix, exim or opensmtpd")]
    Spool,
}

/// The queue per domain of the MTA `o` names.
pub async fn report(o: &Options) -> Result<QueueReport, QueueError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (mta, mut cmd) = match o.mta {
        Mta::Postfix => {
            let mut cmd = Command::new("postqueue");
            if let Some(dir) = &o.mta_config {
                cmd.arg("-c").arg(dir);
            }
            cmd.arg("-j");
            ("postfix", cmd)
        }
        Mta::Exim => {
            let mut cmd = Command::new("exim");
            if let Some(c) = &o.mta_config {
                cmd.arg("-C").arg(c);
            }
            cmd.arg("-bp");
            ("exim", cmd)
        }
        Mta::Opensmtpd => {
            let mut cmd = Command::new("smtpctl");
            cmd.args(["show", "queue"]);
            ("opensmtpd", cmd)
        }
        Mta::Spool => return Err(QueueError::Spool),
    };
    let (text, cut) = run(&mut cmd).await?;
    let parsed = match o.mta {
        Mta::Postfix => postfix(&text, now),
        Mta::Exim => exim(&text),
        _ => opensmtpd(&text, now),
    };
    let mut r = parsed.into_report(mta);
    r.truncated |= cut;
    Ok(r)
}

/// The command's standard output, bounded in size (`true`: cut at the bound, after its
/// last whole line) and in time (the command is killed past it).
pub async fn run(cmd: &mut Command) -> Result<(String, bool), QueueError> {
    let command = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| QueueError::Spawn {
        command: command.clone(),
        source,
    })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(QueueError::Failed {
            command,
            stderr: "no pipes".to_owned(),
        });
    };
    // Stderr's first 4 KiB are kept for the error; the rest is read and dropped, so that a
    // chatty command never blocks on a full pipe. On a task of its own: a command cut off
    // below may leave children holding stderr open.
    let stderr = tokio::spawn(async move {
        let (mut stderr, mut err, mut chunk) = (stderr, Vec::new(), [0u8; 4096]);
        while let Ok(n) = stderr.read(&mut chunk).await
            && n > 0
        {
            let room = 4096usize.saturating_sub(err.len()).min(n);
            err.extend_from_slice(&chunk[..room]);
        }
        err
    });
    let work = async {
        let spawn = |source| QueueError::Spawn {
            command: command.clone(),
            source,
        };
        let mut out = Vec::new();
        let mut stdout = stdout.take(MAX_OUTPUT + 1);
        stdout.read_to_end(&mut out).await.map_err(spawn)?;
        let cut = out.len() as u64 > MAX_OUTPUT;
        if cut {
            // The rest is not read: closing the pipe ends whatever still writes to it, and
            // the command is killed.
            drop(stdout);
            stderr.abort();
            let _ = child.start_kill();
            let end = out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            out.truncate(end);
            child.wait().await.map_err(spawn)?;
            return Ok((String::from_utf8_lossy(&out).into_owned(), true));
        }
        let status = child.wait().await.map_err(spawn)?;
        if !status.success() {
            let err = stderr.await.unwrap_or_default();
            return Err(QueueError::Failed {
                command: command.clone(),
                stderr: String::from_utf8_lossy(&err).trim().to_owned(),
            });
        }
        stderr.abort();
        Ok((String::from_utf8_lossy(&out).into_owned(), false))
    };
    tokio::time::timeout(COMMAND_TIMEOUT, work)
        .await
        .map_err(|_| QueueError::Timeout {
            command: command.clone(),
        })?
}

/// One domain's figures while parsing.
#[derive(Debug, Default)]
struct Domain {
    queued: u32,
    deferred: Option<u32>,
    oldest: Option<i64>,
    /// The reason of the latest deferral seen, by the time it is dated with.
    reason: Option<(i64, String)>,
}

/// Figures per domain as a parser gathers them.
#[derive(Debug, Default)]
pub struct Parsed {
    domains: BTreeMap<String, Domain>,
    messages: u32,
    truncated: bool,
    now: i64,
}

/// What one message contributes to one of its domains.
struct Seen {
    /// `None`: the listing does not say.
    deferred: Option<bool>,
    reason: Option<String>,
}

impl Parsed {
    fn new(now: i64) -> Parsed {
        Parsed {
            now,
            ..Parsed::default()
        }
    }

    /// Counts a message; `false` once [`MAX_MESSAGES`] were counted (the rest is not).
    fn message(&mut self, arrival: i64, seen: BTreeMap<String, Seen>, dated: i64) -> bool {
        if self.messages as usize >= MAX_MESSAGES {
            self.truncated = true;
            return false;
        }
        self.messages += 1;
        for (name, s) in seen {
            let d = self.domains.entry(name).or_default();
            d.queued += 1;
            if let Some(deferred) = s.deferred {
                *d.deferred.get_or_insert(0) += u32::from(deferred);
            }
            d.oldest = Some(d.oldest.map_or(arrival, |o| o.min(arrival)));
            if let Some(r) = s.reason.filter(|r| !r.is_empty())
                && d.reason.as_ref().is_none_or(|(t, _)| dated >= *t)
            {
                d.reason = Some((dated, r));
            }
        }
        true
    }

    fn into_report(self, mta: &str) -> QueueReport {
        let now = self.now;
        let mut domains: Vec<DomainQueue> = self
            .domains
            .into_iter()
            .map(|(domain, d)| DomainQueue {
                domain,
                queued: d.queued,
                deferred: d.deferred,
                oldest_secs: d.oldest.map_or(0, |o| now.saturating_sub(o).max(0) as u64),
                reason: d.reason.map(|(_, r)| r).unwrap_or_default(),
            })
            .collect();
        domains.sort_by(|a, b| {
            (b.deferred, b.queued, &a.domain).cmp(&(a.deferred, a.queued, &b.domain))
        });
        let truncated = self.truncated || domains.len() > MAX_DOMAINS;
        domains.truncate(MAX_DOMAINS);
        QueueReport {
            mta: mta.to_owned(),
            messages: self.messages,
            truncated,
            domains,
        }
    }

    #[cfg(test)]
    pub(super) fn report(self) -> QueueReport {
        self.into_report("test")
    }
}

/// The domain of a recipient address, lowercased; `""` for an address without one.
fn domain_of(address: &str) -> String {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    a.rsplit_once('@')
        .map_or("", |(_, d)| d)
        .trim_end_matches('.')
        .to_lowercase()
}

/// An MTA's reason as one short printable line.
fn clean_reason(r: &str) -> String {
    let mut out: String = r
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    out.truncate(out.trim_end().len());
    out
}

/// `postqueue -j`: one JSON object per line.
pub fn postfix(text: &str, now: i64) -> Parsed {
    #[derive(serde::Deserialize)]
    struct Message {
        #[serde(default)]
        queue_name: String,
        #[serde(default)]
        arrival_time: i64,
        #[serde(default)]
        recipients: Vec<Recipient>,
    }
    #[derive(serde::Deserialize)]
    struct Recipient {
        address: String,
        #[serde(default)]
        delay_reason: Option<String>,
    }
    let mut p = Parsed::new(now);
    for line in text.lines().filter(|l| l.starts_with('{')) {
        // A line that is not a message (a newer Postfix's other output) is skipped.
        let Ok(m) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        for r in &m.recipients {
            let deferred = m.queue_name == "deferred" || r.delay_reason.is_some();
            let s = seen.entry(domain_of(&r.address)).or_insert(Seen {
                deferred: Some(false),
                reason: None,
            });
            s.deferred = Some(s.deferred == Some(true) || deferred);
            if let Some(reason) = &r.delay_reason
                && s.reason.is_none()
            {
                s.reason = Some(clean_reason(reason));
            }
        }
        if seen.is_empty() {
            continue;
        }
        if !p.message(m.arrival_time, seen, m.arrival_time) {
            break;
        }
    }
    p
}

/// Age in an `exim -bp` listing: a number and a unit (`45m`, `3h`, `2d`).
fn exim_age(t: &str) -> Option<i64> {
    let unit = t.chars().last()?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    };
    Some(n * secs)
}

/// `exim -bp`: per message a line with age, size, id and sender, then its recipients
/// indented, `D ` before the delivered ones, and a blank line. Ages are relative: the
/// report's clock is the listing's, so `now` is 0 and arrivals are negative.
pub fn exim(text: &str) -> Parsed {
    let mut p = Parsed::new(0);
    let mut current: Option<(i64, BTreeMap<String, Seen>)> = None;
    let flush = |p: &mut Parsed, current: &mut Option<(i64, BTreeMap<String, Seen>)>| {
        if let Some((arrival, seen)) = current.take()
            && !seen.is_empty()
        {
            return p.message(arrival, seen, arrival);
        }
        true
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let header = words.len() >= 4
            && words[2].contains('-')
            && words[3].starts_with('<')
            && exim_age(words[0]).is_some();
        // A header or a blank line ends the message before it.
        if (header || words.is_empty()) && !flush(&mut p, &mut current) {
            return p;
        }
        if header {
            current = Some((-exim_age(words[0]).unwrap_or(0), BTreeMap::new()));
            continue;
        }
        match (words.as_slice(), current.as_mut()) {
            // Delivered (`D`), or to a parent address already done (`+D`).
            (["D" | "+D", ..], _) => {}
            ([address], Some((_, seen))) | ([_, address], Some((_, seen))) => {
                seen.entry(domain_of(address)).or_insert(Seen {
                    deferred: None,
                    reason: None,
                });
            }
            _ => {}
        }
    }
    flush(&mut p, &mut current);
    p
}

/// `smtpctl show queue`: one envelope (recipient) per line, `|`-separated; the error line
/// comes last and may itself hold `|`. An envelope id's first 8 hex digits are its
/// message's.
pub fn opensmtpd(text: &str, now: i64) -> Parsed {
    let mut p = Parsed::new(now);
    // By message: arrival, latest try, and its domains.
    let mut messages: BTreeMap<String, (i64, i64, BTreeMap<String, Seen>)> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(14, '|').collect();
        if f.len() < 14 || f[0].len() < 8 {
            continue;
        }
        let (Ok(creation), Ok(lasttry), Ok(retry)) = (
            f[7].parse::<i64>(),
            f[9].parse::<i64>(),
            f[10].parse::<u32>(),
        ) else {
            continue;
        };
        let error = f[13].trim();
        let deferred = retry > 0 || !error.is_empty();
        if !messages.contains_key(&f[0][..8]) && messages.len() >= MAX_MESSAGES {
            p.truncated = true;
            continue;
        }
        let m =
            messages
                .entry(f[0][..8].to_owned())
                .or_insert((creation, lasttry, BTreeMap::new()));
        m.0 = m.0.min(creation);
        m.1 = m.1.max(lasttry);
        let s = m.2.entry(domain_of(f[6])).or_insert(Seen {
            deferred: Some(false),
            reason: None,
        });
        s.deferred = Some(s.deferred == Some(true) || deferred);
        if !error.is_empty() && s.reason.is_none() {
            s.reason = Some(clean_reason(error));
        }
    }
    for (_, (arrival, lasttry, seen)) in messages {
        if !p.message(arrival, seen, lasttry) {
            break;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(r: &'a QueueReport, domain: &str) -> &'a DomainQueue {
        r.domains
            .iter()
            .find(|d| d.domain == domain)
            .unwrap_or_else(|| panic!("{domain} in {r:?}"))
    }

    #[test]
    fn domains_are_lowercased_and_reasons_cleaned() {
        assert_eq!(domain_of("Bob@Example.ORG."), "example.org");
        assert_eq!(
            domain_of("<a@xn--bcher-kva.example>"),
            "xn--bcher-kva.example"
        );
        assert_eq!(domain_of("postmaster"), "");
        let long = format!("4.4.1 \x1b[31mred\r\n{}", "x".repeat(500));
        let r = clean_reason(&long);
        assert!(r.starts_with("4.4.1  [31mred  x"), "{r:?}");
        assert_eq!(r.chars().count(), MAX_REASON);
        assert!(!r.chars().any(char::is_control));
    }

    /// Captured from the lab's Postfix (`postqueue -j`): two deferred messages for
    /// nowhere.invalid, the second also for other.invalid.
    #[test]
    fn postfix_listing() {
        let text = include_str!("fixtures/postqueue-j.txt");
        let r = postfix(text, 1_796_030_634).report();
        assert_eq!((r.messages, r.truncated, r.domains.len()), (2, false, 2));
        let d = find(&r, "nowhere.invalid");
        assert_eq!((d.queued, d.deferred, d.oldest_secs), (2, Some(2), 101));
        assert_eq!(
            d.reason,
            "Host or domain name not found. Name service error for name=nowhere.invalid type=MX: Host not found, try again"
        );
        let o = find(&r, "other.invalid");
        assert_eq!((o.queued, o.deferred, o.oldest_secs), (1, Some(1), 100));
        assert_eq!(
            r.domains[0].domain, "nowhere.invalid",
            "most deferred first"
        );
        // A message not yet tried: queued, not deferred, no reason.
        let fresh = r#"{"queue_name": "active", "queue_id": "AB1", "arrival_time": 1796030630, "recipients": [{"address": "X@New.Example"}]}"#;
        let r = postfix(&format!("{text}{fresh}\n"), 1_796_030_634).report();
        let n = find(&r, "new.example");
        assert_eq!((n.queued, n.deferred, n.reason.as_str()), (1, Some(0), ""));
    }

    #[test]
    fn at_most_max_messages_are_counted() {
        let line = r#"{"queue_name": "deferred", "arrival_time": 1, "recipients": [{"address": "a@x.example", "delay_reason": "r"}]}"#;
        let text = format!("{line}\n").repeat(MAX_MESSAGES + 3);
        let r = postfix(&text, 2).report();
        assert_eq!((r.messages as usize, r.truncated), (MAX_MESSAGES, true));
        assert_eq!(r.domains[0].queued as usize, MAX_MESSAGES);
    }

    /// Captured from the lab's Exim (`exim -bp`): two messages for nowhere.invalid (relayed
    /// to a port where nothing listens), the second also to a local mailbox, delivered.
    #[test]
    fn exim_listing() {
        let r = exim(include_str!("fixtures/exim-bp.txt")).report();
        assert_eq!((r.messages, r.truncated), (2, false));
        assert_eq!(
            r.domains.len(),
            1,
            "the delivered recipient is not queued: {r:?}"
        );
        let d = find(&r, "nowhere.invalid");
        assert_eq!((d.queued, d.deferred, d.reason.as_str()), (2, None, ""));
        assert_eq!(d.oldest_secs, 0, "listed as 0m");
        // Ages in hours and days, and a frozen message.
        let text = " 3h  1.2K 1xXxcz-0004Cy-1V <a@b.example> *** frozen ***\n          x@One.Example\n\n\
                    2d   481 1xXxcz-0004Dc-2l <>\n          y@one.example\n          z@two.example\n\n";
        let r = exim(text).report();
        let one = find(&r, "one.example");
        assert_eq!((one.queued, one.oldest_secs), (2, 2 * 86_400));
        assert_eq!(find(&r, "two.example").oldest_secs, 2 * 86_400);
    }

    /// Captured from the lab's OpenSMTPD (`smtpctl show queue`): two envelopes of two
    /// messages for nowhere.invalid, relayed to a port where nothing listens.
    #[test]
    fn opensmtpd_listing() {
        let text = include_str!("fixtures/smtpctl-show-queue.txt");
        let r = opensmtpd(text, 1_796_030_754).report();
        assert_eq!((r.messages, r.truncated, r.domains.len()), (2, false, 1));
        let d = find(&r, "nowhere.invalid");
        assert_eq!((d.queued, d.deferred, d.oldest_secs), (2, Some(2), 60));
        assert_eq!(d.reason, "Network error on destination MXs");
        // Two envelopes of one message in one domain count once; an error line may hold
        // `|`; an envelope not tried yet is queued, not deferred.
        let more = "\
0000000100000001|inet4|mta||s@x.example|a@Same.Example|a@same.example|100|200|0|1|pending|10|421 a|b\n\
0000000100000002|inet4|mta||s@x.example|b@same.example|b@same.example|100|200|0|1|pending|10|421 a|b\n\
0000000200000001|local|mta||s@x.example|c@same.example|c@same.example|150|250|0|0|inflight|1|\n";
        let r = opensmtpd(more, 200).report();
        let d = find(&r, "same.example");
        assert_eq!((d.queued, d.deferred, d.oldest_secs), (2, Some(1), 100));
        assert_eq!(d.reason, "421 a|b");
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    /// The command's output is cut after its last whole line at the bound, its failure
    /// comes with what it said on stderr, and a flood on stderr does not block it.
    #[tokio::test]
    async fn the_command_is_bounded() {
        let (text, cut) = run(&mut sh("yes 'a line' | head -c 70000000"))
            .await
            .unwrap();
        assert!(cut);
        assert!(text.len() as u64 <= MAX_OUTPUT && text.ends_with("a line\n"));
        let e = run(&mut sh("echo 'no queue here' >&2; exit 3"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, QueueError::Failed { stderr, .. } if stderr == "no queue here"),
            "{e}"
        );
        let (text, cut) = run(&mut sh("head -c 1000000 /dev/zero >&2; echo done"))
            .await
            .unwrap();
        assert_eq!((text.as_str(), cut), ("done\n", false));
    }
}
