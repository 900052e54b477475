//! The reconnect delay curve: exponential growth from `initial` by `multiplier`, capped at
//! `max`, with multiplicative jitter drawn from the entropy seam, and an optional cap on
//! consecutive attempts (unlimited by default, unlike TopGun 2026-01's silent 10).

use std::time::Duration;

use crate::entropy::Entropy;

/// How reconnect attempts are spaced.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Growth factor per consecutive failure.
    pub multiplier: f64,
    /// Upper bound of any delay, jitter included.
    pub max: Duration,
    /// Jitter width: a delay is scaled by a factor uniform in `[1 - jitter, 1 + jitter)`.
    pub jitter: f64,
    /// Consecutive failed attempts before giving up; `None` retries forever.
    pub max_retries: Option<u32>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.5,
            max_retries: None,
        }
    }
}

/// The retry counter over a [`BackoffConfig`].
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempts: u32,
}

impl Backoff {
    /// A fresh counter.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            attempts: 0,
        }
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts the curve over (after a successful authentication or a forced reconnect).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The delay before the next attempt, or `None` when `max_retries` attempts were made.
    pub fn next_delay(&mut self, entropy: &dyn Entropy) -> Option<Duration> {
        if self
            .config
            .max_retries
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        let exponent = i32::try_from(self.attempts).unwrap_or(i32::MAX);
        self.attempts = self.attempts.saturating_add(1);
        let max = self.config.max.as_secs_f64();
        let base =
            (self.config.initial.as_secs_f64() * self.config.multiplier.powi(exponent)).min(max);
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter + 2.0 * jitter * unit_interval(entropy);
        // `max` bounds the real wait, so the cap holds with jitter too; NaN (a zero-width
        // curve times an infinite multiplier) falls back to the cap.
        let seconds = (base * factor).clamp(0.0, max);
        Some(Duration::try_from_secs_f64(seconds).unwrap_or(self.config.max))
    }
}

/// A uniform draw from `[0, 1)` with 53 bits of precision.
fn unit_interval(entropy: &dyn Entropy) -> f64 {
    (entropy.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;
    use proptest::prelude::*;

    /// Always draws the same 64 bits.
    struct Fixed(u64);

    impl Entropy for Fixed {
        fn fill(&self, buf: &mut [u8]) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.0.to_le_bytes()[i % 8];
            }
        }
    }

    fn millis(delays: impl Iterator<Item = Option<Duration>>) -> Vec<u128> {
        delays.map(|d| d.unwrap().as_millis()).collect()
    }

    #[test]
    fn without_jitter_the_curve_doubles_from_one_second_to_the_thirty_second_cap() {
        let mut backoff = Backoff::new(BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        });
        let delays = millis((0..8).map(|_| backoff.next_delay(&Fixed(0))));
        assert_eq!(
            delays,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
    }

    #[test]
    fn jitter_scales_between_half_and_one_and_a_half_and_never_passes_the_cap() {
        let config = BackoffConfig::default();
        // The smallest draw scales by exactly 0.5.
        let mut low = Backoff::new(config.clone());
        let delays = millis((0..7).map(|_| low.next_delay(&Fixed(0))));
        assert_eq!(
            delays,
            vec![500, 1_000, 2_000, 4_000, 8_000, 15_000, 15_000]
        );
        // The largest draw scales by 1.5 (to the nanosecond), clipped to the cap at the top.
        let mut high = Backoff::new(config);
        let delays = millis((0..7).map(|_| high.next_delay(&Fixed(u64::MAX))));
        assert_eq!(
            delays,
            vec![1_500, 3_000, 6_000, 12_000, 24_000, 30_000, 30_000]
        );
    }

    #[test]
    fn a_seeded_stream_gives_a_replayable_sequence() {
        let run = |seed| {
            let entropy = SeededEntropy::new(seed);
            let mut backoff = Backoff::new(BackoffConfig::default());
            millis((0..6).map(|_| backoff.next_delay(&entropy)))
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        assert_eq!(run(42), vec![1_181, 2_900, 3_710, 9_018, 12_617, 19_498]);
    }

    #[test]
    fn max_retries_ends_the_curve_until_reset() {
        let mut backoff = Backoff::new(BackoffConfig {
            max_retries: Some(3),
            ..BackoffConfig::default()
        });
        let entropy = Fixed(0);
        for _ in 0..3 {
            assert!(backoff.next_delay(&entropy).is_some());
        }
        assert_eq!(backoff.next_delay(&entropy), None);
        assert_eq!(backoff.attempts(), 3);
        backoff.reset();
        assert_eq!(
            backoff.next_delay(&entropy),
            Some(Duration::from_millis(500))
        );
    }

    #[test]
    fn unlimited_retries_never_end() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        let entropy = Fixed(7);
        assert!((0..10_000).all(|_| backoff.next_delay(&entropy).is_some()));
    }

    proptest! {
        #[test]
        fn every_delay_lies_in_the_jitter_band_of_the_capped_curve(seed in any::<u64>(), n in 0u32..40) {
            let entropy = SeededEntropy::new(seed);
            let mut backoff = Backoff::new(BackoffConfig::default());
            for attempt in 0..n {
                let delay = backoff.next_delay(&entropy).unwrap().as_secs_f64();
                let base = (2f64.powi(attempt as i32)).min(30.0);
                prop_assert!(delay >= base * 0.5 - 1e-9, "attempt {attempt}: {delay}");
                prop_assert!(delay <= base * 1.5 && delay <= 30.0, "attempt {attempt}: {delay}");
            }
        }
    }
}
