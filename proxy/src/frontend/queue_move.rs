//! The `queue move` request: a domain's queued mail handed over from every back-end
//! outside a pool to that pool. The front-end only asks: each source back-end's agent
//! holds, re-submits and removes the messages itself (see [`crate::agent_wire::MoveRequest`])
//! and answers the same request again with its progress. Every source is listed in the
//! reply, an agent that cannot be asked with its error, never left out.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use crate::{
    agent_wire::{Endpoint, MoveRequest, MoveState, MoveStatus},
    config::{Config, Protocol, routes},
    health::agent_client,
    route::{DomainPattern, PatternError},
};

/// How long the agents have, together, to start a move or say where it stands: starting
/// only records the move (the agent hands the mail over in the background).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(25);

/// Why a move cannot be asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    #[error("{0:?} is not a domain pattern: {1}")]
    Domain(String, PatternError),
    #[error("no pool {0}")]
    NoPool(String),
    #[error("pool {0} cannot take SMTP mail: {1}")]
    NotSmtp(String, String),
    #[error("pool {0} has no back-ends")]
    NoBackends(String),
    #[error("no [[domain_queue]] names {0}: say which pool")]
    NoQueue(String),
}

/// The control socket's reply to `queue move`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveReport {
    /// The pattern as normalised (`slow.example`, `.slow.example`).
    pub domain: String,
    pub pool: String,
    pub backends: Vec<BackendMove>,
}

/// One source back-end's agent's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendMove {
    pub backend: String,
    /// The agent's address; empty when the back-end has none.
    pub agent: String,
    /// Why there is no status (no agent, unreachable, wrong key, the agent refused).
    pub error: Option<String>,
    pub status: Option<MoveStatus>,
}

impl MoveReport {
    /// Every source has finished (or cannot be asked: waiting would not change that).
    pub fn settled(&self) -> bool {
        self.backends.iter().all(|b| {
            b.error.is_some()
                || b.status
                    .as_ref()
                    .is_some_and(|s| s.state != MoveState::Running)
        })
    }

    /// The back-ends still moving, or not answering, by name.
    pub fn not_done(&self) -> Vec<&str> {
        self.backends
            .iter()
            .filter(|b| {
                !b.status
                    .as_ref()
                    .is_some_and(|s| s.state == MoveState::Done)
            })
            .map(|b| b.backend.as_str())
            .collect()
    }

    /// Sums over the sources: (messages moved, recipients moved, messages refused).
    pub fn totals(&self) -> (u32, u32, u32) {
        self.backends
            .iter()
            .filter_map(|b| b.status.as_ref())
            .fold((0, 0, 0), |(m, r, x), s| {
                (
                    m + s.moved,
                    r + s.recipients_moved,
                    x + s.refused.len() as u32,
                )
            })
    }
}

/// A checked move: what to ask and whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub request: MoveRequest,
    /// Source back-ends by name with their agent (`None`: the back-end has none).
    pub sources: Vec<(String, Option<Endpoint>)>,
}

/// Checks `domain` and `pool` against the running configuration and lists the sources:
/// every back-end with an agent outside `pool` (once per name and agent, whatever the
/// number of pools that have it), and those without one (listed with that error). An
/// empty `pool` is the pattern's `[[domain_queue]]` pool.
pub fn plan(cfg: &Config, domain: &str, pool: &str, status_only: bool) -> Result<Plan, MoveError> {
    let pattern =
        DomainPattern::parse(domain).map_err(|e| MoveError::Domain(domain.to_owned(), e))?;
    let pool = if pool.is_empty() {
        cfg.domain_queues
            .iter()
            .find(|q| q.domains.contains(&pattern))
            .map(|q| q.pool.as_str())
            .ok_or_else(|| MoveError::NoQueue(pattern.to_string()))?
    } else {
        pool
    };
    let target = routes::usable(&cfg.pools[..], pool, Protocol::Smtp).map_err(|e| match e {
        crate::route::PoolError::Missing { name } => MoveError::NoPool(name),
        other => MoveError::NotSmtp(pool.to_owned(), other.to_string()),
    })?;
    if target.backends.is_empty() {
        return Err(MoveError::NoBackends(pool.to_owned()));
    }
    let targets: Vec<SocketAddr> = target.backends.iter().map(|b| b.address).collect();
    // The targets' agents answer the sources' duplicate check after an interrupted move.
    let target_agents: Vec<SocketAddr> = target
        .backends
        .iter()
        .filter_map(|b| b.agent.map(|a| a.address))
        .collect();
    let inside: BTreeSet<&str> = target.backends.iter().map(|b| b.name.as_str()).collect();
    let mut seen = BTreeSet::new();
    let sources = cfg
        .pools
        .iter()
        .filter(|p| p.name != pool)
        .flat_map(|p| p.backends.iter())
        .filter(|b| !inside.contains(b.name.as_str()))
        .filter(|b| seen.insert((b.name.clone(), b.agent.map(|a| a.address))))
        .map(|b| (b.name.clone(), b.agent))
        .collect();
    Ok(Plan {
        request: MoveRequest {
            domain: pattern.to_string(),
            pool: pool.to_owned(),
            targets,
            status_only,
            target_agents,
        },
        sources,
    })
}

/// Asks every source's agent at once, all within `limit`.
pub async fn ask(plan: Plan, limit: Duration) -> MoveReport {
    let request = &plan.request;
    let asks = plan.sources.iter().map(|(backend, agent)| async move {
        let mut b = BackendMove {
            backend: backend.clone(),
            ..BackendMove::default()
        };
        match agent {
            None => b.error = Some("the back-end has no agent".to_owned()),
            Some(agent) => {
                b.agent = agent.address.to_string();
                match agent_client::move_domain(*agent, request, limit).await {
                    Ok(s) => b.status = Some(s),
                    Err(e) => b.error = Some(e.to_string()),
                }
            }
        }
        b
    });
    let backends = futures_util::future::join_all(asks).await;
    MoveReport {
        domain: plan.request.domain.clone(),
        pool: plan.request.pool.clone(),
        backends,
    }
}

/// How often a move the front-end started itself is asked for its progress.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(5);
/// How long such a move is followed; one still running after it is left to the agents
/// (which go on) and to the operator's `queue moves`.
pub const FOLLOW_FOR: Duration = Duration::from_secs(6 * 3600);

/// A move the front-end starts itself (`by`: `reload` or `isolation`): said in the events
/// when asked for, and again with its counts once every source has finished, asking for
/// the progress every `every` for at most [`FOLLOW_FOR`].
pub async fn follow(
    plan: Plan,
    by: &'static str,
    events: crate::events::Events,
    every: Duration,
) -> MoveReport {
    use crate::events::Kind;
    let (domain, pool) = (plan.request.domain.clone(), plan.request.pool.clone());
    tracing::info!(%domain, %pool, by, "queue move started");
    events.emit(Kind::QueueMoveStarted {
        domain: domain.clone(),
        pool: pool.clone(),
        by: by.to_owned(),
    });
    let mut status = plan.clone();
    status.request.status_only = true;
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    let mut report = ask(plan, ASK_TIMEOUT).await;
    while !report.settled() {
        if tokio::time::Instant::now() + every > deadline {
            tracing::warn!(%domain, %pool, "queue move still running; no longer followed");
            return report;
        }
        tokio::time::sleep(every).await;
        report = ask(status.clone(), ASK_TIMEOUT).await;
    }
    let (moved, recipients_moved, refused) = report.totals();
    let failed = report
        .backends
        .iter()
        .filter_map(|b| b.error.as_ref().map(|e| format!("{} ({e})", b.backend)))
        .collect();
    tracing::info!(%domain, %pool, moved, recipients_moved, refused, "queue move finished");
    events.emit(Kind::QueueMoveFinished {
        domain,
        pool,
        moved,
        recipients_moved,
        refused,
        failed,
    });
    report
}

/// The patterns whose move a reload calls for: each pattern of a block routed always
/// (not `auto`) that is new, or whose pool changed, with its pool.
pub fn moves_for_reload(old: &Config, new: &Config) -> Vec<(String, String)> {
    let before: std::collections::BTreeMap<&DomainPattern, &str> = old
        .domain_queues
        .iter()
        .filter(|q| !q.auto)
        .flat_map(|q| q.domains.iter().map(move |d| (d, q.pool.as_str())))
        .collect();
    new.domain_queues
        .iter()
        .filter(|q| !q.auto)
        .flat_map(|q| q.domains.iter().map(move |d| (d, q.pool.as_str())))
        .filter(|(d, pool)| before.get(d) != Some(pool))
        .map(|(d, pool)| (d.to_string(), pool.to_owned()))
        .collect()
}

/// The table `robustifier queue move` prints: one row per source back-end.
pub fn render(r: &MoveReport) -> String {
    let mut out = format!("moving {} to pool {}\n", r.domain, r.pool);
    out.push_str(&format!(
        "{:<16} {:<8} {:>6} {:>6} {:>10} {:>9} {:>7}  last error\n",
        "backend", "state", "found", "moved", "rcpt_moved", "rcpt_kept", "refused"
    ));
    for b in &r.backends {
        match (&b.status, &b.error) {
            (Some(s), _) => {
                let state = match s.state {
                    MoveState::Running => "running",
                    MoveState::Done => "done",
                    MoveState::None => "none",
                };
                out.push_str(&format!(
                    "{:<16} {:<8} {:>6} {:>6} {:>10} {:>9} {:>7}  {}\n",
                    b.backend,
                    state,
                    s.found,
                    s.moved,
                    s.recipients_moved,
                    s.recipients_kept,
                    s.refused.len(),
                    s.last_error.as_deref().unwrap_or("-")
                ));
            }
            (None, e) => out.push_str(&format!(
                "{:<16} error: {}\n",
                b.backend,
                e.as_deref().unwrap_or("no answer")
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let text = r#"
[frontend]
name = "fe"
[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["198.18.0.10"]
pool = "mx"
[[pool]]
name = "mx"
identity = "none"
agent_insecure = true
backend = [
  { name = "mx1", address = "198.18.0.1:25", agent = "198.18.0.1:7025" },
  { name = "mx2", address = "198.18.0.2:25" },
]
[[pool]]
name = "slowq"
identity = "none"
agent_insecure = true
backend = [{ name = "slow1", address = "198.18.0.5:25", agent = "198.18.0.5:7025" }]
"#;
        Config::parse(
            std::path::Path::new("/etc/robustifier/robustifier.toml"),
            text,
        )
        .unwrap()
    }

    #[test]
    fn a_move_goes_from_every_other_back_end_once_to_the_pool() {
        let p = plan(&cfg(), "Slow.Example.", "slowq", false).unwrap();
        assert_eq!(p.request.domain, "slow.example");
        assert_eq!(p.request.pool, "slowq");
        assert_eq!(p.request.targets, vec!["198.18.0.5:25".parse().unwrap()]);
        let names: Vec<&str> = p.sources.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["mx1", "mx2"]);
        assert!(p.sources[1].1.is_none());
        let sub = plan(&cfg(), ".slow.example", "slowq", true).unwrap();
        assert_eq!(sub.request.domain, ".slow.example");
        assert!(sub.request.status_only);
    }

    #[test]
    fn bad_domains_and_pools_are_refused_with_why() {
        let c = cfg();
        assert_eq!(
            plan(&c, "slow.example", "nowhere", false)
                .unwrap_err()
                .to_string(),
            "no pool nowhere"
        );
        assert!(matches!(
            plan(&c, "bob@slow.example", "slowq", false),
            Err(MoveError::Domain(..))
        ));
        assert!(matches!(
            plan(&c, "", "slowq", false),
            Err(MoveError::Domain(_, PatternError::Empty))
        ));
        let mut empty = c.clone();
        empty.pools[1].backends.clear();
        assert_eq!(
            plan(&empty, "slow.example", "slowq", false)
                .unwrap_err()
                .to_string(),
            "pool slowq has no back-ends"
        );
    }

    fn status(state: MoveState, moved: u32) -> MoveStatus {
        MoveStatus {
            domain: "slow.example".into(),
            pool: "slowq".into(),
            state,
            found: moved + 1,
            moved,
            recipients_moved: moved * 2,
            recipients_kept: 1,
            already_there: 0,
            refused: Vec::new(),
            last_error: None,
            started: 1,
            finished: None,
        }
    }

    #[test]
    fn rendered_and_settled_only_when_no_source_runs() {
        let mut r = MoveReport {
            domain: "slow.example".into(),
            pool: "slowq".into(),
            backends: vec![
                BackendMove {
                    backend: "mx1".into(),
                    agent: "198.18.0.1:7025".into(),
                    error: None,
                    status: Some(status(MoveState::Running, 3)),
                },
                BackendMove {
                    backend: "mx2".into(),
                    agent: String::new(),
                    error: Some("the back-end has no agent".into()),
                    status: None,
                },
            ],
        };
        let text = render(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[2].starts_with("mx1") && lines[2].contains("running"));
        assert!(lines[3].contains("mx2") && lines[3].contains("error: the back-end has no agent"));
        assert!(!r.settled());
        assert_eq!(r.not_done(), ["mx1", "mx2"]);
        r.backends[0].status = Some(status(MoveState::Done, 4));
        assert!(r.settled());
        assert_eq!(r.not_done(), ["mx2"]);
        assert_eq!(r.totals(), (4, 8, 0));
    }

    #[test]
    fn a_reload_moves_new_patterns_and_changed_pools_but_not_auto_blocks() {
        let with = |blocks: &str| {
            let text = format!(
                "{}\n{blocks}",
                r#"
[frontend]
name = "fe"
[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["198.18.0.10"]
pool = "mx"
[[pool]]
name = "mx"
identity = "none"
backend = [{ name = "mx1", address = "198.18.0.1:25" }]
[[pool]]
name = "slowq"
identity = "none"
backend = [{ name = "slow1", address = "198.18.0.5:25" }]
"#
            );
            Config::parse(std::path::Path::new("/etc/r.toml"), &text).unwrap()
        };
        let old = with("[[domain_queue]]\ndomains = [\"a.example\"]\npool = \"slowq\"\n");
        let new = with(
            "[[domain_queue]]\ndomains = [\"a.example\", \".b.example\"]\npool = \"slowq\"\n\
             [[domain_queue]]\ndomains = [\"c.example\"]\npool = \"mx\"\n\
             [[domain_queue]]\ndomains = [\"d.example\"]\npool = \"slowq\"\nauto = true\ndeferred_alarm = 5\n",
        );
        assert_eq!(
            moves_for_reload(&old, &new),
            [
                (".b.example".to_owned(), "slowq".to_owned()),
                ("c.example".to_owned(), "mx".to_owned())
            ]
        );
        let moved = with("[[domain_queue]]\ndomains = [\"a.example\"]\npool = \"mx\"\n");
        assert_eq!(
            moves_for_reload(&old, &moved),
            [("a.example".to_owned(), "mx".to_owned())]
        );
        assert!(moves_for_reload(&old, &old).is_empty());
    }

    #[tokio::test]
    async fn an_agent_that_does_not_answer_is_listed_with_its_error() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let at = |address| Some(Endpoint { address, key: None });
        let mut p = plan(&cfg(), "slow.example", "slowq", false).unwrap();
        p.sources = vec![
            ("mx1".into(), at(silent.local_addr().unwrap())),
            ("mx2".into(), at(closed)),
            ("mx3".into(), None),
        ];
        let r = ask(p, Duration::from_millis(300)).await;
        assert_eq!(r.backends.len(), 3);
        assert_eq!(r.backends[0].error.as_deref(), Some("timed out"));
        assert!(
            r.backends[1]
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("connect")),
            "{r:?}"
        );
        assert_eq!(
            r.backends[2].error.as_deref(),
            Some("the back-end has no agent")
        );
    }
}
