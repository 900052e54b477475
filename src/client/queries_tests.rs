//! Unit tests of the client's live queries, driven with hand-built and recorded server frames.

use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;

use super::*;
use crate::protocol::codec::{Frame, decode};
use crate::protocol::{LegacyQueryChange, QueryRespPayload, QueryResultRow, QueryUpdatePayload};

const WIRE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/wire");

fn query(value: Value) -> Query {
    serde_json::from_value(value).unwrap()
}

/// Open todos, highest priority first, two at a time: the recorded scenario's query.
fn open_by_prio() -> Query {
    query(json!({"where": {"done": false}, "sort": {"prio": "desc"}, "limit": 2}))
}

fn todo(prio: i64, done: bool) -> Value {
    json!({"prio": prio, "done": done})
}

fn todos() -> Vec<(String, Value)> {
    vec![
        ("t1".into(), todo(3, false)),
        ("t2".into(), todo(5, false)),
        ("t3".into(), todo(9, true)),
        ("t4".into(), todo(1, false)),
    ]
}

fn manager() -> QueryManager {
    QueryManager::new(QueryConfig::default())
}

fn keys(snapshot: &QuerySnapshot) -> Vec<&str> {
    snapshot.rows.iter().map(|(k, _)| k.as_str()).collect()
}

fn next_changed(
    rx: &mut broadcast::Receiver<QueryEvent>,
) -> (Arc<QuerySnapshot>, Vec<QueryChange>) {
    match rx.try_recv() {
        Ok(QueryEvent::Changed { snapshot, changes }) => (snapshot, changes),
        other => panic!("expected Changed, got {other:?}"),
    }
}

fn resp(id: &str, rows: &[(&str, Value)]) -> Message {
    QueryResp {
        payload: QueryRespPayload {
            query_id: id.into(),
            results: rows
                .iter()
                .map(|(k, v)| QueryResultRow {
                    key: (*k).into(),
                    value: v.clone(),
                })
                .collect(),
            next_cursor: None,
            has_more: None,
            cursor_status: None,
            merkle_root_hash: None,
            error: None,
            code: None,
        },
    }
    .into()
}

fn legacy_update(id: &str, key: &str, value: Value, kind: LegacyQueryChange) -> Message {
    QueryUpdate {
        payload: QueryUpdatePayload {
            query_id: id.into(),
            key: key.into(),
            value,
            legacy_type: Some(kind),
            change_type: None,
        },
    }
    .into()
}

#[test]
fn first_event_is_the_local_result_in_query_order_within_the_limit() {
    let mut m = manager();
    let mut reg = m
        .register("todos", open_by_prio(), todos().into_iter(), false)
        .unwrap();
    assert_eq!(reg.id, "q1");
    assert!(reg.subscribe.is_none());
    assert!(reg.eviction.is_none());
    let (snapshot, changes) = next_changed(&mut reg.events);
    assert_eq!(keys(&snapshot), ["t2", "t1"]);
    assert!(snapshot.has_more, "t4 matches beyond the limit");
    assert!(!snapshot.from_server);
    assert_eq!(
        changes,
        vec![
            QueryChange::Added {
                key: "t2".into(),
                value: todo(5, false)
            },
            QueryChange::Added {
                key: "t1".into(),
                value: todo(3, false)
            },
        ]
    );
    assert_eq!(m.snapshot("q1"), Some(snapshot));
}

#[test]
fn online_registration_sends_query_sub_with_unique_ids() {
    let mut m = manager();
    let first = m
        .register("todos", open_by_prio(), std::iter::empty(), true)
        .unwrap();
    let second = m
        .register("todos", open_by_prio(), std::iter::empty(), true)
        .unwrap();
    assert_eq!(
        first.subscribe,
        Some(Message::QuerySub(QuerySub {
            payload: QuerySubPayload {
                query_id: "q1".into(),
                map_name: "todos".into(),
                query: open_by_prio(),
                fields: None,
            }
        }))
    );
    assert_ne!(first.id, second.id);
}

#[test]
fn invalid_and_unsupported_queries_are_refused() {
    let mut m = manager();
    let bad = query(json!({"predicate": {"op": "gt"}}));
    assert!(matches!(
        m.register("m", bad, std::iter::empty(), true),
        Err(QueryError::Invalid(_))
    ));
    let grouped = query(json!({"groupBy": ["a"]}));
    assert!(matches!(
        m.register("m", grouped, std::iter::empty(), true),
        Err(QueryError::Unsupported { feature: "groupBy" })
    ));
    assert!(m.is_empty());
}

#[test]
fn local_writes_update_results_at_once_and_hold_the_window() {
    let mut m = manager();
    let mut reg = m
        .register("todos", open_by_prio(), todos().into_iter(), false)
        .unwrap();
    next_changed(&mut reg.events);

    // A new top-priority todo enters and pushes t1 out of the two-row window.
    m.on_change("todos", "t9", Some(&todo(7, false)));
    let (snapshot, changes) = next_changed(&mut reg.events);
    assert_eq!(keys(&snapshot), ["t9", "t2"]);
    assert_eq!(
        changes,
        vec![
            QueryChange::Removed { key: "t1".into() },
            QueryChange::Added {
                key: "t9".into(),
                value: todo(7, false)
            },
        ]
    );

    // Completing t9 drops it; t1 comes back from the local candidates.
    m.on_change("todos", "t9", Some(&todo(7, true)));
    let (snapshot, _) = next_changed(&mut reg.events);
    assert_eq!(keys(&snapshot), ["t2", "t1"]);

    // A value change inside the window is an update.
    m.on_change("todos", "t2", Some(&todo(6, false)));
    let (_, changes) = next_changed(&mut reg.events);
    assert_eq!(
        changes,
        vec![QueryChange::Updated {
            key: "t2".into(),
            value: todo(6, false)
        }]
    );

    // Deleting rows leaves only what matches.
    m.on_change("todos", "t2", None);
    m.on_change("todos", "t4", None);
    let mut last = None;
    while let Ok(QueryEvent::Changed { snapshot, .. }) = reg.events.try_recv() {
        last = Some(snapshot);
    }
    let last = last.unwrap();
    assert_eq!(keys(&last), ["t1"]);
    assert!(!last.has_more);
}

#[test]
fn changes_to_other_maps_or_non_matching_keys_emit_nothing() {
    let mut m = manager();
    let mut reg = m
        .register("todos", open_by_prio(), todos().into_iter(), false)
        .unwrap();
    next_changed(&mut reg.events);
    m.on_change("other", "t9", Some(&todo(99, false)));
    m.on_change("todos", "t8", Some(&todo(99, true)));
    // Below the window: a candidate, but nothing visible changes.
    m.on_change("todos", "t7", Some(&todo(0, false)));
    assert_eq!(reg.events.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn an_empty_server_response_clears_rows_deleted_while_offline() {
    let mut m = manager();
    let mut reg = m
        .register("todos", open_by_prio(), todos().into_iter(), true)
        .unwrap();
    next_changed(&mut reg.events);
    assert!(m.on_message(&resp("q1", &[])));
    let (snapshot, changes) = next_changed(&mut reg.events);
    assert!(snapshot.rows.is_empty());
    assert!(snapshot.from_server);
    assert!(!snapshot.has_more);
    assert_eq!(changes.len(), 2);
    assert!(
        changes
            .iter()
            .all(|c| matches!(c, QueryChange::Removed { .. }))
    );
}

#[test]
fn local_changes_made_while_awaiting_the_server_survive_its_answer() {
    let mut m = manager();
    let mut reg = m
        .register("todos", open_by_prio(), todos().into_iter(), true)
        .unwrap();
    // Written after QUERY_SUB went out: the response may not include these.
    m.on_change("todos", "t9", Some(&todo(8, false)));
    m.on_change("todos", "t2", None);
    m.on_message(&resp(
        "q1",
        &[("t2", todo(5, false)), ("t1", todo(3, false))],
    ));
    let snapshot = m.snapshot("q1").unwrap();
    assert_eq!(keys(&snapshot), ["t9", "t1"]);
    assert!(snapshot.from_server);

    // Once answered, later server words are taken as they come.
    m.on_message(&resp("q1", &[("t2", todo(5, false))]));
    assert_eq!(keys(&m.snapshot("q1").unwrap()), ["t2"]);
    while reg.events.try_recv().is_ok() {}
}

#[test]
fn changes_while_disconnected_survive_the_next_response() {
    let mut m = manager();
    m.register("todos", open_by_prio(), std::iter::empty(), true)
        .unwrap();
    m.on_message(&resp("q1", &[("t1", todo(3, false))]));
    m.disconnected();
    m.on_change("todos", "t1", Some(&todo(3, true)));
    m.on_change("todos", "t5", Some(&todo(4, false)));
    // A stale answer (the server had not seen the offline writes yet).
    m.on_message(&resp("q1", &[("t1", todo(3, false))]));
    assert_eq!(keys(&m.snapshot("q1").unwrap()), ["t5"]);
}

#[test]
fn query_updates_of_both_generations_enter_update_and_leave() {
    let mut m = manager();
    m.register("todos", open_by_prio(), std::iter::empty(), true)
        .unwrap();
    m.on_message(&resp("q1", &[("t1", todo(3, false))]));
    assert!(m.on_message(&QueryUpdate::enter("q1", "t2", todo(5, false)).into()));
    assert_eq!(keys(&m.snapshot("q1").unwrap()), ["t2", "t1"]);
    m.on_message(&QueryUpdate::leave("q1", "t2").into());
    assert_eq!(keys(&m.snapshot("q1").unwrap()), ["t1"]);
    m.on_message(&legacy_update(
        "q1",
        "t4",
        todo(4, false),
        LegacyQueryChange::Update,
    ));
    assert_eq!(keys(&m.snapshot("q1").unwrap()), ["t4", "t1"]);
    m.on_message(&legacy_update(
        "q1",
        "t4",
        Value::Null,
        LegacyQueryChange::Remove,
    ));
    assert_eq!(keys(&m.snapshot("q1").unwrap()), ["t1"]);
    // An update carrying nil deletes in both clients.
    m.on_message(&QueryUpdate::update("q1", "t1", Value::Null).into());
    assert!(m.snapshot("q1").unwrap().rows.is_empty());
    assert!(!m.on_message(&QueryUpdate::enter("q404", "x", json!(1)).into()));
    assert!(!m.on_message(&resp("q404", &[])));
}

/// Replays the server frames of a recorded live-query session, retargeted at `id`.
fn replay(generation: &str, m: &mut QueryManager, id: &str) -> usize {
    let path = format!("{WIRE}/{generation}/b-lww-and-query.jsonl");
    let mut applied = 0;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        if record["dir"] != "s2c" || !record["type"].as_str().unwrap().starts_with("QUERY_") {
            continue;
        }
        let hex = record["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let message = match decode(Frame::Binary(&bytes)).unwrap() {
            Message::QueryResp(mut r) => {
                r.payload.query_id = id.into();
                Message::QueryResp(r)
            }
            Message::QueryUpdate(mut u) => {
                u.payload.query_id = id.into();
                Message::QueryUpdate(u)
            }
            other => panic!("unexpected {other:?}"),
        };
        assert!(m.on_message(&message));
        applied += 1;
    }
    applied
}

#[test]
fn recorded_sessions_of_both_generations_are_applied() {
    // 2026-01 sends `type` UPDATE/REMOVE; 2026-08 sends `changeType` LEAVE/ENTER and, with its
    // own live window, never removes t2.
    for (generation, frames, expected) in [
        ("client-2026-01", 7, ["t5", "t4"]),
        ("client-2026-08", 3, ["t5", "t2"]),
    ] {
        let mut m = manager();
        let reg = m
            .register("wire-todos", open_by_prio(), std::iter::empty(), true)
            .unwrap();
        assert_eq!(replay(generation, &mut m, &reg.id), frames, "{generation}");
        let snapshot = m.snapshot(&reg.id).unwrap();
        assert_eq!(keys(&snapshot), expected, "{generation}");
        assert_eq!(
            snapshot.rows[0].1,
            json!({"title": "from another client", "prio": 9, "done": false})
        );
        assert!(snapshot.from_server);
        assert_eq!(snapshot.next_cursor, None, "{generation}");
    }
}

#[test]
fn cursor_pages_start_after_the_cursor_position_locally() {
    let mut m = manager();
    let by_prio = query(json!({"sort": {"prio": "asc"}, "limit": 2}));
    let first = m
        .register("todos", by_prio.clone(), std::iter::empty(), true)
        .unwrap();
    let mut page = resp(&first.id, &[("t4", todo(1, false)), ("t1", todo(3, false))]);
    if let Message::QueryResp(r) = &mut page {
        r.payload.next_cursor = Some("cursor-1".into());
        r.payload.has_more = Some(true);
    }
    m.on_message(&page);
    let snapshot = m.snapshot(&first.id).unwrap();
    assert_eq!(snapshot.next_cursor.as_deref(), Some("cursor-1"));
    assert!(snapshot.has_more);

    let next = Query {
        cursor: Some("cursor-1".into()),
        ..by_prio.clone()
    };
    let mut reg = m
        .register("todos", next, todos().into_iter(), false)
        .unwrap();
    let (snapshot, _) = next_changed(&mut reg.events);
    assert_eq!(keys(&snapshot), ["t2", "t3"]);
    // A write sorting before the cursor does not belong on this page.
    m.on_change("todos", "t0", Some(&todo(0, false)));
    assert_eq!(keys(&m.snapshot(&reg.id).unwrap()), ["t2", "t3"]);

    // A cursor this client never saw: wait for the server rather than guess.
    let unknown = Query {
        cursor: Some("from-elsewhere".into()),
        ..by_prio
    };
    let mut reg = m
        .register("todos", unknown, todos().into_iter(), false)
        .unwrap();
    let (snapshot, _) = next_changed(&mut reg.events);
    assert!(snapshot.rows.is_empty());
}

#[test]
fn resubscribe_resends_every_query_oldest_first() {
    let mut m = manager();
    m.register("a", Query::default(), std::iter::empty(), false)
        .unwrap();
    m.register("b", open_by_prio(), std::iter::empty(), false)
        .unwrap();
    let subs: Vec<(String, String)> = m
        .resubscribe()
        .into_iter()
        .map(|msg| match msg {
            Message::QuerySub(s) => (s.payload.query_id, s.payload.map_name),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(subs, [("q1".into(), "a".into()), ("q2".into(), "b".into())]);
}

#[test]
fn unregister_and_gc_unsubscribe_only_when_online() {
    let mut m = manager();
    let kept = m
        .register("a", Query::default(), std::iter::empty(), true)
        .unwrap();
    let dropped = m
        .register("a", Query::default(), std::iter::empty(), true)
        .unwrap();
    let gone = dropped.id.clone();
    drop(dropped);
    assert_eq!(
        m.gc_unused(true),
        vec![Message::QueryUnsub(QueryUnsub {
            payload: QueryIdPayload { query_id: gone }
        })]
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m.unregister(&kept.id, false), None);
    assert!(m.is_empty());
    assert_eq!(m.unregister(&kept.id, true), None, "already gone");
}

#[test]
fn lru_bound_evicts_unused_queries_first_and_reports_evictions() {
    let mut m = QueryManager::new(QueryConfig {
        max_live_queries: 2,
        event_capacity: 8,
    });
    let mut oldest = m
        .register("a", Query::default(), std::iter::empty(), true)
        .unwrap();
    let unused = m
        .register("b", Query::default(), std::iter::empty(), true)
        .unwrap();
    let unused_id = unused.id.clone();
    drop(unused);
    let third = m
        .register("c", Query::default(), std::iter::empty(), true)
        .unwrap();
    let eviction = third.eviction.unwrap();
    assert_eq!(
        eviction.event,
        QueryManagerEvent::Evicted {
            query_id: unused_id.clone(),
            map_name: "b".into()
        }
    );
    assert_eq!(
        eviction.unsubscribe,
        Some(
            QueryUnsub {
                payload: QueryIdPayload {
                    query_id: unused_id
                }
            }
            .into()
        )
    );

    // Every query has listeners now: the least recently used one goes, and is told so.
    m.snapshot(&third.id);
    let fourth = m
        .register("d", Query::default(), std::iter::empty(), false)
        .unwrap();
    let eviction = fourth.eviction.unwrap();
    assert_eq!(
        eviction.event,
        QueryManagerEvent::Evicted {
            query_id: oldest.id.clone(),
            map_name: "a".into()
        }
    );
    assert_eq!(eviction.unsubscribe, None, "offline");
    next_changed(&mut oldest.events);
    assert_eq!(oldest.events.try_recv(), Ok(QueryEvent::Evicted));
    assert_eq!(m.len(), 2);
    assert!(m.snapshot(&oldest.id).is_none());
}

#[test]
fn server_errors_reach_receivers_and_keep_local_results() {
    let mut m = manager();
    let mut reg = m
        .register("todos", open_by_prio(), todos().into_iter(), true)
        .unwrap();
    next_changed(&mut reg.events);
    let mut error = resp("q1", &[]);
    if let Message::QueryResp(r) = &mut error {
        r.payload.error = Some("Access denied".into());
        r.payload.code = Some(403);
    }
    assert!(m.on_message(&error));
    assert_eq!(
        reg.events.try_recv(),
        Ok(QueryEvent::Error {
            code: Some(403),
            message: "Access denied".into()
        })
    );
    assert_eq!(keys(&m.snapshot("q1").unwrap()), ["t2", "t1"]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::query::CursorContext;

    fn op() -> impl Strategy<Value = (u8, Option<(i64, bool)>)> {
        (0u8..12, proptest::option::of((0i64..6, any::<bool>())))
    }

    proptest! {
        /// Whatever sequence of local writes arrives, the live result equals a fresh run of
        /// the server's engine over the resulting map.
        #[test]
        fn live_results_match_a_fresh_evaluation(
            limit in 0u64..5,
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let q = query(json!({"where": {"done": false}, "sort": {"prio": "desc"}, "limit": limit}));
            let compiled = CompiledQuery::compile(&q, &QueryLimits::default()).unwrap();
            let mut m = manager();
            let reg = m.register("m", q, std::iter::empty(), false).unwrap();
            let mut map: std::collections::BTreeMap<String, Value> = Default::default();
            for (key, state) in ops {
                let key = format!("k{key}");
                let value = state.map(|(prio, done)| todo(prio, done));
                match &value {
                    Some(v) => { map.insert(key.clone(), v.clone()); }
                    None => { map.remove(&key); }
                }
                m.on_change("m", &key, value.as_ref());
            }
            let expected = compiled
                .execute(map.iter().map(|(k, v)| (k.as_str(), v)), &CursorContext::new(b"s", 0))
                .unwrap();
            let snapshot = m.snapshot(&reg.id).unwrap();
            prop_assert_eq!(&snapshot.rows, &expected.results);
            prop_assert_eq!(snapshot.has_more, expected.has_more);
        }
    }
}
