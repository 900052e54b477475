//! Scenarios 7–8: Merkle delta sync of LWW maps (from empty, from a divergent replica, and
//! between equal replicas) and of OR maps (walk, matching roots, pushing a diff).

use std::collections::BTreeSet;

use serde_json::{Value, json};
use topgun::merkle::leaf_path;
use topgun::protocol::Message;
use topgun::record::{LwwRecord, OrMapRecord};
use topgun::replica::{LwwReplica, OrReplica};

use crate::harness::{CLIENT_NODE, Client, TestServer, Transcript, msg, ts};
use crate::snapshot;
use crate::walk::{COMBINE, lww_sync, or_sync};

/// Client HLC millis of the fixed fake client clock.
const T0: u64 = 1_789_999_000_000;

fn key(i: usize) -> String {
    format!("key-{i:02}")
}

fn lww(value: Value, millis: u64, node: &str) -> LwwRecord {
    LwwRecord {
        value: Some(value.into()),
        timestamp: ts(millis, 0, node),
        ttl_ms: None,
    }
}

/// Writes `records` with one OP_BATCH and waits for its ack.
async fn write_lww(client: &mut Client, map: &str, records: &[(String, LwwRecord)]) {
    let ops: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, (k, r))| {
            json!({"id": (i + 1).to_string(), "mapName": map, "key": k, "opType": "PUT", "record": r})
        })
        .collect();
    client
        .send(msg(json!({"type": "OP_BATCH", "payload": {"ops": ops}})))
        .await;
    let Message::OpAck(ack) = client.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(ack.payload.last_id, records.len().to_string());
}

fn server_records(n: usize) -> Vec<(String, LwwRecord)> {
    (0..n)
        .map(|i| (key(i), lww(json!({"n": i}), T0 + i as u64, CLIENT_NODE)))
        .collect()
}

#[tokio::test]
async fn lww_sync_from_empty_fetches_every_record() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let written = server_records(50);
    write_lww(&mut a, "notes", &written).await;

    let mut b = Client::authed(&server, "bob", &t).await;
    let mut local = LwwReplica::default();
    let walk = lww_sync(&mut b, "notes", &mut local).await;
    assert_eq!(walk.requested.first().map(String::as_str), Some(""));
    let got: Vec<(String, LwwRecord)> = local
        .map()
        .records()
        .map(|(k, r)| (k.to_owned(), r.clone()))
        .collect();
    let mut expected = written.clone();
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    let mut got_sorted = got;
    got_sorted.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got_sorted, expected);
    assert_eq!(local.merkle().root(COMBINE), walk.server_root);
    a.close().await;
    b.close().await;
    server.stop().await;
    snapshot!("lww_sync_from_empty", t);
}

#[tokio::test]
async fn lww_sync_walks_only_differing_buckets_and_converges() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let written = server_records(30);
    write_lww(&mut a, "notes", &written).await;

    // B shares 20 records, holds older versions of 5, lacks 5 and has 5 the server lacks.
    let stale: Vec<String> = (20..25).map(key).collect();
    let missing: Vec<String> = (25..30).map(key).collect();
    let extra: Vec<(String, LwwRecord)> = (0..5)
        .map(|i| {
            (
                format!("b-only-{i}"),
                lww(json!({"b": i}), T0 + 100 + i, "client-b"),
            )
        })
        .collect();
    let mut local = LwwReplica::from_records(
        written[..20]
            .iter()
            .cloned()
            .chain(
                stale
                    .iter()
                    .map(|k| (k.clone(), lww(json!("old"), T0 - 1_000, "client-b"))),
            )
            .chain(extra.iter().cloned()),
    );

    t.note("-- divergent walk");
    let mut b = Client::authed(&server, "bob", &t).await;
    let walk = lww_sync(&mut b, "notes", &mut local).await;
    let allowed: BTreeSet<String> = stale
        .iter()
        .chain(&missing)
        .chain(extra.iter().map(|(k, _)| k))
        .map(|k| leaf_path(k))
        .collect();
    let fetched: BTreeSet<String> = walk.leaves.iter().cloned().collect();
    assert!(
        fetched.is_subset(&allowed),
        "fetched {fetched:?} outside {allowed:?}"
    );
    for k in stale.iter().chain(&missing) {
        assert!(fetched.contains(&leaf_path(k)), "{k} not fetched");
        let winner = written.iter().find(|(wk, _)| wk == k).map(|(_, r)| r);
        assert_eq!(
            local.map().record(k),
            winner,
            "{k} converged to the server's"
        );
    }
    assert_eq!(local.map().len(), 35);

    t.note("-- push what only B has");
    write_lww(&mut b, "notes", &extra).await;

    t.note("-- equal replicas: equal roots, no buckets requested");
    let again = lww_sync(&mut b, "notes", &mut local).await;
    assert!(
        again.requested.is_empty(),
        "requested {:?}",
        again.requested
    );
    assert_eq!(again.server_root, local.merkle().root(COMBINE));

    a.close().await;
    b.close().await;
    server.stop().await;
    snapshot!("lww_sync_divergent", t);
}

fn or_record(value: Value, millis: u64, node: &str) -> OrMapRecord {
    OrMapRecord {
        value,
        timestamp: ts(millis, 0, node),
        tag: format!("{millis}:0:{node}"),
        ttl_ms: None,
    }
}

#[tokio::test]
async fn or_sync_walk_matching_roots_and_push_diff() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let milk = or_record(json!("milk"), T0 + 1, CLIENT_NODE);
    let eggs = or_record(json!("eggs"), T0 + 2, CLIENT_NODE);
    let bread = or_record(json!("bread"), T0 + 3, CLIENT_NODE);
    a.send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [
        {"id": "1", "mapName": "lists", "key": "groceries", "opType": "OR_ADD", "orRecord": milk},
        {"id": "2", "mapName": "lists", "key": "groceries", "opType": "OR_ADD", "orRecord": eggs},
        {"id": "3", "mapName": "lists", "key": "chores", "opType": "OR_ADD", "orRecord": bread},
        {"id": "4", "mapName": "lists", "key": "groceries", "opType": "OR_REMOVE", "orTag": eggs.tag},
    ]}})))
    .await;
    let Message::OpAck(ack) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(ack.payload.last_id, "4");

    t.note("-- empty client walks to the leaves");
    let mut b = Client::authed(&server, "bob", &t).await;
    let mut local = OrReplica::default();
    let walk = or_sync(&mut b, "lists", &mut local).await;
    assert!(!walk.leaves.is_empty());
    let values = |r: &OrReplica, k: &str| -> Vec<Value> {
        r.map().records(k).map(|rec| rec.value.clone()).collect()
    };
    assert_eq!(values(&local, "groceries"), [json!("milk")]);
    assert_eq!(values(&local, "chores"), [json!("bread")]);
    assert!(local.map().is_tombstoned(&eggs.tag));
    assert_eq!(local.merkle().root(COMBINE), walk.server_root);

    t.note("-- matching client: equal roots, no walk");
    let same = or_sync(&mut b, "lists", &mut local).await;
    assert!(same.requested.is_empty(), "requested {:?}", same.requested);

    t.note("-- B pushes a record the server lacks");
    let tea = or_record(json!("tea"), T0 + 50, "client-b");
    local.apply("groceries", tea.clone());
    let groceries: Vec<OrMapRecord> = local.map().records("groceries").cloned().collect();
    b.send(msg(
        json!({"type": "ORMAP_PUSH_DIFF", "payload": {"mapName": "lists", "entries": [
            {"key": "groceries", "records": groceries, "tombstones": []}
        ]}}),
    ))
    .await;
    // PUSH_DIFF has no answer; a PONG proves the session has merged it (frames are in order).
    b.send(msg(json!({"type": "PING", "timestamp": T0}))).await;
    b.expect_type("PONG").await;

    t.note("-- a third client sees it");
    let mut c = Client::authed(&server, "carol", &t).await;
    let mut fresh = OrReplica::default();
    let seen = or_sync(&mut c, "lists", &mut fresh).await;
    let mut groceries = values(&fresh, "groceries");
    groceries.sort_by_key(Value::to_string);
    assert_eq!(groceries, [json!("milk"), json!("tea")]);
    assert_eq!(seen.server_root, local.merkle().root(COMBINE));

    a.close().await;
    b.close().await;
    c.close().await;
    server.stop().await;
    snapshot!("or_sync", t);
}
