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
