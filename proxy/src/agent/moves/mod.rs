//! Moving a domain's queued mail to another pool ([`crate::agent_wire::Op::Move`]).
//!
//! Each make's per-message commands are in a file of their own ([`postfix`], [`exim`],
//! [`opensmtpd`]) behind the same five steps, which [`mta`] dispatches: list the queue,
//! hold a message, read its content, release it, and remove the moved recipients.
//!
//! A move request starts a job for its domain pattern unless one is running (one job per
//! pattern: the same request again gets its status, one with other targets re-aims it).
//! The job ([`runner`]) runs in the background and keeps a journal ([`journal`]) in the
//! agent's `--state-dir`; on start the agent resumes every unfinished job by itself
//! ([`resume`]). Each message goes through these steps, each journalled (fsynced) first:
//!
//! 1. `holding`: the message is held in the MTA and its content read;
//! 2. EHLO, MAIL FROM (the original sender), RCPT TO (the moved recipients), DATA and the
//!    content with an `X-Robustifier-Move: <agent host>/<queue id>` header (the move
//!    token), all but the final dot ([`submit`]);
//! 3. `sending` (the message, its recipients, the target, the token), then the final dot;
//! 4. `sent`, right after the target's 2xx;
//! 5. the moved recipients are removed at the source (the whole message if none is
//!    kept), then `done`.
//!
//! After a restart, a `holding` message is simply taken again by the next pass (or
//! released if nothing of it is left to move), a `sent` one goes straight to removal, and
//! a `sending` one is first looked for at the target ([`find`]) before it is sent again.
//!
//! The duplicate window: an agent stopped after the target's final 2xx and before `sent`
//! is on disk (one fsync of one line) leaves the message `sending` although the target
//! has it. The check closes it where it can: the target's agents are asked
//! ([`crate::agent_wire::Op::Find`]) whether their MTA queues a message of that sender
//! with that token; if one says yes the message is counted `already_there` and not sent
//! again. It cannot see a copy the target already delivered onwards, nor answer when the
//! target's agents are unreachable or the request named none (`target_agents`): the
//! message is then sent again and the possible duplicate logged, rather than lost.
//!
//! A second, narrower window is Postfix's: it cannot drop one recipient of a queued
//! message, so a message with recipients kept at the source is re-injected for them before
//! the original is deleted; an agent stopped between the two re-injects it again on
//! restart (a duplicate for the kept recipients only).
//!
//! Postfix and Exim hold the whole message: a message the target refuses (5xx) stays held
//! with its kept recipients until an operator acts (`postsuper -H`, `exim -Mt`).

pub mod exim;
pub mod find;
pub mod journal;
pub mod mta;
pub mod opensmtpd;
pub mod postfix;
pub mod queued;
pub mod runner;
pub mod submit;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex, MutexGuard},
};

use tokio::sync::Notify;
use tracing::{info, warn};

use super::{Mta, Options};
use crate::{
    agent_wire::{MoveReply, MoveRequest, MoveState, MoveStatus},
    route::domains::DomainPattern,
};
use journal::{Aim, Journal, JournalError, Record};

/// Every job of this process, by journal path (a state directory and a pattern).
static JOBS: LazyLock<Mutex<HashMap<PathBuf, Arc<Job>>>> = LazyLock::new(Mutex::default);

fn jobs() -> MutexGuard<'static, HashMap<PathBuf, Arc<Job>>> {
    // A panic elsewhere while holding the lock leaves the map itself consistent.
    JOBS.lock().unwrap_or_else(|p| p.into_inner())
}

/// One domain's move, shared by its runner and the requests about it.
pub struct Job {
    pattern: DomainPattern,
    state: Mutex<Shared>,
    journal: Mutex<Journal>,
    /// Rouses the runner from its pause after a failure (the targets changed).
    wake: Notify,
}

struct Shared {
    status: MoveStatus,
    aim: Aim,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> MoveStatus {
        self.lock().status.clone()
    }

    pub fn aim(&self) -> Aim {
        self.lock().aim.clone()
    }

    fn update(&self, f: impl FnOnce(&mut MoveStatus)) {
        f(&mut self.lock().status)
    }

    fn append(&self, r: &Record) -> Result<(), JournalError> {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(r)
    }

    fn wants_compaction(&self) -> bool {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wants_compaction()
    }

    fn compact(&self, records: &[Record]) -> Result<(), JournalError> {
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .compact(records)
    }

    /// Sends the rest of the move to `aim`.
    fn reaim(&self, aim: Aim) -> Result<(), JournalError> {
        self.append(&Record::Aim { aim: aim.clone() })?;
        let mut s = self.lock();
        s.status.pool = aim.pool.clone();
        s.aim = aim;
        drop(s);
        self.wake.notify_one();
        Ok(())
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn fresh_status(domain: &str, pool: &str, state: MoveState) -> MoveStatus {
    MoveStatus {
        domain: domain.to_owned(),
        pool: pool.to_owned(),
        state,
        found: 0,
        moved: 0,
        recipients_moved: 0,
        recipients_kept: 0,
        already_there: 0,
        refused: Vec::new(),
        last_error: None,
        started: now(),
        finished: None,
    }
}

/// The reply to a move command whose argument is `arg` (a [`MoveRequest`]).
pub async fn command(o: &Options, arg: &str) -> MoveReply {
    match start(o, arg) {
        Ok(s) => MoveReply::Ok(s),
        Err(e) => MoveReply::Error(e),
    }
}

fn start(o: &Options, arg: &str) -> Result<MoveStatus, String> {
    let req: MoveRequest =
        serde_json::from_str(arg).map_err(|e| format!("not a move request: {e}"))?;
    let pattern =
        DomainPattern::parse(&req.domain).map_err(|e| format!("domain {:?}: {e}", req.domain))?;
    let Some(state_dir) = &o.state_dir else {
        return Err("moves need --state-dir".into());
    };
    if o.mta == Mta::Spool {
        return Err(mta::MtaError::Unsupported.to_string());
    }
    if !req.status_only && req.targets.is_empty() {
        return Err("the pool has no back-ends".into());
    }
    let path = journal::path_for(state_dir, &pattern.to_string());
    let aim = Aim {
        pool: req.pool.clone(),
        targets: req.targets.clone(),
        target_agents: req.target_agents.clone(),
    };
    let mut jobs = jobs();
    let job = jobs.get(&path).cloned();
    match job {
        Some(job) if req.status_only => Ok(job.status()),
        None if req.status_only => Ok(fresh_status(
            &pattern.to_string(),
            &req.pool,
            MoveState::None,
        )),
        Some(job) if job.status().state == MoveState::Running => {
            if job.aim() != aim {
                info!(domain = %pattern, pool = %aim.pool, targets = ?aim.targets, "move re-aimed");
                job.reaim(aim).map_err(|e| e.to_string())?;
            }
            Ok(job.status())
        }
        _ => {
            let journal = Journal::create(
                &path,
                &[Record::Start {
                    domain: pattern.to_string(),
                    aim: aim.clone(),
                }],
            )
            .map_err(|e| e.to_string())?;
            let status = fresh_status(&pattern.to_string(), &req.pool, MoveState::Running);
            info!(domain = %pattern, pool = %req.pool, targets = ?req.targets, "move started");
            let job = spawn(
                o,
                pattern,
                status,
                aim,
                journal,
                runner::RunState::default(),
            );
            jobs.insert(path, Arc::clone(&job));
            Ok(job.status())
        }
    }
}

fn spawn(
    o: &Options,
    pattern: DomainPattern,
    status: MoveStatus,
    aim: Aim,
    journal: Journal,
    st: runner::RunState,
) -> Arc<Job> {
    let running = status.state == MoveState::Running;
    let job = Arc::new(Job {
        pattern,
        state: Mutex::new(Shared { status, aim }),
        journal: Mutex::new(journal),
        wake: Notify::new(),
    });
    if running {
        tokio::spawn(runner::run(Arc::new(o.clone()), Arc::clone(&job), st));
    }
    job
}

/// Takes up the moves journalled in `o`'s state directory: an unfinished one resumes, a
/// finished one answers status requests until a new move of its pattern starts.
pub fn resume(o: &Options) {
    let Some(dir) = &o.state_dir else {
        return;
    };
    let paths = match journal::list(dir) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "cannot read the state directory; no move resumes");
            return;
        }
    };
    for path in paths {
        match resume_one(o, &path) {
            Ok(true) => info!(journal = %path.display(), "move resumed"),
            Ok(false) => {}
            Err(e) => warn!(journal = %path.display(), error = %e, "cannot resume a move"),
        }
    }
}

fn resume_one(o: &Options, path: &Path) -> Result<bool, String> {
    let r = journal::replay(path).map_err(|e| e.to_string())?;
    let pattern = DomainPattern::parse(&r.domain).map_err(|e| e.to_string())?;
    let mut status = r
        .status
        .clone()
        .unwrap_or_else(|| fresh_status(&r.domain, &r.aim.pool, MoveState::Running));
    status.pool = r.aim.pool.clone();
    status.found = status.found.max(r.seen.len() as u32);
    for d in &r.done {
        status.moved += 1;
        status.recipients_moved += d.recipients_moved;
        status.recipients_kept += d.recipients_kept;
        status.already_there += u32::from(d.already_there);
    }
    for (id, reply) in &r.refused {
        if status.refused.len() < runner::MAX_REFUSED_LISTED
            && !status.refused.iter().any(|x| &x.queue_id == id)
        {
            status.refused.push(crate::agent_wire::RefusedMessage {
                queue_id: id.clone(),
                reply: reply.clone(),
            });
        }
    }
    status.state = if r.finished.is_some() {
        MoveState::Done
    } else {
        MoveState::Running
    };
    status.finished = r.finished;
    let running = r.finished.is_none();
    // Rewritten at once: a last line cut short by the stop must not have the next record
    // appended to it.
    let mut records = vec![
        Record::Start {
            domain: r.domain.clone(),
            aim: r.aim.clone(),
        },
        Record::Status {
            status: status.clone(),
            seen: r.seen.clone(),
        },
    ];
    records.extend(r.refused.iter().map(|(id, reply)| Record::Refused {
        id: id.clone(),
        reply: reply.clone(),
    }));
    for (id, p) in &r.pending {
        records.extend(journal::pending_records(id, p));
    }
    records.extend(r.finished.map(|at| Record::Finished { at }));
    let journal = Journal::create(path, &records).map_err(|e| e.to_string())?;
    let st = runner::RunState {
        pending: r.pending,
        seen: r.seen,
        refused: r.refused,
    };
    let job = spawn(o, pattern, status, r.aim, journal, st);
    jobs().insert(path.to_owned(), job);
    Ok(running)
}

#[cfg(test)]
mod tests;
