//! Scenarios 5–6: write concerns and acknowledgements, replay idempotence, and fan-out of
//! writes to query subscribers.

use serde_json::{Value, json};
use topgun::protocol::{EventType, Message, WriteConcern};

use crate::harness::{CLIENT_NODE, Client, TestServer, Transcript, msg};
use crate::snapshot;

/// Client HLC millis of the fixed fake client clock.
const T0: u64 = 1_789_999_000_000;

/// A `PUT` op with a client timestamp `T0 + n`.
fn put(id: &str, map: &str, key: &str, value: Value, n: u64) -> Value {
    json!({
        "id": id, "mapName": map, "key": key, "opType": "PUT",
        "record": {"value": value, "timestamp": {"millis": T0 + n, "counter": 0, "nodeId": CLIENT_NODE}}
    })
}

/// The current LWW root of `map` as the server reports it.
async fn root_of(client: &mut Client, map: &str) -> u32 {
    client
        .send(msg(json!({"type": "SYNC_INIT", "mapName": map})))
        .await;
    match client.expect_type("SYNC_RESP_ROOT").await {
        Message::SyncRespRoot(r) => r.payload.root_hash,
        _ => unreachable!(),
    }
}

/// The next `OP_REJECTED`: its op id and code, and its reason.
async fn next_rejection(client: &mut Client) -> ((String, Option<u32>), String) {
    let Message::OpRejected(rejected) = client.expect_type("OP_REJECTED").await else {
        unreachable!()
    };
    let payload = rejected.payload;
    ((payload.op_id, payload.code), payload.reason)
}

#[tokio::test]
async fn write_concerns_acks_and_idempotent_replay() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;

    let batch = json!({"type": "OP_BATCH", "payload": {"ops": [
        put("1", "todos", "a", json!({"title": "one"}), 1),
        put("2", "todos", "b", json!({"title": "two"}), 2),
        put("3", "todos", "c", json!({"title": "three"}), 3),
    ]}});
    a.send(msg(batch.clone())).await;
    let Message::OpAck(ack) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(ack.payload.last_id, "3");
    assert_eq!(ack.payload.achieved_level, Some(WriteConcern::Applied));

    a.send(msg(json!({"type": "OP_BATCH", "payload": {
        "writeConcern": "PERSISTED",
        "ops": [
            put("4", "todos", "d", json!({"title": "four"}), 4),
            put("5", "todos", "e", json!({"title": "five"}), 5),
        ]
    }})))
    .await;
    let Message::OpAck(durable) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(durable.payload.last_id, "5");
    assert_eq!(
        durable.payload.achieved_level,
        Some(WriteConcern::Persisted)
    );
    let results = durable.payload.results.expect("per-op results");
    let ids: Vec<&str> = results.iter().map(|r| r.op_id.as_str()).collect();
    assert_eq!(ids, ["4", "5"]);
    assert!(
        results
            .iter()
            .all(|r| r.success && r.achieved_level == WriteConcern::Persisted)
    );

    // A client that lost the ack resends the batch: acked again, nothing changes.
    let before = root_of(&mut a, "todos").await;
    assert_ne!(before, 0);
    a.send(msg(batch)).await;
    let Message::OpAck(again) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(again.payload.last_id, "3");
    assert_eq!(root_of(&mut a, "todos").await, before);

    a.close().await;
    server.stop().await;
    snapshot!("write_concerns", t);
}

#[tokio::test]
async fn writes_fan_out_to_subscribers_but_not_the_writer() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut b = Client::authed(&server, "bob", &t).await;

    b.send(msg(json!({"type": "QUERY_SUB", "payload": {
        "queryId": "q1", "mapName": "todos", "query": {}
    }})))
    .await;
    let Message::QueryResp(resp) = b.expect_type("QUERY_RESP").await else {
        unreachable!()
    };
    assert_eq!(resp.payload.query_id, "q1");
    assert!(resp.payload.results.is_empty());

    a.send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [
        put("1", "todos", "milk", json!({"title": "buy milk"}), 10),
    ]}})))
    .await;
    a.expect_type("OP_ACK").await;
    let event = next_batch_event(&mut b).await;
    let Message::ServerBatchEvent(event) = event else {
        unreachable!()
    };
    let top = event.timestamp.clone().expect("top-level timestamp");
    assert_eq!(top.node_id, crate::harness::SERVER_NODE);
    let [put_event] = event.payload.events.as_slice() else {
        panic!("one event expected: {event:?}")
    };
    assert_eq!(put_event.event_type, EventType::Put);
    assert_eq!(put_event.key, "milk");
    let record = put_event.record.as_ref().expect("record");
    assert_eq!(
        record.value,
        Some(json!({"title": "buy milk"})).map(Into::into)
    );
    assert_eq!(record.timestamp.millis, T0 + 10);

    a.send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [{
        "id": "2", "mapName": "todos", "key": "milk", "opType": "REMOVE",
        "record": {"value": null, "timestamp": {"millis": T0 + 11, "counter": 0, "nodeId": CLIENT_NODE}}
    }]}})))
    .await;
    a.expect_type("OP_ACK").await;
    let Message::ServerBatchEvent(removal) = next_batch_event(&mut b).await else {
        unreachable!()
    };
    let [remove_event] = removal.payload.events.as_slice() else {
        panic!("one event expected: {removal:?}")
    };
    assert_eq!(remove_event.event_type, EventType::Remove);
    assert_eq!(
        remove_event.record.as_ref().and_then(|r| r.value.clone()),
        None
    );
    let raw_record = &b.last_raw()["payload"]["events"][0]["record"];
    assert!(
        raw_record
            .as_object()
            .is_some_and(|r| r.get("value") == Some(&Value::Null)),
        "a tombstone carries an explicit null value: {raw_record}"
    );
    // The writer hears only its acks.
    a.expect_silence(std::time::Duration::from_millis(100))
        .await;

    a.close().await;
    b.close().await;
    server.stop().await;
    snapshot!("fan_out", t);
}

/// The next `SERVER_BATCH_EVENT`, skipping live-query updates sent alongside it.
async fn next_batch_event(client: &mut Client) -> Message {
    loop {
        let m = client.recv().await;
        match m.type_name() {
            "SERVER_BATCH_EVENT" => return m,
            "QUERY_UPDATE" => continue,
            other => panic!("unexpected {other}: {m:?}"),
        }
    }
}

#[tokio::test]
async fn writes_older_than_the_gc_horizon_and_non_hlc_tags_are_rejected() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let stale = T0 - 31 * 24 * 3_600_000;
    a.send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [
        {"id": "1", "mapName": "todos", "key": "zombie", "opType": "PUT",
         "record": {"value": 1, "timestamp": {"millis": stale, "counter": 0, "nodeId": CLIENT_NODE}}},
        {"id": "2", "mapName": "tags", "key": "k", "opType": "OR_REMOVE", "orTag": "not-a-timestamp"},
        put("3", "todos", "fresh", json!(3), 3),
    ]}})))
    .await;
    assert_eq!(next_rejection(&mut a).await.0, ("1".to_owned(), Some(409)));
    assert_eq!(next_rejection(&mut a).await.0, ("2".to_owned(), Some(400)));
    let Message::OpAck(ack) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(
        ack.payload.last_id, "3",
        "final rejections do not hold back the ack"
    );
    snapshot!("rejected_writes", t);
}

#[tokio::test]
async fn fanned_out_values_respect_field_level_security() {
    let server = TestServer::with_config(
        r#"
        [[permissions]]
        role = "WRITER"
        map = "*"
        actions = ["ALL"]

        [[permissions]]
        role = "USER"
        map = "people"
        actions = ["READ"]
        allowed_fields = ["name"]
        "#,
    )
    .await;
    let t = Transcript::default();
    let token = topgun::auth::mint_token(
        crate::harness::SECRET,
        "writer",
        &["WRITER"],
        3_600,
        crate::harness::SERVER_NOW_MS / 1_000,
    )
    .unwrap();
    let mut writer = Client::authed_with(&server.url(), "writer", &token, &t).await;
    let mut reader = Client::authed(&server, "reader", &t).await;
    reader
        .send(msg(json!({"type": "QUERY_SUB", "payload": {
            "queryId": "q", "mapName": "people", "query": {}
        }})))
        .await;
    reader.expect_type("QUERY_RESP").await;

    writer
        .send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [
            put("1", "people", "p1", json!({"name": "Ann", "salary": 100}), 1),
        ]}})))
        .await;
    writer.expect_type("OP_ACK").await;
    let mut batch_event = None;
    for _ in 0..2 {
        if let Message::ServerBatchEvent(event) = reader.recv().await {
            batch_event = Some(event);
        }
    }
    let event = batch_event.expect("the reader gets the write as a SERVER_BATCH_EVENT");
    let record = event.payload.events[0].record.as_ref().unwrap();
    assert_eq!(
        record.value,
        Some(json!({"name": "Ann"})).map(Into::into),
        "salary is not the reader's to see"
    );

    t.note("-- the same record through Merkle sync");
    let mut local = topgun::replica::LwwReplica::default();
    crate::walk::lww_sync(&mut reader, "people", &mut local).await;
    assert_eq!(local.map().get("p1", 0), Some(&json!({"name": "Ann"})));
    snapshot!("field_level_security_fan_out", t);
}

/// Ops of one batch that alternate between maps and kinds each land in their own map: an
/// OR op on an LWW map is refused even right after an LWW op on it, and the LWW ops around it
/// still apply.
#[tokio::test]
async fn a_batch_across_maps_and_kinds_applies_each_op_to_its_own_map() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let or_add = json!({"id": "2", "mapName": "todos", "key": "b", "opType": "OR_ADD",
        "orRecord": {"value": 2, "tag": format!("{}:0:{CLIENT_NODE}", T0 + 2),
                     "timestamp": {"millis": T0 + 2, "counter": 0, "nodeId": CLIENT_NODE}}});
    a.send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [
        put("1", "todos", "a", json!(1), 1),
        or_add,
        put("3", "notes", "c", json!(3), 3),
        put("4", "todos", "d", json!(4), 4),
    ]}})))
    .await;
    let (mismatch, reason) = next_rejection(&mut a).await;
    assert_eq!(mismatch, ("2".to_owned(), Some(400)));
    assert!(reason.contains("Map type mismatch"), "{reason}");
    let Message::OpAck(ack) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(ack.payload.last_id, "4");

    // The same writes, one map per batch, on a second server: the roots must agree.
    let reference = TestServer::start().await;
    let mut b = Client::authed(&reference, "alice", &t).await;
    for (map, ops) in [
        (
            "todos",
            vec![
                put("1", "todos", "a", json!(1), 1),
                put("4", "todos", "d", json!(4), 4),
            ],
        ),
        ("notes", vec![put("3", "notes", "c", json!(3), 3)]),
    ] {
        b.send(msg(json!({"type": "OP_BATCH", "payload": {"ops": ops}})))
            .await;
        b.expect_type("OP_ACK").await;
        assert_eq!(
            root_of(&mut a, map).await,
            root_of(&mut b, map).await,
            "{map}"
        );
    }
}

/// Within one batch each op is authorised for its own action and map: a removal after an
/// allowed write to the same map is still refused when only writes are granted, and a write
/// to a map without any grant is refused after writes that were allowed elsewhere.
#[tokio::test]
async fn every_op_of_a_batch_is_authorised_for_its_own_action_and_map() {
    let server = TestServer::with_config(
        r#"
        [[permissions]]
        role = "USER"
        map = "notes"
        actions = ["PUT"]
        "#,
    )
    .await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    a.send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [
        put("1", "notes", "a", json!(1), 1),
        {"id": "2", "mapName": "notes", "key": "a", "opType": "REMOVE",
         "record": {"value": null, "timestamp": {"millis": T0 + 2, "counter": 0, "nodeId": CLIENT_NODE}}},
        put("3", "todos", "b", json!(3), 3),
        put("4", "notes", "c", json!(4), 4),
    ]}})))
    .await;
    for denied in ["2", "3"] {
        assert_eq!(
            next_rejection(&mut a).await.0,
            (denied.to_owned(), Some(403))
        );
    }
    let Message::Error(partial) = a.expect_type("ERROR").await else {
        unreachable!()
    };
    assert_eq!(
        partial.payload.message,
        "Partial batch failure: 2 ops denied"
    );
    let Message::OpAck(ack) = a.expect_type("OP_ACK").await else {
        unreachable!()
    };
    assert_eq!(ack.payload.last_id, "4");
}
