//! Generation of the JSON Schemas in `schemas/` from the message types (requirement SEC-03):
//! one `<TYPE>.json` per message type plus `index.json`, which dispatches on `type`.
//!
//! The files are pretty-printed with sorted keys and a trailing newline so that they are
//! stable under regeneration; a test fails when the checked-in files are stale.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::{MESSAGE_TYPES, message_body_schemas};

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Every message type with its complete schema (body plus the `type` constant).
pub(crate) fn message_schema_values() -> Vec<(&'static str, Value)> {
    message_body_schemas(&SchemaSettings::draft2020_12())
        .into_iter()
        .map(|(name, schema)| {
            let mut value = with_type_constant(schema.to_value(), name);
            add_integer_bounds(&mut value);
            nullable_as_if_else(&mut value);
            (name, value)
        })
        .collect()
}

/// Rewrites schemars' `anyOf: [T, {type: null}]` for `Option<T>` as `if null / else T`: the
/// same language, but violations inside `T` are then reported at their own path instead of
/// as one "matches none of anyOf" at the optional field.
fn nullable_as_if_else(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let null_branch = json!({"type": "null"});
            let inner = match map.get("anyOf") {
                Some(Value::Array(branches)) if branches.len() == 2 => branches
                    .iter()
                    .position(|b| *b == null_branch)
                    .map(|null_at| branches[1 - null_at].clone()),
                _ => None,
            };
            if let Some(inner) = inner {
                map.remove("anyOf");
                map.insert("if".to_owned(), null_branch);
                map.insert("else".to_owned(), inner);
            }
            map.values_mut().for_each(nullable_as_if_else);
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_as_if_else),
        _ => {}
    }
}

/// schemars marks fixed-width integers only with a `format`, which validators do not
/// enforce; the explicit bounds make e.g. a `u32` hash above 2³²−1 a violation.
fn add_integer_bounds(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let bounds: Option<(Value, Value)> = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((0.into(), u8::MAX.into())),
                Some("uint16") => Some((0.into(), u16::MAX.into())),
                Some("uint32") => Some((0.into(), u32::MAX.into())),
                Some("uint64") => Some((0.into(), u64::MAX.into())),
                Some("int32") => Some((i32::MIN.into(), i32::MAX.into())),
                Some("int64") => Some((i64::MIN.into(), i64::MAX.into())),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                map.entry("minimum").or_insert(min);
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(add_integer_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(add_integer_bounds),
        _ => {}
    }
}

/// Adds the required `type: <name>` property to a message body schema.
fn with_type_constant(mut schema: Value, name: &str) -> Value {
    if let Value::Object(root) = &mut schema {
        let properties = root
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(properties) = properties {
            properties.insert("type".to_owned(), json!({ "const": name }));
        }
        let required = root
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(required) = required {
            required.insert(0, Value::from("type"));
        }
        root.insert("type".to_owned(), Value::from("object"));
    }
    schema
}

/// The index schema: any known `type`, then the schema of that type.
fn index_schema() -> Value {
    let branches: Vec<Value> = MESSAGE_TYPES
        .iter()
        .map(|name| {
            json!({
                "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                "then": {"$ref": format!("{name}.json")}
            })
        })
        .collect();
    json!({
        "$schema": DRAFT,
        "title": "Message",
        "description": "Any TopGun wire message; dispatches on `type` to <TYPE>.json.",
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": MESSAGE_TYPES}},
        "allOf": branches
    })
}

/// Recursively sorts object keys so that the output does not depend on field order.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn render(value: Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
    text.push('\n');
    text
}

/// Every schema file: file name → contents.
pub fn generate() -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = message_schema_values()
        .into_iter()
        .map(|(name, schema)| (format!("{name}.json"), render(schema)))
        .collect();
    files.insert("index.json".to_owned(), render(index_schema()));
    files
}

/// Writes every schema file into `dir` and removes `.json` files that are no longer generated.
pub fn write_schemas(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let files = generate();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let stale = path.extension().is_some_and(|ext| ext == "json")
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !files.contains_key(n));
        if stale {
            std::fs::remove_file(&path)?;
        }
    }
    for (name, contents) in &files {
        std::fs::write(dir.join(name), contents)?;
    }
    Ok(())
}
