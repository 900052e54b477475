//! Hybrid logical clock timestamps and the clock that issues them (PROTOCOL.md §1.5, §4.1).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An HLC timestamp: `{millis, counter, nodeId}` on the wire, `millis:counter:nodeId` as a string.
///
/// Ordered by `millis`, then `counter`, then `nodeId` in byte order (PROTOCOL.md §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timestamp {
    /// Physical component: milliseconds since the Unix epoch.
    pub millis: u64,
    /// Logical component, ordering events within one millisecond.
    pub counter: u32,
    /// The node that issued the timestamp; never contains `:`.
    pub node_id: String,
}

impl Timestamp {
    /// A timestamp from its parts.
    pub fn new(millis: u64, counter: u32, node_id: impl Into<String>) -> Self {
        Self {
            millis,
            counter,
            node_id: node_id.into(),
        }
    }
}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.millis
            .cmp(&other.millis)
            .then(self.counter.cmp(&other.counter))
            .then_with(|| self.node_id.as_bytes().cmp(other.node_id.as_bytes()))
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.millis, self.counter, self.node_id)
    }
}

/// Why a string is not a `millis:counter:nodeId` timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HLC timestamp string {0:?}: expected millis:counter:nodeId")]
pub struct ParseTimestampError(pub String);

impl FromStr for Timestamp {
    type Err = ParseTimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTimestampError(s.to_owned());
        let mut parts = s.split(':');
        let (Some(millis), Some(counter), Some(node_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        if node_id.is_empty() {
            return Err(err());
        }
        Ok(Self {
            millis: millis.parse().map_err(|_| err())?,
            counter: counter.parse().map_err(|_| err())?,
            node_id: node_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    #[test]
    fn orders_by_millis_counter_then_node_bytes() {
        let a = Timestamp::new(1, 0, "b");
        assert!(a < Timestamp::new(2, 0, "a"));
        assert!(a < Timestamp::new(1, 1, "a"));
        assert!(
            Timestamp::new(1, 0, "B") < Timestamp::new(1, 0, "a"),
            "byte order, not locale"
        );
        assert_eq!(a.cmp(&a.clone()), Ordering::Equal);
    }

    #[test]
    fn string_form_round_trips() {
        let t = Timestamp::new(1_700_000_000_000, 3, "node-1");
        assert_eq!(t.to_string(), "1700000000000:3:node-1");
        assert_eq!("1700000000000:3:node-1".parse::<Timestamp>(), Ok(t));
        assert!("1:2".parse::<Timestamp>().is_err());
        assert!("1:2:a:b".parse::<Timestamp>().is_err());
        assert!("x:2:a".parse::<Timestamp>().is_err());
        assert!("1:2:".parse::<Timestamp>().is_err());
    }
}
