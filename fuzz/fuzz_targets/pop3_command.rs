//! POP3 command lines (`pop3::command`): parsing never panics; a refusal is one `-ERR`
//! line; an accepted command respects RFC 2449's length limit, carries no control
//! character, and the login commands the proxy replays to a back-end read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use robustifier::pop3::command::{Command, MAX_COMMAND_LINE};
use robustifier_fuzz::{assert_one_line, has_control};

fuzz_target!(|line: &[u8]| {
    match Command::parse(line) {
        Err(e) => {
            let r = e.response();
            assert!(!r.is_ok(), "{e:?} answered with {r:?}");
            assert_one_line(&r.to_bytes());
        }
        Ok(cmd) => {
            assert!(line.len() <= MAX_COMMAND_LINE);
            let replayed = match &cmd {
                Command::User(u) => Some(format!("USER {u}")),
                Command::Pass(p) => Some(format!("PASS {p}")),
                Command::Auth {
                    mechanism,
                    initial_response,
                } => {
                    assert!(!has_control(mechanism));
                    Some(match initial_response {
                        Some(ir) => format!("AUTH {mechanism} {ir}"),
                        None => format!("AUTH {mechanism}"),
                    })
                }
                _ => None,
            };
            if let Some(replayed) = replayed {
                assert!(!has_control(&replayed), "control character in {cmd:?}");
                assert_eq!(
                    Command::parse(replayed.as_bytes()).as_ref(),
                    Ok(&cmd),
                    "{replayed:?} does not read back"
                );
            }
        }
    }
});
