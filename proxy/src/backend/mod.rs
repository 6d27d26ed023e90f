//! The back-end side: pools of back-ends, choosing one for a session (with failover to the
//! next), and the protocol legs that talk to them.
//!
//! Selection ([`pools`], [`select`]) reads each back-end's load record: back-ends that are
//! down, draining or over their group's thresholds are left out; among the rest, pools with
//! a shared message store pick by power of two choices over the load score, other pools go
//! in configured order (the mailbox owner first). Back-ends that just failed a connection
//! are tried last for a short penalty; [`admission`] lets a session wait briefly for a slot.
//!
//! Every connection to a back-end, a leg's or a probe's, is a [`conn::BackendConn`].

pub(crate) mod admission;
pub mod conn;
pub(crate) mod groups;
pub(crate) mod idle;
pub(crate) mod lease;
pub(crate) mod pools;
pub mod pop3;
pub mod proxy_v2;
pub(crate) mod select;
pub(crate) mod smtp;

pub use pools::{Candidate, Excluded, LoadView, PoolSet};
