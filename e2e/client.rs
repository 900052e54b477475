//! The Rust client SDK against the real server over loopback: offline writes, restarts with
//! pending ops, convergence of two clients, live queries, topics, locks, counters, map
//! eviction, and the 100,000-write offline queue (TEST-03).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use topgun::client::connection::{ConnectionConfig, Connector, TcpConnector};
use topgun::client::maps::MapsConfig;
use topgun::client::{ClientEvent, ClientOptions, Seams, TokenSource, TopGunClient};
use topgun::clock::ManualClock;
use topgun::entropy::SeededEntropy;
use topgun::query::Query;
use topgun::store::{BoxFuture, MemoryStore, RedbStore, Store};

use crate::harness::{SERVER_NOW_MS, TestServer, token};

/// Entropy seeds handed to clients, one each.
static NEXT_SEED: AtomicU64 = AtomicU64::new(1);

/// How long a convergence wait may take before the test fails.
const SETTLE: Duration = Duration::from_secs(20);

/// A connector whose network can be unplugged: while down, every connect fails.
#[derive(Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    /// A gate starting unplugged (`down`) or plugged in.
    pub fn new(down: bool) -> Self {
        Self(Arc::new(AtomicBool::new(down)))
    }

    fn down() -> Self {
        Self::new(true)
    }

    pub fn set_down(&self, down: bool) {
        self.0.store(down, Ordering::SeqCst);
    }
}

impl Connector for Gate {
    fn connect<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, std::io::Result<Box<dyn topgun::net::Stream>>> {
        Box::pin(async move {
            if self.0.load(Ordering::SeqCst) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "network unplugged by the test",
                ));
            }
            TcpConnector.connect(url).await
        })
    }
}

/// Options for a client of `user` with a fast reconnect backoff.
pub fn options(server: &TestServer, user: &str) -> ClientOptions {
    let mut options = ClientOptions::new(server.url(), TokenSource::Static(token(user)));
    let mut connection = ConnectionConfig::new(server.url());
    connection.backoff.initial = Duration::from_millis(20);
    connection.backoff.max = Duration::from_millis(200);
    options.connection = connection;
    options
}

/// Starts a client over `store` whose network goes through `gate`.
pub async fn start(options: ClientOptions, store: Arc<dyn Store>, gate: &Gate) -> TopGunClient {
    // Each client draws its own node id from the store-less entropy seam: distinct seeds,
    // or two clients would stamp identical timestamps and OR tags.
    let seed = NEXT_SEED.fetch_add(1, Ordering::SeqCst);
    let seams = Seams {
        store,
        connector: Arc::new(gate.clone()),
        clock: Arc::new(ManualClock::new(SERVER_NOW_MS)),
        entropy: Arc::new(SeededEntropy::new(seed)),
    };
    TopGunClient::start(options, seams).await.unwrap()
}

async fn online(server: &TestServer, user: &str) -> TopGunClient {
    let client = start(
        options(server, user),
        Arc::new(MemoryStore::new()),
        &Gate::default(),
    )
    .await;
    client.wait_synced(SETTLE).await.unwrap();
    client
}

/// Polls `check` until it holds, failing the test after [`SETTLE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open_redb(dir: &Path) -> Arc<dyn Store> {
    for _ in 0..100 {
        if let Ok(store) = RedbStore::open(dir) {
            return Arc::new(store);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot open redb in {}", dir.display());
}

#[tokio::test]
async fn offline_writes_reach_the_server_after_reconnect() {
    let server = TestServer::start().await;
    let gate = Gate::down();
    let writer = start(
        options(&server, "alice"),
        Arc::new(MemoryStore::new()),
        &gate,
    )
    .await;
    let todos = writer.get_map_async::<Value>("todos").await.unwrap();
    let tags = writer.get_or_map_async::<String>("tags").await.unwrap();
    for i in 0..50 {
        todos
            .set(&format!("t{i}"), &json!({"title": format!("todo {i}")}))
            .await
            .unwrap();
    }
    todos.remove("t0").await.unwrap();
    tags.add("t1", &"urgent".to_owned()).await.unwrap();
    tags.add("t1", &"home".to_owned()).await.unwrap();
    tags.remove("t1", &"home".to_owned()).await.unwrap();
    assert_eq!(
        writer.pending_ops().await,
        54,
        "every offline write is pending"
    );
    assert_eq!(
        todos.get("t7").await.unwrap(),
        Some(json!({"title": "todo 7"})),
        "local reads never wait for the network"
    );

    gate.set_down(false);
    writer.reconnect();
    writer.wait_synced(SETTLE).await.unwrap();
    eventually("every op acked", || async {
        writer.pending_ops().await == 0
    })
    .await;

    let reader = online(&server, "bob").await;
    let todos = reader.get_map_async::<Value>("todos").await.unwrap();
    let tags = reader.get_or_map_async::<String>("tags").await.unwrap();
    eventually("the reader pulled the writer's records", || async {
        todos.entries().await.unwrap().len() == 49
    })
    .await;
    assert_eq!(todos.get("t0").await.unwrap(), None, "the remove synced");
    eventually("the OR map synced", || async {
        tags.values("t1").await.unwrap() == vec!["urgent".to_owned()]
    })
    .await;
}

#[tokio::test]
async fn pending_ops_survive_a_killed_client() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::down();
    {
        let client = start(
            options(&server, "alice"),
            open_redb(dir.path()).await,
            &gate,
        )
        .await;
        let notes = client.get_map_async::<String>("notes").await.unwrap();
        for i in 0..20 {
            notes
                .set(&format!("n{i}"), &format!("note {i}"))
                .await
                .unwrap();
        }
        assert_eq!(client.pending_ops().await, 20);
        // Killed: no close, no flush; only what the store committed survives.
        drop(notes);
        client.close().await;
    }
    gate.set_down(false);
    let client = start(
        options(&server, "alice"),
        open_redb(dir.path()).await,
        &gate,
    )
    .await;
    assert_eq!(client.pending_ops().await, 20, "the op log came back");
    client.wait_synced(SETTLE).await.unwrap();
    eventually("the restored ops were acked", || async {
        client.pending_ops().await == 0
    })
    .await;

    let reader = online(&server, "bob").await;
    let notes = reader.get_map_async::<String>("notes").await.unwrap();
    eventually("the server holds every note", || async {
        notes.entries().await.unwrap().len() == 20
    })
    .await;
}

#[tokio::test]
async fn two_clients_converge_on_lww_and_or_maps() {
    let server = TestServer::start().await;
    let a = online(&server, "alice").await;
    let b = online(&server, "bob").await;
    let (a_lww, b_lww) = (
        a.get_map_async::<i64>("scores").await.unwrap(),
        b.get_map_async::<i64>("scores").await.unwrap(),
    );
    let (a_or, b_or) = (
        a.get_or_map_async::<String>("members").await.unwrap(),
        b.get_or_map_async::<String>("members").await.unwrap(),
    );
    for i in 0..10 {
        a_lww.set(&format!("k{i}"), &i).await.unwrap();
        b_lww.set(&format!("k{i}"), &(100 + i)).await.unwrap();
        a_or.add("team", &format!("a{i}")).await.unwrap();
        b_or.add("team", &format!("b{i}")).await.unwrap();
    }
    b_or.remove("team", &"b0".to_owned()).await.unwrap();
    eventually("both clients drained their op logs", || async {
        a.pending_ops().await == 0 && b.pending_ops().await == 0
    })
    .await;
    // A reconnect runs the Merkle walk both ways.
    a.reconnect();
    b.reconnect();
    eventually("LWW and OR states are equal", || async {
        a_lww.entries().await.unwrap() == b_lww.entries().await.unwrap()
            && a_or.entries().await.unwrap() == b_or.entries().await.unwrap()
    })
    .await;
    let members = a_or.values("team").await.unwrap();
    assert_eq!(members.len(), 19, "20 adds, one remove: {members:?}");
    let k3 = a_lww.get("k3").await.unwrap();
    assert!(
        matches!(k3, Some(3 | 103)),
        "one of the two writes wins everywhere: {k3:?}"
    );
}

/// An OR remove made while a client was offline reaches it through the Merkle walk, and the
/// walk persists the new tombstone (only the new ones: the server repeats its whole set).
#[tokio::test]
async fn an_or_remove_learned_by_sync_is_persisted() {
    let server = TestServer::start().await;
    let gate = Gate::default();
    let store = Arc::new(MemoryStore::new());
    let a = start(options(&server, "alice"), store.clone(), &gate).await;
    a.wait_synced(SETTLE).await.unwrap();
    let a_tags = a.get_or_map_async::<String>("tags").await.unwrap();
    for tag in ["x", "y"] {
        a_tags.add("k", &tag.to_owned()).await.unwrap();
    }
    eventually("the adds are acked", || async {
        a.pending_ops().await == 0
    })
    .await;

    gate.set_down(true);
    a.reconnect();
    let b = online(&server, "bob").await;
    let b_tags = b.get_or_map_async::<String>("tags").await.unwrap();
    eventually("bob sees both adds", || async {
        b_tags.values("k").await.unwrap().len() == 2
    })
    .await;
    b_tags.remove("k", &"x".to_owned()).await.unwrap();
    eventually("bob's remove is acked", || async {
        b.pending_ops().await == 0
    })
    .await;

    gate.set_down(false);
    a.reconnect();
    eventually("alice's walk drops x", || async {
        a_tags.values("k").await.unwrap() == ["y".to_owned()]
    })
    .await;
    let stored = store.load_map("tags").await.unwrap();
    let Some(topgun::store::MapSnapshot::Or {
        records,
        tombstones,
    }) = stored
    else {
        panic!("tags is not a stored OR map: {stored:?}");
    };
    let values: Vec<&Value> = records
        .values()
        .flatten()
        .map(|record| &record.value)
        .collect();
    assert_eq!(values, [&json!("y")], "{records:?}");
    assert_eq!(tombstones.len(), 1, "x's tag: {tombstones:?}");
}

#[tokio::test]
async fn live_queries_see_local_writes_at_once_and_remote_writes_soon() {
    let server = TestServer::start().await;
    let a = online(&server, "alice").await;
    let b = online(&server, "bob").await;
    let query: Query = serde_json::from_value(json!({"where": {"done": false}})).unwrap();
    let mut live = b.query("tasks", query).await.unwrap();
    let first = live.next().await.unwrap();
    assert!(format!("{first:?}").contains("Changed"), "{first:?}");

    let tasks = b.get_map_async::<Value>("tasks").await.unwrap();
    tasks.set("mine", &json!({"done": false})).await.unwrap();
    let local = tokio::time::timeout(SETTLE, live.next())
        .await
        .unwrap()
        .unwrap();
    assert!(format!("{local:?}").contains("mine"), "{local:?}");

    let theirs = a.get_map_async::<Value>("tasks").await.unwrap();
    theirs.set("theirs", &json!({"done": false})).await.unwrap();
    theirs
        .set("finished", &json!({"done": true}))
        .await
        .unwrap();
    let deadline = Instant::now() + SETTLE;
    loop {
        let event = tokio::time::timeout(SETTLE, live.next())
            .await
            .unwrap()
            .unwrap();
        let text = format!("{event:?}");
        assert!(
            !text.contains("finished"),
            "a non-matching row leaked: {text}"
        );
        if text.contains("theirs") {
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[tokio::test]
async fn topic_messages_published_offline_arrive_in_order() {
    let server = TestServer::start().await;
    let listener = online(&server, "alice").await;
    let mut inbox = listener.topic("chat").subscribe().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let gate = Gate::down();
    let publisher = start(options(&server, "bob"), Arc::new(MemoryStore::new()), &gate).await;
    let chat = publisher.topic("chat");
    for i in 0..3 {
        chat.publish(&json!({"n": i})).await.unwrap();
    }
    gate.set_down(false);
    publisher.reconnect();
    for i in 0..3 {
        let message = tokio::time::timeout(SETTLE, inbox.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.data, json!({"n": i}));
    }
}

#[tokio::test]
async fn locks_are_exclusive_and_fencing_tokens_grow() {
    let server = TestServer::start().await;
    let a = online(&server, "alice").await;
    let b = online(&server, "bob").await;
    let held = a.lock("deploy", Duration::from_secs(30)).await.unwrap();
    let first = held.fencing_token();

    let waiting = tokio::spawn(async move {
        let guard = b.lock("deploy", Duration::from_secs(30)).await.unwrap();
        (guard.fencing_token(), b, guard)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "bob must wait while alice holds the lock"
    );
    held.release().await;
    let (second, _b, _guard) = tokio::time::timeout(SETTLE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(second > first, "fencing tokens grow: {first} then {second}");
}

#[tokio::test]
async fn counters_from_two_clients_converge() {
    let server = TestServer::start().await;
    let a = online(&server, "alice").await;
    let b = online(&server, "bob").await;
    let likes_a = a.counter("likes").await.unwrap();
    let likes_b = b.counter("likes").await.unwrap();
    for _ in 0..5 {
        likes_a.increment().await.unwrap();
    }
    likes_b.add(-2.0).await.unwrap();
    eventually("both see 3", || async {
        likes_a.get() == 3.0 && likes_b.get() == 3.0
    })
    .await;
}

#[tokio::test]
async fn idle_maps_are_evicted_and_reload_from_the_store() {
    let server = TestServer::start().await;
    let mut options = options(&server, "alice");
    options.maps = MapsConfig { max_open_maps: 4 };
    let client = start(options, Arc::new(MemoryStore::new()), &Gate::default()).await;
    client.wait_synced(SETTLE).await.unwrap();
    let mut events = client.events();
    for m in 0..20 {
        let map = client.get_map_async::<i64>(&format!("m{m}")).await.unwrap();
        for k in 0..10 {
            map.set(&format!("k{k}"), &(m * 100 + k)).await.unwrap();
        }
    }
    eventually("ops acked, so maps become evictable", || async {
        client.pending_ops().await == 0
    })
    .await;
    let last = client.get_map_async::<i64>("m19").await.unwrap();
    drop(last);
    for m in 0..20 {
        let map = client.get_map_async::<i64>(&format!("m{m}")).await.unwrap();
        assert_eq!(map.get("k3").await.unwrap(), Some(m * 100 + 3), "map m{m}");
    }
    let mut evicted = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, ClientEvent::Maps(_)) {
            evicted += 1;
        }
    }
    assert!(evicted >= 16, "only {evicted} evictions reported");
}

/// TEST-03: 100,000 writes made offline sync once the client reconnects, with the op log
/// streamed in bounded chunks. Prints the time taken and the process's peak memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_offline_writes_sync() {
    const WRITES: usize = 100_000;
    let _alone = crate::harness::EXCLUSIVE.lock().await;
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::down();
    let client = start(
        options(&server, "alice"),
        open_redb(dir.path()).await,
        &gate,
    )
    .await;
    let map = Arc::new(client.get_map_async::<u64>("bulk").await.unwrap());

    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let map = map.clone();
        writers.spawn(async move {
            for i in (w..WRITES).step_by(8) {
                map.set(&format!("k{i}"), &(i as u64)).await.unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let written = started.elapsed();
    let rss_after_writes = (rss_kib("VmRSS:"), rss_kib("VmHWM:"));
    assert_eq!(client.pending_ops().await, WRITES as u64);

    gate.set_down(false);
    client.reconnect();
    let synced = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while client.pending_ops().await > 0 {
        assert!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = synced.elapsed();
    let rss_after_drain = (rss_kib("VmRSS:"), rss_kib("VmHWM:"));
    let reader = online(&server, "bob").await;
    let bulk = reader.get_map_async::<u64>("bulk").await.unwrap();
    // A fresh client's Merkle walk of 100k records takes a while in a debug build.
    reader
        .wait_map_synced("bulk", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(bulk.entries().await.unwrap().len(), WRITES);
    println!(
        "TEST-03: {WRITES} offline writes recorded in {written:?}, drained to the server in \
         {drained:?}; process (RSS, peak) KiB after the writes {rss_after_writes:?}, after \
         the drain {rss_after_drain:?}, after a fresh client's full sync {:?} (server, both \
         clients and the test in one process)",
        (rss_kib("VmRSS:"), rss_kib("VmHWM:"))
    );
}

/// A `/proc/self/status` memory line (`VmRSS:` now, `VmHWM:` peak) in KiB.
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_map_subscription_sees_remote_changes() {
    let server = TestServer::start().await;
    let a = online(&server, "alice").await;
    let b = online(&server, "bob").await;
    let watched = b.get_map_async::<String>("profiles").await.unwrap();
    let mut changes = watched.subscribe().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let profiles = a.get_map_async::<String>("profiles").await.unwrap();
    profiles.set("alice", &"hello".to_owned()).await.unwrap();
    let (key, value) = tokio::time::timeout(SETTLE, changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((key.as_str(), value.as_deref()), ("alice", Some("hello")));
    assert_eq!(
        watched.get("alice").await.unwrap().as_deref(),
        Some("hello")
    );
}

#[tokio::test]
async fn full_text_search_one_shot_and_live() {
    let server = TestServer::with_config(
        r#"
[[permissions]]
role = "USER"
map = "articles"
actions = ["ALL"]

[search.articles]
fields = ["title"]
"#,
    )
    .await;
    let client = online(&server, "alice").await;
    let offline_search = start(
        options(&server, "carol"),
        Arc::new(MemoryStore::new()),
        &Gate::down(),
    )
    .await;
    assert!(
        offline_search
            .search("articles", "rust", Default::default())
            .await
            .is_err(),
        "a one-shot search needs the server"
    );
    let articles = client.get_map_async::<Value>("articles").await.unwrap();
    let concern = topgun::client::WriteOptions {
        concern: topgun::protocol::WriteConcern::Applied,
        ttl_ms: None,
    };
    articles
        .set_with("a1", &json!({"title": "rust sync engines"}), concern)
        .await
        .unwrap();
    articles
        .set_with("a2", &json!({"title": "gardening"}), concern)
        .await
        .unwrap();
    let hits = client
        .search("articles", "rust", Default::default())
        .await
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.key.as_str()).collect::<Vec<_>>(),
        ["a1"]
    );

    let mut live = client
        .search_subscribe("articles", "rust", Default::default())
        .await
        .unwrap();
    articles
        .set_with("a3", &json!({"title": "rust in production"}), concern)
        .await
        .unwrap();
    let deadline = Instant::now() + SETTLE;
    while live.hits().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "live search never saw a3: {:?}",
            live.hits()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), live.changed()).await;
    }
    let mut keys: Vec<String> = live.hits().into_iter().map(|h| h.key).collect();
    keys.sort();
    assert_eq!(keys, ["a1", "a3"]);
}

#[tokio::test]
async fn entries_where_copies_out_only_the_accepted_entries_in_key_order() {
    let server = TestServer::start().await;
    let client = online(&server, "alice").await;
    let users = client.get_map_async::<Value>("users").await.unwrap();
    for (key, role) in [
        ("u3", "admin"),
        ("u1", "member"),
        ("u2", "admin"),
        ("x9", "admin"),
    ] {
        users.set(key, &json!({ "role": role })).await.unwrap();
    }
    let admins = users
        .entries_where(|key, value| key.starts_with('u') && value["role"] == "admin")
        .await
        .unwrap();
    assert_eq!(
        admins,
        [
            ("u2".to_owned(), json!({"role": "admin"})),
            ("u3".to_owned(), json!({"role": "admin"})),
        ]
    );
    assert_eq!(users.entries().await.unwrap().len(), 4);
}
