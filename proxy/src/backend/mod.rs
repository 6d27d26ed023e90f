//! The back-end side: pools of back-ends, choosing one for a session (with failover to the
//! next), and the protocol legs that talk to them.
//!
//! Selection today is round robin over each pool, skipping back-ends whose load record
//! says they are down or draining and, for a short penalty, back-ends that just failed a
//! connection; the load-aware choice reads the same records (issue "health and load").

pub mod pools;
pub mod pop3;
pub mod proxy_v2;
pub mod select;
pub mod smtp;

pub use pools::{Candidate, Excluded, LoadView, PoolSet};
