//! SASL decoding (`sasl`), shared by SMTP AUTH and POP3: decoding never panics; decoded
//! credentials carry no control character (they are replayed to back-ends inside command
//! lines) and no NUL, the user is never empty; PLAIN credentials round-trip through
//! `encode_plain`, and any clean credentials survive an encode and decode.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use robustifier::sasl::{Credentials, decode_field, decode_plain, encode_plain};
use robustifier_fuzz::has_control;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    b64: &'a str,
    user: String,
    password: String,
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(field) = decode_field(input.b64) {
        assert!(!has_control(&field), "{field:?}");
    }
    if let Ok(c) = decode_plain(input.b64) {
        assert!(!c.user.is_empty());
        assert!(!has_control(&c.user) && !has_control(&c.password), "{c:?}");
        assert_eq!(decode_plain(&encode_plain(&c)).as_ref(), Ok(&c));
    }
    let c = Credentials {
        user: input.user,
        password: input.password,
    };
    if !c.user.is_empty() && !has_control(&c.user) && !has_control(&c.password) {
        assert_eq!(decode_plain(&encode_plain(&c)), Ok(c));
    }
});
