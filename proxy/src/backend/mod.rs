//! The back-end side: pools of back-ends, choosing one for a session (with failover to the
//! next), and the protocol legs that talk to them.
//!
//! Selection ([`pools`], [`select`]) reads each back-end's load record: back-ends that are
//! down, draining or over their group's thresholds are left out; among the rest, pools with
//! a shared message store pick by power of two choices over the load score, other pools go
//! in configured order (the mailbox owner first). Back-ends that just failed a connection
//! are tried last for a short penalty; [`admission`] lets a session wait briefly for a slot.

pub(crate) mod admission;
pub(crate) mod groups;
pub(crate) mod lease;
pub(crate) mod pools;
pub mod pop3;
pub mod proxy_v2;
pub(crate) mod select;
pub(crate) mod smtp;

pub use pools::{Candidate, Excluded, LoadView, PoolSet};

/// A fresh connection to a back-end, with the PROXY header sent if the back-end wants one.
pub struct Dialed {
    pub tcp: tokio::net::TcpStream,
    /// Connect and greeting share one deadline (the pool's `connect_timeout`): a back-end
    /// that accepts but never greets is skipped as fast as one that refuses.
    pub deadline: tokio::time::Instant,
    pub started: std::time::Instant,
}

impl Dialed {
    /// What is left of the deadline, for the greeting.
    pub fn left(&self) -> std::time::Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

pub async fn dial(c: &Candidate, client: &smtp::ClientInfo) -> Result<Dialed, smtp::LegError> {
    use smtp::LegError;
    use tokio::io::AsyncWriteExt as _;
    let addr = c.backend.address;
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + c.pool.pool.connect_timeout;
    let mut tcp = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| LegError::Timeout { stage: "connect" })?
        .map_err(|source| LegError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    if c.backend.identity == crate::config::Identity::ProxyV2 {
        let h = proxy_v2::header(client.peer, client.local, Some(&client.session_id));
        tokio::time::timeout_at(deadline, tcp.write_all(&h))
            .await
            .map_err(|_| LegError::Timeout {
                stage: "PROXY header",
            })?
            .map_err(|source| LegError::Io {
                stage: "PROXY header",
                source,
            })?;
    }
    Ok(Dialed {
        tcp,
        deadline,
        started,
    })
}
