//! Both TypeScript client generations against this server, with their own recorded bytes
//! (../shared/wire): each generation gets Merkle roots in the combine function it computes
//! (2026-01 sums, 2026-08 mixes with fmix32), and a replay of their real sessions is
//! answered message for message, never with an ERROR.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use topgun::merkle::{Combine, DEEP_SYNC_MARKER};
use topgun::protocol::Message;
use topgun::protocol::codec::{Frame, decode};
use topgun::replica::LwwReplica;

use crate::harness::{Client, SECRET, Setup, TestServer, Transcript, msg};
use crate::snapshot;

const WIRE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/wire");
/// The secret the recordings' tokens were signed with.
const RECORDING_SECRET: &str = "test-e2e-secret";

/// One recorded frame.
struct Recorded {
    conn: u64,
    dir: String,
    seq: u64,
    type_name: String,
    bytes: Vec<u8>,
    decoded: Value,
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The frames of `file` in sequence order (proxy notes skipped).
fn recording(generation: &str, file: &str) -> Vec<Recorded> {
    let path = format!("{WIRE}/client-{generation}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut frames: Vec<Recorded> = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("jsonl line"))
        .filter(|v| v["hex"].is_string())
        .map(|v| Recorded {
            conn: v["conn"].as_u64().expect("conn"),
            dir: v["dir"].as_str().expect("dir").to_owned(),
            seq: v["seq"].as_u64().expect("seq"),
            type_name: v["type"].as_str().expect("type").to_owned(),
            bytes: hex_bytes(v["hex"].as_str().expect("hex")),
            decoded: v["decoded"].clone(),
        })
        .collect();
    frames.sort_by_key(|f| f.seq);
    frames
}

/// The client's frames of connection 1, as the client put them on the wire.
fn client_frames(generation: &str, file: &str) -> Vec<Recorded> {
    recording(generation, file)
        .into_iter()
        .filter(|f| f.conn == 1 && f.dir == "c2s")
        .collect()
}

/// The `iat` (seconds) of the first recorded AUTH token: the recording's wall clock.
fn recording_time_ms(frames: &[Recorded]) -> u64 {
    use base64::Engine;
    let token = frames
        .iter()
        .find(|f| f.type_name == "AUTH")
        .and_then(|f| f.decoded["token"].as_str())
        .expect("an AUTH with a token");
    let claims = token.split('.').nth(1).expect("JWT payload");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("base64url claims");
    let claims: Value = serde_json::from_slice(&claims).expect("JSON claims");
    claims["iat"].as_u64().expect("iat") * 1_000
}

/// The recorded 3-PUT `OP_BATCH` of scenario b (the client's third resend).
fn recorded_three_puts(generation: &str) -> Recorded {
    client_frames(generation, "b-lww-and-query.jsonl")
        .into_iter()
        .find(|f| f.type_name == "OP_BATCH" && f.decoded["payload"]["ops"][2].is_object())
        .expect("the 3-op batch")
}

/// What a client that applied `frame` locally holds: its map name and replica.
fn local_replica(frame: &Recorded) -> (String, LwwReplica) {
    let Message::OpBatch(batch) = decode(Frame::Binary(&frame.bytes)).expect("recorded frame")
    else {
        panic!("not an OP_BATCH")
    };
    let mut replica = LwwReplica::default();
    let mut map = String::new();
    for op in batch.payload.ops {
        map = op.map_name;
        replica.merge(&op.key, op.record.expect("PUT record"));
    }
    (map, replica)
}

async fn server_root(client: &mut Client, map: &str) -> u32 {
    client
        .send(msg(json!({"type": "SYNC_INIT", "mapName": map})))
        .await;
    let Message::SyncRespRoot(root) = client.expect_type("SYNC_RESP_ROOT").await else {
        unreachable!()
    };
    root.payload.root_hash
}

/// The root-level child hashes the server answers `client` with.
async fn server_buckets(client: &mut Client, map: &str) -> Vec<(String, u32)> {
    client
        .send(msg(
            json!({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": map, "path": ""}}),
        ))
        .await;
    let Message::SyncRespBuckets(b) = client.expect_type("SYNC_RESP_BUCKETS").await else {
        unreachable!()
    };
    b.payload.buckets.into_iter().collect()
}

/// The root buckets a client computes, plus the zero-hash deep-sync marker our server adds
/// (both generations skip it: its hash equals that of a child they lack).
fn local_buckets(replica: &LwwReplica, combine: Combine) -> Vec<(String, u32)> {
    let mut buckets: BTreeMap<String, u32> = replica
        .merkle()
        .buckets("", combine)
        .into_iter()
        .map(|(digit, hash)| (digit.to_string(), hash))
        .collect();
    buckets.insert(DEEP_SYNC_MARKER.to_owned(), 0);
    buckets.into_iter().collect()
}

#[tokio::test]
async fn each_generation_gets_roots_in_its_own_combine() {
    let old_batch = recorded_three_puts("2026-01");
    let new_batch = recorded_three_puts("2026-08");
    assert!(old_batch.bytes.windows(3).any(|w| w == [0xd4, 0, 0]));
    assert!(!new_batch.bytes.windows(3).any(|w| w == [0xd4, 0, 0]));
    let now_ms = recording_time_ms(&client_frames("2026-01", "b-lww-and-query.jsonl"));
    let server = TestServer::with_setup(Setup {
        now_ms,
        ..Setup::default()
    })
    .await;
    let t = Transcript::default();
    let mut old = authed_at(&server, "old", now_ms, &t).await;
    let mut new = authed_at(&server, "new", now_ms, &t).await;
    old.send_raw(&old_batch.bytes).await;
    assert_eq!(last_id(&old.expect_type("OP_ACK").await), "3");
    new.send_raw(&new_batch.bytes).await;
    assert_eq!(last_id(&new.expect_type("OP_ACK").await), "3");

    let maps = [local_replica(&old_batch), local_replica(&new_batch)];
    for (map, replica) in &maps {
        let (sum, fmix) = (
            replica.merkle().root(Combine::Sum),
            replica.merkle().root(Combine::Fmix),
        );
        assert_ne!(
            sum, fmix,
            "the combines must differ for this test to mean anything"
        );
        // Equal data, equal root: neither client would request a single bucket.
        assert_eq!(server_root(&mut old, map).await, sum, "2026-01 on {map}");
        assert_eq!(server_root(&mut new, map).await, fmix, "2026-08 on {map}");
        assert_eq!(
            server_buckets(&mut old, map).await,
            local_buckets(replica, Combine::Sum)
        );
        assert_eq!(
            server_buckets(&mut new, map).await,
            local_buckets(replica, Combine::Fmix)
        );
    }
    old.close().await;
    new.close().await;
    server.stop().await;
    snapshot!("generation_combines", t);
}

/// An authenticated client whose token was minted at the server's (recording-time) clock.
async fn authed_at(server: &TestServer, name: &str, now_ms: u64, t: &Transcript) -> Client {
    let token = topgun::auth::mint_token(SECRET, name, &["USER"], 3_600, now_ms / 1_000)
        .expect("mint token");
    Client::authed_with(&server.url(), name, &token, t).await
}

fn last_id(message: &Message) -> String {
    match message {
        Message::OpAck(ack) => ack.payload.last_id.clone(),
        other => panic!("not an OP_ACK: {other:?}"),
    }
}

/// The reply a recorded client frame must get, if any.
fn expected_reply(frame: &Recorded) -> Option<&'static str> {
    match frame.type_name.as_str() {
        "AUTH" => Some("AUTH_ACK"),
        "OP_BATCH" => Some("OP_ACK"),
        "QUERY_SUB" => Some("QUERY_RESP"),
        _ => None,
    }
}

/// Replays one recorded session's client bytes and notes every reply type in order.
async fn replay(generation: &str, file: &str, log: &Transcript) {
    let frames = client_frames(generation, file);
    let server = TestServer::with_setup(Setup {
        secret: RECORDING_SECRET.to_owned(),
        now_ms: recording_time_ms(&frames),
        ..Setup::default()
    })
    .await;
    let wire = Transcript::default();
    let mut client = Client::connect(&server, generation, &wire).await;
    log.note(format!("== {generation} {file}"));
    for frame in &frames {
        log.note(format!("C→S {}", frame.type_name));
        client.send_raw(&frame.bytes).await;
        let Some(expected) = expected_reply(frame) else {
            continue;
        };
        loop {
            let reply = client.recv().await;
            let type_name = reply.type_name();
            log.note(format!("S→C {type_name}"));
            assert!(
                !matches!(reply, Message::Error(_) | Message::AuthFail(_)),
                "{generation} {file} seq {}: {reply:?}",
                frame.seq
            );
            if type_name != expected {
                continue;
            }
            if let Message::OpAck(ack) = &reply {
                let ops = frame.decoded["payload"]["ops"].as_array().expect("ops");
                let last = ops.last().and_then(|op| op["id"].as_str()).expect("op id");
                assert_eq!(
                    ack.payload.last_id, last,
                    "{generation} {file} seq {}",
                    frame.seq
                );
            }
            break;
        }
    }
    while let Some(reply) = client.recv_within(Duration::from_millis(200)).await {
        assert!(!matches!(reply, Message::Error(_)), "{reply:?}");
        log.note(format!("S→C {}", reply.type_name()));
    }
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn recorded_sessions_of_both_generations_replay_cleanly() {
    let log = Transcript::default();
    for generation in ["2026-01", "2026-08"] {
        for file in ["b-lww-and-query.jsonl", "c-ormap.jsonl"] {
            replay(generation, file, &log).await;
        }
    }
    snapshot!("golden_replay", log);
}
