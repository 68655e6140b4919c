//! Test helpers shared by every crate of the workspace (a dev-dependency only).
//!
//! Tests wait for conditions, never for fixed times: these helpers poll a check until it
//! holds or a bound passes, so every wait in the suite is bounded in time and count.
#![forbid(unsafe_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// How often the helpers poll.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` every [`POLL`] until it returns `Some`, or returns `None` once `timeout`
/// has passed (after one last check).
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `done` until it holds; panics after 30 s, naming `what`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let found = eventually(Duration::from_secs(30), || done().then_some(()));
    assert!(found.is_some(), "timed out waiting for {what}");
}

/// The async form of [`eventually`] for a check that is itself async: polls on tokio's clock
/// (so it works under `tokio::time::pause`) and says whether `check` held within `timeout`.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventually_returns_the_first_value_and_gives_up_after_the_timeout() {
        let mut calls = 0;
        let got = eventually(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
        let started = Instant::now();
        assert_eq!(eventually(Duration::from_millis(60), || None::<()>), None);
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_async_runs_on_tokio_time() {
        let mut calls = 0;
        assert!(
            eventually_async(Duration::from_secs(3600), || {
                calls += 1;
                std::future::ready(calls == 1000)
            })
            .await
        );
        assert!(!eventually_async(Duration::from_secs(60), || std::future::ready(false)).await);
    }
}
