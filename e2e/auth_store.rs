//! The auth-store adapter against the real server: the cold-start race of BUG-05 (a fresh
//! device must find a user that exists only on the server), the bounded readiness gate with
//! the network down, and the adapter's CRUD surface end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use topgun::client::TopGunClient;
use topgun::client::auth_store::{
    AuthStore, AuthStoreOptions, Direction, FindManyOptions, Readiness, SortBy, Where, WhereOp,
};
use topgun::protocol::WriteConcern;
use topgun::store::MemoryStore;

use crate::client::{Gate, options, start};
use crate::harness::TestServer;

/// The readiness timeout of tests where the server is reachable: never hit.
const GENEROUS: Duration = Duration::from_secs(20);

/// A fresh client (empty in-memory store) of `user`; `Applied` so a create is on the
/// server once it resolves.
async fn client(server: &TestServer, user: &str, gate: &Gate) -> TopGunClient {
    let mut options = options(server, user);
    options.write_concern = WriteConcern::Applied;
    start(options, Arc::new(MemoryStore::new()), gate).await
}

fn store(client: TopGunClient, ready_timeout: Duration) -> AuthStore {
    AuthStore::new(
        client,
        AuthStoreOptions {
            ready_timeout,
            ..AuthStoreOptions::default()
        },
    )
}

fn record(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn by_email(email: &str) -> Vec<Where> {
    vec![Where::and("email", WhereOp::Eq, json!(email))]
}

/// Client A signs a user up; the record is on the server when this returns.
async fn sign_up_on_server(server: &TestServer) -> Map<String, Value> {
    let a = store(client(server, "alice", &Gate::new(false)).await, GENEROUS);
    let created = a
        .create(
            "user",
            record(json!({"email": "alice@example.com", "name": "Alice"})),
        )
        .await
        .unwrap();
    assert_eq!(a.readiness("user"), Readiness::Ready);
    created
}

#[tokio::test]
async fn a_cold_client_finds_a_user_that_exists_only_on_the_server() {
    let server = TestServer::start().await;
    let created = sign_up_on_server(&server).await;
    assert!(
        created["id"].is_string(),
        "an id was generated: {created:?}"
    );

    // Fresh device, empty local store, asks at once: the gate waits for the first sync.
    let b = store(client(&server, "bob", &Gate::new(false)).await, GENEROUS);
    assert_eq!(b.readiness("user"), Readiness::Pending);
    let found = b
        .find_one("user", &by_email("alice@example.com"))
        .await
        .unwrap();
    assert_eq!(found, Some(created));
    assert_eq!(b.readiness("user"), Readiness::Ready);
}

#[tokio::test]
async fn requests_wait_for_the_first_sync_not_for_the_first_local_answer() {
    let server = TestServer::start().await;
    let created = sign_up_on_server(&server).await;

    // The network is down, so the local map is empty and stays empty until it comes back:
    // the request must still be waiting then, not have answered "not found".
    let gate = Gate::new(true);
    let b_client = client(&server, "bob", &gate).await;
    let b = Arc::new(store(b_client.clone(), GENEROUS));
    let lookups: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.find_one("user", &by_email("alice@example.com")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        lookups.iter().all(|l| !l.is_finished()),
        "both lookups wait on the shared gate while offline"
    );
    assert_eq!(b.readiness("user"), Readiness::Pending);

    gate.set_down(false);
    b_client.reconnect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap().unwrap(), Some(created.clone()));
    }
    assert_eq!(b.readiness("user"), Readiness::Ready);
}

#[tokio::test]
async fn with_the_network_down_the_gate_times_out_visibly_and_lets_requests_through() {
    let server = TestServer::start().await;
    sign_up_on_server(&server).await;

    let timeout = Duration::from_millis(400);
    let b = store(client(&server, "bob", &Gate::new(true)).await, timeout);
    let started = Instant::now();
    let found = b
        .find_one("user", &by_email("alice@example.com"))
        .await
        .unwrap();
    assert!(started.elapsed() >= timeout, "waited for the timeout");
    assert_eq!(found, None, "only local data is available offline");
    assert_eq!(b.readiness("user"), Readiness::TimedOut { after: timeout });

    // The timeout is decided once per model: later requests do not wait again.
    let started = Instant::now();
    assert_eq!(b.count("user", &[]).await.unwrap(), 0);
    assert!(started.elapsed() < timeout, "no second wait");
    // Another model has its own gate.
    assert_eq!(b.readiness("session"), Readiness::Pending);
}

#[tokio::test]
async fn crud_through_the_adapter_reaches_another_client() {
    let server = TestServer::start().await;
    let a = store(client(&server, "alice", &Gate::new(false)).await, GENEROUS);
    for (id, name, age) in [("u1", "Ann", 31), ("u2", "Ben", 25), ("u3", "Cat", 40)] {
        let data = record(json!({"id": id, "name": name, "age": age, "plan": "free"}));
        assert_eq!(a.create("user", data.clone()).await.unwrap(), data);
    }

    let adults = vec![Where::and("age", WhereOp::Gte, json!(30))];
    assert_eq!(a.count("user", &adults).await.unwrap(), 2);
    let sorted = a
        .find_many(
            "user",
            &[],
            FindManyOptions {
                sort_by: Some(SortBy {
                    field: "age".to_owned(),
                    direction: Direction::Desc,
                }),
                offset: Some(1),
                limit: Some(1),
            },
        )
        .await
        .unwrap();
    assert_eq!(sorted.len(), 1);
    assert_eq!(sorted[0]["id"], json!("u1"));

    let upgrade = record(json!({"plan": "pro", "id": "hijack"}));
    let updated = a
        .update(
            "user",
            &[Where::and("id", WhereOp::Eq, json!("u2"))],
            &upgrade,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated["plan"], json!("pro"));
    assert_eq!(updated["id"], json!("u2"), "an update never moves a record");
    assert_eq!(a.update_many("user", &adults, &upgrade).await.unwrap(), 2);
    assert_eq!(
        a.update("user", &by_email("nobody"), &upgrade)
            .await
            .unwrap(),
        None
    );
    a.delete(
        "user",
        &[Where::and("name", WhereOp::StartsWith, json!("C"))],
    )
    .await
    .unwrap();
    let free = vec![Where::and("plan", WhereOp::Eq, json!("free"))];
    assert_eq!(a.delete_many("user", &free).await.unwrap(), 0);

    // A second device sees exactly the result.
    let b = store(client(&server, "bob", &Gate::new(false)).await, GENEROUS);
    let all = b
        .find_many("user", &[], FindManyOptions::default())
        .await
        .unwrap();
    let ids: Vec<_> = all.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [json!("u1"), json!("u2")]);
    assert!(all.iter().all(|r| r["plan"] == json!("pro")));
    assert_eq!(b.map_name("user"), "auth_user");
}
