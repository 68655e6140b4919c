//! Rate limits for log lines that a peer (or any process that reaches a port) can trigger.
//!
//! A `LogLimiter` lets one line out per interval and counts the lines it held back, so that
//! the next line can say how many there were. It reads no clock: callers pass `now` (the core
//! its own, the agent's shell tokio's), so it lives here where both can use it.

use std::time::{Duration, Instant};

/// One line per `interval`; the others are counted.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may go out now, `n` being the lines held back since the last
    /// one; `None` when this line is to be held back (and is counted).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_goes_out_and_the_rest_are_counted() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(limiter.check(start), Some(0));
        for ms in 1..=500 {
            assert_eq!(limiter.check(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(limiter.check(start + Duration::from_secs(10)), Some(500));
        assert_eq!(limiter.check(start + Duration::from_secs(11)), None);
        assert_eq!(limiter.check(start + Duration::from_secs(25)), Some(1));
    }
}
