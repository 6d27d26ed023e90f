//! Routing maps kept in a directory: which pool or back-ends serve a recipient or a user,
//! asked of LDAP, SQL (PostgreSQL, MariaDB/MySQL, SQLite) or RADIUS.
//!
//! - [`Source`]: one kind of directory, asked one key at a time ([`ldap`], [`sql`],
//!   [`radius`]); it answers the raw values found for the key.
//! - [`template`]: the `%s`/`%u`/`%d` placeholders of filters, queries and user names,
//!   filled from a [`Key`] by each source in its own safe way (escaped for LDAP, bound
//!   parameters for SQL).
//! - [`answer`]: a source's values read as a route (pools, pinned back-ends or `reject`),
//!   checked against the pools the service may use.
//! - [`cache`] and [`resolver`]: what every source shares: the per-lookup timeout, the
//!   positive and negative caches, stale answers while the source fails, the counters.
//!
//! Lookups run in the session's task, never in the accept loop; a source that does not
//! answer in time costs its session a temporary reply, not the front-end its throughput.

pub mod answer;
pub mod cache;
pub mod ldap;
pub mod radius;
pub mod resolver;
pub mod sql;
pub mod template;

use std::{future::Future, pin::Pin, sync::Arc};

use crate::config::directory::{Directory, SourceConfig};

/// What is looked up: an SMTP recipient (an address) or a login name (POP3, SMTP AUTH).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: KeyKind,
    /// The address as `local@domain` (domain lower-cased) or the user name as given.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Recipient,
    User,
}

impl Key {
    pub fn recipient(text: impl Into<String>) -> Key {
        Key {
            kind: KeyKind::Recipient,
            text: text.into(),
        }
    }

    pub fn user(text: impl Into<String>) -> Key {
        Key {
            kind: KeyKind::User,
            text: text.into(),
        }
    }

    /// The part before the last `@`, or the whole key without one (`%u`).
    pub fn local(&self) -> &str {
        self.text.rsplit_once('@').map_or(&self.text, |(l, _)| l)
    }

    /// The part after the last `@`, or empty without one (`%d`).
    pub fn domain(&self) -> &str {
        self.text.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// A source's answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The values of the key's entry (an attribute's values, a column's rows, a reply
    /// attribute), in the source's order; [`answer`] reads them.
    Values(Vec<String>),
    /// The source has no entry for the key.
    NotFound,
}

/// Why a source gave no answer. Never a reason to refuse the key for good: the session
/// gets a temporary reply (or a stale answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// No server could be reached or asked (every one tried).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A server answered something that is not a valid answer (garbage, a reply that
    /// fails authentication, more entries than one key can have).
    #[error("invalid answer: {0}")]
    Invalid(String),
    /// The source cannot be used as configured (unreadable secret, bad template).
    #[error("{0}")]
    Config(String),
}

pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = Result<Found, SourceError>> + Send + 'a>>;

/// One kind of directory. Implementations hold their own connection pools and fail over
/// across their servers; the caller bounds each lookup with the directory's timeout (and
/// drops the future when it passes, so a lookup must be cancel-safe).
pub trait Source: Send + Sync {
    /// `ldap`, `postgres`, `mysql`, `sqlite` or `radius`.
    fn kind(&self) -> &'static str;
    fn lookup<'a>(&'a self, key: &'a Key) -> LookupFuture<'a>;
}

/// The source of `directory`, ready to be asked. Connections are opened on first use
/// (and re-opened after failures), so a directory that is down does not stop a
/// front-end from starting: its sessions get temporary replies until it answers.
pub fn open(directory: &Directory) -> Result<Arc<dyn Source>, SourceError> {
    match &directory.source {
        SourceConfig::Ldap(c) => ldap::open(c),
        SourceConfig::Sql(c) => sql::open(c, directory.timeout),
        SourceConfig::Radius(c) => radius::open(c, directory.timeout),
    }
}
