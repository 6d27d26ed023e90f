//! The client-facing side of a front-end: the listening sockets that the kernel's
//! steering program hands connections to, and what answers on them.
//!
//! - [`listeners`]: one socket per (service, slot), registered in the sockmap.
//! - [`accept`]: accept loops with the connection limits; hands each connection to the
//!   SMTP or POP3 session of its service.
//! - [`limits`]: per-client limits (sessions, failed logins); IPv6 clients per prefix.
//! - [`shed`]: the shed listener's protocol-correct "come back later".
//! - [`workers`]: the runtime layout, one single-threaded runtime per core by default.

pub(crate) mod accept;
pub(crate) mod limits;
pub mod listeners;
pub(crate) mod shed;
pub mod workers;
