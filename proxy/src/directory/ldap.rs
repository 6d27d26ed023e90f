//! The LDAP source: per key, one search under `base` with the filter template filled with
//! the key's parts (escaped per RFC 4515, so a key can never widen or reshape the filter),
//! reading one attribute of the one entry found.
//!
//! Each server has one multiplexed connection (ldap3's `Ldap` handle is cloned per
//! lookup), opened on first use and dropped after an error so the next lookup opens a new
//! one. Servers are asked in order: a server that cannot connect, bind or answer within
//! `server_timeout` gives way to the next one within the same lookup.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, SearchEntry};
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::Mutex;

use super::{
    Found, Key, LookupFuture, Source, SourceError,
    template::{self, Part, TemplateError},
};
use crate::config::directory::ldap::{Ldap as Config, Scope};

/// LDAP result codes this source tells apart.
const RC_SUCCESS: u32 = 0;
const RC_SIZE_LIMIT_EXCEEDED: u32 = 4;
const RC_NO_SUCH_OBJECT: u32 = 32;

/// `filter` with the key's parts put in, each escaped per RFC 4515.
pub fn fill(filter: &str, key: &Key) -> Result<String, TemplateError> {
    Ok(fill_parts(&template::parse(filter)?, key))
}

fn fill_parts(parts: &[Part], key: &Key) -> String {
    let mut out = String::new();
    for p in parts {
        match (p, p.value(key)) {
            (Part::Text(t), _) => out.push_str(t),
            (_, Some(v)) => out.push_str(&escape(v)),
            (_, None) => {}
        }
    }
    out
}

/// A key's part as an assertion value (RFC 4515): `*`, `(`, `)`, `\` and NUL become `\xx`
/// escapes, so that the value is matched literally. Other octets (UTF-8 included) are
/// valid as they are.
pub fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    ldap3::ldap_escape(value)
}

pub fn open(config: &Config) -> Result<Arc<dyn Source>, SourceError> {
    let filter = template::parse(&config.filter).map_err(|e| SourceError::Config(e.to_string()))?;
    let tls = Arc::new(tls_config(config)?);
    let servers = config
        .urls
        .iter()
        .map(|url| Server {
            url: url.clone(),
            conn: Mutex::new(None),
        })
        .collect();
    Ok(Arc::new(LdapSource {
        config: config.clone(),
        filter,
        tls,
        servers,
        generation: AtomicU64::new(0),
    }))
}

/// Certificates are checked against `ca_file`, or the system's roots without one.
fn tls_config(config: &Config) -> Result<ClientConfig, SourceError> {
    let mut roots = RootCertStore::empty();
    match &config.ca_file {
        Some(ca) => {
            let certs = crate::tls::certs(ca).map_err(|e| SourceError::Config(e.to_string()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| SourceError::Config(format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(SourceError::Config(
                    "no ca_file and no system CA certificates to check LDAP servers against".into(),
                ));
            }
        }
    }
    Ok(ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

struct LdapSource {
    config: Config,
    filter: Vec<Part>,
    tls: Arc<ClientConfig>,
    servers: Vec<Server>,
    /// Numbers each opened connection, so an error drops only the connection that failed,
    /// not one a concurrent lookup has opened since.
    generation: AtomicU64,
}

struct Server {
    url: String,
    /// The open connection and its generation.
    conn: Mutex<Option<(u64, Ldap)>>,
}

/// One server's failure: what the lookup reports when no server answers.
#[derive(Debug)]
enum Failure {
    /// The server is not usable now: try the next one.
    Down(String),
    /// The server answered, and the answer is not one (more than one entry): asking
    /// another replica would not change it.
    Invalid(String),
}

impl Source for LdapSource {
    fn kind(&self) -> &'static str {
        "ldap"
    }

    fn lookup<'a>(&'a self, key: &'a Key) -> LookupFuture<'a> {
        Box::pin(async move {
            let filter = fill_parts(&self.filter, key);
            let mut failures = Vec::new();
            for server in &self.servers {
                match self.ask(server, &filter).await {
                    Ok(found) => return Ok(found),
                    Err(Failure::Invalid(why)) => return Err(SourceError::Invalid(why)),
                    Err(Failure::Down(why)) => failures.push(format!("{}: {why}", server.url)),
                }
            }
            Err(SourceError::Unavailable(failures.join("; ")))
        })
    }
}

impl LdapSource {
    async fn ask(&self, server: &Server, filter: &str) -> Result<Found, Failure> {
        let (generation, mut ldap) = self.connection(server).await?;
        let scope = match self.config.scope {
            Scope::Sub => ldap3::Scope::Subtree,
            Scope::One => ldap3::Scope::OneLevel,
            Scope::Base => ldap3::Scope::Base,
        };
        let attrs = [self.config.attribute.as_str()];
        // Two entries are enough to know the filter names more than one.
        let searched = ldap
            .with_search_options(ldap3::SearchOptions::new().sizelimit(2))
            .with_timeout(self.config.server_timeout)
            .search(&self.config.base, scope, filter, attrs)
            .await;
        let result = match searched {
            Ok(r) => r,
            Err(e) => {
                // The connection may be broken or stuck: the next lookup opens a new one.
                self.forget(server, generation).await;
                return Err(Failure::Down(format!("search: {e}")));
            }
        };
        let ldap3::SearchResult(entries, status) = result;
        match status.rc {
            RC_SUCCESS => {}
            RC_SIZE_LIMIT_EXCEEDED => {
                return Err(Failure::Invalid(format!(
                    "the filter {filter:?} matches more than one entry"
                )));
            }
            RC_NO_SUCH_OBJECT => {
                return Err(Failure::Down(format!(
                    "the search base {:?} does not exist",
                    self.config.base
                )));
            }
            rc => {
                return Err(Failure::Down(format!(
                    "search: result {rc} {}",
                    status.text
                )));
            }
        }
        // Referrals and the like are not entries.
        let mut found: Vec<SearchEntry> = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect();
        match found.len() {
            0 => Ok(Found::NotFound),
            1 => {
                let entry = found.remove(0);
                let values = entry
                    .attrs
                    .into_iter()
                    .filter(|(name, _)| name.eq_ignore_ascii_case(&self.config.attribute))
                    .flat_map(|(_, v)| v)
                    .collect();
                Ok(Found::Values(values))
            }
            _ => Err(Failure::Invalid(format!(
                "the filter {filter:?} matches more than one entry"
            ))),
        }
    }

    /// The server's open connection, or a new one (TLS and bind done).
    async fn connection(&self, server: &Server) -> Result<(u64, Ldap), Failure> {
        // Held while connecting: concurrent lookups wait for this connection rather than
        // each opening their own. Dropping the lookup (its timeout) releases it.
        let mut slot = server.conn.lock().await;
        if let Some((generation, ldap)) = slot.as_mut()
            && !ldap.is_closed()
        {
            return Ok((*generation, ldap.clone()));
        }
        *slot = None;
        let ldap = tokio::time::timeout(self.config.server_timeout, self.connect(&server.url))
            .await
            .map_err(|_| {
                Failure::Down(format!(
                    "no connection within {} ms",
                    self.config.server_timeout.as_millis()
                ))
            })??;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *slot = Some((generation, ldap.clone()));
        Ok((generation, ldap))
    }

    async fn connect(&self, url: &str) -> Result<Ldap, Failure> {
        let starttls = self.config.starttls && url.starts_with("ldap://");
        let settings = LdapConnSettings::new()
            .set_config(self.tls.clone())
            .set_starttls(starttls);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url)
            .await
            .map_err(|e| Failure::Down(format!("connect: {}", describe(&e))))?;
        // The connection's driver ends when the handle's last clone is dropped or the
        // server goes away; its error is the next search's error.
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!("LDAP connection ended: {e}");
            }
        });
        if let (Some(dn), Some(file)) = (&self.config.bind_dn, &self.config.bind_password_file) {
            // Read at each connection, so a rotated password is used without a reload.
            let password = tokio::fs::read_to_string(file)
                .await
                .map_err(|e| Failure::Down(format!("bind password {}: {e}", file.display())))?;
            let password = password.trim_end_matches(['\r', '\n']);
            let bound = ldap
                .simple_bind(dn, password)
                .await
                .map_err(|e| Failure::Down(format!("bind: {e}")))?;
            if bound.rc != RC_SUCCESS {
                let _ = ldap.unbind().await;
                return Err(Failure::Down(format!(
                    "bind as {dn:?}: result {} {}",
                    bound.rc, bound.text
                )));
            }
        }
        Ok(ldap)
    }

    /// Drops the server's connection if it is still the one of `generation`.
    async fn forget(&self, server: &Server, generation: u64) {
        let mut slot = server.conn.lock().await;
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }
}

/// An ldap3 error with its cause (a TLS error says why the certificate was refused).
fn describe(e: &LdapError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(filter: &str, key: &str) -> String {
        fill(filter, &Key::recipient(key)).unwrap()
    }

    #[test]
    fn hostile_keys_are_escaped_into_literal_values() {
        let f = "(&(objectClass=inetOrgPerson)(mail=%s))";
        let cases = [
            ("*", "(&(objectClass=inetOrgPerson)(mail=\\2a))"),
            (
                "*@example.test",
                "(&(objectClass=inetOrgPerson)(mail=\\2a@example.test))",
            ),
            (
                "alice)(mail=*",
                "(&(objectClass=inetOrgPerson)(mail=alice\\29\\28mail=\\2a))",
            ),
            ("a\0b", "(&(objectClass=inetOrgPerson)(mail=a\\00b))"),
            ("a\\00b", "(&(objectClass=inetOrgPerson)(mail=a\\5c00b))"),
            ("\"", "(&(objectClass=inetOrgPerson)(mail=\"))"),
            ("'", "(&(objectClass=inetOrgPerson)(mail='))"),
            (
                "Ünïcødé@example.test",
                "(&(objectClass=inetOrgPerson)(mail=Ünïcødé@example.test))",
            ),
        ];
        for (key, want) in cases {
            let got = filled(f, key);
            assert_eq!(got, want, "{key:?}");
            // Still one well-formed filter: the key did not end or open a component.
            assert!(ldap3::parse_filter(&got).is_ok(), "{key:?}: {got}");
        }
        let long = format!("{}@example.test", "x".repeat(64));
        assert_eq!(
            filled(f, &long),
            format!("(&(objectClass=inetOrgPerson)(mail={long}))")
        );
    }

    #[test]
    fn each_part_is_escaped_on_its_own() {
        let got = filled("(&(uid=%u)(domain=%d)(mail=%s))", "a*b@(x)");
        assert_eq!(
            got,
            "(&(uid=a\\2ab)(domain=\\28x\\29)(mail=a\\2ab@\\28x\\29))"
        );
    }
}
