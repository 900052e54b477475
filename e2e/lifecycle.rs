//! Scenarios 9–12: durability across a restart, LRU eviction at the connection limit,
//! production refusing unsafe secrets, and the plain HTTP endpoints.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use topgun::protocol::Message;
use topgun::record::LwwRecord;
use topgun::replica::{LwwReplica, OrReplica};

use crate::harness::{CLIENT_NODE, Client, TestServer, Transcript, msg};
use crate::snapshot;
use crate::walk::{lww_sync, or_sync};

const T0: u64 = 1_789_999_000_000;

fn sorted_lww(replica: &LwwReplica) -> Vec<(String, LwwRecord)> {
    let mut records: Vec<_> = replica
        .map()
        .records()
        .map(|(k, r)| (k.to_owned(), r.clone()))
        .collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    records
}

#[tokio::test]
async fn restart_keeps_lww_and_or_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_redb(dir.path().to_owned()).await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let ts = |n: u64| json!({"millis": T0 + n, "counter": 0, "nodeId": CLIENT_NODE});
    a.send(msg(json!({"type": "OP_BATCH", "payload": {"writeConcern": "PERSISTED", "ops": [
        {"id": "1", "mapName": "notes", "key": "a", "opType": "PUT", "record": {"value": {"t": "A"}, "timestamp": ts(1)}},
        {"id": "2", "mapName": "notes", "key": "b", "opType": "PUT", "record": {"value": {"t": "B"}, "timestamp": ts(2)}},
        {"id": "3", "mapName": "notes", "key": "a", "opType": "REMOVE", "record": {"value": null, "timestamp": ts(3)}},
        {"id": "4", "mapName": "tags", "key": "x", "opType": "OR_ADD",
         "orRecord": {"value": "red", "timestamp": ts(4), "tag": format!("{}:0:{CLIENT_NODE}", T0 + 4)}},
        {"id": "5", "mapName": "tags", "key": "x", "opType": "OR_ADD",
         "orRecord": {"value": "blue", "timestamp": ts(5), "tag": format!("{}:0:{CLIENT_NODE}", T0 + 5)}},
        {"id": "6", "mapName": "tags", "key": "x", "opType": "OR_REMOVE", "orTag": format!("{}:0:{CLIENT_NODE}", T0 + 4)},
    ]}})))
    .await;
    let Message::OpAck(ack) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(ack.payload.last_id, "6");
    let mut lww_before = LwwReplica::default();
    let lww_root = lww_sync(&mut a, "notes", &mut lww_before).await.server_root;
    let mut or_before = OrReplica::default();
    let or_root = or_sync(&mut a, "tags", &mut or_before).await.server_root;
    assert_eq!(lww_before.map().len(), 2, "the tombstone of a is kept");
    a.close().await;

    t.note("-- restart");
    let server = server.restart().await;
    let mut b = Client::authed(&server, "bob", &t).await;
    let mut lww_after = LwwReplica::default();
    assert_eq!(
        lww_sync(&mut b, "notes", &mut lww_after).await.server_root,
        lww_root
    );
    assert_eq!(sorted_lww(&lww_after), sorted_lww(&lww_before));
    let mut or_after = OrReplica::default();
    assert_eq!(
        or_sync(&mut b, "tags", &mut or_after).await.server_root,
        or_root
    );
    let values: Vec<_> = or_after
        .map()
        .records("x")
        .map(|r| r.value.clone())
        .collect();
    assert_eq!(values, [json!("blue")]);
    assert!(
        or_after
            .map()
            .is_tombstoned(&format!("{}:0:{CLIENT_NODE}", T0 + 4))
    );
    b.close().await;
    server.stop().await;
    snapshot!("restart", t);
}

#[tokio::test]
async fn the_least_recently_active_connection_is_evicted_with_4003() {
    let server = TestServer::with_max_connections(2).await;
    let t = Transcript::default();
    let mut first = Client::authed(&server, "first", &t).await;
    let mut second = Client::authed(&server, "second", &t).await;
    // `first` becomes the most recently active, leaving `second` the eviction candidate.
    first
        .send(msg(json!({"type": "PING", "timestamp": T0})))
        .await;
    first.expect_type("PONG").await;

    let mut third = Client::authed(&server, "third", &t).await;
    let (code, reason) = second.expect_close().await;
    assert_eq!(code, 4003);
    assert_eq!(reason, "Evicted: server connection limit reached");
    for c in [&mut first, &mut third] {
        c.send(msg(json!({"type": "PING", "timestamp": T0}))).await;
        c.expect_type("PONG").await;
    }
    first.close().await;
    third.close().await;
    server.stop().await;
    snapshot!("lru_eviction", t);
}

/// Runs the built binary with `env`, failing the test instead of hanging if it starts serving.
fn run_binary(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_topgun"));
    cmd.env_remove("JWT_SECRET")
        .env_remove("NODE_ENV")
        .env("TOPGUN_STORE", "memory")
        .env("TOPGUN_PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server started instead of refusing: {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn production_refuses_missing_or_short_jwt_secret() {
    let t = Transcript::default();
    for (label, env) in [
        ("no secret", vec![("TOPGUN_ENV", "production")]),
        (
            "10-byte secret",
            vec![("TOPGUN_ENV", "production"), ("JWT_SECRET", "0123456789")],
        ),
        ("NODE_ENV=production", vec![("NODE_ENV", "production")]),
    ] {
        let (code, stderr) = run_binary(&env);
        assert!(code.is_some_and(|c| c != 0), "{label}: exit {code:?}");
        assert!(stderr.contains("JWT_SECRET"), "{label}: stderr {stderr}");
        assert!(
            !stderr.contains("0123456789"),
            "{label}: the secret leaked: {stderr}"
        );
        let message = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("<no error line>");
        t.note(format!("{label}: exit {} {message}", code.unwrap_or(-1)));
    }
    snapshot!("production_refusal", t);
}

async fn http_get(server: &TestServer, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("HTTP answer in time")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

#[tokio::test]
async fn http_health_ready_and_metrics() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    // One authenticated frame so the frame counter has something to count.
    let a = Client::authed(&server, "alice", &t).await;
    a.close().await;
    for path in ["/health", "/ready"] {
        let (status, body) = http_get(&server, path).await;
        assert!(status.contains(" 200"), "{path}: {status}");
        t.note(format!("GET {path} → {status} {}", body.trim()));
    }
    let (status, metrics) = http_get(&server, "/metrics").await;
    assert!(status.contains(" 200"), "/metrics: {status}");
    let frames_in = metrics
        .lines()
        .find(|l| l.starts_with("topgun_frames_in_total"))
        .unwrap_or_else(|| panic!("no topgun_frames_in_total in {metrics}"));
    t.note(format!("GET /metrics → {status} has {frames_in}"));
    let (status, _) = http_get(&server, "/nope").await;
    assert!(status.contains(" 404"), "/nope: {status}");
    t.note(format!("GET /nope → {status}"));
    server.stop().await;
    snapshot!("http", t);
}
