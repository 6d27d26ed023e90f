//! Locks that keep working after a panic elsewhere.
//!
//! Every `std::sync::Mutex` in the proxy guards counters, small maps, queues or a last
//! error, and every critical section leaves them consistent after each single operation.
//! A lock poisoned by a task that panicked while holding it is therefore still sound to
//! use, and giving up on it instead would be worse: per-client limits would refuse every
//! client, strikes and penalties would stop counting, admission queues would never empty
//! and changed files would never be re-read, for the life of the process.

use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

/// The guard of `m`, poisoned or not.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The guard of `m` if no one holds it now, poisoned or not.
pub(crate) fn try_lock<T: ?Sized>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Poisons `m` the way a task that panics while holding it would (for the tests of the
/// modules that rely on [`lock`]).
#[cfg(test)]
pub(crate) fn poison<T: Send>(m: &Mutex<T>) {
    std::thread::scope(|s| {
        let _ = s
            .spawn(|| {
                let _g = m.lock().unwrap();
                panic!("poisoning the lock on purpose");
            })
            .join();
    });
    assert!(m.is_poisoned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poisoned() -> Mutex<u32> {
        let m = Mutex::new(7);
        poison(&m);
        m
    }

    #[test]
    fn poisoned_locks_are_recovered() {
        let m = poisoned();
        assert_eq!(*lock(&m), 7);
        assert_eq!(try_lock(&m).map(|g| *g), Some(7));
        let g = lock(&m);
        assert!(try_lock(&m).is_none(), "held elsewhere");
        drop(g);
    }
}
