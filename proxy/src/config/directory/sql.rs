//! `[directory.sql]`: one parameterised query against PostgreSQL, MariaDB/MySQL or SQLite
//! whose first column names the key's pool or back-ends.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::balance::Invalid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSql {
    /// Servers tried in order, all of one engine: `postgres://user@host[:port]/db`,
    /// `mysql://user@host[:port]/db`, or one `sqlite:///path/to/file.db`. Passwords never
    /// go in a URL.
    pub urls: Vec<String>,
    /// File holding the password (not for SQLite).
    pub password_file: Option<String>,
    /// The query: `%s` the whole key, `%u` its local part, `%d` its domain, each passed as
    /// a bound parameter, never spliced into the text, e.g.
    /// `SELECT pool FROM mailbox WHERE address = %s`.
    pub query: String,
    /// "require" (default for servers), "off" (only with `plaintext_password = true` when
    /// a password is sent).
    pub tls: Option<String>,
    /// PEM CA bundle the servers' certificates must chain to.
    pub ca_file: Option<String>,
    /// Connections kept per server (default 4).
    pub pool_size: Option<u32>,
    /// Allow a password over a connection without TLS (default false).
    pub plaintext_password: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mysql,
    Sqlite,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Sqlite => "sqlite",
        }
    }
}

/// A validated `[directory.sql]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sql {
    pub engine: Engine,
    /// Server URLs as given; for SQLite, the database file's path (resolved).
    pub urls: Vec<String>,
    pub password_file: Option<PathBuf>,
    pub query: String,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub pool_size: u32,
    pub plaintext_password: bool,
}

/// Connections kept per server at most: a directory answers short queries, and a few
/// connections per front-end already serve thousands of lookups a second.
pub const MAX_POOL_SIZE: u32 = 64;
pub const DEFAULT_POOL_SIZE: u32 = 4;

pub fn validate(key: &str, raw: RawSql, base: &Path) -> Result<Sql, Invalid> {
    let err = |k: &str, why: String| (format!("{key}.{k}"), why);
    if raw.urls.is_empty() {
        return Err(err("urls", "give at least one server".into()));
    }
    let mut engine = None;
    let mut urls = Vec::new();
    for (i, text) in raw.urls.iter().enumerate() {
        let k = format!("urls[{i}]");
        let url = url::Url::parse(text).map_err(|e| err(&k, format!("{text:?}: {e}")))?;
        let this = match url.scheme() {
            "postgres" | "postgresql" => Engine::Postgres,
            "mysql" => Engine::Mysql,
            "sqlite" => Engine::Sqlite,
            other => {
                return Err(err(
                    &k,
                    format!("scheme {other:?} is not one of postgres://, mysql://, sqlite://"),
                ));
            }
        };
        if engine.is_some_and(|e| e != this) {
            return Err(err(&k, "all servers must be of one engine".into()));
        }
        engine = Some(this);
        if url.password().is_some() {
            return Err(err(
                &k,
                "no password in a URL (it would show in logs and listings): put it in password_file"
                    .into(),
            ));
        }
        // Connection options in the URL (sslmode=disable, ...) would bypass the checks
        // below: TLS and CA are keys of their own.
        if url.query().is_some() || url.fragment().is_some() {
            return Err(err(
                &k,
                "no ?options in a URL: use the keys tls, ca_file, pool_size".into(),
            ));
        }
        if this == Engine::Sqlite {
            if raw.urls.len() > 1 {
                return Err(err("urls", "SQLite takes one file, one URL".into()));
            }
            // sqlite:///abs/file.db has an empty host; sqlite://rel.db names a file
            // relative to the configuration's folder.
            let rel = match url.host_str() {
                None | Some("") => url.path().to_owned(),
                Some(h) => format!("{h}{}", url.path()),
            };
            let rel = percent_decode(&rel).ok_or_else(|| err(&k, "bad %-escape".into()))?;
            if rel.is_empty() || rel == "/" {
                return Err(err(
                    &k,
                    "name the database file: sqlite:///path/to/file.db".into(),
                ));
            }
            let path = base.join(&rel);
            if !path.is_file() {
                return Err(err(
                    &k,
                    format!(
                        "{} is not a file (SQLite databases are opened read-only, never created)",
                        path.display()
                    ),
                ));
            }
            urls.push(path.display().to_string());
            continue;
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(err(&k, "name the server: host[:port]".into()));
        }
        if url.username().is_empty() {
            return Err(err(&k, "name the user: user@host".into()));
        }
        if url.path().trim_start_matches('/').is_empty() {
            return Err(err(&k, "name the database: .../database".into()));
        }
        urls.push(text.clone());
    }
    let Some(engine) = engine else {
        return Err(err("urls", "give at least one server".into()));
    };
    let parts =
        crate::directory::template::parse(&raw.query).map_err(|e| err("query", e.to_string()))?;
    // The key's parts go in as bound parameters; a placeholder written by hand in the
    // text would be a parameter nothing binds (or one bound to the wrong part).
    for p in &parts {
        if let crate::directory::template::Part::Text(t) = p {
            let dollar = t
                .as_bytes()
                .windows(2)
                .any(|w| w[0] == b'$' && w[1].is_ascii_digit());
            if t.contains('?') || dollar {
                return Err(err(
                    "query",
                    "no ? or $1 placeholders: use %s, %u, %d (bound as parameters)".into(),
                ));
            }
        }
    }
    let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    if pool_size == 0 || pool_size > MAX_POOL_SIZE {
        return Err(err("pool_size", format!("must be 1 to {MAX_POOL_SIZE}")));
    }
    let plaintext_password = raw.plaintext_password.unwrap_or(false);
    if engine == Engine::Sqlite {
        for (k, given) in [
            ("password_file", raw.password_file.is_some()),
            ("tls", raw.tls.is_some()),
            ("ca_file", raw.ca_file.is_some()),
            ("plaintext_password", raw.plaintext_password.is_some()),
        ] {
            if given {
                return Err(err(k, "not for SQLite (a local file)".into()));
            }
        }
        return Ok(Sql {
            engine,
            urls,
            password_file: None,
            query: raw.query,
            tls: false,
            ca_file: None,
            pool_size,
            plaintext_password: false,
        });
    }
    let tls = match raw.tls.as_deref().unwrap_or("require") {
        "require" => true,
        "off" => false,
        other => {
            return Err(err(
                "tls",
                format!("{other:?} is not one of \"require\", \"off\""),
            ));
        }
    };
    let password_file = raw
        .password_file
        .as_deref()
        .map(|f| crate::config::readable(base, &format!("{key}.password_file"), f))
        .transpose()?;
    if !tls && password_file.is_some() && !plaintext_password {
        return Err(err(
            "tls",
            "a password would cross the network in clear: keep tls = \"require\" (or set plaintext_password = true)".into(),
        ));
    }
    let ca_file = raw
        .ca_file
        .as_deref()
        .map(|f| crate::config::readable(base, &format!("{key}.ca_file"), f))
        .transpose()?;
    if !tls && ca_file.is_some() {
        return Err(err("ca_file", "only with tls = \"require\"".into()));
    }
    Ok(Sql {
        engine,
        urls,
        password_file,
        query: raw.query,
        tls,
        ca_file,
        pool_size,
        plaintext_password,
    })
}

/// `%XX` escapes of a URL path decoded (a file name with spaces, say).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(urls: &[&str]) -> RawSql {
        RawSql {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            password_file: None,
            query: "SELECT pool FROM mailbox WHERE address = %s".into(),
            tls: None,
            ca_file: None,
            pool_size: None,
            plaintext_password: None,
        }
    }

    fn refused(r: RawSql, base: &Path) -> (String, String) {
        validate("directory[0].sql", r, base).unwrap_err()
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "rb-sqlcfg-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("pw"), "secret").unwrap();
        std::fs::write(d.join("ca.pem"), "x").unwrap();
        std::fs::write(d.join("map.db"), "").unwrap();
        d
    }

    #[test]
    fn a_server_directory_is_accepted_with_its_defaults() {
        let d = dir();
        let mut r = raw(&[
            "postgres://rb@db1.example:5432/mail",
            "postgresql://rb@db2.example/mail",
        ]);
        r.password_file = Some("pw".into());
        let s = validate("k", r, &d).unwrap();
        assert_eq!(s.engine, Engine::Postgres);
        assert!(s.tls);
        assert_eq!(s.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(s.password_file, Some(d.join("pw")));
        assert_eq!(s.urls.len(), 2);
    }

    #[test]
    fn engines_are_not_mixed() {
        let (k, why) = refused(raw(&["postgres://rb@a/m", "mysql://rb@b/m"]), &dir());
        assert_eq!(k, "directory[0].sql.urls[1]");
        assert!(why.contains("one engine"), "{why}");
        let (_, why) = refused(raw(&["ldap://a/m"]), &dir());
        assert!(why.contains("not one of"), "{why}");
    }

    #[test]
    fn a_password_in_a_url_is_refused() {
        let (k, why) = refused(raw(&["mysql://rb:secret@db/mail"]), &dir());
        assert_eq!(k, "directory[0].sql.urls[0]");
        assert!(why.contains("password_file"), "{why}");
    }

    #[test]
    fn url_options_are_refused() {
        let (_, why) = refused(raw(&["postgres://rb@db/mail?sslmode=disable"]), &dir());
        assert!(why.contains("tls"), "{why}");
    }

    #[test]
    fn server_urls_name_host_user_and_database() {
        for u in [
            "postgres:///mail",
            "postgres://db/mail",
            "mysql://rb@db",
            "mysql://rb@db/",
        ] {
            refused(raw(&[u]), &dir());
        }
    }

    #[test]
    fn a_bad_query_template_is_refused() {
        for q in [
            "SELECT pool FROM mailbox WHERE address = %x",
            "SELECT pool FROM mailbox",
            "SELECT pool FROM mailbox WHERE address = %",
            "SELECT pool FROM mailbox WHERE address = ? OR address = %s",
            "SELECT pool FROM mailbox WHERE address = $1 OR address = %s",
        ] {
            let mut r = raw(&["postgres://rb@db/mail"]);
            r.query = q.into();
            let (k, _) = refused(r, &dir());
            assert_eq!(k, "directory[0].sql.query", "{q}");
        }
    }

    #[test]
    fn a_password_without_tls_needs_plaintext_password() {
        let d = dir();
        let mut r = raw(&["mysql://rb@db/mail"]);
        r.password_file = Some("pw".into());
        r.tls = Some("off".into());
        let (k, why) = refused(r, &d);
        assert_eq!(k, "directory[0].sql.tls");
        assert!(why.contains("plaintext_password"), "{why}");
        let mut r = raw(&["mysql://rb@db/mail"]);
        r.password_file = Some("pw".into());
        r.tls = Some("off".into());
        r.plaintext_password = Some(true);
        assert!(!validate("k", r, &d).unwrap().tls);
        // Without a password nothing secret crosses: no TLS is the operator's choice.
        let mut r = raw(&["mysql://rb@db/mail"]);
        r.tls = Some("off".into());
        assert!(validate("k", r, &d).is_ok());
        let mut r = raw(&["mysql://rb@db/mail"]);
        r.tls = Some("prefer".into());
        refused(r, &d);
    }

    #[test]
    fn missing_secret_and_ca_files_are_refused() {
        let d = dir();
        let mut r = raw(&["mysql://rb@db/mail"]);
        r.password_file = Some("nope".into());
        assert_eq!(refused(r, &d).0, "directory[0].sql.password_file");
        let mut r = raw(&["mysql://rb@db/mail"]);
        r.ca_file = Some("nope.pem".into());
        assert_eq!(refused(r, &d).0, "directory[0].sql.ca_file");
    }

    #[test]
    fn sqlite_takes_one_existing_file() {
        let d = dir();
        let abs = format!("sqlite://{}", d.join("map.db").display());
        let s = validate("k", raw(&[&abs]), &d).unwrap();
        assert_eq!(s.engine, Engine::Sqlite);
        assert_eq!(s.urls, [d.join("map.db").display().to_string()]);
        let s = validate("k", raw(&["sqlite://map.db"]), &d).unwrap();
        assert_eq!(s.urls, [d.join("map.db").display().to_string()]);
        let (_, why) = refused(raw(&["sqlite://missing.db"]), &d);
        assert!(why.contains("not a file"), "{why}");
        let (k, _) = refused(raw(&[&abs, &abs]), &d);
        assert_eq!(k, "directory[0].sql.urls");
        let mut r = raw(&[&abs]);
        r.password_file = Some("pw".into());
        assert_eq!(refused(r, &d).0, "directory[0].sql.password_file");
        let mut r = raw(&[&abs]);
        r.tls = Some("require".into());
        assert_eq!(refused(r, &d).0, "directory[0].sql.tls");
    }

    #[test]
    fn pool_size_is_bounded() {
        for n in [0, MAX_POOL_SIZE + 1] {
            let mut r = raw(&["postgres://rb@db/mail"]);
            r.pool_size = Some(n);
            assert_eq!(refused(r, &dir()).0, "directory[0].sql.pool_size");
        }
        let mut r = raw(&["postgres://rb@db/mail"]);
        r.pool_size = Some(MAX_POOL_SIZE);
        assert!(validate("k", r, &dir()).is_ok());
    }
}
