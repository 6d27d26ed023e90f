//! The runtime layout of a front-end (`[frontend] runtime`).
//!
//! - `per-core` (the default): one single-threaded tokio runtime per worker. The daemon's
//!   own thread runs the first, with everything else of the front-end (control socket,
//!   health, VRRP, reloads) and its share of sessions; each further worker is a thread of
//!   its own running accept loops and the sessions they accept. Every listening socket is
//!   shared: each worker accepts on its own registration of it (a duplicate descriptor of
//!   the same socket), so the steering map still holds one socket per slot and a binary
//!   upgrade passes on the same sockets. A session stays on the worker that accepted it,
//!   with no work stealing, no cross-thread wake-ups and no atomics of a shared scheduler.
//! - `multi`: tokio's multi-threaded work-stealing runtime with `workers` threads.
//!
//! `workers` defaults to the CPUs the process may run on (its affinity mask, so
//! `taskset -c 0 robustifier run` gets one). Pinning is the operator's affinity mask
//! (`taskset`, systemd's `CPUAffinity=`): with `workers` equal to the CPUs allowed there is
//! one busy thread per CPU, and the scheduler keeps each on its CPU.

use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeLayout as Layout;

/// The handles of the workers beyond the daemon's own thread; empty in the `multi`
/// layout, in a one-worker `per-core` one, and in tests that run a front-end in their own
/// runtime.
static EXTRA: OnceLock<Vec<Handle>> = OnceLock::new();

/// Where accept loops run besides the current runtime.
pub(crate) fn extra() -> &'static [Handle] {
    EXTRA.get().map_or(&[], Vec::as_slice)
}

/// The workers a configuration asks for, or one per CPU the process may run on.
pub fn count(workers: Option<usize>) -> usize {
    workers
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The extra workers of a `per-core` front-end, stopped when dropped.
pub struct Workers {
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n - 1` worker threads (the caller's thread is the first worker) and makes
    /// them the ones [`extra`] gives. Call once, after the switch of user (threads inherit
    /// the credentials of the thread that starts them).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut threads = Vec::new();
        let mut handles = Vec::new();
        for i in 1..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || rt.block_on(stop.cancelled()))?,
            );
        }
        // Only the daemon starts workers, once; a second call keeps the first set.
        let _ = EXTRA.set(handles);
        Ok(Workers { stop, threads })
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The daemon's runtime for `layout`: a single-threaded one (`per-core`, the first
/// worker) or the work-stealing one with `workers` threads.
pub fn runtime(layout: Layout, workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match layout {
        Layout::PerCore => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Layout::Multi => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_default_to_the_cpus_allowed() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(count(None), cpus);
        assert_eq!(count(Some(0)), cpus);
        assert_eq!(count(Some(3)), 3);
    }
}
