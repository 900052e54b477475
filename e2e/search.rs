//! Scenario: full-text search — one-shot ranking, read-your-writes right after an ack, live
//! subscriptions (ENTER / UPDATE / LEAVE under both `type` and `changeType`), and the
//! `SEARCH_RESP` errors for denied and unconfigured maps.

use std::time::Duration;

use serde_json::{Value, json};
use topgun::protocol::{ChangeType, Message};

use crate::harness::{CLIENT_NODE, Client, TestServer, Transcript, msg};
use crate::snapshot;

const CONFIG: &str = r#"
[[permissions]]
role = "USER"
map = "articles"
actions = ["ALL"]

[[permissions]]
role = "USER"
map = "todos"
actions = ["ALL"]

[search.articles]
fields = ["title", "body"]

[search.private]
fields = ["title"]
"#;

/// Client HLC millis of the fixed fake client clock.
const T0: u64 = 1_789_999_000_000;

fn put(id: &str, key: &str, value: Value) -> Value {
    let n: u64 = id.parse().expect("numeric op id");
    json!({
        "id": id, "mapName": "articles", "key": key, "opType": "PUT",
        "record": {"value": value, "timestamp": {"millis": T0 + n, "counter": 0, "nodeId": CLIENT_NODE}}
    })
}

async fn write(client: &mut Client, ops: Vec<Value>) {
    client
        .send(msg(json!({"type": "OP_BATCH", "payload": {"ops": ops}})))
        .await;
    client.expect_type("OP_ACK").await;
}

async fn search(client: &mut Client, request_id: &str, map: &str, query: &str) -> Message {
    client
        .send(msg(json!({"type": "SEARCH", "payload": {
            "requestId": request_id, "mapName": map, "query": query
        }})))
        .await;
    client.expect_type("SEARCH_RESP").await
}

fn keys(message: &Message) -> Vec<String> {
    let Message::SearchResp(resp) = message else {
        panic!("SEARCH_RESP expected: {message:?}")
    };
    resp.payload.results.iter().map(|r| r.key.clone()).collect()
}

async fn next_update(client: &mut Client) -> (String, ChangeType) {
    let Message::SearchUpdate(update) = client.expect_type("SEARCH_UPDATE").await else {
        unreachable!()
    };
    let raw = &client.last_raw()["payload"];
    assert_eq!(raw["type"], raw["changeType"], "both generations' fields");
    (
        update.payload.key.clone(),
        update.change().expect("a change"),
    )
}

#[tokio::test]
async fn full_text_search_one_shot_live_and_errors() {
    let server = TestServer::with_config(CONFIG).await;
    let t = Transcript::default();
    let mut alice = Client::authed(&server, "alice", &t).await;
    let mut bob = Client::authed(&server, "bob", &t).await;

    t.note("--- one-shot search ranks by BM25");
    write(
        &mut alice,
        vec![
            put(
                "1",
                "a1",
                json!({"title": "Rust in production", "body": "memory safety"}),
            ),
            put(
                "2",
                "a2",
                json!({"title": "Cooking", "body": "rust stains on a cast iron pan"}),
            ),
            put("3", "a3", json!({"title": "Gardening", "body": "tomatoes"})),
        ],
    )
    .await;
    let ranked = search(&mut alice, "r1", "articles", "rust").await;
    assert_eq!(keys(&ranked), ["a1", "a2"]);

    t.note("--- a search right after a write's ack sees the write");
    write(
        &mut alice,
        vec![put("4", "a4", json!({"title": "Rust rust rust"}))],
    )
    .await;
    let fresh = search(&mut alice, "r2", "articles", "rust").await;
    assert_eq!(keys(&fresh)[0], "a4");

    t.note("--- live subscription");
    bob.send(msg(json!({"type": "SEARCH_SUB", "payload": {
        "subscriptionId": "s1", "mapName": "articles", "query": "tomatoes"
    }})))
    .await;
    let initial = bob.expect_type("SEARCH_RESP").await;
    let Message::SearchResp(resp) = &initial else {
        unreachable!()
    };
    assert_eq!(resp.payload.request_id, "s1");
    assert_eq!(keys(&initial), ["a3"]);

    write(
        &mut alice,
        vec![put(
            "5",
            "a5",
            json!({"title": "Tomatoes", "body": "and basil"}),
        )],
    )
    .await;
    assert_eq!(
        next_update(&mut bob).await,
        ("a5".to_owned(), ChangeType::Enter)
    );
    write(
        &mut alice,
        vec![put(
            "6",
            "a3",
            json!({"title": "Gardening", "body": "tomatoes, peppers"}),
        )],
    )
    .await;
    assert_eq!(
        next_update(&mut bob).await,
        ("a3".to_owned(), ChangeType::Update)
    );
    write(
        &mut alice,
        vec![put("7", "a5", json!({"title": "Basil only"}))],
    )
    .await;
    assert_eq!(
        next_update(&mut bob).await,
        ("a5".to_owned(), ChangeType::Leave)
    );
    assert_eq!(bob.last_raw()["payload"]["value"], Value::Null);

    bob.send(msg(
        json!({"type": "SEARCH_UNSUB", "payload": {"subscriptionId": "s1"}}),
    ))
    .await;
    // A round trip guarantees the server has processed the unsubscribe before the write.
    bob.send(msg(json!({"type": "PING", "timestamp": 1}))).await;
    bob.expect_type("PONG").await;
    write(
        &mut alice,
        vec![put("8", "a6", json!({"title": "tomatoes again"}))],
    )
    .await;
    bob.expect_silence(Duration::from_millis(200)).await;

    t.note("--- errors come back as SEARCH_RESP.error");
    let not_enabled = search(&mut alice, "r3", "todos", "rust").await;
    let denied = search(&mut alice, "r4", "private", "rust").await;
    for (message, expected) in [
        (&not_enabled, "Full-text search not enabled for map: todos"),
        (&denied, "Access denied for map: private"),
    ] {
        let Message::SearchResp(resp) = message else {
            unreachable!()
        };
        assert_eq!(resp.payload.error.as_deref(), Some(expected));
        assert!(resp.payload.results.is_empty());
    }
    bob.send(msg(json!({"type": "SEARCH_SUB", "payload": {
        "subscriptionId": "s2", "mapName": "private", "query": "x"
    }})))
    .await;
    let Message::SearchResp(sub_denied) = bob.expect_type("SEARCH_RESP").await else {
        unreachable!()
    };
    assert_eq!(sub_denied.payload.request_id, "s2");
    assert_eq!(
        sub_denied.payload.error.as_deref(),
        Some("Access denied for map: private")
    );

    alice.close().await;
    bob.close().await;
    server.stop().await;
    snapshot!("search", t);
}
