//! Moving a domain's queued mail to another pool ([`crate::agent_wire::Op::Move`]).
//!
//! Each make's per-message commands are in a file of their own ([`postfix`], [`exim`],
//! [`opensmtpd`]) behind the same five steps, which [`mta`] dispatches: list the queue,
//! hold a message, read its content, release it, and remove the moved recipients.

pub mod exim;
pub mod mta;
pub mod opensmtpd;
pub mod postfix;

use super::Options;
use crate::agent_wire::{MoveReply, MoveRequest};

/// The reply to a move command whose argument is `arg` (a [`MoveRequest`]).
pub async fn command(o: &Options, arg: &str) -> MoveReply {
    let _ = o;
    match serde_json::from_str::<MoveRequest>(arg) {
        Ok(_) => MoveReply::Error("moving mail is not built yet".into()),
        Err(e) => MoveReply::Error(format!("not a move request: {e}")),
    }
}
