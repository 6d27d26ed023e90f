//! SMTP: a pure protocol core with no sockets, only parsing and formatting, so every rule
//! can be tested byte for byte; and the client-facing session built on it.
//!
//! - [`command`]: client command lines parsed into typed [`Command`]s (RFC 5321 4.1), with
//!   every parse error already mapped to the reply the client must get.
//! - [`reply`]: [`Reply`] formatting, the back-end reply reader and EHLO [`Capabilities`].
//! - [`data`]: the DATA-phase scanner that finds the one true end of data and refuses bare
//!   CR/LF, so the proxy and the back-end can never disagree about where a message ends.
//! - [`session`]: the client-facing session that does the I/O: greeting, EHLO, STARTTLS,
//!   AUTH, and transactions routed to back-end legs.
//! - [`trace`]: what a relayed message's record takes from the stream: its Message-ID, read
//!   as the message passes, and the queue id of the back-end's reply.

pub mod command;
pub mod data;
pub mod reply;
pub(crate) mod session;
pub mod trace;

pub use command::{Address, Command, CommandError, MailFrom, RcptTo};
pub use data::{Bare, DataScanner, DataStep, Outcome};
pub use reply::{Capabilities, Reply, ReplyError};
