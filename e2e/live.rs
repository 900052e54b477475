//! Live queries: incremental `QUERY_UPDATE` (ENTER / UPDATE / LEAVE with both `type` and
//! `changeType`), limited windows refilling on delete, OR maps, projection and
//! `QUERY_SYNC_INIT`.

use serde_json::{Value, json};
use topgun::protocol::{ChangeType, LegacyQueryChange, Message, QueryUpdatePayload};

use crate::harness::{CLIENT_NODE, Client, TestServer, Transcript, msg};
use crate::snapshot;

/// Client HLC millis of the fixed fake client clock.
const T0: u64 = 1_789_999_000_000;

fn stamp(n: u64) -> Value {
    json!({"millis": T0 + n, "counter": 0, "nodeId": CLIENT_NODE})
}

fn put(id: &str, key: &str, value: Value, n: u64) -> Value {
    json!({"id": id, "mapName": "todos", "key": key, "opType": "PUT",
           "record": {"value": value, "timestamp": stamp(n)}})
}

fn remove(id: &str, key: &str, n: u64) -> Value {
    json!({"id": id, "mapName": "todos", "key": key, "opType": "REMOVE",
           "record": {"value": null, "timestamp": stamp(n)}})
}

async fn write(client: &mut Client, ops: Vec<Value>) {
    client
        .send(msg(json!({"type": "OP_BATCH", "payload": {"ops": ops}})))
        .await;
}

async fn subscribe(client: &mut Client, query_id: &str, map: &str, query: Value) -> Vec<Value> {
    client
        .send(msg(json!({"type": "QUERY_SUB", "payload": {
            "queryId": query_id, "mapName": map, "query": query
        }})))
        .await;
    let Message::QueryResp(resp) = client.expect_type("QUERY_RESP").await else {
        unreachable!()
    };
    assert_eq!(resp.payload.query_id, query_id);
    resp.payload
        .results
        .into_iter()
        .map(|row| json!([row.key, row.value]))
        .collect()
}

/// The next message that is not a `SERVER_BATCH_EVENT` or `OP_ACK`.
async fn next_update(client: &mut Client) -> QueryUpdatePayload {
    loop {
        match client.recv().await {
            Message::QueryUpdate(update) => return update.payload,
            Message::ServerBatchEvent(_) | Message::OpAck(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Asserts the next update and that both generations' fields agree.
async fn expect_update(client: &mut Client, change: ChangeType, key: &str, value: Value) {
    let update = next_update(client).await;
    assert_eq!(update.change_type, Some(change), "{update:?}");
    let legacy = if change == ChangeType::Leave {
        LegacyQueryChange::Remove
    } else {
        LegacyQueryChange::Update
    };
    assert_eq!(update.legacy_type, Some(legacy), "{update:?}");
    assert_eq!(update.key, key);
    assert_eq!(update.value, value);
}

#[tokio::test]
async fn subscriber_and_writer_see_enter_update_leave() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut b = Client::authed(&server, "bob", &t).await;

    let open = json!({"where": {"done": false}});
    assert!(
        subscribe(&mut b, "q-b", "todos", open.clone())
            .await
            .is_empty()
    );
    assert!(subscribe(&mut a, "q-a", "todos", open).await.is_empty());

    t.note("-- enter");
    write(
        &mut a,
        vec![put("1", "milk", json!({"title": "milk", "done": false}), 1)],
    )
    .await;
    let milk = json!({"title": "milk", "done": false});
    expect_update(&mut b, ChangeType::Enter, "milk", milk.clone()).await;
    expect_update(&mut a, ChangeType::Enter, "milk", milk).await;

    t.note("-- update");
    write(
        &mut a,
        vec![put(
            "2",
            "milk",
            json!({"title": "oat milk", "done": false}),
            2,
        )],
    )
    .await;
    let oat = json!({"title": "oat milk", "done": false});
    expect_update(&mut b, ChangeType::Update, "milk", oat.clone()).await;
    expect_update(&mut a, ChangeType::Update, "milk", oat).await;
    let raw = &b.last_raw()["payload"];
    assert_eq!(raw["type"], json!("UPDATE"));
    assert_eq!(raw["changeType"], json!("UPDATE"));

    t.note("-- a non-matching write is not sent");
    write(
        &mut a,
        vec![put("3", "eggs", json!({"title": "eggs", "done": true}), 3)],
    )
    .await;

    t.note("-- leave by filter, then by delete");
    write(
        &mut a,
        vec![put(
            "4",
            "milk",
            json!({"title": "oat milk", "done": true}),
            4,
        )],
    )
    .await;
    expect_update(&mut b, ChangeType::Leave, "milk", Value::Null).await;
    let raw = &b.last_raw()["payload"];
    assert_eq!(raw["type"], json!("REMOVE"));
    assert_eq!(raw["changeType"], json!("LEAVE"));
    assert!(
        raw.as_object()
            .is_some_and(|p| p.get("value") == Some(&Value::Null))
    );
    write(
        &mut a,
        vec![put("5", "eggs", json!({"title": "eggs", "done": false}), 5)],
    )
    .await;
    expect_update(
        &mut b,
        ChangeType::Enter,
        "eggs",
        json!({"title": "eggs", "done": false}),
    )
    .await;
    write(&mut a, vec![remove("6", "eggs", 6)]).await;
    expect_update(&mut b, ChangeType::Leave, "eggs", Value::Null).await;

    a.close().await;
    b.close().await;
    server.stop().await;
    snapshot!("live_enter_update_leave", t);
}

#[tokio::test]
async fn limit_two_window_refills_on_delete() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut b = Client::authed(&server, "bob", &t).await;
    write(
        &mut a,
        vec![
            put("1", "a", json!({"prio": 1}), 1),
            put("2", "b", json!({"prio": 2}), 2),
            put("3", "c", json!({"prio": 3}), 3),
        ],
    )
    .await;
    a.expect_type("OP_ACK").await;

    let top2 = json!({"sort": [{"field": "prio", "direction": "asc"}], "limit": 2});
    let initial = subscribe(&mut b, "top", "todos", top2).await;
    assert_eq!(
        initial,
        [json!(["a", {"prio": 1}]), json!(["b", {"prio": 2}])]
    );

    t.note("-- deleting a row of the window promotes the next match");
    write(&mut a, vec![remove("4", "a", 4)]).await;
    expect_update(&mut b, ChangeType::Leave, "a", Value::Null).await;
    expect_update(&mut b, ChangeType::Enter, "c", json!({"prio": 3})).await;

    t.note("-- a better match displaces the last row");
    write(&mut a, vec![put("5", "z", json!({"prio": 0}), 5)]).await;
    expect_update(&mut b, ChangeType::Enter, "z", json!({"prio": 0})).await;
    expect_update(&mut b, ChangeType::Leave, "c", Value::Null).await;
    b.expect_type("SERVER_BATCH_EVENT").await;

    t.note("-- QUERY_SYNC_INIT answers with the current window");
    b.send(msg(
        json!({"type": "QUERY_SYNC_INIT", "payload": {"queryId": "top", "rootHash": 0}}),
    ))
    .await;
    let Message::QueryResp(resp) = b.expect_type("QUERY_RESP").await else {
        unreachable!()
    };
    let keys: Vec<&str> = resp
        .payload
        .results
        .iter()
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(keys, ["z", "b"]);
    assert_eq!(resp.payload.has_more, Some(true));

    a.close().await;
    b.close().await;
    server.stop().await;
    snapshot!("live_limit_window", t);
}

#[tokio::test]
async fn or_map_values_are_arrays_and_fields_are_projected() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let record = |value: Value, n: u64| json!({"value": value, "timestamp": stamp(n), "tag": format!("{}:0:{CLIENT_NODE}", T0 + n)});
    let or_add = |id: &str, key: &str, value: Value, n: u64| json!({"id": id, "mapName": "tags", "key": key, "opType": "OR_ADD", "orRecord": record(value, n)});
    write(
        &mut a,
        vec![or_add("1", "x", json!({"name": "red", "secret": 1}), 1)],
    )
    .await;
    a.expect_type("OP_ACK").await;

    let mut b = Client::authed(&server, "bob", &t).await;
    b.send(msg(json!({"type": "QUERY_SUB", "payload": {
        "queryId": "tags", "mapName": "tags", "query": {}, "fields": ["name"]
    }})))
    .await;
    let Message::QueryResp(resp) = b.expect_type("QUERY_RESP").await else {
        unreachable!()
    };
    assert_eq!(resp.payload.results.len(), 1);
    assert_eq!(resp.payload.results[0].value, json!([{"name": "red"}]));

    t.note("-- a second value updates the array; a new key enters");
    write(
        &mut a,
        vec![
            or_add("2", "x", json!({"name": "blue", "secret": 2}), 2),
            or_add("3", "y", json!({"name": "green"}), 3),
        ],
    )
    .await;
    expect_update(
        &mut b,
        ChangeType::Update,
        "x",
        json!([{"name": "red"}, {"name": "blue"}]),
    )
    .await;
    expect_update(&mut b, ChangeType::Enter, "y", json!([{"name": "green"}])).await;

    t.note("-- removing the last value of a key makes it leave");
    let tag = format!("{}:0:{CLIENT_NODE}", T0 + 3);
    write(
        &mut a,
        vec![
            json!({"id": "4", "mapName": "tags", "key": "y", "opType": "OR_REMOVE", "orTag": tag}),
        ],
    )
    .await;
    expect_update(&mut b, ChangeType::Leave, "y", Value::Null).await;

    a.close().await;
    b.close().await;
    server.stop().await;
    snapshot!("live_or_map", t);
}
