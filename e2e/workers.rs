//! Issue 4: CPU-heavy work runs on the worker pool. A huge `OP_BATCH` on one connection must
//! not stall another connection's `PING`, and merging on the pool gives the same map as
//! merging inline.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use topgun::protocol::Message;
use topgun::server::config::Limits;

use crate::harness::{CLIENT_NODE, Client, TestServer, Transcript, msg, render, token};
use crate::snapshot;

/// Client HLC millis of the fixed fake client clock.
const T0: u64 = 1_789_999_000_000;
/// Ops in the huge batch (about 1.3 MB of msgpack, inside the 2 MiB frame limit).
const HUGE: usize = 10_000;
/// The slowest acceptable PING→PONG round trip while the huge batch is processed (debug
/// build). Measured on 2 busy cores: about 35 ms with the pool, 300–520 ms with everything
/// inline, so the bound is generous yet still catches a regression to inline work.
const PING_BOUND: Duration = Duration::from_millis(200);

fn huge_batch(map: &str) -> Message {
    let ops: Vec<Value> = (0..HUGE)
        .map(|i| {
            json!({
                "id": (i + 1).to_string(), "mapName": map, "key": format!("k{i}"), "opType": "PUT",
                "record": {
                    "value": {"n": i, "title": format!("item {i}")},
                    "timestamp": {"millis": T0 + i as u64, "counter": 0, "nodeId": CLIENT_NODE}
                }
            })
        })
        .collect();
    msg(json!({"type": "OP_BATCH", "payload": {"ops": ops}}))
}

async fn root_of(client: &mut Client, map: &str) -> u32 {
    client
        .send(msg(json!({"type": "SYNC_INIT", "mapName": map})))
        .await;
    match client.expect_type("SYNC_RESP_ROOT").await {
        Message::SyncRespRoot(r) => r.payload.root_hash,
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends the huge batch on `writer` and pings on `pinger` until the batch is acked; returns
/// the ack and every round trip measured meanwhile.
async fn ping_during_huge_batch(
    writer: &mut Client,
    pinger: &mut Client,
) -> (Message, Vec<Duration>) {
    writer.send(huge_batch("bulk")).await;
    let mut round_trips = Vec::new();
    let ack = loop {
        tokio::select! {
            ack = writer.recv() => break ack,
            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                let sent = Instant::now();
                pinger.send(msg(json!({"type": "PING", "timestamp": T0}))).await;
                pinger.expect_type("PONG").await;
                round_trips.push(sent.elapsed());
            }
        }
    };
    (ack, round_trips)
}

/// A client on `url`, authenticated as `name`.
async fn authed_at(url: &str, name: &str, transcript: &Transcript) -> Client {
    Client::authed_with(url, name, &token(name), transcript).await
}

/// Runs the writer and the pinger on their own thread and runtime, so a server that blocks
/// its runtime cannot also hold back the pings (and hide its stall from the measurement).
async fn measure_pings_against(url: String) -> (Message, Vec<Duration>) {
    let clients = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        runtime.block_on(async {
            let quiet = Transcript::default();
            let mut writer = authed_at(&url, "writer", &quiet).await;
            let mut pinger = authed_at(&url, "pinger", &quiet).await;
            let measured = ping_during_huge_batch(&mut writer, &mut pinger).await;
            writer.close().await;
            pinger.close().await;
            measured
        })
    });
    clients.await.expect("client thread")
}

/// The server runs on this test's single-threaded runtime: any CPU work done inline on a
/// connection task stalls every other connection, which is exactly what the pool prevents.
#[tokio::test]
async fn a_huge_batch_does_not_stall_another_connections_ping() {
    let _alone = crate::harness::EXCLUSIVE.lock().await;
    let server = TestServer::start().await;
    let t = Transcript::default();

    let (ack, round_trips) = measure_pings_against(server.url()).await;
    t.note(format!("writer S→C {}", render(&ack)));
    let Message::OpAck(ack) = ack else {
        panic!("expected OP_ACK, got {ack:?}")
    };
    assert_eq!(ack.payload.last_id, HUGE.to_string());
    let slowest = round_trips.iter().max().copied().unwrap_or_default();
    eprintln!(
        "PING round trips during a {HUGE}-op batch: {} pings, slowest {slowest:?}",
        round_trips.len()
    );
    assert!(
        !round_trips.is_empty(),
        "no ping overlapped the batch; the test proves nothing"
    );
    assert!(
        slowest < PING_BOUND,
        "a PING took {slowest:?} while another connection's batch merged"
    );
    let pool = server.server().shared().workers.metrics();
    assert!(
        pool.tasks_run.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the batch went through the pool"
    );

    server.stop().await;
    snapshot!("huge_batch_ack", t);
}

#[tokio::test]
async fn merging_on_the_pool_gives_the_same_map_as_merging_inline() {
    let inline = TestServer::with_limits(Limits {
        pool_batch_ops: usize::MAX,
        pool_frame_bytes: usize::MAX,
        ..Limits::default()
    })
    .await;
    let pooled = TestServer::with_limits(Limits {
        pool_batch_ops: 0,
        pool_frame_bytes: 0,
        merge_slice_ops: 7,
        ..Limits::default()
    })
    .await;
    let t = Transcript::default();
    let quiet = Transcript::default();
    let mut roots = Vec::new();
    for server in [&inline, &pooled] {
        let mut client = Client::authed(server, "alice", &quiet).await;
        client.send(huge_batch("bulk")).await;
        let Message::OpAck(ack) = client.expect_type("OP_ACK").await else {
            unreachable!()
        };
        assert_eq!(ack.payload.last_id, HUGE.to_string());
        roots.push(root_of(&mut client, "bulk").await);
        client.close().await;
    }
    t.note(format!("roots equal: {}", roots[0] == roots[1]));
    assert_eq!(roots[0], roots[1]);
    assert_ne!(roots[0], 0);
    let tasks = |s: &TestServer| {
        s.server()
            .shared()
            .workers
            .metrics()
            .tasks_run
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(tasks(&inline), 0);
    assert!(tasks(&pooled) >= 1);
    inline.stop().await;
    pooled.stop().await;
    snapshot!("pool_equals_inline", t);
}

/// `ops` OR adds on `map`, one per key.
fn or_adds(map: &str, keys: usize) -> Message {
    let ops: Vec<Value> = (0..keys)
        .map(|i| {
            let timestamp = json!({"millis": T0 + i as u64, "counter": 0, "nodeId": CLIENT_NODE});
            json!({
                "id": (i + 1).to_string(), "mapName": map, "key": format!("t{i}"), "opType": "OR_ADD",
                "orRecord": {"value": {"tag": i}, "timestamp": timestamp, "tag": format!("{}:0:{CLIENT_NODE}", T0 + i as u64)}
            })
        })
        .collect();
    msg(json!({"type": "OP_BATCH", "payload": {"ops": ops}}))
}

#[tokio::test]
async fn a_large_diff_response_encoded_on_the_pool_matches_the_inline_one() {
    const KEYS: usize = 800;
    let inline = TestServer::with_limits(Limits {
        pool_response_rows: usize::MAX,
        ..Limits::default()
    })
    .await;
    let pooled = TestServer::with_limits(Limits {
        pool_response_rows: 100,
        ..Limits::default()
    })
    .await;
    let t = Transcript::default();
    let quiet = Transcript::default();
    let mut responses = Vec::new();
    for server in [&inline, &pooled] {
        let mut client = Client::authed(server, "alice", &quiet).await;
        client.send(or_adds("tags", KEYS)).await;
        client.expect_type("OP_ACK").await;
        let tasks_before = pool_tasks(server);
        let keys: Vec<String> = (0..KEYS).map(|i| format!("t{i}")).collect();
        client
            .send(msg(
                json!({"type": "ORMAP_DIFF_REQUEST", "payload": {"mapName": "tags", "keys": keys}}),
            ))
            .await;
        let Message::OrMapDiffResponse(response) = client.expect_type("ORMAP_DIFF_RESPONSE").await
        else {
            unreachable!()
        };
        assert_eq!(response.payload.entries.len(), KEYS);
        responses.push((client.last_raw().clone(), pool_tasks(server) - tasks_before));
        client.close().await;
    }
    let [(inline_raw, inline_tasks), (pooled_raw, pooled_tasks)] = &responses[..] else {
        unreachable!()
    };
    t.note(format!(
        "diff responses equal: {}, pooled encodes: inline {inline_tasks}, pooled {pooled_tasks}",
        inline_raw == pooled_raw
    ));
    assert_eq!(inline_raw, pooled_raw);
    assert_eq!((*inline_tasks, *pooled_tasks), (0, 1));
    inline.stop().await;
    pooled.stop().await;
    snapshot!("pooled_diff_response", t);
}

fn pool_tasks(server: &TestServer) -> u64 {
    server
        .server()
        .shared()
        .workers
        .metrics()
        .tasks_run
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn a_large_query_response_is_encoded_on_the_pool_and_live_updates_follow_it() {
    let server = TestServer::with_limits(Limits {
        pool_response_rows: 100,
        ..Limits::default()
    })
    .await;
    let quiet = Transcript::default();
    let mut writer = Client::authed(&server, "alice", &quiet).await;
    writer.send(or_adds("big", 300)).await;
    writer.expect_type("OP_ACK").await;
    let mut reader = Client::authed(&server, "bob", &quiet).await;
    let before = pool_tasks(&server);
    reader
        .send(msg(json!({"type": "QUERY_SUB", "payload": {
            "queryId": "q", "mapName": "big", "query": {}
        }})))
        .await;
    let Message::QueryResp(resp) = reader.expect_type("QUERY_RESP").await else {
        unreachable!()
    };
    assert_eq!(resp.payload.results.len(), 300);
    assert_eq!(
        pool_tasks(&server) - before,
        1,
        "the 300-row response was encoded on the pool"
    );
    writer.send(or_adds("big", 301)).await;
    writer.expect_type("OP_ACK").await;
    let Message::QueryUpdate(update) = reader.expect_type("QUERY_UPDATE").await else {
        unreachable!()
    };
    assert_eq!(
        update.payload.key, "t300",
        "the subscription is live after its response"
    );
    server.stop().await;
}
