//! TTL expiry, tombstone GC and `GC_PRUNE`; and the honest answers to features this server
//! does not implement (entry processors, resolvers, SQL/vector/hybrid search, partition map).

use serde_json::json;
use topgun::protocol::{EventType, Message};
use topgun::replica::LwwReplica;
use topgun::server::config::Limits;
use topgun::server::gc;

use crate::harness::{
    CLIENT_NODE, Client, SERVER_NODE, SERVER_NOW_MS, TestServer, Transcript, msg, ts,
};
use crate::snapshot;
use crate::walk::lww_sync;

/// Client HLC millis of the fixed fake client clock.
const T0: u64 = 1_789_999_000_000;
/// The TTL of the expiring record: it outlives the server's start time by one second.
const TTL_MS: u64 = SERVER_NOW_MS - T0 + 1_000;

/// GC only when the test says so, so the transcript is deterministic.
fn manual_gc() -> Limits {
    Limits {
        gc_interval_ms: 0,
        ..Limits::default()
    }
}

#[tokio::test]
async fn expired_record_becomes_a_tombstone_event_and_syncs_as_one() {
    let server = TestServer::with_limits(manual_gc()).await;
    let t = Transcript::default();
    let mut writer = Client::authed(&server, "alice", &t).await;
    let mut watcher = Client::authed(&server, "bob", &t).await;

    watcher
        .send(msg(json!({"type": "QUERY_SUB", "payload": {
            "queryId": "q1", "mapName": "sessions", "query": {}
        }})))
        .await;
    watcher.expect_type("QUERY_RESP").await;
    writer
        .send(msg(json!({"type": "OP_BATCH", "payload": {"ops": [{
            "id": "1", "mapName": "sessions", "key": "s1", "opType": "PUT",
            "record": {"value": {"user": "alice"},
                       "timestamp": {"millis": T0, "counter": 0, "nodeId": CLIENT_NODE},
                       "ttlMs": TTL_MS}
        }]}})))
        .await;
    writer.expect_type("OP_ACK").await;
    watcher.expect_type("QUERY_UPDATE").await;
    watcher.expect_type("SERVER_BATCH_EVENT").await;

    t.note("-- a pass before the TTL runs out changes nothing but still announces the horizon");
    let early = gc::collect(server.server().shared()).await;
    assert_eq!(early.expired, 0);
    watcher.expect_type("GC_PRUNE").await;
    writer.expect_type("GC_PRUNE").await;

    t.note("-- two seconds later the record has expired");
    server.clock().advance(2_000);
    let report = gc::collect(server.server().shared()).await;
    assert_eq!(report.expired, 1);

    let Message::QueryUpdate(leave) = watcher.expect_type("QUERY_UPDATE").await else {
        unreachable!()
    };
    assert_eq!(
        leave.payload.key, "s1",
        "the expired record leaves the live query"
    );
    let Message::ServerBatchEvent(event) = watcher.expect_type("SERVER_BATCH_EVENT").await else {
        unreachable!()
    };
    let [removed] = event.payload.events.as_slice() else {
        panic!("one event expected: {event:?}")
    };
    assert_eq!(removed.event_type, EventType::Remove);
    assert_eq!(removed.key, "s1");
    let tombstone = removed.record.clone().expect("tombstone record");
    assert_eq!(tombstone.value, None);
    assert_eq!(tombstone.timestamp, ts(T0 + TTL_MS, 0, SERVER_NODE));

    let Message::GcPrune(prune) = watcher.expect_type("GC_PRUNE").await else {
        unreachable!()
    };
    assert_eq!(
        prune.payload.older_than,
        ts(SERVER_NOW_MS + 2_000 - Limits::default().gc_age_ms, 0, "")
    );
    writer.expect_type("GC_PRUNE").await;

    t.note("-- a fresh replica syncs the tombstone");
    let mut local = LwwReplica::default();
    lww_sync(&mut watcher, "sessions", &mut local).await;
    assert_eq!(local.map().record("s1"), Some(&tombstone));

    writer.close().await;
    watcher.close().await;
    server.stop().await;
    snapshot!("gc_ttl_expiry", t);
}

#[tokio::test]
async fn periodic_pass_sends_gc_prune_to_authenticated_clients() {
    let server = TestServer::with_limits(Limits {
        gc_interval_ms: 50,
        gc_age_ms: 1_000,
        ..Limits::default()
    })
    .await;
    let t = Transcript::default();
    let mut client = Client::authed(&server, "alice", &t).await;
    let Message::GcPrune(prune) = client.expect_type("GC_PRUNE").await else {
        unreachable!()
    };
    assert_eq!(prune.payload.older_than, ts(SERVER_NOW_MS - 1_000, 0, ""));
    client.close().await;
    server.stop().await;
    snapshot!("gc_periodic_prune", t);
}

#[tokio::test]
async fn or_tombstones_stay_bounded_under_churn_over_the_wire() {
    const ROUNDS: u64 = 2_000;
    const PER_BATCH: u64 = 100;
    const GC_AGE: u64 = 150;
    let server = TestServer::with_limits(Limits {
        gc_interval_ms: 0,
        gc_age_ms: GC_AGE,
        ..Limits::default()
    })
    .await;
    let t = Transcript::default();
    let mut client = Client::authed(&server, "alice", &t).await;
    let shared = server.server().shared().clone();
    let mut most = 0;
    for batch in 0..ROUNDS / PER_BATCH {
        // Each add and its remove is one millisecond of both clocks.
        let ops: Vec<_> = (0..PER_BATCH)
            .flat_map(|i| {
                let n = batch * PER_BATCH + i;
                let stamp = json!({"millis": SERVER_NOW_MS + n, "counter": 0, "nodeId": CLIENT_NODE});
                let tag = format!("{}:0:{CLIENT_NODE}", SERVER_NOW_MS + n);
                [
                    json!({"id": format!("a{n}"), "mapName": "hot", "key": "k", "opType": "OR_ADD",
                           "orRecord": {"value": n, "timestamp": stamp, "tag": tag}}),
                    json!({"id": format!("r{n}"), "mapName": "hot", "key": "k", "opType": "OR_REMOVE",
                           "orTag": tag}),
                ]
            })
            .collect();
        client
            .send(msg(json!({"type": "OP_BATCH", "payload": {
                "writeConcern": "PERSISTED", "ops": ops
            }})))
            .await;
        client.expect_type("OP_ACK").await;
        server.clock().advance(PER_BATCH);
        gc::collect(&shared).await;
        client.expect_type("GC_PRUNE").await;
        let map = shared
            .maps
            .get("hot", topgun::replica::MapKind::Or, None)
            .await
            .expect("map");
        let tombstones = match &*map.lock() {
            topgun::replica::Replica::Or(r) => r.map().tombstones().count(),
            topgun::replica::Replica::Lww(_) => unreachable!(),
        };
        let stored = match shared.store.load_map("hot").await.expect("load") {
            Some(topgun::store::MapSnapshot::Or { tombstones, .. }) => tombstones.len(),
            other => panic!("OR map expected, got {other:?}"),
        };
        assert_eq!(tombstones, stored, "memory and store agree");
        most = most.max(tombstones);
    }
    let bound = usize::try_from(GC_AGE + 1).expect("small");
    assert!(most <= bound, "{most} tombstones survived a pass");
    assert!(most > 0, "tombstones younger than the GC age are kept");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn unimplemented_features_get_their_response_types() {
    let server = TestServer::with_limits(manual_gc()).await;
    let t = Transcript::default();
    let mut c = Client::authed(&server, "alice", &t).await;
    let processor = json!({"name": "inc", "code": "return value + 1"});
    let cases = [
        (
            json!({"type": "ENTRY_PROCESS", "requestId": "e1", "mapName": "m", "key": "k", "processor": processor}),
            "ENTRY_PROCESS_RESPONSE",
        ),
        (
            json!({"type": "ENTRY_PROCESS_BATCH", "requestId": "e2", "mapName": "m", "keys": ["a", "b"], "processor": processor}),
            "ENTRY_PROCESS_BATCH_RESPONSE",
        ),
        (
            json!({"type": "REGISTER_RESOLVER", "requestId": "r1", "mapName": "m",
                "resolver": {"name": "max", "code": "return a"}}),
            "REGISTER_RESOLVER_RESPONSE",
        ),
        (
            json!({"type": "UNREGISTER_RESOLVER", "requestId": "r2", "mapName": "m", "resolverName": "max"}),
            "UNREGISTER_RESOLVER_RESPONSE",
        ),
        (
            json!({"type": "LIST_RESOLVERS", "requestId": "r3"}),
            "LIST_RESOLVERS_RESPONSE",
        ),
        (
            json!({"type": "SQL_QUERY", "payload": {"sql": "SELECT 1", "queryId": "s1"}}),
            "SQL_QUERY_RESP",
        ),
        (
            json!({"type": "VECTOR_SEARCH", "payload": {"id": "v1", "mapName": "m", "queryVector": [0, 0, 128, 63], "k": 3}}),
            "VECTOR_SEARCH_RESP",
        ),
        (
            json!({"type": "HYBRID_SEARCH", "payload": {"requestId": "h1", "mapName": "m", "queryText": "x", "methods": ["fullText"], "k": 3}}),
            "HYBRID_SEARCH_RESP",
        ),
        (
            json!({"type": "HYBRID_SEARCH_SUB", "payload": {"subscriptionId": "h2", "mapName": "m", "queryText": "x", "methods": ["fullText"], "k": 3}}),
            "HYBRID_SEARCH_RESP",
        ),
        (
            json!({"type": "HYBRID_QUERY_SUBSCRIBE", "payload": {"subscriptionId": "hq", "mapName": "m"}}),
            "ERROR",
        ),
        (json!({"type": "PARTITION_MAP_REQUEST"}), "PARTITION_MAP"),
    ];
    for (request, response_type) in cases {
        c.send(msg(request)).await;
        let reply = c.expect_type(response_type).await;
        match reply {
            Message::EntryProcessBatchResponse(r) => {
                assert_eq!(r.results.len(), 2);
                assert!(r.results.values().all(|o| !o.success));
            }
            Message::Error(e) => {
                assert_eq!(e.payload.code, 501);
                assert!(e.payload.message.contains("HYBRID_QUERY_SUBSCRIBE"));
            }
            Message::PartitionMap(m) => {
                assert_eq!(m.payload.partitions.len(), 271);
                assert!(
                    m.payload
                        .partitions
                        .iter()
                        .all(|p| p.owner_node_id == SERVER_NODE)
                );
                assert_eq!(m.payload.nodes[0].endpoints.websocket, server.url());
            }
            _ => {}
        }
    }
    c.close().await;
    let addr = server.addr().to_string();
    server.stop().await;
    // The partition map's endpoints carry the ephemeral port.
    let redacted = Transcript::default();
    redacted.note(t.text().replace(&addr, "[addr]"));
    snapshot!("unsupported_features", redacted);
}
