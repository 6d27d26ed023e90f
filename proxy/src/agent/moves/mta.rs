//! The five things a move asks of an MTA, for every make: the queued messages with their
//! undelivered recipients, hold, content, release, and removal of the moved recipients.

use super::super::{Mta, Options};
pub use super::queued::{MtaError, Queued, Recipient};

/// Every queued message (held ones included), bounded as the queue listing is.
pub async fn list(o: &Options) -> Result<Vec<Queued>, MtaError> {
    match o.mta {
        Mta::Postfix => super::postfix::list(o).await,
        Mta::Exim => super::exim::list(o).await,
        Mta::Opensmtpd => super::opensmtpd::list(o).await,
        Mta::Spool => Err(MtaError::Unsupported),
    }
}

/// Stops the MTA from delivering `m`'s recipients in `moving` (Postfix and Exim hold the
/// whole message; OpenSMTPD pauses those envelopes only).
pub async fn hold(o: &Options, m: &Queued, moving: &[Recipient]) -> Result<(), MtaError> {
    match o.mta {
        Mta::Postfix => super::postfix::hold(o, m).await,
        Mta::Exim => super::exim::hold(o, m).await,
        Mta::Opensmtpd => super::opensmtpd::hold(o, moving).await,
        Mta::Spool => Err(MtaError::Unsupported),
    }
}

/// Undoes [`hold`] (the move gave up on `m`, or its other recipients stay).
pub async fn release(o: &Options, m: &Queued, moving: &[Recipient]) -> Result<(), MtaError> {
    match o.mta {
        Mta::Postfix => super::postfix::release(o, m).await,
        Mta::Exim => super::exim::release(o, m).await,
        Mta::Opensmtpd => super::opensmtpd::release(o, moving).await,
        Mta::Spool => Err(MtaError::Unsupported),
    }
}

/// The message as queued: header and body (RFC 5322), lines ending in LF or CRLF, without
/// the MTA's own envelope records. Bounded by the size the MTA accepted.
pub async fn content(o: &Options, m: &Queued) -> Result<Vec<u8>, MtaError> {
    match o.mta {
        Mta::Postfix => super::postfix::content(o, m).await,
        Mta::Exim => super::exim::content(o, m).await,
        Mta::Opensmtpd => super::opensmtpd::content(o, m).await,
        Mta::Spool => Err(MtaError::Unsupported),
    }
}

/// Removes `moved` (taken by the target) from `m`; `kept` (other domains) stay queued and
/// deliverable. With `kept` empty the message goes. Postfix cannot drop one recipient: it
/// re-injects the message for `kept` (a new queue id) before deleting the original. Exim
/// marks each moved recipient delivered and thaws the message; OpenSMTPD removes the moved
/// envelopes.
pub async fn remove(
    o: &Options,
    m: &Queued,
    moved: &[Recipient],
    kept: &[Recipient],
) -> Result<(), MtaError> {
    match o.mta {
        Mta::Postfix => super::postfix::remove(o, m, moved, kept).await,
        Mta::Exim => super::exim::remove(o, m, moved, kept).await,
        Mta::Opensmtpd => super::opensmtpd::remove(o, m, moved, kept).await,
        Mta::Spool => Err(MtaError::Unsupported),
    }
}
