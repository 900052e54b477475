//! Each workload end to end against an in-process server on 127.0.0.1 (small N, short
//! runs), plus the flag parsers. Figures are checked for being real counts, never for speed.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use super::*;
use crate::clock::SystemClock;
use crate::entropy::SeededEntropy;
use crate::merkle::Combine;
use crate::net::{Listener, TcpListener};
use crate::security::Permissions;
use crate::server::config::Limits;
use crate::server::{Server, ServerOptions};
use crate::store::MemoryStore;

const SECRET: &str = "bench-test-secret-0123456789abcdef0123";

/// A server on an ephemeral port; returns its URL and the handle that stops it on drop.
async fn start_server() -> (String, Server, tokio::task::JoinHandle<std::io::Result<()>>) {
    let options = ServerOptions {
        node_id: "server-bench".to_owned(),
        jwt_secret: SECRET.to_owned(),
        permissions: Permissions::development_default(),
        limits: Limits::default(),
        max_connections: 1_000,
        debug: false,
        default_combine: Combine::Fmix,
        search: std::collections::BTreeMap::new(),
    };
    let server = Server::new(
        options,
        Arc::new(MemoryStore::new()),
        Arc::new(SystemClock),
        Arc::new(SeededEntropy::new(1)),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let runner = server.clone();
    let task = tokio::spawn(async move { runner.run(listener).await });
    (format!("ws://{addr}"), server, task)
}

/// Parses `topgun bench ...` flags as the CLI does.
#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(url: &str, rest: &[&str]) -> BenchArgs {
    let mut argv = vec![
        "bench",
        "--url",
        url,
        "--secret",
        SECRET,
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ];
    argv.extend_from_slice(rest);
    Cli::try_parse_from(argv).unwrap().bench
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_pipelined_acks_ops_and_counts_bytes() {
    let (url, server, task) = start_server().await;
    let args = args(
        &url,
        &[
            "write",
            "--connections",
            "3",
            "--batch",
            "5",
            "--keys",
            "50",
        ],
    );
    let report = run(&args).await.unwrap().write.unwrap();
    assert_eq!(report.connected, 3);
    assert!(report.acked_ops > 0, "{report:?}");
    assert_eq!(report.acked_ops % 5, 0, "whole batches are acked");
    assert_eq!(report.batch_latency.samples * 5, report.acked_ops);
    assert!(report.sent_bytes > report.acked_ops * 5);
    assert!(report.received_bytes > 0);
    assert_eq!(report.errors, 0);
    assert_eq!(report.mode, "pipeline 16");
    assert!(!report.rows().iter().any(|(k, _)| k == "unsent ops (late)"));
    server.shutdown(Duration::from_secs(1)).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_fire_and_wait_with_a_write_concern() {
    let (url, server, task) = start_server().await;
    let args = args(
        &url,
        &[
            "write",
            "--connections",
            "2",
            "--wait",
            "--write-concern",
            "applied",
            "--rate",
            "200",
        ],
    );
    let report = run(&args).await.unwrap();
    // A paced run is a section of its own, so it never replaces the unpaced figures.
    assert_eq!(report.write_wait, None);
    let report = report.write_paced.unwrap();
    assert_eq!(report.mode, "fire-and-wait");
    assert_eq!(report.offered_ops_per_sec, Some(200));
    assert!(report.rows().iter().any(|(k, _)| k == "unsent ops (late)"));
    assert_eq!(report.write_concern, Some(WriteConcern::Applied));
    assert!(report.acked_ops > 0);
    // 200 ops/s for about a second, allowing for scheduling slack.
    assert!(report.acked_ops <= 400, "rate limit ignored: {report:?}");
    assert_eq!(report.errors, 0);
    server.shutdown(Duration::from_secs(1)).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_acks_every_batch_of_both_write_modes() {
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let floor = tokio::spawn(floor::serve(listener));
    for mode in [&["--wait"][..], &[]] {
        let mut rest = vec!["write", "--connections", "3", "--batch", "4"];
        rest.extend_from_slice(mode);
        let report = run(&args(&url, &rest)).await.unwrap();
        let report = report.write_wait.or(report.write).unwrap();
        assert_eq!(report.connected, 3);
        assert!(report.acked_ops > 0, "{report:?}");
        assert_eq!(report.batch_latency.samples * 4, report.acked_ops);
        assert_eq!(report.errors, 0);
    }
    floor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_writes_to_every_subscriber() {
    let (url, server, task) = start_server().await;
    let args = args(
        &url,
        &[
            "fanout",
            "--writers",
            "2",
            "--subscribers",
            "3",
            "--keys",
            "10",
            "--rate",
            "100",
        ],
    );
    let report = run(&args).await.unwrap().fanout.unwrap();
    assert_eq!(report.subscribed, 3);
    assert!(report.acked_writes > 0, "{report:?}");
    assert!(report.deliveries > 0, "{report:?}");
    assert!(report.deliveries <= report.expected_deliveries + 3 * 2);
    assert_eq!(report.delivery_latency.samples, report.deliveries);
    assert_eq!(report.errors, 0);
    server.shutdown(Duration::from_secs(1)).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_hold_and_measure_the_server_process() {
    let (url, server, task) = start_server().await;
    let pid = std::process::id().to_string();
    let args = args(
        &url,
        &["connections", "--count", "20", "--server-pid", &pid],
    );
    let report = run(&args).await.unwrap().connections.unwrap();
    assert_eq!((report.opened, report.failed), (20, 0));
    assert_eq!(report.still_open, 20);
    assert_eq!(report.handshake_latency.samples, 20);
    assert!(report.server_rss_before.is_some() && report.server_rss_after.is_some());
    assert!(report.server_bytes_per_connection.is_some());
    assert!(report.open_file_limit.is_some_and(|l| l >= 20));
    server.shutdown(Duration::from_secs(1)).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_fetches_everything_then_only_the_changes() {
    let (url, server, task) = start_server().await;
    let args = args(
        &url,
        &[
            "sync",
            "--records",
            "2000",
            "--change-percent",
            "1",
            "--batch",
            "200",
            "--loaders",
            "2",
        ],
    );
    let report = run(&args).await.unwrap().sync.unwrap();
    assert_eq!(report.full.records, 2_000);
    assert!(
        report.full.converged && report.delta.converged,
        "{report:?}"
    );
    assert_eq!(report.changed_records, 20);
    assert!(report.delta.records >= 20, "{report:?}");
    assert!(report.delta.records < report.full.records / 4, "{report:?}");
    assert!(report.delta.received_bytes < report.full.received_bytes / 4);
    assert!(report.changed_bytes > 0);
    assert_eq!(report.errors, 0);
    server.shutdown(Duration::from_secs(1)).await;
    task.abort();
}

#[tokio::test]
async fn a_wrong_secret_fails_to_authenticate() {
    let (url, server, task) = start_server().await;
    let mut args = args(&url, &["write", "--connections", "1"]);
    args.secret = Some("not-the-secret-0123456789abcdef0123456".to_owned());
    let ctx = Context::new(&args);
    let Err(err) = ctx.open(0).await else {
        panic!("authenticated with a wrong secret")
    };
    assert!(
        matches!(
            err,
            BenchError::Conn(ConnError::AuthFailed(_) | ConnError::Closed)
        ),
        "{err:?}"
    );
    assert!(matches!(run(&args).await, Err(BenchError::NoConnections)));
    server.shutdown(Duration::from_secs(1)).await;
    task.abort();
}

#[test]
fn durations_parse_in_the_usual_units() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
    assert!(parse_duration("ten").is_err());
    assert!(parse_duration("5h").is_err());
}

#[test]
fn write_concerns_parse_by_wire_name() {
    assert_eq!(
        parse_write_concern("persisted"),
        Ok(WriteConcern::Persisted)
    );
    assert_eq!(
        parse_write_concern("FIRE_AND_FORGET"),
        Ok(WriteConcern::FireAndForget)
    );
    assert!(parse_write_concern("durable").is_err());
}

#[test]
fn global_flags_may_follow_the_workload() {
    let parsed = Cli::try_parse_from([
        "bench",
        "sync",
        "--records",
        "10",
        "--seed",
        "9",
        "--json",
        "out.json",
    ])
    .unwrap()
    .bench;
    assert_eq!(parsed.seed, 9);
    assert_eq!(parsed.json, Some(PathBuf::from("out.json")));
    let Workload::Sync(sync) = parsed.workload else {
        panic!("not sync")
    };
    assert_eq!(sync.records, 10);
    assert_eq!(sync.change_percent, 1.0);
}

#[test]
fn cpu_ticks_are_read_past_a_command_name_with_spaces_and_parentheses() {
    let stat = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 1 0 99";
    assert_eq!(measure::parse_cpu_ticks(stat), Some(267));
    assert_eq!(measure::parse_cpu_ticks("4242 (x) S 1 2"), None);
    assert!(measure::cpu_seconds(std::process::id()).is_some_and(|s| s > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_reports_the_cpu_of_a_local_server_per_acked_op() {
    let (url, server, task) = start_server().await;
    let pid = std::process::id().to_string();
    let args = args(
        &url,
        &[
            "write",
            "--wait",
            "--connections",
            "2",
            "--server-pid",
            &pid,
        ],
    );
    let report = run(&args).await.unwrap().write_wait.unwrap();
    assert!(report.acked_ops > 0, "{report:?}");
    // Server and generator share this process here, so both saw its CPU time.
    let server_cpu = report.server_cpu_us_per_op.unwrap();
    assert!(
        server_cpu > 0.0 && report.server_cores.unwrap() > 0.0,
        "{report:?}"
    );
    assert!(report.generator_cpu_us_per_op.unwrap() > 0.0, "{report:?}");
    let table = report.rows();
    assert!(
        table
            .iter()
            .any(|(name, _)| name == "server CPU / acked op")
    );
    server.shutdown(Duration::from_secs(1)).await;
    task.abort();
}

#[test]
fn the_generator_runs_on_one_thread_or_several() {
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let (url, server, task) = server_runtime.block_on(start_server());
    assert_eq!(args(&url, &["write"]).threads, 1, "one thread by default");
    for threads in ["1", "3"] {
        let args = args(
            &url,
            &[
                "--threads",
                threads,
                "write",
                "--wait",
                "--connections",
                "2",
                "--keys",
                "10",
            ],
        );
        let report = runtime(&args).unwrap().block_on(run(&args)).unwrap();
        let write = report.write_wait.unwrap();
        assert!(write.acked_ops > 0, "{threads} threads: {write:?}");
        assert_eq!(write.errors, 0);
    }
    assert!(Cli::try_parse_from(["b", "--threads", "0", "write"]).is_err());
    server_runtime.block_on(server.shutdown(Duration::from_secs(1)));
    task.abort();
}

/// The generator's runtime threads run under `--sched` (the default being `batch`).
#[cfg(target_os = "linux")]
#[test]
fn runtime_threads_take_the_sched_policy() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
    for (flags, expected) in [
        (&["--threads", "2"][..], NormalThreadSchedulePolicy::Batch),
        (
            &["--threads", "2", "--sched", "normal"][..],
            NormalThreadSchedulePolicy::Other,
        ),
    ] {
        let mut argv = vec!["b"];
        argv.extend_from_slice(flags);
        argv.push("write");
        let args = Cli::try_parse_from(argv).unwrap().bench;
        let rt = runtime(&args).unwrap();
        let policy = rt
            .block_on(async {
                tokio::spawn(async { thread_priority::thread_schedule_policy().unwrap() }).await
            })
            .unwrap();
        assert_eq!(policy, ThreadSchedulePolicy::Normal(expected), "{flags:?}");
    }
}

#[test]
fn tokens_are_minted_per_connection_or_shared() {
    let minted = Context::new(&args("ws://x", &["write"]));
    assert_ne!(minted.token(0).unwrap(), minted.token(1).unwrap());
    let shared = Context::new(
        &Cli::try_parse_from(["b", "--token", "t", "write"])
            .unwrap()
            .bench,
    );
    assert_eq!(shared.token(0).unwrap(), "t");
    assert_eq!(shared.token(5).unwrap(), "t");
}
