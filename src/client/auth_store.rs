//! [`AuthStore`]: a storage adapter for authentication data (users, sessions, accounts,
//! verification tokens) over TopGun LWW maps, with the interface of TopGun's Better Auth
//! adapter (REFERENCE §4) and the cold-start fix its BUG-05 patch missed (defect 37).
//!
//! Each model lives in one LWW map (`auth_<model>` unless mapped otherwise), one JSON object
//! per record under the record's `id`. No request touches a model until its readiness gate
//! has passed: the map restored from local storage, then its first Merkle walk with the
//! server completed, so a fresh device cannot answer "not found" for a user that exists only
//! on the server. The gate is bounded by [`AuthStoreOptions::ready_timeout`]; a timeout is
//! logged, exposed as [`Readiness::TimedOut`] and lets requests through on local data.
//! Where clauses are evaluated on the local map after the gate, so a read costs no
//! `QUERY_SUB`/`QUERY_UNSUB` round trip.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::{ClientError, LwwMap, TopGunClient};

/// A record: the JSON object stored under its `id`.
pub type Record = Map<String, Value>;

/// Most distinct models one store serves (Better Auth uses about five); bounds its state.
pub const MAX_MODELS: usize = 64;

/// Why an auth-store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthStoreError {
    /// The client failed (local store, closed client, bad map name).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A where clause used an operator this adapter does not know.
    #[error("unknown where operator {0:?}")]
    UnknownOperator(String),
    /// A where clause's value does not fit its operator.
    #[error("where clause on {field:?}: {op} needs {expected}")]
    InvalidValue {
        /// The clause's field.
        field: String,
        /// The clause's operator.
        op: WhereOp,
        /// What the operator needs.
        expected: &'static str,
    },
    /// A record's `id` is neither missing nor a string.
    #[error("record id must be a string, got {0}")]
    InvalidId(Value),
    /// More than [`MAX_MODELS`] distinct models were used.
    #[error("more than {MAX_MODELS} models; refusing model {0:?}")]
    TooManyModels(String),
}

/// Whether a model's map may be trusted to include the server's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// No request has reached this model yet (or its gate is still waiting).
    Pending,
    /// Restored from local storage and synced with the server in this run.
    Ready,
    /// Restored from local storage, but the first sync did not complete within the
    /// timeout: answers come from local data only and may miss server-only records.
    TimedOut {
        /// The timeout that passed.
        after: Duration,
    },
}

/// How an [`AuthStore`] maps models and how long its readiness gate waits.
#[derive(Debug, Clone)]
pub struct AuthStoreOptions {
    /// Model → map name; a model not listed uses `auth_<model>`.
    pub model_map: BTreeMap<String, String>,
    /// Longest wait for a model's first sync before requests go through on local data.
    pub ready_timeout: Duration,
}

impl Default for AuthStoreOptions {
    fn default() -> Self {
        Self {
            model_map: BTreeMap::new(),
            ready_timeout: Duration::from_secs(10),
        }
    }
}

/// A where-clause operator (Better Auth's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum WhereOp {
    /// Equal (numbers by value, anything else structurally; a missing field is `null`).
    Eq,
    /// Not equal.
    Ne,
    /// Less than (numbers with numbers, strings with strings).
    Lt,
    /// Less than or equal.
    Lte,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Equal to one element of the array value.
    In,
    /// Equal to no element of the array value.
    NotIn,
    /// The string field contains the string value.
    Contains,
    /// The string field starts with the string value.
    StartsWith,
    /// The string field ends with the string value.
    EndsWith,
}

impl WhereOp {
    /// The operator's Better Auth name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "eq",
            Self::Ne => "ne",
            Self::Lt => "lt",
            Self::Lte => "lte",
            Self::Gt => "gt",
            Self::Gte => "gte",
            Self::In => "in",
            Self::NotIn => "not_in",
            Self::Contains => "contains",
            Self::StartsWith => "starts_with",
            Self::EndsWith => "ends_with",
        }
    }
}

impl std::fmt::Display for WhereOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WhereOp {
    type Err = AuthStoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "in" => Self::In,
            "not_in" => Self::NotIn,
            "contains" => Self::Contains,
            "starts_with" => Self::StartsWith,
            "ends_with" => Self::EndsWith,
            other => return Err(AuthStoreError::UnknownOperator(other.to_owned())),
        })
    }
}

impl TryFrom<String> for WhereOp {
    type Error = AuthStoreError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// How a clause joins the others: every `And` clause must hold, and at least one `Or`
/// clause if there are any (Better Auth's grouping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WhereConnector {
    /// Must hold.
    #[default]
    And,
    /// One of the `Or` clauses must hold.
    Or,
}

/// One where clause, in Better Auth's shape (`{field, operator?, value, connector?}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Where {
    /// The record field compared.
    pub field: String,
    /// The comparison (`eq` when omitted in JSON).
    #[serde(rename = "operator", default = "default_op")]
    pub op: WhereOp,
    /// The value compared against.
    pub value: Value,
    /// How it joins the other clauses.
    #[serde(default)]
    pub connector: WhereConnector,
}

fn default_op() -> WhereOp {
    WhereOp::Eq
}

impl Where {
    /// An `And` clause.
    pub fn and(field: &str, op: WhereOp, value: Value) -> Self {
        Self {
            field: field.to_owned(),
            op,
            value,
            connector: WhereConnector::And,
        }
    }

    /// An `Or` clause.
    pub fn or(field: &str, op: WhereOp, value: Value) -> Self {
        Self {
            connector: WhereConnector::Or,
            ..Self::and(field, op, value)
        }
    }

    /// Rejects a value its operator cannot use, before any record is looked at.
    fn validate(&self) -> Result<(), AuthStoreError> {
        let expected = match self.op {
            WhereOp::In | WhereOp::NotIn if !self.value.is_array() => "an array",
            WhereOp::Contains | WhereOp::StartsWith | WhereOp::EndsWith
                if !self.value.is_string() =>
            {
                "a string"
            }
            WhereOp::Lt | WhereOp::Lte | WhereOp::Gt | WhereOp::Gte
                if !(self.value.is_number() || self.value.is_string()) =>
            {
                "a number or a string"
            }
            _ => return Ok(()),
        };
        Err(AuthStoreError::InvalidValue {
            field: self.field.clone(),
            op: self.op,
            expected,
        })
    }

    /// Whether `record` satisfies this clause alone.
    fn holds(&self, record: &Record) -> bool {
        let field = record.get(&self.field).unwrap_or(&Value::Null);
        let wanted = &self.value;
        match self.op {
            WhereOp::Eq => json_eq(field, wanted),
            WhereOp::Ne => !json_eq(field, wanted),
            WhereOp::Lt => compare(field, wanted) == Some(Ordering::Less),
            WhereOp::Lte => matches!(
                compare(field, wanted),
                Some(Ordering::Less | Ordering::Equal)
            ),
            WhereOp::Gt => compare(field, wanted) == Some(Ordering::Greater),
            WhereOp::Gte => matches!(
                compare(field, wanted),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            WhereOp::In => in_array(field, wanted),
            WhereOp::NotIn => !in_array(field, wanted),
            WhereOp::Contains => strings(field, wanted).is_some_and(|(f, w)| f.contains(w)),
            WhereOp::StartsWith => strings(field, wanted).is_some_and(|(f, w)| f.starts_with(w)),
            WhereOp::EndsWith => strings(field, wanted).is_some_and(|(f, w)| f.ends_with(w)),
        }
    }
}

/// Numbers compare by value (`1` equals `1.0`); everything else structurally.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare(a, b) == Some(Ordering::Equal) || x == y,
        _ => a == b,
    }
}

/// The order of two numbers or two strings; `None` for anything else, so a comparison
/// across types never matches.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn in_array(field: &Value, wanted: &Value) -> bool {
    wanted
        .as_array()
        .is_some_and(|items| items.iter().any(|item| json_eq(field, item)))
}

fn strings<'a>(field: &'a Value, wanted: &'a Value) -> Option<(&'a str, &'a str)> {
    Some((field.as_str()?, wanted.as_str()?))
}

/// Checks every clause's value against its operator.
pub fn validate(clauses: &[Where]) -> Result<(), AuthStoreError> {
    clauses.iter().try_for_each(Where::validate)
}

/// Whether `record` satisfies `clauses`: all `And` clauses, and one `Or` clause if any.
/// No clauses match everything. Call [`validate`] first; an invalid value never matches.
pub fn matches(record: &Record, clauses: &[Where]) -> bool {
    let mut any_or = None;
    for clause in clauses {
        match clause.connector {
            WhereConnector::And if !clause.holds(record) => return false,
            WhereConnector::And => {}
            WhereConnector::Or => {
                let held = clause.holds(record);
                any_or = Some(any_or.unwrap_or(false) || held);
            }
        }
    }
    any_or.unwrap_or(true)
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// Sort by one field (Better Auth's `sortBy`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SortBy {
    /// The record field sorted on.
    pub field: String,
    /// Which way.
    pub direction: Direction,
}

/// Paging and order of a [`AuthStore::find_many`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindManyOptions {
    /// Most records returned.
    pub limit: Option<usize>,
    /// Records skipped (after sorting) before the first returned.
    pub offset: Option<usize>,
    /// Order; records otherwise come in `id` order.
    pub sort_by: Option<SortBy>,
}

/// A total order over JSON values for sorting: null < bool < number < string < other,
/// numbers by value, strings bytewise; arrays and objects tie.
fn sort_order(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) | Value::Object(_) => 4,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => compare(a, b).unwrap_or_else(|| rank(a).cmp(&rank(b))),
    }
}

/// Sorts (stable, so ties keep `id` order), then applies offset and limit.
pub fn page(mut records: Vec<Record>, options: &FindManyOptions) -> Vec<Record> {
    if let Some(sort) = &options.sort_by {
        records.sort_by(|a, b| {
            let a = a.get(&sort.field).unwrap_or(&Value::Null);
            let b = b.get(&sort.field).unwrap_or(&Value::Null);
            match sort.direction {
                Direction::Asc => sort_order(a, b),
                Direction::Desc => sort_order(b, a),
            }
        });
    }
    records
        .into_iter()
        .skip(options.offset.unwrap_or(0))
        .take(options.limit.unwrap_or(usize::MAX))
        .collect()
}

/// The record's key: its `id`, or a fresh one (written into the record) when missing.
fn ensure_id(
    record: &mut Record,
    fresh: impl FnOnce() -> String,
) -> Result<String, AuthStoreError> {
    match record.get("id") {
        Some(Value::String(id)) => Ok(id.clone()),
        None | Some(Value::Null) => {
            let id = fresh();
            record.insert("id".to_owned(), Value::String(id.clone()));
            Ok(id)
        }
        Some(other) => Err(AuthStoreError::InvalidId(other.clone())),
    }
}

/// A model's map, usable once its readiness gate has passed.
struct Model {
    map: LwwMap<Value>,
    readiness: Readiness,
}

/// The Better-Auth-style adapter. Cheap to share behind an `Arc`; every method is `&self`.
pub struct AuthStore {
    client: TopGunClient,
    options: AuthStoreOptions,
    /// One gate per model, shared by concurrent callers; a failed gate (not a timeout) is
    /// not cached, so the next request retries it.
    models: Mutex<HashMap<String, Arc<OnceCell<Arc<Model>>>>>,
}

impl AuthStore {
    /// An adapter over `client`. Nothing is loaded until the first request for a model.
    pub fn new(client: TopGunClient, options: AuthStoreOptions) -> Self {
        Self {
            client,
            options,
            models: Mutex::new(HashMap::new()),
        }
    }

    /// The map holding `model`'s records.
    pub fn map_name(&self, model: &str) -> String {
        self.options
            .model_map
            .get(model)
            .cloned()
            .unwrap_or_else(|| format!("auth_{model}"))
    }

    /// How far `model`'s readiness gate got.
    pub fn readiness(&self, model: &str) -> Readiness {
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        models
            .get(model)
            .and_then(|cell| cell.get())
            .map_or(Readiness::Pending, |m| m.readiness.clone())
    }

    /// Writes `data` (with an `id` added when missing) and returns it. Resolves at the
    /// client's write concern.
    pub async fn create(&self, model: &str, mut data: Record) -> Result<Record, AuthStoreError> {
        let id = ensure_id(&mut data, || self.client.random_id())?;
        let model = self.ready(model).await?;
        model.map.set(&id, &Value::Object(data.clone())).await?;
        Ok(data)
    }

    /// The first record (in `id` order) matching `clauses`.
    pub async fn find_one(
        &self,
        model: &str,
        clauses: &[Where],
    ) -> Result<Option<Record>, AuthStoreError> {
        let options = FindManyOptions {
            limit: Some(1),
            ..FindManyOptions::default()
        };
        Ok(self
            .find_many(model, clauses, options)
            .await?
            .into_iter()
            .next())
    }

    /// Every record matching `clauses`, sorted and paged.
    pub async fn find_many(
        &self,
        model: &str,
        clauses: &[Where],
        options: FindManyOptions,
    ) -> Result<Vec<Record>, AuthStoreError> {
        let found = self.matching(model, clauses).await?;
        Ok(page(found.into_iter().map(|(_, r)| r).collect(), &options))
    }

    /// How many records match `clauses`.
    pub async fn count(&self, model: &str, clauses: &[Where]) -> Result<usize, AuthStoreError> {
        Ok(self.matching(model, clauses).await?.len())
    }

    /// Merges `update` into the first matching record and returns the result; `None` when
    /// nothing matched. The record keeps its `id` whatever `update` says.
    pub async fn update(
        &self,
        model: &str,
        clauses: &[Where],
        update: &Record,
    ) -> Result<Option<Record>, AuthStoreError> {
        let first = self.matching(model, clauses).await?.into_iter().next();
        match first {
            Some((key, record)) => Ok(Some(self.write_merged(model, &key, record, update).await?)),
            None => Ok(None),
        }
    }

    /// Merges `update` into every matching record; returns how many were updated.
    pub async fn update_many(
        &self,
        model: &str,
        clauses: &[Where],
        update: &Record,
    ) -> Result<usize, AuthStoreError> {
        let found = self.matching(model, clauses).await?;
        let count = found.len();
        for (key, record) in found {
            self.write_merged(model, &key, record, update).await?;
        }
        Ok(count)
    }

    /// Removes the first matching record, if any.
    pub async fn delete(&self, model: &str, clauses: &[Where]) -> Result<(), AuthStoreError> {
        let first = self.matching(model, clauses).await?.into_iter().next();
        if let Some((key, _)) = first {
            self.ready(model).await?.map.remove(&key).await?;
        }
        Ok(())
    }

    /// Removes every matching record; returns how many were removed.
    pub async fn delete_many(
        &self,
        model: &str,
        clauses: &[Where],
    ) -> Result<usize, AuthStoreError> {
        let found = self.matching(model, clauses).await?;
        let model = self.ready(model).await?;
        let map = &model.map;
        for (key, _) in &found {
            map.remove(key).await?;
        }
        Ok(found.len())
    }

    async fn write_merged(
        &self,
        model: &str,
        key: &str,
        mut record: Record,
        update: &Record,
    ) -> Result<Record, AuthStoreError> {
        for (field, value) in update {
            if field != "id" {
                record.insert(field.clone(), value.clone());
            }
        }
        let model = self.ready(model).await?;
        let map = &model.map;
        map.set(key, &Value::Object(record.clone())).await?;
        Ok(record)
    }

    /// `(key, record)` of every record matching `clauses`, in key order, after the gate.
    async fn matching(
        &self,
        model: &str,
        clauses: &[Where],
    ) -> Result<Vec<(String, Record)>, AuthStoreError> {
        validate(clauses)?;
        let model = self.ready(model).await?;
        let map = &model.map;
        // Filtered before anything is copied: a lookup reads every record but copies only
        // the ones it returns.
        let found = map
            .entries_where(|key, value| match value {
                Value::Object(record) => matches(record, clauses),
                _ => {
                    tracing::debug!(map = map.name(), key, "skipping a non-object entry");
                    false
                }
            })
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(key, value)| match value {
                Value::Object(record) => Some((key, record)),
                _ => None,
            })
            .collect())
    }

    /// `model` after its readiness gate: waits on the first caller's gate, runs it if none.
    async fn ready(&self, model: &str) -> Result<Arc<Model>, AuthStoreError> {
        let cell = self.cell(model)?;
        let ready = cell.get_or_try_init(|| self.open(model)).await?;
        Ok(ready.clone())
    }

    fn cell(&self, model: &str) -> Result<Arc<OnceCell<Arc<Model>>>, AuthStoreError> {
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = models.get(model) {
            return Ok(cell.clone());
        }
        if models.len() >= MAX_MODELS {
            return Err(AuthStoreError::TooManyModels(model.to_owned()));
        }
        let cell = Arc::new(OnceCell::new());
        models.insert(model.to_owned(), cell.clone());
        Ok(cell)
    }

    /// The gate itself: restore the map from local storage, then wait (bounded) for its
    /// first Merkle walk with the server.
    async fn open(&self, model: &str) -> Result<Arc<Model>, AuthStoreError> {
        let name = self.map_name(model);
        let map = self.client.get_map_async::<Value>(&name).await?;
        let timeout = self.options.ready_timeout;
        let readiness = match self.client.wait_map_synced(&name, timeout).await {
            Ok(()) => Readiness::Ready,
            Err(ClientError::SyncTimeout(after)) => {
                tracing::warn!(
                    model,
                    map = name,
                    ?after,
                    "auth store: first sync did not complete in time; answering from local data"
                );
                Readiness::TimedOut { after }
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Arc::new(Model { map, readiness }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(value: Value) -> Record {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn user() -> Record {
        record(json!({
            "id": "u1",
            "email": "alice@example.com",
            "name": "Alice",
            "age": 30,
            "score": 2.5,
            "emailVerified": false,
            "createdAt": "2026-01-18T10:00:00.000Z",
            "role": null
        }))
    }

    fn holds(op: WhereOp, field: &str, value: Value) -> bool {
        matches(&user(), &[Where::and(field, op, value)])
    }

    #[test]
    fn eq_and_ne_compare_numbers_by_value_and_missing_fields_as_null() {
        assert!(holds(WhereOp::Eq, "email", json!("alice@example.com")));
        assert!(!holds(WhereOp::Eq, "email", json!("bob@example.com")));
        assert!(holds(WhereOp::Eq, "age", json!(30.0)), "30 equals 30.0");
        assert!(holds(WhereOp::Eq, "emailVerified", json!(false)));
        assert!(holds(WhereOp::Eq, "role", Value::Null));
        assert!(holds(WhereOp::Eq, "missing", Value::Null));
        assert!(!holds(WhereOp::Eq, "age", json!("30")), "no type coercion");
        assert!(holds(WhereOp::Ne, "email", json!("bob@example.com")));
        assert!(!holds(WhereOp::Ne, "age", json!(30)));
    }

    #[test]
    fn ordering_operators_on_numbers_and_strings() {
        assert!(holds(WhereOp::Lt, "age", json!(31)));
        assert!(!holds(WhereOp::Lt, "age", json!(30)));
        assert!(holds(WhereOp::Lte, "age", json!(30)));
        assert!(holds(WhereOp::Gt, "score", json!(2)));
        assert!(!holds(WhereOp::Gt, "score", json!(2.5)));
        assert!(holds(WhereOp::Gte, "score", json!(2.5)));
        assert!(
            holds(WhereOp::Lt, "age", json!(30.5)),
            "mixed int and float"
        );
        // ISO timestamps order as strings.
        assert!(holds(
            WhereOp::Gt,
            "createdAt",
            json!("2026-01-01T00:00:00.000Z")
        ));
        assert!(!holds(
            WhereOp::Gt,
            "createdAt",
            json!("2026-02-01T00:00:00.000Z")
        ));
        assert!(
            !holds(WhereOp::Lt, "age", json!("99")),
            "number vs string never matches"
        );
        assert!(
            !holds(WhereOp::Gte, "missing", json!(0)),
            "missing field never orders"
        );
    }

    #[test]
    fn in_and_not_in_test_membership() {
        assert!(holds(WhereOp::In, "name", json!(["Bob", "Alice"])));
        assert!(!holds(WhereOp::In, "name", json!(["Bob"])));
        assert!(holds(WhereOp::In, "age", json!([1, 30.0])));
        assert!(!holds(WhereOp::In, "name", json!([])));
        assert!(holds(WhereOp::NotIn, "name", json!(["Bob"])));
        assert!(!holds(WhereOp::NotIn, "name", json!(["Alice"])));
    }

    #[test]
    fn string_operators_are_literal_not_like_patterns() {
        assert!(holds(WhereOp::Contains, "email", json!("@example")));
        assert!(holds(WhereOp::StartsWith, "email", json!("alice@")));
        assert!(holds(WhereOp::EndsWith, "email", json!(".com")));
        assert!(!holds(WhereOp::EndsWith, "email", json!(".org")));
        // `%` and `_` are not wildcards (the TypeScript adapter's LIKE translation was).
        assert!(!holds(WhereOp::Contains, "email", json!("%")));
        assert!(!holds(WhereOp::StartsWith, "email", json!("_lice")));
        assert!(
            !holds(WhereOp::Contains, "age", json!("3")),
            "non-string field"
        );
    }

    #[test]
    fn and_clauses_all_hold_and_or_clauses_need_one() {
        let u = user();
        let email = Where::and("email", WhereOp::Eq, json!("alice@example.com"));
        let old = Where::and("age", WhereOp::Gt, json!(40));
        assert!(matches(&u, std::slice::from_ref(&email)));
        assert!(!matches(&u, &[email.clone(), old]));
        assert!(matches(&u, &[]), "no clauses match everything");

        let bob = Where::or("name", WhereOp::Eq, json!("Bob"));
        let alice = Where::or("name", WhereOp::Eq, json!("Alice"));
        assert!(matches(&u, &[bob.clone(), alice.clone()]));
        assert!(!matches(&u, std::slice::from_ref(&bob)));
        assert!(matches(&u, &[email.clone(), bob.clone(), alice]));
        let other_email = Where::and("email", WhereOp::Eq, json!("x@y"));
        assert!(!matches(&u, &[other_email, bob]));
    }

    #[test]
    fn unknown_operators_are_a_typed_error() {
        let err = "like".parse::<WhereOp>().unwrap_err();
        assert!(matches!(err, AuthStoreError::UnknownOperator(ref op) if op == "like"));
        let parsed: Result<Where, _> =
            serde_json::from_value(json!({"field": "a", "operator": "regex", "value": 1}));
        let message = parsed.unwrap_err().to_string();
        assert!(
            message.contains("unknown where operator \"regex\""),
            "{message}"
        );
        for op in [
            "eq",
            "ne",
            "lt",
            "lte",
            "gt",
            "gte",
            "in",
            "not_in",
            "contains",
            "starts_with",
            "ends_with",
        ] {
            assert_eq!(op.parse::<WhereOp>().unwrap().as_str(), op);
        }
    }

    #[test]
    fn where_deserializes_better_auth_json_with_defaults() {
        let clause: Where =
            serde_json::from_value(json!({"field": "email", "value": "a@b"})).unwrap();
        assert_eq!(clause, Where::and("email", WhereOp::Eq, json!("a@b")));
        let clause: Where = serde_json::from_value(json!({
            "field": "age", "operator": "gte", "value": 18, "connector": "OR"
        }))
        .unwrap();
        assert_eq!(clause, Where::or("age", WhereOp::Gte, json!(18)));
    }

    #[test]
    fn values_that_do_not_fit_the_operator_are_rejected() {
        let bad = [
            Where::and("name", WhereOp::In, json!("Alice")),
            Where::and("name", WhereOp::NotIn, json!(null)),
            Where::and("name", WhereOp::Contains, json!(1)),
            Where::and("age", WhereOp::Lt, json!([1])),
        ];
        for clause in bad {
            let err = validate(std::slice::from_ref(&clause)).unwrap_err();
            assert!(
                matches!(err, AuthStoreError::InvalidValue { op, .. } if op == clause.op),
                "{clause:?}"
            );
        }
        assert!(validate(&[Where::and("age", WhereOp::Eq, json!([1]))]).is_ok());
    }

    #[test]
    fn page_sorts_stably_then_offsets_then_limits() {
        let records: Vec<Record> = [
            json!({"id": "a", "n": 3}),
            json!({"id": "b", "n": 1}),
            json!({"id": "c", "n": 2}),
            json!({"id": "d", "n": 1}),
            json!({"id": "e"}),
        ]
        .into_iter()
        .map(record)
        .collect();
        let ids = |options: FindManyOptions| -> Vec<String> {
            page(records.clone(), &options)
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect()
        };
        let sort = |direction| {
            Some(SortBy {
                field: "n".to_owned(),
                direction,
            })
        };
        assert_eq!(
            ids(FindManyOptions {
                sort_by: sort(Direction::Asc),
                ..FindManyOptions::default()
            }),
            ["e", "b", "d", "c", "a"],
            "missing sorts as null, first; ties keep id order"
        );
        assert_eq!(
            ids(FindManyOptions {
                sort_by: sort(Direction::Desc),
                offset: Some(1),
                limit: Some(2),
            }),
            ["c", "b"]
        );
        assert_eq!(
            ids(FindManyOptions {
                offset: Some(4),
                limit: Some(10),
                ..FindManyOptions::default()
            }),
            ["e"]
        );
        assert!(
            ids(FindManyOptions {
                offset: Some(9),
                ..FindManyOptions::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn ensure_id_keeps_a_string_id_and_fills_a_missing_one() {
        let mut with = record(json!({"id": "x", "a": 1}));
        assert_eq!(ensure_id(&mut with, || "fresh".to_owned()).unwrap(), "x");
        let mut without = record(json!({"a": 1}));
        assert_eq!(
            ensure_id(&mut without, || "fresh".to_owned()).unwrap(),
            "fresh"
        );
        assert_eq!(without["id"], json!("fresh"));
        let mut bad = record(json!({"id": 7}));
        assert!(matches!(
            ensure_id(&mut bad, || "fresh".to_owned()),
            Err(AuthStoreError::InvalidId(v)) if v == json!(7)
        ));
    }
}
