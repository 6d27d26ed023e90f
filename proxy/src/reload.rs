//! Files that are re-read when they change (routing maps, TLS certificates) without
//! dropping sessions: each user takes an `Arc` of the current value; a change is noticed on
//! a use after [`CHECK_EVERY`], loaded and checked off the async runtime's threads (a
//! blocking-pool task), and swapped in. A file that fails to load or check keeps the
//! previous value in service and is reported, loudly, once per change.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use tracing::{error, info};

/// How often a hot path may look at the files' modification times.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

type Stamp = Vec<Option<(SystemTime, u64)>>;

/// What one look at the files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The files are as last seen.
    Unchanged,
    /// The files changed and the new value is in service.
    Reloaded,
    /// The files changed but did not load or check; the previous value stays in service.
    Refused(String),
}

pub struct Watched<T> {
    inner: Arc<Inner<T>>,
}

/// A loader's error, kept whole (with its source chain) for the log.
type LoadError = Box<dyn std::error::Error + Send + Sync>;
type Loader<T> = Box<dyn Fn() -> Result<T, LoadError> + Send + Sync>;

struct Inner<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    current: ArcSwap<T>,
    every: Duration,
    /// When a use last looked (or started a look) at the files.
    last: Mutex<Instant>,
    /// The files' stamps as last loaded (or refused); held while a look runs, so two looks
    /// never load the same change twice.
    seen: Mutex<Stamp>,
    /// A look is queued or running on the blocking pool.
    busy: AtomicBool,
}

fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Loads now, on the caller's thread; an error here is a configuration error and is
    /// returned.
    pub fn new<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        Self::with_interval(what, paths, CHECK_EVERY, load)
    }

    /// [`Watched::new`] looking at the files at most every `every`.
    pub fn with_interval<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
        paths: Vec<PathBuf>,
        every: Duration,
        load: impl Fn() -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        let stamps = stamp(&paths);
        let value = load()?;
        let load = move || load().map_err(LoadError::from);
        Ok(Watched {
            inner: Arc::new(Inner {
                what,
                paths,
                load: Box::new(load),
                current: ArcSwap::from_pointee(value),
                every,
                last: Mutex::new(Instant::now()),
                seen: Mutex::new(stamps),
                busy: AtomicBool::new(false),
            }),
        })
    }

    /// The current value. When the interval has passed, a look at the files is started
    /// (its result serves later uses): on the runtime's blocking pool when called from the
    /// runtime, so that no session's thread reads or parses a file, else right here.
    pub fn get(&self) -> Arc<T> {
        self.poll();
        self.inner.current.load_full()
    }

    /// Looks at the files now, on the caller's thread, and says what it did (tools and
    /// tests; the daemon's sessions use [`Watched::get`]).
    pub fn check_now(&self) -> Outcome {
        self.inner.check()
    }

    fn poll(&self) {
        {
            let Some(mut last) = crate::sync::try_lock(&self.inner.last) else {
                return; // another use is starting a look right now
            };
            if last.elapsed() < self.inner.every {
                return;
            }
            *last = Instant::now();
        }
        if self.inner.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let job = Job(Arc::clone(&self.inner));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // Dropping the handle detaches the task; a runtime shutting down drops the
                // job unrun, and its guard clears `busy`.
                drop(rt.spawn_blocking(move || job.run()));
            }
            Err(_) => job.run(),
        }
    }
}

/// One look at the files; clears `busy` however it ends.
struct Job<T>(Arc<Inner<T>>);

impl<T> Job<T> {
    fn run(self) {
        self.0.check();
    }
}

impl<T> Drop for Job<T> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

impl<T> Inner<T> {
    fn check(&self) -> Outcome {
        let mut seen = crate::sync::lock(&self.seen);
        let now = stamp(&self.paths);
        if now == *seen {
            return Outcome::Unchanged;
        }
        *seen = now;
        match (self.load)() {
            Ok(v) => {
                self.current.store(Arc::new(v));
                info!(what = self.what, files = ?self.paths, "reloaded");
                Outcome::Reloaded
            }
            Err(e) => {
                error!(
                    what = self.what,
                    files = ?self.paths,
                    error = %e,
                    "REFUSED a changed file: {e}; the previous version stays in force until the file is fixed"
                );
                Outcome::Refused(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_on_change_and_keeps_last_good_value() {
        let dir = std::env::temp_dir().join(format!("rb-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value");
        std::fs::write(&file, "1").unwrap();
        let f = file.clone();
        let w = Watched::new("test", vec![file.clone()], move || {
            std::fs::read_to_string(&f)?
                .trim()
                .parse::<u32>()
                .map_err(std::io::Error::other)
        })
        .unwrap();
        assert_eq!(*w.get(), 1);
        assert_eq!(w.check_now(), Outcome::Unchanged);
        std::fs::write(&file, "22").unwrap();
        assert_eq!(w.check_now(), Outcome::Reloaded);
        assert_eq!(*w.get(), 2 * 11);
        std::fs::write(&file, "not a number").unwrap();
        assert!(matches!(w.check_now(), Outcome::Refused(e) if e.contains("invalid digit")));
        assert_eq!(*w.get(), 22, "a broken file keeps the last good value");
        assert_eq!(w.check_now(), Outcome::Unchanged, "refused once per change");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_poisoned_lock_does_not_stop_reloads() {
        let dir = std::env::temp_dir().join(format!("rb-reload-poison-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value");
        std::fs::write(&file, "1").unwrap();
        let f = file.clone();
        let w = Watched::with_interval("test", vec![file.clone()], Duration::ZERO, move || {
            std::fs::read_to_string(&f)?
                .trim()
                .parse::<u32>()
                .map_err(std::io::Error::other)
        })
        .unwrap();
        crate::sync::poison(&w.inner.last);
        std::fs::write(&file, "22").unwrap();
        // Outside a runtime the look runs right here, so the first use after the change
        // already sees it.
        assert_eq!(*w.get(), 22);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_change_is_read_off_the_runtime_thread() {
        let dir = std::env::temp_dir().join(format!("rb-reload-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value");
        std::fs::write(&file, "1").unwrap();
        let f = file.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Watched::with_interval("test", vec![file.clone()], Duration::ZERO, move || {
            tx.send(std::thread::current().id()).unwrap();
            std::fs::read_to_string(&f)?
                .trim()
                .parse::<u32>()
                .map_err(std::io::Error::other)
        })
        .unwrap();
        let here = std::thread::current().id();
        assert_eq!(rx.recv().unwrap(), here, "the first load is the caller's");
        std::fs::write(&file, "22").unwrap();
        w.get();
        let loader = tokio::task::spawn_blocking(move || rx.recv().unwrap())
            .await
            .unwrap();
        assert_ne!(
            loader, here,
            "a re-read must not run on the runtime's thread"
        );
        while *w.get() != 22 {
            tokio::task::yield_now().await;
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
