//! The pure SMTP protocol core the proxy sessions are built on: no sockets here, only
//! parsing and formatting, so every rule can be tested byte for byte.
//!
//! - [`command`]: client command lines parsed into typed [`Command`]s (RFC 5321 4.1), with
//!   every parse error already mapped to the reply the client must get.
//! - [`reply`]: [`Reply`] formatting, the back-end reply reader and EHLO [`Capabilities`].
//! - [`data`]: the DATA-phase scanner that finds the one true end of data and refuses bare
//!   CR/LF, so the proxy and the back-end can never disagree about where a message ends.

pub mod command;
pub mod data;
pub mod reply;
pub mod session;

pub use command::{Address, Command, CommandError, MailFrom, RcptTo};
pub use data::{Bare, DataScanner, DataStep, Outcome};
pub use reply::{Capabilities, Reply, ReplyError};
