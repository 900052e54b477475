//! Topics (pub/sub): fan-out to every subscriber but the publisher in publish order,
//! unsubscribe, denied publish, invalid names and the per-connection subscription limit.
//!
//! `TOPIC_SUB` has no acknowledgement, so each client follows its subscription changes with a
//! `PING`: frames of one connection are handled in order, so the `PONG` proves the change is
//! in place before anyone publishes.

use serde_json::{Value, json};
use topgun::protocol::{Message, TopicMessagePayload};

use crate::harness::{Client, SECRET, SERVER_NOW_MS, TestServer, Transcript, msg};
use crate::snapshot;

const ROOM: &str = "chat/room-1";

async fn sub(client: &mut Client, topic: &str) {
    client
        .send(msg(
            json!({"type": "TOPIC_SUB", "payload": {"topic": topic}}),
        ))
        .await;
}

async fn unsub(client: &mut Client, topic: &str) {
    client
        .send(msg(
            json!({"type": "TOPIC_UNSUB", "payload": {"topic": topic}}),
        ))
        .await;
}

async fn publish(client: &mut Client, topic: &str, data: Value) {
    client
        .send(msg(
            json!({"type": "TOPIC_PUB", "payload": {"topic": topic, "data": data}}),
        ))
        .await;
}

/// Round-trips a `PING`: everything the client sent before has been handled, and nothing
/// was queued for it in between.
async fn barrier(client: &mut Client) {
    client
        .send(msg(json!({"type": "PING", "timestamp": 1})))
        .await;
    client.expect_type("PONG").await;
}

async fn topic_message(client: &mut Client) -> TopicMessagePayload {
    match client.expect_type("TOPIC_MESSAGE").await {
        Message::TopicMessage(m) => m.payload,
        _ => unreachable!(),
    }
}

async fn expect_error(client: &mut Client, code: u32, message: &str) {
    let Message::Error(error) = client.expect_type("ERROR").await else {
        unreachable!()
    };
    assert_eq!(error.payload.code, code);
    assert_eq!(error.payload.message, message);
}

/// Authenticates with a role no policy mentions, so every topic is denied.
async fn guest(server: &TestServer, t: &Transcript) -> Client {
    let token = topgun::auth::mint_token(SECRET, "guest", &["GUEST"], 3_600, SERVER_NOW_MS / 1_000)
        .unwrap();
    Client::authed_with(&server.url(), "guest", &token, t).await
}

#[tokio::test]
async fn topic_messages_reach_other_subscribers_in_order() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut b = Client::authed(&server, "bob", &t).await;
    let mut c = Client::authed(&server, "carol", &t).await;
    for client in [&mut a, &mut b, &mut c] {
        sub(client, ROOM).await;
        barrier(client).await;
    }

    t.note("-- alice publishes 100 messages");
    for n in 0..100 {
        publish(&mut a, ROOM, json!({"n": n})).await;
    }
    let mut alice_ids = Vec::new();
    for client in [&mut b, &mut c] {
        for n in 0..100 {
            let m = topic_message(client).await;
            assert_eq!(m.topic, ROOM);
            assert_eq!(m.data, json!({"n": n}), "publish order is kept");
            assert_eq!(m.timestamp, SERVER_NOW_MS, "server wall clock");
            alice_ids.push(m.publisher_id.expect("publisherId is set"));
        }
    }
    alice_ids.dedup();
    assert_eq!(
        alice_ids.len(),
        1,
        "one stable id per publishing connection"
    );
    assert_ne!(
        alice_ids[0], "alice",
        "the id names the connection, not the user"
    );
    barrier(&mut a).await; // the publisher hears none of its own messages

    t.note("-- carol unsubscribes; bob publishes");
    unsub(&mut c, ROOM).await;
    barrier(&mut c).await;
    publish(&mut b, ROOM, json!("hi")).await;
    let to_alice = topic_message(&mut a).await;
    assert_eq!(to_alice.data, json!("hi"));
    let bob_id = to_alice.publisher_id.expect("publisherId is set");
    assert_ne!(bob_id, alice_ids[0]);
    barrier(&mut b).await;
    barrier(&mut c).await;

    t.note("-- alice leaves, carol comes back");
    a.close().await;
    sub(&mut c, ROOM).await;
    barrier(&mut c).await;
    publish(&mut b, ROOM, json!("bye")).await;
    let to_carol = topic_message(&mut c).await;
    assert_eq!(to_carol.data, json!("bye"));
    assert_eq!(to_carol.publisher_id, Some(bob_id));
    barrier(&mut b).await;

    b.close().await;
    c.close().await;
    server.stop().await;
    snapshot!("topics_fan_out", t);
}

#[tokio::test]
async fn topic_denials_invalid_names_and_the_subscription_limit() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut g = guest(&server, &t).await;
    sub(&mut a, "news").await;
    barrier(&mut a).await;

    t.note("-- a principal without topic permissions");
    sub(&mut g, "news").await;
    expect_error(&mut g, 403, "Access Denied for topic:news").await;
    publish(&mut g, "news", json!("spam")).await;
    expect_error(&mut g, 403, "Access Denied for topic:news").await;
    barrier(&mut a).await; // nothing was delivered

    t.note("-- invalid topic names");
    sub(&mut a, "no spaces").await;
    let Message::Error(error) = a.expect_type("ERROR").await else {
        unreachable!()
    };
    assert_eq!(error.payload.code, 400);
    let details = error.payload.details.expect("schema violations");
    assert_eq!(details[0].path, "/payload/topic");
    publish(&mut a, &"x".repeat(257), json!(1)).await;
    let Message::Error(error) = a.expect_type("ERROR").await else {
        unreachable!()
    };
    assert_eq!(error.payload.code, 400);

    t.note("-- 99 more topics reach the limit of 100");
    for n in 1..100 {
        sub(&mut a, &format!("t{n}")).await;
    }
    barrier(&mut a).await;
    sub(&mut a, "one-too-many").await;
    expect_error(&mut a, 400, "Subscription limit reached").await;
    sub(&mut a, "t1").await; // already held: no new slot needed
    barrier(&mut a).await;
    unsub(&mut a, "t1").await;
    sub(&mut a, "one-too-many").await;
    barrier(&mut a).await;

    a.close().await;
    g.close().await;
    server.stop().await;
    snapshot!("topics_errors", t);
}
