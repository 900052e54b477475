//! The wall-clock seam.
//!
//! Everything that needs "what time is it" (the HLC, TTL expiry, lock leases, cursor expiry)
//! asks a [`Clock`] instead of `SystemTime::now()`, so the same code runs against the real
//! clock in production and against a virtual, skewable clock in simulations and tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, as this host believes it to be.
    fn now_millis(&self) -> u64;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        // A clock before 1970 is a broken host; treat it as the epoch rather than panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to, with an adjustable skew.
///
/// Cloning shares the underlying time, so a test can hold one handle and give another to
/// the code under test.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    base: Arc<AtomicU64>,
    skew: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock reading `millis`.
    pub fn new(millis: u64) -> Self {
        Self {
            base: Arc::new(AtomicU64::new(millis)),
            skew: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Sets the (unskewed) time.
    pub fn set(&self, millis: u64) {
        self.base.store(millis, Ordering::SeqCst);
    }

    /// Moves the (unskewed) time forward.
    pub fn advance(&self, millis: u64) {
        self.base.fetch_add(millis, Ordering::SeqCst);
    }

    /// Sets how far this host's reading is ahead (positive) or behind (negative) true time.
    pub fn set_skew(&self, skew_millis: i64) {
        self.skew.store(skew_millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        let base = self.base.load(Ordering::SeqCst);
        base.saturating_add_signed(self.skew.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_applies_skew() {
        let clock = ManualClock::new(1_000);
        let shared = clock.clone();
        assert_eq!(shared.now_millis(), 1_000);
        clock.advance(500);
        assert_eq!(shared.now_millis(), 1_500);
        clock.set_skew(-2_000);
        assert_eq!(shared.now_millis(), 0, "skew saturates at the epoch");
        clock.set_skew(250);
        assert_eq!(shared.now_millis(), 1_750);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_millis() > 1_577_836_800_000);
    }
}
