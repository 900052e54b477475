//! The checked-in `schemas/` must equal what the types generate.

use std::path::Path;

use crate::protocol::MESSAGE_TYPES;
use crate::protocol::schema::{generate, write_schemas};

const SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");

#[test]
fn regenerate_when_asked() {
    // `TOPGUN_WRITE_SCHEMAS=1 cargo test --lib protocol::tests::schema` rewrites the files.
    if std::env::var("TOPGUN_WRITE_SCHEMAS").as_deref() == Ok("1") {
        write_schemas(Path::new(SCHEMA_DIR)).unwrap();
    }
}

#[test]
fn checked_in_schemas_are_up_to_date() {
    let expected = generate();
    let mut stale = Vec::new();
    for (name, contents) in &expected {
        match std::fs::read_to_string(Path::new(SCHEMA_DIR).join(name)) {
            Ok(actual) if &actual == contents => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(_) => stale.push(format!("{name} is missing")),
        }
    }
    for entry in std::fs::read_dir(SCHEMA_DIR).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !expected.contains_key(&name) {
            stale.push(format!("{name} is no longer generated"));
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is stale, run `just schemas` (or TOPGUN_WRITE_SCHEMAS=1 cargo test --lib \
         protocol::tests::schema): {stale:?}"
    );
}

#[test]
fn one_file_per_type_plus_index() {
    let files = generate();
    assert_eq!(files.len(), MESSAGE_TYPES.len() + 1);
    assert!(files.contains_key("index.json"));
    assert!(files.contains_key("OP_BATCH.json"));
    for contents in files.values() {
        assert!(contents.ends_with("}\n"));
    }
}

#[test]
fn op_batch_schema_carries_limits() {
    let files = generate();
    let schema: serde_json::Value = serde_json::from_str(&files["OP_BATCH.json"]).unwrap();
    assert_eq!(schema["properties"]["type"]["const"], "OP_BATCH");
    assert_eq!(schema["required"][0], "type");
    let map_name = &schema["$defs"]["MapName"];
    assert_eq!(map_name["minLength"], 1);
    assert_eq!(map_name["maxLength"], 256);
    assert_eq!(schema["$defs"]["Key"]["maxLength"], 1024);
    assert_eq!(
        schema["$defs"]["OpBatchPayload"]["properties"]["ops"]["maxItems"],
        10_000
    );
}

#[test]
fn message_type_list_has_no_duplicates() {
    let mut names = MESSAGE_TYPES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), MESSAGE_TYPES.len());
    assert_eq!(MESSAGE_TYPES.len(), 85);
}
