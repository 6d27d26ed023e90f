//! A directory as the sessions use it: its source behind the per-lookup timeout, the
//! positive and negative caches, stale answers while the source fails, and the counters.
//!
//! Concurrent lookups of one key share one source request (single flight): a hot key
//! missing from the cache (a mailing list's recipients, a login storm after a restart)
//! costs the directory one request, not one per session. The request runs in the task of
//! the first session that asked; if that session goes away, a waiting one takes over.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::OnceCell, time::Instant};

use super::{
    Found, Key, Source, SourceError,
    cache::{Cache, Cached},
};
use crate::config::directory::Directory;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The source, asked now.
    Source,
    /// The cache, within its TTL.
    Cache,
    /// The cache, past its TTL, because the source failed.
    Stale,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Source => "source",
            Origin::Cache => "cache",
            Origin::Stale => "stale cache",
        })
    }
}

/// One lookup's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The answer, or why there is none (the session gets a temporary reply).
    pub answer: Result<Found, SourceError>,
    /// Where the answer came from (`Source` for an error).
    pub origin: Origin,
    pub elapsed: Duration,
}

/// A directory's counters since the front-end started (a reload that keeps the directory
/// unchanged keeps them, and its cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub lookups: u64,
    /// Answered from the cache within its TTL (found or not found).
    pub hits: u64,
    /// Requests to the source (concurrent lookups of one key share one).
    pub misses: u64,
    /// Answered stale while the source failed.
    pub stale: u64,
    /// The source failed (timeouts included) and no stale answer could stand in, or its
    /// answer named no usable pool or back-end.
    pub errors: u64,
    pub timeouts: u64,
    /// Sum of the source's answer times, microseconds, and the largest.
    pub source_us_total: u64,
    pub source_us_max: u64,
    /// Keys in the cache now.
    pub cached: u64,
}

type Answer = Result<Found, SourceError>;

/// The running counters behind [`Counters`].
#[derive(Default)]
struct Tally {
    lookups: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    source_us_total: AtomicU64,
    source_us_max: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub struct Resolver {
    directory: Directory,
    source: Arc<dyn Source>,
    cache: Cache,
    /// The source request under way per key, shared by every lookup of that key.
    inflight: Mutex<HashMap<Key, Arc<OnceCell<Answer>>>>,
    tally: Tally,
}

impl Resolver {
    /// The directory with its own source (opened lazily, see [`super::open`]).
    pub fn new(directory: &Directory) -> Result<Resolver, SourceError> {
        Ok(Resolver::with_source(directory, super::open(directory)?))
    }

    /// The directory asking `source` (tests give their own).
    pub fn with_source(directory: &Directory, source: Arc<dyn Source>) -> Resolver {
        Resolver {
            directory: directory.clone(),
            source,
            cache: Cache::new(&directory.cache),
            inflight: Mutex::new(HashMap::new()),
            tally: Tally::default(),
        }
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn name(&self) -> &str {
        &self.directory.name
    }

    /// Looks `key` up: from the cache unless `fresh`, else from the source within the
    /// directory's timeout; a failed source answers from the stale cache if allowed.
    /// `fresh` answers still fill the cache.
    pub async fn lookup(&self, key: &Key, fresh: bool) -> Lookup {
        let started = Instant::now();
        bump(&self.tally.lookups);
        if !fresh && let Some(Cached::Fresh(found)) = self.cache.get(key, started) {
            bump(&self.tally.hits);
            return Lookup {
                answer: Ok(found),
                origin: Origin::Cache,
                elapsed: started.elapsed(),
            };
        }
        let answer = self.shared(key).await;
        let (answer, origin) = match answer {
            Ok(found) => (Ok(found), Origin::Source),
            Err(e) => match self.cache.get(key, Instant::now()) {
                // Only a `fresh` lookup gets here with an answer still within its TTL.
                Some(Cached::Fresh(found)) => (Ok(found), Origin::Cache),
                Some(Cached::Stale(found)) => {
                    bump(&self.tally.stale);
                    (Ok(found), Origin::Stale)
                }
                None => {
                    bump(&self.tally.errors);
                    (Err(e), Origin::Source)
                }
            },
        };
        Lookup {
            answer,
            origin,
            elapsed: started.elapsed(),
        }
    }

    /// The source's answer for `key`, asked once for every concurrent lookup of it.
    async fn shared(&self, key: &Key) -> Answer {
        let cell = Arc::clone(
            crate::sync::lock(&self.inflight)
                .entry(key.clone())
                .or_default(),
        );
        let _leave = Leave {
            inflight: &self.inflight,
            key,
            cell: &cell,
        };
        cell.get_or_init(|| self.ask(key)).await.clone()
    }

    /// One source request, bounded by the directory's timeout (the request's future is
    /// dropped when it passes); a valid answer goes into the cache.
    async fn ask(&self, key: &Key) -> Answer {
        bump(&self.tally.misses);
        let started = Instant::now();
        let answer =
            match tokio::time::timeout(self.directory.timeout, self.source.lookup(key)).await {
                Ok(Ok(found)) if !super::cache::fits(&found) => Err(SourceError::Invalid(format!(
                    "more than {} values or a value over {} bytes",
                    super::cache::MAX_VALUES,
                    super::cache::MAX_VALUE
                ))),
                Ok(answer) => answer,
                Err(_) => {
                    bump(&self.tally.timeouts);
                    Err(SourceError::Timeout(
                        u64::try_from(self.directory.timeout.as_millis()).unwrap_or(u64::MAX),
                    ))
                }
            };
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.tally.source_us_total.fetch_add(us, Ordering::Relaxed);
        self.tally.source_us_max.fetch_max(us, Ordering::Relaxed);
        if let Ok(found) = &answer {
            self.cache.insert(key, found, Instant::now());
        }
        answer
    }

    /// Counts an answer its caller could not use (a value naming no pool or back-end):
    /// the directory's error, like a failed lookup.
    pub fn count_error(&self) {
        bump(&self.tally.errors);
    }

    /// Empties the cache.
    pub fn flush(&self) {
        self.cache.flush();
    }

    pub fn counters(&self) -> Counters {
        let t = &self.tally;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            lookups: get(&t.lookups),
            hits: get(&t.hits),
            misses: get(&t.misses),
            stale: get(&t.stale),
            errors: get(&t.errors),
            timeouts: get(&t.timeouts),
            source_us_total: get(&t.source_us_total),
            source_us_max: get(&t.source_us_max),
            cached: self.cache.len() as u64,
        }
    }
}

/// Takes a lookup's request out of the in-flight map when the lookup ends or is dropped:
/// once answered (later lookups read the cache), or when no other lookup waits on it (a
/// request abandoned by every session must not stay in the map for good).
struct Leave<'a> {
    inflight: &'a Mutex<HashMap<Key, Arc<OnceCell<Answer>>>>,
    key: &'a Key,
    cell: &'a Arc<OnceCell<Answer>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut inflight = crate::sync::lock(self.inflight);
        let ours = inflight
            .get(self.key)
            .is_some_and(|c| Arc::ptr_eq(c, self.cell));
        // The map's reference and ours: no one else waits.
        if ours && (self.cell.initialized() || Arc::strong_count(self.cell) <= 2) {
            inflight.remove(self.key);
        }
    }
}

/// A fake source and a directory to put it behind, for the tests of the resolver and of
/// the sessions that consult one.
#[cfg(test)]
pub(crate) mod testing {
    use std::{
        collections::HashMap,
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use crate::{
        config::directory::{CachePolicy, Directory, NotFound, SourceConfig, ldap},
        directory::{Found, Key, LookupFuture, Source, SourceError},
    };

    /// Answers from a table (absent: not found), after `delay`, or fails while `failing`.
    #[derive(Default)]
    pub struct Fake {
        pub answers: Mutex<HashMap<String, Vec<String>>>,
        pub delay: Mutex<Duration>,
        pub failing: AtomicBool,
        pub calls: AtomicUsize,
    }

    impl Fake {
        pub fn new(answers: &[(&str, &str)]) -> Arc<Fake> {
            let f = Fake::default();
            for (k, v) in answers {
                f.set(k, v);
            }
            Arc::new(f)
        }

        pub fn set(&self, key: &str, value: &str) {
            crate::sync::lock(&self.answers).insert(key.to_owned(), vec![value.to_owned()]);
        }

        pub fn fail(&self, failing: bool) {
            self.failing.store(failing, Ordering::Relaxed);
        }

        pub fn calls(&self) -> usize {
            self.calls.load(Ordering::Relaxed)
        }
    }

    impl Source for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }

        fn lookup<'a>(&'a self, key: &'a Key) -> LookupFuture<'a> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::Relaxed);
                let delay = *crate::sync::lock(&self.delay);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if self.failing.load(Ordering::Relaxed) {
                    return Err(SourceError::Unavailable("fake is down".into()));
                }
                Ok(crate::sync::lock(&self.answers)
                    .get(&key.text)
                    .map_or(Found::NotFound, |v| Found::Values(v.clone())))
            })
        }
    }

    /// A directory named `name`: timeout 1 s, found keys 300 s, unknown 60 s, stale a day.
    pub fn directory(name: &str, not_found: NotFound) -> Directory {
        Directory {
            name: name.to_owned(),
            timeout: Duration::from_secs(1),
            cache: CachePolicy {
                positive_ttl: Duration::from_secs(300),
                negative_ttl: Duration::from_secs(60),
                size: 1000,
                stale_max: Some(Duration::from_secs(86_400)),
            },
            not_found,
            // The source's settings are never read: the fake stands in for it.
            source: SourceConfig::Ldap(ldap::Ldap {
                urls: vec!["ldap://198.18.0.1".into()],
                starttls: true,
                ca_file: None,
                base: "dc=example,dc=test".into(),
                filter: "(mail=%s)".into(),
                attribute: "mailHost".into(),
                scope: ldap::Scope::Sub,
                bind_dn: None,
                bind_password_file: None,
                plaintext_bind: false,
                server_timeout: Duration::from_millis(400),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::Fake, *};
    use crate::config::directory::NotFound;

    fn resolver(fake: &Arc<Fake>, edit: impl FnOnce(&mut Directory)) -> Resolver {
        let mut d = testing::directory("dir", NotFound::Pool);
        edit(&mut d);
        Resolver::with_source(&d, Arc::clone(fake) as Arc<dyn Source>)
    }

    fn values(v: &str) -> Result<Found, SourceError> {
        Ok(Found::Values(vec![v.to_owned()]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_hit_and_a_negative_hit_are_answered_by_the_cache() {
        let fake = Fake::new(&[("a@x", "be1")]);
        let r = resolver(&fake, |_| {});
        let a = Key::recipient("a@x");
        let first = r.lookup(&a, false).await;
        assert_eq!(
            (first.answer, first.origin),
            (values("be1"), Origin::Source)
        );
        let again = r.lookup(&a, false).await;
        assert_eq!((again.answer, again.origin), (values("be1"), Origin::Cache));
        let nobody = Key::recipient("nobody@x");
        assert_eq!(r.lookup(&nobody, false).await.answer, Ok(Found::NotFound));
        let again = r.lookup(&nobody, false).await;
        assert_eq!(
            (again.answer, again.origin),
            (Ok(Found::NotFound), Origin::Cache)
        );
        assert_eq!(fake.calls(), 2);
        let c = r.counters();
        assert_eq!(
            (c.lookups, c.hits, c.misses, c.errors, c.cached),
            (4, 2, 2, 0, 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let fake = Fake::new(&[("a@x", "be1")]);
        let r = resolver(&fake, |_| {});
        let (a, b) = (Key::recipient("a@x"), Key::recipient("b@x"));
        r.lookup(&a, false).await;
        r.lookup(&b, false).await;
        fake.set("a@x", "be2");
        fake.set("b@x", "be3");
        // The negative TTL (60 s) passes: b is asked again, a is still cached.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(r.lookup(&b, false).await.answer, values("be3"));
        assert_eq!(r.lookup(&a, false).await.answer, values("be1"));
        tokio::time::advance(Duration::from_secs(240)).await;
        let a2 = r.lookup(&a, false).await;
        assert_eq!((a2.answer, a2.origin), (values("be2"), Origin::Source));
        assert_eq!(fake.calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_source_is_stood_in_for_by_the_stale_cache() {
        let fake = Fake::new(&[("a@x", "be1")]);
        let r = resolver(&fake, |_| {});
        let a = Key::recipient("a@x");
        r.lookup(&a, false).await;
        fake.fail(true);
        tokio::time::advance(Duration::from_secs(301)).await;
        let l = r.lookup(&a, false).await;
        assert_eq!((l.answer, l.origin), (values("be1"), Origin::Stale));
        let unknown = r.lookup(&Key::recipient("b@x"), false).await;
        assert_eq!(
            unknown.answer,
            Err(SourceError::Unavailable("fake is down".into()))
        );
        // Past stale_max the entry is gone.
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert!(r.lookup(&a, false).await.answer.is_err());
        let c = r.counters();
        assert_eq!((c.stale, c.errors), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn without_stale_a_failure_is_an_error() {
        let fake = Fake::new(&[("a@x", "be1")]);
        let r = resolver(&fake, |d| d.cache.stale_max = None);
        let a = Key::recipient("a@x");
        r.lookup(&a, false).await;
        fake.fail(true);
        tokio::time::advance(Duration::from_secs(301)).await;
        let l = r.lookup(&a, false).await;
        assert!(l.answer.is_err(), "{l:?}");
        assert_eq!(r.counters().stale, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_source_times_out() {
        let fake = Fake::new(&[("a@x", "be1")]);
        *crate::sync::lock(&fake.delay) = Duration::from_secs(30);
        let r = resolver(&fake, |_| {});
        let started = Instant::now();
        let l = r.lookup(&Key::recipient("a@x"), false).await;
        assert_eq!(l.answer, Err(SourceError::Timeout(1000)));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let c = r.counters();
        assert_eq!((c.timeouts, c.errors), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_lookups_of_one_key_ask_the_source_once() {
        let fake = Fake::new(&[("hot@x", "be1")]);
        *crate::sync::lock(&fake.delay) = Duration::from_millis(200);
        let r = resolver(&fake, |_| {});
        let key = Key::recipient("hot@x");
        let all = futures_util::future::join_all((0..20).map(|_| r.lookup(&key, false))).await;
        assert!(all.iter().all(|l| l.answer == values("be1")));
        assert_eq!(fake.calls(), 1);
        assert!(crate::sync::lock(&r.inflight).is_empty());
        // A lookup abandoned mid-request leaves nothing behind either.
        let other = Key::recipient("cold@x");
        let _ = tokio::time::timeout(Duration::from_millis(10), r.lookup(&other, false)).await;
        assert!(crate::sync::lock(&r.inflight).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded_and_can_be_flushed() {
        let fake = Fake::new(&[]);
        let r = resolver(&fake, |d| d.cache.size = 3);
        for i in 0..10 {
            r.lookup(&Key::recipient(format!("{i}@x")), false).await;
        }
        assert_eq!(r.counters().cached, 3);
        r.lookup(&Key::recipient("9@x"), false).await;
        assert_eq!(fake.calls(), 10, "the newest key is still cached");
        r.flush();
        assert_eq!(r.counters().cached, 0);
        r.lookup(&Key::recipient("9@x"), false).await;
        assert_eq!(fake.calls(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_bypasses_the_cache_and_fills_it() {
        let fake = Fake::new(&[("a@x", "be1")]);
        let r = resolver(&fake, |_| {});
        let a = Key::recipient("a@x");
        r.lookup(&a, false).await;
        fake.set("a@x", "be2");
        let l = r.lookup(&a, true).await;
        assert_eq!((l.answer, l.origin), (values("be2"), Origin::Source));
        let l = r.lookup(&a, false).await;
        assert_eq!((l.answer, l.origin), (values("be2"), Origin::Cache));
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_answer_is_invalid_and_not_cached() {
        let fake = Fake::new(&[("a@x", &"p".repeat(300))]);
        let r = resolver(&fake, |_| {});
        let l = r.lookup(&Key::recipient("a@x"), false).await;
        assert!(matches!(l.answer, Err(SourceError::Invalid(_))), "{l:?}");
        assert_eq!(r.counters().cached, 0);
    }
}
