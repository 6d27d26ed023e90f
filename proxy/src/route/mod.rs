//! Per-recipient (SMTP) and per-user (POP3) routing to back-end pools.
//!
//! - [`table`]: the routing map file, parsed once into a [`RouteTable`] whose lookups are
//!   pure and never fail.
//! - [`domains`]: the recipient domains of dedicated queues (`[[domain_queue]]`), looked up
//!   before the routing map.
//!
//! A parsed map is checked against the pools the service can use, on every read, by
//! [`crate::config::routes`].

pub mod domains;
pub mod table;

pub use domains::{Dedicated, DomainPattern, DomainQueues, PatternError};
pub use table::{KeyError, PoolError, PoolNames, Route, RouteError, RouteTable, SyntaxError};
