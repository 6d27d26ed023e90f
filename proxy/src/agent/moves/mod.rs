//! Moving a domain's queued mail to another pool ([`crate::agent_wire::Op::Move`]).

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
