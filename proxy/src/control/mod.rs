//! The control socket of a running front-end: a unix stream socket (by default
//! `/run/robustifier/<frontend name>/control.sock`, mode 0600, so root and the daemon's
//! user only) with a line protocol, used by `robustifier ha`, `robustifier reload` and
//! `robustifier upgrade`. It turns requests into [`crate::frontend::Command`]s.
//!
//! ```text
//! request (one line, at most 4 KiB)   reply (one line)
//! status                              ok {"frontend":..,"version":..,"routers":[..]}  (JSON)
//! alarms                              ok {"frontend":..,"alarms":[..],"events":[..]}  (JSON)
//! events SEQ                          ok {"boot":..,"oldest":..,"events":[..]}  (after SEQ)
//! manager up | manager down REASON    ok noted  (the member on the cluster manager)
//! reload [ABSOLUTE-PATH]              ok {"version":..,"summary":..}  |  error <why nothing changed>
//! release VRID                        ok <what happened>  |  error <why>
//! resume VRID                         ok <what happened>  |  error <why>
//! drain BACKEND                       ok {"backend":..,"draining":true}  |  error <why>
//! undrain BACKEND                     ok {"backend":..,"draining":false}  |  error <why>
//! queue [DOMAIN]                      ok {"backends":[{"backend":..,"error":..,"domains":[..]}]}
//! handover                            see [`handover`]: a successor process takes over
//! ```
//!
//! `release` answers when the handoff is done, which may take the whole drain deadline.
//! A VRID names both the IPv4 and the IPv6 router of that number, if both exist.
//! `drain` takes a back-end's configured name and acts in every pool that has it: no new
//! session goes there, running ones finish, its load record says draining (as an agent's
//! `drain=1`). The flag is the running process's: it survives a reload, not a restart or
//! a binary upgrade.
//!
//! Invariant: a malformed or oversized request gets an `error` line and the connection is
//! closed; nothing a client sends can stop the server.
//!
//! [`http`] serves `/metrics` and `/ready` the same way, over HTTP with a bearer token.

pub mod handover;
pub mod http;
mod request;
mod server;
mod socket;

pub use request::Request;
pub use server::serve;
pub use socket::{ControlError, bind, request};
