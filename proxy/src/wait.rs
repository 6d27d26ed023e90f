//! Waiting that costs nothing while nothing happens.
//!
//! A session wakes about ten times (each read and write on either leg), and
//! `tokio::select!` polls every branch at every wake: a branch that waits for a rare event
//! (the front-end closing, an abort, a drain) paid two locks of its `CancellationToken`
//! each time. [`race`] gives the rare side its own waker, so it is polled again only
//! after it woke.
//!
//! Likewise a deadline (`tokio::time::timeout`) reads the clock and takes a timer even for
//! a write that the socket's buffer takes at once; [`within`] tries the work first and
//! takes the timer only if the work has to wait.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::time::{Instant, error::Elapsed};

/// Which of [`race`]'s two futures finished first.
#[derive(Debug, PartialEq, Eq)]
pub enum Either<M, S> {
    Main(M),
    Side(S),
}

/// Runs `main` and `side` together until one finishes. `side` is polled first, then only
/// after its own waker fired, so a side that waits for something rare costs one atomic
/// load per wake of the task. Both are taken by `Unpin` handles (`Pin<&mut F>` will do),
/// so the caller may go on with the one that did not finish.
pub fn race<M, S>(main: M, side: S) -> impl Future<Output = Either<M::Output, S::Output>>
where
    M: Future + Unpin,
    S: Future + Unpin,
{
    let signal = Arc::new(SideSignal {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    Race {
        main,
        side,
        side_waker: Waker::from(Arc::clone(&signal)),
        signal,
    }
}

/// The side's waker: notes that the side woke, then wakes the task.
struct SideSignal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SideSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

struct Race<M, S> {
    main: M,
    side: S,
    signal: Arc<SideSignal>,
    side_waker: Waker,
}

impl<M, S> Future for Race<M, S>
where
    M: Future + Unpin,
    S: Future + Unpin,
{
    type Output = Either<M::Output, S::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a side waking in between is not missed.
        this.signal.task.register(cx.waker());
        if this.signal.woken.swap(false, Ordering::AcqRel) {
            let mut side_cx = Context::from_waker(&this.side_waker);
            if let Poll::Ready(v) = Pin::new(&mut this.side).poll(&mut side_cx) {
                return Poll::Ready(Either::Side(v));
            }
        }
        Pin::new(&mut this.main).poll(cx).map(Either::Main)
    }
}

/// `tokio::time::timeout(wait, work)`, with the clock read and the timer taken only if
/// `work` does not finish at its first poll.
pub async fn within<F: Future>(wait: Duration, work: F) -> Result<F::Output, Elapsed> {
    let mut work = std::pin::pin!(work);
    match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => tokio::time::timeout(wait, work).await,
    }
}

/// [`within`] with a deadline.
pub async fn within_at<F: Future>(deadline: Instant, work: F) -> Result<F::Output, Elapsed> {
    let mut work = std::pin::pin!(work);
    match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => tokio::time::timeout_at(deadline, work).await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A future that counts its polls and stays pending.
    struct Counted<'a>(&'a AtomicUsize);

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_side_is_polled_again_only_after_it_woke() {
        let polls = AtomicUsize::new(0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let main = async {
            let mut sum = 0;
            while let Some(n) = rx.recv().await {
                sum += n;
            }
            sum
        };
        let feeder = async {
            for n in 1..=10 {
                tx.send(n).unwrap();
                tokio::task::yield_now().await;
            }
            drop(tx);
        };
        let main = std::pin::pin!(main);
        let (out, ()) = tokio::join!(race(main, Counted(&polls)), feeder);
        assert_eq!(out, Either::Main(55));
        // The main future woke eleven times; the side was polled once, at the start.
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_side_that_fires_ends_the_race_and_the_main_future_goes_on() {
        let token = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<&str>();
        let mut main = std::pin::pin!(rx);
        let side = std::pin::pin!(token.cancelled());
        let cancel = async {
            tokio::task::yield_now().await;
            token.cancel();
        };
        let (out, ()) = tokio::join!(race(main.as_mut(), side), cancel);
        assert_eq!(out, Either::Side(()));
        // The main future was not consumed: it still gets what is sent later.
        tx.send("later").unwrap();
        assert_eq!(main.await.unwrap(), "later");
    }

    #[tokio::test]
    async fn a_side_ready_from_the_start_wins_over_a_ready_main() {
        let token = CancellationToken::new();
        token.cancel();
        let main = std::pin::pin!(async { 1 });
        let side = std::pin::pin!(token.cancelled());
        let out = race(main, side).await;
        assert_eq!(out, Either::Side(()));
    }

    #[tokio::test(start_paused = true)]
    async fn within_returns_work_done_at_once_and_times_out_slow_work() {
        assert_eq!(within(Duration::from_secs(1), async { 7 }).await, Ok(7));
        let slow = within(Duration::from_secs(1), std::future::pending::<()>());
        assert!(slow.await.is_err());
        let at = Instant::now() + Duration::from_millis(10);
        let late = within_at(at, tokio::time::sleep(Duration::from_secs(5)));
        assert!(late.await.is_err());
        let soon = within_at(
            Instant::now() + Duration::from_secs(5),
            tokio::time::sleep(Duration::from_millis(10)),
        );
        assert_eq!(soon.await, Ok(()));
    }
}
