//! SMTP command lines (`smtp::command`): parsing never panics; a refusal is one
//! well-formed 5xx reply line; an accepted command carries no control character, keeps
//! addresses within RFC 5321's lengths, and its addresses survive being written back out
//! (what the back-end leg does) and parsed again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use robustifier::smtp::command::{Address, Command, MAX_DOMAIN, MAX_LOCAL_PART};
use robustifier_fuzz::{assert_one_line, has_control};

fn check_address(a: &Address) {
    assert!(!has_control(&a.local), "control in local part: {a:?}");
    assert!(
        a.local.len() <= MAX_LOCAL_PART,
        "local part too long: {a:?}"
    );
    if let Some(d) = &a.domain {
        assert!(!has_control(d), "control in domain: {a:?}");
        assert!(d.len() <= MAX_DOMAIN, "domain too long: {a:?}");
    }
}

/// The address written as the back-end leg writes it, parsed again, is the same address.
fn round_trip(verb: &str, a: &Address) {
    let utf8 = if a.is_ascii() { "" } else { " SMTPUTF8" };
    let line = match verb {
        "MAIL" => format!("MAIL FROM:<{a}>{utf8}"),
        _ => format!("RCPT TO:<{a}>"),
    };
    let again = match Command::parse(line.as_bytes()) {
        Ok(Command::Mail(m)) => m.reverse_path,
        Ok(Command::Rcpt(r)) => Some(r.forward_path),
        other => panic!("{line:?} written from {a:?} parses as {other:?}"),
    };
    assert_eq!(again.as_ref(), Some(a), "{line:?} does not round-trip");
}

fuzz_target!(|line: &[u8]| {
    match Command::parse(line) {
        Err(e) => {
            let reply = e.reply();
            assert_eq!(reply.class(), 5, "{e:?} answered with {reply:?}");
            assert_one_line(&reply.to_bytes());
        }
        Ok(cmd) => {
            let texts: Vec<&str> = match &cmd {
                Command::Helo(s) | Command::Ehlo(s) | Command::Vrfy(s) | Command::Expn(s) => {
                    vec![s]
                }
                Command::Help(s) => s.iter().map(String::as_str).collect(),
                Command::Auth {
                    mechanism,
                    initial_response,
                } => std::iter::once(mechanism.as_str())
                    .chain(initial_response.as_deref())
                    .collect(),
                Command::Mail(m) => {
                    if let Some(a) = &m.reverse_path {
                        check_address(a);
                        round_trip("MAIL", a);
                    }
                    m.auth.iter().chain(&m.envid).map(String::as_str).collect()
                }
                Command::Rcpt(r) => {
                    check_address(&r.forward_path);
                    round_trip("RCPT", &r.forward_path);
                    r.orcpt.iter().map(String::as_str).collect()
                }
                _ => vec![],
            };
            for t in texts {
                assert!(!has_control(t), "control character in {cmd:?}");
            }
        }
    }
});
