//! `topgun bench`: a load generator for any TopGun server. It speaks the raw msgpack
//! protocol like the TypeScript clients ([`conn`]), so its figures compare across servers.
//!
//! Workloads: [`write`] (ops/s and ack latency), [`fanout`] (live-query delivery latency),
//! [`connections`] (idle connections and the server's memory per connection) and [`sync`]
//! (full and delta Merkle sync). [`floor`] is a server that does no work, to measure the
//! machine and the generator against. [`measure`] holds the counters, time window and HDR
//! histograms they share; [`report`] prints the table and writes the JSON.

pub mod conn;
pub mod connections;
pub mod fanout;
pub mod floor;
pub mod measure;
pub mod report;
pub mod sched;
pub mod sync;
pub mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth;
use crate::clock::{Clock, SystemClock};
use crate::entropy::{Entropy, OsEntropy};
use crate::protocol::WriteConcern;

use self::conn::{Conn, ConnError};
use self::measure::Counters;
use self::report::Report;

/// Handshakes in flight at once while a workload opens its connections.
const OPEN_CONCURRENCY: usize = 64;
/// Lifetime of minted tokens: longer than any run.
const TOKEN_TTL_SECS: u64 = 24 * 3_600;

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error("no connection could be opened (see the errors above)")]
    NoConnections,
    #[error("cannot mint a token: {0}")]
    Token(String),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot build a latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error("cannot read {path}: {reason}")]
    Proc { path: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("a load task failed: {0}")]
    Task(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
}

/// `topgun bench` flags common to every workload.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// WebSocket URL of the server.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// A ready token used by every connection (takes precedence over `--secret`).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// The server's HS256 secret: a token is minted per connection. Defaults to the
    /// development secret.
    #[arg(long, global = true, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Roles of minted tokens, comma separated.
    #[arg(long, global = true, value_delimiter = ',', default_value = "USER")]
    pub roles: Vec<String>,
    /// How long to measure (`500ms`, `10s`, `2m`); `connections` holds this long.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Load before measuring starts.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Seed of key choices, values and samples.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
    /// Merge the result into this JSON report file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Threads of the load generator. One leaves the most CPU to a server on the same
    /// machine (it spends less on waking threads than two do); raise it when the generator
    /// itself saturates a core against a remote server.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// Scheduling policy of the generator's threads. `batch` (Linux `SCHED_BATCH`, nice value
    /// kept): a thread woken by a server reply does not preempt the running thread, so a
    /// server on the same machine keeps its core and the generator spends less CPU per op.
    #[arg(long, global = true, value_enum, default_value_t = sched::Sched::Batch)]
    pub sched: sched::Sched,
    #[command(subcommand)]
    pub workload: Workload,
}

/// The workloads.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Workload {
    /// Connections sending OP_BATCHes: acked ops/s and ack latency.
    Write(WriteArgs),
    /// Writers and live-query subscribers on one map: write → delivery latency.
    Fanout(FanoutArgs),
    /// Many idle authenticated connections: open rate and server memory per connection.
    Connections(ConnectionsArgs),
    /// Full and delta Merkle sync of a preloaded map.
    Sync(SyncArgs),
}

/// `bench write` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WriteArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// Ops per OP_BATCH.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes of padding in each value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Await each OP_ACK before the next batch (fire-and-wait).
    #[arg(long)]
    pub wait: bool,
    /// Batches in flight per connection without --wait.
    #[arg(long, default_value_t = 16)]
    pub pipeline: usize,
    /// Write concern of every batch (FIRE_AND_FORGET, MEMORY, APPLIED, REPLICATED, PERSISTED).
    #[arg(long, value_parser = parse_write_concern)]
    pub write_concern: Option<WriteConcern>,
    /// Total ops/s across connections; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// The map written to.
    #[arg(long, default_value = "bench-write")]
    pub map: String,
    /// Pid of a local server process, to report its CPU time per acked op: steadier than
    /// ops/s on a machine whose speed varies.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// `bench fanout` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Writer connections (each awaits its ack before the next batch).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Subscriber connections, each holding a live query on the whole map.
    #[arg(long, default_value_t = 50)]
    pub subscribers: usize,
    /// Ops per OP_BATCH.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Keys per writer.
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
    /// Bytes of padding in each value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Total writes/s across writers; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// The map written and watched.
    #[arg(long, default_value = "bench-fanout")]
    pub map: String,
}

/// `bench connections` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Pid of a local server process, to report its memory per connection.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// `bench sync` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// Records to preload.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Percentage of the records changed before the delta sync.
    #[arg(long, default_value_t = 1.0)]
    pub change_percent: f64,
    /// Ops per OP_BATCH while loading.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Loader connections.
    #[arg(long, default_value_t = 4)]
    pub loaders: usize,
    /// Bytes of padding in each value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// The map; defaults to a fresh one per run.
    #[arg(long)]
    pub map: Option<String>,
}

/// Parses `250ms`, `10s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let amount: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => amount / 1_000.0,
        "" | "s" => amount,
        "m" => amount * 60.0,
        other => return Err(format!("unknown duration unit {other:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

/// Parses a write concern by its wire name, case-insensitively.
pub fn parse_write_concern(text: &str) -> Result<WriteConcern, String> {
    serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase()))
        .map_err(|_| format!("unknown write concern {text:?}"))
}

/// How connections authenticate.
#[derive(Debug, Clone)]
enum Credentials {
    Token(String),
    Secret { secret: String, roles: Vec<String> },
}

/// What every workload needs: where to connect, how to authenticate, the timing flags and
/// the run's shared counters.
#[derive(Debug, Clone)]
pub struct Context {
    pub url: String,
    credentials: Credentials,
    pub duration: Duration,
    pub warmup: Duration,
    pub seed: u64,
    /// Random per run, so node ids and map names of separate runs never collide.
    pub run_id: String,
    pub counters: Arc<Counters>,
}

impl Context {
    /// The context of a run with `args`.
    pub fn new(args: &BenchArgs) -> Self {
        let credentials = match (&args.token, &args.secret) {
            (Some(token), _) => Credentials::Token(token.clone()),
            (None, secret) => Credentials::Secret {
                secret: secret
                    .clone()
                    .unwrap_or_else(|| auth::DEV_DEFAULT_SECRET.to_owned()),
                roles: args.roles.clone(),
            },
        };
        Self {
            url: args.url.clone(),
            credentials,
            duration: args.duration,
            warmup: args.warmup,
            seed: args.seed,
            run_id: OsEntropy.hex_id(4),
            counters: Arc::new(Counters::default()),
        }
    }

    /// The HLC node id of connection `index`.
    pub fn node_id(&self, index: usize) -> String {
        format!("bench-{}-{index}", self.run_id)
    }

    fn token(&self, index: usize) -> Result<String, BenchError> {
        match &self.credentials {
            Credentials::Token(token) => Ok(token.clone()),
            Credentials::Secret { secret, roles } => auth::mint_token(
                secret,
                &format!("bench-{index}"),
                roles,
                TOKEN_TTL_SECS,
                SystemClock.now_millis() / 1_000,
            )
            .map_err(|e| BenchError::Token(e.to_string())),
        }
    }

    /// Opens and authenticates connection `index`, counted in the run's counters.
    pub async fn open(&self, index: usize) -> Result<Conn, BenchError> {
        self.open_counted(index, self.counters.clone()).await
    }

    /// Opens connection `index`, counting its traffic in `counters`.
    pub async fn open_counted(
        &self,
        index: usize,
        counters: Arc<Counters>,
    ) -> Result<Conn, BenchError> {
        let token = self.token(index)?;
        Ok(Conn::open(&self.url, &token, counters).await?)
    }

    /// Opens connections `0..count`; failures are counted as errors and reported on stderr.
    pub async fn open_many(&self, count: usize) -> Vec<(usize, Conn)> {
        self.open_many_from(0, count).await
    }

    /// Opens connections `first..first + count`, a bounded number of handshakes at a time.
    pub async fn open_many_from(&self, first: usize, count: usize) -> Vec<(usize, Conn)> {
        let gate = Arc::new(tokio::sync::Semaphore::new(OPEN_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for index in first..first + count {
            let ctx = self.clone();
            let gate = gate.clone();
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await;
                (index, ctx.open(index).await)
            });
        }
        let mut conns = Vec::with_capacity(count);
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((index, Ok(conn))) => conns.push((index, conn)),
                Ok((_, Err(e))) => {
                    self.counters.error();
                    first_error.get_or_insert(e.to_string());
                }
                Err(e) => {
                    self.counters.error();
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(error) = first_error {
            eprintln!(
                "bench: {} of {count} connections failed; first error: {error}",
                count - conns.len()
            );
        }
        conns.sort_by_key(|(index, _)| *index);
        conns
    }
}

/// Runs the chosen workload and returns its report.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let ctx = Context::new(args);
    let mut report = Report {
        url: Some(args.url.clone()),
        ..Report::default()
    };
    match &args.workload {
        Workload::Write(w) => {
            let result = Some(write::run(&ctx, w).await?);
            if w.rate > 0 {
                report.write_paced = result;
            } else if w.wait {
                report.write_wait = result;
            } else {
                report.write = result;
            }
        }
        Workload::Fanout(f) => report.fanout = Some(fanout::run(&ctx, f).await?),
        Workload::Connections(c) => report.connections = Some(connections::run(&ctx, c).await?),
        Workload::Sync(s) => report.sync = Some(sync::run(&ctx, s).await?),
    }
    Ok(report)
}

/// The `topgun bench` command: runs the workload on a runtime of `--threads` threads, prints
/// the table to stdout and merges the JSON into `--json`.
pub fn main(args: &BenchArgs) -> Result<(), BenchError> {
    let report = runtime(args)?.block_on(run(args))?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.merge_into_file(path)?;
        eprintln!("bench: results merged into {}", path.display());
    }
    Ok(())
}

/// The load generator's runtime: `--threads` workers, or the current thread alone for one;
/// every thread that runs the load under the `--sched` policy.
fn runtime(args: &BenchArgs) -> Result<tokio::runtime::Runtime, BenchError> {
    let policy = args.sched;
    let mut builder = if args.threads == 1 {
        sched::apply_to_current_thread(policy);
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(usize::from(args.threads))
            .on_thread_start(move || sched::apply_to_current_thread(policy));
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| BenchError::Runtime(e.to_string()))
}

#[cfg(test)]
mod tests;
