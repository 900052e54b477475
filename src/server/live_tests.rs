use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::query::{Query, QueryLimits};

const SECRET: &[u8] = b"live-window-test-secret";

fn compile(query: Value) -> CompiledQuery {
    let query: Query = serde_json::from_value(query).unwrap();
    CompiledQuery::compile(&query, &QueryLimits::default()).unwrap()
}

/// A map model plus a live window over it, kept in step the way the server does.
struct Harness {
    query: CompiledQuery,
    map: BTreeMap<String, Value>,
    window: LiveWindow,
}

impl Harness {
    fn new(query: Value, rows: &[(&str, Value)]) -> Self {
        let query = compile(query);
        let map: BTreeMap<String, Value> = rows
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mut harness = Self {
            query,
            map,
            window: LiveWindow::default(),
        };
        harness.window = LiveWindow::from_page(&harness.query, &harness.page());
        harness
    }

    fn page(&self) -> QueryPage {
        self.query
            .execute(
                self.map.iter().map(|(k, v)| (k.as_str(), v)),
                &CursorContext::new(SECRET, 1_000),
            )
            .unwrap()
    }

    /// Sets (or with `None` deletes) a key and returns the window changes.
    fn set(&mut self, key: &str, value: Option<Value>) -> Vec<WindowChange> {
        match &value {
            Some(v) => self.map.insert(key.to_owned(), v.clone()),
            None => self.map.remove(key),
        };
        let changes = match self.window.apply(&self.query, key, value.as_ref()) {
            Step::Changes(changes) => changes,
            Step::Rerun => {
                let page = self.page();
                self.window.replace(&self.query, &page)
            }
        };
        self.assert_places_match_rows();
        changes
    }

    /// Under a field order the window knows every row's current sort values (how it finds
    /// a row by binary search); under the key order it keeps none.
    fn assert_places_match_rows(&self) {
        let expected: HashMap<&str, Vec<Option<Value>>> = if self.query.orders_by_key() {
            HashMap::new()
        } else {
            self.window
                .rows()
                .iter()
                .map(|(k, v)| (k.as_str(), self.query.order().owned_cells(v)))
                .collect()
        };
        let held: HashMap<&str, Vec<Option<Value>>> = self
            .window
            .places
            .iter()
            .map(|(k, cells)| (k.as_str(), cells.clone()))
            .collect();
        assert_eq!(held, expected);
    }

    fn keys(&self) -> Vec<&str> {
        self.window.rows().iter().map(|(k, _)| k.as_str()).collect()
    }
}

fn enter(key: &str, value: Value) -> WindowChange {
    WindowChange::Enter(key.to_owned(), value)
}

fn leave(key: &str) -> WindowChange {
    WindowChange::Leave(key.to_owned())
}

#[test]
fn enter_update_leave_follow_the_filter() {
    let mut h = Harness::new(json!({"where": {"done": false}}), &[]);
    assert_eq!(
        h.set("a", Some(json!({"done": false, "t": 1}))),
        [enter("a", json!({"done": false, "t": 1}))]
    );
    assert_eq!(
        h.set("a", Some(json!({"done": false, "t": 2}))),
        [WindowChange::Update(
            "a".into(),
            json!({"done": false, "t": 2})
        )]
    );
    assert_eq!(h.set("a", Some(json!({"done": false, "t": 2}))), []);
    assert_eq!(h.set("a", Some(json!({"done": true}))), [leave("a")]);
    assert_eq!(h.set("b", Some(json!({"done": true}))), []);
    assert_eq!(
        h.set("b", Some(json!({"done": false}))),
        [enter("b", json!({"done": false}))]
    );
    assert_eq!(h.set("b", None), [leave("b")]);
    assert!(h.keys().is_empty());
}

#[test]
fn limit_window_refills_from_the_map_on_leave() {
    let rows = [
        ("a", json!({"n": 1})),
        ("b", json!({"n": 2})),
        ("c", json!({"n": 3})),
    ];
    let mut h = Harness::new(json!({"sort": {"n": "asc"}, "limit": 2}), &rows);
    assert_eq!(h.keys(), ["a", "b"]);
    assert_eq!(h.set("a", None), [leave("a"), enter("c", json!({"n": 3}))]);
    assert_eq!(h.keys(), ["b", "c"]);
    // Nothing beyond the window any more: a leave needs no refill.
    assert_eq!(h.set("b", None), [leave("b")]);
    assert_eq!(h.keys(), ["c"]);
}

#[test]
fn a_better_match_displaces_the_last_row_of_a_full_window() {
    let rows = [("a", json!({"n": 1})), ("b", json!({"n": 5}))];
    let mut h = Harness::new(json!({"sort": {"n": "asc"}, "limit": 2}), &rows);
    assert_eq!(
        h.set("z", Some(json!({"n": 0}))),
        [enter("z", json!({"n": 0})), leave("b")]
    );
    assert_eq!(h.keys(), ["z", "a"]);
    // Worse than the window: nothing is sent, but the map now has more.
    assert_eq!(h.set("y", Some(json!({"n": 9}))), []);
    assert_eq!(h.set("z", None), [leave("z"), enter("b", json!({"n": 5}))]);
}

#[test]
fn an_update_that_sinks_past_the_window_swaps_in_the_next_match() {
    let rows = [
        ("a", json!({"n": 1})),
        ("b", json!({"n": 2})),
        ("c", json!({"n": 3})),
    ];
    let mut h = Harness::new(json!({"sort": {"n": "asc"}, "limit": 2}), &rows);
    assert_eq!(
        h.set("a", Some(json!({"n": 10}))),
        [leave("a"), enter("c", json!({"n": 3}))]
    );
    assert_eq!(h.keys(), ["b", "c"]);
}

#[test]
fn window_keeps_descending_sort_order() {
    let mut h = Harness::new(json!({"sort": [{"field": "n", "direction": "desc"}]}), &[]);
    for (key, n) in [("a", 2), ("b", 7), ("c", 4), ("d", 7)] {
        h.set(key, Some(json!({ "n": n })));
    }
    assert_eq!(h.keys(), ["b", "d", "c", "a"]);
    h.set("b", Some(json!({"n": 0})));
    assert_eq!(h.keys(), ["d", "c", "a", "b"]);
}

#[test]
fn replace_reports_leaves_enters_and_changed_values_only() {
    let query = compile(json!({}));
    let mut window = LiveWindow::from_page(
        &query,
        &QueryPage {
            results: vec![("a".into(), json!(1)), ("b".into(), json!(2))],
            next_cursor: None,
            has_more: false,
            cursor_status: CursorStatus::None,
        },
    );
    let changes = window.replace(
        &query,
        &QueryPage {
            results: vec![("b".into(), json!(3)), ("c".into(), json!(4))],
            next_cursor: None,
            has_more: false,
            cursor_status: CursorStatus::None,
        },
    );
    assert_eq!(
        changes,
        [
            leave("a"),
            WindowChange::Update("b".into(), json!(3)),
            enter("c", json!(4))
        ]
    );
}

#[test]
fn projection_keeps_listed_top_level_fields_of_objects_and_or_arrays() {
    let fields = vec!["title".to_owned(), "n".to_owned()];
    assert_eq!(
        project(json!({"title": "t", "secret": 1, "n": {"x": 1}}), &fields),
        json!({"title": "t", "n": {"x": 1}})
    );
    assert_eq!(
        project(json!([{"title": "a", "x": 1}, "plain"]), &fields),
        json!([{"title": "a"}, "plain"])
    );
    assert_eq!(project(json!(42), &fields), json!(42));
}

#[derive(Debug, Clone)]
enum Op {
    Set(u8, i64),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly sets over more keys than a window scans (`SCANNED_ROWS`), so windows grow large
    // enough to find keys by binary search.
    prop_oneof![
        4 => (0u8..80, -8i64..8).prop_map(|(k, n)| Op::Set(k, n)),
        1 => (0u8..80).prop_map(Op::Delete),
    ]
}

proptest! {
    /// Whatever the changes, the maintained window equals a fresh run of the query.
    #[test]
    fn window_always_equals_a_fresh_run(
        ops in proptest::collection::vec(op(), 0..240),
        limit in prop_oneof![0u64..5, 35u64..50],
        desc in any::<bool>(),
        by_key in any::<bool>(),
    ) {
        let direction = if desc { "desc" } else { "asc" };
        let query = if by_key {
            json!({
                "predicate": {"op": "gte", "attribute": "n", "value": -3},
                "limit": limit,
            })
        } else {
            json!({
                "predicate": {"op": "gte", "attribute": "n", "value": -3},
                "sort": [{"field": "n", "direction": direction}],
                "limit": limit,
            })
        };
        let mut h = Harness::new(query, &[]);
        for op in ops {
            match op {
                Op::Set(k, n) => h.set(&format!("k{k}"), Some(json!({ "n": n }))),
                Op::Delete(k) => h.set(&format!("k{k}"), None),
            };
            let fresh = h.page();
            prop_assert_eq!(h.window.rows(), fresh.results.as_slice());
        }
    }

    /// The same under sorts of several terms, `_key` terms among them, over values whose sort
    /// fields may be absent or `null`.
    #[test]
    fn window_under_mixed_sorts_equals_a_fresh_run(
        ops in proptest::collection::vec(
            (0u8..80, proptest::option::of(-3i64..3), 0u8..4, proptest::bool::weighted(0.2)),
            0..240,
        ),
        limit in prop_oneof![Just(0u64), 35u64..50],
        sort in 0usize..3,
    ) {
        let sorts = [
            json!([{"field": "n", "direction": "desc"}, {"field": "m", "direction": "asc"}]),
            json!([{"field": "m", "direction": "asc"}, {"field": "_key", "direction": "desc"}]),
            json!([{"field": "_key", "direction": "desc"}]),
        ];
        let mut h = Harness::new(json!({"sort": sorts[sort], "limit": limit}), &[]);
        for (key, n, m, delete) in ops {
            let key = format!("k{key}");
            if delete {
                h.set(&key, None);
                continue;
            }
            let mut value = serde_json::Map::new();
            if let Some(n) = n {
                value.insert("n".into(), json!(n));
            }
            // m: absent, null, or a number.
            match m {
                0 => {}
                1 => {
                    value.insert("m".into(), Value::Null);
                }
                _ => {
                    value.insert("m".into(), json!(m));
                }
            }
            h.set(&key, Some(Value::Object(value)));
            let fresh = h.page();
            prop_assert_eq!(h.window.rows(), fresh.results.as_slice());
        }
    }
}
