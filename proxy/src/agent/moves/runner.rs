//! A move job: passes over the queue until one finds nothing left to move.
//!
//! A pass lists the queue; first it settles the messages the journal left unfinished
//! (a `sent` one is removed at the source, a `sending` one is looked for at the target
//! before it is sent again, one gone from the queue is dropped), then every other message
//! with recipients in the domain is held, read, sent to a target and removed. A target
//! that is down (or says 4xx) ends the pass: the message stays held and the job tries
//! again after a pause growing from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] (or at once when
//! re-aimed). A 5xx leaves the message held at the source, reported as refused and not
//! tried again by this job.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::Arc,
    time::Duration,
};

use tracing::{info, warn};

use super::{
    Job,
    journal::{self, Aim, Pending, Record, Sending},
    mta::{self, MtaError, Queued, Recipient},
    submit::{self, Outcome, SubmitError, TOKEN_HEADER},
};
use crate::{
    agent::Options,
    agent_wire::{MoveState, RefusedMessage},
};

pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Refused messages listed in the status.
pub const MAX_REFUSED_LISTED: usize = 100;

/// What a move asks of the host it runs on: its MTA's five steps, and whether a target's
/// agent already has a message (the duplicate check).
pub trait Host: Send + Sync + 'static {
    fn list(&self) -> impl Future<Output = Result<Vec<Queued>, MtaError>> + Send;
    fn hold(
        &self,
        m: &Queued,
        moving: &[Recipient],
    ) -> impl Future<Output = Result<(), MtaError>> + Send;
    fn release(
        &self,
        m: &Queued,
        moving: &[Recipient],
    ) -> impl Future<Output = Result<(), MtaError>> + Send;
    fn content(&self, m: &Queued) -> impl Future<Output = Result<Vec<u8>, MtaError>> + Send;
    fn remove(
        &self,
        m: &Queued,
        moved: &[Recipient],
        kept: &[Recipient],
    ) -> impl Future<Output = Result<(), MtaError>> + Send;
    /// `Some(true)`: a target's agent has a message carrying `token` from `sender`;
    /// `Some(false)`: every target's agent said no; `None`: one could not say.
    fn already_there(
        &self,
        aim: &Aim,
        token: &str,
        sender: &str,
    ) -> impl Future<Output = Option<bool>> + Send;
    /// The name the agent gives in EHLO and in move tokens.
    fn name(&self) -> String;
}

/// The agent's own MTA, as `--mta` names it.
impl Host for Arc<Options> {
    async fn list(&self) -> Result<Vec<Queued>, MtaError> {
        mta::list(self).await
    }
    async fn hold(&self, m: &Queued, moving: &[Recipient]) -> Result<(), MtaError> {
        mta::hold(self, m, moving).await
    }
    async fn release(&self, m: &Queued, moving: &[Recipient]) -> Result<(), MtaError> {
        mta::release(self, m, moving).await
    }
    async fn content(&self, m: &Queued) -> Result<Vec<u8>, MtaError> {
        mta::content(self, m).await
    }
    async fn remove(
        &self,
        m: &Queued,
        moved: &[Recipient],
        kept: &[Recipient],
    ) -> Result<(), MtaError> {
        mta::remove(self, m, moved, kept).await
    }
    async fn already_there(&self, aim: &Aim, token: &str, sender: &str) -> Option<bool> {
        super::find::already_there(self, aim, token, sender).await
    }
    fn name(&self) -> String {
        host_name()
    }
}

/// This host's name (the kernel's), for EHLO and move tokens.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/'))
        .unwrap_or_else(|| "robustifier-agent".to_owned())
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Mta(#[from] MtaError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("the pool has no back-ends")]
    NoTargets,
}

/// What the runner keeps besides the shared status.
#[derive(Debug, Default)]
pub struct RunState {
    pub pending: BTreeMap<String, Pending>,
    pub seen: BTreeSet<String>,
    pub refused: BTreeMap<String, String>,
}

/// Runs `job` until a pass finds nothing left to move.
pub async fn run<H: Host>(host: H, job: Arc<Job>, mut st: RunState) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match pass(&host, &job, &mut st).await {
            Ok(0) if st.pending.is_empty() => break,
            Ok(_) => {
                backoff = BACKOFF_MIN;
                job.update(|s| s.last_error = None);
            }
            Err(e) => {
                warn!(domain = %job.pattern, error = %e, "move pass failed; retrying");
                job.update(|s| s.last_error = Some(e.to_string()));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = job.wake.notified() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    let at = super::now();
    if let Err(e) = job.append(&Record::Finished { at }) {
        // The next start resumes the job, finds nothing and finishes it again.
        warn!(domain = %job.pattern, error = %e, "cannot journal the end of a move");
    }
    job.update(|s| {
        s.state = MoveState::Done;
        s.finished = Some(at);
        s.last_error = None;
    });
    let s = job.status();
    info!(
        domain = %s.domain,
        pool = %s.pool,
        found = s.found,
        moved = s.moved,
        recipients_moved = s.recipients_moved,
        recipients_kept = s.recipients_kept,
        already_there = s.already_there,
        refused = s.refused.len(),
        "move done"
    );
}

/// One pass; returns how many messages it found still to move (those it settled from the
/// journal included).
pub async fn pass<H: Host>(host: &H, job: &Job, st: &mut RunState) -> Result<usize, PassError> {
    compact(job, st)?;
    let queue = host.list().await?;
    let by_id: BTreeMap<&str, &Queued> = queue.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut work = 0;
    for (id, p) in st.pending.clone() {
        let Some(m) = by_id.get(id.as_str()) else {
            if let Pending::Sent(s) = p {
                // Removed before `done` was on disk: it is done.
                finish(host, job, st, *s).await?;
            } else {
                job.append(&Record::Gone { id: id.clone() })?;
                st.pending.remove(&id);
            }
            continue;
        };
        match p {
            Pending::Holding => {} // handled with the others below
            Pending::Sent(s) => {
                work += 1;
                finish(host, job, st, *s).await?;
            }
            Pending::Sending(mut s) => {
                work += 1;
                // The content may have changed since (a re-injection); the recipients are
                // the journal's.
                s.message = (*m).clone();
                let aim = job.aim();
                match host.already_there(&aim, &s.token, &s.message.sender).await {
                    Some(true) => {
                        info!(domain = %job.pattern, queue_id = %id, "the target already has it; not sent again");
                        s.already_there = true;
                        job.append(&Record::Sent {
                            id: id.clone(),
                            reply: "already there".into(),
                            already_there: true,
                        })?;
                        st.pending.insert(id.clone(), Pending::Sent(s.clone()));
                        finish(host, job, st, *s).await?;
                    }
                    there => {
                        if there.is_none() {
                            warn!(domain = %job.pattern, queue_id = %id, "cannot ask the target whether it has the message; sending it again (a possible duplicate)");
                        }
                        let content = host.content(&s.message).await?;
                        send(host, job, st, &s.message, &s.moved, &s.kept, &content).await?;
                    }
                }
            }
        }
    }
    for m in &queue {
        if st.refused.contains_key(&m.id)
            || matches!(
                st.pending.get(&m.id),
                Some(Pending::Sending(_) | Pending::Sent(_))
            )
        {
            continue;
        }
        let (moving, kept): (Vec<Recipient>, Vec<Recipient>) = m
            .recipients
            .iter()
            .cloned()
            .partition(|r| job.pattern.matches(domain_of(&r.address)));
        if moving.is_empty() {
            if matches!(st.pending.get(&m.id), Some(Pending::Holding)) {
                // Held by this job before its recipients there went (delivered before
                // the hold took): nothing to move, so it goes back to the MTA.
                host.release(m, &m.recipients).await?;
                job.append(&Record::Gone { id: m.id.clone() })?;
                st.pending.remove(&m.id);
            }
            continue;
        }
        work += 1;
        if st.seen.insert(m.id.clone()) {
            job.update(|s| s.found += 1);
        }
        job.append(&Record::Holding { id: m.id.clone() })?;
        st.pending.insert(m.id.clone(), Pending::Holding);
        let content = match host.hold(m, &moving).await {
            Ok(()) => host.content(m).await,
            Err(e) => Err(e),
        };
        let content = match content {
            Ok(c) => c,
            Err(MtaError::Gone(_)) => {
                job.append(&Record::Gone { id: m.id.clone() })?;
                st.pending.remove(&m.id);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        send(host, job, st, m, &moving, &kept, &content).await?;
        if job.wants_compaction() {
            compact(job, st)?;
        }
    }
    Ok(work)
}

/// Rewrites the journal with what is still needed.
fn compact(job: &Job, st: &RunState) -> Result<(), PassError> {
    let aim = job.aim();
    let mut records = vec![
        Record::Start {
            domain: job.pattern.to_string(),
            aim,
        },
        Record::Status {
            status: job.status(),
            seen: st.seen.clone(),
        },
    ];
    for (id, reply) in &st.refused {
        records.push(Record::Refused {
            id: id.clone(),
            reply: reply.clone(),
        });
    }
    for (id, p) in &st.pending {
        records.extend(journal::pending_records(id, p));
    }
    job.compact(&records)?;
    Ok(())
}

/// Sends `m` for `moved` to the first target that takes it or refuses it.
async fn send<H: Host>(
    host: &H,
    job: &Job,
    st: &mut RunState,
    m: &Queued,
    moved: &[Recipient],
    kept: &[Recipient],
    content: &[u8],
) -> Result<(), PassError> {
    let name = host.name();
    let token = format!("{name}/{}", m.id);
    let data = submit::data(&format!("{TOKEN_HEADER}: {token}"), content);
    let rcpts: Vec<String> = moved.iter().map(|r| r.address.clone()).collect();
    let aim = job.aim();
    let mut last = None;
    for &target in &aim.targets {
        let mut session = match submit::connect(target, &name).await {
            Ok(s) => s,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match session.envelope_and_body(&m.sender, &rcpts, &data).await {
            Ok(None) => {}
            Ok(Some(refusal)) => return refused(job, st, &m.id, refusal),
            Err(e) => {
                last = Some(e);
                continue;
            }
        }
        let s = Sending {
            message: m.clone(),
            moved: moved.to_vec(),
            kept: kept.to_vec(),
            target,
            token: token.clone(),
            already_there: false,
        };
        job.append(&Record::Sending {
            message: s.message.clone(),
            moved: s.moved.clone(),
            kept: s.kept.clone(),
            target,
            token: token.clone(),
        })?;
        st.pending
            .insert(m.id.clone(), Pending::Sending(Box::new(s.clone())));
        // From the final dot on, the target may have it whatever happens: a failure here
        // leaves it `sending`, for the duplicate check of the next pass.
        match session.finish().await? {
            Outcome::Accepted(reply) => {
                job.append(&Record::Sent {
                    id: m.id.clone(),
                    reply: reply.clone(),
                    already_there: false,
                })?;
                st.pending
                    .insert(m.id.clone(), Pending::Sent(Box::new(s.clone())));
                info!(domain = %job.pattern, queue_id = %m.id, %target, %reply, "message moved");
                return finish(host, job, st, s).await;
            }
            Outcome::Refused(reply) => return refused(job, st, &m.id, reply),
        }
    }
    Err(last.map_or(PassError::NoTargets, PassError::Submit))
}

fn refused(job: &Job, st: &mut RunState, id: &str, reply: String) -> Result<(), PassError> {
    warn!(domain = %job.pattern, queue_id = %id, %reply, "the target refused the message; it stays held here");
    job.append(&Record::Refused {
        id: id.to_owned(),
        reply: reply.clone(),
    })?;
    st.pending.remove(id);
    st.refused.insert(id.to_owned(), reply.clone());
    job.update(|s| {
        if s.refused.len() < MAX_REFUSED_LISTED {
            s.refused.push(RefusedMessage {
                queue_id: id.to_owned(),
                reply,
            });
        }
    });
    Ok(())
}

/// Removes a message the target has from the source.
async fn finish<H: Host>(
    host: &H,
    job: &Job,
    st: &mut RunState,
    s: Sending,
) -> Result<(), PassError> {
    match host.remove(&s.message, &s.moved, &s.kept).await {
        Ok(()) | Err(MtaError::Gone(_)) => {}
        Err(e) => return Err(e.into()),
    }
    job.append(&Record::Done {
        id: s.message.id.clone(),
    })?;
    st.pending.remove(&s.message.id);
    job.update(|status| {
        status.moved += 1;
        status.recipients_moved += s.moved.len() as u32;
        status.recipients_kept += s.kept.len() as u32;
        status.already_there += u32::from(s.already_there);
    });
    Ok(())
}

/// The domain of an address (`<>` and local-only addresses have none).
pub fn domain_of(address: &str) -> &str {
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
}
