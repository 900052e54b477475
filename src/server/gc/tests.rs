//! Unit tests of the GC pass against a real `Shared` over a memory store.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::clock::ManualClock;
use crate::entropy::SeededEntropy;
use crate::merkle::Combine;
use crate::protocol::Message;
use crate::protocol::codec::{Frame, decode};
use crate::record::OrMapRecord;
use crate::replica::MapKind;
use crate::security::Permissions;
use crate::server::config::Limits;
use crate::server::connections::{Outbound, outbound_queue};
use crate::server::{Server, ServerOptions};
use crate::store::{MapSnapshot, MemoryStore, Store};

const NOW: u64 = 1_000_000;
const NODE: &str = "server-gc";

struct Fixture {
    server: Server,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new(gc_age_ms: u64) -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(NOW));
        let options = ServerOptions {
            node_id: NODE.to_owned(),
            jwt_secret: "gc-test-secret-0123456789abcdef0123".to_owned(),
            permissions: Permissions::development_default(),
            limits: Limits {
                gc_age_ms,
                ..Limits::default()
            },
            max_connections: 10,
            debug: false,
            default_combine: Combine::Fmix,
            search: Default::default(),
        };
        let server = Server::new(
            options,
            store.clone(),
            clock.clone(),
            Arc::new(SeededEntropy::new(1)),
        )
        .unwrap();
        Self {
            server,
            store,
            clock,
        }
    }

    fn shared(&self) -> &Shared {
        self.server.shared()
    }

    async fn map(&self, name: &str, kind: MapKind) -> MapHandle {
        self.shared()
            .maps
            .get(name, kind, Some(kind))
            .await
            .unwrap()
    }

    /// Merges into memory and the store, as the write path would.
    async fn put_lww(&self, map: &str, key: &str, record: LwwRecord) {
        let handle = self.map(map, MapKind::Lww).await;
        if let Replica::Lww(r) = &mut *handle.lock() {
            r.merge(key, record.clone());
        }
        let mut batch = WriteBatch::new();
        batch.push(Mutation::put_lww(map, key, &record).unwrap());
        self.store.commit(batch).await.unwrap();
    }

    async fn or_add(&self, map: &str, key: &str, record: OrMapRecord) {
        let handle = self.map(map, MapKind::Or).await;
        let records: Vec<OrMapRecord> = match &mut *handle.lock() {
            Replica::Or(r) => {
                r.apply(key, record);
                r.map().records(key).cloned().collect()
            }
            Replica::Lww(_) => unreachable!(),
        };
        let mut batch = WriteBatch::new();
        batch.push(Mutation::PutOrKey {
            map: map.to_owned(),
            key: key.to_owned(),
            records,
        });
        self.store.commit(batch).await.unwrap();
    }

    async fn or_remove(&self, map: &str, key: &str, tag: &str) {
        let handle = self.map(map, MapKind::Or).await;
        let records: Vec<OrMapRecord> = match &mut *handle.lock() {
            Replica::Or(r) => {
                r.apply_tombstone(tag);
                r.map().records(key).cloned().collect()
            }
            Replica::Lww(_) => unreachable!(),
        };
        let mut batch = WriteBatch::new();
        batch.push(Mutation::AddOrTombstones {
            map: map.to_owned(),
            tags: vec![tag.to_owned()],
        });
        batch.push(Mutation::PutOrKey {
            map: map.to_owned(),
            key: key.to_owned(),
            records,
        });
        self.store.commit(batch).await.unwrap();
    }

    async fn stored(&self, map: &str) -> MapSnapshot {
        self.store.load_map(map).await.unwrap().unwrap()
    }
}

fn lww(value: Option<serde_json::Value>, millis: u64, ttl_ms: Option<u64>) -> LwwRecord {
    LwwRecord {
        value: value.map(Into::into),
        timestamp: Timestamp::new(millis, 0, "client"),
        ttl_ms,
    }
}

fn or_record(value: serde_json::Value, millis: u64, ttl_ms: Option<u64>) -> OrMapRecord {
    let timestamp = Timestamp::new(millis, 0, "client");
    OrMapRecord {
        value,
        tag: timestamp.to_string(),
        timestamp,
        ttl_ms,
    }
}

#[tokio::test]
async fn expired_lww_record_becomes_a_persisted_tombstone_at_millis_plus_ttl() {
    let f = Fixture::new(u64::MAX);
    f.put_lww("m", "gone", lww(Some(json!(1)), NOW - 500, Some(100)))
        .await;
    f.put_lww("m", "alive", lww(Some(json!(2)), NOW - 500, Some(10_000)))
        .await;
    f.put_lww("m", "forever", lww(Some(json!(3)), NOW - 500, None))
        .await;

    let report = collect(f.shared()).await;
    assert_eq!(report.expired, 1);
    assert_eq!(report.pruned, 0);

    let expected = LwwRecord {
        value: None,
        timestamp: Timestamp::new(NOW - 400, 0, NODE),
        ttl_ms: None,
    };
    let handle = f.map("m", MapKind::Lww).await;
    if let Replica::Lww(r) = &*handle.lock() {
        assert_eq!(r.map().record("gone"), Some(&expected));
        assert_eq!(r.map().get("alive", NOW), Some(&json!(2)));
        assert_eq!(r.map().get("forever", NOW), Some(&json!(3)));
    }
    let MapSnapshot::Lww { records } = f.stored("m").await else {
        panic!("LWW map expected")
    };
    assert_eq!(records.get("gone"), Some(&expected));

    let shared = f.shared();
    let (journal, _) = shared
        .journal
        .read(&*shared.store, 0, 100, |e| e.key == "gone")
        .await
        .unwrap();
    let expiry = journal.last().expect("the expiry is journaled");
    assert_eq!(expiry.event_type, crate::protocol::JournalEventType::Delete);
    assert_eq!(expiry.previous_value, Some(json!(1)));

    let again = collect(f.shared()).await;
    assert_eq!(again.expired, 0, "a tombstone never expires twice");
}

#[tokio::test]
async fn expired_or_record_is_tombstoned_in_memory_and_store() {
    let f = Fixture::new(u64::MAX);
    let short = or_record(json!("a"), NOW - 500, Some(100));
    let long = or_record(json!("b"), NOW - 499, None);
    f.or_add("tags", "k", short.clone()).await;
    f.or_add("tags", "k", long.clone()).await;

    let report = collect(f.shared()).await;
    assert_eq!(report.expired, 1);

    let handle = f.map("tags", MapKind::Or).await;
    if let Replica::Or(r) = &*handle.lock() {
        assert!(r.map().is_tombstoned(&short.tag));
        assert_eq!(
            r.map().records("k").cloned().collect::<Vec<_>>(),
            vec![long.clone()]
        );
    }
    let MapSnapshot::Or {
        records,
        tombstones,
    } = f.stored("tags").await
    else {
        panic!("OR map expected")
    };
    assert!(tombstones.contains(&short.tag));
    assert_eq!(records.get("k"), Some(&vec![long]));
}

#[tokio::test]
async fn tombstones_older_than_the_horizon_are_pruned_from_memory_and_store() {
    let f = Fixture::new(1_000);
    f.put_lww("m", "old", lww(None, NOW - 2_000, None)).await;
    f.put_lww("m", "young", lww(None, NOW - 10, None)).await;
    f.put_lww("m", "live", lww(Some(json!(1)), NOW - 5_000, None))
        .await;
    let old = or_record(json!(1), NOW - 2_000, None);
    let young = or_record(json!(2), NOW - 10, None);
    f.or_add("o", "k", old.clone()).await;
    f.or_add("o", "k", young.clone()).await;
    f.or_remove("o", "k", &old.tag).await;
    f.or_remove("o", "k", &young.tag).await;

    let report = collect(f.shared()).await;
    assert_eq!(report.horizon, Timestamp::new(NOW - 1_000, 0, ""));
    assert_eq!(report.pruned, 2);

    let MapSnapshot::Lww { records } = f.stored("m").await else {
        panic!("LWW map expected")
    };
    let keys: Vec<&str> = records.keys().map(String::as_str).collect();
    assert_eq!(keys, ["live", "young"]);
    let handle = f.map("m", MapKind::Lww).await;
    assert_eq!(
        handle.lock().merkle().len(),
        2,
        "pruned keys leave the tree"
    );

    let MapSnapshot::Or { tombstones, .. } = f.stored("o").await else {
        panic!("OR map expected")
    };
    assert_eq!(
        tombstones.into_iter().collect::<Vec<_>>(),
        vec![young.tag.clone()]
    );
    let handle = f.map("o", MapKind::Or).await;
    if let Replica::Or(r) = &*handle.lock() {
        assert_eq!(
            r.map().tombstones().collect::<Vec<_>>(),
            vec![young.tag.as_str()]
        );
    }
}

#[tokio::test]
async fn or_tombstones_stay_bounded_under_churn() {
    const GC_AGE: u64 = 200;
    const ROUNDS: u64 = 3_000;
    const GC_EVERY: u64 = 100;
    let f = Fixture::new(GC_AGE);
    let mut max_memory = 0;
    let mut max_store = 0;
    for i in 0..ROUNDS {
        // One add and its remove per simulated millisecond of the server clock.
        let now = NOW + i;
        f.clock.set(now);
        let record = or_record(json!(i), now, None);
        f.or_add("churn", "hot", record.clone()).await;
        f.or_remove("churn", "hot", &record.tag).await;
        if i % GC_EVERY == GC_EVERY - 1 {
            collect(f.shared()).await;
            let handle = f.map("churn", MapKind::Or).await;
            let in_memory = match &*handle.lock() {
                Replica::Or(r) => r.map().tombstones().count(),
                Replica::Lww(_) => unreachable!(),
            };
            let MapSnapshot::Or { tombstones, .. } = f.stored("churn").await else {
                panic!("OR map expected")
            };
            max_memory = max_memory.max(in_memory);
            max_store = max_store.max(tombstones.len());
        }
    }
    // Right after a pass only tags within the GC age survive.
    let bound = usize::try_from(GC_AGE + 1).unwrap();
    assert!(max_memory <= bound, "memory held {max_memory} tombstones");
    assert!(max_store <= bound, "store held {max_store} tombstones");
    assert!(
        max_memory > 0,
        "recent tombstones are kept until the horizon"
    );
}

#[tokio::test]
async fn large_maps_expire_in_slices_and_all_records_expire() {
    let f = Fixture::new(u64::MAX);
    let count = SLICE * 2 + 7;
    let handle = f.map("big", MapKind::Lww).await;
    if let Replica::Lww(r) = &mut *handle.lock() {
        for i in 0..count {
            r.merge(&format!("k{i:05}"), lww(Some(json!(i)), NOW - 100, Some(1)));
        }
    }
    let report = collect(f.shared()).await;
    assert_eq!(report.expired, count);
    if let Replica::Lww(r) = &*handle.lock() {
        assert!(r.map().records().all(|(_, record)| record.is_tombstone()));
    }
    let MapSnapshot::Lww { records } = f.stored("big").await else {
        panic!("LWW map expected")
    };
    assert_eq!(records.len(), count);
}

#[tokio::test]
async fn gc_prune_goes_to_authenticated_open_connections_only() {
    let f = Fixture::new(1_000);
    let shared = f.shared();
    let (authed, mut authed_rx) = outbound_queue(shared.connections.next_id(), 8);
    let (anonymous, mut anonymous_rx) = outbound_queue(shared.connections.next_id(), 8);
    let (closed, _closed_rx) = outbound_queue(shared.connections.next_id(), 8);
    for handle in [&authed, &anonymous, &closed] {
        shared.connections.admit(handle.clone());
    }
    shared.gc_audience.admit(authed.id);
    shared.gc_audience.admit(closed.id);
    shared.connections.remove(closed.id);

    collect(shared).await;

    let Ok(Outbound::Binary(bytes)) = authed_rx.try_recv() else {
        panic!("authenticated connection gets GC_PRUNE")
    };
    let Message::GcPrune(prune) = decode(Frame::Binary(&bytes)).unwrap() else {
        panic!("GC_PRUNE expected")
    };
    assert_eq!(prune.payload.older_than, Timestamp::new(NOW - 1_000, 0, ""));
    assert!(anonymous_rx.try_recv().is_err(), "no GC_PRUNE before AUTH");
    assert_eq!(
        shared.gc_audience.members(&shared.connections).len(),
        1,
        "closed connections leave the audience"
    );
}

#[test]
fn horizon_saturates_at_zero() {
    assert_eq!(horizon(500, 1_000), Timestamp::new(0, 0, ""));
    assert_eq!(horizon(5_000, 1_000), Timestamp::new(4_000, 0, ""));
}

proptest! {
    /// Sliced expiry yields exactly the map `LwwReplica::expire` yields.
    #[test]
    fn sliced_expiry_matches_whole_map_expiry(
        records in proptest::collection::btree_map(
            "[a-e]{1,3}",
            (any::<bool>(), 0u64..200, proptest::option::of(1u64..150)),
            0..40,
        ),
        now in 0u64..400,
    ) {
        let replica = LwwReplica::from_records(records.into_iter().map(|(key, (live, millis, ttl))| {
            let value = live.then(|| json!(millis));
            (key, lww(value, millis, ttl))
        }));
        let mut whole = replica.clone();
        whole.expire(now, NODE);
        let mut sliced = replica.clone();
        let Expiring::Lww(keys) = expiring(&Replica::Lww(replica), now) else {
            unreachable!()
        };
        for slice in keys.chunks(3) {
            expire_lww(&mut sliced, "m", slice, now, NODE);
        }
        prop_assert_eq!(sliced.map(), whole.map());
        prop_assert_eq!(sliced.merkle().root(Combine::Fmix), whole.merkle().root(Combine::Fmix));
    }
}
