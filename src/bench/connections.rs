//! `topgun bench connections`: opens and authenticates N idle connections (raising this
//! process's open-file limit first), holds them with heartbeats for the run's duration and,
//! for a local server (`--server-pid`), reports the server's resident memory per connection
//! from `/proc/PID/status` `VmRSS`, read before opening and once all are open.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::{Clock, SystemClock};

use super::conn::Conn;
use super::measure::{Latencies, Percentiles, Progress};
use super::report::{Rows, human_bytes, human_count, ms};
use super::write::PING_EVERY;
use super::{BenchError, ConnectionsArgs, Context};

/// Descriptors beyond the connections: stdio, the runtime, files.
const SPARE_FILES: u64 = 256;
/// Pause after the last open before reading the server's memory, so it settles.
const SETTLE: Duration = Duration::from_secs(1);

/// The resident set size in bytes from the text of `/proc/PID/status`.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let amount: u64 = fields.next()?.parse().ok()?;
    let unit = match fields.next()? {
        "kB" => 1_024,
        "mB" | "MB" => 1_024 * 1_024,
        _ => 1,
    };
    Some(amount * unit)
}

/// The resident memory of process `pid`.
fn resident_bytes(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| BenchError::Proc {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    parse_vm_rss(&status).ok_or(BenchError::Proc {
        path,
        reason: "no VmRSS line".to_owned(),
    })
}

/// Keeps a connection alive (PING, answers ignored) until told to stop.
async fn hold(mut conn: Conn, mut stop: watch::Receiver<bool>) {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ping.tick() => {
                if conn.ping(SystemClock.now_millis()).await.is_err() {
                    return;
                }
            }
            received = conn.recv() => {
                if received.is_err() {
                    return;
                }
            }
        }
    }
    conn.close().await;
}

/// The `connections` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsReport {
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    /// Time to open and authenticate all of them.
    pub open_secs: f64,
    pub opens_per_sec: f64,
    /// Connect + `AUTH` → `AUTH_ACK` per connection.
    pub handshake_latency: Percentiles,
    pub held_secs: f64,
    /// Connections still open at the end of the hold.
    pub still_open: u64,
    /// This process's open-file limit after raising it.
    pub open_file_limit: Option<u64>,
    pub server_rss_before: Option<u64>,
    pub server_rss_after: Option<u64>,
    pub server_bytes_per_connection: Option<f64>,
    pub errors: u64,
}

impl ConnectionsReport {
    /// The table rows.
    pub fn rows(&self) -> Rows {
        let optional_bytes = |b: Option<u64>| b.map_or("-".to_owned(), |b| human_bytes(b as f64));
        vec![
            (
                "opened".into(),
                format!(
                    "{} of {} ({} failed)",
                    self.opened, self.requested, self.failed
                ),
            ),
            (
                "open time".into(),
                format!(
                    "{:.2} s ({}/s)",
                    self.open_secs,
                    human_count(self.opens_per_sec)
                ),
            ),
            (
                "handshake p50 / p99 / max".into(),
                format!(
                    "{} / {} / {}",
                    ms(self.handshake_latency.p50_ms),
                    ms(self.handshake_latency.p99_ms),
                    ms(self.handshake_latency.max_ms)
                ),
            ),
            (
                "held".into(),
                format!("{:.1} s, {} still open", self.held_secs, self.still_open),
            ),
            (
                "open-file limit".into(),
                self.open_file_limit
                    .map_or("-".to_owned(), |l| l.to_string()),
            ),
            (
                "server RSS before / after".into(),
                format!(
                    "{} / {}",
                    optional_bytes(self.server_rss_before),
                    optional_bytes(self.server_rss_after)
                ),
            ),
            (
                "server memory / connection".into(),
                self.server_bytes_per_connection
                    .map_or("-".to_owned(), human_bytes),
            ),
            ("errors".into(), self.errors.to_string()),
        ]
    }
}

/// Runs `topgun bench connections`.
pub async fn run(ctx: &Context, args: &ConnectionsArgs) -> Result<ConnectionsReport, BenchError> {
    let open_file_limit = rlimit::increase_nofile_limit(args.count as u64 + SPARE_FILES).ok();
    let server_rss_before = args.server_pid.map(resident_bytes).transpose()?;
    let _progress = Progress::start("connections", ctx.counters.clone());

    let (stop, stopped) = watch::channel(false);
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut holders = JoinSet::new();
    for index in 0..args.count {
        let ctx = ctx.clone();
        let gate = gate.clone();
        let opened_tx = opened_tx.clone();
        let stopped = stopped.clone();
        holders.spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            let begun = Instant::now();
            let result = ctx.open(index).await;
            drop(permit);
            let _ = opened_tx.send(result.as_ref().map(|_| begun.elapsed()).ok());
            // The collector stops once every opener has reported, so let go of the sender.
            drop(opened_tx);
            if let Ok(conn) = result {
                hold(conn, stopped).await;
            }
        });
    }
    drop(opened_tx);

    let mut handshakes = Latencies::new()?;
    let mut failed = 0;
    while let Some(outcome) = opened_rx.recv().await {
        match outcome {
            Some(latency) => handshakes.record(latency),
            None => {
                failed += 1;
                ctx.counters.error();
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    let opened = args.count - failed;

    tokio::time::sleep(SETTLE).await;
    let server_rss_after = args.server_pid.map(resident_bytes).transpose()?;
    let held = Instant::now();
    tokio::time::sleep(ctx.duration).await;
    let still_open = ctx.counters.snapshot().open_conns;
    let held_secs = held.elapsed().as_secs_f64();
    let _ = stop.send(true);
    while holders.join_next().await.is_some() {}

    let server_bytes_per_connection = match (server_rss_before, server_rss_after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some(after.saturating_sub(before) as f64 / opened as f64)
        }
        _ => None,
    };
    Ok(ConnectionsReport {
        requested: args.count,
        opened,
        failed,
        open_secs,
        opens_per_sec: opened as f64 / open_secs.max(f64::EPSILON),
        handshake_latency: handshakes.percentiles(),
        held_secs,
        still_open,
        open_file_limit,
        server_rss_before,
        server_rss_after,
        server_bytes_per_connection,
        errors: ctx.counters.snapshot().errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss_in_kilobytes() {
        let status = "Name:\ttopgun\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12_345 * 1_024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_process_memory() {
        let rss = resident_bytes(std::process::id()).unwrap();
        assert!(rss > 1_024 * 1_024, "{rss}");
    }
}
