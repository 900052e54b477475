//! Per-connection abuse limits: the invalid-frame token bucket and rate-limited logging
//! (requirement SEC-04). Both take time as an argument so tests and simulations drive them.

/// A token bucket: `capacity` tokens, refilled continuously at `capacity / window_ms`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill_per_ms: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket allowing `capacity` events per `window_ms`.
    pub fn new(capacity: u32, window_ms: u64, now_ms: u64) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            tokens: capacity,
            refill_per_ms: capacity / window_ms.max(1) as f64,
            last_ms: now_ms,
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.refill_per_ms).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lets through at most `per_window` log lines per window and counts the rest, so a flood of
/// bad frames cannot fill a disk.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    per_window: u32,
    window_ms: u64,
    window_start: u64,
    emitted: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `per_window` lines per `window_ms`.
    pub fn new(per_window: u32, window_ms: u64) -> Self {
        Self {
            per_window,
            window_ms,
            window_start: 0,
            emitted: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed_since_last_line)` when a line may be written now, `None` to stay quiet.
    pub fn allow(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.window_start) >= self.window_ms {
            self.window_start = now_ms;
            self.emitted = 0;
        }
        if self.emitted < self.per_window {
            self.emitted += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_capacity_then_refills_over_the_window() {
        let mut b = TokenBucket::new(10, 10_000, 0);
        assert!((0..10).all(|_| b.try_take(0)));
        assert!(
            !b.try_take(0),
            "11th invalid frame in the same instant is refused"
        );
        assert!(!b.try_take(500), "half a token is not enough");
        assert!(b.try_take(1_000), "one token per second refills");
        assert!(!b.try_take(1_000));
    }

    #[test]
    fn log_limiter_counts_what_it_suppresses() {
        let mut l = LogLimiter::new(2, 1_000);
        assert_eq!(l.allow(0), Some(0));
        assert_eq!(l.allow(1), Some(0));
        assert_eq!(l.allow(2), None);
        assert_eq!(l.allow(3), None);
        assert_eq!(
            l.allow(1_000),
            Some(2),
            "next window reports what was dropped"
        );
    }
}
