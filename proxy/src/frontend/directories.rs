//! The front-end's directories: one resolver per `[[directory]]`, shared by the services
//! that name it. A reload keeps a resolver whose configuration did not change (its cache
//! and counters, its source's connections) and opens a new one for a changed or added
//! directory; a directory that cannot be opened fails the start or refuses the reload.

use std::sync::Arc;

use crate::{
    config::{Config, directory::Directory},
    directory::{SourceError, resolver::Resolver},
};

use super::{Frontend, OpenError};

/// The resolvers of `cfg`'s directories: `running`'s where unchanged, else opened now.
pub(super) fn resolvers(
    cfg: &Config,
    running: &[Arc<Resolver>],
) -> Result<Vec<Arc<Resolver>>, OpenError> {
    resolvers_with(&cfg.directories, running, Resolver::new)
}

fn resolvers_with(
    directories: &[Directory],
    running: &[Arc<Resolver>],
    open: impl Fn(&Directory) -> Result<Resolver, SourceError>,
) -> Result<Vec<Arc<Resolver>>, OpenError> {
    directories
        .iter()
        .map(|d| {
            if let Some(kept) = running.iter().find(|r| r.directory() == d) {
                return Ok(Arc::clone(kept));
            }
            open(d)
                .map(Arc::new)
                .map_err(|source| OpenError::Directory {
                    name: d.name.clone(),
                    source,
                })
        })
        .collect()
}

/// The resolver a service's `directory = "NAME"` names.
pub(super) fn named(resolvers: &[Arc<Resolver>], name: Option<&str>) -> Option<Arc<Resolver>> {
    let name = name?;
    resolvers.iter().find(|r| r.name() == name).cloned()
}

impl Frontend {
    /// The directories in force, in configuration order (the control socket's `route
    /// lookup` and `route flush` reach them here, by [`Resolver::name`]).
    pub fn directories(&self) -> Vec<Arc<Resolver>> {
        self.directories.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::directory::NotFound,
        directory::{Key, resolver::testing},
    };

    fn fake(d: &Directory) -> Result<Resolver, SourceError> {
        Ok(Resolver::with_source(
            d,
            testing::Fake::new(&[("a@x", "p")]),
        ))
    }

    #[tokio::test]
    async fn an_unchanged_directory_keeps_its_resolver_and_a_changed_one_is_replaced() {
        let (a, b) = (
            testing::directory("a", NotFound::Pool),
            testing::directory("b", NotFound::Pool),
        );
        let first = resolvers_with(&[a.clone(), b.clone()], &[], fake).unwrap();
        first[0].lookup(&Key::recipient("a@x"), false).await;
        let mut b2 = b.clone();
        b2.not_found = NotFound::Reject;
        let second = resolvers_with(&[b2, a.clone()], &first, fake).unwrap();
        assert!(Arc::ptr_eq(&second[1], &first[0]), "a unchanged: kept");
        assert_eq!(second[1].counters().cached, 1, "with its cache");
        assert!(!Arc::ptr_eq(&second[0], &first[1]), "b changed: replaced");
        assert_eq!(second[0].directory().not_found, NotFound::Reject);
        assert_eq!(
            named(&second, Some("a")).map(|r| r.name().to_owned()),
            Some("a".into())
        );
        assert!(named(&second, Some("c")).is_none() && named(&second, None).is_none());
    }

    #[test]
    fn a_directory_that_cannot_be_opened_is_an_error_naming_it() {
        let a = testing::directory("people", NotFound::Pool);
        let Err(e) = resolvers_with(&[a], &[], |_| {
            Err(SourceError::Config("cannot read /etc/secret".into()))
        }) else {
            panic!("opened");
        };
        assert_eq!(e.to_string(), "directory people: cannot read /etc/secret");
    }
}
