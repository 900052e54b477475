//! The compiled sort order of a query and the positions it compares.
//!
//! Fields are compared in priority order with [`compare_values`]; the pseudo-field `_key`
//! compares record keys by UTF-16 code units. Whatever the sort, ties are finally broken by
//! key (ascending), so the order is total and deterministic — which keyset cursors rely on.
//! Without a sort the order is by key.

use std::cmp::Ordering;

use serde_json::Value;

use super::value::{FieldPath, compare_code_units, compare_values};
use super::{SortDirection, SortSpec};

/// The pseudo-field naming the record key.
pub const KEY_FIELD: &str = "_key";

/// A compiled sort order.
#[derive(Debug, Clone, Default)]
pub struct SortOrder {
    terms: Vec<SortTerm>,
}

#[derive(Debug, Clone)]
struct SortTerm {
    target: Target,
    descending: bool,
}

#[derive(Debug, Clone)]
enum Target {
    Key,
    Field(FieldPath),
}

/// Where a row sits in a sort order: its key and the value of each sort field.
#[derive(Debug, Clone, PartialEq)]
pub struct Position<'a> {
    key: &'a str,
    /// One cell per sort term; `None` for absent fields and for `_key` terms.
    cells: Vec<Option<&'a Value>>,
}

impl<'a> Position<'a> {
    /// A position from its parts (e.g. decoded from a cursor). `cells` must have one entry
    /// per sort term.
    pub fn new(key: &'a str, cells: Vec<Option<&'a Value>>) -> Self {
        Self { key, cells }
    }

    /// The row key.
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// The sort-field values, one per sort term.
    pub fn cells(&self) -> &[Option<&'a Value>] {
        &self.cells
    }
}

impl SortOrder {
    /// Compiles a wire sort specification (either form).
    pub fn compile(spec: Option<&SortSpec>) -> Self {
        let terms = spec
            .map(SortSpec::fields)
            .unwrap_or_default()
            .into_iter()
            .map(|field| SortTerm {
                target: if field.field == KEY_FIELD {
                    Target::Key
                } else {
                    Target::Field(FieldPath::new(&field.field))
                },
                descending: field.direction == SortDirection::Desc,
            })
            .collect();
        Self { terms }
    }

    /// Number of sort terms (the number of cells in a [`Position`]).
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Whether there are no sort terms (the default order: by key).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether some term sorts by a field, so a row's place depends on its value; without
    /// one, the order is by key (ascending or descending).
    pub fn has_fields(&self) -> bool {
        self.terms
            .iter()
            .any(|term| matches!(term.target, Target::Field(_)))
    }

    /// The position of a record.
    pub fn position<'r>(&self, key: &'r str, record: &'r Value) -> Position<'r> {
        Position {
            key,
            cells: self.cells(record).collect(),
        }
    }

    /// A record's value of each sort term; `None` for absent fields and `_key` terms.
    fn cells<'r>(&self, record: &'r Value) -> impl Iterator<Item = Option<&'r Value>> {
        self.terms.iter().map(move |term| match &term.target {
            Target::Key => None,
            Target::Field(path) => path.resolve(record),
        })
    }

    /// A record's sort cells, owned: what [`SortOrder::compare_with_cells`] places a row by
    /// after the record itself has changed.
    pub fn owned_cells(&self, record: &Value) -> Vec<Option<Value>> {
        let mut cells = Vec::with_capacity(self.terms.len());
        self.write_cells(record, &mut cells);
        cells
    }

    /// [`SortOrder::owned_cells`] into `cells`, reusing its allocation.
    pub fn write_cells(&self, record: &Value, cells: &mut Vec<Option<Value>>) {
        cells.clear();
        cells.extend(self.cells(record).map(Option::<&Value>::cloned));
    }

    /// Compares a row with the row of `key` whose sort cells are `cells` (from
    /// [`SortOrder::owned_cells`]), exactly as [`SortOrder::compare_rows`] compares the rows.
    pub fn compare_with_cells(
        &self,
        row: (&str, &Value),
        key: &str,
        cells: &[Option<Value>],
    ) -> Ordering {
        self.compare_by(row.0, key, |i, path| {
            (path.resolve(row.1), cells.get(i).and_then(Option::as_ref))
        })
    }

    /// Compares two positions: each term in priority order, then the key.
    pub fn compare(&self, a: &Position<'_>, b: &Position<'_>) -> Ordering {
        self.compare_by(a.key, b.key, |i, _| (cell(a, i), cell(b, i)))
    }

    /// Compares two rows exactly as [`SortOrder::compare`] compares their positions, resolving
    /// each sort field only when the terms before it tie and without building the positions
    /// (live windows compare a changed row against many held ones).
    pub fn compare_rows(&self, a: (&str, &Value), b: (&str, &Value)) -> Ordering {
        self.compare_by(a.0, b.0, |_, path| (path.resolve(a.1), path.resolve(b.1)))
    }

    /// The comparison itself; `cells(i, path)` yields both rows' values of sort term `i`.
    fn compare_by<'v>(
        &self,
        a_key: &str,
        b_key: &str,
        cells: impl Fn(usize, &FieldPath) -> (Option<&'v Value>, Option<&'v Value>),
    ) -> Ordering {
        for (i, term) in self.terms.iter().enumerate() {
            let ordering = match &term.target {
                Target::Key => compare_code_units(a_key, b_key),
                Target::Field(path) => {
                    let (a, b) = cells(i, path);
                    compare_values(a, b)
                }
            };
            let ordering = if term.descending {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        compare_code_units(a_key, b_key)
    }
}

fn cell<'a>(position: &Position<'a>, i: usize) -> Option<&'a Value> {
    position.cells.get(i).copied().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(spec: Value) -> SortOrder {
        SortOrder::compile(Some(&serde_json::from_value(spec).unwrap()))
    }

    fn sorted_keys(order: &SortOrder, rows: &[(&str, Value)]) -> Vec<String> {
        let mut rows: Vec<_> = rows.iter().collect();
        rows.sort_by(|a, b| order.compare(&order.position(a.0, &a.1), &order.position(b.0, &b.1)));
        rows.iter().map(|(key, _)| (*key).to_owned()).collect()
    }

    fn rows() -> Vec<(&'static str, Value)> {
        vec![
            ("k1", json!({"prio": 2, "title": "b"})),
            ("k2", json!({"prio": 1, "title": "z"})),
            ("k3", json!({"prio": 2, "title": "a"})),
            ("k4", json!({"title": "m"})),
            ("k0", json!({"prio": 2, "title": "a"})),
        ]
    }

    #[test]
    fn no_sort_orders_by_key() {
        assert_eq!(
            sorted_keys(&SortOrder::default(), &rows()),
            ["k0", "k1", "k2", "k3", "k4"]
        );
    }

    #[test]
    fn only_field_terms_make_a_row_s_place_depend_on_its_value() {
        assert!(!SortOrder::default().has_fields());
        assert!(!order(json!([{"field": "_key", "direction": "desc"}])).has_fields());
        assert!(
            order(json!([
                {"field": "_key", "direction": "asc"},
                {"field": "prio", "direction": "desc"}
            ]))
            .has_fields()
        );
    }

    #[test]
    fn multi_field_sort_uses_priority_and_key_tie_break() {
        let by_array = order(json!([
            {"field": "prio", "direction": "desc"},
            {"field": "title", "direction": "asc"}
        ]));
        let by_object = order(json!({"prio": "desc", "title": "asc"}));
        let expected = ["k0", "k3", "k1", "k2", "k4"];
        assert_eq!(sorted_keys(&by_array, &rows()), expected);
        assert_eq!(sorted_keys(&by_object, &rows()), expected);
    }

    #[test]
    fn absent_fields_sort_first_ascending() {
        let asc = order(json!({"prio": "asc"}));
        assert_eq!(sorted_keys(&asc, &rows()), ["k4", "k2", "k0", "k1", "k3"]);
    }

    #[test]
    fn key_pseudo_field_sorts_by_key() {
        let desc = order(json!([{"field": "_key", "direction": "desc"}]));
        assert_eq!(sorted_keys(&desc, &rows()), ["k4", "k3", "k2", "k1", "k0"]);
    }

    proptest::proptest! {
        /// Comparing rows directly agrees with comparing their positions.
        #[test]
        fn rows_compare_like_their_positions(
            a in crate::protocol::codec::msgpack_writer::tests::json_value(),
            b in crate::protocol::codec::msgpack_writer::tests::json_value(),
            keys in ("[a-c]{0,2}", "[a-c]{0,2}"),
            desc in proptest::prelude::any::<bool>(),
        ) {
            let direction = if desc { "desc" } else { "asc" };
            let wrap = |v: &Value| json!({"n": v.clone(), "m": {"at": v.clone()}});
            let (a, b) = (wrap(&a), wrap(&b));
            for spec in [
                json!({}),
                json!([{"field": "n", "direction": direction}]),
                json!([{"field": "m.at", "direction": direction}, {"field": "_key", "direction": "desc"}]),
            ] {
                let order = order(spec);
                let by_position =
                    order.compare(&order.position(&keys.0, &a), &order.position(&keys.1, &b));
                proptest::prop_assert_eq!(order.compare_rows((&keys.0, &a), (&keys.1, &b)), by_position);
            }
        }
    }

    #[test]
    fn nested_paths_and_dates_sort_by_value() {
        let by_date = order(json!({"meta.at": "asc"}));
        let rows = vec![
            ("a", json!({"meta": {"at": "2024-01-01T10:00:00+05:00"}})),
            ("b", json!({"meta": {"at": "2024-01-01T06:00:00Z"}})),
            ("c", json!({"meta": {"at": "2023-12-31"}})),
        ];
        assert_eq!(sorted_keys(&by_date, &rows), ["c", "a", "b"]);
    }
}
