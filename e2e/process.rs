//! The built `topgun` binary as an operator runs it: SIGTERM shuts down gracefully
//! (`SHUTDOWN_PENDING`, close 1001, exit 0), and a `PERSISTED` ack survives `kill -9`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use topgun::protocol::{Message, WriteConcern};
use topgun::replica::LwwReplica;

use crate::harness::{CLIENT_NODE, Client, Transcript, msg};
use crate::snapshot;
use crate::walk::lww_sync;

/// How long the binary may take to say it is listening.
const STARTUP: Duration = Duration::from_secs(20);

/// A `topgun serve` child process over a redb store, killed if the test drops it early.
struct Binary {
    child: Child,
    url: String,
}

impl Binary {
    /// Starts `topgun serve --store redb --data-dir <dir> --port 0` and waits for the line
    /// naming the port it bound (port 0 avoids racing other tests for a free port).
    fn start(data_dir: &Path) -> Self {
        Self::start_with_env(data_dir, &[])
    }

    /// [`Binary::start`] with `env` added to the child's environment.
    fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_topgun"))
            .args(["serve", "--store", "redb", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .env_remove("MIMALLOC_PURGE_DELAY")
            .envs(env.iter().copied())
            .env_remove("JWT_SECRET")
            .env_remove("NODE_ENV")
            .env_remove("TOPGUN_ENV")
            .env_remove("TOPGUN_CONFIG")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn topgun");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, ready) = mpsc::channel();
        // Keep draining stdout for the child's whole life so its logging never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + STARTUP;
        let port_pattern = regex::Regex::new(r"ready on ws://[0-9.]+:(\d+)").expect("regex");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match ready.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("topgun did not report its port: {e}");
                }
            };
            if let Some(port) = port_pattern.captures(&line).map(|c| c[1].to_owned()) {
                return Self {
                    child,
                    url: format!("ws://127.0.0.1:{port}"),
                };
            }
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The value of `name` in the environment the process (still the child's pid) runs with.
    #[cfg(target_os = "linux")]
    fn env_var(&self, name: &str) -> Option<String> {
        let environ = std::fs::read(format!("/proc/{}/environ", self.pid())).expect("environ");
        let prefix = format!("{name}=");
        environ
            .split(|byte| *byte == 0)
            .filter_map(|entry| std::str::from_utf8(entry).ok())
            .find_map(|entry| entry.strip_prefix(&prefix).map(str::to_owned))
    }

    /// Sends `signal` (e.g. `-TERM`, `-KILL`) through kill(1): the crate has no libc binding.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    /// Waits for the process to exit.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "topgun did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token for the development secret the binary falls back to, minted at the real time.
fn dev_token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    topgun::auth::mint_token(topgun::auth::DEV_DEFAULT_SECRET, sub, &["USER"], 3_600, now)
        .expect("mint token")
}

async fn authed(binary: &Binary, name: &str, t: &Transcript) -> Client {
    Client::authed_with(&binary.url, name, &dev_token(name), t).await
}

#[tokio::test]
async fn sigterm_notifies_clients_closes_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut binary = Binary::start(dir.path());
    let t = Transcript::default();
    let mut a = authed(&binary, "alice", &t).await;

    t.note("-- SIGTERM");
    binary.signal("-TERM");
    let Message::ShutdownPending(pending) = a.expect_type("SHUTDOWN_PENDING").await else {
        unreachable!()
    };
    assert!(pending.retry_after > 0);
    let (code, reason) = a.expect_close().await;
    assert_eq!(code, 1001, "going away: {reason}");

    let status = tokio::task::spawn_blocking(move || binary.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "graceful exit: {status}");
    t.note(format!("exit {}", status.code().unwrap_or(-1)));
    snapshot!("sigterm", t);
}

#[tokio::test]
async fn persisted_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::start(dir.path());
    let t = Transcript::default();
    let mut a = authed(&binary, "alice", &t).await;
    // The binary runs on the real clock, so client timestamps must be recent: writes older
    // than the GC horizon are refused.
    let now = topgun::clock::Clock::now_millis(&topgun::clock::SystemClock);
    let record = |n: u64, title: &str| json!({"value": {"title": title}, "timestamp": {"millis": now + n, "counter": 0, "nodeId": CLIENT_NODE}});
    a.send(msg(json!({"type": "OP_BATCH", "payload": {"writeConcern": "PERSISTED", "ops": [
        {"id": "1", "mapName": "durable", "key": "a", "opType": "PUT", "record": record(1, "one")},
        {"id": "2", "mapName": "durable", "key": "b", "opType": "PUT", "record": record(2, "two")},
    ]}})))
    .await;
    let Message::OpAck(ack) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(ack.payload.last_id, "2");
    assert_eq!(ack.payload.achieved_level, Some(WriteConcern::Persisted));

    t.note("-- kill -9, restart on the same data dir");
    binary.signal("-KILL");
    drop(binary);
    drop(a);
    let restarted = Binary::start(dir.path());
    let mut b = authed(&restarted, "bob", &t).await;
    let mut local = LwwReplica::default();
    let walk = lww_sync(&mut b, "durable", &mut local).await;
    assert!(!walk.leaves.is_empty(), "the walk reached the records");
    let mut titles: Vec<(String, serde_json::Value)> = local
        .map()
        .records()
        .map(|(k, r)| {
            (
                k.to_owned(),
                r.value.clone().map(Into::into).unwrap_or_default(),
            )
        })
        .collect();
    titles.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        titles,
        [
            ("a".to_owned(), json!({"title": "one"})),
            ("b".to_owned(), json!({"title": "two"})),
        ]
    );
    b.close().await;
}

/// `serve` re-executes itself (same pid) with mimalloc told to keep freed memory, which
/// mimalloc only reads from the environment at load.
#[cfg(target_os = "linux")]
#[test]
fn serve_runs_with_the_allocator_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = Binary::start(dir.path());
    assert_eq!(
        binary.env_var("MIMALLOC_PURGE_DELAY").as_deref(),
        Some("-1")
    );
}

/// An operator's own allocator setting is kept, not overridden.
#[cfg(target_os = "linux")]
#[test]
fn an_allocator_setting_from_the_environment_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = Binary::start_with_env(dir.path(), &[("MIMALLOC_PURGE_DELAY", "250")]);
    assert_eq!(
        binary.env_var("MIMALLOC_PURGE_DELAY").as_deref(),
        Some("250")
    );
}
