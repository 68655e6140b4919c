//! Lifeguard suspicion timers (reference 2.15): a suspect node is declared dead after a
//! timeout that shrinks as independent peers confirm the suspicion.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// `suspicion_mult * max(1, log10(max(1, n))) * probe_interval`, with the scale truncated to
/// thousandths as memberlist does.
pub fn suspicion_timeout(
    suspicion_mult: u32,
    num_nodes: usize,
    probe_interval: Duration,
) -> Duration {
    let scale = f64::max(1.0, (num_nodes.max(1) as f64).log10());
    let scale_thousandths = (scale * 1000.0) as u128;
    let nanos = u128::from(suspicion_mult) * scale_thousandths * probe_interval.as_nanos() / 1000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The timeout after `confirmations` of `expected` confirmations: from `max` down to `min`
/// on a log scale, floored to whole milliseconds and never below `min`.
pub fn suspicion_timeout_after(
    confirmations: u32,
    expected: u32,
    min: Duration,
    max: Duration,
) -> Duration {
    let fraction = (f64::from(confirmations) + 1.0).ln() / (f64::from(expected) + 1.0).ln();
    let raw = max.as_secs_f64() - fraction * (max.as_secs_f64() - min.as_secs_f64());
    let millis = (1000.0 * raw).floor();
    let timeout = if millis.is_finite() && millis > 0.0 {
        Duration::from_millis(millis as u64)
    } else {
        Duration::ZERO
    };
    timeout.max(min)
}

/// One running suspicion of one node.
#[derive(Debug, Clone)]
pub struct Suspicion {
    expected: u32,
    confirmations: u32,
    min: Duration,
    max: Duration,
    start: Instant,
    deadline: Instant,
    seen: HashSet<String>,
}

impl Suspicion {
    /// Starts a suspicion raised by `from`, expecting `expected` further confirmations.
    pub fn new(from: &str, expected: u32, min: Duration, max: Duration, now: Instant) -> Suspicion {
        let timeout = if expected < 1 { min } else { max };
        Suspicion {
            expected,
            confirmations: 0,
            min,
            max,
            start: now,
            deadline: now + timeout,
            seen: HashSet::from([from.to_owned()]),
        }
    }

    /// Counts a suspicion from `from`; true if it was new (and should be re-gossiped).
    pub fn confirm(&mut self, from: &str) -> bool {
        if self.confirmations >= self.expected || self.seen.contains(from) {
            return false;
        }
        self.seen.insert(from.to_owned());
        self.confirmations += 1;
        let timeout =
            suspicion_timeout_after(self.confirmations, self.expected, self.min, self.max);
        self.deadline = self.start + timeout;
        true
    }

    /// When the node is declared dead (may already be past after a confirmation).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn confirmations(&self) -> u32 {
        self.confirmations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_uses_log10_of_the_cluster_size_floored_at_one() {
        let second = Duration::from_secs(1);
        assert_eq!(suspicion_timeout(4, 2, second), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 10, second), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 100, second), Duration::from_secs(8));
        // log10(50) = 1.69897 → 1.698 after truncation.
        assert_eq!(
            suspicion_timeout(4, 50, second),
            Duration::from_millis(6792)
        );
        assert_eq!(suspicion_timeout(4, 0, second), Duration::from_secs(4));
    }

    #[test]
    fn without_expected_confirmations_the_timer_starts_at_min() {
        let now = Instant::now();
        let min = Duration::from_secs(4);
        let suspicion = Suspicion::new("a", 0, min, min * 6, now);
        assert_eq!(suspicion.deadline(), now + min);
    }

    #[test]
    fn confirmations_shorten_the_timeout_down_to_min() {
        let now = Instant::now();
        let min = Duration::from_secs(4);
        let max = Duration::from_secs(24);
        let mut suspicion = Suspicion::new("a", 2, min, max, now);
        assert_eq!(suspicion.deadline(), now + max);
        assert!(!suspicion.confirm("a"), "the accuser is not a confirmation");
        assert!(suspicion.confirm("b"));
        assert!(!suspicion.confirm("b"));
        // 24 - ln(2)/ln(3) * 20 = 11.381...
        assert_eq!(suspicion.deadline(), now + Duration::from_millis(11381));
        assert!(suspicion.confirm("c"));
        assert_eq!(suspicion.deadline(), now + min);
        assert!(
            !suspicion.confirm("d"),
            "no more than the expected confirmations"
        );
        assert_eq!(suspicion.confirmations(), 2);
    }
}
