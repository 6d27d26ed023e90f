//! SASL responses a client sends during AUTH (SMTP, RFC 4954) and AUTH (POP3, RFC 5034),
//! decoded once for every protocol: PLAIN (RFC 4616) and LOGIN.
//!
//! Invariant: a decoded user name or password never holds a control character (CR, LF,
//! NUL, DEL or any other C0/C1 code). The proxy replays credentials as command lines to a
//! back-end (`USER`/`PASS`, `AUTH PLAIN`), so a CR/LF smuggled inside the base64 would
//! otherwise become a command of the client's choosing on the back-end's connection.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};

/// Why a response was refused (logged; the client sees its protocol's "cannot decode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("not base64")]
    Base64,
    #[error("not UTF-8")]
    Utf8,
    #[error("not `[authzid] NUL authcid NUL passwd`")]
    Shape,
    #[error("empty user name")]
    EmptyUser,
    #[error("authorisation identity differs from the user")]
    OtherIdentity,
    #[error("control character in a credential")]
    Control,
}

/// A user name and password, free of control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// One base64 field (a LOGIN user name or password).
pub fn decode_field(b64: &str) -> Result<String, SaslError> {
    let raw = B64.decode(b64.trim()).map_err(|_| SaslError::Base64)?;
    let text = String::from_utf8(raw).map_err(|_| SaslError::Utf8)?;
    if text.chars().any(char::is_control) {
        return Err(SaslError::Control);
    }
    Ok(text)
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`. An authorisation identity other than the
/// user is refused: the proxy relays only a user's own identity.
pub fn decode_plain(b64: &str) -> Result<Credentials, SaslError> {
    let raw = B64.decode(b64.trim()).map_err(|_| SaslError::Base64)?;
    let text = String::from_utf8(raw).map_err(|_| SaslError::Utf8)?;
    let mut parts = text.split('\0');
    let (Some(authz), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Shape);
    };
    if [authz, user, password]
        .iter()
        .any(|p| p.chars().any(char::is_control))
    {
        return Err(SaslError::Control);
    }
    if user.is_empty() {
        return Err(SaslError::EmptyUser);
    }
    if !authz.is_empty() && authz != user {
        return Err(SaslError::OtherIdentity);
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// A PLAIN response for the back-end, built from credentials decoded here.
pub fn encode_plain(c: &Credentials) -> String {
    B64.encode(format!("\0{}\0{}", c.user, c.password))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        B64.encode(s)
    }

    #[test]
    fn plain_response_is_split() {
        assert_eq!(
            decode_plain(&b64("\0alice@example.org\0secret")),
            Ok(Credentials {
                user: "alice@example.org".into(),
                password: "secret".into()
            })
        );
        assert_eq!(
            decode_plain(&b64("alice\0alice\0pw")).map(|c| c.user),
            Ok("alice".into())
        );
    }

    #[test]
    fn plain_refuses_other_identities_and_bad_shapes() {
        assert_eq!(
            decode_plain(&b64("bob\0alice\0secret")),
            Err(SaslError::OtherIdentity)
        );
        assert_eq!(decode_plain("!!!"), Err(SaslError::Base64));
        assert_eq!(decode_plain(&b64("\0alice")), Err(SaslError::Shape));
        assert_eq!(decode_plain(&b64("\0a\0b\0c")), Err(SaslError::Shape));
        assert_eq!(decode_plain(&b64("\0\0pw")), Err(SaslError::EmptyUser));
        assert_eq!(
            decode_plain(&B64.encode([0, b'a', 0, 0xff])),
            Err(SaslError::Utf8)
        );
    }

    #[test]
    fn control_characters_never_reach_a_back_end() {
        for bad in [
            "\0alice\r\nDELE 1\0pw",
            "\0alice\0pw\r\nDELE 1",
            "\0alice\0pw\nQUIT",
            "x\ry\0x\ry\0pw",
            "\0al\u{7f}ice\0pw",
            "\0alice\0p\u{85}w",
        ] {
            assert_eq!(decode_plain(&b64(bad)), Err(SaslError::Control), "{bad:?}");
        }
        assert_eq!(decode_field(&b64("bob\r\nQUIT")), Err(SaslError::Control));
        assert_eq!(decode_field(&b64("b\0b")), Err(SaslError::Control));
        assert_eq!(decode_field(&b64("bob")), Ok("bob".into()));
    }

    #[test]
    fn encode_round_trips() {
        let c = Credentials {
            user: "u@example.org".into(),
            password: "p w".into(),
        };
        assert_eq!(decode_plain(&encode_plain(&c)), Ok(c));
    }
}
