//! The client-facing side of a front-end: the listening sockets that the kernel's
//! steering program hands connections to, and what answers on them.
//!
//! - [`listeners`]: one socket per (service, slot), registered in the sockmap.
//! - [`accept`]: accept loops with the connection limits; hands each connection to the
//!   SMTP or POP3 session of its service.
//! - [`env`](mod@env): what the sessions of one service share (routes, pools, certificate).
//! - [`limits`]: per-client limits (sessions, failed logins); IPv6 clients per prefix.
//! - [`lines`]: bounded line reading for both protocols.
//! - [`shed`]: the shed listener's protocol-correct "come back later".

pub(crate) mod accept;
pub(crate) mod env;
pub(crate) mod groups;
pub(crate) mod limits;
pub mod lines;
pub mod listeners;
pub(crate) mod shed;
