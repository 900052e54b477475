//! The conformance suite every [`Store`] backend must pass. Each case takes a fresh, empty
//! store; a backend's test module instantiates all cases with
//! `store_conformance_tests!(fixture)`, where `fixture` evaluates to `(guard, Arc<Backend>)`
//! and the guard keeps backing resources (such as a temporary directory) alive.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{CounterSnapshot, MapKind, MapSnapshot, Mutation, Store, StoreError, WriteBatch};
use crate::hlc::Timestamp;
use crate::record::{LwwRecord, OrMapRecord};

/// Generates one `#[tokio::test]` per conformance case for a backend fixture.
macro_rules! store_conformance_tests {
    ($fixture:expr) => {
        $crate::store::conformance::store_conformance_tests!(@cases $fixture;
            round_trips_lww_records,
            round_trips_or_records_and_tombstones,
            map_kind_is_fixed_at_first_touch,
            removals_do_not_create_maps,
            forget_withdraws_only_the_named_record,
            failed_batch_changes_nothing,
            mutations_apply_in_batch_order,
            out_of_order_commits_never_regress,
            counters_round_trip_and_are_replaced,
            fencing_tokens_never_decrease,
            meta_round_trips_bytes,
            clear_map_forgets_only_that_map,
            names_and_keys_never_collide,
            list_maps_reports_kinds_sorted,
            close_rejects_later_calls,
            journal_reads_in_sequence_order_from_a_cursor,
            journal_trim_keeps_the_last_sequence,
            journal_appends_replace_stored_entries,
        );
    };
    (@cases $fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let (_guard, store) = $fixture;
                $crate::store::conformance::$case(&*store).await;
            }
        )*
    };
}
pub(crate) use store_conformance_tests;

fn lww(value: Option<Value>, millis: u64) -> LwwRecord {
    LwwRecord {
        value: value.map(Into::into),
        timestamp: Timestamp::new(millis, 0, "node-a"),
        ttl_ms: None,
    }
}

fn or_record(value: Value, millis: u64) -> OrMapRecord {
    OrMapRecord {
        value,
        timestamp: Timestamp::new(millis, 0, "node-a"),
        tag: format!("{millis}:0:node-a"),
        ttl_ms: None,
    }
}

fn put_lww(map: &str, key: &str, record: LwwRecord) -> Mutation {
    Mutation::put_lww(map, key, &record).unwrap()
}

fn put_or(map: &str, key: &str, records: Vec<OrMapRecord>) -> Mutation {
    Mutation::PutOrKey {
        map: map.into(),
        key: key.into(),
        records,
    }
}

fn tags(tags: &[&str]) -> Vec<String> {
    tags.iter().map(|t| (*t).to_owned()).collect()
}

async fn commit(store: &dyn Store, mutations: Vec<Mutation>) -> Result<(), StoreError> {
    store.commit(WriteBatch::from(mutations)).await
}

async fn lww_records(store: &dyn Store, map: &str) -> BTreeMap<String, LwwRecord> {
    match store.load_map(map).await.unwrap() {
        Some(MapSnapshot::Lww { records }) => records,
        other => panic!("expected LWW map {map:?}, got {other:?}"),
    }
}

fn assert_kind_mismatch(result: Result<(), StoreError>, existing: MapKind, requested: MapKind) {
    match result {
        Err(StoreError::KindMismatch {
            existing: e,
            requested: r,
            ..
        }) => assert_eq!((e, r), (existing, requested)),
        other => panic!("expected a kind mismatch, got {other:?}"),
    }
}

pub(crate) async fn round_trips_lww_records(store: &dyn Store) {
    assert_eq!(store.load_map("users").await.unwrap(), None);
    let with_ttl = LwwRecord {
        ttl_ms: Some(5_000),
        ..lww(Some(json!("temp")), 3)
    };
    commit(
        store,
        vec![
            put_lww(
                "users",
                "a",
                lww(Some(json!({"name": "Ann", "tags": [1, 2.5, null]})), 1),
            ),
            put_lww("users", "b", lww(None, 2)),
            put_lww("users", "c", with_ttl.clone()),
        ],
    )
    .await
    .unwrap();
    let expected = BTreeMap::from([
        (
            "a".to_owned(),
            lww(Some(json!({"name": "Ann", "tags": [1, 2.5, null]})), 1),
        ),
        ("b".to_owned(), lww(None, 2)),
        ("c".to_owned(), with_ttl),
    ]);
    assert_eq!(lww_records(store, "users").await, expected);

    commit(
        store,
        vec![
            put_lww("users", "a", lww(Some(json!(u64::MAX)), 9)),
            Mutation::DeleteLww {
                map: "users".into(),
                key: "b".into(),
            },
        ],
    )
    .await
    .unwrap();
    let records = lww_records(store, "users").await;
    assert_eq!(records.keys().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(records["a"], lww(Some(json!(u64::MAX)), 9));
}

pub(crate) async fn round_trips_or_records_and_tombstones(store: &dyn Store) {
    let (r1, r2, r3) = (
        or_record(json!("x"), 1),
        or_record(json!({"n": -1}), 2),
        or_record(Value::Null, 3),
    );
    commit(
        store,
        vec![
            put_or("todos", "k1", vec![r1.clone(), r2.clone()]),
            put_or("todos", "k2", vec![r3.clone()]),
            Mutation::AddOrTombstones {
                map: "todos".into(),
                tags: tags(&["0:0:a", "0:1:a"]),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        store.load_map("todos").await.unwrap(),
        Some(MapSnapshot::Or {
            records: BTreeMap::from([
                ("k1".to_owned(), vec![r1.clone(), r2.clone()]),
                ("k2".to_owned(), vec![r3.clone()]),
            ]),
            tombstones: BTreeSet::from(["0:0:a".to_owned(), "0:1:a".to_owned()]),
        })
    );

    // Removing r1 and r3: their tags become tombstones and the keys' records are merged
    // minus tombstoned tags, so k2 is left empty and disappears.
    commit(
        store,
        vec![
            Mutation::AddOrTombstones {
                map: "todos".into(),
                tags: vec![r1.tag.clone(), r3.tag.clone()],
            },
            put_or("todos", "k1", vec![r2.clone()]),
            put_or("todos", "k2", vec![]),
            Mutation::RemoveOrTombstones {
                map: "todos".into(),
                tags: tags(&["0:0:a", "never-added"]),
            },
            Mutation::AddOrTombstones {
                map: "todos".into(),
                tags: tags(&["0:1:a", "5:0:b"]),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        store.load_map("todos").await.unwrap(),
        Some(MapSnapshot::Or {
            records: BTreeMap::from([("k1".to_owned(), vec![r2.clone()])]),
            tombstones: BTreeSet::from([
                "0:1:a".to_owned(),
                "5:0:b".to_owned(),
                r1.tag.clone(),
                r3.tag.clone(),
            ]),
        })
    );

    // A late commit carrying the removed r1 cannot bring it back; a new record joins.
    let r4 = or_record(json!("late"), 4);
    commit(store, vec![put_or("todos", "k1", vec![r1, r4.clone()])])
        .await
        .unwrap();
    match store.load_map("todos").await.unwrap() {
        Some(MapSnapshot::Or { records, .. }) => assert_eq!(records["k1"], vec![r2, r4]),
        other => panic!("expected OR map, got {other:?}"),
    }
}

pub(crate) async fn map_kind_is_fixed_at_first_touch(store: &dyn Store) {
    let set_kind = |map: &str, kind| Mutation::SetMapKind {
        map: map.into(),
        kind,
    };
    commit(store, vec![set_kind("m", MapKind::Lww)])
        .await
        .unwrap();
    assert_eq!(
        store.load_map("m").await.unwrap(),
        Some(MapSnapshot::empty(MapKind::Lww))
    );
    assert_kind_mismatch(
        commit(store, vec![set_kind("m", MapKind::Or)]).await,
        MapKind::Lww,
        MapKind::Or,
    );
    assert_kind_mismatch(
        commit(store, vec![put_or("m", "k", vec![or_record(json!(1), 1)])]).await,
        MapKind::Lww,
        MapKind::Or,
    );
    assert_kind_mismatch(
        commit(
            store,
            vec![Mutation::RemoveOrTombstones {
                map: "m".into(),
                tags: tags(&["t"]),
            }],
        )
        .await,
        MapKind::Lww,
        MapKind::Or,
    );
    commit(store, vec![set_kind("m", MapKind::Lww)])
        .await
        .unwrap();

    commit(
        store,
        vec![Mutation::AddOrTombstones {
            map: "o".into(),
            tags: vec![],
        }],
    )
    .await
    .unwrap();
    assert_kind_mismatch(
        commit(store, vec![put_lww("o", "k", lww(None, 1))]).await,
        MapKind::Or,
        MapKind::Lww,
    );
    assert_kind_mismatch(
        commit(
            store,
            vec![Mutation::DeleteLww {
                map: "o".into(),
                key: "k".into(),
            }],
        )
        .await,
        MapKind::Or,
        MapKind::Lww,
    );
    assert_eq!(
        store.load_map("o").await.unwrap(),
        Some(MapSnapshot::empty(MapKind::Or))
    );
}

pub(crate) async fn forget_withdraws_only_the_named_record(store: &dyn Store) {
    commit(
        store,
        vec![
            put_lww("m", "a", lww(Some(json!(1)), 10)),
            put_lww("m", "b", lww(Some(json!(2)), 20)),
        ],
    )
    .await
    .unwrap();
    let forget = |key: &str, millis| Mutation::ForgetLww {
        map: "m".into(),
        key: key.into(),
        timestamp: Timestamp::new(millis, 0, "node-a"),
    };
    // `b` was overwritten since the withdrawn write: it stays.
    commit(store, vec![forget("a", 10), forget("b", 19)])
        .await
        .unwrap();
    let Some(MapSnapshot::Lww { records }) = store.load_map("m").await.unwrap() else {
        panic!("m is an LWW map")
    };
    assert_eq!(records.keys().collect::<Vec<_>>(), ["b"]);
}

pub(crate) async fn removals_do_not_create_maps(store: &dyn Store) {
    commit(
        store,
        vec![
            Mutation::DeleteLww {
                map: "x".into(),
                key: "k".into(),
            },
            Mutation::RemoveOrTombstones {
                map: "y".into(),
                tags: tags(&["t"]),
            },
            put_or("z", "k", vec![]),
            Mutation::ClearMap { map: "w".into() },
        ],
    )
    .await
    .unwrap();
    assert_eq!(store.list_maps().await.unwrap(), vec![]);
    assert_eq!(store.load_map("z").await.unwrap(), None);
}

pub(crate) async fn failed_batch_changes_nothing(store: &dyn Store) {
    commit(store, vec![put_lww("m", "a", lww(Some(json!(1)), 1))])
        .await
        .unwrap();
    let result = commit(
        store,
        vec![
            put_lww("m", "a", lww(Some(json!(2)), 2)),
            put_lww("fresh", "k", lww(Some(json!(3)), 2)),
            Mutation::PutCounter {
                name: "c".into(),
                state: CounterSnapshot {
                    p: BTreeMap::from([("n".to_owned(), 1.0)]),
                    n: BTreeMap::new(),
                },
            },
            Mutation::PutFencingToken {
                lock: "l".into(),
                token: 5,
            },
            Mutation::PutMeta {
                key: "node".into(),
                value: b"id".to_vec(),
            },
            Mutation::ClearMap { map: "m".into() },
            put_lww("m", "b", lww(None, 3)),
            put_or("m", "k", vec![or_record(json!(1), 4)]),
        ],
    )
    .await;
    assert_kind_mismatch(result, MapKind::Lww, MapKind::Or);

    assert_eq!(
        lww_records(store, "m").await,
        BTreeMap::from([("a".to_owned(), lww(Some(json!(1)), 1))])
    );
    assert_eq!(
        store.list_maps().await.unwrap(),
        vec![("m".to_owned(), MapKind::Lww)]
    );
    assert!(store.load_counters().await.unwrap().is_empty());
    assert!(store.load_fencing_tokens().await.unwrap().is_empty());
    assert_eq!(store.get_meta("node").await.unwrap(), None);
}

pub(crate) async fn mutations_apply_in_batch_order(store: &dyn Store) {
    commit(
        store,
        vec![
            put_lww("m", "k", lww(None, 1)),
            Mutation::DeleteLww {
                map: "m".into(),
                key: "k".into(),
            },
            put_lww("m", "j", lww(Some(json!("old")), 1)),
            put_lww("m", "j", lww(Some(json!("new")), 2)),
            put_lww("reused", "k", lww(Some(json!(1)), 1)),
            Mutation::ClearMap {
                map: "reused".into(),
            },
            Mutation::SetMapKind {
                map: "reused".into(),
                kind: MapKind::Or,
            },
            Mutation::PutFencingToken {
                lock: "l".into(),
                token: 7,
            },
            Mutation::PutFencingToken {
                lock: "l".into(),
                token: 4,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        lww_records(store, "m").await,
        BTreeMap::from([("j".to_owned(), lww(Some(json!("new")), 2))])
    );
    assert_eq!(
        store.load_map("reused").await.unwrap(),
        Some(MapSnapshot::empty(MapKind::Or))
    );
    assert_eq!(
        store.load_fencing_tokens().await.unwrap(),
        BTreeMap::from([("l".to_owned(), 7)])
    );
}

pub(crate) async fn counters_round_trip_and_are_replaced(store: &dyn Store) {
    let hits = CounterSnapshot {
        p: BTreeMap::from([("a".to_owned(), 3.0), ("b".to_owned(), 0.5)]),
        n: BTreeMap::from([("a".to_owned(), 1.0)]),
    };
    let empty = CounterSnapshot::default();
    commit(
        store,
        vec![
            Mutation::PutCounter {
                name: "hits".into(),
                state: hits.clone(),
            },
            Mutation::PutCounter {
                name: "empty".into(),
                state: empty.clone(),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        store.load_counters().await.unwrap(),
        BTreeMap::from([
            ("empty".to_owned(), empty.clone()),
            ("hits".to_owned(), hits)
        ])
    );

    let replaced = CounterSnapshot {
        p: BTreeMap::from([("c".to_owned(), 1e15)]),
        n: BTreeMap::new(),
    };
    commit(
        store,
        vec![Mutation::PutCounter {
            name: "hits".into(),
            state: replaced.clone(),
        }],
    )
    .await
    .unwrap();
    assert_eq!(
        store.load_counters().await.unwrap(),
        BTreeMap::from([("empty".to_owned(), empty), ("hits".to_owned(), replaced)])
    );
}

pub(crate) async fn fencing_tokens_never_decrease(store: &dyn Store) {
    let put = |lock: &str, token| Mutation::PutFencingToken {
        lock: lock.into(),
        token,
    };
    commit(store, vec![put("a", 5), put("b", 1)]).await.unwrap();
    commit(store, vec![put("a", 3)]).await.unwrap();
    assert_eq!(
        store.load_fencing_tokens().await.unwrap(),
        BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 1)])
    );
    commit(store, vec![put("a", u64::MAX), put("b", 2)])
        .await
        .unwrap();
    assert_eq!(
        store.load_fencing_tokens().await.unwrap(),
        BTreeMap::from([("a".to_owned(), u64::MAX), ("b".to_owned(), 2)])
    );
}

pub(crate) async fn meta_round_trips_bytes(store: &dyn Store) {
    let put = |key: &str, value: &[u8]| Mutation::PutMeta {
        key: key.into(),
        value: value.to_vec(),
    };
    assert_eq!(store.get_meta("node-id").await.unwrap(), None);
    commit(store, vec![put("node-id", b"a"), put("blank", b"")])
        .await
        .unwrap();
    commit(store, vec![put("node-id", &[0, 255, 1])])
        .await
        .unwrap();
    assert_eq!(
        store.get_meta("node-id").await.unwrap(),
        Some(vec![0, 255, 1])
    );
    assert_eq!(store.get_meta("blank").await.unwrap(), Some(vec![]));
    assert_eq!(store.get_meta("node").await.unwrap(), None);
}

pub(crate) async fn clear_map_forgets_only_that_map(store: &dyn Store) {
    // Neighbours in byte order, including the exact range bound a backend might use.
    let neighbours = ["", "a\0", "a\0\0", "a:", "aa", "`"];
    let mut batch = vec![
        put_lww("a", "k", lww(Some(json!(1)), 1)),
        put_lww("a", "", lww(None, 1)),
    ];
    for (i, map) in neighbours.iter().enumerate() {
        batch.push(put_or(map, "k", vec![or_record(json!(i), 1)]));
        batch.push(put_or(map, "", vec![or_record(json!(i), 2)]));
        batch.push(Mutation::AddOrTombstones {
            map: (*map).into(),
            tags: tags(&["t"]),
        });
    }
    commit(store, batch).await.unwrap();
    commit(store, vec![Mutation::ClearMap { map: "a".into() }])
        .await
        .unwrap();

    assert_eq!(store.load_map("a").await.unwrap(), None);
    for (i, map) in neighbours.iter().enumerate() {
        assert_eq!(
            store.load_map(map).await.unwrap(),
            Some(MapSnapshot::Or {
                records: BTreeMap::from([
                    ("k".to_owned(), vec![or_record(json!(i), 1)]),
                    (String::new(), vec![or_record(json!(i), 2)]),
                ]),
                tombstones: BTreeSet::from(["t".to_owned()]),
            }),
            "map {map:?}"
        );
    }

    commit(
        store,
        vec![
            Mutation::ClearMap { map: "a\0".into() },
            put_or("a", "k", vec![or_record(json!("again"), 2)]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(store.load_map("a\0").await.unwrap(), None);
    assert_eq!(
        store.load_map("a").await.unwrap(),
        Some(MapSnapshot::Or {
            records: BTreeMap::from([("k".to_owned(), vec![or_record(json!("again"), 2)])]),
            tombstones: BTreeSet::new(),
        })
    );
}

pub(crate) async fn names_and_keys_never_collide(store: &dyn Store) {
    let places = [
        ("a", "b:c"),
        ("a:b", "c"),
        ("a\0b", "c"),
        ("a", "b\0c"),
        ("", ""),
        ("ключ/🚀", "值"),
    ];
    let batch = places
        .iter()
        .enumerate()
        .map(|(i, (map, key))| put_lww(map, key, lww(Some(json!(i)), 1)))
        .collect();
    commit(store, batch).await.unwrap();
    for (i, (map, key)) in places.iter().enumerate() {
        let records = lww_records(store, map).await;
        assert_eq!(
            records.get(*key),
            Some(&lww(Some(json!(i)), 1)),
            "{map:?}/{key:?}"
        );
    }
    assert_eq!(lww_records(store, "a").await.len(), 2);
    assert_eq!(lww_records(store, "a:b").await.len(), 1);
}

pub(crate) async fn list_maps_reports_kinds_sorted(store: &dyn Store) {
    assert_eq!(store.list_maps().await.unwrap(), vec![]);
    commit(
        store,
        vec![
            put_or("zeta", "k", vec![or_record(json!(1), 1)]),
            put_lww("Alpha", "k", lww(None, 1)),
            Mutation::SetMapKind {
                map: "beta".into(),
                kind: MapKind::Or,
            },
            put_lww("alpha", "k", lww(None, 1)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        store.list_maps().await.unwrap(),
        vec![
            ("Alpha".to_owned(), MapKind::Lww),
            ("alpha".to_owned(), MapKind::Lww),
            ("beta".to_owned(), MapKind::Or),
            ("zeta".to_owned(), MapKind::Or),
        ]
    );
}

pub(crate) async fn close_rejects_later_calls(store: &dyn Store) {
    commit(store, vec![put_lww("m", "k", lww(None, 1))])
        .await
        .unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        commit(store, vec![put_lww("m", "j", lww(None, 1))]).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.load_map("m").await, Err(StoreError::Closed)));
    assert!(matches!(store.get_meta("x").await, Err(StoreError::Closed)));
    store.close().await.unwrap();
}

fn append(sequence: u64, event: &[u8]) -> Mutation {
    Mutation::AppendJournal {
        sequence,
        event: event.into(),
    }
}

fn journal_entry(sequence: u64, event: &[u8]) -> (u64, Vec<u8>) {
    (sequence, event.to_vec())
}

pub(crate) async fn journal_reads_in_sequence_order_from_a_cursor(store: &dyn Store) {
    assert_eq!(store.last_journal_sequence().await.unwrap(), 0);
    assert!(store.read_journal(0, 10).await.unwrap().is_empty());
    // Appended out of order across batches: reads still come back in sequence order.
    commit(store, vec![append(3, b"c"), append(1, b"a")])
        .await
        .unwrap();
    commit(store, vec![append(2, b"b"), append(300, b"\x00\xff")])
        .await
        .unwrap();
    assert_eq!(
        store.read_journal(0, 10).await.unwrap(),
        vec![
            journal_entry(1, b"a"),
            journal_entry(2, b"b"),
            journal_entry(3, b"c"),
            journal_entry(300, b"\x00\xff"),
        ]
    );
    assert_eq!(
        store.read_journal(2, 2).await.unwrap(),
        vec![journal_entry(2, b"b"), journal_entry(3, b"c")]
    );
    assert_eq!(
        store.read_journal(4, 10).await.unwrap(),
        vec![journal_entry(300, b"\x00\xff")]
    );
    assert!(store.read_journal(301, 10).await.unwrap().is_empty());
    assert_eq!(store.last_journal_sequence().await.unwrap(), 300);
    // A failed batch appends nothing.
    let failed = commit(
        store,
        vec![
            append(400, b"x"),
            put_lww("m", "k", lww(None, 1)),
            put_or("m", "k", vec![or_record(json!(1), 1)]),
        ],
    )
    .await;
    assert!(failed.is_err());
    assert_eq!(store.last_journal_sequence().await.unwrap(), 300);
    assert!(store.read_journal(301, 10).await.unwrap().is_empty());
}

pub(crate) async fn journal_trim_keeps_the_last_sequence(store: &dyn Store) {
    commit(store, (1..=5).map(|s| append(s, b"e")).collect())
        .await
        .unwrap();
    commit(store, vec![Mutation::TrimJournal { below: 4 }])
        .await
        .unwrap();
    assert_eq!(
        store.read_journal(0, 10).await.unwrap(),
        vec![journal_entry(4, b"e"), journal_entry(5, b"e")]
    );
    commit(store, vec![Mutation::TrimJournal { below: 100 }])
        .await
        .unwrap();
    assert!(store.read_journal(0, 10).await.unwrap().is_empty());
    assert_eq!(
        store.last_journal_sequence().await.unwrap(),
        5,
        "trimming everything must not let sequences restart"
    );
    // A late, lower append does not lower the head either.
    commit(store, vec![append(2, b"late")]).await.unwrap();
    assert_eq!(store.last_journal_sequence().await.unwrap(), 5);
}

/// An append over a stored sequence replaces that entry (the client's op log marks dropped
/// ops so), and one into a gap between stored sequences joins them in order.
pub(crate) async fn journal_appends_replace_stored_entries(store: &dyn Store) {
    commit(
        store,
        (1..=200).step_by(2).map(|s| append(s, b"op")).collect(),
    )
    .await
    .unwrap();
    // Read once so a write-behind backend has written the first entries durably.
    assert_eq!(store.read_journal(0, 1).await.unwrap().len(), 1);
    commit(
        store,
        vec![
            append(3, b"dropped"),
            append(4, b"gap"),
            append(199, b"last"),
        ],
    )
    .await
    .unwrap();
    let mut expected: Vec<(u64, Vec<u8>)> = (1..=200)
        .step_by(2)
        .map(|s| journal_entry(s, b"op"))
        .collect();
    expected[1] = journal_entry(3, b"dropped");
    expected.insert(2, journal_entry(4, b"gap"));
    *expected.last_mut().unwrap() = journal_entry(199, b"last");
    assert_eq!(store.read_journal(0, 1_000).await.unwrap(), expected);
    assert_eq!(
        store.read_journal(3, 3).await.unwrap(),
        vec![
            journal_entry(3, b"dropped"),
            journal_entry(4, b"gap"),
            journal_entry(5, b"op")
        ]
    );
    assert_eq!(store.last_journal_sequence().await.unwrap(), 199);
}

/// Commits can reach the store out of order (background persistence); the store keeps the
/// newest LWW record and never prunes a key that came back to life.
pub(crate) async fn out_of_order_commits_never_regress(store: &dyn Store) {
    commit(store, vec![put_lww("m", "k", lww(Some(json!("new")), 5))])
        .await
        .unwrap();
    commit(store, vec![put_lww("m", "k", lww(Some(json!("old")), 3))])
        .await
        .unwrap();
    commit(store, vec![put_lww("m", "t", lww(None, 2))])
        .await
        .unwrap();
    commit(
        store,
        vec![put_lww("m", "t", lww(Some(json!("revived")), 6))],
    )
    .await
    .unwrap();
    commit(
        store,
        vec![
            Mutation::DeleteLww {
                map: "m".into(),
                key: "k".into(),
            },
            Mutation::DeleteLww {
                map: "m".into(),
                key: "t".into(),
            },
        ],
    )
    .await
    .unwrap();
    let records = lww_records(store, "m").await;
    assert_eq!(records["k"], lww(Some(json!("new")), 5), "older write lost");
    assert_eq!(
        records["t"],
        lww(Some(json!("revived")), 6),
        "live record pruned"
    );
}
