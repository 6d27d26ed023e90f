//! Per-recipient (SMTP) and per-user (POP3) routing to back-end pools.
//!
//! - [`table`]: the routing map file, parsed once into a [`RouteTable`] whose lookups are
//!   pure and never fail.

pub mod table;

pub use table::{Route, RouteError, RouteTable};
