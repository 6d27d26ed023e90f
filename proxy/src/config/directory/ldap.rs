//! `[directory.ldap]`: search a directory server for the key's entry and read the
//! attribute that names its pool or back-ends.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{config::balance::Invalid, directory::template};

pub const DEFAULT_SERVER_TIMEOUT_MS: u64 = 400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLdap {
    /// Servers tried in order: `ldaps://host[:port]` or `ldap://host[:port]`.
    pub urls: Vec<String>,
    /// Upgrade `ldap://` connections with StartTLS (default true).
    pub starttls: Option<bool>,
    /// PEM CA bundle the servers' certificates must chain to.
    pub ca_file: Option<String>,
    /// Search base, e.g. `ou=people,dc=example,dc=test`.
    pub base: String,
    /// Filter template: `%s` the whole key, `%u` its local part, `%d` its domain, each
    /// escaped (RFC 4515), e.g. `(&(objectClass=inetOrgPerson)(mail=%s))`.
    pub filter: String,
    /// Attribute holding the pool, back-end names or `reject`.
    pub attribute: String,
    /// "sub" (default), "one" or "base".
    pub scope: Option<String>,
    /// DN to bind as; none: anonymous.
    pub bind_dn: Option<String>,
    /// File holding the bind password.
    pub bind_password_file: Option<String>,
    /// Allow a bind password over a connection without TLS (default false).
    pub plaintext_bind: Option<bool>,
    /// Milliseconds one server may take to connect (TLS and bind included) or to answer a
    /// search before the next server is tried (default 400). Keep it below the directory's
    /// `timeout_ms`, or a server that hangs leaves no time to fail over.
    pub server_timeout_ms: Option<u64>,
}

/// A validated `[directory.ldap]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ldap {
    pub urls: Vec<String>,
    pub starttls: bool,
    pub ca_file: Option<PathBuf>,
    pub base: String,
    pub filter: String,
    pub attribute: String,
    pub scope: Scope,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    pub plaintext_bind: bool,
    pub server_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Sub,
    One,
    Base,
}

pub fn validate(key: &str, raw: RawLdap, base: &Path) -> Result<Ldap, Invalid> {
    let k = |sub: &str| format!("{key}.{sub}");
    let starttls = raw.starttls.unwrap_or(true);
    if raw.urls.is_empty() {
        return Err((
            k("urls"),
            "give at least one ldaps:// or ldap:// URL".into(),
        ));
    }
    let mut plaintext = false;
    for (i, u) in raw.urls.iter().enumerate() {
        let tls = server_url(u).map_err(|why| (format!("{key}.urls[{i}]"), why))?;
        plaintext |= !tls && !starttls;
    }
    let filter = raw.filter.trim();
    template::parse(filter).map_err(|e| (k("filter"), e.to_string()))?;
    // The filter with a sample key filled in must be a filter: a template that only breaks
    // on the first lookup would turn every session into a temporary failure.
    let sample = crate::directory::ldap::fill(filter, &crate::directory::Key::recipient("a@b"))
        .map_err(|e| (k("filter"), e.to_string()))?;
    ldap3::parse_filter(&sample).map_err(|_| {
        (
            k("filter"),
            format!("{filter:?} is not an LDAP filter (RFC 4515)"),
        )
    })?;
    let base_dn = raw.base.trim();
    if base_dn.is_empty() {
        return Err((k("base"), "must not be empty".into()));
    }
    let attribute = raw.attribute.trim();
    if attribute.is_empty()
        || !attribute
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ';' | '.'))
    {
        return Err((
            k("attribute"),
            "give one attribute name (letters, digits, -)".into(),
        ));
    }
    let scope = match raw.scope.as_deref().unwrap_or("sub") {
        "sub" => Scope::Sub,
        "one" => Scope::One,
        "base" => Scope::Base,
        other => {
            return Err((
                k("scope"),
                format!("{other:?} is not one of \"sub\", \"one\", \"base\""),
            ));
        }
    };
    let bind_dn = match raw.bind_dn.as_deref().map(str::trim) {
        Some("") => {
            return Err((
                k("bind_dn"),
                "must not be empty (leave it out: anonymous)".into(),
            ));
        }
        other => other.map(str::to_owned),
    };
    let plaintext_bind = raw.plaintext_bind.unwrap_or(false);
    let bind_password_file = match (&bind_dn, &raw.bind_password_file) {
        (Some(_), Some(f)) => Some(crate::config::readable(base, &k("bind_password_file"), f)?),
        (Some(_), None) => {
            return Err((
                k("bind_password_file"),
                "a bind_dn needs its password in a file".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((k("bind_password_file"), "given without a bind_dn".into()));
        }
        (None, None) => None,
    };
    if bind_password_file.is_some() && plaintext && !plaintext_bind {
        return Err((
            k("plaintext_bind"),
            "the bind password would cross the network in clear (ldap:// without StartTLS): \
             use ldaps:// or StartTLS, or set plaintext_bind = true"
                .into(),
        ));
    }
    let ca_file = match &raw.ca_file {
        Some(f) => Some(crate::config::readable(base, &k("ca_file"), f)?),
        None => None,
    };
    let server_timeout = match raw.server_timeout_ms {
        Some(0) => return Err((k("server_timeout_ms"), "must be at least 1".into())),
        Some(ms) => ms,
        None => DEFAULT_SERVER_TIMEOUT_MS,
    };
    Ok(Ldap {
        urls: raw.urls.iter().map(|u| u.trim().to_owned()).collect(),
        starttls,
        ca_file,
        base: base_dn.to_owned(),
        filter: filter.to_owned(),
        attribute: attribute.to_owned(),
        scope,
        bind_dn,
        bind_password_file,
        plaintext_bind,
        server_timeout: Duration::from_millis(server_timeout),
    })
}

/// Checks one server URL: `ldaps://host[:port]` or `ldap://host[:port]`, nothing after the
/// host (the search comes from `base`, `filter` and `scope`). True for `ldaps://`.
fn server_url(u: &str) -> Result<bool, String> {
    let url = url::Url::parse(u.trim()).map_err(|e| format!("{u:?}: {e}"))?;
    let tls = match url.scheme() {
        "ldaps" => true,
        "ldap" => false,
        other => return Err(format!("{other}:// is not ldaps:// or ldap://")),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{u:?} names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("no credentials in the URL: use bind_dn and bind_password_file".into());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{u:?}: give only the server (base, filter and scope have their own keys)"
        ));
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files(PathBuf);

    impl Files {
        fn new(tag: &str) -> Files {
            let dir = std::env::temp_dir().join(format!(
                "robustifier-ldap-config-{tag}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("pw"), "secret").unwrap();
            std::fs::write(dir.join("ca.pem"), "").unwrap();
            Files(dir)
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn raw() -> RawLdap {
        RawLdap {
            urls: vec![
                "ldaps://ldap1.example.test".into(),
                "ldap://198.18.1.11:389".into(),
            ],
            starttls: None,
            ca_file: Some("ca.pem".into()),
            base: "ou=people,dc=example,dc=test".into(),
            filter: "(&(objectClass=inetOrgPerson)(mail=%s))".into(),
            attribute: "robustifierSmtpPool".into(),
            scope: None,
            bind_dn: Some("cn=robustifier,dc=example,dc=test".into()),
            bind_password_file: Some("pw".into()),
            plaintext_bind: None,
            server_timeout_ms: None,
        }
    }

    fn check(tag: &str, edit: impl FnOnce(&mut RawLdap)) -> Result<Ldap, Invalid> {
        let files = Files::new(tag);
        let mut r = raw();
        edit(&mut r);
        validate("directory[0].ldap", r, &files.0)
    }

    fn refused(tag: &str, edit: impl FnOnce(&mut RawLdap)) -> String {
        match check(tag, edit) {
            Ok(l) => panic!("{tag}: accepted {l:?}"),
            Err((key, why)) => format!("{key}: {why}"),
        }
    }

    #[test]
    fn a_complete_table_is_accepted_with_its_defaults() {
        let l = check("ok", |_| {}).unwrap();
        assert!(l.starttls);
        assert_eq!(l.scope, Scope::Sub);
        assert_eq!(
            l.server_timeout,
            Duration::from_millis(DEFAULT_SERVER_TIMEOUT_MS)
        );
        assert!(l.bind_password_file.unwrap().ends_with("pw"));
        let anonymous = check("anon", |r| {
            r.bind_dn = None;
            r.bind_password_file = None;
            r.starttls = Some(false);
            r.scope = Some("one".into());
        })
        .unwrap();
        assert_eq!(anonymous.scope, Scope::One);
        assert!(!anonymous.starttls);
    }

    #[test]
    fn urls_must_name_an_ldap_server() {
        assert!(refused("none", |r| r.urls.clear()).starts_with("directory[0].ldap.urls:"));
        for bad in [
            "http://ldap.example.test",
            "ldap://",
            "ldaps:///dc=example",
            "ldap://host/dc=example,dc=test",
            "ldap://host?mail",
            "ldap://user:pw@host",
            "not a url",
        ] {
            let why = refused("url", |r| {
                r.urls = vec!["ldaps://ok.test".into(), bad.into()]
            });
            assert!(
                why.starts_with("directory[0].ldap.urls[1]:"),
                "{bad}: {why}"
            );
        }
    }

    #[test]
    fn the_filter_must_be_a_template_and_a_filter() {
        for bad in [
            "(objectClass=*)",
            "(mail=%x)",
            "(mail=%s",
            "mail=%s)(",
            "(mail=%s)%",
        ] {
            let why = refused("filter", |r| r.filter = bad.into());
            assert!(why.starts_with("directory[0].ldap.filter:"), "{bad}: {why}");
        }
    }

    #[test]
    fn base_attribute_and_scope_are_checked() {
        assert!(refused("base", |r| r.base = " ".into()).starts_with("directory[0].ldap.base:"));
        for bad in ["", "two words", "mail,cn"] {
            let why = refused("attr", |r| r.attribute = bad.into());
            assert!(
                why.starts_with("directory[0].ldap.attribute:"),
                "{bad:?}: {why}"
            );
        }
        assert!(
            refused("scope", |r| r.scope = Some("subtree".into()))
                .starts_with("directory[0].ldap.scope:")
        );
        assert!(
            refused("st", |r| r.server_timeout_ms = Some(0))
                .starts_with("directory[0].ldap.server_timeout_ms:")
        );
    }

    #[test]
    fn the_bind_password_comes_from_a_readable_file() {
        assert!(
            refused("nofile", |r| r.bind_password_file = None)
                .starts_with("directory[0].ldap.bind_password_file:")
        );
        let why = refused("missing", |r| r.bind_password_file = Some("absent".into()));
        assert!(
            why.starts_with("directory[0].ldap.bind_password_file: cannot read"),
            "{why}"
        );
        assert!(
            refused("nodn", |r| r.bind_dn = None)
                .starts_with("directory[0].ldap.bind_password_file:")
        );
        let why = refused("ca", |r| r.ca_file = Some("absent.pem".into()));
        assert!(
            why.starts_with("directory[0].ldap.ca_file: cannot read"),
            "{why}"
        );
    }

    #[test]
    fn a_password_in_clear_needs_plaintext_bind() {
        let clear = |r: &mut RawLdap| {
            r.urls = vec!["ldaps://a.test".into(), "ldap://b.test".into()];
            r.starttls = Some(false);
        };
        assert!(refused("clear", clear).starts_with("directory[0].ldap.plaintext_bind:"));
        check("clear-ok", |r| {
            clear(r);
            r.plaintext_bind = Some(true);
        })
        .unwrap();
        // StartTLS protects ldap://; ldaps:// alone needs nothing.
        check("starttls", |r| r.urls = vec!["ldap://b.test".into()]).unwrap();
        check("ldaps", |r| {
            r.urls = vec!["ldaps://a.test".into()];
            r.starttls = Some(false);
        })
        .unwrap();
    }
}
