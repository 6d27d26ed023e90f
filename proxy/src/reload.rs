//! Files that are re-read when they change (routing maps, TLS certificates) without
//! dropping sessions: each user takes an `Arc` of the current value; a change is noticed on
//! the next use after [`CHECK_EVERY`], loaded, and swapped in. A file that fails to load
//! keeps the previous value in service and is reported once per change.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use tracing::{error, info};

/// How often a hot path may look at the files' modification times.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

type Stamp = Vec<Option<(SystemTime, u64)>>;

pub struct Watched<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    current: ArcSwap<T>,
    /// Last check and the files' stamps then.
    checked: Mutex<(Instant, Stamp)>,
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

impl<T> Watched<T> {
    /// Loads now; an error here is a configuration error and is returned.
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let stamps = stamp(&paths);
        let value = load()?;
        Ok(Watched {
            what,
            paths,
            load: Box::new(load),
            current: ArcSwap::from_pointee(value),
            checked: Mutex::new((Instant::now(), stamps)),
        })
    }

    /// The current value, reloaded first if the files changed.
    pub fn get(&self) -> Arc<T> {
        self.refresh(false);
        self.current.load_full()
    }

    /// Looks at the files now (`force`) or if [`CHECK_EVERY`] has passed.
    pub fn refresh(&self, force: bool) {
        let Ok(mut checked) = self.checked.try_lock() else {
            return; // another task is checking right now
        };
        if !force && checked.0.elapsed() < CHECK_EVERY {
            return;
        }
        checked.0 = Instant::now();
        let now = stamp(&self.paths);
        if now == checked.1 {
            return;
        }
        checked.1 = now;
        match (self.load)() {
            Ok(v) => {
                self.current.store(Arc::new(v));
                info!(what = self.what, files = ?self.paths, "reloaded");
            }
            Err(e) => {
                error!(what = self.what, error = %e, "reload failed; keeping the previous version")
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
            std::fs::read_to_string(&f)
                .map_err(|e| e.to_string())?
                .trim()
                .parse::<u32>()
                .map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(*w.get(), 1);
        std::fs::write(&file, "22").unwrap();
        w.refresh(true);
        assert_eq!(*w.get(), 2 * 11);
        std::fs::write(&file, "not a number").unwrap();
        w.refresh(true);
        assert_eq!(*w.get(), 22, "a broken file keeps the last good value");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
