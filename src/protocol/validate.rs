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
                let compiled = jsonschema::validator_for(&schema).map_err(|e| e.to_string());
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
                let compiled = jsonschema::options_for::<TapeJson>().build(&schema).ok();
                (name, compiled)
            })
            .collect()
    })
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
