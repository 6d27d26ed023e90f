//! The control socket of a running front-end: a unix stream socket (by default
//! `/run/robustifier/<frontend name>/control.sock`, mode 0600, so root and the daemon's
//! user only) with a line protocol, used by `robustifier ha`, `robustifier reload` and
//! `robustifier upgrade`. It turns requests into [`crate::frontend::Command`]s.
//!
//! ```text
//! request (one line, at most 4 KiB)   reply (one line)
//! status                              ok {"frontend":..,"version":..,"routers":[..]}  (JSON)
//! reload [ABSOLUTE-PATH]              ok {"version":..,"summary":..}  |  error <why nothing changed>
//! release VRID                        ok <what happened>  |  error <why>
//! resume VRID                         ok <what happened>  |  error <why>
//! handover                            see [`handover`]: a successor process takes over
//! ```
//!
//! `release` answers when the handoff is done, which may take the whole drain deadline.
//! A VRID names both the IPv4 and the IPv6 router of that number, if both exist.
//!
//! Invariant: a malformed or oversized request gets an `error` line and the connection is
//! closed; nothing a client sends can stop the server.

pub mod handover;
mod request;
mod server;
mod socket;

pub use request::Request;
pub use server::serve;
pub use socket::{ControlError, bind, request};
