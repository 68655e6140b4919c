//! The rate limits and trap history of one plugin, shared by all its instances.
//!
//! A trap drops an instance and a reload swaps in a new version, but neither resets what is
//! counted here: [`PluginRates`] lives as long as the plugin's slot in [`super::dispatch`], and
//! every instance (event, job or new version) holds it through its
//! [`super::instance::InstanceContext`]. So a plugin that fires ten events and traps, again
//! and again, still gets ten events a second in all; a plugin that keeps trapping waits longer
//! and longer before each restart, and is finally parked (its state `failed`, until a reload).
//! Every method takes the current time and never blocks beyond a short mutex section.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// User events and queries one plugin may send per second, together, across all its
/// instances; the rest get `RateLimited`. It bounds a plugin that answers events with events.
pub const MAX_CLUSTER_MESSAGES_PER_SECOND: u32 = 10;
/// Lines a plugin may log through `serf.log` per second, across all its instances; the rest
/// get `RateLimited`, and their number is logged once the second is over.
pub const MAX_LOG_LINES_PER_SECOND: u32 = 100;
/// Lines a plugin's stdout and stderr together may write per second, across all its
/// instances; the rest are dropped and counted.
pub const MAX_OUTPUT_LINES_PER_SECOND: u32 = 100;
/// Warnings about failed calls (traps, and events the plugin refused) logged per plugin per
/// second; the rest are counted in the next one.
pub const MAX_FAILURE_LOGS_PER_SECOND: u32 = 1;
/// The wait before restarting after the second failure in a row; it doubles with each further
/// one, up to [`MAX_RESTART_DELAY`]. The first restart is immediate.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(1);
/// A failure more than this long after the previous one starts a new run of failures.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Consecutive failed calls after which a plugin is parked, unless its table says otherwise
/// (`max_consecutive_traps`).
pub const DEFAULT_MAX_CONSECUTIVE_TRAPS: u32 = 16;

/// A count per one-second window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    started: Instant,
    count: u32,
}

impl Window {
    pub(super) fn new(now: Instant) -> Window {
        Window {
            started: now,
            count: 0,
        }
    }

    /// Counts one more; returns whether it is within `limit`, and how many the window that
    /// just ended refused (`0` unless this call opened a new window).
    pub(super) fn take(&mut self, now: Instant, limit: u32) -> (bool, u32) {
        let mut refused_before = 0;
        if now.saturating_duration_since(self.started) >= Duration::from_secs(1) {
            refused_before = self.count.saturating_sub(limit);
            *self = Window::new(now);
        }
        self.count = self.count.saturating_add(1);
        (self.count <= limit, refused_before)
    }
}

/// What [`PluginRates::take_log_line`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAllowance {
    /// Whether this line may be logged.
    pub allowed: bool,
    /// Lines refused in the second that just ended, to report once; 0 otherwise.
    pub refused_before: u32,
}

/// What the plugin's task should do after a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Start a fresh instance once `delay` has passed (events wait in the queue meanwhile).
    Restart {
        /// The wait before the next start.
        delay: Duration,
        /// Consecutive failures so far.
        consecutive: u32,
    },
    /// Give up: the plugin has failed `consecutive` times in a row.
    Park {
        /// Consecutive failures.
        consecutive: u32,
    },
}

#[derive(Debug)]
struct State {
    messages: Window,
    logs: Window,
    output: Window,
    failure_logs: Window,
    unlogged_failures: u64,
    /// Failed calls in a row, each within [`FAILURE_WINDOW`] of the previous one.
    consecutive: u32,
    last_failure: Option<Instant>,
    /// No instance may start before this.
    restart_at: Option<Instant>,
    refused_messages: u64,
    refused_log_lines: u64,
    refused_output_lines: u64,
}

/// The plugin-wide rate windows and trap history (see the module docs).
#[derive(Debug)]
pub struct PluginRates {
    state: Mutex<State>,
    /// stdout and stderr lines dropped that no warning has reported yet; read without the
    /// lock at the end of every call.
    unreported_output: AtomicU64,
    /// `respond` calls refused: outside a query, a second answer, or a query this node
    /// already answered (another plugin or an RPC client was first).
    pub(crate) refused_responses: AtomicU64,
    /// Granted commands' counters and spawn window (ABI v1.1, commands).
    pub(crate) commands: super::commands::CommandCounters,
}

impl Default for PluginRates {
    fn default() -> PluginRates {
        PluginRates::new(Instant::now())
    }
}

impl PluginRates {
    /// Fresh windows opening at `now`.
    pub fn new(now: Instant) -> PluginRates {
        PluginRates {
            state: Mutex::new(State {
                messages: Window::new(now),
                logs: Window::new(now),
                output: Window::new(now),
                failure_logs: Window::new(now),
                unlogged_failures: 0,
                consecutive: 0,
                last_failure: None,
                restart_at: None,
                refused_messages: 0,
                refused_log_lines: 0,
                refused_output_lines: 0,
            }),
            unreported_output: AtomicU64::new(0),
            refused_responses: AtomicU64::new(0),
            commands: super::commands::CommandCounters::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one user event or query; false once the second's allowance is spent.
    pub fn take_message(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let allowed = state.messages.take(now, MAX_CLUSTER_MESSAGES_PER_SECOND).0;
        state.refused_messages += u64::from(!allowed);
        allowed
    }

    /// Counts one `serf.log` line.
    pub fn take_log_line(&self, now: Instant) -> LogAllowance {
        let mut state = self.lock();
        let (allowed, refused_before) = state.logs.take(now, MAX_LOG_LINES_PER_SECOND);
        state.refused_log_lines += u64::from(!allowed);
        LogAllowance {
            allowed,
            refused_before,
        }
    }

    /// Counts one stdout or stderr line: whether it may be logged, and the dropped lines no
    /// warning has reported yet, to report now, when this line opened a new second.
    pub fn take_output_line(&self, now: Instant) -> (bool, u64) {
        let mut state = self.lock();
        let (allowed, refused_before) = state.output.take(now, MAX_OUTPUT_LINES_PER_SECOND);
        state.refused_output_lines += u64::from(!allowed);
        let to_report = if refused_before > 0 {
            self.unreported_output.swap(0, Ordering::Relaxed)
        } else {
            0
        };
        if !allowed {
            self.unreported_output.fetch_add(1, Ordering::Relaxed);
        }
        (allowed, to_report)
    }

    /// The dropped stdout and stderr lines no warning has reported yet, now counted as
    /// reported. Called at the end of every call, so a burst followed by silence or a trap is
    /// reported too.
    pub fn take_unreported_output(&self) -> u64 {
        if self.unreported_output.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.unreported_output.swap(0, Ordering::Relaxed)
    }

    /// stdout and stderr lines dropped by the rate limit so far.
    pub fn refused_output_lines(&self) -> u64 {
        self.lock().refused_output_lines
    }

    /// Records a failed call (a trap) and says whether to restart, after which wait, or to
    /// park the plugin after `max_consecutive` failures in a row.
    pub fn record_failure(&self, now: Instant, max_consecutive: u32) -> AfterFailure {
        let mut state = self.lock();
        let recent = state
            .last_failure
            .is_some_and(|last| now.saturating_duration_since(last) <= FAILURE_WINDOW);
        state.consecutive = if recent {
            state.consecutive.saturating_add(1)
        } else {
            1
        };
        state.last_failure = Some(now);
        let consecutive = state.consecutive;
        if consecutive >= max_consecutive.max(1) {
            state.restart_at = None;
            return AfterFailure::Park { consecutive };
        }
        let delay = restart_delay(consecutive);
        state.restart_at = Some(now + delay);
        AfterFailure::Restart { delay, consecutive }
    }

    /// Whether a warning about a failed call may be logged now: `Some` with the number of
    /// such warnings left out since the last one, or `None` (and it is counted).
    pub fn take_failure_log(&self, now: Instant) -> Option<u64> {
        let mut state = self.lock();
        let (allowed, _) = state.failure_logs.take(now, MAX_FAILURE_LOGS_PER_SECOND);
        if allowed {
            Some(std::mem::take(&mut state.unlogged_failures))
        } else {
            state.unlogged_failures += 1;
            None
        }
    }

    /// A call succeeded: the run of failures is over.
    pub fn record_success(&self) {
        let mut state = self.lock();
        state.consecutive = 0;
        state.restart_at = None;
    }

    /// (user events and queries, `serf.log` lines) refused by the rate limits so far.
    pub fn refused(&self) -> (u64, u64) {
        let state = self.lock();
        (state.refused_messages, state.refused_log_lines)
    }

    /// When the next instance may start, if it must wait.
    pub fn restart_at(&self) -> Option<Instant> {
        self.lock().restart_at
    }

    /// Forgets the failures (a reload revives a parked plugin); the rate windows stay.
    pub fn clear_failures(&self) {
        let mut state = self.lock();
        state.consecutive = 0;
        state.last_failure = None;
        state.restart_at = None;
    }
}

/// The wait before restarting after `consecutive` failures in a row: none after the first,
/// then [`FIRST_RESTART_DELAY`] doubling up to [`MAX_RESTART_DELAY`].
pub fn restart_delay(consecutive: u32) -> Duration {
    if consecutive <= 1 {
        return Duration::ZERO;
    }
    FIRST_RESTART_DELAY
        .saturating_mul(1 << (consecutive - 2).min(16))
        .min(MAX_RESTART_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_allowance_is_the_plugins_not_an_instances() {
        let now = Instant::now();
        let rates = std::sync::Arc::new(PluginRates::new(now));
        // Two "instances" (a trap in between) share one allowance.
        let first = std::sync::Arc::clone(&rates);
        let second = std::sync::Arc::clone(&rates);
        let taken = (0..8).filter(|_| first.take_message(now)).count()
            + (0..8).filter(|_| second.take_message(now)).count();
        assert_eq!(taken, MAX_CLUSTER_MESSAGES_PER_SECOND as usize);
        assert!(rates.take_message(now + Duration::from_secs(1)));
    }

    #[test]
    fn log_lines_refused_in_a_second_are_reported_once() {
        let now = Instant::now();
        let rates = PluginRates::new(now);
        for _ in 0..MAX_LOG_LINES_PER_SECOND {
            assert!(rates.take_log_line(now).allowed);
        }
        assert!(!rates.take_log_line(now).allowed);
        assert!(!rates.take_log_line(now).allowed);
        let next = rates.take_log_line(now + Duration::from_secs(1));
        assert_eq!(
            next,
            LogAllowance {
                allowed: true,
                refused_before: 2
            }
        );
    }

    #[test]
    fn restarts_back_off_and_a_plugin_that_keeps_trapping_is_parked() {
        let now = Instant::now();
        let rates = PluginRates::new(now);
        let mut delays = Vec::new();
        for _ in 1..5 {
            match rates.record_failure(now, 5) {
                AfterFailure::Restart { delay, .. } => delays.push(delay.as_millis()),
                AfterFailure::Park { .. } => panic!("parked too early"),
            }
        }
        assert_eq!(delays, [0, 100, 200, 400]);
        assert_eq!(rates.restart_at(), Some(now + Duration::from_millis(400)));
        assert_eq!(
            rates.record_failure(now, 5),
            AfterFailure::Park { consecutive: 5 }
        );
        assert_eq!(restart_delay(40), MAX_RESTART_DELAY);
    }

    #[test]
    fn a_success_or_a_quiet_minute_ends_a_run_of_failures() {
        let now = Instant::now();
        let rates = PluginRates::new(now);
        rates.record_failure(now, 3);
        rates.record_failure(now, 3);
        rates.record_success();
        assert_eq!(rates.restart_at(), None);
        assert!(matches!(
            rates.record_failure(now, 3),
            AfterFailure::Restart { consecutive: 1, .. }
        ));
        rates.record_failure(now, 3);
        let later = now + FAILURE_WINDOW + Duration::from_secs(1);
        assert!(matches!(
            rates.record_failure(later, 3),
            AfterFailure::Restart { consecutive: 1, .. }
        ));
    }

    #[test]
    fn failure_warnings_are_limited_to_one_a_second() {
        let now = Instant::now();
        let rates = PluginRates::new(now);
        assert_eq!(rates.take_failure_log(now), Some(0));
        assert_eq!(rates.take_failure_log(now), None);
        assert_eq!(rates.take_failure_log(now), None);
        let next = now + Duration::from_secs(1);
        assert_eq!(rates.take_failure_log(next), Some(2));
    }
}
