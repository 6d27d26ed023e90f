//! Heap allocations of the session path: one scripted 1 KiB SMTP session through a whole
//! front-end, counted on the front-end's own threads only (the client and the scripted
//! back-end run on another runtime, uncounted). Counts, not times: the bound holds on any
//! machine, and a change that allocates much more per session fails here.

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
};

use support::{Client, Running, SmtpBackend, config, tempdir};

thread_local! {
    /// Set on the front-end runtime's threads.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);

struct Counting;

fn counted() -> bool {
    // `try_with`: a thread being torn down has no thread-locals left.
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is passed on to the system allocator unchanged; the flag is a
// const-initialised thread-local and the counters atomics, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator, that is from the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Sessions measured after the warm-up; the figure is their mean.
const SESSIONS: u64 = 40;

/// The most allocations (plus reallocations) one session may make on the front-end's
/// threads (debug build). Measured: 168 + 28 before the session path was trimmed (replies
/// formatted through `String`s, a new line buffer per command, read buffers let go at
/// every wait), 128 + 15 after; 76 + 11 once the back-end leg parsed replies in place and
/// wrote commands through a kept buffer, routes were shared rather than copied per
/// recipient, the message's record was kept once rather than copied into the history, and
/// the message was read into a buffer kept while it streams; 64 + 4 once a reply's lines
/// were kept in one string, candidates shared the back-end's settings, and the message's
/// record and route reason were written into presized strings. The bound leaves room for
/// small changes, not for a return of the old path.
const MAX_PER_SESSION: u64 = 80;

fn counts() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        REALLOCS.load(Ordering::Relaxed),
    )
}

#[test]
fn one_1k_smtp_session_allocates_within_a_bound() {
    let front = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| COUNTED.with(|c| c.set(true)))
        .enable_all()
        .build()
        .unwrap();
    let peers = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = peers.block_on(SmtpBackend::start());
    let text = config(&format!(
        "[[service]]\nname = \"smtp\"\nprotocol = \"smtp\"\nport = 25\npool = \"mx\"\n\
         [[pool]]\nname = \"mx\"\nidentity = \"none\"\nhealth = {{ interval_ms = 600000 }}\n\
         backend = [{{ name = \"mx0\", address = \"{}\" }}]\n",
        backend.addr
    ));
    let fe = {
        let _in = front.enter();
        Running::start(&tempdir("allocations"), &text)
    };
    let addr = fe.addr("smtp");
    let body = "x".repeat(1000);
    let session = || async {
        let mut c = Client::connect(addr).await;
        let reply = c.send_message("rcpt@example.test", &body).await;
        assert!(reply.starts_with("250"), "{reply}");
        assert!(c.ask("QUIT").await.starts_with("221"));
        // The front-end has closed its side once the client reads the end.
        assert_eq!(c.line().await, "");
    };
    peers.block_on(async {
        // Warm-up: the first sessions fill the pools, caches and the runtime's slabs.
        for _ in 0..10 {
            session().await;
        }
        // Let the front-end's tasks of the last session finish before counting.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    });
    let (a0, r0) = counts();
    peers.block_on(async {
        for _ in 0..SESSIONS {
            session().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    });
    let (a1, r1) = counts();
    let (allocs, reallocs) = ((a1 - a0) / SESSIONS, (r1 - r0) / SESSIONS);
    println!("per 1 KiB SMTP session: {allocs} allocations, {reallocs} reallocations");
    assert!(
        allocs + reallocs <= MAX_PER_SESSION,
        "one session made {allocs} allocations and {reallocs} reallocations (bound {MAX_PER_SESSION})"
    );
    peers.block_on(fe.stop());
}
