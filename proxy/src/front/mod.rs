//! The client-facing side of a front-end: the listening sockets that the kernel's
//! steering program hands connections to, and what answers on them.
//!
//! - [`listeners`]: one socket per (service, slot), registered in the sockmap.
//! - [`accept`]: accept loops with the per-service connection limit.
//! - [`shed`]: the shed listener's protocol-correct "come back later".
//! - [`greeting`]: the normal listeners' dialogue until the SMTP/POP3 sessions land.

pub mod accept;
pub mod greeting;
pub mod limits;
pub mod lines;
pub mod listeners;
pub mod shed;
