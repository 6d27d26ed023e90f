//! `route lookup`, `route flush` and `route directories`: how a service routes a key now,
//! for an operator debugging a route, and the directories' caches and counters.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    directory::{Found, Key, resolver::Resolver},
    route::Route,
    service::{RouteSource, Routed, ServiceContext},
    smtp::command::Address,
};

/// The reply to `route lookup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteAnswer {
    pub service: String,
    /// The key as looked up (an address with its domain lower-cased, or a user name).
    pub key: String,
    /// "recipient" or "user".
    pub kind: String,
    /// What a session would do: the route's pools (`pool/backend` for a pinned back-end),
    /// `reject`, `relay denied` (nothing routes it), or `temporary failure`.
    pub decision: String,
    /// Where the decision came from (a dedicated queue, the route map, a directory, the
    /// service's pool).
    pub source: Option<String>,
    /// The service's directory's own answer, when it was asked.
    pub directory: Option<DirectoryAnswer>,
}

/// What a directory answered for the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryAnswer {
    pub name: String,
    /// `source`, `cache` or `stale cache`.
    pub origin: String,
    pub elapsed_us: u64,
    /// The values found (empty with `not_found` or an error).
    pub values: Vec<String>,
    pub not_found: bool,
    pub error: Option<String>,
}

/// One directory's line in `route directories`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryStats {
    pub name: String,
    /// `ldap`, `postgres`, `mysql`, `sqlite` or `radius`.
    pub kind: String,
    pub counters: crate::directory::resolver::Counters,
}

/// How service `service` routes `key`: the directory's own answer first (asked afresh when
/// `fresh`, which refreshes its cache), then the decision a session would take now.
pub async fn lookup(
    envs: &[Arc<ServiceContext>],
    service: &str,
    key: &str,
    user: bool,
    fresh: bool,
) -> Result<RouteAnswer, String> {
    let env = envs
        .iter()
        .find(|e| e.service.name == service)
        .ok_or_else(|| format!("no service is called {service:?}"))?;
    let recipient = if user {
        None
    } else {
        let to = Address::parse_user(key)
            .filter(|a| !a.local.is_empty() && a.domain.as_deref().is_some_and(|d| !d.is_empty()))
            .ok_or_else(|| {
                format!("{key:?} is not an address (local@domain); a login name takes `user`")
            })?;
        Some(to)
    };
    let dir_key = match &recipient {
        // As the sessions key it: the local part as given, the domain lower-cased.
        Some(to) => Key::recipient(format!(
            "{}@{}",
            to.local,
            to.domain.as_deref().unwrap_or_default()
        )),
        None => Key::user(key),
    };
    let directory = match &env.directory {
        Some(r) => {
            let l = r.lookup(&dir_key, fresh).await;
            let (values, not_found, error) = match l.answer {
                Ok(Found::Values(v)) => (v, false, None),
                Ok(Found::NotFound) => (Vec::new(), true, None),
                Err(e) => (Vec::new(), false, Some(e.to_string())),
            };
            Some(DirectoryAnswer {
                name: r.name().to_owned(),
                origin: l.origin.to_string(),
                elapsed_us: u64::try_from(l.elapsed.as_micros()).unwrap_or(u64::MAX),
                values,
                not_found,
                error,
            })
        }
        None => None,
    };
    let routed = match &recipient {
        Some(to) => env.route_recipient(to).await,
        None => env.route_user(key).await,
    };
    // The directory was asked first, as a session would have asked it (or afresh); the
    // decision then found that answer in the cache, so it is named by the first lookup's
    // origin.
    let origin = directory.as_ref().map(|d| d.origin.clone());
    let source_text = |source: RouteSource| match (source, &origin) {
        (RouteSource::Directory { name, .. }, Some(o)) => format!("directory {name} ({o})"),
        (other, _) => other.to_string(),
    };
    let (decision, source) = match routed {
        Routed::Route(Route::Reject, source) => ("reject".to_owned(), Some(source_text(source))),
        Routed::Route(Route::Pools(p), source) => (p.join(" "), Some(source_text(source))),
        Routed::Unrouted => (
            if user { "unknown user" } else { "relay denied" }.to_owned(),
            None,
        ),
        Routed::Unavailable(why) => (format!("temporary failure: {why}"), None),
    };
    Ok(RouteAnswer {
        service: service.to_owned(),
        key: dir_key.text,
        kind: if user { "user" } else { "recipient" }.to_owned(),
        decision,
        source,
        directory,
    })
}

/// The directories the services use, each once (services may share one).
fn resolvers(envs: &[Arc<ServiceContext>]) -> Vec<Arc<Resolver>> {
    let mut out: Vec<Arc<Resolver>> = Vec::new();
    for r in envs.iter().filter_map(|e| e.directory.as_ref()) {
        if !out.iter().any(|o| Arc::ptr_eq(o, r)) {
            out.push(Arc::clone(r));
        }
    }
    out
}

/// Empties the cache of directory `name` (or of every one); the names flushed.
pub fn flush(envs: &[Arc<ServiceContext>], name: Option<&str>) -> Result<Vec<String>, String> {
    let all = resolvers(envs);
    let chosen: Vec<_> = all
        .iter()
        .filter(|r| name.is_none_or(|n| r.directory().name == n))
        .collect();
    if let Some(n) = name
        && chosen.is_empty()
    {
        return Err(format!("no service uses a directory called {n:?}"));
    }
    for r in &chosen {
        r.flush();
    }
    Ok(chosen.iter().map(|r| r.directory().name.clone()).collect())
}

/// Each directory's counters.
pub fn stats(envs: &[Arc<ServiceContext>]) -> Vec<DirectoryStats> {
    resolvers(envs)
        .iter()
        .map(|r| DirectoryStats {
            name: r.directory().name.clone(),
            kind: r.directory().source.kind().to_owned(),
            counters: r.counters(),
        })
        .collect()
}

/// `route lookup` for a terminal.
pub fn render(a: &RouteAnswer) -> String {
    let mut out = format!("{} {} {}: {}\n", a.service, a.kind, a.key, a.decision);
    if let Some(s) = &a.source {
        out.push_str(&format!("  from: {s}\n"));
    }
    if let Some(d) = &a.directory {
        let what = match (&d.error, d.not_found) {
            (Some(e), _) => format!("error: {e}"),
            (None, true) => "not found".to_owned(),
            (None, false) => d.values.join(", "),
        };
        out.push_str(&format!(
            "  directory {}: {what} ({}, {:.1} ms)\n",
            d.name,
            d.origin,
            d.elapsed_us as f64 / 1000.0
        ));
    }
    out
}

/// `route directories` for a terminal.
pub fn render_stats(stats: &[DirectoryStats]) -> String {
    if stats.is_empty() {
        return "no directory configured\n".to_owned();
    }
    let mut out = format!(
        "{:<16} {:<8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>9} {:>9}\n",
        "directory",
        "kind",
        "lookups",
        "hits",
        "misses",
        "stale",
        "errors",
        "timeouts",
        "avg ms",
        "cached"
    );
    for s in stats {
        let c = &s.counters;
        let avg = if c.misses == 0 {
            0.0
        } else {
            c.source_us_total as f64 / c.misses as f64 / 1000.0
        };
        out.push_str(&format!(
            "{:<16} {:<8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>9.2} {:>9}\n",
            s.name,
            s.kind,
            c.lookups,
            c.hits,
            c.misses,
            c.stale,
            c.errors,
            c.timeouts,
            avg,
            c.cached
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_renders_its_decision_source_and_directory_answer() {
        let a = RouteAnswer {
            service: "smtp".into(),
            key: "alice@example.test".into(),
            kind: "recipient".into(),
            decision: "be1".into(),
            source: Some("directory users (source)".into()),
            directory: Some(DirectoryAnswer {
                name: "users".into(),
                origin: "source".into(),
                elapsed_us: 1500,
                values: vec!["be1".into()],
                not_found: false,
                error: None,
            }),
        };
        assert_eq!(
            render(&a),
            "smtp recipient alice@example.test: be1\n  from: directory users (source)\n  directory users: be1 (source, 1.5 ms)\n"
        );
    }

    #[test]
    fn stats_average_the_source_time_over_the_misses() {
        let s = DirectoryStats {
            name: "users".into(),
            kind: "ldap".into(),
            counters: crate::directory::resolver::Counters {
                lookups: 10,
                hits: 6,
                misses: 4,
                source_us_total: 8000,
                ..Default::default()
            },
        };
        let text = render_stats(&[s]);
        assert!(text.lines().nth(1).unwrap().contains(" 2.00 "), "{text}");
        assert_eq!(render_stats(&[]), "no directory configured\n");
    }
}
