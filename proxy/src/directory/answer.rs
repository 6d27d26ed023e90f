//! A source's values read as a route: each value holds one or more names (separated by
//! spaces or commas): a pool, a back-end (the route then names `pool/backend`: that
//! back-end only), or `reject` alone. Names are checked against the pools the service may
//! use; a value naming something else is the directory's error (a temporary reply and an
//! error counted), never a reason to refuse the key for good.

use crate::{
    config::{Protocol, routes::Pools},
    route::Route,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the entry has no value")]
    Empty,
    #[error("{0:?} is neither a pool nor a back-end")]
    Unknown(String),
    #[error("{0}")]
    Unusable(String),
    #[error("`reject` cannot be combined with other names")]
    RejectCombined,
}

/// The route `values` name for a session of `protocol`.
pub fn route(
    values: &[String],
    pools: &(impl Pools + ?Sized),
    protocol: Protocol,
) -> Result<Route, AnswerError> {
    let _ = (values, pools, protocol);
    Err(AnswerError::Empty)
}
