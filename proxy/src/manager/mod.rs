//! `robustifier manager`: the cluster's configuration kept in one place, versioned.
//!
//! - [`journal`]: the durable, append-only journal of configuration versions, with
//!   optimistic concurrency, rollback as a forward version and confirmed commits.
//! - [`render`]: one cluster configuration rendered into each member's own, and validated
//!   with each member's rules.
//! - [`audit`]: the append-only, hash-chained audit trail of what operators, members and
//!   the manager did.

pub mod audit;
pub mod journal;
pub mod render;
