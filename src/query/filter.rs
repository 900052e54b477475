//! The compiled filter of a query: a `predicate` tree or a legacy `where` object (§4.7).
//!
//! Compilation validates everything that can be checked once (limits, operand shapes,
//! patterns) so that matching a record is infallible.
//!
//! Semantics beyond PROTOCOL.md §4.7 worth knowing:
//! - A leaf without `attribute` is rejected (TopGun silently never matches it).
//! - The wire cannot tell `value: null` from an absent `value`, so comparison operators
//!   (`eq neq gt gte lt lte`) read a missing `value` as `null`; every other leaf that needs an
//!   operand rejects a missing one.
//! - `valueRef` takes precedence over `value`. With a `valueRef`, operand shapes are checked
//!   per record (a wrong shape does not match); `like`/`regex` reject `valueRef`.
//! - `in`, `containsAll`, `containsAny` use strict equality per element (objects and arrays
//!   never equal); `containsAll` with an empty operand matches any array field.
//! - `between [lo, hi]` is `field >= lo && field <= hi` with the relational rules of
//!   [`super::value`].

use regex::Regex;
use serde_json::Value;

use super::error::{QueryError, QueryLimits};
use super::pattern::{compile_like, compile_regex};
use super::value::{FieldPath, Relation, relational, strict_equals};
use super::{PredicateNode, PredicateOp, Query};

/// A query's compiled filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// No `where` and no `predicate`: everything matches.
    All,
    /// A predicate tree (takes precedence over `where`).
    Predicate(Node),
    /// A legacy `where` object; every entry must hold.
    Where(Vec<WhereEntry>),
}

impl Filter {
    /// Compiles the filter part of `query`.
    pub fn compile(query: &Query, limits: &QueryLimits) -> Result<Self, QueryError> {
        if let Some(predicate) = &query.predicate {
            let mut nodes = 0;
            return Node::compile(predicate, 1, &mut nodes, limits).map(Filter::Predicate);
        }
        match &query.where_ {
            None => Ok(Filter::All),
            Some(entries) => {
                check_width("where", entries.len(), limits)?;
                Ok(Filter::Where(
                    entries
                        .iter()
                        .map(|(field, expected)| WhereEntry::compile(field, expected))
                        .collect(),
                ))
            }
        }
    }

    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &Value) -> bool {
        match self {
            Filter::All => true,
            Filter::Predicate(node) => node.matches(record),
            Filter::Where(entries) => entries.iter().all(|entry| entry.matches(record)),
        }
    }
}

fn check_width(what: &'static str, count: usize, limits: &QueryLimits) -> Result<(), QueryError> {
    if count > limits.max_children {
        return Err(QueryError::TooWide {
            what,
            count,
            max: limits.max_children,
        });
    }
    Ok(())
}

/// One compiled predicate node.
#[derive(Debug, Clone)]
pub enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    /// `not` of `children[0]`; a missing child makes `not` true.
    Not(Option<Box<Node>>),
    Leaf {
        path: FieldPath,
        test: Test,
    },
}

impl Node {
    fn compile(
        node: &PredicateNode,
        depth: usize,
        nodes: &mut usize,
        limits: &QueryLimits,
    ) -> Result<Self, QueryError> {
        if depth > limits.max_depth {
            return Err(QueryError::TooDeep {
                max: limits.max_depth,
            });
        }
        *nodes += 1;
        if *nodes > limits.max_nodes {
            return Err(QueryError::TooManyNodes {
                max: limits.max_nodes,
            });
        }
        let children = node.children.as_deref().unwrap_or_default();
        let compile_children = |nodes: &mut usize| -> Result<Vec<Node>, QueryError> {
            check_width(op_name(node.op), children.len(), limits)?;
            children
                .iter()
                .map(|child| Node::compile(child, depth + 1, nodes, limits))
                .collect()
        };
        match node.op {
            PredicateOp::And => compile_children(nodes).map(Node::And),
            PredicateOp::Or => compile_children(nodes).map(Node::Or),
            PredicateOp::Not => match children.first() {
                None => Ok(Node::Not(None)),
                Some(child) => Node::compile(child, depth + 1, nodes, limits)
                    .map(|child| Node::Not(Some(Box::new(child)))),
            },
            op => {
                let attribute = node
                    .attribute
                    .as_deref()
                    .ok_or(QueryError::MissingAttribute { op: op_name(op) })?;
                let test = Test::compile(op, attribute, node, limits)?;
                Ok(Node::Leaf {
                    path: FieldPath::new(attribute),
                    test,
                })
            }
        }
    }

    fn matches(&self, record: &Value) -> bool {
        match self {
            Node::And(children) => children.iter().all(|child| child.matches(record)),
            Node::Or(children) => children.iter().any(|child| child.matches(record)),
            Node::Not(child) => child.as_ref().is_none_or(|child| !child.matches(record)),
            Node::Leaf { path, test } => test.matches(path.resolve(record), record),
        }
    }
}

/// The wire spelling of an operator, for error messages.
fn op_name(op: PredicateOp) -> &'static str {
    match op {
        PredicateOp::Eq => "eq",
        PredicateOp::Neq => "neq",
        PredicateOp::Gt => "gt",
        PredicateOp::Gte => "gte",
        PredicateOp::Lt => "lt",
        PredicateOp::Lte => "lte",
        PredicateOp::Like => "like",
        PredicateOp::Regex => "regex",
        PredicateOp::And => "and",
        PredicateOp::Or => "or",
        PredicateOp::Not => "not",
        PredicateOp::In => "in",
        PredicateOp::Between => "between",
        PredicateOp::IsNull => "isNull",
        PredicateOp::IsNotNull => "isNotNull",
        PredicateOp::ContainsAll => "containsAll",
        PredicateOp::ContainsAny => "containsAny",
        PredicateOp::StartsWith => "startsWith",
        PredicateOp::EndsWith => "endsWith",
    }
}

/// What a leaf compares its field against.
#[derive(Debug, Clone)]
pub enum Operand {
    /// `value`.
    Literal(Value),
    /// `valueRef`: another field of the same record.
    Field(FieldPath),
}

impl Operand {
    fn resolve<'a>(&'a self, record: &'a Value) -> Option<&'a Value> {
        match self {
            Operand::Literal(value) => Some(value),
            Operand::Field(path) => path.resolve(record),
        }
    }
}

/// A compiled leaf test.
#[derive(Debug, Clone)]
pub enum Test {
    Eq(Operand),
    Neq(Operand),
    Relation(Relation, Operand),
    Like(Regex),
    Regex(Regex),
    In(Operand),
    Between(Operand),
    IsNull,
    IsNotNull,
    ContainsAll(Operand),
    ContainsAny(Operand),
    StartsWith(Operand),
    EndsWith(Operand),
}

/// The operand shape a leaf operator requires.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Any,
    String,
    Array,
    Pair,
}

impl Test {
    fn compile(
        op: PredicateOp,
        attribute: &str,
        node: &PredicateNode,
        limits: &QueryLimits,
    ) -> Result<Self, QueryError> {
        let bad = |problem: &str| QueryError::BadOperand {
            op: op_name(op),
            attribute: attribute.to_owned(),
            problem: problem.to_owned(),
        };
        let operand = |shape: Shape, null_if_missing: bool| -> Result<Operand, QueryError> {
            if let Some(reference) = &node.value_ref {
                return Ok(Operand::Field(FieldPath::new(reference)));
            }
            let value = match (&node.value, null_if_missing) {
                (Some(value), _) => value.clone(),
                (None, true) => Value::Null,
                (None, false) => return Err(bad("needs a `value` or `valueRef`")),
            };
            check_shape(&value, shape, limits).map_err(|problem| bad(&problem))?;
            Ok(Operand::Literal(value))
        };
        let pattern = || -> Result<&str, QueryError> {
            if node.value_ref.is_some() {
                return Err(bad("`valueRef` is not supported for pattern operators"));
            }
            node.value
                .as_ref()
                .and_then(Value::as_str)
                .ok_or_else(|| bad("`value` must be a string pattern"))
        };
        Ok(match op {
            PredicateOp::Eq => Test::Eq(operand(Shape::Any, true)?),
            PredicateOp::Neq => Test::Neq(operand(Shape::Any, true)?),
            PredicateOp::Gt => Test::Relation(Relation::Gt, operand(Shape::Any, true)?),
            PredicateOp::Gte => Test::Relation(Relation::Gte, operand(Shape::Any, true)?),
            PredicateOp::Lt => Test::Relation(Relation::Lt, operand(Shape::Any, true)?),
            PredicateOp::Lte => Test::Relation(Relation::Lte, operand(Shape::Any, true)?),
            PredicateOp::Like => Test::Like(compile_like(pattern()?, attribute, limits)?),
            PredicateOp::Regex => Test::Regex(compile_regex(pattern()?, attribute, limits)?),
            PredicateOp::In => Test::In(operand(Shape::Array, false)?),
            PredicateOp::Between => Test::Between(operand(Shape::Pair, false)?),
            PredicateOp::IsNull => Test::IsNull,
            PredicateOp::IsNotNull => Test::IsNotNull,
            PredicateOp::ContainsAll => Test::ContainsAll(operand(Shape::Array, false)?),
            PredicateOp::ContainsAny => Test::ContainsAny(operand(Shape::Array, false)?),
            PredicateOp::StartsWith => Test::StartsWith(operand(Shape::String, false)?),
            PredicateOp::EndsWith => Test::EndsWith(operand(Shape::String, false)?),
            PredicateOp::And | PredicateOp::Or | PredicateOp::Not => {
                return Err(bad("is not a leaf operator"));
            }
        })
    }

    fn matches(&self, field: Option<&Value>, record: &Value) -> bool {
        match self {
            Test::Eq(operand) => equals_operand(field, operand.resolve(record)),
            Test::Neq(operand) => !equals_operand(field, operand.resolve(record)),
            Test::Relation(relation, operand) => operand
                .resolve(record)
                .is_some_and(|operand| relational(field, *relation, operand)),
            Test::Like(regex) | Test::Regex(regex) => field
                .and_then(Value::as_str)
                .is_some_and(|s| regex.is_match(s)),
            Test::In(operand) => array_of(operand, record)
                .is_some_and(|options| options.iter().any(|option| strict_equals(field, option))),
            Test::Between(operand) => match array_of(operand, record) {
                Some([low, high]) => {
                    relational(field, Relation::Gte, low) && relational(field, Relation::Lte, high)
                }
                _ => false,
            },
            Test::IsNull => field.is_none_or(Value::is_null),
            Test::IsNotNull => field.is_some_and(|value| !value.is_null()),
            Test::ContainsAll(operand) => contains(field, operand, record, Quantifier::All),
            Test::ContainsAny(operand) => contains(field, operand, record, Quantifier::Any),
            Test::StartsWith(operand) => {
                strings(field, operand, record).is_some_and(|(s, prefix)| s.starts_with(prefix))
            }
            Test::EndsWith(operand) => {
                strings(field, operand, record).is_some_and(|(s, suffix)| s.ends_with(suffix))
            }
        }
    }
}

fn check_shape(value: &Value, shape: Shape, limits: &QueryLimits) -> Result<(), String> {
    match (shape, value) {
        (Shape::Any, _) | (Shape::String, Value::String(_)) => Ok(()),
        (Shape::String, _) => Err("`value` must be a string".into()),
        (Shape::Pair, Value::Array(items)) if items.len() == 2 => Ok(()),
        (Shape::Pair, _) => Err("`value` must be an array `[low, high]`".into()),
        (Shape::Array, Value::Array(items)) if items.len() > limits.max_array_operand => {
            Err(format!(
                "`value` has {} elements; at most {} are allowed",
                items.len(),
                limits.max_array_operand
            ))
        }
        (Shape::Array, Value::Array(_)) => Ok(()),
        (Shape::Array, _) => Err("`value` must be an array".into()),
    }
}

/// JS `field === operand`, where an absent `valueRef` field is `undefined`.
fn equals_operand(field: Option<&Value>, operand: Option<&Value>) -> bool {
    match operand {
        Some(operand) => strict_equals(field, operand),
        None => field.is_none(),
    }
}

fn array_of<'a>(operand: &'a Operand, record: &'a Value) -> Option<&'a [Value]> {
    operand
        .resolve(record)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
}

#[derive(Clone, Copy)]
enum Quantifier {
    All,
    Any,
}

fn contains(
    field: Option<&Value>,
    operand: &Operand,
    record: &Value,
    quantifier: Quantifier,
) -> bool {
    let Some(haystack) = field.and_then(Value::as_array) else {
        return false;
    };
    let Some(needles) = array_of(operand, record) else {
        return false;
    };
    let present = |needle: &Value| {
        haystack
            .iter()
            .any(|item| strict_equals(Some(item), needle))
    };
    match quantifier {
        Quantifier::All => needles.iter().all(present),
        Quantifier::Any => needles.iter().any(present),
    }
}

fn strings<'a>(
    field: Option<&'a Value>,
    operand: &'a Operand,
    record: &'a Value,
) -> Option<(&'a str, &'a str)> {
    let field = field?.as_str()?;
    let operand = operand.resolve(record)?.as_str()?;
    Some((field, operand))
}

/// One entry of a `where` object.
#[derive(Debug, Clone)]
pub struct WhereEntry {
    path: FieldPath,
    test: WhereTest,
}

#[derive(Debug, Clone)]
enum WhereTest {
    /// A non-object expected value: strict equality (arrays never match).
    Equals(Value),
    /// An operator object; every operator must hold.
    Operators(Vec<(WhereOp, Value)>),
    /// An operator object with an operator TopGun does not know: never matches.
    Never,
}

#[derive(Debug, Clone, Copy)]
enum WhereOp {
    Relation(Relation),
    Eq,
    Ne,
}

impl WhereEntry {
    fn compile(field: &str, expected: &Value) -> Self {
        let test = match expected {
            Value::Object(operators) => operators
                .iter()
                .map(|(name, operand)| where_op(name).map(|op| (op, operand.clone())))
                .collect::<Option<Vec<_>>>()
                .map_or(WhereTest::Never, WhereTest::Operators),
            other => WhereTest::Equals(other.clone()),
        };
        Self {
            path: FieldPath::new(field),
            test,
        }
    }

    fn matches(&self, record: &Value) -> bool {
        let field = self.path.resolve(record);
        match &self.test {
            WhereTest::Equals(expected) => strict_equals(field, expected),
            WhereTest::Operators(operators) => operators.iter().all(|(op, operand)| match op {
                WhereOp::Relation(relation) => relational(field, *relation, operand),
                WhereOp::Eq => strict_equals(field, operand),
                WhereOp::Ne => !strict_equals(field, operand),
            }),
            WhereTest::Never => false,
        }
    }
}

fn where_op(name: &str) -> Option<WhereOp> {
    Some(match name {
        "$gt" => WhereOp::Relation(Relation::Gt),
        "$gte" => WhereOp::Relation(Relation::Gte),
        "$lt" => WhereOp::Relation(Relation::Lt),
        "$lte" => WhereOp::Relation(Relation::Lte),
        "$eq" => WhereOp::Eq,
        "$ne" | "$neq" => WhereOp::Ne,
        _ => return None,
    })
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
