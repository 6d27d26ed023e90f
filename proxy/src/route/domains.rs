//! Dedicated queues for troublesome domains: the recipient domains an operator sends to a
//! pool of their own (`[[domain_queue]]`), so that mail for a slow destination fills that
//! pool's deferred queues and not every back-end's.
//!
//! A pattern is a domain (`slow.example`: that domain only) or a domain with a leading dot
//! (`.slow.example`: every subdomain of it, not the domain itself), as in the routing map.
//! Patterns are lower-cased and a trailing dot is dropped, so `Slow.Example.` is
//! `slow.example`. A subdomain pattern matches whole labels only: `notslow.example` is not
//! under `.slow.example`.
//!
//! Lookup order: the exact domain first, then subdomain patterns from the nearest parent
//! up, so that a more specific pattern wins over a wider one of another block.

use std::{borrow::Cow, collections::HashMap};

use crate::smtp::command::MAX_DOMAIN;

/// A domain pattern of a `[[domain_queue]]`, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    /// That domain only.
    Exact(String),
    /// Every subdomain of the domain (stored without the leading dot), not the domain.
    Subdomains(String),
}

/// Why a string is not a domain pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty domain")]
    Empty,
    #[error("domain longer than 255 octets")]
    TooLong,
    #[error(
        "{0:?} is not a domain name (letters, digits and hyphens in dot-separated labels of at most 63 octets)"
    )]
    NotADomain(String),
}

impl DomainPattern {
    /// Parses `slow.example` or `.slow.example`: lower-cased, one trailing dot dropped.
    pub fn parse(text: &str) -> Result<DomainPattern, PatternError> {
        let (subdomains, rest) = match text.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let domain = normalise(rest).into_owned();
        if domain.is_empty() {
            return Err(PatternError::Empty);
        }
        if domain.len() > MAX_DOMAIN {
            return Err(PatternError::TooLong);
        }
        if !super::table::domain_labels_ok(&domain) {
            return Err(PatternError::NotADomain(text.to_owned()));
        }
        Ok(if subdomains {
            DomainPattern::Subdomains(domain)
        } else {
            DomainPattern::Exact(domain)
        })
    }

    /// Whether `domain` (as a recipient carries it) is one this pattern names.
    pub fn matches(&self, domain: &str) -> bool {
        let domain = normalise(domain);
        match self {
            DomainPattern::Exact(d) => *d == domain,
            DomainPattern::Subdomains(parent) => domain
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(d) => write!(f, ".{d}"),
        }
    }
}

/// Lower-cased, without one trailing dot (the root label of a fully qualified name); a
/// domain already in that form is borrowed, not copied (recipients are looked up here).
fn normalise(domain: &str) -> Cow<'_, str> {
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) || !trimmed.is_ascii() {
        trimmed.to_lowercase().into()
    } else {
        trimmed.into()
    }
}

/// Which dedicated queue a recipient domain belongs to: the patterns of every
/// `[[domain_queue]]` with the pool each names. Lookups are pure and never fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainQueues {
    exact: HashMap<String, String>,
    /// Parent domain (without the dot) -> pool.
    subdomains: HashMap<String, String>,
}

/// A recipient domain's dedicated queue: the pattern that matched and its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedicated<'a> {
    pub pattern: DomainPattern,
    pub pool: &'a str,
}

impl DomainQueues {
    /// The queues of `(pattern, pool)` pairs; a pattern given twice keeps its last pool
    /// (the configuration refuses a domain in two blocks before this is built).
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a DomainPattern, &'a str)>) -> Self {
        let mut queues = DomainQueues::default();
        for (pattern, pool) in entries {
            match pattern {
                DomainPattern::Exact(d) => queues.exact.insert(d.clone(), pool.to_owned()),
                DomainPattern::Subdomains(d) => {
                    queues.subdomains.insert(d.clone(), pool.to_owned())
                }
            };
        }
        queues
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.subdomains.is_empty()
    }

    /// The dedicated queue of recipient domain `domain`, if any: an exact pattern first,
    /// then the nearest parent's subdomain pattern.
    pub fn lookup(&self, domain: &str) -> Option<Dedicated<'_>> {
        // Asked for every recipient: with no dedicated queue (the usual case) nothing is
        // normalised.
        if self.exact.is_empty() && self.subdomains.is_empty() {
            return None;
        }
        let domain = normalise(domain);
        if let Some(pool) = self.exact.get(domain.as_ref()) {
            return Some(Dedicated {
                pattern: DomainPattern::Exact(domain.into_owned()),
                pool,
            });
        }
        domain.match_indices('.').find_map(|(i, _)| {
            let parent = &domain[i + 1..];
            self.subdomains.get(parent).map(|pool| Dedicated {
                pattern: DomainPattern::Subdomains(parent.to_owned()),
                pool,
            })
        })
    }

    /// Every pool a dedicated queue names, sorted, without repeats.
    pub fn pools(&self) -> Vec<&str> {
        let mut pools: Vec<&str> = self
            .exact
            .values()
            .chain(self.subdomains.values())
            .map(String::as_str)
            .collect();
        pools.sort_unstable();
        pools.dedup();
        pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap()
    }

    fn queues(entries: &[(&str, &str)]) -> DomainQueues {
        let parsed: Vec<(DomainPattern, &str)> = entries.iter().map(|(d, q)| (p(d), *q)).collect();
        DomainQueues::new(parsed.iter().map(|(d, q)| (d, *q)))
    }

    fn pool<'a>(q: &'a DomainQueues, domain: &str) -> Option<&'a str> {
        q.lookup(domain).map(|d| d.pool)
    }

    #[test]
    fn exact_pattern_matches_the_domain_only() {
        let q = queues(&[("slow.example", "slowq")]);
        assert_eq!(pool(&q, "slow.example"), Some("slowq"));
        assert_eq!(pool(&q, "mx.slow.example"), None);
        assert_eq!(pool(&q, "example"), None);
        assert_eq!(pool(&q, "fast.example"), None);
    }

    #[test]
    fn subdomain_pattern_matches_subdomains_not_the_apex() {
        let q = queues(&[(".slow.example", "slowq")]);
        assert_eq!(pool(&q, "mx.slow.example"), Some("slowq"));
        assert_eq!(pool(&q, "a.b.slow.example"), Some("slowq"));
        assert_eq!(pool(&q, "slow.example"), None);
        let d = q.lookup("a.b.slow.example").unwrap();
        assert_eq!(d.pattern.to_string(), ".slow.example");
    }

    #[test]
    fn a_subdomain_pattern_matches_whole_labels_only() {
        let q = queues(&[(".slow.example", "slowq"), ("slow.example", "slowq")]);
        assert_eq!(pool(&q, "notslow.example"), None);
        assert_eq!(pool(&q, "mx.notslow.example"), None);
        assert_eq!(pool(&q, "xslow.example"), None);
        assert!(!p(".slow.example").matches("notslow.example"));
        assert!(!p(".slow.example").matches(".slow.example"));
        assert!(p(".slow.example").matches("a.slow.example"));
    }

    #[test]
    fn case_and_a_trailing_dot_do_not_matter() {
        let q = queues(&[("Slow.Example.", "slowq"), (".Deep.Example", "deepq")]);
        assert_eq!(pool(&q, "slow.example"), Some("slowq"));
        assert_eq!(pool(&q, "SLOW.EXAMPLE"), Some("slowq"));
        assert_eq!(pool(&q, "slow.example."), Some("slowq"));
        assert_eq!(pool(&q, "MX.deep.example."), Some("deepq"));
        assert_eq!(p("Slow.Example.").to_string(), "slow.example");
        assert!(p("slow.example").matches("SLOW.example."));
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let q = queues(&[
            (".example", "wide"),
            (".slow.example", "slowq"),
            ("a.slow.example", "exact"),
        ]);
        assert_eq!(pool(&q, "a.slow.example"), Some("exact"));
        assert_eq!(pool(&q, "b.slow.example"), Some("slowq"));
        assert_eq!(pool(&q, "slow.example"), Some("wide"));
        assert_eq!(q.pools(), ["exact", "slowq", "wide"]);
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            ".",
            "..x",
            "a..b",
            "-a.example",
            "a-.example",
            "a b",
            "a@b",
            "*.x",
        ] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(DomainPattern::parse(&long).is_err());
        let huge = ["abc"; 70].join(".");
        assert_eq!(DomainPattern::parse(&huge), Err(PatternError::TooLong));
        assert_eq!(DomainPattern::parse("."), Err(PatternError::Empty));
    }
}
