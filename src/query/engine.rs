//! A compiled query and its one-shot execution: filter, sort, cursor, limit.
//!
//! [`CompiledQuery`] is built once per `QUERY_SUB` (or client-side query) and then used
//! both to answer the initial `QUERY_RESP` ([`CompiledQuery::execute`]) and by live
//! maintenance, which needs the same filter ([`CompiledQuery::matches`]), order
//! ([`CompiledQuery::compare`]) and window size ([`CompiledQuery::limit`]).

use std::cmp::Ordering;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Query;
use super::cursor::{self, CursorCheck, CursorContext, QueryFingerprint};
use super::error::{QueryError, QueryLimits};
use super::filter::Filter;
use super::sort::SortOrder;

/// What became of the cursor a query carried (`QUERY_RESP.cursorStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CursorStatus {
    /// The cursor was honoured: results start right after its position.
    Valid,
    /// The cursor was too old; results start from the beginning.
    Expired,
    /// The cursor was malformed, tampered with or for another query; results start from
    /// the beginning.
    Invalid,
    /// The query carried no cursor.
    None,
}

/// One page of query results.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    /// Matching `(key, value)` rows in sort order.
    pub results: Vec<(String, Value)>,
    /// A cursor for the next page; present exactly when `has_more`.
    pub next_cursor: Option<String>,
    /// Whether more matching rows follow this page.
    pub has_more: bool,
    /// What became of the query's cursor.
    pub cursor_status: CursorStatus,
}

/// A validated, ready-to-run query.
#[derive(Debug, Clone)]
pub struct CompiledQuery {
    filter: Filter,
    order: SortOrder,
    limit: Option<usize>,
    cursor: Option<String>,
    fingerprint: QueryFingerprint,
}

impl CompiledQuery {
    /// Validates and compiles `query`; errors describe what the client got wrong.
    pub fn compile(query: &Query, limits: &QueryLimits) -> Result<Self, QueryError> {
        let order = SortOrder::compile(query.sort.as_ref());
        if order.len() > limits.max_children {
            return Err(QueryError::TooWide {
                what: "sort",
                count: order.len(),
                max: limits.max_children,
            });
        }
        Ok(Self {
            filter: Filter::compile(query, limits)?,
            order,
            limit: query
                .limit
                .filter(|&limit| limit > 0)
                .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX)),
            cursor: query.cursor.clone(),
            fingerprint: QueryFingerprint::of(query)?,
        })
    }

    /// Whether a record value (for OR maps: the array of live values) matches the filter.
    pub fn matches(&self, value: &Value) -> bool {
        self.filter.matches(value)
    }

    /// Whether rows are ordered by key alone (no sort fields; `_key` terms may reverse it),
    /// so a row's place does not depend on its value.
    pub fn orders_by_key(&self) -> bool {
        !self.order.has_fields()
    }

    /// The result order of two `(key, value)` rows; total, ties broken by key.
    pub fn compare(&self, a: (&str, &Value), b: (&str, &Value)) -> Ordering {
        self.order.compare_rows(a, b)
    }

    /// The result order (live windows place rows by it).
    pub fn order(&self) -> &SortOrder {
        &self.order
    }

    /// The maximum page size; `None` when unlimited (absent or 0 on the wire).
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Runs the query over `candidates` (live records, keys unique) and returns one page.
    pub fn execute<'a>(
        &self,
        candidates: impl Iterator<Item = (&'a str, &'a Value)>,
        context: &CursorContext<'_>,
    ) -> Result<QueryPage, QueryError> {
        let mut rows: Vec<_> = candidates
            .filter(|(_, value)| self.filter.matches(value))
            .map(|(key, value)| (self.order.position(key, value), value))
            .collect();
        rows.sort_by(|a, b| self.order.compare(&a.0, &b.0));

        let (start, cursor_status) = self.resume_index(&rows, context);
        let remaining = &rows[start..];
        let take = self
            .limit
            .map_or(remaining.len(), |limit| limit.min(remaining.len()));
        let page = &remaining[..take];
        let has_more = remaining.len() > take;
        let next_cursor = match page.last() {
            Some((position, _)) if has_more => {
                Some(cursor::encode(position, self.fingerprint, context)?)
            }
            _ => None,
        };
        Ok(QueryPage {
            results: page
                .iter()
                .map(|(position, value)| (position.key().to_owned(), (*value).clone()))
                .collect(),
            next_cursor,
            has_more,
            cursor_status,
        })
    }

    /// Index of the first sorted row after the query's cursor, and the cursor's status.
    fn resume_index<T>(
        &self,
        rows: &[(super::sort::Position<'_>, T)],
        context: &CursorContext<'_>,
    ) -> (usize, CursorStatus) {
        let Some(token) = &self.cursor else {
            return (0, CursorStatus::None);
        };
        match cursor::decode(token, self.fingerprint, self.order.len(), context) {
            CursorCheck::Valid(after) => {
                let after = after.as_position();
                let start = rows.partition_point(|(position, _)| {
                    self.order.compare(position, &after) != Ordering::Greater
                });
                (start, CursorStatus::Valid)
            }
            CursorCheck::Expired => (0, CursorStatus::Expired),
            CursorCheck::Invalid => (0, CursorStatus::Invalid),
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
