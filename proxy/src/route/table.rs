//! The routing map: which back-end pool serves a recipient (SMTP) or a user (POP3).
//!
//! # File format
//!
//! One entry per line, `key pool [alternate-pool ...]`, fields separated by spaces or tabs;
//! `#` starts a comment (at the start of a field), blank lines are ignored. Keys:
//!
//! | key                | matches                                                      |
//! |--------------------|--------------------------------------------------------------|
//! | `user@example.org` | that address (local part case-sensitive, except `postmaster`) |
//! | `example.org`      | any address at that domain; also a POP3 user of that name     |
//! | `.example.org`     | any address at any subdomain of `example.org` (not the apex)  |
//! | `alice`            | a POP3 user `alice`, or `RCPT TO:<postmaster>` for `postmaster` |
//! | `*`                | everything else                                               |
//!
//! A key without `@` is both a domain key and a user key, so that one file format serves
//! both protocols: `RCPT TO:<x@example.org>` looks it up as a domain (case-insensitively),
//! `USER example.org` as a user name (exactly). The pool name `reject` (alone) means the
//! recipient is unknown: `550 5.1.1` (RFC 3463 X.1.1).
//!
//! Lookup order (most specific first): exact address, domain, parent-domain wildcards from
//! the nearest parent up, then the default `*`.
//!
//! # Invariants
//!
//! A [`RouteTable`] only exists if the whole file parsed: every key is unique after
//! normalisation (domains lower-cased, `postmaster` lower-cased), every route is either
//! `reject` or a non-empty list of distinct, well-formed pool names. Parse errors name the
//! file, the line and the reason. Whether the named pools exist, and can serve the
//! service's protocol, is checked against the running pools by
//! [`super::resolve`] on every read, not only at start.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use crate::pop3::response::{Response, ResponseCode};
use crate::smtp::command::{Address, MAX_DOMAIN, MAX_LOCAL_PART};
use crate::smtp::reply::Reply;

/// The reserved pool name for "unknown recipient".
pub const REJECT: &str = "reject";

/// Where a key sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Unknown recipient or user: refuse it at the proxy.
    Reject,
    /// The primary pool first, then alternates to try when it has no healthy back-end.
    /// Shared: every recipient it routes, and the leg and transaction they end up in, hold
    /// the same list.
    Pools(PoolNames),
}

/// A route's pool names, in order.
pub type PoolNames = std::sync::Arc<[String]>;

impl Route {
    /// RFC 5321 4.2.2 / RFC 3463 X.1.1: the reply to a RCPT routed to `reject`.
    pub fn smtp_reject_reply() -> Reply {
        Reply::new(
            550,
            Some((5, 1, 1)),
            "Recipient address rejected: unknown user",
        )
    }

    /// POP3 login routed to `reject`. Worded like a failed login (RFC 3206 5 `[AUTH]`) so
    /// that the proxy does not tell which user names exist.
    pub fn pop3_reject_response() -> Response {
        Response::err(Some(ResponseCode::Auth), "Authentication failed")
    }
}

/// Why a pool named by a service or a routing map cannot take its sessions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool {name:?} is not configured")]
    Missing { name: String },
    #[error(
        "pool {name:?} passes the client with XCLIENT (identity = \"xclient\"), which POP3 cannot carry; use \"proxy\" or \"none\""
    )]
    XclientForPop3 { name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {source}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        source: SyntaxError,
    },
    /// The line names a pool the service cannot use (absent, or unfit for its protocol).
    #[error("{}:{line}: {source}", file.display())]
    Pool {
        file: PathBuf,
        line: usize,
        source: PoolError,
    },
}

/// What is wrong with one line of a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("control character {0:?}")]
    ControlCharacter(char),
    #[error("no pool after the key")]
    NoPool,
    #[error("`reject` cannot be combined with other pools")]
    RejectCombined,
    #[error("pool name {name:?} may only use letters, digits, _ - .")]
    PoolName { name: String },
    #[error("pool {name:?} listed twice")]
    PoolTwice { name: String },
    #[error("key {key:?}: {source}")]
    Key { key: String, source: KeyError },
    #[error("duplicate key {key:?} (first on line {first})")]
    DuplicateKey { key: String, first: usize },
}

/// Why a key is not an address, a domain, a user or `*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("empty local part")]
    EmptyLocalPart,
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    #[error("longer than 255 octets")]
    TooLong,
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    #[error("{domain:?} is not a domain")]
    NotADomain { domain: String },
}

/// A parsed routing map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// `local@domain`, normalised.
    addresses: HashMap<String, Route>,
    /// Keys without `@`, lower-cased, for domain lookups.
    domains: HashMap<String, Route>,
    /// Keys without `@`, as written (`postmaster` lower-cased), for user lookups.
    users: HashMap<String, Route>,
    /// `.parent` keys, stored without the dot.
    subdomains: HashMap<String, Route>,
    default: Option<Route>,
    /// Every pool the map names -> the first line naming it, so that a pool the service
    /// cannot use is reported where it is written.
    named: HashMap<String, usize>,
}

impl RouteTable {
    /// Reads and parses a map file.
    pub fn load(path: &Path) -> Result<Self, RouteError> {
        let text = std::fs::read_to_string(path).map_err(|source| RouteError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses map text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RouteError> {
        let mut table = Self::default();
        // Normalised key -> line it was first defined on, for duplicate reports.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let err = |source: SyntaxError| RouteError::Syntax {
                file: file.to_owned(),
                line,
                source,
            };
            let fields: Vec<&str> = raw
                .split([' ', '\t'])
                .filter(|f| !f.is_empty())
                .take_while(|f| !f.starts_with('#'))
                .collect();
            let Some((&key, pools)) = fields.split_first() else {
                continue;
            };
            if let Some(bad) = raw
                .chars()
                .find(|c| c.is_control() && *c != '\t' && *c != '\r')
            {
                return Err(err(SyntaxError::ControlCharacter(bad)));
            }
            let route = parse_route(pools).map_err(err)?;
            if let Route::Pools(p) = &route {
                for pool in p.iter() {
                    table.named.entry(pool.clone()).or_insert(line);
                }
            }
            let parsed = parse_key(key).map_err(|source| {
                err(SyntaxError::Key {
                    key: key.to_owned(),
                    source,
                })
            })?;
            let identity = parsed.identity();
            if let Some(first) = seen.insert(identity, line) {
                return Err(err(SyntaxError::DuplicateKey {
                    key: key.to_owned(),
                    first,
                }));
            }
            match parsed {
                Key::Default => table.default = Some(route),
                Key::Address { local, domain } => {
                    table.addresses.insert(format!("{local}@{domain}"), route);
                }
                Key::Bare { user, domain } => {
                    if let Some(domain) = domain {
                        table.domains.insert(domain, route.clone());
                    }
                    table.users.insert(user, route);
                }
                Key::Subdomains(parent) => {
                    table.subdomains.insert(parent, route);
                }
            }
        }
        Ok(table)
    }

    /// The route for a recipient, or `None` when nothing matches and there is no default.
    pub fn lookup(&self, address: &Address) -> Option<&Route> {
        let local = normalise_local(&address.local);
        let Some(domain) = &address.domain else {
            // `<postmaster>` without domain (RFC 5321 4.1.1.3): only a user key can match.
            return self.users.get(local.as_ref()).or(self.default.as_ref());
        };
        // Address domains are already lower-cased by the parser; stay safe for callers that
        // build an Address by hand.
        let domain = domain.to_lowercase();
        self.addresses
            .get(&format!("{local}@{domain}"))
            .or_else(|| self.domains.get(&domain))
            .or_else(|| {
                domain
                    .match_indices('.')
                    .find_map(|(i, _)| self.subdomains.get(&domain[i + 1..]))
            })
            .or(self.default.as_ref())
    }

    /// The route for a POP3 login name: `user@domain` is looked up like a recipient, a
    /// name without `@` must match a key exactly, then the default applies.
    pub fn lookup_user(&self, user: &str) -> Option<&Route> {
        match user.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                self.lookup(&Address {
                    local: local.to_owned(),
                    domain: Some(domain.to_lowercase()),
                })
            }
            _ => self
                .users
                .get(normalise_local(user).as_ref())
                .or(self.default.as_ref()),
        }
    }

    /// Every pool name the map refers to, sorted, so the configuration can check that
    /// each one exists.
    pub fn pools(&self) -> BTreeSet<&str> {
        self.named.keys().map(String::as_str).collect()
    }

    /// Every pool the map names with the first line naming it, in file order.
    pub fn pool_lines(&self) -> Vec<(usize, &str)> {
        let mut lines: Vec<(usize, &str)> = self
            .named
            .iter()
            .map(|(pool, line)| (*line, pool.as_str()))
            .collect();
        lines.sort_unstable();
        lines
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        // Bare keys live in both `users` and (if they are domains) `domains`: count users.
        self.addresses.len()
            + self.users.len()
            + self.subdomains.len()
            + usize::from(self.default.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn normalise_local(local: &str) -> std::borrow::Cow<'_, str> {
    if local.eq_ignore_ascii_case("postmaster") {
        "postmaster".into()
    } else {
        local.into()
    }
}

enum Key {
    Default,
    Address {
        local: String,
        domain: String,
    },
    /// No `@`: a user name, and also a domain if it is shaped like one.
    Bare {
        user: String,
        domain: Option<String>,
    },
    Subdomains(String),
}

impl Key {
    /// What makes two keys the same entry.
    fn identity(&self) -> String {
        match self {
            Self::Default => "*".into(),
            Self::Address { local, domain } => format!("{local}@{domain}"),
            // Two bare keys collide if they are the same user or the same domain; the
            // user spelling is exact, so compare the lower-cased form when it is a domain.
            Self::Bare { user, domain } => format!("bare:{}", domain.as_deref().unwrap_or(user)),
            Self::Subdomains(parent) => format!(".{parent}"),
        }
    }
}

fn parse_key(key: &str) -> Result<Key, KeyError> {
    if key == "*" {
        return Ok(Key::Default);
    }
    if let Some(parent) = key.strip_prefix('.') {
        return Ok(Key::Subdomains(parse_domain(parent)?));
    }
    if let Some((local, domain)) = key.rsplit_once('@') {
        if local.is_empty() {
            return Err(KeyError::EmptyLocalPart);
        }
        if local.len() > MAX_LOCAL_PART {
            return Err(KeyError::LocalPartTooLong);
        }
        return Ok(Key::Address {
            local: normalise_local(local).into_owned(),
            domain: parse_domain(domain)?,
        });
    }
    if key.len() > MAX_DOMAIN {
        return Err(KeyError::TooLong);
    }
    Ok(Key::Bare {
        user: normalise_local(key).into_owned(),
        domain: parse_domain(key).ok(),
    })
}

/// Whether every dot-separated label of `d` is 1 to 63 letters, digits or hyphens, not
/// starting or ending with a hyphen (routing maps and dedicated queues name domains so).
pub(crate) fn domain_labels_ok(d: &str) -> bool {
    d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    })
}

/// A domain or address literal, lower-cased; the same shape the SMTP parser produces.
fn parse_domain(d: &str) -> Result<String, KeyError> {
    if d.starts_with('[') && d.ends_with(']') && d.len() > 2 {
        return Ok(d.to_lowercase());
    }
    if d.len() > MAX_DOMAIN {
        return Err(KeyError::DomainTooLong);
    }
    if domain_labels_ok(d) {
        Ok(d.to_lowercase())
    } else {
        Err(KeyError::NotADomain {
            domain: d.to_owned(),
        })
    }
}

fn parse_route(pools: &[&str]) -> Result<Route, SyntaxError> {
    match pools {
        [] => Err(SyntaxError::NoPool),
        [one] if one.eq_ignore_ascii_case(REJECT) => Ok(Route::Reject),
        _ => {
            let mut out: Vec<String> = Vec::with_capacity(pools.len());
            for &p in pools {
                if p.eq_ignore_ascii_case(REJECT) {
                    return Err(SyntaxError::RejectCombined);
                }
                let ok = p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                if !ok {
                    return Err(SyntaxError::PoolName { name: p.to_owned() });
                }
                if out.iter().any(|q| q == p) {
                    return Err(SyntaxError::PoolTwice { name: p.to_owned() });
                }
                out.push(p.to_owned());
            }
            Ok(Route::Pools(out.into()))
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reject => f.write_str(REJECT),
            Self::Pools(p) => f.write_str(&p.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
# Robustifier routing map
*                       general

example.org             mx-a mx-b   # primary, then alternate
.example.org            mx-sub
deep.sub.example.org    mx-deep
ceo@example.org         vip
Postmaster              ops
ghost@example.org       reject
old.example.net         reject
\talice\tpop-a
john.doe                pop-b
[192.0.2.1]             literal
";

    fn table() -> RouteTable {
        RouteTable::parse(MAP, Path::new("routes.map")).unwrap()
    }

    fn pools(r: Option<&Route>) -> Vec<&str> {
        match r {
            Some(Route::Pools(p)) => p.iter().map(String::as_str).collect(),
            Some(Route::Reject) => vec![REJECT],
            None => vec![],
        }
    }

    fn at(local: &str, domain: &str) -> Address {
        Address {
            local: local.into(),
            domain: Some(domain.into()),
        }
    }

    #[test]
    fn lookup_order() {
        let t = table();
        assert_eq!(pools(t.lookup(&at("ceo", "example.org"))), ["vip"]);
        // Local parts are case-sensitive: CEO is not ceo.
        assert_eq!(pools(t.lookup(&at("CEO", "example.org"))), ["mx-a", "mx-b"]);
        assert_eq!(pools(t.lookup(&at("bob", "Example.ORG"))), ["mx-a", "mx-b"]);
        assert_eq!(pools(t.lookup(&at("bob", "a.example.org"))), ["mx-sub"]);
        assert_eq!(pools(t.lookup(&at("bob", "x.y.example.org"))), ["mx-sub"]);
        assert_eq!(
            pools(t.lookup(&at("bob", "deep.sub.example.org"))),
            ["mx-deep"]
        );
        assert_eq!(
            pools(t.lookup(&at("bob", "x.deep.sub.example.org"))),
            ["mx-sub"]
        );
        assert_eq!(pools(t.lookup(&at("bob", "notexample.org"))), ["general"]);
        assert_eq!(pools(t.lookup(&at("bob", "elsewhere.com"))), ["general"]);
        assert_eq!(pools(t.lookup(&at("x", "[192.0.2.1]"))), ["literal"]);
        assert_eq!(t.lookup(&at("ghost", "example.org")), Some(&Route::Reject));
        assert_eq!(
            t.lookup(&at("anyone", "old.example.net")),
            Some(&Route::Reject)
        );
    }

    #[test]
    fn postmaster_is_case_insensitive() {
        let t = table();
        for pm in ["postmaster", "POSTMASTER", "PostMaster"] {
            let a = Address {
                local: pm.into(),
                domain: None,
            };
            assert_eq!(pools(t.lookup(&a)), ["ops"], "{pm}");
            assert_eq!(pools(t.lookup_user(pm)), ["ops"]);
        }
        let t = RouteTable::parse("POSTMASTER@example.org pm\n", Path::new("m")).unwrap();
        assert_eq!(pools(t.lookup(&at("postmaster", "example.org"))), ["pm"]);
    }

    #[test]
    fn pop3_users() {
        let t = table();
        assert_eq!(pools(t.lookup_user("alice")), ["pop-a"]);
        assert_eq!(pools(t.lookup_user("Alice")), ["general"]);
        assert_eq!(pools(t.lookup_user("john.doe")), ["pop-b"]);
        assert_eq!(pools(t.lookup_user("ceo@EXAMPLE.org")), ["vip"]);
        assert_eq!(pools(t.lookup_user("bob@a.example.org")), ["mx-sub"]);
        assert_eq!(pools(t.lookup_user("nobody")), ["general"]);
        assert_eq!(pools(t.lookup_user("@")), ["general"]);
        let no_default = RouteTable::parse("alice a\n", Path::new("m")).unwrap();
        assert_eq!(no_default.lookup_user("bob"), None);
        assert_eq!(no_default.lookup(&at("bob", "example.org")), None);
    }

    #[test]
    fn pools_and_len() {
        let t = table();
        assert_eq!(
            t.pools().into_iter().collect::<Vec<_>>(),
            [
                "general", "literal", "mx-a", "mx-b", "mx-deep", "mx-sub", "ops", "pop-a", "pop-b",
                "vip"
            ]
        );
        assert_eq!(t.len(), 11);
        assert!(
            RouteTable::parse("# only comments\n\n   \n", Path::new("m"))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            Route::Pools(vec!["a".into(), "b".into()].into()).to_string(),
            "a b"
        );
    }

    #[test]
    fn reject_replies() {
        assert_eq!(
            Route::smtp_reject_reply().to_string(),
            "550 5.1.1 Recipient address rejected: unknown user\r\n"
        );
        assert_eq!(
            Route::pop3_reject_response().to_string(),
            "-ERR [AUTH] Authentication failed\r\n"
        );
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let cases: &[(&str, usize, &str)] = &[
            ("example.org\n", 1, "no pool"),
            (
                "# c\n\nexample.org a\nexample.ORG b\n",
                4,
                "duplicate key \"example.ORG\" (first on line 3)",
            ),
            ("* a\n* b\n", 2, "duplicate key"),
            ("a@b.c x reject\n", 1, "cannot be combined"),
            ("a@b.c reject reject\n", 1, "cannot be combined"),
            ("a@b.c p p\n", 1, "listed twice"),
            ("a@b.c p/q\n", 1, "pool name"),
            ("@b.c p\n", 1, "empty local part"),
            ("a@ p\n", 1, "not a domain"),
            ("a@b..c p\n", 1, "not a domain"),
            (".-x.org p\n", 1, "not a domain"),
            ("a@-b.c p\n", 1, "not a domain"),
            ("x p\u{7}\n", 1, "control character"),
        ];
        for (text, line, reason) in cases {
            let e = RouteTable::parse(text, Path::new("/etc/robustifier/smtp.map")).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("/etc/robustifier/smtp.map:{line}: ")),
                "{text:?}: {msg}"
            );
            assert!(msg.contains(reason), "{text:?}: {msg}");
        }
        let long = format!("{}@b.c p\n", "l".repeat(65));
        assert!(RouteTable::parse(&long, Path::new("m")).is_err());
    }

    #[test]
    fn load_reports_missing_file() {
        let e = RouteTable::load(Path::new("/nonexistent/robustifier.map")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/robustifier.map: "));
    }

    #[test]
    fn end_to_end_with_the_smtp_parser() {
        use crate::smtp::command::Command;
        let t = table();
        let Ok(Command::Rcpt(r)) = Command::parse(b"RCPT TO:<\"ceo\"@EXAMPLE.ORG>") else {
            panic!("parse");
        };
        assert_eq!(pools(t.lookup(&r.forward_path)), ["vip"]);
        let Ok(Command::Rcpt(r)) = Command::parse(b"RCPT TO:<PostMaster>") else {
            panic!("parse");
        };
        assert_eq!(pools(t.lookup(&r.forward_path)), ["ops"]);
    }
}
