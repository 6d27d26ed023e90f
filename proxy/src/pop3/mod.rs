//! POP3 (RFC 1939, RFC 2449, RFC 2595, RFC 3206, RFC 5034): a pure protocol core with no
//! sockets, only parsing and formatting; and the client-facing session built on it.
//!
//! - [`command`]: client command lines parsed into typed [`Command`]s.
//! - [`response`]: `+OK`/`-ERR` responses with RFC 2449 response codes, the back-end
//!   status-line parser, and the dot-terminated multi-line response reader and scanner.
//! - [`session`]: the client-facing session that does the I/O: the AUTHORIZATION state in
//!   the proxy, then the login replayed on the user's back-end and bytes relayed both ways.

pub mod command;
pub mod response;
pub(crate) mod session;

pub use command::{Command, CommandError};
pub use response::{Response, ResponseCode, ResponseError, Status};
