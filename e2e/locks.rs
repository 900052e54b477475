//! Distributed locks: contention between two clients with increasing fencing tokens, release
//! on disconnect, and fencing tokens that keep increasing across a restart.

use std::time::Duration;

use serde_json::json;
use topgun::protocol::Message;

use crate::harness::{Client, TestServer, Transcript, msg};
use crate::snapshot;

async fn request(client: &mut Client, request_id: &str, name: &str) {
    client
        .send(msg(json!({"type": "LOCK_REQUEST", "payload": {
            "requestId": request_id, "name": name, "ttl": 5_000
        }})))
        .await;
}

async fn release(client: &mut Client, request_id: &str, name: &str, token: u64) {
    client
        .send(msg(json!({"type": "LOCK_RELEASE", "payload": {
            "requestId": request_id, "name": name, "fencingToken": token
        }})))
        .await;
}

/// The next `LOCK_GRANTED`, checked against the request it answers; returns its token.
async fn granted(client: &mut Client, request_id: &str, name: &str) -> u64 {
    let Message::LockGranted(g) = client.expect_type("LOCK_GRANTED").await else {
        unreachable!()
    };
    assert_eq!(g.payload.request_id, request_id);
    assert_eq!(g.payload.name, name);
    g.payload.fencing_token
}

/// The next `LOCK_RELEASED`; returns its `success`.
async fn released(client: &mut Client, request_id: &str) -> bool {
    let Message::LockReleased(r) = client.expect_type("LOCK_RELEASED").await else {
        unreachable!()
    };
    assert_eq!(r.payload.request_id, request_id);
    r.payload.success
}

#[tokio::test]
async fn contended_lock_is_handed_over_in_order_with_increasing_tokens() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut b = Client::authed(&server, "bob", &t).await;
    let quiet = Duration::from_millis(100);

    request(&mut a, "a1", "job").await;
    let first = granted(&mut a, "a1", "job").await;
    assert_eq!(first, 1);

    t.note("-- bob waits: no reply while alice holds the lock");
    request(&mut b, "b1", "job").await;
    b.expect_silence(quiet).await;

    t.note("-- a wrong token or a non-holder cannot release");
    release(&mut a, "a2", "job", first + 1).await;
    assert!(!released(&mut a, "a2").await);
    release(&mut b, "b2", "job", first).await;
    assert!(!released(&mut b, "b2").await);
    b.expect_silence(quiet).await;

    t.note("-- alice extends her lease: same token");
    request(&mut a, "a3", "job").await;
    assert_eq!(granted(&mut a, "a3", "job").await, first);

    t.note("-- alice releases: bob is granted with a higher token");
    release(&mut a, "a4", "job", first).await;
    assert!(released(&mut a, "a4").await);
    let second = granted(&mut b, "b1", "job").await;
    assert!(second > first, "{second} > {first}");

    t.note("-- alice waits, bob disconnects: alice is granted");
    request(&mut a, "a5", "job").await;
    a.expect_silence(quiet).await;
    b.close().await;
    let third = granted(&mut a, "a5", "job").await;
    assert!(third > second, "{third} > {second}");

    a.close().await;
    server.stop().await;
    snapshot!("locks_contention", t);
}

#[tokio::test]
async fn fencing_tokens_keep_increasing_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_redb(dir.path().to_owned()).await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut last = 0;
    for round in 1..=2 {
        let id = format!("a{round}");
        request(&mut a, &id, "job").await;
        let token = granted(&mut a, &id, "job").await;
        assert!(token > last, "{token} > {last}");
        release(&mut a, &format!("{id}-release"), "job", token).await;
        assert!(released(&mut a, &format!("{id}-release")).await);
        last = token;
    }
    a.close().await;

    t.note("-- restart");
    let server = server.restart().await;
    let mut b = Client::authed(&server, "bob", &t).await;
    request(&mut b, "b1", "job").await;
    let after = granted(&mut b, "b1", "job").await;
    assert_eq!(after, last + 1, "tokens continue after the restart");
    b.close().await;
    server.stop().await;
    snapshot!("locks_restart", t);
}
