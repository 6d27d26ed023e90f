//! `robustifier cluster ...`: the operator's commands, and their output.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    audit::Entry,
    client::Client,
    core::{ClusterStatus, MemberRow, now_ms},
    journal::VersionInfo,
    logs::Entry as LogEntry,
    pki,
    wire::{Action, Request},
};

/// The first line of `cluster show`: an edited copy committed without `--base` is based on
/// the version it was shown as.
const VERSION_HEADER: &str = "# robustifier cluster configuration, version ";
const TIMEOUT: Duration = Duration::from_secs(60);

/// How an operator reaches the manager (or the environment variables).
#[derive(clap::Args, Debug)]
pub struct Connection {
    /// The manager, `host:port`.
    #[arg(long, env = "ROBUSTIFIER_MANAGER", global = true)]
    manager: Option<String>,
    /// The cluster's CA certificate.
    #[arg(long, env = "ROBUSTIFIER_CA", global = true)]
    ca: Option<PathBuf>,
    /// The operator's certificate (its name is the author of commits).
    #[arg(long, env = "ROBUSTIFIER_CERT", global = true)]
    cert: Option<PathBuf>,
    #[arg(long, env = "ROBUSTIFIER_KEY", global = true)]
    key: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create a cluster: its CA and the certificates of the manager, members and operators.
    Init {
        /// Folder to create (the CA key stays here; copy each certificate to its host).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// A DNS name or address the manager is reached at (repeatable).
        #[arg(long = "manager-name")]
        manager_names: Vec<String>,
        /// A member (front-end) name (repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
        /// An operator name (repeatable).
        #[arg(long = "operator")]
        operators: Vec<String>,
        /// A back-end host's agent, named as the back-end in the configuration (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
    },
    /// Issue one more member, operator or agent certificate from the cluster's CA.
    #[command(group(clap::ArgGroup::new("holder").required(true).args(["member", "operator", "agent"])))]
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        member: Option<String>,
        #[arg(long)]
        operator: Option<String>,
        /// A back-end host's agent (the back-end's name in the configuration).
        #[arg(long)]
        agent: Option<String>,
    },
    /// Commit a cluster configuration as the next version.
    Commit {
        file: PathBuf,
        /// The version this file was based on (default: the header `cluster show` wrote).
        #[arg(long)]
        base: Option<u64>,
        #[arg(long, short, default_value = "")]
        comment: String,
        /// Revert to the previous configuration unless `cluster confirm` follows in time.
        #[arg(long, value_name = "MINUTES", conflicts_with = "confirm_secs")]
        confirm: Option<u64>,
        /// As `--confirm`, in seconds.
        #[arg(long, hide = true)]
        confirm_secs: Option<u64>,
        /// Wait up to this many seconds for every member to run the new version.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// The versions, newest first.
    Log {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// A version's text (default: the head), or one member's rendering of it.
    Show {
        version: Option<u64>,
        #[arg(long)]
        member: Option<String>,
    },
    /// What changes from version A to version B.
    Diff { a: u64, b: u64 },
    /// Commit version V's configuration again, as a new version.
    Rollback { version: u64 },
    /// Confirm the commit awaiting confirmation.
    Confirm,
    /// Every member: reachability, desired and applied version, last error, release, VRRP roles.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The audit trail; `--verify` checks its hash chain.
    Audit {
        #[arg(long)]
        verify: bool,
        #[arg(long, default_value_t = 1)]
        since: u64,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// The members' events merged, in time order.
    Logs {
        #[arg(long)]
        member: Option<String>,
        /// Only events of the last SECS seconds.
        #[arg(long, value_name = "SECS")]
        since: Option<u64>,
        /// Keep printing events as they arrive.
        #[arg(long, short)]
        follow: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        json: bool,
        /// Only the events of this mail session (its id, as in the front-end's log).
        #[arg(long)]
        session: Option<String>,
    },
    /// A message's way through the cluster: ID is a session id, a Message-ID or a queue id.
    /// Shows the client, front-end, session, routing decision, back-end and queue id, and
    /// the back-end MTA's own log lines of that queue id (shipped by its agent).
    Trace {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The members' statistics per minute, as stored at the manager.
    Stats {
        #[arg(long)]
        member: Option<String>,
        /// Only the minutes after this unix minute (unix seconds / 60).
        #[arg(long, value_name = "MIN")]
        since: Option<u64>,
        /// One JSON record per minute and line.
        #[arg(long)]
        json: bool,
    },
    /// Hand a member's virtual router over (drain-aware), as `ha release` on it.
    Release { member: String, vrid: u8 },
    /// Undo a release.
    Resume { member: String, vrid: u8 },
    /// Stop sending new sessions to a back-end, on every connected member (or one).
    Drain {
        backend: String,
        #[arg(long)]
        member: Option<String>,
    },
    /// Undo a drain.
    Undrain {
        backend: String,
        #[arg(long)]
        member: Option<String>,
    },
    /// The back-ends' mail queues per destination domain, from their agents, as every
    /// connected member's front-end (or one's) sees them.
    Queue {
        /// Move a domain's queued mail, or report the moves, instead of listing queues.
        #[command(subcommand)]
        command: Option<ClusterQueueCommand>,
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        member: Option<String>,
        /// Machine-readable output: member name -> the front-end's reply.
        #[arg(long)]
        json: bool,
    },
    /// A one-time link (valid a minute) that logs you into the manager's web interface.
    Web,
    /// Upload a Debian package to the manager and roll it over the members one at a time
    /// (each must come back ready on its version, else it is rolled back and the rollout
    /// stops); or, with --status, show the rollout and each member's release.
    Upgrade {
        /// The package (`robustifier_VERSION_ARCH.deb`).
        #[arg(required_unless_present = "status")]
        package: Option<PathBuf>,
        /// Follow the rollout until no member is left to upgrade (those away excepted);
        /// fails if it stopped.
        #[arg(long)]
        wait: bool,
        /// Seconds each member has to run the new version, ready, once sent the package.
        #[arg(long, default_value_t = super::upgrade::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
        #[arg(long, conflicts_with_all = ["package", "wait"])]
        status: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `cluster queue move` and `cluster queue moves`: as `robustifier queue move`, through
/// every connected member's front-end (or one's).
#[derive(Debug, clap::Subcommand)]
pub enum ClusterQueueCommand {
    /// Hand a domain's queued mail over to a pool (a change of the back-ends' queues,
    /// audited as an action).
    Move {
        /// A domain (`slow.example`) or its subdomains (`.slow.example`).
        #[arg(long)]
        domain: String,
        /// The pool taking the mail.
        #[arg(long)]
        to: String,
        /// Ask for the progress every second until every back-end is done, for at most
        /// SECS seconds; fails, naming them, if some are not done by then.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        #[arg(long)]
        member: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A domain's move's progress, without starting one.
    Moves {
        #[arg(long)]
        domain: String,
        /// The pool (default: the domain's `[[domain_queue]]` pool).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        member: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `cluster` command.
pub fn run(command: ClusterCommand, conn: Connection) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Init {
            dir,
            name,
            manager_names,
            members,
            operators,
            agents,
        } => {
            let files =
                pki::init_with_agents(&dir, &name, &manager_names, &members, &operators, &agents)?;
            println!("cluster {name} created in {}:", dir.display());
            for f in files {
                println!("  {}", f.display());
            }
            Ok(())
        }
        ClusterCommand::Issue {
            dir,
            member,
            operator,
            agent,
        } => {
            let (role, name) = match (member, operator, agent) {
                (Some(m), _, _) => (pki::Role::Member, m),
                (None, Some(o), _) => (pki::Role::Operator, o),
                (None, None, Some(a)) => (pki::Role::Agent, a),
                (None, None, None) => bail!("--member, --operator or --agent"),
            };
            let (cert, key) = pki::issue(&dir, role, &name, &[])?;
            println!("{} {}", cert.display(), key.display());
            Ok(())
        }
        other => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(remote(other, conn)),
    }
}

async fn remote(command: ClusterCommand, conn: Connection) -> anyhow::Result<()> {
    let missing = |what: &str, env: &str| format!("--{what} (or {env}) is required");
    let addr = conn
        .manager
        .with_context(|| missing("manager", "ROBUSTIFIER_MANAGER"))?;
    let ca = conn.ca.with_context(|| missing("ca", "ROBUSTIFIER_CA"))?;
    let cert = conn
        .cert
        .with_context(|| missing("cert", "ROBUSTIFIER_CERT"))?;
    let key = conn
        .key
        .with_context(|| missing("key", "ROBUSTIFIER_KEY"))?;
    let mut c = Client::connect(&addr, &ca, &cert, &key).await?;
    match command {
        ClusterCommand::Commit {
            file,
            base,
            comment,
            confirm,
            confirm_secs,
            wait,
        } => {
            commit(
                &mut c,
                &file,
                base,
                comment,
                confirm_secs.or(confirm.map(|m| m * 60)),
                wait,
            )
            .await
        }
        ClusterCommand::Log { limit, json } => {
            let v = c.call(&Request::Log { limit }, TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let log: Vec<VersionInfo> = serde_json::from_value(v)?;
                print!("{}", render_log(&log));
            }
            Ok(())
        }
        ClusterCommand::Show { version, member } => {
            let v = c
                .call(
                    &Request::Show {
                        version,
                        member: member.clone(),
                    },
                    TIMEOUT,
                )
                .await?;
            let text = v["text"].as_str().unwrap_or_default();
            match member {
                None => {
                    let n = v["info"]["number"].as_u64().unwrap_or_default();
                    println!("{VERSION_HEADER}{n}");
                    print!("{text}");
                }
                Some(m) => {
                    println!("# member {m}, version {}", v["version"]);
                    print!("{text}");
                }
            }
            Ok(())
        }
        ClusterCommand::Diff { a, b } => {
            let v = c.call(&Request::Diff { a, b }, TIMEOUT).await?;
            let lines: Vec<String> = serde_json::from_value(v)?;
            if lines.is_empty() {
                println!("no change from version {a} to version {b}");
            }
            for l in lines {
                println!("{l}");
            }
            Ok(())
        }
        ClusterCommand::Rollback { version } => {
            let v = c.call(&Request::Rollback { to: version }, TIMEOUT).await?;
            let info: VersionInfo = serde_json::from_value(v)?;
            println!(
                "version {}: {} ({})",
                info.number, info.comment, info.summary
            );
            Ok(())
        }
        ClusterCommand::Confirm => {
            let v = c.call(&Request::Confirm, TIMEOUT).await?;
            println!("version {v} confirmed");
            Ok(())
        }
        ClusterCommand::Status { json } => {
            let v = c.call(&Request::Status, TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let s: ClusterStatus = serde_json::from_value(v)?;
                print!("{}", render_status(&s));
                let u: super::upgrade::UpgradeStatus =
                    serde_json::from_value(c.call(&Request::UpgradeStatus, TIMEOUT).await?)?;
                if let Some(r) = &u.rollout {
                    print!("{}", super::upgrade_cli::render_rollout(r));
                }
            }
            Ok(())
        }
        ClusterCommand::Upgrade {
            package,
            wait,
            timeout,
            status,
            json,
        } => super::upgrade_cli::upgrade(&mut c, package, wait, timeout, status, json).await,
        ClusterCommand::Audit {
            verify,
            since,
            limit,
            json,
        } => {
            let v = c
                .call(
                    &Request::Audit {
                        verify,
                        since,
                        limit,
                    },
                    TIMEOUT,
                )
                .await?;
            if json || verify {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let entries: Vec<Entry> = serde_json::from_value(v)?;
                for e in entries {
                    println!(
                        "{:>5} {} {:<20} {:<16} {} -> {}",
                        e.seq,
                        time(e.time),
                        e.who,
                        e.action,
                        e.what,
                        e.result
                    );
                }
            }
            Ok(())
        }
        ClusterCommand::Logs {
            member,
            since,
            follow,
            limit,
            json,
            session,
        } => logs(&mut c, (member, session), since, follow, limit, json).await,
        ClusterCommand::Trace { id, json } => {
            let v = c.call(&Request::Trace { id }, TIMEOUT).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let t: super::mta_log::Trace = serde_json::from_value(v)?;
                print!("{}", render_trace(&t));
            }
            Ok(())
        }
        ClusterCommand::Stats {
            member,
            since,
            json,
        } => {
            // The manager answers a bounded batch of whole minutes: ask on after the last.
            let mut minutes: Vec<crate::stats::Minute> = Vec::new();
            let mut since = since;
            loop {
                let request = Request::StatsOf {
                    member: member.clone(),
                    since,
                };
                let batch: Vec<crate::stats::Minute> =
                    serde_json::from_value(c.call(&request, TIMEOUT).await?)?;
                let Some(last) = batch.last().map(|m| m.minute) else {
                    break;
                };
                since = Some(last);
                minutes.extend(batch);
            }
            if json {
                for m in &minutes {
                    println!("{}", serde_json::to_string(m)?);
                }
            } else {
                let mut members: Vec<&str> = minutes.iter().map(|m| m.member.as_str()).collect();
                members.sort_unstable();
                members.dedup();
                for name in members {
                    let own: Vec<crate::stats::Minute> = minutes
                        .iter()
                        .filter(|m| m.member == name)
                        .cloned()
                        .collect();
                    println!("member {name}:");
                    print!("{}", crate::stats::render(&own));
                }
            }
            Ok(())
        }
        ClusterCommand::Release { member, vrid } => {
            act(&mut c, &[member], Action::Release { vrid }).await
        }
        ClusterCommand::Resume { member, vrid } => {
            act(&mut c, &[member], Action::Resume { vrid }).await
        }
        ClusterCommand::Drain { backend, member } => {
            let members = targets(&mut c, member).await?;
            act(&mut c, &members, Action::Drain { backend }).await
        }
        ClusterCommand::Undrain { backend, member } => {
            let members = targets(&mut c, member).await?;
            act(&mut c, &members, Action::Undrain { backend }).await
        }
        ClusterCommand::Queue {
            command:
                Some(ClusterQueueCommand::Move {
                    domain,
                    to,
                    wait,
                    member,
                    json,
                }),
            ..
        } => {
            let members = targets(&mut c, member).await?;
            queue_move(&mut c, &members, &domain, &to, false, wait, json).await
        }
        ClusterCommand::Queue {
            command:
                Some(ClusterQueueCommand::Moves {
                    domain,
                    to,
                    member,
                    json,
                }),
            ..
        } => {
            let members = targets(&mut c, member).await?;
            let to = to.unwrap_or_default();
            queue_move(&mut c, &members, &domain, &to, true, None, json).await
        }
        ClusterCommand::Queue {
            command: None,
            domain,
            member,
            json,
        } => {
            let members = targets(&mut c, member).await?;
            queue(&mut c, &members, domain, json).await
        }
        ClusterCommand::Web => {
            let v = c.call(&Request::WebLogin, TIMEOUT).await?;
            println!("{}", v.as_str().unwrap_or_default());
            Ok(())
        }
        ClusterCommand::Init { .. } | ClusterCommand::Issue { .. } => {
            bail!("init and issue run without a manager")
        }
    }
}

async fn commit(
    c: &mut Client,
    file: &Path,
    base: Option<u64>,
    comment: String,
    confirm_secs: Option<u64>,
    wait: Option<u64>,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let base = match base {
        Some(b) => b,
        None => base_of(&text).with_context(|| {
            format!(
                "{}: name the version it is based on with --base (`cluster log` shows the head)",
                file.display()
            )
        })?,
    };
    let request = Request::Commit {
        base,
        text,
        comment,
        confirm_secs,
    };
    let v = c.call(&request, TIMEOUT).await?;
    let info: VersionInfo = serde_json::from_value(v)?;
    println!("committed version {}: {}", info.number, info.summary);
    if let Some(by) = info.confirm_by {
        println!(
            "confirm by {} with `robustifier cluster confirm`, or version {base} comes back",
            time(by)
        );
    }
    let Some(secs) = wait else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let s: ClusterStatus = serde_json::from_value(c.call(&Request::Status, TIMEOUT).await?)?;
        let behind: Vec<&MemberRow> = s
            .members
            .iter()
            .filter(|m| m.configured && m.applied < info.number)
            .collect();
        if behind.is_empty() {
            let slowest = s.members.iter().map(|m| m.applied_ms).max().unwrap_or(0);
            println!(
                "every member runs version {} ({} ms after the commit)",
                info.number,
                slowest.saturating_sub(s.head_ms)
            );
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            for m in behind {
                println!(
                    "{}: runs version {}{}",
                    m.name,
                    m.applied,
                    m.last_error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" ({e})"))
                );
            }
            bail!(
                "not every member runs version {} after {secs} s",
                info.number
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn logs(
    c: &mut Client,
    (member, session): (Option<String>, Option<String>),
    since: Option<u64>,
    follow: bool,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let since_ms = since.map_or(0, |s| now_ms().saturating_sub(s * 1000));
    let mut after = 0;
    loop {
        let request = Request::Logs {
            after,
            member: member.clone(),
            since_ms,
            limit,
            session: session.clone(),
        };
        let v = c.call(&request, TIMEOUT).await?;
        let entries: Vec<LogEntry> = serde_json::from_value(v["entries"].clone())?;
        after = v["last"].as_u64().unwrap_or(after);
        for e in &entries {
            if json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!("{}", render_entry(e));
            }
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn render_entry(e: &LogEntry) -> String {
    match (&e.event, e.gap) {
        (Some(ev), _) => format!(
            "{} {:<12} #{:<6} {:<8} {}{}",
            time_ms(ev.time_ms),
            e.member,
            ev.seq,
            ev.severity,
            ev.message,
            ev.alarm
                .as_deref()
                .map_or(String::new(), |a| format!(" [alarm {a}]"))
        ),
        (None, Some((a, b))) => format!(
            "{:<24} {:<12} events {a} to {b} lost: the front-end no longer had them",
            "", e.member
        ),
        (None, None) => format!("{:<24} {:<12} (empty entry)", "", e.member),
    }
}

fn render_trace(t: &super::mta_log::Trace) -> String {
    let mut out = String::new();
    if t.messages.is_empty() && t.session_events.is_empty() && t.mta_only.is_empty() {
        return format!("nothing known of {}\n", t.id);
    }
    for m in &t.messages {
        let r = &m.record;
        out.push_str(&format!(
            "message {}\n  {} client {} (helo {}) to front-end {}, service {}, session {}\n",
            r.message_id.as_deref().unwrap_or("(no Message-ID)"),
            time_ms(m.time_ms),
            r.client,
            r.helo.as_deref().unwrap_or("-"),
            m.member,
            r.service,
            r.session
        ));
        out.push_str(&format!(
            "  from <{}> to {} recipient(s): {}\n",
            r.mail_from,
            r.rcpt_count,
            r.rcpts.join(", ")
        ));
        out.push_str(&format!(
            "  routed to pool {}, back-end {} ({})\n  {} octets, queue id {}\n",
            r.pool,
            r.backend,
            r.route_reason,
            r.size,
            r.queue_id.as_deref().unwrap_or("unknown")
        ));
        if m.mta.is_empty() {
            out.push_str(&format!("  no MTA lines from {}'s agent\n", r.backend));
        } else {
            out.push_str(&format!("  MTA log of {}:\n", r.backend));
            for l in &m.mta {
                out.push_str(&format!("    {l}\n"));
            }
        }
    }
    if !t.session_events.is_empty() {
        out.push_str("session events:\n");
        for e in &t.session_events {
            out.push_str(&format!("  {}\n", render_entry(e)));
        }
    }
    for h in &t.mta_only {
        out.push_str(&format!("MTA log of {} (queue id {}):\n", h.host, t.id));
        for l in &h.lines {
            out.push_str(&format!("    {l}\n"));
        }
    }
    out
}

/// The version a `cluster show` output was shown as.
fn base_of(text: &str) -> Option<u64> {
    text.lines()
        .next()?
        .strip_prefix(VERSION_HEADER)?
        .trim()
        .parse()
        .ok()
}

async fn targets(c: &mut Client, member: Option<String>) -> anyhow::Result<Vec<String>> {
    if let Some(m) = member {
        return Ok(vec![m]);
    }
    let s: ClusterStatus = serde_json::from_value(c.call(&Request::Status, TIMEOUT).await?)?;
    let all: Vec<String> = s
        .members
        .into_iter()
        .filter(|m| m.configured && m.connected)
        .map(|m| m.name)
        .collect();
    if all.is_empty() {
        bail!("no member is connected");
    }
    Ok(all)
}

async fn act(c: &mut Client, members: &[String], action: Action) -> anyhow::Result<()> {
    let mut failed = 0;
    for member in members {
        let request = Request::Action {
            member: member.clone(),
            action: action.clone(),
        };
        match c.call(&request, super::core::ACTION_TIMEOUT).await {
            Ok(v) => println!(
                "{member}: {}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            ),
            Err(e) => {
                failed += 1;
                println!("{member}: failed: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{action} failed on {failed} of {} members", members.len());
    }
    Ok(())
}

/// Each member's front-end asked for its back-ends' queues per domain; a member that
/// could not answer is named with why.
async fn queue(
    c: &mut Client,
    members: &[String],
    domain: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::frontend::queue::{QueueStatus, render};
    let mut all = serde_json::Map::new();
    let mut failed = 0;
    for member in members {
        let request = Request::Action {
            member: member.clone(),
            action: Action::Queue {
                domain: domain.clone(),
            },
        };
        let answer = c
            .call(&request, super::core::ACTION_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
            .and_then(|v| {
                serde_json::from_str::<QueueStatus>(v.as_str().unwrap_or_default())
                    .map_err(|e| format!("not a queue status: {e}"))
            });
        match answer {
            Ok(status) if json => {
                all.insert(member.clone(), serde_json::to_value(status)?);
            }
            Ok(status) => print!("member {member}:\n{}", render(&status)),
            Err(e) => {
                failed += 1;
                if json {
                    all.insert(member.clone(), serde_json::json!({ "error": e }));
                } else {
                    println!("member {member}: failed: {e}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    if failed > 0 {
        bail!("queue failed on {failed} of {} members", members.len());
    }
    Ok(())
}

/// Each member's front-end asked to start (or report) a move; with `wait`, asked again for
/// the progress every second until every member's sources are done or the time is up.
async fn queue_move(
    c: &mut Client,
    members: &[String],
    domain: &str,
    pool: &str,
    status_only: bool,
    wait: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::frontend::queue_move::{MoveReport, render};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.unwrap_or(0));
    let mut answers: Vec<(String, Result<MoveReport, String>)> = Vec::new();
    for member in members {
        let mut status_only = status_only;
        let answer = loop {
            let request = Request::Action {
                member: member.clone(),
                action: Action::QueueMove {
                    domain: domain.to_owned(),
                    pool: pool.to_owned(),
                    status_only,
                },
            };
            let answer = c
                .call(&request, super::core::ACTION_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    serde_json::from_str::<MoveReport>(v.as_str().unwrap_or_default())
                        .map_err(|e| format!("not a move report: {e}"))
                });
            match &answer {
                Ok(r)
                    if wait.is_some() && !r.settled() && tokio::time::Instant::now() < deadline =>
                {
                    status_only = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ => break answer,
            }
        };
        answers.push((member.clone(), answer));
    }
    let mut all = serde_json::Map::new();
    let mut failed = Vec::new();
    for (member, answer) in answers {
        match answer {
            Ok(r) => {
                let not_done = r.not_done();
                if wait.is_some() && !not_done.is_empty() {
                    failed.push(format!("{member} ({})", not_done.join(", ")));
                }
                if json {
                    all.insert(member, serde_json::to_value(&r)?);
                } else {
                    print!("member {member}:\n{}", render(&r));
                }
            }
            Err(e) => {
                failed.push(format!("{member} ({e})"));
                if json {
                    all.insert(member, serde_json::json!({ "error": e }));
                } else {
                    println!("member {member}: failed: {e}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    if !failed.is_empty() {
        bail!("the move of {domain} is not done on: {}", failed.join("; "));
    }
    Ok(())
}

fn render_log(log: &[VersionInfo]) -> String {
    let mut out = String::new();
    for v in log {
        out.push_str(&format!(
            "version {:<4} {}  {:<12} on {:<4} {}{}\n    {}\n",
            v.number,
            time(v.time),
            v.author,
            v.based_on,
            if v.comment.is_empty() {
                String::new()
            } else {
                format!("\"{}\"", v.comment)
            },
            v.confirm_by
                .map_or(String::new(), |d| format!(" (confirm by {})", time(d))),
            v.summary
        ));
    }
    out
}

fn render_status(s: &ClusterStatus) -> String {
    let mut out = format!("head: version {}", s.head);
    if let Some(p) = &s.pending {
        out.push_str(&format!(
            " (awaiting confirmation until {}, else version {} again)",
            time(p.deadline),
            p.revert_to
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<16} {:<12} {:>7} {:>7} {:<10} {:<24} {}\n",
        "MEMBER", "REACHABLE", "DESIRED", "APPLIED", "RELEASE", "VRRP", "LAST ERROR"
    ));
    let now = now_ms() / 1000;
    for m in &s.members {
        let reach = if m.connected {
            "yes".to_owned()
        } else if m.last_seen == 0 {
            "never".to_owned()
        } else {
            format!("no ({} s)", now.saturating_sub(m.last_seen))
        };
        let vrrp = m.frontend.as_ref().map_or("-".to_owned(), |f| {
            let roles: Vec<String> = f
                .routers
                .iter()
                .map(|r| format!("{}/{}:{}", r.vrid, r.family, r.state))
                .collect();
            if roles.is_empty() {
                "none".to_owned()
            } else {
                roles.join(" ")
            }
        });
        let drift = if m.configured && m.applied != m.desired {
            " *"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:<16} {:<12} {:>7} {:>7}{drift:<2} {:<8} {:<24} {}\n",
            if m.configured {
                m.name.clone()
            } else {
                format!("{} (not configured)", m.name)
            },
            reach,
            m.desired,
            m.applied,
            // The front-end's own release (what a package update changes), else the
            // member's.
            m.frontend
                .as_ref()
                .map(|f| f.release.as_str())
                .filter(|r| !r.is_empty())
                .unwrap_or(&m.release),
            vrrp,
            m.last_error.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// Unix milliseconds as UTC time with milliseconds, for people.
fn time_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Unix seconds as UTC time, for people.
fn time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_output_names_its_base() {
        assert_eq!(
            base_of(&format!("{VERSION_HEADER}7\n[frontend]\n")),
            Some(7)
        );
        assert_eq!(base_of("[frontend]\n"), None);
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(time_ms(1_500), "1970-01-01 00:00:01.500Z");
    }
}
