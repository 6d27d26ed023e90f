//! Polls a back-end's `robustifier agent` (the wire format is [`crate::agent_wire`]).

use std::time::Duration;

use tokio::{io::BufReader, net::TcpStream, time::timeout};

use crate::agent_wire::exchange;
pub use crate::agent_wire::{AgentKey, AgentReport, Endpoint, PollError};

/// One poll: connect, exchange, all within `limit`.
pub async fn poll(agent: Endpoint, limit: Duration) -> Result<AgentReport, PollError> {
    timeout(limit, async {
        let tcp = TcpStream::connect(agent.address)
            .await
            .map_err(PollError::Connect)?;
        exchange(BufReader::new(tcp), agent.key).await
    })
    .await
    .map_err(|_| PollError::Timeout)?
}

/// Asks the agent for its mail queue per destination domain, all within `limit`.
pub async fn queue(
    agent: Endpoint,
    limit: Duration,
) -> Result<crate::agent_wire::QueueReport, PollError> {
    use crate::agent_wire::{Op, QueueReply, command};
    let json = timeout(limit, async {
        let tcp = TcpStream::connect(agent.address)
            .await
            .map_err(PollError::Connect)?;
        command(BufReader::new(tcp), agent.key, Op::Queue, "").await
    })
    .await
    .map_err(|_| PollError::Timeout)??;
    match serde_json::from_str::<QueueReply>(&json) {
        Ok(QueueReply::Ok(r)) => Ok(r),
        Ok(QueueReply::Error(e)) => Err(PollError::Refused(e)),
        Err(e) => Err(PollError::BadReply(e.to_string())),
    }
}

/// Asks the agent to start moving (or to report its move of) a domain's queued mail, all
/// within `limit`.
pub async fn move_domain(
    agent: Endpoint,
    request: &crate::agent_wire::MoveRequest,
    limit: Duration,
) -> Result<crate::agent_wire::MoveStatus, PollError> {
    use crate::agent_wire::{MoveReply, Op, command};
    let arg = serde_json::to_string(request).map_err(|e| PollError::BadReply(e.to_string()))?;
    let json = timeout(limit, async {
        let tcp = TcpStream::connect(agent.address)
            .await
            .map_err(PollError::Connect)?;
        command(BufReader::new(tcp), agent.key, Op::Move, &arg).await
    })
    .await
    .map_err(|_| PollError::Timeout)??;
    match serde_json::from_str::<MoveReply>(&json) {
        Ok(MoveReply::Ok(r)) => Ok(r),
        Ok(MoveReply::Error(e)) => Err(PollError::Refused(e)),
        Err(e) => Err(PollError::BadReply(e.to_string())),
    }
}

/// Asks a target's agent whether its MTA queues a message a move handed over, all within
/// `limit`.
pub async fn find_moved(
    agent: Endpoint,
    request: &crate::agent_wire::FindRequest,
    limit: Duration,
) -> Result<crate::agent_wire::FindReply, PollError> {
    use crate::agent_wire::{FindReply, Op, command};
    let arg = serde_json::to_string(request).map_err(|e| PollError::BadReply(e.to_string()))?;
    let json = timeout(limit, async {
        let tcp = TcpStream::connect(agent.address)
            .await
            .map_err(PollError::Connect)?;
        command(BufReader::new(tcp), agent.key, Op::Find, &arg).await
    })
    .await
    .map_err(|_| PollError::Timeout)??;
    serde_json::from_str::<FindReply>(&json).map_err(|e| PollError::BadReply(e.to_string()))
}
