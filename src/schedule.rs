//! Periodic passes: run a pass at start, then every interval, sooner after a failure, until
//! the token is cancelled. The partition maintenance and the sealer both run on it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest wait before retrying a failed pass.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Outcome of one pass, for scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    Done,
    Failed,
}

/// When the pass after one with `outcome` is due.
pub fn next_due(now: Instant, interval: Duration, outcome: PassOutcome) -> Instant {
    match outcome {
        PassOutcome::Done => now + interval,
        PassOutcome::Failed => now + interval.min(RETRY_AFTER_FAILURE),
    }
}

/// Runs `pass` now and then on schedule until `token` is cancelled.
pub async fn schedule<F, Fut>(interval: Duration, token: CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = PassOutcome>,
{
    let mut due = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let outcome = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            o = pass() => o,
        };
        due = next_due(Instant::now(), interval, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn passes_run_at_start_then_every_interval() {
        let count = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        let c = count.clone();
        let task = tokio::spawn(schedule(
            Duration::from_secs(3600),
            token.clone(),
            move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    PassOutcome::Done
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "first pass at start");
        tokio::time::sleep(Duration::from_secs(3598)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "not before the interval");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
        assert_eq!(count.load(Ordering::SeqCst), 4);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failed_pass_is_retried_sooner() {
        let count = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        let c = count.clone();
        let task = tokio::spawn(schedule(
            Duration::from_secs(3600),
            token.clone(),
            move || {
                let c = c.clone();
                async move {
                    // Fails twice, then succeeds.
                    if c.fetch_add(1, Ordering::SeqCst) < 2 {
                        PassOutcome::Failed
                    } else {
                        PassOutcome::Done
                    }
                }
            },
        ));
        tokio::time::sleep(RETRY_AFTER_FAILURE * 2 + Duration::from_secs(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_secs(3000)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            3,
            "back to the hourly schedule"
        );
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_loop_promptly() {
        let token = CancellationToken::new();
        let task = tokio::spawn(schedule(
            Duration::from_secs(3600),
            token.clone(),
            || async { PassOutcome::Done },
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        token.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("loop ends on cancel")
            .unwrap();
    }
}
