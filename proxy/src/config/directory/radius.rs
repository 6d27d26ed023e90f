//! `[directory.radius]`: an Access-Request per lookup; an Access-Accept's reply attribute
//! names the key's pool or back-ends, an Access-Reject means the key is unknown.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{config::balance::Invalid, directory::template};

/// The RADIUS authentication port (RFC 2865 section 3).
pub const DEFAULT_PORT: u16 = 1812;
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// Transmissions per server at most: more only stretch the per-try timeout thin.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest secret or password accepted. RFC 2865 hides at most 128 octets of password;
/// a secret file of kilobytes is a wrong file, not a secret.
pub const MAX_SECRET: usize = 128;
/// A text attribute's value is at most 253 octets (RFC 2865 section 5).
pub const MAX_TEXT: usize = 253;

/// Reply attributes that carry text (RFC 2865 section 5, RFC 2869 section 5.12 for
/// Framed-Pool), by name and type: the ones a server can fill with a pool's name.
pub const TEXT_ATTRIBUTES: &[(&str, u8)] = &[
    ("Filter-Id", 11),
    ("Reply-Message", 18),
    ("Callback-Number", 19),
    ("Callback-Id", 20),
    ("Framed-Route", 22),
    ("Class", 25),
    ("Framed-Pool", 88),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRadius {
    /// Servers tried in order, `address:port` (port 1812 if left out): IP addresses, since
    /// each reply must come from the address its request went to; IPv6 as `[addr]:port`.
    pub servers: Vec<String>,
    /// File holding the shared secret (one line; a trailing newline is not part of it).
    pub secret_file: String,
    /// User-Name template: `%s` the whole key (default), `%u` its local part, `%d` its domain.
    pub user_name: Option<String>,
    /// Reply attribute holding the pool, back-end names or `reject` (default "Reply-Message"):
    /// one of Filter-Id, Reply-Message, Callback-Number, Callback-Id, Framed-Route, Class,
    /// Framed-Pool.
    pub attribute: Option<String>,
    /// NAS-Identifier sent with each request (default "robustifier").
    pub nas_identifier: Option<String>,
    /// Transmissions per server before the next is tried (default 2, at most 10).
    pub attempts: Option<u32>,
    /// File holding the User-Password sent with every lookup (hidden with the secret, RFC
    /// 2865 section 5.2); none: an empty password. The server is expected to accept known
    /// users on their name alone (FreeRADIUS: `Auth-Type := Accept`); a password here
    /// only serves servers that insist on checking one.
    pub password_file: Option<String>,
}

/// Bytes read from a secret file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A validated `[directory.radius]`. The secret and password are read here, at load, so a
/// changed file makes a changed directory (and a new source on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Radius {
    pub servers: Vec<SocketAddr>,
    pub secret_file: PathBuf,
    pub secret: Secret,
    pub user_name: String,
    /// The canonical name of a [`TEXT_ATTRIBUTES`] entry.
    pub attribute: String,
    /// Its type.
    pub attribute_type: u8,
    pub nas_identifier: String,
    pub attempts: u32,
    pub password: Secret,
}

/// `server` as an address, with port 1812 if it has none.
pub fn server_address(server: &str) -> Option<SocketAddr> {
    let server = server.trim();
    if let Ok(a) = server.parse::<SocketAddr>() {
        return (a.port() != 0).then_some(a);
    }
    let bare = server
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(server);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
}

/// The one-line secret in `value` (relative to `base`): 1 to [`MAX_SECRET`] bytes.
fn read_secret(base: &Path, key: &str, value: &str) -> Result<(PathBuf, Secret), Invalid> {
    let path = crate::config::readable(base, key, value)?;
    let text = crate::config::snmp::read_secret(&path).map_err(|e| {
        (
            key.to_owned(),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if text.contains('\n') {
        return Err((
            key.to_owned(),
            format!("{} must hold one line", path.display()),
        ));
    }
    if text.is_empty() || text.len() > MAX_SECRET {
        return Err((
            key.to_owned(),
            format!(
                "{} holds {} bytes: must be 1 to {MAX_SECRET}",
                path.display(),
                text.len()
            ),
        ));
    }
    Ok((path, Secret(text.into_bytes())))
}

pub fn validate(key: &str, raw: RawRadius, base: &Path) -> Result<Radius, Invalid> {
    let sub = |k: &str| format!("{key}.{k}");
    if raw.servers.is_empty() {
        return Err((sub("servers"), "name at least one server".into()));
    }
    let mut servers = Vec::new();
    for (i, s) in raw.servers.iter().enumerate() {
        let addr = server_address(s).ok_or_else(|| {
            (
                format!("{key}.servers[{i}]"),
                format!("{s:?} is not an IP address with an optional port (e.g. 198.18.1.20:1812)"),
            )
        })?;
        if servers.contains(&addr) {
            return Err((
                format!("{key}.servers[{i}]"),
                format!("{addr} is listed twice"),
            ));
        }
        servers.push(addr);
    }
    let (secret_file, secret) = read_secret(base, &sub("secret_file"), &raw.secret_file)?;
    let user_name = raw.user_name.unwrap_or_else(|| "%s".into());
    template::parse(&user_name).map_err(|e| (sub("user_name"), e.to_string()))?;
    let wanted = raw.attribute.as_deref().unwrap_or("Reply-Message");
    let (attribute, attribute_type) = TEXT_ATTRIBUTES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(wanted.trim()))
        .ok_or_else(|| {
            let known: Vec<_> = TEXT_ATTRIBUTES.iter().map(|(n, _)| *n).collect();
            (
                sub("attribute"),
                format!("{wanted:?} is not one of {}", known.join(", ")),
            )
        })?;
    let nas_identifier = raw.nas_identifier.unwrap_or_else(|| "robustifier".into());
    if nas_identifier.is_empty()
        || nas_identifier.len() > MAX_TEXT
        || nas_identifier.chars().any(char::is_control)
    {
        return Err((
            sub("nas_identifier"),
            format!("must be 1 to {MAX_TEXT} bytes of printable text"),
        ));
    }
    let attempts = raw.attempts.unwrap_or(DEFAULT_ATTEMPTS);
    if !(1..=MAX_ATTEMPTS).contains(&attempts) {
        return Err((sub("attempts"), format!("must be 1 to {MAX_ATTEMPTS}")));
    }
    let password = match raw.password_file {
        Some(f) => read_secret(base, &sub("password_file"), &f)?.1,
        None => Secret(Vec::new()),
    };
    Ok(Radius {
        servers,
        secret_file,
        secret,
        user_name,
        attribute: (*attribute).to_owned(),
        attribute_type: *attribute_type,
        nas_identifier,
        attempts,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "robustifier-radius-config-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("secret"), "s3cret-value\n").unwrap();
        d
    }

    fn raw(servers: &[&str]) -> RawRadius {
        RawRadius {
            servers: servers.iter().map(|s| (*s).to_owned()).collect(),
            secret_file: "secret".into(),
            user_name: None,
            attribute: None,
            nas_identifier: None,
            attempts: None,
            password_file: None,
        }
    }

    #[test]
    fn defaults_and_ports() {
        let d = dir("defaults");
        let r = validate(
            "directory[0].radius",
            raw(&[
                "198.18.1.20",
                "198.18.1.21:1645",
                "[2001:db8::1]",
                "2001:db8::2",
            ]),
            &d,
        )
        .unwrap();
        assert_eq!(
            r.servers,
            [
                "198.18.1.20:1812".parse().unwrap(),
                "198.18.1.21:1645".parse().unwrap(),
                "[2001:db8::1]:1812".parse().unwrap(),
                "[2001:db8::2]:1812".parse().unwrap(),
            ]
        );
        assert_eq!(
            r.secret.0, b"s3cret-value",
            "the trailing newline is trimmed"
        );
        assert_eq!(r.secret_file, d.join("secret"));
        assert_eq!(r.user_name, "%s");
        assert_eq!(
            (r.attribute.as_str(), r.attribute_type),
            ("Reply-Message", 18)
        );
        assert_eq!(r.nas_identifier, "robustifier");
        assert_eq!(r.attempts, 2);
        assert!(r.password.0.is_empty());
        assert!(
            !format!("{r:?}").contains("s3cret"),
            "Debug hides the secret"
        );
    }

    #[test]
    fn keys_are_checked() {
        let d = dir("checks");
        let err = |r: RawRadius| validate("k", r, &d).unwrap_err();
        assert_eq!(err(raw(&[])).0, "k.servers");
        assert_eq!(err(raw(&["radius.example:1812"])).0, "k.servers[0]");
        assert_eq!(err(raw(&["198.18.1.20:0"])).0, "k.servers[0]");
        assert_eq!(
            err(raw(&["198.18.1.20", "198.18.1.20:1812"])).0,
            "k.servers[1]"
        );
        let mut r = raw(&["198.18.1.20"]);
        r.secret_file = "missing".into();
        assert_eq!(err(r).0, "k.secret_file");
        std::fs::write(d.join("empty"), "\n").unwrap();
        let mut r = raw(&["198.18.1.20"]);
        r.secret_file = "empty".into();
        assert_eq!(err(r).0, "k.secret_file");
        std::fs::write(d.join("two"), "a\nb\n").unwrap();
        let mut r = raw(&["198.18.1.20"]);
        r.secret_file = "two".into();
        assert_eq!(err(r).0, "k.secret_file");
        let mut r = raw(&["198.18.1.20"]);
        r.user_name = Some("fixed".into());
        assert_eq!(err(r).0, "k.user_name");
        let mut r = raw(&["198.18.1.20"]);
        r.user_name = Some("%x".into());
        assert_eq!(err(r).0, "k.user_name");
        let mut r = raw(&["198.18.1.20"]);
        r.attribute = Some("Framed-IP-Address".into());
        assert_eq!(err(r).0, "k.attribute");
        let mut r = raw(&["198.18.1.20"]);
        r.attempts = Some(0);
        assert_eq!(err(r).0, "k.attempts");
        let mut r = raw(&["198.18.1.20"]);
        r.nas_identifier = Some(String::new());
        assert_eq!(err(r).0, "k.nas_identifier");
        let mut r = raw(&["198.18.1.20"]);
        r.password_file = Some("missing".into());
        assert_eq!(err(r).0, "k.password_file");
    }

    #[test]
    fn attribute_names_are_matched_without_case() {
        let d = dir("attribute");
        let mut r = raw(&["198.18.1.20"]);
        r.attribute = Some("filter-id".into());
        r.user_name = Some("%u".into());
        r.attempts = Some(3);
        std::fs::write(d.join("pw"), "lookup\r\n").unwrap();
        r.password_file = Some("pw".into());
        let r = validate("k", r, &d).unwrap();
        assert_eq!((r.attribute.as_str(), r.attribute_type), ("Filter-Id", 11));
        assert_eq!(r.user_name, "%u");
        assert_eq!(r.attempts, 3);
        assert_eq!(r.password.0, b"lookup");
    }
}
