//! PN-counters over the wire: two clients' increments converge (each sends only its own
//! node's entry; both end with the sum), both key spellings are accepted and all four are
//! emitted, and the value survives a restart.

use serde_json::json;
use topgun::protocol::Message;

use crate::harness::{Client, TestServer, Transcript, msg};
use crate::snapshot;

fn value_of(message: &Message) -> f64 {
    match message {
        Message::CounterResponse(m) => m.payload.state.value(),
        Message::CounterUpdate(m) => m.payload.state.value(),
        other => panic!("not a counter message: {other:?}"),
    }
}

#[tokio::test]
async fn increments_converge_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_redb(dir.path().to_owned()).await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut b = Client::authed(&server, "bob", &t).await;

    for client in [&mut a, &mut b] {
        client
            .send(msg(
                json!({"type": "COUNTER_REQUEST", "payload": {"name": "likes"}}),
            ))
            .await;
        assert_eq!(value_of(&client.expect_type("COUNTER_RESPONSE").await), 0.0);
    }

    // The 2026-01/08 clients send {positive, negative}.
    a.send(msg(
        json!({"type": "COUNTER_SYNC", "payload": {"name": "likes",
        "state": {"positive": {"node-a": 3}, "negative": {}}}}),
    ))
    .await;
    assert_eq!(value_of(&a.expect_type("COUNTER_UPDATE").await), 3.0);
    assert_eq!(value_of(&b.expect_type("COUNTER_UPDATE").await), 3.0);

    // The schema spelling {p, n}: b's own node entry only.
    b.send(msg(
        json!({"type": "COUNTER_SYNC", "payload": {"name": "likes",
        "state": {"p": {"node-b": 5}, "n": {"node-b": 1}}}}),
    ))
    .await;
    assert_eq!(value_of(&b.expect_type("COUNTER_UPDATE").await), 7.0);
    let pushed = a.expect_type("COUNTER_UPDATE").await;
    assert_eq!(value_of(&pushed), 7.0);
    let state = &a.last_raw()["payload"]["state"];
    for key in ["p", "n", "positive", "negative"] {
        assert!(state.get(key).is_some(), "{key} missing from {state}");
    }

    // A stale resend changes nothing and is not pushed to others.
    a.send(msg(
        json!({"type": "COUNTER_SYNC", "payload": {"name": "likes",
        "state": {"positive": {"node-a": 2}}}}),
    ))
    .await;
    assert_eq!(value_of(&a.expect_type("COUNTER_UPDATE").await), 7.0);
    b.expect_silence(std::time::Duration::from_millis(100))
        .await;

    a.close().await;
    b.close().await;
    t.note("-- restart");
    let server = server.restart().await;
    let mut c = Client::authed(&server, "carol", &t).await;
    c.send(msg(
        json!({"type": "COUNTER_REQUEST", "payload": {"name": "likes"}}),
    ))
    .await;
    assert_eq!(value_of(&c.expect_type("COUNTER_RESPONSE").await), 7.0);
    c.close().await;
    server.stop().await;
    snapshot!("counters", t);
}
