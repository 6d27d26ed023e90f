//! POP3 client commands (RFC 1939 3 and 5-7, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034
//! AUTH), parsed from one command line without its CRLF.
//!
//! Invariant: parsing never panics; a line longer than RFC 2449 4 allows, or holding NUL,
//! CR, LF or another control character, never becomes a [`Command`]; every refusal carries
//! the `-ERR` response to send. Arguments in a [`Command`] are validated, so a command can
//! be re-sent to a back-end without smuggling a second command along.

use super::response::{Response, ResponseCode};

/// RFC 2449 4: a command is at most 255 octets including its CRLF.
pub const MAX_COMMAND_LINE: usize = 253;

/// One parsed client command. Message numbers are 1-based (RFC 1939 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// RFC 1939 7: the mailbox name, as sent.
    User(String),
    /// RFC 1939 7: everything after `PASS `, spaces included, because passwords may
    /// contain spaces and the RFC lets the server take the whole remainder.
    Pass(String),
    /// RFC 5034 4: mechanism upper-cased; initial response base64 or `=`.
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
    Capa,
    Stls,
    Stat,
    List(Option<u32>),
    Retr(u32),
    Dele(u32),
    Noop,
    Rset,
    /// RFC 1939 7: the headers and the first `lines` lines of the body.
    Top {
        msg: u32,
        lines: u32,
    },
    Uidl(Option<u32>),
    Quit,
}

/// Why a command line was refused; [`CommandError::response`] gives what to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command line longer than {MAX_COMMAND_LINE} octets")]
    TooLong,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("unknown command")]
    Unknown,
    #[error("bad arguments: {0}")]
    BadArguments(&'static str),
    /// APOP's digest covers the greeting's timestamp, which is the proxy's and not the
    /// back-end's, so it cannot be relayed; checking it here would need every plaintext
    /// password.
    #[error("APOP is not supported")]
    ApopRefused,
}

impl CommandError {
    pub fn response(&self) -> Response {
        match self {
            Self::TooLong => Response::err(None, "Command line too long"),
            Self::Syntax(why) => Response::err(None, format!("Syntax error: {why}")),
            Self::Unknown => Response::err(None, "Unknown command"),
            Self::BadArguments(why) => Response::err(None, format!("Bad arguments: {why}")),
            // RFC 3206 4: [AUTH] says the credentials path failed, not the server.
            Self::ApopRefused => Response::err(
                Some(ResponseCode::Auth),
                "APOP is not supported, use USER/PASS or AUTH",
            ),
        }
    }
}

impl Command {
    pub fn parse(line: &[u8]) -> Result<Self, CommandError> {
        if line.len() > MAX_COMMAND_LINE {
            return Err(CommandError::TooLong);
        }
        if let Some(&b) = line.iter().find(|&&b| b < 0x20 || b == 0x7f) {
            return Err(CommandError::Syntax(match b {
                0 => "NUL character in command",
                b'\r' => "bare CR in command",
                b'\n' => "bare LF in command",
                _ => "control character in command",
            }));
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| CommandError::Syntax("command is not valid UTF-8"))?;
        // The C1 controls (U+0080..U+009F, NEL among them) are as unwelcome as the C0 ones
        // in anything replayed to a back-end or written to its logs.
        if line.chars().any(char::is_control) {
            return Err(CommandError::Syntax("control character in command"));
        }
        // PASS keeps its argument verbatim, so split before any trimming.
        let (verb, raw_args) = line.split_once(' ').unwrap_or((line, ""));
        let verb = verb.to_ascii_uppercase();
        if verb == "PASS" {
            return if line.len() > 4 {
                Ok(Self::Pass(raw_args.to_owned()))
            } else {
                Err(CommandError::BadArguments("PASS requires a password"))
            };
        }
        let args: Vec<&str> = raw_args.split(' ').filter(|a| !a.is_empty()).collect();
        match (verb.as_str(), args.as_slice()) {
            ("USER", [name]) => Ok(Self::User((*name).to_owned())),
            ("USER", _) => Err(CommandError::BadArguments("expected USER name")),
            ("APOP", _) => Err(CommandError::ApopRefused),
            ("AUTH", [mech, rest @ ..]) if rest.len() <= 1 => {
                parse_auth(mech, rest.first().copied())
            }
            ("AUTH", _) => Err(CommandError::BadArguments(
                "expected AUTH mechanism [initial-response]",
            )),
            ("CAPA", []) => Ok(Self::Capa),
            ("STLS", []) => Ok(Self::Stls),
            ("STAT", []) => Ok(Self::Stat),
            ("LIST", []) => Ok(Self::List(None)),
            ("LIST", [n]) => Ok(Self::List(Some(msg_number(n)?))),
            ("RETR", [n]) => Ok(Self::Retr(msg_number(n)?)),
            ("DELE", [n]) => Ok(Self::Dele(msg_number(n)?)),
            ("NOOP", []) => Ok(Self::Noop),
            ("RSET", []) => Ok(Self::Rset),
            ("TOP", [n, lines]) => Ok(Self::Top {
                msg: msg_number(n)?,
                lines: number(lines).ok_or(CommandError::BadArguments("bad line count"))?,
            }),
            ("UIDL", []) => Ok(Self::Uidl(None)),
            ("UIDL", [n]) => Ok(Self::Uidl(Some(msg_number(n)?))),
            ("QUIT", []) => Ok(Self::Quit),
            (
                "CAPA" | "STLS" | "STAT" | "LIST" | "RETR" | "DELE" | "NOOP" | "RSET" | "TOP"
                | "UIDL" | "QUIT",
                _,
            ) => Err(CommandError::BadArguments("wrong number of arguments")),
            _ => Err(CommandError::Unknown),
        }
    }
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// RFC 1939 5: message numbers start at 1.
fn msg_number(s: &str) -> Result<u32, CommandError> {
    number(s)
        .filter(|&n| n > 0)
        .ok_or(CommandError::BadArguments("bad message number"))
}

/// RFC 5034 4: `AUTH SP sasl-mech [SP initial-response]`.
fn parse_auth(mech: &str, initial: Option<&str>) -> Result<Command, CommandError> {
    let mech_ok = (1..=20).contains(&mech.len())
        && mech
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !mech_ok {
        return Err(CommandError::BadArguments("bad SASL mechanism name"));
    }
    if let Some(r) = initial {
        let body = r.trim_end_matches('=');
        let base64 = r == "="
            || (!body.is_empty()
                && r.len() - body.len() <= 2
                && body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));
        if !base64 {
            return Err(CommandError::BadArguments("initial response is not base64"));
        }
    }
    Ok(Command::Auth {
        mechanism: mech.to_ascii_uppercase(),
        initial_response: initial.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(line: &str) -> Result<Command, CommandError> {
        Command::parse(line.as_bytes())
    }

    #[test]
    fn commands_any_case() {
        assert_eq!(p("user alice"), Ok(Command::User("alice".into())));
        assert_eq!(
            p("USER alice@example.org"),
            Ok(Command::User("alice@example.org".into()))
        );
        assert_eq!(p("capa"), Ok(Command::Capa));
        assert_eq!(p("STLS"), Ok(Command::Stls));
        assert_eq!(p("Stat"), Ok(Command::Stat));
        assert_eq!(p("LIST"), Ok(Command::List(None)));
        assert_eq!(p("LIST 3"), Ok(Command::List(Some(3))));
        assert_eq!(p("RETR 1"), Ok(Command::Retr(1)));
        assert_eq!(p("DELE 42"), Ok(Command::Dele(42)));
        assert_eq!(p("NOOP"), Ok(Command::Noop));
        assert_eq!(p("RSET"), Ok(Command::Rset));
        assert_eq!(p("TOP 1 0"), Ok(Command::Top { msg: 1, lines: 0 }));
        assert_eq!(p("UIDL"), Ok(Command::Uidl(None)));
        assert_eq!(p("uidl 7"), Ok(Command::Uidl(Some(7))));
        assert_eq!(p("QUIT"), Ok(Command::Quit));
        assert_eq!(p("QUIT "), Ok(Command::Quit));
    }

    #[test]
    fn pass_keeps_spaces() {
        assert_eq!(p("PASS s3cret"), Ok(Command::Pass("s3cret".into())));
        assert_eq!(p("pass two words "), Ok(Command::Pass("two words ".into())));
        assert_eq!(p("PASS "), Ok(Command::Pass(String::new())));
        assert!(matches!(p("PASS"), Err(CommandError::BadArguments(_))));
    }

    #[test]
    fn auth() {
        assert_eq!(
            p("AUTH plain AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("AGFsaWNlAHNlY3JldA==".into())
            })
        );
        assert_eq!(
            p("AUTH XOAUTH2"),
            Ok(Command::Auth {
                mechanism: "XOAUTH2".into(),
                initial_response: None
            })
        );
        assert!(matches!(p("AUTH EXTERNAL ="), Ok(Command::Auth { .. })));
        for bad in ["AUTH", "AUTH PL/AIN", "AUTH PLAIN !!", "AUTH PLAIN a b"] {
            assert!(
                matches!(p(bad), Err(CommandError::BadArguments(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_arguments() {
        for bad in [
            "USER",
            "USER a b",
            "RETR",
            "RETR 0",
            "RETR x",
            "RETR -1",
            "RETR 1 2",
            "DELE",
            "LIST 1 2",
            "TOP 1",
            "TOP 1 x",
            "TOP 0 1",
            "STAT 1",
            "QUIT now",
            "CAPA x",
            "RETR 4294967296",
        ] {
            assert!(
                matches!(p(bad), Err(CommandError::BadArguments(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refused_and_unknown() {
        assert_eq!(
            p("APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            Err(CommandError::ApopRefused)
        );
        assert_eq!(
            CommandError::ApopRefused.response().to_string(),
            "-ERR [AUTH] APOP is not supported, use USER/PASS or AUTH\r\n"
        );
        assert_eq!(p("XTND XMIT"), Err(CommandError::Unknown));
        assert_eq!(p(""), Err(CommandError::Unknown));
        assert_eq!(
            CommandError::Unknown.response().to_string(),
            "-ERR Unknown command\r\n"
        );
    }

    #[test]
    fn malformed_lines() {
        assert!(matches!(
            Command::parse(b"USER a\0b"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            Command::parse(b"USER a\rRETR 1"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            Command::parse(b"PASS a\tb"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            Command::parse(b"USER \xc3\x28"),
            Err(CommandError::Syntax(_))
        ));
        let at_limit = format!("USER {}", "u".repeat(MAX_COMMAND_LINE - 5));
        assert!(p(&at_limit).is_ok());
        let over = format!("USER {}", "u".repeat(MAX_COMMAND_LINE - 4));
        assert_eq!(p(&over), Err(CommandError::TooLong));
    }

    proptest! {
        #[test]
        fn never_panics_and_responses_are_one_line(line in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Err(e) = Command::parse(&line) {
                let r = e.response().to_string();
                prop_assert!(r.ends_with("\r\n"));
                prop_assert_eq!(r.matches("\r\n").count(), 1);
            }
        }
    }

    // Found by the pop3_command fuzz target: a C1 control (here U+009E) passed the byte
    // check and went into a PASS replayed to the back-end.
    #[test]
    fn c1_control_characters_are_refused() {
        for line in [
            "PASS $s\u{aa}TH S s\u{9e}AUT",
            "USER al\u{85}ice",
            "PASS \u{80}",
        ] {
            assert_eq!(
                Command::parse(line.as_bytes()),
                Err(CommandError::Syntax("control character in command")),
                "{line:?}"
            );
        }
        assert_eq!(
            Command::parse("PASS s\u{e9}cr\u{e8}t".as_bytes()),
            Ok(Command::Pass("s\u{e9}cr\u{e8}t".into()))
        );
    }
}
