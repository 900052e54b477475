//! Validation tests: violations carry JSON-pointer paths and every limit of SEC-03 bites.

use serde_json::{Value, json};

use super::golden;
use crate::protocol::codec::{DecodeError, Frame, Limits, decode, decode_value};
use crate::protocol::schema::message_schema_values;
use crate::protocol::validate::inline_refs;
use crate::protocol::{MESSAGE_TYPES, Violation, validate};

fn op(map_name: &str, key: &str) -> Value {
    json!({
        "id": "1", "mapName": map_name, "opType": "PUT", "key": key,
        "record": {"value": 1, "timestamp": {"millis": 1, "counter": 0, "nodeId": "n"}}
    })
}

fn op_batch(ops: Vec<Value>) -> Value {
    json!({"type": "OP_BATCH", "payload": {"ops": ops}})
}

fn paths(violations: &[Violation]) -> Vec<&str> {
    let mut paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    paths
}

#[test]
fn every_schema_compiles_and_requires_its_type() {
    for name in MESSAGE_TYPES {
        let wrong_type = json!({"type": "SOMETHING_ELSE"});
        let violations = validate(name, &wrong_type).unwrap_err();
        assert!(
            violations
                .iter()
                .all(|v| !v.reason.contains("does not compile")),
            "{name}: {violations:?}"
        );
        assert!(
            violations.iter().any(|v| v.path == "/type"),
            "{name}: {violations:?}"
        );
    }
}

#[test]
fn valid_op_batch_passes() {
    assert_eq!(
        validate("OP_BATCH", &op_batch(vec![op("todos", "t1")])),
        Ok(())
    );
}

#[test]
fn bad_op_batch_lists_every_violation_with_its_path() {
    let mut bad_type = op("todos", "t1");
    bad_type["opType"] = json!("BOGUS");
    let mut bad_counter = op("todos", "t2");
    bad_counter["record"]["timestamp"]["counter"] = json!(4_294_967_296u64);
    let mut no_key = op("todos", "t3");
    no_key.as_object_mut().unwrap().remove("key");
    let message = op_batch(vec![bad_type, bad_counter, no_key]);
    let violations = validate("OP_BATCH", &message).unwrap_err();
    assert_eq!(
        paths(&violations),
        vec![
            "/payload/ops/0/opType",
            "/payload/ops/1/record/timestamp/counter",
            "/payload/ops/2",
        ]
    );
    assert!(violations.iter().all(|v| !v.reason.is_empty()));
    match decode(Frame::Text(&message.to_string())) {
        Err(DecodeError::Invalid {
            type_name,
            violations: v,
        }) => {
            assert_eq!(type_name, "OP_BATCH");
            assert_eq!(v, violations);
        }
        other => panic!("expected a schema violation, got {other:?}"),
    }
}

#[test]
fn names_keys_and_tokens_are_length_limited() {
    let long_name = "m".repeat(257);
    let long_key = "k".repeat(1025);
    let message = op_batch(vec![op(&long_name, "k"), op("m", &long_key), op("", "k")]);
    assert_eq!(
        paths(&validate("OP_BATCH", &message).unwrap_err()),
        vec![
            "/payload/ops/0/mapName",
            "/payload/ops/1/key",
            "/payload/ops/2/mapName"
        ]
    );
    assert_eq!(
        validate("OP_BATCH", &op_batch(vec![op(&"m".repeat(256), "k")])),
        Ok(())
    );

    let control = op_batch(vec![op("bad\u{0007}name", "k")]);
    assert_eq!(
        paths(&validate("OP_BATCH", &control).unwrap_err()),
        vec!["/payload/ops/0/mapName"]
    );

    let token = json!({"type": "AUTH", "token": "t".repeat(16 * 1024 + 1)});
    assert_eq!(
        paths(&validate("AUTH", &token).unwrap_err()),
        vec!["/token"]
    );
}

#[test]
fn too_many_ops_are_rejected_at_the_array() {
    let ops = vec![op("m", "k"); 10_001];
    let violations = validate("OP_BATCH", &op_batch(ops)).unwrap_err();
    assert_eq!(paths(&violations), vec!["/payload/ops"]);
    assert_eq!(
        validate("OP_BATCH", &op_batch(vec![op("m", "k"); 10_000])),
        Ok(())
    );
}

#[test]
fn topic_names_follow_the_topic_grammar() {
    let topic = |name: &str| json!({"type": "TOPIC_SUB", "payload": {"topic": name}});
    assert_eq!(validate("TOPIC_SUB", &topic("chat/room-1:a.b_c")), Ok(()));
    for bad in ["has space", "", "ünïcode", &"t".repeat(257)] {
        assert_eq!(
            paths(&validate("TOPIC_SUB", &topic(bad)).unwrap_err()),
            vec!["/payload/topic"],
            "{bad:?}"
        );
    }
}

#[test]
fn integer_ranges_and_paths_are_checked() {
    let root = |hash: Value| json!({"type": "QUERY_SYNC_INIT", "payload": {"queryId": "q", "rootHash": hash}});
    assert_eq!(
        validate("QUERY_SYNC_INIT", &root(json!(4_294_967_295u64))),
        Ok(())
    );
    for bad in [json!(4_294_967_296u64), json!(-1), json!(1.5)] {
        assert_eq!(
            paths(&validate("QUERY_SYNC_INIT", &root(bad)).unwrap_err()),
            vec!["/payload/rootHash"]
        );
    }
    let bucket = |path: &str| json!({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": "m", "path": path}});
    assert_eq!(validate("MERKLE_REQ_BUCKET", &bucket("f55")), Ok(()));
    assert!(validate("MERKLE_REQ_BUCKET", &bucket("f55a")).is_err());
    assert!(validate("MERKLE_REQ_BUCKET", &bucket("F")).is_err());
    // The deep-sync extension (crate::merkle::DeepRequest).
    for deep in ["+f", "+f55,0a3c,12345678", "=f55a", "=f55a,0123abcd"] {
        assert_eq!(
            validate("MERKLE_REQ_BUCKET", &bucket(deep)),
            Ok(()),
            "{deep}"
        );
    }
    let too_many = format!("+{}", vec!["f55a"; 65].join(","));
    for bad in [
        "+",
        "=f55",
        "+f55,",
        "+123456789",
        "+F55",
        "-f55",
        too_many.as_str(),
    ] {
        assert!(
            validate("MERKLE_REQ_BUCKET", &bucket(bad)).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn unknown_types_are_reported() {
    assert_eq!(
        validate("NOPE", &json!({"type": "NOPE"})),
        Err(vec![Violation {
            path: "/type".into(),
            reason: "unknown message type \"NOPE\"".into()
        }])
    );
}

#[test]
fn inlining_replaces_plain_references_and_keeps_cycles_and_constrained_ones() {
    let schema = json!({
        "$defs": {
            "Name": {"type": "string", "maxLength": 3},
            "Tree": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Tree"}}}
        },
        "properties": {
            "a": {"$ref": "#/$defs/Name", "description": "an annotation only"},
            "b": {"$ref": "#/$defs/Name", "minLength": 2},
            "c": {"$ref": "#/$defs/Tree"}
        }
    });
    let inlined = inline_refs(schema.clone());
    assert_eq!(
        inlined["properties"]["a"],
        json!({"type": "string", "maxLength": 3})
    );
    assert_eq!(inlined["properties"]["b"], schema["properties"]["b"]);
    assert_eq!(
        inlined["properties"]["c"],
        json!({"type": "object", "properties": {"child": {"$ref": "#/$defs/Tree"}}})
    );
    assert_eq!(inlined["$defs"], schema["$defs"]);
}

/// Every recorded frame, and variants of it with one value replaced, gets the same verdict
/// and the same violation paths from each message schema as written and as inlined.
#[test]
fn inlined_schemas_judge_recorded_frames_and_their_variants_alike() {
    let validators: std::collections::HashMap<_, _> = message_schema_values()
        .into_iter()
        .map(|(name, schema)| {
            let written = jsonschema::validator_for(&schema).unwrap();
            let inlined = jsonschema::validator_for(&inline_refs(schema)).unwrap();
            (name, (written, inlined))
        })
        .collect();
    let paths = |validator: &jsonschema::Validator, message: &Value| {
        let mut paths: Vec<String> = validator
            .iter_errors(message)
            .map(|error| error.instance_path().to_string())
            .collect();
        paths.sort();
        paths
    };
    let mut compared = 0;
    for generation in ["client-2026-01", "client-2026-08"] {
        for (file, record) in golden::frames(generation) {
            let bytes = golden::hex(record["hex"].as_str().unwrap());
            let Ok(message) = decode_value(Frame::Binary(&bytes), &Limits::default()) else {
                continue;
            };
            let Some((written, inlined)) = message["type"]
                .as_str()
                .and_then(|name| validators.get(name))
            else {
                continue;
            };
            for variant in std::iter::once(message.clone()).chain(variants(&message)) {
                assert_eq!(
                    paths(written, &variant),
                    paths(inlined, &variant),
                    "{file}: {variant}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 1000, "only {compared} messages compared");
}

/// The message with one leaf (or container) at a time replaced by a few wrong or edge values.
fn variants(message: &Value) -> Vec<Value> {
    let mut pointers = Vec::new();
    collect_pointers(message, String::new(), &mut pointers);
    let replacements = [
        json!(null),
        json!(""),
        json!(-1),
        json!("x".repeat(300)),
        json!({}),
    ];
    let mut out = Vec::new();
    for pointer in pointers.iter().filter(|pointer| *pointer != "/type") {
        for replacement in &replacements {
            let mut variant = message.clone();
            if let Some(slot) = variant.pointer_mut(pointer) {
                *slot = replacement.clone();
                out.push(variant);
            }
        }
    }
    out
}

fn collect_pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => map.iter().for_each(|(key, item)| {
            let child = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
            out.push(child.clone());
            collect_pointers(item, child, out);
        }),
        Value::Array(items) => items.iter().enumerate().for_each(|(index, item)| {
            let child = format!("{at}/{index}");
            out.push(child.clone());
            collect_pointers(item, child, out);
        }),
        _ => {}
    }
}
