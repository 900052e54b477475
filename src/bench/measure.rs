//! What every load generator measures with: the shared live [`Counters`] (read by the
//! once-a-second progress line), the run's time [`Window`] (warm-up, then measurement),
//! [`Latencies`], an HDR histogram of microseconds summarised as [`Percentiles`], and
//! [`cpu_seconds`], a process's CPU time from `/proc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::report::{human_bytes, human_count, ms};

/// Live totals shared by every task of a run. Never reset, so the progress line and the
/// measurement snapshots can both read them; only the longest latency is the progress
/// line's own, taken (and so restarted) each second.
#[derive(Debug, Default)]
pub struct Counters {
    /// Ops acknowledged by the server.
    pub acked_ops: AtomicU64,
    /// Changes seen by subscribers (fanout).
    pub deliveries: AtomicU64,
    /// Connections currently open and authenticated.
    pub open_conns: AtomicU64,
    /// Errors of any kind: `ERROR`, `OP_REJECTED`, undecodable frames, failed connections.
    pub errors: AtomicU64,
    /// WebSocket payload bytes sent.
    pub sent_bytes: AtomicU64,
    /// WebSocket payload bytes received.
    pub received_bytes: AtomicU64,
    /// The longest latency (µs) noted since the progress line last took it: a stall shows
    /// in the second it happened, which the end-of-run percentiles cannot say.
    pub longest_latency_us: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub acked_ops: u64,
    pub deliveries: u64,
    pub open_conns: u64,
    pub errors: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
}

impl Counters {
    /// Adds one error.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes a latency for the progress line's longest of the second (ack latency in
    /// `write`, delivery latency in `fanout`; warm-up included).
    pub fn note_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.longest_latency_us.fetch_max(micros, Ordering::Relaxed);
    }

    /// The longest latency noted since the last call, which starts a new period.
    pub fn take_longest_latency(&self) -> Option<Duration> {
        match self.longest_latency_us.swap(0, Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            acked_ops: self.acked_ops.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
            open_conns: self.open_conns.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and `self` (open connections are a level, not a sum).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            acked_ops: self.acked_ops.saturating_sub(earlier.acked_ops),
            deliveries: self.deliveries.saturating_sub(earlier.deliveries),
            open_conns: self.open_conns,
            errors: self.errors.saturating_sub(earlier.errors),
            sent_bytes: self.sent_bytes.saturating_sub(earlier.sent_bytes),
            received_bytes: self.received_bytes.saturating_sub(earlier.received_bytes),
        }
    }
}

/// When a timed run measures: it starts at `start`, records from `measure_from` (after the
/// warm-up) and stops sending at `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
}

impl Window {
    /// A window starting now.
    pub fn starting_now(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            measure_from: start + warmup,
            end: start + warmup + duration,
        }
    }

    /// Whether something that started at `at` belongs to the measurement.
    pub fn measures(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.end
    }

    /// The length of the measurement.
    pub fn measured(&self) -> Duration {
        self.end - self.measure_from
    }

    /// Sleeps through the warm-up and returns the counters at its end, then sleeps through
    /// the measurement and returns the counters over it.
    pub async fn measure(&self, counters: &Counters) -> Snapshot {
        self.measure_with(counters, || ()).await.0
    }

    /// [`Window::measure`] that also takes `probe` as the measurement starts and ends.
    pub async fn measure_with<T>(
        &self,
        counters: &Counters,
        probe: impl Fn() -> T,
    ) -> (Snapshot, T, T) {
        tokio::time::sleep_until(self.measure_from).await;
        let (before, first) = (counters.snapshot(), probe());
        tokio::time::sleep_until(self.end).await;
        let (after, last) = (counters.snapshot(), probe());
        (after.since(&before), first, last)
    }
}

/// Clock ticks per second of `/proc/PID/stat` times: `USER_HZ`, 100 on every Linux port
/// this runs on (the kernel fixes it for user space whatever its own tick rate).
const USER_HZ: f64 = 100.0;

/// The CPU time (user plus system) process `pid` has used, from `/proc/PID/stat`; `None`
/// where there is no such file (not Linux, or the process is gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// `utime + stime` from the text of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Latencies in microseconds, from 1 µs to 10 minutes at 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

const MAX_LATENCY_MICROS: u64 = 600_000_000;

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).map(Self)
    }

    /// Records one latency (clamped into the histogram's range).
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_LATENCY_MICROS);
        self.0
            .saturating_record(micros.clamp(1, MAX_LATENCY_MICROS));
    }

    /// Adds another histogram's samples.
    pub fn add(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// How many samples were recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The summary the report shows.
    pub fn percentiles(&self) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1_000.0;
        if self.0.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            samples: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
            mean_ms: self.0.mean() / 1_000.0,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Prints one progress line a second to stderr until dropped.
pub struct Progress(JoinHandle<()>);

impl Progress {
    /// Starts reporting the rates of `counters` under `label`.
    pub fn start(label: &'static str, counters: Arc<Counters>) -> Self {
        let started = Instant::now();
        Self(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            let mut last = counters.snapshot();
            loop {
                ticker.tick().await;
                let now = counters.snapshot();
                let longest = counters.take_longest_latency();
                eprintln!(
                    "{}",
                    progress_line(label, started.elapsed(), &now.since(&last), longest)
                );
                last = now;
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One second's progress: rates over the second, open connections, total errors and the
/// longest latency of the second.
fn progress_line(
    label: &str,
    elapsed: Duration,
    second: &Snapshot,
    longest: Option<Duration>,
) -> String {
    format!(
        "[{label} {:>4}s] acked {}/s  delivered {}/s  conns {}  sent {}/s  received {}/s  errors {}  longest {}",
        elapsed.as_secs(),
        human_count(second.acked_ops as f64),
        human_count(second.deliveries as f64),
        second.open_conns,
        human_bytes(second.sent_bytes as f64),
        human_bytes(second.received_bytes as f64),
        second.errors,
        longest.map_or_else(|| "-".to_owned(), |latency| ms(latency.as_secs_f64() * 1e3)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_latency_of_a_second_is_shown_and_then_forgotten() {
        let counters = Counters::default();
        assert_eq!(counters.take_longest_latency(), None);
        counters.note_latency(Duration::from_millis(3));
        counters.note_latency(Duration::from_millis(40));
        counters.note_latency(Duration::from_millis(7));
        let longest = counters.take_longest_latency();
        assert_eq!(longest, Some(Duration::from_millis(40)));
        assert_eq!(counters.take_longest_latency(), None);
        let line = progress_line(
            "write",
            Duration::from_secs(3),
            &Snapshot::default(),
            longest,
        );
        assert!(line.ends_with("longest 40 ms"), "{line}");
        let idle = progress_line("write", Duration::from_secs(4), &Snapshot::default(), None);
        assert!(idle.ends_with("longest -"), "{idle}");
    }

    #[test]
    fn percentiles_of_known_samples() {
        let mut l = Latencies::new().unwrap();
        for ms in 1..=1_000u64 {
            l.record(Duration::from_millis(ms));
        }
        let p = l.percentiles();
        assert_eq!(p.samples, 1_000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 1.5, "{p:?}");
        assert!((p.max_ms - 1_000.0).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn merged_histograms_count_both() {
        let mut a = Latencies::new().unwrap();
        let mut b = Latencies::new().unwrap();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_secs(2));
        a.add(&b);
        assert_eq!(a.count(), 2);
        assert!((a.percentiles().max_ms - 2_000.0).abs() < 2.0);
    }

    #[test]
    fn empty_histogram_reports_zeroes() {
        assert_eq!(
            Latencies::new().unwrap().percentiles(),
            Percentiles::default()
        );
    }

    #[test]
    fn snapshot_difference_keeps_the_connection_level() {
        let earlier = Snapshot {
            acked_ops: 10,
            open_conns: 5,
            sent_bytes: 100,
            ..Snapshot::default()
        };
        let later = Snapshot {
            acked_ops: 25,
            open_conns: 7,
            sent_bytes: 160,
            ..Snapshot::default()
        };
        let d = later.since(&earlier);
        assert_eq!((d.acked_ops, d.open_conns, d.sent_bytes), (15, 7, 60));
    }

    #[tokio::test]
    async fn window_measures_only_after_the_warmup() {
        let w = Window::starting_now(Duration::from_millis(50), Duration::from_millis(100));
        assert!(!w.measures(w.start));
        assert!(w.measures(w.measure_from));
        assert!(!w.measures(w.end));
        assert_eq!(w.measured(), Duration::from_millis(100));
    }
}
