//! The radius source.

use std::sync::Arc;

use super::{Source, SourceError};

pub fn open(
    config: &crate::config::directory::radius::Radius,
) -> Result<Arc<dyn Source>, SourceError> {
    let _ = config;
    Err(SourceError::Config("not built yet".into()))
}
