//! Lifeguard's local health score (reference 2.14): probes slow down while this node itself
//! seems to be the problem.

use std::time::Duration;

/// A score in `[0, max - 1]`; 0 is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awareness {
    max: u32,
    score: u32,
}

impl Awareness {
    /// `max` is the profile's `awareness_max_multiplier`.
    pub fn new(max: u32) -> Awareness {
        Awareness { max, score: 0 }
    }

    /// Adds `delta`, clamped to the allowed range.
    pub fn apply_delta(&mut self, delta: i64) {
        let ceiling = i64::from(self.max.saturating_sub(1));
        let score = (i64::from(self.score) + delta).clamp(0, ceiling);
        self.score = u32::try_from(score).unwrap_or(0);
    }

    pub fn score(&self) -> u32 {
        self.score
    }

    /// `timeout * (score + 1)`.
    pub fn scale_timeout(&self, timeout: Duration) -> Duration {
        timeout.saturating_mul(self.score + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_stays_within_zero_and_max_minus_one() {
        let mut awareness = Awareness::new(8);
        awareness.apply_delta(-1);
        assert_eq!(awareness.score(), 0);
        awareness.apply_delta(20);
        assert_eq!(awareness.score(), 7);
        assert_eq!(
            awareness.scale_timeout(Duration::from_secs(1)),
            Duration::from_secs(8)
        );
        awareness.apply_delta(-3);
        assert_eq!(awareness.score(), 4);
    }
}
