//! exim's per-message commands for a move (to be written).

use super::mta::{MtaError, Queued, Recipient};
use crate::agent::Options;

pub async fn list(o: &Options) -> Result<Vec<Queued>, MtaError> {
    let _ = o;
    Err(MtaError::Unsupported)
}

pub async fn hold(o: &Options, m: &Queued) -> Result<(), MtaError> {
    let _ = (o, m);
    Err(MtaError::Unsupported)
}

pub async fn release(o: &Options, m: &Queued) -> Result<(), MtaError> {
    let _ = (o, m);
    Err(MtaError::Unsupported)
}

pub async fn content(o: &Options, m: &Queued) -> Result<Vec<u8>, MtaError> {
    let _ = (o, m);
    Err(MtaError::Unsupported)
}

pub async fn remove(
    o: &Options,
    m: &Queued,
    moved: &[Recipient],
    kept: &[Recipient],
) -> Result<(), MtaError> {
    let _ = (o, m, moved, kept);
    Err(MtaError::Unsupported)
}
