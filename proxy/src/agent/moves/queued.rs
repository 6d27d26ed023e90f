//! What a move knows of a queued message, and how an MTA's commands fail: shared by the
//! dispatch in [`super::mta`] and each make's commands.

use crate::agent::queue::QueueError;

/// A queued message as a move sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Queued {
    /// The MTA's message id (Postfix queue id, Exim message id, OpenSMTPD message id: the
    /// first 8 hex digits of its envelope ids).
    pub id: String,
    /// The envelope sender; empty for a bounce (`<>`).
    pub sender: String,
    /// Recipients not yet delivered.
    pub recipients: Vec<Recipient>,
    /// Already held (Postfix hold queue, Exim frozen, OpenSMTPD envelopes paused).
    pub held: bool,
}

/// One undelivered recipient.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recipient {
    pub address: String,
    /// The MTA's handle for this recipient: OpenSMTPD's envelope id (16 hex digits); the
    /// address for the others.
    pub handle: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MtaError {
    #[error(transparent)]
    Command(#[from] QueueError),
    #[error("{command}: unexpected output: {detail}")]
    Garbage { command: String, detail: String },
    #[error("message {0} is no longer queued")]
    Gone(String),
    #[error("the spool agent cannot move mail; use --mta postfix, exim or opensmtpd")]
    Unsupported,
}
