//! Scenarios 1–4: the handshake, bad tokens, messages before authentication and the
//! invalid-frame policy.

use serde_json::json;
use topgun::protocol::Message;

use crate::harness::{Client, SECRET, SERVER_NOW_MS, TestServer, Transcript, msg, token};
use crate::snapshot;

#[tokio::test]
async fn handshake_auth_duplicate_auth_and_ping() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::connect(&server, "alice", &t).await;
    a.expect_type("AUTH_REQUIRED").await;

    a.send(msg(json!({"type": "AUTH", "token": token("alice")})))
        .await;
    let Message::AuthAck(ack) = a.expect_type("AUTH_ACK").await else {
        unreachable!()
    };
    assert_eq!(ack.user_id.as_deref(), Some("alice"));

    // The 2026-01 client sends AUTH twice and waits for an answer to each.
    a.send(msg(json!({"type": "AUTH", "token": token("alice")})))
        .await;
    let Message::AuthAck(second) = a.expect_type("AUTH_ACK").await else {
        unreachable!()
    };
    assert_eq!(second.user_id.as_deref(), Some("alice"));

    a.send(msg(
        json!({"type": "PING", "timestamp": 1_700_000_000_123u64}),
    ))
    .await;
    let Message::Pong(pong) = a.expect_type("PONG").await else {
        unreachable!()
    };
    assert_eq!(pong.server_time, SERVER_NOW_MS);
    let raw = a.last_raw().as_object().unwrap();
    assert!(
        !raw.contains_key("timestamp"),
        "a PONG timestamp poisons the 2026-01 client's HLC: {raw:?}"
    );
    a.close().await;
    server.stop().await;
    snapshot!("handshake", t);
}

#[tokio::test]
async fn bad_and_expired_tokens_fail_with_4001() {
    let server = TestServer::start().await;
    let t = Transcript::default();

    let mut bad = Client::connect(&server, "mallory", &t).await;
    bad.expect_type("AUTH_REQUIRED").await;
    let forged = topgun::auth::mint_token(
        "another-secret-0123456789abcdef012345",
        "mallory",
        &["ADMIN"],
        3_600,
        SERVER_NOW_MS / 1_000,
    )
    .unwrap();
    bad.send(msg(json!({"type": "AUTH", "token": forged})))
        .await;
    let Message::AuthFail(fail) = bad.expect_type("AUTH_FAIL").await else {
        unreachable!()
    };
    assert_eq!(fail.error.as_deref(), Some("invalid signature"));
    assert_eq!(bad.expect_close().await.0, 4001);

    let mut late = Client::connect(&server, "bob", &t).await;
    late.expect_type("AUTH_REQUIRED").await;
    // Expired two hours ago: well past the 60 s leeway.
    let expired =
        topgun::auth::mint_token(SECRET, "bob", &["USER"], 60, SERVER_NOW_MS / 1_000 - 7_200)
            .unwrap();
    late.send(msg(json!({"type": "AUTH", "token": expired})))
        .await;
    let Message::AuthFail(fail) = late.expect_type("AUTH_FAIL").await else {
        unreachable!()
    };
    assert_eq!(fail.error.as_deref(), Some("jwt expired"));
    assert_eq!(late.expect_close().await.0, 4001);
    server.stop().await;
    snapshot!("bad_tokens", t);
}

#[tokio::test]
async fn ping_is_answered_before_auth_but_ops_close_4001() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::connect(&server, "anon", &t).await;
    a.expect_type("AUTH_REQUIRED").await;
    a.send(msg(
        json!({"type": "PING", "timestamp": 1_700_000_000_000u64}),
    ))
    .await;
    a.expect_type("PONG").await;

    a.send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [{
        "id": "1", "mapName": "todos", "key": "k", "opType": "PUT",
        "record": {"value": 1, "timestamp": {"millis": 1_700_000_000_000u64, "counter": 0, "nodeId": "client-a"}}
    }]}})))
    .await;
    let (code, reason) = a.expect_close().await;
    assert_eq!((code, reason.as_str()), (4001, "Auth required"));
    server.stop().await;
    snapshot!("pre_auth", t);
}

#[tokio::test]
async fn invalid_frames_get_error_400_and_the_eleventh_closes_1008() {
    let server = TestServer::start().await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;

    // 0xc1 is the one byte msgpack never uses.
    a.send_raw(&[0xc1]).await;
    let Message::Error(garbage) = a.expect_type("ERROR").await else {
        unreachable!()
    };
    assert_eq!(garbage.payload.code, 400);
    assert_eq!(garbage.payload.details.as_ref().map(Vec::len), Some(1));

    let bad_batch = rmp_serde::to_vec_named(&json!({
        "type": "OP_BATCH", "payload": {"ops": "not a list"}
    }))
    .unwrap();
    a.send_raw(&bad_batch).await;
    let Message::Error(schema) = a.expect_type("ERROR").await else {
        unreachable!()
    };
    assert_eq!(schema.payload.code, 400);
    let details = schema.payload.details.unwrap();
    assert!(
        details.iter().any(|d| d.path == "/payload/ops"),
        "violation names the path: {details:?}"
    );

    for _ in 0..8 {
        a.send_raw(&[0xc1]).await;
        a.expect_type("ERROR").await;
    }
    // Ten invalid frames are tolerated; the eleventh within the window is a policy violation.
    a.send_raw(&[0xc1]).await;
    let (code, reason) = a.expect_close().await;
    assert_eq!(code, 1008, "closed with {reason}");
    server.stop().await;
    snapshot!("invalid_frames", t);
}
