//! Server counters, exported as Prometheus text on `GET /metrics`.
//!
//! Plain atomics: recording a metric must never contend with the write path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// Every metric the server exports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_evicted: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub invalid_frames: AtomicU64,
    pub invalid_frame_closes: AtomicU64,
    pub ops_applied: AtomicU64,
    pub ops_rejected: AtomicU64,
    pub auth_failures: AtomicU64,
    ack_latency: Histogram,
    map_lock_blocked: Histogram,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long an `OP_ACK` took from frame arrival to send.
    pub fn observe_ack_latency(&self, latency: Duration) {
        self.ack_latency.observe(latency);
    }

    /// Records how long a thread blocked on a map's lock that another batch held. Under load
    /// this is how a hot map shows: when the kernel preempts a thread holding the lock, every
    /// writer of that map waits until it runs again.
    pub fn observe_map_lock_blocked(&self, waited: Duration) {
        self.map_lock_blocked.observe(waited);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64, &str); 10] = [
            (
                "topgun_connections_open",
                "Open WebSocket connections.",
                &self.connections_open,
                "gauge",
            ),
            (
                "topgun_connections_total",
                "WebSocket connections accepted.",
                &self.connections_total,
                "counter",
            ),
            (
                "topgun_connections_evicted_total",
                "Connections evicted by the LRU registry bound.",
                &self.connections_evicted,
                "counter",
            ),
            (
                "topgun_frames_in_total",
                "Frames received.",
                &self.frames_in,
                "counter",
            ),
            (
                "topgun_frames_out_total",
                "Frames sent.",
                &self.frames_out,
                "counter",
            ),
            (
                "topgun_invalid_frames_total",
                "Frames rejected by decoding or schema validation.",
                &self.invalid_frames,
                "counter",
            ),
            (
                "topgun_invalid_frame_closes_total",
                "Connections closed for too many invalid frames.",
                &self.invalid_frame_closes,
                "counter",
            ),
            (
                "topgun_ops_applied_total",
                "Write operations applied.",
                &self.ops_applied,
                "counter",
            ),
            (
                "topgun_ops_rejected_total",
                "Write operations rejected.",
                &self.ops_rejected,
                "counter",
            ),
            (
                "topgun_auth_failures_total",
                "Failed authentications.",
                &self.auth_failures,
                "counter",
            ),
        ];
        for (name, help, value, kind) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        self.ack_latency.render(
            &mut out,
            "topgun_ack_latency_seconds",
            "Time from OP_BATCH arrival to OP_ACK.",
        );
        self.map_lock_blocked.render(
            &mut out,
            "topgun_map_lock_blocked_seconds",
            "Time a thread blocked on a map lock another write batch held.",
        );
        out
    }
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let seconds = micros as f64 / 1e6;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends the histogram in Prometheus text format, its buckets cumulative.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histogram() {
        let m = Metrics::default();
        Metrics::inc(&m.frames_in);
        Metrics::inc(&m.frames_in);
        m.observe_ack_latency(Duration::from_micros(300));
        m.observe_ack_latency(Duration::from_millis(20));
        let text = m.render();
        assert!(text.contains("topgun_frames_in_total 2\n"));
        assert!(text.contains("topgun_ack_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("topgun_ack_latency_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("topgun_ack_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("topgun_ack_latency_seconds_count 2\n"));
        assert!(text.contains("topgun_map_lock_blocked_seconds_count 0\n"));
    }

    #[test]
    fn renders_map_lock_waits_apart_from_ack_latency() {
        let m = Metrics::default();
        m.observe_map_lock_blocked(Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains("# TYPE topgun_map_lock_blocked_seconds histogram\n"));
        assert!(text.contains("topgun_map_lock_blocked_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("topgun_map_lock_blocked_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("topgun_map_lock_blocked_seconds_sum 0.002\n"));
        assert!(text.contains("topgun_ack_latency_seconds_count 0\n"));
    }
}
