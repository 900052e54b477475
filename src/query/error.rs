//! Errors and resource limits of query compilation and execution.
//!
//! Compilation errors are caused by the client's query and are meant to be sent back
//! verbatim as `ERROR 400` replies, so their messages name the offending operator or path.

use thiserror::Error;

/// Resource limits applied when a query is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLimits {
    /// Maximum nesting depth of a predicate tree (a lone leaf has depth 1).
    pub max_depth: usize,
    /// Maximum children of one `and`/`or` node, and maximum entries of a `where` object.
    pub max_children: usize,
    /// Maximum total number of predicate nodes.
    pub max_nodes: usize,
    /// Maximum length, in characters, of a `regex` or `like` pattern.
    pub max_pattern_len: usize,
    /// Maximum elements of an array operand (`in`, `containsAll`, `containsAny`).
    pub max_array_operand: usize,
    /// `regex::RegexBuilder::size_limit` for each compiled pattern, in bytes.
    pub regex_size_limit: usize,
    /// `regex::RegexBuilder::dfa_size_limit` for each compiled pattern, in bytes.
    pub regex_dfa_size_limit: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_children: 256,
            max_nodes: 1024,
            max_pattern_len: 1024,
            max_array_operand: 1024,
            regex_size_limit: 1 << 20,
            regex_dfa_size_limit: 2 << 20,
        }
    }
}

/// Why a query could not be compiled or executed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QueryError {
    /// The predicate tree is nested deeper than allowed.
    #[error("predicate is nested deeper than {max} levels")]
    TooDeep { max: usize },
    /// An `and`/`or` node or a `where` object has too many entries.
    #[error("{what} has {count} entries; at most {max} are allowed")]
    TooWide {
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// The predicate tree has too many nodes in total.
    #[error("predicate has more than {max} nodes")]
    TooManyNodes { max: usize },
    /// A leaf operator has no `attribute`.
    #[error("predicate op `{op}` needs an `attribute`")]
    MissingAttribute { op: &'static str },
    /// A leaf operator's operand is missing or has the wrong shape.
    #[error("predicate op `{op}` on `{attribute}`: {problem}")]
    BadOperand {
        op: &'static str,
        attribute: String,
        problem: String,
    },
    /// A `regex` or `like` pattern is longer than allowed.
    #[error("pattern for `{attribute}` is {len} characters long; at most {max} are allowed")]
    PatternTooLong {
        attribute: String,
        len: usize,
        max: usize,
    },
    /// A `regex` pattern uses JavaScript syntax this server does not support.
    #[error("regex for `{attribute}` is not supported: {reason}")]
    UnsupportedRegex { attribute: String, reason: String },
    /// A pattern failed to compile (syntax error or size limit exceeded).
    #[error("regex for `{attribute}` is invalid: {reason}")]
    InvalidRegex { attribute: String, reason: String },
    /// A next-page cursor could not be issued.
    #[error("could not issue a query cursor: {0}")]
    Cursor(String),
}
