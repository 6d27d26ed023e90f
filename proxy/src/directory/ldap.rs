//! The ldap source.

use std::sync::Arc;

use super::{Source, SourceError};

pub fn open(config: &crate::config::directory::ldap::Ldap) -> Result<Arc<dyn Source>, SourceError> {
    let _ = config;
    Err(SourceError::Config("not built yet".into()))
}
