//! A source's values read as a route: each value holds one or more names (separated by
//! spaces or commas): a pool, a back-end (the route then names `pool/backend`: that
//! back-end only), or `reject` alone. Names are checked against the pools the service may
//! use; a value naming something else is the directory's error (a temporary reply and an
//! error counted), never a reason to refuse the key for good.

use crate::{
    config::{
        Protocol,
        routes::{Pools, serves, usable},
    },
    route::Route,
};

/// Names one answer may hold: a route is a primary and a few alternates, so more is a
/// directory entry gone wrong, and each name costs a look-up per session.
pub const MAX_NAMES: usize = 16;

/// The longest name quoted back in an error, so that a garbage value cannot flood logs.
const QUOTED: usize = 64;

/// The word that refuses the key.
pub const REJECT: &str = "reject";

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
    #[error("more than {MAX_NAMES} names")]
    TooMany,
}

/// The route `values` name for a session of `protocol`.
pub fn route(
    values: &[String],
    pools: &(impl Pools + ?Sized),
    protocol: Protocol,
) -> Result<Route, AnswerError> {
    let mut entries: Vec<String> = Vec::new();
    let mut reject = false;
    let names = values
        .iter()
        .flat_map(|v| v.split([' ', ',', '\t']))
        .filter(|n| !n.is_empty());
    for name in names {
        if name.eq_ignore_ascii_case(REJECT) {
            reject = true;
            continue;
        }
        let entry = entry(name, pools, protocol)?;
        if !entries.contains(&entry) {
            if entries.len() == MAX_NAMES {
                return Err(AnswerError::TooMany);
            }
            entries.push(entry);
        }
    }
    match (reject, entries.is_empty()) {
        (true, true) => Ok(Route::Reject),
        (true, false) => Err(AnswerError::RejectCombined),
        (false, true) => Err(AnswerError::Empty),
        (false, false) => Ok(Route::Pools(entries.into())),
    }
}

/// One name as a route entry: a pool as is, a back-end (bare or as `pool/backend`) as
/// `pool/backend`.
fn entry(
    name: &str,
    pools: &(impl Pools + ?Sized),
    protocol: Protocol,
) -> Result<String, AnswerError> {
    let unusable = |e: crate::route::PoolError| AnswerError::Unusable(e.to_string());
    let unknown = || AnswerError::Unknown(name.chars().take(QUOTED).collect());
    if let Some((pool, backend)) = name.split_once('/') {
        let owner = pools.backend_pool(backend).ok_or_else(unknown)?;
        if owner.name != pool {
            return Err(unknown());
        }
        serves(owner, protocol).map_err(unusable)?;
        return Ok(name.to_owned());
    }
    if pools.pool(name).is_some() {
        return usable(pools, name, protocol)
            .map(|p| p.name.clone())
            .map_err(unusable);
    }
    let pool = pools.backend_pool(name).ok_or_else(unknown)?;
    serves(pool, protocol).map_err(unusable)?;
    Ok(format!("{}/{name}", pool.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Pool};

    fn pools() -> Vec<Pool> {
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            "[frontend]\nname='f'\n\
             [[pool]]\nname='be1'\nidentity='proxy'\nbackend=[{name='b1a',address='198.18.1.1:25'},{name='b1b',address='198.18.1.2:25'}]\n\
             [[pool]]\nname='be2'\nidentity='proxy'\nbackend=[{name='b2a',address='198.18.1.3:25'}]\n\
             [[pool]]\nname='x'\nidentity='xclient'\nbackend=[{name='xa',address='198.18.1.4:25'}]\n",
        )
        .unwrap();
        cfg.pools
    }

    fn r(values: &[&str], protocol: Protocol) -> Result<Route, AnswerError> {
        let v: Vec<String> = values.iter().map(|s| (*s).to_owned()).collect();
        route(&v, pools().as_slice(), protocol)
    }

    fn pooled(names: &[&str]) -> Result<Route, AnswerError> {
        Ok(Route::Pools(
            names
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>()
                .into(),
        ))
    }

    #[test]
    fn pools_and_backends_in_order_without_duplicates() {
        assert_eq!(r(&["be1"], Protocol::Smtp), pooled(&["be1"]));
        assert_eq!(
            r(&["be2, be1", "b1b be2", "be1/b1a"], Protocol::Smtp),
            pooled(&["be2", "be1", "be1/b1b", "be1/b1a"])
        );
        assert_eq!(r(&["b2a"], Protocol::Pop3), pooled(&["be2/b2a"]));
    }

    #[test]
    fn reject_stands_alone() {
        assert_eq!(r(&["reject"], Protocol::Smtp), Ok(Route::Reject));
        assert_eq!(r(&["REJECT", "reject"], Protocol::Smtp), Ok(Route::Reject));
        assert_eq!(
            r(&["reject be1"], Protocol::Smtp),
            Err(AnswerError::RejectCombined)
        );
        assert_eq!(
            r(&["be1", "reject"], Protocol::Smtp),
            Err(AnswerError::RejectCombined)
        );
    }

    #[test]
    fn unknown_unusable_and_empty_answers_are_errors() {
        assert_eq!(r(&[], Protocol::Smtp), Err(AnswerError::Empty));
        assert_eq!(r(&[" , "], Protocol::Smtp), Err(AnswerError::Empty));
        assert_eq!(
            r(&["be1 nope"], Protocol::Smtp),
            Err(AnswerError::Unknown("nope".into()))
        );
        // A back-end named under a pool it is not in.
        assert_eq!(
            r(&["be2/b1a"], Protocol::Smtp),
            Err(AnswerError::Unknown("be2/b1a".into()))
        );
        // XCLIENT cannot carry a POP3 client: the pool and its back-ends are refused.
        assert!(matches!(
            r(&["x"], Protocol::Pop3),
            Err(AnswerError::Unusable(_))
        ));
        assert!(matches!(
            r(&["xa"], Protocol::Pop3),
            Err(AnswerError::Unusable(_))
        ));
        assert_eq!(r(&["xa"], Protocol::Smtp), pooled(&["x/xa"]));
        let long = "z".repeat(1000);
        let Err(AnswerError::Unknown(quoted)) = r(&[&long], Protocol::Smtp) else {
            panic!("a long unknown name was accepted");
        };
        assert_eq!(quoted.len(), QUOTED);
    }

    #[test]
    fn at_most_max_names() {
        let text: String = (0..=MAX_NAMES)
            .map(|i| {
                format!(
                    "[[pool]]\nname='p{i}'\nidentity='proxy'\nbackend=[{{name='b{i}',address='198.18.2.{}:25'}}]\n",
                    i + 1
                )
            })
            .collect();
        let cfg = Config::parse(
            std::path::Path::new("t.toml"),
            &format!("[frontend]\nname='f'\n{text}"),
        )
        .unwrap();
        let names: Vec<String> = (0..=MAX_NAMES).map(|i| format!("p{i}")).collect();
        let ok = route(&names[..MAX_NAMES], cfg.pools.as_slice(), Protocol::Smtp);
        assert_eq!(ok, Ok(Route::Pools(names[..MAX_NAMES].to_vec().into())));
        // Duplicates do not count against the bound.
        let mut repeated = names[..MAX_NAMES].to_vec();
        repeated.extend(names[..4].iter().cloned());
        assert_eq!(route(&repeated, cfg.pools.as_slice(), Protocol::Smtp), ok);
        assert_eq!(
            route(&names, cfg.pools.as_slice(), Protocol::Smtp),
            Err(AnswerError::TooMany)
        );
    }
}
