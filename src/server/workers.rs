//! The worker pool: CPU-heavy work (large batch merges, rebuilding big replicas on load,
//! encoding large responses) runs here instead of on the connection tasks, so one client's
//! heavy request never stalls another client's `PING`.
//!
//! The pool is bounded twice over: at most `size` jobs run at once (each on a blocking
//! thread), and a caller waits for a permit *before* its job is spawned, so a busy pool makes
//! callers wait instead of piling up threads. Waiters are connection tasks awaiting their own
//! request, so the queue is bounded by the number of connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::protocol::Message;
use crate::protocol::codec;

/// Why a pooled job produced no result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the worker pool is shut down")]
    Closed,
    #[error("a pooled job failed: {0}")]
    Failed(String),
}

/// What the pool has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    /// Jobs that ran to completion (or failure).
    pub tasks_run: AtomicU64,
    /// Total microseconds jobs waited for a permit.
    pub queue_wait_micros: AtomicU64,
    /// Jobs currently waiting for a permit.
    pub waiting: AtomicU64,
}

impl PoolMetrics {
    /// The Prometheus text exposition of the pool's counters (appended to `/metrics`).
    pub fn render(&self) -> String {
        let rows = [
            (
                "topgun_worker_tasks_total",
                "Jobs run on the CPU worker pool.",
                "counter",
                self.tasks_run.load(Ordering::Relaxed) as f64,
            ),
            (
                "topgun_worker_queue_wait_seconds_total",
                "Time jobs waited for a free worker.",
                "counter",
                self.queue_wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
            ),
            (
                "topgun_worker_queue_waiting",
                "Jobs waiting for a free worker.",
                "gauge",
                self.waiting.load(Ordering::Relaxed) as f64,
            ),
        ];
        rows.iter()
            .map(|(name, help, kind, value)| {
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n")
            })
            .collect()
    }
}

/// A bounded pool of blocking threads for CPU-heavy work. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerPool {
    permits: Arc<Semaphore>,
    size: usize,
    metrics: Arc<PoolMetrics>,
}

impl WorkerPool {
    /// A pool running at most `size` jobs at once; 0 means the available parallelism.
    pub fn new(size: usize) -> Self {
        let size = if size == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            size
        };
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
            metrics: Arc::new(PoolMetrics::default()),
        }
    }

    /// How many jobs may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The pool's counters.
    pub fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// Runs `job` on a blocking thread once a permit is free, and returns its result.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let queued = Instant::now();
        self.metrics.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.permits.clone().acquire_owned().await;
        self.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = permit.map_err(|_| PoolError::Closed)?;
        let waited = u64::try_from(queued.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics
            .queue_wait_micros
            .fetch_add(waited, Ordering::Relaxed);
        // The permit moves into the job so it is released only when the work is done, even if
        // the awaiting connection goes away meanwhile.
        let outcome = tokio::task::spawn_blocking(move || {
            let result = job();
            drop(permit);
            result
        })
        .await;
        self.metrics.tasks_run.fetch_add(1, Ordering::Relaxed);
        outcome.map_err(|e| PoolError::Failed(e.to_string()))
    }

    /// Runs `job` on the pool when `heavy`, inline otherwise: small work is cheaper than the
    /// hand-off.
    pub async fn run_if<T, F>(&self, heavy: bool, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if heavy {
            self.run(job).await
        } else {
            Ok(job())
        }
    }

    /// Encodes `message` as msgpack, on the pool when it carries at least `threshold` rows.
    pub async fn encode(
        &self,
        message: Message,
        rows: usize,
        threshold: usize,
    ) -> Result<Vec<u8>, PoolError> {
        self.run_if(rows >= threshold, move || codec::encode_msgpack(&message))
            .await?
            .map_err(|e| PoolError::Failed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{LeafRecord, SyncRespLeaf, SyncRespLeafPayload};
    use crate::record::LwwRecord;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn zero_size_means_available_parallelism() {
        let expected = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(WorkerPool::new(0).size(), expected);
        assert_eq!(WorkerPool::new(3).size(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_runs_more_jobs_than_its_size() {
        let pool = WorkerPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let jobs = (0..8).map(|i| {
            let pool = pool.clone();
            let running = running.clone();
            let peak = peak.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                })
                .await
            })
        });
        let mut results = Vec::new();
        for job in jobs.collect::<Vec<_>>() {
            results.push(job.await.unwrap().unwrap());
        }
        assert_eq!(results, (0..8).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 2, "bounded by the pool size");
        assert_eq!(pool.metrics().tasks_run.load(Ordering::Relaxed), 8);
        assert!(
            pool.metrics().queue_wait_micros.load(Ordering::Relaxed) > 0,
            "later jobs waited for a permit"
        );
        assert_eq!(pool.metrics().waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_frees_its_permit() {
        let pool = WorkerPool::new(1);
        let failed = pool.run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(failed, Err(PoolError::Failed(_))), "{failed:?}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn metrics_render_as_prometheus_text() {
        let pool = WorkerPool::new(1);
        pool.run(|| ()).await.unwrap();
        pool.run(|| ()).await.unwrap();
        let text = pool.metrics().render();
        assert!(
            text.contains(
                "# TYPE topgun_worker_tasks_total counter\ntopgun_worker_tasks_total 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("topgun_worker_queue_waiting 0\n"), "{text}");
        assert!(
            text.contains("topgun_worker_queue_wait_seconds_total "),
            "{text}"
        );
    }

    fn large_leaf(rows: usize) -> Message {
        let records = (0..rows)
            .map(|i| LeafRecord {
                key: format!("key-{i:05}"),
                record: LwwRecord {
                    value: Some(serde_json::json!({"n": i, "title": format!("row {i}")}).into()),
                    timestamp: crate::hlc::Timestamp::new(1_700_000_000_000 + i as u64, 0, "n1"),
                    ttl_ms: None,
                },
            })
            .collect();
        SyncRespLeaf {
            payload: SyncRespLeafPayload {
                map_name: "big".to_owned(),
                path: "01".to_owned(),
                records,
            },
        }
        .into()
    }

    #[tokio::test]
    async fn encoding_on_the_pool_gives_the_same_bytes_as_inline() {
        let pool = WorkerPool::new(2);
        let message = large_leaf(5_000);
        let inline = pool.encode(message.clone(), 5_000, usize::MAX).await;
        let pooled = pool.encode(message.clone(), 5_000, 1).await;
        let inline = inline.unwrap();
        assert_eq!(inline, pooled.unwrap());
        assert_eq!(inline, codec::encode_msgpack(&message).unwrap());
        assert_eq!(pool.metrics().tasks_run.load(Ordering::Relaxed), 1);
    }
}
