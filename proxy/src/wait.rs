//! Deadlines that cost nothing when the work is done at once.
//!
//! A deadline (`tokio::time::timeout`) reads the clock and takes a timer even for a write
//! that the socket's buffer takes at once; [`within`] tries the work first and takes the
//! timer only if the work has to wait.

use std::{future::Future, task::Poll, time::Duration};

use tokio::time::error::Elapsed;

/// `tokio::time::timeout(wait, work)`, with the clock read and the timer taken only if
/// `work` does not finish at its first poll.
pub async fn within<F: Future>(wait: Duration, work: F) -> Result<F::Output, Elapsed> {
    let mut work = std::pin::pin!(work);
    match std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => tokio::time::timeout(wait, work).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn within_returns_work_done_at_once_and_times_out_slow_work() {
        assert_eq!(within(Duration::from_secs(1), async { 7 }).await, Ok(7));
        let slow = within(Duration::from_secs(1), std::future::pending::<()>());
        assert!(slow.await.is_err());
        let soon = within(
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_millis(10)),
        );
        assert_eq!(soon.await, Ok(()));
    }
}
