//! `robustifier manager`: the cluster's configuration kept in one place, versioned.
//!
//! - [`journal`]: the durable, append-only journal of configuration versions, with
//!   optimistic concurrency, rollback as a forward version and confirmed commits.
//! - [`render`]: one cluster configuration rendered into each member's own, and validated
//!   with each member's rules.
//! - [`audit`]: the append-only, hash-chained audit trail of what operators, members and
//!   the manager did.
//! - [`pki`]: the cluster's certificate authority: the CA, the manager's, members' and
//!   operators' certificates, and the identity (role, name, cluster) a certificate carries.
//! - [`tls`]: mutual TLS between the manager and members or operators, on that CA alone.

pub mod audit;
pub mod journal;
pub mod pki;
pub mod render;
pub mod tls;
