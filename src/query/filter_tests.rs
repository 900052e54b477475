//! Tests for [`super`]: every operator, `where` objects, and compile-time validation.

use super::*;
use serde_json::json;

fn compile(query: Value) -> Result<Filter, QueryError> {
    Filter::compile(
        &serde_json::from_value(query).unwrap(),
        &QueryLimits::default(),
    )
}

fn predicate(node: Value) -> Filter {
    compile(json!({ "predicate": node })).unwrap()
}

fn leaf(op: &str, attribute: &str, value: Value) -> Filter {
    predicate(json!({"op": op, "attribute": attribute, "value": value}))
}

fn rejects(node: Value) -> QueryError {
    compile(json!({ "predicate": node })).unwrap_err()
}

fn record() -> Value {
    json!({
        "name": "Alice Smith",
        "age": 30,
        "score": 4.5,
        "active": true,
        "nothing": null,
        "tags": ["a", "b", 3],
        "min": 18,
        "max": 65,
        "nick": "Alice Smith",
        "address": {"city": "Paris", "zip": "75001"},
    })
}

#[test]
fn empty_query_matches_everything() {
    assert!(compile(json!({})).unwrap().matches(&record()));
    assert!(compile(json!({"where": {}})).unwrap().matches(&json!(7)));
}

#[test]
fn eq_and_neq_are_strict() {
    assert!(leaf("eq", "age", json!(30)).matches(&record()));
    assert!(leaf("eq", "age", json!(30.0)).matches(&record()));
    assert!(!leaf("eq", "age", json!("30")).matches(&record()));
    assert!(!leaf("eq", "tags", json!(["a", "b", 3])).matches(&record()));
    assert!(!leaf("eq", "missing", json!(1)).matches(&record()));
    assert!(leaf("neq", "missing", json!(1)).matches(&record()));
    assert!(leaf("neq", "age", json!("30")).matches(&record()));
    assert!(!leaf("neq", "age", json!(30)).matches(&record()));
}

#[test]
fn null_value_compares_with_null_not_absent() {
    assert!(leaf("eq", "nothing", json!(null)).matches(&record()));
    assert!(!leaf("eq", "missing", json!(null)).matches(&record()));
    let no_value = predicate(json!({"op": "eq", "attribute": "nothing"}));
    assert!(no_value.matches(&record()));
}

#[test]
fn relational_operators() {
    let r = record();
    assert!(leaf("gt", "age", json!(29)).matches(&r));
    assert!(!leaf("gt", "age", json!(30)).matches(&r));
    assert!(leaf("gte", "age", json!(30)).matches(&r));
    assert!(leaf("lt", "score", json!(5)).matches(&r));
    assert!(leaf("lte", "score", json!(4.5)).matches(&r));
    assert!(leaf("gt", "name", json!("Al")).matches(&r));
    assert!(
        !leaf("gt", "age", json!("29")).matches(&r),
        "mixed types never compare"
    );
    assert!(
        !leaf("lt", "missing", json!(100)).matches(&r),
        "absent never compares"
    );
    assert!(
        !leaf("lt", "nothing", json!(100)).matches(&r),
        "null never compares"
    );
}

#[test]
fn like_operator() {
    let r = record();
    assert!(leaf("like", "name", json!("alice%")).matches(&r));
    assert!(leaf("like", "name", json!("%SMITH")).matches(&r));
    assert!(leaf("like", "name", json!("Alic_ Smith")).matches(&r));
    assert!(
        !leaf("like", "name", json!("Alice")).matches(&r),
        "full match only"
    );
    assert!(
        !leaf("like", "name", json!("Alice.Smith")).matches(&r),
        "dot is literal"
    );
    assert!(
        !leaf("like", "age", json!("30")).matches(&r),
        "strings only"
    );
    assert!(!leaf("like", "missing", json!("%")).matches(&r));
}

#[test]
fn regex_operator() {
    let r = record();
    assert!(leaf("regex", "name", json!("ce S")).matches(&r));
    assert!(leaf("regex", "name", json!("^Alice")).matches(&r));
    assert!(
        !leaf("regex", "name", json!("^alice")).matches(&r),
        "case-sensitive"
    );
    assert!(
        !leaf("regex", "age", json!("3")).matches(&r),
        "strings only"
    );
    assert!(leaf("regex", "address.zip", json!(r"^\d{5}$")).matches(&r));
}

#[test]
fn in_operator() {
    let r = record();
    assert!(leaf("in", "age", json!([1, 30, "x"])).matches(&r));
    assert!(!leaf("in", "age", json!(["30"])).matches(&r));
    assert!(!leaf("in", "age", json!([])).matches(&r));
    assert!(!leaf("in", "missing", json!([null])).matches(&r));
    assert!(leaf("in", "nothing", json!([null])).matches(&r));
}

#[test]
fn between_is_inclusive() {
    let r = record();
    assert!(leaf("between", "age", json!([30, 40])).matches(&r));
    assert!(leaf("between", "age", json!([20, 30])).matches(&r));
    assert!(!leaf("between", "age", json!([31, 40])).matches(&r));
    assert!(leaf("between", "name", json!(["A", "B"])).matches(&r));
    assert!(!leaf("between", "missing", json!([0, 100])).matches(&r));
}

#[test]
fn null_checks() {
    let r = record();
    let op = |op: &str, attribute: &str| predicate(json!({"op": op, "attribute": attribute}));
    assert!(op("isNull", "missing").matches(&r));
    assert!(op("isNull", "nothing").matches(&r));
    assert!(!op("isNull", "age").matches(&r));
    assert!(op("isNotNull", "age").matches(&r));
    assert!(!op("isNotNull", "nothing").matches(&r));
    assert!(!op("isNotNull", "missing").matches(&r));
}

#[test]
fn contains_operators() {
    let r = record();
    assert!(leaf("containsAll", "tags", json!(["a", 3])).matches(&r));
    assert!(!leaf("containsAll", "tags", json!(["a", "z"])).matches(&r));
    assert!(leaf("containsAll", "tags", json!([])).matches(&r));
    assert!(leaf("containsAny", "tags", json!(["z", "b"])).matches(&r));
    assert!(!leaf("containsAny", "tags", json!(["z", "3"])).matches(&r));
    assert!(!leaf("containsAny", "tags", json!([])).matches(&r));
    assert!(
        !leaf("containsAny", "name", json!(["Alice Smith"])).matches(&r),
        "field must be an array"
    );
}

#[test]
fn or_map_values_are_arrays_of_live_values() {
    let values = json!([{"color": "red"}, {"color": "blue"}]);
    assert!(leaf("eq", "1.color", json!("blue")).matches(&values));
    assert!(!leaf("eq", "0.color", json!("blue")).matches(&values));
    assert!(predicate(json!({"op": "isNotNull", "attribute": "0"})).matches(&values));
    assert!(predicate(json!({"op": "isNull", "attribute": "2"})).matches(&values));
}

#[test]
fn starts_and_ends_with() {
    let r = record();
    assert!(leaf("startsWith", "name", json!("Alice")).matches(&r));
    assert!(!leaf("startsWith", "name", json!("alice")).matches(&r));
    assert!(leaf("endsWith", "name", json!("Smith")).matches(&r));
    assert!(!leaf("endsWith", "age", json!("0")).matches(&r));
    assert!(!leaf("startsWith", "missing", json!("")).matches(&r));
}

#[test]
fn value_ref_compares_two_fields() {
    let r = record();
    let node = |op: &str, attribute: &str, reference: &str| {
        predicate(json!({"op": op, "attribute": attribute, "valueRef": reference}))
    };
    assert!(node("eq", "name", "nick").matches(&r));
    assert!(node("gte", "age", "min").matches(&r));
    assert!(!node("gt", "age", "max").matches(&r));
    assert!(
        node("eq", "missing", "alsoMissing").matches(&r),
        "undefined === undefined"
    );
    assert!(!node("eq", "age", "missing").matches(&r));
    assert!(!node("lt", "age", "missing").matches(&r));
    assert!(
        node("startsWith", "name", "address.city")
            .matches(&json!({"name": "Paris 1", "address": {"city": "Paris"}}))
    );
    assert!(
        !node("in", "age", "min").matches(&r),
        "non-array referenced operand"
    );
}

#[test]
fn logical_operators() {
    let r = record();
    let yes = json!({"op": "eq", "attribute": "age", "value": 30});
    let no = json!({"op": "eq", "attribute": "age", "value": 31});
    assert!(predicate(json!({"op": "and", "children": [yes, yes]})).matches(&r));
    assert!(!predicate(json!({"op": "and", "children": [yes, no]})).matches(&r));
    assert!(predicate(json!({"op": "and", "children": []})).matches(&r));
    assert!(predicate(json!({"op": "and"})).matches(&r));
    assert!(predicate(json!({"op": "or", "children": [no, yes]})).matches(&r));
    assert!(!predicate(json!({"op": "or", "children": []})).matches(&r));
    assert!(predicate(json!({"op": "not", "children": [no]})).matches(&r));
    assert!(!predicate(json!({"op": "not", "children": [yes, no]})).matches(&r));
    assert!(predicate(json!({"op": "not"})).matches(&r));
}

#[test]
fn predicate_overrides_where() {
    let filter = compile(json!({
        "where": {"age": 99},
        "predicate": {"op": "eq", "attribute": "age", "value": 30}
    }))
    .unwrap();
    assert!(filter.matches(&record()));
}

#[test]
fn where_equality() {
    let r = record();
    let matches = |entries: Value| compile(json!({ "where": entries })).unwrap().matches(&r);
    assert!(matches(json!({"age": 30, "name": "Alice Smith"})));
    assert!(!matches(json!({"age": 30, "name": "Bob"})));
    assert!(
        !matches(json!({"tags": ["a", "b", 3]})),
        "arrays never match"
    );
    assert!(!matches(json!({"missing": null})));
    assert!(matches(json!({"address.city": "Paris"})));
}

#[test]
fn where_operator_objects() {
    let r = record();
    let matches = |entries: Value| compile(json!({ "where": entries })).unwrap().matches(&r);
    assert!(matches(json!({"age": {"$gt": 18, "$lte": 30}})));
    assert!(!matches(json!({"age": {"$gt": 18, "$lt": 30}})));
    assert!(matches(json!({"age": {"$gte": 30}, "score": {"$lt": 5}})));
    assert!(matches(json!({"age": {"$ne": 31}})));
    assert!(!matches(json!({"age": {"$ne": 30}})));
    assert!(matches(json!({"age": {"$eq": 30}})));
    assert!(matches(json!({"age": {"$neq": 31}})));
    assert!(
        !matches(json!({"age": {"$gt": 18, "$regex": "3"}})),
        "unknown operator"
    );
    assert!(matches(json!({"age": {}})), "no operators hold vacuously");
    assert!(matches(json!({"missing": {"$ne": 1}})));
    assert!(!matches(json!({"missing": {"$gt": 1}})));
}

#[test]
fn leaf_validation_errors() {
    assert_eq!(
        rejects(json!({"op": "eq", "value": 1})),
        QueryError::MissingAttribute { op: "eq" }
    );
    for (op, value) in [
        ("in", json!(1)),
        ("between", json!([1])),
        ("between", json!([1, 2, 3])),
        ("between", json!(5)),
        ("containsAll", json!("a")),
        ("containsAny", json!({"a": 1})),
        ("startsWith", json!(1)),
        ("endsWith", json!(["x"])),
        ("like", json!(5)),
        ("regex", json!(true)),
    ] {
        let err = rejects(json!({"op": op, "attribute": "f", "value": value}));
        assert!(matches!(err, QueryError::BadOperand { .. }), "{op}: {err}");
    }
    let missing = rejects(json!({"op": "in", "attribute": "f"}));
    assert_eq!(
        missing.to_string(),
        "predicate op `in` on `f`: needs a `value` or `valueRef`"
    );
    let pattern_ref = rejects(json!({"op": "regex", "attribute": "f", "valueRef": "g"}));
    assert!(matches!(pattern_ref, QueryError::BadOperand { .. }));
}

#[test]
fn array_operand_size_is_limited() {
    let limits = QueryLimits {
        max_array_operand: 2,
        ..QueryLimits::default()
    };
    let query: Query = serde_json::from_value(
        json!({"predicate": {"op": "in", "attribute": "f", "value": [1, 2, 3]}}),
    )
    .unwrap();
    assert!(matches!(
        Filter::compile(&query, &limits),
        Err(QueryError::BadOperand { .. })
    ));
}

#[test]
fn regex_rejections_surface_as_errors() {
    let long = "a".repeat(QueryLimits::default().max_pattern_len + 1);
    assert!(matches!(
        rejects(json!({"op": "regex", "attribute": "f", "value": long})),
        QueryError::PatternTooLong { .. }
    ));
    assert!(matches!(
        rejects(json!({"op": "regex", "attribute": "f", "value": "(?=x)"})),
        QueryError::UnsupportedRegex { .. }
    ));
    let nested = json!({"op": "or", "children": [{"op": "regex", "attribute": "f", "value": "("}]});
    assert!(matches!(rejects(nested), QueryError::InvalidRegex { .. }));
}

fn chain(depth: usize) -> Value {
    (1..depth).fold(
        json!({"op": "isNull", "attribute": "f"}),
        |child, _| json!({"op": "not", "children": [child]}),
    )
}

#[test]
fn depth_width_and_node_limits() {
    let max_depth = QueryLimits::default().max_depth;
    assert!(compile(json!({"predicate": chain(max_depth)})).is_ok());
    assert_eq!(
        rejects(chain(max_depth + 1)),
        QueryError::TooDeep { max: max_depth }
    );

    let limits = QueryLimits {
        max_children: 2,
        max_nodes: 4,
        ..QueryLimits::default()
    };
    let compile_with =
        |query: Value| Filter::compile(&serde_json::from_value(query).unwrap(), &limits);
    let child = json!({"op": "isNull", "attribute": "f"});
    assert!(matches!(
        compile_with(json!({"predicate": {"op": "and", "children": [child, child, child]}})),
        Err(QueryError::TooWide {
            what: "and",
            count: 3,
            max: 2
        })
    ));
    assert!(matches!(
        compile_with(json!({"where": {"a": 1, "b": 2, "c": 3}})),
        Err(QueryError::TooWide { what: "where", .. })
    ));
    let pair = json!({"op": "or", "children": [child, child]});
    assert!(matches!(
        compile_with(json!({"predicate": {"op": "and", "children": [pair, pair]}})),
        Err(QueryError::TooManyNodes { max: 4 })
    ));
}
