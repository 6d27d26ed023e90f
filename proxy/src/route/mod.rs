//! Per-recipient (SMTP) and per-user (POP3) routing to back-end pools.
//!
//! - [`table`]: the routing map file, parsed once into a [`RouteTable`] whose lookups are
//!   pure and never fail.
//! - [`resolve`]: a parsed map checked against the pools the service can use, on every
//!   read (start and re-reads alike).

pub mod resolve;
pub mod table;

pub use resolve::{PoolError, Pools, serves, usable};
pub use table::{KeyError, Route, RouteError, RouteTable, SyntaxError};
