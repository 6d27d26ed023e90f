//! The `queue` request: every back-end's agent asked at once for its mail queue per
//! destination domain. A back-end whose agent does not answer in time, or answers wrong,
//! is listed with its error, never left out.

use std::{collections::BTreeSet, future::Future, sync::Arc, time::Duration};

use crate::{
    agent_wire::{DomainQueue, Endpoint},
    health::{agent_client, board::Board},
};

/// How long the agents have, together: each reads its MTA's queue (bounded by its own
/// command timeout) and replies.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(25);

/// The control socket's reply to `queue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStatus {
    /// The domain asked for, if one was.
    pub domain: Option<String>,
    pub backends: Vec<BackendQueue>,
}

/// One back-end's agent's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendQueue {
    pub backend: String,
    pub agent: String,
    /// Why there are no figures (unreachable agent, wrong key, the MTA's listing failed).
    pub error: Option<String>,
    #[serde(default)]
    pub mta: String,
    /// The agent's figures cover only the first part of its queue.
    #[serde(default)]
    pub truncated: bool,
    pub domains: Vec<DomainQueue>,
}

/// Asks every configured back-end with an agent (once per name and agent, whatever the
/// number of pools that have it).
pub fn ask(
    board: &Arc<Board>,
    domain: Option<String>,
) -> impl Future<Output = QueueStatus> + use<> {
    let mut seen = BTreeSet::new();
    let agents: Vec<(String, Endpoint)> = board
        .slots()
        .iter()
        .filter(|s| !s.removed.load(std::sync::atomic::Ordering::Relaxed))
        .filter_map(|s| Some((s.name.clone(), s.settings().backend.agent?)))
        .filter(|(name, e)| seen.insert((name.clone(), e.address)))
        .collect();
    gather(agents, domain, ASK_TIMEOUT)
}

async fn gather(
    agents: Vec<(String, Endpoint)>,
    domain: Option<String>,
    limit: Duration,
) -> QueueStatus {
    let asks = agents.into_iter().map(|(backend, agent)| {
        let domain = domain.clone();
        async move {
            let mut b = BackendQueue {
                backend,
                agent: agent.address.to_string(),
                ..BackendQueue::default()
            };
            match agent_client::queue(agent, limit).await {
                Ok(r) => {
                    b.mta = r.mta;
                    b.truncated = r.truncated;
                    b.domains = r
                        .domains
                        .into_iter()
                        .filter(|d| domain.as_ref().is_none_or(|want| d.domain == *want))
                        .collect();
                }
                Err(e) => b.error = Some(e.to_string()),
            }
            b
        }
    });
    QueueStatus {
        backends: futures_util::future::join_all(asks).await,
        domain,
    }
}

/// The table `robustifier queue status` prints: one row per domain and back-end, the most
/// deferred mail first, then the back-ends whose agents gave no figures, with why.
pub fn render(s: &QueueStatus) -> String {
    let mut rows: Vec<(&DomainQueue, &BackendQueue)> = s
        .backends
        .iter()
        .flat_map(|b| b.domains.iter().map(move |d| (d, b)))
        .collect();
    rows.sort_by(|(a, ab), (b, bb)| {
        (b.deferred, b.queued, &a.domain, &ab.backend).cmp(&(
            a.deferred,
            a.queued,
            &b.domain,
            &bb.backend,
        ))
    });
    let mut out = format!(
        "{:<32} {:<16} {:>7} {:>8} {:>11}  reason\n",
        "domain", "backend", "queued", "deferred", "oldest_secs"
    );
    for (d, b) in rows {
        let domain = if d.domain.is_empty() {
            "(no domain)"
        } else {
            &d.domain
        };
        out.push_str(&format!(
            "{:<32} {:<16} {:>7} {:>8} {:>11}  {}\n",
            domain,
            b.backend,
            d.queued,
            d.deferred.map_or("-".to_owned(), |n| n.to_string()),
            d.oldest_secs,
            d.reason
        ));
    }
    for b in &s.backends {
        if let Some(e) = &b.error {
            out.push_str(&format!("{:<32} {:<16} error: {e}\n", "-", b.backend));
        } else if b.truncated {
            out.push_str(&format!(
                "{:<32} {:<16} (figures of the first part of its queue only)\n",
                "-", b.backend
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dq(domain: &str, queued: u32, deferred: Option<u32>) -> DomainQueue {
        DomainQueue {
            domain: domain.into(),
            queued,
            deferred,
            oldest_secs: 60,
            reason: "4.4.1 connect refused".into(),
        }
    }

    #[test]
    fn rendered_by_deferred_count_with_silent_agents_named() {
        let s = QueueStatus {
            domain: None,
            backends: vec![
                BackendQueue {
                    backend: "mx1".into(),
                    agent: "198.18.0.1:7025".into(),
                    domains: vec![dq("a.example", 9, Some(1)), dq("b.example", 3, Some(3))],
                    ..BackendQueue::default()
                },
                BackendQueue {
                    backend: "mx2".into(),
                    agent: "198.18.0.2:7025".into(),
                    error: Some("connect: refused".into()),
                    ..BackendQueue::default()
                },
                BackendQueue {
                    backend: "mx3".into(),
                    agent: "198.18.0.3:7025".into(),
                    domains: vec![dq("b.example", 2, None)],
                    ..BackendQueue::default()
                },
            ],
        };
        let text = render(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[1].starts_with("b.example") && lines[1].contains("mx1"));
        assert!(lines[2].starts_with("a.example"));
        assert!(lines[3].starts_with("b.example") && lines[3].contains(" - "));
        assert!(lines[4].contains("mx2") && lines[4].contains("error: connect: refused"));
    }

    #[tokio::test]
    async fn an_agent_that_does_not_answer_is_listed_with_its_error() {
        // Bound and never accepted from: the connection waits in the backlog.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let at = |address| Endpoint { address, key: None };
        let s = gather(
            vec![
                ("mx1".into(), at(silent.local_addr().unwrap())),
                ("mx2".into(), at(closed)),
            ],
            Some("a.example".into()),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(s.backends.len(), 2);
        assert_eq!(s.backends[0].error.as_deref(), Some("timed out"));
        assert!(
            s.backends[1]
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("connect")),
            "{s:?}"
        );
    }
}
