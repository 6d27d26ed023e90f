//! The pure POP3 protocol core the proxy sessions are built on (RFC 1939, RFC 2449,
//! RFC 2595, RFC 3206, RFC 5034): no sockets here, only parsing and formatting.
//!
//! - [`command`]: client command lines parsed into typed [`Command`]s.
//! - [`response`]: `+OK`/`-ERR` responses with RFC 2449 response codes, the back-end
//!   status-line parser, and the dot-terminated multi-line response reader and scanner.

pub mod command;
pub mod response;
pub mod session;

pub use command::{Command, CommandError};
pub use response::{Response, ResponseCode, ResponseError, Status};
