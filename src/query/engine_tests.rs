//! Tests for [`super`]: execution, limits and cursor paging.

use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::json;

use crate::query::DEFAULT_CURSOR_MAX_AGE_MS;

const SECRET: &[u8] = b"engine-test-secret";
const NOW: u64 = 1_700_000_000_000;

fn compile(query: Value) -> CompiledQuery {
    CompiledQuery::compile(
        &serde_json::from_value(query).unwrap(),
        &QueryLimits::default(),
    )
    .unwrap()
}

fn data() -> Vec<(String, Value)> {
    vec![
        (
            "t1".into(),
            json!({"prio": 3, "title": "write docs", "done": false}),
        ),
        (
            "t2".into(),
            json!({"prio": 1, "title": "fix bug", "done": true}),
        ),
        (
            "t3".into(),
            json!({"prio": 2, "title": "review", "done": false}),
        ),
        (
            "t4".into(),
            json!({"prio": 3, "title": "deploy", "done": false}),
        ),
        ("t5".into(), json!({"title": "idea", "done": false})),
        (
            "t6".into(),
            json!({"prio": 2, "title": "test", "done": false}),
        ),
    ]
}

fn run(query: &CompiledQuery, rows: &[(String, Value)], now: u64) -> QueryPage {
    query
        .execute(
            rows.iter().map(|(key, value)| (key.as_str(), value)),
            &CursorContext::new(SECRET, now),
        )
        .unwrap()
}

fn keys(page: &QueryPage) -> Vec<&str> {
    page.results.iter().map(|(key, _)| key.as_str()).collect()
}

fn with_cursor(query: Value, cursor: &str) -> CompiledQuery {
    let mut query = query;
    query["cursor"] = json!(cursor);
    compile(query)
}

#[test]
fn filters_and_sorts_without_limit() {
    let query = compile(json!({"where": {"done": false}, "sort": {"prio": "desc"}}));
    let page = run(&query, &data(), NOW);
    assert_eq!(keys(&page), ["t1", "t4", "t3", "t6", "t5"]);
    assert_eq!(page.results[0].1, data()[0].1);
    assert!(!page.has_more);
    assert_eq!(page.next_cursor, None);
    assert_eq!(page.cursor_status, CursorStatus::None);
    assert_eq!(query.limit(), None);
}

#[test]
fn array_sort_form_with_multiple_fields() {
    let query = compile(json!({"sort": [
        {"field": "prio", "direction": "asc"},
        {"field": "title", "direction": "desc"}
    ]}));
    assert_eq!(
        keys(&run(&query, &data(), NOW)),
        ["t5", "t2", "t6", "t3", "t1", "t4"]
    );
}

#[test]
fn limit_truncates_and_reports_more() {
    let query = compile(json!({"sort": {"prio": "asc"}, "limit": 2}));
    let page = run(&query, &data(), NOW);
    assert_eq!(keys(&page), ["t5", "t2"]);
    assert!(page.has_more);
    assert!(page.next_cursor.is_some());
    assert_eq!(query.limit(), Some(2));

    let exact = compile(json!({"limit": 6}));
    let page = run(&exact, &data(), NOW);
    assert_eq!(page.results.len(), 6);
    assert!(!page.has_more);
    assert_eq!(page.next_cursor, None);

    assert_eq!(compile(json!({"limit": 0})).limit(), None);
}

#[test]
fn cursor_pages_through_everything_once() {
    let base = json!({"sort": {"prio": "desc"}, "limit": 2});
    let mut query = compile(base.clone());
    let mut seen = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..=data().len() {
        let page = run(&query, &data(), NOW);
        statuses.push(page.cursor_status);
        seen.extend(keys(&page).into_iter().map(str::to_owned));
        match page.next_cursor {
            Some(cursor) => query = with_cursor(base.clone(), &cursor),
            None => break,
        }
    }
    assert_eq!(seen, ["t1", "t4", "t3", "t6", "t2", "t5"]);
    assert_eq!(
        statuses,
        [CursorStatus::None, CursorStatus::Valid, CursorStatus::Valid]
    );
}

#[test]
fn cursor_is_a_keyset_position_not_an_offset() {
    let base = json!({"sort": {"prio": "asc"}, "limit": 2});
    let first = run(&compile(base.clone()), &data(), NOW);
    assert_eq!(keys(&first), ["t5", "t2"]);
    let cursor = first.next_cursor.unwrap();

    // A row inserted before the cursor position does not shift the next page.
    let mut grown = data();
    grown.push(("t0".into(), json!({"prio": 0})));
    let next = run(&with_cursor(base, &cursor), &grown, NOW);
    assert_eq!(keys(&next), ["t3", "t6"]);
    assert_eq!(next.cursor_status, CursorStatus::Valid);
}

#[test]
fn cursor_accepts_a_different_limit() {
    let first = run(&compile(json!({"limit": 2})), &data(), NOW);
    let next = run(
        &with_cursor(json!({"limit": 10}), &first.next_cursor.unwrap()),
        &data(),
        NOW,
    );
    assert_eq!(keys(&next), ["t3", "t4", "t5", "t6"]);
    assert_eq!(next.cursor_status, CursorStatus::Valid);
}

#[test]
fn expired_cursor_restarts_from_the_beginning() {
    let base = json!({"sort": {"prio": "desc"}, "limit": 2});
    let cursor = run(&compile(base.clone()), &data(), NOW)
        .next_cursor
        .unwrap();
    let later = NOW + DEFAULT_CURSOR_MAX_AGE_MS + 1;
    let page = run(&with_cursor(base, &cursor), &data(), later);
    assert_eq!(page.cursor_status, CursorStatus::Expired);
    assert_eq!(keys(&page), ["t1", "t4"]);
}

#[test]
fn tampered_cursor_is_invalid_and_restarts() {
    let base = json!({"sort": {"prio": "desc"}, "limit": 2});
    let cursor = run(&compile(base.clone()), &data(), NOW)
        .next_cursor
        .unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
    bytes[3] ^= 0x40;
    let tampered = URL_SAFE_NO_PAD.encode(&bytes);
    let page = run(&with_cursor(base.clone(), &tampered), &data(), NOW);
    assert_eq!(page.cursor_status, CursorStatus::Invalid);
    assert_eq!(keys(&page), ["t1", "t4"]);

    let garbage = run(&with_cursor(base, "%%%"), &data(), NOW);
    assert_eq!(garbage.cursor_status, CursorStatus::Invalid);
}

#[test]
fn cursor_from_another_query_is_invalid() {
    let cursor = run(
        &compile(json!({"sort": {"prio": "desc"}, "limit": 2})),
        &data(),
        NOW,
    )
    .next_cursor
    .unwrap();
    let other = json!({"sort": {"prio": "desc"}, "where": {"done": false}, "limit": 2});
    let page = run(&with_cursor(other, &cursor), &data(), NOW);
    assert_eq!(page.cursor_status, CursorStatus::Invalid);
    assert_eq!(keys(&page), ["t1", "t4"]);
}

#[test]
fn cursor_status_serializes_lowercase() {
    let statuses = [
        CursorStatus::Valid,
        CursorStatus::Expired,
        CursorStatus::Invalid,
        CursorStatus::None,
    ];
    assert_eq!(
        serde_json::to_value(statuses).unwrap(),
        json!(["valid", "expired", "invalid", "none"])
    );
}

#[test]
fn compare_and_matches_expose_the_compiled_rules() {
    let query = compile(json!({
        "predicate": {"op": "gte", "attribute": "prio", "value": 2},
        "sort": {"prio": "desc"}
    }));
    let (a, b) = (json!({"prio": 3}), json!({"prio": 2}));
    assert_eq!(query.compare(("x", &a), ("y", &b)), Ordering::Less);
    assert_eq!(
        query.compare(("x", &a), ("y", &a)),
        Ordering::Less,
        "key tie-break"
    );
    assert_eq!(query.compare(("x", &a), ("x", &a)), Ordering::Equal);
    assert!(query.matches(&a));
    assert!(!query.matches(&json!({"prio": 1})));
}

#[test]
fn too_many_sort_fields_are_rejected() {
    let limits = QueryLimits {
        max_children: 1,
        ..QueryLimits::default()
    };
    let query: Query = serde_json::from_value(json!({"sort": {"a": "asc", "b": "asc"}})).unwrap();
    assert!(matches!(
        CompiledQuery::compile(&query, &limits),
        Err(QueryError::TooWide { what: "sort", .. })
    ));
}

fn arb_rows() -> impl Strategy<Value = Vec<(String, Value)>> {
    let field = prop_oneof![
        Just(Value::Null),
        (0i64..4).prop_map(Value::from),
        "[ab]{0,2}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ];
    proptest::collection::btree_map("[a-z]{1,3}", (field.clone(), field), 0..25).prop_map(|rows| {
        rows.into_iter()
            .map(|(key, (a, b))| (key, json!({"a": a, "b": b})))
            .collect()
    })
}

fn arb_sort() -> impl Strategy<Value = Value> {
    let direction = prop_oneof![Just("asc"), Just("desc")];
    prop_oneof![
        Just(json!(null)),
        direction
            .clone()
            .prop_map(|d| json!([{"field": "a", "direction": d}])),
        (direction.clone(), direction).prop_map(|(d1, d2)| {
            json!([{"field": "b", "direction": d1}, {"field": "a", "direction": d2}])
        }),
    ]
}

proptest! {
    #[test]
    fn paging_yields_exactly_the_sorted_full_result(
        rows in arb_rows(),
        sort in arb_sort(),
        page_size in 1u64..7,
    ) {
        let mut base = json!({"where": {"a": {"$ne": false}}});
        if !sort.is_null() {
            base["sort"] = sort;
        }
        let full = run(&compile(base.clone()), &rows, NOW);
        prop_assert!(!full.has_more);

        base["limit"] = json!(page_size);
        let mut query = compile(base.clone());
        let mut paged = Vec::new();
        // More pages than rows means paging stopped making progress.
        for _ in 0..=rows.len() {
            let page = run(&query, &rows, NOW);
            prop_assert!(page.results.len() as u64 <= page_size);
            prop_assert_eq!(page.has_more, page.next_cursor.is_some());
            paged.extend(page.results);
            match page.next_cursor {
                Some(cursor) => query = with_cursor(base.clone(), &cursor),
                None => break,
            }
        }
        prop_assert_eq!(paged, full.results);
    }
}
