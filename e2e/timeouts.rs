//! Time limits on a connection and on sync state: the heartbeat deadline (close 4002), the
//! authentication deadline (close 4001) and the garbage-collection age past which a client
//! must reset instead of syncing (`SYNC_RESET_REQUIRED`).

use std::time::{Duration, Instant};

use serde_json::json;
use topgun::protocol::Message;
use topgun::server::config::Limits;

use crate::harness::{Client, SERVER_NOW_MS, Setup, TestServer, Transcript, msg};
use crate::snapshot;

const DAY_MS: u64 = 24 * 3_600_000;

fn short_deadlines() -> Setup {
    Setup {
        limits: Limits {
            heartbeat_timeout_ms: 600,
            auth_timeout_ms: 600,
            ..Limits::default()
        },
        ..Setup::default()
    }
}

#[tokio::test]
async fn silent_clients_are_closed_and_pinging_ones_stay() {
    let server = TestServer::with_setup(short_deadlines()).await;
    let t = Transcript::default();
    let mut silent = Client::authed(&server, "silent", &t).await;
    let mut pinger = Client::authed(&server, "pinger", &t).await;

    // The pinger keeps going well past the heartbeat deadline of the silent client.
    let until = Instant::now() + Duration::from_millis(1_800);
    while Instant::now() < until {
        pinger
            .send(msg(json!({"type": "PING", "timestamp": 1})))
            .await;
        pinger.expect_type("PONG").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, reason) = silent.expect_close().await;
    assert_eq!((code, reason.as_str()), (4002, "Heartbeat timeout"));

    pinger
        .send(msg(json!({"type": "PING", "timestamp": 2})))
        .await;
    pinger.expect_type("PONG").await;
    pinger.close().await;
    server.stop().await;
    // PING/PONG counts depend on timing; keep only the stable lines.
    let stable: Vec<String> = t
        .text()
        .lines()
        .filter(|l| !l.contains("PING") && !l.contains("PONG"))
        .map(str::to_owned)
        .collect();
    let stable_transcript = Transcript::default();
    stable.into_iter().for_each(|l| stable_transcript.note(l));
    snapshot!("heartbeat", stable_transcript);
}

#[tokio::test]
async fn an_unauthenticated_silent_socket_is_closed_4001() {
    let server = TestServer::with_setup(short_deadlines()).await;
    let t = Transcript::default();
    let mut lurker = Client::connect(&server, "lurker", &t).await;
    lurker.expect_type("AUTH_REQUIRED").await;
    let started = Instant::now();
    let (code, reason) = lurker.expect_close().await;
    assert_eq!(code, 4001, "{reason}");
    assert_eq!(reason, "Authentication timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    server.stop().await;
    snapshot!("auth_deadline", t);
}

#[tokio::test]
async fn sync_older_than_the_gc_age_must_reset() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;

    a.send(msg(json!({"type": "SYNC_INIT", "mapName": "todos",
        "lastSyncTimestamp": SERVER_NOW_MS - 31 * DAY_MS})))
        .await;
    let Message::SyncResetRequired(reset) = a.expect_type("SYNC_RESET_REQUIRED").await else {
        unreachable!()
    };
    assert_eq!(reset.payload.map_name, "todos");

    a.send(msg(
        json!({"type": "ORMAP_SYNC_INIT", "mapName": "tags", "rootHash": 0,
        "bucketHashes": {}, "lastSyncTimestamp": SERVER_NOW_MS - 31 * DAY_MS}),
    ))
    .await;
    a.expect_type("SYNC_RESET_REQUIRED").await;

    // A recent sync is answered normally.
    a.send(msg(json!({"type": "SYNC_INIT", "mapName": "todos",
        "lastSyncTimestamp": SERVER_NOW_MS - 29 * DAY_MS})))
        .await;
    a.expect_type("SYNC_RESP_ROOT").await;
    a.close().await;
    server.stop().await;
    snapshot!("sync_reset", t);
}
