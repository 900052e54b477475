//! The event journal over the wire: PUT / UPDATE / DELETE with previous values, a
//! subscription that replays then streams, `JOURNAL_READ` with the map filter applied before
//! the limit, and sequences that keep increasing across a restart.

use serde_json::{Value, json};
use topgun::protocol::{JournalEventType, Message};
use topgun::server::config::{JournalMode, Limits};
use topgun::server::journal::JOURNAL_OFF;

use crate::harness::{CLIENT_NODE, Client, TestServer, Transcript, msg};
use crate::snapshot;

const T0: u64 = 1_789_999_000_000;

fn put(id: &str, map: &str, key: &str, value: Value, n: u64) -> Value {
    json!({
        "id": id, "mapName": map, "key": key, "opType": "PUT",
        "record": {"value": value, "timestamp": {"millis": T0 + n, "counter": 0, "nodeId": CLIENT_NODE}}
    })
}

async fn write(client: &mut Client, ops: Vec<Value>) {
    client
        .send(msg(
            json!({"type": "OP_BATCH", "payload": {"writeConcern": "PERSISTED", "ops": ops}}),
        ))
        .await;
    client.expect_type("OP_ACK").await;
}

async fn read(
    client: &mut Client,
    from: &str,
    limit: u32,
    map: Option<&str>,
) -> (Vec<String>, bool) {
    let mut request =
        json!({"type": "JOURNAL_READ", "requestId": "r", "fromSequence": from, "limit": limit});
    if let Some(map) = map {
        request["mapName"] = json!(map);
    }
    client.send(msg(request)).await;
    let Message::JournalReadResponse(resp) = client.expect_type("JOURNAL_READ_RESPONSE").await
    else {
        unreachable!()
    };
    let sequences = resp.events.iter().map(|e| e.sequence.clone()).collect();
    (sequences, resp.has_more)
}

#[tokio::test]
async fn journal_records_streams_reads_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_redb(dir.path().to_owned()).await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    let mut b = Client::authed(&server, "bob", &t).await;

    write(&mut a, vec![put("1", "todos", "x", json!({"v": 1}), 1)]).await;
    // b replays from 1 (the PUT above) and then streams live events of "todos".
    b.send(msg(json!({"type": "JOURNAL_SUBSCRIBE", "requestId": "s1", "fromSequence": "1", "mapName": "todos"})))
        .await;
    let Message::JournalEvent(first) = b.expect_type("JOURNAL_EVENT").await else {
        unreachable!()
    };
    assert_eq!(
        (first.event.sequence.as_str(), first.event.event_type),
        ("1", JournalEventType::Put)
    );

    write(
        &mut a,
        vec![
            put("2", "other", "o", json!(0), 2),
            put("3", "todos", "x", json!({"v": 2}), 3),
            {
                let mut remove = put("4", "todos", "x", Value::Null, 4);
                remove["opType"] = json!("REMOVE");
                remove
            },
        ],
    )
    .await;
    let Message::JournalEvent(update) = b.expect_type("JOURNAL_EVENT").await else {
        unreachable!()
    };
    assert_eq!(update.event.sequence, "3");
    assert_eq!(update.event.event_type, JournalEventType::Update);
    assert_eq!(update.event.previous_value, Some(json!({"v": 1})));
    let Message::JournalEvent(delete) = b.expect_type("JOURNAL_EVENT").await else {
        unreachable!()
    };
    assert_eq!(delete.event.event_type, JournalEventType::Delete);
    assert_eq!(delete.event.previous_value, Some(json!({"v": 2})));
    assert_eq!(delete.event.value, None);

    b.send(msg(
        json!({"type": "JOURNAL_UNSUBSCRIBE", "subscriptionId": "s1"}),
    ))
    .await;
    write(&mut a, vec![put("5", "todos", "y", json!(5), 5)]).await;
    b.expect_silence(std::time::Duration::from_millis(100))
        .await;

    assert_eq!(
        read(&mut b, "0", 2, Some("todos")).await,
        (vec!["1".into(), "3".into()], true)
    );
    assert_eq!(
        read(&mut b, "4", 100, None).await,
        (vec!["4".into(), "5".into()], false)
    );

    a.close().await;
    b.close().await;
    t.note("-- restart");
    let server = server.restart().await;
    let mut c = Client::authed(&server, "carol", &t).await;
    write(&mut c, vec![put("6", "todos", "z", json!(6), 6)]).await;
    // Numbering resumes above the durably reserved block (1..=1025), so no sequence a
    // subscriber may have seen before the restart is ever reused.
    assert_eq!(
        read(&mut c, "5", 10, None).await,
        (vec!["5".into(), "1026".into()], false)
    );
    c.close().await;
    server.stop().await;
    snapshot!("journal", t);
}

#[tokio::test]
async fn an_off_journal_refuses_its_requests_and_writes_go_on() {
    let server = TestServer::with_limits(Limits {
        journal: JournalMode::Off,
        ..Limits::default()
    })
    .await;
    let t = Transcript::default();
    let mut a = Client::authed(&server, "alice", &t).await;
    write(&mut a, vec![put("1", "todos", "x", json!({"v": 1}), 1)]).await;

    a.send(msg(
        json!({"type": "JOURNAL_SUBSCRIBE", "requestId": "s1", "fromSequence": "0"}),
    ))
    .await;
    let Message::Error(refused) = a.expect_type("ERROR").await else {
        unreachable!()
    };
    assert_eq!(
        (refused.payload.code, refused.payload.message.as_str()),
        (503, JOURNAL_OFF)
    );

    a.send(msg(
        json!({"type": "JOURNAL_READ", "requestId": "r", "fromSequence": "0", "limit": 10}),
    ))
    .await;
    let Message::Error(refused) = a.expect_type("ERROR").await else {
        unreachable!()
    };
    assert_eq!(refused.payload.code, 503);
    // The reader's page still arrives, empty and last, so it does not wait for a timeout.
    let Message::JournalReadResponse(page) = a.expect_type("JOURNAL_READ_RESPONSE").await else {
        unreachable!()
    };
    assert!(page.events.is_empty() && !page.has_more);

    // Writes go on, and the refused subscription streams nothing.
    write(&mut a, vec![put("2", "todos", "y", json!({"v": 2}), 2)]).await;
    a.expect_silence(std::time::Duration::from_millis(100))
        .await;
    a.close().await;
    server.stop().await;
}
