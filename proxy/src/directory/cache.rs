//! The positive and negative cache of one directory.
//!
//! One map for both (`cache_size` keys in all), evicting the least recently used key, so a
//! flood of made-up recipients pushes out old answers instead of growing memory; a found
//! key lives `positive_ttl`, an unknown one `negative_ttl`. An expired answer is kept up
//! to `stale_max` past its expiry (when stale answers are allowed) so that it can stand
//! in while the source fails. Memory per entry is bounded too: keys over [`MAX_KEY`] and
//! answers over [`MAX_VALUES`] values of [`MAX_VALUE`] bytes are never cached (the
//! resolver refuses such answers before they get here).

use std::{num::NonZeroUsize, sync::Mutex, time::Duration};

use lru::LruCache;
use tokio::time::Instant;

use super::{Found, Key};
use crate::config::directory::CachePolicy;

/// Longest key cached: an SMTP path is at most 256 octets (RFC 5321 4.5.3.1.3), a POP3
/// user name fits a command line; longer keys are asked each time.
pub const MAX_KEY: usize = 512;
/// Values one answer may hold.
pub const MAX_VALUES: usize = 16;
/// Bytes one value may hold.
pub const MAX_VALUE: usize = 256;

/// Whether `found` fits in a cache entry.
pub fn fits(found: &Found) -> bool {
    match found {
        Found::NotFound => true,
        Found::Values(v) => v.len() <= MAX_VALUES && v.iter().all(|x| x.len() <= MAX_VALUE),
    }
}

struct Entry {
    found: Found,
    expires: Instant,
}

/// A cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// Within its TTL.
    Fresh(Found),
    /// Past its TTL, within `stale_max` (only when stale answers are allowed).
    Stale(Found),
}

pub struct Cache {
    policy: CachePolicy,
    entries: Mutex<LruCache<Key, Entry>>,
}

impl Cache {
    pub fn new(policy: &CachePolicy) -> Cache {
        let size = NonZeroUsize::new(policy.size).unwrap_or(NonZeroUsize::MIN);
        Cache {
            policy: policy.clone(),
            entries: Mutex::new(LruCache::new(size)),
        }
    }

    /// The answer cached for `key` at `now`, fresh or stale; an entry past any use is
    /// dropped.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Cached> {
        let mut entries = crate::sync::lock(&self.entries);
        let e = entries.get(key)?;
        if now < e.expires {
            return Some(Cached::Fresh(e.found.clone()));
        }
        match self.policy.stale_max {
            Some(max) if now < e.expires + max => Some(Cached::Stale(e.found.clone())),
            _ => {
                entries.pop(key);
                None
            }
        }
    }

    /// Keeps `found` for `key` from `now`, for its kind's TTL.
    pub fn insert(&self, key: &Key, found: &Found, now: Instant) {
        if key.text.len() > MAX_KEY || !fits(found) {
            return;
        }
        let ttl: Duration = match found {
            Found::Values(_) => self.policy.positive_ttl,
            Found::NotFound => self.policy.negative_ttl,
        };
        crate::sync::lock(&self.entries).put(
            key.clone(),
            Entry {
                found: found.clone(),
                expires: now + ttl,
            },
        );
    }

    pub fn flush(&self) {
        crate::sync::lock(&self.entries).clear();
    }

    /// Keys held now (expired ones included until they are looked at or pushed out).
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(size: usize, stale: Option<u64>) -> CachePolicy {
        CachePolicy {
            positive_ttl: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(2),
            size,
            stale_max: stale.map(Duration::from_secs),
        }
    }

    fn values(v: &str) -> Found {
        Found::Values(vec![v.to_owned()])
    }

    #[test]
    fn positive_and_negative_ttls_then_stale_then_gone() {
        let c = Cache::new(&policy(10, Some(5)));
        let t0 = Instant::now();
        let (a, b) = (Key::recipient("a@x"), Key::recipient("b@x"));
        c.insert(&a, &values("p"), t0);
        c.insert(&b, &Found::NotFound, t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(c.get(&a, at(1)), Some(Cached::Fresh(values("p"))));
        assert_eq!(c.get(&b, at(1)), Some(Cached::Fresh(Found::NotFound)));
        assert_eq!(c.get(&b, at(3)), Some(Cached::Stale(Found::NotFound)));
        assert_eq!(c.get(&a, at(11)), Some(Cached::Stale(values("p"))));
        assert_eq!(c.get(&a, at(15)), None);
        assert_eq!(c.len(), 1, "the entry past stale_max is dropped");
    }

    #[test]
    fn without_stale_an_expired_entry_is_gone() {
        let c = Cache::new(&policy(10, None));
        let t0 = Instant::now();
        let a = Key::user("alice");
        c.insert(&a, &values("p"), t0);
        assert_eq!(c.get(&a, t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn the_least_recently_used_key_is_evicted_and_kinds_differ() {
        let c = Cache::new(&policy(2, Some(5)));
        let t0 = Instant::now();
        let (a, b, d) = (Key::user("a"), Key::recipient("a"), Key::user("d"));
        c.insert(&a, &values("1"), t0);
        c.insert(&b, &values("2"), t0);
        assert_eq!(c.get(&a, t0), Some(Cached::Fresh(values("1"))));
        c.insert(&d, &values("3"), t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&b, t0), None, "b was used least recently");
        assert!(c.get(&a, t0).is_some() && c.get(&d, t0).is_some());
        c.flush();
        assert!(c.is_empty());
    }

    #[test]
    fn oversized_keys_and_answers_are_not_kept() {
        let c = Cache::new(&policy(10, Some(5)));
        let t0 = Instant::now();
        c.insert(&Key::user("x".repeat(MAX_KEY + 1)), &values("p"), t0);
        c.insert(
            &Key::user("many"),
            &Found::Values(vec!["p".into(); MAX_VALUES + 1]),
            t0,
        );
        c.insert(&Key::user("long"), &values(&"p".repeat(MAX_VALUE + 1)), t0);
        assert!(c.is_empty());
        c.insert(
            &Key::user("fits"),
            &Found::Values(vec!["p".repeat(MAX_VALUE); MAX_VALUES]),
            t0,
        );
        assert_eq!(c.len(), 1);
    }
}
