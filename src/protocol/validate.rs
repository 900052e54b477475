//! The ingress validator: each message is checked against the generated JSON Schema of its
//! `type` (requirement SEC-03). Validators are compiled once, on first use, one per type, so
//! a frame costs one hash lookup plus one schema walk.

use std::collections::HashMap;
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codec::tape::{TapeJson, TapeNode};
use super::schema::message_schema_values;

/// One schema violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Violation {
    /// JSON pointer into the message (`""` = the message itself).
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

/// A compiled validator, or why our own schema failed to compile.
type Compiled = Result<jsonschema::Validator, String>;

fn validators() -> &'static HashMap<&'static str, Compiled> {
    static VALIDATORS: OnceLock<HashMap<&'static str, Compiled>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        message_schema_values()
            .into_iter()
            .map(|(name, schema)| {
                let compiled =
                    jsonschema::validator_for(&inline_refs(schema)).map_err(|e| e.to_string());
                (name, compiled)
            })
            .collect()
    })
}

/// The same validators over the msgpack fast path's tape ([`super::codec`]).
fn tape_validators() -> &'static HashMap<&'static str, Option<jsonschema::Validator<TapeJson>>> {
    static VALIDATORS: OnceLock<HashMap<&'static str, Option<jsonschema::Validator<TapeJson>>>> =
        OnceLock::new();
    VALIDATORS.get_or_init(|| {
        message_schema_values()
            .into_iter()
            .map(|(name, schema)| {
                let compiled = jsonschema::options_for::<TapeJson>()
                    .build(&inline_refs(schema))
                    .ok();
                (name, compiled)
            })
            .collect()
    })
}

/// The schema with each local `$ref` to one of its `$defs` replaced by that definition, for
/// validating only: the same language, without a reference to follow per instance (about a
/// tenth of the validator's work on an `OP_BATCH`). A reference is kept where the definition
/// refers to itself, directly or through others, and where the referring object has keywords
/// besides annotations, whose meaning beside `$ref` merging would change.
pub(super) fn inline_refs(mut schema: Value) -> Value {
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    if let Value::Object(map) = &mut schema {
        for (key, value) in map.iter_mut() {
            if key != "$defs" {
                inline_in(value, &defs, &mut Vec::new());
            }
        }
    }
    schema
}

/// Inlines the references in `schema` (see [`inline_refs`]); `open` holds the definitions
/// being inlined around it, so a cycle keeps its `$ref`.
fn inline_in(schema: &mut Value, defs: &Value, open: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            let target = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|reference| reference.strip_prefix("#/$defs/"))
                .filter(|name| !open.iter().any(|open| open == name))
                .map(str::to_owned);
            let only_annotations = map
                .keys()
                .all(|key| matches!(key.as_str(), "$ref" | "description" | "title" | "default"));
            if let (Some(name), true) = (target, only_annotations)
                && let Some(Value::Object(definition)) = defs.get(&name)
            {
                let mut inlined = Value::Object(definition.clone());
                open.push(name);
                inline_in(&mut inlined, defs, open);
                open.pop();
                *schema = inlined;
                return;
            }
            for value in map.values_mut() {
                inline_in(value, defs, open);
            }
        }
        Value::Array(items) => {
            for item in items {
                inline_in(item, defs, open);
            }
        }
        _ => {}
    }
}

/// Whether `message`, a tape node, conforms to the schema of `type_name`: the verdict
/// [`validate`] gives for the same message as a `Value`. False also when there is no such
/// schema; the caller then takes the general path, which says why.
pub(crate) fn is_valid_tape(type_name: &str, message: TapeNode<'_>) -> bool {
    tape_validators()
        .get(type_name)
        .and_then(Option::as_ref)
        .is_some_and(|validator| validator.is_valid(message))
}

/// The static name of a known message type.
pub fn known_type(type_name: &str) -> Option<&'static str> {
    validators().get_key_value(type_name).map(|(name, _)| *name)
}

/// Checks `message` against the schema of `type_name`, listing every violation.
pub fn validate(type_name: &str, message: &Value) -> Result<(), Vec<Violation>> {
    match validators().get(type_name) {
        None => Err(vec![Violation {
            path: "/type".to_owned(),
            reason: format!("unknown message type {type_name:?}"),
        }]),
        Some(Err(compile_error)) => Err(vec![Violation {
            path: String::new(),
            reason: format!("schema of {type_name} does not compile: {compile_error}"),
        }]),
        Some(Ok(validator)) if validator.is_valid(message) => Ok(()),
        Some(Ok(validator)) => Err(validator
            .iter_errors(message)
            .map(|error| Violation {
                path: error.instance_path().to_string(),
                reason: error.masked().to_string(),
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MESSAGE_TYPES;

    /// A schema the tape cannot be validated against would send its type down the general
    /// path for good: correct, but silently slower.
    #[test]
    fn every_message_type_has_a_tape_validator() {
        for name in MESSAGE_TYPES {
            assert!(
                tape_validators().get(name).is_some_and(Option::is_some),
                "{name}"
            );
        }
    }
}
