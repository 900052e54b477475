//! Live-query definitions as they travel in `QUERY_SUB` (PROTOCOL.md §3.6, §4.7).
//!
//! This module holds the wire types; evaluation lives in the submodules:
//! [`engine`] (compile once, execute pages), [`filter`] (where / predicate), [`sort`],
//! [`cursor`] (signed keyset cursors), [`pattern`] (`regex` / `like`), [`value`] (field
//! paths and comparison rules) and [`error`] (errors and limits).

pub mod cursor;
pub mod engine;
pub mod error;
pub mod filter;
pub mod pattern;
pub mod sort;
pub mod value;

pub use cursor::{CursorContext, DEFAULT_CURSOR_MAX_AGE_MS};
pub use engine::{CompiledQuery, CursorStatus, QueryPage};
pub use error::{QueryError, QueryLimits};

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A query over one map: filter (`where` or `predicate`), sort, limit and cursor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    /// Field equality / operator object (`{field: value}` or `{field: {$gt: 1}}`).
    /// Ignored when `predicate` is present.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<IndexMap<String, Value>>,
    /// A predicate tree; takes precedence over `where`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate: Option<PredicateNode>,
    /// Sort order, in either wire form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<SortSpec>,
    /// Maximum number of results; 0 or absent means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// An opaque cursor from a previous `QUERY_RESP.nextCursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub cursor: Option<String>,
    /// 2026-08 grouping (decoded, not served yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<String>>,
    /// 2026-08 aggregations (decoded, not served yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Vec<Aggregation>>,
}

/// One node of a predicate tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredicateNode {
    /// The operator.
    pub op: PredicateOp,
    /// The record field a leaf operator tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// The operand of a leaf operator (user data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Operands of `and`, `or`, `not`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<PredicateNode>>,
    /// 2026-08: compare against another field of the same record instead of `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_ref: Option<String>,
}

/// Predicate operators: the 2026-01 set plus the 2026-08 additions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PredicateOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Regex,
    And,
    Or,
    Not,
    In,
    Between,
    IsNull,
    IsNotNull,
    ContainsAll,
    ContainsAny,
    StartsWith,
    EndsWith,
}

/// Sort order in either wire form: the 2026-08 ordered array or the 2026-01 object
/// (whose key order is the priority order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SortSpec {
    /// `[{field, direction}]` (2026-08 clients).
    Fields(Vec<SortField>),
    /// `{field: "asc" | "desc"}` (2026-01 clients).
    Object(IndexMap<String, SortDirection>),
}

impl SortSpec {
    /// The sort fields in priority order, whichever form was sent.
    pub fn fields(&self) -> Vec<SortField> {
        match self {
            SortSpec::Fields(fields) => fields.clone(),
            SortSpec::Object(map) => map
                .iter()
                .map(|(field, direction)| SortField {
                    field: field.clone(),
                    direction: *direction,
                })
                .collect(),
        }
    }
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SortField {
    /// The record field (or `_key`).
    pub field: String,
    /// Ascending or descending.
    pub direction: SortDirection,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortDirection {
    Asc,
    Desc,
}

/// A 2026-08 aggregation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Aggregation {
    /// The function.
    pub func: AggregationFunc,
    /// The field it applies to (absent for `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Aggregation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AggregationFunc {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sort_accepts_both_wire_forms_in_priority_order() {
        let object: SortSpec =
            serde_json::from_value(json!({"prio": "desc", "title": "asc"})).unwrap();
        let array: SortSpec = serde_json::from_value(
            json!([{"field": "prio", "direction": "desc"}, {"field": "title", "direction": "asc"}]),
        )
        .unwrap();
        assert_eq!(object.fields(), array.fields());
        assert_eq!(object.fields()[0].field, "prio");
    }

    #[test]
    fn predicate_ops_use_wire_spelling() {
        let node: PredicateNode =
            serde_json::from_value(json!({"op": "isNotNull", "attribute": "a"})).unwrap();
        assert_eq!(node.op, PredicateOp::IsNotNull);
        assert!(serde_json::from_value::<PredicateNode>(json!({"op": "bogus"})).is_err());
    }
}
